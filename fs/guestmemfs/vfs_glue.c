// SPDX-License-Identifier: GPL-2.0-only
/*
 * guestmemfs VFS glue.
 *
 * Linux 7.3 has no Rust abstractions for file_system_type, fs_context,
 * super_block, inode/dentry operations or vm_fault, and the helpers they
 * need (d_inode, dir_emit, i_size_write, invalidate_lock, ...) are inline.
 * So this file is C: each callback converts VFS objects to integers, calls
 * the Rust core (gmfs_rs_*, volume.rs) and applies the result to the VFS
 * objects. The filesystem logic and the on-memory format are in Rust.
 */

#define pr_fmt(fmt) "guestmemfs: " fmt

#include <linux/fs.h>
#include <linux/falloc.h>
#include <linux/fs_context.h>
#include <linux/guestmemfs.h>
#include <linux/fs_parser.h>
#include <linux/huge_mm.h>
#include <linux/init.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/kexec.h>
#include <linux/pagemap.h>
#include <linux/reboot.h>
#include <linux/slab.h>
#include <linux/statfs.h>

#include "gmfs_abi.h"

#define GUESTMEMFS_MAGIC	0x474d4653	/* "GMFS" */
#define GMFS_BLOCK_SIZE		(1ULL << GMFS_BLOCK_SHIFT)

static const struct super_operations gmfs_super_ops;
static const struct inode_operations gmfs_dir_iops;
static const struct inode_operations gmfs_file_iops;
static const struct file_operations gmfs_dir_fops;
static const struct file_operations gmfs_file_fops;

/* Set while the superblock exists: every mount shares it. */
static bool gmfs_mounted;

static void gmfs_apply_attr(struct inode *inode, const struct gmfs_attr *a)
{
	inode->i_mode = a->mode;
	i_uid_write(inode, a->uid);
	i_gid_write(inode, a->gid);
	set_nlink(inode, a->nlink);
	i_size_write(inode, a->size);
	inode->i_blocks = a->blocks << (GMFS_BLOCK_SHIFT - 9);
	inode_set_atime(inode, a->atime_sec, a->atime_nsec);
	inode_set_mtime(inode, a->mtime_sec, a->mtime_nsec);
	inode_set_ctime(inode, a->ctime_sec, a->ctime_nsec);
	inode->i_generation = a->generation;
}

/* Re-reads an inode's attributes after the Rust core changed them. */
static int gmfs_refresh(struct inode *inode)
{
	struct gmfs_attr a;
	int err = gmfs_rs_getattr(inode->i_ino, &a);

	if (!err)
		gmfs_apply_attr(inode, &a);
	return err;
}

static struct inode *gmfs_iget(struct super_block *sb, u64 ino)
{
	struct gmfs_attr a;
	struct inode *inode;
	int err;

	inode = iget_locked(sb, ino);
	if (!inode)
		return ERR_PTR(-ENOMEM);
	if (!(inode_state_read_once(inode) & I_NEW))
		return inode;
	err = gmfs_rs_getattr(ino, &a);
	if (err) {
		iget_failed(inode);
		return ERR_PTR(err);
	}
	gmfs_apply_attr(inode, &a);
	if (S_ISDIR(a.mode)) {
		inode->i_op = &gmfs_dir_iops;
		inode->i_fop = &gmfs_dir_fops;
	} else {
		inode->i_op = &gmfs_file_iops;
		inode->i_fop = &gmfs_file_fops;
	}
	mapping_set_unevictable(inode->i_mapping);
	unlock_new_inode(inode);
	return inode;
}

static struct dentry *gmfs_lookup(struct inode *dir, struct dentry *dentry,
				  unsigned int flags)
{
	struct inode *inode = NULL;
	u64 ino;
	int err;

	err = gmfs_rs_lookup(dir->i_ino, dentry->d_name.name,
			     dentry->d_name.len, &ino);
	if (err == -ENOENT)
		return d_splice_alias(NULL, dentry);
	if (err)
		return ERR_PTR(err);
	inode = gmfs_iget(dir->i_sb, ino);
	return d_splice_alias(inode, dentry);
}

