// SPDX-License-Identifier: GPL-2.0-only

//! Intel VT-d live update: the handover blob
//! (`include/linux/kho/abi/iommu_vtd.h`), encoded and checked by the
//! `no_std` crate that the host property tests build
//! (`drivers/iommu/liveupdate/format`, `src/shared/vtd.rs`).
//! `liveupdate.c` calls these through `lu_vtd_rs.h`; nothing here
//! allocates (the caller passes the scratch) or panics on any input.

use kernel::error::code;
use kernel::ffi::{c_char, c_int};

// Only the VT-d half of the crate (iommufd's `lu_rs.rs` builds the rest).
#[path = "../liveupdate/format/src/shared/vtd.rs"]
#[allow(dead_code)]
pub mod vtd;

use vtd::{Device, Domain, Unit, VtdRefusal};

extern "C" {
    fn vtd_lu_crc32c(seed: u32, data: *const u8, len: usize) -> u32;
}

/// The kernel's chaining `crc32c(seed, p, len)`.
fn crc(seed: u32, data: &[u8]) -> u32 {
    // SAFETY: `data` is a valid slice for the duration of the call, and
    // the C function only reads `len` bytes from it.
    unsafe { vtd_lu_crc32c(seed, data.as_ptr(), data.len()) }
}

// The records cross to C as the crate's `repr(C)` types: `Unit` is
// `struct vtd_lu_unit_rec`, `Domain` is `struct vtd_lu_domain_rec`,
// `Device` is `struct vtd_lu_device_rec` (`lu_vtd_rs.h`). The crate
// asserts every field offset; the sizes are checked here too.
const _: () = assert!(core::mem::size_of::<Unit>() == 24);
const _: () = assert!(core::mem::size_of::<Domain>() == 32);
const _: () = assert!(core::mem::size_of::<Device>() == 8);
const _: () = assert!(vtd::REASON_LEN == 48); // VTD_LU_REASON_LEN

/// A C array as a slice; null or a zero count is empty.
///
/// # Safety
///
/// A non-null `p` with a non-zero `n` must point to `n` valid records
/// that outlive the slice and are not written while it lives.
unsafe fn slice<'a, T>(p: *const T, n: usize) -> &'a [T] {
    if p.is_null() || n == 0 {
        &[]
    } else {
        // SAFETY: non-null, and the caller guarantees the rest.
        unsafe { core::slice::from_raw_parts(p, n) }
    }
}

/// A writable C array as a slice; null or a zero count is empty.
///
/// # Safety
///
/// A non-null `p` with a non-zero `n` must be valid for reads and writes
/// of `n` records, outlive the slice, and not be accessed otherwise (no
/// other argument may overlap it) while it lives.
unsafe fn slice_mut<'a, T>(p: *mut T, n: usize) -> &'a mut [T] {
    if p.is_null() || n == 0 {
        &mut []
    } else {
        // SAFETY: non-null, and the caller guarantees the rest.
        unsafe { core::slice::from_raw_parts_mut(p, n) }
    }
}

/// Copies the reason text into a C buffer, truncated and NUL-terminated.
///
/// # Safety
///
/// `reason` must be null or valid for writes of `reason_len` bytes.
unsafe fn report(reason: *mut c_char, reason_len: usize, r: VtdRefusal) {
    // SAFETY: forwarded from the caller.
    let buf = unsafe { slice_mut(reason.cast::<u8>(), reason_len) };
    let text = r.as_str().as_bytes();
    let n = text.len().min(buf.len().saturating_sub(1));
    if let (Some(to), Some(from)) = (buf.get_mut(..n), text.get(..n)) {
        to.copy_from_slice(from);
    }
    if let Some(nul) = buf.get_mut(n) {
        *nul = 0;
    }
}

