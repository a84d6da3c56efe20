// SPDX-License-Identifier: GPL-2.0-only
//! Intel VT-d live update handover: the blob that the VT-d driver hands
//! to the next kernel (FLB `"iommu-vtd-lu-v1"`), whose wire layout is
//! `include/linux/kho/abi/iommu_vtd.h`: encode, decode, validate.
//!
//! Like the iommufd blob at the crate root: plain `core` Rust over
//! byte slices, no allocation, no `unsafe`, no panics on any input. The
//! checksum is the caller's, as a chaining function `crc(seed, data)`
//! like the kernel's `crc32c(crc, p, len)`. The one check that needs
//! memory (no page handed over twice) sorts a caller's scratch buffer of
//! [`scratch_len`] entries. The checks are those of the C parser this
//! replaces (`intel_lu_parse()`), in its order, with its reason texts.
//!
//! # Blob, version 1 (all integers little endian)
//!
//! ```text
//! header (40 B):  magic "VTDLU001" u64, version u32 = 1, length u32
//!                 (whole blob), nr_units u32, nr_domains u32,
//!                 nr_devices u32, nr_pages u32, flags u32 = 0,
//!                 crc u32 at byte 36: crc32c(0, blob with crc = 0)
//! unit (24 B):    reg_phys u64 (DRHD register base), root_phys u64
//!                 (4 KiB aligned), first_page u32, nr_pages u32
//!                 (its context tables in pages[])
//! domain (32 B):  token u64 (non-zero, unique), top_phys u64 (in its
//!                 slice), first_page u32, nr_pages u32 (>= 1; every
//!                 page-table page, top included), unit u16 (index, or
//!                 NO_UNIT: no device frozen), did u16, aw u8, flags u8
//!                 (DOMAIN_INCOHERENT), reserved [u8; 2] = 0
//! device (8 B):   segment u16, bus u8, devfn u8, domain u16 (index of
//!                 a domain that has a unit), reserved u16 = 0
//! pages (8 B each): physical addresses, non-zero, 4 KiB aligned
//! ```
//!
//! The tables follow each other in that order with no padding: units,
//! domains, devices, pages. The page slices of the units, then of the
//! domains, tile `pages[]` in order; each slice is strictly ascending;
//! no address appears twice among the pages and the units' root tables.
//! Limits: [`MAX_UNITS`], [`MAX_DOMAINS`], [`MAX_DEVICES`], [`MAX_PAGES`].

/// `b"VTDLU001"` as a little-endian u64 (`VTD_LU_MAGIC`).
pub const MAGIC: u64 = 0x3130_3055_4c44_5456;
const _: () = assert!(MAGIC == u64::from_le_bytes(*b"VTDLU001"));
/// Version written and accepted (`VTD_LU_VERSION`).
pub const VERSION: u32 = 1;
/// Most units (`VTD_LU_MAX_UNITS`).
pub const MAX_UNITS: u32 = 64;
/// Most domains (`VTD_LU_MAX_DOMAINS`).
pub const MAX_DOMAINS: u32 = 4096;
/// Most devices (`VTD_LU_MAX_DEVICES`).
pub const MAX_DEVICES: u32 = 4096;
/// Most entries of `pages[]` (`VTD_LU_MAX_PAGES`).
pub const MAX_PAGES: u32 = 1 << 22;
/// Domain flag: the unit does not snoop the page tables
/// (`VTD_LU_DOMAIN_INCOHERENT`).
pub const DOMAIN_INCOHERENT: u8 = 1;
/// Domain `unit` of a domain without a frozen device (`U16_MAX`).
pub const NO_UNIT: u16 = u16::MAX;
/// Bytes of the header (`struct vtd_lu_header`).
pub const HEADER: usize = 40;
/// Bytes of a unit record (`struct vtd_lu_unit`).
pub const UNIT: usize = 24;
/// Bytes of a domain record (`struct vtd_lu_domain`).
pub const DOMAIN: usize = 32;
/// Bytes of a device record (`struct vtd_lu_device`).
pub const DEVICE: usize = 8;
/// Bytes of a `pages[]` entry.
pub const PAGE: usize = 8;
/// Byte offset of the header's `crc`.
pub const CRC_OFFSET: usize = 36;
/// Bits of a page address below the 4 KiB page (`~VTD_PAGE_MASK`).
const PAGE_OFFSET_MASK: u64 = 0xfff;
/// Bytes that hold any [`VtdRefusal`] text with a terminating NUL
/// (`VTD_LU_REASON_LEN` in C).
pub const REASON_LEN: usize = 48;

