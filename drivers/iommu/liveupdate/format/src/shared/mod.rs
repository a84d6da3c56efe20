// SPDX-License-Identifier: GPL-2.0-only
//! iommufd live update handover: the iommufd file blob (which HWPTs, and
//! what their IOAS maps: guestmemfs file ranges), and the check a restore
//! makes before it hands an adopted page table back to userspace.
//!
//! Everything here is plain `core` Rust over byte slices: no allocation,
//! no `unsafe`, no panics on any input. The checksum is the caller's
//! (the kernel's `crc32c`), so the crate needs nothing from either side.
//! Design: `docs/design/iommufd-luo-vtd.md` §1.3 and §4.5.
//!
//! # File blob, version 1 (all integers little endian)
//!
//! ```text
//! header (32 B): magic "IOFDLU01" u64, version u32 = 1, length u32 (whole
//!                blob, checksum included), nr_hwpts u32, nr_areas u32,
//!                flags u32 = 0, reserved u32 = 0
//! hwpt (32 B):   token u64 (non-zero, unique), domain u32 (index of the
//!                HWPT in this blob, unique), flags u32 (HWPT_*),
//!                first_area u32, nr_areas u32, reserved u64 = 0
//! area (48 B):   iova u64, length u64, ino u64, igen u64 (guestmemfs inode
//!                and its generation), offset u64 (in the file), prot u32
//!                (PROT_*), reserved u32 = 0
//! crc32c (4 B):  over every byte before it
//! ```
//!
//! The HWPTs' areas tile the area table in order; a HWPT's areas are
//! sorted by IOVA, page aligned, and do not overlap.

/// `b"IOFDLU01"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"IOFDLU01");
/// Version written and accepted.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER: usize = 32;
/// Bytes of a HWPT record.
pub const HWPT: usize = 32;
/// Bytes of an area record.
pub const AREA: usize = 48;
/// Most HWPTs one iommufd hands over.
pub const MAX_HWPTS: u32 = 4096;
/// Most areas one iommufd hands over.
pub const MAX_AREAS: u32 = 1 << 20;
/// HWPT flag: the domain enforces cache coherency.
pub const HWPT_ENFORCE_CC: u32 = 1;
/// Area prot: readable, writable, cacheable (`IOMMU_READ|WRITE|CACHE`).
pub const PROT_READ: u32 = 1;
/// See [`PROT_READ`].
pub const PROT_WRITE: u32 = 2;
/// See [`PROT_READ`].
pub const PROT_CACHE: u32 = 4;
const PAGE: u64 = 4096;

