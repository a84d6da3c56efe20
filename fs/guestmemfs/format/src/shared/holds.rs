// SPDX-License-Identifier: GPL-2.0-only
//! DMA holds: file ranges that an IOMMU maps by physical address
//! (iommufd's `IOMMU_IOAS_MAP_FILE` on a guestmemfs file).
//!
//! A device can write to a held range at any time, so its blocks must
//! keep their place: while a hold exists, no size change may cut into it
//! (`Busy`), and an inode whose last link and last reference go away is
//! kept (an orphan) until its last hold is released, then evicted. There
//! is no hole punching. Holes are filled when the hold is taken, so the
//! physical runs a hold reports never change while it exists.
//!
//! The caller (the kernel's volume) keeps the records; this module only
//! decides, so that host tests can check the rules against a block model.

use super::layout::{BLOCK_SIZE, HUGE_BLOCKS};
use super::meta::Meta;
use super::Error;

/// One hold: bytes `[start, end)` of inode `ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Caller's handle, unique among live holds.
    pub id: u64,
    /// Inode held.
    pub ino: u64,
    /// First byte (page aligned).
    pub start: u64,
    /// End byte (page aligned, above `start`).
    pub end: u64,
    /// The inode was evicted by the VFS while held: evict its metadata
    /// when its last hold goes.
    pub evict_pending: bool,
}

/// Page size the holds are aligned to.
pub const HOLD_ALIGN: u64 = 4096;

/// Checks the range of a new hold on a file of `size` bytes: page
/// aligned, not empty, inside the file. `Invalid` otherwise.
pub fn check_range(start: u64, len: u64, size: u64) -> Result<u64, Error> {
    let end = start.checked_add(len).ok_or(Error::Invalid)?;
    if len == 0 || start % HOLD_ALIGN != 0 || len % HOLD_ALIGN != 0 || end > size {
        return Err(Error::Invalid);
    }
    Ok(end)
}

/// The highest end of the holds on `ino` (0 without any).
pub fn held_end(holds: &[Hold], ino: u64) -> u64 {
    holds
        .iter()
        .filter(|h| h.ino == ino)
        .map(|h| h.end)
        .max()
        .unwrap_or(0)
}

/// A size change of `ino` to `new_size`: `Busy` if it would cut into a
/// hold (free a held block, or zero held bytes).
pub fn check_size(holds: &[Hold], ino: u64, new_size: u64) -> Result<(), Error> {
    if new_size < held_end(holds, ino) {
        return Err(Error::Busy);
    }
    Ok(())
}

/// The VFS evicts `ino` (no link, no reference): true if holds keep it,
/// in which case they are marked and the last release evicts it.
pub fn defer_evict(holds: &mut [Hold], ino: u64) -> bool {
    let mut held = false;
    for h in holds.iter_mut().filter(|h| h.ino == ino) {
        h.evict_pending = true;
        held = true;
    }
    held
}

/// After `released` was removed from `holds`: true if its inode must be
/// evicted now (it was pending and no hold is left on it).
pub fn evict_after_release(holds: &[Hold], released: &Hold) -> bool {
    released.evict_pending && !holds.iter().any(|h| h.ino == released.ino)
}

/// The physically contiguous runs backing bytes `[start, end)` of `ino`,
/// in file order, each passed to `f(region_offset, len)` (bytes from the
/// region's start). Adjacent extents that are physically adjacent make
/// one run; a run is split only where the next piece would not fit in
/// `max_len` bytes, at a multiple of 1 GiB so that the split keeps huge
/// mappings possible. `NotFound` if any byte is a hole. Returns the runs.
pub fn phys_runs<B: AsRef<[u8]>>(
    m: &Meta<'_, B>,
    ino: u64,
    start: u64,
    end: u64,
    max_len: u64,
    mut f: impl FnMut(u64, u64),
) -> Result<u64, Error> {
    let unit = BLOCK_SIZE * HUGE_BLOCKS;
    let max_len = (max_len / unit * unit).max(unit);
    let mut pos = start;
    let mut run: Option<(u64, u64)> = None;
    let mut count = 0;
    let mut flush = |run: (u64, u64), count: &mut u64| {
        f(run.0, run.1);
        *count += 1;
    };
    for e in m.extents(ino)? {
        let e = e?;
        let (e_start, e_end) = (
            e.file_block.saturating_mul(BLOCK_SIZE),
            e.file_block
                .saturating_add(e.count)
                .saturating_mul(BLOCK_SIZE),
        );
        if e_end <= pos {
            continue;
        }
        if e_start > pos || pos >= end {
            break;
        }
        let to = e_end.min(end);
        let mut phys = e.phys_block * BLOCK_SIZE + (pos - e_start);
        let mut len = to - pos;
        while len > 0 {
            match run {
                Some((p, l)) if p + l == phys && l < max_len => {
                    let take = len.min(max_len - l);
                    run = Some((p, l + take));
                    phys += take;
                    len -= take;
                }
                Some(r) => {
                    flush(r, &mut count);
                    run = None;
                }
                None => {
                    let take = len.min(max_len);
                    run = Some((phys, take));
                    phys += take;
                    len -= take;
                }
            }
        }
        pos = to;
    }
    if pos < end {
        return Err(Error::NotFound);
    }
    if let Some(r) = run {
        flush(r, &mut count);
    }
    Ok(count)
}
