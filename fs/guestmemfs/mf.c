// SPDX-License-Identifier: GPL-2.0-only
/*
 * guestmemfs: memory errors in the region.
 *
 * The region has no struct pages, so memory_failure() hands its pfns to
 * the pfn_address_space registered for them. One registration covers the
 * whole region; its get_mapping() callback (patch 0005) runs for every
 * error, mapped or not, in a context that may sleep. It lets the Rust core
 * pin and record the block (gmfs_rs_memory_failure), zaps the owning
 * file's mappings of it, and returns that file's mapping so that the core
 * signals the processes mapping the page. Later faults on the block get
 * VM_FAULT_HWPOISON from the fault plan, in this kernel and the next ones.
 *
 * Lock order: mf_mutex -> pfn_space_lock -> volume mutex (released before
 * the next) -> gmfs_sb_lock -> invalidate_lock -> i_mmap_rwsem. Nothing in
 * guestmemfs calls memory_failure() with one of its locks held. The cost:
 * while a fault zeroes a new 1 GiB unit (holding the invalidate lock) or
 * fallocate zeroes under the volume mutex, other memory errors wait.
 */

#define pr_fmt(fmt) "guestmemfs: " fmt

#include <linux/fs.h>
#include <linux/guestmemfs.h>
#include <linux/memory-failure.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/pagemap.h>

#include "gmfs_abi.h"

/* The mounted superblock, or NULL; its lock keeps it alive for a lookup. */
static DEFINE_MUTEX(gmfs_sb_lock);
static struct super_block *gmfs_sb;

/* @sb mounted, or @old going away (NULL): publish it for gmfs_get_mapping. */
void gmfs_mf_set_sb(struct super_block *sb, struct super_block *old)
{
	mutex_lock(&gmfs_sb_lock);
	if (sb || gmfs_sb == old)
		gmfs_sb = sb;
	mutex_unlock(&gmfs_sb_lock);
}

#ifdef CONFIG_MEMORY_FAILURE

#define GMFS_BLOCK_PAGES	(1UL << (GMFS_BLOCK_SHIFT - PAGE_SHIFT))

/*
 * The event being handled, for gmfs_pfn_to_vma_pgoff(): pfn_space_lock is
 * held from ->get_mapping() to ->put_mapping(), so one slot is enough.
 */
static unsigned long gmfs_mf_pfn;
static pgoff_t gmfs_mf_pgoff;
static struct inode *gmfs_mf_inode;

static unsigned long gmfs_base_pfn;

static struct address_space *gmfs_get_mapping(struct pfn_address_space *space,
					      unsigned long pfn, int flags)
{
	unsigned long page = pfn - gmfs_base_pfn;
	u64 block = page / GMFS_BLOCK_PAGES, ino, file_block;
	struct inode *inode;
	loff_t start;
	int err;

	err = gmfs_rs_memory_failure(block, &ino, &file_block);
	/*
	 * Not recoverable (the metadata, or a block whose owner is unknown):
	 * the core reports a failure and the consumer is killed.
	 */
	if (err == -EHWPOISON)
		return ERR_PTR(err);
	if (err || !ino)
		return NULL;

	mutex_lock(&gmfs_sb_lock);
	/* Not in core: nobody maps the file, its next mmap faults anew. */
	inode = gmfs_sb ? ilookup(gmfs_sb, ino) : NULL;
	if (!inode) {
		mutex_unlock(&gmfs_sb_lock);
		return NULL;
	}
	/*
	 * The block is pinned: a fault deciding from now on gets
	 * VM_FAULT_HWPOISON; one that decided before holds the invalidate
	 * lock until its entry is in, so the zap below removes it. A PUD
	 * over the block goes whole and refaults as PMDs.
	 */
	start = (loff_t)file_block << GMFS_BLOCK_SHIFT;
	filemap_invalidate_lock(inode->i_mapping);
	/*
	 * The owner was found under the volume lock, since dropped: a
	 * truncate (which takes the invalidate lock) may have taken the block
	 * from the file, and the number may name a new file by now. A pinned
	 * block is never given to anyone else, so this check stays true until
	 * the unlock.
	 */
	if (!gmfs_rs_block_is(ino, file_block, block)) {
		filemap_invalidate_unlock(inode->i_mapping);
		iput(inode);
		mutex_unlock(&gmfs_sb_lock);
		return NULL;
	}
	unmap_mapping_range(inode->i_mapping, start, 1UL << GMFS_BLOCK_SHIFT, 1);
	filemap_invalidate_unlock(inode->i_mapping);

	gmfs_mf_pfn = pfn;
	gmfs_mf_pgoff = file_block * GMFS_BLOCK_PAGES + page % GMFS_BLOCK_PAGES;
	gmfs_mf_inode = inode;
	return inode->i_mapping;
}

static void gmfs_put_mapping(struct pfn_address_space *space,
			     struct address_space *mapping)
{
	struct inode *inode = gmfs_mf_inode;

	gmfs_mf_inode = NULL;
	iput(inode);
	mutex_unlock(&gmfs_sb_lock);
}

/*
 * Called under RCU for each VMA of the file's mapping: report the page's
 * offset only where the VMA covers it (an offset outside the VMA would
 * make the core SIGKILL the process).
 */
static int gmfs_pfn_to_vma_pgoff(struct vm_area_struct *vma, unsigned long pfn,
				 pgoff_t *pgoff)
{
	if (pfn != gmfs_mf_pfn)
		return -ENOENT;
	if (gmfs_mf_pgoff < vma->vm_pgoff ||
	    gmfs_mf_pgoff - vma->vm_pgoff >= vma_pages(vma))
		return -EFAULT;
	*pgoff = gmfs_mf_pgoff;
	return 0;
}

static struct pfn_address_space gmfs_pfn_space = {
	.pfn_to_vma_pgoff	= gmfs_pfn_to_vma_pgoff,
	.get_mapping		= gmfs_get_mapping,
	.put_mapping		= gmfs_put_mapping,
};

/*
 * Registers the region once; never unregistered (built in). A pfn that
 * shares a memory section with RAM has a memmap (pfn_valid()), and the
 * core then treats it as a reserved page and never asks the owner.
 */
int guestmemfs_mf_register(void)
{
	const struct guestmemfs_region *r = guestmemfs_region_get();
	unsigned long last;
	int err;

	if (!r)
		return 0;
	gmfs_base_pfn = PHYS_PFN(r->base);
	last = PHYS_PFN(r->base + r->size) - 1;
	gmfs_pfn_space.node.start = gmfs_base_pfn;
	gmfs_pfn_space.node.last = last;
	err = register_pfn_address_space(&gmfs_pfn_space);
	if (err) {
		pr_warn("memory errors in the region will not be handled: %d\n",
			err);
		return err;
	}
	if (pfn_valid(gmfs_base_pfn) || pfn_valid(last))
		pr_warn("the region shares a memory section with RAM: memory errors at its ends are not handled\n");
	return 0;
}

#else /* !CONFIG_MEMORY_FAILURE */

int guestmemfs_mf_register(void)
{
	return 0;
}

#endif /* CONFIG_MEMORY_FAILURE */