static int gmfs_new(struct mnt_idmap *idmap, struct inode *dir,
		    struct dentry *dentry, umode_t mode)
{
	struct timespec64 now = current_time(dir);
	struct inode *inode;
	struct gmfs_attr a;
	kgid_t gid = current_fsgid();
	int err;

	/* setgid directories pass their group on, as inode_init_owner() does */
	if (dir->i_mode & S_ISGID) {
		gid = dir->i_gid;
		if (S_ISDIR(mode))
			mode |= S_ISGID;
	}
	err = gmfs_rs_create(dir->i_ino, dentry->d_name.name,
			     dentry->d_name.len, mode,
			     from_kuid(&init_user_ns, mapped_fsuid(idmap, i_user_ns(dir))),
			     from_kgid(&init_user_ns, gid),
			     now.tv_sec, now.tv_nsec, &a);
	if (err)
		return err;
	inode = gmfs_iget(dir->i_sb, a.ino);
	if (IS_ERR(inode))
		return PTR_ERR(inode);
	gmfs_refresh(dir);
	d_instantiate(dentry, inode);
	return 0;
}

static int gmfs_create(struct mnt_idmap *idmap, struct inode *dir,
		       struct dentry *dentry, umode_t mode)
{
	return gmfs_new(idmap, dir, dentry, (mode & ~S_IFMT) | S_IFREG);
}

static struct dentry *gmfs_mkdir(struct mnt_idmap *idmap, struct inode *dir,
				 struct dentry *dentry, umode_t mode)
{
	return ERR_PTR(gmfs_new(idmap, dir, dentry, (mode & ~S_IFMT) | S_IFDIR));
}

static int gmfs_remove(struct inode *dir, struct dentry *dentry, bool is_dir)
{
	struct timespec64 now = current_time(dir);
	struct inode *inode = d_inode(dentry);
	u64 ino;
	int err;

	err = gmfs_rs_unlink(dir->i_ino, dentry->d_name.name,
			     dentry->d_name.len, is_dir, now.tv_sec,
			     now.tv_nsec, &ino);
	if (err)
		return err;
	gmfs_refresh(dir);
	gmfs_refresh(inode);
	return 0;
}

static int gmfs_unlink(struct inode *dir, struct dentry *dentry)
{
	return gmfs_remove(dir, dentry, false);
}

static int gmfs_rmdir(struct inode *dir, struct dentry *dentry)
{
	return gmfs_remove(dir, dentry, true);
}

static int gmfs_rename(struct mnt_idmap *idmap, struct inode *old_dir,
		       struct dentry *old_dentry, struct inode *new_dir,
		       struct dentry *new_dentry, unsigned int flags)
{
	struct timespec64 now = current_time(old_dir);
	u64 replaced;
	int err;

	if (flags & ~RENAME_NOREPLACE)
		return -EINVAL;
	err = gmfs_rs_rename(old_dir->i_ino, old_dentry->d_name.name,
			     old_dentry->d_name.len, new_dir->i_ino,
			     new_dentry->d_name.name, new_dentry->d_name.len,
			     flags & RENAME_NOREPLACE, now.tv_sec, now.tv_nsec,
			     &replaced);
	if (err)
		return err;
	/*
	 * Both directories and a replaced target are locked by the VFS; a
	 * moved directory is not, so only its ctime is touched, not the
	 * attributes a racing setattr may be changing.
	 */
	gmfs_refresh(old_dir);
	if (new_dir != old_dir)
		gmfs_refresh(new_dir);
	inode_set_ctime_to_ts(d_inode(old_dentry), now);
	if (replaced && d_really_is_positive(new_dentry))
		gmfs_refresh(d_inode(new_dentry));
	return 0;
}

static int gmfs_setattr(struct mnt_idmap *idmap, struct dentry *dentry,
			struct iattr *attr)
{
	struct inode *inode = d_inode(dentry);
	struct gmfs_setattr s = {};
	int err;

