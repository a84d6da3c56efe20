// SPDX-License-Identifier: GPL-2.0-only
//! Validation of a metadata image handed over by the previous kernel.
//!
//! Nothing from the handover is trusted: the superblock is checked first
//! (magic, version, checksum, geometry against the reserved region, the
//! high-water marks), then every inode and extent record up to the
//! high-water marks (the records above them are free by definition and
//! never read), structure (parents, extent lists, blocks) and meaning
//! alike: flags, modes, names, sizes within `LLONG_MAX`, normalized times,
//! generations below the superblock's counter, link counts (a file 1, or
//! 0 as an orphan; a directory 2 + its subdirectories), so that neither
//! the operations of [`super::meta`] nor the VFS meet a value they could
//! not produce themselves. The walk is linear in the records it reads
//! whatever the input (no unbounded loops: cycles are detected with
//! marks; duplicate names with the index's name table, whose hash is
//! keyed with this boot's seed), and it builds the block bitmap and the
//! [`Index`] as it goes, so a filesystem that passes is ready to use.
//! Memory comes from the caller.

use super::bitmap::BlockBitmap;
use super::index::Index;
use super::layout::*;
use super::meta::{check_name, decode_inode, InodeData, MAX_FILE_BLOCKS, MAX_FILE_SIZE};
use super::meta::{MODE_PERM_MASK, NSEC_PER_SEC};
use super::{corrupt, Corruption, Error};

/// Checks the superblock of `buf` (the mapped metadata blocks, or at
/// least their first 4 KiB) against the region it must describe.
pub fn superblock(buf: &[u8], region_size: u64) -> Result<Geometry, Error> {
    let magic = get_u64(buf, sb::MAGIC)?;
    if magic != MAGIC {
        return corrupt(Corruption::BadMagic);
    }
    let version = get_u32(buf, sb::VERSION)?;
    if version != VERSION && version != VERSION_2 && version != VERSION_1 {
        return corrupt(Corruption::BadVersion(version));
    }
    let body = buf.get(..sb::CHECKSUM).ok_or(Error::Truncated)?;
    if crc32c(body) != get_u32(buf, sb::CHECKSUM)? {
        return corrupt(Corruption::BadChecksum);
    }
    let inode_count = get_u64(buf, sb::INODE_COUNT)?;
    // This code formats with the default count: a larger one (up to 4x,
    // headroom for a future option) is refused before it can size the
    // boot-time index and scratch allocations.
    if inode_count > Geometry::default_inodes(region_size).saturating_mul(4) {
        return corrupt(Corruption::BadGeometry);
    }
    let geo =
        Geometry::new(region_size, inode_count).ok_or(Error::Corrupt(Corruption::BadGeometry))?;
    let consistent = u64::from(get_u32(buf, sb::HEADER_SIZE)?) == SUPERBLOCK_SIZE
        && get_u64(buf, sb::REGION_SIZE)? == region_size
        && get_u64(buf, sb::BLOCK_SIZE)? == BLOCK_SIZE
        && get_u64(buf, sb::NR_BLOCKS)? == geo.nr_blocks
        && get_u64(buf, sb::META_BLOCKS)? == geo.meta_blocks
        && get_u64(buf, sb::INODE_OFFSET)? == INODE_OFFSET
        && get_u64(buf, sb::EXTENT_COUNT)? == geo.extent_count
        && get_u64(buf, sb::EXTENT_OFFSET)? == geo.extent_offset();
    if !consistent {
        return corrupt(Corruption::BadGeometry);
    }
    // Since version 2: the high-water marks inside the tables, a
    // well-formed bad-block list, the rest of the superblock zero (a
    // field a later version adds is never ignored).
    limits(buf, &geo)?;
    if version != VERSION_1 {
        bad_list(buf, &geo)?;
    }
    if version != VERSION_1
        && buf
            .get(sb::RESERVED..sb::CHECKSUM)
            .ok_or(Error::Truncated)?
            .iter()
            .any(|&b| b != 0)
    {
        return corrupt(Corruption::NonZeroReserved);
    }
    Ok(geo)
}

/// Checks the bad-block list of a version 2 or 3 superblock: at most
/// [`BAD_MAX`] entries, strictly ascending data blocks, zero past the
/// count and in the padding. A listed block may be free or owned by a
/// file (the file keeps it; its faults there report the error).
fn bad_list(buf: &[u8], geo: &Geometry) -> Result<(), Error> {
    let count = get_u32(buf, sb::BAD_COUNT)? as usize;
    if count > BAD_MAX || get_u64(buf, sb::BAD_LOST + 4)? != 0 {
        return corrupt(Corruption::BadBlockList);
    }
    let mut prev = None;
    for i in 0..BAD_MAX {
        let b = bad_entry(buf, i)?;
        let ok = if i < count {
            b >= geo.meta_blocks && b < geo.nr_blocks && prev.is_none_or(|p| b > p)
        } else {
            b == 0
        };
        if !ok {
            return corrupt(Corruption::BadBlockList);
        }
        prev = Some(b);
    }
    Ok(())
}

