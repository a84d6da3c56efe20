// SPDX-License-Identifier: GPL-2.0-only
//! The in-memory index against brute force: after every operation of a
//! random sequence (on an image formatted over garbage, so that a read
//! above the high-water marks would show), every name is found by
//! lookup, readdir lists exactly the children a scan of the records
//! finds, child counts and counters match the scan, new records are the
//! lowest free ones, the superblock's marks cover every record in use,
//! and a fresh validation (a kexec) accepts the image. Also: a version 1
//! image, written by hand, validates, keeps its files and becomes the
//! current version at the first change (so does a version 2 image); the
//! block allocator chooses exactly as the bitwise reference does.

// Test inputs are small integers widened for the API.
#![allow(clippy::cast_lossless)]

mod common;

use common::*;
use guestmemfs_format::layout::*;
use guestmemfs_format::meta::format;
use guestmemfs_format::validate;
use guestmemfs_format::{BlockBitmap, Corruption, Error, IndexSizes, Meta};
use proptest::prelude::*;
use std::collections::BTreeSet;

const T: Time = Time { sec: 42, nsec: 1 };

/// An operation of a sequence: on the metadata, or a kexec.
#[derive(Debug, Clone)]
enum Step {
    Op(Op),
    /// A kexec: validate from scratch, adopt the new index as the kernel
    /// does (orphans reclaimed, generation bumped).
    Remount,
    /// Rewrite the image as version 1 (no marks) and remount: only on an
    /// image formatted over zeros, as version 1 kernels kept free records.
    ToVersion1,
    /// Rewrite the image as version 2 (the same superblock, no inode
    /// flag but in-use) and remount: the adoption upgrades it again.
    ToVersion2,
}

/// The steps; names from all of `n00`..`n47`, enough for the name table
/// to grow past its smallest size.
fn step() -> impl Strategy<Value = Step> {
    let (dir, name) = (any::<u8>(), any::<u8>());
    prop_oneof![
        8 => draw::create((dir, name, prop::bool::weighted(0.3))).prop_map(Step::Op),
        3 => draw::unlink((dir, name, any::<bool>())).prop_map(Step::Op),
        2 => draw::rename(dir, name, |_| true).prop_map(Step::Op),
        3 => draw::allocate((
            any::<u8>(),
            (0u8..24).prop_map(u64::from),
            (1u8..6).prop_map(u64::from),
        ))
        .prop_map(Step::Op),
        1 => draw::set_size((
            any::<u8>(),
            (0u8..24).prop_map(|blocks| (u64::from(blocks) * BLOCK_SIZE).saturating_sub(7)),
        ))
        .prop_map(Step::Op),
        1 => Just(Step::Remount),
        1 => Just(Step::ToVersion1),
        1 => Just(Step::ToVersion2),
    ]
}

fn geometry() -> Geometry {
    // 120 inodes: the name table grows from 64 to 256 slots.
    Geometry::new(160 * BLOCK_SIZE, 120).unwrap()
}

/// Linked directories (and the root), and linked files, by scan.
fn dirs_and_files(buf: &[u8], geo: &Geometry) -> (Vec<u64>, Vec<u64>) {
    let mut dirs = vec![ROOT_INO];
    let mut files = vec![];
    for e in entries(buf, geo) {
        if e.is_dir {
            dirs.push(e.ino);
        } else {
            files.push(e.ino);
        }
    }
    (dirs, files)
}

/// The lowest free records (inode ids from 2) by the format's definition.
fn lowest_free(used: &[u64], from: u64, count: u64, n: usize) -> Vec<u64> {
    let used: BTreeSet<u64> = used.iter().copied().collect();
    (from..=count)
        .filter(|i| !used.contains(i))
        .take(n)
        .collect()
}

