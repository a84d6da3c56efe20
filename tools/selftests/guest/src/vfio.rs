// SPDX-License-Identifier: GPL-2.0-only
//! A PCI device passed through as a Rust VMM does it: bound to vfio-pci,
//! opened through its VFIO cdev, bound to an iommufd and attached to an
//! explicit HWPT on an IOAS, with the rust-vmm crates (`vfio-ioctls`
//! with `vfio_cdev`, `iommufd-ioctls`). Only the calls this project adds
//! (`IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE`, `_FIND_RESTORED`) are local.

use iommufd_bindings::iommufd::{iommu_hwpt_alloc, iommu_ioas_map_file, iommu_ioas_unmap};
use iommufd_ioctls::{IommuFd, IommufdIoas};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use vfio_bindings::bindings::vfio::{
    vfio_device_bind_iommufd, VFIO_DEVICE_BIND_FLAG_TOKEN, VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
    VFIO_DEVICE_FEATURE_SET, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioIommufd};

/// Binds `bdf` to vfio-pci (the guest has no network drivers, so the
/// device starts unbound).
pub fn bind_vfio_pci(bdf: &str) -> Result<(), String> {
    bind_driver(bdf, "vfio-pci")
}

/// The name of the driver `bdf` is bound to, if any.
pub fn driver_of(bdf: &str) -> Option<String> {
    let link = fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Unbinds `bdf` from its driver, if it has one.
pub fn unbind(bdf: &str) -> Result<(), String> {
    if driver_of(bdf).is_some() {
        fs::write(format!("/sys/bus/pci/devices/{bdf}/driver/unbind"), bdf)
            .map_err(|e| format!("unbind {bdf}: {e}"))?;
    }
    Ok(())
}

/// Binds `bdf` to `driver` through `driver_override` (unbinding it from
/// another driver first).
pub fn bind_driver(bdf: &str, driver: &str) -> Result<(), String> {
    if driver_of(bdf).as_deref() == Some(driver) {
        return Ok(());
    }
    unbind(bdf)?;
    let dev = format!("/sys/bus/pci/devices/{bdf}");
    fs::write(format!("{dev}/driver_override"), driver)
        .map_err(|e| format!("driver_override: {e}"))?;
    fs::write("/sys/bus/pci/drivers_probe", bdf).map_err(|e| format!("drivers_probe: {e}"))?;
    Ok(())
}

/// The device's cdev under /dev/vfio/devices (bound to vfio-pci).
pub fn cdev_path(bdf: &str) -> Result<String, String> {
    let dir = format!("/sys/bus/pci/devices/{bdf}/vfio-dev");
    let name = fs::read_dir(&dir)
        .map_err(|e| format!("{dir}: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vfio"))
        .ok_or(format!("{dir}: no vfio cdev"))?;
    Ok(format!("/dev/vfio/devices/{name}"))
}

/// The device, its iommufd, IOAS and HWPT. On drop the device detaches,
/// then the HWPT is destroyed, then the IOAS.
pub struct Passthrough {
    dev: Option<VfioDevice>,
    pub hwpt_id: u32,
    pub ioas: Arc<IommufdIoas>,
    pub iommufd: Arc<IommuFd>,
    /// Time spent opening the VFIO cdev and binding it (vfio-pci resets
    /// the device at open): the same on every path, not IOMMU state.
    pub open_bind: std::time::Duration,
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        drop(self.dev.take());
        let _ = self.iommufd.destroy_iommu_object(self.hwpt_id);
    }
}

/// `struct iommu_hwpt_liveupdate_mark_preserve` (include/uapi/linux/iommufd.h).
#[repr(C)]
struct MarkPreserve {
    size: u32,
    hwpt_id: u32,
    hwpt_token: u64,
}

/// `struct iommu_hwpt_liveupdate_find_restored`.
#[repr(C)]
#[derive(Default)]
pub struct FindRestored {
    size: u32,
    pub out_hwpt_id: u32,
    hwpt_token: u64,
    pub out_ioas_id: u32,
    reserved: u32,
}

