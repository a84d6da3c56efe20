// SPDX-License-Identifier: GPL-2.0-only
//! guestmemfs on-memory format, shared by the kernel and host tests.
//!
//! Everything here is plain `core` Rust over byte slices and caller-owned
//! buffers: no allocation, no `unsafe`, no panics on any input (indexing
//! goes through checked accessors). Paths are relative (`super::`), never
//! `crate::`, because this module is the crate root's child in the host
//! build and a module of `fs/guestmemfs` in the kernel build.

// `is_multiple_of` needs Rust 1.87; Linux 7.3 supports Rust 1.85.
#![allow(clippy::manual_is_multiple_of)]

pub mod bitmap;
pub mod fault;
pub mod holds;
pub mod index;
pub mod layout;
pub mod locator;
pub mod meta;
pub mod validate;

pub use bitmap::BlockBitmap;
pub use index::{Index, IndexCounters, IndexSizes};
pub use layout::{Geometry, Time};
pub use meta::{BadRecord, InodeData, Meta};

/// Errors of the format code. Filesystem errors map to errnos in the
/// kernel; `Corrupt` errors are logged with their reason and refuse the
/// handed-over filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A buffer is shorter than the layout says.
    Truncated,
    /// An argument is out of range.
    Invalid,
    /// No free block.
    NoSpace,
    /// The kernel could not get memory to prepare blocks (not a full
    /// region: a transient shortage).
    NoMemory,
    /// No free inode record.
    NoInodes,
    /// No free extent record.
    NoExtents,
    /// A name is longer than `NAME_MAX`.
    NameTooLong,
    /// A name is empty, `.`, `..`, or has `/` or NUL.
    BadName,
    /// No such entry.
    NotFound,
    /// The entry exists.
    Exists,
    /// Not a directory.
    NotDir,
    /// Is a directory.
    IsDir,
    /// Directory not empty.
    NotEmpty,
    /// The file would exceed the largest size the format can address.
    TooBig,
    /// A block was marked used twice.
    Overlap(u64),
    /// A free block was freed.
    DoubleFree(u64),
    /// The metadata failed validation.
    Corrupt(Corruption),
    /// A DMA hold keeps the range (`holds`).
    Busy,
}

/// Why metadata (from the previous kernel, or damaged) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Superblock magic is not `GUESTMFS`.
    BadMagic,
    /// Format version this kernel does not know.
    BadVersion(u32),
    /// Superblock checksum mismatch.
    BadChecksum,
    /// Sizes in the superblock are inconsistent or do not match the region.
    BadGeometry,
    /// Inode record with an impossible field.
    BadInode(u64),
    /// The root inode is missing or not a directory.
    BadRoot,
    /// A parent link points outside the table, to a free inode or to a
    /// non-directory.
    BadParent(u64),
    /// Directories form a cycle through this inode.
    DirCycle(u64),
    /// Two entries of one directory have the same name.
    DuplicateName(u64),
    /// An extent link points outside the table or to a free record.
    BadExtent(u64),
    /// An extent list of this inode loops or is shared with another inode.
    ExtentCycle(u64),
    /// Extents of this inode are not in ascending, non-overlapping order.
    ExtentOrder(u64),
    /// An extent points outside the data blocks.
    BlockOutOfRange(u64),
    /// A data block is owned twice.
    OverlappingBlocks(u64),
    /// An extent record is in use but belongs to no inode.
    LeakedExtent(u64),
    /// Counters of this inode disagree with its extents.
    BadCounts(u64),
    /// Flags or reserved bytes that must be zero are not.
    NonZeroReserved,
    /// The bad-block list is too long, unsorted, names a metadata or
    /// out-of-range block, or has stale entries past its count.
    BadBlockList,
    /// The previous kernel saw a memory error in the metadata: it is not
    /// read (that could consume the error again, in the kernel).
    MetadataPoisoned,
    /// The locator and the superblock name different generations: the
    /// metadata is not the one the previous kernel published.
    GenerationMismatch {
        /// Generation in the handed-over locator.
        locator: u64,
        /// Generation in the superblock.
        superblock: u64,
    },
}

impl core::fmt::Display for Corruption {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Corruption::BadMagic => write!(f, "bad superblock magic"),
            Corruption::BadVersion(v) => write!(f, "unsupported format version {v}"),
            Corruption::BadChecksum => write!(f, "checksum mismatch"),
            Corruption::BadGeometry => write!(f, "inconsistent superblock geometry"),
            Corruption::BadInode(i) => write!(f, "inode {i} is malformed"),
            Corruption::BadRoot => write!(f, "root directory missing"),
            Corruption::BadParent(i) => write!(f, "inode {i} has an invalid parent"),
            Corruption::DirCycle(i) => write!(f, "directory cycle through inode {i}"),
            Corruption::DuplicateName(i) => write!(f, "inode {i} duplicates a name"),
            Corruption::BadExtent(i) => write!(f, "extent link {i} is invalid"),
            Corruption::ExtentCycle(i) => write!(f, "extent list of inode {i} loops or is shared"),
            Corruption::ExtentOrder(i) => write!(f, "extents of inode {i} overlap or are unsorted"),
            Corruption::BlockOutOfRange(b) => write!(f, "block {b} is out of range"),
            Corruption::OverlappingBlocks(b) => write!(f, "block {b} is used twice"),
            Corruption::LeakedExtent(e) => write!(f, "extent {e} belongs to no inode"),
            Corruption::BadCounts(i) => write!(f, "block counts of inode {i} are wrong"),
            Corruption::NonZeroReserved => write!(f, "flags or reserved bytes are not zero"),
            Corruption::BadBlockList => write!(f, "bad-block list is malformed"),
            Corruption::MetadataPoisoned => {
                write!(f, "the previous kernel saw a memory error in the metadata")
            }
            Corruption::GenerationMismatch {
                locator,
                superblock,
            } => write!(
                f,
                "generation mismatch: locator names {locator}, superblock holds {superblock}"
            ),
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Corrupt(c) => write!(f, "corrupt metadata: {c}"),
            Error::Overlap(b) => write!(f, "block {b} already in use"),
            Error::DoubleFree(b) => write!(f, "block {b} already free"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Shorthand for a corruption error.
pub(crate) fn corrupt<T>(c: Corruption) -> Result<T, Error> {
    Err(Error::Corrupt(c))
}
