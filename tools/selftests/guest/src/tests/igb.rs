// SPDX-License-Identifier: GPL-2.0-only
//! A passthrough device DMAing into guestmemfs (issue 7): QEMU's igb
//! bound to vfio-pci, opened through its VFIO cdev with the rust-vmm
//! crates, attached to an explicit HWPT; guestmemfs files mapped with
//! `IOMMU_IOAS_MAP_FILE`; the device copies frames (MAC loopback) into
//! them; the data is checked through a CPU mapping of the same files, the
//! VT-d page table (debugfs) is checked for 1 GiB, 2 MiB and 4 KiB leaves
//! at the right addresses, and no DMA fault may be logged, except for the
//! one frame sent on purpose to an unmapped IOVA.

use super::gmfs::{create_sized, mount, p, Mapping, GIB, MIB};
use super::region::region;
use super::{Ctx, Outcome, TestResult};
use crate::igb::{Igb, Rings, MAX_FRAME, RING_BYTES};
use crate::iommu_debugfs::{self, Leaf};
use crate::ktap::diag;
use crate::vfio::{bind_vfio_pci, Passthrough};
use crate::{pattern, sys};
use std::fs;
use std::time::{Duration, Instant};

pub(super) const CTL_IOVA: u64 = 0x1000_0000;
pub(super) const CTL_LEN: u64 = 8 * MIB;
pub(super) const DATA_IOVA: u64 = 1 << 32;
pub(super) const DATA_LEN: u64 = GIB;
/// `igb-ctl [7 MiB, 7 MiB + 16 KiB)` again, at an IOVA that is not 2 MiB
/// aligned: 4 KiB leaves.
const SMALL_IOVA: u64 = 0x2000_1000;
const SMALL_OFF: u64 = 7 * MIB;
const SMALL_LEN: u64 = 16 * 1024;
/// Never mapped.
pub(super) const HOLE_IOVA: u64 = 0x3_0000_0000;
/// Sources: 1 KiB per frame in `igb-ctl` from 1 MiB (after the rings).
const SRC_OFF: u64 = MIB;
const BLOCK: u64 = 2 * MIB;

pub(super) fn dmar_faults(bdf: &str) -> Result<Vec<String>, String> {
    Ok(sys::kernel_log()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| l.contains("DMAR: [") && l.contains(bdf))
        .collect())
}

/// The frame for destination offset `dst`: a fixed Ethernet header (the
/// loopback parses it) and the pattern of `seed` at `dst`.
pub(super) fn frame(seed: u64, dst: u64) -> [u8; MAX_FRAME] {
    let mut f = [0u8; MAX_FRAME];
    pattern::fill(seed, dst, &mut f);
    f[..14].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5]);
    f
}

/// Any non-zero byte in the frame-sized range of `bytes` at `at`.
fn dirty(bytes: &[u8], at: u64) -> bool {
    bytes[at as usize..at as usize + MAX_FRAME]
        .iter()
        .any(|&x| x != 0)
}

/// Enables memory space and bus mastering, then resets and starts the
/// igb with its rings at the start of `ctl`, which the device sees at
/// `ctl_iova`.
///
/// # Safety
///
/// `ctl` must outlive the returned [`Igb`], be mapped at `ctl_iova` in the
/// device's IOAS, and its first `2 * RING_BYTES` be written only through
/// the `Igb` (the contract of [`Igb::init`]).
pub(super) unsafe fn start(pt: &Passthrough, ctl: &Mapping, ctl_iova: u64) -> Result<Igb, String> {
    pt.config_set16(0x4, 0x2 | 0x4)?;
    let rings = Rings {
        tx: ctl.ptr,
        tx_iova: ctl_iova,
        // SAFETY: the caller guarantees `ctl` is longer than two rings.
        rx: unsafe { ctl.ptr.add(RING_BYTES as usize) },
        rx_iova: ctl_iova + RING_BYTES,
    };
    // SAFETY: forwarded from the caller.
    unsafe { Igb::init(pt.bar0()?, rings) }
}

