/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef _LINUX_GUESTMEMFS_H
#define _LINUX_GUESTMEMFS_H

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

#ifdef CONFIG_GUESTMEMFS
void guestmemfs_reserve_early(void);
const struct guestmemfs_region *guestmemfs_region_get(void);
#else
static inline void guestmemfs_reserve_early(void) { }
static inline const struct guestmemfs_region *guestmemfs_region_get(void)
{
	return NULL;
}
#endif

#endif /* _LINUX_GUESTMEMFS_H */
