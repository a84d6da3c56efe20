// SPDX-License-Identifier: GPL-2.0-only
//! guestmemfs hardening (issue 6): huge mappings at any file offset and
//! whatever page is touched first, POSIX size semantics at EOF, SIGBUS on
//! a full filesystem, attribute/truncate/rename races, get_user_pages
//! limits, locator generations after kexec, and a 512 GiB region kept
//! across kexec.
//!
//! Random choices come from a seed printed as a KTAP diagnostic; boot
//! with `gtest.seed=<hex>` to replay them.

use super::gmfs::{
    self, create_sized, fallocate, minor_faults, mount, p, sigbus_on_touch, statfs, Mapping,
    Verdict, GIB, MIB, MNT,
};
use super::region::{region, requested_size};
use super::{Ctx, Outcome, TestResult};
use crate::ktap::diag;
use crate::{pattern, sys};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PAGE: usize = 4096;
const PAGES_PER_GIB: usize = (GIB as usize) / PAGE;

/// The seed of a test's random choices: `gtest.seed=` from the kernel
/// command line (hex) to replay a run, else the clock. Printed.
fn test_seed(test: &str) -> u64 {
    let given = fs::read_to_string("/proc/cmdline").ok().and_then(|c| {
        c.split_whitespace()
            .find_map(|t| t.strip_prefix("gtest.seed="))
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
    });
    let seed = given.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    diag(&format!(
        "{test}: seed {seed:#x} (boot with gtest.seed={seed:#x} to replay)"
    ));
    seed
}

/// xorshift64*: small, fast and reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Any seed, 0 included, gives a non-zero state.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `0..n` shuffled, never starting with 0: a unit is not entered at
    /// its first page, which is the case the old fault path got right.
    fn order(&mut self, n: usize) -> Vec<u32> {
        let mut v: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            v.swap(i, self.below(i + 1));
        }
        if n > 1 && v[0] == 0 {
            let j = 1 + self.below(n - 1);
            v.swap(0, j);
        }
        v
    }
}

/// PROT_NONE address space in which file mappings are placed with
/// MAP_FIXED at chosen alignments, the way QEMU places guest RAM.
/// Unmapped on drop together with every mapping inside it.
struct Reservation {
    base: *mut u8,
    len: usize,
}

impl Reservation {
    fn new(len: u64) -> Result<Reservation, String> {
        // SAFETY: no MAP_FIXED: the kernel picks a free range.
        let base = unsafe {
            sys::mmap(
                0,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        }
        .map_err(|e| format!("reserve {len:#x} bytes of address space: {e}"))?;
        Ok(Reservation {
            base,
            len: len as usize,
        })
    }

    /// The first `align`-aligned address inside, plus `skew`.
    fn at(&self, align: u64, skew: u64) -> usize {
        ((self.base as u64).next_multiple_of(align) + skew) as usize
    }

    /// Maps `len` bytes of `file` from `offset`, MAP_SHARED|MAP_FIXED at
    /// `addr`, which must be inside the reservation.
    fn map(&self, file: &File, addr: usize, len: u64, offset: u64) -> Result<Window<'_>, String> {
        let (start, end) = (self.base as usize, self.base as usize + self.len);
        if addr < start || addr + len as usize > end {
            return Err(format!(
                "{addr:#x}+{len:#x} is outside the reservation {start:#x}-{end:#x}"
            ));
        }
        // SAFETY: MAP_FIXED inside our own reservation.
        let ptr = unsafe {
            sys::mmap(
                addr,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset,
            )
        }
        .map_err(|e| format!("mmap {len:#x} bytes of file offset {offset:#x} at {addr:#x}: {e}"))?;
        Ok(Window {
            ptr,
            len: len as usize,
            offset,
            _in: PhantomData,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: our own range; the windows inside borrow the
        // reservation, so none is alive any more.
        let _ = unsafe { sys::munmap(self.base, self.len) };
    }
}

/// A shared file mapping inside a [`Reservation`].
struct Window<'r> {
    ptr: *mut u8,
    len: usize,
    /// File offset of `ptr`.
    offset: u64,
    _in: PhantomData<&'r Reservation>,
}

impl Window<'_> {
    fn addr(&self) -> usize {
        self.ptr as usize
    }

    fn pages(&self) -> usize {
        self.len / PAGE
    }

    fn read(&self, pos: usize) -> u64 {
        assert!(pos.is_multiple_of(8) && pos + 8 <= self.len);
        // SAFETY: in bounds and aligned; volatile so every access faults
        // where it should.
        unsafe { std::ptr::read_volatile(self.ptr.add(pos).cast::<u64>()) }
    }

    fn write(&self, pos: usize, value: u64) {
        assert!(pos.is_multiple_of(8) && pos + 8 <= self.len);
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile(self.ptr.add(pos).cast::<u64>(), value) }
    }

    /// Moves the mapping with mremap(MREMAP_MAYMOVE|MREMAP_FIXED) to
    /// `addr` inside `to`.
    fn move_to<'s>(self, to: &'s Reservation, addr: usize) -> Result<Window<'s>, String> {
        let (start, end) = (to.base as usize, to.base as usize + to.len);
        if addr < start || addr + self.len > end {
            return Err(format!("mremap target {addr:#x} outside its reservation"));
        }
        // SAFETY: the old range is ours and not used after the move; the
        // new one is inside our own reservation.
        let ptr = unsafe { sys::mremap_fixed(self.ptr, self.len, addr) }.map_err(|e| {
            format!(
                "mremap {:#x} bytes from {:#x} to {addr:#x}: {e}",
                self.len,
                self.addr()
            )
        })?;
        Ok(Window {
            ptr,
            len: self.len,
            offset: self.offset,
            _in: PhantomData,
        })
    }
}

/// The word stamped at byte `file_off` of a file: its own offset mixed
/// with the run's seed, so neither zeros nor another offset's page match.
fn stamp(seed: u64, file_off: u64) -> u64 {
    file_off ^ seed
}

/// Byte positions in a page of the stamped words: first and last.
const STAMPED: [usize; 2] = [0, PAGE - 8];

/// Stamps both words of page `page` of the window with their file offset.
fn stamp_page(w: &Window, seed: u64, page: usize) {
    for s in STAMPED {
        let pos = page * PAGE + s;
        w.write(pos, stamp(seed, w.offset + pos as u64));
    }
}

