// SPDX-License-Identifier: GPL-2.0-only
//! The iommufd live update benchmark (`cargo xtask bench-lu`,
//! docs/benchmarks.md): how long after a kexec until the VMM has its IOAS
//! and HWPT back and the device attached, with this design (the guestmemfs
//! mappings and VT-d tables handed over, adopted, validated and restored)
//! against the upstream path (a memfd preserved by LUO, then re-pinned and
//! re-mapped with `IOMMU_IOAS_MAP_FILE`, a new HWPT, attach), in the same
//! boot, for one configuration `gtest.lu_bench=GIB,MAPS,LEAF`: a GIB GiB
//! file mapped MAPS times, at IOVAs that give LEAF-sized IOPTEs (1g, 2m,
//! 4k). Stage 1 also times the preservation; stage 2 reads the handover
//! sizes from the kernel log. Each path ends with one DMA by the device,
//! checked through the CPU mapping (not timed).

use super::gmfs::{mount, p, Mapping, GIB, MIB};
use super::igb::frame;
use super::igb_kexec::{igb_bdf, open_rw};
use super::{Ctx, Outcome, TestResult};
use crate::cmdline::TestBoot;
use crate::igb::MAX_FRAME;
use crate::ktap::diag;
use crate::liveupdate::LiveUpdate;
use crate::sys;
use crate::vfio::{bind_vfio_pci, Passthrough};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Prefix of the lines `cargo xtask bench-lu` reads.
pub const LINE_PREFIX: &str = "lubench: ";
const SESSION: &str = "gtest-lu-bench";
const MEMFD_TOKEN: u64 = 1;
const IOMMUFD_TOKEN: u64 = 2;
const HWPT_TOKEN: u64 = 0xbe4c;
/// The device's rings and frame sources: a small file of its own.
const CTL_IOVA: u64 = 0x1000_0000;
const CTL_LEN: u64 = 4 * MIB;
/// Mapping `i` of the big file starts at `BASE + i * stride + leaf offset`.
const BASE: u64 = 1 << 36;

struct Config {
    gib: u64,
    maps: u64,
    leaf: &'static str,
}

impl Config {
    fn parse(s: &str) -> Result<Config, String> {
        let bad = || format!("bad gtest.lu_bench value {s:?} (GIB,MAPS,1g|2m|4k)");
        let mut it = s.split(',');
        let gib = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let maps = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let leaf = match it.next() {
            Some("1g") => "1g",
            Some("2m") => "2m",
            Some("4k") => "4k",
            _ => return Err(bad()),
        };
        if gib == 0 || maps == 0 || it.next().is_some() {
            return Err(bad());
        }
        Ok(Config { gib, maps, leaf })
    }

    fn len(&self) -> u64 {
        self.gib * GIB
    }

    /// IOVA of mapping `i`: GiB aligned, then moved off the larger sizes.
    fn iova(&self, i: u64) -> u64 {
        let skew = match self.leaf {
            "1g" => 0,
            "2m" => 2 * MIB,
            _ => 4096,
        };
        BASE + i * (self.gib + 1) * GIB + skew
    }

    fn tag(&self) -> String {
        format!("gib={} maps={} leaf={}", self.gib, self.maps, self.leaf)
    }
}

fn config() -> Result<Config, String> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    Config::parse(
        &TestBoot::parse(&cmdline)?
            .lu_bench
            .ok_or("no gtest.lu_bench= on the kernel command line (`cargo xtask bench-lu`)")?,
    )
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

/// Maps the control file and `file` `maps` times into `pt`.
fn map_all(pt: &Passthrough, ctl: &File, file: &File, c: &Config) -> Result<(), String> {
    pt.map_file(ctl, 0, CTL_LEN, CTL_IOVA)?;
    for i in 0..c.maps {
        pt.map_file(file, 0, c.len(), c.iova(i))?;
    }
    Ok(())
}

