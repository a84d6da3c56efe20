// SPDX-License-Identifier: GPL-2.0-only

//! The one guestmemfs volume: the region's metadata, mapped, and the
//! block allocator, behind one mutex; plus the C-callable entry points
//! the VFS glue (`vfs_glue.c`, `gmfs_abi.h`) uses. User-visible behaviour:
//! `docs/guestmemfs.md`.

use crate::format::{
    self, bitmap,
    fault::{self, Entry, Plan, Vma},
    holds::{self, Hold},
    layout::{Geometry, Time, BLOCK_SHIFT, BLOCK_SIZE, HUGE_BLOCKS, NAME_MAX, S_IFMT},
    meta::InodeData,
    validate::{self, Scratch, ScratchSizes},
    BadRecord, BlockBitmap, Corruption, Error as FmtError, Index, IndexCounters, IndexSizes, Meta,
};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use kernel::{
    alloc::{flags::__GFP_NOWARN, KVVec, KVec},
    ffi::{c_int, c_void},
    new_mutex,
    prelude::*,
    sync::Mutex,
};

extern "C" {
    fn guestmemfs_region_map(offset: u64, len: u64) -> *mut c_void;
    fn guestmemfs_region_unmap(addr: *mut c_void);
    fn guestmemfs_now(sec: *mut i64, nsec: *mut u32);
    fn guestmemfs_clock_ns() -> u64;
    fn guestmemfs_zero(offset: u64, len: u64) -> c_int;
}

/// Zeroes blocks before they join a file (`allocate_with`'s `prepare`).
fn zero_blocks(first: u64, count: u64) -> core::result::Result<(), FmtError> {
    // SAFETY: zeroes region memory that no file owns yet.
    // A failed temporary mapping is a kernel memory shortage, not a full
    // region: the fault handler answers VM_FAULT_OOM, fallocate ENOMEM.
    match unsafe { guestmemfs_zero(first << BLOCK_SHIFT, count << BLOCK_SHIFT) } {
        0 => Ok(()),
        _ => Err(FmtError::NoMemory),
    }
}

/// Why the filesystem cannot be used.
#[derive(Clone, Copy)]
enum State {
    /// No region was reserved (no `guestmemfs=` and no handover).
    NoRegion,
    /// Metadata valid and in use.
    Ready,
    /// The handed-over metadata failed validation; the region is left
    /// untouched until a mount asks for `reformat`.
    Refused(FmtError),
}

struct Inner {
    state: State,
    /// Set at kexec time: no metadata change may start any more.
    frozen: bool,
    /// The metadata blocks, mapped write-back (not via the direct map).
    meta: *mut u8,
    meta_len: usize,
    geo: Option<Geometry>,
    /// One bit per block; rebuilt from the extents after a kexec. kvmalloc:
    /// a TiB region needs more than kmalloc gives.
    bitmap: KVVec<u64>,
    /// One bit per block hit by a memory error: used for good (listed in
    /// the superblock, or in memory only when that was not possible).
    /// Sized for the region at install, whatever the state, so that an
    /// error is remembered also while the filesystem is refused, and
    /// kept by a reformat.
    pins: KVVec<u64>,
    /// A memory error hit the metadata blocks (in this kernel, or the
    /// previous one said so): no more metadata changes, no reformat (where
    /// the error is may be unknown), and the next kernel is told not to
    /// read them.
    meta_poisoned: bool,
    /// The superblock's generation while Ready (kept here so that the
    /// freeze never reads metadata that may hold a memory error).
    generation: u64,
    /// DMA holds (`format::holds`): file ranges an IOMMU maps, and the
    /// boot holds of the files the previous kernel flagged `DMA_HELD`.
    holds: KVec<Hold>,
    /// The previous kernel handed IOMMU mappings of the region over (a
    /// boot hold, or its locator said so even though the filesystem was
    /// refused): no reformat until `gmfs_rs_dma_handover_done`.
    handover_pending: bool,
    /// What the locator written at the freeze says about IOMMU mappings
    /// (said again if a memory error rewrites it afterwards).
    locator_dma_held: bool,
    /// Blocks in use in `bitmap`, kept so that the allocator is rebuilt
    /// per call in O(1) (`BlockBitmap::resume`), not by counting bits.
    blocks_used: u64,
    /// Storage of the metadata index (in-use bitmaps, name table, child
    /// counts): sized by the inodes in use, grown on demand by `meta()`.
    index_words: KVVec<u64>,
    /// The index's counters and its hash seed (random per boot).
    index: IndexCounters,
    /// Generation the previous kernel's locator named (0 on a cold
    /// boot): handed on again while the filesystem is refused, so the
    /// next kernel re-checks the same metadata for the same reason.
    handed_generation: u64,
}

// SAFETY: `meta` is a kernel mapping only accessed under the mutex.
unsafe impl Send for Inner {}

/// The volume.
#[pin_data]
pub(crate) struct Volume {
    /// Physical base of the region (0 without one).
    base: u64,
    /// Size of the region in bytes (0 without one).
    size: u64,
    #[pin]
    inner: Mutex<Inner>,
    /// Serialises faults that fill holes, so that a 1 GiB unit can be
    /// zeroed without `inner` held (lookups, stat and faults on allocated
    /// blocks go on meanwhile); fallocate takes it too. Taken before
    /// `inner`, never inside it.
    #[pin]
    alloc: Mutex<()>,
}

/// Set once by `Volume::install`; the module (built in) never goes away.
static VOLUME: AtomicPtr<Volume> = AtomicPtr::new(core::ptr::null_mut());

/// The installed volume.
fn volume() -> Result<&'static Volume> {
    let vol = VOLUME.load(Ordering::Acquire);
    // SAFETY: set once to a pinned volume that is never freed (built-in
    // module), or NULL.
    unsafe { vol.as_ref() }.ok_or(ENODEV)
}

fn now() -> Time {
    let (mut sec, mut nsec) = (0i64, 0u32);
    // SAFETY: valid out pointers.
    unsafe { guestmemfs_now(&mut sec, &mut nsec) };
    Time { sec, nsec }
}

/// Maps format errors to errnos for the VFS.
fn errno(e: FmtError) -> Error {
    match e {
        FmtError::NotFound => ENOENT,
        FmtError::Exists => EEXIST,
        FmtError::NotDir => ENOTDIR,
        FmtError::IsDir => EISDIR,
        FmtError::NotEmpty => ENOTEMPTY,
        FmtError::NoSpace | FmtError::NoInodes | FmtError::NoExtents => ENOSPC,
        FmtError::NoMemory => ENOMEM,
        FmtError::NameTooLong => ENAMETOOLONG,
        FmtError::BadName | FmtError::Invalid => EINVAL,
        FmtError::TooBig => EFBIG,
        FmtError::Corrupt(_) => EUCLEAN,
        FmtError::Busy => EBUSY,
        FmtError::Truncated | FmtError::Overlap(_) | FmtError::DoubleFree(_) => EIO,
    }
}

impl Inner {
    fn meta(&mut self) -> Result<(Meta<'_, &mut [u8]>, BlockBitmap<'_>)> {
        self.open(true)
    }

    /// The metadata, for a change (`EBUSY` once frozen for kexec) or only
    /// to read (lookups, faults on backed blocks: they go on while frozen).
    fn open(&mut self, change: bool) -> Result<(Meta<'_, &mut [u8]>, BlockBitmap<'_>)> {
        if change && self.frozen {
            return Err(EBUSY);
        }
        if change && self.meta_poisoned {
            return Err(EIO);
        }
        match self.state {
            State::Ready => {}
            State::NoRegion => return Err(ENODEV),
            State::Refused(_) => return Err(EUCLEAN),
        }
        let geo = self.geo.ok_or(EIO)?;
        if self.meta.is_null() {
            return Err(EIO);
        }
        // A change allocates at most one inode: if the index has no room
        // for one more, move it to storage of twice the capacity (a copy
        // of what is in use; amortized O(1) per inode). If that fails,
        // only a create fails (`NoInodes`): reads and removals go on.
        if change {
            if let Some(sizes) = IndexSizes::to_grow(&geo, &self.index) {
                if let Ok(mut words) =
                    KVVec::from_elem(0u64, sizes.words, GFP_KERNEL | __GFP_NOWARN)
                {
                    if Index::new(&mut self.index_words, &mut self.index, &geo)
                        .and_then(|index| index.grow_into(&mut words))
                        .is_ok()
                    {
                        self.index_words = words;
                    }
                }
            }
        }
        // SAFETY: `meta` maps `meta_len` bytes owned by the volume; the
        // mutex guard borrowed by `self` makes this the only access.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.meta, self.meta_len) };
        let index = Index::new(&mut self.index_words, &mut self.index, &geo).map_err(errno)?;
        let meta = Meta::new(bytes, geo, index).map_err(errno)?;
        let bm = BlockBitmap::resume(&mut self.bitmap, geo.nr_blocks, self.blocks_used)
            .and_then(|bm| bm.with_pins(&mut self.pins))
            .map_err(errno)?;
        Ok((meta, bm))
    }

