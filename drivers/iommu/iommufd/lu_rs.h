/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The Rust half of iommufd live update (lu_rs.rs): the handover blob
 * (include/linux/kho/abi/iommufd.h) and the restore check.
 */
#ifndef __IOMMUFD_LU_RS_H
#define __IOMMUFD_LU_RS_H

#include <linux/types.h>

struct iommufd_lu_hwpt_rec {
	u64 token;
	u32 domain;
	u32 flags;
	u32 first_area;
	u32 nr_areas;
};

struct iommufd_lu_area_rec {
	u64 iova;
	u64 length;
	u64 ino;
	u64 igen;
	u64 offset;
	u32 prot;
	u32 pad;
};

/* @len bytes at @iova translate to @phys with @prot */
struct iommufd_lu_piece {
	u64 iova;
	u64 phys;
	u64 len;
	u32 prot;
	u32 pad;
};

u32 iommufd_lu_crc32c(const u8 *data, size_t len);
int iommufd_lu_rs_encode(u8 *out, size_t len,
			 const struct iommufd_lu_hwpt_rec *hwpts, u32 nr_hwpts,
			 const struct iommufd_lu_area_rec *areas, u32 nr_areas);
int iommufd_lu_rs_decode(const u8 *buf, size_t len, u32 *nr_hwpts,
			 u32 *nr_areas, struct iommufd_lu_hwpt_rec *hwpts,
			 struct iommufd_lu_area_rec *areas, char *why,
			 size_t why_len);
int iommufd_lu_rs_check(const struct iommufd_lu_piece *expected,
			size_t nr_expected,
			const struct iommufd_lu_piece *leaves, size_t nr_leaves,
			u32 flags, char *why, size_t why_len);

#endif
