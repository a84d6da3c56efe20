// SPDX-License-Identifier: GPL-2.0-only
//! A passthrough NIC that keeps receiving through a live update (issue 8).
//!
//! The harness streams numbered, checksummed UDP frames into the igb
//! (`xtask/src/stream.rs`) for the whole test. The VMM here receives them
//! by polling an RX ring whose descriptors and buffers are a guestmemfs
//! file mapped through an iommufd IOAS. Stage 1 preserves the iommufd and
//! the VFIO cdev and kexecs while frames keep arriving; the device is not
//! stopped. Stage 2 retrieves both, binds the cdev (which adopts the
//! running device: no reset, bus mastering never cleared), finds the
//! frames the device wrote while no VMM ran, and continues from the ring's
//! head. Every frame must arrive exactly once, intact and in order.

use super::gmfs::{create_sized, mount, p, Mapping, MIB};
use super::igb::dmar_faults;
use super::igb_kexec::igb_bdf;
use super::{Ctx, Outcome, TestResult};
use crate::igb_pf;
use crate::igb_rx::{IgbRx, QueueRegs, RxRing, BUF};
use crate::ktap::diag;
use crate::liveupdate::{LiveUpdate, Session};
use crate::stream::{parse, Tally};
use crate::sys;
use crate::vfio::{bind_vfio_pci, cdev_path, driver_of, Bar, Passthrough};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const SESSION: &str = "gtest-vfio-lu";
const IOMMUFD_TOKEN: u64 = 0x10fd;
pub(super) const CDEV_TOKEN: u64 = 0xcdef;
pub(super) const HWPT_TOKEN: u64 = 0x7e57_4858;
const RING_FILE: &str = "lu-ring";
/// The file: control page, then the ring at 4 KiB, buffers from 1 MiB.
const RING_AT: u64 = 4096;
const BUFS_AT: u64 = MIB;
/// 32768 descriptors absorb 65 s of the stream at [`RATE`].
const DESCS: usize = 32768;
const FILE_LEN: u64 = BUFS_AT + (DESCS * BUF) as u64 + MIB;
const IOVA: u64 = 0x1000_0000;
/// Frames per second the harness sends.
const RATE: u32 = 500;
/// How long each stage receives before it ends.
const RECEIVE: Duration = Duration::from_secs(4);
const CTL_MAGIC: u64 = 0x4c55_4c54_4e49_5243;

/// Where a test keeps its own record in the control page, after [`Ctl`]
/// and before the ring.
pub(super) const CTL_EXTRA_AT: usize = 2560;
pub(super) const CTL_EXTRA_LEN: usize = RING_AT as usize - CTL_EXTRA_AT;
const _: () = assert!(std::mem::size_of::<Ctl>() <= CTL_EXTRA_AT);

/// What stage 1 leaves in the file's first page for stage 2.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Ctl {
    magic: u64,
    head: u64,
    tally: Tally,
    regs: [u32; 6],
    /// The function's sysfs `resource` before the kexec.
    resources_len: u64,
    resources: [u8; 2048],
}

/// The function a stream test receives through: the igb PF itself, or a
/// VF of it, whose PF keeps the port (RCTL, link, drop counters).
pub(super) struct Func {
    pub(super) bdf: String,
    /// For a VF: its PF.
    pub(super) pf: Option<String>,
}

impl Func {
    /// The igb PF, passed through itself.
    fn of(bdf: &str) -> Func {
        Func {
            bdf: bdf.to_owned(),
            pf: None,
        }
    }

    /// For a VF: its PF's BAR 0 (sysfs `resource0`), where the port is.
    fn port(&self) -> Result<Option<Bar>, String> {
        self.pf.as_deref().map(igb_pf::resource0).transpose()
    }

    /// The function whose BAR sizes enumeration takes from the handover:
    /// for a VF its PF, whose SR-IOV capability has the VF BARs.
    fn sized(&self) -> &str {
        self.pf.as_deref().unwrap_or(&self.bdf)
    }
}

/// `bdf`'s sysfs `resource` as the control page keeps it.
pub(super) fn resources_of<const N: usize>(bdf: &str) -> Result<(u64, [u8; N]), String> {
    let text = fs::read(format!("/sys/bus/pci/devices/{bdf}/resource"))
        .map_err(|e| format!("{bdf} resource: {e}"))?;
    let mut buf = [0u8; N];
    let n = text.len().min(buf.len());
    buf[..n].copy_from_slice(&text[..n]);
    Ok((n as u64, buf))
}

/// `bdf`'s resources now have the start and end they had when `was`
/// (the first `len` bytes) was read with [`resources_of`] (the flags
/// may differ: FIXED after a handover).
pub(super) fn resources_kept(bdf: &str, len: u64, was: &[u8]) -> Result<(), String> {
    let ranges = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (n, now) = resources_of::<4096>(bdf)?;
    let (was, now) = (
        ranges(&was[..(len as usize).min(was.len())]),
        ranges(&now[..n as usize]),
    );
    if was != now {
        return Err(format!(
            "{bdf}'s resources moved: {now:?}, before the kexec {was:?}"
        ));
    }
    Ok(())
}

fn ring_of(map: &Mapping) -> RxRing {
    // SAFETY (both adds): inside the FILE_LEN bytes of `map`.
    RxRing {
        ring: unsafe { map.ptr.add(RING_AT as usize) },
        ring_iova: IOVA + RING_AT,
        bufs: unsafe { map.ptr.add(BUFS_AT as usize) },
        bufs_iova: IOVA + BUFS_AT,
        len: DESCS,
    }
}

fn regs_array(r: &QueueRegs) -> [u32; 6] {
    [
        r.rdbal,
        r.rdbah,
        r.rdlen,
        r.srrctl,
        u32::from(r.rxdctl_enabled),
        r.rctl,
    ]
}

