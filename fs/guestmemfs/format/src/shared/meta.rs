// SPDX-License-Identifier: GPL-2.0-only
//! Operations on a metadata image: format, inodes, directories, extents.
//!
//! A directory entry is the child inode itself: each inode stores its
//! parent and its name, so there are no hard links (`nlink` of a file is 1
//! while it has a name). Lookups, readdir, free-record searches and
//! counts go through the in-memory [`Index`] (built by validation or
//! `format`, kept exact by every change here), never through a scan of
//! the tables; the kernel caches dentries on top. An unlinked inode still open or mapped
//! keeps `nlink == 0` until [`Meta::evict`] frees it; after a kexec such
//! orphans are reclaimed at mount ([`Meta::reclaim_orphans`]).

use super::bitmap::BlockBitmap;
use super::index::{Index, IndexCounters};
use super::layout::*;
use super::{corrupt, Corruption, Error};

/// A decoded inode record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeData {
    /// Inode number (record index + 1).
    pub ino: u64,
    /// File type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count as the VFS sees it.
    pub nlink: u32,
    /// File size in bytes.
    pub size: u64,
    /// Parent directory (0 when unlinked).
    pub parent: u64,
    /// First extent (record index + 1), 0 when none.
    pub first_extent: u64,
    /// Number of extents in the list.
    pub nr_extents: u64,
    /// Blocks allocated to the file.
    pub blocks: u64,
    /// Access time.
    pub atime: Time,
    /// Modification time.
    pub mtime: Time,
    /// Change time.
    pub ctime: Time,
    /// Generation, for NFS-style handles and sanity.
    pub generation: u64,
    /// Length of `name`.
    pub name_len: usize,
    /// Name in the parent directory.
    pub name: [u8; NAME_MAX],
}

impl InodeData {
    /// The name as bytes.
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len.min(NAME_MAX)]
    }
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// True for regular files.
    pub fn is_reg(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

/// One decoded extent record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Record index + 1.
    pub id: u64,
    /// Blocks covered.
    pub count: u64,
    /// Next extent of the same file (id), 0 at the end.
    pub next: u64,
    /// First file block covered.
    pub file_block: u64,
    /// First region block backing it.
    pub phys_block: u64,
}

/// Iterator over one file's extents, from [`Meta::extents`].
pub struct ExtentWalk<'m, 'x, B> {
    meta: &'m Meta<'x, B>,
    ino: u64,
    next: u64,
    steps: u64,
}

impl<B: AsRef<[u8]>> Iterator for ExtentWalk<'_, '_, B> {
    type Item = Result<Extent, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == 0 {
            return None;
        }
        self.steps += 1;
        let item = if self.steps > self.meta.geo.extent_count {
            Err(Error::Corrupt(Corruption::ExtentCycle(self.ino)))
        } else {
            match self.meta.extent(self.next) {
                Ok(Some(e)) => Ok(e),
                Ok(None) => Err(Error::Corrupt(Corruption::BadExtent(self.next))),
                Err(e) => Err(e),
            }
        };
        // Stop after an error; continue along the list otherwise.
        self.next = item.as_ref().map_or(0, |e| e.next);
        Some(item)
    }
}

/// Largest file size: the VFS's `MAX_LFS_FILESIZE` (`LLONG_MAX`), the
/// `s_maxbytes` of guestmemfs.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Largest end (exclusive) of a file block range: the blocks that cover
/// [`MAX_FILE_SIZE`] bytes. No extent reaches past it.
pub const MAX_FILE_BLOCKS: u64 = MAX_FILE_SIZE.div_ceil(BLOCK_SIZE);

/// Nanoseconds in a second: a time stamp's `nsec` is below it.
pub const NSEC_PER_SEC: u32 = 1_000_000_000;

/// Permission bits a mode may carry besides the file type.
pub const MODE_PERM_MASK: u32 = 0o7777;

/// Checks a time stamp (normalized, as the VFS keeps them).
fn check_time(t: Time) -> Result<(), Error> {
    if t.nsec >= NSEC_PER_SEC {
        return Err(Error::Invalid);
    }
    Ok(())
}

/// Checks a name for a directory entry.
pub fn check_name(name: &[u8]) -> Result<(), Error> {
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0)
    {
        return Err(Error::BadName);
    }
    Ok(())
}

/// The error for a directory whose link count cannot grow (it would be
/// `EMLINK`; no closer `Error` exists, `NoSpace` maps to `ENOSPC`).
const TOO_MANY_LINKS: Error = Error::NoSpace;

/// The link count of directory `d` after losing a subdirectory's `..`:
/// a directory with a subdirectory has at least 3 links, anything else is
/// damage.
fn dir_nlink_minus_one(d: &InodeData) -> Result<u32, Error> {
    d.nlink
        .checked_sub(1)
        .filter(|&n| n >= 2)
        .ok_or(Error::Corrupt(Corruption::BadInode(d.ino)))
}

/// The first file block after extent `e` of inode `ino`.
fn extent_end(ino: u64, e: &Extent) -> Result<u64, Error> {
    e.file_block
        .checked_add(e.count)
        .ok_or(Error::Corrupt(Corruption::ExtentOrder(ino)))
}

/// What [`Meta::record_bad`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRecord {
    /// The block is now in the list.
    Added,
    /// The block was already in the list.
    Listed,
    /// The list is full: only the lost count grew.
    ListFull,
}

/// A metadata image: the metadata blocks of the region, mapped, with its
/// in-memory [`Index`].
pub struct Meta<'x, B> {
    buf: B,
    geo: Geometry,
    ix: Index<'x>,
}

/// Formats `buf` (at least `geo.meta_bytes()` long) as an empty
/// filesystem with a root directory owned by root, mode 0755, and builds
/// `index` for it (storage of [`super::index::IndexSizes::initial`] or
/// larger). Only the superblock and the root's record are written: every
/// other record is above the high-water marks, free whatever it holds.
pub fn format(
    buf: &mut [u8],
    geo: &Geometry,
    now: Time,
    generation: u64,
    index: &mut Index<'_>,
) -> Result<(), Error> {
    let meta_len = usize::try_from(geo.meta_bytes()).map_err(|_| Error::Invalid)?;
    let area = buf.get_mut(..meta_len).ok_or(Error::Truncated)?;
    area.get_mut(..SUPERBLOCK_SIZE as usize)
        .ok_or(Error::Truncated)?
        .iter_mut()
        .for_each(|b| *b = 0);
    put_u64(area, sb::MAGIC, MAGIC)?;
    put_u32(area, sb::VERSION, VERSION)?;
    put_u32(area, sb::HEADER_SIZE, SUPERBLOCK_SIZE as u32)?;
    put_u64(area, sb::REGION_SIZE, geo.region_size)?;
    put_u64(area, sb::BLOCK_SIZE, BLOCK_SIZE)?;
    put_u64(area, sb::NR_BLOCKS, geo.nr_blocks)?;
    put_u64(area, sb::META_BLOCKS, geo.meta_blocks)?;
    put_u64(area, sb::INODE_COUNT, geo.inode_count)?;
    put_u64(area, sb::INODE_OFFSET, INODE_OFFSET)?;
    put_u64(area, sb::EXTENT_COUNT, geo.extent_count)?;
    put_u64(area, sb::EXTENT_OFFSET, geo.extent_offset())?;
    put_u64(area, sb::GENERATION, generation)?;
    put_u64(area, sb::NEXT_INO_GEN, 1)?;
    put_u64(area, sb::INODE_HWM, ROOT_INO)?;
    put_u64(area, sb::EXTENT_HWM, 0)?;
    seal_superblock(area)?;
    index.reset(geo, ROOT_INO, 0)?;
    let mut meta = Meta {
        buf: area,
        geo: *geo,
        ix: index.reborrow(),
    };
    let mut root = empty_inode(ROOT_INO, S_IFDIR | 0o755, 0, 0, now);
    root.nlink = 2;
    root.parent = ROOT_INO;
    let res = meta.store_inode(&root);
    match res {
        Ok(()) => index.finish(ROOT_INO, 0, false),
        Err(_) => index.poison(),
    }
    res
}

/// Rewrites the superblock checksum after a superblock change.
pub fn seal_superblock(buf: &mut [u8]) -> Result<(), Error> {
    let body = buf.get(..sb::CHECKSUM).ok_or(Error::Truncated)?;
    let sum = crc32c(body);
    put_u32(buf, sb::CHECKSUM, sum)
}