/// A seed that changes every run: a stale file cannot pass for fresh DMA.
pub(super) fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Waits up to 5 s for `bdf`'s DMAR fault at `iova` among the faults
/// logged after the first `faults0`, and returns its line. With `only`,
/// any other new fault of `bdf` is an error.
pub(super) fn wait_fault(
    bdf: &str,
    faults0: usize,
    iova: u64,
    only: bool,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let planted = format!("fault addr {iova:#x} ");
    loop {
        let f = dmar_faults(bdf)?;
        let new: Vec<&String> = f.iter().skip(faults0).collect();
        if let Some(line) = new.iter().find(|l| l.contains(&planted)) {
            if let Some(other) = new.iter().find(|l| only && !l.contains(&planted)) {
                return Err(format!("DMA fault logged: {other}"));
            }
            return Ok((*line).clone());
        }
        if Instant::now() > deadline {
            return Err(format!("{bdf}: a DMA to {iova:#x} logged no DMAR fault"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity only access the set they are given.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(format!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Where the frames of [`replace_under_dma`] land: `map` is mapped at
/// `iova`, one frame per offset.
pub(super) struct Sink<'a> {
    pub map: &'a mut Mapping,
    pub iova: u64,
    pub offsets: &'a [u64],
}

/// The igb copies `batches` batches of frames into the sink on the first
/// CPU while the second replaces the device's HWPT back and forth the
/// whole time, between `hwpts[1]` and `hwpts[0]` (the device starts on
/// `hwpts[0]` and ends on `hwpts[1]`; both on an IOAS that maps
/// `CTL_IOVA` to `ctl` and the sink). A replace that passes through a
/// blocked context entry makes a DMA in flight fault: every frame must
/// land and `dmar.0` may log no DMAR fault after the first `dmar.1`.
/// Returns the number of replaces.
pub(super) fn replace_under_dma(
    pt: &Passthrough,
    igb: &mut Igb,
    ctl: &mut Mapping,
    sink: Sink<'_>,
    hwpts: [u32; 2],
    batches: usize,
    dmar: (&str, usize),
) -> Result<usize, String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Sink {
        map: data,
        iova: data_iova,
        offsets: dsts,
    } = sink;
    assert!(batches > 0 && !dsts.is_empty() && dsts.len() <= 64);
    let done = AtomicBool::new(false);
    let seed0 = fresh_seed();
    // SAFETY: a zeroed cpu_set_t is valid; the call writes at most its size.
    let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut all) };
    pin_to(0)?;
    let (replaced, copied) = std::thread::scope(|s| {
        let replacer = s.spawn(|| {
            pin_to(1)?;
            let mut n = 0;
            // An odd count ends on hwpts[1].
            while !done.load(Ordering::Acquire) || n % 2 == 0 {
                pt.replace(hwpts[(n + 1) % 2])?;
                n += 1;
            }
            Ok::<usize, String>(n)
        });
        let copied = (|| {
            for batch in 0..batches {
                let seed = seed0.wrapping_add(batch as u64);
                let bytes = ctl.bytes();
                let mut list = Vec::with_capacity(dsts.len());
                for (k, &d) in dsts.iter().enumerate() {
                    let s = SRC_OFF as usize + k * MAX_FRAME;
                    bytes[s..s + MAX_FRAME].copy_from_slice(&frame(seed, d));
                    list.push((CTL_IOVA + s as u64, data_iova + d, MAX_FRAME));
                }
                igb.submit(&list)?;
                igb.wait(list.len(), |_| MAX_FRAME, Duration::from_secs(30))
                    .map_err(|e| {
                        // A DMA that met a blocked entry stalls the ring
                        let fault = sys::kernel_log()
                            .ok()
                            .and_then(|l| l.into_iter().find(|l| l.contains("DMAR: [")));
                        format!(
                            "batch {batch} during the replaces: {e}; first DMAR fault: {fault:?}"
                        )
                    })?;
                let d = data.bytes();
                if let Some(&o) = dsts
                    .iter()
                    .find(|&&o| d[o as usize..o as usize + MAX_FRAME] != frame(seed, o))
                {
                    return Err(format!(
                        "batch {batch} during the replaces: the frame for file offset {o:#x} did not land"
                    ));
                }
            }
            Ok(())
        })();
        done.store(true, Ordering::Release);
        let replaced = replacer
            .join()
            .unwrap_or_else(|_| Err("replacer thread panicked".into()));
        (replaced, copied)
    });
    // SAFETY: `all` is the set read above.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &all) };
    copied?;
    std::thread::sleep(Duration::from_millis(300));
    let faults = dmar_faults(dmar.0)?;
    if faults.len() > dmar.1 {
        return Err(format!(
            "DMA faults during the HWPT replaces: {:?}",
            &faults[dmar.1..]
        ));
    }
    replaced
}

/// VT-d supports 2 MiB and 1 GiB second-level pages (cap bits 34, 35).
pub(super) fn superpages() -> Result<bool, String> {
    let cap = fs::read_to_string("/sys/class/iommu/dmar0/intel-iommu/cap")
        .map_err(|e| format!("dmar0 cap: {e}"))?;
    let cap = u64::from_str_radix(cap.trim(), 16).map_err(|e| format!("dmar0 cap: {e}"))?;
    Ok(cap >> 34 & 3 == 3)
}

pub fn igb_dma(_ctx: &mut Ctx) -> TestResult {
    let devs = sys::find_pci(0x8086, 0x10c9).map_err(|e| e.to_string())?;
    let bdf = devs
        .first()
        .ok_or("no igb (8086:10c9) in the VM")?
        .bdf
        .clone();
    if !superpages()? {
        return Err("the emulated VT-d offers no 2 MiB/1 GiB pages (cap bits 34-35)".into());
    }
    mount()?;
    for f in ["igb-ctl", "igb-data"] {
        let _ = fs::remove_file(p(f));
    }
    let ctl = create_sized(&p("igb-ctl"), CTL_LEN)?;
    let data = create_sized(&p("igb-data"), DATA_LEN)?;
    let faults0 = dmar_faults(&bdf)?.len();

    bind_vfio_pci(&bdf)?;
    let pt = Passthrough::open(&bdf)?;
    let start = Instant::now();
    pt.map_file(&ctl, 0, CTL_LEN, CTL_IOVA)?;
    pt.map_file(&data, 0, DATA_LEN, DATA_IOVA)?;
    pt.map_file(&ctl, SMALL_OFF, SMALL_LEN, SMALL_IOVA)?;
    diag(&format!(
        "{bdf}: HWPT {} on IOAS {}, 3 guestmemfs ranges mapped in {} ms",
        pt.hwpt_id,
        pt.ioas.id(),
        start.elapsed().as_millis()
    ));
    let mut ctl_map =
        Mapping::new(&ctl, CTL_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let mut data_map =
        Mapping::new(&data, DATA_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;

    // SAFETY: the rings are at the start of `ctl_map`, mapped at
    // CTL_IOVA, which outlives `igb`; only `igb` writes them.
    let mut igb = unsafe { super::igb::start(&pt, &ctl_map, CTL_IOVA)? };
    let seed = fresh_seed();
    diag(&format!("pattern seed {seed:#x}"));

    // Pattern A: three frames per 2 MiB block of the 1 GiB file, at its
    // start, across its middle page boundary and at its end.
    let mut frames = Vec::new();
    for b in 0..DATA_LEN / BLOCK {
        for off in [0, MIB - 512, BLOCK - MAX_FRAME as u64] {
            frames.push(b * BLOCK + off);
        }
    }
    // And two into igb-ctl across its 2 MiB blocks (separate physical
    // blocks, each its own leaf): the device crosses them mid-frame.
    let ctl_frames = [4 * MIB - 512, 6 * MIB - 512];
    let src_of = |k: usize| SRC_OFF + (k * MAX_FRAME) as u64;
    {
        let bytes = ctl_map.bytes();
        for (k, &dst) in frames.iter().enumerate() {
            let s = src_of(k) as usize;
            bytes[s..s + MAX_FRAME].copy_from_slice(&frame(seed, dst));
        }
    }
    {
        let k0 = frames.len();
        let bytes = ctl_map.bytes();
        for (j, &dst) in ctl_frames.iter().enumerate() {
            let s = src_of(k0 + j) as usize;
            bytes[s..s + MAX_FRAME].copy_from_slice(&frame(seed, dst));
        }
        if ctl_frames.iter().any(|&c| dirty(bytes, c)) {
            return Err("igb-ctl not zero where frames will land".into());
        }
    }
    let d = data_map.bytes();
    if let Some(&dst) = frames.iter().find(|&&dst| dirty(d, dst)) {
        return Err(format!("data file not zero at {dst:#x} before the DMA"));
    }
    let mut list: Vec<(u64, u64, usize)> = frames
        .iter()
        .enumerate()
        .map(|(k, &dst)| (CTL_IOVA + src_of(k), DATA_IOVA + dst, MAX_FRAME))
        .collect();
    for (j, &dst) in ctl_frames.iter().enumerate() {
        list.push((
            CTL_IOVA + src_of(frames.len() + j),
            CTL_IOVA + dst,
            MAX_FRAME,
        ));
    }
    let t = Instant::now();
    igb.submit(&list)?;
    igb.wait(list.len(), |_| MAX_FRAME, Duration::from_secs(120))?;
    let dma_ms = t.elapsed().as_millis();
    let d = data_map.bytes();
    for &dst in &frames {
        let at = dst as usize;
        if d[at..at + MAX_FRAME] != frame(seed, dst) {
            return Err(format!(
                "DMA to file offset {dst:#x}: the file does not show the frame"
            ));
        }
    }
    // Nothing outside the frames: one word per 512 bytes of the file
    // (a stray 1 KiB frame cannot hide between them).
    let in_frame = |o: u64| {
        let into = o % BLOCK;
        into < MAX_FRAME as u64
            || (MIB - 512..MIB + 512).contains(&into)
            || into >= BLOCK - MAX_FRAME as u64
    };
    if let Some(o) = (0..DATA_LEN)
        .step_by(512)
        .find(|&o| !in_frame(o) && d[o as usize..o as usize + 8] != [0; 8])
    {
        return Err(format!(
            "DMA wrote outside its frames, at file offset {o:#x}"
        ));
    }
    let c = ctl_map.bytes();
    for &dst in &ctl_frames {
        let at = dst as usize;
        if c[at..at + MAX_FRAME] != frame(seed, dst) {
            return Err(format!(
                "DMA across igb-ctl blocks at {dst:#x}: not in the file"
            ));
        }
    }
    diag(&format!(
        "{} frames DMAed into the 1 GiB guestmemfs file in {dma_ms} ms, every one seen through the CPU mapping",
        frames.len()
    ));

    // Through the 4 KiB mapping: lands at igb-ctl 7 MiB + 4 KiB.
    let k = list.len();
    let small_dst = SMALL_OFF + 4096;
    ctl_map.bytes()[src_of(k) as usize..src_of(k) as usize + MAX_FRAME]
        .copy_from_slice(&frame(seed, small_dst));
    igb.submit(&[(CTL_IOVA + src_of(k), SMALL_IOVA + 4096, MAX_FRAME)])?;
    igb.wait(1, |_| MAX_FRAME, Duration::from_secs(30))?;
    let at = small_dst as usize;
    if ctl_map.bytes()[at..at + MAX_FRAME] != frame(seed, small_dst) {
        return Err(
            "DMA through the 4 KiB mapping did not land in igb-ctl at 7 MiB + 4 KiB".into(),
        );
    }

    // The page table: exactly the leaves the layout allows.
    let leaves = iommu_debugfs::read(&bdf)?;
    check_leaves(&leaves)?;
    diag(&format!(
        "VT-d leaves: 1 x 1 GiB, 4 x 2 MiB, 4 x 4 KiB, at the files' physical blocks: {:x?}",
        leaves.iter().map(|l| (l.iova, l.size)).collect::<Vec<_>>()
    ));

    std::thread::sleep(Duration::from_millis(300));
    let faults = dmar_faults(&bdf)?;
    if faults.len() > faults0 {
        return Err(format!("DMA faults logged: {:?}", &faults[faults0..]));
    }

    // Replacing the HWPT under DMA loses nothing (the context entry moves
    // in one write): the device copies 100 batches of frames while the
    // HWPT is replaced back and forth the whole time.
    let other = pt.alloc_hwpt(pt.ioas.id())?;
    let spread: Vec<u64> = (0..32).map(|k| k * 16 * BLOCK + 4096 + 100).collect();
    let replaces = replace_under_dma(
        &pt,
        &mut igb,
        &mut ctl_map,
        Sink {
            map: &mut data_map,
            iova: DATA_IOVA,
            offsets: &spread,
        },
        [pt.hwpt_id, other],
        100,
        (&bdf, faults0),
    )?;
    diag(&format!(
        "{replaces} replaces between HWPTs {} and {other} during 100 DMA batches of {} frames: all landed, no DMAR fault",
        pt.hwpt_id,
        spread.len()
    ));

    // Negative control: a frame to an IOVA never mapped faults, and the
    // fault check above would have seen it.
    let k = k + 1;
    let s = src_of(k) as usize;
    ctl_map.bytes()[s..s + MAX_FRAME].copy_from_slice(&frame(seed, 0));
    igb.submit(&[(CTL_IOVA + src_of(k), HOLE_IOVA, MAX_FRAME)])?;
    let _ = igb.wait(1, |_| MAX_FRAME, Duration::from_secs(5));
    // Also no other fault from the main phase, however late.
    let fault = wait_fault(&bdf, faults0, HOLE_IOVA, true)?;
    diag(&format!("negative control: {}", fault.trim()));
    igb.remove();
    drop(igb);
    drop((ctl_map, data_map, pt));
    drop((ctl, data));
    for f in ["igb-ctl", "igb-data"] {
        fs::remove_file(p(f)).map_err(|e| e.to_string())?;
    }
    Ok(Outcome::Pass)
}

fn check_leaves(leaves: &[Leaf]) -> Result<(), String> {
    let r = region()?;
    let find = |iova: u64| leaves.iter().find(|l| l.iova == iova);
    let inside = |l: &Leaf| l.phys >= r.start && l.phys + l.size <= r.end + 1;
    if leaves.len() != 9 {
        return Err(format!("{} leaves, expected 9: {leaves:x?}", leaves.len()));
    }
    // Readable, writable; superpages with bit 7.
    let bad_bits = |l: &&Leaf| l.entry & 3 != 3 || (l.size > 4096) != (l.entry & 0x80 != 0);
    if let Some(l) = leaves.iter().find(bad_bits) {
        return Err(format!(
            "leaf {l:x?}: expected R/W, and bit 7 exactly on superpages"
        ));
    }
    let data = find(DATA_IOVA).ok_or("no leaf at the data IOVA")?;
    if data.size != GIB || data.phys % GIB != 0 || !inside(data) {
        return Err(format!(
            "data leaf {data:x?}: expected one 1 GiB leaf in the region"
        ));
    }
    let mut ctl_phys = Vec::new();
    for b in 0..4 {
        let l = find(CTL_IOVA + b * BLOCK).ok_or(format!("no leaf for igb-ctl block {b}"))?;
        if l.size != BLOCK || l.phys % BLOCK != 0 || !inside(l) || ctl_phys.contains(&l.phys) {
            return Err(format!(
                "igb-ctl leaf {l:x?}: expected a distinct 2 MiB block"
            ));
        }
        ctl_phys.push(l.phys);
    }
    for k in 0..4 {
        let l = find(SMALL_IOVA + k * 4096).ok_or(format!("no 4 KiB leaf {k}"))?;
        // igb-ctl 7 MiB is block 3 + 1 MiB.
        let want = ctl_phys[3] + MIB + k * 4096;
        if l.size != 4096 || l.phys != want {
            return Err(format!("4 KiB leaf {l:x?}: expected phys {want:#x}"));
        }
    }
    Ok(())
}
