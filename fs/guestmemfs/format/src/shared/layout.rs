// SPDX-License-Identifier: GPL-2.0-only
//! On-memory layout of guestmemfs, format version 3 (versions 1 and 2 are
//! read and upgraded).
//!
//! The region is an array of 2 MiB blocks. The first `meta_blocks` blocks
//! hold the metadata, everything after them is file data:
//!
//! ```text
//! offset 0              superblock (4 KiB)
//! inode_offset          inode table: inode_count records of 512 bytes
//! extent_offset         extent table: extent_count records of 32 bytes
//! meta_blocks * 2 MiB   data blocks
//! ```
//!
//! All integers are little endian. Every record is decoded field by field
//! from bytes with bounds checks, never cast from memory, so corrupt
//! metadata can only produce an error (see `validate`).
//!
//! Version 2 adds two high-water marks to the superblock: every inode and
//! extent record above them is free by definition, never read (allocating
//! a record overwrites all of it), so a mount reads the records that were
//! ever used, not the whole tables.
//!
//! Version 3 adds one inode flag, [`FLAG_DMA_HELD`]: written at the kexec
//! freeze on the regular files an IOMMU mapping handed over to the next
//! kernel still needs (`holds`). The superblock is as in version 2.

use super::Error;

/// Size of an allocation block: 2 MiB, one PMD mapping.
pub const BLOCK_SHIFT: u32 = 21;
/// Size of an allocation block in bytes.
pub const BLOCK_SIZE: u64 = 1 << BLOCK_SHIFT;
/// Blocks in a 1 GiB (PUD) unit.
pub const HUGE_BLOCKS: u64 = 512;

/// `b"GUESTMFS"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"GUESTMFS");
/// Format version this code writes.
pub const VERSION: u32 = 3;
/// The previous format version, still accepted: no inode may carry
/// [`FLAG_DMA_HELD`]; the first change made to it rewrites the version
/// (nothing else differs).
pub const VERSION_2: u32 = 2;
/// The first format version, still accepted: its superblock has no
/// high-water marks (every record counts), and the first change made to
/// it rewrites the superblock as the current version.
pub const VERSION_1: u32 = 1;

/// Bytes reserved for the superblock at the start of the region.
pub const SUPERBLOCK_SIZE: u64 = 4096;
/// Bytes per inode record.
pub const INODE_SIZE: u64 = 512;
/// Bytes per extent record.
pub const EXTENT_SIZE: u64 = 32;
/// Longest file name, as the VFS's NAME_MAX.
pub const NAME_MAX: usize = 255;
/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// `S_IFMT` and the two file types guestmemfs stores.
pub const S_IFMT: u32 = 0o170000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;

/// Record flag: the record is in use.
pub const FLAG_IN_USE: u32 = 1;
/// Inode flag (version 3, regular files only, with [`FLAG_IN_USE`]): at
/// the kexec freeze an IOMMU mapping of this file was handed over to the
/// next kernel, which keeps the file whole (no orphan reclaim, no shrink
/// below its size, no reformat) until the IOMMU side says the handover
/// is resolved. Written only at the freeze; any other rewrite of the
/// record clears it.
pub const FLAG_DMA_HELD: u32 = 2;

/// Entries of the superblock's bad-block list: 512 MiB of bad memory.
pub const BAD_MAX: usize = 256;

/// Superblock field offsets.
pub(crate) mod sb {
    pub(crate) const MAGIC: usize = 0;
    pub(crate) const VERSION: usize = 8;
    pub(crate) const HEADER_SIZE: usize = 12;
    pub(crate) const REGION_SIZE: usize = 16;
    pub(crate) const BLOCK_SIZE: usize = 24;
    pub(crate) const NR_BLOCKS: usize = 32;
    pub(crate) const META_BLOCKS: usize = 40;
    pub(crate) const INODE_COUNT: usize = 48;
    pub(crate) const INODE_OFFSET: usize = 56;
    pub(crate) const EXTENT_COUNT: usize = 64;
    pub(crate) const EXTENT_OFFSET: usize = 72;
    pub(crate) const GENERATION: usize = 80;
    pub(crate) const NEXT_INO_GEN: usize = 88;
    /// Version 2: highest inode record id ever in use (every record
    /// above it is free).
    pub(crate) const INODE_HWM: usize = 96;
    /// Version 2: highest extent record id ever in use.
    pub(crate) const EXTENT_HWM: usize = 104;
    /// Version 2: bad-block list (blocks hit by a memory error), `u32`
    /// entries in use.
    pub(crate) const BAD_COUNT: usize = 112;
    /// Version 2: `u32` bad blocks the full list could not record
    /// (informational).
    pub(crate) const BAD_LOST: usize = 116;
    /// Version 2: [`super::BAD_MAX`] `u64` entries, the first
    /// `BAD_COUNT` strictly ascending data blocks, the rest zero; bytes
    /// 120..128 are zero.
    pub(crate) const BAD_LIST: usize = 128;
    /// Version 2: end of the defined fields; the bytes from here to the
    /// checksum are reserved and zero.
    pub(crate) const RESERVED: usize = BAD_LIST + 8 * super::BAD_MAX;
    pub(crate) const CHECKSUM: usize = 4092;
}

