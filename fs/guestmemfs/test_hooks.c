// SPDX-License-Identifier: GPL-2.0-only
/*
 * guestmemfs test hooks (CONFIG_GUESTMEMFS_TEST only).
 *
 * C because it is a debugfs file, for which 7.3's Rust debugfs has no
 * write-a-keyword file type; the corruption itself is done by the Rust
 * core (gmfs_rs_test_corrupt in volume.rs).
 */

#define pr_fmt(fmt) "guestmemfs: " fmt

#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/guestmemfs.h>
#include <linux/init.h>
#include <linux/mm.h>
#include <linux/seq_file.h>
#include <linux/set_memory.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "gmfs_abi.h"

static const char *const gmfs_corruptions[] = {
	[GMFS_CORRUPT_MAGIC]	= "magic",
	[GMFS_CORRUPT_CYCLE]	= "cycle",
	[GMFS_CORRUPT_OVERLAP]	= "overlap",
	[GMFS_CORRUPT_LOCATOR]	= "locator",
	[GMFS_CORRUPT_GENERATION] = "generation",
};

static ssize_t gmfs_corrupt_write(struct file *file, const char __user *buf,
				  size_t count, loff_t *ppos)
{
	char kind[16];
	int i, err;

	if (count == 0 || count >= sizeof(kind))
		return -EINVAL;
	if (copy_from_user(kind, buf, count))
		return -EFAULT;
	kind[count] = '\0';
	strim(kind);
	i = match_string(gmfs_corruptions, ARRAY_SIZE(gmfs_corruptions), kind);
	if (i < 0)
		return -EINVAL;
	if (i == GMFS_CORRUPT_LOCATOR)
		err = gmfs_rs_test_corrupt_locator();
	else if (i == GMFS_CORRUPT_GENERATION)
		err = gmfs_rs_test_skew_generation();
	else
		err = gmfs_rs_test_corrupt(i);
	if (err)
		return err;
	pr_warn("test hook: corrupted the metadata (%s) on request\n", kind);
	return count;
}

static const struct file_operations gmfs_corrupt_fops = {
	.write	= gmfs_corrupt_write,
};

/* Writing anything freezes the metadata as a kexec would. */
static ssize_t gmfs_freeze_write(struct file *file, const char __user *buf,
				 size_t count, loff_t *ppos)
{
	int err = gmfs_rs_test_freeze();

	return err ?: count;
}

static const struct file_operations gmfs_freeze_fops = {
	.write	= gmfs_freeze_write,
};

#ifdef CONFIG_MEMORY_FAILURE
/*
 * "file <ino> <offset>" or "block <n> [<page>]": a simulated memory error
 * (MF_SW_SIMULATED) in that page of the region, as the machine-check
 * handler would report it. The writer is the "current" process of the
 * event: if it maps the page, it gets SIGBUS with BUS_MCEERR_AR.
 */
static ssize_t gmfs_poison_write(struct file *file, const char __user *ubuf,
				 size_t count, loff_t *ppos)
{
	const struct guestmemfs_region *r = guestmemfs_region_get();
	char buf[64], kind[8];
	u64 a, b = 0, page;
	int n, err;

	if (!r)
		return -ENODEV;
	if (count == 0 || count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	n = sscanf(buf, "%7s %llu %llu", kind, &a, &b);
	if (n == 3 && !strcmp(kind, "file"))
		err = gmfs_rs_test_poison_page(true, a, b, &page);
	else if (n >= 2 && !strcmp(kind, "block"))
		err = gmfs_rs_test_poison_page(false, a, b, &page);
	else
		return -EINVAL;
	if (err)
		return err;
	pr_warn("test hook: simulated memory error at region page %llu\n", page);
	/*
	 * No guestmemfs lock is held here: the handler takes them. Then what
	 * the x86 machine-check handler does after a recovered error
	 * (kill_me_maybe()): drop the pfn from the direct map.
	 */
	err = memory_failure(PHYS_PFN(r->base) + page, MF_SW_SIMULATED);
	if (!err)
		set_mce_nospec(PHYS_PFN(r->base) + page);
	return err ?: count;
}

static const struct file_operations gmfs_poison_fops = {
	.write	= gmfs_poison_write,
};

/* One line per bad block: "<block> listed" or "<block> memory-only". */
static int gmfs_bad_blocks_show(struct seq_file *m, void *v)
{
	bool listed;
	u64 from = 0, block;
	int ret;

	while ((ret = gmfs_rs_test_next_bad(from, &block, &listed)) == 1) {
		seq_printf(m, "%llu %s\n", block, listed ? "listed" : "memory-only");
		from = block + 1;
	}
	return ret;
}
DEFINE_SHOW_ATTRIBUTE(gmfs_bad_blocks);
#endif /* CONFIG_MEMORY_FAILURE */

static int gmfs_data_crc_get(void *data, u64 *val)
{
	u32 crc;
	int err = gmfs_rs_test_data_crc(&crc);

	*val = crc;
	return err;
}
DEFINE_DEBUGFS_ATTRIBUTE(gmfs_data_crc_fops, gmfs_data_crc_get, NULL, "0x%08llx\n");

static int __init gmfs_test_hooks_init(void)
{
	struct dentry *dir = debugfs_create_dir("guestmemfs", NULL);

	debugfs_create_file("corrupt", 0200, dir, NULL, &gmfs_corrupt_fops);
	debugfs_create_file("freeze", 0200, dir, NULL, &gmfs_freeze_fops);
	debugfs_create_file_unsafe("data_crc", 0400, dir, NULL,
				   &gmfs_data_crc_fops);
#ifdef CONFIG_MEMORY_FAILURE
	debugfs_create_file("poison", 0200, dir, NULL, &gmfs_poison_fops);
	debugfs_create_file("bad_blocks", 0400, dir, NULL, &gmfs_bad_blocks_fops);
#endif
	return 0;
}
late_initcall(gmfs_test_hooks_init);