    /// Maps the metadata of a geometry.
    fn map(&mut self, len: u64) -> Result {
        if !self.meta.is_null() {
            // SAFETY: the old mapping is not referenced any more.
            unsafe { guestmemfs_region_unmap(self.meta.cast()) };
            self.meta = core::ptr::null_mut();
            self.meta_len = 0;
        }
        // SAFETY: maps the region's first `len` bytes, or returns NULL.
        let p = unsafe { guestmemfs_region_map(0, len) };
        if p.is_null() {
            return Err(ENOMEM);
        }
        self.meta = p.cast();
        self.meta_len = usize::try_from(len).map_err(|_| EINVAL)?;
        Ok(())
    }

    /// Writes an empty filesystem over the metadata blocks.
    fn format(&mut self, size: u64, generation: u64) -> Result {
        if self.meta_poisoned {
            pr_err!("cannot format: a memory error hit the metadata blocks, which a format would reuse; the region needs a cold boot\n");
            return Err(EIO);
        }
        let geo = Geometry::new(size, Geometry::default_inodes(size)).ok_or(EINVAL)?;
        // Allocate first: a failed reformat leaves the old filesystem.
        let mut index_words = KVVec::from_elem(0u64, IndexSizes::initial(&geo).words, GFP_KERNEL)?;
        let words = ScratchSizes::for_geometry(&geo).block_words;
        let mut bitmap = KVVec::from_elem(0u64, words, GFP_KERNEL)?;
        // Blocks hit by memory errors stay bad through a reformat (same
        // region): kept pinned and listed again below. The metadata must
        // not land on one (an adopted image may have had fewer inodes,
        // so fewer metadata blocks).
        let mut pins = if self.pins.len() == words {
            core::mem::take(&mut self.pins)
        } else {
            KVVec::from_elem(0u64, words, GFP_KERNEL)?
        };
        if let Some(b) = (0..geo.meta_blocks).find(|&b| bitmap::bit(&pins, b)) {
            pr_err!(
                "cannot format: block {} of the new metadata had a memory error\n",
                b
            );
            self.pins = pins;
            return Err(EIO);
        }
        // From here on the old metadata is gone: unusable until done.
        let was = self.state;
        self.state = State::Refused(FmtError::NoMemory);
        self.geo = None;
        if let Err(e) = self.map(geo.meta_bytes()) {
            if !matches!(was, State::Ready) {
                self.state = was;
            }
            return Err(e);
        }
        self.index_words = core::mem::take(&mut index_words);
        self.bitmap = core::mem::take(&mut bitmap);
        self.pins = core::mem::take(&mut pins);
        // A new index in small storage; a previous one (a reformat) is
        // forgotten, its seed kept.
        self.index.discard();
        let mut index = Index::new(&mut self.index_words, &mut self.index, &geo).map_err(errno)?;
        // SAFETY: just mapped, `meta_len` bytes, exclusive under the lock.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.meta, self.meta_len) };
        format::meta::format(bytes, &geo, now(), generation, &mut index).map_err(errno)?;
        let mut bm = BlockBitmap::new(&mut self.bitmap, geo.nr_blocks)
            .and_then(|bm| bm.with_pins(&mut self.pins))
            .map_err(errno)?;
        bm.mark_used(0, geo.meta_blocks).map_err(errno)?;
        let mut meta = Meta::new(bytes, geo, index).map_err(errno)?;
        let mut bad = 0;
        let mut next = bm.next_pinned(0);
        while let Some(b) = next {
            next = bm.next_pinned(b + 1);
            bm.pin(b).map_err(errno)?;
            if let Err(e) = meta.record_bad(b) {
                pr_warn!("bad block {} kept out of use but not listed: {:?}\n", b, e);
            }
            bad += 1;
        }
        self.blocks_used = bm.used();
        self.geo = Some(geo);
        self.state = State::Ready;
        self.generation = generation;
        if bad > 0 {
            pr_warn!("kept {} bad blocks (memory errors) out of use\n", bad);
        }
        pr_info!(
            "formatted {} MiB: {} data blocks of 2 MiB, {} inodes\n",
            size >> 20,
            geo.data_blocks(),
            geo.inode_count
        );
        Ok(())
    }

    /// Validates the metadata the previous kernel left in the region;
    /// `locator_generation` is what its locator said the superblock holds.
    /// `start` is when the boot began adopting (for the log).
    fn adopt(
        &mut self,
        size: u64,
        locator_generation: u64,
        start: u64,
    ) -> core::result::Result<(), FmtError> {
        // The superblock alone first: it says how much to map.
        self.map(BLOCK_SIZE).map_err(|_| FmtError::Truncated)?;
        // SAFETY: `meta_len` bytes mapped, exclusive under the lock.
        let first = unsafe { core::slice::from_raw_parts(self.meta, self.meta_len) };
        let geo = validate::superblock(first, size)?;
        // Scratch and index follow the superblock's high-water marks (the
        // records ever used), not the tables: read them before `first` is
        // unmapped.
        // The bad-block list is valid now: remember it even if the rest
        // is refused, so that a reformat keeps those blocks out of use.
        for i in 0..format::layout::bad_count(first)? {
            bitmap::set_bit(&mut self.pins, format::layout::bad_entry(first, i)?);
        }
        let sizes = ScratchSizes::for_image(first, &geo)?;
        let index_sizes = IndexSizes::for_image(first, &geo)?;
        let superblock = format::layout::superblock_generation(first)?;
        if superblock != locator_generation {
            return Err(FmtError::Corrupt(Corruption::GenerationMismatch {
                locator: locator_generation,
                superblock,
            }));
        }
        self.map(geo.meta_bytes())
            .map_err(|_| FmtError::Truncated)?;
        let alloc = |e| {
            pr_err!("out of memory validating the handover ({:?})\n", e);
            FmtError::Truncated
        };
        let mut marks =
            KVVec::from_elem(0u8, sizes.inode_marks, GFP_KERNEL | __GFP_NOWARN).map_err(alloc)?;
        let mut subdirs =
            KVVec::from_elem(0u32, sizes.subdirs, GFP_KERNEL | __GFP_NOWARN).map_err(alloc)?;
        let mut words =
            KVVec::from_elem(0u64, sizes.block_words, GFP_KERNEL | __GFP_NOWARN).map_err(alloc)?;
        let mut index_words =
            KVVec::from_elem(0u64, index_sizes.words, GFP_KERNEL | __GFP_NOWARN).map_err(alloc)?;
        // The scratch borrows `words`, which becomes the allocator's bitmap;
        // validation builds the index in `index_words`.
        let (inodes, used) = {
            let blocks = BlockBitmap::new(&mut words, geo.nr_blocks)?.with_pins(&mut self.pins)?;
            let mut scratch = Scratch {
                inode_marks: &mut marks,
                subdirs: &mut subdirs,
                blocks,
            };
            let mut index = Index::new(&mut index_words, &mut self.index, &geo)?;
            // SAFETY: as above, with the full metadata now mapped.
            let bytes = unsafe { core::slice::from_raw_parts_mut(self.meta, self.meta_len) };
            let inodes = validate::contents(bytes, &geo, &mut scratch, &mut index)?;
            (inodes, scratch.blocks.used())
        };
        self.bitmap = words;
        self.blocks_used = used;
        self.index_words = index_words;
        self.geo = Some(geo);
        self.state = State::Ready;
        // The files an IOMMU mapping was handed over for: kept whole (boot
        // holds) until the IOMMU side resolves the handover, orphans too.
        let mut boot = KVec::new();
        // The first change: a version 1 or 2 image becomes version 3 here.
        let (orphans, generation, used_now, bad, lost) = {
            let (mut meta, mut bm) = self.meta().map_err(|_| FmtError::Truncated)?;
            holds::boot_holds(&meta, |h| {
                boot.push(h, GFP_KERNEL).map_err(|_| FmtError::NoMemory)
            })?;
            let orphans = meta.reclaim_orphans_except(&mut bm, |ino| holds::is_held(&boot, ino))?;
            let generation = meta.generation()?.wrapping_add(1);
            meta.set_generation(generation)?;
            let (bad, lost) = (meta.bad_count()?, meta.bad_lost()?);
            (orphans, generation, bm.used(), bad, lost)
        };
        let kept = boot.len();
        self.handover_pending = kept > 0;
        self.holds = boot;
        self.generation = generation;
        if bad > 0 || lost > 0 {
            pr_warn!(
                "{} bad blocks (memory errors) stay out of use; {} more were lost by a full list\n",
                bad,
                lost
            );
        }
        self.blocks_used = used_now;
        // SAFETY: reads the monotonic clock.
        let took = unsafe { guestmemfs_clock_ns() }.saturating_sub(start);
        pr_info!(
            "kept the filesystem from the previous kernel: {} inodes, {} of {} blocks used, {} orphans freed, generation {}, validated in {} us\n",
            inodes,
            used,
            geo.nr_blocks,
            orphans,
            generation,
            took / 1000
        );
        if kept > 0 {
            pr_info!(
                "{} files stay whole until the IOMMU handover is resolved (DMA_HELD)\n",
                kept
            );
        }
        Ok(())
    }
}

