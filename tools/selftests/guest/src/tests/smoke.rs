// SPDX-License-Identifier: GPL-2.0-only
//! Smoke tests: the VM has what every later test depends on.

use super::{Ctx, Outcome, TestResult};
use crate::ktap::diag;
use crate::sys;
use std::fs;

/// Intel 82576 (QEMU `igb`).
pub const IGB: (u32, u32) = (0x8086, 0x10c9);

pub fn iommu_units() -> Vec<String> {
    let mut units: Vec<String> = fs::read_dir("/sys/class/iommu")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    units.sort();
    units
}

/// IOMMU group number of a PCI device, if it has one.
pub fn iommu_group(dev: &sys::PciDevice) -> Option<String> {
    let link = fs::read_link(format!("{}/iommu_group", dev.sysfs())).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

pub fn iommu_present(_ctx: &mut Ctx) -> TestResult {
    let units = iommu_units();
    diag(&format!("IOMMU units: {units:?}"));
    if !units.iter().any(|u| u == "dmar0") {
        return Err(
            "no dmar0 in /sys/class/iommu: the Intel IOMMU is not enabled \
                    (is intel_iommu=on on the kernel command line?)"
                .into(),
        );
    }
    let igbs = sys::find_pci(IGB.0, IGB.1).map_err(|e| format!("scan PCI devices: {e}"))?;
    let igb = igbs
        .first()
        .ok_or("no igb NIC (8086:10c9) on the PCI bus")?;
    let group = iommu_group(igb).ok_or_else(|| format!("igb {} has no IOMMU group", igb.bdf))?;
    diag(&format!("igb {} is in IOMMU group {group}", igb.bdf));
    Ok(Outcome::Pass)
}

pub fn guestmemfs_registered(_ctx: &mut Ctx) -> TestResult {
    let filesystems =
        fs::read_to_string("/proc/filesystems").map_err(|e| format!("/proc/filesystems: {e}"))?;
    if !filesystems.lines().any(|l| l == "nodev\tguestmemfs") {
        return Err("guestmemfs is not listed in /proc/filesystems".into());
    }
    // The Rust module's init logged this line; it proves the Rust side ran.
    let log = sys::kernel_log().map_err(|e| format!("/dev/kmsg: {e}"))?;
    let registered = log
        .iter()
        .find(|l| l.starts_with("guestmemfs: filesystem type registered"))
        .ok_or("the Rust module's \"guestmemfs: filesystem type registered\" line is not in the kernel log")?;
    diag(&format!("kernel log: {registered}"));
    // Without a region (no guestmemfs= boot parameter) a mount must fail
    // with ENODEV, not succeed with nothing behind it.
    fs::create_dir_all("/mnt/guestmemfs").map_err(|e| e.to_string())?;
    match sys::mount("none", "/mnt/guestmemfs", "guestmemfs", 0, "") {
        Ok(()) => Err("mount of guestmemfs without a reserved region succeeded".into()),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            diag("mount without a region fails with ENODEV as expected");
            Ok(Outcome::Pass)
        }
        Err(e) => Err(format!(
            "mount without a region failed with {e}, expected ENODEV"
        )),
    }
}
