// SPDX-License-Identifier: GPL-2.0-only

//! iommufd live update: the handover blob and the restore check, from the
//! `no_std` crate that the host property tests build
//! (`drivers/iommu/liveupdate/format`). `liveupdate.c` calls these through
//! `lu_rs.h`; nothing here allocates or panics on any input.

use core::fmt::Write;
use kernel::error::code;
use kernel::ffi::{c_char, c_int};

#[path = "../liveupdate/format/src/shared/mod.rs"]
#[allow(dead_code)]
pub mod format;

use format::{Area, Blob, Hwpt, Piece, Refusal};

extern "C" {
    fn iommufd_lu_crc32c(data: *const u8, len: usize) -> u32;
}

fn crc(data: &[u8]) -> u32 {
    // SAFETY: `data` is a valid slice for the duration of the call, and
    // the C function only reads `len` bytes from it.
    unsafe { iommufd_lu_crc32c(data.as_ptr(), data.len()) }
}

// The records cross to C as the crate's `repr(C)` types:
// `Hwpt` is `struct iommufd_lu_hwpt_rec`, `Area` is `struct
// iommufd_lu_area_rec` (its `pad` is the tail padding), `Piece` is
// `struct iommufd_lu_piece` (`lu_rs.h`); the sizes are checked below.
const _: () = assert!(core::mem::size_of::<Hwpt>() == 24);
const _: () = assert!(core::mem::size_of::<Area>() == 48);
const _: () = assert!(core::mem::size_of::<Piece>() == 32);

/// A C array as a slice; null (with any length) is empty.
///
/// # Safety
///
/// A non-null `p` must point to `n` valid records that outlive the slice.
unsafe fn slice<'a, T>(p: *const T, n: usize) -> &'a [T] {
    if p.is_null() {
        &[]
    } else {
        // SAFETY: non-null, and the caller guarantees the rest.
        unsafe { core::slice::from_raw_parts(p, n) }
    }
}

/// Writes a NUL-terminated reason into a C buffer, truncating.
struct Reason<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Write for Reason<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.at + 1 >= self.buf.len() {
                break;
            }
            self.buf[self.at] = b;
            self.at += 1;
        }
        Ok(())
    }
}

/// # Safety
///
/// `why` must be valid for writes of `why_len` bytes (or `why_len` 0).
unsafe fn report(why: *mut c_char, why_len: usize, r: Refusal) -> c_int {
    if !why.is_null() && why_len > 0 {
        // SAFETY: the caller guarantees `why` is valid for `why_len` bytes.
        let buf = unsafe { core::slice::from_raw_parts_mut(why.cast::<u8>(), why_len) };
        let mut w = Reason { buf, at: 0 };
        let _ = write!(w, "{r}");
        let at = w.at;
        w.buf[at] = 0;
    }
    match r {
        Refusal::BadVersion(_) => code::EPROTO.to_errno(),
        Refusal::Mismatch { .. } | Refusal::ExtraMapping { .. } | Refusal::Unmapped { .. } => {
            code::EUCLEAN.to_errno()
        }
        _ => code::EINVAL.to_errno(),
    }
}

/// Encodes the records into `out` (`len` bytes, exactly the blob's size).
///
/// # Safety
///
/// `out` must be valid for writes of `len` bytes; `hwpts` and `areas` must
/// point to `nr_hwpts` and `nr_areas` records (or be dangling with a zero
/// count).
#[no_mangle]
pub unsafe extern "C" fn iommufd_lu_rs_encode(
    out: *mut u8,
    len: usize,
    hwpts: *const Hwpt,
    nr_hwpts: u32,
    areas: *const Area,
    nr_areas: u32,
) -> c_int {
    let (nh, na) = (nr_hwpts as usize, nr_areas as usize);
    if format::blob_len(nh, na) != Some(len) {
        return code::EINVAL.to_errno();
    }
    if out.is_null() {
        return code::EINVAL.to_errno();
    }
    // SAFETY: the caller guarantees the three buffers and their lengths.
    let (out, hs, as_) = unsafe {
        (
            core::slice::from_raw_parts_mut(out, len),
            slice(hwpts, nh),
            slice(areas, na),
        )
    };
    match format::encode(out, hs, as_, crc) {
        Ok(_) => 0,
        Err(_) => code::EINVAL.to_errno(),
    }
}

