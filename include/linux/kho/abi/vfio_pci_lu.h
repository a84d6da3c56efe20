/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _LINUX_KHO_ABI_VFIO_PCI_LU_H
#define _LINUX_KHO_ABI_VFIO_PCI_LU_H

#include <linux/types.h>

/**
 * DOC: vfio-pci live update ABI
 *
 * A VFIO cdev file of a vfio-pci function, preserved in a LUO session
 * (LIVEUPDATE_SESSION_PRESERVE_FD), keeps the function running through the
 * kexec: no reset, bus mastering kept on, its translation kept by the
 * IOMMU handover (include/linux/kho/abi/iommu_vtd.h). Interrupts must be
 * off at the kexec.
 *
 * Two objects are handed over:
 *
 *  - the file's serialized data: VFIO_PCI_LU_FILE_TAG in bits 63:32 and
 *    the function's PCI address (segment << 16 | bus << 8 | devfn) in bits
 *    31:0;
 *  - one LUO File-Lifecycle-Bound object, compatible
 *    VFIO_PCI_LU_FLB_COMPATIBLE, whose data is the physical address of one
 *    preserved page (kho_alloc_preserve()): a struct vfio_pci_lu_header
 *    followed by nr_funcs struct vfio_pci_lu_func records. The next
 *    kernel reads it before vfio-pci probes, to know which functions were
 *    left mastering.
 *
 * All integers are little endian. The version in the header, not the
 * compatible strings, tells the layout: version 2 added @sriov to every
 * record. The CRC is crc32c over the header (its
 * crc field zero) and the records. Reserved fields and unknown flags must
 * be zero. A page of another version, with a bad CRC or a bad record is
 * refused as a whole: every function the IOMMU still holds gets bus
 * mastering cleared, and nothing is retrieved.
 *
 * A function stays mastering, held for its VMM, until its file is
 * retrieved and bound (adopted without reset) or its session is finished
 * or closed (bus mastering cleared). A session nobody retrieves keeps it
 * so for as long as the kernel runs.
 *
 * SR-IOV: a preserved VF has flag VFIO_PCI_LU_FUNC_VF, and its PF is
 * listed once, without a file, with flag VFIO_PCI_LU_FUNC_SRIOV_PF and the
 * SR-IOV state in @sriov. The PF kept bus mastering and VF Enable through
 * the kexec; the next kernel adopts that state instead of disabling
 * SR-IOV (which would stop and reset the VFs), if the registers still
 * hold it, re-creates the VFs without touching VF Enable, and binds the
 * PF to pci-pf-stub. Each VF record's address must be one of a listed
 * PF's VFs.
 */

#define VFIO_PCI_LU_FH_COMPATIBLE	"vfio-pci-lu-v1"
#define VFIO_PCI_LU_FLB_COMPATIBLE	"vfio-pci-lu-funcs-v1"
/* "VFPCILU1" as a little-endian u64 */
#define VFIO_PCI_LU_MAGIC		0x31554c4943504656ULL
#define VFIO_PCI_LU_VERSION		2
/* "VF" in bits 63:48, version in bits 47:32 of a file's serialized data */
#define VFIO_PCI_LU_FILE_TAG		0x56460001U

/**
 * struct vfio_pci_lu_header - start of the page
 * @magic: VFIO_PCI_LU_MAGIC
 * @version: VFIO_PCI_LU_VERSION
 * @nr_funcs: records that follow, at most VFIO_PCI_LU_MAX_FUNCS
 * @crc: crc32c, see above
 * @reserved: 0
 */
struct vfio_pci_lu_header {
	__le64 magic;
	__le32 version;
	__le32 nr_funcs;
	__le32 crc;
	__le32 reserved;
};

/* The function was frozen: interrupts off, translation frozen, BME kept */
#define VFIO_PCI_LU_FUNC_FROZEN		0x1
/* A virtual function; its PF has a record with VFIO_PCI_LU_FUNC_SRIOV_PF */
#define VFIO_PCI_LU_FUNC_VF		0x2
/* The PF of preserved VFs, listed without a file; @sriov is valid */
#define VFIO_PCI_LU_FUNC_SRIOV_PF	0x4

/**
 * struct vfio_pci_lu_sriov - SR-IOV state of a PF (zero in other records)
 * @ctrl: SR-IOV Control at the freeze (VF Enable and VF MSE set)
 * @num_vfs: NumVFs (at least 1)
 * @offset: First VF Offset
 * @stride: VF Stride
 * @vf_device: VF Device ID
 * @reserved: 0
 * @pgsz: System Page Size
 * @vf_bar: the VF BAR registers of the SR-IOV capability
 * @vf_mask: what sizing each of them read back at enumeration (as @mask)
 */
struct vfio_pci_lu_sriov {
	__le16 ctrl;
	__le16 num_vfs;
	__le16 offset;
	__le16 stride;
	__le16 vf_device;
	__le16 reserved;
	__le32 pgsz;
	__le32 vf_bar[6];
	__le32 vf_mask[6];
};

/**
 * struct vfio_pci_lu_func - one preserved function
 * @rid: PCI address: segment << 16 | bus << 8 | devfn
 * @vendor: PCI vendor ID, checked against the function found at @rid
 * @device: PCI device ID, checked likewise
 * @command: PCI_COMMAND at the freeze
 * @flags: VFIO_PCI_LU_FUNC_*
 * @reserved: 0
 * @bar: BAR registers 0-5 and the expansion ROM register at the freeze
 * @mask: what sizing each of them read back (all-ones written) at
 *	enumeration, zero for a VF: the next kernel's enumeration takes
 *	the sizes from here instead of turning decode off and sizing a
 *	running function, if the registers still hold @bar
 * @sriov: with VFIO_PCI_LU_FUNC_SRIOV_PF, the PF's SR-IOV state; else 0
 */
struct vfio_pci_lu_func {
	__le32 rid;
	__le16 vendor;
	__le16 device;
	__le16 command;
	__le16 flags;
	__le32 reserved;
	__le32 bar[7];
	__le32 mask[7];
	struct vfio_pci_lu_sriov sriov;
};

#define VFIO_PCI_LU_MAX_FUNCS						\
	((4096 - sizeof(struct vfio_pci_lu_header)) /			\
	 sizeof(struct vfio_pci_lu_func))

#endif /* _LINUX_KHO_ABI_VFIO_PCI_LU_H */
