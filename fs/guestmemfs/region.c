// SPDX-License-Identifier: GPL-2.0-only
/*
 * guestmemfs: the boot-time memory region.
 *
 * This is C because it runs inside setup_arch(), before the direct map
 * exists, and uses __init e820/memblock interfaces that have no Rust
 * bindings. The decision logic (is the handed-over locator valid?) is in
 * Rust: guestmemfs_locator_decode() in guestmemfs.rs, from the shared
 * format crate.
 *
 * The region is taken out of memblock.memory before init_mem_mapping()
 * and marked E820 reserved, so it gets no direct mapping, no struct pages
 * and never reaches an allocator. On a KHO boot the previous kernel's
 * locator says where the region is; every memblock allocation before this
 * hook is confined to KHO scratch, which never overlaps the region.
 */

#define pr_fmt(fmt) "guestmemfs: " fmt

#include <linux/guestmemfs.h>
#include <linux/init.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/kexec_handover.h>
#include <linux/kho/abi/guestmemfs.h>
#include <linux/memblock.h>
#include <linux/pgtable.h>
#include <linux/sizes.h>
#include <linux/timekeeping.h>
#include <asm/e820/api.h>
#include <asm/early_ioremap.h>

#include "gmfs_abi.h"


static u64 guestmemfs_requested __initdata;
static phys_addr_t guestmemfs_locator_phys __initdata;
static struct guestmemfs_region guestmemfs_region __ro_after_init;

static int __init guestmemfs_param(char *arg)
{
	u64 size;

	if (!arg)
		return -EINVAL;
	size = memparse(arg, &arg);
	if (*arg || !size || !IS_ALIGNED(size, SZ_2M)) {
		pr_err("guestmemfs=%s: need a non-zero multiple of 2M\n", arg);
		return -EINVAL;
	}
	guestmemfs_requested = size;
	return 0;
}
early_param("guestmemfs", guestmemfs_param);

static bool __init guestmemfs_overlaps_scratch(u64 base, u64 size)
{
	struct memblock_region *r;

	for_each_mem_region(r) {
		if (memblock_is_kho_scratch(r) && r->base < base + size &&
		    base < r->base + r->size)
			return true;
	}
	return false;
}

static void __init guestmemfs_carve(u64 base, u64 size, bool handed_over)
{
	memblock_remove(base, size);
	e820__range_update(base, size, E820_TYPE_RAM, E820_TYPE_RESERVED);
	e820__update_table(e820_table);
	guestmemfs_region.base = base;
	guestmemfs_region.size = size;
	guestmemfs_region.handed_over = handed_over;
	pr_info("%s region [mem %#018llx-%#018llx] (%llu MiB)\n",
		handed_over ? "kept" : "reserved", base, base + size - 1,
		size >> 20);
}

static void __init guestmemfs_reserve_handed_over(void)
{
	u64 base, size, generation;
	phys_addr_t phys;
	u32 flags;
	size_t len;
	void *loc;
	int err;

	err = kho_retrieve_subtree(GUESTMEMFS_KHO_NODE, &phys, &len);
	if (err) {
		if (guestmemfs_requested)
			pr_err("kexec handover without a guestmemfs region: not reserving a new one (needs a cold boot)\n");
		return;
	}
	/* Freed at the claim initcall whatever becomes of it. */
	guestmemfs_locator_phys = phys;
	/* Map what the ABI defines, never what the subtree claims. */
	if (len != GUESTMEMFS_LOCATOR_SIZE) {
		pr_err("handed-over locator has %zu bytes, not %d: not taking any memory on its word\n",
		       len, GUESTMEMFS_LOCATOR_SIZE);
		return;
	}
	loc = early_memremap(phys, GUESTMEMFS_LOCATOR_SIZE);
	if (!loc) {
		pr_err("cannot map the handed-over locator, region not reserved\n");
		return;
	}
	err = guestmemfs_locator_decode(loc, GUESTMEMFS_LOCATOR_SIZE, &base,
					&size, &generation, &flags);
	early_memunmap(loc, GUESTMEMFS_LOCATOR_SIZE);
	if (err) {
		/*
		 * Nothing vouches for a damaged locator's base and size: they
		 * could name memory other subsystems preserved. Take nothing.
		 */
		pr_err("not taking any memory on a damaged locator's word (%d); no guestmemfs region this boot\n",
		       err);
		return;
	}
	if (!e820__mapped_all(base, base + size, E820_TYPE_RAM) ||
	    !memblock_is_region_memory(base, size) ||
	    memblock_is_region_reserved(base, size) ||
	    guestmemfs_overlaps_scratch(base, size)) {
		pr_err("handed-over region [mem %#018llx-%#018llx] is not free RAM, refusing it\n",
		       base, base + size - 1);
		return;
	}
	if (guestmemfs_requested && guestmemfs_requested != size)
		pr_warn("guestmemfs=%lluM ignored: keeping the handed-over %lluM region\n",
			guestmemfs_requested >> 20, size >> 20);
	guestmemfs_region.generation = generation;
	guestmemfs_region.metadata_poisoned =
		flags & GUESTMEMFS_LOCATOR_META_POISONED;
	guestmemfs_region.dma_held = flags & GUESTMEMFS_LOCATOR_DMA_HELD;
	guestmemfs_carve(base, size, true);
}

