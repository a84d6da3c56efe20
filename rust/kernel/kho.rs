// SPDX-License-Identifier: GPL-2.0

//! Kexec HandOver (KHO): memory and named data handed to the next kernel.
//!
//! C header: [`include/linux/kexec_handover.h`](srctree/include/linux/kexec_handover.h)
//!
//! A subsystem publishes a *subtree*: a named, physically contiguous blob
//! that KHO keeps intact over `kexec` and that the next kernel finds by
//! name with [`retrieve_subtree`]. The blob's format is the subsystem's
//! own ABI and must carry its own version.

use crate::{
    bindings,
    error::{from_err_ptr, to_result, Result},
    io::PhysAddr,
    str::{CStr, CStrExt},
};
use core::ptr::NonNull;

/// Returns true if KHO is enabled (`kho=on`).
pub fn is_enabled() -> bool {
    // SAFETY: reads a boot-time flag; callable at any time.
    unsafe { bindings::kho_is_enabled() }
}

/// Returns true if this kernel was booted by a KHO kexec, i.e. there may
/// be handed-over subtrees to retrieve.
pub fn is_kho_boot() -> bool {
    // SAFETY: reads boot state set up before any Rust code runs.
    unsafe { bindings::is_kho_boot() }
}

/// Finds the subtree `name` handed over by the previous kernel.
///
/// Returns its physical address and size. The memory stays reserved; the
/// caller validates its content before trusting it.
pub fn retrieve_subtree(name: &CStr) -> Result<(PhysAddr, usize)> {
    let mut phys: PhysAddr = 0;
    let mut size: usize = 0;
    // SAFETY: `name` is NUL-terminated; the out pointers are valid.
    to_result(unsafe { bindings::kho_retrieve_subtree(name.as_char_ptr(), &mut phys, &mut size) })?;
    Ok((phys, size))
}

/// A zeroed, physically contiguous buffer that KHO preserves across the
/// next kexec. Dropping it unpreserves and frees it.
pub struct PreservedBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value.
unsafe impl Send for PreservedBuffer {}
// SAFETY: shared references only read the memory.
unsafe impl Sync for PreservedBuffer {}

impl PreservedBuffer {
    /// Allocates `len` bytes (at most `MAX_PAGE_ORDER` pages) and marks
    /// them preserved.
    pub fn new(len: usize) -> Result<Self> {
        // SAFETY: no preconditions; returns an ERR_PTR on failure.
        let ptr = from_err_ptr(unsafe { bindings::kho_alloc_preserve(len) })?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(crate::error::code::ENOMEM)?;
        Ok(PreservedBuffer { ptr, len })
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` bytes owned by `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The buffer's bytes, writable. Writes are seen by the next kernel
    /// up to the moment of the kexec: KHO reads preserved memory in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` bytes owned exclusively by `self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PreservedBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `kho_alloc_preserve` and is freed once.
        unsafe { bindings::kho_unpreserve_free(self.ptr.as_ptr().cast()) };
    }
}

/// A subtree published for the next kernel; withdrawn when dropped.
pub struct Subtree {
    buf: PreservedBuffer,
}

impl Subtree {
    /// Publishes `buf` under `name`. The name must be unique among all
    /// KHO users (`EEXIST` otherwise).
    pub fn publish(name: &'static CStr, buf: PreservedBuffer) -> Result<Self> {
        // SAFETY: `name` is a static NUL-terminated string and `buf` is
        // preserved memory of `buf.len` bytes that lives as long as the
        // returned value, which removes the subtree before freeing it.
        to_result(unsafe {
            bindings::kho_add_subtree(name.as_char_ptr(), buf.ptr.as_ptr().cast(), buf.len)
        })?;
        Ok(Subtree { buf })
    }

    /// The published bytes, to update before a kexec.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.buf.as_mut_slice()
    }
}

impl Drop for Subtree {
    fn drop(&mut self) {
        // SAFETY: the blob was added by `publish` and is removed once,
        // before `self.buf` is dropped.
        unsafe { bindings::kho_remove_subtree(self.buf.ptr.as_ptr().cast()) };
    }
}
