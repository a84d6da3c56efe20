// SPDX-License-Identifier: GPL-2.0-only
//! guestmemfs memory errors (issue 6): a simulated memory error
//! (`memory_failure(pfn, MF_SW_SIMULATED)` through the debugfs `poison`
//! hook) in a block of the region. Mappers get SIGBUS with
//! `BUS_MCEERR_AR`/`_AO` as for RAM; the block is never handed out again,
//! in this kernel and, through the superblock's bad-block list, in the
//! next ones.

use super::gmfs::{create_sized, fallocate, mount, p, statfs, Mapping, MIB, MNT};
use super::{Ctx, Outcome, TestResult};
use crate::ktap::diag;
use crate::{pattern, sys};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};
use std::time::Duration;

const POISON: &str = "/sys/kernel/debug/guestmemfs/poison";
const BAD_BLOCKS: &str = "/sys/kernel/debug/guestmemfs/bad_blocks";
const BUS_MCEERR_AR: i32 = 4;
const BUS_MCEERR_AO: i32 = 5;
const PAGE_SHIFT: i16 = 12;
const BLOCK: u64 = 2 * MIB;

/// What a SIGBUS told a child: `si_code`, `si_addr`, `si_addr_lsb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BusInfo {
    code: i32,
    addr: usize,
    lsb: i16,
}

/// Write end of the pipe a child's SIGBUS handler reports through.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn report_sigbus(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo. On x86_64 the SIGBUS
    // fields follow the 16-byte header: si_addr (8 bytes), si_addr_lsb.
    let (code, addr, lsb) = unsafe {
        let raw = info.cast::<u8>();
        (
            (*info).si_code,
            raw.add(16).cast::<usize>().read_unaligned(),
            raw.add(24).cast::<i16>().read_unaligned(),
        )
    };
    let mut buf = [0u8; 14];
    buf[..4].copy_from_slice(&code.to_le_bytes());
    buf[4..12].copy_from_slice(&addr.to_le_bytes());
    buf[12..].copy_from_slice(&lsb.to_le_bytes());
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(REPORT_FD.load(SeqCst), buf.as_ptr().cast(), buf.len());
        libc::_exit(42);
    }
}

/// A child that reports a SIGBUS through a pipe.
struct Child {
    pid: libc::pid_t,
    report: File,
    /// `f`'s result, written when it returned (a sleeper is then ready).
    ready: File,
}

impl Child {
    /// Forks a child that installs the SIGBUS reporter, sets the
    /// early-kill policy if `early` and runs `f`, which returns a value
    /// for [`Child::ready`] and whether it is done: then the child exits
    /// 0, else it sleeps 60 s, to be signalled or killed.
    fn spawn(early: bool, f: impl FnOnce() -> (usize, bool)) -> Result<Child, String> {
        let (mut fds, mut rfds) = ([0; 2], [0; 2]);
        // SAFETY: valid arrays of two fds.
        if unsafe { libc::pipe(fds.as_mut_ptr()) != 0 || libc::pipe(rfds.as_mut_ptr()) != 0 } {
            return Err("pipe".into());
        }
        // SAFETY: single-threaded; the child only makes system calls and
        // touches memory.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err("fork".into());
        }
        if pid == 0 {
            REPORT_FD.store(fds[1], SeqCst);
            // SAFETY: a zeroed sigaction with a SA_SIGINFO handler; prctl
            // sets this process's own policy.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = report_sigbus as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
                if early {
                    libc::prctl(
                        libc::PR_MCE_KILL,
                        libc::PR_MCE_KILL_SET,
                        libc::PR_MCE_KILL_EARLY,
                        0,
                        0,
                    );
                }
            }
            let (value, done) = f();
            // SAFETY: writing to our pipe.
            unsafe { libc::write(rfds[1], value.to_le_bytes().as_ptr().cast(), 8) };
            if !done {
                std::thread::sleep(Duration::from_secs(60));
            }
            // SAFETY: leave without the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing our copy of the write end; the read end is ours.
        let (report, ready) = unsafe {
            libc::close(fds[1]);
            libc::close(rfds[1]);
            (File::from_raw_fd(fds[0]), File::from_raw_fd(rfds[0]))
        };
        Ok(Child { pid, report, ready })
    }

    /// Waits until `f` returned; its value.
    fn ready(&mut self) -> Result<usize, String> {
        let mut b = [0u8; 8];
        self.ready
            .read_exact(&mut b)
            .map_err(|e| format!("child not ready: {e}"))?;
        Ok(usize::from_le_bytes(b))
    }

    /// Waits for the child's end: `Some(info)` if it reported a SIGBUS,
    /// `None` if it exited without one.
    fn wait(mut self) -> Result<Option<BusInfo>, String> {
        let mut buf = Vec::new();
        let _ = self.report.read_to_end(&mut buf);
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.pid = 0;
        if buf.len() == 14 {
            return Ok(Some(BusInfo {
                code: i32::from_le_bytes(buf[..4].try_into().unwrap()),
                addr: usize::from_le_bytes(buf[4..12].try_into().unwrap()),
                lsb: i16::from_le_bytes(buf[12..].try_into().unwrap()),
            }));
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return Ok(None);
        }
        Err(format!(
            "child ended with status {status:#x} and no SIGBUS report"
        ))
    }

    /// True if the child has not ended yet.
    fn alive(&self) -> bool {
        let mut status = 0;
        // SAFETY: polling our own child.
        unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) == 0 }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Writes `cmd` to the poison hook from this process.
