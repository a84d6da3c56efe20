// SPDX-License-Identifier: GPL-2.0-only
//! The fault plan against a model: whatever the VMA, its file offset, the
//! faulting address, the file size and the extents, every page an
//! installed entry covers shows exactly its own file offset's memory, and
//! nothing at or past the page holding EOF is mapped. Also: an aligned,
//! fully covered, contiguously backed GiB is one PUD whatever page is
//! touched first.

use guestmemfs_format::fault::{
    mappable_end, resolve, tail_to_zero, target, Entry, Plan, Vma, PAGE_SIZE, PUD_SIZE,
};
use guestmemfs_format::layout::BLOCK_SIZE;
use guestmemfs_format::meta::Extent;
use proptest::prelude::*;

const GIB: u64 = PUD_SIZE;

/// A file: extents as (file_block, phys_block, count), sorted, disjoint.
#[derive(Debug, Clone)]
struct File {
    size: u64,
    extents: Vec<Extent>,
}

impl File {
    fn extent_at(&self, block: u64) -> Option<&Extent> {
        self.extents
            .iter()
            .find(|e| block >= e.file_block && block < e.file_block + e.count)
    }

    /// The model: physical address of file offset `off`, if backed.
    fn phys_of(&self, base: u64, off: u64) -> Option<u64> {
        let b = off / BLOCK_SIZE;
        let e = self.extent_at(b)?;
        Some(base + (e.phys_block + b - e.file_block) * BLOCK_SIZE + off % BLOCK_SIZE)
    }
}

/// Files up to 3 GiB in runs of random lengths, some holes, physical
/// placement either aligned (unit-sized runs at unit boundaries) or
/// shuffled.
fn file() -> impl Strategy<Value = File> {
    (
        1u64..(3 * GIB),
        prop::collection::vec((1u64..600, 0u64..8, any::<bool>()), 1..12),
    )
        .prop_map(|(size, runs)| {
            let blocks = size.div_ceil(BLOCK_SIZE);
            let mut extents = Vec::new();
            let (mut fb, mut next_phys) = (0u64, 4096u64);
            for (i, (len, gap, hole)) in runs.into_iter().enumerate() {
                if fb >= blocks {
                    break;
                }
                let count = len.min(blocks - fb);
                if !hole {
                    // Physical runs keep the file's offset within a GiB
                    // for half of the cases, so PUDs are possible.
                    let phys = if i % 2 == 0 {
                        next_phys - next_phys % 512 + 512 + fb % 512
                    } else {
                        next_phys + gap
                    };
                    extents.push(Extent {
                        id: i as u64 + 1,
                        count,
                        next: 0,
                        file_block: fb,
                        phys_block: phys,
                    });
                    next_phys = phys + count + 1;
                }
                fb += count;
            }
            File { size, extents }
        })
}

/// A VMA: start at a page, 2 MiB or 1 GiB boundary plus a page offset,
/// length in pages, file offset in pages.
fn vma() -> impl Strategy<Value = Vma> {
    (
        prop::sample::select(vec![PAGE_SIZE, BLOCK_SIZE, GIB]),
        1u64..64,
        0u64..1024,
        1u64..(4 * GIB / PAGE_SIZE),
        prop::sample::select(vec![0, PAGE_SIZE, BLOCK_SIZE, GIB, 3 * PAGE_SIZE]),
        0u64..4,
    )
        .prop_map(|(align, k, pages, len, off_base, off_units)| {
            let start = k * GIB + (align * pages) % GIB;
            Vma {
                start,
                end: start + len * PAGE_SIZE,
                file_offset: off_base + off_units * BLOCK_SIZE,
            }
        })
}

/// What the kernel does for one fault: PUD, else PMD, else PTE. `bad`
/// lists region blocks hit by memory errors.
fn fault(vma: &Vma, addr: u64, file: &File, base: u64, bad: &[u64]) -> Plan {
    let is_bad = |first: u64, count: u64| bad.iter().any(|&b| first <= b && b - first < count);
    for entry in [Entry::Pud, Entry::Pmd, Entry::Pte] {
        let plan = match target(vma, addr, entry, file.size) {
            Ok(t) => resolve(&t, file.extent_at(t.file_block()), base, is_bad),
            Err(p) => p,
        };
        if plan != Plan::Fallback {
            return plan;
        }
        assert_ne!(entry, Entry::Pte, "a PTE fault never falls back");
    }
    unreachable!()
}