/// Everything the index answers, against a scan of the records.
fn agree(m: &Meta<'_, &mut [u8]>, geo: &Geometry) -> Result<(), TestCaseError> {
    let buf = m.bytes();
    let c = *m.counters();
    // The superblock's marks cover every record in use; the index's are
    // at most the superblock's (adoption lowers them; the first change
    // writes them), and records between the two are free.
    let (sb_inodes, sb_extents) = marks(buf, geo);
    prop_assert!(c.inode_hwm() <= sb_inodes && c.extent_hwm() <= sb_extents);
    let used = inodes_in_use(buf, geo);
    let extents = extents_in_use(buf, geo);
    prop_assert!(
        used.iter().all(|&i| i <= c.inode_hwm()),
        "inode above the mark"
    );
    prop_assert!(
        extents.iter().all(|&e| e <= c.extent_hwm()),
        "extent above the mark"
    );
    prop_assert_eq!(m.inodes_used().unwrap(), used.len() as u64);
    prop_assert_eq!(c.extents_used(), extents.len() as u64);
    for ino in 1..=geo.inode_count {
        prop_assert_eq!(
            m.inode_in_use(ino).unwrap(),
            used.contains(&ino),
            "inode {}",
            ino
        );
    }
    for id in 1..=geo.extent_count {
        prop_assert_eq!(
            m.extent(id).unwrap().is_some(),
            extents.contains(&id),
            "extent {}",
            id
        );
    }
    // Every entry is found; its name in another directory is not.
    let all = entries(buf, geo);
    prop_assert_eq!(c.names(), all.len() as u64);
    for e in &all {
        prop_assert_eq!(m.lookup(e.parent, &e.name), Ok(e.ino), "{:?}", e);
    }
    // Readdir and counts of every directory in use.
    for &d in &used {
        let i = m.inode(d).unwrap();
        let mut want: Vec<u64> = all
            .iter()
            .filter(|e| e.parent == d)
            .map(|e| e.ino)
            .collect();
        want.sort_unstable();
        let mut got = vec![];
        let mut pos = 0;
        while let Some((child, next)) = m.readdir(d, pos).unwrap() {
            prop_assert!(next > pos && child.ino == next);
            got.push(child.ino);
            pos = next;
        }
        prop_assert_eq!(&got, &want, "readdir of {}", d);
        prop_assert_eq!(m.child_count(d) as usize, want.len());
        prop_assert_eq!(m.has_children(d).unwrap(), !want.is_empty());
        if i.is_dir() && i.nlink > 0 {
            for n in 0..48u8 {
                let nm = name(n);
                let hit = all.iter().find(|e| e.parent == d && e.name == nm);
                let res = m.lookup(d, &nm);
                prop_assert_eq!(res, hit.map(|e| e.ino).ok_or(Error::NotFound));
            }
        }
    }
    Ok(())
}

/// Validates the image from scratch and adopts it as the kernel does.
fn remount(buf: &mut [u8], geo: &Geometry) -> Result<(Store, Vec<u64>), TestCaseError> {
    let (mut st, mut words, inodes) = adopt(buf, geo.region_size)
        .map_err(|e| TestCaseError::fail(format!("remount refused: {e}")))?;
    prop_assert_eq!(inodes, inodes_in_use(buf, geo).len() as u64);
    {
        let mut bm = BlockBitmap::attach(&mut words, geo.nr_blocks).unwrap();
        let mut m = Meta::new(&mut buf[..], *geo, st.index()).unwrap();
        m.reclaim_orphans(&mut bm).unwrap();
        let g = m.generation().unwrap();
        m.set_generation(g + 1).unwrap();
    }
    // The adoption wrote the superblock: the current version with the
    // index's (lowered) marks.
    prop_assert_eq!(get_u32(buf, SB_VERSION), VERSION);
    prop_assert_eq!(
        marks(buf, geo),
        (st.counters.inode_hwm(), st.counters.extent_hwm())
    );
    Ok((st, words))
}

