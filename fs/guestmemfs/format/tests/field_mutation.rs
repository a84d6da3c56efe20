// SPDX-License-Identifier: GPL-2.0-only
//! Property test: one field of a valid image, changed to a random or
//! boundary value, either makes validation refuse the image, or leaves an
//! image on which ordinary operations neither panic nor report damage, and
//! which still validates after each of them (with the allocator agreeing
//! with the extents).
//!
//! The superblock and inode field offsets are private to the crate; they
//! are copied here from docs/guestmemfs-format.md (the extent offsets are
//! public).

// Test inputs are small integers widened for the API.
#![allow(clippy::cast_lossless)]

mod common;

use common::{
    draw, extent_off, get_u32, get_u64, inode_off, inodes_in_use, name, reseal, set_u32, set_u64,
    Op, Pick, Store, SB_CHECKSUM,
};
use guestmemfs_format::bitmap::words_for;
use guestmemfs_format::layout::*;
use guestmemfs_format::meta::format;
use guestmemfs_format::validate;
use guestmemfs_format::{BlockBitmap, Error, Meta};
use proptest::prelude::*;
use std::sync::OnceLock;

const T: Time = Time { sec: 42, nsec: 7 };

/// Width of a field.
#[derive(Debug, Clone, Copy)]
enum W {
    U32,
    U64,
}

/// Superblock fields (offset, width).
const SB_FIELDS: &[(usize, W)] = &[
    (0, W::U64),    // magic
    (8, W::U32),    // version
    (12, W::U32),   // header_size
    (16, W::U64),   // region_size
    (24, W::U64),   // block_size
    (32, W::U64),   // nr_blocks
    (40, W::U64),   // meta_blocks
    (48, W::U64),   // inode_count
    (56, W::U64),   // inode_offset
    (64, W::U64),   // extent_count
    (72, W::U64),   // extent_offset
    (80, W::U64),   // generation
    (88, W::U64),   // next_ino_generation
    (96, W::U64),   // inode_hwm
    (104, W::U64),  // extent_hwm
    (112, W::U64),  // reserved (zero)
    (4084, W::U64), // reserved (zero)
    (4092, W::U32), // crc32c
];

/// Inode fields (offset, width); the name bytes are handled apart.
const INODE_FIELDS: &[(usize, W)] = &[
    (0, W::U32),   // flags
    (4, W::U32),   // mode
    (8, W::U32),   // uid
    (12, W::U32),  // gid
    (16, W::U32),  // nlink
    (20, W::U32),  // name_len
    (24, W::U64),  // size
    (32, W::U64),  // parent
    (40, W::U64),  // first extent
    (48, W::U64),  // nr_extents
    (56, W::U64),  // blocks
    (64, W::U64),  // atime sec
    (72, W::U32),  // atime nsec
    (80, W::U64),  // mtime sec
    (88, W::U32),  // mtime nsec
    (96, W::U64),  // ctime sec
    (104, W::U32), // ctime nsec
    (112, W::U64), // generation
];
const INODE_NAME: usize = 128;

const EXTENT_FIELDS: &[(usize, W)] = &[
    (ext::FLAGS, W::U32),
    (ext::COUNT, W::U32),
    (ext::NEXT, W::U64),
    (ext::FILE_BLOCK, W::U64),
    (ext::PHYS_BLOCK, W::U64),
];

fn geometry() -> Geometry {
    Geometry::new(64 * BLOCK_SIZE, 24).unwrap()
}

