// SPDX-License-Identifier: GPL-2.0-only
/*
 * guestmemfs: DMA holds, for IOMMU mappings of guestmemfs files by
 * physical address (iommufd IOMMU_IOAS_MAP_FILE).
 *
 * guestmemfs memory has no struct pages, so it cannot be pinned. Instead
 * the mapper takes a hold on a file range: holes are filled, and from
 * then on the range's blocks neither move nor go away (a shrink into it
 * fails with -EBUSY, and an unlinked file is kept until its last hold is
 * released). The hold carries the range's physical runs, which stay valid
 * while it exists. The rules and the runs come from the Rust core
 * (gmfs_rs_dma_* in volume.rs, format/src/shared/holds.rs).
 *
 * Across a live update (kexec with the IOMMU tables kept), the mapper
 * marks its holds preserved; the freeze flags their files DMA_HELD, and
 * the next kernel keeps those files whole from its boot (boot holds) until
 * guestmemfs_dma_handover_done(). Meanwhile the mapper takes its holds
 * again by inode number and generation (guestmemfs_dma_hold_id()), which
 * allocates nothing: the runs are the blocks the kept tables point to.
 */

#define pr_fmt(fmt) "guestmemfs: " fmt

#include <linux/fs.h>
#include <linux/guestmemfs.h>
#include <linux/overflow.h>
#include <linux/slab.h>

#include "gmfs_abi.h"

struct guestmemfs_dma_hold {
	u64 id;
	struct guestmemfs_dma_id what;
	unsigned int nr_runs;
	struct phys_vec runs[] __counted_by(nr_runs);
};

/* The Rust core writes struct phys_vec as two u64 (volume.rs PhysVec) */
static_assert(sizeof(struct phys_vec) == 16);

/*
 * Wraps Rust hold @id, of @nr runs, on @what: allocates the C hold and
 * copies the runs. Releases the Rust hold on failure.
 */
static struct guestmemfs_dma_hold *
gmfs_dma_wrap(u64 id, u32 nr, const struct guestmemfs_dma_id *what)
{
	struct guestmemfs_dma_hold *h;
	int err;

	h = kvzalloc(struct_size(h, runs, nr), GFP_KERNEL_ACCOUNT);
	if (!h) {
		gmfs_rs_dma_release(id);
		return ERR_PTR(-ENOMEM);
	}
	h->id = id;
	h->what = *what;
	h->nr_runs = nr;
	err = gmfs_rs_dma_runs(id, h->runs, nr);
	if (err) {
		gmfs_rs_dma_release(id);
		kvfree(h);
		return ERR_PTR(err);
	}
	return h;
}

/**
 * guestmemfs_dma_hold_file() - hold a range of a guestmemfs file for DMA
 * @file: a regular guestmemfs file (guestmemfs_file_is_reg())
 * @start: first byte, page aligned
 * @len: bytes, page aligned, not 0; @start + @len at most the file size
 * @writable: the device will write
 *
 * @file must be open for writing whatever @writable says: a hold fills
 * holes and blocks the file's shrinking, which a reader may not do.
 *
 * Return: the hold, or ERR_PTR(-EINVAL) for a bad range or file,
 * -EACCES for a file not open for writing, -ENOSPC when holes cannot be
 * filled, -EBUSY while frozen for kexec, -ENOMEM.
 */
struct guestmemfs_dma_hold *guestmemfs_dma_hold_file(struct file *file,
						     u64 start, u64 len,
						     bool writable)
{
	struct guestmemfs_dma_id what = {
		.ino = file_inode(file)->i_ino,
		.start = start,
		.len = len,
	};
	u32 nr;
	u64 id;
	int err;

	if (!guestmemfs_file_is_reg(file))
		return ERR_PTR(-EINVAL);
	if (!(file->f_mode & FMODE_WRITE))
		return ERR_PTR(-EACCES);
	err = gmfs_rs_dma_hold(what.ino, start, len, &id, &what.igen, &nr);
	if (err)
		return ERR_PTR(err);
	return gmfs_dma_wrap(id, nr, &what);
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_hold_file, "GUESTMEMFS");