/// The region `region.c` reserved at boot.
pub(crate) struct RegionInfo {
    /// Physical base.
    pub(crate) base: u64,
    /// Bytes.
    pub(crate) size: u64,
    /// `Some(generation the previous kernel's locator names)` when the
    /// region holds a filesystem handed over through KHO.
    pub(crate) generation: Option<u64>,
    /// The previous kernel saw a memory error in the metadata.
    pub(crate) meta_poisoned: bool,
    /// The previous kernel's locator says IOMMU mappings of the region
    /// may have been handed over.
    pub(crate) dma_held: bool,
}

impl Inner {
    /// The generation to hand on: the superblock's while the metadata is
    /// in use, else the one this kernel was handed.
    fn current_generation(&self) -> u64 {
        match self.state {
            State::Ready => self.generation,
            _ => self.handed_generation,
        }
    }

    /// At the kexec freeze, before the locator is written: sets
    /// `DMA_HELD` on exactly the files the next kernel must keep whole (a
    /// preserved hold, or a boot hold not resolved yet) and clears it on
    /// every other inode. Returns what the locator must say: whether
    /// IOMMU mappings of the region may be handed over.
    fn write_dma_held(&mut self) -> bool {
        let needed = self.holds.iter().any(|h| h.preserved || h.boot);
        if !matches!(self.state, State::Ready) || self.meta_poisoned {
            // The next kernel reads no inode flag: the locator says it.
            return needed || self.handover_pending;
        }
        // Out of `self` while `open()` borrows it whole; always put back.
        let list = core::mem::take(&mut self.holds);
        let flagged = self.open(false).and_then(|(mut m, _)| {
            m.set_dma_held(|ino| holds::keep_for_next_kernel(&list, ino))
                .map_err(errno)
        });
        self.holds = list;
        match flagged {
            Ok(n) => n > 0 || self.handover_pending,
            Err(e) if needed => {
                // Without the flags the next kernel could free blocks a
                // device writes to: it must not read this filesystem.
                pr_crit!(
                    "cannot flag the files IOMMU mappings are handed over for ({:?}): the next kernel will keep the region without reading it\n",
                    e
                );
                self.meta_poisoned = true;
                true
            }
            Err(e) => {
                // Only stale flags may be left: they keep files longer.
                pr_err!("cannot clear DMA_HELD flags ({:?})\n", e);
                self.handover_pending
            }
        }
    }
}

impl Volume {
    /// Creates the volume for the boot-time region and installs it for
    /// the C glue: adopts (validates) a handed-over filesystem, or formats
    /// a fresh region.
    pub(crate) fn install(region: Option<RegionInfo>) -> Result<Pin<KBox<Volume>>> {
        // SAFETY: `get_random_u64` takes no argument and may be called
        // from any context.
        let seed = unsafe {
            [
                kernel::bindings::get_random_u64(),
                kernel::bindings::get_random_u64(),
            ]
        };
        let inner = Inner {
            state: State::NoRegion,
            frozen: false,
            meta: core::ptr::null_mut(),
            meta_len: 0,
            geo: None,
            bitmap: KVVec::new(),
            pins: KVVec::new(),
            meta_poisoned: false,
            generation: 0,
            holds: KVec::new(),
            handover_pending: false,
            locator_dma_held: false,
            blocks_used: 0,
            index_words: KVVec::new(),
            // The name hash's key: names stored by a previous kernel or
            // chosen by users cannot be made to collide.
            index: IndexCounters::new(seed),
            handed_generation: 0,
        };
        let (base, size) = region.as_ref().map_or((0, 0), |r| (r.base, r.size));
        let vol = KBox::pin_init(
            pin_init!(Volume {
                base,
                size,
                inner <- new_mutex!(inner),
                alloc <- new_mutex!(()),
            }),
            GFP_KERNEL,
        )?;
        if let Some(r) = region {
            let mut g = vol.inner.lock();
            let words = bitmap::words_for(size / BLOCK_SIZE);
            match KVVec::from_elem(0u64, words, GFP_KERNEL | __GFP_NOWARN) {
                Ok(pins) => g.pins = pins,
                // The filesystem still works; memory errors are not handled.
                Err(_) => pr_err!("out of memory for the bad-block mask: memory errors in the region will not be handled\n"),
            }
            match r.generation {
                Some(generation) if r.meta_poisoned => {
                    // Reading it could consume the poison again: a machine
                    // check in the kernel at every boot.
                    g.handed_generation = generation;
                    g.meta_poisoned = true;
                    pr_err!("refusing the filesystem handed over by the previous kernel: its metadata had a memory error, so it is not read; the region stays reserved, a cold boot is needed to use it again\n");
                    g.state = State::Refused(FmtError::Corrupt(Corruption::MetadataPoisoned));
                }
                Some(generation) => {
                    g.handed_generation = generation;
                    // SAFETY: reads the monotonic clock.
                    let start = unsafe { guestmemfs_clock_ns() };
                    if let Err(e) = g.adopt(size, generation, start) {
                        pr_err!(
                            "refusing the filesystem handed over by the previous kernel: {}; the region stays reserved and untouched, mount with -o reformat to start over\n",
                            format_args!("{e}")
                        );
                        g.state = State::Refused(e);
                    }
                }
                None => g.format(size, 1)?,
            }
            // Whatever became of the filesystem: a device may still write
            // to the region through the IOMMU tables the next kernel
            // adopts, until the IOMMU side resolves the handover.
            if r.dma_held && !g.handover_pending {
                g.handover_pending = true;
                pr_info!(
                    "previous kernel handed IOMMU mappings over: no reformat until resolved\n"
                );
            }
        }
        VOLUME.store(core::ptr::from_ref(&*vol).cast_mut(), Ordering::Release);
        Ok(vol)
    }

    /// Base and size of the region, the generation to hand on, whether
    /// the metadata had a memory error, and whether a handover of IOMMU
    /// mappings is unresolved.
    pub(crate) fn locator_fields(&self) -> (u64, u64, u64, bool, bool) {
        let g = self.inner.lock();
        (
            self.base,
            self.size,
            g.current_generation(),
            g.meta_poisoned,
            g.handover_pending,
        )
    }
}

/// Runs `f` on the locked volume's metadata.
fn with_meta<T>(
    f: impl FnOnce(&mut Meta<'_, &mut [u8]>, &mut BlockBitmap<'_>) -> Result<T>,
) -> Result<T> {
    with_access(true, |m, bm, _| f(m, bm))
}

/// Runs `f` on the locked volume's metadata for reading, also while frozen
/// (`f` gets the frozen flag and must not change anything when it is set).
fn with_meta_read<T>(
    f: impl FnOnce(&mut Meta<'_, &mut [u8]>, &mut BlockBitmap<'_>, bool) -> Result<T>,
) -> Result<T> {
    with_access(false, f)
}

fn with_access<T>(
    change: bool,
    f: impl FnOnce(&mut Meta<'_, &mut [u8]>, &mut BlockBitmap<'_>, bool) -> Result<T>,
) -> Result<T> {
    with_volume(change, |m, bm, _, frozen| f(m, bm, frozen))
}

/// [`with_meta`], also given the DMA holds.
fn with_meta_holds<T>(
    f: impl FnOnce(&mut Meta<'_, &mut [u8]>, &mut BlockBitmap<'_>, &mut KVec<Hold>) -> Result<T>,
) -> Result<T> {
    with_volume(true, |m, bm, list, _| f(m, bm, list))
}

