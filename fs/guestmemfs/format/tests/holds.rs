// SPDX-License-Identifier: GPL-2.0-only
//! DMA holds against a block model: random holds, releases, size
//! changes, unlinks with eviction and allocations by other files. While
//! a hold exists, the physical runs it reported back its range, owned by
//! the same file at the same offsets and never free; a size change into a
//! hold fails; an evicted inode keeps its blocks until its last release.
//!
//! Live update against a model of the files: preserved holds, the flags
//! the freeze writes, boot holds after a kexec, holds by inode number and
//! generation, the handover's resolution; and the validator on random
//! inode flags of every version.

mod common;

use common::*;
use guestmemfs_format::holds::{self, Hold, Refusal};
use guestmemfs_format::layout::*;
use guestmemfs_format::validate;
use guestmemfs_format::{BlockBitmap, Corruption, Error, Meta};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const T: Time = Time { sec: 7, nsec: 0 };
const MIB: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Op {
    /// Create file `n` of `blocks` blocks, partly allocated.
    Create {
        n: u8,
        blocks: u8,
        alloc: u8,
    },
    /// Hold pages `[first, first + pages)` of file `n`, filling holes.
    Hold {
        n: u8,
        first: u16,
        pages: u16,
    },
    Release {
        pick: u8,
    },
    /// Set file `n`'s size to `size` bytes, as the kernel does (checked).
    SetSize {
        n: u8,
        size: u32,
    },
    /// Unlink file `n` and evict it (last reference gone).
    UnlinkEvict {
        n: u8,
    },
    /// Another file takes `blocks` free blocks.
    Grab {
        blocks: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 1u8..12, 0u8..12).prop_map(|(n, blocks, alloc)| Op::Create { n, blocks, alloc }),
        (0u8..4, 0u16..6000, 1u16..3000).prop_map(|(n, first, pages)| Op::Hold { n, first, pages }),
        any::<u8>().prop_map(|pick| Op::Release { pick }),
        (0u8..4, any::<u32>()).prop_map(|(n, size)| Op::SetSize {
            n,
            size: size % (24 << 20)
        }),
        (0u8..4).prop_map(|n| Op::UnlinkEvict { n }),
        (1u8..8).prop_map(|blocks| Op::Grab { blocks }),
    ]
}

/// A live hold and the runs it reported.
struct Live {
    hold: Hold,
    runs: Vec<(u64, u64)>,
}

