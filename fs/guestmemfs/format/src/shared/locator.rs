// SPDX-License-Identifier: GPL-2.0-only
//! The KHO locator: the only thing guestmemfs hands over through KHO.
//!
//! The region has no struct pages, so KHO cannot preserve it; the
//! metadata lives inside the region instead, and the next kernel only
//! needs to know where the region is before anything can allocate from
//! it. The locator is a 64-byte blob in a KHO subtree named
//! `"guestmemfs"`, read in `setup_arch()` of the next kernel:
//!
//! ```text
//! 0   magic      u64  "GMFSLOC1"
//! 8   version    u32  1
//! 12  length     u32  64
//! 16  base       u64  physical address of the region
//! 24  size       u64  bytes
//! 32  generation u64  superblock generation when published
//! 40  flags      u32  LOCATOR_FLAG_*; unknown bits refused
//! 44  reserved   [u8; 16], zero
//! 60  crc32c     u32  over bytes 0..60
//! ```

use super::layout::{crc32c, get_u32, get_u64, put_u32, put_u64, BLOCK_SIZE, HUGE_BLOCKS};
use super::{corrupt, Corruption, Error};

/// Bytes of an encoded locator.
pub const LOCATOR_SIZE: usize = 64;
/// `b"GMFSLOC1"` as a little-endian u64.
pub const LOCATOR_MAGIC: u64 = u64::from_le_bytes(*b"GMFSLOC1");
/// Locator version written and accepted.
pub const LOCATOR_VERSION: u32 = 1;
/// Flag: a memory error hit the metadata blocks. The next kernel keeps
/// the region reserved but does not read (or adopt) the filesystem. A
/// kernel that does not know the flag refuses the locator whole (takes
/// no region), which is also safe.
pub const LOCATOR_FLAG_META_POISONED: u32 = 1;
/// Flag: IOMMU mappings of the region may have been handed over (inodes
/// were flagged `DMA_HELD`, or a handover the previous kernel got was not
/// resolved yet). The next kernel refuses `-o reformat` until the IOMMU
/// side resolves the handover, also when it refuses the filesystem and
/// so cannot read the inode flags. A kernel that does not know the flag
/// refuses the locator whole (takes no region).
pub const LOCATOR_FLAG_DMA_HELD: u32 = 2;
const LOCATOR_FLAGS_KNOWN: u32 = LOCATOR_FLAG_META_POISONED | LOCATOR_FLAG_DMA_HELD;

/// Where the region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locator {
    /// Physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Superblock generation at publication.
    pub generation: u64,
    /// `LOCATOR_FLAG_*`.
    pub flags: u32,
}

/// Alignment the region must have: 1 GiB when its size is a multiple of
/// 1 GiB, else 2 MiB.
pub fn region_alignment(size: u64) -> u64 {
    let gib = BLOCK_SIZE * HUGE_BLOCKS;
    if size % gib == 0 {
        gib
    } else {
        BLOCK_SIZE
    }
}

impl Locator {
    /// Checks the region's shape (not whether the memory exists: the
    /// kernel checks that against its memory map).
    pub fn check_region(base: u64, size: u64) -> Result<(), Error> {
        if size == 0
            || size % BLOCK_SIZE != 0
            || base % region_alignment(size) != 0
            || base.checked_add(size).is_none()
        {
            return corrupt(Corruption::BadGeometry);
        }
        Ok(())
    }