/// How much of the tables an image uses: its version and the records
/// validation reads (the high-water marks; the whole tables for a
/// version 1 image, which has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Format version of the image.
    pub version: u32,
    /// Inode records `1..=inodes` may be in use.
    pub inodes: u64,
    /// Extent records `1..=extents` may be in use.
    pub extents: u64,
}

/// The [`Limits`] of the image whose superblock is `buf`, for the
/// geometry [`superblock`] returned.
pub fn limits(buf: &[u8], geo: &Geometry) -> Result<Limits, Error> {
    match get_u32(buf, sb::VERSION)? {
        VERSION_1 => Ok(Limits {
            version: VERSION_1,
            inodes: geo.inode_count,
            extents: geo.extent_count,
        }),
        version @ (VERSION_2 | VERSION) => {
            let inodes = get_u64(buf, sb::INODE_HWM)?;
            let extents = get_u64(buf, sb::EXTENT_HWM)?;
            if inodes > geo.inode_count || extents > geo.extent_count {
                return corrupt(Corruption::BadGeometry);
            }
            Ok(Limits {
                version,
                inodes,
                extents,
            })
        }
        v => corrupt(Corruption::BadVersion(v)),
    }
}

/// Caller-provided working memory for [`contents`], sized by
/// [`ScratchSizes::for_image`] (or [`ScratchSizes::for_geometry`], the
/// most any image of the geometry needs).
pub struct Scratch<'a> {
    /// One byte per inode record up to the high-water mark: marks of the
    /// directory walk.
    pub inode_marks: &'a mut [u8],
    /// One count per inode record up to the high-water mark:
    /// subdirectories, for the directory link counts.
    pub subdirs: &'a mut [u32],
    /// Becomes the allocator's view of the region.
    pub blocks: BlockBitmap<'a>,
}

/// Element counts of each scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchSizes {
    /// Length of `inode_marks`.
    pub inode_marks: usize,
    /// Length of `subdirs`.
    pub subdirs: usize,
    /// Words for the block bitmap.
    pub block_words: usize,
}

impl ScratchSizes {
    /// Sizes for any image of a validated geometry.
    pub fn for_geometry(geo: &Geometry) -> ScratchSizes {
        ScratchSizes::for_records(geo, geo.inode_count)
    }

    /// Sizes for the image `buf` (its superblock is enough): scratch
    /// follows the inode high-water mark, not the table size.
    pub fn for_image(buf: &[u8], geo: &Geometry) -> Result<ScratchSizes, Error> {
        Ok(ScratchSizes::for_records(geo, limits(buf, geo)?.inodes))
    }

    fn for_records(geo: &Geometry, inodes: u64) -> ScratchSizes {
        let n = usize::try_from(inodes).unwrap_or(usize::MAX);
        ScratchSizes {
            inode_marks: n,
            subdirs: n,
            block_words: usize::try_from(geo.nr_blocks.div_ceil(64)).unwrap_or(usize::MAX),
        }
    }
}

const UNSEEN: u8 = 0;
const WALKING: u8 = 1;
const REACHES_ROOT: u8 = 2;

/// True if an in-use inode record of an image of format `version` may
/// carry `flags` with file type and permissions `mode`: [`FLAG_IN_USE`]
/// alone, or since version 3 also with [`FLAG_DMA_HELD`] on a regular
/// file. Every other bit is undefined.
pub fn inode_flags_ok(version: u32, flags: u32, mode: u32) -> bool {
    flags == FLAG_IN_USE
        || (version >= VERSION && flags == FLAG_IN_USE | FLAG_DMA_HELD && mode & S_IFMT == S_IFREG)
}