/// Runs `f` on the locked volume: its metadata (for a change, or only to
/// read), the allocator, the DMA holds and the frozen flag; keeps the
/// allocator's count.
fn with_volume<T>(
    change: bool,
    f: impl FnOnce(&mut Meta<'_, &mut [u8]>, &mut BlockBitmap<'_>, &mut KVec<Hold>, bool) -> Result<T>,
) -> Result<T> {
    let mut g = volume()?.inner.lock();
    let frozen = g.frozen;
    // Out of `g` while `open()` borrows it whole; always put back.
    let mut list = core::mem::take(&mut g.holds);
    let res = match g.open(change) {
        Ok((mut meta, mut bm)) => {
            let r = f(&mut meta, &mut bm, &mut list, frozen);
            Ok((r, bm.used()))
        }
        Err(e) => Err(e),
    };
    g.holds = list;
    let (r, used) = res?;
    g.blocks_used = used;
    r
}

fn ret(r: Result) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// # Safety
/// `ptr` must point to `len` readable bytes.
unsafe fn name<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8]> {
    if len > NAME_MAX {
        return Err(ENAMETOOLONG);
    }
    // SAFETY: per the function's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// `struct gmfs_attr` of gmfs_abi.h.
#[repr(C)]
pub(crate) struct Attr {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    blocks: u64,
    atime_sec: i64,
    mtime_sec: i64,
    ctime_sec: i64,
    atime_nsec: u32,
    mtime_nsec: u32,
    ctime_nsec: u32,
    pad: u32,
    generation: u64,
}
const _: () = assert!(core::mem::size_of::<Attr>() == 88);

impl From<&InodeData> for Attr {
    fn from(i: &InodeData) -> Attr {
        Attr {
            ino: i.ino,
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            nlink: i.nlink,
            size: i.size,
            blocks: i.blocks,
            atime_sec: i.atime.sec,
            mtime_sec: i.mtime.sec,
            ctime_sec: i.ctime.sec,
            atime_nsec: i.atime.nsec,
            mtime_nsec: i.mtime.nsec,
            ctime_nsec: i.ctime.nsec,
            pad: 0,
            generation: i.generation,
        }
    }
}

/// `struct gmfs_statfs`.
#[repr(C)]
pub(crate) struct Statfs {
    blocks: u64,
    bfree: u64,
    files: u64,
    ffree: u64,
}
const _: () = assert!(core::mem::size_of::<Statfs>() == 32);

/// `struct gmfs_dirent`.
#[repr(C)]
pub(crate) struct Dirent {
    ino: u64,
    next_pos: u64,
    mode: u32,
    name_len: u32,
    name: [u8; NAME_MAX + 1],
}
const _: () = assert!(core::mem::size_of::<Dirent>() == 280);

/// `struct gmfs_setattr`.
#[repr(C)]
pub(crate) struct SetAttr {
    valid: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    atime_sec: i64,
    mtime_sec: i64,
    ctime_sec: i64,
    atime_nsec: u32,
    mtime_nsec: u32,
    ctime_nsec: u32,
    pad: u32,
}
const _: () = assert!(core::mem::size_of::<SetAttr>() == 56);

const SET_MODE: u32 = 1;
const SET_UID: u32 = 2;
const SET_GID: u32 = 4;
const SET_ATIME: u32 = 8;
const SET_MTIME: u32 = 16;
const SET_CTIME: u32 = 32;

/// Prepares the volume for a mount; `reformat` discards whatever the
/// region holds and formats it.
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_mount(reformat: bool) -> c_int {
    let vol = match volume() {
        Ok(vol) => vol,
        Err(e) => return e.to_errno(),
    };
    let mut g = vol.inner.lock();
    ret(match g.state {
        State::NoRegion => {
            pr_err!("no memory region reserved, boot with guestmemfs=<size>\n");
            Err(ENODEV)
        }
        _ if reformat => {
            if g.frozen {
                return EBUSY.to_errno();
            }
            if holds::check_reformat(&g.holds, g.handover_pending).is_err() {
                if g.holds.is_empty() {
                    pr_err!(
                        "cannot reformat: the previous kernel's IOMMU handover is unresolved\n"
                    );
                } else {
                    pr_err!(
                        "cannot reformat: an IOMMU maps {} file ranges (or may, from the previous kernel)\n",
                        g.holds.len()
                    );
                }
                return EBUSY.to_errno();
            }
            let generation = g.current_generation().wrapping_add(1);
            pr_warn!("reformatting the region as asked by the reformat mount option\n");
            g.format(vol.size, generation)
        }
        State::Refused(e) => {
            pr_err!(
                "mount refused: the handed-over filesystem is invalid ({}); use -o reformat to discard it\n",
                format_args!("{e}")
            );
            Err(EUCLEAN)
        }
        State::Ready => Ok(()),
    })
}

/// # Safety
/// `out` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_statfs(out: *mut Statfs) -> c_int {
    ret(with_meta_read(|m, bm, _| {
        let geo = *m.geometry();
        let used = m.inodes_used().map_err(errno)?;
        let s = Statfs {
            blocks: geo.data_blocks(),
            bfree: bm.free(),
            files: geo.inode_count,
            ffree: geo.inode_count - used,
        };
        // SAFETY: the caller passes a valid pointer.
        unsafe { out.write(s) };
        Ok(())
    }))
}

/// # Safety
/// `out` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_getattr(ino: u64, out: *mut Attr) -> c_int {
    ret(with_meta_read(|m, _, _| {
        let i = m.inode(ino).map_err(errno)?;
        // SAFETY: the caller passes a valid pointer.
        unsafe { out.write(Attr::from(&i)) };
        Ok(())
    }))
}

/// # Safety
/// `name` must point to `len` bytes; `ino` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_lookup(
    dir: u64,
    name_ptr: *const u8,
    len: usize,
    ino: *mut u64,
) -> c_int {
    ret(with_meta_read(|m, _, _| {
        // SAFETY: the caller passes `len` bytes.
        let n = unsafe { name(name_ptr, len) }?;
        let found = m.lookup(dir, n).map_err(errno)?;
        // SAFETY: the caller passes a valid pointer.
        unsafe { ino.write(found) };
        Ok(())
    }))
}

/// # Safety
/// `name` must point to `len` bytes; `out` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_create(
    dir: u64,
    name_ptr: *const u8,
    len: usize,
    mode: u32,
    uid: u32,
    gid: u32,
    sec: i64,
    nsec: u32,
    out: *mut Attr,
) -> c_int {
    ret(with_meta(|m, _| {
        // SAFETY: the caller passes `len` bytes.
        let n = unsafe { name(name_ptr, len) }?;
        let i = m
            .create(dir, n, mode, uid, gid, Time { sec, nsec })
            .map_err(errno)?;
        // SAFETY: the caller passes a valid pointer.
        unsafe { out.write(Attr::from(&i)) };
        Ok(())
    }))
}

/// # Safety
/// `name` must point to `len` bytes; `ino` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_unlink(
    dir: u64,
    name_ptr: *const u8,
    len: usize,
    is_dir: bool,
    sec: i64,
    nsec: u32,
    ino: *mut u64,
) -> c_int {
    ret(with_meta(|m, _| {
        // SAFETY: the caller passes `len` bytes.
        let n = unsafe { name(name_ptr, len) }?;
        let target = m.inode(m.lookup(dir, n).map_err(errno)?).map_err(errno)?;
        if target.is_dir() != is_dir {
            return Err(if is_dir { ENOTDIR } else { EISDIR });
        }
        let i = m.unlink(dir, n, Time { sec, nsec }).map_err(errno)?;
        // SAFETY: the caller passes a valid pointer.
        unsafe { ino.write(i.ino) };
        Ok(())
    }))
}

/// # Safety
/// Names must point to their lengths in bytes; `replaced` must be valid
/// for writes (0 when nothing was replaced).
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_rename(
    old_dir: u64,
    old_ptr: *const u8,
    old_len: usize,
    new_dir: u64,
    new_ptr: *const u8,
    new_len: usize,
    noreplace: bool,
    sec: i64,
    nsec: u32,
    replaced: *mut u64,
) -> c_int {
    ret(with_meta(|m, _| {
        // SAFETY: the caller passes the names' bytes.
        let (old, new) = unsafe { (name(old_ptr, old_len)?, name(new_ptr, new_len)?) };
        let r = m
            .rename(old_dir, old, new_dir, new, noreplace, Time { sec, nsec })
            .map_err(errno)?;
        // SAFETY: the caller passes a valid pointer.
        unsafe { replaced.write(r.map_or(0, |i| i.ino)) };
        Ok(())
    }))
}

