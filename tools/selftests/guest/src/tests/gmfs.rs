// SPDX-License-Identifier: GPL-2.0-only
//! guestmemfs from userspace: VFS operations, errors, huge mappings and
//! persistence across kexec. The VM boots with `guestmemfs=2G`.

use super::{Ctx, Outcome, TestResult};
use crate::ktap::diag;
use crate::{pattern, sys};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

pub(super) const MNT: &str = "/mnt/gmfs";
pub(super) const MIB: u64 = 1 << 20;
pub(super) const GIB: u64 = 1 << 30;

pub(super) fn mount() -> Result<(), String> {
    fs::create_dir_all(MNT).map_err(|e| e.to_string())?;
    match sys::mount("guestmemfs", MNT, "guestmemfs", 0, "") {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount -t guestmemfs: {e}")),
    }
}

pub(super) fn p(rel: &str) -> String {
    format!("{MNT}/{rel}")
}

fn errno_of<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn expect_errno<T>(what: &str, r: io::Result<T>, want: i32) -> Result<(), String> {
    match errno_of(r) {
        Some(e) if e == want => Ok(()),
        other => Err(format!("{what}: expected errno {want}, got {other:?}")),
    }
}

pub(super) struct StatFs {
    pub(super) blocks: u64,
    pub(super) bfree: u64,
    pub(super) files: u64,
    pub(super) ffree: u64,
    pub(super) bsize: u64,
}

pub(super) fn statfs(path: &str) -> Result<StatFs, String> {
    let c = CString::new(path).unwrap();
    // SAFETY: zeroed is a valid statfs; the call fills it.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(format!("statfs: {}", io::Error::last_os_error()));
    }
    Ok(StatFs {
        blocks: s.f_blocks,
        bfree: s.f_bfree,
        files: s.f_files,
        ffree: s.f_ffree,
        bsize: s.f_bsize as u64,
    })
}

/// A shared mapping of a whole file range.
pub(super) struct Mapping {
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
}

impl Mapping {
    pub(super) fn new(file: &File, len: u64, offset: u64, flags: i32) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len: len as usize,
        })
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub(super) fn minor_faults() -> u64 {
    // SAFETY: zeroed rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt as u64
}

/// Writes one byte in every 4 KiB of the mapping; returns the minor
/// faults it took.
fn touch_every_page(m: &mut Mapping) -> u64 {
    let before = minor_faults();
    let bytes = m.bytes();
    let mut i = 0;
    while i < bytes.len() {
        // SAFETY: in bounds; volatile so the stores are not elided.
        unsafe { std::ptr::write_volatile(bytes.as_mut_ptr().add(i), 1) };
        i += 4096;
    }
    minor_faults() - before
}

/// Touches byte `offset` of the mapping in a child process; true if the
/// child died of SIGBUS.
pub(super) fn sigbus_on_touch(m: &mut Mapping, offset: usize) -> bool {
    // SAFETY: fork in a single-threaded process; the child only touches
    // memory and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        m.bytes()[offset] = 1;
        // SAFETY: terminate the child without running destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS
}

pub(super) fn create_sized(path: &str, size: u64) -> Result<File, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("create {path}: {e}"))?;
    f.set_len(size)
        .map_err(|e| format!("ftruncate {path}: {e}"))?;
    Ok(f)
}