fn run(steps: &[Step], garbage: Option<u8>) -> Result<(), TestCaseError> {
    let geo = geometry();
    let mut buf = vec![garbage.unwrap_or(0); geo.meta_bytes() as usize];
    // Storage grown on demand as the kernel does, from a tiny start (the
    // kernel starts at `IndexSizes::initial`) so that it grows often.
    let mut st = Store::sized(&geo, IndexSizes::for_capacity(&geo, 3));
    format(&mut buf, &geo, T, 1, &mut st.index()).unwrap();
    prop_assert!(st.counters.capacity() < 8);
    let mut words = vec![0u64; geo.nr_blocks.div_ceil(64) as usize];
    BlockBitmap::new(&mut words, geo.nr_blocks)
        .unwrap()
        .mark_used(0, geo.meta_blocks)
        .unwrap();
    let mut grew = 0;
    for step in steps {
        let op = match step {
            Step::Op(op) => op,
            Step::Remount => {
                (st, words) = remount(&mut buf, &geo)?;
                continue;
            }
            Step::ToVersion2 => {
                set_u32(&mut buf, SB_VERSION, 2);
                reseal(&mut buf);
                (st, words) = remount(&mut buf, &geo)?;
                continue;
            }
            Step::ToVersion1 => {
                if garbage.is_some() {
                    continue;
                }
                set_u32(&mut buf, SB_VERSION, 1);
                set_u64(&mut buf, SB_INODE_HWM, 0);
                set_u64(&mut buf, SB_EXTENT_HWM, 0);
                reseal(&mut buf);
                (st, words) = remount(&mut buf, &geo)?;
                continue;
            }
        };
        let (dirs, files) = dirs_and_files(&buf, &geo);
        let used = inodes_in_use(&buf, &geo);
        let extents = extents_in_use(&buf, &geo);
        if st.grow() {
            grew += 1;
        }
        let mut bm = BlockBitmap::attach(&mut words, geo.nr_blocks).unwrap();
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let pick = Pick::Linked {
            dirs: &dirs,
            files: &files,
        };
        let done = apply(&mut m, &mut bm, op, &pick, T);
        done.only_expected(op).map_err(TestCaseError::fail)?;
        // New records are the lowest free ones.
        if let Some(i) = &done.created {
            let want = lowest_free(&used, 2, geo.inode_count, 1);
            prop_assert_eq!(vec![i.ino], want, "not the lowest free inode");
        }
        if let (Op::Allocate { .. }, Ok(())) = (op, done.result) {
            let now: BTreeSet<u64> = extents_in_use(m.bytes(), &geo).into_iter().collect();
            let before: BTreeSet<u64> = extents.iter().copied().collect();
            let new: Vec<u64> = now.difference(&before).copied().collect();
            let want = lowest_free(&extents, 1, geo.extent_count, new.len());
            prop_assert_eq!(new, want, "not the lowest free extents");
        }
        agree(&m, &geo)?;
        // Every change went through the superblock: the current version,
        // marks equal to the index's.
        let c = *m.counters();
        prop_assert_eq!(get_u32(m.bytes(), SB_VERSION), VERSION);
        prop_assert_eq!(marks(m.bytes(), &geo), (c.inode_hwm(), c.extent_hwm()));
        // A kexec now would accept the image, with the same allocator.
        let used_blocks = bm.used();
        let (_, rebuilt, _) = adopt(&buf, geo.region_size)
            .map_err(|e| TestCaseError::fail(format!("invalid after {op:?}: {e}")))?;
        prop_assert_eq!(common::used_blocks(&rebuilt), used_blocks);
    }
    // Doubling: 3 -> 6 -> ... -> 96 -> 120 at most.
    prop_assert!(grew <= 6);
    // And after a remount the fresh index agrees too.
    let (mut st, _) = remount(&mut buf, &geo)?;
    let m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
    agree(&m, &geo)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_a_scan(
        steps in prop::collection::vec(step(), 1..120),
        garbage in prop_oneof![Just(None), any::<u8>().prop_map(Some)],
    ) {
        run(&steps, garbage)?;
    }
}