fn runs_of(m: &Meta<'_, &mut [u8]>, h: &Hold) -> Result<Vec<(u64, u64)>, Error> {
    let mut v = Vec::new();
    // A small maximum run length exercises the splitting (1 GiB minimum).
    holds::phys_runs(m, h.ino, h.start, h.end, 1 << 30, |p, l| v.push((p, l)))?;
    Ok(v)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn held_blocks_stay_in_place(ops in prop::collection::vec(op(), 1..80)) {
        let (geo, mut buf, mut st) = formatted(64, 32, T);
        let mut words = vec![0u64; 1];
        let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        // File n's inode, if linked.
        let mut files: [Option<u64>; 4] = [None; 4];
        let mut live: Vec<Live> = Vec::new();
        let mut holds_v: Vec<Hold> = Vec::new();
        let mut next_id = 1;
        let (mut grabbed, mut grabs_ok) = (0u32, 0u64);
        for op in ops {
            let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
            match op {
                Op::Create { n, blocks, alloc } => {
                    if files[n as usize].is_some() {
                        continue;
                    }
                    let name = format!("f{n}");
                    let Ok(i) = m.create(ROOT_INO, name.as_bytes(), S_IFREG | 0o600, 0, 0, T) else {
                        continue;
                    };
                    m.set_size(i.ino, u64::from(blocks) * BLOCK_SIZE, T, &mut bm).unwrap();
                    let _ = m.allocate(i.ino, 0, u64::from(alloc.min(blocks)), &mut bm);
                    files[n as usize] = Some(i.ino);
                }
                Op::Hold { n, first, pages } => {
                    let Some(ino) = files[n as usize] else { continue };
                    let size = m.inode(ino).unwrap().size;
                    let (start, len) = (u64::from(first) * 4096, u64::from(pages) * 4096);
                    let Ok(end) = holds::check_range(start, len, size) else {
                        prop_assert!(start + len > size, "a valid range refused");
                        continue;
                    };
                    // Fill holes as the kernel does at hold time.
                    let (fb, lb) = (start / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
                    if m.allocate(ino, fb, lb - fb, &mut bm).is_err() {
                        continue;
                    }
                    let igen = m.inode(ino).unwrap().generation;
                    let hold = Hold::new(&holds_v, next_id, ino, igen, start, end);
                    next_id += 1;
                    let runs = runs_of(&m, &hold).unwrap();
                    prop_assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), len);
                    holds_v.push(hold);
                    live.push(Live { hold, runs });
                }
                Op::Release { pick } => {
                    if live.is_empty() {
                        continue;
                    }
                    let l = live.remove(pick as usize % live.len());
                    let at = holds_v.iter().position(|h| h.id == l.hold.id).unwrap();
                    let released = holds_v.remove(at);
                    if holds::evict_after_release(&holds_v, &released) {
                        m.evict(released.ino, &mut bm).unwrap();
                    }
                }
                Op::SetSize { n, size } => {
                    let Some(ino) = files[n as usize] else { continue };
                    let size = u64::from(size);
                    let allowed = holds::check_size(&holds_v, ino, size);
                    let end = holds::held_end(&holds_v, ino);
                    prop_assert_eq!(allowed.is_ok(), size >= end);
                    if allowed.is_ok() {
                        m.set_size(ino, size, T, &mut bm).unwrap();
                    }
                }
                Op::UnlinkEvict { n } => {
                    let Some(ino) = files[n as usize].take() else { continue };
                    let name = format!("f{n}");
                    m.unlink(ROOT_INO, name.as_bytes(), T).unwrap();
                    if !holds::defer_evict(&mut holds_v, ino) {
                        m.evict(ino, &mut bm).unwrap();
                    }
                    for l in live.iter_mut().filter(|l| l.hold.ino == ino) {
                        l.hold.evict_pending = true;
                    }
                }
                Op::Grab { blocks } => {
                    let name = format!("g{grabbed}");
                    grabbed += 1;
                    if let Ok(i) = m.create(ROOT_INO, name.as_bytes(), S_IFREG | 0o600, 0, 0, T) {
                        grabs_ok += 1;
                        m.set_size(i.ino, u64::from(blocks) * BLOCK_SIZE, T, &mut bm).unwrap();
                        let _ = m.allocate(i.ino, 0, u64::from(blocks), &mut bm);
                    }
                }
            }
            // Every live hold: same runs, blocks used, owned by its file.
            for l in &live {
                let now = runs_of(&m, &l.hold).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                prop_assert_eq!(&now, &l.runs, "hold {:?} moved", l.hold);
                for &(p, len) in &l.runs {
                    for b in p / BLOCK_SIZE..(p + len).div_ceil(BLOCK_SIZE) {
                        prop_assert!(bm.is_used(b), "held block {} free", b);
                        let owner = m.owner_of(b).unwrap().map(|o| o.0);
                        prop_assert_eq!(owner, Some(l.hold.ino), "held block {} owner", b);
                    }
                }
            }
        }
        // Releasing everything frees every evicted file's blocks.
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        while let Some(released) = holds_v.pop() {
            if holds::evict_after_release(&holds_v, &released) {
                m.evict(released.ino, &mut bm).unwrap();
            }
        }
        // Left: the root, the linked files and the grabbers; no orphan.
        let linked = files.iter().flatten().count() as u64;
        prop_assert_eq!(m.inodes_used().unwrap(), 1 + linked + grabs_ok);
    }
}

