// SPDX-License-Identifier: GPL-2.0-only
/*
 * guestmemfs VFS glue.
 *
 * Linux 7.3 has no Rust abstraction for registering a file_system_type or
 * for struct fs_context, so this file is C: it only registers the
 * filesystem type on behalf of the Rust module in guestmemfs.rs, which owns
 * the filesystem logic.
 */

#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/init.h>

int guestmemfs_vfs_register(void);

/*
 * Until the boot-time memory region exists (guestmemfs=<size>), there is
 * nothing to back a superblock, so every mount is refused with a message
 * that says what is missing.
 */
static int guestmemfs_init_fs_context(struct fs_context *fc)
{
	errorfc(fc, "no memory region reserved, boot with guestmemfs=<size>");
	return -ENODEV;
}

static struct file_system_type guestmemfs_fs_type = {
	.name			= "guestmemfs",
	.init_fs_context	= guestmemfs_init_fs_context,
	.kill_sb		= kill_anon_super,
};

int guestmemfs_vfs_register(void)
{
	return register_filesystem(&guestmemfs_fs_type);
}