/// Checks the fields of in-use inode `i` of an image of format `version`
/// that need nothing but the record itself (`rec`, its raw bytes) and
/// the superblock's generation counter.
fn check_inode_fields(i: &InodeData, rec: &[u8], version: u32, next_gen: u64) -> Result<(), Error> {
    let bad = corrupt(Corruption::BadInode(i.ino));
    if !inode_flags_ok(version, get_u32(rec, ino::FLAGS)?, i.mode) {
        return bad;
    }
    let kind = i.mode & S_IFMT;
    if (kind != S_IFDIR && kind != S_IFREG) || i.mode & !(S_IFMT | MODE_PERM_MASK) != 0 {
        return bad;
    }
    // The name: at most NAME_MAX bytes, the rest of the field zero (as
    // `write_inode` leaves it), none for the root.
    if i.name_len > NAME_MAX || (i.ino == ROOT_INO && i.name_len != 0) {
        return bad;
    }
    let pad = ino::NAME.checked_add(i.name_len).ok_or(Error::Truncated)?;
    let name_end = ino::NAME.checked_add(NAME_MAX).ok_or(Error::Truncated)?;
    let padding = rec.get(pad..name_end).ok_or(Error::Truncated)?;
    if padding.iter().any(|&b| b != 0) {
        return bad;
    }
    if [i.atime, i.mtime, i.ctime]
        .iter()
        .any(|t| t.nsec >= NSEC_PER_SEC)
    {
        return bad;
    }
    // Generations come from the superblock's counter, which only grows.
    if i.generation >= next_gen {
        return bad;
    }
    // Directories have no size (`format` and `create` write 0 and
    // `set_size` refuses them); files stay within `s_maxbytes`.
    if (i.is_dir() && i.size != 0) || i.size > MAX_FILE_SIZE {
        return bad;
    }
    // A file has one link while it has a name, none as an orphan. A
    // directory's count depends on its subdirectories (checked last).
    if i.is_reg() && i.nlink > 1 {
        return bad;
    }
    Ok(())
}

/// Checks every inode and extent record up to the high-water marks of a
/// metadata image whose superblock passed [`superblock`], fills
/// `scratch.blocks` with the blocks in use (metadata included) and builds
/// `index` (storage of [`super::index::IndexSizes::for_image`] or larger,
/// else `Invalid`; its counters keep their seed). Returns the number of
/// inodes in use. On error the index is left unusable.
///
/// The cost is linear in the records up to the high-water marks (plus a
/// clear of the block bitmap, one bit per block); nothing above them is
/// read or cleared. For a version 1 image the marks are the table sizes;
/// the index then holds the real marks (the highest ids in use) and the
/// first change through [`super::meta::Meta`] writes the superblock as
/// the current version with them (a version 2 image gets the new version
/// number only).
pub fn contents(
    buf: &[u8],
    geo: &Geometry,
    scratch: &mut Scratch<'_>,
    index: &mut Index<'_>,
) -> Result<u64, Error> {
    let lim = limits(buf, geo)?;
    let n = usize::try_from(lim.inodes).map_err(|_| Error::Invalid)?;
    if scratch.inode_marks.len() < n
        || scratch.subdirs.len() < n
        || scratch.blocks.nr_blocks() != geo.nr_blocks
        || (buf.len() as u64) < geo.meta_bytes()
    {
        return Err(Error::Invalid);
    }
    index.reset(geo, lim.inodes, lim.extents)?;
    let res = build(buf, geo, &lim, scratch, index);
    match res {
        Ok((used, inode_hwm, extent_hwm)) => {
            let sync =
                lim.version != VERSION || inode_hwm != lim.inodes || extent_hwm != lim.extents;
            index.finish(inode_hwm, extent_hwm, sync);
            Ok(used)
        }
        Err(e) => {
            index.poison();
            Err(e)
        }
    }
}

/// True if inode record `ino` is in use (at or below the mark, flag set).
fn raw_in_use(buf: &[u8], geo: &Geometry, lim: &Limits, ino: u64) -> Result<bool, Error> {
    if ino == 0 || ino > lim.inodes {
        return Ok(false);
    }
    Ok(get_u32(inode_record(buf, geo.inode_count, ino)?, ino::FLAGS)? & FLAG_IN_USE != 0)
}

/// The slot of inode `ino` in a per-inode scratch array.
fn slot<T>(v: &mut [T], ino: u64) -> Result<&mut T, Error> {
    ino.checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| v.get_mut(i))
        .ok_or(Error::Invalid)
}

