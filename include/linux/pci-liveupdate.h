/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Live update of SR-IOV: a physical function whose VFs keep running
 * through a kexec keeps VF Enable on; the next kernel adopts that state
 * instead of disabling SR-IOV, and re-creates the VFs without a toggle.
 */
#ifndef _LINUX_PCI_LIVEUPDATE_H
#define _LINUX_PCI_LIVEUPDATE_H

#include <linux/pci.h>

/**
 * struct pci_lu_sriov - the SR-IOV state of a PF at a live update
 * @ctrl: SR-IOV Control (VF Enable and VF MSE set)
 * @num_vfs: NumVFs
 * @offset: First VF Offset
 * @stride: VF Stride
 * @vf_device: VF Device ID
 * @pgsz: System Page Size
 * @vf_bar: VF BAR registers
 * @vf_mask: what sizing each VF BAR register reads back (all-ones
 *	written), recorded at enumeration
 */
struct pci_lu_sriov {
	u16 ctrl;
	u16 num_vfs;
	u16 offset;
	u16 stride;
	u16 vf_device;
	u32 pgsz;
	u32 vf_bar[PCI_SRIOV_NUM_BARS];
	u32 vf_mask[PCI_SRIOV_NUM_BARS];
};

/* Gives the state a live update handed over for PF @dev, or false */
typedef bool (*pci_lu_sriov_fn)(struct pci_dev *dev, struct pci_lu_sriov *st);

#ifdef CONFIG_PCI_IOV
void pci_lu_set_sriov_fn(pci_lu_sriov_fn fn);
void pci_iov_lu_add_vfs(void);
int pci_iov_lu_state(struct pci_dev *dev, struct pci_lu_sriov *st);
int pci_iov_lu_pin(struct pci_dev *dev);
void pci_iov_lu_unpin(struct pci_dev *dev);
bool pci_iov_lu_adopted(struct pci_dev *dev);
void pci_iov_lu_release(struct pci_dev *dev);
#else
static inline void pci_lu_set_sriov_fn(pci_lu_sriov_fn fn) { }
static inline void pci_iov_lu_add_vfs(void) { }
static inline int pci_iov_lu_state(struct pci_dev *dev,
				   struct pci_lu_sriov *st)
{
	return -ENODEV;
}

static inline int pci_iov_lu_pin(struct pci_dev *dev) { return -ENODEV; }
static inline void pci_iov_lu_unpin(struct pci_dev *dev) { }
static inline bool pci_iov_lu_adopted(struct pci_dev *dev) { return false; }
static inline void pci_iov_lu_release(struct pci_dev *dev) { }
#endif

#endif /* _LINUX_PCI_LIVEUPDATE_H */