/// Decodes the inode record `ino` of a table of `inode_count` records,
/// whatever its flags say.
pub(crate) fn decode_inode(buf: &[u8], inode_count: u64, ino: u64) -> Result<InodeData, Error> {
    let b = inode_record(buf, inode_count, ino)?;
    let name_len = get_u32(b, ino::NAME_LEN)? as usize;
    let mut name = [0u8; NAME_MAX];
    let n = name_len.min(NAME_MAX);
    name[..n].copy_from_slice(b.get(ino::NAME..ino::NAME + n).ok_or(Error::Truncated)?);
    let time = |o: usize| -> Result<Time, Error> {
        Ok(Time {
            sec: get_u64(b, o)? as i64,
            nsec: get_u32(b, o + 8)?,
        })
    };
    Ok(InodeData {
        ino,
        mode: get_u32(b, ino::MODE)?,
        uid: get_u32(b, ino::UID)?,
        gid: get_u32(b, ino::GID)?,
        nlink: get_u32(b, ino::NLINK)?,
        size: get_u64(b, ino::SIZE)?,
        parent: get_u64(b, ino::PARENT)?,
        first_extent: get_u64(b, ino::FIRST_EXTENT)?,
        nr_extents: get_u64(b, ino::NR_EXTENTS)?,
        blocks: get_u64(b, ino::BLOCKS)?,
        atime: time(ino::ATIME)?,
        mtime: time(ino::MTIME)?,
        ctime: time(ino::CTIME)?,
        generation: get_u64(b, ino::GENERATION)?,
        name_len,
        name,
    })
}

/// Decodes extent record `id` of `geo`, whatever its flags say.
pub(crate) fn decode_extent(buf: &[u8], geo: &Geometry, id: u64) -> Result<Extent, Error> {
    let b = extent_record(buf, geo, id)?;
    Ok(Extent {
        id,
        count: u64::from(get_u32(b, ext::COUNT)?),
        next: get_u64(b, ext::NEXT)?,
        file_block: get_u64(b, ext::FILE_BLOCK)?,
        phys_block: get_u64(b, ext::PHYS_BLOCK)?,
    })
}

fn empty_inode(ino: u64, mode: u32, uid: u32, gid: u32, now: Time) -> InodeData {
    InodeData {
        ino,
        mode,
        uid,
        gid,
        nlink: 1,
        size: 0,
        parent: 0,
        first_extent: 0,
        nr_extents: 0,
        blocks: 0,
        atime: now,
        mtime: now,
        ctime: now,
        generation: 0,
        name_len: 0,
        name: [0; NAME_MAX],
    }
}

/// The entry (parent and name) of inode `i`, if it is linked.
fn entry_of(i: &InodeData) -> Option<(u64, &[u8])> {
    (i.ino != ROOT_INO && i.nlink > 0).then(|| (i.parent, i.name()))
}

