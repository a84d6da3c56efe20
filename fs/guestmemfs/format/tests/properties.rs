// SPDX-License-Identifier: GPL-2.0-only
//! Property tests: random operation sequences keep the image valid and
//! leak-free; random corruption never panics the validator; the block
//! allocator never hands out a block twice and chooses as the bitwise
//! reference does; the in-memory index agrees with a scan of the records.

// Test inputs are small integers widened for the API.
#![allow(clippy::cast_lossless)]

mod common;

use common::*;
use guestmemfs_format::layout::*;
use guestmemfs_format::meta::format;
use guestmemfs_format::validate;
use guestmemfs_format::{BlockBitmap, Error, Meta};
use proptest::prelude::*;
use std::collections::HashSet;

const T: Time = Time { sec: 42, nsec: 0 };

/// Runs both validation steps; returns the inodes in use and the rebuilt
/// used-block count.
fn validate_image(buf: &[u8], region_size: u64) -> Result<(u64, u64), Error> {
    let (_, words, inodes) = adopt(buf, region_size)?;
    Ok((inodes, used_blocks(&words)))
}

fn op() -> impl Strategy<Value = Op> {
    let (dir, name, file) = (0u8..8, 0u8..6, 0u8..16);
    prop_oneof![
        draw::create((dir.clone(), name.clone(), any::<bool>())),
        draw::allocate((
            file.clone(),
            (0u16..40).prop_map(u64::from),
            (1u16..30).prop_map(u64::from),
        )),
        draw::set_size((file, any::<u32>().prop_map(|size| u64::from(size) * 64))),
        draw::unlink((dir.clone(), name.clone(), Just(true))),
        draw::rename(dir, name, |_| true),
        draw::poison(0u64..200),
    ]
}

/// Inodes currently in use (linked), by kind.
fn linked(m: &Meta<'_, &mut [u8]>, want_dir: bool) -> Vec<u64> {
    (1..=m.geometry().inode_count)
        .filter(|&i| match m.inode(i) {
            Ok(d) => d.nlink > 0 && d.is_dir() == want_dir,
            Err(_) => false,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_image_valid(ops in prop::collection::vec(op(), 1..60)) {
        let (geo, mut buf, mut st) = formatted(96, 32, T);
        let (mut words, mut pins) = (vec![0u64; 2], vec![0u64; 2]);
        let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks)
            .unwrap()
            .with_pins(&mut pins)
            .unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        // Poisoned blocks and who owned them when poisoned (None: free);
        // an owner may only go away, never come (back).
        let mut bad: Vec<(u64, Option<(u64, u64)>)> = Vec::new();
        for op in ops {
            let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
            let dirs = linked(&m, true);
            let files = linked(&m, false);
            let pick = Pick::Linked { dirs: &dirs, files: &files };
            apply(&mut m, &mut bm, &op, &pick, T)
                .only_expected(&op)
                .map_err(TestCaseError::fail)?;
            if let Op::Poison { block } = op {
                let b = geo.meta_blocks + block % geo.data_blocks();
                if !bad.iter().any(|&(x, _)| x == b) {
                    bad.push((b, m.owner_of(b).unwrap()));
                }
            }
            for (b, owner) in bad.iter_mut() {
                prop_assert!(bm.is_used(*b) && bm.is_pinned(*b), "bad block {} freed", b);
                let now = m.owner_of(*b).unwrap();
                prop_assert!(now.is_none() || now == *owner, "bad block {} reused", b);
                *owner = now;
            }
            prop_assert_eq!(m.bad_count().unwrap(), bad.len());
            // The image is valid and the allocator agrees with it exactly:
            // no leaked and no double-owned block; listed blocks are used.
            let (_, used) = validate_image(&buf, geo.region_size).map_err(|e| {
                TestCaseError::fail(format!("invalid after op: {e}"))
            })?;
            prop_assert_eq!(used, bm.used());
        }
    }

    #[test]
    fn corrupted_images_never_panic(
        flips in prop::collection::vec((0usize..70_000, any::<u8>()), 1..40),
    ) {
        let geo = Geometry::new(64 * BLOCK_SIZE, 64).unwrap();
        let mut buf = vec![0u8; geo.meta_bytes() as usize];
        let mut st = Store::new(&geo);
        format(&mut buf, &geo, T, 1, &mut st.index()).unwrap();
        let mut words = vec![0u64; 1];
        let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        {
            let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
            let d = m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T).unwrap();
            for n in 0..5u8 {
                let f = m.create(d.ino, &name(n), S_IFREG | 0o600, 0, 0, T).unwrap();
                m.allocate(f.ino, n as u64, 3, &mut bm).unwrap();
            }
        }
        for (pos, val) in flips {
            let len = buf.len();
            buf[pos % len] ^= val;
        }
        // Whatever the bytes, validation returns; when it accepts the
        // image, reading every inode and extent map also works.
        if let Ok((mut st, _, _)) = adopt(&buf, geo.region_size) {
            let m = Meta::new(&buf[..], geo, st.index()).unwrap();
            for ino in 1..=geo.inode_count {
                if m.inode_in_use(ino).unwrap() {
                    for fb in 0..10 {
                        m.map(ino, fb).unwrap();
                    }
                    let _ = m.readdir(ino, 0).unwrap();
                }
            }
        }
    }

    #[test]
    fn superblock_checks_accept_only_the_real_region(
        size_blocks in 1u64..4096,
        inodes in 1u64..100_000,
    ) {
        let geo = Geometry::new(200 * BLOCK_SIZE, 128).unwrap();
        let mut buf = vec![0u8; geo.meta_bytes() as usize];
        format(&mut buf, &geo, T, 1, &mut Store::new(&geo).index()).unwrap();
        let other = size_blocks * BLOCK_SIZE;
        let res = validate::superblock(&buf, other);
        prop_assert_eq!(res.is_ok(), other == geo.region_size);
        let _ = Geometry::new(other, inodes);
    }

    #[test]
    fn allocator_never_double_allocates(
        ops in prop::collection::vec((any::<bool>(), 1u64..700), 1..80),
    ) {
        let mut words = vec![0u64; 32];
        let mut bm = BlockBitmap::new(&mut words, 2048).unwrap();
        let mut owned: Vec<(u64, u64)> = Vec::new();
        let mut blocks: HashSet<u64> = HashSet::new();
        for (alloc, n) in ops {
            if alloc || owned.is_empty() {
                // A request of 1 GiB or more gets aligned whole GiB units
                // whenever one is free.
                let aligned_free =
                    n >= HUGE_BLOCKS && bm.find_free(HUGE_BLOCKS, HUGE_BLOCKS).is_some();
                match bm.alloc_run(n) {
                    Ok((start, count)) => {
                        prop_assert!(count >= 1 && count <= n);
                        if aligned_free {
                            prop_assert_eq!(start % HUGE_BLOCKS, 0);
                            prop_assert_eq!(count % HUGE_BLOCKS, 0);
                        }
                        for b in start..start + count {
                            prop_assert!(blocks.insert(b), "block {} handed out twice", b);
                        }
                        owned.push((start, count));
                    }
                    Err(Error::NoSpace) => prop_assert_eq!(bm.free(), 0),
                    Err(e) => prop_assert!(false, "{e:?}"),
                }
            } else {
                let (start, count) = owned.swap_remove(n as usize % owned.len());
                bm.mark_free(start, count).unwrap();
                for b in start..start + count {
                    blocks.remove(&b);
                }
            }
            prop_assert_eq!(bm.used(), blocks.len() as u64);
        }
    }
}
