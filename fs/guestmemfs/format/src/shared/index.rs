// SPDX-License-Identifier: GPL-2.0-only
//! In-memory index of a metadata image, so that no operation scans the
//! inode or extent table.
//!
//! The index is not part of the handed-over format: [`super::validate::contents`]
//! builds it while it checks a handover (reading only the records up to
//! the superblock's high-water marks), [`super::meta::format`] builds it
//! for an empty filesystem, and every change [`super::meta::Meta`] makes
//! keeps it exact. It holds:
//!
//! - one in-use bit per inode record and per extent record, valid up to
//!   the high-water marks (words above them are never read: they are
//!   cleared when a mark rises into them), searched a word at a time;
//! - a name table: open addressing with linear probing and backward-shift
//!   deletion, whose slots hold inode numbers (0 = empty), with the high
//!   bits of the key's hash above the bits an inode number needs (a tag:
//!   a probe reads an inode record only when the tags match). The key is
//!   a keyed hash (SipHash-1-3, seeded per boot) of the parent and the
//!   name; equality is checked against the inode record itself, so
//!   collisions cost time only, and a seed no user knows keeps crafted
//!   names from piling up in one probe run. Its active capacity is a
//!   power of two that doubles (rebuilt from the records) before the load
//!   passes 1/2, so validating a handover clears a table sized by what is
//!   in use, not by the region;
//! - a child count per inode (linked entries whose parent it is);
//! - counters ([`IndexCounters`], a small plain struct the caller keeps
//!   between calls): records in use, high-water marks, lowest-free hints.
//!
//! Storage is one caller-provided `u64` slice (the kernel allocates it
//! with `KVVec`) covering a *capacity* of inode records: the bitmaps,
//! child counts and name table up to it (about 21 bytes per record), plus
//! one bit per extent record. It is sized by what is in use, not by the
//! tables, so that adopting a handover does not allocate (and clear) in
//! proportion to the region: [`IndexSizes::for_image`] gives twice the
//! handover's inode high-water mark, [`IndexSizes::initial`] a small start
//! for `format`. Before each operation the caller asks
//! [`IndexSizes::to_grow`] whether one more inode record would not fit,
//! and if so moves the index into storage of twice the capacity with
//! [`Index::grow_into`] (a copy of what is in use: amortized O(1) per
//! inode created). [`Index::new`] only splits the storage, so building a
//! `Meta` per call is O(1).

use super::layout::*;
use super::Error;

/// Smallest active capacity of the name table.
const MIN_NAME_SLOTS: u64 = 64;

/// Smallest capacity, in inode records, of index storage.
pub const MIN_CAPACITY: u64 = 64;

/// How the storage words of a capacity are split.
#[derive(Debug, Clone, Copy)]
struct Parts {
    inode_words: u64,
    extent_words: u64,
    child_words: u64,
    name_slots: u64,
}

impl Parts {
    fn of(extent_count: u64, capacity: u64) -> Option<Parts> {
        let name_slots = capacity
            .checked_mul(2)?
            .checked_next_power_of_two()?
            .max(MIN_NAME_SLOTS);
        Some(Parts {
            inode_words: capacity.div_ceil(64),
            extent_words: extent_count.div_ceil(64),
            // Two u32 counts per word.
            child_words: capacity.div_ceil(2),
            name_slots,
        })
    }

    fn words(&self) -> Option<u64> {
        self.inode_words
            .checked_add(self.extent_words)?
            .checked_add(self.child_words)?
            .checked_add(self.name_slots)
    }
}

/// Words of storage for `capacity` inode records.
fn words_for(extent_count: u64, capacity: u64) -> Option<u64> {
    Parts::of(extent_count, capacity)?.words()
}

/// The largest capacity (at most `inode_count`) that `len` words hold.
fn fit(inode_count: u64, extent_count: u64, len: usize) -> Option<u64> {
    let len = len as u64;
    let fits = |c: u64| words_for(extent_count, c).is_some_and(|w| w <= len);
    if !fits(0) {
        return None;
    }
    // Words grow with the capacity: binary search.
    let (mut lo, mut hi) = (0u64, inode_count);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// Storage for an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSizes {
    /// `u64` words to allocate for [`Index::new`] (`usize::MAX` if too
    /// large for this machine).
    pub words: usize,
    /// Inode records they cover.
    pub capacity: u64,
}

