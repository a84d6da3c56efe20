// SPDX-License-Identifier: GPL-2.0-only
/*
 * IOMMU_IOAS_MAP_FILE of guestmemfs files (memory without struct pages),
 * on the mock domain: the IOVAs translate to the file's memory, bad
 * ranges are refused, and the memory stays in place while mapped (a
 * shrink into a mapped range fails with EBUSY; an unlinked file keeps
 * its blocks until the last unmap).
 *
 * Needs a mounted guestmemfs: $GUESTMEMFS_DIR, default /mnt/gmfs
 * (boot with guestmemfs=2G, then: mount -t guestmemfs none /mnt/gmfs).
 * Skips without one.
 */
#include <stdlib.h>
#include <linux/liveupdate.h>
#include <sys/mman.h>
#include <sys/statfs.h>

#include "iommufd_utils.h"

#define GUESTMEMFS_MAGIC 0x474d4653
#define MIB (1UL << 20)
#define GIB (1UL << 30)
#define BLOCK (2 * MIB)

static __attribute__((constructor)) void setup_sizes(void)
{
	PAGE_SIZE = sysconf(_SC_PAGE_SIZE);
	BUFFER_SIZE = PAGE_SIZE * 16;
	buffer = mmap(NULL, BUFFER_SIZE, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert(buffer != MAP_FAILED);
	/* Shared helpers' memfd: not used here */
	(void)mfd;
	(void)mfd_buffer;
}

static const char *gmfs_dir(void)
{
	const char *dir = getenv("GUESTMEMFS_DIR");

	return dir ? dir : "/mnt/gmfs";
}

/*
 * A shared mapping of the file's first @len bytes with every page present
 * (MD_CHECK_MAP reads the CPU page table; MAP_POPULATE skips VM_PFNMAP).
 */
static uint8_t *gmfs_map(int gfd, size_t len)
{
	uint8_t *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED,
			    gfd, 0);
	size_t i;

	if (map == MAP_FAILED)
		return map;
	for (i = 0; i < len; i += PAGE_SIZE)
		(void)__atomic_load_n(map + i, __ATOMIC_RELAXED);
	return map;
}

static long gmfs_bfree(struct __test_metadata *_metadata)
{
	struct statfs s;

	ASSERT_EQ(0, statfs(gmfs_dir(), &s));
	return s.f_bfree;
}

/* Have the kernel check that the file's memory made it to the domain */
#define check_mock_iova(_ptr, _iova, _length)                                \
	({                                                                   \
		struct iommu_test_cmd check_map_cmd = {                      \
			.size = sizeof(check_map_cmd),                       \
			.op = IOMMU_TEST_OP_MD_CHECK_MAP,                    \
			.id = self->hwpt_id,                                 \
			.check_map = { .iova = _iova,                        \
				       .length = _length,                    \
				       .uptr = (uintptr_t)(_ptr) },          \
		};                                                           \
		ASSERT_EQ(0,                                                 \
			  ioctl(self->fd,                                    \
				_IOMMU_TEST_CMD(IOMMU_TEST_OP_MD_CHECK_MAP), \
				&check_map_cmd));                            \
	})

FIXTURE(guestmemfs)
{
	int fd;
	uint32_t ioas_id;
	uint32_t stdev_id;
	uint32_t hwpt_id;
	uint32_t idev_id;
	char path[256];
	int gfd;
	long bfree;
};