/// The block allocator as it was, a bit at a time: the reference for
/// the word-level one.
struct Reference {
    used: Vec<bool>,
}

impl Reference {
    fn free(&self) -> u64 {
        self.used.iter().filter(|&&u| !u).count() as u64
    }

    fn find_free(&self, count: u64, align: u64) -> Option<u64> {
        let n = self.used.len() as u64;
        if count == 0 || align == 0 || count > self.free() {
            return None;
        }
        let mut start = 0u64;
        while start + count <= n {
            match (start..start + count)
                .rev()
                .find(|&b| self.used[b as usize])
            {
                None => return Some(start),
                Some(u) => start = (u + 1).div_ceil(align) * align,
            }
        }
        None
    }

    fn alloc_run(&mut self, want: u64) -> Option<(u64, u64)> {
        let n = self.used.len() as u64;
        if self.free() == 0 {
            return None;
        }
        let take = |s: &mut Self, start: u64, count: u64| {
            for b in start..start + count {
                s.used[b as usize] = true;
            }
            Some((start, count))
        };
        if want >= HUGE_BLOCKS {
            for k in (1..=want / HUGE_BLOCKS).rev() {
                if let Some(start) = self.find_free(k * HUGE_BLOCKS, HUGE_BLOCKS) {
                    return take(self, start, k * HUGE_BLOCKS);
                }
            }
        }
        let (mut best_start, mut best_len) = (0, 0);
        let mut b = 0;
        while b < n {
            if self.used[b as usize] {
                b += 1;
                continue;
            }
            let start = b;
            while b < n && !self.used[b as usize] && b - start < want {
                b += 1;
            }
            if b - start > best_len {
                best_start = start;
                best_len = b - start;
                if best_len == want {
                    break;
                }
            }
        }
        take(self, best_start, best_len)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn allocator_matches_the_bitwise_reference(
        nr_blocks in prop_oneof![1u64..200, 1000u64..2600],
        ops in prop::collection::vec((0u8..4, 1u64..1400, any::<u64>()), 1..60),
    ) {
        let mut words = vec![0u64; nr_blocks.div_ceil(64) as usize];
        let mut bm = BlockBitmap::new(&mut words, nr_blocks).unwrap();
        let mut reference = Reference { used: vec![false; nr_blocks as usize] };
        let mut owned: Vec<(u64, u64)> = vec![];
        for (kind, n, x) in ops {
            match kind {
                0 | 1 => {
                    let got = bm.alloc_run(n);
                    let want = reference.alloc_run(n);
                    prop_assert_eq!(got.ok(), want, "alloc_run({})", n);
                    if let Some(run) = want {
                        owned.push(run);
                    }
                }
                2 => {
                    let align = [1, 2, 64, 512][(x % 4) as usize];
                    prop_assert_eq!(
                        bm.find_free(n % 700 + 1, align),
                        reference.find_free(n % 700 + 1, align)
                    );
                }
                _ => {
                    if owned.is_empty() {
                        continue;
                    }
                    // Free part of a run: holes of every shape.
                    let (start, count) = owned.swap_remove((x % owned.len() as u64) as usize);
                    let cut = n % count;
                    bm.mark_free(start + cut, count - cut).unwrap();
                    for b in start + cut..start + count {
                        reference.used[b as usize] = false;
                    }
                    if cut > 0 {
                        owned.push((start, cut));
                    }
                }
            }
            for b in 0..nr_blocks {
                prop_assert_eq!(bm.is_used(b), reference.used[b as usize]);
            }
            prop_assert_eq!(bm.free(), reference.free());
        }
        // Overlap and double-free report the lowest offending block.
        if let Some(b) = (0..nr_blocks).find(|&b| reference.used[b as usize]) {
            let start = b.saturating_sub(3);
            prop_assert_eq!(bm.mark_used(start, b - start + 1), Err(Error::Overlap(b)));
        }
        if let Some(b) = (0..nr_blocks).find(|&b| !reference.used[b as usize]) {
            let start = b.saturating_sub(3);
            let first_free = (start..=b).find(|&x| !reference.used[x as usize]).unwrap();
            prop_assert_eq!(bm.mark_free(start, b - start + 1), Err(Error::DoubleFree(first_free)));
        }
    }
}

/// A version 1 image as the previous kernel wrote it, byte by byte:
/// superblock without marks (bytes 96.. zero), root, a directory `d`
/// (inode 2), a file `d/f` (inode 5, so records 3 and 4 are free holes)
/// with two extents (records 1 and 3), an orphan (inode 7) with one
/// extent (record 2). Every free record is zero.
fn version_1_image(geo: &Geometry) -> Vec<u8> {
    let mut buf = vec![0u8; geo.meta_bytes() as usize];
    set_u64(&mut buf, 0, u64::from_le_bytes(*b"GUESTMFS"));
    set_u32(&mut buf, 8, 1);
    set_u32(&mut buf, 12, 4096);
    set_u64(&mut buf, 16, geo.region_size);
    set_u64(&mut buf, 24, BLOCK_SIZE);
    set_u64(&mut buf, 32, geo.nr_blocks);
    set_u64(&mut buf, 40, geo.meta_blocks);
    set_u64(&mut buf, 48, geo.inode_count);
    set_u64(&mut buf, 56, INODE_OFFSET);
    set_u64(&mut buf, 64, geo.extent_count);
    set_u64(&mut buf, 72, geo.extent_offset());
    set_u64(&mut buf, 80, 9); // generation
    set_u64(&mut buf, 88, 4); // next inode generation
    reseal(&mut buf);
    let inode = |buf: &mut Vec<u8>,
                 ino: u64,
                 mode: u32,
                 nlink: u32,
                 parent: u64,
                 name: &[u8],
                 ext: (u64, u64, u64)| {
        let o = inode_off(ino);
        set_u32(buf, o, 1);
        set_u32(buf, o + 4, mode);
        set_u32(buf, o + 16, nlink);
        set_u32(buf, o + 20, name.len() as u32);
        set_u64(buf, o + 24, ext.2 * BLOCK_SIZE);
        set_u64(buf, o + 32, parent);
        set_u64(buf, o + 40, ext.0);
        set_u64(buf, o + 48, ext.1);
        set_u64(buf, o + 56, ext.2);
        set_u64(buf, o + 64, 1_700_000_000);
        set_u64(buf, o + 112, ino.min(3) - 1);
        buf[o + 128..o + 128 + name.len()].copy_from_slice(name);
    };
    inode(&mut buf, 1, S_IFDIR | 0o755, 3, 1, b"", (0, 0, 0));
    inode(&mut buf, 2, S_IFDIR | 0o700, 2, 1, b"d", (0, 0, 0));
    inode(&mut buf, 5, S_IFREG | 0o644, 1, 2, b"f", (1, 2, 5));
    inode(&mut buf, 7, S_IFREG | 0o600, 0, 0, b"", (2, 1, 1));
    // The file's size: 5 blocks exactly.
    let extent = |buf: &mut Vec<u8>, id: u64, count: u32, next: u64, fb: u64, pb: u64| {
        let o = extent_off(geo, id);
        set_u32(buf, o, 1);
        set_u32(buf, o + 4, count);
        set_u64(buf, o + 8, next);
        set_u64(buf, o + 16, fb);
        set_u64(buf, o + 24, pb);
    };
    let m = geo.meta_blocks;
    extent(&mut buf, 1, 2, 3, 0, m);
    extent(&mut buf, 3, 3, 0, 2, m + 10);
    extent(&mut buf, 2, 1, 0, 0, m + 2);
    buf
}

#[test]
fn version_1_image_is_kept_and_upgraded() {
    let geo = geometry();
    let mut buf = version_1_image(&geo);
    let g = validate::superblock(&buf, geo.region_size).unwrap();
    assert_eq!(g, geo);
    // Scratch for a version 1 image covers the whole table.
    let s = validate::ScratchSizes::for_image(&buf, &geo).unwrap();
    assert_eq!(s.inode_marks as u64, geo.inode_count);
    let (mut st, mut words, inodes) = adopt(&buf, geo.region_size).unwrap();
    assert_eq!(inodes, 4);
    assert_eq!(used_blocks(&words), geo.meta_blocks + 6);
    // The index holds the real marks; the superblock is untouched until
    // the first change.
    assert_eq!((st.counters.inode_hwm(), st.counters.extent_hwm()), (7, 3));
    let before = buf.clone();
    {
        let m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        assert_eq!(m.lookup(ROOT_INO, b"d"), Ok(2));
        assert_eq!(m.lookup(2, b"f"), Ok(5));
        assert_eq!(m.readdir(2, 0).unwrap().unwrap().1, 5);
        let f = m.inode(5).unwrap();
        assert_eq!((f.size, f.blocks, f.nr_extents), (5 * BLOCK_SIZE, 5, 2));
        let e = m.map(5, 3).unwrap().unwrap();
        assert_eq!(
            (e.id, e.file_block, e.phys_block),
            (3, 2, geo.meta_blocks + 10)
        );
    }
    assert_eq!(buf, before, "reading wrote");
    // The kernel's adoption: orphans reclaimed (a change: the upgrade).
    {
        let mut bm = BlockBitmap::attach(&mut words, geo.nr_blocks).unwrap();
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        assert_eq!(m.reclaim_orphans(&mut bm).unwrap(), 1);
        assert_eq!(bm.used(), geo.meta_blocks + 5);
        // The lowest free inode is a hole below the mark.
        let g = m.create(2, b"g", S_IFREG | 0o644, 0, 0, T).unwrap();
        assert_eq!(g.ino, 3);
        assert_eq!(g.generation, 4);
    }
    assert_eq!(get_u32(&buf, SB_VERSION), VERSION);
    assert_eq!(marks(&buf, &geo), (7, 3));
    // The current version now: only the records up to the marks are read.
    let s = validate::ScratchSizes::for_image(&buf, &geo).unwrap();
    assert_eq!(s.inode_marks, 7);
    let (_, _, inodes) = adopt(&buf, geo.region_size).unwrap();
    assert_eq!(inodes, 4);
    // A version 1 image whose free records a version 1 kernel would
    // read: garbage in the last record is refused as version 1, and
    // ignored once the marks are below it.
    let mut v1 = version_1_image(&geo);
    let last = inode_off(geo.inode_count);
    set_u32(&mut v1, last, 1);
    assert!(adopt(&v1, geo.region_size).is_err());
    set_u32(&mut buf, last, 1);
    assert_eq!(adopt(&buf, geo.region_size).unwrap().2, 4);
}

#[test]
fn superblock_marks_are_checked() {
    let geo = geometry();
    let mut buf = vec![0u8; geo.meta_bytes() as usize];
    format(&mut buf, &geo, T, 1, &mut Store::new(&geo).index()).unwrap();
    assert_eq!(marks(&buf, &geo), (1, 0));
    let refused = |buf: &[u8]| match adopt(buf, geo.region_size) {
        Err(Error::Corrupt(c)) => c,
        other => panic!("accepted: {:?}", other.map(|x| x.2)),
    };
    let mut b = buf.clone();
    set_u64(&mut b, SB_INODE_HWM, geo.inode_count + 1);
    reseal(&mut b);
    assert_eq!(refused(&b), Corruption::BadGeometry);
    let mut b = buf.clone();
    set_u64(&mut b, SB_EXTENT_HWM, geo.extent_count + 1);
    reseal(&mut b);
    assert_eq!(refused(&b), Corruption::BadGeometry);
    // Up to the table sizes is fine (free records below the marks).
    let mut b = buf.clone();
    set_u64(&mut b, SB_INODE_HWM, geo.inode_count);
    set_u64(&mut b, SB_EXTENT_HWM, geo.extent_count);
    reseal(&mut b);
    assert_eq!(adopt(&b, geo.region_size).unwrap().2, 1);
    // The root above the mark is no root.
    let mut b = buf.clone();
    set_u64(&mut b, SB_INODE_HWM, 0);
    reseal(&mut b);
    assert_eq!(refused(&b), Corruption::BadRoot);
    // Reserved bytes of version 2.
    for at in [2176, 3000, 4091] {
        let mut b = buf.clone();
        b[at] = 1;
        reseal(&mut b);
        assert_eq!(refused(&b), Corruption::NonZeroReserved, "byte {at}");
    }
    // The bad-block list: a count without entries, an entry past the
    // count, padding, a metadata block, an unsorted or repeated entry, a
    // block past the region, a count over the maximum.
    let data = geo.meta_blocks;
    let list = |count: u32, entries: &[u64], pad: u8| {
        let mut b = buf.clone();
        set_u32(&mut b, 112, count);
        b[120] = pad;
        for (i, &e) in entries.iter().enumerate() {
            set_u64(&mut b, 128 + 8 * i, e);
        }
        reseal(&mut b);
        b
    };
    for (count, entries, pad) in [
        (1, &[][..], 0),
        (1, &[data, data + 1][..], 0),
        (1, &[data][..], 1),
        (1, &[data - 1][..], 0),
        (2, &[data + 1, data][..], 0),
        (2, &[data, data][..], 0),
        (1, &[geo.nr_blocks][..], 0),
        (257, &[data][..], 0),
    ] {
        assert_eq!(
            refused(&list(count, entries, pad)),
            Corruption::BadBlockList,
            "{count} {entries:?} {pad}"
        );
    }
    // A good list: its blocks are used after adoption, free or not.
    let good = list(2, &[data, geo.nr_blocks - 1], 0);
    let (_, words, _) = adopt(&good, geo.region_size).unwrap();
    assert_eq!(used_blocks(&words), geo.meta_blocks + 2);
    // An extent list reaching above the extent mark.
    let mut b = buf.clone();
    {
        let (mut st, mut words, _) = adopt(&b, geo.region_size).unwrap();
        let mut bm = BlockBitmap::attach(&mut words, geo.nr_blocks).unwrap();
        let mut m = Meta::new(&mut b[..], geo, st.index()).unwrap();
        let f = m.create(ROOT_INO, b"f", S_IFREG | 0o644, 0, 0, T).unwrap();
        m.allocate(f.ino, 0, 1, &mut bm).unwrap();
    }
    assert_eq!(marks(&b, &geo), (2, 1));
    set_u64(&mut b, SB_EXTENT_HWM, 0);
    reseal(&mut b);
    assert_eq!(refused(&b), Corruption::BadExtent(1));
}

#[test]
fn many_names_in_one_directory() {
    // 3000 entries: the name table doubles from 64 to 8192 slots; half
    // are removed (backward shifts through long probe runs) and created
    // again in the holes.
    let geo = Geometry::new(2048 * BLOCK_SIZE, 4096).unwrap();
    let mut buf = vec![0xeeu8; geo.meta_bytes() as usize];
    let mut st = Store::new(&geo);
    format(&mut buf, &geo, T, 1, &mut st.index()).unwrap();
    let mut words = vec![0u64; geo.nr_blocks.div_ceil(64) as usize];
    let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
    bm.mark_used(0, geo.meta_blocks).unwrap();
    let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
    let d = m
        .create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T)
        .unwrap()
        .ino;
    let nm = |i: u32| format!("file-{i}").into_bytes();
    let mut ino = vec![0u64; 3000];
    for (i, slot) in ino.iter_mut().enumerate() {
        *slot = m
            .create(d, &nm(i as u32), S_IFREG | 0o644, 0, 0, T)
            .unwrap()
            .ino;
    }
    assert_eq!(m.counters().name_capacity(), 8192);
    for i in (0..3000).step_by(2) {
        let x = m.unlink(d, &nm(i), T).unwrap();
        m.evict(x.ino, &mut bm).unwrap();
    }
    assert_eq!(m.child_count(d), 1500);
    for i in 0..3000u32 {
        let want = if i % 2 == 0 {
            Err(Error::NotFound)
        } else {
            Ok(ino[i as usize])
        };
        assert_eq!(m.lookup(d, &nm(i)), want, "{i}");
    }
    for i in (0..3000).step_by(2) {
        let again = m.create(d, &nm(i), S_IFREG | 0o644, 0, 0, T).unwrap();
        // The holes are taken lowest first: the same records again.
        assert_eq!(again.ino, ino[i as usize]);
    }
    for i in 0..3000u32 {
        assert_eq!(m.lookup(d, &nm(i)), Ok(ino[i as usize]));
    }
    let mut n = 0;
    let mut pos = 0;
    while let Some((_, next)) = m.readdir(d, pos).unwrap() {
        pos = next;
        n += 1;
    }
    assert_eq!(n, 3000);
    assert_eq!(m.counters().inode_hwm(), 3002);
    let (mut fresh, _, inodes) = adopt(&buf, geo.region_size).unwrap();
    assert_eq!(inodes, 3002);
    let m = Meta::new(&mut buf[..], geo, fresh.index()).unwrap();
    for i in 0..3000u32 {
        assert_eq!(m.lookup(d, &nm(i)), Ok(ino[i as usize]));
    }
}

