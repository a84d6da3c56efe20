// SPDX-License-Identifier: GPL-2.0-only
//! Thin wrappers over the system calls PID 1 and the tests need.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// mount(2). `data` is the filesystem's option string.
pub fn mount(source: &str, target: &str, fstype: &str, flags: u64, data: &str) -> io::Result<()> {
    let (source, target, fstype, data) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags as libc::c_ulong,
            data.as_ptr().cast(),
        )
    };
    check(rc as libc::c_long).map(|_| ())
}

/// umount(2).
pub fn umount(target: &str) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount(target.as_ptr()) } as libc::c_long).map(|_| ())
}

/// Mounts the pseudo filesystems PID 1 needs; already-mounted ones are fine.
pub fn mount_pseudo_filesystems() {
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("debugfs", "/sys/kernel/debug"),
        ("tmpfs", "/tmp"),
    ] {
        let _ = fs::create_dir_all(target);
        match mount(fstype, target, fstype, 0, "") {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => crate::ktap::diag(&format!("gtest: mount {fstype} on {target}: {e}")),
        }
    }
}

/// memfd_create(2).
pub fn memfd_create(name: &str) -> io::Result<File> {
    let name = cstr(name)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let fd = check(unsafe { libc::memfd_create(name.as_ptr(), 0) } as libc::c_long)?;
    // SAFETY: memfd_create returned a new fd that we now own.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// mmap(2); returns the mapping's address.
///
/// # Safety
///
/// With `MAP_FIXED`, `addr..addr + len` must be address space the caller
/// owns (e.g. its own `PROT_NONE` reservation): whatever is there is
/// replaced.
pub unsafe fn mmap(
    addr: usize,
    len: usize,
    prot: i32,
    flags: i32,
    fd: RawFd,
    offset: u64,
) -> io::Result<*mut u8> {
    // SAFETY: the caller owns the range for MAP_FIXED; otherwise `addr` is
    // only a hint.
    let ptr = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            flags,
            fd,
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ptr.cast())
    }
}

/// munmap(2).
///
/// # Safety
///
/// Nothing may use the range afterwards.
pub unsafe fn munmap(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: per the caller's contract.
    check(unsafe { libc::munmap(addr.cast(), len) } as libc::c_long).map(|_| ())
}

/// mremap(2) with `MREMAP_MAYMOVE | MREMAP_FIXED`: moves the `len` bytes
/// mapped at `old` to exactly `new`; returns the new address.
///
/// # Safety
///
/// As [`munmap`] for the old range and as a `MAP_FIXED` [`mmap`] for the
/// new one.
pub unsafe fn mremap_fixed(old: *mut u8, len: usize, new: usize) -> io::Result<*mut u8> {
    // SAFETY: per the caller's contract.
    let ptr = unsafe {
        libc::mremap(
            old.cast(),
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            new as *mut libc::c_void,
        )
    };
    if ptr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ptr.cast())
    }
}

/// process_vm_readv(2) (`write` false) or process_vm_writev(2) (`write`
/// true) between our `local` buffers and the `remote` ranges of `pid`;
/// returns the bytes copied.
///
/// # Safety
///
/// The `local` ranges must be valid for writes (readv) or reads (writev).
pub unsafe fn process_vm_rw(
    write: bool,
    pid: libc::pid_t,
    local: &[libc::iovec],
    remote: &[libc::iovec],
) -> io::Result<usize> {
    let nr = if write {
        libc::SYS_process_vm_writev
    } else {
        libc::SYS_process_vm_readv
    };
    // SAFETY: the iovec arrays are valid for their lengths; the local
    // ranges per the caller's contract. The remote ranges are checked by
    // the kernel.
    check(unsafe {
        libc::syscall(
            nr,
            pid,
            local.as_ptr(),
            local.len() as libc::c_ulong,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })
    .map(|n| n as usize)
}

/// How a child process of [`in_child`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    Exited(i32),
    Signaled(i32),
    /// Still running at the time limit: killed with SIGKILL.
    Killed,
}