fn regs_of(a: &[u32; 6]) -> QueueRegs {
    QueueRegs {
        rdbal: a[0],
        rdbah: a[1],
        rdlen: a[2],
        srrctl: a[3],
        rxdctl_enabled: a[4] != 0,
        rctl: a[5],
    }
}

/// Polls `rx` into `tally` until `until` says stop or `limit` passes.
fn receive(
    rx: &mut IgbRx,
    tally: &mut Tally,
    limit: Duration,
    until: impl Fn(&Tally) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !until(tally) {
        if Instant::now() > deadline {
            return Err(format!(
                "stream stalled: {} after {limit:?}",
                tally.result(DESCS)
            ));
        }
        let n = rx.poll(|f| tally.account(f));
        tally.peak = tally.peak.max(n as u64);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

pub(super) fn run_id() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() ^ d.as_secs() as u32)
        | 1
}

/// What stage 1 does besides preserving and kexecing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Before {
    /// Test the refusals first (the main test).
    Refusals,
    /// Damage the handover at the freeze (vfio_pci_core.lu_test_damage).
    Damage(&'static str),
    /// Fail the next kernel's allocation for reading the handover.
    FailRead,
    Nothing,
}

pub fn stream(ctx: &mut Ctx) -> TestResult {
    match ctx.stage {
        1 => stream_freeze(ctx, "vfio_lu_stream", Before::Refusals),
        2 => stream_adopt(),
        s => Err(format!("no stage {s}")),
    }
}

/// Stage 1 preserves and kexecs with the stream running (`before` first);
/// stage 2 checks the device ends quiet, `refused` at boot or never
/// retrieved ([`not_adopted`]).
fn not_adopted_test(
    ctx: &mut Ctx,
    name: &str,
    before: Before,
    refused: Option<&str>,
) -> TestResult {
    match ctx.stage {
        1 => stream_freeze(ctx, name, before),
        2 => not_adopted(refused, true),
        s => Err(format!("no stage {s}")),
    }
}

/// A VMM that never retrieves its device: held until FINISH, then bus
/// mastering cleared before the translation goes.
pub fn unretrieved(ctx: &mut Ctx) -> TestResult {
    not_adopted_test(ctx, "vfio_lu_unretrieved", Before::Nothing, None)
}

/// A handover of another version: refused whole, the device quiesced at
/// boot, never retrievable.
pub fn refuse_version(ctx: &mut Ctx) -> TestResult {
    not_adopted_test(
        ctx,
        "vfio_lu_refuse_version",
        Before::Damage("version"),
        Some("handover refused: unknown version"),
    )
}

/// A record that names another device (valid checksum): that function
/// is quiesced at boot.
pub fn refuse_device(ctx: &mut Ctx) -> TestResult {
    not_adopted_test(
        ctx,
        "vfio_lu_refuse_device",
        Before::Damage("device"),
        Some("live update: another device at this address"),
    )
}

/// A handover whose BAR 0 register differs from the function's: the PCI
/// core sizes it as usual, and the function is quiesced, not adopted.
pub fn refuse_bar(ctx: &mut Ctx) -> TestResult {
    not_adopted_test(
        ctx,
        "vfio_lu_refuse_bar",
        Before::Damage("bar"),
        Some("live update: its BARs changed"),
    )
}

/// The next kernel cannot allocate what reading the handover needs: the
/// handover is refused at boot, and every function the IOMMU still holds
/// stopped.
pub fn fail_read(ctx: &mut Ctx) -> TestResult {
    not_adopted_test(
        ctx,
        "vfio_lu_fail_read",
        Before::FailRead,
        Some("handover refused: out of memory"),
    )
}

/// A handover whose BAR 0 sizing mask sizing cannot have read: refused
/// whole at boot, before enumeration could trust it.
pub fn refuse_mask(ctx: &mut Ctx) -> TestResult {
    not_adopted_test(
        ctx,
        "vfio_lu_refuse_mask",
        Before::Damage("mask"),
        Some("handover refused: BAR sizes that sizing cannot read"),
    )
}

/// Completed descriptors from the software head, read in the file.
fn ring_done(map: &Mapping, head: usize) -> usize {
    let mut n = 0;
    while n < DESCS {
        let i = (head + n) % DESCS;
        // SAFETY: descriptor `i` of the ring inside `map`.
        let status = unsafe {
            map.ptr
                .add(RING_AT as usize + i * 16 + 8)
                .cast::<u32>()
                .read_volatile()
        };
        if status & 1 == 0 {
            break;
        }
        n += 1;
    }
    n
}