/// Why a handover (or a restored page table) is refused; shown in the
/// log line that names the refused object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Shorter than its header or its length field says.
    Truncated,
    /// Not a blob of this format.
    BadMagic,
    /// A version this kernel does not know.
    BadVersion(u32),
    /// The length field disagrees with the counts.
    BadLength,
    /// Checksum mismatch.
    BadChecksum,
    /// Unknown flags or non-zero reserved bytes.
    NonZeroReserved,
    /// No HWPT, or more HWPTs or areas than the limits.
    BadCounts,
    /// HWPT `n` has a zero or repeated token.
    BadToken(u32),
    /// HWPT `n` names the same domain as an earlier one.
    DuplicateDomain(u32),
    /// HWPT `n`'s areas do not tile the area table in order.
    BadAreaRange(u32),
    /// Area `n` is empty, unaligned, overflows, has bad prot or no inode.
    BadArea(u32),
    /// Area `n` overlaps or precedes the previous area of its HWPT.
    AreaOrder(u32),
    /// The page table translates `iova` other than the handover says.
    Mismatch {
        /// First IOVA where they differ.
        iova: u64,
    },
    /// The page table maps `iova`, which no area covers.
    ExtraMapping {
        /// First such IOVA.
        iova: u64,
    },
    /// The page table does not map `iova`, which an area covers.
    Unmapped {
        /// First such IOVA.
        iova: u64,
    },
    /// A leaf of a cache-coherent HWPT ([`HWPT_ENFORCE_CC`]) at `iova`
    /// does not snoop: not a table the kernel wrote for it.
    NoSnoop {
        /// First such IOVA.
        iova: u64,
    },
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::Truncated => write!(f, "handover truncated"),
            Refusal::BadMagic => write!(f, "bad magic"),
            Refusal::BadVersion(v) => write!(f, "unsupported version {v}"),
            Refusal::BadLength => write!(f, "length does not match the counts"),
            Refusal::BadChecksum => write!(f, "checksum mismatch"),
            Refusal::NonZeroReserved => write!(f, "unknown flags or reserved bytes set"),
            Refusal::BadCounts => write!(f, "no HWPT, or too many HWPTs or areas"),
            Refusal::BadToken(n) => write!(f, "HWPT {n} has a zero or repeated token"),
            Refusal::DuplicateDomain(n) => write!(f, "HWPT {n} names another HWPT's domain"),
            Refusal::BadAreaRange(n) => write!(f, "HWPT {n} names areas out of order"),
            Refusal::BadArea(n) => write!(f, "area {n} is malformed"),
            Refusal::AreaOrder(n) => write!(f, "area {n} overlaps or is out of order"),
            Refusal::Mismatch { iova } => {
                write!(
                    f,
                    "IOVA {iova:#x} translates elsewhere than the file's memory"
                )
            }
            Refusal::ExtraMapping { iova } => {
                write!(f, "IOVA {iova:#x} is mapped but not handed over")
            }
            Refusal::Unmapped { iova } => write!(f, "IOVA {iova:#x} is handed over but not mapped"),
            Refusal::NoSnoop { iova } => {
                write!(f, "IOVA {iova:#x} does not snoop in a cache-coherent HWPT")
            }
        }
    }
}

/// A HWPT record. `repr(C)`: the kernel passes arrays of it to and from C
/// (`struct iommufd_lu_hwpt_rec`, `drivers/iommu/iommufd/lu_rs.h`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hwpt {
    /// Token of `IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE`.
    pub token: u64,
    /// Index of the HWPT in this blob (unique); the IOMMU driver finds
    /// the domain by `token`.
    pub domain: u32,
    /// `HWPT_*`.
    pub flags: u32,
    /// Its first area.
    pub first_area: u32,
    /// Its areas.
    pub nr_areas: u32,
}

/// An area record: `length` bytes at `iova` map file `ino` (generation
/// `igen`) from byte `offset`. `repr(C)`: `struct iommufd_lu_area_rec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Area {
    /// First IOVA.
    pub iova: u64,
    /// Bytes.
    pub length: u64,
    /// guestmemfs inode.
    pub ino: u64,
    /// Its generation.
    pub igen: u64,
    /// File offset mapped at `iova`.
    pub offset: u64,
    /// `PROT_*`.
    pub prot: u32,
}

/// Bytes of a blob of `nr_hwpts` HWPTs and `nr_areas` areas.
pub fn blob_len(nr_hwpts: usize, nr_areas: usize) -> Option<usize> {
    HWPT.checked_mul(nr_hwpts)?
        .checked_add(AREA.checked_mul(nr_areas)?)?
        .checked_add(HEADER + 4)
}

