/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * guestmemfs: the calls between the C VFS glue and the Rust core.
 *
 * Rust sees only integers and these plain structs; the C side converts
 * VFS objects (inodes, kuid/kgid, timespec64) to and from them. The Rust
 * side (volume.rs) mirrors each struct with #[repr(C)] and asserts the
 * same sizes. All functions return 0 or a negative errno unless noted.
 */
#ifndef _GUESTMEMFS_ABI_H
#define _GUESTMEMFS_ABI_H

#include <linux/build_bug.h>
#include <linux/types.h>

#define GMFS_ROOT_INO		1
#define GMFS_BLOCK_SHIFT	21	/* 2 MiB blocks */
#define GMFS_NAME_MAX		255

struct gmfs_attr {
	u64 ino;
	u32 mode;
	u32 uid;
	u32 gid;
	u32 nlink;
	u64 size;
	u64 blocks;		/* in 2 MiB blocks */
	s64 atime_sec;
	s64 mtime_sec;
	s64 ctime_sec;
	u32 atime_nsec;
	u32 mtime_nsec;
	u32 ctime_nsec;
	u32 pad;
	u64 generation;
};
static_assert(sizeof(struct gmfs_attr) == 88);

struct gmfs_statfs {
	u64 blocks;		/* data blocks, 2 MiB each */
	u64 bfree;
	u64 files;
	u64 ffree;
};
static_assert(sizeof(struct gmfs_statfs) == 32);

struct gmfs_dirent {
	u64 ino;
	u64 next_pos;		/* cursor for the following call */
	u32 mode;
	u32 name_len;
	u8 name[GMFS_NAME_MAX + 1];
};
static_assert(sizeof(struct gmfs_dirent) == 280);

/* Entry sizes a fault asks for, and what the fault handler does. */
#define GMFS_ENTRY_PTE		0
#define GMFS_ENTRY_PMD		1
#define GMFS_ENTRY_PUD		2
#define GMFS_FAULT_MAP		0	/* install the entry: addr -> phys */
#define GMFS_FAULT_FALLBACK	1	/* VM_FAULT_FALLBACK */
#define GMFS_FAULT_SIGBUS	2	/* VM_FAULT_SIGBUS */
#define GMFS_FAULT_OOM		3	/* VM_FAULT_OOM: kernel memory short */
#define GMFS_FAULT_HWPOISON	4	/* VM_FAULT_HWPOISON: a memory error */

struct gmfs_fault {
	u64 addr;		/* entry's virtual address (aligned) */
	u64 phys;		/* physical address mapped at addr */
	u32 action;		/* GMFS_FAULT_* */
	u32 pad;
};
static_assert(sizeof(struct gmfs_fault) == 24);

/* Which fields of gmfs_setattr to apply. */
#define GMFS_SET_MODE	(1U << 0)
#define GMFS_SET_UID	(1U << 1)
#define GMFS_SET_GID	(1U << 2)
#define GMFS_SET_ATIME	(1U << 3)
#define GMFS_SET_MTIME	(1U << 4)
#define GMFS_SET_CTIME	(1U << 5)

struct gmfs_setattr {
	u32 valid;
	u32 mode;
	u32 uid;
	u32 gid;
	s64 atime_sec;
	s64 mtime_sec;
	s64 ctime_sec;
	u32 atime_nsec;
	u32 mtime_nsec;
	u32 ctime_nsec;
	u32 pad;
};
static_assert(sizeof(struct gmfs_setattr) == 56);

int gmfs_rs_mount(bool reformat);
int gmfs_rs_statfs(struct gmfs_statfs *out);
int gmfs_rs_getattr(u64 ino, struct gmfs_attr *out);
int gmfs_rs_lookup(u64 dir, const u8 *name, size_t len, u64 *ino);
int gmfs_rs_create(u64 dir, const u8 *name, size_t len, u32 mode, u32 uid,
		   u32 gid, s64 sec, u32 nsec, struct gmfs_attr *out);
int gmfs_rs_unlink(u64 dir, const u8 *name, size_t len, bool is_dir, s64 sec,
		   u32 nsec, u64 *ino);
int gmfs_rs_rename(u64 old_dir, const u8 *old_name, size_t old_len,
		   u64 new_dir, const u8 *new_name, size_t new_len,
		   bool noreplace, s64 sec, u32 nsec, u64 *replaced);
