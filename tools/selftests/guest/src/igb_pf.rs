// SPDX-License-Identifier: GPL-2.0-only
//! The igb PF of an SR-IOV live update (docs/design/vfio-pci-sriov-plan.md
//! §4), kept by the host on `pci-pf-stub` (which does nothing to the
//! device): this module does what a host PF driver would, through sysfs
//! and the PF's `resource0`. It brings the port up and makes VFs; a VF
//! passed through then receives on its own queue ([`IgbRx::init_queue`]).
//! After a kexec it only reads: the PF must have been left as it was.
//!
//! [`IgbRx::init_queue`]: crate::igb_rx::IgbRx::init_queue

use crate::igb::{wait_link, CTRL, RCTL, STATUS};
use crate::igb_rx::{reset_port, RCTL_STREAM};
use crate::sys::{pci_config16, pci_config32, pci_config_write16};
use crate::vfio::{bind_driver, driver_of, unbind, Bar};
use std::fs::{self, OpenOptions};
use std::io;

pub const PF_STUB: &str = "pci-pf-stub";

const MRQC: usize = 0x5818;
/// Receive address 15 (`RAL(15)`, `RAH(15)`): a filter entry nobody uses,
/// cleared only by a PF reset. Written with AV (bit 31 of RAH) clear it
/// filters nothing, so it marks that the PF was not reset.
const RAL15: usize = 0x5478;
const RAH15: usize = 0x547c;
const RAH_AV: u32 = 1 << 31;
/// The marker's RAH15 ("PF"); its RAL15 is the caller's.
const MARKER_RAH: u32 = 0x5046;
pub const STATUS_LU: u32 = 0x2;

/// Command register: memory space and bus master enable.
pub const CMD_MEM_BME: u16 = 0x2 | 0x4;
const PCI_EXT_CAP_ID_SRIOV: u32 = 0x10;
/// SR-IOV control: VF Enable and VF Memory Space Enable.
pub const SRIOV_VFE_MSE: u16 = 0x1 | 0x8;

/// `bdf`'s sysfs attribute `name`, trimmed.
pub fn attr(bdf: &str, name: &str) -> Result<String, String> {
    let path = format!("/sys/bus/pci/devices/{bdf}/{name}");
    fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("{path}: {e}"))
}

/// Writes `value` to `bdf`'s sysfs attribute `name`.
pub fn set_attr(bdf: &str, name: &str, value: &str) -> io::Result<()> {
    fs::write(format!("/sys/bus/pci/devices/{bdf}/{name}"), value)
}

/// The 16-bit config register of `bdf` at `off`.
pub fn config16(bdf: &str, off: u64) -> Result<u16, String> {
    pci_config16(bdf, off).map_err(|e| format!("{bdf} config {off:#x}: {e}"))
}

fn config32(bdf: &str, off: u64) -> Result<u32, String> {
    pci_config32(bdf, off).map_err(|e| format!("{bdf} config {off:#x}: {e}"))
}

/// Sets `bits` in `bdf`'s command register (one config word write), and
/// checks.
pub fn command_set(bdf: &str, bits: u16) -> Result<(), String> {
    let cmd = config16(bdf, 4)?;
    pci_config_write16(bdf, 4, cmd | bits).map_err(|e| format!("{bdf} command write: {e}"))?;
    let now = config16(bdf, 4)?;
    if now & bits != bits {
        return Err(format!(
            "{bdf} command {now:#06x} after setting {bits:#06x}"
        ));
    }
    Ok(())
}

/// The BDF of `bdf`'s `n`-th VF (its `virtfnN` link).
pub fn virtfn(bdf: &str, n: u32) -> Result<String, String> {
    let link = format!("/sys/bus/pci/devices/{bdf}/virtfn{n}");
    let target = fs::read_link(&link).map_err(|e| format!("{link}: {e}"))?;
    target
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or(format!("{link} -> {target:?}: no device"))
}

/// Writing `value` to `bdf`'s `name` must fail with `errno`.
pub fn write_refused(bdf: &str, name: &str, value: &str, errno: i32) -> Result<(), String> {
    match set_attr(bdf, name, value) {
        Err(e) if e.raw_os_error() == Some(errno) => Ok(()),
        Err(e) => Err(format!(
            "writing {value} to {bdf} {name}: {e}, expected errno {errno}"
        )),
        Ok(()) => Err(format!(
            "writing {value} to {bdf} {name} worked, expected errno {errno}"
        )),
    }
}

/// Removes `bdf`'s VFs, if it has any, through its driver.
pub fn disable_vfs(bdf: &str) -> Result<(), String> {
    if attr(bdf, "sriov_numvfs")? != "0" {
        set_attr(bdf, "sriov_numvfs", "0").map_err(|e| format!("{bdf}: sriov_numvfs <- 0: {e}"))?;
    }
    Ok(())
}

/// `bdf`'s BAR 0 through sysfs `resource0`, whole.
pub fn resource0(bdf: &str) -> Result<Bar, String> {
    let path = format!("/sys/bus/pci/devices/{bdf}/resource0");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    Bar::map(&file, 0, len as usize).map_err(|e| format!("mmap {path}: {e}"))
}