	err = setattr_prepare(idmap, dentry, attr);
	if (err)
		return err;
	if (attr->ia_valid & ATTR_SIZE && attr->ia_size != i_size_read(inode)) {
		struct timespec64 now = current_time(inode);

		if (S_ISDIR(inode->i_mode))
			return -EISDIR;
		/*
		 * No mapping may keep a block that is about to be freed, nor
		 * show a page past the new EOF page: a huge pfn entry over the
		 * new EOF is zapped whole (split_huge_p?d of a special VMA
		 * clears it) and refaults with smaller entries.
		 */
		filemap_invalidate_lock(inode->i_mapping);
		if (attr->ia_size < i_size_read(inode))
			unmap_mapping_range(inode->i_mapping,
					    PAGE_ALIGN(attr->ia_size), 0, 1);
		err = gmfs_rs_set_size(inode->i_ino, attr->ia_size,
				       now.tv_sec, now.tv_nsec);
		filemap_invalidate_unlock(inode->i_mapping);
		if (err)
			return err;
		/* truncate(2) passes no ATTR_MTIME/CTIME; a size change sets both. */
		inode_set_mtime_to_ts(inode, inode_set_ctime_to_ts(inode, now));
	}
	setattr_copy(idmap, inode, attr);
	s.valid = GMFS_SET_MODE | GMFS_SET_UID | GMFS_SET_GID |
		  GMFS_SET_ATIME | GMFS_SET_MTIME | GMFS_SET_CTIME;
	s.mode = inode->i_mode;
	s.uid = i_uid_read(inode);
	s.gid = i_gid_read(inode);
	s.atime_sec = inode_get_atime_sec(inode);
	s.atime_nsec = inode_get_atime_nsec(inode);
	s.mtime_sec = inode_get_mtime_sec(inode);
	s.mtime_nsec = inode_get_mtime_nsec(inode);
	s.ctime_sec = inode_get_ctime_sec(inode);
	s.ctime_nsec = inode_get_ctime_nsec(inode);
	err = gmfs_rs_setattr(inode->i_ino, &s);
	/*
	 * Persisted or not, the inode shows what the Rust core holds: a
	 * failed setattr (frozen for kexec) leaves no unpersisted change.
	 */
	gmfs_refresh(inode);
	return err;
}

static int gmfs_getattr(struct mnt_idmap *idmap, const struct path *path,
			struct kstat *stat, u32 request_mask,
			unsigned int query_flags)
{
	struct inode *inode = d_inode(path->dentry);
	struct gmfs_attr a;

	/*
	 * The VFS inode is authoritative (changed under i_rwsem): never
	 * write it here. Only the block count, which faults change without
	 * the inode lock, comes from the Rust core, into the kstat.
	 */
	generic_fillattr(idmap, request_mask, inode, stat);
	stat->blksize = GMFS_BLOCK_SIZE;
	if (!gmfs_rs_getattr(inode->i_ino, &a))
		stat->blocks = a.blocks << (GMFS_BLOCK_SHIFT - 9);
	return 0;
}

static int gmfs_readdir(struct file *file, struct dir_context *ctx)
{
	struct inode *dir = file_inode(file);
	struct gmfs_dirent *d;
	int ret = 0;

	if (!dir_emit_dots(file, ctx))
		return 0;
	d = kmalloc_obj(*d);
	if (!d)
		return -ENOMEM;
	/* ctx->pos 0 and 1 are "." and ".."; then pos - 2 is the cursor. */
	for (;;) {
		ret = gmfs_rs_readdir(dir->i_ino, ctx->pos - 2, d);
		if (ret <= 0)
			break;
		if (!dir_emit(ctx, d->name, d->name_len, d->ino,
			      S_DT(d->mode))) {
			ret = 0;
			break;
		}
		ctx->pos = d->next_pos + 2;
	}
	kfree(d);
	return ret;
}