/// Why a handover is refused (or, from [`encode`], not written). The
/// text ([`VtdRefusal::as_str`], also `Display`) is the C parser's,
/// logged as `handover refused: <text>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdRefusal {
    /// Shorter than the header.
    Truncated,
    /// Not a blob of this format.
    BadMagic,
    /// A version this kernel does not know.
    BadVersion,
    /// The length field is not the blob's length.
    LengthMismatch,
    /// Header flags set.
    UnknownFlags,
    /// More records or pages than the limits.
    TooManyRecords,
    /// The counts and the length disagree.
    CountsMismatch,
    /// Checksum mismatch.
    BadChecksum,
    /// The units' then the domains' page slices do not tile `pages[]`.
    SlicesDoNotTile,
    /// A page slice reaches past `pages[]`.
    SliceOutOfRange,
    /// A page is zero or not 4 KiB aligned.
    UnalignedPage,
    /// A page slice is not strictly ascending.
    PagesNotSorted,
    /// A unit's root table is not 4 KiB aligned.
    UnalignedRoot,
    /// A domain without pages, with a zero token, or with unknown flags
    /// or reserved bytes set.
    BadDomain,
    /// A domain names a unit that is not in the blob.
    DomainNoUnit,
    /// A domain's top table is not in its page slice.
    TopNotListed,
    /// A device names no domain, or has reserved bytes set.
    BadDevice,
    /// A device's domain has no unit.
    DeviceDomainNoUnit,
    /// Two domains have the same token.
    DuplicateToken,
    /// A page (or root table) is listed twice.
    PageTwice,
    /// The caller's scratch buffer is shorter than [`scratch_len`] (a bug
    /// of the caller, not of the blob).
    ScratchTooSmall,
    /// [`encode`]: the output buffer is shorter than [`blob_len`].
    OutputTooSmall,
}

impl VtdRefusal {
    /// The reason text (the C parser's).
    pub fn as_str(self) -> &'static str {
        match self {
            VtdRefusal::Truncated => "truncated",
            VtdRefusal::BadMagic => "bad magic",
            VtdRefusal::BadVersion => "unsupported version",
            VtdRefusal::LengthMismatch => "length mismatch",
            VtdRefusal::UnknownFlags => "unknown flags",
            VtdRefusal::TooManyRecords => "too many records",
            VtdRefusal::CountsMismatch => "counts do not match the length",
            VtdRefusal::BadChecksum => "checksum mismatch",
            VtdRefusal::SlicesDoNotTile => "page slices do not tile the list",
            VtdRefusal::SliceOutOfRange => "page slice out of range",
            VtdRefusal::UnalignedPage => "unaligned page",
            VtdRefusal::PagesNotSorted => "pages not sorted",
            VtdRefusal::UnalignedRoot => "unaligned root",
            VtdRefusal::BadDomain => "bad domain record",
            VtdRefusal::DomainNoUnit => "domain names no unit",
            VtdRefusal::TopNotListed => "top table not in the page list",
            VtdRefusal::BadDevice => "bad device record",
            VtdRefusal::DeviceDomainNoUnit => "device's domain has no unit",
            VtdRefusal::DuplicateToken => "two domains with one token",
            VtdRefusal::PageTwice => "a page is handed over twice",
            VtdRefusal::ScratchTooSmall => "scratch too small",
            VtdRefusal::OutputTooSmall => "output buffer too small",
        }
    }
}

