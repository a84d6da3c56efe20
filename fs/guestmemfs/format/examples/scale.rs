// SPDX-License-Identifier: GPL-2.0-only
//! Host benchmark of the metadata operations' scaling (issue 6): lookup,
//! create and readdir against the number of files, and the adoption of a
//! handover (validation, and the memory it allocates) against the region
//! size. Prints markdown tables with the ratio (x) of each case to the
//! smallest one.
//!
//!     cargo run --release -p guestmemfs-format --example scale
//!
//! The metadata lives in a zeroed `Vec` (about 530 MiB for the 1 TiB
//! geometry); its pages are touched first so that reads cost what they
//! cost on real memory. The index and the scratch are sized and grown as
//! the kernel does (`IndexSizes::initial`, `to_grow`, `for_image`).

use guestmemfs_format::bitmap::words_for;
use guestmemfs_format::layout::*;
use guestmemfs_format::meta::format;
use guestmemfs_format::validate::{self, Scratch, ScratchSizes};
use guestmemfs_format::{BlockBitmap, Index, IndexCounters, IndexSizes, Meta};
use std::hint::black_box;
use std::time::{Duration, Instant};

const T: Time = Time { sec: 1, nsec: 0 };
const SEED: [u64; 2] = [0x1234, 0x5678];
const GIB: u64 = 1 << 30;

/// A zeroed allocation whose pages are faulted in, as `kvzalloc` gives.
fn zeroed<T: Copy + Default>(n: usize) -> Vec<T> {
    let mut v = vec![T::default(); n];
    black_box(&mut v);
    v.fill(T::default());
    v
}

/// A metadata image in memory, with the index and the block bitmap the
/// kernel keeps between calls.
struct Image {
    geo: Geometry,
    buf: Vec<u8>,
    words: Vec<u64>,
    counters: IndexCounters,
    blocks: Vec<u64>,
    blocks_used: u64,
}

impl Image {
    fn new(region: u64) -> Image {
        let geo = Geometry::new(region, Geometry::default_inodes(region)).unwrap();
        let mut img = Image {
            geo,
            buf: zeroed(geo.meta_bytes() as usize),
            words: zeroed(IndexSizes::initial(&geo).words),
            counters: IndexCounters::new(SEED),
            blocks: zeroed(words_for(geo.nr_blocks)),
            blocks_used: 0,
        };
        let mut index = Index::new(&mut img.words, &mut img.counters, &geo).unwrap();
        format(&mut img.buf, &geo, T, 1, &mut index).unwrap();
        let mut bm = BlockBitmap::new(&mut img.blocks, geo.nr_blocks).unwrap();
        bm.mark_used(0, geo.meta_blocks).unwrap();
        img.blocks_used = bm.used();
        img
    }

    /// Runs `f` as the kernel runs one VFS call: grows the index first if
    /// one more inode would not fit, builds a `Meta` and the allocator.
    fn with<R>(
        &mut self,
        f: impl FnOnce(&mut Meta<'_, &mut [u8]>, &mut BlockBitmap<'_>) -> R,
    ) -> R {
        if let Some(sizes) = IndexSizes::to_grow(&self.geo, &self.counters) {
            let mut words = zeroed(sizes.words);
            Index::new(&mut self.words, &mut self.counters, &self.geo)
                .unwrap()
                .grow_into(&mut words)
                .unwrap();
            self.words = words;
        }
        let index = Index::new(&mut self.words, &mut self.counters, &self.geo).unwrap();
        let mut m = Meta::new(&mut self.buf[..], self.geo, index).unwrap();
        let mut bm =
            BlockBitmap::resume(&mut self.blocks, self.geo.nr_blocks, self.blocks_used).unwrap();
        let r = f(&mut m, &mut bm);
        self.blocks_used = bm.used();
        r
    }
}

fn name(i: u64) -> Vec<u8> {
    format!("file-{i:08}").into_bytes()
}

/// A deterministic spread of `0..n`.
fn spread(i: u64, n: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % n
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..runs).map(|_| f()).collect();
    v.sort();
    v[runs / 2]
}

