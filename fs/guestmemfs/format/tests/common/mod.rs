// SPDX-License-Identifier: GPL-2.0-only
//! Helpers shared by the integration tests: index storage from the heap,
//! validation as the kernel's adoption does it, raw reads of the
//! superblock and the records (independent of the crate's decoders), and
//! random operations on an image.

// Each test crate uses a different subset.
#![allow(dead_code)]

use guestmemfs_format::bitmap::words_for;
use guestmemfs_format::layout::*;
use guestmemfs_format::validate::{self, Scratch, ScratchSizes};
use guestmemfs_format::{BlockBitmap, Error, Index, IndexCounters, IndexSizes, InodeData, Meta};

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

/// A freshly formatted image of `blocks` blocks and `inodes` inodes,
/// with its index storage.
pub(crate) fn formatted(blocks: u64, inodes: u64, now: Time) -> (Geometry, Vec<u8>, Store) {
    let geo = Geometry::new(blocks * BLOCK_SIZE, inodes).unwrap();
    let mut buf = vec![0u8; geo.meta_bytes() as usize];
    let mut st = Store::new(&geo);
    guestmemfs_format::meta::format(&mut buf, &geo, now, 1, &mut st.index()).unwrap();
    (geo, buf, st)
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
    let mut pins = vec![0u64; words_for(geo.nr_blocks)];
    let mut store = Store::sized(geo, IndexSizes::for_image(buf, geo)?);
    let inodes = {
        let blocks = BlockBitmap::new(&mut words, geo.nr_blocks)?.with_pins(&mut pins)?;
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

/// A random operation on an image. Inode arguments are picks (see
/// [`Pick`]); names are picks among [`name`]'s, from a small set so that
/// lookups hit.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Create {
        dir: u8,
        name: u8,
        is_dir: bool,
    },
    /// Evicts the unlinked inode too, when `evict` says so.
    Unlink {
        dir: u8,
        name: u8,
        evict: bool,
    },
    /// Evicts a replaced inode too, when `evict` says so.
    Rename {
        from_dir: u8,
        from: u8,
        to_dir: u8,
        to: u8,
        noreplace: bool,
        evict: bool,
    },
    Allocate {
        file: u8,
        start: u64,
        count: u64,
    },
    SetSize {
        file: u8,
        size: u64,
    },
    Evict {
        ino: u8,
    },
    Reclaim,
    /// `chmod` and `touch` as the kernel's setattr does them.
    SetAttr {
        ino: u8,
        perm: u32,
        nsec: u32,
    },
    /// Reads only: readdir, has_children and two block maps.
    Read {
        ino: u8,
        block: u64,
    },
    /// A memory error in data block `meta_blocks + block % data_blocks`:
    /// pinned and recorded as the kernel does (needs a bitmap with pins).
    Poison {
        block: u64,
    },
}

/// Strategies for the operations the tests share, one kind each, from
/// strategies for its arguments (their ranges are the test's); a test
/// mixes them with its own weights in `prop_oneof!`.
pub(crate) mod draw {
    use super::Op;
    use proptest::prelude::*;

    /// A strategy for `T`s.
    pub(crate) trait Of<T>: Strategy<Value = T> {}
    impl<S: Strategy> Of<S::Value> for S {}

    /// From (dir, name, is_dir).
    pub(crate) fn create(args: impl Of<(u8, u8, bool)>) -> impl Of<Op> {
        args.prop_map(|(dir, name, is_dir)| Op::Create { dir, name, is_dir })
    }

    /// From (dir, name, evict).
    pub(crate) fn unlink(args: impl Of<(u8, u8, bool)>) -> impl Of<Op> {
        args.prop_map(|(dir, name, evict)| Op::Unlink { dir, name, evict })
    }

    /// Both directories from `dir`, both names from `name`; whether a
    /// replaced inode is evicted is `evict` of the source name's pick.
    pub(crate) fn rename(
        dir: impl Of<u8> + Clone,
        name: impl Of<u8> + Clone,
        evict: fn(u8) -> bool,
    ) -> impl Of<Op> {
        (dir.clone(), name.clone(), dir, name, any::<bool>()).prop_map(
            move |(from_dir, from, to_dir, to, noreplace)| Op::Rename {
                from_dir,
                from,
                to_dir,
                to,
                noreplace,
                evict: evict(from),
            },
        )
    }