impl IndexSizes {
    /// Storage covering `capacity` inode records of `geo` (at most all of
    /// them): 1 bit and 4 bytes per record, 8 bytes per name slot (a power
    /// of two of at least twice the capacity), 1 bit per extent record.
    pub fn for_capacity(geo: &Geometry, capacity: u64) -> IndexSizes {
        let capacity = capacity.min(geo.inode_count);
        IndexSizes {
            words: words_for(geo.extent_count, capacity)
                .and_then(|w| usize::try_from(w).ok())
                .unwrap_or(usize::MAX),
            capacity,
        }
    }

    /// Storage for every inode record of `geo` (about 21 bytes each, 1/24
    /// of the inode table): never needs to grow.
    pub fn for_geometry(geo: &Geometry) -> IndexSizes {
        IndexSizes::for_capacity(geo, geo.inode_count)
    }

    /// Storage to start an empty filesystem with ([`super::meta::format`]).
    pub fn initial(geo: &Geometry) -> IndexSizes {
        IndexSizes::for_capacity(geo, MIN_CAPACITY)
    }

    /// Storage to adopt the image whose superblock is `buf`
    /// ([`super::validate::contents`]): twice its inode high-water mark
    /// (a version 1 image, without marks: every record).
    pub fn for_image(buf: &[u8], geo: &Geometry) -> Result<IndexSizes, Error> {
        let lim = super::validate::limits(buf, geo)?;
        let capacity = lim.inodes.saturating_mul(2).max(MIN_CAPACITY);
        Ok(IndexSizes::for_capacity(geo, capacity))
    }

    /// Larger storage if the next inode record to allocate would not fit
    /// (every record up to the capacity in use, and more in the table):
    /// twice the capacity. The caller moves the index there with
    /// [`Index::grow_into`] before the operation.
    pub fn to_grow(geo: &Geometry, c: &IndexCounters) -> Option<IndexSizes> {
        let full = c.ready
            && c.inode_hwm >= c.inode_cap
            && c.inodes_used >= c.inode_hwm
            && c.inode_cap < geo.inode_count;
        full.then(|| IndexSizes::for_capacity(geo, c.inode_cap.saturating_mul(2).max(2)))
    }
}

/// The index's small state, kept by the caller between operations (next
/// to the storage words) and passed to [`Index::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexCounters {
    seed: [u64; 2],
    ready: bool,
    inode_count: u64,
    extent_count: u64,
    inodes_used: u64,
    extents_used: u64,
    pub(crate) inode_hwm: u64,
    pub(crate) extent_hwm: u64,
    /// Every inode id in `2..inode_hint` is in use.
    inode_hint: u64,
    /// Every extent id in `1..extent_hint` is in use.
    extent_hint: u64,
    name_cap: u64,
    names: u64,
    /// Inode records the storage covers.
    inode_cap: u64,
    /// Low bits of a name slot that hold the inode number; the others
    /// hold the hash's tag.
    ino_mask: u64,
    /// The superblock's version or high-water marks differ from the
    /// index's (a version 1 image, or marks lowered at adoption): the next
    /// change writes them first.
    pub(crate) sync_superblock: bool,
}

impl IndexCounters {
    /// Counters for an index not built yet. `seed` keys the name hash:
    /// random at every boot in the kernel (`get_random_u64`), fixed in
    /// tests. [`super::meta::format`] or [`super::validate::contents`]
    /// builds the index; until then [`super::meta::Meta::new`] refuses it.
    pub const fn new(seed: [u64; 2]) -> IndexCounters {
        IndexCounters {
            seed,
            ready: false,
            inode_count: 0,
            extent_count: 0,
            inodes_used: 0,
            extents_used: 0,
            inode_hwm: 0,
            extent_hwm: 0,
            inode_hint: 2,
            extent_hint: 1,
            name_cap: 0,
            names: 0,
            inode_cap: 0,
            ino_mask: !0,
            sync_superblock: false,
        }
    }

    /// True once built by `format` or a successful validation.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Forgets the index built (keeping the seed), before building another
    /// one in new storage (a `format` over a filesystem in use): the next
    /// [`Index::new`] takes the capacity of the storage it is given.
    pub fn discard(&mut self) {
        *self = IndexCounters::new(self.seed);
    }

    /// Inode records in use.
    pub fn inodes_used(&self) -> u64 {
        self.inodes_used
    }

    /// Extent records in use.
    pub fn extents_used(&self) -> u64 {
        self.extents_used
    }

    /// Highest inode record id in use since format (or since adoption,
    /// which lowers it to the highest in use); every record above is free.
    pub fn inode_hwm(&self) -> u64 {
        self.inode_hwm
    }