fn get<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], Refusal> {
    b.get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(Refusal::Truncated)
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, Refusal> {
    get::<4>(b, off).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, Refusal> {
    get::<8>(b, off).map(u64::from_le_bytes)
}

fn put(b: &mut [u8], off: usize, v: &[u8]) -> Result<(), Refusal> {
    b.get_mut(off..off + v.len())
        .ok_or(Refusal::Truncated)?
        .copy_from_slice(v);
    Ok(())
}

/// Encodes `hwpts` and `areas` into `out`; returns the bytes written
/// (`Truncated` if `out` is too small). The result is what [`Blob::parse`]
/// accepts only if the records follow the rules (it does not check).
pub fn encode(
    out: &mut [u8],
    hwpts: &[Hwpt],
    areas: &[Area],
    crc: impl Fn(&[u8]) -> u32,
) -> Result<usize, Refusal> {
    let len = blob_len(hwpts.len(), areas.len()).ok_or(Refusal::BadCounts)?;
    let (nh, na) = (
        u32::try_from(hwpts.len()).map_err(|_| Refusal::BadCounts)?,
        u32::try_from(areas.len()).map_err(|_| Refusal::BadCounts)?,
    );
    let out = out.get_mut(..len).ok_or(Refusal::Truncated)?;
    out.iter_mut().for_each(|b| *b = 0);
    put(out, 0, &MAGIC.to_le_bytes())?;
    put(out, 8, &VERSION.to_le_bytes())?;
    put(
        out,
        12,
        &u32::try_from(len)
            .map_err(|_| Refusal::BadCounts)?
            .to_le_bytes(),
    )?;
    put(out, 16, &nh.to_le_bytes())?;
    put(out, 20, &na.to_le_bytes())?;
    for (i, h) in hwpts.iter().enumerate() {
        let o = HEADER + i * HWPT;
        put(out, o, &h.token.to_le_bytes())?;
        put(out, o + 8, &h.domain.to_le_bytes())?;
        put(out, o + 12, &h.flags.to_le_bytes())?;
        put(out, o + 16, &h.first_area.to_le_bytes())?;
        put(out, o + 20, &h.nr_areas.to_le_bytes())?;
    }
    let base = HEADER + hwpts.len() * HWPT;
    for (i, a) in areas.iter().enumerate() {
        let o = base + i * AREA;
        put(out, o, &a.iova.to_le_bytes())?;
        put(out, o + 8, &a.length.to_le_bytes())?;
        put(out, o + 16, &a.ino.to_le_bytes())?;
        put(out, o + 24, &a.igen.to_le_bytes())?;
        put(out, o + 32, &a.offset.to_le_bytes())?;
        put(out, o + 40, &a.prot.to_le_bytes())?;
    }
    let sum = crc(out.get(..len - 4).ok_or(Refusal::Truncated)?);
    put(out, len - 4, &sum.to_le_bytes())?;
    Ok(len)
}

/// A validated file blob.
#[derive(Debug, Clone, Copy)]
pub struct Blob<'a> {
    buf: &'a [u8],
    nr_hwpts: u32,
    nr_areas: u32,
}

impl<'a> Blob<'a> {
    /// Checks a blob handed over by the previous kernel: header, checksum
    /// and every record rule of the module documentation.
    pub fn parse(buf: &'a [u8], crc: impl Fn(&[u8]) -> u32) -> Result<Blob<'a>, Refusal> {
        if u64_at(buf, 0)? != MAGIC {
            return Err(Refusal::BadMagic);
        }
        let version = u32_at(buf, 8)?;
        if version != VERSION {
            return Err(Refusal::BadVersion(version));
        }
        let len = u32_at(buf, 12)? as usize;
        let (nh, na) = (u32_at(buf, 16)?, u32_at(buf, 20)?);
        if len < HEADER + 4 || len > buf.len() {
            return Err(Refusal::Truncated);
        }
        let body = buf.get(..len - 4).ok_or(Refusal::Truncated)?;
        if crc(body) != u32_at(buf, len - 4)? {
            return Err(Refusal::BadChecksum);
        }
        if u32_at(buf, 24)? != 0 || u32_at(buf, 28)? != 0 {
            return Err(Refusal::NonZeroReserved);
        }
        if nh == 0 || nh > MAX_HWPTS || na > MAX_AREAS {
            return Err(Refusal::BadCounts);
        }
        if blob_len(nh as usize, na as usize) != Some(len) {
            return Err(Refusal::BadLength);
        }
        let blob = Blob {
            buf: &buf[..len],
            nr_hwpts: nh,
            nr_areas: na,
        };
        blob.check()?;
        Ok(blob)
    }

    fn check(&self) -> Result<(), Refusal> {
        let mut next_area = 0u32;
        for n in 0..self.nr_hwpts {
            let h = self.hwpt(n)?;
            let o = HEADER + n as usize * HWPT;
            if h.flags & !HWPT_ENFORCE_CC != 0 || u64_at(self.buf, o + 24)? != 0 {
                return Err(Refusal::NonZeroReserved);
            }
            // Tokens: non-zero and unique (quadratic, bounded by MAX_HWPTS
            // and the handover size; no allocation).
            if h.token == 0 || (0..n).any(|m| self.hwpt(m).map(|x| x.token) == Ok(h.token)) {
                return Err(Refusal::BadToken(n));
            }
            if (0..n).any(|m| self.hwpt(m).map(|x| x.domain) == Ok(h.domain)) {
                return Err(Refusal::DuplicateDomain(n));
            }
            if h.first_area != next_area
                || h.first_area
                    .checked_add(h.nr_areas)
                    .is_none_or(|e| e > self.nr_areas)
            {
                return Err(Refusal::BadAreaRange(n));
            }
            next_area += h.nr_areas;
            let mut prev_end: Option<u64> = None;
            for i in h.first_area..h.first_area + h.nr_areas {
                let a = self.area(i)?;
                if u32_at(self.buf, self.area_off(i) + 44)? != 0 {
                    return Err(Refusal::NonZeroReserved);
                }
                let end = a.iova.checked_add(a.length);
                let ok = a.length != 0
                    && a.iova % PAGE == 0
                    && a.length % PAGE == 0
                    && a.offset % PAGE == 0
                    && end.is_some()
                    && a.offset.checked_add(a.length).is_some()
                    && a.prot & !(PROT_READ | PROT_WRITE | PROT_CACHE) == 0
                    && a.prot & (PROT_READ | PROT_WRITE) != 0
                    && a.ino != 0;
                if !ok {
                    return Err(Refusal::BadArea(i));
                }
                if prev_end.is_some_and(|p| a.iova < p) {
                    return Err(Refusal::AreaOrder(i));
                }
                prev_end = end;
            }
        }
        if next_area != self.nr_areas {
            return Err(Refusal::BadAreaRange(self.nr_hwpts.saturating_sub(1)));
        }
        Ok(())
    }

    /// HWPTs.
    pub fn nr_hwpts(&self) -> u32 {
        self.nr_hwpts
    }

    /// HWPT `n` (`Truncated` at or above [`Blob::nr_hwpts`]).
    pub fn hwpt(&self, n: u32) -> Result<Hwpt, Refusal> {
        if n >= self.nr_hwpts {
            return Err(Refusal::Truncated);
        }
        let o = HEADER + n as usize * HWPT;
        Ok(Hwpt {
            token: u64_at(self.buf, o)?,
            domain: u32_at(self.buf, o + 8)?,
            flags: u32_at(self.buf, o + 12)?,
            first_area: u32_at(self.buf, o + 16)?,
            nr_areas: u32_at(self.buf, o + 20)?,
        })
    }

    /// The HWPT with `token`.
    pub fn find(&self, token: u64) -> Option<(u32, Hwpt)> {
        (0..self.nr_hwpts)
            .filter_map(|n| self.hwpt(n).ok().map(|h| (n, h)))
            .find(|(_, h)| h.token == token)
    }

    fn area_off(&self, i: u32) -> usize {
        HEADER + self.nr_hwpts as usize * HWPT + i as usize * AREA
    }

    /// Area `i` of the area table (`Truncated` past its end).
    pub fn area(&self, i: u32) -> Result<Area, Refusal> {
        if i >= self.nr_areas {
            return Err(Refusal::Truncated);
        }
        let o = self.area_off(i);
        Ok(Area {
            iova: u64_at(self.buf, o)?,
            length: u64_at(self.buf, o + 8)?,
            ino: u64_at(self.buf, o + 16)?,
            igen: u64_at(self.buf, o + 24)?,
            offset: u64_at(self.buf, o + 32)?,
            prot: u32_at(self.buf, o + 40)?,
        })
    }
}

/// `len` bytes at `iova` translate to `phys` with `prot`: a page-table
/// leaf, or a piece of what a handed-over area should map. `repr(C)`:
/// `struct iommufd_lu_piece`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// First IOVA.
    pub iova: u64,
    /// Physical address at `iova`.
    pub phys: u64,
    /// Bytes.
    pub len: u64,
    /// `PROT_*` (as the page table encodes it).
    pub prot: u32,
}

/// Merges adjacent pieces (contiguous in IOVA and physical address, same
/// prot) into maximal runs, from pieces sorted by IOVA.
struct Runs<I: Iterator<Item = Piece>> {
    it: core::iter::Peekable<I>,
}

impl<I: Iterator<Item = Piece>> Iterator for Runs<I> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        let mut run = self.it.next()?;
        while let Some(p) = self.it.peek() {
            let joins = run.iova.checked_add(run.len) == Some(p.iova)
                && run.phys.checked_add(run.len) == Some(p.phys)
                && run.prot == p.prot;
            match run.len.checked_add(p.len) {
                Some(len) if joins => run.len = len,
                _ => break,
            }
            self.it.next();
        }
        Some(run)
    }
}

