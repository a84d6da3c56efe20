/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef _LINUX_GUESTMEMFS_H
#define _LINUX_GUESTMEMFS_H

#include <linux/types.h>

/**
 * struct guestmemfs_region - the physical memory behind guestmemfs
 * @base: physical base address
 * @size: size in bytes
 * @handed_over: the region came from the previous kernel through KHO
 * @quarantined: the handed-over locator was damaged: the region is kept
 *	reserved but never used unless a mount asks to reformat it
 */
struct guestmemfs_region {
	u64 base;
	u64 size;
	bool handed_over;
	bool quarantined;
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