/// The SR-IOV capability of a PF as its config space has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SriovRegs {
    pub pos: u16,
    pub ctrl: u16,
    pub num_vfs: u16,
    pub offset: u16,
    pub stride: u16,
    pub vf_device: u16,
    pub pgsz: u32,
    /// The six VF BAR registers (`pos + 0x24 .. pos + 0x38`).
    pub vf_bars: [u32; 6],
}

impl SriovRegs {
    /// Reads them through sysfs `config`.
    pub fn read(bdf: &str) -> Result<SriovRegs, String> {
        let pos = ext_cap(bdf, PCI_EXT_CAP_ID_SRIOV)?;
        let at = |off: u16| u64::from(pos + off);
        let mut vf_bars = [0u32; 6];
        for (i, bar) in vf_bars.iter_mut().enumerate() {
            *bar = config32(bdf, at(0x24 + 4 * i as u16))?;
        }
        Ok(SriovRegs {
            pos,
            ctrl: config16(bdf, at(0x08))?,
            num_vfs: config16(bdf, at(0x10))?,
            offset: config16(bdf, at(0x14))?,
            stride: config16(bdf, at(0x16))?,
            vf_device: config16(bdf, at(0x1a))?,
            pgsz: config32(bdf, at(0x20))?,
            vf_bars,
        })
    }
}

/// Where `bdf`'s extended capability `id` is.
fn ext_cap(bdf: &str, id: u32) -> Result<u16, String> {
    let mut pos = 0x100u16;
    // At most 960 dword-aligned headers fit in 0x100..0x1000.
    for _ in 0..960 {
        let h = config32(bdf, pos.into())?;
        if h == 0 || h == !0 {
            break;
        }
        if h & 0xffff == id {
            return Ok(pos);
        }
        pos = (h >> 20) as u16 & 0xffc;
        if pos < 0x100 {
            break;
        }
    }
    Err(format!("{bdf}: no extended capability {id:#x}"))
}

/// The PF: its BDF and its BAR 0 through `resource0`.
pub struct IgbPf {
    pub bdf: String,
    bar: Bar,
}

impl IgbPf {
    /// What a host PF driver does before making VFs: `bdf` unbound,
    /// enabled (`enable`, which refuses while a driver is bound), bound to
    /// `pci-pf-stub`, memory and bus mastering on (pci-pf-stub sets
    /// neither; QEMU's igb receives only with the PF's bus mastering on),
    /// reset, link up, RCTL receiving, one RX queue (MRQC 0), and the
    /// marker `marker` (see [`IgbPf::marker`]). No VF yet.
    pub fn set_up(bdf: &str, marker: u32) -> Result<IgbPf, String> {
        if driver_of(bdf).is_some() {
            disable_vfs(bdf)?;
            unbind(bdf)?;
        }
        if attr(bdf, "enable")? == "0" {
            set_attr(bdf, "enable", "1").map_err(|e| format!("{bdf} enable <- 1: {e}"))?;
        }
        bind_driver(bdf, PF_STUB)?;
        if driver_of(bdf).as_deref() != Some(PF_STUB) {
            return Err(format!("{bdf}: {PF_STUB} did not bind"));
        }
        command_set(bdf, CMD_MEM_BME)?;
        let pf = IgbPf::map(bdf)?;
        let b = &pf.bar;
        reset_port(b)?;
        b.write(MRQC, 0);
        b.write(RCTL, RCTL_STREAM);
        wait_link(b)?;
        b.write(RAL15, marker);
        b.write(RAH15, MARKER_RAH);
        if pf.marker() != [marker, MARKER_RAH] {
            return Err(format!(
                "{bdf}: RAL15/RAH15 read {:08x?} after writing the marker",
                pf.marker()
            ));
        }
        Ok(pf)
    }

    /// Maps the PF's BAR 0, writing nothing.
    pub fn map(bdf: &str) -> Result<IgbPf, String> {
        Ok(IgbPf {
            bdf: bdf.to_owned(),
            bar: resource0(bdf)?,
        })
    }

    /// Makes `n` VFs (`sriov_numvfs`) and returns the first one's BDF.
    pub fn enable_vfs(&self, n: u32) -> Result<String, String> {
        set_attr(&self.bdf, "sriov_numvfs", &n.to_string())
            .map_err(|e| format!("{}: sriov_numvfs <- {n}: {e}", self.bdf))?;
        virtfn(&self.bdf, 0)
    }

    /// `RAL15`, `RAH15`: the marker only a PF reset clears.
    pub fn marker(&self) -> [u32; 2] {
        [self.bar.read(RAL15), self.bar.read(RAH15)]
    }

    /// The marker written by [`IgbPf::set_up`] with `ral`, unchanged.
    pub fn marker_intact(&self, ral: u32) -> Result<(), String> {
        let m = self.marker();
        if m != [ral, MARKER_RAH] || m[1] & RAH_AV != 0 {
            return Err(format!(
                "{}: RAL15/RAH15 {:08x?}, expected {:08x?}: the PF was reset",
                self.bdf,
                m,
                [ral, MARKER_RAH]
            ));
        }
        Ok(())
    }

    pub fn ctrl(&self) -> u32 {
        self.bar.read(CTRL)
    }

    pub fn status(&self) -> u32 {
        self.bar.read(STATUS)
    }

    pub fn rctl(&self) -> u32 {
        self.bar.read(RCTL)
    }
}