/// The starting image, built once (formatting zeroes 2 MiB, which is slow
/// in a debug build; cloning is a memcpy): a directory, files with one and
/// two extents, an orphan with a block. Returns it with its used blocks.
fn base() -> &'static (Vec<u8>, u64) {
    static IMAGE: OnceLock<(Vec<u8>, u64)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let geo = geometry();
        let mut buf = vec![0u8; geo.meta_bytes() as usize];
        let mut st = Store::new(&geo);
        format(&mut buf, &geo, T, 1, &mut st.index()).unwrap();
        let mut words = vec![0u64; words_for(geo.nr_blocks)];
        let mut bm = BlockBitmap::new(&mut words, geo.nr_blocks).unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
        let d = m
            .create(ROOT_INO, &name(0), S_IFDIR | 0o755, 0, 0, T)
            .unwrap();
        let f = m
            .create(ROOT_INO, &name(1), S_IFREG | 0o644, 0, 0, T)
            .unwrap();
        m.allocate(f.ino, 0, 3, &mut bm).unwrap();
        m.set_size(f.ino, 3 * BLOCK_SIZE - 1, T, &mut bm).unwrap();
        let g = m.create(d.ino, &name(2), S_IFREG | 0o600, 0, 0, T).unwrap();
        m.allocate(g.ino, 1, 2, &mut bm).unwrap();
        m.allocate(f.ino, 8, 1, &mut bm).unwrap();
        m.allocate(g.ino, 6, 4, &mut bm).unwrap();
        m.set_size(g.ino, 20 * BLOCK_SIZE, T, &mut bm).unwrap();
        let o = m.create(d.ino, &name(3), S_IFREG | 0o600, 0, 0, T).unwrap();
        m.allocate(o.ino, 0, 1, &mut bm).unwrap();
        m.unlink(d.ino, &name(3), T).unwrap();
        m.create(d.ino, &name(4), S_IFDIR | 0o700, 0, 0, T).unwrap();
        let used = bm.used();
        (buf, used)
    })
}

/// Validates; on success returns the rebuilt used-block count.
fn validate_image(buf: &[u8], region_size: u64) -> Result<u64, Error> {
    let mut words = vec![0u64; words_for(region_size / BLOCK_SIZE)];
    validate_into(buf, region_size, &mut words).map(|(used, _)| used)
}

/// Validates as the kernel's adoption does, leaving the rebuilt block
/// bitmap in `words`; on success returns its used-block count and the
/// index built.
fn validate_into(buf: &[u8], region_size: u64, words: &mut [u64]) -> Result<(u64, Store), Error> {
    let geo = validate::superblock(buf, region_size)?;
    contents_into(buf, &geo, words)
}

/// The second step of validation alone (the first one's checksum is slow
/// in a debug build, and operations only change the superblock's inode
/// generation counter and high-water marks, checked once at the end).
fn contents_into(buf: &[u8], geo: &Geometry, words: &mut [u64]) -> Result<(u64, Store), Error> {
    let (store, rebuilt, _) = common::contents(buf, geo)?;
    words.copy_from_slice(&rebuilt[..words.len()]);
    Ok((common::used_blocks(&rebuilt), store))
}

fn boundary_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..64,
        1 => Just(u64::MAX),
        1 => Just(i64::MAX as u64),
        1 => Just(i64::MAX as u64 + 1),
        1 => Just(u64::MAX / BLOCK_SIZE),
        1 => Just((i64::MAX as u64).div_ceil(BLOCK_SIZE)),
        1 => any::<u64>(),
    ]
}

/// Operations on an image: building the valid one, and using the mutated
/// one. Inode arguments pick any record (free, orphan, linked, out of
/// range); a rename evicts the inode it replaces when the source name's
/// pick is even.
fn op() -> impl Strategy<Value = Op> {
    let name = 0u8..6;
    prop_oneof![
        4 => draw::create((any::<u8>(), name.clone(), any::<bool>())),
        2 => draw::unlink((any::<u8>(), name.clone(), any::<bool>())),
        2 => draw::rename(any::<u8>(), name, |from| from % 2 == 0),
        3 => draw::allocate((any::<u8>(), boundary_u64(), prop_oneof![1u64..20, boundary_u64()])),
        2 => draw::set_size((any::<u8>(), prop_oneof![
            0u64..(40 * BLOCK_SIZE),
            boundary_u64(),
            Just(u64::MAX - BLOCK_SIZE),
        ])),
        1 => any::<u8>().prop_map(|ino| Op::Evict { ino }),
        1 => Just(Op::Reclaim),
        1 => (any::<u8>(), any::<u32>(), prop_oneof![0u32..1_000_000_000, any::<u32>()])
            .prop_map(|(ino, perm, nsec)| Op::SetAttr { ino, perm, nsec }),
        1 => (any::<u8>(), boundary_u64()).prop_map(|(ino, block)| Op::Read { ino, block }),
    ]
}

