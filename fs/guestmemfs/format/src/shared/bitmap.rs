// SPDX-License-Identifier: GPL-2.0-only
//! Block allocator: one bit per 2 MiB block, in memory only.
//!
//! The bitmap is not part of the handed-over format: after a kexec it is
//! rebuilt from the validated extents, so it can never disagree with them.
//! Storage is provided by the caller (the kernel allocates it with
//! `KVVec`), so this code needs no allocator. Every search and range
//! operation works a 64-bit word at a time (full or empty words are
//! skipped whole), and [`BlockBitmap::resume`] rebuilds the allocator per
//! call in O(1) from the count the caller kept.
//!
//! Blocks hit by a memory error are *pinned* ([`BlockBitmap::pin`]): used
//! for good. Freeing a range that holds one leaves it used, so no
//! truncate, evict or orphan reclaim can hand it out again.

use super::layout::HUGE_BLOCKS;
use super::Error;

/// Words of storage needed for `nr_blocks` bits.
pub fn words_for(nr_blocks: u64) -> usize {
    nr_blocks.div_ceil(64) as usize
}

/// Bit `b` of `words` (false past their end).
pub fn bit(words: &[u64], b: u64) -> bool {
    usize::try_from(b / 64)
        .ok()
        .and_then(|w| words.get(w))
        .is_some_and(|w| w & (1 << (b % 64)) != 0)
}

/// Sets bit `b` of `words` (nothing past their end).
pub fn set_bit(words: &mut [u64], b: u64) {
    if let Some(w) = usize::try_from(b / 64).ok().and_then(|w| words.get_mut(w)) {
        *w |= 1 << (b % 64);
    }
}

/// Free/used state of the region's blocks.
pub struct BlockBitmap<'a> {
    words: &'a mut [u64],
    /// One bit per pinned block; empty when the caller gave no storage
    /// (then nothing can be pinned).
    pins: &'a mut [u64],
    nr_blocks: u64,
    used: u64,
}

