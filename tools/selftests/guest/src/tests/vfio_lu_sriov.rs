// SPDX-License-Identifier: GPL-2.0-only
//! A VF that keeps receiving through a live update
//! (docs/design/vfio-pci-sriov-plan.md §4).
//!
//! The igb PF stays with the host on `pci-pf-stub` with one VF; the VF is
//! passed through and receives the harness's UDP stream on its queue 0
//! (QEMU's igb DMAs queue 0 through VF0 once VFs are enabled), exactly as
//! `vfio_lu_stream` receives on the PF: stage 1 preserves the iommufd and
//! the VF's cdev and kexecs with frames arriving, stage 2 adopts the VF
//! and continues from the ring's head. On the host side the PF must not be
//! reset, and `sriov_numvfs`, VF Enable and the VF BARs must survive the
//! kexec; the PF cannot lose its VFs while one is preserved.

use super::gmfs::Mapping;
use super::igb::dmar_faults;
use super::igb_kexec::igb_bdf;
use super::vfio_lu::{
    adopt_at, end_stream, freeze_with, not_adopted, open_ring, resources_kept, resources_of,
    run_id, start_stream, Before, Func, CDEV_TOKEN, CTL_EXTRA_AT, CTL_EXTRA_LEN, HWPT_TOKEN,
};
use super::{Ctx, Outcome, TestResult};
use crate::igb_pf::{
    attr, config16, disable_vfs, set_attr, virtfn, write_refused, IgbPf, SriovRegs, CMD_MEM_BME,
    PF_STUB, SRIOV_VFE_MSE, STATUS_LU,
};
use crate::ktap::diag;
use crate::liveupdate::{self, LiveUpdate};
use crate::sys;
use crate::vfio::{bind_vfio_pci, driver_of, Passthrough};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;

const PF_MAGIC: u64 = 0x5652_4f49_5253_4650;
/// Bytes of the PF's sysfs `resource` the record keeps (17 lines of 57).
const PF_RESOURCES: usize = 1280;

/// What stage 1 records of the PF, in the control page at
/// [`CTL_EXTRA_AT`] (after `vfio_lu`'s `Ctl`, which has the VF's queue
/// registers, ring head, tally and resources).
#[repr(C)]
#[derive(Clone, Copy)]
struct PfCtl {
    magic: u64,
    /// RAL15 of the PF's marker (RAH15 is fixed).
    marker: u32,
    rctl: u32,
    ctrl: u32,
    command: u16,
    _pad: u16,
    sriov: SriovRegs,
    resources_len: u64,
    resources: [u8; PF_RESOURCES],
}

const _: () = assert!(std::mem::size_of::<PfCtl>() <= CTL_EXTRA_LEN);

impl PfCtl {
    /// The PF as it is now (config space through sysfs, registers through
    /// `resource0`), with marker `marker`.
    fn snapshot(pf: &IgbPf, marker: u32) -> Result<PfCtl, String> {
        let (resources_len, resources) = resources_of(&pf.bdf)?;
        Ok(PfCtl {
            magic: PF_MAGIC,
            marker,
            rctl: pf.rctl(),
            ctrl: pf.ctrl(),
            command: config16(&pf.bdf, 4)?,
            _pad: 0,
            sriov: SriovRegs::read(&pf.bdf)?,
            resources_len,
            resources,
        })
    }
}

pub fn stream_vf(ctx: &mut Ctx) -> TestResult {
    match ctx.stage {
        1 => freeze(ctx, Before::Nothing),
        2 => adopt(),
        s => Err(format!("no stage {s}")),
    }
}