/// The checks and the index build of [`contents`]; returns the inodes in
/// use and the highest inode and extent ids in use.
fn build(
    buf: &[u8],
    geo: &Geometry,
    lim: &Limits,
    scratch: &mut Scratch<'_>,
    index: &mut Index<'_>,
) -> Result<(u64, u64, u64), Error> {
    let n = usize::try_from(lim.inodes).map_err(|_| Error::Invalid)?;
    scratch
        .inode_marks
        .get_mut(..n)
        .ok_or(Error::Invalid)?
        .iter_mut()
        .for_each(|m| *m = UNSEEN);
    scratch
        .subdirs
        .get_mut(..n)
        .ok_or(Error::Invalid)?
        .iter_mut()
        .for_each(|c| *c = 0);
    scratch.blocks.mark_used(0, geo.meta_blocks)?;

    if !raw_in_use(buf, geo, lim, ROOT_INO)? {
        return corrupt(Corruption::BadRoot);
    }
    let root = decode_inode(buf, geo.inode_count, ROOT_INO)?;
    if !root.is_dir() || root.parent != ROOT_INO {
        return corrupt(Corruption::BadRoot);
    }

    // Pass 1: each inode on its own, its name, its extents.
    let next_gen = get_u64(buf, sb::NEXT_INO_GEN)?;
    let (mut used, mut inode_hwm) = (0u64, 0u64);
    for ino in 1..=lim.inodes {
        let rec = inode_record(buf, geo.inode_count, ino)?;
        if get_u32(rec, ino::FLAGS)? & FLAG_IN_USE == 0 {
            continue;
        }
        used += 1;
        inode_hwm = ino;
        index.set_inode(ino, true)?;
        let i = decode_inode(buf, geo.inode_count, ino)?;
        check_inode_fields(&i, rec, lim.version, next_gen)?;
        if ino != ROOT_INO && i.nlink > 0 {
            if check_name(i.name()).is_err() {
                return corrupt(Corruption::BadInode(ino));
            }
            let parent_ok = raw_in_use(buf, geo, lim, i.parent)? && {
                let p = inode_record(buf, geo.inode_count, i.parent)?;
                get_u32(p, ino::MODE)? & S_IFMT == S_IFDIR && get_u32(p, ino::NLINK)? > 0
            };
            if !parent_ok {
                return corrupt(Corruption::BadParent(ino));
            }
            // No two entries of a directory share a name.
            if index.find(buf, i.parent, i.name())?.is_some() {
                return corrupt(Corruption::DuplicateName(ino));
            }
            index.insert(ino, i.parent, i.name())?;
            // Counted for parents not reached yet too: the counts live up
            // to the scan limit.
            index
                .add_child(i.parent)
                .map_err(|_| Error::Corrupt(Corruption::BadParent(ino)))?;
            if i.is_dir() {
                let c = slot(scratch.subdirs, i.parent)?;
                *c = c
                    .checked_add(1)
                    .ok_or(Error::Corrupt(Corruption::BadInode(i.parent)))?;
            }
        } else if ino != ROOT_INO && i.parent != 0 {
            // Unlinked (orphan) inodes have no parent.
            return corrupt(Corruption::BadParent(ino));
        }
        if i.is_dir() && (i.first_extent != 0 || i.blocks != 0 || i.nr_extents != 0) {
            return corrupt(Corruption::BadInode(ino));
        }
        check_extents(buf, geo, lim, &i, scratch, index)?;
    }

    // Every in-use extent record must belong to exactly one inode: the
    // lists marked theirs in the index's extent bitmap.
    let mut extent_hwm = 0;
    for id in 1..=lim.extents {
        let rec = extent_record(buf, geo, id)?;
        if get_u32(rec, ext::FLAGS)? & FLAG_IN_USE != 0 {
            if !index.extent_used(id) {
                return corrupt(Corruption::LeakedExtent(id));
            }
            extent_hwm = id;
        }
    }

    // Pass 2: every linked inode reaches the root through directories
    // (no cycles). Marks make the whole pass linear.
    *slot(scratch.inode_marks, ROOT_INO)? = REACHES_ROOT;
    let parent_of = |ino: u64| -> Result<u64, Error> {
        get_u64(inode_record(buf, geo.inode_count, ino)?, ino::PARENT)
    };
    let mut next = index.next_inode(ROOT_INO);
    while let Some(ino) = next {
        next = index.next_inode(ino);
        if get_u32(inode_record(buf, geo.inode_count, ino)?, ino::NLINK)? == 0 {
            continue;
        }
        // Walk up, marking, until a known-good inode or a cycle. Pass 1
        // checked every parent: an in-use directory, inside the marks.
        let mut cur = ino;
        loop {
            let mark = slot(scratch.inode_marks, cur)?;
            if *mark == REACHES_ROOT {
                break;
            }
            if *mark == WALKING {
                return corrupt(Corruption::DirCycle(cur));
            }
            *mark = WALKING;
            cur = parent_of(cur)?;
        }
        // Second walk: the path is good.
        let mut cur = ino;
        loop {
            let mark = slot(scratch.inode_marks, cur)?;
            if *mark != WALKING {
                break;
            }
            *mark = REACHES_ROOT;
            cur = parent_of(cur)?;
        }
    }

    // Pass 3: a directory's link count is 2 (its entry in the parent and
    // its own `.`) plus one `..` per subdirectory; the root counts its
    // own entry though its parent is itself; an orphan directory (removed
    // while open) has none.
    let mut next = Some(ROOT_INO);
    while let Some(ino) = next {
        next = index.next_inode(ino);
        let rec = inode_record(buf, geo.inode_count, ino)?;
        let nlink = get_u32(rec, ino::NLINK)?;
        if get_u32(rec, ino::MODE)? & S_IFMT != S_IFDIR || (nlink == 0 && ino != ROOT_INO) {
            continue;
        }
        let subdirs = u64::from(*slot(scratch.subdirs, ino)?);
        if Some(u64::from(nlink)) != subdirs.checked_add(2) {
            return corrupt(Corruption::BadInode(ino));
        }
    }
    // Blocks hit by a memory error stay used whoever owns them: pinned,
    // so that no truncate or evict frees them.
    for i in 0..bad_count(buf)?.min(BAD_MAX) {
        scratch.blocks.pin(bad_entry(buf, i)?)?;
    }
    Ok((used, inode_hwm, extent_hwm))
}