#[test]
fn runs_merge_and_split() {
    let (geo, mut buf, mut st) = formatted(2048, 32, T);
    let mut words = vec![0u64; 32];
    let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
    bm.mark_used(0, 512).unwrap();
    let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
    let i = m
        .create(ROOT_INO, b"big", S_IFREG | 0o600, 0, 0, T)
        .unwrap();
    m.set_size(i.ino, 1024 * BLOCK_SIZE, T, &mut bm).unwrap();
    // Two extents, physically adjacent (allocated in two calls).
    m.allocate(i.ino, 0, 512, &mut bm).unwrap();
    m.allocate(i.ino, 512, 512, &mut bm).unwrap();
    let mut v = Vec::new();
    let n = holds::phys_runs(&m, i.ino, 0, 1024 * BLOCK_SIZE, u64::MAX, |p, l| {
        v.push((p, l))
    })
    .unwrap();
    assert_eq!(
        (n, v.clone()),
        (1, vec![(512 * BLOCK_SIZE, 1024 * BLOCK_SIZE)])
    );
    v.clear();
    holds::phys_runs(&m, i.ino, 4096, 1024 * BLOCK_SIZE, 1 << 30, |p, l| {
        v.push((p, l))
    })
    .unwrap();
    assert_eq!(
        v,
        vec![
            (512 * BLOCK_SIZE + 4096, 1 << 30),
            (512 * BLOCK_SIZE + 4096 + (1 << 30), (1 << 30) - 4096)
        ]
    );
    // A hole: NotFound.
    let j = m
        .create(ROOT_INO, b"sparse", S_IFREG | 0o600, 0, 0, T)
        .unwrap();
    m.set_size(j.ino, 4 * MIB, T, &mut bm).unwrap();
    m.allocate(j.ino, 1, 1, &mut bm).unwrap();
    assert_eq!(
        holds::phys_runs(&m, j.ino, 0, 4 * MIB, u64::MAX, |_, _| {}),
        Err(Error::NotFound)
    );
    assert_eq!(
        holds::phys_runs(&m, j.ino, 2 * MIB, 4 * MIB, u64::MAX, |_, _| {}),
        Ok(1)
    );
    assert_eq!(holds::check_range(1, 4096, 8192), Err(Error::Invalid));
    assert_eq!(holds::check_range(0, 0, 8192), Err(Error::Invalid));
    assert_eq!(holds::check_range(4096, 8192, 8192), Err(Error::Invalid));
    assert_eq!(holds::check_range(4096, 4096, 8192), Ok(8192));
}

/// A live update step.
#[derive(Debug, Clone)]
enum Lu {
    /// Create file `n` of `blocks` blocks, `alloc` of them allocated.
    Create {
        n: u8,
        blocks: u8,
        alloc: u8,
    },
    /// Hold pages of linked file `n`, filling holes (`MAP_FILE`).
    Hold {
        n: u8,
        first: u16,
        pages: u16,
    },
    /// Hold pages by inode number and generation (restore path): an
    /// inode of the model (`target` below 200) or any number, with its
    /// generation or a wrong one; `fit` folds the range into the file.
    HoldId {
        target: u8,
        stale: bool,
        fit: bool,
        first: u16,
        pages: u16,
    },
    /// Restore a mapping preserved before the last kexec.
    Restore {
        pick: u8,
    },
    Release {
        pick: u8,
    },
    Preserve {
        pick: u8,
        on: bool,
    },
    SetSize {
        n: u8,
        size: u32,
    },
    UnlinkEvict {
        n: u8,
    },
    Grab {
        blocks: u8,
    },
    /// Freeze (flags written), then the next kernel's adoption.
    Kexec,
    /// The IOMMU side says the handover is resolved.
    Done,
}

fn lu() -> impl Strategy<Value = Lu> {
    let range = (0u16..6000, 1u16..3000);
    prop_oneof![
        3 => (0u8..4, 1u8..12, 0u8..12)
            .prop_map(|(n, blocks, alloc)| Lu::Create { n, blocks, alloc }),
        3 => (0u8..4, range.clone()).prop_map(|(n, (first, pages))| Lu::Hold { n, first, pages }),
        4 => (any::<u8>(), prop::bool::weighted(0.2), any::<bool>(), range).prop_map(
            |(target, stale, fit, (first, pages))| Lu::HoldId {
                target,
                stale,
                fit,
                first,
                pages
            }
        ),
        2 => any::<u8>().prop_map(|pick| Lu::Restore { pick }),
        2 => any::<u8>().prop_map(|pick| Lu::Release { pick }),
        4 => (any::<u8>(), prop::bool::weighted(0.8))
            .prop_map(|(pick, on)| Lu::Preserve { pick, on }),
        2 => (0u8..4, any::<u32>())
            .prop_map(|(n, size)| Lu::SetSize { n, size: size % (24 << 20) }),
        2 => (0u8..4).prop_map(|n| Lu::UnlinkEvict { n }),
        1 => (1u8..8).prop_map(|blocks| Lu::Grab { blocks }),
        1 => Just(Lu::Kexec),
        1 => Just(Lu::Done),
    ]
}

/// The model of one regular file.
#[derive(Debug, Clone)]
struct MFile {
    igen: u64,
    size: u64,
    linked: bool,
    /// File blocks with a block.
    backed: BTreeSet<u64>,
}

/// A hold the caller (iommufd) owns, with what it was told.
#[derive(Debug, Clone)]
struct Caller {
    hold: Hold,
    runs: Vec<(u64, u64)>,
    preserved: bool,
}