fn poison(cmd: &str) -> Result<(), String> {
    fs::write(POISON, cmd).map_err(|e| format!("poison {cmd:?}: {e}"))
}

/// Touches `addr` in a child; what SIGBUS it got, if any.
fn touch(addr: usize) -> Result<Option<BusInfo>, String> {
    Child::spawn(false, || {
        // SAFETY: inside a mapping of the caller's; a SIGBUS is reported.
        unsafe { std::ptr::read_volatile(addr as *const u8) };
        (0, true)
    })?
    .wait()
}

/// The bad blocks and whether each is listed in the superblock.
fn bad_blocks() -> Result<Vec<(u64, bool)>, String> {
    let text = fs::read_to_string(BAD_BLOCKS).map_err(|e| format!("{BAD_BLOCKS}: {e}"))?;
    text.lines()
        .map(|l| {
            let (b, how) = l.split_once(' ').ok_or(format!("bad line {l:?}"))?;
            let b = b.parse().map_err(|_| format!("bad line {l:?}"))?;
            Ok((b, how == "listed"))
        })
        .collect()
}

/// Kernel log lines after the first `skip`.
fn log_since(skip: usize) -> Result<Vec<String>, String> {
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    Ok(log.into_iter().skip(skip).collect())
}

fn log_len() -> Result<usize, String> {
    Ok(sys::kernel_log().map_err(|e| e.to_string())?.len())
}

fn expect_log(lines: &[String], want: &str) -> Result<(), String> {
    if lines.iter().any(|l| l.contains(want)) {
        Ok(())
    } else {
        Err(format!("no {want:?} in the kernel log: {lines:?}"))
    }
}

/// The first byte of each block is its index plus `salt`.
fn mark_blocks(m: &mut Mapping, salt: u8) {
    let bytes = m.bytes();
    for b in 0..bytes.len() / BLOCK as usize {
        bytes[b * BLOCK as usize] = (b as u8).wrapping_add(salt);
    }
}

fn check_marks(m: &mut Mapping, salt: u8, skip: &[usize]) -> Result<(), String> {
    let bytes = m.bytes();
    for b in 0..bytes.len() / BLOCK as usize {
        if skip.contains(&b) {
            continue;
        }
        let v = bytes[b * BLOCK as usize];
        if v != (b as u8).wrapping_add(salt) {
            return Err(format!("block {b} of the file lost its data: {v:#x}"));
        }
    }
    Ok(())
}