FIXTURE_SETUP(guestmemfs)
{
	struct statfs s;

	if (statfs(gmfs_dir(), &s) || s.f_type != GUESTMEMFS_MAGIC)
		SKIP(return, "no guestmemfs mounted at %s", gmfs_dir());
	snprintf(self->path, sizeof(self->path), "%s/iommufd-%d", gmfs_dir(),
		 getpid());
	self->bfree = s.f_bfree;
	self->gfd = open(self->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ASSERT_NE(-1, self->gfd);
	ASSERT_EQ(0, ftruncate(self->gfd, 8 * MIB));

	self->fd = open("/dev/iommu", O_RDWR);
	ASSERT_NE(-1, self->fd);
	test_ioctl_ioas_alloc(&self->ioas_id);
	test_cmd_mock_domain(self->ioas_id, &self->stdev_id, &self->hwpt_id,
			     &self->idev_id);
}

FIXTURE_TEARDOWN(guestmemfs)
{
	if (!self->path[0])
		return;
	teardown_iommufd(self->fd, _metadata);
	close(self->gfd);
	unlink(self->path);
	/* Every hold and mark gone with the iommufd: no block leaked */
	EXPECT_EQ(self->bfree, gmfs_bfree(_metadata));
}

/* The mapping shows the file: every page translates to the file's page */
TEST_F(guestmemfs, map_translates)
{
	uint8_t *map;
	__u64 iova;

	map = gmfs_map(self->gfd, 8 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	memset(map, 0x5a, 8 * MIB);

	test_ioctl_ioas_map_file(self->gfd, 0, 8 * MIB, &iova);
	check_mock_iova(map, iova, 8 * MIB);
	/* A range inside the file, at an offset */
	test_ioctl_ioas_map_file(self->gfd, 3 * MIB + PAGE_SIZE, MIB, &iova);
	check_mock_iova(map + 3 * MIB + PAGE_SIZE, iova, MIB);
	ASSERT_EQ(0, munmap(map, 8 * MIB));
}

/* Holes are filled at map time, and the file memory is what is mapped */
TEST_F(guestmemfs, holes_filled)
{
	long before = gmfs_bfree(_metadata);
	uint8_t *map;
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 2 * MIB, 4 * MIB, &iova);
	ASSERT_EQ(before - 2, gmfs_bfree(_metadata));
	map = gmfs_map(self->gfd, 8 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	/* Zeroed, and the CPU sees the same memory */
	ASSERT_EQ(0, map[2 * MIB]);
	ASSERT_EQ(0, map[6 * MIB - 1]);
	map[2 * MIB] = 1;
	map[6 * MIB - PAGE_SIZE] = 1;
	check_mock_iova(map + 2 * MIB, iova, 4 * MIB);
	ASSERT_EQ(0, munmap(map, 8 * MIB));
}

/* Bad ranges: not page aligned, empty, past EOF */
TEST_F(guestmemfs, bad_ranges)
{
	__u64 iova;

	test_err_ioctl_ioas_map_file(EINVAL, self->gfd, 1, PAGE_SIZE, &iova);
	test_err_ioctl_ioas_map_file(EINVAL, self->gfd, 0, PAGE_SIZE + 1,
				     &iova);
	test_err_ioctl_ioas_map_file(EINVAL, self->gfd, 0, 0, &iova);
	test_err_ioctl_ioas_map_file(EINVAL, self->gfd, 0, 8 * MIB + PAGE_SIZE,
				     &iova);
	test_err_ioctl_ioas_map_file(EINVAL, self->gfd, 8 * MIB, PAGE_SIZE,
				     &iova);
	test_err_ioctl_ioas_map_file(EOVERFLOW, self->gfd, 2 * PAGE_SIZE,
				     (size_t)-PAGE_SIZE, &iova);
}

/*
 * Mapping needs a writable fd, even read-only: it fills holes and keeps
 * the owner from shrinking the file.
 */
TEST_F(guestmemfs, read_only_fd)
{
	__u64 iova;
	int rfd;

	rfd = open(self->path, O_RDONLY);
	ASSERT_NE(-1, rfd);
	test_err_ioctl_ioas_map_file(EACCES, rfd, 0, PAGE_SIZE, &iova);
	EXPECT_ERRNO(EACCES, _test_ioctl_ioas_map_file(self->fd, self->ioas_id,
						       rfd, 0, PAGE_SIZE, &iova,
						       IOMMU_IOAS_MAP_READABLE));
	close(rfd);
}

/* While mapped, no shrink into the range; outside it is fine */
TEST_F(guestmemfs, shrink_busy)
{
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 4 * MIB, &iova);
	EXPECT_ERRNO(EBUSY, ftruncate(self->gfd, 2 * MIB));
	EXPECT_ERRNO(EBUSY, ftruncate(self->gfd, 4 * MIB - PAGE_SIZE));
	ASSERT_EQ(0, ftruncate(self->gfd, 4 * MIB));
	ASSERT_EQ(0, ftruncate(self->gfd, 16 * MIB));
	test_ioctl_ioas_unmap(iova, 4 * MIB);
	ASSERT_EQ(0, ftruncate(self->gfd, 0));
}

/* An unlinked, closed file keeps its memory until the last unmap */
TEST_F(guestmemfs, unlink_keeps_memory)
{
	long before = gmfs_bfree(_metadata);
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 8 * MIB, &iova);
	ASSERT_EQ(before - 4, gmfs_bfree(_metadata));
	ASSERT_EQ(0, close(self->gfd));
	self->gfd = -1;
	ASSERT_EQ(0, unlink(self->path));
	ASSERT_EQ(before - 4, gmfs_bfree(_metadata));
	test_ioctl_ioas_unmap(iova, 8 * MIB);
	ASSERT_EQ(before, gmfs_bfree(_metadata));
}

