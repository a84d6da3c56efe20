/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Live update of IOMMU translations: the interface between iommufd, which
 * knows what userspace preserved, and the IOMMU driver, which hands its
 * tables to the next kernel. See docs in include/linux/kho/abi/iommu_vtd.h
 * and drivers/iommu/iommufd/liveupdate.c.
 */
#ifndef _LINUX_IOMMU_LU_H
#define _LINUX_IOMMU_LU_H

#include <linux/types.h>

struct device;
struct iommu_domain;
struct liveupdate_flb;

/**
 * typedef iommu_lu_leaf_fn - one translation of a restored domain
 * @arg: the caller's
 * @iova: first IOVA
 * @phys: physical address it translates to
 * @len: bytes
 * @prot: IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE as the entry encodes them
 */
typedef int (*iommu_lu_leaf_fn)(void *arg, u64 iova, u64 phys, u64 len,
				u32 prot);

/**
 * struct iommu_lu_ops - what an IOMMU driver does for a live update
 * @preserve_domain: hand the page tables of @domain over (KHO); they must
 *	not change until @unpreserve_domain or the kexec
 * @unpreserve_domain: undo @preserve_domain
 * @freeze_device: record that @dev translates through the preserved
 *	@domain, so that its context stays live across the kexec
 * @unfreeze_device: undo @freeze_device
 * @device_frozen: has @freeze_device succeeded for @dev (and not been
 *	undone)
 * @commit: write what is preserved and frozen into the handover
 * @restore_domain: incoming: build a domain around the tables preserved
 *	under @token, vetted against the handover; on failure *@reason says
 *	why. The domain keeps the preserved domain ID and translates for the
 *	preserved devices until a domain is attached to them; only @owner
 *	(an iommufd context) may take those devices without blocking them.
 * @domain_leaves: call @fn for every translation of a restored domain, in
 *	IOVA order
 * @drop_domain: incoming: block the devices preserved under @token that
 *	nobody took (token 0: of every domain not restored, for a handover
 *	that cannot be read)
 */
struct iommu_lu_ops {
	int (*preserve_domain)(struct iommu_domain *domain, u64 token);
	void (*unpreserve_domain)(struct iommu_domain *domain);
	int (*freeze_device)(struct device *dev, struct iommu_domain *domain);
	void (*unfreeze_device)(struct device *dev);
	bool (*device_frozen)(struct device *dev);
	int (*commit)(void);
	struct iommu_domain *(*restore_domain)(u64 token, void *owner,
					       const char **reason);
	int (*domain_leaves)(struct iommu_domain *domain, iommu_lu_leaf_fn fn,
			     void *arg);
	void (*drop_domain)(u64 token);
};

#ifdef CONFIG_IOMMU_API
void iommu_lu_register(const struct iommu_lu_ops *ops,
		       struct liveupdate_flb *flb);
const struct iommu_lu_ops *iommu_lu_get_ops(struct liveupdate_flb **flb);
bool iommu_lu_device_frozen(struct device *dev);
bool iommu_lu_device_held(struct device *dev, void *owner);
#else
static inline const struct iommu_lu_ops *
iommu_lu_get_ops(struct liveupdate_flb **flb)
{
	return NULL;
}

static inline bool iommu_lu_device_frozen(struct device *dev)
{
	return false;
}

static inline bool iommu_lu_device_held(struct device *dev, void *owner)
{
	return false;
}
#endif

#endif /* _LINUX_IOMMU_LU_H */