static long gmfs_fallocate(struct file *file, int mode, loff_t offset,
			   loff_t len)
{
	struct inode *inode = file_inode(file);
	struct timespec64 now;
	loff_t end;
	int err;

	if (mode & ~FALLOC_FL_KEEP_SIZE)
		return -EOPNOTSUPP;
	if (offset < 0 || len <= 0 || check_add_overflow(offset, len, &end))
		return -EINVAL;
	inode_lock(inode);
	/* RLIMIT_FSIZE and s_maxbytes, also with KEEP_SIZE (as shmem). */
	err = inode_newsize_ok(inode, end);
	if (!err)
		err = file_remove_privs(file);	/* suid/sgid, as a write */
	if (err)
		goto out;
	now = current_time(inode);
	err = gmfs_rs_fallocate(inode->i_ino, offset, len,
				!!(mode & FALLOC_FL_KEEP_SIZE), now.tv_sec,
				now.tv_nsec);
	gmfs_refresh(inode);
out:
	inode_unlock(inode);
	return err;
}

/*
 * The Rust core decides what a fault installs (fault.rs in the format
 * crate, property-tested against a model): a PUD or PMD when the aligned
 * range around the fault is inside the VMA, equally aligned in the file,
 * inside i_size and physically contiguous; else a fallback to the next
 * smaller size; SIGBUS at or past the page holding EOF or when a hole
 * cannot be filled. This handler only applies the answer. Holding the
 * invalidate lock shared keeps truncate from freeing the blocks between
 * the decision and the insert.
 */
static vm_fault_t gmfs_huge_fault(struct vm_fault *vmf, unsigned int order)
{
	struct vm_area_struct *vma = vmf->vma;
	struct inode *inode = file_inode(vma->vm_file);
	bool write = vmf->flags & FAULT_FLAG_WRITE;
	struct gmfs_fault f;
	vm_fault_t ret;
	u32 entry;

	if (order == PUD_ORDER)
		entry = GMFS_ENTRY_PUD;
	else if (order == PMD_ORDER)
		entry = GMFS_ENTRY_PMD;
	else if (order == 0)
		entry = GMFS_ENTRY_PTE;
	else
		return VM_FAULT_FALLBACK;
	filemap_invalidate_lock_shared(inode->i_mapping);
	if (gmfs_rs_fault(inode->i_ino, vma->vm_start, vma->vm_end,
			  (u64)vma->vm_pgoff << PAGE_SHIFT, vmf->address, entry,
			  &f) || f.action == GMFS_FAULT_SIGBUS)
		ret = VM_FAULT_SIGBUS;
	else if (f.action == GMFS_FAULT_OOM)
		ret = VM_FAULT_OOM;
	else if (f.action == GMFS_FAULT_HWPOISON)
		ret = VM_FAULT_HWPOISON;
	else if (f.action == GMFS_FAULT_FALLBACK)
		/* ->fault must never fall back: x86 BUG()s on that. */
		ret = WARN_ON_ONCE(entry == GMFS_ENTRY_PTE) ? VM_FAULT_SIGBUS :
							     VM_FAULT_FALLBACK;
	else if (entry == GMFS_ENTRY_PUD)
		ret = vmf_insert_pfn_pud(vmf, PHYS_PFN(f.phys), write);
	else if (entry == GMFS_ENTRY_PMD)
		ret = vmf_insert_pfn_pmd(vmf, PHYS_PFN(f.phys), write);
	else
		ret = vmf_insert_pfn(vma, f.addr, PHYS_PFN(f.phys));
	filemap_invalidate_unlock_shared(inode->i_mapping);
	return ret;
}

static vm_fault_t gmfs_fault(struct vm_fault *vmf)
{
	return gmfs_huge_fault(vmf, 0);
}

static const struct vm_operations_struct gmfs_vm_ops = {
	.fault		= gmfs_fault,
	.huge_fault	= gmfs_huge_fault,
};