/// Adopts `buf` as the kernel does, with scratch and index storage sized
/// by the image (`for_image`), allocated before the clock starts; returns
/// the time of `validate::contents` alone and the inodes it found.
fn time_contents(buf: &[u8], region: u64) -> (Duration, u64) {
    let geo = validate::superblock(buf, region).unwrap();
    let s = ScratchSizes::for_image(buf, &geo).unwrap();
    let mut words: Vec<u64> = zeroed(IndexSizes::for_image(buf, &geo).unwrap().words);
    let mut marks: Vec<u8> = zeroed(s.inode_marks);
    let mut subdirs: Vec<u32> = zeroed(s.subdirs);
    let mut bwords: Vec<u64> = zeroed(s.block_words);
    let mut pins: Vec<u64> = zeroed(s.block_words);
    let mut counters = IndexCounters::new(SEED);
    let mut index = Index::new(&mut words, &mut counters, &geo).unwrap();
    let mut scratch = Scratch {
        inode_marks: &mut marks,
        subdirs: &mut subdirs,
        blocks: BlockBitmap::new(&mut bwords, geo.nr_blocks)
            .and_then(|b| b.with_pins(&mut pins))
            .unwrap(),
    };
    let t = Instant::now();
    let n = validate::contents(buf, &geo, &mut scratch, &mut index).unwrap();
    (t.elapsed(), n)
}

/// Time to get a zeroed allocation of `words` words.
fn time_zeroed(words: usize) -> Duration {
    median(3, || {
        let t = Instant::now();
        black_box(zeroed::<u64>(words));
        t.elapsed()
    })
}

struct FilesRow {
    files: u64,
    create: f64,
    lookup: f64,
    readdir: f64,
    scan: f64,
    validate: f64,
    validate_per_inode: f64,
}

fn files_case(files: u64) -> FilesRow {
    // One geometry for every case: 256 GiB, 262144 inode records; all
    // files in one directory.
    let mut img = Image::new(256 * GIB);
    let d = img.with(|m, _| {
        m.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, T)
            .unwrap()
            .ino
    });
    for i in 0..files {
        img.with(|m, _| m.create(d, &name(i), S_IFREG | 0o644, 0, 0, T).unwrap());
    }
    // Create at this size: a batch of 1000 more, one call each, removed
    // again afterwards.
    const BATCH: u64 = 1000;
    let create = median(5, || {
        let t = Instant::now();
        for i in 0..BATCH {
            let n = name(files + i);
            black_box(img.with(|m, _| m.create(d, &n, S_IFREG | 0o644, 0, 0, T).unwrap()));
        }
        let e = t.elapsed();
        for i in 0..BATCH {
            let n = name(files + i);
            img.with(|m, bm| {
                let x = m.unlink(d, &n, T).unwrap();
                m.evict(x.ino, bm).unwrap();
            });
        }
        e
    });
    // Lookups of existing names spread over the directory, one call each.
    const LOOKUPS: u64 = 10_000;
    let lookup = median(5, || {
        let t = Instant::now();
        for i in 0..LOOKUPS {
            let n = name(spread(i, files));
            black_box(img.with(|m, _| m.lookup(d, &n).unwrap()));
        }
        t.elapsed()
    });
    // A full listing, one call per entry as the kernel's iterate does.
    let readdir = median(5, || {
        let t = Instant::now();
        let mut pos = 0;
        let mut n = 0;
        while let Some((_, next)) = img.with(|m, _| m.readdir(d, pos).unwrap()) {
            pos = next;
            n += 1;
        }
        assert_eq!(n, files);
        t.elapsed()
    });
    // The previous lookup: a scan of the inode table up to the name.
    const SCANS: u64 = 5;
    let scan = median(3, || {
        let t = Instant::now();
        for i in 0..SCANS {
            let want = name(spread(i, files));
            let found = img.with(|m, _| {
                (1..=m.geometry().inode_count).find(|&ino| {
                    m.inode_in_use(ino).unwrap() && {
                        let x = m.inode(ino).unwrap();
                        x.parent == d && x.nlink > 0 && x.name() == &want[..]
                    }
                })
            });
            black_box(found.unwrap());
        }
        t.elapsed()
    });
    let region = img.geo.region_size;
    let validate = median(5, || time_contents(&img.buf, region).0);
    let inodes = img.with(|m, _| m.inodes_used().unwrap());
    FilesRow {
        files,
        create: ns_per(create, BATCH),
        lookup: ns_per(lookup, LOOKUPS),
        readdir: ns_per(readdir, files),
        scan: ns_per(scan, SCANS),
        validate: us(validate),
        validate_per_inode: ns_per(validate, inodes),
    }
}

struct RegionRow {
    region: u64,
    inodes: u64,
    meta_mib: u64,
    v2: f64,
    adopt_kib: f64,
    adopt_alloc: f64,
    v1: f64,
    full_mib: f64,
    full_alloc: f64,
}

