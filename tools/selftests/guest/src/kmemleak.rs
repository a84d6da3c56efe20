// SPDX-License-Identifier: GPL-2.0-only
//! kmemleak's verdict on the live update paths: objects allocated by
//! iommufd, VT-d, LUO/KHO or guestmemfs that nothing points to any more.
//! The suites that call this boot with `kmemleak=on`
//! (`CONFIG_DEBUG_KMEMLEAK_DEFAULT_OFF` keeps it off elsewhere).

use std::fs;
use std::time::Duration;

const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";
/// Functions in a leak's allocation backtrace that make it ours.
const OURS: &[&str] = &[
    // iommufd, iommu core and VT-d (intel_iommu_*, pt_iommu_*, iommu_lu_*)
    "iommu",
    "iopt_",
    "intel_lu",
    "dmar_",
    "cache_tag",
    "liveupdate",
    "luo_",
    "kho_",
    "guestmemfs",
    "gmfs",
    "vfio",
];

/// Scans for leaks and fails if a reported object's allocation
/// backtrace goes through one of [`OURS`]; `what` names the moment.
pub fn check(what: &str) -> Result<(), String> {
    // kmemleak reports nothing younger than 5 s: let the last frees age.
    std::thread::sleep(Duration::from_secs(6));
    // An object is reported once two scans found it unreferenced and
    // unchanged (the first only records its checksum).
    for _ in 0..2 {
        fs::write(KMEMLEAK, "scan")
            .map_err(|e| format!("{what}: {KMEMLEAK}: {e} (is the VM booted with kmemleak=on?)"))?;
    }
    let report = fs::read_to_string(KMEMLEAK).map_err(|e| format!("{KMEMLEAK}: {e}"))?;
    let ours: Vec<&str> = report
        .split("unreferenced object")
        .skip(1)
        .filter(|leak| {
            leak.lines()
                .skip_while(|l| !l.contains("backtrace"))
                .any(|l| OURS.iter().any(|o| l.contains(o)))
        })
        .collect();
    if let Some(first) = ours.first() {
        return Err(format!(
            "{what}: kmemleak reports {} unreferenced object(s) of the live update paths; the first:{}",
            ours.len(),
            first.lines().take(14).collect::<Vec<_>>().join(" | ")
        ));
    }
    // Reported once is enough: the next check sees only new ones.
    let _ = fs::write(KMEMLEAK, "clear");
    Ok(())
}
