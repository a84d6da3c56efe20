// SPDX-License-Identifier: GPL-2.0-only
//! Thin wrappers over the system calls PID 1 and the tests need.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

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

/// A PCI function found in sysfs.
pub struct PciDevice {
    pub bdf: String,
}

impl PciDevice {
    pub fn sysfs(&self) -> String {
        format!("/sys/bus/pci/devices/{}", self.bdf)
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
    // SAFETY: plain system calls without pointers.
    unsafe { libc::sync() };
    // SAFETY: as above; on success this does not return.
    check(unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC) } as libc::c_long)?;
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
