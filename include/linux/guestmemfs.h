/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef _LINUX_GUESTMEMFS_H
#define _LINUX_GUESTMEMFS_H

#include <linux/err.h>
#include <linux/types.h>

/**
 * struct guestmemfs_region - the physical memory behind guestmemfs
 * @base: physical base address
 * @size: size in bytes
 * @generation: superblock generation the previous kernel's locator names
 *	(0 unless @handed_over); the metadata must carry the same one
 * @handed_over: the region came from the previous kernel through KHO
 * @metadata_poisoned: the previous kernel saw a memory error in the
 *	metadata: the filesystem must not be read
 */
struct guestmemfs_region {
	u64 base;
	u64 size;
	u64 generation;
	bool handed_over;
	bool metadata_poisoned;
};

struct file;
struct phys_vec;
struct guestmemfs_dma_hold;

#ifdef CONFIG_GUESTMEMFS
void guestmemfs_reserve_early(void);
const struct guestmemfs_region *guestmemfs_region_get(void);
/* DMA holds: fs/guestmemfs/dma.c */
bool guestmemfs_file_is_reg(struct file *file);
struct guestmemfs_dma_hold *guestmemfs_dma_hold_file(struct file *file,
						     u64 start, u64 len,
						     bool writable);
const struct phys_vec *guestmemfs_dma_runs(const struct guestmemfs_dma_hold *h,
					   unsigned int *nr);
void guestmemfs_dma_release(struct guestmemfs_dma_hold *h);
#else
static inline void guestmemfs_reserve_early(void) { }
static inline const struct guestmemfs_region *guestmemfs_region_get(void)
{
	return NULL;
}
static inline bool guestmemfs_file_is_reg(struct file *file)
{
	return false;
}
static inline struct guestmemfs_dma_hold *
guestmemfs_dma_hold_file(struct file *file, u64 start, u64 len, bool writable)
{
	return ERR_PTR(-EOPNOTSUPP);
}
static inline const struct phys_vec *
guestmemfs_dma_runs(const struct guestmemfs_dma_hold *h, unsigned int *nr)
{
	*nr = 0;
	return NULL;
}
static inline void guestmemfs_dma_release(struct guestmemfs_dma_hold *h) { }
#endif

#endif /* _LINUX_GUESTMEMFS_H */