    /// From (file, start, count).
    pub(crate) fn allocate(args: impl Of<(u8, u64, u64)>) -> impl Of<Op> {
        args.prop_map(|(file, start, count)| Op::Allocate { file, start, count })
    }

    /// From (file, size).
    pub(crate) fn set_size(args: impl Of<(u8, u64)>) -> impl Of<Op> {
        args.prop_map(|(file, size)| Op::SetSize { file, size })
    }

    /// From a block pick.
    pub(crate) fn poison(block: impl Of<u64>) -> impl Of<Op> {
        block.prop_map(|block| Op::Poison { block })
    }
}

/// Name `n`: `n00` to `n47` (a pick below 48 is a name of its own).
pub(crate) fn name(n: u8) -> Vec<u8> {
    format!("n{:02}", n % 48).into_bytes()
}

/// Entry `n` of `list`, modulo its length; None when it is empty.
pub(crate) fn pick(list: &[u64], n: u8) -> Option<u64> {
    (!list.is_empty()).then(|| list[n as usize % list.len()])
}

/// How the inode arguments of an [`Op`] choose inodes.
pub(crate) enum Pick<'a> {
    /// Among the linked directories (the root included) and files the
    /// test listed before the operation: a directory argument picks a
    /// directory, any other a file; an operation on a file does nothing
    /// when there is none.
    Linked { dirs: &'a [u64], files: &'a [u64] },
    /// Any record: mostly one in use (of either kind, linked or orphan),
    /// else any number from 0 to one past the end of the table.
    Any,
}

impl Pick<'_> {
    fn dir(&self, m: &Meta<'_, &mut [u8]>, x: u8) -> u64 {
        match self {
            Pick::Linked { dirs, .. } => pick(dirs, x).expect("the root is linked"),
            Pick::Any => any_inode(m, x),
        }
    }

    fn file(&self, m: &Meta<'_, &mut [u8]>, x: u8) -> Option<u64> {
        match self {
            Pick::Linked { files, .. } => pick(files, x),
            Pick::Any => Some(any_inode(m, x)),
        }
    }
}

/// An inode number: mostly one in use, else any record of the table, 0 or
/// one past the end.
fn any_inode(m: &Meta<'_, &mut [u8]>, x: u8) -> u64 {
    let count = m.geometry().inode_count;
    if x < 192 {
        let used: Vec<u64> = (1..=count)
            .filter(|&i| m.inode_in_use(i).unwrap_or(false))
            .collect();
        if !used.is_empty() {
            return used[x as usize % used.len()];
        }
    }
    u64::from(x) % (count + 2)
}

/// What [`apply`] did.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The operation's result (Ok when it did nothing).
    pub(crate) result: Result<(), Error>,
    /// The inode a create made.
    pub(crate) created: Option<InodeData>,
    /// The eviction's result, when an unlink or rename freed an inode
    /// that the operation says to evict.
    pub(crate) evicted: Option<Result<(), Error>>,
}

impl Applied {
    /// Err when the operation or the eviction says the metadata is
    /// damaged (or reports a block accounting error): never right on an
    /// image that passed validation. Other errors are ordinary.
    pub(crate) fn no_damage(&self, op: &Op) -> Result<(), String> {
        let errors = [self.result.err(), self.evicted.and_then(Result::err)];
        match errors.into_iter().flatten().find(|e| {
            matches!(
                e,
                Error::Corrupt(_) | Error::Truncated | Error::Overlap(_) | Error::DoubleFree(_)
            )
        }) {
            Some(e) => Err(format!("{op:?} on a validated image: {e:?}")),
            None => Ok(()),
        }
    }