/// Stage 2 without adoption: refused at boot (`refused` is the log line
/// expected) or never retrieved. Either way the device must end quiet:
/// bus mastering off, the ring no longer filling, no DMAR fault, and the
/// device free for a normal open after FINISH. Without `translation_kept`
/// (the refused function is gone) the iommufd's restore is refused too.
pub(super) fn not_adopted(refused: Option<&str>, translation_kept: bool) -> TestResult {
    let bdf = igb_bdf()?;
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    match refused {
        Some(why) => {
            if !log.iter().any(|l| l.contains(why)) {
                return Err(format!("no {why:?} in the kernel log"));
            }
            let cmd = igb_pf::config16(&bdf, 4)?;
            if cmd & 0x4 != 0 {
                return Err(format!(
                    "refused handover: bus mastering still on (command {cmd:#06x})"
                ));
            }
        }
        None => held_for_vmm(&bdf)?,
    }
    let (file, map, ctl) = open_ring()?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    let iommufd = match session.retrieve_fd(IOMMUFD_TOKEN) {
        Ok(fd) if translation_kept => Some(fd),
        Ok(_) => return Err("the iommufd was restored for a function that is gone".into()),
        Err(e) if translation_kept => return Err(format!("retrieve the iommufd: {e}")),
        Err(_) => None,
    };
    if refused.is_some() {
        if let Ok(fd) = session.retrieve_fd(CDEV_TOKEN) {
            drop(fd);
            return Err("the cdev of a refused handover was retrieved".into());
        }
    } else {
        // Still receiving while held for its VMM.
        let n0 = ring_done(&map, ctl.head as usize);
        std::thread::sleep(Duration::from_millis(500));
        if ring_done(&map, ctl.head as usize) <= n0 {
            return Err("the held device stopped receiving before FINISH".into());
        }
    }
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH: {e}"))?;
    drop(iommufd);
    let cmd = igb_pf::config16(&bdf, 4)?;
    if cmd & 0x4 != 0 {
        return Err(format!(
            "after FINISH: bus mastering still on (command {cmd:#06x})"
        ));
    }
    if refused.is_none() {
        let log = sys::kernel_log().map_err(|e| e.to_string())?;
        if !log
            .iter()
            .any(|l| l.contains("not adopted by its VMM before FINISH; bus mastering cleared"))
        {
            return Err("FINISH did not log the quiesce".into());
        }
    }
    let n0 = ring_done(&map, ctl.head as usize);
    std::thread::sleep(Duration::from_millis(500));
    let n1 = ring_done(&map, ctl.head as usize);
    if n1 != n0 {
        return Err(format!("the ring kept filling after FINISH: {n0} -> {n1}"));
    }
    let faults = dmar_faults(&bdf)?;
    if !faults.is_empty() {
        return Err(format!("DMAR faults: {faults:?}"));
    }
    // Free for an ordinary VMM now: it opens and resets the device.
    bind_vfio_pci(&bdf)?;
    let pt = Passthrough::open(&bdf)?;
    drop(pt);
    diag(&format!(
        "stage 2: {}; bus mastering off after FINISH, the ring stopped at {n1} frames, no DMAR fault; the device opens normally afterwards",
        refused.unwrap_or("not retrieved")
    ));
    let trouble = sys::kernel_trouble().map_err(|e| e.to_string())?;
    if let Some(t) = trouble.first() {
        return Err(format!("kernel trouble: {t}"));
    }
    drop((map, file));
    fs::remove_file(p(RING_FILE)).map_err(|e| e.to_string())?;
    diag("stream: stop");
    Ok(Outcome::Pass)
}

/// `func` through a new iommufd and HWPT, reset, receiving into `file`
/// (ring and buffers) mapped at IOVA. The caller keeps the mapping, and
/// the file, for as long as the device may DMA.
fn receiver(func: &Func, file: &File) -> Result<(IgbRx, Passthrough, Mapping), String> {
    let bdf = &func.bdf;
    bind_vfio_pci(bdf)?;
    let pt = Passthrough::open(bdf)?;
    pt.map_file(file, 0, FILE_LEN, IOVA)?;
    let map = Mapping::new(file, FILE_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    pt.config_set16(0x4, 0x2 | 0x4)?;
    // SAFETY: the ring and buffers are in `map`, mapped at IOVA for the
    // device; the caller keeps `map` while the device may DMA.
    let rx = unsafe {
        match func.port()? {
            None => IgbRx::init(pt.bar0()?, ring_of(&map))?,
            Some(port) => IgbRx::init_queue(pt.bar0()?, port, ring_of(&map))?,
        }
    };
    Ok((rx, pt, map))
}

/// Drops what an earlier test's stream left queued, has the host start a
/// new stream, and receives it for [`RECEIVE`].
fn begin_stream(rx: &mut IgbRx) -> Result<Tally, String> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(300) {
        if rx.poll(|_| ()) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut tally = Tally::new(run_id());
    diag(&format!(
        "stream: start run={:08x} rate={RATE}",
        tally.run_id
    ));
    let t = Instant::now();
    receive(rx, &mut tally, RECEIVE + Duration::from_secs(30), |_| {
        t.elapsed() >= RECEIVE
    })?;
    Ok(tally)
}

/// A new, empty ring file in guestmemfs (mounted if need be).
fn new_ring_file() -> Result<File, String> {
    mount()?;
    let _ = fs::remove_file(p(RING_FILE));
    create_sized(&p(RING_FILE), FILE_LEN)
}

/// What a receiver keeps while the device may DMA: the receiver, the
/// passed-through function, the ring file and its mapping.
pub(super) type Receiving = (IgbRx, Passthrough, Mapping, File);

/// A receiver on `func` with its ring in a new guestmemfs file, and the
/// stream started and received in order for [`RECEIVE`].
pub(super) fn start_stream(func: &Func) -> Result<(Receiving, Tally), String> {
    let file = new_ring_file()?;
    let (mut rx, pt, map) = receiver(func, &file)?;
    let tally = begin_stream(&mut rx)?;
    if tally.next == 0 {
        return Err("stage 1: no frame of the stream arrived".into());
    }
    if tally.dups + tally.bad + tally.reordered != 0 {
        return Err(format!("stage 1: {}", tally.result(DESCS)));
    }
    Ok(((rx, pt, map, file), tally))
}

/// Stage 1: receive, preserve the iommufd and then the cdev, kexec with
/// the device receiving.
fn stream_freeze(ctx: &mut Ctx, name: &str, before: Before) -> TestResult {
    let ((mut rx, pt, map, file), mut tally) = start_stream(&Func::of(&igb_bdf()?))?;

    pt.mark_preserve(HWPT_TOKEN)
        .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: {e}"))?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    if before == Before::Refusals {
        refusals(&luo, &pt, &mut rx, &mut tally, name)?;
    }
    preserve_and_kexec(ctx, &luo, (rx, pt, map, file), tally, before)
}

