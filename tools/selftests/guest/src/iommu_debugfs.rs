// SPDX-License-Identifier: GPL-2.0-only
//! Reads the VT-d page table a device is translated by, from
//! `/sys/kernel/debug/iommu/intel/<bdf>/domain_translation_struct`
//! (`CONFIG_INTEL_IOMMU_DEBUGFS`): one line per leaf,
//! `IOVA_PFN | PML5E PML4E PDPE [PDE [PTE]]`; the number of entries after
//! the bar gives the leaf size (3: 1 GiB, 4: 2 MiB, 5: 4 KiB).

/// One leaf of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub iova: u64,
    pub size: u64,
    /// Output address (bits 51:12 of the entry).
    pub phys: u64,
    /// The whole leaf entry (bits 1:0 read/write, bit 7 superpage).
    pub entry: u64,
}

const KIB4: u64 = 4096;
const MIB2: u64 = 2 << 20;
const GIB1: u64 = 1 << 30;

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The leaves of a dump; lines that are not leaves (the header) are
/// skipped, a malformed leaf line is an error.
pub fn parse(text: &str) -> Result<Vec<Leaf>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once('|') else {
            continue;
        };
        let Some(pfn) = hex(left) else {
            continue; // the column header
        };
        let entries: Vec<u64> = right
            .split_whitespace()
            .map(|f| hex(f).ok_or(format!("bad entry {f:?} in {line:?}")))
            .collect::<Result<_, _>>()?;
        let size = match entries.len() {
            3 => GIB1,
            4 => MIB2,
            5 => KIB4,
            n => return Err(format!("{n} entries in {line:?}")),
        };
        let entry = *entries.last().unwrap();
        out.push(Leaf {
            iova: pfn * KIB4,
            size,
            phys: entry & 0x000f_ffff_ffff_f000,
            entry,
        });
    }
    Ok(out)
}

/// The dump for the device at `bdf`.
pub fn read(bdf: &str) -> Result<Vec<Leaf>, String> {
    let path = format!("/sys/kernel/debug/iommu/intel/{bdf}/domain_translation_struct");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_the_number_of_entries() {
        let text = "Device 0000:00:02.0 @0x1234000\n\
            IOVA_PFN\t\tPML5E\t\t\tPML4E\t\t\tPDPE\t\t\tPDE\t\t\tPTE\n\
            0x0000000100000 |\t0x0000000000000000\t0x0000000001234003\t0x0000000140000083\n\
            0x0000000010000 |\t0x0000000000000000\t0x0000000001234003\t0x0000000001235003\t0x0000000100400083\n\
            0x0000000020001 |\t0x0000000000000000\t0x0000000001234003\t0x0000000001235003\t0x0000000001236003\t0x8000000100601003\n";
        let l = parse(text).unwrap();
        assert_eq!(
            l,
            vec![
                Leaf {
                    iova: 1 << 32,
                    size: GIB1,
                    phys: 0x1_4000_0000,
                    entry: 0x1_4000_0083
                },
                Leaf {
                    iova: 0x1000_0000,
                    size: MIB2,
                    phys: 0x1_0040_0000,
                    entry: 0x1_0040_0083
                },
                Leaf {
                    iova: 0x2000_1000,
                    size: KIB4,
                    phys: 0x1_0060_1000,
                    entry: 0x8000_0001_0060_1003
                },
            ]
        );
        assert!(parse("0x1 |\t0x0\t0x0\n").is_err());
        assert!(parse("0x1 |\t0x0\tzz\t0x0\n").is_err());
    }
}