    /// The same for extent records.
    pub fn extent_hwm(&self) -> u64 {
        self.extent_hwm
    }

    /// Entries (linked inodes other than the root) in the name table.
    pub fn names(&self) -> u64 {
        self.names
    }

    /// Active slots of the name table.
    pub fn name_capacity(&self) -> u64 {
        self.name_cap
    }

    /// Inode records the index storage covers.
    pub fn capacity(&self) -> u64 {
        self.inode_cap
    }
}

/// The index: storage words split into its parts, and the counters.
pub struct Index<'a> {
    inodes: &'a mut [u64],
    extents: &'a mut [u64],
    children: &'a mut [u64],
    names: &'a mut [u64],
    pub(crate) c: &'a mut IndexCounters,
}

fn split(words: &mut [u64], n: u64) -> Result<(&mut [u64], &mut [u64]), Error> {
    let n = usize::try_from(n).map_err(|_| Error::Invalid)?;
    words.split_at_mut_checked(n).ok_or(Error::Invalid)
}

/// Bit `i` (0-based) of a bitmap.
fn bit(words: &[u64], i: u64) -> bool {
    usize::try_from(i / 64)
        .ok()
        .and_then(|w| words.get(w))
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(words: &mut [u64], i: u64, on: bool) -> Result<(), Error> {
    let w = usize::try_from(i / 64)
        .ok()
        .and_then(|w| words.get_mut(w))
        .ok_or(Error::Invalid)?;
    if on {
        *w |= 1 << (i % 64);
    } else {
        *w &= !(1 << (i % 64));
    }
    Ok(())
}

/// Clears words `[from, to)` (indices) of a bitmap.
fn clear_words(words: &mut [u64], from: u64, to: u64) -> Result<(), Error> {
    let from = usize::try_from(from).map_err(|_| Error::Invalid)?;
    let to = usize::try_from(to).map_err(|_| Error::Invalid)?;
    if from < to {
        words
            .get_mut(from..to)
            .ok_or(Error::Invalid)?
            .iter_mut()
            .for_each(|w| *w = 0);
    }
    Ok(())
}

/// The first set bit at or after `from` and below `limit` (0-based),
/// skipping zero words.
fn next_set(words: &[u64], from: u64, limit: u64) -> Option<u64> {
    if from >= limit {
        return None;
    }
    let mut w = from / 64;
    let mut word = *words.get(usize::try_from(w).ok()?)? & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            let b = w * 64 + u64::from(word.trailing_zeros());
            return (b < limit).then_some(b);
        }
        w += 1;
        if w * 64 >= limit {
            return None;
        }
        word = *words.get(usize::try_from(w).ok()?)?;
    }
}

/// The first clear bit at or after `from` and below `limit`, skipping full
/// words.
fn next_clear(words: &[u64], from: u64, limit: u64) -> Option<u64> {
    if from >= limit {
        return None;
    }
    let mut w = from / 64;
    // Bits below `from` count as set.
    let mut word = *words.get(usize::try_from(w).ok()?)? | !(!0u64 << (from % 64));
    loop {
        if word != !0 {
            let b = w * 64 + u64::from(word.trailing_ones());
            return (b < limit).then_some(b);
        }
        w += 1;
        if w * 64 >= limit {
            return None;
        }
        word = *words.get(usize::try_from(w).ok()?)?;
    }
}

/// The parent and name of inode record `rec`, if it is a linked entry
/// (not the root, at least one link).
pub(crate) fn entry_key(ino: u64, rec: &[u8]) -> Result<Option<(u64, &[u8])>, Error> {
    if ino == ROOT_INO || get_u32(rec, ino::NLINK)? == 0 {
        return Ok(None);
    }
    let len = get_u32(rec, ino::NAME_LEN)? as usize;
    if len > NAME_MAX {
        return Err(Error::Invalid);
    }
    let name = rec
        .get(ino::NAME..ino::NAME + len)
        .ok_or(Error::Truncated)?;
    Ok(Some((get_u64(rec, ino::PARENT)?, name)))
}