/// Inode field offsets.
pub(crate) mod ino {
    pub(crate) const FLAGS: usize = 0;
    pub(crate) const MODE: usize = 4;
    pub(crate) const UID: usize = 8;
    pub(crate) const GID: usize = 12;
    pub(crate) const NLINK: usize = 16;
    pub(crate) const NAME_LEN: usize = 20;
    pub(crate) const SIZE: usize = 24;
    pub(crate) const PARENT: usize = 32;
    pub(crate) const FIRST_EXTENT: usize = 40;
    pub(crate) const NR_EXTENTS: usize = 48;
    pub(crate) const BLOCKS: usize = 56;
    pub(crate) const ATIME: usize = 64;
    pub(crate) const MTIME: usize = 80;
    pub(crate) const CTIME: usize = 96;
    pub(crate) const GENERATION: usize = 112;
    pub(crate) const NAME: usize = 128;
}

/// Extent field offsets.
pub mod ext {
    /// `u32` flags.
    pub const FLAGS: usize = 0;
    /// `u32` block count.
    pub const COUNT: usize = 4;
    /// `u64` next extent id.
    pub const NEXT: usize = 8;
    /// `u64` first file block.
    pub const FILE_BLOCK: usize = 16;
    /// `u64` first region block.
    pub const PHYS_BLOCK: usize = 24;
}

/// A time stamp as the VFS keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, below 10^9.
    pub nsec: u32,
}

/// Sizes of the metadata area, derived from the region size and the
/// number of inodes chosen at format time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Region size in bytes, a multiple of `BLOCK_SIZE`.
    pub region_size: u64,
    /// Number of 2 MiB blocks in the region.
    pub nr_blocks: u64,
    /// Leading blocks that hold the metadata.
    pub meta_blocks: u64,
    /// Inode records.
    pub inode_count: u64,
    /// Extent records: one per block, the most a full region can need.
    pub extent_count: u64,
}

/// Byte offset of the inode table.
pub const INODE_OFFSET: u64 = SUPERBLOCK_SIZE;

impl Geometry {
    /// Geometry of a region of `region_size` bytes with `inode_count`
    /// inodes; `None` when the metadata would not leave a data block.
    pub fn new(region_size: u64, inode_count: u64) -> Option<Geometry> {
        if region_size == 0 || region_size % BLOCK_SIZE != 0 || inode_count == 0 {
            return None;
        }
        let nr_blocks = region_size / BLOCK_SIZE;
        let extent_count = nr_blocks;
        let meta_bytes = INODE_OFFSET
            .checked_add(inode_count.checked_mul(INODE_SIZE)?)?
            .checked_add(extent_count.checked_mul(EXTENT_SIZE)?)?;
        let meta_blocks = meta_bytes.div_ceil(BLOCK_SIZE);
        if meta_blocks >= nr_blocks {
            return None;
        }
        Some(Geometry {
            region_size,
            nr_blocks,
            meta_blocks,
            inode_count,
            extent_count,
        })
    }

    /// The default inode count for a region: one per MiB of region, at
    /// least 1024 (0.05% of the region goes to inode records).
    pub fn default_inodes(region_size: u64) -> u64 {
        (region_size >> 20).max(1024)
    }

    /// Byte offset of the extent table.
    pub fn extent_offset(&self) -> u64 {
        INODE_OFFSET + self.inode_count * INODE_SIZE
    }

    /// Bytes of metadata the kernel maps: all metadata blocks.
    pub fn meta_bytes(&self) -> u64 {
        self.meta_blocks * BLOCK_SIZE
    }

    /// Data blocks (the ones files can use).
    pub fn data_blocks(&self) -> u64 {
        self.nr_blocks - self.meta_blocks
    }
}

/// The generation stored in a superblock (checked or not).
pub fn superblock_generation(buf: &[u8]) -> Result<u64, Error> {
    get_u64(buf, sb::GENERATION)
}

/// Entries in use in the bad-block list of superblock `buf` (0 for a
/// version 1 image, which has no list); not validated.
pub(crate) fn bad_count(buf: &[u8]) -> Result<usize, Error> {
    if get_u32(buf, sb::VERSION)? == VERSION_1 {
        return Ok(0);
    }
    Ok(get_u32(buf, sb::BAD_COUNT)? as usize)
}

/// Entry `i` of the bad-block list of superblock `buf`.
pub(crate) fn bad_entry(buf: &[u8], i: usize) -> Result<u64, Error> {
    if i >= BAD_MAX {
        return Err(Error::Invalid);
    }
    get_u64(buf, sb::BAD_LIST + 8 * i)
}

pub(crate) fn get_u32(buf: &[u8], off: usize) -> Result<u32, Error> {
    let bytes = buf
        .get(off..off.checked_add(4).ok_or(Error::Truncated)?)
        .ok_or(Error::Truncated)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(a))
}

