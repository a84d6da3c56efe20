// SPDX-License-Identifier: GPL-2.0-only
//! What a page fault on a guestmemfs mapping installs, and what a size
//! change must zero: the arithmetic the C fault handler and `setattr`
//! apply, kept here so host property tests can check it against a model
//! ("every page of the VMA shows exactly its own file offset; nothing at
//! or past the page that holds EOF is mapped").
//!
//! A fault is decided in two steps, because the second needs the file's
//! extents, which the kernel looks up (and allocates) under its lock:
//! [`target`] picks the file range one entry of the asked size would map,
//! from the VMA and `i_size` alone; [`resolve`] checks that the extent
//! backing it is physically contiguous and aligned and gives the address.

use super::layout::{BLOCK_SIZE, HUGE_BLOCKS};
use super::meta::Extent;

/// Base page size.
pub const PAGE_SIZE: u64 = 4096;
/// Bytes a 1 GiB (PUD) entry maps.
pub const PUD_SIZE: u64 = BLOCK_SIZE * HUGE_BLOCKS;

/// Size of a page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 4 KiB.
    Pte,
    /// 2 MiB, one block.
    Pmd,
    /// 1 GiB, one unit of `HUGE_BLOCKS` blocks.
    Pud,
}

impl Entry {
    /// Bytes the entry maps.
    pub fn bytes(self) -> u64 {
        match self {
            Entry::Pte => PAGE_SIZE,
            Entry::Pmd => BLOCK_SIZE,
            Entry::Pud => PUD_SIZE,
        }
    }
}

/// The parts of a VMA a fault depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    /// `vm_start`.
    pub start: u64,
    /// `vm_end` (exclusive).
    pub end: u64,
    /// File offset mapped at `start` (`vm_pgoff << PAGE_SHIFT`).
    pub file_offset: u64,
}

impl Vma {
    /// File offset shown at `addr`, if `addr` is inside the VMA.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        if addr < self.start || addr >= self.end {
            return None;
        }
        self.file_offset.checked_add(addr - self.start)
    }
}

/// One entry's worth of a file, aligned in both the address space and
/// the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Entry size.
    pub entry: Entry,
    /// Virtual address of the entry (aligned to its size).
    pub addr: u64,
    /// File offset mapped at `addr` (aligned to the entry size for huge
    /// entries, to a page for a PTE).
    pub file_offset: u64,
}

impl Target {
    /// File block holding `file_offset`.
    pub fn file_block(&self) -> u64 {
        self.file_offset / BLOCK_SIZE
    }

    /// Blocks the entry covers (at least the one it starts in).
    pub fn blocks(&self) -> u64 {
        (self.entry.bytes() / BLOCK_SIZE).max(1)
    }
}

/// What the fault handler does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Install `entry` at `addr` mapping physical address `phys`.
    Map {
        /// Entry size.
        entry: Entry,
        /// Aligned virtual address.
        addr: u64,
        /// Physical address mapped at `addr`.
        phys: u64,
    },
    /// This entry size cannot map here; the core retries a smaller one.
    Fallback,
    /// The page holds no file data (past EOF, or no memory to back it).
    SigBus,
    /// The page is backed by a block a memory error hit: the access
    /// reports the error (`SIGBUS` with `BUS_MCEERR_AR`).
    HwPoison,
}

/// Bytes of the file a mapping may show: `i_size` rounded up to a page
/// (the rest of the page holding EOF reads as zeros, see [`tail_to_zero`]).
pub fn mappable_end(i_size: u64) -> u64 {
    i_size
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(!(PAGE_SIZE - 1))
}

/// The entry of size `entry` that a fault at `addr` of `vma` would
/// install, for a file of `i_size` bytes. `Err(SigBus)` when `addr` shows
/// no file data at all, `Err(Fallback)` when an entry of this size cannot
/// be used (the aligned range leaves the VMA, the address and the file
/// offset are not equally aligned, or the range crosses EOF).
pub fn target(vma: &Vma, addr: u64, entry: Entry, i_size: u64) -> Result<Target, Plan> {
    let off = vma.offset_of(addr).ok_or(Plan::SigBus)?;
    if off >= mappable_end(i_size) {
        return Err(Plan::SigBus);
    }
    let size = entry.bytes();
    let into = addr % size;
    let aligned = addr - into;
    // A file offset smaller than the address's offset into the entry
    // cannot be equally aligned.
    let Some(file_offset) = off.checked_sub(into) else {
        return Err(Plan::Fallback);
    };
    if entry == Entry::Pte {
        return Ok(Target {
            entry,
            addr: aligned,
            file_offset,
        });
    }
    let covered = aligned >= vma.start && aligned.checked_add(size).is_some_and(|e| e <= vma.end);
    let inside_file = file_offset.checked_add(size).is_some_and(|e| e <= i_size);
    if !covered || file_offset % size != 0 || !inside_file {
        return Err(Plan::Fallback);
    }
    Ok(Target {
        entry,
        addr: aligned,
        file_offset,
    })
}