impl<'a> Index<'a> {
    /// Splits `words` into the index of `geo`, with `counters`. A built
    /// index keeps the capacity it has (O(1): no word is read); an unbuilt
    /// one takes the largest that `words` holds (at least
    /// [`IndexSizes::words`] of the capacity wanted).
    pub fn new(
        words: &'a mut [u64],
        counters: &'a mut IndexCounters,
        geo: &Geometry,
    ) -> Result<Index<'a>, Error> {
        let cap = if counters.ready {
            counters.inode_cap
        } else {
            fit(geo.inode_count, geo.extent_count, words.len()).ok_or(Error::Invalid)?
        };
        let p = Parts::of(geo.extent_count, cap).ok_or(Error::Invalid)?;
        counters.inode_cap = cap;
        let (inodes, rest) = split(words, p.inode_words)?;
        let (extents, rest) = split(rest, p.extent_words)?;
        let (children, rest) = split(rest, p.child_words)?;
        let (names, _) = split(rest, p.name_slots)?;
        Ok(Index {
            inodes,
            extents,
            children,
            names,
            c: counters,
        })
    }

    /// The counters.
    pub fn counters(&self) -> &IndexCounters {
        self.c
    }

    /// The same index, borrowed for a shorter time.
    pub fn reborrow(&mut self) -> Index<'_> {
        Index {
            inodes: self.inodes,
            extents: self.extents,
            children: self.children,
            names: self.names,
            c: self.c,
        }
    }

    /// Moves a built index into `words`, larger storage (from
    /// [`IndexSizes::to_grow`]), which takes the largest capacity it
    /// holds; the old storage can then be freed. Copies what is in use
    /// (bitmaps and child counts up to the high-water marks, the active
    /// name table): O(capacity) once per doubling. Nothing changes on
    /// error.
    pub fn grow_into(self, words: &mut [u64]) -> Result<(), Error> {
        let c = self.c;
        if !c.ready {
            return Err(Error::Invalid);
        }
        let cap = fit(c.inode_count, c.extent_count, words.len()).ok_or(Error::Invalid)?;
        if cap < c.inode_cap {
            return Err(Error::Invalid);
        }
        let p = Parts::of(c.extent_count, cap).ok_or(Error::Invalid)?;
        let (inodes, rest) = split(words, p.inode_words)?;
        let (extents, rest) = split(rest, p.extent_words)?;
        let (children, rest) = split(rest, p.child_words)?;
        let (names, _) = split(rest, p.name_slots)?;
        let copy = |to: &mut [u64], from: &[u64], n: u64| -> Result<(), Error> {
            let n = usize::try_from(n).map_err(|_| Error::Invalid)?;
            to.get_mut(..n)
                .ok_or(Error::Invalid)?
                .copy_from_slice(from.get(..n).ok_or(Error::Invalid)?);
            Ok(())
        };
        copy(inodes, self.inodes, c.inode_hwm.div_ceil(64))?;
        copy(extents, self.extents, c.extent_hwm.div_ceil(64))?;
        copy(children, self.children, c.inode_hwm.div_ceil(2))?;
        // The active table keeps its size, so its slots keep their places.
        copy(names, self.names, c.name_cap)?;
        c.inode_cap = cap;
        Ok(())
    }

    /// Checks that the index was built for `geo` and is usable.
    pub(crate) fn check(&self, geo: &Geometry) -> Result<(), Error> {
        let c = &*self.c;
        let ok = c.ready
            && c.inode_count == geo.inode_count
            && c.extent_count == geo.extent_count
            && c.inode_cap <= geo.inode_count
            && c.inode_hwm <= c.inode_cap
            && c.extent_hwm <= geo.extent_count
            && c.name_cap.is_power_of_two()
            && c.name_cap <= self.names.len() as u64
            && c.ino_mask >= c.inode_count;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid)
        }
    }

    /// Starts building the index of `geo` with everything free and the
    /// high-water marks at `inodes` and `extents` records: clears the
    /// bitmaps and child counts up to them and a name table sized for
    /// that many entries. The index stays unusable until [`Index::finish`].
    /// `Invalid` if the storage's capacity is below `inodes`.
    pub(crate) fn reset(&mut self, geo: &Geometry, inodes: u64, extents: u64) -> Result<(), Error> {
        let cap = self.c.inode_cap;
        let p = Parts::of(geo.extent_count, cap).ok_or(Error::Invalid)?;
        let fits = |len: usize, want: u64| len as u64 >= want;
        if inodes > cap
            || cap > geo.inode_count
            || extents > geo.extent_count
            || !fits(self.inodes.len(), p.inode_words)
            || !fits(self.extents.len(), p.extent_words)
            || !fits(self.children.len(), p.child_words)
            || !fits(self.names.len(), p.name_slots)
        {
            return Err(Error::Invalid);
        }
        let seed = self.c.seed;
        *self.c = IndexCounters::new(seed);
        self.c.inode_cap = cap;
        self.c.inode_count = geo.inode_count;
        self.c.extent_count = geo.extent_count;
        let bits = 64 - geo.inode_count.leading_zeros();
        self.c.ino_mask = 1u64.checked_shl(bits).map_or(!0, |b| b - 1);
        clear_words(self.inodes, 0, inodes.div_ceil(64))?;
        clear_words(self.extents, 0, extents.div_ceil(64))?;
        clear_words(self.children, 0, inodes.div_ceil(2))?;
        let cap = inodes
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .clamp(MIN_NAME_SLOTS, p.name_slots);
        clear_words(self.names, 0, cap)?;
        self.c.name_cap = cap;
        self.c.inode_hwm = inodes;
        self.c.extent_hwm = extents;
        Ok(())
    }

    /// Ends a build: the high-water marks become the highest ids in use,
    /// `sync` says whether the superblock must be rewritten at the next
    /// change.
    pub(crate) fn finish(&mut self, inode_hwm: u64, extent_hwm: u64, sync: bool) {
        self.c.inode_hwm = inode_hwm;
        self.c.extent_hwm = extent_hwm;
        self.c.inode_hint = 2;
        self.c.extent_hint = 1;
        self.c.sync_superblock = sync;
        self.c.ready = true;
    }

    /// Marks the index unusable (an inconsistency was found).
    pub(crate) fn poison(&mut self) {
        self.c.ready = false;
    }

    /// True if inode `ino` is in use.
    pub(crate) fn inode_used(&self, ino: u64) -> bool {
        ino != 0 && ino <= self.c.inode_hwm && bit(self.inodes, ino - 1)
    }

    /// True if extent `id` is in use.
    pub(crate) fn extent_used(&self, id: u64) -> bool {
        id != 0 && id <= self.c.extent_hwm && bit(self.extents, id - 1)
    }

    /// The first inode in use after `ino`.
    pub(crate) fn next_inode(&self, ino: u64) -> Option<u64> {
        next_set(self.inodes, ino, self.c.inode_hwm).map(|b| b + 1)
    }

    /// The lowest free inode id (the root's excepted), without taking it.
    pub(crate) fn lowest_free_inode(&self) -> Option<u64> {
        let from = self.c.inode_hint.max(2);
        match next_clear(self.inodes, from - 1, self.c.inode_hwm) {
            Some(b) => Some(b + 1),
            None => {
                let next = self.c.inode_hwm.max(1).checked_add(1)?;
                (next <= self.c.inode_cap).then_some(next)
            }
        }
    }

    /// The lowest free extent id, without taking it.
    pub(crate) fn lowest_free_extent(&self) -> Option<u64> {
        let from = self.c.extent_hint.max(1);
        match next_clear(self.extents, from - 1, self.c.extent_hwm) {
            Some(b) => Some(b + 1),
            None => {
                let next = self.c.extent_hwm.checked_add(1)?;
                (next <= self.c.extent_count).then_some(next)
            }
        }
    }

    /// Raises the inode high-water mark to `ino`, clearing the bitmap
    /// words and child counts it grows into. Returns true if it rose.
    pub(crate) fn raise_inode_hwm(&mut self, ino: u64) -> Result<bool, Error> {
        let old = self.c.inode_hwm;
        if ino <= old {
            return Ok(false);
        }
        if ino > self.c.inode_cap {
            return Err(Error::NoInodes);
        }
        clear_words(self.inodes, old.div_ceil(64), ino.div_ceil(64))?;
        clear_words(self.children, old.div_ceil(2), ino.div_ceil(2))?;
        self.c.inode_hwm = ino;
        Ok(true)
    }

    /// Raises the extent high-water mark to `id`. Returns true if it rose.
    pub(crate) fn raise_extent_hwm(&mut self, id: u64) -> Result<bool, Error> {
        let old = self.c.extent_hwm;
        if id <= old {
            return Ok(false);
        }
        if id > self.c.extent_count {
            return Err(Error::Invalid);
        }
        clear_words(self.extents, old.div_ceil(64), id.div_ceil(64))?;
        self.c.extent_hwm = id;
        Ok(true)
    }

    /// Marks inode `ino` (at or below the high-water mark) in use or free.
    pub(crate) fn set_inode(&mut self, ino: u64, used: bool) -> Result<(), Error> {
        if ino == 0 || ino > self.c.inode_hwm {
            return Err(Error::Invalid);
        }
        if self.inode_used(ino) == used {
            return Ok(());
        }
        set_bit(self.inodes, ino - 1, used)?;
        if used {
            self.c.inodes_used += 1;
            if ino == self.c.inode_hint {
                self.c.inode_hint = ino + 1;
            }
        } else {
            self.c.inodes_used = self.c.inodes_used.saturating_sub(1);
            self.c.inode_hint = self.c.inode_hint.min(ino);
        }
        Ok(())
    }

    /// Marks extent `id` (at or below the high-water mark) in use or free.
    pub(crate) fn set_extent(&mut self, id: u64, used: bool) -> Result<(), Error> {
        if id == 0 || id > self.c.extent_hwm {
            return Err(Error::Invalid);
        }
        if self.extent_used(id) == used {
            return Ok(());
        }
        set_bit(self.extents, id - 1, used)?;
        if used {
            self.c.extents_used += 1;
            if id == self.c.extent_hint {
                self.c.extent_hint = id + 1;
            }
        } else {
            self.c.extents_used = self.c.extents_used.saturating_sub(1);
            self.c.extent_hint = self.c.extent_hint.min(id);
        }
        Ok(())
    }

    /// Linked entries whose parent is `ino` (0 outside the table).
    pub(crate) fn child_count(&self, ino: u64) -> u32 {
        if ino == 0 || ino > self.c.inode_hwm {
            return 0;
        }
        let i = ino - 1;
        usize::try_from(i / 2)
            .ok()
            .and_then(|w| self.children.get(w))
            .map_or(0, |w| (w >> ((i % 2) * 32)) as u32)
    }

    fn set_child_count(&mut self, ino: u64, n: u32) -> Result<(), Error> {
        if ino == 0 || ino > self.c.inode_hwm {
            return Err(Error::Invalid);
        }
        let i = ino - 1;
        let shift = (i % 2) * 32;
        let w = usize::try_from(i / 2)
            .ok()
            .and_then(|w| self.children.get_mut(w))
            .ok_or(Error::Invalid)?;
        *w = (*w & !(0xffff_ffff << shift)) | (u64::from(n) << shift);
        Ok(())
    }

    /// Zeroes the child count of `ino` (a record being allocated).
    pub(crate) fn reset_children(&mut self, ino: u64) -> Result<(), Error> {
        self.set_child_count(ino, 0)
    }

    /// Adds one child to `parent`; `NoSpace` when the count is full.
    pub(crate) fn add_child(&mut self, parent: u64) -> Result<(), Error> {
        let n = self
            .child_count(parent)
            .checked_add(1)
            .ok_or(Error::NoSpace)?;
        self.set_child_count(parent, n)
    }

    /// Removes one child from `parent`.
    pub(crate) fn remove_child(&mut self, parent: u64) -> Result<(), Error> {
        let n = self
            .child_count(parent)
            .checked_sub(1)
            .ok_or(Error::Invalid)?;
        self.set_child_count(parent, n)
    }

    fn mask(&self) -> usize {
        (self.c.name_cap as usize).wrapping_sub(1)
    }

    /// The first slot to probe for an entry, and its tag.
    fn home(&self, parent: u64, name: &[u8]) -> (usize, u64) {
        let h = name_hash(self.c.seed, parent, name);
        ((h as usize) & self.mask(), h & !self.c.ino_mask)
    }

    /// True if inode `ino`'s record holds the entry `parent`/`name`.
    fn holds(&self, buf: &[u8], ino: u64, parent: u64, name: &[u8]) -> Result<bool, Error> {
        let rec = inode_record(buf, self.c.inode_count, ino)?;
        Ok(get_u64(rec, ino::PARENT)? == parent
            && get_u32(rec, ino::NAME_LEN)? as usize == name.len()
            && rec.get(ino::NAME..ino::NAME + name.len()) == Some(name))
    }

    /// The inode whose entry is `parent`/`name`, reading candidate
    /// records from the metadata `buf`.
    pub(crate) fn find(&self, buf: &[u8], parent: u64, name: &[u8]) -> Result<Option<u64>, Error> {
        let (mut i, tag) = self.home(parent, name);
        for _ in 0..self.c.name_cap {
            let slot = *self.names.get(i).ok_or(Error::Invalid)?;
            if slot == 0 {
                return Ok(None);
            }
            let ino = slot & self.c.ino_mask;
            if slot & !self.c.ino_mask == tag && self.holds(buf, ino, parent, name)? {
                return Ok(Some(ino));
            }
            i = (i + 1) & self.mask();
        }
        Ok(None)
    }

    /// Inserts inode `ino` under `parent`/`name`, which must be absent;
    /// call [`Index::reserve`] first.
    pub(crate) fn insert(&mut self, ino: u64, parent: u64, name: &[u8]) -> Result<(), Error> {
        if ino == 0 || ino & !self.c.ino_mask != 0 {
            return Err(Error::Invalid);
        }
        let (mut i, tag) = self.home(parent, name);
        for _ in 0..self.c.name_cap {
            let slot = self.names.get_mut(i).ok_or(Error::Invalid)?;
            if *slot == 0 {
                *slot = tag | ino;
                self.c.names += 1;
                return Ok(());
            }
            i = (i + 1) & self.mask();
        }
        Err(Error::NoInodes)
    }

    /// Removes inode `ino`, stored under `parent`/`name`: backward-shift
    /// deletion (no tombstones), reading the moved entries' keys from
    /// their records in `buf`.
    pub(crate) fn remove(
        &mut self,
        buf: &[u8],
        ino: u64,
        parent: u64,
        name: &[u8],
    ) -> Result<(), Error> {
        let mask = self.mask();
        let (mut hole, tag) = self.home(parent, name);
        let mut found = false;
        for _ in 0..self.c.name_cap {
            match *self.names.get(hole).ok_or(Error::Invalid)? {
                0 => break,
                x if x == tag | ino => {
                    found = true;
                    break;
                }
                _ => hole = (hole + 1) & mask,
            }
        }
        if !found {
            return Err(Error::Invalid);
        }
        let mut j = hole;
        for _ in 0..self.c.name_cap {
            j = (j + 1) & mask;
            let other = *self.names.get(j).ok_or(Error::Invalid)?;
            if other == 0 {
                break;
            }
            let other_ino = other & self.c.ino_mask;
            let rec = inode_record(buf, self.c.inode_count, other_ino)?;
            let (p, n) = entry_key(other_ino, rec)?.ok_or(Error::Invalid)?;
            let (home, _) = self.home(p, n);
            // `other` may fill the hole if its probe run passes the hole:
            // the hole lies between its home and `j`.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                *self.names.get_mut(hole).ok_or(Error::Invalid)? = other;
                hole = j;
            }
        }
        *self.names.get_mut(hole).ok_or(Error::Invalid)? = 0;
        self.c.names = self.c.names.saturating_sub(1);
        Ok(())
    }

    /// Makes room for one more name: doubles the active table (rebuilt
    /// from the inode records in `buf`) before the load passes 1/2.
    pub(crate) fn reserve(&mut self, buf: &[u8]) -> Result<(), Error> {
        let need = self.c.names.saturating_add(1).saturating_mul(2);
        let max = self.names.len() as u64;
        let mut cap = self.c.name_cap;
        while cap < need && cap.saturating_mul(2) <= max {
            cap *= 2;
        }
        if cap == self.c.name_cap {
            // At the largest table (twice the inode count) the load stays
            // at most 1/2; never let it fill.
            return if self.c.names.saturating_add(1) < cap {
                Ok(())
            } else {
                Err(Error::NoInodes)
            };
        }
        let res = self.rebuild(buf, cap);
        if res.is_err() {
            self.poison();
        }
        res
    }

    fn rebuild(&mut self, buf: &[u8], cap: u64) -> Result<(), Error> {
        clear_words(self.names, 0, cap)?;
        self.c.name_cap = cap;
        self.c.names = 0;
        let mut ino = 0;
        while let Some(next) = self.next_inode(ino) {
            ino = next;
            let rec = inode_record(buf, self.c.inode_count, ino)?;
            if let Some((parent, name)) = entry_key(ino, rec)? {
                self.insert(ino, parent, name)?;
            }
        }
        Ok(())
    }
}