fn check_entry(vma: &Vma, file: &File, base: u64, addr: u64, plan: Plan, bad: &[u64]) {
    let eof = mappable_end(file.size);
    let region_block = |phys: u64| (phys - base) / BLOCK_SIZE;
    match plan {
        Plan::Map {
            entry,
            addr: a,
            phys,
        } => {
            let size = entry.bytes();
            assert_eq!(a % size, 0, "entry address not aligned");
            assert!(
                a <= addr && addr < a + size,
                "entry does not cover the fault"
            );
            // First, last and a spread of pages of the entry.
            let pages = size / PAGE_SIZE;
            for i in [
                0,
                1,
                pages / 3,
                pages / 2,
                pages.saturating_sub(2),
                pages - 1,
            ] {
                let p = a + (i.min(pages - 1)) * PAGE_SIZE;
                let off = vma.offset_of(p).expect("entry page outside the VMA");
                assert!(off < eof, "page at file offset {off:#x} past EOF {eof:#x}");
                assert_eq!(
                    file.phys_of(base, off),
                    Some(phys + (p - a)),
                    "page {p:#x} shows the wrong memory"
                );
            }
            let (first, last) = (region_block(phys), region_block(phys + size - 1));
            assert!(
                !bad.iter().any(|&b| first <= b && b <= last),
                "entry maps a bad block"
            );
        }
        Plan::HwPoison => {
            let off = vma.offset_of(addr).unwrap();
            let phys = file.phys_of(base, off).expect("hwpoison for a hole");
            assert!(
                bad.contains(&region_block(phys)),
                "hwpoison for a good block"
            );
        }
        Plan::SigBus => {
            let off = vma.offset_of(addr).unwrap();
            assert!(
                off >= eof || file.phys_of(base, off).is_none(),
                "SIGBUS for backed offset {off:#x} inside EOF {eof:#x}"
            );
        }
        Plan::Fallback => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn every_page_shows_its_own_offset(
        vma in vma(),
        file in file(),
        at in 0u64..u64::MAX,
        base_gib in 1u64..64,
        bad_picks in prop::collection::vec(any::<u64>(), 0..3),
    ) {
        let base = base_gib * GIB;
        let addr = vma.start + (at % ((vma.end - vma.start) / PAGE_SIZE)) * PAGE_SIZE + at % PAGE_SIZE;
        // Bad blocks among the file's own (a pick selects an extent and a
        // block of it).
        let bad: Vec<u64> = bad_picks
            .iter()
            .filter(|_| !file.extents.is_empty())
            .map(|&p| {
                let e = &file.extents[p as usize % file.extents.len()];
                e.phys_block + (p / 64) % e.count
            })
            .collect();
        let plan = fault(&vma, addr, &file, base, &bad);
        check_entry(&vma, &file, base, addr, plan, &bad);
    }

    #[test]
    fn aligned_gib_is_one_pud_whatever_page_first(
        k in 1u64..16,
        unit in 0u64..3,
        phys_unit in 1u64..8,
        page in 0u64..(GIB / PAGE_SIZE),
        extra in 0u64..(3 * GIB),
    ) {
        let vma = Vma { start: k * GIB, end: (k + 3) * GIB, file_offset: 0 };
        let file = File {
            size: (unit + 1) * GIB + extra,
            extents: vec![Extent {
                id: 1,
                count: 512,
                next: 0,
                file_block: unit * 512,
                phys_block: phys_unit * 512,
            }],
        };
        let addr = (k + unit) * GIB + page * PAGE_SIZE;
        prop_assert_eq!(
            fault(&vma, addr, &file, GIB, &[]),
            Plan::Map { entry: Entry::Pud, addr: (k + unit) * GIB, phys: (1 + phys_unit) * GIB }
        );
    }

    #[test]
    fn shrink_then_grow_shows_zeros(
        old in 0u64..(8 * BLOCK_SIZE),
        mid in 0u64..(8 * BLOCK_SIZE),
        new in 0u64..(8 * BLOCK_SIZE),
        probes in prop::collection::vec(0u64..(8 * BLOCK_SIZE), 16),
    ) {
        // A byte model of one file through old -> mid -> new: every
        // byte a mapping could have written holds data (bytes below the
        // size, and the rest of the page holding EOF); a change zeroes
        // what `tail_to_zero` names; blocks freed by a shrink come back
        // zeroed (allocation zeroes). After the changes every byte in
        // [min(old, mid, ...), new) that was not written since must read 0.
        let block_of = |x: u64| x / BLOCK_SIZE;
        let dirty = |x: u64, size: u64| x < mappable_end(size);
        for &x in &probes {
            let mut data = dirty(x, old);
            for (from, to) in [(old, mid), (mid, new)] {
                if let Some((s, e)) = tail_to_zero(from, to) {
                    prop_assert_eq!(block_of(s), block_of(e - 1), "zeroing crosses a block");
                    if s <= x && x < e {
                        data = false;
                    }
                }
                // A shrink frees the blocks after the one holding `to`.
                if to < from && block_of(x) > block_of(to.saturating_sub(1)) && x >= to {
                    data = false;
                }
                if to < from && to == 0 {
                    data = false;
                }
            }
            let written_before = x < old.min(mid).min(new);
            if x < new && !written_before {
                prop_assert!(!data, "byte {:#x} past an earlier EOF shows stale data ({} -> {} -> {})", x, old, mid, new);
            }
        }
    }
}
