// SPDX-License-Identifier: GPL-2.0-only

//! guestmemfs: a memory filesystem for guest RAM that survives kexec.
//!
//! The memory is a region reserved in `setup_arch()` (`region.c`), outside
//! the direct map and without struct pages. The filesystem type is
//! registered through the C glue in `vfs_glue.c` because Linux 7.3 has no
//! Rust abstraction for `struct file_system_type`. The on-memory format,
//! its allocator and validator are the `format` module, the same source
//! the host tests build (`format/`).

#[cfg(CONFIG_GUESTMEMFS_TEST)]
use core::sync::atomic::AtomicBool;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::{c_str, kho, prelude::*};

#[path = "format/src/shared/mod.rs"]
pub mod format;
mod volume;

use format::locator::{Locator, LOCATOR_FLAG_DMA_HELD, LOCATOR_FLAG_META_POISONED, LOCATOR_SIZE};

module! {
    type: GuestMemFs,
    name: "guestmemfs",
    authors: ["guestmemfs project"],
    description: "Persistent memory filesystem for guest RAM",
    license: "GPL",
}

/// `struct guestmemfs_region` from `include/linux/guestmemfs.h`.
#[repr(C)]
struct Region {
    base: u64,
    size: u64,
    generation: u64,
    handed_over: bool,
    metadata_poisoned: bool,
    dma_held: bool,
}

extern "C" {
    fn guestmemfs_vfs_register() -> kernel::ffi::c_int;
    fn guestmemfs_region_get() -> *const Region;
    fn guestmemfs_mf_register() -> kernel::ffi::c_int;
}

/// Validates the locator handed over by the previous kernel; called by
/// `region.c` from `setup_arch()`, before the region is reserved. A
/// refused locator yields nothing: no memory is taken on its word.
///
/// # Safety
///
/// `buf` must point to `len` readable bytes; `base`, `size`,
/// `generation` and `flags` must be valid for writes.
#[no_mangle]
pub unsafe extern "C" fn guestmemfs_locator_decode(
    buf: *const u8,
    len: usize,
    base: *mut u64,
    size: *mut u64,
    generation: *mut u64,
    flags: *mut u32,
) -> kernel::ffi::c_int {
    // SAFETY: the caller maps `len` bytes at `buf`.
    let bytes = unsafe { core::slice::from_raw_parts(buf, len) };
    match Locator::decode(bytes) {
        Ok(loc) => {
            // SAFETY: the caller passes valid out pointers.
            unsafe {
                *base = loc.base;
                *size = loc.size;
                *generation = loc.generation;
                *flags = loc.flags;
            }
            0
        }
        Err(e) => {
            pr_err!("handed-over locator refused: {}\n", format_args!("{e}"));
            EINVAL.to_errno()
        }
    }
}

/// The published locator's bytes (owned by `GuestMemFs::_locator`, which
/// lives as long as the kernel): rewritten at freeze time.
static PUBLISHED_LOCATOR: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());

/// Test kernels: the locator written at freeze names the next generation,
/// which the superblock does not hold.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
static SKEW_GENERATION: AtomicBool = AtomicBool::new(false);
/// Test kernels: the locator written at freeze fails its checksum.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
static DAMAGE_LOCATOR: AtomicBool = AtomicBool::new(false);

/// Rewrites the published locator with the metadata's generation at the
/// time of the kexec freeze (a mount with `-o reformat` changes it after
/// the locator was first published), and its flags.
///
/// # Safety
///
/// The caller holds the volume lock: it serialises the writers of the
/// locator.
pub(crate) unsafe fn republish_locator(
    base: u64,
    size: u64,
    generation: u64,
    meta_poisoned: bool,
    dma_held: bool,
) {
    let p = PUBLISHED_LOCATOR.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    #[cfg(CONFIG_GUESTMEMFS_TEST)]
    let skew = u64::from(SKEW_GENERATION.load(Ordering::Relaxed));
    #[cfg(not(CONFIG_GUESTMEMFS_TEST))]
    let skew = 0;
    let loc = Locator {
        base,
        size,
        generation: generation.wrapping_add(skew),
        flags: locator_flags(meta_poisoned, dma_held),
    };
    // SAFETY: `p` points to the LOCATOR_SIZE-byte preserved buffer, which
    // is never freed; the caller's volume lock serialises writers.
    let buf = unsafe { core::slice::from_raw_parts_mut(p, LOCATOR_SIZE) };
    if loc.encode(buf).is_err() {
        pr_err!("cannot rewrite the locator for the next kernel\n");
    }
    #[cfg(CONFIG_GUESTMEMFS_TEST)]
    if DAMAGE_LOCATOR.load(Ordering::Relaxed) {
        buf[32] ^= 0xff;
    }
}