/// The name table's hash of an entry: SipHash-1-3 keyed with `seed` over
/// the parent (8 bytes, little endian) and the name.
pub(crate) fn name_hash(seed: [u64; 2], parent: u64, name: &[u8]) -> u64 {
    siphash::<1, 3>(seed, parent, name)
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-C-D of `parent` (little endian) followed by `tail`.
fn siphash<const C: usize, const D: usize>(key: [u64; 2], parent: u64, tail: &[u8]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let compress = |v: &mut [u64; 4], m: u64| {
        v[3] ^= m;
        for _ in 0..C {
            sip_round(v);
        }
        v[0] ^= m;
    };
    compress(&mut v, parent);
    let mut chunks = tail.chunks_exact(8);
    for chunk in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        compress(&mut v, u64::from_le_bytes(a));
    }
    let len = (8 + tail.len() as u64) & 0xff;
    let mut last = len << 56;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    compress(&mut v, last);
    v[2] ^= 0xff;
    for _ in 0..D {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Index storage from the heap, for the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    extern crate std;
    use super::super::bitmap::BlockBitmap;
    use super::super::validate::{self, Scratch, ScratchSizes};
    use super::*;
    use std::vec::Vec;

    /// Storage words and counters of one index.
    #[derive(Clone)]
    pub(crate) struct Store {
        words: Vec<u64>,
        counters: IndexCounters,
        geo: Geometry,
    }

    impl Store {
        /// Unbuilt storage for `geo`.
        pub(crate) fn new(geo: &Geometry) -> Store {
            Store {
                words: std::vec![0; IndexSizes::for_geometry(geo).words],
                counters: IndexCounters::new([0x5eed, 42]),
                geo: *geo,
            }
        }

        /// The index over this storage.
        pub(crate) fn index(&mut self) -> Index<'_> {
            Index::new(&mut self.words, &mut self.counters, &self.geo).unwrap()
        }

        /// Validates `buf` as the kernel adopts it; returns the index and
        /// the block bitmap's words.
        pub(crate) fn adopt(buf: &[u8], geo: &Geometry) -> (Store, Vec<u64>) {
            let mut st = Store::new(geo);
            let s = ScratchSizes::for_image(buf, geo).unwrap();
            let mut words = std::vec![0u64; s.block_words];
            let mut pins = std::vec![0u64; s.block_words];
            let mut marks = std::vec![0u8; s.inode_marks];
            let mut subdirs = std::vec![0u32; s.subdirs];
            let mut scratch = Scratch {
                inode_marks: &mut marks,
                subdirs: &mut subdirs,
                blocks: BlockBitmap::new(&mut words, geo.nr_blocks)
                    .and_then(|b| b.with_pins(&mut pins))
                    .unwrap(),
            };
            validate::contents(buf, geo, &mut scratch, &mut st.index()).unwrap();
            (st, words)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    #[test]
    #[allow(deprecated)]
    fn siphash_2_4_matches_core() {
        use core::hash::{Hasher, SipHasher};
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        let mut name = std::vec::Vec::new();
        for len in 0..40u8 {
            let parent = 0x1234_5678_9abc_def0u64.wrapping_mul(u64::from(len) + 1);
            let mut h = SipHasher::new_with_keys(key[0], key[1]);
            h.write(&parent.to_le_bytes());
            h.write(&name);
            assert_eq!(siphash::<2, 4>(key, parent, &name), h.finish(), "{len}");
            name.push(len.wrapping_mul(37));
        }
    }

    #[test]
    fn bit_searches_skip_words() {
        let mut w = [!0u64, !0, 0, 0b1000];
        assert_eq!(next_clear(&w, 0, 256), Some(128));
        assert_eq!(next_clear(&w, 5, 128), None);
        assert_eq!(next_set(&w, 64, 256), Some(64));
        assert_eq!(next_set(&w, 128, 256), Some(195));
        assert_eq!(next_set(&w, 128, 195), None);
        w[1] = !0 ^ (1 << 63);
        assert_eq!(next_clear(&w, 3, 256), Some(127));
        assert_eq!(next_clear(&w, 3, 127), None);
    }

    #[test]
    fn sizes_cover_the_parts() {
        let geo = Geometry::new(2 << 30, 2048).unwrap();
        let s = IndexSizes::for_geometry(&geo);
        // 2048 inodes: 32 words of bits, 16 of extent bits, 1024 of
        // child counts, 4096 name slots.
        assert_eq!(s.words, 32 + 16 + 1024 + 4096);
        assert_eq!(s.capacity, 2048);
        for cap in [0, 1, 63, 64, 65, 1000, 2047, 2048] {
            let s = IndexSizes::for_capacity(&geo, cap);
            assert!(fit(2048, 1024, s.words).unwrap() >= cap);
            assert!(fit(2048, 1024, s.words - 1).is_none_or(|c| c < cap));
            let mut w = std::vec![0u64; s.words];
            let mut c = IndexCounters::new([1, 2]);
            Index::new(&mut w, &mut c, &geo).unwrap();
            assert!(c.capacity() >= cap);
        }
        let mut w = std::vec![0u64; 16];
        let mut c = IndexCounters::new([1, 2]);
        assert!(Index::new(&mut w, &mut c, &geo).is_err());
    }
}