fn region_case(region: u64) -> RegionRow {
    let mut img = Image::new(region);
    // A handful of files: two directories, six files with 1 to 3 extents.
    for dn in 0..2u64 {
        let dir = img.with(|m, _| {
            m.create(ROOT_INO, &name(dn), S_IFDIR | 0o755, 0, 0, T)
                .unwrap()
                .ino
        });
        for f in 0..3u64 {
            img.with(|m, bm| {
                let i = m
                    .create(dir, &name(f), S_IFREG | 0o644, 0, 0, T)
                    .unwrap()
                    .ino;
                for e in 0..=f {
                    m.allocate(i, e * 4, 2, bm).unwrap();
                }
                m.set_size(i, 12 * BLOCK_SIZE, T, bm).unwrap();
            });
        }
    }
    let geo = img.geo;
    let v2 = median(21, || {
        let (t, n) = time_contents(&img.buf, region);
        assert_eq!(n, 9);
        t
    });
    // What adopting allocates: index and scratch sized by the handover's
    // marks (scratch: a byte and a u32 per inode record up to the mark,
    // the block bitmap).
    let s = ScratchSizes::for_image(&img.buf, &geo).unwrap();
    let adopt_words = IndexSizes::for_image(&img.buf, &geo).unwrap().words
        + (s.inode_marks * 5).div_ceil(8)
        + s.block_words;
    let adopt_alloc = time_zeroed(adopt_words);
    // The same image as a version 1 handover: no marks, every record read
    // (what validation cost before), and an index sized by the geometry.
    let mut v1buf = img.buf.clone();
    v1buf[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1buf[96..112].fill(0);
    let sum = crc32c(&v1buf[..4092]);
    v1buf[4092..4096].copy_from_slice(&sum.to_le_bytes());
    let v1 = median(3, || {
        let (t, n) = time_contents(&v1buf, region);
        assert_eq!(n, 9);
        t
    });
    let full_words = IndexSizes::for_geometry(&geo).words;
    RegionRow {
        region,
        inodes: geo.inode_count,
        meta_mib: geo.meta_bytes() >> 20,
        v2: us(v2),
        adopt_kib: (adopt_words * 8) as f64 / 1024.0,
        adopt_alloc: us(adopt_alloc),
        v1: us(v1),
        full_mib: (full_words * 8) as f64 / 1048576.0,
        full_alloc: us(time_zeroed(full_words)),
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 40 {
        format!("{} TiB", bytes >> 40)
    } else {
        format!("{} GiB", bytes >> 30)
    }
}

fn main() {
    println!(
        "## Operations against the number of files \
         (256 GiB geometry, 262144 inode records, all files in one directory)\n"
    );
    println!(
        "| files | create (ns/op) | x | lookup (ns/op) | x | readdir (ns/entry) | x \
         | full-scan lookup, as before (ns/op) | x \
         | validate::contents (us) | per inode (ns) | x |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows: Vec<FilesRow> = [10, 10_000, 100_000].into_iter().map(files_case).collect();
    let b = &rows[0];
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} \
             | {:.0} | {:.0} | {:.2} |",
            r.files,
            r.create,
            r.create / b.create,
            r.lookup,
            r.lookup / b.lookup,
            r.readdir,
            r.readdir / b.readdir,
            r.scan,
            r.scan / b.scan,
            r.validate,
            r.validate_per_inode,
            r.validate_per_inode / b.validate_per_inode,
        );
    }
    println!(
        "\n## Adopting a handover against the region size \
         (default geometry, 2 directories and 6 files)\n"
    );
    println!(
        "| region | inode records | metadata (MiB) | validate::contents (us) | x \
         | index + scratch allocated (KiB) | zeroed allocation (us) | x \
         | version 1 image, every record read (us) | x \
         | index sized by the geometry instead (MiB) | its zeroed allocation (us) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows: Vec<RegionRow> = [2 * GIB, 64 * GIB, 1024 * GIB]
        .into_iter()
        .map(region_case)
        .collect();
    let b = &rows[0];
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} \
             | {:.1} | {:.0} |",
            size(r.region),
            r.inodes,
            r.meta_mib,
            r.v2,
            r.v2 / b.v2,
            r.adopt_kib,
            r.adopt_alloc,
            r.adopt_alloc / b.adopt_alloc,
            r.v1,
            r.v1 / b.v1,
            r.full_mib,
            r.full_alloc,
        );
    }
}
