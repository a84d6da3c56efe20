/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The Rust half of VT-d live update (lu_vtd_rs.rs): the handover blob
 * (include/linux/kho/abi/iommu_vtd.h), encoded and checked by the format
 * crate drivers/iommu/liveupdate/format (src/shared/vtd.rs).
 */
#ifndef __INTEL_LU_VTD_RS_H
#define __INTEL_LU_VTD_RS_H

#include <linux/build_bug.h>
#include <linux/types.h>

/*
 * The records, in CPU byte order, with the fields of struct vtd_lu_unit,
 * struct vtd_lu_domain and struct vtd_lu_device in their order (the Rust
 * types format::vtd::{Unit, Domain, Device}, repr(C)).
 */
struct vtd_lu_unit_rec {
	u64 reg_phys;
	u64 root_phys;
	u32 first_page;
	u32 nr_pages;
};

struct vtd_lu_domain_rec {
	u64 token;
	u64 top_phys;
	u32 first_page;
	u32 nr_pages;
	u16 unit;		/* U16_MAX: no frozen device */
	u16 did;
	u8 aw;
	u8 flags;		/* VTD_LU_DOMAIN_* */
	u8 reserved[2];		/* 0 */
};

struct vtd_lu_device_rec {
	u16 segment;
	u8 bus;
	u8 devfn;
	u16 domain;
	u16 reserved;		/* 0 */
};

static_assert(sizeof(struct vtd_lu_unit_rec) == 24);
static_assert(sizeof(struct vtd_lu_domain_rec) == 32);
static_assert(sizeof(struct vtd_lu_device_rec) == 8);

/* Bytes that hold any reason text with its NUL (format::vtd::REASON_LEN) */
#define VTD_LU_REASON_LEN	48

/* crc32c(seed, data, len), defined in liveupdate.c for the Rust side */
u32 vtd_lu_crc32c(u32 seed, const u8 *data, size_t len);

/*
 * Writes the blob into @out and checks it as the next kernel will.
 * @scratch: @nr_units + @nr_pages entries.
 * Return: bytes written; -E2BIG, -ENOSPC or -EINVAL with @reason set.
 */
ssize_t vtd_lu_encode_rs(u8 *out, size_t out_len,
			 const struct vtd_lu_unit_rec *units, u32 nr_units,
			 const struct vtd_lu_domain_rec *domains, u32 nr_domains,
			 const struct vtd_lu_device_rec *devices,
			 u32 nr_devices, const u64 *pages, u32 nr_pages,
			 u64 *scratch, size_t scratch_len, char *reason,
			 size_t reason_len);

/*
 * Checks a blob from the previous kernel (intel_lu_parse()'s checks).
 * @scratch: nr_units + nr_pages entries; @len / 8 always suffice.
 * Return: 0, or -EINVAL with @reason set.
 */
int vtd_lu_parse_rs(const u8 *blob, size_t len, u64 *scratch,
		    size_t scratch_len, char *reason, size_t reason_len);

#endif