/// Applies `op` (inode arguments picking any record). Ordinary errors are
/// fine; an error saying the metadata is damaged (or a block accounting
/// error) is not, for an image that passed validation.
fn apply(m: &mut Meta<'_, &mut [u8]>, bm: &mut BlockBitmap<'_>, op: &Op) -> Result<(), String> {
    common::apply(m, bm, op, &Pick::Any, T).no_damage(op)
}

/// The rules of docs/guestmemfs-format.md and of the kernel's VFS, checked
/// independently of the validator on an image it accepted: whatever the
/// validator lets through must satisfy them.
fn check_semantics(buf: &[u8], geo: &Geometry, st: &mut Store) -> Result<(), String> {
    let m = Meta::new(buf, *geo, st.index()).unwrap();
    let next_gen = get_u64(buf, 88);
    let mut inodes = Vec::new();
    for ino in 1..=geo.inode_count {
        if m.inode_in_use(ino).unwrap() {
            inodes.push(m.inode(ino).unwrap());
        }
    }
    for i in &inodes {
        let e = |what: &str| Err(format!("inode {}: {what}: {i:?}", i.ino));
        let linked = i.ino == ROOT_INO || i.nlink > 0;
        if !i.is_dir() && !i.is_reg() {
            return e("type");
        }
        if i.mode & !0o177777 != 0 {
            return e("mode bits");
        }
        if i.size > i64::MAX as u64 {
            return e("size above LLONG_MAX");
        }
        if i.is_dir() && (i.size != 0 || i.blocks != 0 || i.first_extent != 0) {
            return e("directory with a size or blocks");
        }
        if [i.atime, i.mtime, i.ctime]
            .iter()
            .any(|t| t.nsec >= 1_000_000_000)
        {
            return e("nsec");
        }
        if i.generation >= next_gen {
            return e("generation not below the superblock's counter");
        }
        if i.name_len > NAME_MAX {
            return e("name_len");
        }
        if !linked && i.parent != 0 {
            return e("orphan with a parent");
        }
        if i.is_reg() && i.nlink > 1 {
            return e("file nlink");
        }
        if i.is_dir() && linked {
            let subdirs = inodes
                .iter()
                .filter(|c| c.ino != ROOT_INO && c.is_dir() && c.nlink > 0 && c.parent == i.ino)
                .count() as u64;
            if u64::from(i.nlink) != 2 + subdirs {
                return e("directory nlink is not 2 + subdirectories");
            }
        }
        let mut end = 0u64;
        for x in m.extents(i.ino).unwrap() {
            let x = x.unwrap();
            end = x.file_block + x.count;
        }
        if end > (i64::MAX as u64).div_ceil(BLOCK_SIZE) {
            return e("extent past the largest file");
        }
    }
    Ok(())
}

/// Which record a mutation changes; indices pick among the records in
/// use (or free) modulo their number.
#[derive(Debug, Clone)]
enum Target {
    Superblock { field: usize },
    Inode { pick: u8, field: usize },
    InodeName { pick: u8, byte: u8 },
    FreeInode { pick: u8, field: usize },
    Extent { pick: u8, field: usize },
    FreeExtent { pick: u8, field: usize },
}