impl core::fmt::Display for VtdRefusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit record. `repr(C)` with the wire field order: on little endian
/// its layout is `struct vtd_lu_unit`'s (C: `struct vtd_lu_unit_rec`,
/// `lu_vtd_rs.h`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unit {
    /// Register base (DRHD), which names the unit in both kernels.
    pub reg_phys: u64,
    /// Root table, as `DMAR_RTADDR_REG` holds it (legacy mode).
    pub root_phys: u64,
    /// Its context tables in `pages[]`: first index.
    pub first_page: u32,
    /// How many.
    pub nr_pages: u32,
}

/// A domain record (`struct vtd_lu_domain`; C: `struct vtd_lu_domain_rec`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Domain {
    /// The HWPT token (`IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE`).
    pub token: u64,
    /// Top page table, as context entries point to it.
    pub top_phys: u64,
    /// Its page-table pages (top included) in `pages[]`: first index.
    pub first_page: u32,
    /// How many.
    pub nr_pages: u32,
    /// The unit whose domain ID it uses, or [`NO_UNIT`].
    pub unit: u16,
    /// That domain ID.
    pub did: u16,
    /// Address width field of its context entries.
    pub aw: u8,
    /// [`DOMAIN_INCOHERENT`] or 0.
    pub flags: u8,
    /// 0.
    pub reserved: [u8; 2],
}

/// A device record (`struct vtd_lu_device`; C: `struct vtd_lu_device_rec`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Device {
    /// PCI segment.
    pub segment: u16,
    /// PCI bus.
    pub bus: u8,
    /// PCI device and function.
    pub devfn: u8,
    /// Index of its domain record.
    pub domain: u16,
    /// 0.
    pub reserved: u16,
}

// The records' repr(C) layout is the wire layout (on little endian).
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<Unit>() == UNIT && align_of::<Unit>() == 8);
    assert!(offset_of!(Unit, root_phys) == 8);
    assert!(offset_of!(Unit, first_page) == 16);
    assert!(offset_of!(Unit, nr_pages) == 20);
    assert!(size_of::<Domain>() == DOMAIN && align_of::<Domain>() == 8);
    assert!(offset_of!(Domain, top_phys) == 8);
    assert!(offset_of!(Domain, first_page) == 16);
    assert!(offset_of!(Domain, nr_pages) == 20);
    assert!(offset_of!(Domain, unit) == 24);
    assert!(offset_of!(Domain, did) == 26);
    assert!(offset_of!(Domain, aw) == 28);
    assert!(offset_of!(Domain, flags) == 29);
    assert!(offset_of!(Domain, reserved) == 30);
    assert!(size_of::<Device>() == DEVICE && align_of::<Device>() == 2);
    assert!(offset_of!(Device, bus) == 2);
    assert!(offset_of!(Device, devfn) == 3);
    assert!(offset_of!(Device, domain) == 4);
    assert!(offset_of!(Device, reserved) == 6);
    assert!(HEADER == 8 + 8 * 4 && CRC_OFFSET == HEADER - 4);
};

/// Bytes of a blob with these counts; `None` over the limits.
pub fn blob_len(
    nr_units: usize,
    nr_domains: usize,
    nr_devices: usize,
    nr_pages: usize,
) -> Option<usize> {
    if nr_units > MAX_UNITS as usize
        || nr_domains > MAX_DOMAINS as usize
        || nr_devices > MAX_DEVICES as usize
        || nr_pages > MAX_PAGES as usize
    {
        return None;
    }
    UNIT.checked_mul(nr_units)?
        .checked_add(DOMAIN.checked_mul(nr_domains)?)?
        .checked_add(DEVICE.checked_mul(nr_devices)?)?
        .checked_add(PAGE.checked_mul(nr_pages)?)?
        .checked_add(HEADER)
}