/* Returns 1 with *out filled, 0 at the end, or a negative errno. */
int gmfs_rs_readdir(u64 dir, u64 pos, struct gmfs_dirent *out);
int gmfs_rs_setattr(u64 ino, const struct gmfs_setattr *attr);
int gmfs_rs_set_size(u64 ino, u64 size, s64 sec, u32 nsec);
int gmfs_rs_fallocate(u64 ino, u64 offset, u64 len, bool keep_size, s64 sec,
		      u32 nsec);
int gmfs_rs_fault(u64 ino, u64 vm_start, u64 vm_end, u64 vm_offset, u64 addr,
		  u32 entry, struct gmfs_fault *out);
int gmfs_rs_evict(u64 ino);
void gmfs_rs_freeze(void);
/*
 * A memory error hit region block @block: pins and records it; *ino is
 * the file owning it (0: free) and *file_block its block in that file.
 * -EHWPOISON: it cannot be recovered (metadata, or owner unknown).
 */
int gmfs_rs_memory_failure(u64 block, u64 *ino, u64 *file_block);
/*
 * DMA holds (dma.c): take (filling holes; *igen is the inode's
 * generation), take by inode number and generation without filling
 * (restore after kexec), read the runs (struct phys_vec), mark for the
 * next kernel, release; resolve the previous kernel's handover.
 */
int gmfs_rs_dma_hold(u64 ino, u64 start, u64 len, u64 *id, u64 *igen,
		     u32 *nr_runs);
int gmfs_rs_dma_hold_id(u64 ino, u64 igen, u64 start, u64 len, u64 *id,
			u32 *nr_runs);
int gmfs_rs_dma_runs(u64 id, struct phys_vec *out, u32 nr);
int gmfs_rs_dma_set_preserved(u64 id, bool preserved);
void gmfs_rs_dma_release(u64 id);
void gmfs_rs_dma_handover_done(void);
/* True if file block @file_block of @ino is region block @block. */
bool gmfs_rs_block_is(u64 ino, u64 file_block, u64 block);

/* Test builds only (CONFIG_GUESTMEMFS_TEST): damage the metadata. */
#define GMFS_CORRUPT_MAGIC	0	/* superblock magic */
#define GMFS_CORRUPT_CYCLE	1	/* a file's extent list loops */
#define GMFS_CORRUPT_OVERLAP	2	/* two extents share blocks */
#define GMFS_CORRUPT_LOCATOR	3	/* the KHO locator's checksum */
#define GMFS_CORRUPT_GENERATION	4	/* locator names another generation */
int gmfs_rs_test_corrupt(u32 kind);
int gmfs_rs_test_freeze(void);
int gmfs_rs_test_corrupt_locator(void);
int gmfs_rs_test_skew_generation(void);
/* crc32c of the 4 MiB after the metadata of a default-format region. */
int gmfs_rs_test_data_crc(u32 *crc);
/* Region page of "block <a> <b>" (by_file false) or "file <a> <b>". */
int gmfs_rs_test_poison_page(bool by_file, u64 a, u64 b, u64 *region_page);
/* 1 with the first bad block >= from, 0 at the end, or -errno. */
int gmfs_rs_test_next_bad(u64 from, u64 *block, bool *listed);

/* Rust -> C: helpers the Rust core calls (region.c, vfs_glue.c). */
int guestmemfs_vfs_register(void);
/* mf.c: memory errors in the region (no-ops without MEMORY_FAILURE). */
int guestmemfs_mf_register(void);
void gmfs_mf_set_sb(struct super_block *sb, struct super_block *old);
void *guestmemfs_region_map(u64 offset, u64 len);
void guestmemfs_region_unmap(void *addr);
int guestmemfs_zero(u64 offset, u64 len);
void guestmemfs_now(s64 *sec, u32 *nsec);
u64 guestmemfs_clock_ns(void);	/* monotonic, for the logs' durations */
/* Validates a handed-over locator: 0 with the out fields set, or -errno. */
int guestmemfs_locator_decode(const u8 *buf, size_t len, u64 *base,
			      u64 *size, u64 *generation, u32 *flags);

#endif /* _GUESTMEMFS_ABI_H */