/// The new value of the field.
#[derive(Debug, Clone)]
enum Value {
    Const(u64),
    /// The old value plus a small signed delta (wrapping at the width).
    Delta(i8),
    /// The old value with bit `n` flipped.
    Flip(u8),
    /// A valid inode number (`n` modulo the table, + 1).
    InodeId(u8),
    /// A valid extent id.
    ExtentId(u8),
    /// Region block counts of the geometry, +/- 1.
    Blocks(u8),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        2 => (0..SB_FIELDS.len()).prop_map(|field| Target::Superblock { field }),
        6 => (any::<u8>(), 0..INODE_FIELDS.len())
            .prop_map(|(pick, field)| Target::Inode { pick, field }),
        1 => (any::<u8>(), 0u8..=255).prop_map(|(pick, byte)| Target::InodeName { pick, byte }),
        1 => (any::<u8>(), 0..INODE_FIELDS.len())
            .prop_map(|(pick, field)| Target::FreeInode { pick, field }),
        3 => (any::<u8>(), 0..EXTENT_FIELDS.len())
            .prop_map(|(pick, field)| Target::Extent { pick, field }),
        1 => (any::<u8>(), 0..EXTENT_FIELDS.len())
            .prop_map(|(pick, field)| Target::FreeExtent { pick, field }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        5 => prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(3),
            Just(u32::MAX as u64),
            Just(u32::MAX as u64 - 1),
            Just(u64::MAX),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1),
            Just(999_999_999),
            Just(1_000_000_000),
            Just((S_IFDIR | 0o755) as u64),
            Just((S_IFREG | 0o644) as u64),
            Just(0o120777),
            Just(256),
            Just(255),
            Just(BLOCK_SIZE),
            // Around the last file block of the largest file.
            Just((i64::MAX as u64).div_ceil(BLOCK_SIZE) - 1),
            Just((i64::MAX as u64).div_ceil(BLOCK_SIZE)),
            Just(u64::MAX / BLOCK_SIZE - 1),
            any::<u64>(),
        ]
        .prop_map(Value::Const),
        2 => (-3i8..=3).prop_map(Value::Delta),
        1 => (0u8..64).prop_map(Value::Flip),
        2 => any::<u8>().prop_map(Value::InodeId),
        2 => any::<u8>().prop_map(Value::ExtentId),
        1 => any::<u8>().prop_map(Value::Blocks),
    ]
}

fn read(buf: &[u8], off: usize, w: W) -> u64 {
    match w {
        W::U32 => u64::from(get_u32(buf, off)),
        W::U64 => get_u64(buf, off),
    }
}

fn write(buf: &mut [u8], off: usize, w: W, v: u64) {
    match w {
        W::U32 => set_u32(buf, off, v as u32),
        W::U64 => set_u64(buf, off, v),
    }
}

fn new_value(geo: &Geometry, old: u64, v: &Value) -> u64 {
    match *v {
        Value::Const(c) => c,
        Value::Delta(d) => old.wrapping_add(d as i64 as u64),
        Value::Flip(bit) => old ^ (1 << bit),
        Value::InodeId(n) => n as u64 % geo.inode_count + 1,
        Value::ExtentId(n) => n as u64 % geo.extent_count + 1,
        Value::Blocks(n) => {
            let base = [geo.nr_blocks, geo.meta_blocks, geo.data_blocks()][n as usize % 3];
            base.wrapping_add((n as u64 / 3 % 3).wrapping_sub(1))
        }
    }
}

/// Changes one field of `buf` (resealing the superblock checksum unless
/// the checksum itself is the target). Returns false when the target has
/// no record to change (no extent in use, say).
fn mutate(buf: &mut [u8], geo: &Geometry, t: &Target, v: &Value) -> bool {
    // In use by the format's definition (at or below the high-water
    // marks, flag set); free records include those above the marks.
    let (used_inodes, free_inodes, used_extents, free_extents) = {
        let ui = inodes_in_use(buf, geo);
        let ue = common::extents_in_use(buf, geo);
        let fi: Vec<u64> = (1..=geo.inode_count).filter(|i| !ui.contains(i)).collect();
        let fe: Vec<u64> = (1..=geo.extent_count).filter(|e| !ue.contains(e)).collect();
        (ui, fi, ue, fe)
    };
    let pick = |list: &[u64], n: u8| list.get(n as usize % list.len().max(1)).copied();
    let (off, w) = match *t {
        Target::Superblock { field } => SB_FIELDS[field],
        Target::Inode { pick: p, field } => {
            let (o, w) = INODE_FIELDS[field];
            (inode_off(pick(&used_inodes, p).unwrap()) + o, w)
        }
        Target::InodeName { pick: p, byte } => {
            let off = inode_off(pick(&used_inodes, p).unwrap()) + INODE_NAME + byte as usize % 255;
            let old = buf[off] as u64;
            buf[off] = new_value(geo, old, v) as u8;
            return true;
        }
        Target::FreeInode { pick: p, field } => {
            let Some(ino) = pick(&free_inodes, p) else {
                return false;
            };
            let (o, w) = INODE_FIELDS[field];
            (inode_off(ino) + o, w)
        }
        Target::Extent { pick: p, field } => {
            let Some(id) = pick(&used_extents, p) else {
                return false;
            };
            let (o, w) = EXTENT_FIELDS[field];
            (extent_off(geo, id) + o, w)
        }
        Target::FreeExtent { pick: p, field } => {
            let Some(id) = pick(&free_extents, p) else {
                return false;
            };
            let (o, w) = EXTENT_FIELDS[field];
            (extent_off(geo, id) + o, w)
        }
    };
    let old = read(buf, off, w);
    write(buf, off, w, new_value(geo, old, v));
    if off < SB_CHECKSUM && matches!(t, Target::Superblock { .. }) {
        reseal(buf);
    }
    true
}