/// Encodes the handover into `out` (`out_len` bytes, at least
/// `vtd::blob_len()` of the counts) and checks it as the next
/// kernel will (`vtd_lu_parse_rs()`): what it would refuse is not
/// written (`out` is zeroed) and the reason is copied to `reason`.
/// `scratch` needs `nr_units + nr_pages` entries.
///
/// Returns the blob's length, or -E2BIG (over the limits), -ENOSPC
/// (`out` too short) or -EINVAL (records the next kernel would refuse,
/// or `scratch` too short).
///
/// # Safety
///
/// `out` must be valid for writes of `out_len` bytes and `scratch` for
/// reads and writes of `scratch_len` entries; `units`, `domains`,
/// `devices` and `pages` must point to `nr_units`, `nr_domains`,
/// `nr_devices` and `nr_pages` records (or be null with a zero count);
/// `reason` must be null or valid for writes of `reason_len` bytes. No two
/// of these buffers may overlap.
#[no_mangle]
pub unsafe extern "C" fn vtd_lu_encode_rs(
    out: *mut u8,
    out_len: usize,
    units: *const Unit,
    nr_units: u32,
    domains: *const Domain,
    nr_domains: u32,
    devices: *const Device,
    nr_devices: u32,
    pages: *const u64,
    nr_pages: u32,
    scratch: *mut u64,
    scratch_len: usize,
    reason: *mut c_char,
    reason_len: usize,
) -> isize {
    // SAFETY: the caller guarantees every buffer, its length, and that
    // they do not overlap.
    let (out, us, ds, vs, ps, sc) = unsafe {
        (
            slice_mut(out, out_len),
            slice(units, nr_units as usize),
            slice(domains, nr_domains as usize),
            slice(devices, nr_devices as usize),
            slice(pages, nr_pages as usize),
            slice_mut(scratch, scratch_len),
        )
    };
    let r = match vtd::encode(out, us, ds, vs, ps, &crc, sc) {
        Ok(n) => match isize::try_from(n) {
            Ok(n) => return n,
            Err(_) => VtdRefusal::TooManyRecords,
        },
        Err(r) => r,
    };
    // SAFETY: forwarded from the caller.
    unsafe { report(reason, reason_len, r) };
    let e = match r {
        VtdRefusal::TooManyRecords => code::E2BIG,
        VtdRefusal::OutputTooSmall => code::ENOSPC,
        _ => code::EINVAL,
    };
    e.to_errno() as isize
}

/// Checks a blob from the previous kernel (`len` bytes, a private copy)
/// with the checks of the C parser it replaces, in its order, with its
/// reason texts. `scratch` needs `nr_units + nr_pages` entries; `len / 8`
/// entries always suffice, whatever the header says.
///
/// Returns 0 if the blob is sound (then every count, offset and index in
/// it is in bounds, as `include/linux/kho/abi/iommu_vtd.h` lays it out),
/// or -EINVAL with the reason copied, NUL-terminated, to `reason`
/// (`VTD_LU_REASON_LEN` bytes hold any).
///
/// # Safety
///
/// `blob` must be valid for reads of `len` bytes and not written during
/// the call; `scratch` valid for reads and writes of `scratch_len`
/// entries; `reason` null or valid for writes of `reason_len` bytes. No
/// two of these buffers may overlap.
#[no_mangle]
pub unsafe extern "C" fn vtd_lu_parse_rs(
    blob: *const u8,
    len: usize,
    scratch: *mut u64,
    scratch_len: usize,
    reason: *mut c_char,
    reason_len: usize,
) -> c_int {
    // SAFETY: the caller guarantees both buffers and their lengths.
    let (blob, sc) = unsafe { (slice(blob, len), slice_mut(scratch, scratch_len)) };
    match vtd::parse(blob, &crc, sc) {
        Ok(_) => 0,
        Err(r) => {
            // SAFETY: forwarded from the caller.
            unsafe { report(reason, reason_len, r) };
            code::EINVAL.to_errno()
        }
    }
}