fn check_extents(
    buf: &[u8],
    geo: &Geometry,
    lim: &Limits,
    i: &InodeData,
    scratch: &mut Scratch<'_>,
    index: &mut Index<'_>,
) -> Result<(), Error> {
    let ino = i.ino;
    let mut id = i.first_extent;
    let (mut n, mut total) = (0u64, 0u64);
    let mut next_free_fb = 0u64;
    while id != 0 {
        // Records above the high-water mark are free by definition.
        if id > lim.extents {
            return corrupt(Corruption::BadExtent(id));
        }
        if index.extent_used(id) {
            // Seen before: a loop in this list or a list shared with
            // another inode.
            return corrupt(Corruption::ExtentCycle(ino));
        }
        let rec = extent_record(buf, geo, id)?;
        // In use, and only the in-use flag is defined.
        if get_u32(rec, ext::FLAGS)? != FLAG_IN_USE {
            return corrupt(Corruption::BadExtent(id));
        }
        index.set_extent(id, true)?;
        let e = super::meta::decode_extent(buf, geo, id)?;
        let end = e.phys_block.checked_add(e.count);
        if e.count == 0
            || e.phys_block < geo.meta_blocks
            || end.is_none_or(|end| end > geo.nr_blocks)
        {
            return corrupt(Corruption::BlockOutOfRange(e.phys_block));
        }
        if e.file_block < next_free_fb {
            return corrupt(Corruption::ExtentOrder(ino));
        }
        next_free_fb = e
            .file_block
            .checked_add(e.count)
            .filter(|&x| x <= MAX_FILE_BLOCKS)
            .ok_or(Error::Corrupt(Corruption::ExtentOrder(ino)))?;
        if let Err(Error::Overlap(b)) = scratch.blocks.mark_used(e.phys_block, e.count) {
            return corrupt(Corruption::OverlappingBlocks(b));
        }
        n += 1;
        total += e.count;
        id = e.next;
    }
    if n != i.nr_extents || total != i.blocks {
        return corrupt(Corruption::BadCounts(ino));
    }
    Ok(())
}

/// Test helper: both validation steps with scratch and an index from the
/// heap; the index is dropped.
#[cfg(test)]
pub(crate) fn check(buf: &[u8], region_size: u64) -> Result<u64, Error> {
    extern crate std;
    use super::index::{IndexCounters, IndexSizes};
    use std::vec;
    let geo = superblock(buf, region_size)?;
    let s = ScratchSizes::for_image(buf, &geo)?;
    let mut marks = vec![0u8; s.inode_marks];
    let mut subdirs = vec![0u32; s.subdirs];
    let mut words = vec![0u64; s.block_words];
    let mut pins = vec![0u64; s.block_words];
    let blocks = BlockBitmap::new(&mut words, geo.nr_blocks)?.with_pins(&mut pins)?;
    let mut scratch = Scratch {
        inode_marks: &mut marks,
        subdirs: &mut subdirs,
        blocks,
    };
    let mut ix_words = vec![0u64; IndexSizes::for_image(buf, &geo)?.words];
    let mut counters = IndexCounters::new([1, 2]);
    let mut index = Index::new(&mut ix_words, &mut counters, &geo)?;
    contents(buf, &geo, &mut scratch, &mut index)
}

#[cfg(test)]
mod tests {
    use super::super::index::testing::Store;
    use super::super::meta::{format, Meta};
    use super::*;
    extern crate std;
    use std::vec::Vec;

    const T: Time = Time { sec: 1, nsec: 0 };