/// Checks that every page of `w` shows the stamps of its own file
/// offset, visiting the pages in a random order; with `first_page_first`
/// page 0 is visited (and so faulted) first.
fn check_stamps(
    w: &Window,
    seed: u64,
    rng: &mut Rng,
    first_page_first: bool,
    what: &str,
) -> Result<(), String> {
    let mut order = rng.order(w.pages());
    if first_page_first {
        let zero = order.iter().position(|&p| p == 0).unwrap_or(0);
        order.swap(0, zero);
    }
    for page in order {
        for s in STAMPED {
            let pos = page as usize * PAGE + s;
            let file_off = w.offset + pos as u64;
            let seen = w.read(pos);
            if seen != stamp(seed, file_off) {
                let shows = if seen == 0 {
                    "0 (zeroed or never stamped)".to_owned()
                } else {
                    format!("{seen:#x}, the stamp of file offset {:#x}", seen ^ seed)
                };
                return Err(format!(
                    "{what}: at {:#x} (file offset {file_off:#x}) read {shows}; expected the stamp of file offset {file_off:#x}",
                    w.addr() + pos
                ));
            }
        }
    }
    Ok(())
}

/// Kernel log lines that mean trouble (see [`sys::kernel_trouble`]).
fn trouble_count() -> Result<usize, String> {
    sys::kernel_trouble()
        .map(|t| t.len())
        .map_err(|e| format!("kernel log: {e}"))
}

/// Fails if the kernel logged trouble since `before` such lines.
fn no_new_trouble(before: usize) -> Result<(), String> {
    let now = sys::kernel_trouble().map_err(|e| format!("kernel log: {e}"))?;
    match now.get(before..) {
        Some(new) if !new.is_empty() => Err(format!("kernel log: {}", new.join(" | "))),
        _ => Ok(()),
    }
}

fn remove(rel: &str) -> Result<(), String> {
    fs::remove_file(p(rel)).map_err(|e| format!("unlink {rel}: {e}"))
}