/// Entries of scratch that [`parse`] and [`encode`] need for a blob of
/// `nr_units` units and `nr_pages` pages. For a blob of `len` bytes,
/// `len / 8` entries always suffice (every unit and page takes at least
/// 8 bytes of it), without trusting its header.
pub fn scratch_len(nr_units: usize, nr_pages: usize) -> usize {
    nr_units.saturating_add(nr_pages)
}

fn get<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    get::<2>(b, off).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    get::<4>(b, off).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    get::<8>(b, off).map(u64::from_le_bytes)
}

fn put(b: &mut [u8], off: usize, v: &[u8]) -> Result<(), VtdRefusal> {
    b.get_mut(off..off.checked_add(v.len()).ok_or(VtdRefusal::OutputTooSmall)?)
        .ok_or(VtdRefusal::OutputTooSmall)?
        .copy_from_slice(v);
    Ok(())
}

fn unit_at(b: &[u8], o: usize) -> Option<Unit> {
    Some(Unit {
        reg_phys: u64_at(b, o)?,
        root_phys: u64_at(b, o + 8)?,
        first_page: u32_at(b, o + 16)?,
        nr_pages: u32_at(b, o + 20)?,
    })
}

fn domain_at(b: &[u8], o: usize) -> Option<Domain> {
    let [aw, flags, r0, r1] = get::<4>(b, o + 28)?;
    Some(Domain {
        token: u64_at(b, o)?,
        top_phys: u64_at(b, o + 8)?,
        first_page: u32_at(b, o + 16)?,
        nr_pages: u32_at(b, o + 20)?,
        unit: u16_at(b, o + 24)?,
        did: u16_at(b, o + 26)?,
        aw,
        flags,
        reserved: [r0, r1],
    })
}

fn device_at(b: &[u8], o: usize) -> Option<Device> {
    let [bus, devfn] = get::<2>(b, o + 2)?;
    Some(Device {
        segment: u16_at(b, o)?,
        bus,
        devfn,
        domain: u16_at(b, o + 4)?,
        reserved: u16_at(b, o + 6)?,
    })
}