    fn sample() -> (Vec<u8>, Geometry) {
        let geo = Geometry::new(32 * BLOCK_SIZE, 16).unwrap();
        let mut buf = std::vec![0u8; geo.meta_bytes() as usize];
        let mut st = Store::new(&geo);
        format(&mut buf, &geo, T, 7, &mut st.index()).unwrap();
        let mut words = std::vec![0u64; 1];
        let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let d = m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
        let f = m.create(d.ino, b"f", S_IFREG | 0o644, 0, 0, T).unwrap();
        m.allocate(f.ino, 0, 4, &mut bm).unwrap();
        m.allocate(f.ino, 10, 2, &mut bm).unwrap();
        (buf, geo)
    }

    #[test]
    fn valid_image_passes() {
        let (buf, geo) = sample();
        assert_eq!(check(&buf, geo.region_size), Ok(3));
    }

    #[test]
    fn superblock_errors() {
        let (mut buf, geo) = sample();
        assert_eq!(
            check(&buf, geo.region_size * 2),
            Err(Error::Corrupt(Corruption::BadGeometry))
        );
        buf[100] ^= 1;
        assert_eq!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::BadChecksum))
        );
        buf[0] = b'X';
        assert_eq!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::BadMagic))
        );
        for bad in [0, 4, u32::MAX] {
            let (mut buf, geo) = sample();
            put_u32(&mut buf, sb::VERSION, bad).unwrap();
            super::super::meta::seal_superblock(&mut buf).unwrap();
            assert_eq!(
                check(&buf, geo.region_size),
                Err(Error::Corrupt(Corruption::BadVersion(bad)))
            );
        }
    }

    fn inode_field(geo: &Geometry, ino: u64, field: usize) -> usize {
        let _ = geo;
        (INODE_OFFSET + (ino - 1) * INODE_SIZE) as usize + field
    }

    fn extent_field(geo: &Geometry, id: u64, field: usize) -> usize {
        (geo.extent_offset() + (id - 1) * EXTENT_SIZE) as usize + field
    }

    #[test]
    fn directory_cycle() {
        let (mut buf, geo) = sample();
        // d (2) becomes the child of f's directory... of itself via f? Make
        // d's parent point to a new dir under d: create e under d first.
        {
            let (mut st, _) = Store::adopt(&buf, &geo);
            let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
            m.create(2, b"e", S_IFDIR | 0o755, 0, 0, T).unwrap();
        }
        let e = 4;
        put_u64(&mut buf, inode_field(&geo, 2, ino::PARENT), e).unwrap();
        assert!(matches!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::DirCycle(_)))
        ));
    }

    #[test]
    fn extent_cycle_and_overlap_and_range() {
        let (buf0, geo) = sample();
        // f (3) has extents 1 -> 2. Point 2 back to 1.
        let mut buf = buf0.clone();
        put_u64(&mut buf, extent_field(&geo, 2, ext::NEXT), 1).unwrap();
        assert_eq!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::ExtentCycle(3)))
        );
        // Second extent overlaps the first physically.
        let mut buf = buf0.clone();
        let first_phys = get_u64(&buf, extent_field(&geo, 1, ext::PHYS_BLOCK)).unwrap();
        put_u64(
            &mut buf,
            extent_field(&geo, 2, ext::PHYS_BLOCK),
            first_phys + 1,
        )
        .unwrap();
        assert!(matches!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::OverlappingBlocks(_)))
        ));
        // Extent into the metadata blocks.
        let mut buf = buf0.clone();
        put_u64(&mut buf, extent_field(&geo, 1, ext::PHYS_BLOCK), 0).unwrap();
        assert_eq!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::BlockOutOfRange(0)))
        );
        // Extent past the end.
        let mut buf = buf0.clone();
        put_u64(
            &mut buf,
            extent_field(&geo, 2, ext::PHYS_BLOCK),
            geo.nr_blocks - 1,
        )
        .unwrap();
        assert!(matches!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::BlockOutOfRange(_)))
        ));
    }

    #[test]
    fn duplicate_names_and_bad_parent() {
        let (buf0, geo) = sample();
        let mut buf = buf0.clone();
        {
            let (mut st, _) = Store::adopt(&buf, &geo);
            let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
            m.create(ROOT_INO, b"g", S_IFREG | 0o644, 0, 0, T).unwrap();
        }
        // Rename g (4) to "d" behind the code's back.
        let off = inode_field(&geo, 4, ino::NAME);
        buf[off] = b'd';
        assert!(matches!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::DuplicateName(_)))
        ));
        let mut buf = buf0.clone();
        put_u64(&mut buf, inode_field(&geo, 2, ino::PARENT), 3).unwrap();
        assert_eq!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::BadParent(2)))
        );
    }

    fn refused(buf: &[u8], geo: &Geometry) -> Corruption {
        match check(buf, geo.region_size) {
            Err(Error::Corrupt(c)) => c,
            other => panic!("accepted or wrong error: {other:?}"),
        }
    }

    fn with_u32(buf0: &[u8], ino: u64, field: usize, v: u32) -> Vec<u8> {
        let mut buf = buf0.to_vec();
        put_u32(&mut buf, inode_field_off(ino, field), v).unwrap();
        buf
    }

    fn with_u64(buf0: &[u8], ino: u64, field: usize, v: u64) -> Vec<u8> {
        let mut buf = buf0.to_vec();
        put_u64(&mut buf, inode_field_off(ino, field), v).unwrap();
        buf
    }

    fn inode_field_off(ino: u64, field: usize) -> usize {
        (INODE_OFFSET + (ino - 1) * INODE_SIZE) as usize + field
    }

    #[test]
    fn directory_link_counts() {
        // Root (1) has d (2); d has f (3), a file.
        let (buf, geo) = sample();
        assert_eq!(get_u32(&buf, inode_field_off(1, ino::NLINK)).unwrap(), 3);
        assert_eq!(get_u32(&buf, inode_field_off(2, ino::NLINK)).unwrap(), 2);
        for (ino, bad) in [(2, u32::MAX), (2, 3), (2, 1), (1, u32::MAX), (1, 2), (1, 4)] {
            let b = with_u32(&buf, ino, ino::NLINK, bad);
            assert_eq!(refused(&b, &geo), Corruption::BadInode(ino), "{ino}: {bad}");
        }
        // A subdirectory more, counted in its parent.
        let mut b = buf.clone();
        {
            let (mut st, _) = Store::adopt(&b, &geo);
            let mut m = Meta::new(&mut b[..], geo, st.index()).unwrap();
            m.create(2, b"e", S_IFDIR | 0o755, 0, 0, T).unwrap();
        }
        assert_eq!(check(&b, geo.region_size), Ok(4));
        let b = with_u32(&b, 2, ino::NLINK, 2);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(2));
        // A directory removed while open has no links and no parent.
        let mut b = buf.clone();
        {
            let (mut st, _) = Store::adopt(&b, &geo);
            let mut m = Meta::new(&mut b[..], geo, st.index()).unwrap();
            let e = m.create(ROOT_INO, b"e", S_IFDIR | 0o755, 0, 0, T).unwrap();
            assert_eq!(m.unlink(ROOT_INO, b"e", T).unwrap().ino, e.ino);
        }
        assert_eq!(check(&b, geo.region_size), Ok(4));
        let b = with_u32(&b, 4, ino::NLINK, 2);
        assert_eq!(refused(&b, &geo), Corruption::BadParent(4));
    }

    #[test]
    fn file_link_counts() {
        let (buf, geo) = sample();
        for bad in [2, 3, u32::MAX] {
            let b = with_u32(&buf, 3, ino::NLINK, bad);
            assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
        }
        // An orphan: no links, no parent, blocks until reclaimed.
        let b = with_u32(&buf, 3, ino::NLINK, 0);
        assert_eq!(refused(&b, &geo), Corruption::BadParent(3));
        let b = with_u64(&b, 3, ino::PARENT, 0);
        assert_eq!(check(&b, geo.region_size), Ok(3));
    }

    #[test]
    fn sizes() {
        let (buf, geo) = sample();
        let max = i64::MAX as u64;
        assert_eq!(
            check(&with_u64(&buf, 3, ino::SIZE, max), geo.region_size),
            Ok(3)
        );
        for bad in [max + 1, u64::MAX] {
            let b = with_u64(&buf, 3, ino::SIZE, bad);
            assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
        }
        for dir in [1, 2] {
            let b = with_u64(&buf, dir, ino::SIZE, 4096);
            assert_eq!(refused(&b, &geo), Corruption::BadInode(dir));
        }
        // No extent reaches past the largest file's last block.
        let last = max.div_ceil(BLOCK_SIZE);
        let mut b = buf.clone();
        put_u64(&mut b, extent_field(&geo, 2, ext::FILE_BLOCK), last - 2).unwrap();
        assert_eq!(check(&b, geo.region_size), Ok(3));
        put_u64(&mut b, extent_field(&geo, 2, ext::FILE_BLOCK), last - 1).unwrap();
        assert_eq!(refused(&b, &geo), Corruption::ExtentOrder(3));
    }

    #[test]
    fn times_modes_names_flags() {
        let (buf, geo) = sample();
        for field in [ino::ATIME, ino::MTIME, ino::CTIME] {
            let ok = with_u32(&buf, 3, field + 8, 999_999_999);
            assert_eq!(check(&ok, geo.region_size), Ok(3));
            let b = with_u32(&buf, 3, field + 8, 1_000_000_000);
            assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
            // Any second, negative included.
            let ok = with_u64(&buf, 3, field, i64::MIN as u64);
            assert_eq!(check(&ok, geo.region_size), Ok(3));
        }
        // Bits beyond the type and the permissions.
        let b = with_u32(&buf, 3, ino::MODE, S_IFREG | 0o644 | 0x10000);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
        let ok = with_u32(&buf, 3, ino::MODE, S_IFREG | 0o7777);
        assert_eq!(check(&ok, geo.region_size), Ok(3));
        // A shorter name_len leaves name bytes behind.
        let b = with_u32(&buf, 2, ino::NAME_LEN, 0);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(2));
        let b = with_u32(&buf, 2, ino::NAME_LEN, 256);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(2));
        let mut b = buf.clone();
        b[inode_field_off(2, ino::NAME) + 1] = b'x';
        assert_eq!(refused(&b, &geo), Corruption::BadInode(2));
        // The root has no name.
        let mut b = with_u32(&buf, 1, ino::NAME_LEN, 1);
        b[inode_field_off(1, ino::NAME)] = b'r';
        assert_eq!(refused(&b, &geo), Corruption::BadInode(1));
        // Undefined flag bits, in an inode and in an extent.
        for bad in [4, 8, 1 << 31, FLAG_DMA_HELD | 4] {
            let b = with_u32(&buf, 3, ino::FLAGS, FLAG_IN_USE | bad);
            assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
        }
        let mut b = buf.clone();
        put_u32(&mut b, extent_field(&geo, 1, ext::FLAGS), FLAG_IN_USE | 4).unwrap();
        assert_eq!(refused(&b, &geo), Corruption::BadExtent(1));
    }

    /// The image as version `v` (the superblock is the same since 2).
    fn as_version(buf0: &[u8], v: u32) -> Vec<u8> {
        let mut b = buf0.to_vec();
        put_u32(&mut b, sb::VERSION, v).unwrap();
        super::super::meta::seal_superblock(&mut b).unwrap();
        b
    }

    #[test]
    fn dma_held_flag_by_version_and_type() {
        // Root (1) and d (2) are directories, f (3) a regular file.
        let (buf, geo) = sample();
        assert_eq!(get_u32(&buf, sb::VERSION).unwrap(), VERSION);
        let held = FLAG_IN_USE | FLAG_DMA_HELD;
        let b = with_u32(&buf, 3, ino::FLAGS, held);
        assert_eq!(check(&b, geo.region_size), Ok(3));
        // Version 2 did not define it.
        assert_eq!(refused(&as_version(&b, 2), &geo), Corruption::BadInode(3));
        assert_eq!(check(&as_version(&buf, 2), geo.region_size), Ok(3));
        // Only on regular files.
        for dir in [1, 2] {
            let b = with_u32(&buf, dir, ino::FLAGS, held);
            assert_eq!(refused(&b, &geo), Corruption::BadInode(dir));
        }
        // An orphan may be held.
        let b = with_u32(&b, 3, ino::NLINK, 0);
        let b = with_u64(&b, 3, ino::PARENT, 0);
        assert_eq!(check(&b, geo.region_size), Ok(3));
        // Without the in-use bit the record is free, whatever else it has.
        let b = with_u32(&buf, 3, ino::FLAGS, FLAG_DMA_HELD);
        assert!(check(&b, geo.region_size).is_err());
        for v in [1, 2, 3] {
            for flags in [0, 1, 2, 3, 4, 5, 7, u32::MAX] {
                for mode in [S_IFREG | 0o644, S_IFDIR | 0o755, 0] {
                    let ok = flags == FLAG_IN_USE
                        || (v == 3 && flags == held && mode == S_IFREG | 0o644);
                    assert_eq!(inode_flags_ok(v, flags, mode), ok, "{v} {flags} {mode:o}");
                }
            }
        }
    }

    #[test]
    fn generations() {
        // format() starts the counter at 1 (the root has 0); d and f took
        // 1 and 2.
        let (buf, geo) = sample();
        assert_eq!(get_u64(&buf, sb::NEXT_INO_GEN).unwrap(), 3);
        let b = with_u64(&buf, 3, ino::GENERATION, 3);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
        let b = with_u64(&buf, 2, ino::GENERATION, u64::MAX);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(2));
        // A counter that went back.
        let mut b = buf.clone();
        put_u64(&mut b, sb::NEXT_INO_GEN, 2).unwrap();
        super::super::meta::seal_superblock(&mut b).unwrap();
        assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
        put_u64(&mut b, sb::NEXT_INO_GEN, 0).unwrap();
        super::super::meta::seal_superblock(&mut b).unwrap();
        assert_eq!(refused(&b, &geo), Corruption::BadInode(1));
    }
}
