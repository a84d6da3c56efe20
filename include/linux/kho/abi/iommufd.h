/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _LINUX_KHO_ABI_IOMMUFD_H
#define _LINUX_KHO_ABI_IOMMUFD_H

#include <linux/types.h>

/**
 * DOC: iommufd live update ABI
 *
 * An iommufd preserved in a LUO session (LIVEUPDATE_SESSION_PRESERVE_FD)
 * is handed over as one blob, compatible IOMMUFD_LU_FH_COMPATIBLE, whose
 * physical address (kho_alloc_preserve()) is the file's serialized data.
 * It names every HWPT that was marked with
 * IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE, and every mapping of its IOAS as a
 * guestmemfs file range. The IOMMU tables themselves are the IOMMU
 * driver's handover (e.g. include/linux/kho/abi/iommu_vtd.h), linked by
 * the HWPT token.
 *
 * The compatible string never changes (an unknown one would make LUO fail
 * every session); the layout is versioned by IOMMUFD_LU_VERSION, and a
 * blob of another version is refused with a log line, never parsed.
 *
 * Layout, all integers little endian:
 *
 *  struct iommufd_lu_header
 *  struct iommufd_lu_hwpt  hwpts[nr_hwpts]
 *  struct iommufd_lu_area  areas[nr_areas]
 *  __le32                  crc32c of every byte before it
 *
 * HWPT n owns areas[first_area .. first_area + nr_areas - 1]; the HWPTs
 * tile the area table in order. A HWPT's areas are sorted by IOVA, page
 * aligned, non-empty and do not overlap. Tokens are non-zero and unique.
 * Reserved fields and unknown flags must be zero. The encoder, decoder and
 * validator are drivers/iommu/liveupdate/format (Rust, host-tested).
 */

#define IOMMUFD_LU_FH_COMPATIBLE	"iommufd-gmfs-v1"
/*
 * A LUO File-Lifecycle-Bound object without data, used by every preserved
 * iommufd file: LUO finishes it with the last of them (the end of the
 * guestmemfs boot holds)
 */
#define IOMMUFD_LU_FILES_FLB_COMPATIBLE	"iommufd-lu-files-v1"
/* "IOFDLU01" as a little-endian u64 */
#define IOMMUFD_LU_MAGIC		0x3130554c44464f49ULL
#define IOMMUFD_LU_VERSION		1
#define IOMMUFD_LU_MAX_HWPTS		4096
#define IOMMUFD_LU_MAX_AREAS		(1U << 20)

/**
 * struct iommufd_lu_header - start of the blob
 * @magic: IOMMUFD_LU_MAGIC
 * @version: IOMMUFD_LU_VERSION
 * @length: bytes of the whole blob, checksum included
 * @nr_hwpts: HWPT records, at least 1
 * @nr_areas: area records
 * @flags: 0
 * @reserved: 0
 */
struct iommufd_lu_header {
	__le64 magic;
	__le32 version;
	__le32 length;
	__le32 nr_hwpts;
	__le32 nr_areas;
	__le32 flags;
	__le32 reserved;
};

/**
 * struct iommufd_lu_hwpt - a preserved HWPT
 * @token: its IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE token
 * @domain: index of the HWPT in this blob (unique); the IOMMU driver
 *          finds the domain by @token
 * @flags: IOMMUFD_LU_HWPT_*
 * @first_area: its first area record
 * @nr_areas: its area records
 * @reserved: 0
 */
struct iommufd_lu_hwpt {
	__le64 token;
	__le32 domain;
	__le32 flags;
	__le32 first_area;
	__le32 nr_areas;
	__le64 reserved;
};

/* The HWPT enforced cache coherency (IOMMU_CAP_ENFORCE_CACHE_COHERENCY) */
#define IOMMUFD_LU_HWPT_ENFORCE_CC	BIT(0)

/**
 * struct iommufd_lu_area - one mapping of a HWPT's IOAS
 * @iova: first IOVA
 * @length: bytes
 * @ino: the guestmemfs inode mapped
 * @igen: its generation, so that a reused inode number is not taken
 * @offset: file offset mapped at @iova
 * @prot: IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE (1, 2, 4)
 * @reserved: 0
 */
struct iommufd_lu_area {
	__le64 iova;
	__le64 length;
	__le64 ino;
	__le64 igen;
	__le64 offset;
	__le32 prot;
	__le32 reserved;
};

#endif /* _LINUX_KHO_ABI_IOMMUFD_H */