/// A mapping handed over: its id and its runs in the previous kernel.
#[derive(Debug, Clone)]
struct Handed {
    ino: u64,
    igen: u64,
    start: u64,
    len: u64,
    runs: Vec<(u64, u64)>,
}

/// One kernel's view (the crate's hold list and the image) and the model.
struct Sim {
    geo: Geometry,
    buf: Vec<u8>,
    st: Store,
    words: Vec<u64>,
    /// The volume's list: caller holds and boot holds.
    list: Vec<Hold>,
    next_id: u64,
    /// Linked names `f0`..`f3`.
    files: [Option<u64>; 4],
    grabbed: u32,
    callers: Vec<Caller>,
    handed: Vec<Handed>,
    /// Model: the regular files in use.
    inodes: BTreeMap<u64, MFile>,
    /// Model: boot holds, with the file's size at adoption and its
    /// blocks then (file block, region block).
    boot: BTreeMap<u64, (u64, Vec<(u64, u64)>)>,
    /// Model: the handover is not resolved.
    pending: bool,
    kexecs: u32,
}

/// What the model says a hold by id gives.
fn predict(
    inodes: &BTreeMap<u64, MFile>,
    ino: u64,
    igen: u64,
    start: u64,
    len: u64,
) -> Result<(), Refusal> {
    if ino == ROOT_INO {
        // The root directory has generation 0.
        return Err(if igen != 0 {
            Refusal::Stale
        } else {
            Refusal::Invalid
        });
    }
    let f = inodes.get(&ino).ok_or(Refusal::NotInUse)?;
    if f.igen != igen {
        return Err(Refusal::Stale);
    }
    let end = start.checked_add(len).ok_or(Refusal::Invalid)?;
    if len == 0 || start % 4096 != 0 || len % 4096 != 0 || end > f.size {
        return Err(Refusal::Invalid);
    }
    if (start / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE)).any(|b| !f.backed.contains(&b)) {
        return Err(Refusal::Hole);
    }
    Ok(())
}

/// Extents of `ino` as (file block, region block) per block.
fn block_map(m: &Meta<'_, &mut [u8]>, ino: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    for e in m.extents(ino).unwrap() {
        let e = e.unwrap();
        v.extend((0..e.count).map(|k| (e.file_block + k, e.phys_block + k)));
    }
    v
}

fn fail(e: impl std::fmt::Debug) -> TestCaseError {
    TestCaseError::fail(format!("{e:?}"))
}

impl Sim {
    fn new() -> Sim {
        let (geo, buf, st) = formatted(64, 32, T);
        let mut words = vec![0u64; 1];
        BlockBitmap::new(&mut words, geo.nr_blocks)
            .unwrap()
            .mark_used(0, geo.meta_blocks)
            .unwrap();
        Sim {
            geo,
            buf,
            st,
            words,
            list: Vec::new(),
            next_id: 1,
            files: [None; 4],
            grabbed: 0,
            callers: Vec::new(),
            handed: Vec::new(),
            inodes: BTreeMap::new(),
            boot: BTreeMap::new(),
            pending: false,
            kexecs: 0,
        }
    }

    /// A caller hold on `[start, end)` of `ino`, taken now.
    fn push_hold(&mut self, ino: u64, igen: u64, start: u64, end: u64, runs: Vec<(u64, u64)>) {
        let hold = Hold::new(&self.list, self.next_id, ino, igen, start, end);
        self.next_id += 1;
        self.list.push(hold);
        self.callers.push(Caller {
            hold,
            runs,
            preserved: false,
        });
    }

