// SPDX-License-Identifier: GPL-2.0-only
//! The guestmemfs region: reserved at boot, out of the direct map, no
//! struct pages.

use super::{Ctx, Outcome, TestResult};
use crate::ktap::diag;
use crate::sys;
use std::fs;

/// A physical range from /proc/iomem, inclusive end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

/// Top-level and nested /proc/iomem entries named `name`.
pub fn iomem_ranges(iomem: &str, name: &str) -> Vec<Range> {
    iomem
        .lines()
        .filter_map(|l| {
            let (range, label) = l.trim_start().split_once(" : ")?;
            if label.trim() != name {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(Range {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
            })
        })
        .collect()
}

/// memparse() of the kernel: a number with an optional K/M/G/T suffix.
pub fn memparse(text: &str) -> Option<u64> {
    let (digits, shift) = match text.chars().last()? {
        'K' | 'k' => (&text[..text.len() - 1], 10),
        'M' | 'm' => (&text[..text.len() - 1], 20),
        'G' | 'g' => (&text[..text.len() - 1], 30),
        'T' | 't' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// The size requested with `guestmemfs=` on this boot's command line.
pub fn requested_size() -> Option<u64> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("guestmemfs="))
        .next_back()
        .and_then(memparse)
}

/// The region as /proc/iomem shows it.
pub fn region() -> Result<Range, String> {
    let iomem = fs::read_to_string("/proc/iomem").map_err(|e| format!("/proc/iomem: {e}"))?;
    let found = iomem_ranges(&iomem, "guestmemfs");
    match found.as_slice() {
        [r] => Ok(*r),
        [] => Err("no guestmemfs range in /proc/iomem: the region was not reserved".into()),
        _ => Err(format!(
            "several guestmemfs ranges in /proc/iomem: {found:x?}"
        )),
    }
}

pub fn region_reserved(_ctx: &mut Ctx) -> TestResult {
    let want = requested_size().ok_or("boot without guestmemfs=<size>")?;
    let r = region()?;
    let size = r.end + 1 - r.start;
    diag(&format!(
        "region [mem {:#x}-{:#x}] ({} MiB)",
        r.start,
        r.end,
        size >> 20
    ));
    if size != want {
        return Err(format!(
            "region is {size} bytes, guestmemfs= asked for {want}"
        ));
    }
    let align = if want % (1 << 30) == 0 {
        1u64 << 30
    } else {
        2 << 20
    };
    if r.start % align != 0 {
        return Err(format!(
            "region base {:#x} is not aligned to {align:#x}",
            r.start
        ));
    }
    let iomem = fs::read_to_string("/proc/iomem").map_err(|e| e.to_string())?;
    if let Some(ram) = iomem_ranges(&iomem, "System RAM")
        .into_iter()
        .find(|s| s.start <= r.end && r.start <= s.end)
    {
        return Err(format!("region overlaps System RAM {ram:x?}"));
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    let line = log
        .iter()
        .find(|l| {
            l.starts_with("guestmemfs: reserved region") || l.starts_with("guestmemfs: kept region")
        })
        .ok_or("no \"guestmemfs: reserved/kept region\" line in the kernel log")?;
    diag(&format!("kernel log: {line}"));
    Ok(Outcome::Pass)
}

/// One range of the kernel page-table dump.
struct Mapping {
    start: u64,
    end: u64,
    present: bool,
}

/// Parses the "Low Kernel Mapping" (direct map) part of
/// /sys/kernel/debug/page_tables/kernel. Returns the direct map's base
/// (PAGE_OFFSET) and its ranges.
fn direct_map() -> Result<(u64, Vec<Mapping>), String> {
    let dump = fs::read_to_string("/sys/kernel/debug/page_tables/kernel")
        .map_err(|e| format!("page table dump (CONFIG_PTDUMP_DEBUGFS): {e}"))?;
    let mut in_direct = false;
    let mut out = Vec::new();
    for line in dump.lines() {
        if line.starts_with("---[") {
            in_direct = line.contains("Low Kernel Mapping");
            continue;
        }
        if !in_direct {
            continue;
        }
        let Some((range, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        let (Some(start), Some(end)) = (parse(a), parse(b)) else {
            continue;
        };
        // Present ranges print their access flags; absent ones none.
        let present = rest.split_whitespace().any(|t| t == "RW" || t == "ro");
        out.push(Mapping {
            start,
            end,
            present,
        });
    }
    // The direct map starts at PAGE_OFFSET, 1 GiB aligned; the dump may
    // print the range of its first page before the section marker.
    let base = out
        .first()
        .map(|m| m.start & !((1u64 << 30) - 1))
        .ok_or("no Low Kernel Mapping section in the page table dump")?;
    Ok((base, out))
}

/// Bytes of `[phys, phys + len)` that the direct map maps.
fn mapped_bytes(base: u64, maps: &[Mapping], phys: u64, len: u64) -> u64 {
    let (lo, hi) = (base + phys, base + phys + len);
    maps.iter()
        .filter(|m| m.present)
        .map(|m| m.end.min(hi).saturating_sub(m.start.max(lo)))
        .sum()
}

pub fn region_not_in_direct_map(_ctx: &mut Ctx) -> TestResult {
    let r = region()?;
    let (base, maps) = direct_map()?;
    let size = r.end + 1 - r.start;
    // Control: ordinary RAM above 4 GiB or at 16 MiB must be mapped, so
    // the same check can see a mapping when there is one.
    let iomem = fs::read_to_string("/proc/iomem").map_err(|e| e.to_string())?;
    let ram = iomem_ranges(&iomem, "System RAM")
        .into_iter()
        .find(|s| s.end - s.start >= (4 << 20) && s.start >= (1 << 20))
        .ok_or("no System RAM range to use as a control")?;
    let control = mapped_bytes(base, &maps, ram.start, 2 << 20);
    diag(&format!(
        "control: System RAM at {:#x}: {} of 2 MiB mapped at {:#x}",
        ram.start,
        control,
        base + ram.start
    ));
    if control != 2 << 20 {
        return Err("the control RAM page is not in the direct map: the check is broken".into());
    }
    let mapped = mapped_bytes(base, &maps, r.start, size);
    diag(&format!(
        "region [mem {:#x}-{:#x}]: {mapped} of {size} bytes mapped in the direct map at {:#x}",
        r.start,
        r.end,
        base + r.start
    ));
    if mapped != 0 {
        return Err(format!(
            "{mapped} bytes of the region are in the kernel direct map"
        ));
    }
    Ok(Outcome::Pass)
}

/// How many kexecs `region_survives_kexec` does.
const REGION_KEXECS: u32 = 2;

/// The region is reserved again at the same physical address after each
/// kexec, from the locator handed over through KHO.
pub fn region_survives_kexec(ctx: &mut Ctx) -> TestResult {
    let r = region()?;
    if ctx.stage > 1 {
        let want = ctx
            .note_in
            .as_deref()
            .ok_or("no note from the previous stage")?;
        let got = format!("{:#x}-{:#x}", r.start, r.end);
        if got != want {
            return Err(format!("region moved over kexec: was {want}, now {got}"));
        }
        let log = sys::kernel_log().map_err(|e| e.to_string())?;
        if !log.iter().any(|l| l.starts_with("guestmemfs: kept region")) {
            return Err(
                "no \"guestmemfs: kept region\" line: the region was not taken from the handover"
                    .into(),
            );
        }
        diag(&format!(
            "stage {}: region {got} kept from the previous kernel",
            ctx.stage
        ));
    }
    if ctx.stage <= REGION_KEXECS {
        ctx.note_out = Some(format!("{:#x}-{:#x}", r.start, r.end));
        return Ok(Outcome::Kexec);
    }
    Ok(Outcome::Pass)
}

/// Reports the struct-page (memmap) cost of this boot for the host to
/// compare across boots with and without the region.
pub fn memmap_report(_ctx: &mut Ctx) -> TestResult {
    let vmstat = fs::read_to_string("/proc/vmstat").map_err(|e| e.to_string())?;
    let get = |key: &str| -> Result<u64, String> {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .ok_or(format!("{key} missing from /proc/vmstat"))
    };
    let boot = get("nr_memmap_boot_pages ")?;
    let runtime = get("nr_memmap_pages ")?;
    diag(&format!(
        "memmap_pages {} (nr_memmap_boot_pages {boot} + nr_memmap_pages {runtime})",
        boot + runtime
    ));
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iomem_and_sizes() {
        let iomem = "00100000-7ffdffff : System RAM\n100000000-17fffffff : Reserved\n  100000000-17fffffff : guestmemfs\n";
        assert_eq!(
            iomem_ranges(iomem, "guestmemfs"),
            [Range {
                start: 0x1_0000_0000,
                end: 0x1_7fff_ffff
            }]
        );
        assert_eq!(iomem_ranges(iomem, "System RAM").len(), 1);
        assert_eq!(memparse("2G"), Some(2 << 30));
        assert_eq!(memparse("512M"), Some(512 << 20));
        assert_eq!(memparse("4096"), Some(4096));
        assert_eq!(memparse("x"), None);
    }
}