/// A new session `name` with the iommufd preserved, then the cdev: the
/// order a VMM must use.
fn preserve_in_order(luo: &LiveUpdate, name: &str, pt: &Passthrough) -> Result<Session, String> {
    let session = luo.create_session(name).map_err(|e| e.to_string())?;
    session
        .preserve_fd(pt.iommufd.as_raw_fd(), IOMMUFD_TOKEN)
        .map_err(|e| format!("preserve the iommufd: {e}"))?;
    session
        .preserve_fd(pt.dev().as_raw_fd(), CDEV_TOKEN)
        .map_err(|e| format!("preserve the VFIO cdev: {e}"))?;
    Ok(session)
}

/// Preserves the iommufd, then the cdev, in a new session; hands the
/// ring to the device and records where the VMM stopped; kexec next (the
/// HWPT is already marked).
fn preserve_and_kexec(
    ctx: &mut Ctx,
    luo: &LiveUpdate,
    receiving: Receiving,
    tally: Tally,
    before: Before,
) -> TestResult {
    freeze_with(ctx, luo, receiving, tally, before, &igb_bdf()?, |_| Ok(()))
}

/// [`preserve_and_kexec`] of the function `bdf`; `preserved` runs once the
/// cdev is preserved, with the ring file's mapping (its control page
/// starts with [`Ctl`], which is written afterwards).
pub(super) fn freeze_with(
    ctx: &mut Ctx,
    luo: &LiveUpdate,
    (mut rx, pt, map, file): Receiving,
    mut tally: Tally,
    before: Before,
    bdf: &str,
    preserved: impl FnOnce(&Mapping) -> Result<(), String>,
) -> TestResult {
    let session = preserve_in_order(luo, SESSION, &pt)?;
    preserved(&map)?;
    // The last frames before the freeze, and every descriptor to the
    // device: the ring absorbs what arrives until stage 2 polls again.
    let n = rx.poll(|f| tally.account(f));
    tally.peak = tally.peak.max(n as u64);
    rx.post();
    if let Before::Damage(what) = before {
        let param = "/sys/module/vfio_pci_core/parameters/lu_test_damage";
        fs::write(param, what).map_err(|e| format!("{param}: {e}"))?;
        diag(&format!("stage 1: handover will be damaged: {what}"));
    }
    if before == Before::FailRead {
        ctx.once_out.push("vfio_pci_core.lu_fail_read=1".into());
    }
    let (resources_len, resources) = resources_of(bdf)?;
    let ctl = Ctl {
        magic: CTL_MAGIC,
        head: rx.head() as u64,
        tally,
        regs: regs_array(&rx.queue_regs()),
        resources_len,
        resources,
    };
    // SAFETY: the first page of `map` is the control page, ours only.
    unsafe { map.ptr.cast::<Ctl>().write_volatile(ctl) };
    diag(&format!(
        "lu: freeze last={} head={}",
        tally.next.wrapping_sub(1),
        rx.head()
    ));
    ctx.keep.push(session.into_owned_fd());
    // The device stays bound, mapped and receiving across the kexec.
    std::mem::forget((rx, pt, map, file));
    Ok(Outcome::Kexec)
}

/// `reboot(KEXEC)` with a kernel loaded: must fail with `errno` and log
/// `message`. If it kexecs instead, stage 2 finds no control page.
fn reboot_refused(name: &str, errno: i32, message: &str) -> Result<(), String> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| e.to_string())?;
    let boot = crate::cmdline::TestBoot::parse(&cmdline)?;
    let index = boot
        .run
        .iter()
        .position(|t| t == name)
        .ok_or("not in gtest.run")?;
    sys::kexec_load_same_kernel(&boot.next_cmdline(index, 2, None, &[]))
        .map_err(|e| format!("kexec_file_load: {e}"))?;
    // SAFETY: a plain system call; on success it does not return.
    let r = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) };
    let err = std::io::Error::last_os_error();
    if r != -1 || err.raw_os_error() != Some(errno) {
        return Err(format!(
            "reboot(KEXEC) returned {r} ({err}), expected errno {errno}: {message}"
        ));
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    if !log.iter().any(|l| l.contains(message)) {
        return Err(format!("reboot(KEXEC) refused without logging {message:?}"));
    }
    Ok(())
}

/// The kexec is refused while the device has interrupts on, or when its
/// cdev was preserved before the iommufd (its translation is then not
/// frozen when it freezes). The stream goes on through every refusal:
/// the device was neither stopped nor reset.
fn refusals(
    luo: &LiveUpdate,
    pt: &Passthrough,
    rx: &mut IgbRx,
    tally: &mut Tally,
    name: &str,
) -> Result<(), String> {
    let before = tally.next;
    {
        let session = luo
            .create_session("gtest-vfio-lu-order")
            .map_err(|e| e.to_string())?;
        session
            .preserve_fd(pt.dev().as_raw_fd(), CDEV_TOKEN)
            .map_err(|e| format!("preserve the VFIO cdev: {e}"))?;
        session
            .preserve_fd(pt.iommufd.as_raw_fd(), IOMMUFD_TOKEN)
            .map_err(|e| format!("preserve the iommufd: {e}"))?;
        reboot_refused(
            name,
            libc::EINVAL,
            "live update refused: translation not preserved",
        )?;
    }
    {
        // Kept open until the end of the block: closing unpreserves.
        let _session = preserve_in_order(luo, "gtest-vfio-lu-irq", pt)?;
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| format!("eventfd: {e}"))?;
        pt.dev()
            .enable_msix(vec![&efd])
            .map_err(|e| format!("VFIO_DEVICE_SET_IRQS MSI-X: {e}"))?;
        reboot_refused(name, libc::EBUSY, "live update refused: MSI-X enabled")?;
        pt.dev()
            .disable_msix()
            .map_err(|e| format!("disable MSI-X: {e}"))?;
    }
    // Unfrozen: config writes go through again (bus master and memory
    // stay on), and the stream keeps arriving in order.
    pt.config_set16(0x4, 0x2 | 0x4)?;
    let t = Instant::now();
    receive(rx, tally, Duration::from_secs(30), |_| {
        t.elapsed() >= Duration::from_secs(1)
    })?;
    if tally.next <= before || tally.dups + tally.bad + tally.reordered != 0 {
        return Err(format!(
            "the stream after the refused kexecs: {}",
            tally.result(DESCS)
        ));
    }
    diag("stage 1: kexec refused with MSI-X on (EBUSY) and with the cdev preserved before the iommufd (EINVAL); the stream went on in order");
    Ok(())
}