/// Bits `[lo, hi)` of a word, `0 <= lo < hi <= 64`.
fn bits(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 64 { !0 } else { (1u64 << hi) - 1 };
    upper & (!0u64 << (lo % 64))
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
            pins: &mut [],
            nr_blocks,
            used: 0,
        })
    }

    /// A bitmap over `words` that already hold the state of `nr_blocks`
    /// blocks (bits past `nr_blocks` must be clear).
    pub fn attach(words: &'a mut [u64], nr_blocks: u64) -> Result<Self, Error> {
        let n = usize::try_from(nr_blocks.div_ceil(64)).map_err(|_| Error::Invalid)?;
        let used_words = words.get(..n).ok_or(Error::Invalid)?;
        let used = used_words.iter().map(|w| u64::from(w.count_ones())).sum();
        if used > nr_blocks {
            return Err(Error::Invalid);
        }
        Ok(BlockBitmap {
            words,
            pins: &mut [],
            nr_blocks,
            used,
        })
    }

    /// A bitmap over `words` holding the state of `nr_blocks` blocks, of
    /// which `used` are in use: what [`BlockBitmap::used`] said when the
    /// caller last had it. O(1), for the kernel's per-call construction
    /// ([`BlockBitmap::attach`] counts the bits, O(blocks / 64)).
    pub fn resume(words: &'a mut [u64], nr_blocks: u64, used: u64) -> Result<Self, Error> {
        if (words.len() as u64) < nr_blocks.div_ceil(64) || used > nr_blocks {
            return Err(Error::Invalid);
        }
        Ok(BlockBitmap {
            words,
            pins: &mut [],
            nr_blocks,
            used,
        })
    }

    /// Attaches the pinned-block mask `pins` (at least [`words_for`]
    /// words, kept by the caller like `words`; bits past `nr_blocks`
    /// clear). Every pinned block must be marked used.
    pub fn with_pins(mut self, pins: &'a mut [u64]) -> Result<Self, Error> {
        if (pins.len() as u64) < self.nr_blocks.div_ceil(64) {
            return Err(Error::Invalid);
        }
        self.pins = pins;
        Ok(self)
    }

    /// True if block `b` is pinned.
    pub fn is_pinned(&self, b: u64) -> bool {
        bit(self.pins, b)
    }

    /// True if any block of `[start, start + count)` is pinned.
    pub fn any_pinned(&self, start: u64, count: u64) -> bool {
        let end = start.saturating_add(count).min(self.nr_blocks);
        let mut b = start;
        while b < end {
            let w = b / 64;
            let hi = (end - w * 64).min(64);
            if self.pin_word(w) & bits(b % 64, hi) != 0 {
                return true;
            }
            b = (w + 1) * 64;
        }
        false
    }

    /// Pins block `b`: used from now on, whatever frees it. Returns true
    /// if it was free (so `free()` dropped by one). `Invalid` out of range
    /// or without pin storage.
    pub fn pin(&mut self, b: u64) -> Result<bool, Error> {
        if b >= self.nr_blocks {
            return Err(Error::Invalid);
        }
        let (w, m) = (
            usize::try_from(b / 64).map_err(|_| Error::Invalid)?,
            1u64 << (b % 64),
        );
        let pin = self.pins.get_mut(w).ok_or(Error::Invalid)?;
        *pin |= m;
        let word = self.words.get_mut(w).ok_or(Error::Invalid)?;
        let was_free = *word & m == 0;
        if was_free {
            *word |= m;
            self.used = self.used.saturating_add(1);
        }
        Ok(was_free)
    }

    /// Pinned blocks, lowest first, from `from` on.
    pub fn next_pinned(&self, from: u64) -> Option<u64> {
        let mut b = from;
        while b < self.nr_blocks {
            let w = b / 64;
            let hits = self.pin_word(w) & bits(b % 64, 64);
            if hits != 0 {
                let p = w * 64 + u64::from(hits.trailing_zeros());
                return (p < self.nr_blocks).then_some(p);
            }
            b = (w + 1) * 64;
        }
        None
    }

    /// Pin word `w` (no storage: nothing pinned).
    fn pin_word(&self, w: u64) -> u64 {
        usize::try_from(w)
            .ok()
            .and_then(|w| self.pins.get(w))
            .copied()
            .unwrap_or(0)
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
        self.nr_blocks.saturating_sub(self.used)
    }

    /// Word `w`; a word the storage lacks (never, by construction) reads
    /// as all used, so it is never handed out.
    fn word(&self, w: u64) -> u64 {
        usize::try_from(w)
            .ok()
            .and_then(|w| self.words.get(w))
            .copied()
            .unwrap_or(!0)
    }

    /// True if block `b` is in use (out-of-range blocks count as used).
    pub fn is_used(&self, b: u64) -> bool {
        if b >= self.nr_blocks {
            return true;
        }
        self.word(b / 64) & (1 << (b % 64)) != 0
    }

    /// The lowest block of `[start, end)` whose bit is `used`, a word at a
    /// time.
    fn first_in(&self, start: u64, end: u64, used: bool) -> Option<u64> {
        if start >= end {
            return None;
        }
        let last = (end - 1) / 64;
        let mut w = start / 64;
        let mut lo = start % 64;
        loop {
            let hi = if w == last { (end - 1) % 64 + 1 } else { 64 };
            let word = if used { self.word(w) } else { !self.word(w) };
            let hits = word & bits(lo, hi);
            if hits != 0 {
                return Some(w * 64 + u64::from(hits.trailing_zeros()));
            }
            if w == last {
                return None;
            }
            w += 1;
            lo = 0;
        }
    }

    /// The highest used block of `[start, end)`, a word at a time.
    fn last_used_in(&self, start: u64, end: u64) -> Option<u64> {
        if start >= end {
            return None;
        }
        let first = start / 64;
        let mut w = (end - 1) / 64;
        let mut hi = (end - 1) % 64 + 1;
        loop {
            let lo = if w == first { start % 64 } else { 0 };
            let hits = self.word(w) & bits(lo, hi);
            if hits != 0 {
                return Some(w * 64 + 63 - u64::from(hits.leading_zeros()));
            }
            if w == first {
                return None;
            }
            w -= 1;
            hi = 64;
        }
    }

    /// Sets or clears the bits of `[start, end)`, a word at a time.
    fn fill(&mut self, start: u64, end: u64, used: bool) {
        let mut b = start;
        while b < end {
            let w = b / 64;
            let hi = (end - w * 64).min(64);
            let m = bits(b % 64, hi);
            if let Some(word) = usize::try_from(w).ok().and_then(|w| self.words.get_mut(w)) {
                if used {
                    *word |= m;
                } else {
                    *word &= !m;
                }
            }
            b = (w + 1) * 64;
        }
    }

    fn range_ok(&self, start: u64, count: u64) -> Result<u64, Error> {
        let end = start.checked_add(count).ok_or(Error::Invalid)?;
        if count == 0 || end > self.nr_blocks {
            return Err(Error::Invalid);
        }
        Ok(end)
    }

    /// Marks `[start, start + count)` used; fails without changing
    /// anything if any block is already used (an overlap, the lowest one
    /// reported).
    pub fn mark_used(&mut self, start: u64, count: u64) -> Result<(), Error> {
        let end = self.range_ok(start, count)?;
        if let Some(b) = self.first_in(start, end, true) {
            return Err(Error::Overlap(b));
        }
        self.fill(start, end, true);
        self.used = self.used.saturating_add(count);
        Ok(())
    }

    /// Frees `[start, start + count)` except its pinned blocks; fails
    /// without changing anything if any block is already free (a double
    /// free, the lowest one reported).
    pub fn mark_free(&mut self, start: u64, count: u64) -> Result<(), Error> {
        let end = self.range_ok(start, count)?;
        if let Some(b) = self.first_in(start, end, false) {
            return Err(Error::DoubleFree(b));
        }
        let mut b = start;
        while b < end {
            let w = b / 64;
            let hi = (end - w * 64).min(64);
            let m = bits(b % 64, hi) & !self.pin_word(w);
            if let Some(word) = usize::try_from(w).ok().and_then(|w| self.words.get_mut(w)) {
                *word &= !m;
                self.used = self.used.saturating_sub(u64::from(m.count_ones()));
            }
            b = (w + 1) * 64;
        }
        Ok(())
    }

    /// Finds `count` free blocks starting at a multiple of `align` blocks
    /// (first fit), without marking them. Skips used words whole, then
    /// checks each candidate window from its end, jumping past the last
    /// used block it finds.
    pub fn find_free(&self, count: u64, align: u64) -> Option<u64> {
        if count == 0 || align == 0 || count > self.free() {
            return None;
        }
        let mut start = 0u64;
        loop {
            // No fit can start on a used block: skip to a free one.
            let free = self.first_in(start, self.nr_blocks, false)?;
            start = free.div_ceil(align).checked_mul(align)?;
            let end = start.checked_add(count)?;
            if end > self.nr_blocks {
                return None;
            }
            match self.last_used_in(start, end) {
                None => return Some(start),
                // Skip past the used block, to the next aligned start.
                Some(used) => start = (used + 1).div_ceil(align).checked_mul(align)?,
            }
        }
    }

    /// True if the aligned 1 GiB unit `u` is wholly free.
    fn unit_free(&self, u: u64) -> bool {
        const WORDS: u64 = HUGE_BLOCKS / 64;
        (u * WORDS..(u + 1) * WORDS).all(|w| self.word(w) == 0)
    }

    /// Allocates the largest run available up to `want` blocks, preferring
    /// whole 1 GiB units when `want` covers one (so the fault handler can
    /// map PUDs): the most aligned free units up to `want`, first fit;
    /// then the longest free run otherwise, first fit, capped at `want`.
    /// Returns `(start, count)`. One pass over the bitmap words.
    pub fn alloc_run(&mut self, want: u64) -> Result<(u64, u64), Error> {
        if want == 0 {
            return Err(Error::Invalid);
        }
        if self.free() == 0 {
            return Err(Error::NoSpace);
        }
        if want >= HUGE_BLOCKS {
            let want_units = want / HUGE_BLOCKS;
            // The first run of free units reaching the longest (capped)
            // length: where a first-fit search for that many units lands.
            let (mut best_start, mut best_len) = (0, 0);
            let mut run = (0, 0);
            for u in 0..self.nr_blocks / HUGE_BLOCKS {
                if !self.unit_free(u) {
                    run = (u + 1, 0);
                    continue;
                }
                run.1 += 1;
                let len = run.1.min(want_units);
                if len > best_len {
                    (best_start, best_len) = (run.0, len);
                    if best_len == want_units {
                        break;
                    }
                }
            }
            if best_len > 0 {
                let (start, count) = (best_start * HUGE_BLOCKS, best_len * HUGE_BLOCKS);
                self.mark_used(start, count)?;
                return Ok((start, count));
            }
        }
        // First fit of the longest free run, capped at `want`.
        let (mut best_start, mut best_len) = (0, 0);
        let mut b = 0;
        while let Some(start) = self.first_in(b, self.nr_blocks, false) {
            let cap = start.saturating_add(want).min(self.nr_blocks);
            let end = self.first_in(start, cap, true).unwrap_or(cap);
            if end - start > best_len {
                best_start = start;
                best_len = end - start;
                if best_len == want {
                    break;
                }
            }
            b = end;
        }
        self.mark_used(best_start, best_len)?;
        Ok((best_start, best_len))
    }
}