/// Test kernels: sets `flag`, read when the locator is rewritten at the
/// kexec freeze.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
fn arm_locator_hook(flag: &AtomicBool) -> kernel::ffi::c_int {
    if PUBLISHED_LOCATOR.load(Ordering::Acquire).is_null() {
        return ENOENT.to_errno();
    }
    flag.store(true, Ordering::Relaxed);
    0
}

/// Test kernels: the locator written at freeze has a damaged generation
/// byte, so only its checksum is wrong; the next kernel must take no
/// memory.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
#[no_mangle]
pub extern "C" fn gmfs_rs_test_corrupt_locator() -> kernel::ffi::c_int {
    arm_locator_hook(&DAMAGE_LOCATOR)
}

/// Test kernels: the locator the next kernel gets has a valid checksum
/// but names a generation the superblock does not hold.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
#[no_mangle]
pub extern "C" fn gmfs_rs_test_skew_generation() -> kernel::ffi::c_int {
    arm_locator_hook(&SKEW_GENERATION)
}

struct GuestMemFs {
    _volume: Pin<KBox<volume::Volume>>,
    /// The locator published for the next kernel.
    _locator: Option<kho::Subtree>,
}

fn locator_flags(meta_poisoned: bool, dma_held: bool) -> u32 {
    let mut flags = 0;
    if meta_poisoned {
        flags |= LOCATOR_FLAG_META_POISONED;
    }
    if dma_held {
        flags |= LOCATOR_FLAG_DMA_HELD;
    }
    flags
}

/// Publishes where the region is, for the next kernel's `setup_arch()`.
fn publish_locator(vol: &volume::Volume) -> Result<kho::Subtree> {
    let mut buf = kho::PreservedBuffer::new(LOCATOR_SIZE)?;
    let (base, size, generation, meta_poisoned, dma_held) = vol.locator_fields();
    let loc = Locator {
        base,
        size,
        generation,
        flags: locator_flags(meta_poisoned, dma_held),
    };
    loc.encode(buf.as_mut_slice()).map_err(|_| EINVAL)?;
    kho::Subtree::publish(c_str!("guestmemfs"), buf)
}

impl kernel::Module for GuestMemFs {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: `guestmemfs_vfs_register` registers a static
        // `file_system_type` and is called once, from this initcall.
        kernel::error::to_result(unsafe { guestmemfs_vfs_register() })?;
        pr_info!("filesystem type registered\n");
        // SAFETY: returns NULL or a pointer to a `__ro_after_init` struct
        // that lives for the kernel's lifetime.
        let region = unsafe { guestmemfs_region_get().as_ref() };
        let vol = volume::Volume::install(region.map(|r| volume::RegionInfo {
            base: r.base,
            size: r.size,
            generation: r.handed_over.then_some(r.generation),
            meta_poisoned: r.metadata_poisoned,
            dma_held: r.dma_held,
        }))?;
        // Memory errors are handled only once the volume can pin blocks;
        // failing to register costs that, not the filesystem (mf.c logs).
        // SAFETY: called once, after the volume is installed.
        let _ = unsafe { guestmemfs_mf_register() };
        let locator = match region {
            Some(_) if kho::is_enabled() => match publish_locator(&vol) {
                Ok(mut s) => {
                    PUBLISHED_LOCATOR.store(s.as_mut_slice().as_mut_ptr(), Ordering::Release);
                    Some(s)
                }
                Err(e) => {
                    pr_err!("cannot publish the region for the next kernel: {:?}\n", e);
                    None
                }
            },
            Some(_) => {
                pr_warn!("KHO is off (kho=on): the region will not survive kexec\n");
                None
            }
            None => None,
        };
        Ok(GuestMemFs {
            _volume: vol,
            _locator: locator,
        })
    }
}