/// # Safety
/// `out` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_readdir(dir: u64, pos: u64, out: *mut Dirent) -> c_int {
    match with_meta_read(|m, _, _| m.readdir(dir, pos).map_err(errno)) {
        Ok(Some((i, next))) => {
            let mut d = Dirent {
                ino: i.ino,
                next_pos: next,
                mode: i.mode,
                name_len: i.name().len() as u32,
                name: [0; NAME_MAX + 1],
            };
            d.name[..i.name().len()].copy_from_slice(i.name());
            // SAFETY: the caller passes a valid pointer.
            unsafe { out.write(d) };
            1
        }
        Ok(None) => 0,
        Err(e) => e.to_errno(),
    }
}

/// # Safety
/// `attr` must point to a valid `struct gmfs_setattr`.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_setattr(ino: u64, attr: *const SetAttr) -> c_int {
    // SAFETY: the caller passes a valid pointer.
    let a = unsafe { &*attr };
    ret(with_meta(|m, _| {
        let mut i = m.inode(ino).map_err(errno)?;
        if a.valid & SET_MODE != 0 {
            i.mode = (i.mode & S_IFMT) | (a.mode & !S_IFMT);
        }
        if a.valid & SET_UID != 0 {
            i.uid = a.uid;
        }
        if a.valid & SET_GID != 0 {
            i.gid = a.gid;
        }
        if a.valid & SET_ATIME != 0 {
            i.atime = Time {
                sec: a.atime_sec,
                nsec: a.atime_nsec,
            };
        }
        if a.valid & SET_MTIME != 0 {
            i.mtime = Time {
                sec: a.mtime_sec,
                nsec: a.mtime_nsec,
            };
        }
        if a.valid & SET_CTIME != 0 {
            i.ctime = Time {
                sec: a.ctime_sec,
                nsec: a.ctime_nsec,
            };
        }
        m.write_inode(&i).map_err(errno)
    }))
}

/// Zeroes the rest of the block that holds the smaller of a file's old
/// and new sizes ([`fault::tail_to_zero`]), so that shrinking to a size
/// inside a block and growing again shows zeros, as POSIX wants.
/// A block hit by a memory error is left alone (its faults report the
/// error; touching it could raise another).
fn zero_tail(
    m: &Meta<'_, &mut [u8]>,
    bm: &BlockBitmap<'_>,
    ino: u64,
    old: u64,
    new: u64,
) -> Result {
    let Some((start, end)) = fault::tail_to_zero(old, new) else {
        return Ok(());
    };
    let block = start / BLOCK_SIZE;
    if let Some(e) = m.map(ino, block).map_err(errno)? {
        let phys_block = e.phys_block + (block - e.file_block);
        if bm.is_pinned(phys_block) {
            return Ok(());
        }
        let offset = (phys_block << BLOCK_SHIFT) + start % BLOCK_SIZE;
        // SAFETY: zeroes part of a block this file owns.
        if unsafe { guestmemfs_zero(offset, end - start) } != 0 {
            return Err(ENOMEM);
        }
    }
    Ok(())
}

/// Sets a regular file's size under the lock, tail zeroed first; a
/// failure changes nothing.
fn set_size_locked(
    m: &mut Meta<'_, &mut [u8]>,
    bm: &mut BlockBitmap<'_>,
    ino: u64,
    size: u64,
    now: Time,
) -> Result {
    let i = m.inode(ino).map_err(errno)?;
    if !i.is_reg() {
        return Err(EISDIR);
    }
    if size > format::meta::MAX_FILE_SIZE {
        return Err(EFBIG);
    }
    zero_tail(m, bm, ino, i.size, size)?;
    m.set_size(ino, size, now, bm).map_err(errno)
}

/// Sets a regular file's size ([`set_size_locked`]). The caller has
/// unmapped everything past the new EOF page.
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_set_size(ino: u64, size: u64, sec: i64, nsec: u32) -> c_int {
    ret(with_meta_holds(|m, bm, list| {
        // A device may be writing the blocks a shrink would free or zero.
        holds::check_size(list, ino, size).map_err(errno)?;
        set_size_locked(m, bm, ino, size, Time { sec, nsec })
    }))
}

/// Allocates (zeroed) blocks for `[offset, offset + len)` and, unless
/// `keep_size`, grows the file to cover it, in one locked step, and sets
/// mtime/ctime. Without space for every hole nothing is allocated
/// (`ENOSPC`); a later failure (`ENOMEM` zeroing) keeps the zeroed runs
/// already added and leaves the size alone.
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_fallocate(
    ino: u64,
    offset: u64,
    len: u64,
    keep_size: bool,
    sec: i64,
    nsec: u32,
) -> c_int {
    let vol = match volume() {
        Ok(vol) => vol,
        Err(e) => return e.to_errno(),
    };
    // Not while a fault zeroes a unit it reserved in this file's range.
    let _alloc = vol.alloc.lock();
    ret(with_meta(|m, bm| {
        let end = offset.checked_add(len).ok_or(EFBIG)?;
        let i = m.inode(ino).map_err(errno)?;
        let grow = !keep_size && end > i.size;
        if grow && end > format::meta::MAX_FILE_SIZE {
            return Err(EFBIG);
        }
        let first = offset >> BLOCK_SHIFT;
        let last = end.div_ceil(BLOCK_SIZE);
        // The fallible parts of growing (the checks, zeroing the old EOF
        // block's tail) come first; the allocation rolls itself back; the
        // size change after it cannot fail.
        if grow {
            zero_tail(m, bm, ino, i.size, end)?;
        }
        m.allocate_with(ino, first, last - first, bm, zero_blocks)
            .map_err(errno)?;
        let now = Time { sec, nsec };
        if grow {
            m.set_size(ino, end, now, bm).map_err(errno)?;
        }
        // Like a write: the data changed (zeros where holes were).
        let mut i = m.inode(ino).map_err(errno)?;
        i.mtime = now;
        i.ctime = now;
        m.write_inode(&i).map_err(errno)
    }))
}

/// `struct gmfs_fault` of gmfs_abi.h: what the fault handler installs.
#[repr(C)]
pub(crate) struct FaultOut {
    addr: u64,
    phys: u64,
    action: u32,
    pad: u32,
}
const _: () = assert!(core::mem::size_of::<FaultOut>() == 24);

const FAULT_MAP: u32 = 0;
const FAULT_FALLBACK: u32 = 1;
const FAULT_SIGBUS: u32 = 2;
const FAULT_OOM: u32 = 3;
const FAULT_HWPOISON: u32 = 4;