/// The restore check of a HWPT with `flags` (`HWPT_*`): every leaf of a
/// cache-coherent one snoops (`PROT_CACHE`), then [`check_translation`]
/// of the access bits (`PROT_READ | PROT_WRITE`; whether a leaf of
/// another HWPT snoops is the domain's choice, not the handover's).
pub fn check_hwpt_translation(
    expected: impl Iterator<Item = Piece>,
    leaves: impl Iterator<Item = Piece> + Clone,
    flags: u32,
) -> Result<(), Refusal> {
    if flags & HWPT_ENFORCE_CC != 0 {
        if let Some(l) = leaves.clone().find(|l| l.prot & PROT_CACHE == 0) {
            return Err(Refusal::NoSnoop { iova: l.iova });
        }
    }
    let access = |p: Piece| Piece {
        prot: p.prot & (PROT_READ | PROT_WRITE),
        ..p
    };
    check_translation(expected.map(access), leaves.map(access))
}

/// The restore check: a page table's leaves (`leaves`, sorted by IOVA,
/// as a walk of the whole table yields them) translate exactly what the
/// handover expects (`expected`, sorted by IOVA: for every area, its
/// file's physical runs at the recorded offset with its prot) and
/// nothing else. How the two are split into pieces does not matter (a
/// 1 GiB leaf may stand for 512 file blocks). A refusal names the first
/// IOVA where they differ. Cost: linear in the pieces.
pub fn check_translation(
    expected: impl Iterator<Item = Piece>,
    leaves: impl Iterator<Item = Piece>,
) -> Result<(), Refusal> {
    let mut want = Runs {
        it: expected.peekable(),
    };
    let mut have = Runs {
        it: leaves.peekable(),
    };
    let (mut w, mut h) = (want.next(), have.next());
    loop {
        let (a, b) = match (w, h) {
            (None, None) => return Ok(()),
            (Some(a), None) => return Err(Refusal::Unmapped { iova: a.iova }),
            (None, Some(b)) => return Err(Refusal::ExtraMapping { iova: b.iova }),
            (Some(a), Some(b)) => (a, b),
        };
        if b.iova < a.iova {
            return Err(Refusal::ExtraMapping { iova: b.iova });
        }
        if a.iova < b.iova {
            return Err(Refusal::Unmapped { iova: a.iova });
        }
        if a.phys != b.phys || a.prot != b.prot {
            return Err(Refusal::Mismatch { iova: a.iova });
        }
        // Equal so far: consume the shorter, carry the rest of the longer.
        let n = a.len.min(b.len);
        let rest = |p: Piece| -> Result<Option<Piece>, Refusal> {
            if p.len == n {
                return Ok(None);
            }
            let bad = Refusal::Mismatch { iova: p.iova };
            Ok(Some(Piece {
                iova: p.iova.checked_add(n).ok_or(bad)?,
                phys: p.phys.checked_add(n).ok_or(bad)?,
                len: p.len - n,
                prot: p.prot,
            }))
        };
        w = match rest(a)? {
            Some(r) => Some(r),
            None => want.next(),
        };
        h = match rest(b)? {
            Some(r) => Some(r),
            None => have.next(),
        };
    }
}