/// A test file that is unlinked when the guard is dropped, also when the
/// test fails half-way: the GiBs it holds are needed by the next tests.
struct Scratch(&'static str);

impl Scratch {
    fn create(rel: &'static str, size: u64) -> Result<(Scratch, File), String> {
        let f = create_sized(&p(rel), size)?;
        Ok((Scratch(rel), f))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(p(self.0));
    }
}

/// The file `map_any_offset` stamps: two whole GiBs and a tail.
const ANY_FILE: u64 = 2 * GIB + 4 * MIB;

/// Where `map_any_offset` maps the stamped file: file offset, distance of
/// the address from 1 GiB alignment, length.
struct Placement {
    offset: u64,
    skew: u64,
    len: u64,
    what: &'static str,
}

const PLACEMENTS: &[Placement] = &[
    Placement {
        offset: 2 * MIB,
        skew: 0,
        len: GIB + 4 * MIB,
        what: "file offset 2 MiB at a 1 GiB-aligned address",
    },
    Placement {
        offset: 4096,
        skew: 0,
        len: GIB + 4 * MIB,
        what: "file offset 4 KiB at a 1 GiB-aligned address",
    },
    Placement {
        offset: GIB,
        skew: 0,
        len: GIB + 4 * MIB,
        what: "file offset 1 GiB at a 1 GiB-aligned address",
    },
    // 1 GiB into this mapping the address is 1 GiB aligned and so is the
    // file offset (1 GiB): a PUD is allowed there, whatever page of that
    // GiB the random order touches first.
    Placement {
        offset: 2 * MIB,
        skew: 2 * MIB,
        len: ANY_FILE - 2 * MIB,
        what: "file offset 2 MiB at a 2 MiB- but not 1 GiB-aligned address",
    },
    Placement {
        offset: 0,
        skew: 4096,
        len: GIB + 4 * MIB,
        what: "file offset 0 at an address 4 KiB off 2 MiB alignment",
    },
];

/// Every page of a file shows its own data through mappings at any file
/// offset and address alignment, and after mremap.
pub fn map_any_offset(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let seed = test_seed("map_any_offset");
    let mut rng = Rng::new(seed);
    let (_unlink, f) = Scratch::create("anyoff", ANY_FILE)?;
    {
        let res = Reservation::new(ANY_FILE + GIB)?;
        let w = res.map(&f, res.at(GIB, 0), ANY_FILE, 0)?;
        for page in 0..w.pages() {
            stamp_page(&w, seed, page);
        }
    }
    diag(&format!(
        "stamped every 4 KiB of a {} MiB file with its file offset through a mapping at offset 0",
        ANY_FILE >> 20
    ));
    // Page 0 is visited first: with the old fault path, touching the
    // first byte of a 1 GiB-aligned address mapped the GiB at file offset
    // 0 whatever the mapping's offset. The rest in a random order.
    for pl in PLACEMENTS {
        let res = Reservation::new(pl.len + GIB + pl.skew)?;
        let w = res.map(&f, res.at(GIB, pl.skew), pl.len, pl.offset)?;
        check_stamps(&w, seed, &mut rng, true, pl.what)?;
        diag(&format!(
            "{}: all {} pages at {:#x} show their own offset",
            pl.what,
            w.pages(),
            w.addr()
        ));
    }
    // mremap moves a mapping (and its huge entries); the pages must keep
    // their file offsets at 1 GiB and at 2 MiB alignment.
    let (a, b, c) = (
        Reservation::new(2 * GIB)?,
        Reservation::new(2 * GIB)?,
        Reservation::new(2 * GIB + 2 * MIB)?,
    );
    let w = a.map(&f, a.at(GIB, 0), GIB, GIB)?;
    check_stamps(
        &w,
        seed,
        &mut rng,
        true,
        "1 GiB at file offset 1 GiB, 1 GiB-aligned",
    )?;
    let w = w.move_to(&b, b.at(GIB, 0))?;
    check_stamps(
        &w,
        seed,
        &mut rng,
        false,
        "the same mapping moved by mremap to another 1 GiB-aligned address",
    )?;
    let w = w.move_to(&c, c.at(GIB, 2 * MIB))?;
    check_stamps(
        &w,
        seed,
        &mut rng,
        false,
        "the same mapping moved by mremap to a 2 MiB- but not 1 GiB-aligned address",
    )?;
    diag("1 GiB at file offset 1 GiB: right through mremap to 1 GiB and to 2 MiB alignment");
    Ok(Outcome::Pass)
}

/// The hole file `fault_order` maps: two whole GiBs.
const ORDER_FILE: u64 = 2 * GIB;

/// Touching the pages of each GiB in a random order (never its first
/// page first) takes one fault per GiB at 1 GiB alignment, one per 2 MiB
/// at 2 MiB alignment.
pub fn fault_order(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let seed = test_seed("fault_order");
    let mut rng = Rng::new(seed);
    let units = (ORDER_FILE / GIB) as usize;
    // (distance from 1 GiB alignment, faults allowed per GiB, what)
    for (skew, allowed, what) in [
        (0, 1, "1 GiB-aligned"),
        (2 * MIB, GIB / (2 * MIB), "2 MiB- but not 1 GiB-aligned"),
    ] {
        // A fresh hole file each time: the faults also allocate.
        let (_unlink, f) = Scratch::create("order", ORDER_FILE)?;
        let res = Reservation::new(ORDER_FILE + GIB + skew)?;
        let w = res.map(&f, res.at(GIB, skew), ORDER_FILE, 0)?;
        let mut faults = vec![0u64; units];
        let mut firsts = vec![0usize; units];
        for g in 0..units {
            // Built (and its memory faulted in) before counting.
            let order = rng.order(PAGES_PER_GIB);
            firsts[g] = order[0] as usize * PAGE;
            let before = minor_faults();
            for &page in &order {
                stamp_page(&w, seed, g * PAGES_PER_GIB + page as usize);
            }
            faults[g] = minor_faults() - before;
        }
        diag(&format!(
            "{what} mapping at {:#x} of a fresh {} GiB hole file, pages of each GiB written in a random order: minor faults per GiB {faults:?}",
            w.addr(),
            ORDER_FILE >> 30
        ));
        // Exact bound, as in guestmemfs_huge_mappings: nothing else in
        // this single-threaded process faults while counting.
        for (g, (&n, first)) in faults.iter().zip(&firsts).enumerate() {
            if n > allowed {
                return Err(format!(
                    "GiB {g} of the {what} mapping: {n} minor faults to write its pages in a random order (first write at +{first:#x} into the GiB), expected <= {allowed}"
                ));
            }
        }
        check_stamps(&w, seed, &mut rng, false, what)?;
    }
    Ok(Outcome::Pass)
}

/// The file `size_tail` cuts.
const TAIL_FILE: u64 = 4 * MIB;

/// (size to cut the 4 MiB file to, first byte read after the cut): a
/// page in the block holding EOF that is not the block's first, so the
/// first fault there tries a 2 MiB entry.
const TAIL_CASES: &[(u64, usize)] = &[
    (3 * MIB + 100, 3 * MIB as usize),
    (5000, 4999),
    (2 * MIB - 1, MIB as usize),
];

/// POSIX sizes: after a cut to any size the EOF page is readable with
/// zeros past EOF, every later page raises SIGBUS, and growing again
/// shows zeros, never the old bytes.
pub fn size_tail(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    for &(cut, first) in TAIL_CASES {
        tail_case(cut, first)?;
        diag(&format!(
            "cut to {cut} bytes: EOF page readable with zeros past EOF, later pages SIGBUS, zeros after growing back"
        ));
    }
    Ok(Outcome::Pass)
}

/// Offsets past the EOF page of a file cut to `cut` that must raise
/// SIGBUS in a mapping of `TAIL_FILE + 2 MiB`.
fn tail_probes(cut: u64) -> Vec<usize> {
    let eof_page_end = cut.next_multiple_of(PAGE as u64);
    let block_end = cut.next_multiple_of(2 * MIB);
    let mut v = vec![
        eof_page_end,
        (eof_page_end + block_end) / 2 / PAGE as u64 * PAGE as u64,
        block_end.saturating_sub(1),
        block_end,
        TAIL_FILE - 1,
        TAIL_FILE + 2 * MIB - 1,
    ];
    v.retain(|&o| o >= eof_page_end);
    v.sort_unstable();
    v.dedup();
    v.into_iter().map(|o| o as usize).collect()
}

fn first_nonzero(bytes: &[u8], base: usize) -> Option<(usize, u8)> {
    bytes
        .iter()
        .position(|&b| b != 0)
        .map(|i| (base + i, bytes[i]))
}

fn tail_case(cut: u64, first: usize) -> Result<(), String> {
    let seed = 0x7a11_0000 ^ cut;
    let cut_at = cut as usize;
    let f = create_sized(&p("tail"), TAIL_FILE)?;
    let mut m = Mapping::new(&f, TAIL_FILE, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    pattern::fill(seed, 0, m.bytes());
    drop(m);
    f.set_len(cut)
        .map_err(|e| format!("ftruncate to {cut}: {e}"))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if size != cut {
        return Err(format!("ftruncate to {cut}: st_size is {size}"));
    }
    // A fresh mapping reaching past the old size; 2 MiB aligned, so the
    // first fault in the block holding EOF tries a 2 MiB entry.
    let mut m = Mapping::new(&f, TAIL_FILE + 2 * MIB, 0, libc::MAP_SHARED)
        .map_err(|e| format!("mmap after the cut to {cut}: {e}"))?;
    if !(m.ptr as u64).is_multiple_of(2 * MIB) {
        return Err(format!(
            "a {} MiB mapping placed at {:p}, not 2 MiB aligned: no 2 MiB entry would be tried",
            (TAIL_FILE + 2 * MIB) >> 20,
            m.ptr
        ));
    }
    let bytes = m.bytes();
    // SAFETY: in bounds; volatile so this read is the block's first fault.
    let b = unsafe { std::ptr::read_volatile(bytes.as_ptr().add(first)) };
    if let Some(bad) = pattern::first_mismatch(seed, first as u64, &[b]) {
        return Err(format!(
            "after ftruncate to {cut}: first read at {bad:#x} shows {b:#x}, not the data written"
        ));
    }
    if let Some(bad) = pattern::first_mismatch(seed, 0, &bytes[..cut_at]) {
        return Err(format!(
            "after ftruncate to {cut}: byte {bad:#x} (before EOF) differs from the data written"
        ));
    }
    let eof_page_end = cut.next_multiple_of(PAGE as u64) as usize;
    if let Some((at, v)) = first_nonzero(&bytes[cut_at..eof_page_end], cut_at) {
        return Err(format!(
            "after ftruncate to {cut}: byte {at:#x} (past EOF, in the EOF page) reads {v:#x}, expected 0"
        ));
    }
    for probe in tail_probes(cut) {
        if !sigbus_on_touch(&mut m, probe) {
            return Err(format!(
                "after ftruncate to {cut}: touching byte {probe:#x} (past the EOF page, which ends at {eof_page_end:#x}) did not raise SIGBUS"
            ));
        }
    }
    drop(m);
    f.set_len(TAIL_FILE)
        .map_err(|e| format!("ftruncate back to {TAIL_FILE}: {e}"))?;
    let mut m = Mapping::new(&f, TAIL_FILE, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let bytes = m.bytes();
    if let Some(bad) = pattern::first_mismatch(seed, 0, &bytes[..cut_at]) {
        return Err(format!(
            "after ftruncate to {cut} and back to 4 MiB: byte {bad:#x} (kept) differs from the data written"
        ));
    }
    if let Some((at, v)) = first_nonzero(&bytes[cut_at..], cut_at) {
        return Err(format!(
            "after ftruncate to {cut} and back to 4 MiB: byte {at:#x} reads {v:#x}, expected 0 (old data came back)"
        ));
    }
    drop((m, f));
    remove("tail")
}

/// How long a fault on a full filesystem may take before it counts as an
/// endless refault.
const FULL_WAIT: Duration = Duration::from_secs(20);

/// A fault that needs a block on a full filesystem raises SIGBUS instead
/// of refaulting forever.
pub fn full_fault_sigbus(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let s0 = statfs(MNT)?;
    let (big_unlink, big) = Scratch::create("full-big", 0)?;
    fallocate(&big, 0, s0.bfree * s0.bsize)?;
    let s1 = statfs(MNT)?;
    if s1.bfree != 0 {
        return Err(format!(
            "fallocate of all {} free blocks left {} free",
            s0.bfree, s1.bfree
        ));
    }
    let (hole_unlink, hole) = Scratch::create("full-hole", 4 * MIB)?;
    let m = Mapping::new(&hole, 4 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let ptr = m.ptr;
    for (what, write) in [("write", true), ("read", false)] {
        let touch = || {
            // SAFETY: inside the 4 MiB mapping; a SIGBUS ends the child.
            unsafe {
                if write {
                    std::ptr::write_volatile(ptr.add(MIB as usize), 1);
                } else {
                    std::ptr::read_volatile(ptr.add(MIB as usize));
                }
            }
            0
        };
        // SAFETY: single-threaded; the child only touches the mapping.
        let end = unsafe { sys::in_child(FULL_WAIT, touch) }.map_err(|e| format!("fork: {e}"))?;
        match end {
            sys::ChildEnd::Signaled(libc::SIGBUS) => {
                diag(&format!(
                    "{what} fault in a hole of a full filesystem: SIGBUS"
                ));
            }
            sys::ChildEnd::Killed => {
                return Err(format!(
                    "a {what} fault in a hole of a full filesystem did not end within {} s (endless refault?): child killed",
                    FULL_WAIT.as_secs()
                ))
            }
            other => {
                return Err(format!(
                    "a {what} fault in a hole of a full filesystem: child ended with {other:?}, expected SIGBUS"
                ))
            }
        }
    }
    drop((m, hole, big, hole_unlink, big_unlink));
    let s2 = statfs(MNT)?;
    if s2.bfree != s0.bfree {
        return Err(format!(
            "after unlinking: {} free blocks, {} before",
            s2.bfree, s0.bfree
        ));
    }
    Ok(Outcome::Pass)
}

/// How long the race tests race.
const RACE_TIME: Duration = Duration::from_secs(20);
/// Most chmods `attr_race` does, and its time limit (which is what
/// bounds it under TCG: the window it hunts for is a few instructions).
const ATTR_ROUNDS: u64 = 100_000;
const ATTR_TIME: Duration = Duration::from_secs(30);
/// chmods between two inode-cache drops in `attr_race`.
const ATTR_DROP_EVERY: u64 = 1000;

/// Attributes one round of `attr_race` sets: alternating modes, and
/// alternating owners every 8 rounds.
fn attr_for(round: u64) -> (u32, u32, u32) {
    let mode = if round.is_multiple_of(2) {
        0o640
    } else {
        0o604
    };
    let owner = (round / 8) % 2;
    (mode, 1000 + owner as u32, 2000 + owner as u32)
}

fn check_attrs(path: &str, want: (u32, u32, u32), when: &str) -> Result<(), String> {
    let md = fs::metadata(path).map_err(|e| format!("stat {when}: {e}"))?;
    let got = (md.mode() & 0o7777, md.uid(), md.gid());
    if got != want {
        return Err(format!(
            "stat {when}: mode {:o} uid {} gid {}, expected mode {:o} uid {} gid {}",
            got.0, got.1, got.2, want.0, want.1, want.2
        ));
    }
    Ok(())
}

/// Handshake between `attr_race`'s changer and its stat thread. Park
/// requests are numbered so that two in a row cannot be mistaken for one.
#[derive(Default)]
struct Pacing {
    stop: AtomicBool,
    /// Last park request of the changer.
    requests: AtomicU64,
    /// Last request the stat thread parked for, with the file closed.
    parked: AtomicU64,
    /// Last request the changer is done with.
    released: AtomicU64,
    /// The stat thread has ended.
    done: AtomicBool,
    stats: AtomicU64,
}

/// fstat in a tight loop; parks with the file closed when asked to.
fn stat_loop(path: &str, pace: &Pacing) -> Result<(), String> {
    while !pace.stop.load(SeqCst) {
        let f = File::open(path).map_err(|e| format!("concurrent open: {e}"))?;
        while !pace.stop.load(SeqCst) && pace.requests.load(SeqCst) == pace.released.load(SeqCst) {
            f.metadata().map_err(|e| format!("concurrent fstat: {e}"))?;
            pace.stats.fetch_add(1, SeqCst);
        }
        drop(f);
        let request = pace.requests.load(SeqCst);
        pace.parked.store(request, SeqCst);
        while pace.released.load(SeqCst) < request && !pace.stop.load(SeqCst) {
            thread::yield_now();
        }
    }
    Ok(())
}

/// Drops the inode cache while the stat thread holds nothing open, then
/// checks that the attributes read back from the filesystem are `want`.
fn drop_and_check(path: &str, pace: &Pacing, want: (u32, u32, u32)) -> Result<(), String> {
    let request = pace.requests.load(SeqCst) + 1;
    pace.requests.store(request, SeqCst);
    while pace.parked.load(SeqCst) < request && !pace.done.load(SeqCst) {
        thread::yield_now();
    }
    let r = sys::drop_caches(2)
        .map_err(|e| format!("drop_caches: {e}"))
        .and_then(|()| check_attrs(path, want, "after dropping the inode cache"));
    pace.released.store(request, SeqCst);
    r
}

/// chmod (and chown) in a loop, each checked by a stat right after while
/// another thread stats the same file; returns (chmods, chowns, drops).
fn change_loop(path: &str, pace: &Pacing) -> Result<(u64, u64, u64), String> {
    let start = Instant::now();
    let (mut chowns, mut drops) = (0, 0);
    let mut round = 0;
    while round < ATTR_ROUNDS && start.elapsed() < ATTR_TIME && !pace.done.load(SeqCst) {
        let want = attr_for(round);
        if round % 8 == 0 {
            std::os::unix::fs::chown(path, Some(want.1), Some(want.2))
                .map_err(|e| format!("chown {}:{} (round {round}): {e}", want.1, want.2))?;
            chowns += 1;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(want.0))
            .map_err(|e| format!("chmod {:o} (round {round}): {e}", want.0))?;
        check_attrs(path, want, &format!("right after round {round}"))?;
        round += 1;
        if round % ATTR_DROP_EVERY == 0 {
            drop_and_check(path, pace, want)?;
            drops += 1;
        }
    }
    if round > 0 {
        drop_and_check(path, pace, attr_for(round - 1))?;
        drops += 1;
    }
    Ok((round, chowns, drops))
}

/// chmod/chown racing stat: every stat right after a change shows it, and
/// so does the metadata read back after the inode cache is dropped.
pub fn attr_race(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let path = p("attr");
    drop(create_sized(&path, 0)?);
    let pace = Pacing::default();
    let start = Instant::now();
    let (changed, raced) = thread::scope(|s| {
        let racer = s.spawn(|| {
            let r = stat_loop(&path, &pace);
            pace.done.store(true, SeqCst);
            r
        });
        let changed = change_loop(&path, &pace);
        pace.stop.store(true, SeqCst);
        let raced = racer
            .join()
            .unwrap_or_else(|_| Err("stat thread panicked".into()));
        (changed, raced)
    });
    let (rounds, chowns, drops) = changed?;
    raced?;
    diag(&format!(
        "{rounds} chmods and {chowns} chowns, each checked by a stat, against {} concurrent fstats in {:.1} s; {drops} inode cache drops, each read back the last values",
        pace.stats.load(SeqCst),
        start.elapsed().as_secs_f64()
    ));
    remove("attr")?;
    Ok(Outcome::Pass)
}

/// The mapping `truncate_fault_race` touches, and the sizes it cuts to.
const RACE_MAP: u64 = 64 * MIB;
const RACE_SIZES: [u64; 3] = [0, 3 * MIB + 100, RACE_MAP];
/// Pages each toucher child touches.
const TOUCHES: usize = 256;
/// Exit code of a toucher that read a word of another page.
const WRONG_PAGE: i32 = 3;

/// In a forked child: reads and stamps `TOUCHES` random pages of the
/// mapping at `base`. Every word read must be 0 (a new block) or the
/// page's own stamp; exits with `WRONG_PAGE` otherwise.
fn touch_random(base: *mut u8, seed: u64, rng: &mut Rng) -> i32 {
    let pages = RACE_MAP as usize / PAGE;
    for _ in 0..TOUCHES {
        let pos = rng.below(pages) * PAGE;
        let want = stamp(seed, pos as u64);
        // SAFETY: inside the mapping; SIGBUS past EOF ends the child.
        unsafe {
            let word = base.add(pos).cast::<u64>();
            let seen = std::ptr::read_volatile(word);
            if seen != 0 && seen != want {
                return WRONG_PAGE;
            }
            std::ptr::write_volatile(word, want);
        }
    }
    0
}

/// Forks toucher children for `RACE_TIME`; returns (clean exits, SIGBUS).
fn touch_in_children(base: *mut u8, seed: u64) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + RACE_TIME;
    let (mut clean, mut sigbus) = (0, 0);
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let mut rng = Rng::new(seed ^ round);
        let touch = || touch_random(base, seed, &mut rng);
        // SAFETY: the child only touches the mapping and computes on its
        // stack: no allocation or lock the truncating thread may hold.
        let end = unsafe { sys::in_child(FULL_WAIT, touch) }.map_err(|e| format!("fork: {e}"))?;
        match end {
            sys::ChildEnd::Exited(0) => clean += 1,
            sys::ChildEnd::Signaled(libc::SIGBUS) => sigbus += 1,
            sys::ChildEnd::Exited(WRONG_PAGE) => {
                return Err(format!(
                    "toucher {round} read a word that is neither 0 nor its page's stamp: a page of another file offset was mapped"
                ))
            }
            other => {
                return Err(format!(
                    "toucher {round} ended with {other:?}; only exit 0 or SIGBUS are acceptable"
                ))
            }
        }
    }
    Ok((clean, sigbus))
}

/// ftruncate between 0, 3 MiB + 100 and 64 MiB racing faults from other
/// processes: they end cleanly or with SIGBUS, the kernel stays quiet,
/// and every block comes back after the unlink.
pub fn truncate_fault_race(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let seed = test_seed("truncate_fault_race");
    let trouble = trouble_count()?;
    let free0 = statfs(MNT)?.bfree;
    let (unlink, f) = Scratch::create("trunc", RACE_MAP)?;
    let m = Mapping::new(&f, RACE_MAP, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let stop = AtomicBool::new(false);
    let cuts = AtomicU64::new(0);
    let (touched, cut) = thread::scope(|s| {
        let cutter = s.spawn(|| -> Result<(), String> {
            for size in RACE_SIZES.iter().cycle() {
                if stop.load(SeqCst) {
                    break;
                }
                f.set_len(*size)
                    .map_err(|e| format!("ftruncate to {size}: {e}"))?;
                cuts.fetch_add(1, SeqCst);
            }
            Ok(())
        });
        let touched = touch_in_children(m.ptr, seed);
        stop.store(true, SeqCst);
        let cut = cutter
            .join()
            .unwrap_or_else(|_| Err("truncating thread panicked".into()));
        (touched, cut)
    });
    let (clean, sigbus) = touched?;
    cut?;
    diag(&format!(
        "{} ftruncates raced {} toucher processes: {clean} ended cleanly, {sigbus} with SIGBUS",
        cuts.load(SeqCst),
        clean + sigbus
    ));
    if sigbus == 0 {
        return Err("no toucher ever hit a cut-off page: the race did not happen".into());
    }
    drop((m, f, unlink));
    let free = statfs(MNT)?.bfree;
    if free != free0 {
        return Err(format!(
            "after unlinking: {free} free blocks, {free0} before: blocks leaked"
        ));
    }
    no_new_trouble(trouble)?;
    Ok(Outcome::Pass)
}

/// The names `rename_race` cycles its file through: within a directory
/// and across the two.
const NAMES: [&str; 4] = ["rn1/a", "rn1/b", "rn2/a", "rn2/b"];
const RENAMES: u64 = 20_000;

/// What `rn1` and `rn2` must list besides the moving file.
fn keeper(dir: &str) -> String {
    format!("keep{}", &dir[2..])
}

/// Renames the file around `NAMES` until `RENAMES` or `RACE_TIME`;
/// returns the count and the index of its final name.
fn rename_loop() -> Result<(u64, usize), String> {
    let start = Instant::now();
    let mut i = 0u64;
    while i < RENAMES && start.elapsed() < RACE_TIME {
        let (from, to) = (NAMES[i as usize % 4], NAMES[(i as usize + 1) % 4]);
        fs::rename(p(from), p(to)).map_err(|e| format!("rename {from} -> {to} (#{i}): {e}"))?;
        i += 1;
    }
    Ok((i, i as usize % 4))
}

/// Looks the names up and lists both directories until `stop`; only
/// ENOENT is an acceptable error, and whatever is found must be the file.
fn look_loop(ino: u64, stop: &AtomicBool) -> Result<u64, String> {
    let mut rounds = 0;
    while !stop.load(SeqCst) {
        for name in NAMES {
            match fs::symlink_metadata(p(name)) {
                Ok(md) if md.ino() == ino => {}
                Ok(md) => return Err(format!("stat {name}: inode {}, expected {ino}", md.ino())),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(format!("stat {name} during renames: {e}")),
            }
        }
        for dir in ["rn1", "rn2"] {
            let mut keepers = 0;
            for entry in fs::read_dir(p(dir)).map_err(|e| format!("opendir {dir}: {e}"))? {
                let entry = entry.map_err(|e| format!("readdir {dir} during renames: {e}"))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let expected = if name == keeper(dir) {
                    keepers += 1;
                    true
                } else {
                    (name == "a" || name == "b") && entry.ino() == ino
                };
                if !expected {
                    return Err(format!(
                        "readdir {dir} during renames: unexpected entry {name:?} (inode {})",
                        entry.ino()
                    ));
                }
            }
            // POSIX: an entry not renamed during readdir is seen once.
            if keepers != 1 {
                return Err(format!(
                    "readdir {dir} during renames listed {} {keepers} times",
                    keeper(dir)
                ));
            }
        }
        rounds += 1;
    }
    Ok(rounds)
}

fn listing(dir: &str) -> Result<Vec<String>, String> {
    let mut names = fs::read_dir(p(dir))
        .map_err(|e| format!("opendir {dir}: {e}"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| format!("readdir {dir}: {e}"))?;
    names.sort();
    Ok(names)
}

/// rename within and across directories racing lookups and readdir:
/// only ENOENT, the file keeps its inode and data, the directories end
/// with exactly the expected entries.
pub fn rename_race(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let trouble = trouble_count()?;
    for dir in ["rn1", "rn2"] {
        fs::create_dir_all(p(dir)).map_err(|e| format!("mkdir {dir}: {e}"))?;
        drop(create_sized(&p(&format!("{dir}/{}", keeper(dir))), 0)?);
    }
    const SEED: u64 = 0x5e_9a3e;
    let f = create_sized(&p(NAMES[0]), 2 * MIB)?;
    let mut m = Mapping::new(&f, 2 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    pattern::fill(SEED, 0, m.bytes());
    drop(m);
    let ino = f.metadata().map_err(|e| e.to_string())?.ino();
    let stop = AtomicBool::new(false);
    let (renamed, looked) = thread::scope(|s| {
        let looker = s.spawn(|| look_loop(ino, &stop));
        let renamed = rename_loop();
        stop.store(true, SeqCst);
        let looked = looker
            .join()
            .unwrap_or_else(|_| Err("lookup thread panicked".into()));
        (renamed, looked)
    });
    let (renames, last) = renamed?;
    let lookups = looked?;
    diag(&format!(
        "{renames} renames within and across 2 directories raced {lookups} rounds of stat and readdir"
    ));
    let mut present = Vec::new();
    for name in NAMES {
        match fs::symlink_metadata(p(name)) {
            Ok(md) => present.push((name, md.ino())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(format!("stat {name}: {e}")),
        }
    }
    if present != [(NAMES[last], ino)] {
        return Err(format!(
            "after the renames: found {present:?} (name, inode), expected only {} with inode {ino}",
            NAMES[last]
        ));
    }
    for dir in ["rn1", "rn2"] {
        let mut want = vec![keeper(dir)];
        if let Some(name) = NAMES[last].strip_prefix(&format!("{dir}/")) {
            want.push(name.to_owned());
        }
        want.sort();
        let got = listing(dir)?;
        if got != want {
            return Err(format!(
                "after the renames {dir} lists {got:?}, expected {want:?}"
            ));
        }
    }
    let mut m = Mapping::new(&f, 2 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    if let Some(bad) = pattern::first_mismatch(SEED, 0, m.bytes()) {
        return Err(format!(
            "after the renames: byte {bad:#x} of the file changed"
        ));
    }
    drop((m, f));
    no_new_trouble(trouble)?;
    remove(NAMES[last])?;
    for dir in ["rn1", "rn2"] {
        remove(&format!("{dir}/{}", keeper(dir)))?;
        fs::remove_dir(p(dir)).map_err(|e| format!("rmdir {dir}: {e}"))?;
    }
    Ok(Outcome::Pass)
}

/// Bytes each `gup_efault` transfer moves: 4 pages.
const GUP_LEN: usize = 4 * PAGE;

fn iov(ptr: *mut u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    }
}

/// process_vm_readv (`write` false) or process_vm_writev between our
/// `local` buffers and `remote` ranges of our own address space.
fn vm_rw(write: bool, local: &mut [&mut [u8]], remote: &[libc::iovec]) -> io::Result<usize> {
    let local: Vec<libc::iovec> = local
        .iter_mut()
        .map(|b| iov(b.as_mut_ptr(), b.len()))
        .collect();
    let pid = std::process::id() as libc::pid_t;
    // SAFETY: the local iovecs cover buffers borrowed exclusively for the
    // call; the kernel checks the remote ranges.
    unsafe { sys::process_vm_rw(write, pid, &local, remote) }
}

/// get_user_pages cannot pin guestmemfs memory (no struct pages):
/// process_vm_readv/writev on a guestmemfs range of the remote side fail
/// cleanly with EFAULT, while copies to and from it on the local side,
/// and a pipe read into it, work (copy_to/from_user need no struct page).
pub fn gup_efault(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let trouble = trouble_count()?;
    let f = create_sized(&p("gup"), 2 * MIB)?;
    let mut g = Mapping::new(&f, 2 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    pattern::fill(1, 0, g.bytes());
    let memfd = sys::memfd_create("gup-control").map_err(|e| e.to_string())?;
    memfd.set_len(2 * MIB).map_err(|e| e.to_string())?;
    let mut c = Mapping::new(&memfd, 2 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    pattern::fill(2, 0, c.bytes());
    let (gmfs_remote, memfd_remote) = (iov(g.ptr, GUP_LEN), iov(c.ptr, GUP_LEN));
    let mut buf = vec![0u8; GUP_LEN];
    // Control: a memfd (struct pages) on the remote side.
    match vm_rw(false, &mut [&mut buf], &[memfd_remote]) {
        Ok(n) if n == GUP_LEN && pattern::first_mismatch(2, 0, &buf).is_none() => {}
        other => {
            return Err(format!(
                "control: process_vm_readv from a memfd mapping: {other:?}, expected {GUP_LEN} bytes of its data"
            ))
        }
    }
    for (write, call) in [(false, "process_vm_readv"), (true, "process_vm_writev")] {
        match vm_rw(write, &mut [&mut buf], &[gmfs_remote]) {
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {}
            other => {
                return Err(format!(
                "{call} with the remote range in a guestmemfs mapping: {other:?}, expected EFAULT"
            ))
            }
        }
    }
    if let Some(bad) = pattern::first_mismatch(1, 0, &g.bytes()[..GUP_LEN]) {
        return Err(format!(
            "a failed process_vm_writev changed guestmemfs byte {bad:#x}"
        ));
    }
    // Partial transfer: the memfd iovec is copied, the guestmemfs one
    // stops the call.
    let mut buf2 = vec![0u8; GUP_LEN];
    match vm_rw(false, &mut [&mut buf, &mut buf2], &[memfd_remote, gmfs_remote]) {
        Ok(n) if n == GUP_LEN => {}
        other => {
            return Err(format!(
                "process_vm_readv of a memfd range then a guestmemfs range: {other:?}, expected {GUP_LEN} (the memfd part)"
            ))
        }
    }
    diag("process_vm_readv/writev of a remote guestmemfs range: EFAULT, nothing copied; memfd control and partial transfer work");
    // guestmemfs memory on the local side: plain user copies.
    let at = MIB as usize;
    match vm_rw(
        false,
        &mut [&mut g.bytes()[at..at + GUP_LEN]],
        &[memfd_remote],
    ) {
        Ok(n) if n == GUP_LEN => {}
        other => {
            return Err(format!(
                "process_vm_readv into a local guestmemfs buffer: {other:?}, expected {GUP_LEN}"
            ))
        }
    }
    if let Some(bad) = pattern::first_mismatch(2, 0, &g.bytes()[at..at + GUP_LEN]) {
        return Err(format!(
            "process_vm_readv into guestmemfs: byte {bad:#x} of the copy is wrong"
        ));
    }
    buf.fill(0);
    let buf_remote = iov(buf.as_mut_ptr(), GUP_LEN);
    match vm_rw(true, &mut [&mut g.bytes()[..GUP_LEN]], &[buf_remote]) {
        Ok(n) if n == GUP_LEN && pattern::first_mismatch(1, 0, &buf).is_none() => {}
        other => {
            return Err(format!(
                "process_vm_writev from a local guestmemfs buffer: {other:?}, expected {GUP_LEN} bytes of its data"
            ))
        }
    }
    pipe_through(&mut g)?;
    diag("local guestmemfs buffers: process_vm_readv/writev and pipe read()/write() work");
    drop((g, c, f, memfd));
    remove("gup")?;
    no_new_trouble(trouble)?;
    Ok(Outcome::Pass)
}

/// read() from a pipe into the guestmemfs mapping at an odd offset, and
/// write() from it into the pipe.
fn pipe_through(g: &mut Mapping) -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new fds that we now own.
    let (mut rx, mut tx) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let mut data = vec![0u8; GUP_LEN];
    pattern::fill(3, 0, &mut data);
    // GUP_LEN fits in the pipe's buffer: no reader needed while writing.
    tx.write_all(&data)
        .map_err(|e| format!("write to pipe: {e}"))?;
    let at = 512 * 1024 + 123;
    rx.read_exact(&mut g.bytes()[at..at + GUP_LEN])
        .map_err(|e| format!("read() from a pipe into guestmemfs: {e}"))?;
    if let Some(bad) = pattern::first_mismatch(3, 0, &g.bytes()[at..at + GUP_LEN]) {
        return Err(format!(
            "read() from a pipe into guestmemfs: byte {bad:#x} wrong"
        ));
    }
    tx.write_all(&g.bytes()[..GUP_LEN])
        .map_err(|e| format!("write() from guestmemfs into a pipe: {e}"))?;
    rx.read_exact(&mut data)
        .map_err(|e| format!("read from pipe: {e}"))?;
    if let Some(bad) = pattern::first_mismatch(1, 0, &data) {
        return Err(format!(
            "write() from guestmemfs into a pipe: byte {bad:#x} wrong"
        ));
    }
    Ok(())
}

/// The outgoing kernel publishes a locator whose generation disagrees
/// with the superblock's (checksum right): the region is kept at its
/// address, the mount refused until `-o reformat`.
pub fn locator_generation(ctx: &mut Ctx) -> TestResult {
    gmfs::corruption(ctx, "generation", Verdict::Kept, &["generation mismatch"])
}

/// Size of the sparse file of `large_region_kexec` and where its data is:
/// a window touched through mmap (allocating its whole 1 GiB unit) and a
/// block allocated with fallocate.
const SPARSE_SIZE: u64 = 400 * GIB;
const SPARSE_TOUCHED: u64 = 300 * GIB + 6 * MIB;
const SPARSE_ALLOCATED: u64 = 350 * GIB + 2 * MIB;
/// (file, file offset, length, pattern seed) of the data checked after
/// the kexec.
const LARGE_DATA: &[(&str, u64, u64, u64)] = &[
    ("large/dense", 0, 8 * MIB, 11),
    ("large/sparse", SPARSE_TOUCHED, 4 * MIB, 12),
    ("large/sparse", SPARSE_ALLOCATED, 2 * MIB, 13),
];

/// Mounts and returns how long the mount(2) took.
fn timed_mount() -> Result<Duration, String> {
    let start = Instant::now();
    mount()?;
    Ok(start.elapsed())
}

/// `len` bytes of the file at `rel` from file offset `offset`, mapped
/// shared (the mapping outlives the fd).
fn map_range(rel: &str, offset: u64, len: u64) -> Result<Mapping, String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p(rel))
        .map_err(|e| format!("open {rel}: {e}"))?;
    Mapping::new(&f, len, offset, libc::MAP_SHARED)
        .map_err(|e| format!("mmap {rel} at {offset:#x}: {e}"))
}

fn large_note(r: super::region::Range, s: &gmfs::StatFs) -> String {
    // One command-line token.
    format!(
        "{:#x}-{:#x}/{}/{}/{}/{}",
        r.start, r.end, s.blocks, s.bfree, s.files, s.ffree
    )
}

/// A 512 GiB region with files (one sparse, 400 GiB long, data near
/// 300 GiB) is handed over by kexec: same region, mount accepted,
/// statfs identical, data intact; reports how long the mount took.
pub fn large_region_kexec(ctx: &mut Ctx) -> TestResult {
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    // After the kexec, a refusal explains a failing mount better.
    if let Some(l) = log.iter().find(|l| {
        ctx.stage > 1
            && l.contains("guestmemfs")
            && (l.contains("refus") || l.contains("quarantined"))
    }) {
        return Err(format!("handover refused: kernel log: {l}"));
    }
    let took = timed_mount()?;
    let r = region()?;
    let want = requested_size().ok_or("boot without guestmemfs=<size>")?;
    if r.end + 1 - r.start != want {
        return Err(format!(
            "region {:#x}-{:#x} is not the {} GiB asked for",
            r.start,
            r.end,
            want >> 30
        ));
    }
    if ctx.stage == 1 {
        fs::create_dir_all(p("large")).map_err(|e| e.to_string())?;
        drop(create_sized(&p("large/dense"), 8 * MIB)?);
        let sparse = create_sized(&p("large/sparse"), SPARSE_SIZE)?;
        fallocate(&sparse, SPARSE_ALLOCATED, 2 * MIB)?;
        drop(sparse);
        for &(file, offset, len, seed) in LARGE_DATA {
            pattern::fill(seed, offset, map_range(file, offset, len)?.bytes());
        }
        let s = statfs(MNT)?;
        diag(&format!(
            "stage 1: region {:#x}-{:#x} ({} GiB), mount took {} us; {} of {} blocks and {} inodes in use",
            r.start,
            r.end,
            want >> 30,
            took.as_micros(),
            s.blocks - s.bfree,
            s.blocks,
            s.files - s.ffree
        ));
        ctx.note_out = Some(large_note(r, &s));
        return Ok(Outcome::Kexec);
    }
    let note = ctx.note_in.clone().ok_or("no note from stage 1")?;
    let kept = log
        .iter()
        .find(|l| l.contains("kept the filesystem"))
        .ok_or("no \"kept the filesystem\" line in the kernel log")?;
    diag(&format!("kernel log: {kept}"));
    let s = statfs(MNT)?;
    let got = large_note(r, &s);
    if got != note {
        return Err(format!(
            "after the kexec region/blocks/free/inodes/free are {got}, were {note}"
        ));
    }
    let size = fs::metadata(p("large/sparse"))
        .map_err(|e| format!("stat large/sparse: {e}"))?
        .len();
    if size != SPARSE_SIZE {
        return Err(format!("large/sparse is {size} bytes, was {SPARSE_SIZE}"));
    }
    for &(file, offset, len, seed) in LARGE_DATA {
        if let Some(bad) =
            pattern::first_mismatch(seed, offset, map_range(file, offset, len)?.bytes())
        {
            return Err(format!("{file}: byte {bad:#x} changed over the kexec"));
        }
    }
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    diag(&format!(
        "stage 2: region {:#x}-{:#x} kept, statfs identical, data intact; mount took {} us (uptime {} s)",
        r.start,
        r.end,
        took.as_micros(),
        uptime.split_whitespace().next().unwrap_or("?")
    ));
    Ok(Outcome::Pass)
}

/// Zeroing a new 1 GiB unit happens without the filesystem-wide lock:
/// while one thread's first touch of a fresh GiB is zeroing it, another
/// thread's `stat()` calls (which take that lock) keep completing at
/// their usual rate. With the lock held across the zeroing they stop.
pub fn zeroing_unlocked(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let f = create_sized(&p("zero-unit"), GIB)?;
    let other = create_sized(&p("zero-other"), 0)?;
    drop(other);
    let mut m = Mapping::new(&f, GIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let stop = AtomicBool::new(false);
    let origin = Instant::now();
    let (window, stamps) = thread::scope(|s| {
        let statter = s.spawn(|| {
            let mut done = Vec::new();
            while !stop.load(SeqCst) {
                if fs::metadata(p("zero-other")).is_ok() {
                    done.push(origin.elapsed());
                }
            }
            done
        });
        // Let the stat loop get going, then take the one fault.
        thread::sleep(Duration::from_millis(200));
        let start = origin.elapsed();
        m.bytes()[12345 * PAGE] = 1;
        let end = origin.elapsed();
        thread::sleep(Duration::from_millis(50));
        stop.store(true, SeqCst);
        ((start, end), statter.join().unwrap_or_default())
    });
    let inside = stamps
        .iter()
        .filter(|t| **t > window.0 && **t < window.1)
        .count();
    let fault_s = (window.1 - window.0).as_secs_f64();
    let outside_s = stamps.last().map_or(0.0, Duration::as_secs_f64) - fault_s;
    let rate_in = inside as f64 / fault_s.max(1e-6);
    let rate_out = (stamps.len() - inside) as f64 / outside_s.max(1e-6);
    diag(&format!(
        "first touch of a fresh 1 GiB unit took {:?}; stat() rate during it {rate_in:.0}/s, before and after it {rate_out:.0}/s",
        window.1 - window.0
    ));
    drop(m);
    drop(f);
    remove("zero-unit")?;
    remove("zero-other")?;
    // With the lock held across the zeroing only the stats before the
    // zeroing starts (a few ms of the fault) complete: a rate near 0.
    if rate_in < rate_out / 10.0 {
        return Err(format!(
            "stat() slowed from {rate_out:.0}/s to {rate_in:.0}/s while a fault zeroed a 1 GiB unit: the zeroing holds the filesystem lock"
        ));
    }
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_not_starting_at_zero() {
        let mut rng = Rng::new(0);
        for n in [2, 3, 512, 4096] {
            let v = rng.order(n);
            assert_ne!(v[0], 0);
            let mut s = v.clone();
            s.sort_unstable();
            assert!(s.iter().enumerate().all(|(i, &x)| i as u32 == x));
        }
        assert_eq!(Rng::new(7).order(100), Rng::new(7).order(100));
        assert_ne!(Rng::new(7).order(100), Rng::new(8).order(100));
    }

    #[test]
    fn tail_probes_start_past_the_eof_page() {
        assert_eq!(
            tail_probes(3 * MIB + 100),
            [
                3 * MIB as usize + PAGE,
                0x38_0000,
                4 * MIB as usize - 1,
                4 * MIB as usize,
                6 * MIB as usize - 1
            ]
        );
        assert_eq!(
            tail_probes(2 * MIB - 1),
            [2 * MIB as usize, 4 * MIB as usize - 1, 6 * MIB as usize - 1]
        );
        assert_eq!(tail_probes(5000)[0], 2 * PAGE);
    }

    #[test]
    fn placements_fit_the_file() {
        for pl in PLACEMENTS {
            assert!(pl.offset + pl.len <= ANY_FILE, "{}", pl.what);
            assert!(pl.offset.is_multiple_of(PAGE as u64));
        }
        assert!(keeper("rn1") == "keep1" && keeper("rn2") == "keep2");
    }
}