/// The PF's SR-IOV state in the handover no longer matches its registers
/// (VF BAR 0 recorded 1 MiB away, valid checksum): the next kernel
/// disables SR-IOV as it would without a live update, which stops the
/// VF, clears the PF's bus mastering, and the VF cannot be retrieved.
pub fn vf_refuse_sriov(ctx: &mut Ctx) -> TestResult {
    match ctx.stage {
        1 => freeze(ctx, Before::Damage("sriov")),
        2 => {
            let pf = igb_bdf()?;
            let num_vfs = attr(&pf, "sriov_numvfs")?;
            if num_vfs != "0" || Path::new(&format!("/sys/bus/pci/devices/{pf}/virtfn0")).exists() {
                return Err(format!(
                    "refused SR-IOV state: sriov_numvfs {num_vfs}, VFs still there"
                ));
            }
            not_adopted(Some("SR-IOV state not adopted: a VF BAR changed"), false)
        }
        s => Err(format!("no stage {s}")),
    }
}

/// Stage 1: the PF up on pci-pf-stub with one VF; the VF passed through
/// receives the stream; its iommufd and cdev preserved; the PF can no
/// longer drop its VFs; kexec with the VF receiving.
fn freeze(ctx: &mut Ctx, before: Before) -> TestResult {
    let pf_bdf = igb_bdf()?;
    let marker = run_id();
    let pf = IgbPf::set_up(&pf_bdf, marker)?;
    let vf = pf.enable_vfs(1)?;
    diag(&format!(
        "stage 1: PF {pf_bdf} on {PF_STUB}, link up, RCTL {:#x}, marker RAL15 {marker:#010x}; VF0 {vf}",
        pf.rctl()
    ));
    let func = Func {
        bdf: vf.clone(),
        pf: Some(pf_bdf.clone()),
    };
    let (receiving, tally) = start_stream(&func)?;
    receiving
        .1
        .mark_preserve(HWPT_TOKEN)
        .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: {e}"))?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    freeze_with(ctx, &luo, receiving, tally, before, &vf, |map| {
        record_pf(map, &pf, marker, &vf)
    })
}

/// With VF `vf` preserved: its PF is pinned (`sriov_numvfs` cannot drop
/// the VFs), and the PF's state goes into the control page of `map`.
fn record_pf(map: &Mapping, pf: &IgbPf, marker: u32, vf: &str) -> Result<(), String> {
    write_refused(&pf.bdf, "sriov_numvfs", "0", libc::EBUSY)?;
    let rec = PfCtl::snapshot(pf, marker)?;
    if rec.sriov.ctrl & SRIOV_VFE_MSE != SRIOV_VFE_MSE || rec.sriov.num_vfs != 1 {
        return Err(format!("stage 1: SR-IOV capability {:x?}", rec.sriov));
    }
    if rec.command & CMD_MEM_BME != CMD_MEM_BME {
        return Err(format!("stage 1: PF command {:#06x}", rec.command));
    }
    // SAFETY: inside the control page, after Ctl; ours only.
    unsafe {
        map.ptr
            .add(CTL_EXTRA_AT)
            .cast::<PfCtl>()
            .write_volatile(rec)
    };
    diag(&format!(
        "stage 1: VF {vf} preserved; PF sriov_numvfs <- 0 refused (EBUSY); PF command {:#06x} CTRL {:#x} RCTL {:#x}; SR-IOV at {:#x}: CTRL {:#x} NumVFs {} VF BARs {:08x?}",
        rec.command, rec.ctrl, rec.rctl, rec.sriov.pos, rec.sriov.ctrl, rec.sriov.num_vfs, rec.sriov.vf_bars
    ));
    Ok(())
}

