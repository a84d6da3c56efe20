// SPDX-License-Identifier: GPL-2.0-only
//! The device end to end across kexec (issue 7): igb through VFIO cdev +
//! iommufd on an explicit HWPT over guestmemfs files. Stage 1 DMAs
//! pattern A, marks the HWPT, preserves the iommufd in a LUO session and
//! kexecs with the device still attached. Stage 2 checks that the VT-d
//! table the device is translated by is the one stage 1 left (debugfs,
//! before userspace takes anything), retrieves the iommufd, finds the
//! restored HWPT by token, binds and attaches the device without one map
//! call, DMAs pattern B to the same IOVAs and checks through mmaps of the
//! same files that B landed in the same pages and A is intact; no DMAR
//! fault may be logged.

use super::gmfs::{create_sized, mount, p, Mapping, MIB};
use super::igb::{
    dmar_faults, frame, fresh_seed, superpages, wait_fault, CTL_IOVA, CTL_LEN, DATA_IOVA, DATA_LEN,
    HOLE_IOVA,
};
use super::{Ctx, Outcome, TestResult};
use crate::igb::{Igb, MAX_FRAME};
use crate::iommu_debugfs::{self, Leaf};
use crate::ktap::diag;
use crate::liveupdate::{LiveUpdate, Session};
use crate::sys;
use crate::vfio::{bind_vfio_pci, Passthrough};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::time::Duration;

const SESSION: &str = "gtest-iommufd-igb";
const FD_TOKEN: u64 = 0x10fd;
const HWPT_TOKEN: u64 = 0x7e57_4857;
/// Sources in igb-ctl from 1 MiB, after the rings.
const SRC_OFF: u64 = MIB;
const BLOCK: u64 = 2 * MIB;
/// Pattern A lands at this offset of every 2 MiB block, B at the next.
const A_OFF: u64 = 4096;
const B_OFF: u64 = 8192;
/// Blocks of the 1 GiB file that get a frame (every 8th).
const STRIDE: u64 = 8;
/// A mapping made after the restore, and where its frame lands.
const EXTRA_IOVA: u64 = 0x5000_0000;
const C_OFF: u64 = 16384;

/// Marks `pt`'s HWPT and preserves its iommufd in a new LUO session,
/// which stays open into the kexec.
fn mark_and_preserve(ctx: &mut Ctx, pt: &Passthrough) -> Result<(), String> {
    pt.mark_preserve(HWPT_TOKEN)
        .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: {e}"))?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.create_session(SESSION).map_err(|e| e.to_string())?;
    session
        .preserve_fd(pt.iommufd.as_raw_fd(), FD_TOKEN)
        .map_err(|e| format!("preserve the iommufd: {e}"))?;
    ctx.keep.push(session.into_owned_fd());
    Ok(())
}

pub(super) fn igb_bdf() -> Result<String, String> {
    let devs = sys::find_pci(0x8086, 0x10c9).map_err(|e| e.to_string())?;
    Ok(devs
        .first()
        .ok_or("no igb (8086:10c9) in the VM")?
        .bdf
        .clone())
}

/// No WARN, BUG, lockdep report or stack dump in this boot's kernel log.
fn no_kernel_trouble(what: &str) -> Result<(), String> {
    let trouble = sys::kernel_trouble().map_err(|e| format!("kernel log: {e}"))?;
    match trouble.first() {
        Some(t) => Err(format!("{what}: the kernel logged {}", t.trim())),
        None => Ok(()),
    }
}

pub(super) fn open_rw(rel: &str) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p(rel))
        .map_err(|e| format!("{rel}: {e}"))
}

/// The destinations of a pattern: one frame per STRIDE-th block.
fn dsts(off: u64) -> Vec<u64> {
    (0..DATA_LEN / BLOCK)
        .step_by(STRIDE as usize)
        .map(|b| b * BLOCK + off)
        .collect()
}

/// DMAs `frame(seed, dst)` to DATA_IOVA + dst for every dst.
fn dma(igb: &mut Igb, ctl: &mut Mapping, seed: u64, dst: &[u64]) -> Result<(), String> {
    let bytes = ctl.bytes();
    let mut list = Vec::new();
    for (k, &d) in dst.iter().enumerate() {
        let s = SRC_OFF + (k * MAX_FRAME) as u64;
        bytes[s as usize..s as usize + MAX_FRAME].copy_from_slice(&frame(seed, d));
        list.push((CTL_IOVA + s, DATA_IOVA + d, MAX_FRAME));
    }
    igb.submit(&list)?;
    igb.wait(list.len(), |_| MAX_FRAME, Duration::from_secs(120))
}

fn check(data: &mut Mapping, seed: u64, dst: &[u64], what: &str) -> Result<(), String> {
    let d = data.bytes();
    for &o in dst {
        if d[o as usize..o as usize + MAX_FRAME] != frame(seed, o) {
            return Err(format!(
                "{what}: file offset {o:#x} does not hold the frame"
            ));
        }
    }
    Ok(())
}