// Whole 1 GiB units are whole bitmap words.
const _: () = assert!(HUGE_BLOCKS % 64 == 0);

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
    fn resume_keeps_the_count() {
        let mut w = [0u64; 2];
        let used = {
            let mut bm = BlockBitmap::new(&mut w, 100).unwrap();
            bm.mark_used(60, 10).unwrap();
            bm.used()
        };
        let mut bm = BlockBitmap::resume(&mut w, 100, used).unwrap();
        assert_eq!(bm.free(), 90);
        bm.mark_free(60, 10).unwrap();
        assert_eq!(bm.used(), 0);
        assert!(BlockBitmap::resume(&mut w, 100, 101).is_err());
        assert!(BlockBitmap::resume(&mut w, 129, 0).is_err());
    }

    #[test]
    fn pinned_blocks_stay_used() {
        let (mut w, mut p) = ([0u64; 3], [0u64; 3]);
        let mut bm = BlockBitmap::new(&mut w, 150)
            .unwrap()
            .with_pins(&mut p)
            .unwrap();
        bm.mark_used(60, 10).unwrap();
        assert_eq!(bm.pin(65), Ok(false));
        assert_eq!(bm.pin(140), Ok(true));
        assert_eq!(bm.pin(150), Err(Error::Invalid));
        assert_eq!(bm.used(), 11);
        bm.mark_free(60, 10).unwrap();
        assert_eq!(bm.used(), 2);
        assert!(bm.is_used(65) && !bm.is_used(64) && !bm.is_used(66));
        assert!(bm.any_pinned(0, 66) && !bm.any_pinned(66, 74));
        assert_eq!(bm.next_pinned(0), Some(65));
        assert_eq!(bm.next_pinned(66), Some(140));
        assert_eq!(bm.next_pinned(141), None);
        // A pinned block is never found free.
        assert_eq!(bm.find_free(70, 1), Some(66));
        assert_eq!(bm.find_free(75, 1), None);
        assert_eq!(bm.mark_free(65, 1), Ok(()));
        assert!(bm.is_used(65));
        // Without pin storage nothing can be pinned.
        let mut w2 = [0u64; 1];
        let mut plain = BlockBitmap::new(&mut w2, 10).unwrap();
        assert_eq!(plain.pin(3), Err(Error::Invalid));
        assert!(!plain.is_used(3));
    }

    #[test]
    fn too_small_storage() {
        let mut w = [0u64; 1];
        assert!(BlockBitmap::new(&mut w, 65).is_err());
    }
}