/// Checks a blob from the previous kernel and, if `hwpts`/`areas` are not
/// null, copies its records out. `*nr_hwpts` and `*nr_areas` are set to
/// the counts; arrays given must have room for them (call once with nulls
/// to size them). On refusal the reason is written to `why`.
///
/// # Safety
///
/// `buf` must be valid for reads of `len` bytes; `nr_hwpts`, `nr_areas`
/// valid for writes; non-null `hwpts`/`areas` valid for `*nr_hwpts` and
/// `*nr_areas` records as a previous call reported them; `why` valid for
/// `why_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn iommufd_lu_rs_decode(
    buf: *const u8,
    len: usize,
    nr_hwpts: *mut u32,
    nr_areas: *mut u32,
    hwpts: *mut Hwpt,
    areas: *mut Area,
    why: *mut c_char,
    why_len: usize,
) -> c_int {
    // SAFETY: the caller guarantees `buf` is readable for `len` bytes.
    let buf = unsafe { core::slice::from_raw_parts(buf, len) };
    let blob = match Blob::parse(buf, crc) {
        Ok(b) => b,
        // SAFETY: forwarded from the caller.
        Err(r) => return unsafe { report(why, why_len, r) },
    };
    let nh = blob.nr_hwpts();
    let mut na = 0u32;
    for n in 0..nh {
        match blob.hwpt(n) {
            Ok(h) => na = na.saturating_add(h.nr_areas),
            // SAFETY: forwarded from the caller.
            Err(r) => return unsafe { report(why, why_len, r) },
        }
    }
    // SAFETY: the caller guarantees both are valid for writes.
    unsafe {
        *nr_hwpts = nh;
        *nr_areas = na;
    }
    if hwpts.is_null() || areas.is_null() {
        return 0;
    }
    for n in 0..nh {
        let h = match blob.hwpt(n) {
            Ok(h) => h,
            // SAFETY: forwarded from the caller.
            Err(r) => return unsafe { report(why, why_len, r) },
        };
        // SAFETY: `n < nh`, and the caller sized `hwpts` for `nh` records.
        unsafe { *hwpts.add(n as usize) = h };
    }
    for i in 0..na {
        let a = match blob.area(i) {
            Ok(a) => a,
            // SAFETY: forwarded from the caller.
            Err(r) => return unsafe { report(why, why_len, r) },
        };
        // SAFETY: `i < na`, and the caller sized `areas` for `na` records.
        unsafe { *areas.add(i as usize) = a };
    }
    0
}

/// The restore check of a HWPT record with `flags`
/// (`format::check_hwpt_translation`): `leaves` (a walk of the adopted
/// table, sorted by IOVA) translate exactly `expected` (every area's
/// guestmemfs runs, sorted by IOVA) and nothing else, and snoop if the
/// HWPT enforces cache coherency.
///
/// # Safety
///
/// `expected` and `leaves` must point to `nr_expected` and `nr_leaves`
/// pieces (or be dangling with a zero count); `why` valid for `why_len`.
#[no_mangle]
pub unsafe extern "C" fn iommufd_lu_rs_check(
    expected: *const Piece,
    nr_expected: usize,
    leaves: *const Piece,
    nr_leaves: usize,
    flags: u32,
    why: *mut c_char,
    why_len: usize,
) -> c_int {
    // SAFETY: the caller guarantees both arrays and their lengths; an
    // empty array may come as a null pointer.
    let (e, l) = unsafe { (slice(expected, nr_expected), slice(leaves, nr_leaves)) };
    match format::check_hwpt_translation(e.iter().copied(), l.iter().copied(), flags) {
        Ok(()) => 0,
        // SAFETY: forwarded from the caller.
        Err(r) => unsafe { report(why, why_len, r) },
    }
}
