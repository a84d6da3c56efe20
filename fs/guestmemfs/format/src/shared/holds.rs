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
//! Live update (kexec with the IOMMU mappings kept): a hold can be marked
//! *preserved*. At the freeze, the inodes with a preserved hold get
//! [`FLAG_DMA_HELD`](super::layout::FLAG_DMA_HELD) on disk (format
//! version 3); the next kernel turns every flagged inode into a *boot
//! hold* on the whole file, which keeps it (no orphan reclaim, no shrink,
//! no reformat) until the IOMMU side says the handover is resolved.
//! Meanwhile the IOMMU side takes ordinary holds again by inode number
//! and generation ([`check_id`]: nothing is allocated, so the blocks are
//! the ones the adopted IOMMU tables point to).
//!
//! The caller (the kernel's volume) keeps the records; this module only
//! decides, so that host tests can check the rules against a block model.

use super::layout::{BLOCK_SIZE, HUGE_BLOCKS};
use super::meta::{InodeData, Meta};
use super::Error;

/// One hold: bytes `[start, end)` of inode `ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Caller's handle, unique among live holds other than boot holds
    /// (which have 0 and are never handed out).
    pub id: u64,
    /// Inode held.
    pub ino: u64,
    /// The inode's generation when the hold was taken.
    pub igen: u64,
    /// First byte (page aligned).
    pub start: u64,
    /// End byte (page aligned, above `start`; for a boot hold, the file
    /// size at adoption, possibly 0).
    pub end: u64,
    /// The inode was evicted by the VFS while held (or is an orphan from
    /// the previous kernel, which the VFS never sees): evict its metadata
    /// when its last hold goes.
    pub evict_pending: bool,
    /// The IOMMU side hands this hold's mapping to the next kernel.
    pub preserved: bool,
    /// A boot hold: the previous kernel flagged the inode `DMA_HELD`.
    pub boot: bool,
}

impl Hold {
    /// A new hold `id` on bytes `[start, end)` of inode `ino` of
    /// generation `igen`, to join `holds`. If the inode's eviction is
    /// already pending (no VFS inode refers to it any more), the new hold
    /// inherits it, so that the last release evicts the inode.
    pub fn new(holds: &[Hold], id: u64, ino: u64, igen: u64, start: u64, end: u64) -> Hold {
        Hold {
            id,
            ino,
            igen,
            start,
            end,
            evict_pending: holds.iter().any(|h| h.ino == ino && h.evict_pending),
            preserved: false,
            boot: false,
        }
    }

