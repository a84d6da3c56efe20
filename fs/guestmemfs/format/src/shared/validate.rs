// SPDX-License-Identifier: GPL-2.0-only
//! Validation of a metadata image handed over by the previous kernel.
//!
//! Nothing from the handover is trusted: the superblock is checked first
//! (magic, version, checksum, geometry against the reserved region), then
//! every inode and extent, structure (parents, extent lists, blocks) and
//! meaning alike: flags, modes, names, sizes within `LLONG_MAX`, normalized
//! times, generations below the superblock's counter, link counts (a file
//! 1, or 0 as an orphan; a directory 2 + its subdirectories), so that
//! neither the operations of [`super::meta`] nor the VFS meet a value they
//! could not produce themselves. The walk is linear in the table sizes
//! whatever the input (no unbounded loops: cycles are detected with
//! marks), and it rebuilds the block bitmap as it goes, so a filesystem
//! that passes is ready to use. Scratch memory comes from the caller.

use super::bitmap::BlockBitmap;
use super::layout::*;
use super::meta::{check_name, InodeData, Meta, MAX_FILE_BLOCKS, MAX_FILE_SIZE};
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
    if version != VERSION {
        return corrupt(Corruption::BadVersion(version));
    }
    let body = buf.get(..sb::CHECKSUM).ok_or(Error::Truncated)?;
    if crc32c(body) != get_u32(buf, sb::CHECKSUM)? {
        return corrupt(Corruption::BadChecksum);
    }
    let inode_count = get_u64(buf, sb::INODE_COUNT)?;
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
    Ok(geo)
}

/// Caller-provided working memory for [`contents`], sized by
/// [`ScratchSizes::for_geometry`].
pub struct Scratch<'a> {
    /// One byte per inode: directory-walk marks.
    pub inode_marks: &'a mut [u8],
    /// One bit per extent record: seen.
    pub extent_seen: &'a mut [u64],
    /// Two words per inode: name keys for the duplicate check.
    pub name_keys: &'a mut [[u64; 2]],
    /// Becomes the allocator's view of the region.
    pub blocks: BlockBitmap<'a>,
}

/// Element counts of each scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchSizes {
    /// Length of `inode_marks`.
    pub inode_marks: usize,
    /// Length of `extent_seen`.
    pub extent_seen: usize,
    /// Length of `name_keys`.
    pub name_keys: usize,
    /// Words for the block bitmap.
    pub block_words: usize,
}

impl ScratchSizes {
    /// Sizes for a validated geometry.
    pub fn for_geometry(geo: &Geometry) -> ScratchSizes {
        ScratchSizes {
            inode_marks: geo.inode_count as usize,
            extent_seen: geo.extent_count.div_ceil(64) as usize,
            name_keys: geo.inode_count as usize,
            block_words: geo.nr_blocks.div_ceil(64) as usize,
        }
    }
}

const UNSEEN: u8 = 0;
const WALKING: u8 = 1;
const REACHES_ROOT: u8 = 2;