/**
 * guestmemfs_reserve_early() - take the guestmemfs region out of memory
 *
 * Called from setup_arch() after memblock knows all RAM and firmware
 * reservations, and before init_mem_mapping() builds the direct map.
 */
void __init guestmemfs_reserve_early(void)
{
	u64 size = guestmemfs_requested, align;
	phys_addr_t base;

	if (is_kho_boot()) {
		guestmemfs_reserve_handed_over();
		return;
	}
	if (!size)
		return;
	align = IS_ALIGNED(size, SZ_1G) ? SZ_1G : SZ_2M;
	base = memblock_phys_alloc_range(size, align, 0, MEMBLOCK_ALLOC_ANYWHERE);
	if (!base) {
		pr_err("cannot find %llu MiB of free memory aligned to %llu MiB\n",
		       size >> 20, align >> 20);
		return;
	}
	/* Only the address was wanted: drop the reservation, then remove. */
	memblock_phys_free(base, size);
	guestmemfs_carve(base, size, false);
}

/**
 * guestmemfs_region_get() - the region reserved at boot
 *
 * Return: the region, or NULL when none was reserved.
 */
const struct guestmemfs_region *guestmemfs_region_get(void)
{
	return guestmemfs_region.size ? &guestmemfs_region : NULL;
}

/*
 * Helpers for the Rust core (volume.rs), which has no bindings for these.
 * Parts of the region (metadata blocks, blocks to zero) are mapped
 * write-back through memremap(), which maps non-RAM with its own page
 * tables: the region stays out of the direct map.
 */
void *guestmemfs_region_map(u64 offset, u64 len)
{
	const struct guestmemfs_region *r = &guestmemfs_region;

	if (!r->size || offset > r->size || len > r->size - offset)
		return NULL;
	return memremap(r->base + offset, len, MEMREMAP_WB);
}

/*
 * Zeroes newly allocated blocks, 2 MiB at a time through a temporary
 * mapping (the region has no direct mapping), so a new file never shows
 * the data of a deleted one.
 */
int guestmemfs_zero(u64 offset, u64 len)
{
	while (len) {
		u64 chunk = min_t(u64, len, SZ_2M);
		void *p = guestmemfs_region_map(offset, chunk);

		if (!p)
			return -ENOMEM;
		memset(p, 0, chunk);
		guestmemfs_region_unmap(p);
		offset += chunk;
		len -= chunk;
		cond_resched();
	}
	return 0;
}

void guestmemfs_region_unmap(void *addr)
{
	memunmap(addr);
}

u64 guestmemfs_clock_ns(void)
{
	return ktime_get_ns();
}

void guestmemfs_now(s64 *sec, u32 *nsec)
{
	struct timespec64 ts;

	ktime_get_real_ts64(&ts);
	*sec = ts.tv_sec;
	*nsec = ts.tv_nsec;
}

/*
 * Claim the range so /dev/mem cannot read it and /proc/iomem names its
 * owner, and give it a write-back memory type: PAT maps untracked non-RAM
 * uncached otherwise.
 */
static int __init guestmemfs_region_claim(void)
{
	struct guestmemfs_region *r = &guestmemfs_region;
	pgprot_t prot = PAGE_KERNEL;
	int err;

	/* The old locator was consumed in setup_arch(); give its page back. */
	if (guestmemfs_locator_phys)
		kho_restore_free(phys_to_virt(guestmemfs_locator_phys));
	if (!r->size)
		return 0;
	if (!request_mem_region_exclusive(r->base, r->size, "guestmemfs")) {
		pr_err("cannot claim the region in iomem\n");
		r->size = 0;
		return -EBUSY;
	}
	err = pfnmap_track(PHYS_PFN(r->base), r->size, &prot);
	if (err || ((pgprot_val(prot) ^ pgprot_val(PAGE_KERNEL)) & _PAGE_CACHE_MASK)) {
		pr_err("cannot map the region write-back (%d)\n", err);
		r->size = 0;
		return err ?: -EINVAL;
	}
	return 0;
}
subsys_initcall(guestmemfs_region_claim);