#[test]
fn storage_grows_and_is_discarded_for_a_reformat() {
    let geo = Geometry::new(512 * BLOCK_SIZE, 1024).unwrap();
    let mut buf = vec![0x11u8; geo.meta_bytes() as usize];
    let mut st = Store::sized(&geo, IndexSizes::initial(&geo));
    format(&mut buf, &geo, T, 1, &mut st.index()).unwrap();
    assert_eq!(st.counters.capacity(), 64);
    // Without growing, the 64th record is the last one that fits: the
    // next create is refused without a change, and fits once grown.
    for i in 0..63u64 {
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let n = format!("f{i}").into_bytes();
        m.create(ROOT_INO, &n, S_IFREG | 0o644, 0, 0, T).unwrap();
    }
    assert!(IndexSizes::to_grow(&geo, &st.counters).is_some());
    let before = buf.clone();
    {
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        assert_eq!(
            m.create(ROOT_INO, b"late", S_IFREG | 0o644, 0, 0, T),
            Err(Error::NoInodes)
        );
    }
    assert_eq!(buf, before);
    // Smaller storage is refused, larger taken.
    let small = IndexSizes::for_capacity(&geo, 32);
    let mut words = vec![0u64; small.words];
    assert_eq!(st.index().grow_into(&mut words), Err(Error::Invalid));
    assert!(st.grow());
    assert_eq!(st.counters.capacity(), 128);
    let late = {
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        m.create(ROOT_INO, b"late", S_IFREG | 0o644, 0, 0, T)
            .unwrap()
            .ino
    };
    assert_eq!(late, 65);
    {
        let m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        agree(&m, &geo).unwrap();
    }
    // A reformat in new, initial storage.
    st.counters.discard();
    st.words = vec![0u64; IndexSizes::initial(&geo).words];
    format(&mut buf, &geo, T, 2, &mut st.index()).unwrap();
    let m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
    assert_eq!(m.inodes_used(), Ok(1));
    assert_eq!(m.lookup(ROOT_INO, b"f0"), Err(Error::NotFound));
    assert_eq!(adopt(m.bytes(), geo.region_size).unwrap().2, 1);
}