pub(crate) fn get_u64(buf: &[u8], off: usize) -> Result<u64, Error> {
    let bytes = buf
        .get(off..off.checked_add(8).ok_or(Error::Truncated)?)
        .ok_or(Error::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes);
    Ok(u64::from_le_bytes(a))
}

pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) -> Result<(), Error> {
    buf.get_mut(off..off.checked_add(4).ok_or(Error::Truncated)?)
        .ok_or(Error::Truncated)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// Stores a little-endian u64 at `off`.
pub fn put_u64(buf: &mut [u8], off: usize, v: u64) -> Result<(), Error> {
    buf.get_mut(off..off.checked_add(8).ok_or(Error::Truncated)?)
        .ok_or(Error::Truncated)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// CRC-32C (Castagnoli) lookup tables for slicing by 8, built at compile
/// time (8 KiB): table 0 is the byte-at-a-time table, table `k` advances
/// a byte's contribution by `k` more zero bytes.
const CRC32C_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82f6_3b78 & mask);
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// CRC-32C (Castagnoli), 8 bytes at a time (slicing by 8): the superblock
/// is summed at every change of its counters (every inode creation, a new
/// high-water mark), so this is on the create path; the byte-serial loop
/// took 9 us for its 4 KiB, this about 1.
pub fn crc32c(data: &[u8]) -> u32 {
    let t = &CRC32C_TABLES;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xff) as usize];
    }
    !crc
}

/// The bytes of inode record `ino` (1-based) of a table of `inode_count`
/// records; `Invalid` outside the table.
pub(crate) fn inode_record(buf: &[u8], inode_count: u64, ino: u64) -> Result<&[u8], Error> {
    let off = inode_offset(inode_count, ino)?;
    buf.get(off..off + INODE_SIZE as usize)
        .ok_or(Error::Truncated)
}

/// [`inode_record`], writable.
pub(crate) fn inode_record_mut(
    buf: &mut [u8],
    inode_count: u64,
    ino: u64,
) -> Result<&mut [u8], Error> {
    let off = inode_offset(inode_count, ino)?;
    buf.get_mut(off..off + INODE_SIZE as usize)
        .ok_or(Error::Truncated)
}

fn inode_offset(inode_count: u64, ino: u64) -> Result<usize, Error> {
    if ino == 0 || ino > inode_count {
        return Err(Error::Invalid);
    }
    (ino - 1)
        .checked_mul(INODE_SIZE)
        .and_then(|o| o.checked_add(INODE_OFFSET))
        .and_then(|o| usize::try_from(o).ok())
        .filter(|o| o.checked_add(INODE_SIZE as usize).is_some())
        .ok_or(Error::Invalid)
}

/// The bytes of extent record `id` (1-based) of `geo`; `Invalid` outside
/// the table.
pub(crate) fn extent_record<'b>(buf: &'b [u8], geo: &Geometry, id: u64) -> Result<&'b [u8], Error> {
    let off = extent_offset(geo, id)?;
    buf.get(off..off + EXTENT_SIZE as usize)
        .ok_or(Error::Truncated)
}

/// [`extent_record`], writable.
pub(crate) fn extent_record_mut<'b>(
    buf: &'b mut [u8],
    geo: &Geometry,
    id: u64,
) -> Result<&'b mut [u8], Error> {
    let off = extent_offset(geo, id)?;
    buf.get_mut(off..off + EXTENT_SIZE as usize)
        .ok_or(Error::Truncated)
}

fn extent_offset(geo: &Geometry, id: u64) -> Result<usize, Error> {
    if id == 0 || id > geo.extent_count {
        return Err(Error::Invalid);
    }
    (id - 1)
        .checked_mul(EXTENT_SIZE)
        .and_then(|o| o.checked_add(geo.extent_offset()))
        .and_then(|o| usize::try_from(o).ok())
        .filter(|o| o.checked_add(EXTENT_SIZE as usize).is_some())
        .ok_or(Error::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        // Every length and alignment against the bitwise definition.
        let data: [u8; 40] = core::array::from_fn(|i| (i as u8).wrapping_mul(151) ^ 0x5a);
        for start in 0..8 {
            for end in start..data.len() {
                let mut crc = !0u32;
                for &b in &data[start..end] {
                    crc ^= u32::from(b);
                    for _ in 0..8 {
                        crc = (crc >> 1) ^ (0x82f6_3b78 & (crc & 1).wrapping_neg());
                    }
                }
                assert_eq!(crc32c(&data[start..end]), !crc);
            }
        }
    }

    #[test]
    fn geometry_of_two_gib() {
        let g = Geometry::new(2 << 30, Geometry::default_inodes(2 << 30)).unwrap();
        assert_eq!(g.nr_blocks, 1024);
        assert_eq!(g.inode_count, 2048);
        // 4 KiB + 1 MiB of inodes + 32 KiB of extents -> 1 block.
        assert_eq!(g.meta_blocks, 1);
        assert!(Geometry::new(2 << 20, 1).is_none());
        assert!(Geometry::new(3 << 20, 1).is_none());
        assert!(Geometry::new(4 << 20, 1).is_some());
    }
}