/// Encodes the records into `out` and returns the bytes written
/// ([`blob_len`] of the counts). `crc` is a chaining crc32c
/// (`crc(seed, data)`, as the kernel's `crc32c(seed, p, len)`); the blob's
/// is `crc(0, blob with its crc field 0)`. `scratch` needs
/// [`scratch_len`] entries.
///
/// The blob written is checked with [`parse`] before it is returned: what
/// the next kernel would refuse (unsorted or shared pages, a zero or
/// repeated token, a device without a unit, ...) is refused here with the
/// same reason, and `out` is then zeroed. The encoder's own refusals
/// (over the limits, `out` or `scratch` too short) leave `out` untouched.
/// Nothing is allocated.
pub fn encode(
    out: &mut [u8],
    units: &[Unit],
    domains: &[Domain],
    devices: &[Device],
    pages: &[u64],
    crc: &dyn Fn(u32, &[u8]) -> u32,
    scratch: &mut [u64],
) -> Result<usize, VtdRefusal> {
    let (nu, nd, nv, np) = (units.len(), domains.len(), devices.len(), pages.len());
    let len = blob_len(nu, nd, nv, np).ok_or(VtdRefusal::TooManyRecords)?;
    let count = |n: usize| u32::try_from(n).map_err(|_| VtdRefusal::TooManyRecords);
    let out = out.get_mut(..len).ok_or(VtdRefusal::OutputTooSmall)?;
    if scratch.len() < scratch_len(nu, np) {
        return Err(VtdRefusal::ScratchTooSmall);
    }
    out.fill(0);
    put(out, 0, &MAGIC.to_le_bytes())?;
    put(out, 8, &VERSION.to_le_bytes())?;
    put(out, 12, &count(len)?.to_le_bytes())?;
    put(out, 16, &count(nu)?.to_le_bytes())?;
    put(out, 20, &count(nd)?.to_le_bytes())?;
    put(out, 24, &count(nv)?.to_le_bytes())?;
    put(out, 28, &count(np)?.to_le_bytes())?;
    // flags (32) and crc (36) stay 0
    let mut o = HEADER;
    for u in units {
        put(out, o, &u.reg_phys.to_le_bytes())?;
        put(out, o + 8, &u.root_phys.to_le_bytes())?;
        put(out, o + 16, &u.first_page.to_le_bytes())?;
        put(out, o + 20, &u.nr_pages.to_le_bytes())?;
        o += UNIT;
    }
    for d in domains {
        put(out, o, &d.token.to_le_bytes())?;
        put(out, o + 8, &d.top_phys.to_le_bytes())?;
        put(out, o + 16, &d.first_page.to_le_bytes())?;
        put(out, o + 20, &d.nr_pages.to_le_bytes())?;
        put(out, o + 24, &d.unit.to_le_bytes())?;
        put(out, o + 26, &d.did.to_le_bytes())?;
        put(out, o + 28, &[d.aw, d.flags, d.reserved[0], d.reserved[1]])?;
        o += DOMAIN;
    }
    for v in devices {
        put(out, o, &v.segment.to_le_bytes())?;
        put(out, o + 2, &[v.bus, v.devfn])?;
        put(out, o + 4, &v.domain.to_le_bytes())?;
        put(out, o + 6, &v.reserved.to_le_bytes())?;
        o += DEVICE;
    }
    for p in pages {
        put(out, o, &p.to_le_bytes())?;
        o += PAGE;
    }
    let sum = crc(0, out);
    put(out, CRC_OFFSET, &sum.to_le_bytes())?;
    // Never hand over what the next kernel refuses.
    if let Err(e) = parse(out, crc, scratch).map(|_| ()) {
        out.fill(0);
        return Err(e);
    }
    Ok(len)
}

/// Where the tables of a validated blob are. `repr(C)`, so that it can
/// cross to C as it is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layout {
    /// Unit records.
    pub nr_units: u32,
    /// Domain records.
    pub nr_domains: u32,
    /// Device records.
    pub nr_devices: u32,
    /// Entries of `pages[]`.
    pub nr_pages: u32,
    /// Byte offset of the unit table ([`HEADER`]).
    pub units: u32,
    /// Byte offset of the domain table.
    pub domains: u32,
    /// Byte offset of the device table.
    pub devices: u32,
    /// Byte offset of `pages[]`.
    pub pages: u32,
}

/// A validated blob: every rule of the module documentation holds. The
/// accessors decode from the blob; they return `None` past a table's end
/// and never panic.
#[derive(Debug, Clone, Copy)]
pub struct Parsed<'a> {
    blob: &'a [u8],
    layout: Layout,
}

/// The header fields that size the tables.
struct Counts {
    nu: u32,
    nd: u32,
    nv: u32,
    np: u32,
}

fn header(blob: &[u8]) -> Result<Counts, VtdRefusal> {
    let field = |off| u32_at(blob, off).ok_or(VtdRefusal::Truncated);
    if blob.len() < HEADER {
        return Err(VtdRefusal::Truncated);
    }
    if u64_at(blob, 0) != Some(MAGIC) {
        return Err(VtdRefusal::BadMagic);
    }
    if field(8)? != VERSION {
        return Err(VtdRefusal::BadVersion);
    }
    if field(12)? as usize != blob.len() {
        return Err(VtdRefusal::LengthMismatch);
    }
    if field(32)? != 0 {
        return Err(VtdRefusal::UnknownFlags);
    }
    let c = Counts {
        nu: field(16)?,
        nd: field(20)?,
        nv: field(24)?,
        np: field(28)?,
    };
    if c.nu > MAX_UNITS || c.nd > MAX_DOMAINS || c.nv > MAX_DEVICES || c.np > MAX_PAGES {
        return Err(VtdRefusal::TooManyRecords);
    }
    let want = blob_len(c.nu as usize, c.nd as usize, c.nv as usize, c.np as usize)
        .ok_or(VtdRefusal::TooManyRecords)?;
    if want != blob.len() {
        return Err(VtdRefusal::CountsMismatch);
    }
    Ok(c)
}