    /// Stricter, for operations on linked inodes ([`Pick::Linked`]) of a
    /// valid image: no damage, and only the errors the operation may meet
    /// there: a create's name taken or no inode free, an allocation's
    /// blocks or extents running out, an unlink's or rename's names (or
    /// rules) not allowing it. A size change and an eviction never fail.
    pub(crate) fn only_expected(&self, op: &Op) -> Result<(), String> {
        self.no_damage(op)?;
        let expected = match (op, self.result) {
            (_, Ok(())) => true,
            (Op::Create { .. }, Err(e)) => matches!(e, Error::Exists | Error::NoInodes),
            (Op::Allocate { .. }, Err(e)) => matches!(e, Error::NoSpace | Error::NoExtents),
            (Op::Unlink { .. } | Op::Rename { .. }, Err(_)) => true,
            (_, Err(_)) => false,
        };
        if expected && !matches!(self.evicted, Some(Err(_))) {
            Ok(())
        } else {
            Err(format!("{op:?}: {self:?}"))
        }
    }
}

/// Applies `op` at time `now`, its inode arguments chosen as `pick` says.
/// Errors are returned, for the test to judge; a bad time the kernel's
/// setattr would write must be refused.
pub(crate) fn apply(
    m: &mut Meta<'_, &mut [u8]>,
    bm: &mut BlockBitmap<'_>,
    op: &Op,
    pick: &Pick<'_>,
    now: Time,
) -> Applied {
    let mut created = None;
    let mut evicted = None;
    let result = match *op {
        Op::Create {
            dir,
            name: n,
            is_dir,
        } => {
            let mode = if is_dir {
                S_IFDIR | 0o755
            } else {
                S_IFREG | 0o644
            };
            m.create(pick.dir(m, dir), &name(n), mode, 1, 2, now)
                .map(|i| created = Some(i))
        }
        Op::Unlink {
            dir,
            name: n,
            evict,
        } => match m.unlink(pick.dir(m, dir), &name(n), now) {
            Ok(i) if evict => {
                evicted = Some(m.evict(i.ino, bm));
                Ok(())
            }
            res => res.map(|_| ()),
        },
        Op::Rename {
            from_dir,
            from,
            to_dir,
            to,
            noreplace,
            evict,
        } => match m.rename(
            pick.dir(m, from_dir),
            &name(from),
            pick.dir(m, to_dir),
            &name(to),
            noreplace,
            now,
        ) {
            Ok(Some(old)) if evict => {
                evicted = Some(m.evict(old.ino, bm));
                Ok(())
            }
            res => res.map(|_| ()),
        },
        Op::Allocate { file, start, count } => pick
            .file(m, file)
            .map_or(Ok(()), |f| m.allocate(f, start, count, bm)),
        Op::SetSize { file, size } => pick
            .file(m, file)
            .map_or(Ok(()), |f| m.set_size(f, size, now, bm)),
        Op::Evict { ino } => pick.file(m, ino).map_or(Ok(()), |i| m.evict(i, bm)),
        Op::Reclaim => m.reclaim_orphans(bm).map(|_| ()),
        Op::SetAttr { ino, perm, nsec } => pick.file(m, ino).map_or(Ok(()), |ino| {
            m.inode(ino).and_then(|mut i| {
                i.mode = (i.mode & S_IFMT) | (perm & 0o7777);
                i.mtime = Time { sec: -5, nsec };
                let res = m.write_inode(&i);
                if nsec >= 1_000_000_000 {
                    assert_eq!(res, Err(Error::Invalid), "bad time written");
                }
                res
            })
        }),
        Op::Read { ino, block } => {
            if let Some(ino) = pick.file(m, ino) {
                let _ = m.readdir(ino, 0);
                let _ = m.has_children(ino);
                let _ = m.map(ino, block);
                let _ = m.map(ino, block % 64);
            }
            Ok(())
        }
        Op::Poison { block } => {
            let g = *m.geometry();
            let b = g.meta_blocks + block % g.data_blocks().max(1);
            bm.pin(b).and_then(|_| m.record_bad(b)).map(|_| ())
        }
    };
    Applied {
        result,
        created,
        evicted,
    }
}