static int gmfs_mmap_prepare(struct vm_area_desc *desc)
{
	/* Private mappings would need copy-on-write pages: no struct pages. */
	if (!vma_desc_test(desc, VMA_MAYSHARE_BIT))
		return -EINVAL;
	vma_desc_set_flags(desc, VMA_PFNMAP_BIT, VMA_DONTEXPAND_BIT,
			   VMA_DONTDUMP_BIT);
	desc->vm_ops = &gmfs_vm_ops;
	return 0;
}

/* Place mappings so that file offsets and addresses share 1 GiB alignment. */
static unsigned long gmfs_get_unmapped_area(struct file *file,
					    unsigned long addr,
					    unsigned long len,
					    unsigned long pgoff,
					    unsigned long flags)
{
	unsigned long off = pgoff << PAGE_SHIFT, align, len_align, found;

	if (addr || len < PMD_SIZE)
		return mm_get_unmapped_area(file, addr, len, pgoff, flags);
	align = len >= PUD_SIZE ? PUD_SIZE : PMD_SIZE;
	if (check_add_overflow(len, align, &len_align))
		return mm_get_unmapped_area(file, addr, len, pgoff, flags);
	found = mm_get_unmapped_area(file, 0, len_align, pgoff, flags);
	if (IS_ERR_VALUE(found))
		return mm_get_unmapped_area(file, addr, len, pgoff, flags);
	found += (off - found) & (align - 1);
	return found;
}

static int gmfs_statfs(struct dentry *dentry, struct kstatfs *buf)
{
	struct gmfs_statfs s;
	int err = gmfs_rs_statfs(&s);

	if (err)
		return err;
	buf->f_type = GUESTMEMFS_MAGIC;
	buf->f_bsize = GMFS_BLOCK_SIZE;
	buf->f_frsize = GMFS_BLOCK_SIZE;
	buf->f_blocks = s.blocks;
	buf->f_bfree = s.bfree;
	buf->f_bavail = s.bfree;
	buf->f_files = s.files;
	buf->f_ffree = s.ffree;
	buf->f_namelen = GMFS_NAME_MAX;
	return 0;
}

static void gmfs_evict_inode(struct inode *inode)
{
	truncate_inode_pages_final(&inode->i_data);
	clear_inode(inode);
	if (!inode->i_nlink)
		gmfs_rs_evict(inode->i_ino);
}

static const struct super_operations gmfs_super_ops = {
	.statfs		= gmfs_statfs,
	.evict_inode	= gmfs_evict_inode,
	.drop_inode	= inode_just_drop,
};

static const struct inode_operations gmfs_dir_iops = {
	.lookup		= gmfs_lookup,
	.create		= gmfs_create,
	.mkdir		= gmfs_mkdir,
	.unlink		= gmfs_unlink,
	.rmdir		= gmfs_rmdir,
	.rename		= gmfs_rename,
	.setattr	= gmfs_setattr,
	.getattr	= gmfs_getattr,
};

static const struct inode_operations gmfs_file_iops = {
	.setattr	= gmfs_setattr,
	.getattr	= gmfs_getattr,
};

static const struct file_operations gmfs_dir_fops = {
	.llseek		= generic_file_llseek,
	.read		= generic_read_dir,
	.iterate_shared	= gmfs_readdir,
};

/* No read/write: the VFS fails read(2) and write(2) with EINVAL. */
static const struct file_operations gmfs_file_fops = {
	.mmap_prepare		= gmfs_mmap_prepare,
	.get_unmapped_area	= gmfs_get_unmapped_area,
	.fallocate		= gmfs_fallocate,
	.llseek			= generic_file_llseek,
};

/**
 * guestmemfs_file_is_reg() - is @file a regular guestmemfs file
 * @file: any file
 *
 * For iommufd, which maps such files by physical address (dma.c).
 */
bool guestmemfs_file_is_reg(struct file *file)
{
	return file->f_op == &gmfs_file_fops;
}
EXPORT_SYMBOL_NS_GPL(guestmemfs_file_is_reg, "GUESTMEMFS");