    /// The boot hold of inode `i`, flagged `DMA_HELD` by the previous
    /// kernel: the whole file at its current size. An orphan has no VFS
    /// inode (it has no name) and gets none, so its eviction is pending
    /// from the start.
    pub fn boot(i: &InodeData) -> Hold {
        Hold {
            id: 0,
            ino: i.ino,
            igen: i.generation,
            start: 0,
            end: i.size,
            evict_pending: i.nlink == 0,
            preserved: false,
            boot: true,
        }
    }
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

/// `mount -o reformat` would free every block: `Busy` while any hold
/// exists (boot holds included) or a handover from the previous kernel
/// is not resolved yet (`handover_pending`: it may have left IOMMU
/// mappings even where the filesystem itself was refused).
pub fn check_reformat(holds: &[Hold], handover_pending: bool) -> Result<(), Error> {
    if !holds.is_empty() || handover_pending {
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
/// evicted now (it was pending and no hold is left on it). Also for a
/// boot hold dropped by [`next_boot`]'s caller.
pub fn evict_after_release(holds: &[Hold], released: &Hold) -> bool {
    released.evict_pending && !is_held(holds, released.ino)
}

/// True if any hold (a boot hold included) is on `ino`.
pub fn is_held(holds: &[Hold], ino: u64) -> bool {
    holds.iter().any(|h| h.ino == ino)
}

/// The index of the hold the caller knows as `id` (boot holds are never
/// found: they have no caller).
pub fn find(holds: &[Hold], id: u64) -> Option<usize> {
    holds.iter().position(|h| !h.boot && h.id == id)
}

/// Marks hold `id` as handed over to the next kernel, or no longer
/// (`Invalid` for an unknown hold).
pub fn set_preserved(holds: &mut [Hold], id: u64, preserved: bool) -> Result<(), Error> {
    let at = find(holds, id).ok_or(Error::Invalid)?;
    let h = holds.get_mut(at).ok_or(Error::Invalid)?;
    h.preserved = preserved;
    Ok(())
}

/// True if the next kernel must keep `ino` as a boot hold: a preserved
/// hold is on it, or a boot hold not yet resolved (the IOMMU tables the
/// next kernel adopts may still point to it). At the freeze, exactly
/// these inodes get `FLAG_DMA_HELD`.
pub fn keep_for_next_kernel(holds: &[Hold], ino: u64) -> bool {
    holds
        .iter()
        .any(|h| h.ino == ino && (h.preserved || h.boot))
}

/// The index of a boot hold, while one is left: the handover is resolved
/// by removing them one by one, each followed by
/// [`evict_after_release`].
pub fn next_boot(holds: &[Hold]) -> Option<usize> {
    holds.iter().position(|h| h.boot)
}

/// At adoption: passes the boot hold of every inode the previous kernel
/// flagged `FLAG_DMA_HELD` to `f`; returns how many.
pub fn boot_holds<B: AsRef<[u8]>>(
    m: &Meta<'_, B>,
    mut f: impl FnMut(Hold) -> Result<(), Error>,
) -> Result<u64, Error> {
    m.for_each_dma_held(|i| f(Hold::boot(i)))
}

/// Why a hold by inode number and generation ([`check_id`]) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No inode in use has that number (`ENOENT`).
    NotInUse,
    /// The inode has another generation: it was freed and reused
    /// (`ESTALE`).
    Stale,
    /// Not a regular file, or the range is not page aligned, empty,
    /// overflowing or past the file's size (`EINVAL`).
    Invalid,
    /// A byte of the range has no block (`ENODATA`): nothing is allocated
    /// here, the blocks must be the ones a device may already map.
    Hole,
    /// The metadata failed a read.
    Meta(Error),
}

/// The restore path's hold: checks that bytes `[start, start + len)` of
/// inode `ino`, of generation `igen`, can be held as they are (an orphan
/// may be), without filling anything. Returns the range's end and the
/// number of runs [`phys_runs`] gives with `max_len`.
pub fn check_id<B: AsRef<[u8]>>(
    m: &Meta<'_, B>,
    ino: u64,
    igen: u64,
    start: u64,
    len: u64,
    max_len: u64,
) -> Result<(u64, u64), Refusal> {
    let i = match m.inode(ino) {
        Ok(i) => i,
        Err(Error::NotFound | Error::Invalid) => return Err(Refusal::NotInUse),
        Err(e) => return Err(Refusal::Meta(e)),
    };
    if i.generation != igen {
        return Err(Refusal::Stale);
    }
    if !i.is_reg() {
        return Err(Refusal::Invalid);
    }
    let end = check_range(start, len, i.size).map_err(|_| Refusal::Invalid)?;
    match phys_runs(m, ino, start, end, max_len, |_, _| {}) {
        Ok(n) => Ok((end, n)),
        Err(Error::NotFound) => Err(Refusal::Hole),
        Err(e) => Err(Refusal::Meta(e)),
    }
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

#[cfg(test)]
mod tests {
    use super::super::index::testing::Store;
    use super::super::layout::*;
    use super::super::meta::format;
    use super::super::BlockBitmap;
    use super::*;
    extern crate std;

    const T: Time = Time { sec: 3, nsec: 0 };

    fn hold(id: u64, ino: u64) -> Hold {
        Hold::new(&[], id, ino, 0, 0, 4096)
    }

    #[test]
    fn new_holds_inherit_a_pending_eviction() {
        let mut list = [hold(1, 5), hold(2, 6)];
        assert!(!list[0].evict_pending);
        assert!(defer_evict(&mut list, 5));
        assert!(Hold::new(&list, 3, 5, 0, 0, 4096).evict_pending);
        assert!(!Hold::new(&list, 3, 6, 0, 0, 4096).evict_pending);
    }

    #[test]
    fn boot_holds_cover_the_file_and_have_no_caller() {
        let mut i = InodeData {
            ino: 7,
            mode: S_IFREG | 0o600,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 3 * BLOCK_SIZE,
            parent: ROOT_INO,
            first_extent: 0,
            nr_extents: 0,
            blocks: 0,
            atime: T,
            mtime: T,
            ctime: T,
            generation: 11,
            name_len: 0,
            name: [0; NAME_MAX],
        };
        let b = Hold::boot(&i);
        assert_eq!(
            (b.id, b.ino, b.igen, b.start, b.end),
            (0, 7, 11, 0, 3 * BLOCK_SIZE)
        );
        assert!(b.boot && !b.preserved && !b.evict_pending);
        i.nlink = 0;
        assert!(Hold::boot(&i).evict_pending);
        let mut list = [Hold::boot(&i), hold(1, 7)];
        // A boot hold is never found by id, not even by 0.
        assert_eq!(find(&list, 0), None);
        assert_eq!(find(&list, 1), Some(1));
        assert_eq!(set_preserved(&mut list, 0, true), Err(Error::Invalid));
        assert_eq!(set_preserved(&mut list, 2, true), Err(Error::Invalid));
        // It blocks a shrink below the size, not a grow.
        assert_eq!(check_size(&list, 7, 3 * BLOCK_SIZE - 1), Err(Error::Busy));
        assert_eq!(check_size(&list, 7, 3 * BLOCK_SIZE), Ok(()));
        assert_eq!(next_boot(&list), Some(0));
    }

    #[test]
    fn what_the_next_kernel_keeps() {
        let mut list = [hold(1, 5), hold(2, 5), hold(3, 6)];
        assert!(!keep_for_next_kernel(&list, 5));
        set_preserved(&mut list, 2, true).unwrap();
        assert!(keep_for_next_kernel(&list, 5));
        assert!(!keep_for_next_kernel(&list, 6));
        set_preserved(&mut list, 2, false).unwrap();
        assert!(!keep_for_next_kernel(&list, 5));
        list[2].boot = true;
        assert!(keep_for_next_kernel(&list, 6));
    }

    #[test]
    fn hold_by_id_refusals_in_order() {
        let geo = Geometry::new(16 * BLOCK_SIZE, 16).unwrap();
        let mut buf = std::vec![0u8; geo.meta_bytes() as usize];
        let mut st = Store::new(&geo);
        format(&mut buf, &geo, T, 1, &mut st.index()).unwrap();
        let mut words = std::vec![0u64; 1];
        let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let f = m.create(ROOT_INO, b"f", S_IFREG | 0o600, 0, 0, T).unwrap();
        m.set_size(f.ino, 3 * BLOCK_SIZE, T, &mut bm).unwrap();
        m.allocate(f.ino, 0, 1, &mut bm).unwrap();
        m.allocate(f.ino, 2, 1, &mut bm).unwrap();
        let (g, max) = (f.generation, u64::MAX);
        let id = |ino, igen, start, len| check_id(&m, ino, igen, start, len, max);
        assert_eq!(id(f.ino, g, 0, BLOCK_SIZE), Ok((BLOCK_SIZE, 1)));
        // Two runs, apart: the hole between them is not in the range.
        assert_eq!(id(f.ino, g, 2 * BLOCK_SIZE, BLOCK_SIZE).map(|r| r.1), Ok(1));
        assert_eq!(id(f.ino, g, 0, 2 * BLOCK_SIZE), Err(Refusal::Hole));
        assert_eq!(id(f.ino, g, 0, 3 * BLOCK_SIZE), Err(Refusal::Hole));
        for (start, len) in [
            (1, 4096),
            (0, 0),
            (0, 4095),
            (4096, 3 * BLOCK_SIZE),
            (max, 4096),
        ] {
            assert_eq!(id(f.ino, g, start, len), Err(Refusal::Invalid));
        }
        // Generation before type and range; number before generation.
        assert_eq!(id(f.ino, g + 1, 1, 0), Err(Refusal::Stale));
        assert_eq!(id(ROOT_INO, 0, 0, 4096), Err(Refusal::Invalid));
        assert_eq!(id(ROOT_INO, 1, 0, 4096), Err(Refusal::Stale));
        for ino in [0, f.ino + 1, geo.inode_count, geo.inode_count + 1, max] {
            assert_eq!(id(ino, g, 0, 4096), Err(Refusal::NotInUse));
        }
        // An orphan may be held.
        m.unlink(ROOT_INO, b"f", T).unwrap();
        let held = check_id(&m, f.ino, g, 0, BLOCK_SIZE, max);
        assert_eq!(held, Ok((BLOCK_SIZE, 1)));
        m.evict(f.ino, &mut bm).unwrap();
        let held = check_id(&m, f.ino, g, 0, BLOCK_SIZE, max);
        assert_eq!(held, Err(Refusal::NotInUse));
    }
}