/// `_IO(IOMMUFD_TYPE, cmd)`: iommufd ioctls carry their size in the struct.
const fn iommufd_io(cmd: u64) -> u64 {
    ((b';' as u64) << 8) | cmd
}
pub const IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE: u64 = iommufd_io(0x96);
pub const IOMMU_HWPT_LIVEUPDATE_FIND_RESTORED: u64 = iommufd_io(0x97);
/// `_IO(VFIO_TYPE, VFIO_BASE + 17)`: VFIO_TYPE is `;` too, VFIO_BASE 100.
const VFIO_DEVICE_FEATURE: u64 = iommufd_io(100 + 17);
/// `_IO(VFIO_TYPE, VFIO_BASE + 18)`.
const VFIO_DEVICE_BIND_IOMMUFD: u64 = iommufd_io(100 + 18);

/// `struct vfio_device_feature` carrying a VF token (a UUID).
#[repr(C)]
struct VfTokenFeature {
    argsz: u32,
    flags: u32,
    uuid: [u8; 16],
}

/// An ioctl whose argument is `arg` (iommufd's and VFIO's).
fn iommufd_ioctl<T>(fd: RawFd, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is an exclusively borrowed `#[repr(C)]` struct with the
    // layout the kernel expects for `request`; it outlives the call.
    let rc = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `IOMMU_HWPT_LIVEUPDATE_FIND_RESTORED` of `token` in `iommufd`.
pub fn find_restored(iommufd: &IommuFd, token: u64) -> io::Result<FindRestored> {
    let mut f = FindRestored {
        size: std::mem::size_of::<FindRestored>() as u32,
        hwpt_token: token,
        ..Default::default()
    };
    iommufd_ioctl(
        iommufd.as_raw_fd(),
        IOMMU_HWPT_LIVEUPDATE_FIND_RESTORED,
        &mut f,
    )?;
    Ok(f)
}

impl Passthrough {
    /// `IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE` of the HWPT with `token`.
    pub fn mark_preserve(&self, token: u64) -> io::Result<()> {
        let mut m = MarkPreserve {
            size: std::mem::size_of::<MarkPreserve>() as u32,
            hwpt_id: self.hwpt_id,
            hwpt_token: token,
        };
        iommufd_ioctl(
            self.iommufd.as_raw_fd(),
            IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE,
            &mut m,
        )
    }

    /// `IOMMU_IOAS_MAP_FILE` of one page of `fd` at a fixed `iova` of IOAS
    /// `ioas_id`: the errno, or `None` if it mapped.
    pub fn remap_probe(&self, ioas_id: u32, fd: &impl AsRawFd, iova: u64) -> Option<i32> {
        let mut m = iommu_ioas_map_file {
            size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
            flags: 1 | 2 | 4, // FIXED_IOVA | WRITEABLE | READABLE
            ioas_id,
            fd: fd.as_raw_fd(),
            start: 0,
            length: 4096,
            iova,
        };
        iommufd_ioctl(self.iommufd.as_raw_fd(), iommufd_io(0x8f), &mut m)
            .err()
            .and_then(|e| e.raw_os_error())
    }

    /// `IOMMU_IOAS_MAP_FILE` of `len` bytes of `fd` from `start` at a fixed
    /// `iova` of IOAS `ioas_id` (not necessarily `self.ioas`).
    pub fn map_in(
        &self,
        ioas_id: u32,
        fd: &impl AsRawFd,
        start: u64,
        len: u64,
        iova: u64,
    ) -> Result<(), String> {
        let m = iommu_ioas_map_file {
            size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
            flags: 1 | 2 | 4, // FIXED_IOVA | WRITEABLE | READABLE
            ioas_id,
            fd: fd.as_raw_fd(),
            start,
            length: len,
            iova,
        };
        self.iommufd
            .map_iommu_ioas_file(&m)
            .map_err(|e| format!("IOMMU_IOAS_MAP_FILE into IOAS {ioas_id} at {iova:#x}: {e}"))
    }

    /// `IOMMU_IOAS_UNMAP` of `[iova, iova + len)` in IOAS `ioas_id`.
    pub fn unmap_in(&self, ioas_id: u32, iova: u64, len: u64) -> Result<(), String> {
        let mut u = iommu_ioas_unmap {
            size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
            ioas_id,
            iova,
            length: len,
        };
        self.iommufd
            .unmap_iommu_ioas(&mut u)
            .map_err(|e| format!("IOMMU_IOAS_UNMAP in IOAS {ioas_id} at {iova:#x}: {e}"))
    }

    /// A new HWPT for the device on IOAS `ioas_id` (not attached).
    pub fn alloc_hwpt(&self, ioas_id: u32) -> Result<u32, String> {
        let dev_id = self
            .dev()
            .iommufd_dev_id()
            .ok_or("device not bound to the iommufd")?;
        let mut hwpt = iommu_hwpt_alloc {
            size: std::mem::size_of::<iommu_hwpt_alloc>() as u32,
            dev_id,
            pt_id: ioas_id,
            ..Default::default()
        };
        self.iommufd
            .alloc_iommu_hwpt(&mut hwpt)
            .map_err(|x| format!("IOMMU_HWPT_ALLOC on IOAS {ioas_id}: {x}"))?;
        Ok(hwpt.out_hwpt_id)
    }

    /// Moves the attached device onto HWPT `hwpt_id` (a replace: the
    /// device stays attached throughout).
    pub fn replace(&self, hwpt_id: u32) -> Result<(), String> {
        self.dev()
            .attach_hwpt(hwpt_id)
            .map_err(|x| format!("replace onto HWPT {hwpt_id}: {x}"))
    }

    /// A new HWPT on IOAS `ioas_id`, and the device moved onto it.
    pub fn replace_with_new_hwpt(&self, ioas_id: u32) -> Result<u32, String> {
        let hwpt = self.alloc_hwpt(ioas_id)?;
        self.replace(hwpt)?;
        Ok(hwpt)
    }

    /// After a kexec: the iommufd retrieved from LUO, its HWPT restored
    /// from `token`; `bdf`'s cdev is bound to it and attached to that HWPT
    /// (no map call: the mappings came back with it). Returns the restored
    /// IOAS's id too.
    pub fn restored(bdf: &str, iommufd: File, token: u64) -> Result<(Passthrough, u32), String> {
        let sysfs = format!("/sys/bus/pci/devices/{bdf}");
        Self::on_restored(iommufd, token, |vfio| {
            VfioDevice::new(Path::new(&sysfs), vfio, false)
                .map_err(|x| format!("open and bind the VFIO cdev: {x}"))
        })
    }

    /// After a live update that kept the device running: the iommufd and
    /// the device's cdev retrieved from LUO. Binding the cdev adopts the
    /// running device (no reset); it is attached to the HWPT restored from
    /// `token`. Returns the restored IOAS's id too.
    pub fn retrieved(cdev: File, iommufd: File, token: u64) -> Result<(Passthrough, u32), String> {
        Self::on_restored(iommufd, token, |vfio| {
            VfioDevice::new_from_fd(cdev, vfio, false)
                .map_err(|x| format!("bind the retrieved VFIO cdev: {x}"))
        })
    }

    /// The HWPT restored from `token` in the retrieved `iommufd`, and the
    /// device `bind` opens and binds to it, attached to that HWPT.
    fn on_restored(
        iommufd: File,
        token: u64,
        bind: impl FnOnce(Arc<VfioIommufd>) -> Result<VfioDevice, String>,
    ) -> Result<(Passthrough, u32), String> {
        let iommufd = Arc::new(IommuFd::new_from_fd(iommufd));
        let found = find_restored(&iommufd, token)
            .map_err(|e| format!("IOMMU_HWPT_LIVEUPDATE_FIND_RESTORED {token:#x}: {e}"))?;
        // vfio-ioctls wants an IOAS; a new, empty one (never attached).
        let vfio = Arc::new(
            VfioIommufd::new(Arc::clone(&iommufd), None, None)
                .map_err(|x| format!("VfioIommufd: {x}"))?,
        );
        let ioas = Arc::clone(vfio.ioas());
        let t = std::time::Instant::now();
        let dev = bind(vfio)?;
        let open_bind = t.elapsed();
        dev.attach_hwpt(found.out_hwpt_id)
            .map_err(|x| format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT restored HWPT: {x}"))?;
        Ok((
            Passthrough {
                dev: Some(dev),
                hwpt_id: found.out_hwpt_id,
                ioas,
                iommufd,
                open_bind,
            },
            found.out_ioas_id,
        ))
    }

    /// Opens `bdf`'s cdev, binds it to a new iommufd and attaches it to a
    /// new HWPT on a new IOAS.
    pub fn open(bdf: &str) -> Result<Passthrough, String> {
        let iommufd = Arc::new(IommuFd::new().map_err(|x| format!("open /dev/iommu: {x}"))?);
        let ioas = Arc::new(
            IommufdIoas::new(Arc::clone(&iommufd)).map_err(|x| format!("IOMMU_IOAS_ALLOC: {x}"))?,
        );
        let vfio = Arc::new(
            VfioIommufd::new(Arc::clone(&iommufd), Some(Arc::clone(&ioas)), None)
                .map_err(|x| format!("VfioIommufd: {x}"))?,
        );
        let sysfs = format!("/sys/bus/pci/devices/{bdf}");
        let t = std::time::Instant::now();
        let dev = VfioDevice::new(Path::new(&sysfs), vfio, false)
            .map_err(|x| format!("open and bind the VFIO cdev: {x}"))?;
        let open_bind = t.elapsed();
        let dev_id = dev
            .iommufd_dev_id()
            .ok_or("device not bound to the iommufd")?;
        let mut hwpt = iommu_hwpt_alloc {
            size: std::mem::size_of::<iommu_hwpt_alloc>() as u32,
            dev_id,
            pt_id: ioas.id(),
            ..Default::default()
        };
        iommufd
            .alloc_iommu_hwpt(&mut hwpt)
            .map_err(|x| format!("IOMMU_HWPT_ALLOC: {x}"))?;
        dev.attach_hwpt(hwpt.out_hwpt_id)
            .map_err(|x| format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT: {x}"))?;
        Ok(Passthrough {
            dev: Some(dev),
            hwpt_id: hwpt.out_hwpt_id,
            ioas,
            iommufd,
            open_bind,
        })
    }

    /// The VFIO device.
    pub fn dev(&self) -> &VfioDevice {
        self.dev.as_ref().expect("present until drop")
    }

    /// `IOMMU_IOAS_MAP_FILE` of `len` bytes of `fd` from `start` at `iova`.
    pub fn map_file(
        &self,
        fd: &impl AsRawFd,
        start: u64,
        len: u64,
        iova: u64,
    ) -> Result<(), String> {
        self.ioas
            .map_file(fd.as_raw_fd(), start, len, iova, true)
            .map_err(|e| format!("IOMMU_IOAS_MAP_FILE {len:#x} at {iova:#x}: {e}"))
    }

    /// The 16-bit config register at `off`.
    pub fn config_read16(&self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.dev()
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut b, off);
        u16::from_le_bytes(b)
    }

    /// Writes the 16-bit config register at `off` and returns the error of
    /// the write itself (vfio-ioctls' `region_write` only logs it).
    pub fn config_write16(&self, off: u64, v: u16) -> io::Result<()> {
        let at = self.dev().get_region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + off;
        // SAFETY: a 2-byte buffer written to the device fd at `at`.
        let n = unsafe {
            libc::pwrite(
                self.dev().as_raw_fd(),
                v.to_le_bytes().as_ptr().cast(),
                2,
                at as libc::off_t,
            )
        };
        if n == 2 {
            Ok(())
        } else if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Err(io::Error::other("short config write"))
        }
    }

    /// Sets bits of the 16-bit config register at `off`, and checks.
    pub fn config_set16(&self, off: u64, bits: u16) -> Result<(), String> {
        let mut b = [0u8; 2];
        self.dev()
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut b, off);
        let v = u16::from_le_bytes(b) | bits;
        self.dev()
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, &v.to_le_bytes(), off);
        // vfio-ioctls only logs failures: read back.
        self.dev()
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut b, off);
        if u16::from_le_bytes(b) & bits != bits {
            return Err(format!(
                "config {off:#x}: wrote {v:#x}, read {:#x}",
                u16::from_le_bytes(b)
            ));
        }
        Ok(())
    }

    /// BAR0, mapped.
    pub fn bar0(&self) -> Result<Bar, String> {
        let i = VFIO_PCI_BAR0_REGION_INDEX;
        let need =
            VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        if self.dev().get_region_flags(i) & need != need {
            return Err("BAR0 cannot be mmapped".into());
        }
        Bar::map(
            self.dev(),
            self.dev().get_region_offset(i),
            self.dev().get_region_size(i) as usize,
        )
        .map_err(|e| format!("mmap BAR0: {e}"))
    }

    /// Sets the VF token of this PF on vfio-pci
    /// (`VFIO_DEVICE_FEATURE_PCI_VF_TOKEN`): binding one of its VFs must
    /// present it.
    pub fn set_vf_token(&self, uuid: &[u8; 16]) -> io::Result<()> {
        let mut f = VfTokenFeature {
            argsz: std::mem::size_of::<VfTokenFeature>() as u32,
            flags: VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
            uuid: *uuid,
        };
        iommufd_ioctl(self.dev().as_raw_fd(), VFIO_DEVICE_FEATURE, &mut f)
    }

    /// Opens the cdev of `bdf`, a VF of a PF on vfio-pci, and binds it to
    /// this iommufd presenting VF token `uuid` (which vfio-ioctls cannot);
    /// not attached to any HWPT.
    pub fn bind_vf(&self, bdf: &str, uuid: &[u8; 16]) -> Result<File, String> {
        let path = cdev_path(bdf)?;
        let cdev = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        let mut bind = vfio_device_bind_iommufd {
            argsz: std::mem::size_of::<vfio_device_bind_iommufd>() as u32,
            flags: VFIO_DEVICE_BIND_FLAG_TOKEN,
            iommufd: self.iommufd.as_raw_fd(),
            out_devid: 0,
            token_uuid_ptr: uuid.as_ptr() as u64,
        };
        iommufd_ioctl(cdev.as_raw_fd(), VFIO_DEVICE_BIND_IOMMUFD, &mut bind)
            .map_err(|e| format!("VFIO_DEVICE_BIND_IOMMUFD {bdf} with its VF token: {e}"))?;
        Ok(cdev)
    }
}

/// An mmapped BAR: 32-bit MMIO registers.
pub struct Bar {
    base: *mut u32,
    len: usize,
}

impl Bar {
    /// Maps `len` bytes of `fd` from `offset`, shared, read-write: a VFIO
    /// device region, or a sysfs `resourceN` file.
    pub fn map(fd: &impl AsRawFd, offset: u64, len: usize) -> io::Result<Bar> {
        // SAFETY: a new shared mapping of `fd`; nothing else is replaced.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Bar {
            base: p.cast(),
            len,
        })
    }

    pub fn read(&self, reg: usize) -> u32 {
        assert!(reg + 4 <= self.len && reg.is_multiple_of(4));
        // SAFETY: inside the mapping, aligned; MMIO needs volatile.
        unsafe { self.base.add(reg / 4).read_volatile() }
    }

    pub fn write(&self, reg: usize, v: u32) {
        assert!(reg + 4 <= self.len && reg.is_multiple_of(4));
        // SAFETY: as in `read`.
        unsafe { self.base.add(reg / 4).write_volatile(v) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: our mapping; nothing uses it afterwards.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