/* Mapped before any domain exists; a domain attached later is filled */
TEST_F(guestmemfs, map_then_attach)
{
	uint32_t ioas_id, stdev_id, hwpt_id;
	uint8_t *map;
	__u64 iova;

	test_ioctl_ioas_alloc(&ioas_id);
	/* Inside the mock domain's aperture, which is not known yet */
	iova = MOCK_APERTURE_START;
	ASSERT_EQ(0, _test_ioctl_ioas_map_file(self->fd, ioas_id, self->gfd, 0,
					       4 * MIB, &iova,
					       IOMMU_IOAS_MAP_FIXED_IOVA |
						       IOMMU_IOAS_MAP_WRITEABLE |
						       IOMMU_IOAS_MAP_READABLE));
	test_cmd_mock_domain(ioas_id, &stdev_id, &hwpt_id, NULL);
	map = gmfs_map(self->gfd, 4 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	map[0] = 1;
	map[4 * MIB - 1] = 1;
	self->hwpt_id = hwpt_id;
	check_mock_iova(map, iova, 4 * MIB);
	ASSERT_EQ(0, munmap(map, 4 * MIB));
}

/* IOAS_COPY shares the mapping; the memory stays until both are gone */
TEST_F(guestmemfs, copy)
{
	struct iommu_ioas_copy copy = {
		.size = sizeof(copy),
		.flags = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
		.src_ioas_id = self->ioas_id,
		.length = 2 * MIB,
	};
	uint32_t ioas_id, stdev_id, hwpt_id;
	uint8_t *map;
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	test_ioctl_ioas_alloc(&ioas_id);
	test_cmd_mock_domain(ioas_id, &stdev_id, &hwpt_id, NULL);
	copy.dst_ioas_id = ioas_id;
	copy.src_iova = iova;
	ASSERT_EQ(0, ioctl(self->fd, IOMMU_IOAS_COPY, &copy));
	test_ioctl_ioas_unmap(iova, 2 * MIB);
	EXPECT_ERRNO(EBUSY, ftruncate(self->gfd, 0));
	map = gmfs_map(self->gfd, 2 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	map[0] = 1;
	self->hwpt_id = hwpt_id;
	check_mock_iova(map, copy.dst_iova, 2 * MIB);
	ASSERT_EQ(0, munmap(map, 2 * MIB));
	test_ioctl_ioas_unmap_id(ioas_id, copy.dst_iova, 2 * MIB);
	ASSERT_EQ(0, ftruncate(self->gfd, 0));
}

/* In-kernel access needs struct pages: refused */
TEST_F(guestmemfs, access_refused)
{
	struct iommu_test_cmd access_cmd = {
		.size = sizeof(access_cmd),
		.op = IOMMU_TEST_OP_ACCESS_RW,
	};
	uint8_t tmp[16];
	uint32_t access_id;
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	test_cmd_create_access(self->ioas_id, &access_id, 0);
	access_cmd.id = access_id;
	access_cmd.access_rw.iova = iova;
	access_cmd.access_rw.length = sizeof(tmp);
	access_cmd.access_rw.uptr = (uintptr_t)tmp;
	EXPECT_ERRNO(EINVAL, ioctl(self->fd,
				   _IOMMU_TEST_CMD(IOMMU_TEST_OP_ACCESS_RW),
				   &access_cmd));
	test_cmd_destroy_access(access_id);
}

/* Physically fragmented file, mapped from and to the middle of blocks */
TEST_F(guestmemfs, fragmented)
{
	char other[300];
	uint8_t *map;
	__u64 iova;
	int ofd;

	snprintf(other, sizeof(other), "%s-other", self->path);
	ofd = open(other, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ASSERT_NE(-1, ofd);
	/* Block 0 of the file, then another file's block, then the rest */
	ASSERT_EQ(0, fallocate(self->gfd, 0, 0, BLOCK));
	ASSERT_EQ(0, fallocate(ofd, 0, 0, BLOCK));
	test_ioctl_ioas_map_file(self->gfd, MIB, 6 * MIB, &iova);
	map = gmfs_map(self->gfd, 8 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	check_mock_iova(map + MIB, iova, 6 * MIB);
	ASSERT_EQ(0, munmap(map, 8 * MIB));
	close(ofd);
	unlink(other);
}

/* Partial unmap of a mapping: ENOENT, the memory stays held */
TEST_F(guestmemfs, partial_unmap)
{
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 4 * MIB, &iova);
	test_err_ioctl_ioas_unmap(ENOENT, iova, 2 * MIB);
	EXPECT_ERRNO(EBUSY, ftruncate(self->gfd, 0));
	test_ioctl_ioas_unmap(iova, 4 * MIB);
	ASSERT_EQ(0, ftruncate(self->gfd, 0));
}

/* A copy of a sub-range outlives the original map, the fd and the name */
TEST_F(guestmemfs, copy_outlives_file)
{
	struct iommu_ioas_copy copy = {
		.size = sizeof(copy),
		.flags = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
		.src_ioas_id = self->ioas_id,
		.length = 4 * MIB,
	};
	long before = gmfs_bfree(_metadata);
	uint32_t ioas_id, stdev_id, hwpt_id;
	uint8_t *map;
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 8 * MIB, &iova);
	test_ioctl_ioas_alloc(&ioas_id);
	test_cmd_mock_domain(ioas_id, &stdev_id, &hwpt_id, NULL);
	copy.dst_ioas_id = ioas_id;
	copy.src_iova = iova + 2 * MIB;
	ASSERT_EQ(0, ioctl(self->fd, IOMMU_IOAS_COPY, &copy));
	map = gmfs_map(self->gfd, 8 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	self->hwpt_id = hwpt_id;
	check_mock_iova(map + 2 * MIB, copy.dst_iova, 4 * MIB);
	ASSERT_EQ(0, munmap(map, 8 * MIB));
	test_ioctl_ioas_unmap(iova, 8 * MIB);
	ASSERT_EQ(0, close(self->gfd));
	self->gfd = -1;
	ASSERT_EQ(0, unlink(self->path));
	/* The copy shares the whole original hold: 4 blocks stay used */
	ASSERT_EQ(before - 4, gmfs_bfree(_metadata));
	test_ioctl_ioas_unmap_id(ioas_id, copy.dst_iova, 4 * MIB);
	ASSERT_EQ(before, gmfs_bfree(_metadata));
}

/* The storage domain goes; the other domain keeps the translation */
TEST_F(guestmemfs, two_domains)
{
	uint32_t stdev_id, hwpt_id;
	uint8_t *map;
	__u64 iova;

	test_cmd_mock_domain(self->ioas_id, &stdev_id, &hwpt_id, NULL);
	test_ioctl_ioas_map_file(self->gfd, 0, 4 * MIB, &iova);
	test_ioctl_destroy(self->stdev_id);
	map = gmfs_map(self->gfd, 4 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	self->hwpt_id = hwpt_id;
	check_mock_iova(map, iova, 4 * MIB);
	test_ioctl_ioas_unmap(iova, 4 * MIB);
	ASSERT_EQ(0, munmap(map, 4 * MIB));
}

/* Nothing is charged, so moving the charge to another process works */
TEST_F(guestmemfs, change_process)
{
	struct iommu_ioas_change_process cmd = {
		.size = sizeof(cmd),
	};
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	ASSERT_EQ(0, ioctl(self->fd, IOMMU_IOAS_CHANGE_PROCESS, &cmd));
}

/* Pinning pages for an emulated device needs struct pages: refused */
TEST_F(guestmemfs, access_pages_refused)
{
	struct iommu_test_cmd access_cmd = {
		.size = sizeof(access_cmd),
		.op = IOMMU_TEST_OP_ACCESS_PAGES,
		.access_pages = { .length = PAGE_SIZE },
	};
	uint8_t *map;
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	map = gmfs_map(self->gfd, 2 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	test_cmd_create_access(self->ioas_id, &access_cmd.id,
			       MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
	access_cmd.access_pages.iova = iova;
	access_cmd.access_pages.uptr = (uintptr_t)map;
	EXPECT_ERRNO(EINVAL,
		     ioctl(self->fd, _IOMMU_TEST_CMD(IOMMU_TEST_OP_ACCESS_PAGES),
			   &access_cmd));
	test_cmd_destroy_access(access_cmd.id);
	ASSERT_EQ(0, munmap(map, 2 * MIB));
}

/* Large pages off: mapped page by page, same translation */
TEST_F(guestmemfs, huge_pages_off)
{
	struct iommu_option cmd = {
		.size = sizeof(cmd),
		.option_id = IOMMU_OPTION_HUGE_PAGES,
		.op = IOMMU_OPTION_OP_SET,
		.val64 = 0,
	};
	uint32_t ioas_id, stdev_id, hwpt_id;
	uint8_t *map;
	__u64 iova;

	test_ioctl_ioas_alloc(&ioas_id);
	cmd.object_id = ioas_id;
	ASSERT_EQ(0, ioctl(self->fd, IOMMU_OPTION, &cmd));
	test_cmd_mock_domain(ioas_id, &stdev_id, &hwpt_id, NULL);
	iova = MOCK_APERTURE_START;
	ASSERT_EQ(0, _test_ioctl_ioas_map_file(self->fd, ioas_id, self->gfd, 0,
					       8 * MIB, &iova,
					       IOMMU_IOAS_MAP_FIXED_IOVA |
						       IOMMU_IOAS_MAP_WRITEABLE |
						       IOMMU_IOAS_MAP_READABLE));
	map = gmfs_map(self->gfd, 8 * MIB);
	ASSERT_NE(MAP_FAILED, map);
	self->hwpt_id = hwpt_id;
	check_mock_iova(map, iova, 8 * MIB);
	ASSERT_EQ(0, munmap(map, 8 * MIB));
}

static int mark_preserve(int fd, __u32 hwpt_id, __u64 token)
{
	struct iommu_hwpt_liveupdate_mark_preserve cmd = {
		.size = sizeof(cmd),
		.hwpt_id = hwpt_id,
		.hwpt_token = token,
	};

	return ioctl(fd, IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE, &cmd);
}

/* An explicit HWPT on the fixture's IOAS, the mock device moved onto it */
static __u32 explicit_hwpt(struct __test_metadata *_metadata,
			   struct _test_data_guestmemfs *self)
{
	__u32 hwpt_id;

	test_cmd_hwpt_alloc(self->idev_id, self->ioas_id, 0, &hwpt_id);
	test_cmd_mock_domain_replace(self->stdev_id, hwpt_id);
	return hwpt_id;
}

/* Marked for a live update: the IOAS is immutable until the HWPT goes */
TEST_F(guestmemfs, mark_immutable)
{
	struct iommu_ioas_copy copy = {
		.size = sizeof(copy),
		.flags = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
		.dst_ioas_id = self->ioas_id,
		.length = 2 * MIB,
	};
	struct iommu_ioas_unmap unmap_all = {
		.size = sizeof(unmap_all),
		.ioas_id = self->ioas_id,
		.length = UINT64_MAX,
	};
	uint32_t ioas_id, hwpt_id;
	__u64 iova, other;

	test_ioctl_ioas_map_file(self->gfd, 0, 4 * MIB, &iova);
	hwpt_id = explicit_hwpt(_metadata, self);
	ASSERT_EQ(0, mark_preserve(self->fd, hwpt_id, 7));
	test_err_ioctl_ioas_map_file(EBUSY, self->gfd, 4 * MIB, 2 * MIB,
				     &other);
	test_err_ioctl_ioas_map(EBUSY, buffer, PAGE_SIZE, &other);
	test_err_ioctl_ioas_unmap(EBUSY, iova, 4 * MIB);
	EXPECT_ERRNO(EBUSY, ioctl(self->fd, IOMMU_IOAS_UNMAP, &unmap_all));
	/* The IOAS cannot go while the HWPT uses it */
	EXPECT_ERRNO(EBUSY, _test_ioctl_destroy(self->fd, self->ioas_id));
	/* Copy into it: refused; out of it: fine */
	test_ioctl_ioas_alloc(&ioas_id);
	test_ioctl_ioas_map_id_file(ioas_id, self->gfd, 4 * MIB, 2 * MIB,
				    &other);
	copy.src_ioas_id = ioas_id;
	copy.src_iova = other;
	EXPECT_ERRNO(EBUSY, ioctl(self->fd, IOMMU_IOAS_COPY, &copy));
	copy.src_ioas_id = self->ioas_id;
	copy.dst_ioas_id = ioas_id;
	copy.src_iova = iova;
	ASSERT_EQ(0, ioctl(self->fd, IOMMU_IOAS_COPY, &copy));
	/* A HWPT with a device cannot be destroyed; moved off, it can */
	EXPECT_ERRNO(EBUSY, _test_ioctl_destroy(self->fd, hwpt_id));
	test_cmd_mock_domain_replace(self->stdev_id, self->ioas_id);
	test_err_ioctl_ioas_unmap(EBUSY, iova, 4 * MIB);
	test_ioctl_destroy(hwpt_id);
	/* The mark ended with the HWPT: the IOAS is mutable, the token free */
	test_ioctl_ioas_unmap(iova, 4 * MIB);
	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	hwpt_id = explicit_hwpt(_metadata, self);
	ASSERT_EQ(0, mark_preserve(self->fd, hwpt_id, 7));
}

/* Bad marks */
TEST_F(guestmemfs, mark_errors)
{
	uint32_t ioas_id, stdev_id, hwpt_id, idev_id, hwpt2, auto_id;
	void *mbuf;
	__u64 iova;
	int mfd;

	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	hwpt_id = explicit_hwpt(_metadata, self);
	EXPECT_ERRNO(EINVAL, mark_preserve(self->fd, hwpt_id, 0));
	/* The automatic HWPT went when the device moved off it */
	EXPECT_ERRNO(ENOENT, mark_preserve(self->fd, self->hwpt_id, 1));
	EXPECT_ERRNO(ENOENT, mark_preserve(self->fd, self->ioas_id, 1));
	EXPECT_ERRNO(ENOENT, mark_preserve(self->fd, 0xdead, 1));
	ASSERT_EQ(0, mark_preserve(self->fd, hwpt_id, 1));
	EXPECT_ERRNO(EBUSY, mark_preserve(self->fd, hwpt_id, 2));

	/* Another HWPT: the token is taken; memory other than guestmemfs */
	test_ioctl_ioas_alloc(&ioas_id);
	test_cmd_mock_domain(ioas_id, &stdev_id, &auto_id, &idev_id);
	/* An automatic HWPT: the kernel's to destroy */
	EXPECT_ERRNO(EINVAL, mark_preserve(self->fd, auto_id, 3));
	test_cmd_hwpt_alloc(idev_id, ioas_id, 0, &hwpt2);
	test_ioctl_ioas_map_id(ioas_id, buffer, PAGE_SIZE, &iova);
	EXPECT_ERRNO(EADDRINUSE, mark_preserve(self->fd, hwpt2, 1));
	EXPECT_ERRNO(EINVAL, mark_preserve(self->fd, hwpt2, 2));
	test_ioctl_ioas_unmap_id(ioas_id, iova, PAGE_SIZE);
	/* A memfd is not kept across kexec either */
	mbuf = memfd_mmap(2 * MIB, PROT_READ | PROT_WRITE, MAP_SHARED, &mfd);
	ASSERT_NE(MAP_FAILED, mbuf);
	test_ioctl_ioas_map_id_file(ioas_id, mfd, 0, 2 * MIB, &iova);
	EXPECT_ERRNO(EINVAL, mark_preserve(self->fd, hwpt2, 2));
	test_ioctl_ioas_unmap_id(ioas_id, iova, 2 * MIB);
	munmap(mbuf, 2 * MIB);
	close(mfd);
	/* An empty IOAS can be marked */
	ASSERT_EQ(0, mark_preserve(self->fd, hwpt2, 2));
}

static int get_leaf(int fd, __u32 hwpt_id, __u64 iova, __u64 *phys,
		    unsigned int *lg2sz)
{
	struct iommu_test_cmd cmd = {
		.size = sizeof(cmd),
		.op = IOMMU_TEST_OP_MD_GET_LEAF,
		.id = hwpt_id,
		.get_leaf = { .iova = iova },
	};
	int rc = ioctl(fd, _IOMMU_TEST_CMD(IOMMU_TEST_OP_MD_GET_LEAF), &cmd);

	*phys = cmd.get_leaf.out_phys;
	*lg2sz = cmd.get_leaf.out_lg2sz;
	return rc;
}

static __u64 map_fixed(struct __test_metadata *_metadata,
		       struct _test_data_guestmemfs *self, __u64 start,
		       __u64 len, __u64 iova)
{
	ASSERT_EQ(0, _test_ioctl_ioas_map_file(self->fd, self->ioas_id,
					       self->gfd, start, len, &iova,
					       IOMMU_IOAS_MAP_FIXED_IOVA |
						       IOMMU_IOAS_MAP_WRITEABLE |
						       IOMMU_IOAS_MAP_READABLE));
	return iova;
}

static int find_restored(int fd, __u64 token, __u32 reserved, __u32 *hwpt_id,
			 __u32 *ioas_id)
{
	struct iommu_hwpt_liveupdate_find_restored cmd = {
		.size = sizeof(cmd),
		.hwpt_token = token,
		.__reserved = reserved,
	};
	int rc = ioctl(fd, IOMMU_HWPT_LIVEUPDATE_FIND_RESTORED, &cmd);

	*hwpt_id = cmd.out_hwpt_id;
	*ioas_id = cmd.out_ioas_id;
	return rc;
}

/*
 * FIND_RESTORED in an iommufd that was not retrieved from a live update:
 * a marked HWPT is not a restored one.
 */
TEST_F(guestmemfs, find_restored_errors)
{
	__u32 hwpt_id, found_hwpt, found_ioas;
	__u64 iova;

	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	hwpt_id = explicit_hwpt(_metadata, self);
	ASSERT_EQ(0, mark_preserve(self->fd, hwpt_id, 5));
	EXPECT_ERRNO(ENOENT, find_restored(self->fd, 5, 0, &found_hwpt,
					   &found_ioas));
	EXPECT_ERRNO(EINVAL, find_restored(self->fd, 0, 0, &found_hwpt,
					   &found_ioas));
	EXPECT_ERRNO(EINVAL, find_restored(self->fd, 5, 1, &found_hwpt,
					   &found_ioas));
}

/*
 * Preserving an iommufd whose marked HWPT is on a domain no IOMMU driver
 * can hand over (the mock domain) is refused by LUO's preserve, and leaves
 * nothing behind.
 */
TEST_F(guestmemfs, preserve_refused)
{
	struct liveupdate_ioctl_create_session cs = { .size = sizeof(cs) };
	struct liveupdate_session_preserve_fd pf = { .size = sizeof(pf) };
	__u32 hwpt_id;
	__u64 iova;
	int luo;

	luo = open("/dev/liveupdate", O_RDWR);
	if (luo < 0)
		SKIP(return, "no /dev/liveupdate");
	snprintf((char *)cs.name, sizeof(cs.name), "kselftest-iommufd-gmfs");
	ASSERT_EQ(0, ioctl(luo, LIVEUPDATE_IOCTL_CREATE_SESSION, &cs));
	test_ioctl_ioas_map_file(self->gfd, 0, 2 * MIB, &iova);
	hwpt_id = explicit_hwpt(_metadata, self);
	pf.fd = self->fd;
	pf.token = 1;
	/* Not marked: nothing to hand over */
	EXPECT_ERRNO(ENOENT, ioctl(cs.fd, LIVEUPDATE_SESSION_PRESERVE_FD, &pf));
	ASSERT_EQ(0, mark_preserve(self->fd, hwpt_id, 9));
	EXPECT_ERRNO(EOPNOTSUPP,
		     ioctl(cs.fd, LIVEUPDATE_SESSION_PRESERVE_FD, &pf));
	/* Still marked: immutable. The teardown checks every block came back */
	EXPECT_ERRNO(EBUSY, _test_ioctl_ioas_unmap(self->fd, self->ioas_id,
						   iova, 2 * MIB, NULL));
	close(cs.fd);
	close(luo);
}

/*
 * IOPTE sizes, read back from the page table: a file made of a whole
 * 1 GiB unit, mapped at a 1 GiB aligned IOVA, gets a 1 GiB leaf; 2 MiB
 * aligned, 2 MiB leaves; an IOVA aligned to 4 KiB only, 4 KiB leaves;
 * each at the file's physical address.
 */
TEST_F(guestmemfs, leaf_sizes)
{
	unsigned int lg2;
	__u64 phys, base;
	uint8_t *map;

	if (PAGE_SIZE != 4096)
		SKIP(return, "the layout assumes 4 KiB pages");
	ASSERT_EQ(0, ftruncate(self->gfd, GIB));
	map_fixed(_metadata, self, 0, GIB, GIB);
	ASSERT_EQ(0, get_leaf(self->fd, self->hwpt_id, GIB, &base, &lg2));
	ASSERT_EQ(30, lg2);
	/* The leaf's address is the file's memory (as the CPU maps it) */
	map = mmap(NULL, GIB, PROT_READ | PROT_WRITE, MAP_SHARED, self->gfd, 0);
	ASSERT_NE(MAP_FAILED, map);
	(void)__atomic_load_n(map + 5 * MIB, __ATOMIC_RELAXED);
	check_mock_iova(map + 5 * MIB, GIB + 5 * MIB, 4096);
	ASSERT_EQ(0, munmap(map, GIB));
	ASSERT_EQ(0, get_leaf(self->fd, self->hwpt_id, GIB + 5 * MIB + 4096,
			      &phys, &lg2));
	ASSERT_EQ(30, lg2);
	ASSERT_EQ(base + 5 * MIB + 4096, phys);

	map_fixed(_metadata, self, 4 * MIB, 2 * MIB, 0x20000000);
	ASSERT_EQ(0, get_leaf(self->fd, self->hwpt_id, 0x20000000, &phys, &lg2));
	ASSERT_EQ(21, lg2);
	ASSERT_EQ(base + 4 * MIB, phys);

	map_fixed(_metadata, self, 6 * MIB, 16 * 4096, 0x10001000);
	ASSERT_EQ(0, get_leaf(self->fd, self->hwpt_id, 0x10003000, &phys, &lg2));
	ASSERT_EQ(12, lg2);
	ASSERT_EQ(base + 6 * MIB + 2 * 4096, phys);

	/* Nothing mapped there */
	EXPECT_ERRNO(ENOENT, get_leaf(self->fd, self->hwpt_id, 0x30000000,
				      &phys, &lg2));
}

TEST_HARNESS_MAIN
