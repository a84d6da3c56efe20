// SPDX-License-Identifier: GPL-2.0-only
//! Block allocator: one bit per 2 MiB block, in memory only.
//!
//! The bitmap is not part of the handed-over format: after a kexec it is
//! rebuilt from the validated extents, so it can never disagree with them.
//! Storage is provided by the caller (the kernel allocates it with
//! `KVec`), so this code needs no allocator.

use super::layout::HUGE_BLOCKS;
use super::Error;

/// Words of storage needed for `nr_blocks` bits.
pub fn words_for(nr_blocks: u64) -> usize {
    nr_blocks.div_ceil(64) as usize
}

/// Free/used state of the region's blocks.
pub struct BlockBitmap<'a> {
    words: &'a mut [u64],
    nr_blocks: u64,
    used: u64,
}

impl<'a> BlockBitmap<'a> {
    /// A bitmap of `nr_blocks` free blocks over `words`, which must hold
    /// at least [`words_for`]`(nr_blocks)` words.
    pub fn new(words: &'a mut [u64], nr_blocks: u64) -> Result<Self, Error> {
        if (words.len() as u64) < nr_blocks.div_ceil(64) {
            return Err(Error::Invalid);
        }
        words.iter_mut().for_each(|w| *w = 0);
        Ok(BlockBitmap {
            words,
            nr_blocks,
            used: 0,
        })
    }

    /// A bitmap over `words` that already hold the state of `nr_blocks`
    /// blocks (bits past `nr_blocks` must be clear).
    pub fn attach(words: &'a mut [u64], nr_blocks: u64) -> Result<Self, Error> {
        let n = nr_blocks.div_ceil(64) as usize;
        let used_words = words.get(..n).ok_or(Error::Invalid)?;
        let used = used_words.iter().map(|w| u64::from(w.count_ones())).sum();
        if used > nr_blocks {
            return Err(Error::Invalid);
        }
        Ok(BlockBitmap {
            words,
            nr_blocks,
            used,
        })
    }

    /// Blocks in the bitmap.
    pub fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    /// Blocks in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Blocks free.
    pub fn free(&self) -> u64 {
        self.nr_blocks - self.used
    }

    /// True if block `b` is in use (out-of-range blocks count as used).
    pub fn is_used(&self, b: u64) -> bool {
        if b >= self.nr_blocks {
            return true;
        }
        self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn range_ok(&self, start: u64, count: u64) -> Result<u64, Error> {
        let end = start.checked_add(count).ok_or(Error::Invalid)?;
        if count == 0 || end > self.nr_blocks {
            return Err(Error::Invalid);
        }
        Ok(end)
    }

    /// Marks `[start, start + count)` used; fails without changing
    /// anything if any block is already used (an overlap).
    pub fn mark_used(&mut self, start: u64, count: u64) -> Result<(), Error> {
        let end = self.range_ok(start, count)?;
        if let Some(b) = (start..end).find(|&b| self.is_used(b)) {
            return Err(Error::Overlap(b));
        }
        for b in start..end {
            self.words[(b / 64) as usize] |= 1 << (b % 64);
        }
        self.used += count;
        Ok(())
    }

    /// Frees `[start, start + count)`; fails without changing anything if
    /// any block is already free (a double free).
    pub fn mark_free(&mut self, start: u64, count: u64) -> Result<(), Error> {
        let end = self.range_ok(start, count)?;
        if let Some(b) = (start..end).find(|&b| !self.is_used(b)) {
            return Err(Error::DoubleFree(b));
        }
        for b in start..end {
            self.words[(b / 64) as usize] &= !(1 << (b % 64));
        }
        self.used -= count;
        Ok(())
    }

    /// Finds `count` free blocks starting at a multiple of `align` blocks
    /// (first fit), without marking them.
    pub fn find_free(&self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || align == 0 || count > self.free() {
            return None;
        }
        let mut start = 0u64;
        while start.checked_add(count)? <= self.nr_blocks {
            match (start..start + count).rev().find(|&b| self.is_used(b)) {
                None => return Some(start),
                // Skip past the used block, to the next aligned start.
                Some(used) => start = (used + 1).div_ceil(align) * align,
            }
        }
        None
    }

    /// Allocates the largest run available up to `want` blocks, preferring
    /// whole 1 GiB units when `want` covers one (so the fault handler can
    /// map PUDs), then the longest free run otherwise. Returns
    /// `(start, count)`.
    pub fn alloc_run(&mut self, want: u64) -> Result<(u64, u64), Error> {
        if want == 0 {
            return Err(Error::Invalid);
        }
        if self.free() == 0 {
            return Err(Error::NoSpace);
        }
        if want >= HUGE_BLOCKS {
            let units = want / HUGE_BLOCKS;
            // Largest number of whole aligned 1 GiB units that fit.
            for n in (1..=units).rev() {
                if let Some(start) = self.find_free(n * HUGE_BLOCKS, HUGE_BLOCKS) {
                    self.mark_used(start, n * HUGE_BLOCKS)?;
                    return Ok((start, n * HUGE_BLOCKS));
                }
            }
        }
        // First fit of the longest free run, capped at `want`.
        let (mut best_start, mut best_len) = (0, 0);
        let mut b = 0;
        while b < self.nr_blocks {
            if self.is_used(b) {
                b += 1;
                continue;
            }
            let start = b;
            while b < self.nr_blocks && !self.is_used(b) && b - start < want {
                b += 1;
            }
            if b - start > best_len {
                best_start = start;
                best_len = b - start;
                if best_len == want {
                    break;
                }
            }
        }
        self.mark_used(best_start, best_len)?;
        Ok((best_start, best_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_and_free() {
        let mut w = [0u64; 2];
        let mut bm = BlockBitmap::new(&mut w, 100).unwrap();
        bm.mark_used(10, 5).unwrap();
        assert_eq!(bm.used(), 5);
        assert_eq!(bm.mark_used(14, 2), Err(Error::Overlap(14)));
        assert_eq!(bm.used(), 5);
        assert_eq!(bm.mark_free(9, 2), Err(Error::DoubleFree(9)));
        bm.mark_free(10, 5).unwrap();
        assert_eq!(bm.used(), 0);
        assert_eq!(bm.mark_used(99, 2), Err(Error::Invalid));
        assert!(bm.is_used(100));
    }

    #[test]
    fn huge_runs_are_aligned() {
        let mut w = [0u64; 32];
        let mut bm = BlockBitmap::new(&mut w, 2048).unwrap();
        bm.mark_used(0, 3).unwrap();
        let (start, count) = bm.alloc_run(1024).unwrap();
        assert_eq!((start, count), (512, 1024));
        let (start, count) = bm.alloc_run(512).unwrap();
        assert_eq!((start, count), (1536, 512));
        // No aligned GiB left: falls back to the longest small run.
        let (start, count) = bm.alloc_run(600).unwrap();
        assert_eq!((start, count), (3, 509));
        assert_eq!(bm.alloc_run(1), Err(Error::NoSpace));
    }

    #[test]
    fn attach_counts_used() {
        let mut w = [0u64; 2];
        {
            let mut bm = BlockBitmap::new(&mut w, 100).unwrap();
            bm.mark_used(60, 10).unwrap();
        }
        let bm = BlockBitmap::attach(&mut w, 100).unwrap();
        assert_eq!(bm.used(), 10);
        assert!(bm.is_used(65) && !bm.is_used(70));
    }

    #[test]
    fn too_small_storage() {
        let mut w = [0u64; 1];
        assert!(BlockBitmap::new(&mut w, 65).is_err());
    }
}