/// After the kexec: the ring file, mapped, and the control page stage 1
/// left in it.
pub(super) fn open_ring() -> Result<(File, Mapping, Ctl), String> {
    mount()?;
    let file = open_rw(RING_FILE)?;
    let map = Mapping::new(&file, FILE_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    // SAFETY: the control page stage 1 wrote; plain integers.
    let ctl = unsafe { map.ptr.cast::<Ctl>().read_volatile() };
    if ctl.magic != CTL_MAGIC {
        return Err("the control page is not stage 1's".into());
    }
    Ok((file, map, ctl))
}

fn open_rw(name: &str) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p(name))
        .map_err(|e| format!("{name}: {e}"))
}

/// Before the VMM takes the device: vfio-pci holds it (bound by the
/// kernel, not by us) and nobody else can open it.
fn held_for_vmm(bdf: &str) -> Result<(), String> {
    let driver = driver_of(bdf);
    if driver.as_deref() != Some("vfio-pci") {
        return Err(format!("{bdf} bound to {driver:?}, expected vfio-pci"));
    }
    let cdev = cdev_path(bdf)?;
    match OpenOptions::new().read(true).write(true).open(&cdev) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(format!("open {cdev}: {e}, expected EBUSY")),
        Ok(_) => Err(format!("{cdev} opened before its VMM retrieved it")),
    }
}

/// A device adopted after a live update, with what the VMM keeps.
pub(super) struct Adopted {
    bdf: String,
    session: Session,
    pt: Passthrough,
    rx: IgbRx,
    map: Mapping,
    file: File,
    tally: Tally,
    pub(super) buffered: usize,
}

/// After a kexec: checks the device waits for its VMM, retrieves the
/// session, iommufd and cdev, binds the cdev (adopting the running
/// device), attaches the restored HWPT, finds the frames the device wrote
/// meanwhile and handles them.
fn adopt() -> Result<Adopted, String> {
    adopt_at(&Func::of(&igb_bdf()?))
}

/// [`adopt`] of `func`.
pub(super) fn adopt_at(func: &Func) -> Result<Adopted, String> {
    let bdf = func.bdf.clone();
    held_for_vmm(&bdf)?;
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    if !log
        .iter()
        .any(|l| l.contains("live update: handed over running"))
    {
        return Err("vfio-pci did not claim the function handed over running".into());
    }
    let faults0 = dmar_faults(&bdf)?;
    if !faults0.is_empty() {
        return Err(format!("DMAR faults during the kexec: {faults0:?}"));
    }
    // Enumeration took the BAR sizes from the handover, and got them
    // right: the same resources as before the kexec.
    let sized = func.sized();
    if !log
        .iter()
        .any(|l| l.contains(sized) && l.contains("BAR sizes from the handover"))
    {
        return Err(format!(
            "the PCI core sized the running function's BARs ({sized})"
        ));
    }

    let (file, map, ctl) = open_ring()?;
    // Same start and end of every resource (the flags now say FIXED).
    resources_kept(&bdf, ctl.resources_len, &ctl.resources)?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    let iommufd = session
        .retrieve_fd(IOMMUFD_TOKEN)
        .map_err(|e| format!("retrieve the iommufd: {e}"))?;
    let cdev = session
        .retrieve_fd(CDEV_TOKEN)
        .map_err(|e| format!("retrieve the VFIO cdev: {e}"))?;
    let (pt, _) = Passthrough::retrieved(File::from(cdev), File::from(iommufd), HWPT_TOKEN)?;
    let cmd = pt.config_read16(0x4);
    if cmd & 0x6 != 0x6 {
        return Err(format!(
            "command register {cmd:#06x} after adoption: memory or bus master off"
        ));
    }
    // SAFETY: the same ring and buffers, still mapped at IOVA (restored).
    let mut rx = unsafe {
        IgbRx::adopt(
            pt.bar0()?,
            func.port()?,
            ring_of(&map),
            ctl.head as usize,
            &regs_of(&ctl.regs),
        )?
    };
    let buffered = rx.pending();
    let seq_at = |k: usize| {
        rx.peek(k)
            .and_then(|f| parse(f).ok())
            .map_or(u64::MAX, |f| f.seq)
    };
    let (first, last) = match buffered {
        0 => (u64::MAX, u64::MAX),
        n => (seq_at(0), seq_at(n - 1)),
    };
    diag(&format!(
        "lu: adopted buffered={buffered} first={first} last={last}"
    ));
    if buffered == 0 {
        return Err("no frame arrived while no VMM ran: the device stopped".into());
    }
    if first != ctl.tally.next {
        return Err(format!(
            "first frame in the ring is seq {first}, stage 1 handled up to {}",
            ctl.tally.next - 1
        ));
    }
    let mut tally = ctl.tally;
    tally.peak = tally.peak.max(buffered as u64);
    let caught_up = tally.next + buffered as u64;
    receive(&mut rx, &mut tally, Duration::from_secs(120), |t| {
        t.next >= caught_up
    })?;
    Ok(Adopted {
        bdf,
        session,
        pt,
        rx,
        map,
        file,
        tally,
        buffered,
    })
}