/// Runs `f` in a forked child, which exits with the code `f` returns
/// (101 if it panics) without running destructors. Waits at most
/// `limit`, then kills the child.
///
/// # Safety
///
/// The child is a copy of the calling thread only: when the process has
/// other threads, `f` must not allocate or take locks they may have held
/// at the fork. Touching memory and making system calls are fine.
pub unsafe fn in_child(limit: Duration, f: impl FnOnce() -> i32) -> io::Result<ChildEnd> {
    // SAFETY: per the caller's contract; the child never returns here.
    let pid = check(unsafe { libc::fork() } as libc::c_long)? as libc::pid_t;
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_micros(50);
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            break;
        }
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if Instant::now() >= deadline {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Ok(ChildEnd::Killed);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    Ok(if libc::WIFSIGNALED(status) {
        ChildEnd::Signaled(libc::WTERMSIG(status))
    } else {
        ChildEnd::Exited(libc::WEXITSTATUS(status))
    })
}

/// Drops the kernel's clean caches (`/proc/sys/vm/drop_caches`): 2 frees
/// unused dentries and inodes, so the next lookup reads them again from
/// the filesystem.
pub fn drop_caches(what: u32) -> io::Result<()> {
    fs::write("/proc/sys/vm/drop_caches", what.to_string())
}

/// fstatat(2) of `name` in the directory open as `dir`, not following a
/// symlink: the lookup of one name, without walking a path to it.
pub fn stat_at(dir: &File, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid fd, a NUL-terminated name and an out pointer to a
    // whole `struct stat`.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } as libc::c_long)?;
    // SAFETY: fstatat succeeded, so it filled the buffer.
    Ok(unsafe { st.assume_init() })
}

/// Creates the empty regular file `name` in the directory open as `dir`
/// (openat(2) with `O_CREAT | O_EXCL`) and closes it.
pub fn create_at(dir: &File, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a valid fd and a NUL-terminated name; the mode is the
    // variadic argument O_CREAT needs.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    } as libc::c_long)?;
    // SAFETY: openat returned a new fd that we own; dropping closes it.
    drop(unsafe { File::from_raw_fd(fd as RawFd) });
    Ok(())
}

/// Records of the kernel log buffer (`/dev/kmsg`), text only.
pub fn kernel_log() -> io::Result<Vec<String>> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some((_, msg)) = rec.split_once(';') {
                    out.push(msg.lines().next().unwrap_or("").to_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // A record overwritten while reading: skip to the next one.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Kernel log lines that mean trouble: warnings, BUGs, oopses.
pub fn kernel_trouble() -> io::Result<Vec<String>> {
    const MARKS: &[&str] = &["WARNING:", "BUG:", "Oops", "cut here", "Call Trace"];
    Ok(kernel_log()?
        .into_iter()
        .filter(|l| MARKS.iter().any(|m| l.contains(m)))
        .collect())
}

/// A PCI function found in sysfs.
pub struct PciDevice {
    pub bdf: String,
}

impl PciDevice {
    pub fn sysfs(&self) -> String {
        format!("/sys/bus/pci/devices/{}", self.bdf)
    }
}

/// `bdf`'s sysfs `config` (root reads and writes all of it).
fn pci_config_path(bdf: &str) -> String {
    format!("/sys/bus/pci/devices/{bdf}/config")
}

/// `N` bytes of `bdf`'s config space at `off`, one pread.
fn pci_config_read<const N: usize>(bdf: &str, off: u64) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open(pci_config_path(bdf))?.read_exact_at(&mut b, off)?;
    Ok(b)
}

/// The 16-bit config register of `bdf` at `off`, through sysfs.
pub fn pci_config16(bdf: &str, off: u64) -> io::Result<u16> {
    pci_config_read(bdf, off).map(u16::from_le_bytes)
}

/// The 32-bit config register of `bdf` at `off`, through sysfs.
pub fn pci_config32(bdf: &str, off: u64) -> io::Result<u32> {
    pci_config_read(bdf, off).map(u32::from_le_bytes)
}

/// Writes the 16-bit config register of `bdf` at `off` with one 2-byte
/// pwrite of sysfs `config` (a config word write).
pub fn pci_config_write16(bdf: &str, off: u64, v: u16) -> io::Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(pci_config_path(bdf))?;
    match f.write_at(&v.to_le_bytes(), off)? {
        2 => Ok(()),
        _ => Err(io::Error::other("short config write")),
    }
}

