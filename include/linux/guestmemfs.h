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
 * @dma_held: the previous kernel handed IOMMU mappings of the region over:
 *	no reformat until guestmemfs_dma_handover_done()
 */
struct guestmemfs_region {
	u64 base;
	u64 size;
	u64 generation;
	bool handed_over;
	bool metadata_poisoned;
	bool dma_held;
};

/**
 * struct guestmemfs_dma_id - what names a DMA hold's range across kexec
 * @ino: inode number
 * @igen: the inode's generation (a reused number has another)
 * @start: first byte of the range in the file, page aligned
 * @len: bytes, page aligned
 */
struct guestmemfs_dma_id {
	u64 ino;
	u64 igen;
	u64 start;
	u64 len;
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
struct guestmemfs_dma_hold *
guestmemfs_dma_hold_id(const struct guestmemfs_dma_id *id);
const struct phys_vec *guestmemfs_dma_runs(const struct guestmemfs_dma_hold *h,
					   unsigned int *nr);
void guestmemfs_dma_describe(const struct guestmemfs_dma_hold *h,
			     struct guestmemfs_dma_id *id);
int guestmemfs_dma_set_preserved(struct guestmemfs_dma_hold *h,
				 bool preserved);
void guestmemfs_dma_release(struct guestmemfs_dma_hold *h);
void guestmemfs_dma_handover_done(void);
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
static inline struct guestmemfs_dma_hold *
guestmemfs_dma_hold_id(const struct guestmemfs_dma_id *id)
{
	return ERR_PTR(-EOPNOTSUPP);
}
static inline void guestmemfs_dma_describe(const struct guestmemfs_dma_hold *h,
					   struct guestmemfs_dma_id *id)
{
	*id = (struct guestmemfs_dma_id){};
}
static inline int guestmemfs_dma_set_preserved(struct guestmemfs_dma_hold *h,
					       bool preserved)
{
	return -EOPNOTSUPP;
}
static inline void guestmemfs_dma_release(struct guestmemfs_dma_hold *h) { }
static inline void guestmemfs_dma_handover_done(void) { }
#endif

#endif /* _LINUX_GUESTMEMFS_H */