/// Checks a blob handed over by the previous kernel, with the checks of
/// the C parser it replaces, in its order:
///
/// 1. header: length, magic, version, length field, flags, the limits,
///    counts against the length, checksum (`crc` as for [`encode`]: over
///    the blob with the crc field taken as 0);
/// 2. the units' then the domains' page slices tile `pages[]` in order;
/// 3. each unit: its slice is in range, its pages non-zero, aligned and
///    strictly ascending; its root aligned (0 passes, as in C);
/// 4. each domain: its slice as for units; at least one page, a non-zero
///    token, only known flags, reserved 0; its unit in the blob or
///    [`NO_UNIT`]; its top in its slice;
/// 5. each device: its domain in the blob, reserved 0; that domain has a
///    unit;
/// 6. no two domains share a token;
/// 7. no address is listed twice among the pages and the root tables.
///
/// `scratch` needs [`scratch_len`] entries (checks 6 and 7 sort copies
/// in it); if it is shorter, blobs that pass checks 1 to 5 are refused
/// with [`VtdRefusal::ScratchTooSmall`]. Nothing is allocated; the cost
/// is O(n log n) in the pages.
pub fn parse<'a>(
    blob: &'a [u8],
    crc: &dyn Fn(u32, &[u8]) -> u32,
    scratch: &mut [u64],
) -> Result<Parsed<'a>, VtdRefusal> {
    let c = header(blob)?;
    let stored = u32_at(blob, CRC_OFFSET).ok_or(VtdRefusal::Truncated)?;
    let head = blob.get(..CRC_OFFSET).ok_or(VtdRefusal::Truncated)?;
    let tail = blob.get(HEADER..).ok_or(VtdRefusal::Truncated)?;
    if crc(crc(crc(0, head), &[0; 4]), tail) != stored {
        return Err(VtdRefusal::BadChecksum);
    }
    // Offsets fit u32: the length field holds the blob's length.
    let units = HEADER as u32;
    let domains = units + c.nu * UNIT as u32;
    let devices = domains + c.nd * DOMAIN as u32;
    let pages = devices + c.nv * DEVICE as u32;
    let p = Parsed {
        blob,
        layout: Layout {
            nr_units: c.nu,
            nr_domains: c.nd,
            nr_devices: c.nv,
            nr_pages: c.np,
            units,
            domains,
            devices,
            pages,
        },
    };
    p.check_tiling()?;
    for i in 0..c.nu {
        let u = p.unit(i).ok_or(VtdRefusal::Truncated)?;
        p.check_slice(u.first_page, u.nr_pages)?;
        if u.root_phys & PAGE_OFFSET_MASK != 0 {
            return Err(VtdRefusal::UnalignedRoot);
        }
    }
    for i in 0..c.nd {
        let d = p.domain(i).ok_or(VtdRefusal::Truncated)?;
        p.check_slice(d.first_page, d.nr_pages)?;
        if d.nr_pages == 0
            || d.token == 0
            || d.reserved != [0, 0]
            || d.flags & !DOMAIN_INCOHERENT != 0
        {
            return Err(VtdRefusal::BadDomain);
        }
        if d.unit != NO_UNIT && u32::from(d.unit) >= c.nu {
            return Err(VtdRefusal::DomainNoUnit);
        }
        if p.find_in_slice(d.first_page, d.nr_pages, d.top_phys)
            .is_none()
        {
            return Err(VtdRefusal::TopNotListed);
        }
    }
    for i in 0..c.nv {
        let v = p.device(i).ok_or(VtdRefusal::Truncated)?;
        if u32::from(v.domain) >= c.nd || v.reserved != 0 {
            return Err(VtdRefusal::BadDevice);
        }
        let d = p.domain(u32::from(v.domain)).ok_or(VtdRefusal::BadDevice)?;
        if u32::from(d.unit) >= c.nu {
            return Err(VtdRefusal::DeviceDomainNoUnit);
        }
    }
    let need = scratch_len(c.nu as usize, c.np as usize);
    let scratch = scratch.get_mut(..need).ok_or(VtdRefusal::ScratchTooSmall)?;
    p.check_tokens(scratch)?;
    p.check_disjoint(scratch)?;
    Ok(p)
}