/// Every operation of the filesystem and its error cases.
pub fn operations(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let s0 = statfs(MNT)?;
    diag(&format!(
        "statfs: {} blocks of {} KiB, {} free; {} inodes, {} free",
        s0.blocks,
        s0.bsize >> 10,
        s0.bfree,
        s0.files,
        s0.ffree
    ));
    if s0.bsize != 2 * MIB || s0.blocks == 0 || s0.bfree != s0.blocks {
        return Err("statfs of an empty filesystem is wrong".into());
    }
    // Namespace.
    fs::create_dir(p("d")).map_err(|e| format!("mkdir: {e}"))?;
    fs::create_dir(p("d/e")).map_err(|e| format!("mkdir nested: {e}"))?;
    create_sized(&p("d/f"), 0)?;
    let mut names: Vec<String> = fs::read_dir(p("d"))
        .map_err(|e| e.to_string())?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names != ["e", "f"] {
        return Err(format!("readdir of d: {names:?}"));
    }
    expect_errno("mkdir existing", fs::create_dir(p("d")), libc::EEXIST)?;
    expect_errno("rmdir non-empty", fs::remove_dir(p("d")), libc::ENOTEMPTY)?;
    expect_errno("rmdir of a file", fs::remove_dir(p("d/f")), libc::ENOTDIR)?;
    expect_errno("unlink of a dir", fs::remove_file(p("d/e")), libc::EISDIR)?;
    let long = "x".repeat(256);
    expect_errno("256-byte name", File::create(p(&long)), libc::ENAMETOOLONG)?;
    create_sized(&p(&"y".repeat(255)), 0)?;
    fs::rename(p("d/f"), p("g")).map_err(|e| format!("rename: {e}"))?;
    expect_errno(
        "old name after rename",
        fs::metadata(p("d/f")),
        libc::ENOENT,
    )?;
    expect_errno(
        "rename dir into itself",
        fs::rename(p("d"), p("d/e/x")),
        libc::EINVAL,
    )?;
    fs::remove_dir(p("d/e")).map_err(|e| format!("rmdir: {e}"))?;
    fs::remove_dir(p("d")).map_err(|e| format!("rmdir: {e}"))?;
    fs::remove_file(p(&"y".repeat(255))).map_err(|e| format!("unlink: {e}"))?;
    // Attributes.
    fs::set_permissions(p("g"), fs::Permissions::from_mode(0o640)).map_err(|e| e.to_string())?;
    let c = CString::new(p("g")).unwrap();
    // SAFETY: valid path.
    if unsafe { libc::chown(c.as_ptr(), 1234, 5678) } != 0 {
        return Err(format!("chown: {}", io::Error::last_os_error()));
    }
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 7,
        },
    ];
    // SAFETY: valid path and times.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } != 0 {
        return Err(format!("utimensat: {}", io::Error::last_os_error()));
    }
    let m = fs::metadata(p("g")).map_err(|e| e.to_string())?;
    if m.mode() & 0o7777 != 0o640
        || m.uid() != 1234
        || m.gid() != 5678
        || m.mtime() != 2_000_000
        || m.mtime_nsec() != 7
    {
        return Err(format!(
            "attributes not kept: mode {:o} uid {} gid {} mtime {}.{}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec()
        ));
    }
    // read(2)/write(2) are refused; MAP_PRIVATE too.
    let mut g = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("g"))
        .map_err(|e| e.to_string())?;
    expect_errno("read(2)", g.read(&mut [0u8; 8]), libc::EINVAL)?;
    expect_errno("write(2)", g.write(b"x"), libc::EINVAL)?;
    g.set_len(4 * MIB).map_err(|e| e.to_string())?;
    expect_errno(
        "MAP_PRIVATE",
        Mapping::new(&g, 4 * MIB, 0, libc::MAP_PRIVATE),
        libc::EINVAL,
    )?;
    // Truncate grows (hole) and fallocate allocates; shrinking frees.
    let free = || statfs(MNT).map(|s| s.bfree);
    let f0 = free()?;
    fallocate(&g, 0, 10 * MIB)?;
    let f1 = free()?;
    if f0 - f1 != 5 {
        return Err(format!(
            "fallocate of 10 MiB took {} blocks, expected 5",
            f0 - f1
        ));
    }
    if g.metadata().map_err(|e| e.to_string())?.len() != 10 * MIB {
        return Err("fallocate did not grow the file".into());
    }
    g.set_len(3 * MIB).map_err(|e| e.to_string())?;
    let f2 = free()?;
    if f2 - f1 != 3 {
        return Err(format!(
            "shrinking to 3 MiB freed {} blocks, expected 3",
            f2 - f1
        ));
    }
    // ENOSPC when the region is full, and nothing leaks.
    let h = create_sized(&p("h"), 0)?;
    let all = (f2 + 1) * 2 * MIB;
    match fallocate(&h, 0, all) {
        Err(e) if e.contains("No space") => {}
        other => return Err(format!("fallocate beyond the free space: {other:?}")),
    }
    if free()? != f2 {
        return Err("a failed fallocate leaked blocks".into());
    }
    fallocate(&h, 0, f2 * 2 * MIB)?;
    if free()? != 0 {
        return Err("could not fill the region".into());
    }
    drop(h);
    fs::remove_file(p("h")).map_err(|e| e.to_string())?;
    if free()? != f2 {
        return Err("unlink did not free the blocks".into());
    }
    // Reformatting a mounted filesystem is refused, not ignored.
    fs::create_dir_all("/mnt/gmfs3").map_err(|e| e.to_string())?;
    match sys::mount("guestmemfs", "/mnt/gmfs3", "guestmemfs", 0, "reformat") {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        other => {
            return Err(format!(
                "mount -o reformat while mounted: {other:?}, expected EBUSY"
            ))
        }
    }
    // A second mount shows the same filesystem.
    fs::create_dir_all("/mnt/gmfs2").map_err(|e| e.to_string())?;
    sys::mount("guestmemfs", "/mnt/gmfs2", "guestmemfs", 0, "")
        .map_err(|e| format!("second mount: {e}"))?;
    let same = fs::metadata("/mnt/gmfs2/g").map(|m| m.len()).ok() == Some(3 * MIB);
    sys::umount("/mnt/gmfs2").map_err(|e| e.to_string())?;
    if !same {
        return Err("second mount does not show the same files".into());
    }
    drop(g);
    fs::remove_file(p("g")).map_err(|e| e.to_string())?;
    let s1 = statfs(MNT)?;
    if s1.bfree != s0.bfree || s1.ffree != s0.ffree {
        return Err("blocks or inodes leaked".into());
    }
    diag("namespace, attributes, errors, truncate, fallocate, ENOSPC and statfs behave");
    Ok(Outcome::Pass)
}

