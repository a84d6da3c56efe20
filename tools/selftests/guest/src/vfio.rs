// SPDX-License-Identifier: GPL-2.0-only
//! A PCI device passed through as a Rust VMM does it: bound to vfio-pci,
//! opened through its VFIO cdev, bound to an iommufd and attached to an
//! explicit HWPT on an IOAS, with the rust-vmm crates (`vfio-ioctls`
//! with `vfio_cdev`, `iommufd-ioctls`). Only the calls this project adds
//! (`IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE`) are local.

use iommufd_bindings::iommufd::iommu_hwpt_alloc;
use iommufd_ioctls::{IommuFd, IommufdIoas};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioIommufd};

/// Binds `bdf` to vfio-pci (the guest has no network drivers, so the
/// device starts unbound).
pub fn bind_vfio_pci(bdf: &str) -> Result<(), String> {
    let dev = format!("/sys/bus/pci/devices/{bdf}");
    if let Ok(link) = fs::read_link(format!("{dev}/driver")) {
        if link.ends_with("vfio-pci") {
            return Ok(());
        }
        fs::write(format!("{dev}/driver/unbind"), bdf).map_err(|e| format!("unbind: {e}"))?;
    }
    fs::write(format!("{dev}/driver_override"), "vfio-pci")
        .map_err(|e| format!("driver_override: {e}"))?;
    fs::write("/sys/bus/pci/drivers_probe", bdf).map_err(|e| format!("drivers_probe: {e}"))?;
    Ok(())
}

/// The device, its iommufd, IOAS and HWPT. On drop the device detaches,
/// then the HWPT is destroyed, then the IOAS.
pub struct Passthrough {
    dev: Option<VfioDevice>,
    pub hwpt_id: u32,
    pub ioas: Arc<IommufdIoas>,
    pub iommufd: Arc<IommuFd>,
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        drop(self.dev.take());
        let _ = self.iommufd.destroy_iommu_object(self.hwpt_id);
    }
}

impl Passthrough {
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
        let dev = VfioDevice::new(Path::new(&sysfs), vfio, false)
            .map_err(|x| format!("open and bind the VFIO cdev: {x}"))?;
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
        let len = self.dev().get_region_size(i) as usize;
        // SAFETY: a new shared mapping of the device fd at BAR0's offset.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.dev().as_raw_fd(),
                self.dev().get_region_offset(i) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap BAR0: {}", std::io::Error::last_os_error()));
        }
        Ok(Bar {
            base: p.cast(),
            len,
        })
    }
}

/// An mmapped BAR: 32-bit MMIO registers.
pub struct Bar {
    base: *mut u32,
    len: usize,
}

impl Bar {
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