/// Stage 2: the PF as stage 1 left it, then the VF adopted like the PF in
/// `vfio_lu_stream`, the stream to its end, FINISH; then the PF is free
/// again.
fn adopt() -> TestResult {
    let pf_bdf = igb_bdf()?;
    let rec = {
        let (_file, map, _ctl) = open_ring()?;
        // SAFETY: the record stage 1 wrote in the control page; integers.
        unsafe { map.ptr.add(CTL_EXTRA_AT).cast::<PfCtl>().read_volatile() }
    };
    if rec.magic != PF_MAGIC {
        return Err("the control page has no PF record from stage 1".into());
    }
    let pf = IgbPf::map(&pf_bdf)?;
    let vf = parent_kept(&pf, &rec)?;
    let a = adopt_at(&Func {
        bdf: vf.clone(),
        pf: Some(pf_bdf.clone()),
    })?;
    let buffered = a.buffered;
    let tally = end_stream(a)?;

    // FINISH unpinned the PF and gave its VFs their autoprobe back.
    let autoprobe = attr(&pf_bdf, "sriov_drivers_autoprobe")?;
    if autoprobe != "1" {
        return Err(format!(
            "after FINISH: sriov_drivers_autoprobe {autoprobe}, expected 1"
        ));
    }
    pf.marker_intact(rec.marker)?;
    let faults = dmar_faults(&pf_bdf)?;
    if !faults.is_empty() {
        return Err(format!("DMAR faults of the PF: {faults:?}"));
    }
    set_attr(&pf_bdf, "sriov_numvfs", "0")
        .map_err(|e| format!("after FINISH: sriov_numvfs <- 0: {e}"))?;
    if Path::new(&format!("/sys/bus/pci/devices/{pf_bdf}/virtfn0")).exists() {
        return Err("sriov_numvfs <- 0 left virtfn0".into());
    }
    let trouble = sys::kernel_trouble().map_err(|e| e.to_string())?;
    if let Some(t) = trouble.first() {
        return Err(format!("kernel trouble: {t}"));
    }
    diag(&format!(
        "stage 2: {} frames received exactly once and in order through VF {vf} across the live update; {buffered} written while no VMM ran; PF {pf_bdf} not reset (marker intact), VF Enable, NumVFs and VF BARs kept; after FINISH autoprobe back on and the VF removed",
        tally.next
    ));
    Ok(Outcome::Pass)
}

/// Before the VMM retrieves its VF: the host side of SR-IOV as stage 1
/// left it (`rec`), nothing written. Returns VF0's BDF.
fn parent_kept(pf: &IgbPf, rec: &PfCtl) -> Result<String, String> {
    let bdf = &pf.bdf;
    let driver = driver_of(bdf);
    if driver.as_deref() != Some(PF_STUB) {
        return Err(format!("PF {bdf} bound to {driver:?}, expected {PF_STUB}"));
    }
    let kept = |name: &str, want: &str| -> Result<(), String> {
        let got = attr(bdf, name)?;
        if got != want {
            return Err(format!("PF {bdf} {name} {got:?}, expected {want:?}"));
        }
        Ok(())
    };
    kept("driver_override", PF_STUB)?;
    kept("sriov_numvfs", "1")?;
    kept("sriov_drivers_autoprobe", "0")?;
    let vf = virtfn(bdf, 0)?;
    let cmd = config16(bdf, 4)?;
    if cmd & CMD_MEM_BME != CMD_MEM_BME {
        return Err(format!(
            "PF command {cmd:#06x} (stage 1 {:#06x}): memory or bus master off",
            rec.command
        ));
    }
    let sriov = SriovRegs::read(bdf)?;
    if sriov.ctrl & SRIOV_VFE_MSE != SRIOV_VFE_MSE {
        return Err(format!(
            "SR-IOV CTRL {:#x}: VF Enable or VF MSE off",
            sriov.ctrl
        ));
    }
    if sriov != rec.sriov {
        return Err(format!(
            "SR-IOV capability {sriov:x?}, before the kexec {:x?}",
            rec.sriov
        ));
    }
    pf.marker_intact(rec.marker)?;
    let (ctrl, rctl, status) = (pf.ctrl(), pf.rctl(), pf.status());
    if ctrl != rec.ctrl || rctl != rec.rctl {
        return Err(format!(
            "PF CTRL {ctrl:#x} RCTL {rctl:#x}, before the kexec {:#x} {:#x}",
            rec.ctrl, rec.rctl
        ));
    }
    if status & STATUS_LU == 0 {
        return Err(format!("PF STATUS {status:#x}: link down"));
    }
    write_refused(bdf, "sriov_numvfs", "0", libc::EBUSY)?;
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    if !log
        .iter()
        .any(|l| l.contains(bdf.as_str()) && l.contains("SR-IOV state adopted, VF Enable left on"))
    {
        return Err(format!(
            "no \"SR-IOV state adopted\" for {bdf} in the kernel log"
        ));
    }
    resources_kept(bdf, rec.resources_len, &rec.resources)?;
    diag(&format!(
        "stage 2: PF {bdf} on {PF_STUB} (kernel's override), not reset; command {cmd:#06x}, SR-IOV CTRL {:#x} NumVFs {} VF BARs as before; RCTL {rctl:#x}, link up; sriov_numvfs 1 (<- 0 EBUSY), autoprobe 0; VF0 {vf}",
        sriov.ctrl, sriov.num_vfs
    ));
    Ok(vf)
}

