/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _LINUX_KHO_ABI_IOMMU_VTD_H
#define _LINUX_KHO_ABI_IOMMU_VTD_H

#include <linux/types.h>

/**
 * DOC: Intel VT-d live update ABI
 *
 * When an iommufd with a marked HWPT is preserved in a live update session
 * (drivers/iommu/iommufd/liveupdate.c), the VT-d driver hands the hardware
 * state that keeps the HWPT's devices translating over to the next kernel:
 * the root and context tables of each unit, the page-table pages of each
 * preserved domain, the domain IDs and which device uses which domain.
 * Translation stays enabled across the kexec; the next kernel adopts the
 * tables in place (drivers/iommu/intel/liveupdate.c).
 *
 * The state travels as a LUO File-Lifecycle-Bound object, compatible
 * VTD_LU_FLB_COMPATIBLE. Its handle is the physical address of a
 * &struct vtd_lu_anchor (kho_alloc_preserve()), which points to the blob.
 * The compatible string never changes: an unknown one would make LUO refuse
 * every session. Incompatible layouts change VTD_LU_VERSION instead, which
 * a kernel refuses (translation blocked, reason logged), never panics on.
 *
 * Blob layout, all integers little endian, every record naturally aligned:
 *
 *  struct vtd_lu_header
 *  struct vtd_lu_unit   units[nr_units]
 *  struct vtd_lu_domain domains[nr_domains]
 *  struct vtd_lu_device devices[nr_devices]
 *  __le64               pages[nr_pages]
 *
 * pages[] holds physical addresses of preserved 4 KiB pages: for each unit,
 * its context tables; for each domain, every page-table page including the
 * top. Each slice (first, nr) is sorted ascending without duplicates.
 */

#define VTD_LU_FLB_COMPATIBLE	"iommu-vtd-lu-v1"
/* "VTDLU001" as a little-endian u64 */
#define VTD_LU_MAGIC		0x313030554c445456ULL
#define VTD_LU_VERSION		1
#define VTD_LU_MAX_UNITS	64
#define VTD_LU_MAX_DOMAINS	4096
#define VTD_LU_MAX_DEVICES	4096
#define VTD_LU_MAX_PAGES	(1U << 22)

/**
 * struct vtd_lu_anchor - what the FLB handle points to
 * @blob_phys: physical address of the blob (kho_alloc_preserve())
 * @blob_len: its length in bytes; 0 when nothing was frozen
 */
struct vtd_lu_anchor {
	__le64 blob_phys;
	__le64 blob_len;
};

/**
 * struct vtd_lu_header - start of the blob
 * @magic: VTD_LU_MAGIC
 * @version: VTD_LU_VERSION
 * @length: bytes of the whole blob
 * @nr_units: unit records
 * @nr_domains: domain records
 * @nr_devices: device records
 * @nr_pages: entries of pages[]
 * @flags: 0
 * @crc: crc32c of the blob with this field 0
 */
struct vtd_lu_header {
	__le64 magic;
	__le32 version;
	__le32 length;
	__le32 nr_units;
	__le32 nr_domains;
	__le32 nr_devices;
	__le32 nr_pages;
	__le32 flags;
	__le32 crc;
};

/**
 * struct vtd_lu_unit - a remapping unit that keeps translating
 * @reg_phys: its register base (DRHD), which names it in both kernels
 * @root_phys: its root table, as DMAR_RTADDR_REG holds it (legacy mode)
 * @first_page: its context tables in pages[]
 * @nr_pages: how many
 */
struct vtd_lu_unit {
	__le64 reg_phys;
	__le64 root_phys;
	__le32 first_page;
	__le32 nr_pages;
};

/**
 * struct vtd_lu_domain - a preserved second-stage domain
 * @token: the HWPT token (IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE)
 * @top_phys: its top page table, as context entries point to it
 * @first_page: its page-table pages (top included) in pages[]
 * @nr_pages: how many
 * @unit: the unit whose domain ID it uses
 * @did: that domain ID
 * @aw: the address width field of its context entries
 * @flags: VTD_LU_DOMAIN_*
 * @reserved: 0
 */
struct vtd_lu_domain {
	__le64 token;
	__le64 top_phys;
	__le32 first_page;
	__le32 nr_pages;
	__le16 unit;
	__le16 did;
	u8 aw;
	u8 flags;
	u8 reserved[2];
};

/* The unit does not snoop the page tables (they are flushed to memory) */
#define VTD_LU_DOMAIN_INCOHERENT	BIT(0)

/**
 * struct vtd_lu_device - a device whose context entry points at a domain
 * @segment: PCI segment
 * @bus: PCI bus
 * @devfn: PCI device and function
 * @domain: index of its domain record
 * @reserved: 0
 */
struct vtd_lu_device {
	__le16 segment;
	u8 bus;
	u8 devfn;
	__le16 domain;
	__le16 reserved;
};

#endif /* _LINUX_KHO_ABI_IOMMU_VTD_H */