fn leaves_note(leaves: &[Leaf]) -> String {
    leaves
        .iter()
        .map(|l| format!("{:x}:{:x}:{:x}", l.iova, l.size, l.phys))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn igb_kexec(ctx: &mut Ctx) -> TestResult {
    match ctx.stage {
        1 => preserve(ctx, None),
        2 => restore(ctx),
        s => Err(format!("no stage {s}")),
    }
}

/// Test-only damage of the handover (`lu_test_damage` parameters):
/// (parameter file, value, what the next kernel must log).
type Damage = (&'static str, &'static str, &'static str);

const IOMMUFD_DAMAGE: &str = "/sys/module/iommufd/parameters/lu_test_damage";
const VTD_DAMAGE: &str = "/sys/module/intel_iommu/parameters/lu_test_damage";

fn refusal_test(ctx: &mut Ctx, damage: Damage) -> TestResult {
    match ctx.stage {
        1 => preserve(ctx, Some(damage)),
        2 if damage.0 == GMFS_DAMAGE => refused_by_guestmemfs(ctx, damage.2),
        2 => refused(ctx, damage.2),
        s => Err(format!("no stage {s}")),
    }
}

const GMFS_DAMAGE: &str = "/sys/kernel/debug/guestmemfs/corrupt";

pub fn refuse_guestmemfs(ctx: &mut Ctx) -> TestResult {
    refusal_test(ctx, (GMFS_DAMAGE, "magic", "error -117"))
}

/// guestmemfs refused its own handover: no file can be held by inode, so
/// iommufd refuses too, and blocks the device; `-o reformat` works once
/// the session is finished.
fn refused_by_guestmemfs(ctx: &mut Ctx, reason: &str) -> TestResult {
    let bdf = igb_bdf()?;
    let _ = ctx;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    if session.retrieve_fd(FD_TOKEN).is_ok() {
        return Err("RETRIEVE_FD gave back an iommufd over a refused guestmemfs".into());
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    if !log.iter().any(|l| l.contains("refusing the filesystem")) {
        return Err("guestmemfs did not refuse its handover".into());
    }
    let line = log
        .iter()
        .find(|l| l.contains("refused") && l.contains(reason))
        .ok_or(format!("no iommufd refusal naming {reason:?} in the log"))?;
    diag(&format!("stage 2: {}", line.trim()));
    if !iommu_debugfs::read(&bdf)?.is_empty() {
        return Err("the device still translates after the refusal".into());
    }
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH after a refusal: {e}"))?;
    fs::create_dir_all(super::gmfs::MNT).map_err(|e| e.to_string())?;
    sys::mount("guestmemfs", super::gmfs::MNT, "guestmemfs", 0, "reformat")
        .map_err(|e| format!("mount -o reformat after the session finished: {e}"))?;
    diag("stage 2: device blocked; after FINISH, -o reformat starts an empty filesystem");
    Ok(Outcome::Pass)
}

pub fn refuse_version(ctx: &mut Ctx) -> TestResult {
    refusal_test(
        ctx,
        (IOMMUFD_DAMAGE, "version", "refused: unsupported version 99"),
    )
}

pub fn refuse_crc(ctx: &mut Ctx) -> TestResult {
    refusal_test(ctx, (IOMMUFD_DAMAGE, "crc", "refused: checksum mismatch"))
}

pub fn refuse_offset(ctx: &mut Ctx) -> TestResult {
    refusal_test(
        ctx,
        (
            IOMMUFD_DAMAGE,
            "offset",
            "translates elsewhere than the file's memory",
        ),
    )
}

pub fn refuse_inode(ctx: &mut Ctx) -> TestResult {
    refusal_test(ctx, (IOMMUFD_DAMAGE, "inode", "error -2"))
}

pub fn refuse_vtd_version(ctx: &mut Ctx) -> TestResult {
    refusal_test(
        ctx,
        (
            VTD_DAMAGE,
            "version",
            "handover refused: unsupported version",
        ),
    )
}

pub fn refuse_vtd_pages(ctx: &mut Ctx) -> TestResult {
    refusal_test(ctx, (VTD_DAMAGE, "pages", "not handed over"))
}

/// Whether `/sys/kernel/debug/iommu/intel/dmar_translation_struct` lists
/// a present context entry for `bdf` ("bb:dd.f" at the start of a line).
fn context_present(bdf: &str) -> Result<bool, String> {
    let path = "/sys/kernel/debug/iommu/intel/dmar_translation_struct";
    let dump = fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let rid = bdf.split_once(':').map_or(bdf, |(_, r)| r);
    Ok(dump.lines().any(|l| l.starts_with(&format!("{rid}\t"))))
}

/// Binds `bdf` to pci-pf-stub: a host driver that, unlike pci-stub and
/// vfio-pci (`driver_managed_dma`), takes the device's default domain at
/// bind, as igb or any DMA API user would. The driver core's result.
fn bind_host_driver(bdf: &str) -> std::io::Result<()> {
    let dev = format!("/sys/bus/pci/devices/{bdf}");
    if let Ok(link) = fs::read_link(format!("{dev}/driver")) {
        if link.ends_with("pci-pf-stub") {
            return Ok(());
        }
        fs::write(format!("{dev}/driver/unbind"), bdf)?;
    }
    fs::write(format!("{dev}/driver_override"), "pci-pf-stub")?;
    fs::write("/sys/bus/pci/drivers/pci-pf-stub/bind", bdf)
}

/// Nobody retrieves the preserved iommufd: while the device is held, a
/// host driver (pci-pf-stub) cannot bind it (EBUSY); `LIVEUPDATE_SESSION_FINISH` blocks
/// it and gives the domain's table pages back; then a host driver binds,
/// and the device gets its default domain at bind (a present context
/// entry) instead of staying blocked.
pub fn unretrieved(ctx: &mut Ctx) -> TestResult {
    if ctx.stage == 1 {
        return preserve(ctx, None);
    }
    let bdf = igb_bdf()?;
    if !context_present(&bdf)? {
        return Err("the held device has no context entry after the kexec".into());
    }
    match bind_host_driver(&bdf) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        r => {
            return Err(format!(
                "host driver (pci-pf-stub) bind of the held device: {r:?}, expected EBUSY"
            ))
        }
    }
    if fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver")).is_ok() {
        return Err("a host driver is bound to the held device".into());
    }
    diag("stage 2: a host driver (pci-pf-stub) cannot bind the held device (EBUSY)");
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH, iommufd never retrieved: {e}"))?;
    drop(session);
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    if !log
        .iter()
        .any(|l| l.contains("blocked: nobody took its preserved translation"))
    {
        return Err("FINISH did not log the unretrieved device as blocked".into());
    }
    // The never-restored domain's table pages are given back.
    let freed = log
        .iter()
        .find(|l| l.contains("dropped unrestored:"))
        .ok_or("FINISH did not free the unrestored domain's table pages")?;
    let counts: Vec<u64> = freed
        .split_once("dropped unrestored:")
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if counts.len() != 2 || counts[0] != counts[1] || counts[0] == 0 {
        return Err(format!("table pages not all freed: {}", freed.trim()));
    }
    diag(&format!("stage 2: {}", freed.trim()));
    if context_present(&bdf)? {
        return Err("FINISH left the unretrieved device's context entry".into());
    }
    bind_host_driver(&bdf).map_err(|e| format!("pci-pf-stub bind after FINISH: {e}"))?;
    let present = context_present(&bdf)?;
    let _ = fs::write(format!("/sys/bus/pci/devices/{bdf}/driver/unbind"), &bdf);
    if !present {
        return Err(
            "after FINISH a host driver bound, but the device has no context entry: its default domain was never attached"
                .into(),
        );
    }
    diag("stage 2: FINISH blocked the unretrieved device; pci-pf-stub then bound it and its default domain was attached at bind");
    no_kernel_trouble("unretrieved")?;
    mount()?;
    for f in ["lu-ctl", "lu-data"] {
        fs::remove_file(p(f)).map_err(|e| e.to_string())?;
    }
    Ok(Outcome::Pass)
}

fn preserve(ctx: &mut Ctx, damage: Option<Damage>) -> TestResult {
    let bdf = igb_bdf()?;
    if !superpages()? {
        return Err("the emulated VT-d offers no 2 MiB/1 GiB pages".into());
    }
    mount()?;
    for f in ["lu-ctl", "lu-data"] {
        let _ = fs::remove_file(p(f));
    }
    let ctl = create_sized(&p("lu-ctl"), CTL_LEN)?;
    let data = create_sized(&p("lu-data"), DATA_LEN)?;
    bind_vfio_pci(&bdf)?;
    let pt = Passthrough::open(&bdf)?;
    pt.map_file(&ctl, 0, CTL_LEN, CTL_IOVA)?;
    pt.map_file(&data, 0, DATA_LEN, DATA_IOVA)?;
    let mut ctl_map =
        Mapping::new(&ctl, CTL_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let mut data_map =
        Mapping::new(&data, DATA_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    // SAFETY: the rings are at the start of `ctl_map`, mapped at
    // CTL_IOVA, which outlives `igb`; only `igb` writes them.
    let mut igb = unsafe { super::igb::start(&pt, &ctl_map, CTL_IOVA)? };
    let seed = fresh_seed();
    let a = dsts(A_OFF);
    dma(&mut igb, &mut ctl_map, seed, &a)?;
    check(&mut data_map, seed, &a, "pattern A before kexec")?;
    drop(igb);

    let leaves = iommu_debugfs::read(&bdf)?;
    if leaves.is_empty() {
        return Err("no VT-d leaves before the kexec".into());
    }
    mark_and_preserve(ctx, &pt)?;
    diag(&format!(
        "stage 1: {} frames of pattern A DMAed; HWPT {} marked {HWPT_TOKEN:#x}; iommufd preserved in {SESSION:?}; {} leaves",
        a.len(),
        pt.hwpt_id,
        leaves.len()
    ));
    if let Some((param, value, _)) = damage {
        fs::write(param, value).map_err(|e| format!("{param}: {e}"))?;
        diag(&format!(
            "stage 1: handover will be damaged: {param} = {value}"
        ));
    }
    ctx.note_out = Some(format!("{seed:x};{}", leaves_note(&leaves)));
    // The device stays bound and attached across the kexec: the VFIO and
    // iommufd fds stay open until the kernel is replaced.
    std::mem::forget(pt);
    std::mem::forget((ctl_map, data_map, ctl, data));
    Ok(Outcome::Kexec)
}

fn restore(ctx: &mut Ctx) -> TestResult {
    let bdf = igb_bdf()?;
    let note = ctx.note_in.clone().ok_or("stage 1 left no note")?;
    let (seed, want) = note.split_once(';').ok_or("bad note")?;
    let seed_a = u64::from_str_radix(seed, 16).map_err(|e| e.to_string())?;
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    if !log
        .iter()
        .any(|l| l.contains("adopted the previous kernel's translation tables"))
    {
        return Err("VT-d did not adopt the handed-over tables".into());
    }
    // Before userspace takes anything: the device is translated by the
    // very table stage 1 built.
    let before = leaves_note(&iommu_debugfs::read(&bdf)?);
    if before != want {
        return Err(format!(
            "VT-d table after kexec differs: {before} vs {want} before"
        ));
    }
    diag("stage 2: the device's VT-d table is the one stage 1 left (debugfs)");
    let faults0 = dmar_faults(&bdf)?.len();

    mount()?;
    let ctl = open_rw("lu-ctl")?;
    let data = open_rw("lu-data")?;
    let mut ctl_map =
        Mapping::new(&ctl, CTL_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let mut data_map =
        Mapping::new(&data, DATA_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let a = dsts(A_OFF);
    check(&mut data_map, seed_a, &a, "pattern A after kexec")?;

    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    let fd = session
        .retrieve_fd(FD_TOKEN)
        .map_err(|e| format!("retrieve the iommufd: {e}"))?;
    bind_vfio_pci(&bdf)?;
    let (pt, ioas_id) = Passthrough::restored(&bdf, File::from(fd), HWPT_TOKEN)?;
    // The restored IOAS holds the mappings: mapping over them is refused.
    let again = pt.remap_probe(ioas_id, &data, DATA_IOVA);
    if again != Some(libc::EEXIST) {
        return Err(format!(
            "IOMMU_IOAS_MAP_FILE over a restored mapping: {again:?}, expected EEXIST"
        ));
    }
    // SAFETY: the rings are at the start of `ctl_map`, mapped at
    // CTL_IOVA, which outlives `igb`; only `igb` writes them.
    let mut igb = unsafe { super::igb::start(&pt, &ctl_map, CTL_IOVA)? };
    let seed_b = seed_a.rotate_left(17) ^ 0x5a5a;
    let b = dsts(B_OFF);
    dma(&mut igb, &mut ctl_map, seed_b, &b)?;
    check(&mut data_map, seed_b, &b, "pattern B after kexec")?;
    check(&mut data_map, seed_a, &a, "pattern A after pattern B")?;
    let after = leaves_note(&iommu_debugfs::read(&bdf)?);
    if after != want {
        return Err(format!("VT-d table after the attach differs: {after}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let faults = dmar_faults(&bdf)?;
    if faults.len() > faults0 {
        return Err(format!("DMA faults logged: {:?}", &faults[faults0..]));
    }

    // The restored IOAS is an ordinary one: a new mapping (2 MiB of the
    // data file's last block, at an IOVA never used) takes DMA, and goes.
    let extra_off = DATA_LEN - BLOCK;
    pt.map_in(ioas_id, &data, extra_off, BLOCK, EXTRA_IOVA)?;
    let seed_c = seed_b ^ 0xc0ffee;
    let c_dst = extra_off + C_OFF;
    {
        let bytes = ctl_map.bytes();
        let s = SRC_OFF as usize;
        bytes[s..s + MAX_FRAME].copy_from_slice(&frame(seed_c, c_dst));
    }
    igb.submit(&[(CTL_IOVA + SRC_OFF, EXTRA_IOVA + C_OFF, MAX_FRAME)])?;
    igb.wait(1, |_| MAX_FRAME, Duration::from_secs(30))?;
    check(
        &mut data_map,
        seed_c,
        &[c_dst],
        "DMA through a mapping made after restore",
    )?;
    pt.unmap_in(ioas_id, EXTRA_IOVA, BLOCK)?;

    // A freshly built HWPT on the restored IOAS replaces the restored one
    // while the device copies frames: nothing is lost (replaces back and
    // forth during 50 batches, ending on the new HWPT).
    let new_hwpt = pt.alloc_hwpt(ioas_id)?;
    let spread: Vec<u64> = b.iter().take(32).map(|o| o + 2048).collect();
    let replaces = super::igb::replace_under_dma(
        &pt,
        &mut igb,
        &mut ctl_map,
        super::igb::Sink {
            map: &mut data_map,
            iova: DATA_IOVA,
            offsets: &spread,
        },
        [pt.hwpt_id, new_hwpt],
        50,
        (&bdf, faults0),
    )?;
    diag(&format!(
        "stage 2: {replaces} replaces between the restored HWPT and a new one during 50 DMA batches: all landed, no DMAR fault"
    ));
    let d: Vec<u64> = b.iter().map(|o| o + 4096).collect();
    dma(&mut igb, &mut ctl_map, seed_c, &d)?;
    check(&mut data_map, seed_c, &d, "DMA through the replacing HWPT")?;
    check(&mut data_map, seed_a, &a, "pattern A after the replace")?;

    // A DMA to an IOVA that was never mapped still faults.
    let s = SRC_OFF as usize;
    ctl_map.bytes()[s..s + MAX_FRAME].copy_from_slice(&frame(seed_c, 0));
    igb.submit(&[(CTL_IOVA + SRC_OFF, HOLE_IOVA, MAX_FRAME)])?;
    let _ = igb.wait(1, |_| MAX_FRAME, Duration::from_secs(5));
    wait_fault(&bdf, faults0, HOLE_IOVA, true)?;
    drop(igb);
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH: {e}"))?;
    no_kernel_trouble("after the restore and FINISH")?;
    diag(&format!(
        "stage 2: restored HWPT {} (IOAS {ioas_id}) attached with no map call; {} frames of pattern B landed in the same guestmemfs pages, pattern A intact, no DMAR faults; a new mapping took DMA and went; HWPT {new_hwpt} replaced the restored one and took DMA; an unmapped IOVA faults; session finished",
        pt.hwpt_id,
        b.len()
    ));
    drop(pt);
    drop((ctl_map, data_map, ctl, data));
    for f in ["lu-ctl", "lu-data"] {
        fs::remove_file(p(f)).map_err(|e| e.to_string())?;
    }
    Ok(Outcome::Pass)
}

/// Stage 2 of a damaged handover: the refusal is logged with its reason,
/// RETRIEVE_FD fails, the device is blocked (no translation left), the
/// guestmemfs data is intact, and the device works again from scratch.
fn refused(ctx: &mut Ctx, reason: &str) -> TestResult {
    let bdf = igb_bdf()?;
    let note = ctx.note_in.clone().ok_or("stage 1 left no note")?;
    let (seed, _) = note.split_once(';').ok_or("bad note")?;
    let seed_a = u64::from_str_radix(seed, 16).map_err(|e| e.to_string())?;
    mount()?;
    let ctl = open_rw("lu-ctl")?;
    let data = open_rw("lu-data")?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    if session.retrieve_fd(FD_TOKEN).is_ok() {
        return Err("RETRIEVE_FD gave back an iommufd from a damaged handover".into());
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    let line = log
        .iter()
        .find(|l| l.contains("refused") && l.contains(reason))
        .ok_or(format!("no refusal naming {reason:?} in the log"))?;
    diag(&format!("stage 2: {}", line.trim()));
    // Blocked: the device's context entry is gone (debugfs shows no table),
    // and the kernel said so.
    let leaves = iommu_debugfs::read(&bdf)?;
    let blocked = log.iter().any(|l| {
        l.contains("blocked: nobody took its preserved translation")
            || l.contains("every device is blocked")
    });
    if !blocked {
        return Err("no log line says the preserved device was blocked".into());
    }
    if !leaves.is_empty() {
        return Err(format!(
            "the device still translates after the refusal: {} leaves",
            leaves.len()
        ));
    }
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH after a refusal: {e}"))?;
    let mut data_map =
        Mapping::new(&data, DATA_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let a = dsts(A_OFF);
    check(&mut data_map, seed_a, &a, "pattern A after the refusal")?;

    // Nothing is left half-owned: the device maps and DMAs from scratch.
    bind_vfio_pci(&bdf)?;
    let pt = Passthrough::open(&bdf)?;
    pt.map_file(&ctl, 0, CTL_LEN, CTL_IOVA)?;
    pt.map_file(&data, 0, DATA_LEN, DATA_IOVA)?;
    let mut ctl_map =
        Mapping::new(&ctl, CTL_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    // SAFETY: the rings are at the start of `ctl_map`, mapped at
    // CTL_IOVA, which outlives `igb`; only `igb` writes them.
    let mut igb = unsafe { super::igb::start(&pt, &ctl_map, CTL_IOVA)? };
    let seed_b = seed_a ^ 0xb10c;
    let b = dsts(B_OFF);
    dma(&mut igb, &mut ctl_map, seed_b, &b)?;
    check(&mut data_map, seed_b, &b, "DMA after the refusal")?;
    crate::kmemleak::check("after the refusal")?;
    no_kernel_trouble("after the refusal")?;
    drop(igb);
    drop(pt);
    drop((ctl_map, data_map, ctl, data));
    for f in ["lu-ctl", "lu-data"] {
        fs::remove_file(p(f)).map_err(|e| e.to_string())?;
    }
    Ok(Outcome::Pass)
}

/// The preservation is undone when the session is closed before any
/// kexec: while preserved the HWPT cannot be destroyed; after the close it
/// can, the mappings go, and the guestmemfs files shrink again (no hold
/// left behind).
pub fn abort(_ctx: &mut Ctx) -> TestResult {
    let bdf = igb_bdf()?;
    mount()?;
    for f in ["lu-ctl", "lu-data"] {
        let _ = fs::remove_file(p(f));
    }
    let ctl = create_sized(&p("lu-ctl"), CTL_LEN)?;
    bind_vfio_pci(&bdf)?;
    let pt = Passthrough::open(&bdf)?;
    pt.map_file(&ctl, 0, CTL_LEN, CTL_IOVA)?;
    pt.mark_preserve(HWPT_TOKEN)
        .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: {e}"))?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.create_session(SESSION).map_err(|e| e.to_string())?;
    session
        .preserve_fd(pt.iommufd.as_raw_fd(), FD_TOKEN)
        .map_err(|e| format!("preserve the iommufd: {e}"))?;
    match pt.iommufd.destroy_iommu_object(pt.hwpt_id) {
        Err(e) if e.to_string().contains("busy") => {}
        r => {
            return Err(format!(
                "IOMMU_DESTROY of a preserved HWPT: {r:?}, expected EBUSY"
            ))
        }
    }
    // A second preservation of the same iommufd is refused by LUO.
    if session
        .preserve_fd(pt.iommufd.as_raw_fd(), FD_TOKEN + 1)
        .is_ok()
    {
        return Err("the same iommufd was preserved twice".into());
    }
    drop(session);
    diag("session closed before any kexec: the iommufd is unpreserved");
    let hwpt = pt.hwpt_id;
    let iommufd = std::sync::Arc::clone(&pt.iommufd);
    drop(pt);
    if iommufd.destroy_iommu_object(hwpt).is_ok() {
        return Err("the HWPT outlived its Passthrough".into());
    }
    ctl.set_len(0)
        .map_err(|e| format!("truncating the unmapped file: {e}"))?;
    drop(ctl);
    fs::remove_file(p("lu-ctl")).map_err(|e| e.to_string())?;
    crate::kmemleak::check("after the aborted preservation")?;
    Ok(Outcome::Pass)
}

/// Fault injection over the restore: stage 2n makes the n-th allocation
/// of `RETRIEVE_FD` fail (`/proc/self/task/<tid>/fail-nth`, failslab and
/// fail_page_alloc), stage 2n+1 preserves again; until an n that the
/// restore never reaches. Every failure must leave a clean state: after
/// `FINISH` the device is blocked and the mapped files shrink (no hold
/// left); a success must give the HWPT back.
pub fn fail_nth_restore(ctx: &mut Ctx) -> TestResult {
    const MAX: u32 = 200;
    if ctx.stage % 2 == 1 {
        return fail_nth_restore_setup(ctx);
    }
    let n = ctx.stage / 2;
    if n > MAX {
        return Err(format!("the restore still fails at allocation {MAX}"));
    }
    let bdf = igb_bdf()?;
    setup_fault_injection()?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    // SAFETY: gettid(2) has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let nth = format!("/proc/self/task/{tid}/fail-nth");
    fs::write(&nth, n.to_string()).map_err(|e| format!("{nth}: {e}"))?;
    let got = session.retrieve_fd(FD_TOKEN);
    let left = fs::read_to_string(&nth).unwrap_or_default();
    let _ = fs::write(&nth, "0");
    let consumed = left.trim() == "0";
    match got {
        Ok(fd) => {
            let iommufd = iommufd_ioctls::IommuFd::new_from_fd(File::from(fd));
            crate::vfio::find_restored(&iommufd, HWPT_TOKEN)
                .map_err(|e| format!("restored at fail-nth {n}, but FIND_RESTORED: {e}"))?;
        }
        Err(_) if !consumed => {
            return Err(format!(
                "RETRIEVE_FD failed at fail-nth {n} with no injected failure"
            ))
        }
        Err(_) => {}
    }
    end_fail_round(
        session,
        luo,
        &bdf,
        &format!("RETRIEVE_FD fail-nth {n}"),
        consumed,
    )?;
    if !consumed {
        diag(&format!(
            "the restore made fewer than {n} allocations; every earlier one failed cleanly"
        ));
        return Ok(Outcome::Pass);
    }
    fail_nth_restore_setup(ctx)
}

/// Fault injection at boot, where no userspace fail-nth reaches: the
/// VT-d driver's test-only fault attribute `intel_iommu.lu_fail_adopt=N,100,0,1`,
/// set for the next boot only, fails the N-th allocation of its handover
/// retrieve and table adoption, for N = 1, 2, ... (a kexec each). Every
/// boot: no WARN or BUG; RETRIEVE_FD fails, or gives back a HWPT that
/// FIND_RESTORED finds; FINISH works; the device, never attached, keeps no
/// translation; no guestmemfs hold and no kmemleak object is left. The
/// first N the boot does not reach must restore normally; it ends the test.
pub fn fail_nth_adopt(ctx: &mut Ctx) -> TestResult {
    const MAX: u32 = 50;
    if ctx.stage == 1 {
        return fail_nth_adopt_setup(ctx, 1);
    }
    let n = ctx.stage - 1;
    let bdf = igb_bdf()?;
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    let injected = log
        .iter()
        .any(|l| l.contains("FAULT_INJECTION: forcing a failure"));
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    let got = session.retrieve_fd(FD_TOKEN);
    let restored = match got {
        Ok(fd) => {
            let iommufd = iommufd_ioctls::IommuFd::new_from_fd(File::from(fd));
            crate::vfio::find_restored(&iommufd, HWPT_TOKEN).map_err(|e| {
                format!("lu_fail_adopt {n}: RETRIEVE_FD worked, but FIND_RESTORED: {e}")
            })?;
            true
        }
        Err(e) if !injected => {
            return Err(format!(
                "lu_fail_adopt {n}: no failure was injected, yet RETRIEVE_FD: {e}"
            ))
        }
        Err(_) => false,
    };
    end_fail_round(session, luo, &bdf, &format!("lu_fail_adopt {n}"), true)?;
    if !injected {
        if !restored {
            return Err(format!(
                "lu_fail_adopt {n}: nothing injected, nothing restored"
            ));
        }
        diag(&format!(
            "the boot-time handover made fewer than {n} allocations; every earlier one failed cleanly"
        ));
        return Ok(Outcome::Pass);
    }
    if n >= MAX {
        return Err(format!("the adoption still fails at allocation {MAX}"));
    }
    fail_nth_adopt_setup(ctx, n + 1)
}

fn fail_nth_adopt_setup(ctx: &mut Ctx, n: u32) -> TestResult {
    let outcome = fail_nth_restore_setup(ctx)?;
    ctx.once_out
        .push(format!("intel_iommu.lu_fail_adopt={n},100,0,1"));
    Ok(outcome)
}

/// The end of a fault-injection round after a kexec: `FINISH` works and,
/// if `blocked`, leaves the device no translation; the mapped files shrink
/// (no hold leaked); no kmemleak object and no kernel warning is left.
fn end_fail_round(
    session: Session,
    luo: LiveUpdate,
    bdf: &str,
    what: &str,
    blocked: bool,
) -> Result<(), String> {
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH at {what}: {e}"))?;
    // /dev/liveupdate has one opener: the next preservation needs it
    drop(session);
    drop(luo);
    if blocked && !iommu_debugfs::read(bdf)?.is_empty() {
        return Err(format!("{what}: the device still translates after FINISH"));
    }
    mount()?;
    for f in ["lu-ctl", "lu-data"] {
        open_rw(f)?
            .set_len(0)
            .map_err(|e| format!("{what}: {f} cannot shrink (a hold leaked?): {e}"))?;
        fs::remove_file(p(f)).map_err(|e| e.to_string())?;
    }
    crate::kmemleak::check(what)?;
    no_kernel_trouble(what)
}

fn fail_nth_restore_setup(ctx: &mut Ctx) -> TestResult {
    let bdf = igb_bdf()?;
    mount()?;
    for f in ["lu-ctl", "lu-data"] {
        let _ = fs::remove_file(p(f));
    }
    let ctl = create_sized(&p("lu-ctl"), CTL_LEN)?;
    let data = create_sized(&p("lu-data"), 8 * MIB)?;
    bind_vfio_pci(&bdf)?;
    let pt = Passthrough::open(&bdf)?;
    pt.map_file(&ctl, 0, CTL_LEN, CTL_IOVA)?;
    pt.map_file(&data, 0, 8 * MIB, DATA_IOVA)?;
    mark_and_preserve(ctx, &pt)?;
    std::mem::forget(pt);
    std::mem::forget((ctl, data));
    Ok(Outcome::Kexec)
}

/// As `iommufd_fail_nth.c` sets it up: any allocation may fail, quietly.
pub(super) fn setup_fault_injection() -> Result<(), String> {
    let d = "/sys/kernel/debug";
    fs::write(format!("{d}/failslab/ignore-gfp-wait"), "N")
        .map_err(|e| format!("failslab (CONFIG_FAILSLAB): {e}"))?;
    for (f, v) in [
        ("fail_page_alloc/ignore-gfp-wait", "N"),
        ("fail_page_alloc/ignore-gfp-highmem", "N"),
        ("failslab/verbose", "0"),
        ("fail_page_alloc/verbose", "0"),
    ] {
        let _ = fs::write(format!("{d}/{f}"), v);
    }
    Ok(())
}

/// The fail-nth file of the calling thread.
fn fail_nth_file() -> String {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    format!("/proc/self/task/{tid}/fail-nth")
}

/// Runs `f` with the `n`-th allocation of this thread failing; says
/// whether an allocation was made to fail.
pub(super) fn with_fail_nth<T>(n: u32, f: impl FnOnce() -> T) -> Result<(T, bool), String> {
    let nth = fail_nth_file();
    fs::write(&nth, n.to_string()).map_err(|e| format!("{nth}: {e}"))?;
    let r = f();
    let left = fs::read_to_string(&nth).unwrap_or_default();
    let _ = fs::write(&nth, "0");
    Ok((r, left.trim() == "0"))
}

/// After a failed preservation: the session closed, the HWPT can be
/// destroyed and the file shrinks (no hold, no mark left behind).
fn check_unpreserved(pt: Passthrough, ctl: File, what: &str) -> Result<(), String> {
    let iommufd = std::sync::Arc::clone(&pt.iommufd);
    let hwpt = pt.hwpt_id;
    drop(pt);
    if iommufd.destroy_iommu_object(hwpt).is_ok() {
        return Err(format!("{what}: the HWPT outlived its Passthrough"));
    }
    ctl.set_len(0)
        .map_err(|e| format!("{what}: the mapped file cannot shrink (hold left?): {e}"))?;
    Ok(())
}

/// Fault injection over `LIVEUPDATE_SESSION_PRESERVE_FD` of an iommufd,
/// then over the freeze that `reboot(KEXEC)` runs: each allocation fails
/// in turn; each failure leaves nothing behind (the session closes, the
/// HWPT is destroyable, the file shrinks) and a failed freeze fails the
/// reboot, which returns; the first n the freeze does not reach kexecs,
/// and stage 2 gets the HWPT back.
pub fn fail_nth_preserve(ctx: &mut Ctx) -> TestResult {
    const MAX: u32 = 200;
    if ctx.stage == 2 {
        let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
        let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
        let fd = session
            .retrieve_fd(FD_TOKEN)
            .map_err(|e| format!("retrieve after the freeze fault injection: {e}"))?;
        let iommufd = iommufd_ioctls::IommuFd::new_from_fd(File::from(fd));
        crate::vfio::find_restored(&iommufd, HWPT_TOKEN).map_err(|e| e.to_string())?;
        session.finish().map_err(|e| e.to_string())?;
        let n: u32 = ctx
            .note_in
            .as_deref()
            .and_then(|n| n.parse().ok())
            .ok_or("no note from stage 1")?;
        if n < 2 {
            return Err("no allocation of the freeze was made to fail".into());
        }
        diag(&format!(
            "stage 2: freeze: {} allocations failed in turn, each failing reboot(KEXEC) cleanly; the HWPT preserved at the last try is back",
            n - 1
        ));
        return Ok(Outcome::Pass);
    }
    let bdf = igb_bdf()?;
    setup_fault_injection()?;
    mount()?;
    bind_vfio_pci(&bdf)?;
    let setup = || -> Result<(Passthrough, File), String> {
        let _ = fs::remove_file(p("lu-ctl"));
        let ctl = create_sized(&p("lu-ctl"), CTL_LEN)?;
        let pt = Passthrough::open(&bdf)?;
        pt.map_file(&ctl, 0, CTL_LEN, CTL_IOVA)?;
        pt.mark_preserve(HWPT_TOKEN)
            .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: {e}"))?;
        Ok((pt, ctl))
    };

    // The preserve.
    let mut n = 1;
    loop {
        if n > MAX {
            return Err(format!("the preserve still fails at allocation {MAX}"));
        }
        let (pt, ctl) = setup()?;
        let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
        let session = luo.create_session(SESSION).map_err(|e| e.to_string())?;
        let (r, consumed) =
            with_fail_nth(n, || session.preserve_fd(pt.iommufd.as_raw_fd(), FD_TOKEN))?;
        if r.is_err() && !consumed {
            return Err(format!(
                "preserve failed at fail-nth {n} with no injected failure"
            ));
        }
        drop(session);
        drop(luo);
        check_unpreserved(pt, ctl, &format!("preserve fail-nth {n}"))?;
        if !consumed {
            break;
        }
        n += 1;
    }
    diag(&format!(
        "preserve: {} allocations failed in turn, each cleanly",
        n - 1
    ));
    crate::kmemleak::check("after the PRESERVE_FD fault injection")?;

    // The freeze, in reboot(KEXEC).
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| e.to_string())?;
    let boot = crate::cmdline::TestBoot::parse(&cmdline)?;
    let index = boot
        .run
        .iter()
        .position(|t| t == "iommufd_lu_fail_nth_preserve")
        .ok_or("not in gtest.run")?;
    let mut n = 1;
    loop {
        if n > MAX {
            return Err(format!("the freeze still fails at allocation {MAX}"));
        }
        let (pt, ctl) = setup()?;
        let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
        let session = luo.create_session(SESSION).map_err(|e| e.to_string())?;
        session
            .preserve_fd(pt.iommufd.as_raw_fd(), FD_TOKEN)
            .map_err(|e| format!("preserve: {e}"))?;
        let next = boot.next_cmdline(index, 2, Some(&n.to_string()), &[]);
        sys::kexec_load_same_kernel(&next).map_err(|e| format!("kexec_file_load: {e}"))?;
        diag(&format!(
            "freeze: reboot(KEXEC) with allocation {n} failing"
        ));
        // SAFETY: plain system calls without pointers.
        unsafe { libc::sync() };
        let (r, consumed) = with_fail_nth(n, || {
            // SAFETY: as above; on success this does not return.
            unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) }
        })?;
        // Still here: the freeze failed, or the kexec did.
        if !consumed {
            return Err(format!(
                "reboot(KEXEC) returned {r} at fail-nth {n} with no injected failure"
            ));
        }
        drop(session);
        drop(luo);
        check_unpreserved(pt, ctl, &format!("freeze fail-nth {n}"))?;
        crate::kmemleak::check(&format!("freeze fail-nth {n}"))?;
        n += 1;
    }
}

/// Two devices on the same VT-d unit: 00:02.0 on the marked HWPT of a
/// preserved iommufd, 00:06.0 on a HWPT of another iommufd, not preserved,
/// mapping its own guestmemfs file at the same IOVA. After the kexec the
/// first is translated by the table it had; the second has no translation
/// left (debugfs), and a DMA it makes to its old IOVA faults.
pub fn unpreserved_device(ctx: &mut Ctx) -> TestResult {
    let devs = sys::find_pci(0x8086, 0x10c9).map_err(|e| e.to_string())?;
    let [a, b] = devs.as_slice() else {
        return Err(format!(
            "{} igb devices, expected 2 (gtest.second_igb=1)",
            devs.len()
        ));
    };
    let (a, b) = (a.bdf.clone(), b.bdf.clone());
    if ctx.stage == 2 {
        let want = ctx.note_in.clone().ok_or("stage 1 left no note")?;
        let got_a = leaves_note(&iommu_debugfs::read(&a)?);
        if got_a != want {
            return Err(format!("{a}: VT-d table after kexec {got_a}, was {want}"));
        }
        let got_b = iommu_debugfs::read(&b)?;
        if !got_b.is_empty() {
            return Err(format!("{b} (not preserved) still translates: {got_b:x?}"));
        }
        // Its old IOVA faults: rings in a new file at another IOVA.
        mount()?;
        let _ = fs::remove_file(p("lu-b2"));
        let rings_file = create_sized(&p("lu-b2"), CTL_LEN)?;
        let faults0 = dmar_faults(&b)?.len();
        bind_vfio_pci(&b)?;
        let ptb = Passthrough::open(&b)?;
        let rings_iova = 0x2000_0000;
        ptb.map_file(&rings_file, 0, CTL_LEN, rings_iova)?;
        let mut rings =
            Mapping::new(&rings_file, CTL_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        // SAFETY: the rings are at the start of `rings`, mapped at
        // rings_iova, which outlives `igb`; only `igb` writes them.
        let mut igb = unsafe { super::igb::start(&ptb, &rings, rings_iova)? };
        let s = SRC_OFF as usize;
        rings.bytes()[s..s + MAX_FRAME].copy_from_slice(&frame(7, 0));
        igb.submit(&[(rings_iova + SRC_OFF, CTL_IOVA, MAX_FRAME)])?;
        let _ = igb.wait(1, |_| MAX_FRAME, Duration::from_secs(5));
        wait_fault(&b, faults0, CTL_IOVA, false)?;
        drop(igb);
        drop(ptb);
        // The preserved one comes back as usual.
        let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
        let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
        let fd = session
            .retrieve_fd(FD_TOKEN)
            .map_err(|e| format!("retrieve the iommufd: {e}"))?;
        bind_vfio_pci(&a)?;
        let (pta, _) = Passthrough::restored(&a, File::from(fd), HWPT_TOKEN)?;
        session.finish().map_err(|e| e.to_string())?;
        drop(pta);
        for f in ["lu-ctl", "lu-b", "lu-b2"] {
            let _ = fs::remove_file(p(f));
        }
        diag(&format!(
            "stage 2: {a} kept its table; {b} has none and its DMA to {CTL_IOVA:#x} faults; {a}'s HWPT restored"
        ));
        return Ok(Outcome::Pass);
    }
    mount()?;
    for f in ["lu-ctl", "lu-b"] {
        let _ = fs::remove_file(p(f));
    }
    let ctl = create_sized(&p("lu-ctl"), CTL_LEN)?;
    let other = create_sized(&p("lu-b"), CTL_LEN)?;
    bind_vfio_pci(&a)?;
    bind_vfio_pci(&b)?;
    let pta = Passthrough::open(&a)?;
    pta.map_file(&ctl, 0, CTL_LEN, CTL_IOVA)?;
    let ptb = Passthrough::open(&b)?;
    ptb.map_file(&other, 0, CTL_LEN, CTL_IOVA)?;
    let leaves_a = iommu_debugfs::read(&a)?;
    if iommu_debugfs::read(&b)?.is_empty() || leaves_a.is_empty() {
        return Err("both devices should translate before the kexec".into());
    }
    mark_and_preserve(ctx, &pta)?;
    ctx.note_out = Some(leaves_note(&leaves_a));
    // Both stay attached into the kexec.
    std::mem::forget((pta, ptb, ctl, other));
    Ok(Outcome::Kexec)
}