    fn step(&mut self, op: &Lu) -> Result<(), TestCaseError> {
        let geo = self.geo;
        if let Lu::Kexec = op {
            return self.kexec();
        }
        let mut bm = BlockBitmap::attach(&mut self.words, geo.nr_blocks).unwrap();
        let mut m = Meta::new(&mut self.buf[..], geo, self.st.index()).unwrap();
        match *op {
            Lu::Create { n, blocks, alloc } => {
                if self.files[n as usize].is_some() {
                    return Ok(());
                }
                let name = format!("f{n}");
                let Ok(i) = m.create(ROOT_INO, name.as_bytes(), S_IFREG | 0o600, 0, 0, T) else {
                    return Ok(());
                };
                let size = u64::from(blocks) * BLOCK_SIZE;
                m.set_size(i.ino, size, T, &mut bm).unwrap();
                let alloc = u64::from(alloc.min(blocks));
                let backed = match m.allocate(i.ino, 0, alloc, &mut bm) {
                    Ok(()) => (0..alloc).collect(),
                    Err(e) => {
                        prop_assert_eq!(e, Error::NoSpace);
                        prop_assert_eq!(m.inode(i.ino).unwrap().blocks, 0);
                        BTreeSet::new()
                    }
                };
                let f = MFile {
                    igen: i.generation,
                    size,
                    linked: true,
                    backed,
                };
                self.inodes.insert(i.ino, f);
                self.files[n as usize] = Some(i.ino);
            }
            Lu::Hold { n, first, pages } => {
                let Some(ino) = self.files[n as usize] else {
                    return Ok(());
                };
                let i = m.inode(ino).unwrap();
                let (start, len) = (u64::from(first) * 4096, u64::from(pages) * 4096);
                let Ok(end) = holds::check_range(start, len, i.size) else {
                    return Ok(());
                };
                let (fb, lb) = (start / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
                let before = i.blocks;
                if let Err(e) = m.allocate(ino, fb, lb - fb, &mut bm) {
                    prop_assert_eq!(e, Error::NoSpace);
                    prop_assert_eq!(m.inode(ino).unwrap().blocks, before);
                    return Ok(());
                }
                self.inodes.get_mut(&ino).unwrap().backed.extend(fb..lb);
                let mut runs = Vec::new();
                holds::phys_runs(&m, ino, start, end, 1 << 30, |p, l| runs.push((p, l)))
                    .map_err(fail)?;
                self.push_hold(ino, i.generation, start, end, runs);
            }
            Lu::HoldId {
                target,
                stale,
                fit,
                first,
                pages,
            } => {
                let (ino, igen) = if target < 200 && !self.inodes.is_empty() {
                    let (&ino, f) = self
                        .inodes
                        .iter()
                        .nth(target as usize % self.inodes.len())
                        .unwrap();
                    (ino, f.igen)
                } else {
                    let ino = u64::from(target) % (geo.inode_count + 2);
                    (ino, self.inodes.get(&ino).map_or(0, |f| f.igen))
                };
                let igen = igen + u64::from(stale);
                let (mut first, mut pages) = (u64::from(first), u64::from(pages));
                if let Some(f) = self.inodes.get(&ino).filter(|_| fit) {
                    let in_file = (f.size / 4096).max(1);
                    first %= in_file;
                    pages = pages % (in_file - first).max(1) + 1;
                }
                let (start, len) = (first * 4096, pages * 4096);
                let want = predict(&self.inodes, ino, igen, start, len);
                let got = holds::check_id(&m, ino, igen, start, len, 1 << 30);
                prop_assert_eq!(
                    got.map(|_| ()),
                    want,
                    "hold_id {} {} {}+{}",
                    ino,
                    igen,
                    start,
                    len
                );
                if let Ok((end, n)) = got {
                    let mut runs = Vec::new();
                    holds::phys_runs(&m, ino, start, end, 1 << 30, |p, l| runs.push((p, l)))
                        .map_err(fail)?;
                    prop_assert_eq!(runs.len() as u64, n);
                    self.push_hold(ino, igen, start, end, runs);
                }
            }
            Lu::Restore { pick } => {
                if self.handed.is_empty() {
                    return Ok(());
                }
                let h = self.handed.remove(pick as usize % self.handed.len());
                // Until the handover is resolved, a boot hold keeps it.
                prop_assert!(self.boot.contains_key(&h.ino));
                let got = holds::check_id(&m, h.ino, h.igen, h.start, h.len, 1 << 30);
                let (end, _) = got.map_err(|e| fail(format!("restore {h:?}: {e:?}")))?;
                let mut runs = Vec::new();
                holds::phys_runs(&m, h.ino, h.start, end, 1 << 30, |p, l| runs.push((p, l)))
                    .map_err(fail)?;
                prop_assert_eq!(&runs, &h.runs, "restored runs differ");
                self.push_hold(h.ino, h.igen, h.start, end, runs);
            }
            Lu::Release { pick } => {
                if self.callers.is_empty() {
                    return Ok(());
                }
                let c = self.callers.remove(pick as usize % self.callers.len());
                let at = holds::find(&self.list, c.hold.id).unwrap();
                let released = self.list.remove(at);
                if holds::evict_after_release(&self.list, &released) {
                    m.evict(released.ino, &mut bm).unwrap();
                    self.inodes.remove(&released.ino);
                }
            }
            Lu::Preserve { pick, on } => {
                if self.callers.is_empty() {
                    // Boot holds have no caller: never found.
                    prop_assert_eq!(
                        holds::set_preserved(&mut self.list, 0, on),
                        Err(Error::Invalid)
                    );
                    return Ok(());
                }
                let k = pick as usize % self.callers.len();
                let id = self.callers[k].hold.id;
                holds::set_preserved(&mut self.list, id, on).map_err(fail)?;
                self.callers[k].preserved = on;
            }
            Lu::SetSize { n, size } => {
                let Some(ino) = self.files[n as usize] else {
                    return Ok(());
                };
                let size = u64::from(size);
                let callers = self.callers.iter().filter(|c| c.hold.ino == ino);
                let bound = callers
                    .map(|c| c.hold.end)
                    .chain(self.boot.get(&ino).map(|b| b.0))
                    .max()
                    .unwrap_or(0);
                let allowed = holds::check_size(&self.list, ino, size);
                prop_assert_eq!(
                    allowed.is_ok(),
                    size >= bound,
                    "size {} bound {}",
                    size,
                    bound
                );
                if allowed.is_ok() {
                    m.set_size(ino, size, T, &mut bm).unwrap();
                    let f = self.inodes.get_mut(&ino).unwrap();
                    f.size = size;
                    let keep = size.div_ceil(BLOCK_SIZE);
                    f.backed.retain(|&b| b < keep);
                }
            }
            Lu::UnlinkEvict { n } => {
                let Some(ino) = self.files[n as usize].take() else {
                    return Ok(());
                };
                m.unlink(ROOT_INO, format!("f{n}").as_bytes(), T).unwrap();
                if holds::defer_evict(&mut self.list, ino) {
                    self.inodes.get_mut(&ino).unwrap().linked = false;
                } else {
                    m.evict(ino, &mut bm).unwrap();
                    self.inodes.remove(&ino);
                }
            }
            Lu::Grab { blocks } => {
                let name = format!("g{}", self.grabbed);
                self.grabbed += 1;
                if let Ok(i) = m.create(ROOT_INO, name.as_bytes(), S_IFREG | 0o600, 0, 0, T) {
                    let size = u64::from(blocks) * BLOCK_SIZE;
                    m.set_size(i.ino, size, T, &mut bm).unwrap();
                    let backed = match m.allocate(i.ino, 0, u64::from(blocks), &mut bm) {
                        Ok(()) => (0..u64::from(blocks)).collect(),
                        Err(_) => BTreeSet::new(),
                    };
                    let f = MFile {
                        igen: i.generation,
                        size,
                        linked: true,
                        backed,
                    };
                    self.inodes.insert(i.ino, f);
                }
            }
            Lu::Done => {
                // As gmfs_rs_dma_handover_done; twice changes nothing.
                for _ in 0..2 {
                    self.pending = false;
                    while let Some(at) = holds::next_boot(&self.list) {
                        let h = self.list.remove(at);
                        if holds::evict_after_release(&self.list, &h) {
                            m.evict(h.ino, &mut bm).unwrap();
                            self.inodes.remove(&h.ino);
                        }
                    }
                }
                self.boot.clear();
                self.handed.clear();
            }
            Lu::Kexec => unreachable!(),
        }
        Ok(())
    }

    /// The freeze writes the flags; the next kernel validates the image
    /// and adopts it as `Inner::adopt` does.
    fn kexec(&mut self) -> Result<(), TestCaseError> {
        let geo = self.geo;
        let preserved = self.callers.iter().filter(|c| c.preserved);
        let flagged: BTreeSet<u64> = preserved
            .map(|c| c.hold.ino)
            .chain(self.boot.keys().copied())
            .collect();
        {
            let mut m = Meta::new(&mut self.buf[..], geo, self.st.index()).unwrap();
            let n = m
                .set_dma_held(|ino| holds::keep_for_next_kernel(&self.list, ino))
                .map_err(fail)?;
            prop_assert_eq!(n, flagged.len() as u64);
        }
        // On disk: exactly those inodes, with the version that allows it.
        let on_disk: BTreeSet<u64> = inodes_in_use(&self.buf, &geo)
            .into_iter()
            .filter(|&i| get_u32(&self.buf, inode_off(i)) & FLAG_DMA_HELD != 0)
            .collect();
        prop_assert_eq!(&on_disk, &flagged);
        prop_assert_eq!(get_u32(&self.buf, SB_VERSION), VERSION);
        // The mappings handed over: the preserved ones, and those of the
        // previous handover not restored yet (their files stay flagged).
        for c in self.callers.iter().filter(|c| c.preserved) {
            self.handed.push(Handed {
                ino: c.hold.ino,
                igen: c.hold.igen,
                start: c.hold.start,
                len: c.hold.end - c.hold.start,
                runs: c.runs.clone(),
            });
        }
        // The next kernel.
        let (st, words, inodes) = adopt(&self.buf, geo.region_size).map_err(fail)?;
        prop_assert_eq!(inodes, 1 + self.inodes.len() as u64);
        self.st = st;
        self.words = words;
        let mut bm = BlockBitmap::attach(&mut self.words, geo.nr_blocks).unwrap();
        let mut m = Meta::new(&mut self.buf[..], geo, self.st.index()).unwrap();
        let mut boot = Vec::new();
        let n = holds::boot_holds(&m, |h| {
            boot.push(h);
            Ok(())
        })
        .map_err(fail)?;
        prop_assert_eq!(n, flagged.len() as u64);
        m.reclaim_orphans_except(&mut bm, |ino| holds::is_held(&boot, ino))
            .map_err(fail)?;
        let g = m.generation().unwrap();
        m.set_generation(g + 1).unwrap();
        // The model: orphans without a boot hold are gone, the others
        // are held whole, with their blocks of now.
        self.inodes
            .retain(|ino, f| f.linked || flagged.contains(ino));
        self.boot.clear();
        for h in &boot {
            let f = &self.inodes[&h.ino];
            prop_assert!(h.boot && h.start == 0 && h.end == f.size && h.igen == f.igen);
            prop_assert_eq!(h.evict_pending, !f.linked);
            self.boot.insert(h.ino, (f.size, block_map(&m, h.ino)));
        }
        prop_assert_eq!(self.boot.keys().copied().collect::<BTreeSet<_>>(), flagged);
        self.pending = !boot.is_empty();
        self.list = boot;
        self.callers.clear();
        self.handed.retain(|h| self.boot.contains_key(&h.ino));
        self.kexecs += 1;
        Ok(())
    }

    /// What must hold after every step.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let geo = self.geo;
        let bm = BlockBitmap::attach(&mut self.words, geo.nr_blocks).unwrap();
        let m = Meta::new(&mut self.buf[..], geo, self.st.index()).unwrap();
        // Caller holds: same runs, blocks used, owned by their file.
        for c in &self.callers {
            let mut now = Vec::new();
            holds::phys_runs(&m, c.hold.ino, c.hold.start, c.hold.end, 1 << 30, |p, l| {
                now.push((p, l))
            })
            .map_err(fail)?;
            prop_assert_eq!(&now, &c.runs, "hold {:?} moved", c.hold);
            for &(p, len) in &c.runs {
                for b in p / BLOCK_SIZE..(p + len).div_ceil(BLOCK_SIZE) {
                    prop_assert!(bm.is_used(b), "held block {} free", b);
                    let owner = m.owner_of(b).unwrap().map(|o| o.0);
                    prop_assert_eq!(owner, Some(c.hold.ino), "held block {} owner", b);
                }
            }
        }
        // Boot holds: every block the file had at adoption is still there.
        for (&ino, (_, blocks)) in &self.boot {
            for &(fb, phys) in blocks {
                let e = m.map(ino, fb).unwrap().ok_or_else(|| fail((ino, fb)))?;
                prop_assert_eq!(e.phys_block + (fb - e.file_block), phys);
                prop_assert!(bm.is_used(phys));
            }
        }
        let boot_now: BTreeSet<u64> = self.list.iter().filter(|h| h.boot).map(|h| h.ino).collect();
        prop_assert_eq!(
            &boot_now,
            &self.boot.keys().copied().collect::<BTreeSet<_>>()
        );
        // Exactly the model's inodes are in use; an orphan is kept only
        // while held, never leaked.
        prop_assert_eq!(m.inodes_used().unwrap(), 1 + self.inodes.len() as u64);
        for (&ino, f) in &self.inodes {
            prop_assert!(m.inode_in_use(ino).unwrap());
            prop_assert_eq!(m.inode(ino).unwrap().size, f.size);
            if !f.linked {
                prop_assert!(holds::is_held(&self.list, ino), "orphan {} leaked", ino);
            }
        }
        // Reformat only with no hold of either kind and nothing pending.
        let idle = self.callers.is_empty() && self.boot.is_empty() && !self.pending;
        prop_assert_eq!(
            holds::check_reformat(&self.list, self.pending).is_ok(),
            idle
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn live_update_keeps_what_devices_map(ops in prop::collection::vec(lu(), 1..100)) {
        let mut sim = Sim::new();
        for op in &ops {
            sim.step(op)?;
            sim.check()?;
        }
        // Resolving the handover and releasing everything leaves no
        // orphan and no hold.
        sim.step(&Lu::Done)?;
        while !sim.callers.is_empty() {
            sim.step(&Lu::Release { pick: 0 })?;
        }
        sim.check()?;
        prop_assert!(sim.list.is_empty());
        prop_assert!(sim.inodes.values().all(|f| f.linked));
    }
}

/// An image with the root (1), a directory (2), a linked file (3) and an
/// orphan (4), both with blocks.
fn flag_image() -> (Geometry, Vec<u8>) {
    let (geo, mut buf, mut st) = formatted(32, 16, T);
    let mut words = vec![0u64; 1];
    let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
    bm.mark_used(0, geo.meta_blocks).unwrap();
    let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
    m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
    for name in [&b"f"[..], b"o"] {
        let i = m.create(ROOT_INO, name, S_IFREG | 0o644, 0, 0, T).unwrap();
        m.set_size(i.ino, 2 * BLOCK_SIZE, T, &mut bm).unwrap();
        m.allocate(i.ino, 0, 2, &mut bm).unwrap();
    }
    m.unlink(ROOT_INO, b"o", T).unwrap();
    (geo, buf)
}

fn flags() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => prop::sample::select(vec![0u32, 1, 2, 3, 5, 7, 1 | (1 << 31)]),
        1 => any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Random flags on every inode, under every version: no panic; with
    /// every record still in use, accepted exactly when each record's
    /// flags are allowed for its version and type; then the boot holds
    /// are the flagged files and only their orphans survive adoption.
    #[test]
    fn dma_held_flags_by_version(
        version in prop_oneof![Just(1u32), Just(2), Just(3), any::<u32>()],
        f in prop::collection::vec(flags(), 4),
    ) {
        let (geo, mut buf) = flag_image();
        set_u32(&mut buf, SB_VERSION, version);
        reseal(&mut buf);
        for (k, &flags) in f.iter().enumerate() {
            set_u32(&mut buf, inode_off(k as u64 + 1), flags);
        }
        let res = adopt(&buf, geo.region_size);
        if !(1..=3).contains(&version) {
            prop_assert!(matches!(
                res,
                Err(Error::Corrupt(Corruption::BadVersion(v))) if v == version
            ));
            return Ok(());
        }
        if f.iter().any(|&x| x & FLAG_IN_USE == 0) {
            // A record freed under its children or extents: refused or
            // not, but never a panic.
            return Ok(());
        }
        // In use alone, or held on a regular file (3 and 4) since 3.
        let ok: Vec<bool> = f
            .iter()
            .enumerate()
            .map(|(k, &x)| x == 1 || (version == 3 && x == 3 && k >= 2))
            .collect();
        let modes = [S_IFDIR, S_IFDIR, S_IFREG, S_IFREG];
        for (k, &x) in f.iter().enumerate() {
            prop_assert_eq!(validate::inode_flags_ok(version, x, modes[k] | 0o644), ok[k]);
        }
        match ok.iter().position(|&ok| !ok) {
            Some(k) => {
                let bad = Err(Error::Corrupt(Corruption::BadInode(k as u64 + 1)));
                prop_assert_eq!(res.map(|r| r.2), bad);
            }
            None => {
                let (mut st, mut words, inodes) = res.map_err(fail)?;
                prop_assert_eq!(inodes, 4);
                let mut bm = BlockBitmap::attach(&mut words, geo.nr_blocks).unwrap();
                let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
                let mut boot = Vec::new();
                holds::boot_holds(&m, |h| {
                    boot.push(h.ino);
                    Ok(())
                })
                .map_err(fail)?;
                let want: Vec<u64> = (3..=4)
                    .filter(|&i| f[i as usize - 1] & FLAG_DMA_HELD != 0)
                    .collect();
                prop_assert_eq!(&boot, &want);
                let freed = m
                    .reclaim_orphans_except(&mut bm, |i| boot.contains(&i))
                    .map_err(fail)?;
                prop_assert_eq!(freed, u64::from(!boot.contains(&4)));
                prop_assert_eq!(m.inode_in_use(4).unwrap(), boot.contains(&4));
            }
        }
    }
}