    /// Encodes into `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<(), Error> {
        let out = out.get_mut(..LOCATOR_SIZE).ok_or(Error::Truncated)?;
        out.iter_mut().for_each(|b| *b = 0);
        put_u64(out, 0, LOCATOR_MAGIC)?;
        put_u32(out, 8, LOCATOR_VERSION)?;
        put_u32(out, 12, LOCATOR_SIZE as u32)?;
        put_u64(out, 16, self.base)?;
        put_u64(out, 24, self.size)?;
        put_u64(out, 32, self.generation)?;
        put_u32(out, 40, self.flags)?;
        let sum = crc32c(out.get(..60).ok_or(Error::Truncated)?);
        put_u32(out, 60, sum)
    }

    /// Decodes and validates a locator from the previous kernel.
    pub fn decode(buf: &[u8]) -> Result<Locator, Error> {
        if buf.len() < LOCATOR_SIZE {
            return Err(Error::Truncated);
        }
        if get_u64(buf, 0)? != LOCATOR_MAGIC {
            return corrupt(Corruption::BadMagic);
        }
        let version = get_u32(buf, 8)?;
        if version != LOCATOR_VERSION {
            return corrupt(Corruption::BadVersion(version));
        }
        if get_u32(buf, 12)? as usize != LOCATOR_SIZE {
            return corrupt(Corruption::BadGeometry);
        }
        if crc32c(buf.get(..60).ok_or(Error::Truncated)?) != get_u32(buf, 60)? {
            return corrupt(Corruption::BadChecksum);
        }
        // Unknown flags and reserved bytes: refused, so a field added
        // later cannot be silently ignored.
        let flags = get_u32(buf, 40)?;
        if flags & !LOCATOR_FLAGS_KNOWN != 0
            || buf
                .get(44..60)
                .ok_or(Error::Truncated)?
                .iter()
                .any(|&b| b != 0)
        {
            return corrupt(Corruption::NonZeroReserved);
        }
        let loc = Locator {
            base: get_u64(buf, 16)?,
            size: get_u64(buf, 24)?,
            generation: get_u64(buf, 32)?,
            flags,
        };
        Self::check_region(loc.base, loc.size)?;
        Ok(loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejections() {
        let loc = Locator {
            base: 1 << 32,
            size: 2 << 30,
            generation: 9,
            flags: 0,
        };
        let mut buf = [0u8; 64];
        loc.encode(&mut buf).unwrap();
        assert_eq!(Locator::decode(&buf), Ok(loc));
        for i in 0..64 {
            let mut bad = buf;
            bad[i] ^= 0x10;
            assert!(Locator::decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert_eq!(Locator::decode(&buf[..63]), Err(Error::Truncated));
        // 1 GiB multiple must be 1 GiB aligned.
        let odd = Locator {
            base: (1 << 32) + (2 << 20),
            size: 1 << 30,
            generation: 0,
            flags: 0,
        };
        odd.encode(&mut buf).unwrap();
        assert!(Locator::decode(&buf).is_err());
        assert_eq!(region_alignment(3 << 20), 2 << 20);
    }

    #[test]
    fn flags_roundtrip_and_unknown_ones_are_refused() {
        for flags in [
            LOCATOR_FLAG_META_POISONED,
            LOCATOR_FLAG_DMA_HELD,
            LOCATOR_FLAG_META_POISONED | LOCATOR_FLAG_DMA_HELD,
        ] {
            let loc = Locator {
                base: 1 << 32,
                size: 2 << 30,
                generation: 4,
                flags,
            };
            let mut buf = [0u8; 64];
            loc.encode(&mut buf).unwrap();
            assert_eq!(Locator::decode(&buf), Ok(loc));
        }
        for bit in 2..32 {
            let loc = Locator {
                base: 1 << 32,
                size: 2 << 30,
                generation: 4,
                flags: 1 << bit,
            };
            let mut buf = [0u8; 64];
            loc.encode(&mut buf).unwrap();
            assert_eq!(
                Locator::decode(&buf),
                Err(Error::Corrupt(Corruption::NonZeroReserved)),
                "flag bit {bit}"
            );
        }
    }

    #[test]
    fn nonzero_reserved_refused_even_with_a_good_checksum() {
        let loc = Locator {
            base: 1 << 32,
            size: 2 << 30,
            generation: 1,
            flags: 0,
        };
        for at in [41, 43, 44, 59] {
            let mut buf = [0u8; 64];
            loc.encode(&mut buf).unwrap();
            buf[at] = 1;
            let sum = crc32c(&buf[..60]);
            buf[60..].copy_from_slice(&sum.to_le_bytes());
            assert_eq!(
                Locator::decode(&buf),
                Err(Error::Corrupt(Corruption::NonZeroReserved)),
                "byte {at}"
            );
        }
    }
}