struct gmfs_fs_context {
	bool reformat;
};

enum { Opt_reformat };

static const struct fs_parameter_spec gmfs_param_specs[] = {
	fsparam_flag("reformat", Opt_reformat),
	{}
};

static int gmfs_parse_param(struct fs_context *fc, struct fs_parameter *param)
{
	struct gmfs_fs_context *ctx = fc->fs_private;
	struct fs_parse_result result;
	int opt;

	opt = fs_parse(fc, gmfs_param_specs, param, &result);
	if (opt < 0)
		return opt;
	if (opt == Opt_reformat)
		ctx->reformat = true;
	return 0;
}

static int gmfs_fill_super(struct super_block *sb, struct fs_context *fc)
{
	struct gmfs_fs_context *ctx = fc->fs_private;
	struct inode *root;
	int err;

	err = gmfs_rs_mount(ctx->reformat);
	if (err == -ENODEV) {
		errorfc(fc, "no memory region reserved, boot with guestmemfs=<size>");
		return -ENODEV;
	}
	if (err)
		return err;
	sb->s_maxbytes = MAX_LFS_FILESIZE;
	sb->s_blocksize = PAGE_SIZE;
	sb->s_blocksize_bits = PAGE_SHIFT;
	sb->s_magic = GUESTMEMFS_MAGIC;
	sb->s_op = &gmfs_super_ops;
	sb->s_time_gran = 1;
	root = gmfs_iget(sb, GMFS_ROOT_INO);
	if (IS_ERR(root))
		return PTR_ERR(root);
	sb->s_root = d_make_root(root);
	if (!sb->s_root)
		return -ENOMEM;
	WRITE_ONCE(gmfs_mounted, true);
	gmfs_mf_set_sb(sb, NULL);
	return 0;
}

static int gmfs_get_tree(struct fs_context *fc)
{
	struct gmfs_fs_context *ctx = fc->fs_private;

	/* A mounted filesystem would just be shared: refuse, don't ignore. */
	if (ctx->reformat && READ_ONCE(gmfs_mounted)) {
		errorfc(fc, "cannot reformat while mounted");
		return -EBUSY;
	}
	return get_tree_single(fc, gmfs_fill_super);
}

static void gmfs_kill_sb(struct super_block *sb)
{
	gmfs_mf_set_sb(NULL, sb);
	kill_anon_super(sb);
	WRITE_ONCE(gmfs_mounted, false);
}

static void gmfs_free_fc(struct fs_context *fc)
{
	kfree(fc->fs_private);
}

static const struct fs_context_operations gmfs_context_ops = {
	.parse_param	= gmfs_parse_param,
	.get_tree	= gmfs_get_tree,
	.free		= gmfs_free_fc,
};

static int gmfs_init_fs_context(struct fs_context *fc)
{
	fc->fs_private = kzalloc_obj(struct gmfs_fs_context);
	if (!fc->fs_private)
		return -ENOMEM;
	fc->ops = &gmfs_context_ops;
	return 0;
}

static struct file_system_type guestmemfs_fs_type = {
	.name			= "guestmemfs",
	.init_fs_context	= gmfs_init_fs_context,
	.parameters		= gmfs_param_specs,
	.kill_sb		= gmfs_kill_sb,
};

/*
 * The reboot notifiers run in kernel_kexec() after LUO has frozen its
 * sessions and before the other CPUs stop: freezing here means the next
 * kernel finds the metadata of completed operations only.
 */
static int gmfs_reboot(struct notifier_block *nb, unsigned long action,
		       void *data)
{
	if (kexec_in_progress)
		gmfs_rs_freeze();
	return NOTIFY_DONE;
}

static struct notifier_block gmfs_reboot_nb = {
	.notifier_call	= gmfs_reboot,
};

int guestmemfs_vfs_register(void)
{
	int err = register_filesystem(&guestmemfs_fs_type);

	if (!err)
		register_reboot_notifier(&gmfs_reboot_nb);
	return err;
}