/// The highest region block not in `bad`: free unless the filesystem is
/// nearly full (allocation is first fit). The region size comes from
/// `guestmemfs=<n>G` on the command line.
fn top_free_block(bad: &[u64]) -> Result<u64, String> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| e.to_string())?;
    let gib: u64 = cmdline
        .split_whitespace()
        .find_map(|t| t.strip_prefix("guestmemfs="))
        .and_then(|s| s.strip_suffix('G'))
        .and_then(|g| g.parse().ok())
        .ok_or("no guestmemfs=<n>G on the command line")?;
    let mut b = gib * 512 - 1;
    while bad.contains(&b) {
        b -= 1;
    }
    Ok(b)
}

/// Removes the file at `rel` when dropped, so that a failing test leaves
/// the next ones their free blocks.
struct Remove(&'static str);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = fs::remove_file(p(self.0));
    }
}

fn open_rw(rel: &str) -> Result<File, String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p(rel))
        .map_err(|e| format!("open {rel}: {e}"))
}

fn ino_of(rel: &str) -> Result<u64, String> {
    Ok(fs::metadata(p(rel))
        .map_err(|e| format!("stat {rel}: {e}"))?
        .ino())
}

/// A child with early kill that unmaps the `inherited` mapping (address,
/// length) of its parent, maps `len` bytes of the file at `rel` from
/// `offset`, touches them and sleeps; with its mapping's address.
fn early_mapper(
    rel: &'static str,
    offset: u64,
    len: u64,
    inherited: (usize, usize),
) -> Result<(Child, usize), String> {
    let mut c = Child::spawn(true, move || {
        // SAFETY: the parent's mapping, copied at fork; unused here.
        unsafe { libc::munmap(inherited.0 as *mut libc::c_void, inherited.1) };
        let Ok(f) = open_rw(rel) else {
            return (0, true);
        };
        match Mapping::new(&f, len, offset, libc::MAP_SHARED) {
            Ok(mut m) => {
                m.bytes()[0] = m.bytes()[0].wrapping_add(0);
                let addr = m.ptr as usize;
                std::mem::forget(m);
                (addr, false)
            }
            Err(_) => (0, true),
        }
    })?;
    match c.ready()? {
        0 => Err(format!("early mapper could not map {rel} at {offset:#x}")),
        addr => Ok((c, addr)),
    }
}

/// The region block a `memory error in block N, inode I file offset X`
/// line of `log` names for `ino`.
fn logged_block(log: &[String], ino: u64) -> Result<u64, String> {
    let key = format!(", inode {ino} file offset");
    log.iter()
        .find_map(|l| {
            let rest = l.split("memory error in block ").nth(1)?;
            rest.contains(&key)
                .then(|| rest.split([',', ' ']).next()?.parse().ok())?
        })
        .ok_or(format!("no memory error logged for inode {ino}: {log:?}"))
}

/// `block` is listed in the superblock's bad-block list.
fn expect_listed(block: u64) -> Result<(), String> {
    let list = bad_blocks()?;
    if list.contains(&(block, true)) {
        Ok(())
    } else {
        Err(format!("block {block} not listed: {list:?}"))
    }
}