/// A VF whose PF is not on pci-pf-stub cannot be preserved: the PF's
/// driver could disable SR-IOV or reset the PF. Here the PF is on
/// vfio-pci, which makes VFs with its `enable_sriov` parameter.
pub fn vf_refuse_pf_driver(_ctx: &mut Ctx) -> TestResult {
    const PARAM: &str = "/sys/module/vfio_pci/parameters/enable_sriov";
    if let Err(e) = fs::write(PARAM, "Y") {
        return Ok(Outcome::Skip(format!(
            "{PARAM}: {e}: vfio-pci cannot make VFs"
        )));
    }
    let pf = igb_bdf()?;
    let r = refuse_pf_driver(&pf);
    // vfio-pci drops VFs only while enable_sriov is on.
    let off = disable_vfs(&pf);
    let _ = fs::write(PARAM, "N");
    r?;
    off?;
    let trouble = sys::kernel_trouble().map_err(|e| e.to_string())?;
    if let Some(t) = trouble.first() {
        return Err(format!("kernel trouble: {t}"));
    }
    Ok(Outcome::Pass)
}

/// The PF on vfio-pci, opened, with one VF; the VF bound to an iommufd
/// with the PF's VF token; preserving its cdev must fail (EOPNOTSUPP).
fn refuse_pf_driver(pf: &str) -> Result<(), String> {
    if driver_of(pf).is_some() {
        disable_vfs(pf)?;
    }
    bind_vfio_pci(pf)?;
    // Opened before it has VFs (the open resets it), to set the VF token
    // binding a VF of a PF on vfio-pci needs.
    let pt = Passthrough::open(pf)?;
    let mut token = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut token))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    pt.set_vf_token(&token)
        .map_err(|e| format!("VFIO_DEVICE_FEATURE_PCI_VF_TOKEN on {pf}: {e}"))?;
    set_attr(pf, "sriov_numvfs", "1")
        .map_err(|e| format!("{pf} on vfio-pci: sriov_numvfs <- 1: {e}"))?;
    let vf = virtfn(pf, 0)?;
    // vfio-pci sets its VFs' driver_override itself.
    bind_vfio_pci(&vf)?;
    let cdev = pt.bind_vf(&vf, &token)?;
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo
        .create_session("gtest-vfio-lu-vf-refuse")
        .map_err(|e| e.to_string())?;
    match session.preserve_fd(cdev.as_raw_fd(), CDEV_TOKEN) {
        Err(liveupdate::Error::PreserveFd(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => {
            return Err(format!(
                "preserve VF {vf}'s cdev, PF on vfio-pci: {e}, expected EOPNOTSUPP"
            ))
        }
        Ok(()) => return Err(format!("VF {vf}'s cdev preserved with its PF on vfio-pci")),
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    let line = log
        .iter()
        .find(|l| l.contains(vf.as_str()) && l.contains("cannot preserve"))
        .ok_or(format!("no \"cannot preserve\" for {vf} in the kernel log"))?;
    diag(&format!(
        "VF {vf} of PF {pf} on vfio-pci: PRESERVE_FD EOPNOTSUPP ({})",
        line.trim()
    ));
    drop((session, cdev));
    Ok(())
}