/// Completes a [`target`] with the extent that backs its first block
/// (`None`: a hole the kernel could not fill, or, for a PUD, a unit it
/// would not fill as a whole). `base` is the region's physical address;
/// `bad(first, count)` says whether a region block of `[first, first +
/// count)` was hit by a memory error: such a block is never mapped (a PUD
/// over one falls back, so the unit's good blocks map as PMDs).
pub fn resolve(
    t: &Target,
    extent: Option<&Extent>,
    base: u64,
    bad: impl Fn(u64, u64) -> bool,
) -> Plan {
    let Some(e) = extent else {
        return if t.entry == Entry::Pud {
            Plan::Fallback
        } else {
            Plan::SigBus
        };
    };
    let fb = t.file_block();
    let end = e.file_block.checked_add(e.count);
    let inside = fb >= e.file_block && end.is_some_and(|end| fb + t.blocks() <= end);
    if !inside {
        // A unit that is not one contiguous run: smaller entries.
        return if t.entry == Entry::Pud {
            Plan::Fallback
        } else {
            Plan::SigBus
        };
    }
    let block = e.phys_block + (fb - e.file_block);
    if bad(block, t.blocks()) {
        return if t.entry == Entry::Pud {
            Plan::Fallback
        } else {
            Plan::HwPoison
        };
    }
    let phys = block
        .checked_mul(BLOCK_SIZE)
        .and_then(|p| p.checked_add(base))
        .and_then(|p| p.checked_add(t.file_offset % BLOCK_SIZE));
    match phys {
        Some(phys) if phys % t.entry.bytes() == 0 => Plan::Map {
            entry: t.entry,
            addr: t.addr,
            phys,
        },
        Some(_) if t.entry == Entry::Pud => Plan::Fallback,
        // A misaligned block or PTE means a misaligned region: refuse.
        _ => Plan::SigBus,
    }
}

/// The file bytes `[start, end)` a size change from `old` to `new` must
/// zero, or `None`. Blocks past the new size are freed on shrink and
/// zeroed on allocation, so only the block holding the smaller of the two
/// sizes can keep stale bytes past it: after a shrink, and after writes
/// through a mapping of the page that held EOF before a grow.
pub fn tail_to_zero(old: u64, new: u64) -> Option<(u64, u64)> {
    let z = old.min(new);
    if old == new || z % BLOCK_SIZE == 0 {
        return None;
    }
    Some((z, z - z % BLOCK_SIZE + BLOCK_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = PUD_SIZE;
    const MIB: u64 = 1 << 20;

    fn ext(file_block: u64, phys_block: u64, count: u64) -> Extent {
        Extent {
            id: 1,
            count,
            next: 0,
            file_block,
            phys_block,
        }
    }

    #[test]
    fn pud_needs_equal_offset_within_the_gib() {
        // File offset 2 MiB mapped at a 1 GiB-aligned address: the bug
        // that showed file offset 0 there.
        let vma = Vma {
            start: 4 * GIB,
            end: 6 * GIB,
            file_offset: 2 * MIB,
        };
        assert_eq!(
            target(&vma, 4 * GIB, Entry::Pud, 8 * GIB),
            Err(Plan::Fallback)
        );
        let t = target(&vma, 4 * GIB, Entry::Pmd, 8 * GIB).unwrap();
        assert_eq!(t.file_offset, 2 * MIB);
    }

    #[test]
    fn pud_from_any_page_of_the_gib() {
        let vma = Vma {
            start: 4 * GIB,
            end: 6 * GIB,
            file_offset: GIB,
        };
        let t = target(&vma, 5 * GIB + 12345 * PAGE_SIZE + 7, Entry::Pud, 4 * GIB).unwrap();
        assert_eq!((t.addr, t.file_offset), (5 * GIB, 2 * GIB));
        let e = ext(1024, 512, 512);
        assert_eq!(
            resolve(&t, Some(&e), 0, |_, _| false),
            Plan::Map {
                entry: Entry::Pud,
                addr: 5 * GIB,
                phys: GIB
            }
        );
    }

    #[test]
    fn eof_rules() {
        let vma = Vma {
            start: 0,
            end: 4 * MIB,
            file_offset: 0,
        };
        let size = 3 * MIB + 100;
        assert_eq!(target(&vma, 2 * MIB, Entry::Pmd, size), Err(Plan::Fallback));
        assert!(target(&vma, 3 * MIB + 4095, Entry::Pte, size).is_ok());
        assert_eq!(
            target(&vma, 3 * MIB + 4096, Entry::Pte, size),
            Err(Plan::SigBus)
        );
        assert_eq!(tail_to_zero(4 * MIB, size), Some((size, 4 * MIB)));
        assert_eq!(tail_to_zero(size, 4 * MIB), Some((size, 4 * MIB)));
        assert_eq!(tail_to_zero(4 * MIB, 2 * MIB), None);
        assert_eq!(mappable_end(size), 3 * MIB + 4096);
    }

    #[test]
    fn bad_blocks_are_never_mapped() {
        let vma = Vma {
            start: 0,
            end: 2 * GIB,
            file_offset: 0,
        };
        let e = ext(0, 512, 1024);
        // Region block 515 is bad: file block 3.
        let bad = |first: u64, count: u64| first <= 515 && 515 < first + count;
        let at = |addr, entry| {
            resolve(
                &target(&vma, addr, entry, 2 * GIB).unwrap(),
                Some(&e),
                0,
                bad,
            )
        };
        assert_eq!(at(0, Entry::Pud), Plan::Fallback);
        assert_eq!(at(6 * MIB, Entry::Pmd), Plan::HwPoison);
        assert_eq!(at(7 * MIB + 5, Entry::Pte), Plan::HwPoison);
        assert!(matches!(at(8 * MIB, Entry::Pmd), Plan::Map { .. }));
        assert!(matches!(at(2 * MIB - 1, Entry::Pte), Plan::Map { .. }));
        assert!(matches!(at(GIB, Entry::Pud), Plan::Map { .. }));
    }
}