/// Builds a valid image: the base, then `ops` (ordinary errors ignored).
fn build(ops: &[Op]) -> Result<Vec<u8>, TestCaseError> {
    let geo = geometry();
    let (image, used) = base();
    let mut buf = image.clone();
    let mut words = vec![0u64; words_for(geo.nr_blocks)];
    let (rebuilt, mut st) = contents_into(&buf, &geo, &mut words).unwrap();
    prop_assert_eq!(rebuilt, *used);
    let mut bm = BlockBitmap::attach(&mut words, geo.nr_blocks).unwrap();
    let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
    for op in ops {
        apply(&mut m, &mut bm, op).map_err(TestCaseError::fail)?;
    }
    let used = bm.used();
    check_semantics(&buf, &geo, &mut st).map_err(TestCaseError::fail)?;
    let (rebuilt, _) = contents_into(&buf, &geo, &mut vec![0u64; words_for(geo.nr_blocks)])
        .map_err(|e| TestCaseError::fail(format!("built image invalid: {e}")))?;
    prop_assert_eq!(rebuilt, used);
    Ok(buf)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn one_mutated_field_is_refused_or_harmless(
        setup in prop::collection::vec(op(), 0..40),
        t in target(),
        v in value(),
        after in prop::collection::vec(op(), 0..25),
    ) {
        let geo = geometry();
        let mut buf = build(&setup)?;
        if !mutate(&mut buf, &geo, &t, &v) {
            return Ok(());
        }
        // (a) Validation returns, whatever the field says.
        let mut words = vec![0u64; words_for(geo.nr_blocks)];
        let Ok((_, mut st)) = validate_into(&buf, geo.region_size, &mut words) else {
            return Ok(());
        };
        check_semantics(&buf, &geo, &mut st).map_err(TestCaseError::fail)?;
        // (b) An accepted image is usable: the kernel's adoption (the
        // rebuilt bitmap, orphans reclaimed), then ordinary operations,
        // each leaving a valid image the allocator agrees with, and
        // reporting no damage.
        let mut bm = BlockBitmap::attach(&mut words, geo.nr_blocks).unwrap();
        let adopt = [Op::Reclaim];
        for op in adopt.iter().chain(&after) {
            let mut m = Meta::new(&mut buf[..], geo, st.index()).unwrap();
            apply(&mut m, &mut bm, op).map_err(TestCaseError::fail)?;
            let mut words = vec![0u64; words_for(geo.nr_blocks)];
            let (rebuilt, fresh) = contents_into(&buf, &geo, &mut words).map_err(|e| {
                TestCaseError::fail(format!("invalid after {op:?}: {e}"))
            })?;
            prop_assert_eq!(rebuilt, bm.used(), "allocator disagrees after {:?}", op);
            // The index kept by the operations counts what a fresh
            // validation finds.
            prop_assert_eq!(fresh.counters.inodes_used(), st.counters.inodes_used());
            prop_assert_eq!(fresh.counters.extents_used(), st.counters.extents_used());
            prop_assert_eq!(fresh.counters.names(), st.counters.names());
            check_semantics(&buf, &geo, &mut st).map_err(TestCaseError::fail)?;
        }
        let rebuilt = validate_image(&buf, geo.region_size)
            .map_err(|e| TestCaseError::fail(format!("invalid at the end: {e}")))?;
        prop_assert_eq!(rebuilt, bm.used());
    }
}
