// SPDX-License-Identifier: GPL-2.0-only
//! Human-readable description of the guest, for `cargo xtask demo`.

use super::smoke::{iommu_group, iommu_units, IGB};
use super::{Ctx, Outcome, TestResult};
use crate::ktap::diag;
use crate::sys;
use std::fs;
use std::path::Path;

pub fn info(_ctx: &mut Ctx) -> TestResult {
    let version = fs::read_to_string("/proc/version").unwrap_or_default();
    diag(&format!("kernel: {}", version.trim()));
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    diag(&format!("command line: {}", cmdline.trim()));
    diag(&format!(
        "IOMMU units (/sys/class/iommu): {:?}",
        iommu_units()
    ));
    for dev in sys::find_pci(IGB.0, IGB.1).map_err(|e| e.to_string())? {
        let group = iommu_group(&dev).unwrap_or_else(|| "none".into());
        diag(&format!("igb NIC {} -> IOMMU group {group}", dev.bdf));
    }
    let dmar: Vec<String> = sys::kernel_log()
        .unwrap_or_default()
        .into_iter()
        .filter(|l| {
            l.starts_with("DMAR: Intel(R) Virtualization") || l.starts_with("DMAR-IR: Enabled")
        })
        .collect();
    for l in dmar {
        diag(&format!("kernel log: {l}"));
    }
    let fs_line = fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .find(|l| l.ends_with("guestmemfs"))
        .map(|l| l.replace('\t', " "))
        .unwrap_or_else(|| "guestmemfs missing".into());
    diag(&format!("/proc/filesystems: {fs_line}"));
    for l in sys::kernel_log().unwrap_or_default() {
        if l.starts_with("guestmemfs: ") {
            diag(&format!("kernel log: {l}"));
        }
    }
    diag(&format!(
        "/dev/liveupdate: {}",
        if Path::new(crate::liveupdate::DEVICE).exists() {
            "present"
        } else {
            "absent"
        }
    ));
    Ok(Outcome::Pass)
}