/// Fills the hole at `file_block` of `ino` if there is one, with the
/// caller holding `vol.alloc`: with the whole aligned 1 GiB unit around
/// it when the file covers the unit, all of it is a hole and an aligned
/// free GiB exists (so it maps with one PUD), else with the block alone
/// unless `unit_only`. The unit is taken from the allocator under the
/// volume lock, zeroed without it, then given to the file; a block is
/// zeroed under the lock (2 MiB). Running out of space leaves the hole.
fn fill_hole(vol: &Volume, ino: u64, file_block: u64, unit_only: bool) -> Result {
    let reserved = with_meta(|m, bm| {
        let i = m.inode(ino).map_err(errno)?;
        if m.map(ino, file_block).map_err(errno)?.is_some() {
            return Ok(None);
        }
        let unit = file_block & !(HUGE_BLOCKS - 1);
        let covers_unit = (unit + HUGE_BLOCKS)
            .checked_mul(BLOCK_SIZE)
            .is_some_and(|end| end <= i.size);
        // Without an aligned free GiB the unit would be fragmented: no PUD.
        let free_unit = if covers_unit {
            bm.find_free(HUGE_BLOCKS, HUGE_BLOCKS)
        } else {
            None
        };
        let free_unit = match free_unit {
            Some(phys) if m.is_hole(ino, unit, unit + HUGE_BLOCKS).map_err(errno)? => Some(phys),
            _ => None,
        };
        if let Some(phys) = free_unit {
            bm.mark_used(phys, HUGE_BLOCKS).map_err(errno)?;
            return Ok(Some((unit, phys)));
        }
        if !unit_only {
            match m.allocate_with(ino, file_block, 1, bm, zero_blocks) {
                Ok(()) | Err(FmtError::NoSpace | FmtError::NoExtents) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        Ok(None)
    })?;
    let Some((unit, phys)) = reserved else {
        return Ok(());
    };
    let zeroed = zero_blocks(phys, HUGE_BLOCKS);
    // A unit that cannot join the file (zeroing failed, frozen for kexec
    // meanwhile) goes back to the allocator.
    let mut g = vol.inner.lock();
    let frozen = g.frozen;
    match g.open(false) {
        Ok((mut m, mut bm)) => {
            let inserted = match zeroed {
                Err(e) => Err(e),
                Ok(()) if frozen => Err(FmtError::Invalid),
                Ok(()) => m.insert_reserved(ino, unit, phys, HUGE_BLOCKS),
            };
            let r = match inserted {
                Ok(()) => Ok(()),
                Err(e) => {
                    if bm.mark_free(phys, HUGE_BLOCKS).is_err() {
                        pr_err!("lost track of a reserved 1 GiB unit at block {}\n", phys);
                    }
                    match e {
                        // Part of the unit was allocated meanwhile (by
                        // fallocate): this block alone, as without a unit.
                        FmtError::Exists if !unit_only => {
                            match m.allocate_with(ino, file_block, 1, &mut bm, zero_blocks) {
                                Ok(()) | Err(FmtError::NoSpace | FmtError::NoExtents) => Ok(()),
                                Err(e) => Err(errno(e)),
                            }
                        }
                        FmtError::Exists => Ok(()),
                        FmtError::Invalid if frozen => Err(EBUSY),
                        e => Err(errno(e)),
                    }
                }
            };
            let used = bm.used();
            g.blocks_used = used;
            r
        }
        Err(e) => {
            // Cannot happen while mounted; still, never leak the unit.
            let (used, nr) = (g.blocks_used, g.geo.map_or(0, |geo| geo.nr_blocks));
            let inner = &mut *g;
            if let Ok(mut bm) = BlockBitmap::resume(&mut inner.bitmap, nr, used)
                .and_then(|bm| bm.with_pins(&mut inner.pins))
            {
                if bm.mark_free(phys, HUGE_BLOCKS).is_ok() {
                    inner.blocks_used = bm.used();
                }
            }
            Err(e)
        }
    }
}

/// Decides a fault at `addr` of a VMA `[vm_start, vm_end)` that maps file
/// offset `vm_offset` at `vm_start`, for an entry of `entry` (0 PTE,
/// 1 PMD, 2 PUD); fills a hole inside the file first. The decision is
/// [`fault::target`] and [`fault::resolve`]; this only looks up and
/// allocates. Backed blocks map also while frozen for kexec; holes that
/// cannot be filled (no space, or frozen) and a refused filesystem give
/// SIGBUS, never a retry; a kernel memory shortage gives OOM.
///
/// # Safety
/// `out` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_fault(
    ino: u64,
    vm_start: u64,
    vm_end: u64,
    vm_offset: u64,
    addr: u64,
    entry: u32,
    out: *mut FaultOut,
) -> c_int {
    let entry = match entry {
        0 => Entry::Pte,
        1 => Entry::Pmd,
        2 => Entry::Pud,
        _ => return EINVAL.to_errno(),
    };
    let vma = Vma {
        start: vm_start,
        end: vm_end,
        file_offset: vm_offset,
    };
    let plan = volume().and_then(|vol| {
        // The plan, and the file block to fill first if it is a hole.
        let decide = || {
            with_meta_read(|m, bm, frozen| {
                let i = m.inode(ino).map_err(errno)?;
                if !i.is_reg() {
                    return Ok((Plan::SigBus, None));
                }
                let t = match fault::target(&vma, addr, entry, i.size) {
                    Ok(t) => t,
                    Err(plan) => return Ok((plan, None)),
                };
                let e = m.map(ino, t.file_block()).map_err(errno)?;
                let hole = (e.is_none() && !frozen).then_some(t.file_block());
                let bad = |first, count| bm.any_pinned(first, count);
                Ok((fault::resolve(&t, e.as_ref(), vol.base, bad), hole))
            })
        };
        match decide()? {
            (_, Some(file_block)) => {
                let _alloc = vol.alloc.lock();
                fill_hole(vol, ino, file_block, entry == Entry::Pud)?;
                Ok(decide()?.0)
            }
            (plan, None) => Ok(plan),
        }
    });
    let (action, addr, phys) = match plan {
        Ok(Plan::Map { addr, phys, .. }) => (FAULT_MAP, addr, phys),
        Ok(Plan::Fallback) => (FAULT_FALLBACK, 0, 0),
        Ok(Plan::HwPoison) => (FAULT_HWPOISON, 0, 0),
        Err(e) if e == ENOMEM => (FAULT_OOM, 0, 0),
        Ok(Plan::SigBus) | Err(_) => (FAULT_SIGBUS, 0, 0),
    };
    // SAFETY: the caller passes a valid pointer.
    unsafe {
        out.write(FaultOut {
            addr,
            phys,
            action,
            pad: 0,
        })
    };
    0
}

/// Freezes the metadata for a kexec: waits for the operation in flight,
/// then refuses every later one with `EBUSY`, so the next kernel finds
/// the state of a completed operation. Called from the reboot notifier.
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_freeze() {
    if let Ok(vol) = volume() {
        let mut g = vol.inner.lock();
        if !g.frozen {
            // The last metadata change: holds can no longer be taken or
            // marked once frozen.
            let dma_held = g.write_dma_held();
            g.locator_dma_held = dma_held;
            g.frozen = true;
            let generation = g.current_generation();
            let poisoned = g.meta_poisoned;
            // SAFETY: `g` is the volume lock's guard.
            unsafe { crate::republish_locator(vol.base, vol.size, generation, poisoned, dma_held) };
            pr_info!(
                "metadata frozen for kexec at generation {}{}\n",
                generation,
                if dma_held {
                    ", IOMMU mappings handed over"
                } else {
                    ""
                }
            );
        }
    }
}

/// A memory error hit region block `block` of a region of `region_size`
/// bytes (`mf.c`, from `memory_failure()`). Pins the block so that no
/// allocation hands it out again and lists it in the superblock for the
/// next kernels (not once frozen for kexec: the handed-over superblock
/// must not change); says which file owns it, `(ino, file block)`, or
/// `None`. Once the block is pinned nothing fails: the count follows and
/// the owner is returned whatever the listing did, so that its mappings
/// go. `EHWPOISON` when the error cannot be recovered: a metadata block
/// (no more metadata changes, and the next kernel is told not to read
/// the metadata), or an owner that cannot be found.
fn memory_failure(g: &mut Inner, region_size: u64, block: u64) -> Result<Option<(u64, u64)>> {
    let nr_blocks = region_size / BLOCK_SIZE;
    if block >= nr_blocks || g.pins.is_empty() {
        return Err(EINVAL);
    }
    let meta_blocks = match (g.state, g.geo) {
        (State::Ready, Some(geo)) => geo.meta_blocks,
        // Not in use: as many metadata blocks as an accepted image has.
        _ => {
            let most = Geometry::default_inodes(region_size).saturating_mul(4);
            Geometry::new(region_size, most)
                .or_else(|| Geometry::new(region_size, Geometry::default_inodes(region_size)))
                .map_or(1, |geo| geo.meta_blocks)
        }
    };
    if block < meta_blocks {
        // Pinned too: a reformat must not reuse it (it refuses anyway).
        bitmap::set_bit(&mut g.pins, block);
        g.meta_poisoned = true;
        if g.frozen {
            // The locator was written at the freeze: say it again.
            let generation = g.current_generation();
            if let Ok(vol) = volume() {
                let dma_held = g.locator_dma_held;
                // SAFETY: the caller holds the volume lock (`g`).
                unsafe { crate::republish_locator(vol.base, vol.size, generation, true, dma_held) };
            }
        }
        pr_crit!(
            "memory error in metadata block {}: no more metadata changes, and the next kernel will not read this filesystem\n",
            block
        );
        return Err(EHWPOISON);
    }
    if !matches!(g.state, State::Ready) {
        bitmap::set_bit(&mut g.pins, block);
        pr_err!(
            "memory error in block {} of a filesystem not in use: kept out of use until reboot or reformat\n",
            block
        );
        return Ok(None);
    }
    let (frozen, meta_poisoned) = (g.frozen, g.meta_poisoned);
    let mut lost_owner = false;
    let (owner, used) = {
        let (mut m, mut bm) = g.open(false)?;
        let again = bm.is_pinned(block);
        bm.pin(block).map_err(errno)?;
        // Without the owner its mappings cannot go: report the error as
        // not recovered (the consumer is killed, not sent back to it).
        let owner = match m.owner_of(block) {
            Ok(owner) => owner,
            Err(e) => {
                pr_err!("cannot find the owner of bad block {}: {:?}\n", block, e);
                lost_owner = true;
                None
            }
        };
        let record = if frozen {
            "not listed: frozen for kexec, kept out of use until reboot"
        } else if meta_poisoned {
            "not listed: the metadata had a memory error"
        } else {
            match m.record_bad(block) {
                Ok(BadRecord::Added | BadRecord::Listed) => "listed",
                Ok(BadRecord::ListFull) => "not listed: the bad-block list is full",
                Err(_) => "not listed: the superblock cannot be written",
            }
        };
        let again = if again { " (again)" } else { "" };
        match owner {
            Some((ino, file_block)) => pr_err!(
                "memory error in block {}{}, inode {} file offset {:#x}: {}\n",
                block,
                again,
                ino,
                file_block << BLOCK_SHIFT,
                record
            ),
            None => pr_err!(
                "memory error in block {}{}, free or being allocated: {}\n",
                block,
                again,
                record
            ),
        }
        (owner, bm.used())
    };
    g.blocks_used = used;
    if lost_owner {
        return Err(EHWPOISON);
    }
    Ok(owner)
}

/// True if file block `file_block` of `ino` is region block `block`:
/// `mf.c` checks under the file's invalidate lock that the owner it was
/// told is still the owner (truncate takes that lock; a block that is
/// pinned cannot be given to anyone else).
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_block_is(ino: u64, file_block: u64, block: u64) -> bool {
    with_meta_read(|m, _, _| {
        let e = m.map(ino, file_block).map_err(errno)?;
        Ok(e.is_some_and(|e| e.phys_block + (file_block - e.file_block) == block))
    })
    .unwrap_or(false)
}

/// [`memory_failure`] for `mf.c`: `*ino` is the owner (0 for none) and
/// `*file_block` its file block.
///
/// # Safety
/// `ino` and `file_block` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_memory_failure(
    block: u64,
    ino: *mut u64,
    file_block: *mut u64,
) -> c_int {
    let owner = volume().and_then(|vol| memory_failure(&mut vol.inner.lock(), vol.size, block));
    match owner {
        Ok(owner) => {
            let (i, fb) = owner.unwrap_or((0, 0));
            // SAFETY: valid per the contract.
            unsafe {
                ino.write(i);
                file_block.write(fb);
            }
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// Frees an inode with no links once the VFS drops its last reference.
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_evict(ino: u64) -> c_int {
    ret(with_meta_holds(|m, bm, list| match m.inode(ino) {
        // An IOMMU still maps it: the last release evicts it.
        Ok(i) if i.nlink == 0 && holds::defer_evict(list, ino) => Ok(()),
        Ok(i) if i.nlink == 0 => m.evict(ino, bm).map_err(errno),
        Ok(_) | Err(FmtError::NotFound) => Ok(()),
        Err(e) => Err(errno(e)),
    }))
}

/// Longest physical run handed to iommufd: its batches count pages in a
/// `u32` (`holds::phys_runs` rounds this down to whole GiBs).
const MAX_RUN: u64 = (u32::MAX as u64) << 12;

/// Hold ids: unique for the boot (boot holds have 0, never handed out).
static NEXT_HOLD: AtomicU64 = AtomicU64::new(1);

/// Adds a hold on bytes `[start, end)` of `ino`, of generation `igen`,
/// to `list`; returns its id.
fn add_hold(list: &mut KVec<Hold>, ino: u64, igen: u64, start: u64, end: u64) -> Result<u64> {
    let id = NEXT_HOLD.fetch_add(1, Ordering::Relaxed);
    let hold = Hold::new(list, id, ino, igen, start, end);
    list.push(hold, GFP_KERNEL)?;
    Ok(id)
}

/// Takes a DMA hold on bytes `[start, start + len)` of `ino` for an
/// IOMMU mapping (`dma.c`): page aligned, inside the file (`EINVAL`), a
/// regular file; holes are filled with zeroed blocks first (`ENOSPC`).
/// From now on the range's blocks keep their place until
/// [`gmfs_rs_dma_release`]. `*id` names the hold, `*igen` is the inode's
/// generation (with `ino`, what the next kernel's
/// [`gmfs_rs_dma_hold_id`] takes), `*nr_runs` is the number of physical
/// runs [`gmfs_rs_dma_runs`] reports.
///
/// # Safety
/// `id`, `igen` and `nr_runs` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_dma_hold(
    ino: u64,
    start: u64,
    len: u64,
    id: *mut u64,
    igen: *mut u64,
    nr_runs: *mut u32,
) -> c_int {
    let vol = match volume() {
        Ok(vol) => vol,
        Err(e) => return e.to_errno(),
    };
    // Not while a fault zeroes a unit it reserved in this range.
    let _alloc = vol.alloc.lock();
    let r = with_meta_holds(|m, bm, list| {
        let i = m.inode(ino).map_err(errno)?;
        if !i.is_reg() {
            return Err(EINVAL);
        }
        let end = holds::check_range(start, len, i.size).map_err(errno)?;
        let (first, last) = (start >> BLOCK_SHIFT, end.div_ceil(BLOCK_SIZE));
        m.allocate_with(ino, first, last - first, bm, zero_blocks)
            .map_err(errno)?;
        let n = holds::phys_runs(m, ino, start, end, MAX_RUN, |_, _| {}).map_err(errno)?;
        let n = u32::try_from(n).map_err(|_| ENOMEM)?;
        let new_id = add_hold(list, ino, i.generation, start, end)?;
        Ok((new_id, i.generation, n))
    });
    match r {
        Ok((new_id, generation, n)) => {
            // SAFETY: valid per the contract.
            unsafe {
                id.write(new_id);
                igen.write(generation);
                nr_runs.write(n);
            }
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// The errno of a refused hold by id.
fn refused(r: holds::Refusal) -> Error {
    match r {
        holds::Refusal::NotInUse => ENOENT,
        holds::Refusal::Stale => ESTALE,
        holds::Refusal::Invalid => EINVAL,
        holds::Refusal::Hole => ENODATA,
        holds::Refusal::Meta(e) => errno(e),
    }
}

/// Takes a DMA hold on bytes `[start, start + len)` of inode `ino` of
/// generation `igen`, as they are: the restore of an IOMMU mapping the
/// previous kernel handed over (`dma.c`), whose tables point to the
/// blocks the file has. Nothing is allocated; no file is needed, and an
/// orphan (no link) may be held. Refused with `ENOENT` (no inode in use
/// has that number), `ESTALE` (another generation), `EINVAL` (not a
/// regular file; a range not page aligned, empty or past the size),
/// `ENODATA` (a hole in the range), `EUCLEAN` (no filesystem to hold
/// from: no region, the handed-over one refused, or its metadata had a
/// memory error), `EBUSY` (frozen for kexec). Otherwise as
/// [`gmfs_rs_dma_hold`]: released by [`gmfs_rs_dma_release`].
///
/// The volume is adopted at the module's initcall, so this works before
/// any mount.
///
/// # Safety
/// `id` and `nr_runs` must be valid for writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_dma_hold_id(
    ino: u64,
    igen: u64,
    start: u64,
    len: u64,
    id: *mut u64,
    nr_runs: *mut u32,
) -> c_int {
    // As a change: refused while frozen or after a metadata error. The
    // closure's own errors come back inside, apart from the volume's.
    let r = with_meta_holds(|m, _, list| {
        Ok(holds::check_id(m, ino, igen, start, len, MAX_RUN)
            .map_err(refused)
            .and_then(|(end, n)| {
                let n = u32::try_from(n).map_err(|_| ENOMEM)?;
                Ok((add_hold(list, ino, igen, start, end)?, n))
            }))
    });
    let r = match r {
        Ok(held) => held,
        // Frozen for kexec.
        Err(e) if e == EBUSY => Err(EBUSY),
        // No region, refused at adoption, or a metadata memory error.
        Err(_) => Err(EUCLEAN),
    };
    match r {
        Ok((new_id, n)) => {
            // SAFETY: valid per the contract.
            unsafe {
                id.write(new_id);
                nr_runs.write(n);
            }
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// Marks hold `id` as handed over to the next kernel at kexec, or no
/// longer: at the freeze its file gets `DMA_HELD`, so that the next
/// kernel keeps it whole until the IOMMU side resolves the handover.
/// `EINVAL` for an unknown hold, `EBUSY` once frozen (the flags are
/// written).
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_dma_set_preserved(id: u64, preserved: bool) -> c_int {
    let vol = match volume() {
        Ok(vol) => vol,
        Err(e) => return e.to_errno(),
    };
    let mut g = vol.inner.lock();
    if g.frozen {
        return EBUSY.to_errno();
    }
    ret(holds::set_preserved(&mut g.holds, id, preserved).map_err(errno))
}

/// `struct phys_vec` of `include/linux/types.h` on 64-bit.
#[repr(C)]
pub(crate) struct PhysVec {
    paddr: u64,
    len: u64,
}

/// Writes the `nr` physical runs of hold `id` to `out` (`EINVAL` for an
/// unknown hold, `EIO` if the count differs from what the hold said).
///
/// # Safety
/// `out` must be valid for `nr` writes.
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_dma_runs(id: u64, out: *mut PhysVec, nr: u32) -> c_int {
    let base = match volume() {
        Ok(vol) => vol.base,
        Err(e) => return e.to_errno(),
    };
    // Only reads: also while frozen or after a metadata error.
    ret(with_volume(false, |m, _, list, _| {
        let h = holds::find(list, id)
            .and_then(|at| list.get(at).copied())
            .ok_or(EINVAL)?;
        let mut k = 0u32;
        let n = holds::phys_runs(m, h.ino, h.start, h.end, MAX_RUN, |p, l| {
            if k < nr {
                // SAFETY: `k < nr`, valid per the contract.
                unsafe {
                    out.add(k as usize).write(PhysVec {
                        paddr: base + p,
                        len: l,
                    })
                };
            }
            k += 1;
        })
        .map_err(errno)?;
        if n != u64::from(nr) {
            return Err(EIO);
        }
        Ok(())
    }))
}

/// Evicts orphan `ino`, which nothing holds any more (`after` says why,
/// for the log). Not while frozen for kexec or after a metadata error:
/// the orphan then waits for the next boot's reclaim.
fn evict_unheld(g: &mut Inner, ino: u64, after: &str) {
    let used = match g.open(true) {
        Ok((mut m, mut bm)) => {
            if let Err(e) = m.evict(ino, &mut bm) {
                pr_err!("cannot evict inode {} after {}: {:?}\n", ino, after, e);
            }
            Some(bm.used())
        }
        Err(_) => None,
    };
    if let Some(used) = used {
        g.blocks_used = used;
    }
}

/// Releases hold `id`; evicts its inode if that was pending and this was
/// its last hold. Never fails for the caller: an eviction that cannot
/// happen now (frozen for kexec) leaves an orphan the next boot frees.
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_dma_release(id: u64) {
    let Ok(vol) = volume() else { return };
    let mut g = vol.inner.lock();
    let Some(at) = holds::find(&g.holds, id) else {
        pr_err!("release of unknown DMA hold {}\n", id);
        return;
    };
    let released = g.holds.remove(at);
    let Ok(released) = released else { return };
    if holds::evict_after_release(&g.holds, &released) {
        evict_unheld(&mut g, released.ino, "its last DMA hold");
    }
}

/// The IOMMU side resolved the previous kernel's handover (every
/// mapping restored, or refused with its devices blocked, or there was
/// none): drops the boot holds, evicts the orphans nothing holds any
/// more, and allows a reformat again. Idempotent.
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_dma_handover_done() {
    let Ok(vol) = volume() else { return };
    let mut g = vol.inner.lock();
    let was_pending = g.handover_pending;
    g.handover_pending = false;
    let mut dropped = 0u64;
    while let Some(at) = holds::next_boot(&g.holds) {
        let removed = g.holds.remove(at);
        let Ok(boot) = removed else { break };
        dropped += 1;
        if holds::evict_after_release(&g.holds, &boot) {
            evict_unheld(&mut g, boot.ino, "the IOMMU handover");
        }
    }
    if was_pending || dropped > 0 {
        pr_info!(
            "IOMMU handover resolved: {} files no longer kept whole\n",
            dropped
        );
    }
}

/// Damages the metadata on purpose (test kernels only): the next kernel
/// must refuse it. Kinds are `GMFS_CORRUPT_*` of gmfs_abi.h.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_test_corrupt(kind: u32) -> c_int {
    use crate::format::layout::{ext, put_u64, EXTENT_SIZE};
    ret(with_meta(|m, _| {
        let geo = *m.geometry();
        let extent_off = |id: u64| (geo.extent_offset() + (id - 1) * EXTENT_SIZE) as usize;
        // The first two extents in use, decoded.
        let (mut first, mut second) = (None, None);
        for id in 1..=m.counters().extent_hwm() {
            if let Some(e) = m.extent(id).map_err(errno)? {
                if first.is_none() {
                    first = Some(e);
                } else {
                    second = Some(e);
                    break;
                }
            }
        }
        let bytes = m.bytes_mut();
        match (kind, first, second) {
            (0, _, _) => bytes[0] ^= 0xff,
            // The first extent's list points back to itself.
            (1, Some(a), _) => put_u64(bytes, extent_off(a.id) + ext::NEXT, a.id).map_err(errno)?,
            // The second extent claims the first one's blocks.
            (2, Some(a), Some(b)) => {
                put_u64(bytes, extent_off(b.id) + ext::PHYS_BLOCK, a.phys_block).map_err(errno)?
            }
            _ => return Err(EINVAL),
        }
        Ok(())
    }))
}

/// Test kernels: crc32c of the first 4 MiB of data blocks of a region
/// formatted with the default geometry, read without trusting (or
/// needing) the metadata; shows that a refused region was left alone.
///
/// # Safety
/// `crc` must be valid for writes.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_test_data_crc(crc: *mut u32) -> c_int {
    const LEN: u64 = 4 << 20;
    let size = match volume() {
        Ok(vol) => vol.size,
        Err(e) => return e.to_errno(),
    };
    let Some(geo) = Geometry::new(size, Geometry::default_inodes(size)) else {
        return ENODEV.to_errno();
    };
    // SAFETY: maps part of the region or returns NULL.
    let p = unsafe { guestmemfs_region_map(geo.meta_bytes(), LEN) };
    if p.is_null() {
        return ENOMEM.to_errno();
    }
    // SAFETY: `LEN` bytes are mapped at `p`; only read here.
    let bytes = unsafe { core::slice::from_raw_parts(p.cast::<u8>(), LEN as usize) };
    let sum = crate::format::layout::crc32c(bytes);
    // SAFETY: unmapping what was mapped above; `crc` is valid per contract.
    unsafe {
        guestmemfs_region_unmap(p);
        crc.write(sum);
    }
    0
}

/// Test kernels: freezes as a kexec would, without the kexec.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
#[no_mangle]
pub(crate) extern "C" fn gmfs_rs_test_freeze() -> c_int {
    gmfs_rs_freeze();
    0
}

/// Test kernels: the region page a `poison` write names: page `page` of
/// region block `a` (`by_file` false), or the page at byte offset `b` of
/// file `a` (`by_file`; `ENXIO` for a hole or past EOF).
///
/// # Safety
/// `region_page` must be valid for writes.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_test_poison_page(
    by_file: bool,
    a: u64,
    b: u64,
    region_page: *mut u64,
) -> c_int {
    const PAGES: u64 = BLOCK_SIZE >> 12;
    let page = with_meta_read(|m, _, _| {
        let geo = *m.geometry();
        if !by_file {
            return if a < geo.nr_blocks && b < PAGES {
                Ok(a * PAGES + b)
            } else {
                Err(EINVAL)
            };
        }
        let i = m.inode(a).map_err(errno)?;
        if !i.is_reg() || b >= i.size {
            return Err(ENXIO);
        }
        let fb = b >> BLOCK_SHIFT;
        let e = m.map(a, fb).map_err(errno)?.ok_or(ENXIO)?;
        Ok((e.phys_block + (fb - e.file_block)) * PAGES + ((b % BLOCK_SIZE) >> 12))
    });
    match page {
        Ok(p) => {
            // SAFETY: valid per the contract.
            unsafe { region_page.write(p) };
            0
        }
        Err(e) => e.to_errno(),
    }
}

/// Test kernels: the first bad block at or after `from`: returns 1 with
/// `*block` and `*listed` (in the superblock's list, not only in
/// memory) set, 0 when there is none.
///
/// # Safety
/// `block` and `listed` must be valid for writes.
#[cfg(CONFIG_GUESTMEMFS_TEST)]
#[no_mangle]
pub(crate) unsafe extern "C" fn gmfs_rs_test_next_bad(
    from: u64,
    block: *mut u64,
    listed: *mut bool,
) -> c_int {
    let next = with_meta_read(|m, bm, _| {
        let Some(b) = bm.next_pinned(from) else {
            return Ok(None);
        };
        let mut on_list = false;
        for i in 0..m.bad_count().map_err(errno)? {
            on_list |= m.bad_block(i).map_err(errno)? == b;
        }
        Ok(Some((b, on_list)))
    });
    match next {
        Ok(Some((b, on_list))) => {
            // SAFETY: valid per the contract.
            unsafe {
                block.write(b);
                listed.write(on_list);
            }
            1
        }
        Ok(None) => 0,
        Err(e) => e.to_errno(),
    }
}