impl<'x, B: AsRef<[u8]>> Meta<'x, B> {
    /// A view of metadata whose superblock was checked by
    /// [`super::validate::superblock`], with the index that
    /// [`super::validate::contents`] or [`format`] built for it. Cheap:
    /// nothing is scanned.
    pub fn new(buf: B, geo: Geometry, index: Index<'x>) -> Result<Self, Error> {
        if (buf.as_ref().len() as u64) < geo.meta_bytes() {
            return Err(Error::Truncated);
        }
        index.check(&geo)?;
        Ok(Meta {
            buf,
            geo,
            ix: index,
        })
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The raw metadata bytes.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The index's counters (records in use, high-water marks).
    pub fn counters(&self) -> &IndexCounters {
        self.ix.counters()
    }

    /// Superblock generation (bumped at every mount).
    pub fn generation(&self) -> Result<u64, Error> {
        get_u64(self.buf.as_ref(), sb::GENERATION)
    }

    fn check_ino(&self, ino: u64) -> Result<(), Error> {
        if ino == 0 || ino > self.geo.inode_count {
            return Err(Error::Invalid);
        }
        Ok(())
    }

    /// True if inode record `ino` is in use.
    pub fn inode_in_use(&self, ino: u64) -> Result<bool, Error> {
        self.check_ino(ino)?;
        Ok(self.ix.inode_used(ino))
    }

    /// Decodes inode `ino`; `NotFound` when the record is free.
    pub fn inode(&self, ino: u64) -> Result<InodeData, Error> {
        self.check_ino(ino)?;
        if !self.ix.inode_used(ino) {
            return Err(Error::NotFound);
        }
        decode_inode(self.buf.as_ref(), self.geo.inode_count, ino)
    }

    /// The raw record of in-use inode `ino`.
    fn record(&self, ino: u64) -> Result<&[u8], Error> {
        self.check_ino(ino)?;
        if !self.ix.inode_used(ino) {
            return Err(Error::NotFound);
        }
        inode_record(self.buf.as_ref(), self.geo.inode_count, ino)
    }

    /// Decodes extent `id`; `None` when the record is free.
    pub fn extent(&self, id: u64) -> Result<Option<Extent>, Error> {
        if id == 0 || id > self.geo.extent_count {
            return Err(Error::Invalid);
        }
        if !self.ix.extent_used(id) {
            return Ok(None);
        }
        decode_extent(self.buf.as_ref(), &self.geo, id).map(Some)
    }

    /// Finds `name` in directory `dir`: one probe of the name table,
    /// expected O(1).
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64, Error> {
        if get_u32(self.record(dir)?, ino::MODE)? & S_IFMT != S_IFDIR {
            return Err(Error::NotDir);
        }
        check_name(name)?;
        self.ix
            .find(self.buf.as_ref(), dir, name)?
            .ok_or(Error::NotFound)
    }

    /// The next entry of `dir` after inode `pos` (a cursor starting at 0),
    /// in inode order: returns the child and the cursor for the following
    /// call. Walks the in-use bitmap a word at a time up to the high-water
    /// mark, so listing a directory costs O(high-water mark / 64 + inodes
    /// in use) in all.
    pub fn readdir(&self, dir: u64, pos: u64) -> Result<Option<(InodeData, u64)>, Error> {
        if self.ix.child_count(dir) == 0 {
            return Ok(None);
        }
        let mut cur = pos;
        while let Some(ino) = self.ix.next_inode(cur) {
            cur = ino;
            if ino == ROOT_INO {
                continue;
            }
            let rec = inode_record(self.buf.as_ref(), self.geo.inode_count, ino)?;
            if get_u64(rec, ino::PARENT)? == dir && get_u32(rec, ino::NLINK)? > 0 {
                return Ok(Some((self.inode(ino)?, ino)));
            }
        }
        Ok(None)
    }

    /// True if `dir` has entries.
    pub fn has_children(&self, dir: u64) -> Result<bool, Error> {
        Ok(self.ix.child_count(dir) > 0)
    }

    /// Entries whose parent is `dir` (0 for a free or unknown record).
    pub fn child_count(&self, dir: u64) -> u32 {
        self.ix.child_count(dir)
    }

    /// Inodes in use.
    pub fn inodes_used(&self) -> Result<u64, Error> {
        Ok(self.ix.counters().inodes_used())
    }

    /// Walks the extent list of `ino` in file order. The walk fails
    /// (instead of looping) on a cycle or a bad link.
    pub fn extents(&self, ino: u64) -> Result<ExtentWalk<'_, 'x, B>, Error> {
        let first = self.inode(ino)?.first_extent;
        Ok(ExtentWalk {
            meta: self,
            ino,
            next: first,
            steps: 0,
        })
    }

    /// The extent that backs `file_block` of inode `ino`, if any.
    pub fn map(&self, ino: u64, file_block: u64) -> Result<Option<Extent>, Error> {
        for e in self.extents(ino)? {
            let e = e?;
            if file_block < e.file_block {
                return Ok(None);
            }
            if file_block - e.file_block < e.count {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// True if no extent of `ino` backs a block of `[start, end)`.
    pub fn is_hole(&self, ino: u64, start: u64, end: u64) -> Result<bool, Error> {
        for e in self.extents(ino)? {
            let e = e?;
            if e.file_block < end && start < e.file_block.saturating_add(e.count) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The extents of `ino`, in order, passed to `f`.
    pub fn for_each_extent(
        &self,
        ino: u64,
        mut f: impl FnMut(&Extent) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for e in self.extents(ino)? {
            f(&e?)?;
        }
        Ok(())
    }

    /// Entries of the bad-block list (none for a version 1 image).
    pub fn bad_count(&self) -> Result<usize, Error> {
        Ok(bad_count(self.buf.as_ref())?.min(BAD_MAX))
    }

    /// Entry `i` (below [`Meta::bad_count`]) of the bad-block list.
    pub fn bad_block(&self, i: usize) -> Result<u64, Error> {
        bad_entry(self.buf.as_ref(), i)
    }

    /// Bad blocks a full list could not record, as the superblock says.
    pub fn bad_lost(&self) -> Result<u32, Error> {
        let b = self.buf.as_ref();
        if get_u32(b, sb::VERSION)? == VERSION_1 {
            return Ok(0);
        }
        get_u32(b, sb::BAD_LOST)
    }

    /// The file that owns data block `block`: `(ino, file_block)`, or
    /// `None` if the block is free. O(extents in use): for the rare
    /// memory error, so no reverse map is kept.
    pub fn owner_of(&self, block: u64) -> Result<Option<(u64, u64)>, Error> {
        let mut next = Some(ROOT_INO);
        while let Some(ino) = next {
            next = self.ix.next_inode(ino);
            for e in self.extents(ino)? {
                let e = e?;
                if block >= e.phys_block && block - e.phys_block < e.count {
                    return Ok(Some((ino, e.file_block + (block - e.phys_block))));
                }
            }
        }
        Ok(None)
    }

    /// True if in-use inode `ino` carries [`FLAG_DMA_HELD`] (`NotFound`
    /// for a free record).
    pub fn dma_held(&self, ino: u64) -> Result<bool, Error> {
        Ok(get_u32(self.record(ino)?, ino::FLAGS)? & FLAG_DMA_HELD != 0)
    }

    /// Passes every in-use inode flagged [`FLAG_DMA_HELD`] to `f`, in
    /// inode order; returns how many. Walks the inodes in use only.
    pub fn for_each_dma_held(
        &self,
        mut f: impl FnMut(&InodeData) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut n = 0;
        let mut next = Some(ROOT_INO);
        while let Some(ino) = next {
            next = self.ix.next_inode(ino);
            if self.dma_held(ino)? {
                f(&self.inode(ino)?)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// True if `ancestor` is `ino` or one of its parents.
    pub fn is_ancestor(&self, ancestor: u64, ino: u64) -> Result<bool, Error> {
        let mut cur = ino;
        for _ in 0..=self.geo.inode_count {
            if cur == ancestor {
                return Ok(true);
            }
            if cur == ROOT_INO {
                return Ok(false);
            }
            cur = get_u64(self.record(cur)?, ino::PARENT)?;
        }
        corrupt(Corruption::DirCycle(ino))
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Meta<'_, B> {
    /// The raw metadata bytes, writable (test hooks only: the index does
    /// not follow changes made here).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }

    /// Sets superblock fields and seals it once. A pending rewrite of the
    /// version and high-water marks (a version 1 image, or marks lowered
    /// at adoption) goes first: every change of the image passes here or
    /// through [`Meta::prepare_write`], so the first one upgrades it.
    fn superblock_set(&mut self, fields: &[(usize, u64)]) -> Result<(), Error> {
        let b = self.buf.as_mut();
        let c = &mut *self.ix.c;
        if c.sync_superblock {
            // Version 1 left the bytes after its fields undefined (zero
            // in practice); since version 2 the bad-block list is there
            // and the rest is reserved as zero. A version 2 image keeps
            // its list (its superblock is the same as version 3's).
            let from = if get_u32(b, sb::VERSION)? == VERSION_1 {
                sb::BAD_COUNT
            } else {
                sb::RESERVED
            };
            put_u32(b, sb::VERSION, VERSION)?;
            put_u64(b, sb::INODE_HWM, c.inode_hwm)?;
            put_u64(b, sb::EXTENT_HWM, c.extent_hwm)?;
            b.get_mut(from..sb::CHECKSUM)
                .ok_or(Error::Truncated)?
                .iter_mut()
                .for_each(|x| *x = 0);
        }
        for &(off, v) in fields {
            put_u64(b, off, v)?;
        }
        seal_superblock(b)?;
        c.sync_superblock = false;
        Ok(())
    }

    /// Records data block `block` in the superblock's bad-block list (a
    /// memory error hit it), keeping the list sorted. When the list is
    /// full, only the lost count grows. `Invalid` for a metadata or
    /// out-of-range block.
    pub fn record_bad(&mut self, block: u64) -> Result<BadRecord, Error> {
        if block < self.geo.meta_blocks || block >= self.geo.nr_blocks {
            return Err(Error::Invalid);
        }
        self.prepare_write()?;
        let b = self.buf.as_mut();
        let count = bad_count(b)?.min(BAD_MAX);
        let mut at = count;
        for i in 0..count {
            let e = bad_entry(b, i)?;
            if e == block {
                return Ok(BadRecord::Listed);
            }
            if e > block {
                at = i;
                break;
            }
        }
        if count == BAD_MAX {
            let lost = get_u32(b, sb::BAD_LOST)?.saturating_add(1);
            put_u32(b, sb::BAD_LOST, lost)?;
            seal_superblock(b)?;
            return Ok(BadRecord::ListFull);
        }
        for i in (at..count).rev() {
            let e = bad_entry(b, i)?;
            put_u64(b, sb::BAD_LIST + 8 * (i + 1), e)?;
        }
        put_u64(b, sb::BAD_LIST + 8 * at, block)?;
        put_u32(b, sb::BAD_COUNT, count as u32 + 1)?;
        seal_superblock(b)?;
        Ok(BadRecord::Added)
    }

    /// Before any record changes: the pending superblock rewrite, if any.
    fn prepare_write(&mut self) -> Result<(), Error> {
        if self.ix.c.sync_superblock {
            self.superblock_set(&[])?;
        }
        Ok(())
    }

    /// Writes an in-use inode record. Fields the next kernel's validation
    /// would refuse (a mode outside the file type and permission bits, a
    /// time with `nsec` of a second or more, a name longer than
    /// `NAME_MAX`) are refused with `Invalid`; a free record is
    /// `NotFound`. A change of parent, name or link count moves the entry
    /// in the index: `Exists` if its new name is taken, `Invalid` if its
    /// new parent is not a directory in use.
    pub fn write_inode(&mut self, i: &InodeData) -> Result<(), Error> {
        self.check_ino(i.ino)?;
        if !self.ix.inode_used(i.ino) {
            return Err(Error::NotFound);
        }
        self.store_inode(i)
    }

    /// Writes inode record `i` (allocating it when free) and updates the
    /// index. Everything that can fail is checked before the first write.
    fn store_inode(&mut self, i: &InodeData) -> Result<(), Error> {
        self.check_ino(i.ino)?;
        if i.mode & !(S_IFMT | MODE_PERM_MASK) != 0 || i.name_len > NAME_MAX {
            return Err(Error::Invalid);
        }
        check_time(i.atime)?;
        check_time(i.mtime)?;
        check_time(i.ctime)?;
        let was_used = self.ix.inode_used(i.ino);
        let old = if was_used {
            Some(self.inode(i.ino)?)
        } else {
            None
        };
        let old_key = old.as_ref().and_then(entry_of);
        let new_key = entry_of(i);
        let moved = old_key != new_key;
        if moved {
            if let Some((parent, name)) = new_key {
                let parent_rec = self.record(parent).map_err(|_| Error::Invalid)?;
                if get_u32(parent_rec, ino::MODE)? & S_IFMT != S_IFDIR {
                    return Err(Error::Invalid);
                }
                if self.ix.find(self.buf.as_ref(), parent, name)?.is_some() {
                    return Err(Error::Exists);
                }
                let gaining = old_key.is_none_or(|(p, _)| p != parent);
                if gaining && self.ix.child_count(parent) == u32::MAX {
                    return Err(TOO_MANY_LINKS);
                }
                if old_key.is_none() {
                    self.ix.reserve(self.buf.as_ref())?;
                }
            }
        }
        self.prepare_write()?;
        if !was_used && self.ix.raise_inode_hwm(i.ino)? {
            self.superblock_set(&[(sb::INODE_HWM, i.ino)])?;
        }
        if moved {
            if let Some((parent, name)) = old_key {
                self.ix.remove(self.buf.as_ref(), i.ino, parent, name)?;
                self.ix.remove_child(parent)?;
            }
        }
        let rec = inode_record_mut(self.buf.as_mut(), self.geo.inode_count, i.ino)?;
        rec.iter_mut().for_each(|x| *x = 0);
        // A `FLAG_DMA_HELD` from the previous kernel goes: the kernel
        // keeps what it meant in memory, and rewrites it at the freeze.
        put_u32(rec, ino::FLAGS, FLAG_IN_USE)?;
        put_u32(rec, ino::MODE, i.mode)?;
        put_u32(rec, ino::UID, i.uid)?;
        put_u32(rec, ino::GID, i.gid)?;
        put_u32(rec, ino::NLINK, i.nlink)?;
        put_u32(rec, ino::NAME_LEN, i.name_len as u32)?;
        put_u64(rec, ino::SIZE, i.size)?;
        put_u64(rec, ino::PARENT, i.parent)?;
        put_u64(rec, ino::FIRST_EXTENT, i.first_extent)?;
        put_u64(rec, ino::NR_EXTENTS, i.nr_extents)?;
        put_u64(rec, ino::BLOCKS, i.blocks)?;
        for (o, t) in [
            (ino::ATIME, i.atime),
            (ino::MTIME, i.mtime),
            (ino::CTIME, i.ctime),
        ] {
            put_u64(rec, o, t.sec as u64)?;
            put_u32(rec, o + 8, t.nsec)?;
        }
        put_u64(rec, ino::GENERATION, i.generation)?;
        let n = i.name_len.min(NAME_MAX);
        rec.get_mut(ino::NAME..ino::NAME + n)
            .ok_or(Error::Truncated)?
            .copy_from_slice(&i.name[..n]);
        if !was_used {
            self.ix.set_inode(i.ino, true)?;
            self.ix.reset_children(i.ino)?;
        }
        if moved {
            if let Some((parent, name)) = new_key {
                self.ix.insert(i.ino, parent, name)?;
                self.ix.add_child(parent)?;
            }
        }
        Ok(())
    }

    fn free_inode_record(&mut self, ino: u64) -> Result<(), Error> {
        let old = self.inode(ino)?;
        self.prepare_write()?;
        if let Some((parent, name)) = entry_of(&old) {
            self.ix.remove(self.buf.as_ref(), ino, parent, name)?;
            self.ix.remove_child(parent)?;
        }
        inode_record_mut(self.buf.as_mut(), self.geo.inode_count, ino)?
            .iter_mut()
            .for_each(|x| *x = 0);
        self.ix.set_inode(ino, false)
    }

    /// Writes an extent record (all of it), allocating it when free.
    fn write_extent(&mut self, e: &Extent) -> Result<(), Error> {
        if e.id == 0 || e.id > self.geo.extent_count {
            return Err(Error::Invalid);
        }
        let count = u32::try_from(e.count).map_err(|_| Error::Invalid)?;
        self.prepare_write()?;
        let was_used = self.ix.extent_used(e.id);
        if !was_used && self.ix.raise_extent_hwm(e.id)? {
            self.superblock_set(&[(sb::EXTENT_HWM, e.id)])?;
        }
        let b = extent_record_mut(self.buf.as_mut(), &self.geo, e.id)?;
        put_u32(b, ext::FLAGS, FLAG_IN_USE)?;
        put_u32(b, ext::COUNT, count)?;
        put_u64(b, ext::NEXT, e.next)?;
        put_u64(b, ext::FILE_BLOCK, e.file_block)?;
        put_u64(b, ext::PHYS_BLOCK, e.phys_block)?;
        if !was_used {
            self.ix.set_extent(e.id, true)?;
        }
        Ok(())
    }

    fn free_extent_record(&mut self, id: u64) -> Result<(), Error> {
        if !self.ix.extent_used(id) {
            return Err(Error::Invalid);
        }
        self.prepare_write()?;
        extent_record_mut(self.buf.as_mut(), &self.geo, id)?
            .iter_mut()
            .for_each(|x| *x = 0);
        self.ix.set_extent(id, false)
    }

    /// The lowest free extent record: a word-level search of the extent
    /// bitmap from a hint, else the one above the high-water mark.
    fn free_extent_slot(&self) -> Result<u64, Error> {
        self.ix.lowest_free_extent().ok_or(Error::NoExtents)
    }

    /// Sets the superblock generation (done at every mount).
    pub fn set_generation(&mut self, generation: u64) -> Result<(), Error> {
        self.superblock_set(&[(sb::GENERATION, generation)])
    }

    /// Creates `name` in `dir` with `mode` (file type included), in the
    /// lowest free inode record.
    pub fn create(
        &mut self,
        dir: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        now: Time,
    ) -> Result<InodeData, Error> {
        check_name(name)?;
        check_time(now)?;
        let kind = mode & S_IFMT;
        if (kind != S_IFDIR && kind != S_IFREG) || mode & !(S_IFMT | MODE_PERM_MASK) != 0 {
            return Err(Error::Invalid);
        }
        match self.lookup(dir, name) {
            Ok(_) => return Err(Error::Exists),
            Err(Error::NotFound) => {}
            Err(e) => return Err(e),
        }
        let mut d = self.inode(dir)?;
        if d.nlink == 0 {
            // Removed while still open: no new entries (the VFS's
            // dead-directory rule).
            return Err(Error::NotFound);
        }
        if kind == S_IFDIR {
            // The new `..`. Nothing is written before this check, so a
            // directory at the link limit stays as it was.
            d.nlink = d.nlink.checked_add(1).ok_or(TOO_MANY_LINKS)?;
        }
        if self.ix.child_count(dir) == u32::MAX {
            return Err(TOO_MANY_LINKS);
        }
        let ino = self.ix.lowest_free_inode().ok_or(Error::NoInodes)?;
        // Every inode's generation stays below the counter (validation
        // checks it), so the counter never wraps: 2^64 creations do not
        // happen, only a damaged counter gets here.
        let generation = get_u64(self.buf.as_ref(), sb::NEXT_INO_GEN)?;
        let next = generation.checked_add(1).ok_or(Error::NoInodes)?;
        // The counter and a new high-water mark: one superblock update.
        self.ix.raise_inode_hwm(ino)?;
        let hwm = self.ix.c.inode_hwm;
        self.superblock_set(&[(sb::NEXT_INO_GEN, next), (sb::INODE_HWM, hwm)])?;
        let mut i = empty_inode(ino, mode, uid, gid, now);
        i.parent = dir;
        i.generation = generation;
        i.name_len = name.len();
        i.name[..name.len()].copy_from_slice(name);
        if kind == S_IFDIR {
            i.nlink = 2;
        }
        self.store_inode(&i)?;
        d.mtime = now;
        d.ctime = now;
        self.store_inode(&d)?;
        Ok(i)
    }

    /// Removes the entry `name` from `dir`. A directory must be empty.
    /// The inode is kept (nlink 0, no parent) until [`Meta::evict`].
    pub fn unlink(&mut self, dir: u64, name: &[u8], now: Time) -> Result<InodeData, Error> {
        check_time(now)?;
        let ino = self.lookup(dir, name)?;
        let mut i = self.inode(ino)?;
        if i.is_dir() && self.has_children(ino)? {
            return Err(Error::NotEmpty);
        }
        let mut d = self.inode(dir)?;
        if i.is_dir() {
            d.nlink = dir_nlink_minus_one(&d)?;
        }
        d.mtime = now;
        d.ctime = now;
        self.store_inode(&d)?;
        i.nlink = 0;
        i.parent = 0;
        i.ctime = now;
        self.store_inode(&i)?;
        Ok(i)
    }

    /// Frees an unlinked inode and its blocks.
    pub fn evict(&mut self, ino: u64, blocks: &mut BlockBitmap<'_>) -> Result<(), Error> {
        let i = self.inode(ino)?;
        if i.nlink != 0 || ino == ROOT_INO {
            return Err(Error::Invalid);
        }
        self.truncate_blocks(ino, 0, blocks)?;
        self.free_inode_record(ino)
    }

    /// Frees every unlinked inode (orphans left by files that were open
    /// at the kexec). Returns how many. Walks the inodes in use only.
    pub fn reclaim_orphans(&mut self, blocks: &mut BlockBitmap<'_>) -> Result<u64, Error> {
        self.reclaim_orphans_except(blocks, |_| false)
    }

    /// [`Meta::reclaim_orphans`], keeping the orphans for which `keep`
    /// is true (the kernel keeps those a DMA hold handed over needs).
    pub fn reclaim_orphans_except(
        &mut self,
        blocks: &mut BlockBitmap<'_>,
        mut keep: impl FnMut(u64) -> bool,
    ) -> Result<u64, Error> {
        let mut n = 0;
        let mut cur = ROOT_INO;
        while let Some(ino) = self.ix.next_inode(cur) {
            cur = ino;
            let rec = inode_record(self.buf.as_ref(), self.geo.inode_count, ino)?;
            if get_u32(rec, ino::NLINK)? == 0 && !keep(ino) {
                self.evict(ino, blocks)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Sets [`FLAG_DMA_HELD`] on exactly the in-use regular files for
    /// which `held` is true and clears it on every other inode, for the
    /// next kernel (at the kexec freeze). Only records whose flag changes
    /// are written; the first write brings a version 1 or 2 image to the
    /// current version, which defines the flag. Walks the inodes in use
    /// only. Returns the inodes flagged.
    pub fn set_dma_held(&mut self, mut held: impl FnMut(u64) -> bool) -> Result<u64, Error> {
        let mut n = 0;
        let mut next = Some(ROOT_INO);
        while let Some(ino) = next {
            next = self.ix.next_inode(ino);
            let rec = self.record(ino)?;
            let flags = get_u32(rec, ino::FLAGS)?;
            let is_reg = get_u32(rec, ino::MODE)? & S_IFMT == S_IFREG;
            let want = is_reg && held(ino);
            let now = if want {
                flags | FLAG_DMA_HELD
            } else {
                flags & !FLAG_DMA_HELD
            };
            if now != flags {
                self.prepare_write()?;
                let rec = inode_record_mut(self.buf.as_mut(), self.geo.inode_count, ino)?;
                put_u32(rec, ino::FLAGS, now)?;
            }
            n += u64::from(want);
        }
        Ok(n)
    }

    /// Renames `old_dir/old` to `new_dir/new`. An existing target is
    /// replaced if it is of the same kind (an empty directory for a
    /// directory) and returned, unlinked, for the caller to evict;
    /// `noreplace` refuses an existing target instead.
    pub fn rename(
        &mut self,
        old_dir: u64,
        old: &[u8],
        new_dir: u64,
        new: &[u8],
        noreplace: bool,
        now: Time,
    ) -> Result<Option<InodeData>, Error> {
        check_name(new)?;
        check_time(now)?;
        let ino = self.lookup(old_dir, old)?;
        let src = self.inode(ino)?;
        let nd = self.inode(new_dir)?;
        if !nd.is_dir() {
            return Err(Error::NotDir);
        }
        if nd.nlink == 0 {
            // Removed while still open: no new entries.
            return Err(Error::NotFound);
        }
        if src.is_dir() && self.is_ancestor(ino, new_dir)? {
            return Err(Error::Invalid);
        }
        let mut target_is_dir = None;
        match self.lookup(new_dir, new) {
            Ok(target) if target == ino => return Ok(None),
            Ok(_) if noreplace => return Err(Error::Exists),
            Ok(target) => {
                let t = self.inode(target)?;
                match (src.is_dir(), t.is_dir()) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    _ => {}
                }
                if t.is_dir() && self.has_children(target)? {
                    return Err(Error::NotEmpty);
                }
                target_is_dir = Some(t.is_dir());
            }
            Err(Error::NotFound) => {}
            Err(e) => return Err(e),
        }
        // A directory moving to another parent takes its `..` along. Check
        // both link counts before the first write, so that a refused
        // rename changes nothing. A replaced directory gives its `..` in
        // the new parent back first.
        let moves_dir = src.is_dir() && old_dir != new_dir;
        if moves_dir {
            dir_nlink_minus_one(&self.inode(old_dir)?)?;
            if target_is_dir != Some(true) {
                nd.nlink.checked_add(1).ok_or(TOO_MANY_LINKS)?;
            }
        }
        let replaced = match target_is_dir {
            Some(_) => Some(self.unlink(new_dir, new, now)?),
            None => None,
        };
        let mut src = self.inode(ino)?;
        if moves_dir {
            let mut od = self.inode(old_dir)?;
            od.nlink = dir_nlink_minus_one(&od)?;
            self.write_inode(&od)?;
            let mut nd = self.inode(new_dir)?;
            nd.nlink = nd.nlink.checked_add(1).ok_or(TOO_MANY_LINKS)?;
            self.write_inode(&nd)?;
        }
        for d in [old_dir, new_dir] {
            let mut di = self.inode(d)?;
            di.mtime = now;
            di.ctime = now;
            self.write_inode(&di)?;
        }
        src.parent = new_dir;
        src.name = [0; NAME_MAX];
        src.name[..new.len()].copy_from_slice(new);
        src.name_len = new.len();
        src.ctime = now;
        self.write_inode(&src)?;
        Ok(replaced)
    }

    /// Allocates blocks so that `[file_block, file_block + count)` of
    /// `ino` is backed, leaving already backed blocks alone. Without
    /// enough free blocks for every hole it fails with `NoSpace` before
    /// allocating anything.
    pub fn allocate(
        &mut self,
        ino: u64,
        file_block: u64,
        count: u64,
        blocks: &mut BlockBitmap<'_>,
    ) -> Result<(), Error> {
        self.allocate_with(ino, file_block, count, blocks, |_, _| Ok(()))
    }

    /// [`Meta::allocate`], calling `prepare(first_block, count)` on every
    /// newly allocated run before it joins the file (the kernel zeroes the
    /// blocks there). An error from `prepare` fails the allocation.
    pub fn allocate_with(
        &mut self,
        ino: u64,
        file_block: u64,
        count: u64,
        blocks: &mut BlockBitmap<'_>,
        mut prepare: impl FnMut(u64, u64) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let end = file_block.checked_add(count).ok_or(Error::TooBig)?;
        if end > MAX_FILE_BLOCKS {
            return Err(Error::TooBig);
        }
        let i = self.inode(ino)?;
        if !i.is_reg() {
            // Directories have no blocks (validation refuses any).
            return Err(Error::IsDir);
        }
        // Enough free blocks for every hole, or nothing is allocated: the
        // bitmap cannot then run out part-way (and the extent table, one
        // record per block, cannot either).
        let mut backed = 0u64;
        for e in self.extents(ino)? {
            let e = e?;
            let (from, to) = (e.file_block.max(file_block), extent_end(ino, &e)?.min(end));
            backed = backed.saturating_add(to.saturating_sub(from));
        }
        if count.saturating_sub(backed) > blocks.free() {
            return Err(Error::NoSpace);
        }
        let mut fb = file_block;
        while fb < end {
            match self.map(ino, fb)? {
                Some(e) => fb = extent_end(ino, &e)?,
                None => {
                    // The hole runs to the next extent or to `end`.
                    let mut hole_end = end;
                    self.for_each_extent(ino, |e| {
                        if e.file_block > fb && e.file_block < hole_end {
                            hole_end = e.file_block;
                        }
                        Ok(())
                    })?;
                    let want = (hole_end - fb).min(u64::from(u32::MAX));
                    // A failing `prepare` frees its run; runs added before
                    // it stay (zeroed blocks where holes were: nothing a
                    // reader could tell apart, and never a block that was
                    // the file's before this call).
                    let (phys, n) = blocks.alloc_run(want)?;
                    prepare(phys, n)
                        .and_then(|()| self.insert_extent(ino, fb, phys, n))
                        .inspect_err(|_| {
                            let _ = blocks.mark_free(phys, n);
                        })?;
                    fb += n;
                }
            }
        }
        Ok(())
    }

    /// Gives `ino` the blocks `[phys, phys + count)`, which the caller
    /// took from the allocator (`BlockBitmap::mark_used`) and prepared
    /// itself (the kernel zeroes a 1 GiB unit without holding its lock),
    /// at `file_block`. The file range must still be a hole of a regular
    /// file; on any error nothing changed and the blocks are the caller's.
    pub fn insert_reserved(
        &mut self,
        ino: u64,
        file_block: u64,
        phys: u64,
        count: u64,
    ) -> Result<(), Error> {
        let i = self.inode(ino)?;
        if !i.is_reg() {
            return Err(Error::IsDir);
        }
        let end = file_block.checked_add(count).ok_or(Error::TooBig)?;
        if count == 0 || end > MAX_FILE_BLOCKS {
            return Err(Error::TooBig);
        }
        if !self.is_hole(ino, file_block, end)? {
            return Err(Error::Exists);
        }
        self.insert_extent(ino, file_block, phys, count)
    }

    /// Inserts an extent in file order, merging with a physically and
    /// logically adjacent predecessor.
    fn insert_extent(
        &mut self,
        ino: u64,
        file_block: u64,
        phys: u64,
        count: u64,
    ) -> Result<(), Error> {
        let mut i = self.inode(ino)?;
        let mut prev: Option<Extent> = None;
        let mut id = i.first_extent;
        for e in self.extents(ino)? {
            let e = e?;
            if e.file_block > file_block {
                break;
            }
            prev = Some(e);
            id = e.next;
        }
        let bad_counts = Error::Corrupt(Corruption::BadCounts(ino));
        let blocks = i.blocks.checked_add(count).ok_or(bad_counts)?;
        if let Some(mut p) = prev {
            if p.file_block.checked_add(p.count) == Some(file_block)
                && p.phys_block.checked_add(p.count) == Some(phys)
                && p.count.saturating_add(count) <= u64::from(u32::MAX)
            {
                p.count += count;
                self.write_extent(&p)?;
                i.blocks = blocks;
                return self.write_inode(&i);
            }
        }
        let nr_extents = i.nr_extents.checked_add(1).ok_or(bad_counts)?;
        let new_id = self.free_extent_slot()?;
        let e = Extent {
            id: new_id,
            count,
            next: id,
            file_block,
            phys_block: phys,
        };
        self.write_extent(&e)?;
        match prev {
            Some(mut p) => {
                p.next = new_id;
                self.write_extent(&p)?;
            }
            None => i.first_extent = new_id,
        }
        i.nr_extents = nr_extents;
        i.blocks = blocks;
        self.write_inode(&i)
    }

    /// Frees every block of `ino` at or beyond file block `keep`.
    pub fn truncate_blocks(
        &mut self,
        ino: u64,
        keep: u64,
        blocks: &mut BlockBitmap<'_>,
    ) -> Result<(), Error> {
        // One walk, linear in the extents (a fragmented file has many):
        // the list is sorted and disjoint (validated), so everything from
        // the first extent that ends past `keep` goes, except the part of
        // that one before `keep`.
        let mut i = self.inode(ino)?;
        let bad = Error::Corrupt(Corruption::BadCounts(ino));
        let mut prev: Option<Extent> = None;
        let mut cut: Option<Extent> = None;
        for e in self.extents(ino)? {
            let e = e?;
            if extent_end(ino, &e)? > keep {
                cut = Some(e);
                break;
            }
            prev = Some(e);
        }
        let Some(first) = cut else {
            return Ok(());
        };
        // The tail, read first: counts, and no cycle.
        let (mut tail_blocks, mut tail_extents) = (0u64, 0u64);
        for e in (ExtentWalk {
            meta: &*self,
            ino,
            next: first.next,
            steps: 0,
        }) {
            let e = e?;
            tail_blocks = tail_blocks.checked_add(e.count).ok_or(bad)?;
            tail_extents += 1;
        }
        // The new counts first (an error changes nothing), then cut the
        // list, write the counts, free.
        let straddles = first.file_block < keep;
        let (head_drop, head_freed) = if straddles {
            // `file_block < keep < end`: 0 < drop < count.
            (extent_end(ino, &first)? - keep, 0)
        } else {
            (first.count, 1)
        };
        i.blocks = i
            .blocks
            .checked_sub(tail_blocks)
            .and_then(|b| b.checked_sub(head_drop))
            .ok_or(bad)?;
        i.nr_extents = i
            .nr_extents
            .checked_sub(tail_extents + head_freed)
            .ok_or(bad)?;
        if straddles {
            let mut t = first;
            t.count -= head_drop;
            t.next = 0;
            self.write_extent(&t)?;
        } else {
            match prev {
                Some(mut p) => {
                    p.next = 0;
                    self.write_extent(&p)?;
                }
                None => i.first_extent = 0,
            }
        }
        self.write_inode(&i)?;
        if head_freed == 1 {
            self.free_extent_record(first.id)?;
            blocks.mark_free(first.phys_block, first.count)?;
        } else {
            blocks.mark_free(first.phys_block + first.count - head_drop, head_drop)?;
        }
        let mut next = first.next;
        while next != 0 {
            let e = self
                .extent(next)?
                .ok_or(Error::Corrupt(Corruption::BadExtent(next)))?;
            next = e.next;
            self.free_extent_record(e.id)?;
            blocks.mark_free(e.phys_block, e.count)?;
        }
        Ok(())
    }

    /// Sets the size of a regular file; shrinking frees whole blocks past
    /// the new end. Growing leaves a hole (allocated on fault or by
    /// fallocate).
    pub fn set_size(
        &mut self,
        ino: u64,
        size: u64,
        now: Time,
        blocks: &mut BlockBitmap<'_>,
    ) -> Result<(), Error> {
        check_time(now)?;
        let i = self.inode(ino)?;
        if !i.is_reg() {
            return Err(Error::IsDir);
        }
        if size > MAX_FILE_SIZE {
            return Err(Error::TooBig);
        }
        if size < i.size {
            self.truncate_blocks(ino, size.div_ceil(BLOCK_SIZE), blocks)?;
        }
        let mut i = self.inode(ino)?;
        i.size = size;
        i.mtime = now;
        i.ctime = now;
        self.write_inode(&i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::index::testing::Store;
    use super::super::validate;
    use super::*;

    const T: Time = Time { sec: 100, nsec: 5 };

    fn image(blocks: u64) -> (std::vec::Vec<u8>, Geometry, Store) {
        let geo = Geometry::new(blocks * BLOCK_SIZE, 64).unwrap();
        let mut buf = std::vec![0u8; geo.meta_bytes() as usize];
        let mut st = Store::new(&geo);
        format(&mut buf, &geo, T, 1, &mut st.index()).unwrap();
        (buf, geo, st)
    }

    /// An image of `blocks` blocks, with the words of its block allocator.
    struct Image {
        buf: std::vec::Vec<u8>,
        geo: Geometry,
        st: Store,
        words: std::vec::Vec<u64>,
    }

    impl Image {
        /// The image, and its geometry.
        fn new(blocks: u64) -> (Image, Geometry) {
            let (buf, geo, st) = image(blocks);
            let words = std::vec![0u64; super::super::bitmap::words_for(geo.nr_blocks)];
            let img = Image {
                buf,
                geo,
                st,
                words,
            };
            (img, geo)
        }

        /// The metadata, and the block allocator with the metadata blocks
        /// used.
        fn open(&mut self) -> (Meta<'_, &mut [u8]>, BlockBitmap<'_>) {
            let mut bm = BlockBitmap::new(&mut self.words, self.geo.nr_blocks).unwrap();
            bm.mark_used(0, self.geo.meta_blocks).unwrap();
            let m = Meta::new(&mut self.buf[..], self.geo, self.st.index()).unwrap();
            (m, bm)
        }

        /// Those, and a new empty file `f` in the root.
        fn with_file(&mut self) -> (Meta<'_, &mut [u8]>, BlockBitmap<'_>, InodeData) {
            let (mut m, bm) = self.open();
            let f = m.create(ROOT_INO, b"f", S_IFREG | 0o644, 0, 0, T).unwrap();
            (m, bm, f)
        }
    }

    extern crate std;

    #[test]
    fn create_lookup_unlink() {
        let (mut img, geo) = Image::new(16);
        let (mut m, mut bm) = img.open();
        let d = m
            .create(ROOT_INO, b"dir", S_IFDIR | 0o700, 1, 2, T)
            .unwrap();
        let f = m.create(d.ino, b"f", S_IFREG | 0o600, 1, 2, T).unwrap();
        assert_eq!(m.lookup(d.ino, b"f").unwrap(), f.ino);
        assert_eq!(m.create(d.ino, b"f", S_IFREG, 0, 0, T), Err(Error::Exists));
        assert_eq!(m.inode(ROOT_INO).unwrap().nlink, 3);
        m.allocate(f.ino, 0, 3, &mut bm).unwrap();
        m.set_size(f.ino, 3 * BLOCK_SIZE, T, &mut bm).unwrap();
        assert_eq!(m.unlink(ROOT_INO, b"dir", T), Err(Error::NotEmpty));
        m.unlink(d.ino, b"f", T).unwrap();
        assert_eq!(m.lookup(d.ino, b"f"), Err(Error::NotFound));
        assert_eq!(bm.used(), geo.meta_blocks + 3);
        m.evict(f.ino, &mut bm).unwrap();
        assert_eq!(bm.used(), geo.meta_blocks);
        m.unlink(ROOT_INO, b"dir", T).unwrap();
        assert_eq!(m.inode(ROOT_INO).unwrap().nlink, 2);
    }

    #[test]
    fn dma_held_flags_are_set_exactly_and_upgrade_the_image() {
        let (mut img, geo) = Image::new(16);
        let (ino_f, ino_g, ino_d);
        {
            let (mut m, mut bm, f) = img.with_file();
            let g = m.create(ROOT_INO, b"g", S_IFREG | 0o644, 0, 0, T).unwrap();
            let d = m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
            m.allocate(f.ino, 0, 2, &mut bm).unwrap();
            (ino_f, ino_g, ino_d) = (f.ino, g.ino, d.ino);
        }
        // As a version 2 image just adopted: the first write upgrades it.
        put_u32(&mut img.buf, sb::VERSION, VERSION_2).unwrap();
        seal_superblock(&mut img.buf).unwrap();
        let (mut st, _) = Store::adopt(&img.buf, &geo);
        let mut m = Meta::new(&mut img.buf[..], geo, st.index()).unwrap();
        // Nothing to flag: nothing written, still version 2.
        let before = m.bytes().to_vec();
        assert_eq!(m.set_dma_held(|_| false), Ok(0));
        assert_eq!(m.bytes(), &before[..]);
        // A directory is never flagged, whatever the caller says.
        let want = [ino_f, ino_d];
        assert_eq!(m.set_dma_held(|i| want.contains(&i)), Ok(1));
        assert_eq!(get_u32(m.bytes(), sb::VERSION), Ok(VERSION));
        let flagged = |m: &Meta<'_, &mut [u8]>| {
            let mut v = std::vec::Vec::new();
            m.for_each_dma_held(|i| {
                v.push(i.ino);
                Ok(())
            })
            .unwrap();
            v
        };
        assert_eq!(flagged(&m), [ino_f]);
        assert_eq!(m.dma_held(ino_g), Ok(false));
        // Moved to the other file: set there, cleared here.
        assert_eq!(m.set_dma_held(|i| i == ino_g), Ok(1));
        assert_eq!(flagged(&m), [ino_g]);
        assert_eq!(validate::check(m.bytes(), geo.region_size), Ok(4));
        // Any rewrite of the record clears it (the kernel keeps it in
        // memory until the freeze).
        let g = m.inode(ino_g).unwrap();
        m.write_inode(&g).unwrap();
        assert_eq!(flagged(&m), []);
        assert_eq!(m.dma_held(99), Err(Error::Invalid));
    }

    #[test]
    fn orphans_kept_on_request() {
        let (mut img, geo) = Image::new(16);
        let (mut m, mut bm, f) = img.with_file();
        let g = m.create(ROOT_INO, b"g", S_IFREG | 0o644, 0, 0, T).unwrap();
        m.allocate(f.ino, 0, 1, &mut bm).unwrap();
        m.allocate(g.ino, 0, 1, &mut bm).unwrap();
        m.unlink(ROOT_INO, b"f", T).unwrap();
        m.unlink(ROOT_INO, b"g", T).unwrap();
        assert_eq!(m.reclaim_orphans_except(&mut bm, |i| i == f.ino), Ok(1));
        assert!(m.inode_in_use(f.ino).unwrap());
        assert!(!m.inode_in_use(g.ino).unwrap());
        assert_eq!(bm.used(), geo.meta_blocks + 1);
        assert_eq!(m.reclaim_orphans(&mut bm), Ok(1));
        assert_eq!(bm.used(), geo.meta_blocks);
    }

    #[test]
    fn names() {
        assert_eq!(check_name(b""), Err(Error::BadName));
        assert_eq!(check_name(b".."), Err(Error::BadName));
        assert_eq!(check_name(b"a/b"), Err(Error::BadName));
        assert_eq!(check_name(&[b'x'; 256]), Err(Error::NameTooLong));
        assert!(check_name(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn rename_rules() {
        let (mut buf, geo, mut st) = image(16);
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let a = m.create(ROOT_INO, b"a", S_IFDIR | 0o755, 0, 0, T).unwrap();
        let b = m.create(a.ino, b"b", S_IFDIR | 0o755, 0, 0, T).unwrap();
        // A directory cannot move into its own subtree.
        assert_eq!(
            m.rename(ROOT_INO, b"a", b.ino, b"x", false, T),
            Err(Error::Invalid)
        );
        let f = m.create(ROOT_INO, b"f", S_IFREG | 0o644, 0, 0, T).unwrap();
        assert_eq!(
            m.rename(ROOT_INO, b"f", ROOT_INO, b"a", false, T),
            Err(Error::IsDir)
        );
        m.rename(ROOT_INO, b"f", b.ino, b"g", false, T).unwrap();
        assert_eq!(m.lookup(b.ino, b"g").unwrap(), f.ino);
        let h = m.create(ROOT_INO, b"h", S_IFREG | 0o644, 0, 0, T).unwrap();
        assert_eq!(
            m.rename(ROOT_INO, b"h", b.ino, b"g", true, T),
            Err(Error::Exists)
        );
        let replaced = m.rename(ROOT_INO, b"h", b.ino, b"g", false, T).unwrap();
        assert_eq!(replaced.unwrap().ino, f.ino);
        assert_eq!(m.lookup(b.ino, b"g").unwrap(), h.ino);
    }

    #[test]
    fn truncate_splits_and_frees() {
        let (mut img, geo) = Image::new(64);
        let (mut m, mut bm, f) = img.with_file();
        m.allocate(f.ino, 0, 10, &mut bm).unwrap();
        m.allocate(f.ino, 20, 5, &mut bm).unwrap();
        m.set_size(f.ino, 25 * BLOCK_SIZE, T, &mut bm).unwrap();
        assert_eq!(m.inode(f.ino).unwrap().blocks, 15);
        m.set_size(f.ino, 4 * BLOCK_SIZE + 1, T, &mut bm).unwrap();
        assert_eq!(m.inode(f.ino).unwrap().blocks, 5);
        assert_eq!(bm.used(), geo.meta_blocks + 5);
        assert!(m.map(f.ino, 4).unwrap().is_some());
        assert!(m.map(f.ino, 5).unwrap().is_none());
        assert!(validate::check(&img.buf, geo.region_size).is_ok());
    }

    #[test]
    fn failed_allocate_never_frees_blocks_the_file_had() {
        // Blocks 0 and 2 backed (physically apart), 1 and 3 holes; the
        // second new run fails to prepare: the old blocks stay, with
        // their extents, and the failed run goes back to the allocator.
        let (mut img, geo) = Image::new(16);
        let (mut m, mut bm, f) = img.with_file();
        m.allocate(f.ino, 0, 1, &mut bm).unwrap();
        bm.mark_used(geo.meta_blocks + 1, 1).unwrap(); // keep runs apart
        m.allocate(f.ino, 2, 1, &mut bm).unwrap();
        let old: std::vec::Vec<_> = m.extents(f.ino).unwrap().map(|e| e.unwrap()).collect();
        let used = bm.used();
        let mut calls = 0;
        let r = m.allocate_with(f.ino, 0, 4, &mut bm, |_, _| {
            calls += 1;
            if calls == 2 {
                Err(Error::NoMemory)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(Error::NoMemory));
        for e in &old {
            let now = m.map(f.ino, e.file_block).unwrap().unwrap();
            assert_eq!(
                now.phys_block + (e.file_block - now.file_block),
                e.phys_block
            );
        }
        // The first new run (block 1) stays, the failed one is free.
        assert!(m.map(f.ino, 1).unwrap().is_some());
        assert!(m.map(f.ino, 3).unwrap().is_none());
        assert_eq!(bm.used(), used + 1);
        assert_eq!(m.inode(f.ino).unwrap().blocks, 3);
    }

    #[test]
    fn allocate_with_prepares_new_runs_only() {
        let (mut img, geo) = Image::new(16);
        let (mut m, mut bm, f) = img.with_file();
        let mut seen = std::vec::Vec::new();
        m.allocate_with(f.ino, 0, 2, &mut bm, |b, n| {
            seen.push((b, n));
            Ok(())
        })
        .unwrap();
        m.allocate_with(f.ino, 0, 4, &mut bm, |b, n| {
            seen.push((b, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(geo.meta_blocks, 2), (geo.meta_blocks + 2, 2)]);
        // A failing prepare allocates nothing.
        let used = bm.used();
        assert_eq!(
            m.allocate_with(f.ino, 8, 1, &mut bm, |_, _| Err(Error::NoSpace)),
            Err(Error::NoSpace)
        );
        assert_eq!(bm.used(), used);
        assert_eq!(m.inode(f.ino).unwrap().blocks, 4);
    }

    #[test]
    fn allocate_reports_no_space_and_rolls_back() {
        let (mut img, _) = Image::new(8);
        let (mut m, mut bm, f) = img.with_file();
        let free = bm.free();
        assert_eq!(m.allocate(f.ino, 0, free + 1, &mut bm), Err(Error::NoSpace));
        assert_eq!(bm.free(), free);
        assert_eq!(m.inode(f.ino).unwrap().blocks, 0);
        m.allocate(f.ino, 0, free, &mut bm).unwrap();
        assert_eq!(bm.free(), 0);
    }

    fn set_nlink(m: &mut Meta<'_, &mut [u8]>, ino: u64, nlink: u32) {
        let mut i = m.inode(ino).unwrap();
        i.nlink = nlink;
        m.write_inode(&i).unwrap();
    }

    #[test]
    fn link_limit_refuses_without_change() {
        let (mut buf, geo, mut st) = image(16);
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let full = m
            .create(ROOT_INO, b"full", S_IFDIR | 0o755, 0, 0, T)
            .unwrap();
        let d = m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
        let sub = m.create(d.ino, b"sub", S_IFDIR | 0o755, 0, 0, T).unwrap();
        let empty = m
            .create(full.ino, b"empty", S_IFDIR | 0o755, 0, 0, T)
            .unwrap();
        set_nlink(&mut m, full.ino, u32::MAX);
        let before = m.bytes().to_vec();
        // mkdir: an error, no panic, nothing written.
        assert_eq!(
            m.create(full.ino, b"x", S_IFDIR | 0o755, 0, 0, T),
            Err(Error::NoSpace)
        );
        // A directory moving in: the same.
        assert_eq!(
            m.rename(d.ino, b"sub", full.ino, b"x", false, T),
            Err(Error::NoSpace)
        );
        assert_eq!(m.bytes(), &before[..]);
        // A file still can; so can a directory replacing an empty one
        // (the count does not change).
        m.create(full.ino, b"f", S_IFREG | 0o644, 0, 0, T).unwrap();
        let replaced = m.rename(d.ino, b"sub", full.ino, b"empty", false, T);
        assert_eq!(replaced.unwrap().unwrap().ino, empty.ino);
        assert_eq!(m.inode(full.ino).unwrap().nlink, u32::MAX);
        assert_eq!(m.lookup(full.ino, b"empty").unwrap(), sub.ino);
        assert_eq!(m.inode(d.ino).unwrap().nlink, 2);
    }

    #[test]
    fn damaged_link_counts_are_errors() {
        let (mut buf, geo, mut st) = image(16);
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let d = m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
        m.create(d.ino, b"e", S_IFDIR | 0o755, 0, 0, T).unwrap();
        for bad in [0, 1, 2] {
            set_nlink(&mut m, d.ino, bad);
            let before = m.bytes().to_vec();
            let err = Err(Error::Corrupt(Corruption::BadInode(d.ino)));
            assert_eq!(m.unlink(d.ino, b"e", T).map(|_| ()), err);
            assert_eq!(
                m.rename(d.ino, b"e", ROOT_INO, b"e", false, T).map(|_| ()),
                err
            );
            assert_eq!(m.bytes(), &before[..]);
        }
    }

    #[test]
    fn removed_directories_take_no_entries() {
        let (mut buf, geo, mut st) = image(16);
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let d = m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
        m.create(ROOT_INO, b"f", S_IFREG | 0o644, 0, 0, T).unwrap();
        m.unlink(ROOT_INO, b"d", T).unwrap();
        assert_eq!(
            m.create(d.ino, b"x", S_IFREG | 0o644, 0, 0, T),
            Err(Error::NotFound)
        );
        assert_eq!(
            m.rename(ROOT_INO, b"f", d.ino, b"x", false, T),
            Err(Error::NotFound)
        );
        // Nor does a free record.
        assert_eq!(
            m.create(9, b"x", S_IFREG | 0o644, 0, 0, T),
            Err(Error::NotFound)
        );
        assert!(validate::check(m.bytes(), geo.region_size).is_ok());
    }

    #[test]
    fn sizes_and_blocks_stay_within_the_largest_file() {
        let (mut img, geo) = Image::new(16);
        let (mut m, mut bm, f) = img.with_file();
        let max = i64::MAX as u64;
        assert_eq!(m.set_size(f.ino, max + 1, T, &mut bm), Err(Error::TooBig));
        assert_eq!(m.set_size(f.ino, u64::MAX, T, &mut bm), Err(Error::TooBig));
        m.set_size(f.ino, max, T, &mut bm).unwrap();
        let last = MAX_FILE_BLOCKS - 1;
        m.allocate(f.ino, last, 1, &mut bm).unwrap();
        assert_eq!(m.allocate(f.ino, last, 2, &mut bm), Err(Error::TooBig));
        assert_eq!(
            m.allocate(ROOT_INO, 0, 1, &mut bm),
            Err(Error::IsDir),
            "a directory has no blocks"
        );
        assert_eq!(validate::check(m.bytes(), geo.region_size), Ok(2));
    }

    #[test]
    fn generation_counter_does_not_wrap() {
        let (mut buf, geo, mut st) = image(16);
        put_u64(&mut buf, sb::NEXT_INO_GEN, u64::MAX).unwrap();
        seal_superblock(&mut buf).unwrap();
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let before = m.bytes().to_vec();
        assert_eq!(
            m.create(ROOT_INO, b"f", S_IFREG | 0o644, 0, 0, T),
            Err(Error::NoInodes)
        );
        assert_eq!(m.bytes(), &before[..]);
    }

    #[test]
    fn unnormalized_times_and_modes_are_not_written() {
        let (mut img, _) = Image::new(16);
        let (mut m, mut bm, f) = img.with_file();
        let bad = Time {
            sec: 1,
            nsec: 1_000_000_000,
        };
        let before = m.bytes().to_vec();
        let mut i = f;
        i.mtime = bad;
        assert_eq!(m.write_inode(&i), Err(Error::Invalid));
        i.mtime = T;
        i.mode = S_IFREG | 0o644 | 0x10000;
        assert_eq!(m.write_inode(&i), Err(Error::Invalid));
        assert_eq!(
            m.create(ROOT_INO, b"g", S_IFREG | 0x10000, 0, 0, T),
            Err(Error::Invalid)
        );
        assert_eq!(
            m.create(ROOT_INO, b"g", S_IFREG, 0, 0, bad),
            Err(Error::Invalid)
        );
        assert_eq!(m.unlink(ROOT_INO, b"f", bad), Err(Error::Invalid));
        assert_eq!(
            m.rename(ROOT_INO, b"f", ROOT_INO, b"g", false, bad),
            Err(Error::Invalid)
        );
        assert_eq!(m.set_size(f.ino, 1, bad, &mut bm), Err(Error::Invalid));
        assert_eq!(m.bytes(), &before[..]);
    }
}