/// Receives a while longer, ends the stream and checks it was perfect,
/// finishes the session and closes everything.
pub(super) fn end_stream(mut a: Adopted) -> Result<Tally, String> {
    let t = Instant::now();
    receive(
        &mut a.rx,
        &mut a.tally,
        RECEIVE + Duration::from_secs(30),
        |_| t.elapsed() >= RECEIVE,
    )?;
    diag("stream: stop");
    receive(
        &mut a.rx,
        &mut a.tally,
        Duration::from_secs(30),
        Tally::ended,
    )?;
    let (mpc, rnbc) = a.rx.drop_counters();
    let rqdpc = a.rx.queue_drops();
    diag(&format!(
        "stream: result {} rnbc={rnbc} mpc={mpc}{}",
        a.tally.result(DESCS),
        rqdpc.map_or(String::new(), |n| format!(" rqdpc={n}"))
    ));
    if let Some(why) = a.tally.fault() {
        return Err(why);
    }
    if mpc != 0 || rnbc != 0 || rqdpc.is_some_and(|n| n != 0) {
        return Err(format!(
            "the device dropped frames: missed {mpc}, no buffer {rnbc}, queue {rqdpc:?}"
        ));
    }
    let faults = dmar_faults(&a.bdf)?;
    if !faults.is_empty() {
        return Err(format!("DMAR faults: {faults:?}"));
    }
    a.session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH: {e}"))?;
    let trouble = sys::kernel_trouble().map_err(|e| e.to_string())?;
    if let Some(t) = trouble.first() {
        return Err(format!("kernel trouble: {t}"));
    }
    drop(a.rx);
    drop(a.pt);
    drop((a.map, a.file));
    fs::remove_file(p(RING_FILE)).map_err(|e| e.to_string())?;
    Ok(a.tally)
}

/// Stage 2: adopt the running device and continue from the ring's head.
fn stream_adopt() -> TestResult {
    let a = adopt()?;
    let buffered = a.buffered;
    let tally = end_stream(a)?;
    diag(&format!(
        "stage 2: {} frames received exactly once and in order across the live update; {buffered} written by the device while no VMM ran; no reset, no DMAR fault",
        tally.next
    ));
    Ok(Outcome::Pass)
}

/// Live updates in a row in the soak test, all in one stream.
const SOAK_UPDATES: u32 = 20;
const SOAK_FILE: &str = "lu-soak-data";
const SOAK_LEN: u64 = 16 * MIB;

/// MemTotal, MemFree and SUnreclaim, in KiB.
fn meminfo() -> Result<(u64, u64, u64), String> {
    let text = fs::read_to_string("/proc/meminfo").map_err(|e| e.to_string())?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .ok_or(format!("/proc/meminfo: no {name}"))
    };
    Ok((
        field("MemTotal:")?,
        field("MemFree:")?,
        field("SUnreclaim:")?,
    ))
}