/// A memory error in a page of a 1 GiB file mapped with a PUD: the
/// process that consumed it (the hook's writer) gets `BUS_MCEERR_AR` at
/// that page with lsb 12; early-kill mappers whose mapping covers the
/// page get `BUS_MCEERR_AO` at their own address of it, one whose mapping
/// does not cover it nothing (not even SIGKILL); a default mapper
/// nothing; any later touch of the block `BUS_MCEERR_AR`; the other 511
/// blocks keep their data; the block is listed.
pub fn poison_mapped(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let rel = "mf-mapped";
    let _remove = Remove(rel);
    let f = create_sized(&p(rel), 512 * BLOCK)?;
    let ino = ino_of(rel)?;
    let mut m = Mapping::new(&f, 512 * BLOCK, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    mark_blocks(&mut m, 7);
    let base = m.ptr as usize;
    let bad_off = 2 * MIB + 12 * 1024;
    let log0 = log_len()?;

    let mut early = Child::spawn(true, || (1, false))?;
    early.ready()?;
    let inherited = (base, 512 * BLOCK as usize);
    let (near, near_base) = early_mapper(rel, 2 * MIB, 2 * MIB, inherited)?;
    let (early_far, _) = early_mapper(rel, 4 * MIB, 2 * MIB, inherited)?;
    let mut late = Child::spawn(false, || (1, false))?;
    late.ready()?;
    let cmd = format!("file {ino} {bad_off}");
    let consumer = Child::spawn(false, move || {
        // The writer maps the page (inherited mapping): it is "current".
        (0, fs::write(POISON, &cmd).is_ok())
    })?;
    let got = consumer.wait()?;
    let want = BusInfo {
        code: BUS_MCEERR_AR,
        addr: base + bad_off as usize,
        lsb: PAGE_SHIFT,
    };
    if got != Some(want) {
        return Err(format!("consumer: {got:?}, expected {want:?}"));
    }
    let got = early.wait()?;
    if got.map(|i| (i.code, i.addr)) != Some((BUS_MCEERR_AO, want.addr)) {
        return Err(format!(
            "early-kill mapper: {got:?}, expected BUS_MCEERR_AO at {:#x}",
            want.addr
        ));
    }
    let got = near.wait()?;
    let near_want = near_base + 12 * 1024;
    if got.map(|i| (i.code, i.addr)) != Some((BUS_MCEERR_AO, near_want)) {
        return Err(format!(
            "early-kill mapper of file offset 2 MiB: {got:?}, expected BUS_MCEERR_AO at {near_want:#x}"
        ));
    }
    if !late.alive() {
        return Err("a default (late-kill) mapper was signalled".into());
    }
    if !early_far.alive() {
        return Err(
            "an early-kill mapper whose mapping misses the page was signalled or killed".into(),
        );
    }
    drop((late, early_far));
    diag("consumer BUS_MCEERR_AR at the page (lsb 12), early mapper BUS_MCEERR_AO, late mapper untouched");

    let again = base + 3 * MIB as usize + 5;
    let got = touch(again)?;
    if got
        != Some(BusInfo {
            code: BUS_MCEERR_AR,
            addr: again & !4095,
            lsb: PAGE_SHIFT,
        })
        && got
            != Some(BusInfo {
                code: BUS_MCEERR_AR,
                addr: again,
                lsb: PAGE_SHIFT,
            })
    {
        return Err(format!(
            "touching the bad block later: {got:?}, expected BUS_MCEERR_AR"
        ));
    }
    check_marks(&mut m, 7, &[1])?;
    let log = log_since(log0)?;
    expect_log(&log, &format!("inode {ino} file offset 0x200000: listed"))?;
    expect_log(&log, "Recovered")?;
    expect_listed(logged_block(&log, ino)?)?;
    Ok(Outcome::Pass)
}

/// A bad block is never handed out again: one in a file and one free
/// lower `bfree` by exactly one (the free one); after the file is gone
/// both stay out of use, and filling the filesystem takes every other
/// block.
pub fn poison_never_reused(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let s0 = statfs(MNT)?;
    let rel = "mf-reuse";
    let _remove = (Remove(rel), Remove("mf-fill"));
    let f = create_sized(&p(rel), 0)?;
    fallocate(&f, 0, 4 * MIB)?;
    let ino = ino_of(rel)?;
    let before: Vec<u64> = bad_blocks()?.into_iter().map(|(b, _)| b).collect();
    poison(&format!("file {ino} {}", 2 * MIB + 4096))?;
    let s1 = statfs(MNT)?;
    if s1.bfree != s0.bfree - 2 {
        return Err(format!(
            "file block poisoned: bfree {} -> {}",
            s0.bfree, s1.bfree
        ));
    }
    let free_block = top_free_block(&before)?;
    poison(&format!("block {free_block}"))?;
    let s2 = statfs(MNT)?;
    if s2.bfree != s1.bfree - 1 {
        return Err(format!(
            "free block {free_block} poisoned: bfree {} -> {}",
            s1.bfree, s2.bfree
        ));
    }
    let now: Vec<u64> = bad_blocks()?.into_iter().map(|(b, _)| b).collect();
    let new: Vec<u64> = now
        .iter()
        .copied()
        .filter(|b| !before.contains(b))
        .collect();
    if new.len() != 2 || !new.contains(&free_block) {
        return Err(format!(
            "bad blocks {now:?}, before {before:?}: expected two new"
        ));
    }
    drop(f);
    fs::remove_file(p(rel)).map_err(|e| e.to_string())?;
    let s3 = statfs(MNT)?;
    if s3.bfree != s0.bfree - 2 {
        return Err(format!(
            "after unlink: bfree {}, expected {}",
            s3.bfree,
            s0.bfree - 2
        ));
    }
    // Fill: exactly the free blocks, then ENOSPC; no bad block reused.
    let log0 = log_len()?;
    let big = create_sized(&p("mf-fill"), 0)?;
    fallocate(&big, 0, s3.bfree * BLOCK)?;
    if statfs(MNT)?.bfree != 0 {
        return Err("filling left free blocks".into());
    }
    if fallocate(&big, s3.bfree * BLOCK, BLOCK).is_ok() {
        return Err("a full filesystem allocated one more block (a bad one?)".into());
    }
    let mut m =
        Mapping::new(&big, s3.bfree * BLOCK, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    // A bad block inside the file would answer with SIGBUS: touch every
    // block in a child.
    let (ptr, n) = (m.ptr as usize, s3.bfree as usize);
    let got = Child::spawn(false, move || {
        for b in 0..n {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile((ptr + b * BLOCK as usize) as *mut u8, 1) };
        }
        (0, true)
    })?
    .wait()?;
    if got.is_some() {
        return Err(format!("a block of the filled file is bad: {got:?}"));
    }
    let _ = m.bytes();
    drop(m);
    drop(big);
    fs::remove_file(p("mf-fill")).map_err(|e| e.to_string())?;
    let trouble: Vec<String> = log_since(log0)?
        .into_iter()
        .filter(|l| l.contains("already free") || l.contains("lost track"))
        .collect();
    if !trouble.is_empty() {
        return Err(format!("allocator trouble: {trouble:?}"));
    }
    diag(&format!(
        "bad blocks {new:?} stayed out of use; the fill took the other {} blocks",
        s3.bfree
    ));
    Ok(Outcome::Pass)
}

/// A block of a file nobody maps, also while the filesystem is not
/// mounted: the event is handled without signalling anyone; the file's
/// block is listed and a later mapping of it gets `BUS_MCEERR_AR`. Holes
/// and offsets past EOF are refused by the hook (`ENXIO`).
pub fn poison_unmapped(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let rel = "mf-unmapped";
    let _remove = Remove(rel);
    let f = create_sized(&p(rel), 8 * MIB)?;
    fallocate(&f, 0, 4 * MIB)?;
    let ino = ino_of(rel)?;
    for (cmd, what) in [
        (format!("file {ino} {}", 6 * MIB), "a hole"),
        (format!("file {ino} {}", 8 * MIB), "EOF"),
    ] {
        match fs::write(POISON, &cmd) {
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            other => return Err(format!("poison at {what}: {other:?}, expected ENXIO")),
        }
    }
    let log0 = log_len()?;
    poison(&format!("file {ino} {}", 2 * MIB + 8192))?;
    let log = log_since(log0)?;
    expect_log(&log, &format!("inode {ino} file offset 0x200000: listed"))?;
    expect_listed(logged_block(&log, ino)?)?;
    bad_block_signals(&f, 2 * MIB + 100)?;
    drop(f);

    // Not mounted: no inode in core, nothing to zap; still listed.
    let rel2 = "mf-umounted";
    let _remove2 = Remove(rel2);
    let f2 = create_sized(&p(rel2), 0)?;
    fallocate(&f2, 0, 4 * MIB)?;
    let ino2 = ino_of(rel2)?;
    drop(f2);
    sys::umount(MNT).map_err(|e| format!("umount: {e}"))?;
    let log0 = log_len()?;
    let poisoned = poison(&format!("file {ino2} {}", 3 * MIB));
    mount()?;
    poisoned?;
    let log = log_since(log0)?;
    expect_listed(logged_block(&log, ino2)?)?;
    bad_block_signals(&open_rw(rel2)?, 2 * MIB + 4096)?;
    Ok(Outcome::Pass)
}

/// A new mapping of `f` gets `BUS_MCEERR_AR` (lsb 12) at file offset
/// `bad`, and its first block still works.
fn bad_block_signals(f: &File, bad: u64) -> Result<(), String> {
    let mut m = Mapping::new(f, 4 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let at = m.ptr as usize + bad as usize;
    let got = touch(at)?;
    if got
        != Some(BusInfo {
            code: BUS_MCEERR_AR,
            addr: at,
            lsb: PAGE_SHIFT,
        })
    {
        return Err(format!("touch of the bad block at {at:#x}: {got:?}"));
    }
    m.bytes()[0] = 5;
    Ok(())
}

/// `mount -o reformat` keeps every bad block: listed again, out of use.
pub fn poison_reformat(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let before = bad_blocks()?;
    if before.is_empty() || before.iter().any(|&(_, listed)| !listed) {
        return Err(format!(
            "expected listed bad blocks from the earlier tests: {before:?}"
        ));
    }
    sys::umount(MNT).map_err(|e| format!("umount: {e}"))?;
    let log0 = log_len()?;
    sys::mount("guestmemfs", MNT, "guestmemfs", 0, "reformat")
        .map_err(|e| format!("mount -o reformat: {e}"))?;
    let after = bad_blocks()?;
    if after != before {
        return Err(format!(
            "bad blocks after reformat {after:?}, before {before:?}"
        ));
    }
    expect_log(
        &log_since(log0)?,
        &format!(
            "kept {} bad blocks (memory errors) out of use",
            before.len()
        ),
    )?;
    let s = statfs(MNT)?;
    if s.bfree != s.blocks - before.len() as u64 {
        return Err(format!(
            "after reformat: {} of {} blocks free, {} bad",
            s.bfree,
            s.blocks,
            before.len()
        ));
    }
    diag(&format!(
        "reformat kept {} bad blocks listed and out of use",
        before.len()
    ));
    Ok(Outcome::Pass)
}

/// A memory error in the metadata: reported as not recovered (`EBUSY`
/// from the hook: `memory_failure()` says Failed), no metadata change
/// after it (`EIO`), existing data still readable; the next kernel keeps
/// the region but neither reads nor adopts the filesystem (mount
/// `EUCLEAN`, the reason logged) and refuses `-o reformat` (`EIO`: where
/// the error is, is not known, and a format would reuse those blocks).
pub fn poison_metadata_kexec(ctx: &mut Ctx) -> TestResult {
    let rel = "mf-meta";
    if ctx.stage == 1 {
        mount()?;
        let f = create_sized(&p(rel), 2 * MIB)?;
        let mut m = Mapping::new(&f, 2 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        pattern::fill(0x6d, 0, m.bytes());
        let log0 = log_len()?;
        match fs::write(POISON, "block 0 3") {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            other => {
                return Err(format!(
                    "poison of metadata block 0: {other:?}, expected EBUSY"
                ))
            }
        }
        let log = log_since(log0)?;
        expect_log(&log, "memory error in metadata block 0")?;
        expect_log(&log, "Failed")?;
        match File::create(p("mf-meta-new")) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
            other => {
                return Err(format!(
                    "create after a metadata error: {other:?}, expected EIO"
                ))
            }
        }
        drop(m);
        let mut m = Mapping::new(&f, 2 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        if let Some(at) = pattern::first_mismatch(0x6d, 0, m.bytes()) {
            return Err(format!("data changed at {at:#x} after a metadata error"));
        }
        return Ok(Outcome::Kexec);
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    expect_log(&log, "its metadata had a memory error, so it is not read")?;
    fs::create_dir_all(MNT).map_err(|e| e.to_string())?;
    match sys::mount("guestmemfs", MNT, "guestmemfs", 0, "") {
        Err(e) if e.raw_os_error() == Some(libc::EUCLEAN) => {}
        other => {
            return Err(format!(
                "mount after a metadata error: {other:?}, expected EUCLEAN"
            ))
        }
    }
    match sys::mount("guestmemfs", MNT, "guestmemfs", 0, "reformat") {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
        other => {
            return Err(format!(
                "reformat after a metadata error: {other:?}, expected EIO"
            ))
        }
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    expect_log(&log, "the region needs a cold boot")?;
    diag(&format!("metadata error: Failed, no more changes; refused after kexec without reading {rel}; no reformat"));
    Ok(Outcome::Pass)
}

/// Across kexec: stage 1 poisons a block of a file and a free block;
/// after each of two kexecs both are listed, the file's bad block raises
/// `BUS_MCEERR_AR`, its other blocks keep their data.
pub fn poison_kexec(ctx: &mut Ctx) -> TestResult {
    mount()?;
    let rel = "mf-kexec";
    let seed = 0x6d66;
    if ctx.stage == 1 {
        let f = create_sized(&p(rel), 8 * MIB)?;
        let mut m = Mapping::new(&f, 8 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        pattern::fill(seed, 0, m.bytes());
        drop(m);
        let ino = ino_of(rel)?;
        poison(&format!("file {ino} {}", 4 * MIB + 4096))?;
        let all: Vec<u64> = bad_blocks()?.into_iter().map(|(b, _)| b).collect();
        let free_block = top_free_block(&all)?;
        poison(&format!("block {free_block}"))?;
        let list = bad_blocks()?;
        if list.iter().any(|&(_, l)| !l) {
            return Err(format!("not all listed: {list:?}"));
        }
        ctx.note_out = Some(
            list.iter()
                .map(|(b, _)| b.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        return Ok(Outcome::Kexec);
    }
    let want: Vec<u64> = ctx
        .note_in
        .as_deref()
        .ok_or("no note from the previous stage")?
        .split(',')
        .map(|b| b.parse().map_err(|_| format!("bad note {b:?}")))
        .collect::<Result<_, _>>()?;
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    expect_log(
        &log,
        &format!("{} bad blocks (memory errors) stay out of use", want.len()),
    )?;
    let got = bad_blocks()?;
    if got.iter().map(|&(b, _)| b).collect::<Vec<_>>() != want || got.iter().any(|&(_, l)| !l) {
        return Err(format!(
            "bad blocks after kexec {got:?}, expected {want:?} listed"
        ));
    }
    let f = open_rw(rel)?;
    let mut m = Mapping::new(&f, 8 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let at = m.ptr as usize + 5 * MIB as usize;
    let got = touch(at)?;
    if got.map(|i| (i.code, i.lsb)) != Some((BUS_MCEERR_AR, PAGE_SHIFT)) {
        return Err(format!(
            "stage {}: touch of the bad block: {got:?}",
            ctx.stage
        ));
    }
    let bytes = m.bytes();
    for range in [0..4 * MIB as usize, 6 * MIB as usize..8 * MIB as usize] {
        if let Some(at) = pattern::first_mismatch(seed, range.start as u64, &bytes[range.clone()]) {
            return Err(format!(
                "stage {}: data changed at {:#x}",
                ctx.stage,
                range.start as u64 + at
            ));
        }
    }
    drop(m);
    diag(&format!(
        "stage {}: bad blocks {want:?} listed, bad page raises BUS_MCEERR_AR, the rest intact",
        ctx.stage
    ));
    if ctx.stage == 2 {
        ctx.note_out = ctx.note_in.clone();
        return Ok(Outcome::Kexec);
    }
    Ok(Outcome::Pass)
}

/// After the kexec freeze the superblock must not change: a new bad block
/// is kept out of use in memory only, and the log says so.
pub fn poison_after_freeze(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let f = create_sized(&p("mf-frozen"), 0)?;
    fallocate(&f, 0, 2 * MIB)?;
    let ino = ino_of("mf-frozen")?;
    fs::write("/sys/kernel/debug/guestmemfs/freeze", "1").map_err(|e| format!("freeze: {e}"))?;
    let log0 = log_len()?;
    poison(&format!("file {ino} 0"))?;
    expect_log(&log_since(log0)?, "not listed: frozen for kexec")?;
    let list = bad_blocks()?;
    if !list.iter().any(|&(_, listed)| !listed) {
        return Err(format!("no memory-only bad block: {list:?}"));
    }
    drop(f);
    Ok(Outcome::Pass)
}
