// SPDX-License-Identifier: GPL-2.0-only
//! Helpers shared by the integration tests: index storage from the heap,
//! validation as the kernel's adoption does it, and raw reads of the
//! superblock and the records (independent of the crate's decoders).

// Each test crate uses a different subset.
#![allow(dead_code)]

use guestmemfs_format::bitmap::words_for;
use guestmemfs_format::layout::*;
use guestmemfs_format::validate::{self, Scratch, ScratchSizes};
use guestmemfs_format::{BlockBitmap, Error, Index, IndexCounters, IndexSizes};

/// The seed of the name hash in tests.
pub(crate) const SEED: [u64; 2] = [0x0123_4567_89ab_cdef, 0xfeed_f00d];

/// Superblock offsets of the fields version 2 added.
pub(crate) const SB_VERSION: usize = 8;
pub(crate) const SB_INODE_HWM: usize = 96;
pub(crate) const SB_EXTENT_HWM: usize = 104;
pub(crate) const SB_CHECKSUM: usize = 4092;

/// Storage of one index.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) words: Vec<u64>,
    pub(crate) counters: IndexCounters,
    pub(crate) geo: Geometry,
}

impl Store {
    /// Unbuilt storage for every inode record of `geo`.
    pub(crate) fn new(geo: &Geometry) -> Store {
        Store::sized(geo, IndexSizes::for_geometry(geo))
    }

    /// Unbuilt storage of `sizes`.
    pub(crate) fn sized(geo: &Geometry, sizes: IndexSizes) -> Store {
        Store {
            words: vec![0; sizes.words],
            counters: IndexCounters::new(SEED),
            geo: *geo,
        }
    }

    /// The index over this storage.
    pub(crate) fn index(&mut self) -> Index<'_> {
        Index::new(&mut self.words, &mut self.counters, &self.geo).unwrap()
    }

    /// What the kernel does before each operation: moves the index to
    /// larger storage if one more inode would not fit. True if it grew.
    pub(crate) fn grow(&mut self) -> bool {
        let Some(sizes) = IndexSizes::to_grow(&self.geo, &self.counters) else {
            return false;
        };
        // Not zeroed: what is not copied must never be read.
        let mut words = vec![0xdead_beef_dead_beef; sizes.words];
        self.index().grow_into(&mut words).unwrap();
        self.words = words;
        true
    }
}

/// Both validation steps as the kernel's adoption runs them, with scratch
/// and index storage sized by the image's high-water marks: the built
/// index, the rebuilt block bitmap's words, and the inodes in use.
pub(crate) fn adopt(buf: &[u8], region_size: u64) -> Result<(Store, Vec<u64>, u64), Error> {
    let geo = validate::superblock(buf, region_size)?;
    let (store, words, inodes) = contents(buf, &geo)?;
    Ok((store, words, inodes))
}

/// The second validation step alone.
pub(crate) fn contents(buf: &[u8], geo: &Geometry) -> Result<(Store, Vec<u64>, u64), Error> {
    let s = ScratchSizes::for_image(buf, geo)?;
    let mut marks = vec![0u8; s.inode_marks];
    let mut subdirs = vec![0u32; s.subdirs];
    let mut words = vec![0u64; words_for(geo.nr_blocks)];
    let mut store = Store::sized(geo, IndexSizes::for_image(buf, geo)?);
    let inodes = {
        let blocks = BlockBitmap::new(&mut words, geo.nr_blocks)?;
        let mut scratch = Scratch {
            inode_marks: &mut marks,
            subdirs: &mut subdirs,
            blocks,
        };
        validate::contents(buf, geo, &mut scratch, &mut store.index())?
    };
    Ok((store, words, inodes))
}

/// Used blocks of bitmap words.
pub(crate) fn used_blocks(words: &[u64]) -> u64 {
    words.iter().map(|w| u64::from(w.count_ones())).sum()
}

pub(crate) fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().unwrap())
}

pub(crate) fn get_u64(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().unwrap())
}

pub(crate) fn set_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn set_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Rewrites the superblock checksum.
pub(crate) fn reseal(buf: &mut [u8]) {
    let sum = crc32c(&buf[..SB_CHECKSUM]);
    set_u32(buf, SB_CHECKSUM, sum);
}

/// Byte offset of inode record `ino`.
pub(crate) fn inode_off(ino: u64) -> usize {
    (INODE_OFFSET + (ino - 1) * INODE_SIZE) as usize
}

/// Byte offset of extent record `id`.
pub(crate) fn extent_off(geo: &Geometry, id: u64) -> usize {
    (geo.extent_offset() + (id - 1) * EXTENT_SIZE) as usize
}

/// The high-water marks a superblock states (the table sizes for
/// version 1).
pub(crate) fn marks(buf: &[u8], geo: &Geometry) -> (u64, u64) {
    if get_u32(buf, SB_VERSION) == 1 {
        (geo.inode_count, geo.extent_count)
    } else {
        (get_u64(buf, SB_INODE_HWM), get_u64(buf, SB_EXTENT_HWM))
    }
}

/// Inode records in use by the format's definition: at or below the
/// mark, in-use flag set.
pub(crate) fn inodes_in_use(buf: &[u8], geo: &Geometry) -> Vec<u64> {
    let (hwm, _) = marks(buf, geo);
    (1..=hwm.min(geo.inode_count))
        .filter(|&i| get_u32(buf, inode_off(i)) & 1 != 0)
        .collect()
}

/// Extent records in use by the format's definition.
pub(crate) fn extents_in_use(buf: &[u8], geo: &Geometry) -> Vec<u64> {
    let (_, hwm) = marks(buf, geo);
    (1..=hwm.min(geo.extent_count))
        .filter(|&e| get_u32(buf, extent_off(geo, e)) & 1 != 0)
        .collect()
}

/// A linked entry read raw: (ino, parent, name, is_dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) ino: u64,
    pub(crate) parent: u64,
    pub(crate) name: Vec<u8>,
    pub(crate) is_dir: bool,
}

/// Every linked entry (in-use inode other than the root with links).
pub(crate) fn entries(buf: &[u8], geo: &Geometry) -> Vec<Entry> {
    inodes_in_use(buf, geo)
        .into_iter()
        .filter(|&i| i != ROOT_INO && get_u32(buf, inode_off(i) + 16) > 0)
        .map(|i| {
            let off = inode_off(i);
            let len = get_u32(buf, off + 20) as usize;
            Entry {
                ino: i,
                parent: get_u64(buf, off + 32),
                name: buf[off + 128..off + 128 + len].to_vec(),
                is_dir: get_u32(buf, off + 4) & S_IFMT == S_IFDIR,
            }
        })
        .collect()
}