/// The soak's data file still holds its pattern.
fn soak_data_intact(seed: u64) -> Result<(), String> {
    let file = open_rw(SOAK_FILE)?;
    let mut map = Mapping::new(&file, SOAK_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    match crate::pattern::first_mismatch(seed, 0, map.bytes()) {
        None => Ok(()),
        Some(at) => Err(format!("{SOAK_FILE}: byte {at} changed")),
    }
}

/// 20 live updates in a row with the stream running: each stage adopts
/// the device, receives, checks a guestmemfs data file, finishes its
/// session, re-marks the restored HWPT and preserves the iommufd and the
/// retrieved cdev again. Nothing may be lost, and the kernel's memory
/// after the 20th must equal that after the 1st (a handover leak would
/// shrink MemTotal by what the next kernel keeps reserved).
pub fn soak(ctx: &mut Ctx) -> TestResult {
    let stage = ctx.stage;
    if stage == 1 {
        mount()?;
        let _ = fs::remove_file(p(SOAK_FILE));
        let file = create_sized(&p(SOAK_FILE), SOAK_LEN)?;
        let mut map =
            Mapping::new(&file, SOAK_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        let seed = super::igb::fresh_seed();
        crate::pattern::fill(seed, 0, map.bytes());
        ctx.note_out = Some(format!("{seed:x}"));
        return stream_freeze(ctx, "vfio_lu_soak", Before::Nothing);
    }
    let note = ctx
        .note_in
        .clone()
        .ok_or("no note from the previous stage")?;
    let mut parts = note.split(';');
    let seed = u64::from_str_radix(parts.next().unwrap_or(""), 16).map_err(|e| e.to_string())?;
    let mut a = adopt()?;
    soak_data_intact(seed)?;
    let (total, free, slab) = meminfo()?;
    let num = |s: Option<&str>| s.and_then(|v| v.parse::<u64>().ok());
    let first = match (num(parts.next()), num(parts.next()), num(parts.next())) {
        (Some(t), Some(f), Some(s)) => (t, f, s),
        _ => (total, free, slab),
    };
    diag(&format!(
        "soak: update {} adopted, {} frames so far, {} buffered; MemTotal {total} kB, MemFree {free} kB, SUnreclaim {slab} kB",
        stage - 1,
        a.tally.next,
        a.buffered
    ));
    if stage <= SOAK_UPDATES {
        let t = Instant::now();
        receive(&mut a.rx, &mut a.tally, Duration::from_secs(30), |_| {
            t.elapsed() >= Duration::from_secs(1)
        })?;
        a.session
            .finish()
            .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH: {e}"))?;
        a.pt.mark_preserve(HWPT_TOKEN)
            .map_err(|e| format!("re-mark the restored HWPT: {e}"))?;
        ctx.note_out = Some(format!("{seed:x};{};{};{}", first.0, first.1, first.2));
        let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
        drop(a.session);
        return preserve_and_kexec(
            ctx,
            &luo,
            (a.rx, a.pt, a.map, a.file),
            a.tally,
            Before::Nothing,
        );
    }
    // After the last update: same memory as after the first, nothing
    // lost, no leak. MemTotal alternates by 8 kB between boots; a page
    // kept per update would be 76 kB after 20.
    if total + 16 < first.0 {
        return Err(format!(
            "MemTotal {total} kB after update {}, {} kB after the first: memory kept across kexecs",
            stage - 1,
            first.0
        ));
    }
    if slab > first.2 + 4096 {
        return Err(format!(
            "SUnreclaim {slab} kB after update {}, {} kB after the first",
            stage - 1,
            first.2
        ));
    }
    let tally = end_stream(a)?;
    crate::kmemleak::check("after the soak")?;
    soak_data_intact(seed)?;
    fs::remove_file(p(SOAK_FILE)).map_err(|e| e.to_string())?;
    diag(&format!(
        "soak: {SOAK_UPDATES} live updates in one stream: {} frames exactly once and in order, the data file intact every time, MemTotal {total} kB as after the first ({} kB), SUnreclaim {slab} kB (first {} kB), MemFree {free} kB (first {} kB)",
        tally.next, first.0, first.2, first.1
    ));
    Ok(Outcome::Pass)
}

/// The upstream-style path, for the benchmark (`cargo xtask bench-dma`):
/// the ring is in a memfd preserved by LUO, the device is not preserved,
/// so the kexec stops it (bus mastering cleared at shutdown) and the next
/// VMM opens it afresh (reset), maps the memfd again and re-initialises
/// the ring. Frames sent meanwhile wait in QEMU and the host socket, or
/// are lost; the test only checks that the stream resumes.
pub fn stream_reset(ctx: &mut Ctx) -> TestResult {
    const MEMFD_TOKEN: u64 = 0x3e3f;
    let bdf = igb_bdf()?;
    if ctx.stage == 1 {
        let memfd = sys::memfd_create("lu-ring").map_err(|e| format!("memfd_create: {e}"))?;
        memfd.set_len(FILE_LEN).map_err(|e| e.to_string())?;
        let (mut rx, pt, map) = receiver(&Func::of(&bdf), &memfd)?;
        let mut tally = begin_stream(&mut rx)?;
        let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
        let session = luo.create_session(SESSION).map_err(|e| e.to_string())?;
        session
            .preserve_fd(memfd.as_raw_fd(), MEMFD_TOKEN)
            .map_err(|e| format!("preserve the memfd: {e}"))?;
        let n = rx.poll(|f| tally.account(f));
        tally.peak = tally.peak.max(n as u64);
        let ctl = Ctl {
            magic: CTL_MAGIC,
            head: rx.head() as u64,
            tally,
            regs: regs_array(&rx.queue_regs()),
            resources_len: 0,
            resources: [0; 2048],
        };
        // SAFETY: the control page, ours only.
        unsafe { map.ptr.cast::<Ctl>().write_volatile(ctl) };
        diag(&format!(
            "lu: freeze last={} head={}",
            tally.next - 1,
            rx.head()
        ));
        ctx.keep.push(session.into_owned_fd());
        std::mem::forget((rx, pt, map, memfd));
        return Ok(Outcome::Kexec);
    }
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    let memfd = File::from(
        session
            .retrieve_fd(MEMFD_TOKEN)
            .map_err(|e| format!("retrieve the memfd: {e}"))?,
    );
    let ctl_map = Mapping::new(&memfd, FILE_LEN, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    // SAFETY: the control page stage 1 wrote; plain integers.
    let ctl = unsafe { ctl_map.ptr.cast::<Ctl>().read_volatile() };
    drop(ctl_map);
    if ctl.magic != CTL_MAGIC {
        return Err("the control page is not stage 1's".into());
    }
    let (mut rx, pt, map) = receiver(&Func::of(&bdf), &memfd)?;
    diag(&format!(
        "lu: adopted buffered=0 first={} last={}",
        u64::MAX,
        u64::MAX
    ));
    let mut tally = ctl.tally;
    let t = Instant::now();
    receive(
        &mut rx,
        &mut tally,
        RECEIVE + Duration::from_secs(30),
        |_| t.elapsed() >= RECEIVE,
    )?;
    diag("stream: stop");
    receive(&mut rx, &mut tally, Duration::from_secs(30), Tally::ended)?;
    let (mpc, rnbc) = rx.drop_counters();
    diag(&format!(
        "stream: result {} rnbc={rnbc} mpc={mpc}",
        tally.result(DESCS)
    ));
    if tally.next <= ctl.tally.next {
        return Err("the stream did not resume after the reset".into());
    }
    session
        .finish()
        .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH: {e}"))?;
    diag(&format!(
        "stage 2: upstream-style path: the device was stopped by the kexec and reset at open; {} of {} frames lost",
        u64::from(tally.end_count).saturating_sub(tally.got),
        tally.end_count
    ));
    drop(rx);
    drop(pt);
    drop((map, memfd));
    Ok(Outcome::Pass)
}

/// A receiver on the igb through a new iommufd, its ring in a new
/// guestmemfs file, no stream (the fault-injection test).
fn quiet_receiver(bdf: &str) -> Result<Receiving, String> {
    let file = new_ring_file()?;
    let (rx, pt, map) = receiver(&Func::of(bdf), &file)?;
    pt.mark_preserve(HWPT_TOKEN)
        .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: {e}"))?;
    Ok((rx, pt, map, file))
}

/// Fault injection over the device's PRESERVE_FD (each allocation fails
/// in turn; the device keeps running, nothing leaks) and over its
/// RETRIEVE_FD after the kexec (one kexec per allocation: a failed
/// retrieve is final, so it must leave the device quiet, bus mastering
/// off, and the session finishable); the last round adopts the device.
pub fn fail_nth(ctx: &mut Ctx) -> TestResult {
    use super::igb_kexec::{setup_fault_injection, with_fail_nth};
    const MAX: u32 = 100;
    let bdf = igb_bdf()?;
    setup_fault_injection()?;
    // The note: the allocation to fail next, and how many retrieves failed.
    let (n, fails): (u32, u32) = match ctx.stage {
        1 => (0, 0),
        _ => ctx
            .note_in
            .as_deref()
            .and_then(|s| s.split_once(','))
            .and_then(|(n, f)| Some((n.parse().ok()?, f.parse().ok()?)))
            .ok_or("no note from the previous stage")?,
    };
    if ctx.stage == 1 {
        let (rx, pt, map, file) = quiet_receiver(&bdf)?;
        let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
        let mut n = 1;
        loop {
            if n > MAX {
                return Err(format!("PRESERVE_FD still fails at allocation {MAX}"));
            }
            let session = luo
                .create_session("gtest-vfio-lu-fail")
                .map_err(|e| e.to_string())?;
            session
                .preserve_fd(pt.iommufd.as_raw_fd(), IOMMUFD_TOKEN)
                .map_err(|e| format!("preserve the iommufd: {e}"))?;
            let (r, consumed) =
                with_fail_nth(n, || session.preserve_fd(pt.dev().as_raw_fd(), CDEV_TOKEN))?;
            if r.is_err() && !consumed {
                return Err(format!(
                    "PRESERVE_FD of the cdev failed at fail-nth {n} with no injected failure"
                ));
            }
            drop(session);
            // Unpreserved (closing the session): the device was not
            // touched, config writes go through.
            if rx.queue_regs().rctl != crate::igb_rx::RCTL_STREAM {
                return Err(format!("preserve fail-nth {n}: the device was reset"));
            }
            pt.config_set16(0x4, 0x2 | 0x4)?;
            if !consumed {
                break;
            }
            n += 1;
        }
        crate::kmemleak::check("after the PRESERVE_FD fault injection")?;
        diag(&format!(
            "stage 1: PRESERVE_FD of the cdev: {} allocations failed in turn, each cleanly; the device untouched",
            n - 1
        ));
        ctx.note_out = Some("1,0".into());
        return preserve_and_kexec(
            ctx,
            &luo,
            (rx, pt, map, file),
            Tally::new(1),
            Before::Nothing,
        );
    }

    // Stage n + 1: RETRIEVE_FD of the cdev with allocation n failing.
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    let iommufd = session
        .retrieve_fd(IOMMUFD_TOKEN)
        .map_err(|e| format!("retrieve the iommufd: {e}"))?;
    let (r, consumed) = with_fail_nth(n, || session.retrieve_fd(CDEV_TOKEN))?;
    match r {
        Ok(cdev) => {
            let (file, map, ctl) = open_ring()?;
            let (pt, _) =
                Passthrough::retrieved(File::from(cdev), File::from(iommufd), HWPT_TOKEN)?;
            // SAFETY: the same ring, still mapped at IOVA (restored).
            let rx = unsafe {
                IgbRx::adopt(
                    pt.bar0()?,
                    None,
                    ring_of(&map),
                    ctl.head as usize,
                    &regs_of(&ctl.regs),
                )?
            };
            session
                .finish()
                .map_err(|e| format!("LIVEUPDATE_SESSION_FINISH: {e}"))?;
            if consumed {
                // A failure the retrieve absorbed: the next allocation,
                // through another live update of the adopted device.
                pt.mark_preserve(HWPT_TOKEN)
                    .map_err(|e| format!("re-mark the restored HWPT: {e}"))?;
                drop(session);
                ctx.note_out = Some(format!("{},{fails}", n + 1));
                return preserve_and_kexec(
                    ctx,
                    &luo,
                    (rx, pt, map, file),
                    Tally::new(1),
                    Before::Nothing,
                );
            }
            drop((rx, pt, map, file));
            crate::kmemleak::check("after the last retrieve")?;
            if fails == 0 {
                return Err("no failed RETRIEVE_FD: fault injection did not reach it".into());
            }
            let trouble = sys::kernel_trouble().map_err(|e| e.to_string())?;
            if let Some(t) = trouble.first() {
                return Err(format!("kernel trouble: {t}"));
            }
            diag(&format!(
                "stage {}: RETRIEVE_FD of the cdev: allocations 1..{} failed in turn (one kexec each); {fails} failed the retrieve, each leaving the device quiet and the session finishable, the others were absorbed; then adopted",
                ctx.stage,
                n - 1
            ));
            fs::remove_file(p(RING_FILE)).map_err(|e| e.to_string())?;
            Ok(Outcome::Pass)
        }
        Err(e) if !consumed => Err(format!(
            "RETRIEVE_FD failed at fail-nth {n} with no injected failure: {e}"
        )),
        Err(_) => {
            if n > MAX {
                return Err(format!("RETRIEVE_FD still fails at allocation {MAX}"));
            }
            let cmd = igb_pf::config16(&bdf, 4)?;
            if cmd & 0x4 != 0 {
                return Err(format!(
                    "retrieve fail-nth {n}: bus mastering still on (command {cmd:#06x})"
                ));
            }
            session
                .finish()
                .map_err(|e| format!("fail-nth {n}: LIVEUPDATE_SESSION_FINISH: {e}"))?;
            drop(iommufd);
            drop(session);
            crate::kmemleak::check(&format!("retrieve fail-nth {n}"))?;
            let (rx, pt, map, file) = quiet_receiver(&bdf)?;
            ctx.note_out = Some(format!("{},{}", n + 1, fails + 1));
            preserve_and_kexec(
                ctx,
                &luo,
                (rx, pt, map, file),
                Tally::new(1),
                Before::Nothing,
            )
        }
    }
}