fn name_key(parent: u64, name: &[u8]) -> u64 {
    // FNV-1a over the parent and the name; equal keys are compared by
    // name, so collisions cost time, never correctness.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parent.to_le_bytes().iter().chain(name) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The raw bytes of a record of `size` bytes at `index` of a table at
/// `table`.
fn record(buf: &[u8], table: u64, index: u64, size: u64) -> Result<&[u8], Error> {
    let start = index
        .checked_mul(size)
        .and_then(|o| o.checked_add(table))
        .and_then(|o| usize::try_from(o).ok())
        .ok_or(Error::Truncated)?;
    let end = start
        .checked_add(usize::try_from(size).map_err(|_| Error::Truncated)?)
        .ok_or(Error::Truncated)?;
    buf.get(start..end).ok_or(Error::Truncated)
}

/// Checks the fields of in-use inode `i` that need nothing but the record
/// itself (`rec`, its raw bytes) and the superblock's generation counter.
fn check_inode_fields(i: &InodeData, rec: &[u8], next_gen: u64) -> Result<(), Error> {
    let bad = corrupt(Corruption::BadInode(i.ino));
    // Only the in-use flag is defined.
    if get_u32(rec, ino::FLAGS)? != FLAG_IN_USE {
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

/// Checks every inode and extent of a metadata image whose superblock
/// passed [`superblock`], and fills `scratch.blocks` with the blocks in
/// use (metadata included). Returns the number of inodes in use.
pub fn contents(buf: &[u8], geo: &Geometry, scratch: &mut Scratch<'_>) -> Result<u64, Error> {
    let sizes = ScratchSizes::for_geometry(geo);
    if scratch.inode_marks.len() < sizes.inode_marks
        || scratch.extent_seen.len() < sizes.extent_seen
        || scratch.name_keys.len() < sizes.name_keys
        || scratch.blocks.nr_blocks() != geo.nr_blocks
    {
        return Err(Error::Invalid);
    }
    scratch.inode_marks.iter_mut().for_each(|m| *m = UNSEEN);
    scratch.extent_seen.iter_mut().for_each(|w| *w = 0);
    let meta = Meta::new(buf, *geo)?;
    scratch.blocks.mark_used(0, geo.meta_blocks)?;

    let root = meta
        .inode(ROOT_INO)
        .map_err(|_| Error::Corrupt(Corruption::BadRoot))?;
    if !root.is_dir() || root.parent != ROOT_INO {
        return corrupt(Corruption::BadRoot);
    }

    // Pass 1: each inode on its own, and its extents.
    let next_gen = get_u64(buf, sb::NEXT_INO_GEN)?;
    let mut used = 0u64;
    let mut keys = 0usize;
    for ino in 1..=geo.inode_count {
        if !meta.inode_in_use(ino)? {
            continue;
        }
        used += 1;
        let i = meta.inode(ino)?;
        check_inode_fields(
            &i,
            record(buf, INODE_OFFSET, ino - 1, INODE_SIZE)?,
            next_gen,
        )?;
        if ino != ROOT_INO && i.nlink > 0 {
            if check_name(i.name()).is_err() {
                return corrupt(Corruption::BadInode(ino));
            }
            let parent_ok = matches!(meta.inode(i.parent), Ok(p) if p.is_dir() && p.nlink > 0);
            if !parent_ok {
                return corrupt(Corruption::BadParent(ino));
            }
            if let Some(slot) = scratch.name_keys.get_mut(keys) {
                *slot = [name_key(i.parent, i.name()), ino];
                keys += 1;
            }
        } else if ino != ROOT_INO && i.parent != 0 {
            // Unlinked (orphan) inodes have no parent.
            return corrupt(Corruption::BadParent(ino));
        }
        if i.is_dir() && (i.first_extent != 0 || i.blocks != 0 || i.nr_extents != 0) {
            return corrupt(Corruption::BadInode(ino));
        }
        check_extents(&meta, geo, ino, scratch)?;
    }

    // Every in-use extent record must belong to exactly one inode.
    for id in 1..=geo.extent_count {
        let seen = scratch.extent_seen[((id - 1) / 64) as usize] & (1 << ((id - 1) % 64)) != 0;
        if !seen && meta.extent(id)?.is_some() {
            return corrupt(Corruption::LeakedExtent(id));
        }
    }

    // Pass 2: every linked inode reaches the root through directories
    // (no cycles). Marks make the whole pass linear.
    scratch.inode_marks[0] = REACHES_ROOT;
    for ino in 2..=geo.inode_count {
        if !meta.inode_in_use(ino)? || meta.inode(ino)?.nlink == 0 {
            continue;
        }
        // Walk up, marking, until a known-good inode or a cycle.
        let mut cur = ino;
        loop {
            let mark = scratch.inode_marks[(cur - 1) as usize];
            if mark == REACHES_ROOT {
                break;
            }
            if mark == WALKING {
                return corrupt(Corruption::DirCycle(cur));
            }
            scratch.inode_marks[(cur - 1) as usize] = WALKING;
            cur = meta.inode(cur)?.parent;
        }
        // Second walk: the path is good.
        let mut cur = ino;
        while scratch.inode_marks[(cur - 1) as usize] == WALKING {
            scratch.inode_marks[(cur - 1) as usize] = REACHES_ROOT;
            cur = meta.inode(cur)?.parent;
        }
    }

    // Pass 3: no two entries of a directory share a name.
    let keys = scratch.name_keys.get_mut(..keys).ok_or(Error::Invalid)?;
    heapsort(keys);
    for pair in keys.windows(2) {
        if pair[0][0] == pair[1][0] {
            let a = meta.inode(pair[0][1])?;
            let b = meta.inode(pair[1][1])?;
            if a.parent == b.parent && a.name() == b.name() {
                return corrupt(Corruption::DuplicateName(b.ino));
            }
        }
    }

    // Pass 4: a directory's link count is 2 (its entry in the parent and
    // its own `.`) plus one `..` per subdirectory; the root counts its
    // own entry though its parent is itself; an orphan directory (removed
    // while open) has none. The name keys are done with: they now count
    // the subdirectories of each inode.
    let counts = scratch
        .name_keys
        .get_mut(..sizes.name_keys)
        .ok_or(Error::Invalid)?;
    counts.iter_mut().for_each(|c| *c = [0, 0]);
    for ino in 2..=geo.inode_count {
        if !meta.inode_in_use(ino)? {
            continue;
        }
        let i = meta.inode(ino)?;
        if i.is_dir() && i.nlink > 0 {
            // Pass 1 checked the parent: a linked directory in the table.
            let parent = i
                .parent
                .checked_sub(1)
                .and_then(|p| usize::try_from(p).ok());
            let c = parent
                .and_then(|p| counts.get_mut(p))
                .ok_or(Error::Corrupt(Corruption::BadParent(ino)))?;
            c[0] += 1;
        }
    }
    for ino in 1..=geo.inode_count {
        if !meta.inode_in_use(ino)? {
            continue;
        }
        let i = meta.inode(ino)?;
        if !i.is_dir() || (i.nlink == 0 && ino != ROOT_INO) {
            continue;
        }
        let subdirs = usize::try_from(ino - 1)
            .ok()
            .and_then(|p| counts.get(p))
            .map_or(0, |c| c[0]);
        if Some(u64::from(i.nlink)) != subdirs.checked_add(2) {
            return corrupt(Corruption::BadInode(ino));
        }
    }
    Ok(used)
}

fn check_extents(
    meta: &Meta<&[u8]>,
    geo: &Geometry,
    ino: u64,
    scratch: &mut Scratch<'_>,
) -> Result<(), Error> {
    let i = meta.inode(ino)?;
    let mut id = i.first_extent;
    let (mut n, mut total) = (0u64, 0u64);
    let mut next_free_fb = 0u64;
    while id != 0 {
        if id > geo.extent_count {
            return corrupt(Corruption::BadExtent(id));
        }
        let (w, bit) = (((id - 1) / 64) as usize, 1u64 << ((id - 1) % 64));
        if scratch.extent_seen[w] & bit != 0 {
            // Seen before: a loop in this list or a list shared with
            // another inode.
            return corrupt(Corruption::ExtentCycle(ino));
        }
        scratch.extent_seen[w] |= bit;
        let e = meta
            .extent(id)?
            .ok_or(Error::Corrupt(Corruption::BadExtent(id)))?;
        // Only the in-use flag is defined.
        let rec = record(meta.bytes(), geo.extent_offset(), id - 1, EXTENT_SIZE)?;
        if get_u32(rec, ext::FLAGS)? != FLAG_IN_USE {
            return corrupt(Corruption::BadExtent(id));
        }
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

/// In-place heapsort: O(n log n) whatever the input, no allocation, and
/// none of core's sort code (whose panic paths objtool cannot follow in
/// the kernel build).
fn heapsort(v: &mut [[u64; 2]]) {
    fn sift_down(v: &mut [[u64; 2]], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && v[child] < v[child + 1] {
                child += 1;
            }
            if v[root] >= v[child] {
                return;
            }
            v.swap(root, child);
            root = child;
        }
    }
    let n = v.len();
    for i in (0..n / 2).rev() {
        sift_down(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift_down(v, 0, end);
    }
}

/// Test helper: both validation steps with scratch from the heap.
#[cfg(test)]
pub(crate) fn check(buf: &[u8], region_size: u64) -> Result<u64, Error> {
    extern crate std;
    use std::vec;
    let geo = superblock(buf, region_size)?;
    let s = ScratchSizes::for_geometry(&geo);
    let mut marks = vec![0u8; s.inode_marks];
    let mut seen = vec![0u64; s.extent_seen];
    let mut keys = vec![[0u64; 2]; s.name_keys];
    let mut words = vec![0u64; s.block_words];
    let blocks = BlockBitmap::new(&mut words, geo.nr_blocks)?;
    let mut scratch = Scratch {
        inode_marks: &mut marks,
        extent_seen: &mut seen,
        name_keys: &mut keys,
        blocks,
    };
    contents(buf, &geo, &mut scratch)
}

#[cfg(test)]
mod tests {
    use super::super::meta::{format, Meta};
    use super::*;
    extern crate std;
    use std::vec::Vec;

    const T: Time = Time { sec: 1, nsec: 0 };

    fn sample() -> (Vec<u8>, Geometry) {
        let geo = Geometry::new(32 * BLOCK_SIZE, 16).unwrap();
        let mut buf = std::vec![0u8; geo.meta_bytes() as usize];
        format(&mut buf, &geo, T, 7).unwrap();
        let mut words = std::vec![0u64; 1];
        let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        let mut m = Meta::new(&mut buf[..], geo).unwrap();
        let d = m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
        let f = m.create(d.ino, b"f", S_IFREG | 0o644, 0, 0, T).unwrap();
        m.allocate(f.ino, 0, 4, &mut bm).unwrap();
        m.allocate(f.ino, 10, 2, &mut bm).unwrap();
        (buf, geo)
    }

    #[test]
    fn heapsort_sorts() {
        let mut v: Vec<[u64; 2]> = (0..100u64).map(|i| [(i * 7919) % 101, i]).collect();
        let mut w = v.clone();
        heapsort(&mut v);
        w.sort();
        assert_eq!(v, w);
        heapsort(&mut []);
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
        let (mut buf, geo) = sample();
        buf[8] = 2;
        assert_eq!(
            check(&buf, geo.region_size),
            Err(Error::Corrupt(Corruption::BadVersion(2)))
        );
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
            let mut m = Meta::new(&mut buf[..], geo).unwrap();
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
            let mut m = Meta::new(&mut buf[..], geo).unwrap();
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
            let mut m = Meta::new(&mut b[..], geo).unwrap();
            m.create(2, b"e", S_IFDIR | 0o755, 0, 0, T).unwrap();
        }
        assert_eq!(check(&b, geo.region_size), Ok(4));
        let b = with_u32(&b, 2, ino::NLINK, 2);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(2));
        // A directory removed while open has no links and no parent.
        let mut b = buf.clone();
        {
            let mut m = Meta::new(&mut b[..], geo).unwrap();
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
        let b = with_u32(&buf, 3, ino::FLAGS, FLAG_IN_USE | 2);
        assert_eq!(refused(&b, &geo), Corruption::BadInode(3));
        let mut b = buf.clone();
        put_u32(&mut b, extent_field(&geo, 1, ext::FLAGS), FLAG_IN_USE | 4).unwrap();
        assert_eq!(refused(&b, &geo), Corruption::BadExtent(1));
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
