// SPDX-License-Identifier: GPL-2.0-only
//! DMA holds against a block model: random holds, releases, size
//! changes, unlinks with eviction and allocations by other files. While
//! a hold exists, the physical runs it reported back its range, owned by
//! the same file at the same offsets and never free; a size change into a
//! hold fails; an evicted inode keeps its blocks until its last release.

mod common;

use common::*;
use guestmemfs_format::holds::{self, Hold};
use guestmemfs_format::layout::*;
use guestmemfs_format::{BlockBitmap, Error, Meta};
use proptest::prelude::*;

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
                    let hold = Hold { id: next_id, ino, start, end, evict_pending: false };
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