/// One frame into the last mapping, 1 MiB before its end; checked through
/// `data` (a CPU mapping of the same memory).
fn dma_check(pt: &Passthrough, ctl: &File, data: &File, c: &Config, seed: u64) -> TestResult {
    let mut ctl_map = Mapping::new(ctl, CTL_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let off = c.len() - MIB;
    let mut data_map = Mapping::new(data, MIB, off, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    // SAFETY: the rings are at the start of `ctl_map`, mapped at
    // CTL_IOVA, which outlives `igb`; only `igb` writes them.
    let mut igb = unsafe { super::igb::start(pt, &ctl_map, CTL_IOVA)? };
    let src = MIB;
    ctl_map.bytes()[src as usize..src as usize + MAX_FRAME].copy_from_slice(&frame(seed, off));
    igb.submit(&[(CTL_IOVA + src, c.iova(c.maps - 1) + off, MAX_FRAME)])?;
    igb.wait(1, |_| MAX_FRAME, Duration::from_secs(30))?;
    if data_map.bytes()[..MAX_FRAME] != frame(seed, off) {
        return Err("the device's frame is not in the file".into());
    }
    Ok(Outcome::Pass)
}

pub fn lu_bench(ctx: &mut Ctx) -> TestResult {
    let c = config()?;
    match ctx.stage {
        1 => preserve(ctx, &c),
        2 => restore(&c),
        s => Err(format!("no stage {s}")),
    }
}

fn preserve(ctx: &mut Ctx, c: &Config) -> TestResult {
    let bdf = igb_bdf()?;
    mount()?;
    for f in ["lub-ctl", "lub-data"] {
        let _ = fs::remove_file(p(f));
    }
    let ctl = super::gmfs::create_sized(&p("lub-ctl"), CTL_LEN)?;
    let data = super::gmfs::create_sized(&p("lub-data"), c.len())?;
    // The upstream path's memory: a memfd of the same size, populated.
    let memfd = sys::memfd_create("lub-memfd").map_err(|e| e.to_string())?;
    // SAFETY: fallocate on a file we own, no pointers.
    if unsafe { libc::fallocate(memfd.as_raw_fd(), 0, 0, c.len() as i64) } != 0 {
        return Err(format!(
            "fallocate memfd: {}",
            std::io::Error::last_os_error()
        ));
    }
    bind_vfio_pci(&bdf)?;
    let t = Instant::now();
    let pt = Passthrough::open(&bdf)?;
    map_all(&pt, &ctl, &data, c)?;
    let map_gmfs = t.elapsed();
    pt.mark_preserve(HWPT_TOKEN)
        .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: {e}"))?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.create_session(SESSION).map_err(|e| e.to_string())?;
    session
        .preserve_fd(memfd.as_raw_fd(), MEMFD_TOKEN)
        .map_err(|e| format!("preserve the memfd: {e}"))?;
    let t = Instant::now();
    session
        .preserve_fd(pt.iommufd.as_raw_fd(), IOMMUFD_TOKEN)
        .map_err(|e| format!("preserve the iommufd: {e}"))?;
    let preserve = t.elapsed();
    diag(&format!(
        "{LINE_PREFIX}{} map_gmfs_us={} preserve_us={}",
        c.tag(),
        us(map_gmfs),
        us(preserve)
    ));
    ctx.keep.push(session.into_owned_fd());
    std::mem::forget(pt);
    std::mem::forget((ctl, data, memfd));
    Ok(Outcome::Kexec)
}

/// The number after `key` in the kernel log line containing `marker`.
fn logged(log: &[String], marker: &str, key: &str) -> Option<u64> {
    let line = log.iter().rev().find(|l| l.contains(marker))?;
    let at = line.find(key)? + key.len();
    line[at..]
        .split(|ch: char| !ch.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

fn restore(c: &Config) -> TestResult {
    let bdf = igb_bdf()?;
    mount()?;
    let ctl = open_rw("lub-ctl")?;
    let data = open_rw("lub-data")?;
    bind_vfio_pci(&bdf)?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;

    // This design: retrieve (restore + validation), find, bind, attach.
    let t = Instant::now();
    let fd = session
        .retrieve_fd(IOMMUFD_TOKEN)
        .map_err(|e| format!("retrieve the iommufd: {e}"))?;
    let retrieve = t.elapsed();
    let (pt, _) = Passthrough::restored(&bdf, File::from(fd), HWPT_TOKEN)?;
    let ours = t.elapsed();
    let ours_dev = pt.open_bind;
    dma_check(&pt, &ctl, &data, c, 0x1ab)?;
    drop(pt);

    // Upstream: the memfd back from LUO, a new iommufd/IOAS/HWPT, attach,
    // and every mapping made again (pinning the memfd's pages).
    let t = Instant::now();
    let memfd = File::from(
        session
            .retrieve_fd(MEMFD_TOKEN)
            .map_err(|e| format!("retrieve the memfd: {e}"))?,
    );
    let pt = Passthrough::open(&bdf)?;
    map_all(&pt, &ctl, &memfd, c)?;
    let remap = t.elapsed();
    let remap_dev = pt.open_bind;
    dma_check(&pt, &ctl, &memfd, c, 0x2cd)?;
    drop(pt);
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH: {e}"))?;

    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    let vtd_bytes = logged(&log, "DMAR-LU: handover of", "handover of ");
    let pages = logged(&log, "DMAR-LU: handover of", "device(s), ");
    let fd_bytes = logged(&log, "live update: handover of", "handover of ");
    let na = |v: Option<u64>| v.map_or("n/a".into(), |v| v.to_string());
    // The IOMMU part: everything but opening and binding the VFIO cdev
    // (vfio-pci resets the device at open), which both paths do alike.
    let ours_iommu = ours.saturating_sub(ours_dev);
    let remap_iommu = remap.saturating_sub(remap_dev);
    let ratio = ours_iommu.as_secs_f64() / remap_iommu.as_secs_f64();
    diag(&format!(
        "{LINE_PREFIX}{} ours_us={} ours_iommu_us={} retrieve_us={} remap_us={} remap_iommu_us={} iommu_ratio={ratio:.5} vtd_handover_bytes={} table_pages={} iommufd_handover_bytes={}",
        c.tag(),
        us(ours),
        us(ours_iommu),
        us(retrieve),
        us(remap),
        us(remap_iommu),
        na(vtd_bytes),
        na(pages),
        na(fd_bytes)
    ));
    drop((ctl, data, memfd));
    for f in ["lub-ctl", "lub-data"] {
        fs::remove_file(p(f)).map_err(|e| e.to_string())?;
    }
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_places_iovas() {
        let c = Config::parse("4,16,2m").unwrap();
        assert_eq!((c.gib, c.maps, c.leaf), (4, 16, "2m"));
        assert_eq!(c.iova(1) - c.iova(0), 5 * GIB);
        assert_eq!(c.iova(0) % GIB, 2 * MIB);
        for bad in ["", "4", "4,1", "4,1,8k", "0,1,1g", "1,0,1g", "1,1,1g,x"] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn logged_numbers() {
        let log = vec![
            "[ 1.0] DMAR-LU: handover of 312 bytes: 1 unit(s), 1 domain(s), 1 device(s), 7 pages"
                .to_string(),
        ];
        assert_eq!(
            logged(&log, "DMAR-LU: handover of", "handover of "),
            Some(312)
        );
        assert_eq!(logged(&log, "DMAR-LU: handover of", "device(s), "), Some(7));
        assert_eq!(logged(&log, "nothing", "x"), None);
    }
}