pub(super) fn fallocate(f: &File, offset: u64, len: u64) -> Result<(), String> {
    // SAFETY: plain system call on our fd.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as i64, len as i64) };
    if rc != 0 {
        return Err(format!("fallocate: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Huge mappings: minor faults to touch 1 GiB, against shmem.
pub fn huge_mappings(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let f = create_sized(&p("huge"), GIB + 2 * MIB)?;
    let mut m = Mapping::new(&f, GIB, 0, libc::MAP_SHARED).map_err(|e| format!("mmap: {e}"))?;
    if !(m.ptr as u64).is_multiple_of(GIB) {
        return Err(format!(
            "1 GiB mapping placed at {:p}, not 1 GiB aligned",
            m.ptr
        ));
    }
    let gib_faults = touch_every_page(&mut m);
    drop(m);
    // The same file mapped 2 MiB off its 1 GiB alignment: PMDs only.
    let mut m =
        Mapping::new(&f, GIB, 2 * MIB, libc::MAP_SHARED).map_err(|e| format!("mmap: {e}"))?;
    let mib_faults = touch_every_page(&mut m);
    drop(m);
    // Baseline: a shmem memfd of the same size in the same run.
    let mfd = sys::memfd_create("baseline").map_err(|e| e.to_string())?;
    mfd.set_len(GIB).map_err(|e| e.to_string())?;
    let mut m = Mapping::new(&mfd, GIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    let shmem_faults = touch_every_page(&mut m);
    drop(m);
    drop(mfd);
    diag(&format!(
        "minor faults to touch every 4 KiB of 1 GiB: guestmemfs 1 GiB-aligned {gib_faults}, 2 MiB-aligned {mib_faults}, shmem memfd {shmem_faults}"
    ));
    if gib_faults > 1 {
        return Err(format!(
            "{gib_faults} faults for a 1 GiB-aligned GiB, expected 1"
        ));
    }
    if mib_faults > 512 {
        return Err(format!(
            "{mib_faults} faults for 2 MiB-aligned mapping, expected <= 512"
        ));
    }
    // Access past EOF raises SIGBUS (in a child, so we survive it).
    let small = create_sized(&p("small"), 2 * MIB)?;
    let mut m = Mapping::new(&small, 4 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    if !sigbus_on_touch(&mut m, 3 * MIB as usize) {
        return Err("touching past EOF did not raise SIGBUS".into());
    }
    m.bytes()[MIB as usize] = 1;
    drop(m);
    drop(small);
    drop(f);
    fs::remove_file(p("huge")).map_err(|e| e.to_string())?;
    fs::remove_file(p("small")).map_err(|e| e.to_string())?;
    Ok(Outcome::Pass)
}

/// The tree of files `persistence` creates and checks.
const TREE: &[(&str, u64, u32, u32, u32)] = &[
    // path, size, mode, uid, gid
    ("vm1", 6 * MIB + 4096, 0o600, 0, 0),
    ("vms/vm2", 2 * MIB, 0o640, 107, 107),
    ("vms/deep/vm3", 5 * MIB + 123, 0o644, 1000, 100),
];
const KEXECS: u32 = 3;

fn mtime_of(path: &str) -> i64 {
    1_600_000_000 + path.len() as i64
}

fn seed(path: &str) -> u64 {
    path.bytes().fold(0x1234_5678, |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    })
}

/// Files, directories, attributes and data survive 3 kexecs.
pub fn persistence(ctx: &mut Ctx) -> TestResult {
    mount()?;
    if ctx.stage == 1 {
        fs::create_dir_all(p("vms/deep")).map_err(|e| e.to_string())?;
        for (path, size, mode, uid, gid) in TREE {
            let f = create_sized(&p(path), *size)?;
            let mut m = Mapping::new(&f, size.div_ceil(4096) * 4096, 0, libc::MAP_SHARED)
                .map_err(|e| e.to_string())?;
            pattern::fill(seed(path), 0, &mut m.bytes()[..*size as usize]);
            drop(m);
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))
                .map_err(|e| e.to_string())?;
            let c = CString::new(p(path)).unwrap();
            // SAFETY: valid path.
            unsafe { libc::chown(c.as_ptr(), *uid, *gid) };
            let t = libc::timespec {
                tv_sec: mtime_of(path),
                tv_nsec: 123_456_789,
            };
            // SAFETY: valid path and two timespecs.
            unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
        }
        diag(&format!("stage 1: wrote {} files under {MNT}", TREE.len()));
        return Ok(Outcome::Kexec);
    }
    for (path, size, mode, uid, gid) in TREE {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(p(path))
            .map_err(|e| format!("stage {}: open {path}: {e}", ctx.stage))?;
        let md = f.metadata().map_err(|e| e.to_string())?;
        if md.len() != *size
            || md.mode() & 0o7777 != *mode
            || md.uid() != *uid
            || md.gid() != *gid
            || md.mtime() != mtime_of(path)
            || md.mtime_nsec() != 123_456_789
            || md.atime() != mtime_of(path)
        {
            return Err(format!(
                "stage {}: {path}: size {} mode {:o} uid {} gid {} mtime {}.{}",
                ctx.stage,
                md.len(),
                md.mode(),
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec()
            ));
        }
        let mut m = Mapping::new(&f, size.div_ceil(4096) * 4096, 0, libc::MAP_SHARED)
            .map_err(|e| e.to_string())?;
        if let Some(bad) = pattern::first_mismatch(seed(path), 0, &m.bytes()[..*size as usize]) {
            return Err(format!("stage {}: {path}: byte {bad} changed", ctx.stage));
        }
    }
    diag(&format!(
        "stage {}: all {} files match byte for byte, with their attributes",
        ctx.stage,
        TREE.len()
    ));
    if ctx.stage <= KEXECS {
        return Ok(Outcome::Kexec);
    }
    Ok(Outcome::Pass)
}

/// crc32c of the first 4 MiB of data blocks, read by the test hook
/// without using the metadata.
fn data_crc() -> Result<String, String> {
    fs::read_to_string("/sys/kernel/debug/guestmemfs/data_crc")
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("data_crc hook (CONFIG_GUESTMEMFS_TEST): {e}"))
}

/// What the kernel after the kexec must do with a damaged handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The metadata is refused: the region stays reserved at the same
    /// address with its data blocks untouched, and the mount fails with
    /// `EUCLEAN` until `-o reformat`.
    Kept,
    /// The locator itself is not trusted (its base and size may be
    /// garbage): nothing is reserved and the mount fails with `ENODEV`.
    Dropped,
}

/// Stage 1 damages the handover with the test hook's `kind`; stage 2
/// finds every one of `log_needles` in the kernel log and checks the
/// `verdict`. For `Kept`, `-o reformat` then starts an empty filesystem
/// whose new blocks read as zeros.
pub(super) fn corruption(
    ctx: &mut Ctx,
    kind: &str,
    verdict: Verdict,
    log_needles: &[&str],
) -> TestResult {
    const SIZE: u64 = 4 * MIB;
    let seed = seed(kind);
    if ctx.stage == 1 {
        mount()?;
        // A fresh filesystem: the first file gets the first data blocks.
        let f = create_sized(&p("data"), SIZE)?;
        let mut m = Mapping::new(&f, SIZE, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        pattern::fill(seed, 0, m.bytes());
        drop(m);
        // A second file in two extents, for the overlap damage.
        let g = create_sized(&p("two"), 0)?;
        fallocate(&g, 0, 2 * MIB)?;
        let _ = create_sized(&p("gap"), 0).and_then(|h| fallocate(&h, 0, 2 * MIB));
        fallocate(&g, 2 * MIB, 2 * MIB)?;
        let crc = data_crc()?;
        let r = super::region::region()?;
        fs::write("/sys/kernel/debug/guestmemfs/corrupt", kind)
            .map_err(|e| format!("test hook (CONFIG_GUESTMEMFS_TEST): {e}"))?;
        diag(&format!(
            "stage 1: wrote {SIZE} bytes (data crc {crc}) in region {:#x}-{:#x}, then damaged the handover ({kind})",
            r.start, r.end
        ));
        // One command-line token: crc@region.
        ctx.note_out = Some(format!("{crc}@{:#x}-{:#x}", r.start, r.end));
        return Ok(Outcome::Kexec);
    }
    let note = ctx.note_in.clone().ok_or("no note from stage 1")?;
    let (want_crc, want_region) = note
        .split_once('@')
        .ok_or_else(|| format!("malformed note from stage 1: {note:?}"))?;
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    for needle in log_needles {
        let line = log
            .iter()
            .find(|l| l.contains(needle))
            .ok_or_else(|| format!("no \"{needle}\" line in the kernel log"))?;
        diag(&format!("kernel log: {line}"));
    }
    fs::create_dir_all(MNT).map_err(|e| e.to_string())?;
    let mounted = sys::mount("guestmemfs", MNT, "guestmemfs", 0, "");
    if verdict == Verdict::Dropped {
        if let Ok(r) = super::region::region() {
            return Err(format!(
                "region {:#x}-{:#x} reserved although its locator was refused (was {want_region})",
                r.start, r.end
            ));
        }
        return match mounted {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                diag(&format!(
                    "nothing reserved where the refused locator pointed (was {want_region}); mount: ENODEV"
                ));
                Ok(Outcome::Pass)
            }
            other => Err(format!(
                "mount after a refused locator: {other:?}, expected ENODEV"
            )),
        };
    }
    let r =
        super::region::region().map_err(|e| format!("region not reserved after refusal: {e}"))?;
    let got_region = format!("{:#x}-{:#x}", r.start, r.end);
    if got_region != want_region {
        return Err(format!(
            "region moved over the kexec: was {want_region}, now {got_region}"
        ));
    }
    let crc = data_crc()?;
    if crc != want_crc {
        return Err(format!("data blocks changed: crc {crc}, was {want_crc}"));
    }
    diag(&format!(
        "region {got_region} kept, data blocks untouched: crc {crc} as before the kexec"
    ));
    match mounted {
        Err(e) if e.raw_os_error() == Some(libc::EUCLEAN) => {}
        other => {
            return Err(format!(
                "mount of the refused filesystem: {other:?}, expected EUCLEAN"
            ))
        }
    }
    sys::mount("guestmemfs", MNT, "guestmemfs", 0, "reformat")
        .map_err(|e| format!("mount -o reformat: {e}"))?;
    let f = create_sized(&p("again"), 0)?;
    fallocate(&f, 0, SIZE)?;
    let mut m = Mapping::new(&f, SIZE, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    if m.bytes().iter().any(|&b| b != 0) {
        return Err("a new file shows old data: blocks were not zeroed".into());
    }
    diag("after -o reformat: the new file's blocks (the old file's) read as zeros");
    Ok(Outcome::Pass)
}

const REFUSED: &str =
    "refusing the filesystem handed over by the previous kernel: corrupt metadata: ";

pub fn corrupt_magic(ctx: &mut Ctx) -> TestResult {
    corruption(
        ctx,
        "magic",
        Verdict::Kept,
        &[&format!("{REFUSED}bad superblock magic")],
    )
}

pub fn corrupt_cycle(ctx: &mut Ctx) -> TestResult {
    corruption(
        ctx,
        "cycle",
        Verdict::Kept,
        &[&format!("{REFUSED}extent list of inode 2 loops")],
    )
}

pub fn corrupt_overlap(ctx: &mut Ctx) -> TestResult {
    corruption(
        ctx,
        "overlap",
        Verdict::Kept,
        &[&format!("{REFUSED}block 1 is used twice")],
    )
}

/// A locator whose checksum fails is not trusted for anything, not even
/// its base and size: nothing is reserved and the mount fails with ENODEV.
pub fn corrupt_locator(ctx: &mut Ctx) -> TestResult {
    corruption(
        ctx,
        "locator",
        Verdict::Dropped,
        &["handed-over locator refused", "checksum mismatch"],
    )
}

/// Runs `f` in a child process with the given uid and gid; returns its
/// exit code (0 = the checks in `f` passed).
fn as_user(uid: u32, gid: u32, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    // SAFETY: fork in a single-threaded process; the child only makes
    // system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain system calls in the child.
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(gid) == 0
                && libc::setuid(uid) == 0
        };
        let code = match (ok, f()) {
            (true, Ok(())) => 0,
            (false, _) => 2,
            (true, Err(e)) => {
                diag(&format!("as uid {uid}: {e}"));
                1
            }
        };
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(format!("checks as uid {uid} failed (status {status:#x})"))
    }
}