/// Whether a sorted list has two equal neighbours.
fn has_duplicate(sorted: &[u64]) -> bool {
    sorted.windows(2).any(|w| w.first() == w.get(1))
}

impl<'a> Parsed<'a> {
    /// The blob (as handed to [`parse`]).
    pub fn blob(&self) -> &'a [u8] {
        self.blob
    }

    /// Counts and table offsets.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Unit records.
    pub fn nr_units(&self) -> u32 {
        self.layout.nr_units
    }

    /// Domain records.
    pub fn nr_domains(&self) -> u32 {
        self.layout.nr_domains
    }

    /// Device records.
    pub fn nr_devices(&self) -> u32 {
        self.layout.nr_devices
    }

    /// Entries of `pages[]`.
    pub fn nr_pages(&self) -> u32 {
        self.layout.nr_pages
    }

    fn record(&self, i: u32, n: u32, base: u32, size: usize) -> Option<usize> {
        if i >= n {
            return None;
        }
        (i as usize).checked_mul(size)?.checked_add(base as usize)
    }

    /// Unit `i`.
    pub fn unit(&self, i: u32) -> Option<Unit> {
        let l = &self.layout;
        unit_at(self.blob, self.record(i, l.nr_units, l.units, UNIT)?)
    }

    /// Domain `i`.
    pub fn domain(&self, i: u32) -> Option<Domain> {
        let l = &self.layout;
        domain_at(self.blob, self.record(i, l.nr_domains, l.domains, DOMAIN)?)
    }

    /// Device `i`.
    pub fn device(&self, i: u32) -> Option<Device> {
        let l = &self.layout;
        device_at(self.blob, self.record(i, l.nr_devices, l.devices, DEVICE)?)
    }

    /// Entry `i` of `pages[]`.
    pub fn page(&self, i: u32) -> Option<u64> {
        let l = &self.layout;
        u64_at(self.blob, self.record(i, l.nr_pages, l.pages, PAGE)?)
    }

    /// The unit with register base `reg_phys` (the first, if several).
    pub fn unit_by_reg(&self, reg_phys: u64) -> Option<(u32, Unit)> {
        (0..self.nr_units())
            .filter_map(|i| Some((i, self.unit(i)?)))
            .find(|(_, u)| u.reg_phys == reg_phys)
    }

    /// The domain with `token`.
    pub fn domain_by_token(&self, token: u64) -> Option<(u32, Domain)> {
        (0..self.nr_domains())
            .filter_map(|i| Some((i, self.domain(i)?)))
            .find(|(_, d)| d.token == token)
    }

    /// Index in `pages[]` of `phys` within the slice (`first`, `nr`),
    /// if listed there (binary search: slices of a parsed blob are
    /// sorted). Out-of-range slices find nothing.
    pub fn find_in_slice(&self, first: u32, nr: u32, phys: u64) -> Option<u32> {
        let (mut lo, mut hi) = (first, first.checked_add(nr)?);
        if hi > self.nr_pages() {
            return None;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.page(mid)?;
            if at == phys {
                return Some(mid);
            }
            if at < phys {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        None
    }

    /// Slices tile `pages[]` in order, units then domains. A slice too
    /// long counts as `nr_pages` (as in C), so the sum cannot overflow
    /// and such a slice is refused as out of range later.
    fn check_tiling(&self) -> Result<(), VtdRefusal> {
        let np = u64::from(self.nr_pages());
        let mut next = 0u64;
        let units = (0..self.nr_units()).map(|i| self.unit(i).map(|u| (u.first_page, u.nr_pages)));
        let domains =
            (0..self.nr_domains()).map(|i| self.domain(i).map(|d| (d.first_page, d.nr_pages)));
        for s in units.chain(domains) {
            let (first, nr) = s.ok_or(VtdRefusal::Truncated)?;
            if u64::from(first) != next {
                return Err(VtdRefusal::SlicesDoNotTile);
            }
            next += u64::from(nr).min(np);
        }
        if next != np {
            return Err(VtdRefusal::SlicesDoNotTile);
        }
        Ok(())
    }

    /// A slice is in range, its pages non-zero, aligned and strictly
    /// ascending (`intel_lu_slice_ok()`).
    fn check_slice(&self, first: u32, nr: u32) -> Result<(), VtdRefusal> {
        let np = self.nr_pages();
        if first > np || nr > np - first {
            return Err(VtdRefusal::SliceOutOfRange);
        }
        let mut prev = None;
        for i in first..first + nr {
            let p = self.page(i).ok_or(VtdRefusal::SliceOutOfRange)?;
            if p == 0 || p & PAGE_OFFSET_MASK != 0 {
                return Err(VtdRefusal::UnalignedPage);
            }
            if prev.is_some_and(|q| p <= q) {
                return Err(VtdRefusal::PagesNotSorted);
            }
            prev = Some(p);
        }
        Ok(())
    }

    /// No two domains share a token (sorted in `scratch`, which has room:
    /// every domain has a page of its own, so `nr_domains <= nr_pages`).
    fn check_tokens(&self, scratch: &mut [u64]) -> Result<(), VtdRefusal> {
        let nd = self.nr_domains() as usize;
        let tokens = scratch.get_mut(..nd).ok_or(VtdRefusal::ScratchTooSmall)?;
        for (i, t) in (0u32..).zip(tokens.iter_mut()) {
            *t = self.domain(i).ok_or(VtdRefusal::Truncated)?.token;
        }
        tokens.sort_unstable();
        if has_duplicate(tokens) {
            return Err(VtdRefusal::DuplicateToken);
        }
        Ok(())
    }

    /// Every handed-over page (roots, context tables, page tables) is
    /// listed once: a page restored twice, or a live table adopted as
    /// another's, would be freed twice (`intel_lu_disjoint()`).
    fn check_disjoint(&self, scratch: &mut [u64]) -> Result<(), VtdRefusal> {
        let (nu, np) = (self.nr_units(), self.nr_pages());
        let n = scratch_len(nu as usize, np as usize);
        let all = scratch.get_mut(..n).ok_or(VtdRefusal::ScratchTooSmall)?;
        let (pages, roots) = all
            .split_at_mut_checked(np as usize)
            .ok_or(VtdRefusal::ScratchTooSmall)?;
        for (i, slot) in (0u32..).zip(pages.iter_mut()) {
            *slot = self.page(i).ok_or(VtdRefusal::Truncated)?;
        }
        for (i, slot) in (0u32..).zip(roots.iter_mut()) {
            *slot = self.unit(i).ok_or(VtdRefusal::Truncated)?.root_phys;
        }
        all.sort_unstable();
        if has_duplicate(all) {
            return Err(VtdRefusal::PageTwice);
        }
        Ok(())
    }
}