/**
 * guestmemfs_dma_hold_id() - hold a range as it is, by inode number and
 *	generation, to restore an IOMMU mapping the previous kernel handed over
 * @id: what guestmemfs_dma_describe() said in the previous kernel
 *
 * Nothing is allocated: a hole in the range is refused, so the runs are
 * the blocks the file had, which the kept IOMMU tables point to. No file
 * is needed and the inode may have no link (an orphan). The volume is
 * adopted at boot (the module's initcall), so this works before anything
 * is mounted. The hold is then like one from guestmemfs_dma_hold_file().
 *
 * Return: the hold, or ERR_PTR(-ENOENT) when no inode in use has that
 * number, -ESTALE for another generation, -EINVAL for a range not page
 * aligned, empty or past the file size, or not a regular file, -ENODATA
 * for a hole in the range, -EUCLEAN when there is no filesystem to hold
 * from (no region, the handed-over filesystem was refused, or its
 * metadata had a memory error), -EBUSY while frozen for kexec, -ENOMEM.
 */
struct guestmemfs_dma_hold *
guestmemfs_dma_hold_id(const struct guestmemfs_dma_id *id)
{
	u64 hold;
	u32 nr;
	int err;

	err = gmfs_rs_dma_hold_id(id->ino, id->igen, id->start, id->len,
				  &hold, &nr);
	if (err)
		return ERR_PTR(err);
	return gmfs_dma_wrap(hold, nr, id);
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_hold_id, "GUESTMEMFS");

/**
 * guestmemfs_dma_runs() - the physical runs of a hold, in file order
 * @h: the hold
 * @nr: set to the number of runs
 *
 * The runs are maximal (split only beyond 16 TiB, at a 1 GiB multiple)
 * and do not change while @h exists.
 */
const struct phys_vec *guestmemfs_dma_runs(const struct guestmemfs_dma_hold *h,
					   unsigned int *nr)
{
	*nr = h->nr_runs;
	return h->runs;
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_runs, "GUESTMEMFS");

/**
 * guestmemfs_dma_describe() - what names a hold's range across kexec
 * @h: the hold
 * @id: set to its inode number, the inode's generation, start and length,
 *	for guestmemfs_dma_hold_id() in the next kernel
 */
void guestmemfs_dma_describe(const struct guestmemfs_dma_hold *h,
			     struct guestmemfs_dma_id *id)
{
	*id = h->what;
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_describe, "GUESTMEMFS");

/**
 * guestmemfs_dma_set_preserved() - hand a hold's mapping to the next kernel
 * @h: the hold
 * @preserved: true to hand it over at the next kexec, false to undo that
 *
 * At the kexec freeze, the file of every preserved hold is flagged
 * DMA_HELD: the next kernel keeps it whole (no shrink, no orphan reclaim,
 * no reformat) from its boot until guestmemfs_dma_handover_done().
 *
 * Return: 0, or -EBUSY once frozen for kexec (the flags are written).
 */
int guestmemfs_dma_set_preserved(struct guestmemfs_dma_hold *h,
				 bool preserved)
{
	return gmfs_rs_dma_set_preserved(h->id, preserved);
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_set_preserved, "GUESTMEMFS");

/**
 * guestmemfs_dma_release() - release a hold; the caller must have
 *	unmapped (and flushed) every IOMMU mapping of its runs
 * @h: the hold
 */
void guestmemfs_dma_release(struct guestmemfs_dma_hold *h)
{
	gmfs_rs_dma_release(h->id);
	kvfree(h);
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_release, "GUESTMEMFS");

/**
 * guestmemfs_dma_handover_done() - the previous kernel's IOMMU mappings
 *	are resolved
 *
 * Called by the IOMMU side once every mapping the previous kernel handed
 * over is restored (held again with guestmemfs_dma_hold_id()) or refused
 * with its devices blocked and the IOTLB flushed, or at boot when there
 * was no handover. Drops the boot holds, frees the orphans nothing holds
 * any more, and allows a reformat again. Idempotent.
 */
void guestmemfs_dma_handover_done(void)
{
	gmfs_rs_dma_handover_done();
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_handover_done, "GUESTMEMFS");