fn read_hex(path: &str) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// All PCI functions with the given vendor and device id.
pub fn find_pci(vendor: u32, device: u32) -> io::Result<Vec<PciDevice>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/bus/pci/devices")? {
        let bdf = entry?.file_name().to_string_lossy().into_owned();
        let base = format!("/sys/bus/pci/devices/{bdf}");
        if read_hex(&format!("{base}/vendor")) == Some(vendor)
            && read_hex(&format!("{base}/device")) == Some(device)
        {
            out.push(PciDevice { bdf });
        }
    }
    out.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(out)
}

/// Directories and files of the initramfs that are packed again as the
/// initrd of the next kernel; everything else (/tmp, mounts) is left out.
const ROOTFS_CONTENT: &[&str] = &["init", "bin", "boot", "etc"];
const ROOTFS_EMPTY_DIRS: &[&str] = &["dev", "proc", "sys", "tmp", "mnt"];

fn pack_path(w: &mut initramfs::Writer<io::BufWriter<File>>, rel: &str) -> io::Result<()> {
    let path = format!("/{rel}");
    let meta = fs::symlink_metadata(&path)?;
    let perm = meta.mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_dir() {
        w.dir(rel, perm)?;
        let mut names: Vec<String> = fs::read_dir(&path)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for name in names {
            pack_path(w, &format!("{rel}/{name}"))?;
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(&path)?;
        w.symlink(rel, &target.to_string_lossy())?;
    } else if ft.is_file() {
        w.file(rel, perm, &fs::read(&path)?)?;
    } else if ft.is_char_device() {
        // Not expected under ROOTFS_CONTENT; skip rather than guess.
    }
    Ok(())
}

/// Packs this initramfs (as listed in ROOTFS_CONTENT) into `out`.
pub fn pack_rootfs(out: &Path) -> io::Result<()> {
    let file = File::create(out)?;
    let mut w = initramfs::Writer::new(io::BufWriter::new(file));
    for dir in ROOTFS_EMPTY_DIRS {
        w.dir(dir, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    for rel in ROOTFS_CONTENT {
        if Path::new(&format!("/{rel}")).exists() {
            pack_path(&mut w, rel)?;
        }
    }
    w.finish()?;
    Ok(())
}

/// Loads `/boot/bzImage` with this initramfs re-packed as its initrd and
/// `cmdline`, then reboots into it. Returns only on failure. File
/// descriptors still open (LUO sessions) are what the kexec preserves.
pub fn kexec_same_kernel(cmdline: &str) -> io::Result<()> {
    kexec_load_same_kernel(cmdline)?;
    // SAFETY: plain system calls without pointers.
    unsafe { libc::sync() };
    // SAFETY: as above; on success this does not return.
    check(unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) } as libc::c_long)?;
    Ok(())
}

/// Loads this kernel and the test rootfs for a later `reboot(KEXEC)`.
pub fn kexec_load_same_kernel(cmdline: &str) -> io::Result<()> {
    let initrd_path = Path::new("/tmp/next-initrd.cpio");
    pack_rootfs(initrd_path)?;
    let kernel = File::open("/boot/bzImage")?;
    let initrd = File::open(initrd_path)?;
    let cmdline = cstr(cmdline)?;
    let len = cmdline.as_bytes_with_nul().len();
    // SAFETY: valid fds and a NUL-terminated command line of `len` bytes.
    check(unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_raw_fd(),
            len as libc::c_ulong,
            cmdline.as_ptr(),
            0 as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// Powers the VM off (QEMU exits). Never returns.
pub fn power_off() -> ! {
    // SAFETY: plain system calls without pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