/// The VFS permission checks apply to a non-root user.
pub fn permissions(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    fs::create_dir_all(p("rootonly")).map_err(|e| e.to_string())?;
    fs::set_permissions(p("rootonly"), fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    create_sized(&p("rootonly/secret"), 2 * MIB)?;
    fs::set_permissions(p("rootonly/secret"), fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    fs::create_dir_all(p("user")).map_err(|e| e.to_string())?;
    let c = CString::new(p("user")).unwrap();
    // SAFETY: valid path.
    unsafe { libc::chown(c.as_ptr(), 1000, 1000) };
    as_user(1000, 1000, || {
        expect_errno(
            "create in a root-owned 0755 dir",
            File::create(p("rootonly/x")),
            libc::EACCES,
        )?;
        expect_errno(
            "open a 0600 root file",
            File::open(p("rootonly/secret")),
            libc::EACCES,
        )?;
        expect_errno(
            "chmod a root file",
            fs::set_permissions(p("rootonly/secret"), fs::Permissions::from_mode(0o666)),
            libc::EPERM,
        )?;
        expect_errno(
            "rmdir a root dir",
            fs::remove_dir(p("rootonly")),
            libc::EACCES,
        )?;
        let f = create_sized(&p("user/mine"), 2 * MIB)?;
        let md = f.metadata().map_err(|e| e.to_string())?;
        if md.uid() != 1000 || md.gid() != 1000 {
            return Err(format!("new file owned by {}:{}", md.uid(), md.gid()));
        }
        let mut m = Mapping::new(&f, 2 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        m.bytes()[0] = 7;
        Ok(())
    })?;
    fs::remove_file(p("user/mine")).map_err(|e| e.to_string())?;
    fs::remove_dir(p("user")).map_err(|e| e.to_string())?;
    fs::remove_file(p("rootonly/secret")).map_err(|e| e.to_string())?;
    fs::remove_dir(p("rootonly")).map_err(|e| e.to_string())?;
    diag("uid 1000: EACCES/EPERM on root's files, can create and map its own");
    Ok(Outcome::Pass)
}

/// After the kexec-time freeze, metadata changes fail with EBUSY and a
/// fault in a hole gets SIGBUS; mapped data stays usable. Freezes the
/// filesystem for the rest of the boot: run last.
pub fn frozen(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let f = create_sized(&p("live"), 4 * MIB)?;
    fallocate(&f, 0, 2 * MIB)?;
    let mut m = Mapping::new(&f, 4 * MIB, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
    m.bytes()[0] = 1;
    fs::write("/sys/kernel/debug/guestmemfs/freeze", "1")
        .map_err(|e| format!("freeze hook: {e}"))?;
    expect_errno("create after freeze", File::create(p("late")), libc::EBUSY)?;
    expect_errno(
        "mkdir after freeze",
        fs::create_dir(p("lated")),
        libc::EBUSY,
    )?;
    expect_errno("truncate after freeze", f.set_len(8 * MIB), libc::EBUSY)?;
    // Already mapped memory keeps working (guests keep running).
    m.bytes()[1] = 2;
    if !sigbus_on_touch(&mut m, 3 * MIB as usize) {
        return Err("allocating fault after freeze did not raise SIGBUS".into());
    }
    diag("after freeze: create/mkdir/truncate EBUSY, hole fault SIGBUS, mapped data usable");
    Ok(Outcome::Pass)
}

const MANY: usize = 1000;

/// 1,000 files, each with a block of data, survive a kexec; reports the
/// size of what is handed over.
pub fn many_files(ctx: &mut Ctx) -> TestResult {
    mount()?;
    let name = |i: usize| p(&format!("many/file-{i:04}"));
    if ctx.stage == 1 {
        fs::create_dir_all(p("many")).map_err(|e| e.to_string())?;
        for i in 0..MANY {
            let f = create_sized(&name(i), 2 * MIB)?;
            let mut m = Mapping::new(&f, 4096, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
            m.bytes()[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        let s = statfs(MNT)?;
        diag(&format!(
            "stage 1: {MANY} files of 2 MiB; {} inodes and {} blocks in use",
            s.files - s.ffree,
            s.blocks - s.bfree
        ));
        return Ok(Outcome::Kexec);
    }
    for i in 0..MANY {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(name(i))
            .map_err(|e| format!("file {i} lost: {e}"))?;
        let mut m = Mapping::new(&f, 4096, 0, libc::MAP_SHARED).map_err(|e| e.to_string())?;
        if m.bytes()[..8] != (i as u64).to_le_bytes() {
            return Err(format!("file {i} has the wrong data"));
        }
    }
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    if let Some(l) = log.iter().find(|l| l.contains("kept the filesystem")) {
        diag(&format!("kernel log: {l}"));
    }
    let s = statfs(MNT)?;
    let inodes = s.files - s.ffree;
    diag(&format!(
        "handover for {MANY} files: KHO carries one 64-byte locator (one preserved page); \
         the metadata stays in the region: 4096 B superblock + {inodes} inodes x 512 B + {} extents x 32 B = {} KiB in use",
        MANY,
        (4096 + inodes * 512 + MANY as u64 * 32) >> 10
    ));
    Ok(Outcome::Pass)
}

/// Maps `len` bytes of `file` the way QEMU's memory-backend-file does
/// (util/mmap-alloc.c, qemu_ram_mmap): reserve `len + align` of PROT_NONE
/// anonymous memory, then map the file MAP_FIXED|MAP_SHARED at the first
/// `align`-aligned address inside it. Returns the mapping's address and
/// the reservation (address, length) to unmap.
fn qemu_style_map(
    file: &File,
    len: u64,
    align: u64,
) -> Result<(*mut u8, (*mut libc::c_void, usize)), String> {
    let total = (len + align) as usize;
    // SAFETY: a fresh anonymous reservation.
    let guard = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if guard == libc::MAP_FAILED {
        return Err(format!("reserve: {}", io::Error::last_os_error()));
    }
    let start = (guard as u64).div_ceil(align) * align;
    // SAFETY: MAP_FIXED inside our own reservation.
    let ptr = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!(
            "MAP_FIXED|MAP_SHARED: {}",
            io::Error::last_os_error()
        ));
    }
    Ok((ptr.cast(), (guard, total)))
}

/// Guest RAM as QEMU maps it from `-object memory-backend-file,
/// mem-path=<file>,share=on[,align=1G]`: the file is sized with ftruncate
/// and mapped MAP_FIXED inside a reservation; with align=1G one fault maps
/// the GiB, with QEMU's default 4 KiB alignment it still works with small
/// pages; the data is the same through both.
pub fn qemu_backing(_ctx: &mut Ctx) -> TestResult {
    mount()?;
    let f = create_sized(&p("vm-ram"), GIB)?;
    let (ptr, guard) = qemu_style_map(&f, GIB, GIB)?;
    let mut m = Mapping {
        ptr,
        len: GIB as usize,
    };
    let faults_1g = touch_every_page(&mut m);
    pattern::fill(7, 0, &mut m.bytes()[..(4 * MIB) as usize]);
    std::mem::forget(m);
    // SAFETY: unmapping the whole reservation (file mapping included).
    unsafe { libc::munmap(guard.0, guard.1) };
    let (ptr, guard) = qemu_style_map(&f, GIB, 4096)?;
    let mut m = Mapping {
        ptr,
        len: GIB as usize,
    };
    let ok = pattern::first_mismatch(7, 0, &m.bytes()[..(4 * MIB) as usize]).is_none();
    std::mem::forget(m);
    // SAFETY: as above.
    unsafe { libc::munmap(guard.0, guard.1) };
    drop(f);
    fs::remove_file(p("vm-ram")).map_err(|e| e.to_string())?;
    diag(&format!(
        "QEMU-style mapping of 1 GiB: {faults_1g} fault(s) with align=1G; data identical through a 4 KiB-aligned mapping: {ok}"
    ));
    if faults_1g > 1 || !ok {
        return Err("QEMU-style guest RAM mapping misbehaves".into());
    }
    Ok(Outcome::Pass)
}
