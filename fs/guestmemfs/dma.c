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
 */

#define pr_fmt(fmt) "guestmemfs: " fmt

#include <linux/fs.h>
#include <linux/guestmemfs.h>
#include <linux/overflow.h>
#include <linux/slab.h>

#include "gmfs_abi.h"

struct guestmemfs_dma_hold {
	u64 id;
	unsigned int nr_runs;
	struct phys_vec runs[] __counted_by(nr_runs);
};

/* The Rust core writes struct phys_vec as two u64 (volume.rs PhysVec) */
static_assert(sizeof(struct phys_vec) == 16);

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
	struct guestmemfs_dma_hold *h;
	u32 nr;
	u64 id;
	int err;

	if (!guestmemfs_file_is_reg(file))
		return ERR_PTR(-EINVAL);
	if (!(file->f_mode & FMODE_WRITE))
		return ERR_PTR(-EACCES);
	err = gmfs_rs_dma_hold(file_inode(file)->i_ino, start, len, &id, &nr);
	if (err)
		return ERR_PTR(err);
	h = kvzalloc(struct_size(h, runs, nr), GFP_KERNEL_ACCOUNT);
	if (!h) {
		gmfs_rs_dma_release(id);
		return ERR_PTR(-ENOMEM);
	}
	h->id = id;
	h->nr_runs = nr;
	err = gmfs_rs_dma_runs(id, h->runs, nr);
	if (err) {
		gmfs_rs_dma_release(id);
		kvfree(h);
		return ERR_PTR(err);
	}
	return h;
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_dma_hold_file, "GUESTMEMFS");

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
