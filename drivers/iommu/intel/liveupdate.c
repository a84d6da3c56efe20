// SPDX-License-Identifier: GPL-2.0-only
/*
 * Intel VT-d live update: keep preserved devices translating across kexec.
 *
 * Outgoing kernel. iommufd preserves the page tables of a marked HWPT's
 * domain (intel_lu_preserve_domain) and, at LUO freeze, the context of
 * every device attached to it (intel_lu_freeze_device); intel_lu_commit()
 * writes the handover (include/linux/kho/abi/iommu_vtd.h). At shutdown a
 * unit with frozen devices keeps translation enabled: every other context
 * entry is cleared, so other devices are blocked, never untranslated.
 *
 * Incoming kernel. init_dmars() adopts a preserved unit's root and context
 * tables in place (intel_lu_adopt_unit): translation is never turned off,
 * entries that the handover does not name are cleared, and the preserved
 * domain IDs are reserved. A preserved device is "held": no host driver
 * can bind it (iommu_device_use_default_domain() gets -EBUSY), its
 * attachment is deferred, and its context entry is left alone until a
 * domain is attached or it is blocked. iommufd's RETRIEVE_FD builds a
 * domain around the preserved tables (intel_lu_restore_domain), after
 * checking every table pointer against the handed-over page list; the
 * attach of that domain to the held device writes nothing.
 *
 * v1 limits: legacy (not scalable) mode, second-stage domains, devices
 * without DMA aliases. Anything else is refused with a reason.
 */

#define pr_fmt(fmt) "DMAR-LU: " fmt

#include <linux/bsearch.h>
#include <linux/crash_dump.h>
#include <linux/crc32c.h>
#include <linux/fault-inject.h>
#include <linux/iommu-lu.h>
#include <linux/kexec_handover.h>
#include <linux/kho/abi/iommu_vtd.h>
#include <linux/liveupdate.h>
#include <linux/moduleparam.h>
#include <linux/pci.h>
#include <linux/sort.h>

#include "iommu.h"
#include "lu_vtd_rs.h"
#include "../iommu-pages.h"

#define ROOT_ENTRY_NR	(VTD_PAGE_SIZE / sizeof(struct root_entry))

/* Outgoing state, under intel_lu_lock */
struct intel_lu_domain {
	struct list_head link;
	struct dmar_domain *domain;
	u64 token;
	unsigned int nr_tables;
	phys_addr_t *tables;	/* sorted */
};

struct intel_lu_unit {
	struct list_head link;
	struct intel_iommu *iommu;
	unsigned int nr_devices;
	unsigned int nr_ctx;
	phys_addr_t ctx[ROOT_ENTRY_NR];	/* sorted */
};

/*
 * A frozen device, by value: the device may go away after the freeze, and
 * the shutdown path reads these with every other CPU stopped.
 */
struct intel_lu_device {
	struct list_head link;
	struct intel_iommu *iommu;
	u16 segment;
	u8 bus;
	u8 devfn;
	struct intel_lu_domain *dom;
	u16 did;
	u64 slptptr;
};

static DEFINE_MUTEX(intel_lu_lock);
static LIST_HEAD(intel_lu_domains);
static LIST_HEAD(intel_lu_units);
static LIST_HEAD(intel_lu_devices);
static struct vtd_lu_anchor *intel_lu_anchor;
static void *intel_lu_blob;

/* Incoming state, read-only after the FLB retrieve except where noted */
struct intel_lu_in_domain {
	const struct vtd_lu_domain *rec;
	/* The unit that reserved its DID at adoption */
	struct intel_iommu *iommu;
	/* Under intel_lu_lock: */
	struct dmar_domain *restored;
	void *owner;		/* who restored it (an iommufd context) */
	bool did_reserved;	/* the DID is still ours, not a domain's */
	bool dropped;
	bool tables_taken;	/* a restore took (some of) its pages */
	bool tables_done;	/* its pages given back or left reserved */
};

struct intel_lu_in_device {
	const struct vtd_lu_device *rec;
	struct intel_iommu *iommu;	/* set when its entry was adopted */
	bool held;			/* under intel_lu_lock */
};

struct intel_lu_incoming {
	void *blob;
	const struct vtd_lu_header *hdr;
	const struct vtd_lu_unit *units;
	const struct vtd_lu_domain *domains;
	const struct vtd_lu_device *devices;
	const __le64 *pages;
	struct intel_lu_in_domain *dom;
	struct intel_lu_in_device *dev;
};

static struct intel_lu_incoming *intel_lu_in;
static bool intel_lu_looked;
/* The longest blob the record limits allow */
#define VTD_LU_MAX_LEN							\
	(sizeof(struct vtd_lu_header) +					\
	 VTD_LU_MAX_UNITS * sizeof(struct vtd_lu_unit) +		\
	 VTD_LU_MAX_DOMAINS * sizeof(struct vtd_lu_domain) +		\
	 VTD_LU_MAX_DEVICES * sizeof(struct vtd_lu_device) +		\
	 (size_t)VTD_LU_MAX_PAGES * sizeof(__le64))

/* The incoming object when even that cannot be allocated: no handover */
static struct intel_lu_incoming intel_lu_no_handover;

struct intel_lu_in_device;
static void __intel_lu_release_in_device(struct intel_lu_in_device *d,
					 struct device_domain_info *info,
					 bool keep);

#if IS_ENABLED(CONFIG_IOMMUFD_TEST)
#undef MODULE_PARAM_PREFIX
#define MODULE_PARAM_PREFIX "intel_iommu."
/*
 * Test only: damage the handover at the next commit, so that the next
 * kernel's refusal paths can be tested (docs/testing.md): "version", or
 * "pages" (a domain's last page-table page is listed at the wrong
 * address, checksum valid).
 */
static char lu_test_damage[16];
module_param_string(lu_test_damage, lu_test_damage, sizeof(lu_test_damage),
		    0600);

/* Damages an encoded blob, then seals it again (a valid checksum) */
static void intel_lu_test_damage(void *blob, size_t len)
{
	struct vtd_lu_header *hdr = blob;
	struct vtd_lu_domain *drec = (void *)((struct vtd_lu_unit *)(hdr + 1) +
					      le32_to_cpu(hdr->nr_units));
	__le64 *pages = (void *)((struct vtd_lu_device *)
				 (drec + le32_to_cpu(hdr->nr_domains)) +
				 le32_to_cpu(hdr->nr_devices));

	if (sysfs_streq(lu_test_damage, "version")) {
		hdr->version = cpu_to_le32(99);
		goto seal;
	}
	/*
	 * A page of the first domain other than its top is listed at a
	 * nearby address that keeps the list sorted and names no other
	 * handed-over page: the next kernel's walk finds the real one
	 * unlisted.
	 */
	if (sysfs_streq(lu_test_damage, "pages") && hdr->nr_domains) {
		u32 first = le32_to_cpu(drec[0].first_page);
		u32 nr = le32_to_cpu(drec[0].nr_pages);
		u32 np = le32_to_cpu(hdr->nr_pages);

		for (u32 i = first + nr; i-- > first;) {
			u64 at = le64_to_cpu(pages[i]);
			u64 lo = i > first ? le64_to_cpu(pages[i - 1]) : 0;
			u64 hi = i + 1 < first + nr ?
				 le64_to_cpu(pages[i + 1]) : U64_MAX;

			if (pages[i] == drec[0].top_phys)
				continue;
			/* Up to 1 MiB away, either way, strictly between */
			for (s64 d = -SZ_1M; d <= SZ_1M; d += SZ_4K) {
				u64 v = at + d;
				bool used = false;

				if (!d || v <= lo || v >= hi || v > at + SZ_1M)
					continue;
				for (u32 k = 0; k < np; k++)
					used |= le64_to_cpu(pages[k]) == v;
				if (!used) {
					pages[i] = cpu_to_le64(v);
					goto seal;
				}
			}
		}
	}
	return;
seal:
	hdr->crc = 0;
	hdr->crc = cpu_to_le32(crc32c(0, blob, len));
}

/*
 * Test only: intel_iommu.lu_fail_adopt=<interval>,<probability>,<space>,
 * <times> (Documentation/fault-injection) fails allocations of the
 * boot-time handover paths, which no userspace fail-nth can reach:
 * "N,100,0,1" fails the N-th. A parameter, parsed at first use: a __setup
 * handler would run setup_fault_attr() before the allocators exist (its
 * prandom_init_once() allocates and queues work).
 */
static char lu_fail_adopt[32];
module_param_string(lu_fail_adopt, lu_fail_adopt, sizeof(lu_fail_adopt),
		    0400);
static DECLARE_FAULT_ATTR(fail_vtd_lu_adopt);

static bool intel_lu_adopt_fail(void)
{
	static bool parsed;

	if (!parsed) {
		parsed = true;
		if (!lu_fail_adopt[0] ||
		    !setup_fault_attr(&fail_vtd_lu_adopt, lu_fail_adopt))
			return false;
		/* The message only: a stack dump reads as a kernel bug */
		fail_vtd_lu_adopt.verbose = 1;
	}
	return lu_fail_adopt[0] && should_fail(&fail_vtd_lu_adopt, 1);
}
#else
static void intel_lu_test_damage(void *blob, size_t len)
{
}

static bool intel_lu_adopt_fail(void)
{
	return false;
}
#endif

/* An allocation of the boot-time handover paths (may be failed in tests) */
#define intel_lu_adopt_alloc(alloc)	(intel_lu_adopt_fail() ? NULL : (alloc))

static int cmp_phys(const void *a, const void *b)
{
	phys_addr_t x = *(const phys_addr_t *)a, y = *(const phys_addr_t *)b;

	return x < y ? -1 : x > y;
}

/* ---- outgoing ---- */

struct intel_lu_collect {
	phys_addr_t *tables;
	unsigned int nr, max;
};

static int intel_lu_collect_table(void *arg, phys_addr_t table)
{
	struct intel_lu_collect *c = arg;

	if (c->tables) {
		if (c->nr >= c->max)
			return -EAGAIN;	/* the table grew: cannot, it is immutable */
		c->tables[c->nr] = table;
	}
	c->nr++;
	return 0;
}

static int intel_lu_skip_leaf(void *arg, u64 iova, phys_addr_t oa,
			      unsigned int lg2sz, u64 entry)
{
	return 0;
}

static const struct pt_iommu_lu_walk_ops intel_lu_collect_ops = {
	.table = intel_lu_collect_table,
	.leaf = intel_lu_skip_leaf,
};

static struct intel_lu_domain *intel_lu_find_domain(struct dmar_domain *d)
{
	struct intel_lu_domain *ld;

	list_for_each_entry(ld, &intel_lu_domains, link)
		if (ld->domain == d)
			return ld;
	return NULL;
}

static void intel_lu_unpreserve_tables(phys_addr_t *tables, unsigned int nr)
{
	while (nr--)
		iommu_lu_unpreserve_page(phys_to_virt(tables[nr]));
}

static int intel_lu_preserve_domain(struct iommu_domain *domain, u64 token)
{
	struct dmar_domain *dmar_domain = to_dmar_domain(domain);
	struct intel_lu_collect c = {};
	struct intel_lu_domain *ld;
	unsigned int i;
	int ret;

	if (!intel_domain_is_ss_paging(dmar_domain) ||
	    dmar_domain->nested_parent || domain->dirty_ops)
		return -EOPNOTSUPP;

	guard(mutex)(&intel_lu_lock);
	if (intel_lu_find_domain(dmar_domain))
		return -EBUSY;
	/* The next kernel finds domains by token: unique system-wide */
	list_for_each_entry(ld, &intel_lu_domains, link)
		if (ld->token == token)
			return -EADDRINUSE;

	ret = pt_iommu_vtdss_lu_walk(domain, NULL, &intel_lu_collect_ops, &c);
	if (ret)
		return ret;
	c.max = c.nr;
	c.nr = 0;
	c.tables = kvmalloc_array(c.max, sizeof(*c.tables), GFP_KERNEL);
	if (!c.tables)
		return -ENOMEM;
	ret = pt_iommu_vtdss_lu_walk(domain, NULL, &intel_lu_collect_ops, &c);
	if (ret)
		goto err_free;
	sort(c.tables, c.nr, sizeof(*c.tables), cmp_phys, NULL);

	ld = kzalloc_obj(*ld);
	if (!ld) {
		ret = -ENOMEM;
		goto err_free;
	}
	for (i = 0; i < c.nr; i++) {
		ret = iommu_lu_preserve_page(phys_to_virt(c.tables[i]));
		if (ret) {
			intel_lu_unpreserve_tables(c.tables, i);
			kfree(ld);
			goto err_free;
		}
	}
	ld->domain = dmar_domain;
	ld->token = token;
	ld->tables = c.tables;
	ld->nr_tables = c.nr;
	list_add_tail(&ld->link, &intel_lu_domains);
	return 0;

err_free:
	kvfree(c.tables);
	return ret;
}

static void intel_lu_unpreserve_domain(struct iommu_domain *domain)
{
	struct intel_lu_domain *ld;

	guard(mutex)(&intel_lu_lock);
	ld = intel_lu_find_domain(to_dmar_domain(domain));
	if (WARN_ON(!ld))
		return;
	intel_lu_unpreserve_tables(ld->tables, ld->nr_tables);
	list_del(&ld->link);
	kvfree(ld->tables);
	kfree(ld);
}

static struct intel_lu_unit *intel_lu_find_unit(struct intel_iommu *iommu)
{
	struct intel_lu_unit *u;

	list_for_each_entry(u, &intel_lu_units, link)
		if (u->iommu == iommu)
			return u;
	return NULL;
}

static void intel_lu_unit_unpreserve(struct intel_lu_unit *u)
{
	unsigned int i;

	for (i = 0; i < u->nr_ctx; i++)
		iommu_lu_unpreserve_page(phys_to_virt(u->ctx[i]));
	iommu_lu_unpreserve_page(u->iommu->root_entry);
}

/*
 * The root table (first call) and every context table it references that
 * is not preserved yet: a device frozen later may sit on a new bus.
 */
static int intel_lu_unit_preserve(struct intel_lu_unit *u, bool first)
{
	struct intel_iommu *iommu = u->iommu;
	unsigned int bus, n = 0, i;
	phys_addr_t *found;
	int ret = 0;

	found = kmalloc_array(ROOT_ENTRY_NR, sizeof(*found), GFP_KERNEL);
	if (!found)
		return -ENOMEM;
	spin_lock(&iommu->lock);
	for (bus = 0; bus < ROOT_ENTRY_NR; bus++) {
		u64 lo = iommu->root_entry[bus].lo;
		phys_addr_t ctx = lo & VTD_PAGE_MASK;

		if ((lo & 1) && !bsearch(&ctx, u->ctx, u->nr_ctx,
					 sizeof(u->ctx[0]), cmp_phys))
			found[n++] = ctx;
	}
	spin_unlock(&iommu->lock);

	if (first) {
		ret = iommu_lu_preserve_page(iommu->root_entry);
		if (ret)
			goto out;
	}
	for (i = 0; i < n; i++) {
		ret = iommu_lu_preserve_page(phys_to_virt(found[i]));
		if (ret) {
			while (i--)
				iommu_lu_unpreserve_page(phys_to_virt(found[i]));
			if (first)
				iommu_lu_unpreserve_page(iommu->root_entry);
			goto out;
		}
	}
	memcpy(&u->ctx[u->nr_ctx], found, n * sizeof(found[0]));
	u->nr_ctx += n;
	sort(u->ctx, u->nr_ctx, sizeof(u->ctx[0]), cmp_phys, NULL);
out:
	kfree(found);
	return ret;
}

static int intel_lu_count_alias(struct pci_dev *pdev, u16 alias, void *data)
{
	(*(unsigned int *)data)++;
	return 0;
}

static int intel_lu_freeze_device(struct device *dev,
				  struct iommu_domain *domain)
{
	struct device_domain_info *info = dev_iommu_priv_get(dev);
	struct dmar_domain *dmar_domain = to_dmar_domain(domain);
	struct pt_iommu_vtdss_hw_info pt_info;
	struct intel_iommu *iommu = info->iommu;
	struct context_entry *context;
	struct intel_lu_device *ldev;
	struct intel_lu_domain *ld;
	struct intel_lu_unit *u;
	unsigned int aliases = 0;
	bool match;
	u16 did;
	int ret;
	u8 tt;

	if (sm_supported(iommu))
		return -EOPNOTSUPP;
	if (!dev_is_pci(dev))
		return -EOPNOTSUPP;
	pci_for_each_dma_alias(to_pci_dev(dev), intel_lu_count_alias,
			       &aliases);
	if (aliases != 1)
		return -EOPNOTSUPP;

	guard(mutex)(&intel_lu_lock);
	ld = intel_lu_find_domain(dmar_domain);
	if (!ld)
		return -ENOENT;
	list_for_each_entry(ldev, &intel_lu_devices, link) {
		if (ldev->iommu == iommu && ldev->bus == info->bus &&
		    ldev->devfn == info->devfn)
			return -EBUSY;
		/* v1: one DID per preserved domain, so one unit */
		if (ldev->dom == ld && ldev->iommu != iommu)
			return -EOPNOTSUPP;
	}

	pt_iommu_vtdss_hw_info(&dmar_domain->sspt, &pt_info);
	did = domain_id_iommu(dmar_domain, iommu);
	spin_lock(&iommu->lock);
	context = iommu_context_addr(iommu, info->bus, info->devfn, 0);
	match = context && context_present(context) &&
		context_domain_id(context) == did &&
		(context->lo & VTD_PAGE_MASK) == pt_info.ssptptr &&
		(context->hi & 7) == pt_info.aw;
	/* v1: no device IOTLB (ATS) entries; the next kernel would drop it */
	tt = context ? (context->lo >> 2) & 3 : 0;
	spin_unlock(&iommu->lock);
	/* The device is not (or no longer) translated by this domain */
	if (!match)
		return -EBUSY;
	if (tt != CONTEXT_TT_MULTI_LEVEL)
		return -EOPNOTSUPP;

	ldev = kzalloc_obj(*ldev);
	if (!ldev)
		return -ENOMEM;
	u = intel_lu_find_unit(iommu);
	if (!u) {
		u = kzalloc_obj(*u);
		if (!u) {
			kfree(ldev);
			return -ENOMEM;
		}
		u->iommu = iommu;
		ret = intel_lu_unit_preserve(u, true);
		if (ret) {
			kfree(u);
			kfree(ldev);
			return ret;
		}
		list_add_tail(&u->link, &intel_lu_units);
	} else {
		ret = intel_lu_unit_preserve(u, false);
		if (ret) {
			kfree(ldev);
			return ret;
		}
	}
	u->nr_devices++;
	ldev->iommu = iommu;
	ldev->segment = info->segment;
	ldev->bus = info->bus;
	ldev->devfn = info->devfn;
	ldev->dom = ld;
	ldev->did = did;
	ldev->slptptr = pt_info.ssptptr;
	list_add_tail(&ldev->link, &intel_lu_devices);
	return 0;
}

static bool intel_lu_device_frozen(struct device *dev)
{
	struct device_domain_info *info = dev_iommu_priv_get(dev);
	struct intel_lu_device *ldev;

	if (!info)
		return false;
	guard(mutex)(&intel_lu_lock);
	list_for_each_entry(ldev, &intel_lu_devices, link)
		if (ldev->iommu == info->iommu && ldev->bus == info->bus &&
		    ldev->devfn == info->devfn)
			return true;
	return false;
}

static void intel_lu_unfreeze_device(struct device *dev)
{
	struct device_domain_info *info = dev_iommu_priv_get(dev);
	struct intel_lu_device *ldev;
	struct intel_lu_unit *u;

	guard(mutex)(&intel_lu_lock);
	list_for_each_entry(ldev, &intel_lu_devices, link) {
		if (ldev->iommu != info->iommu || ldev->bus != info->bus ||
		    ldev->devfn != info->devfn)
			continue;
		list_del(&ldev->link);
		kfree(ldev);
		u = intel_lu_find_unit(info->iommu);
		if (!WARN_ON(!u) && !--u->nr_devices) {
			intel_lu_unit_unpreserve(u);
			list_del(&u->link);
			kfree(u);
		}
		return;
	}
}

/* Writes the outgoing handover: the Rust format encodes and checks it */
static int intel_lu_commit(void)
{
	unsigned int nr_units = 0, nr_domains = 0, nr_devices = 0, nr_pages = 0;
	struct vtd_lu_domain_rec *drec = NULL;
	struct vtd_lu_device_rec *vrec = NULL;
	struct vtd_lu_unit_rec *urec = NULL;
	u64 *pages = NULL, *scratch = NULL;
	char why[VTD_LU_REASON_LEN];
	struct intel_lu_device *ldev;
	struct intel_lu_domain *ld;
	struct intel_lu_unit *u;
	unsigned int i, p;
	ssize_t ret;
	size_t len;
	void *blob;

	guard(mutex)(&intel_lu_lock);
	if (!intel_lu_anchor)
		return -ENOENT;
	list_for_each_entry(u, &intel_lu_units, link) {
		nr_units++;
		nr_pages += u->nr_ctx;
	}
	list_for_each_entry(ld, &intel_lu_domains, link) {
		nr_domains++;
		nr_pages += ld->nr_tables;
	}
	list_for_each_entry(ldev, &intel_lu_devices, link)
		nr_devices++;
	/* Bounds the allocations below; the encoder checks the rest */
	ret = -E2BIG;
	if (nr_units > VTD_LU_MAX_UNITS || nr_domains > VTD_LU_MAX_DOMAINS ||
	    nr_devices > VTD_LU_MAX_DEVICES || nr_pages > VTD_LU_MAX_PAGES)
		goto out_free;
	len = sizeof(struct vtd_lu_header) +
	      nr_units * sizeof(struct vtd_lu_unit) +
	      nr_domains * sizeof(struct vtd_lu_domain) +
	      nr_devices * sizeof(struct vtd_lu_device) +
	      nr_pages * sizeof(__le64);

	ret = -ENOMEM;
	urec = kcalloc(nr_units, sizeof(*urec), GFP_KERNEL);
	drec = kvcalloc(nr_domains, sizeof(*drec), GFP_KERNEL);
	vrec = kvcalloc(nr_devices, sizeof(*vrec), GFP_KERNEL);
	pages = kvmalloc_array(nr_pages, sizeof(*pages), GFP_KERNEL);
	scratch = kvmalloc_array(nr_units + nr_pages, sizeof(*scratch),
				 GFP_KERNEL);
	if ((nr_units && !urec) || (nr_domains && !drec) ||
	    (nr_devices && !vrec) || (nr_pages && !pages) || !scratch)
		goto out_free;

	p = 0;
	i = 0;
	list_for_each_entry(u, &intel_lu_units, link) {
		urec[i++] = (struct vtd_lu_unit_rec) {
			.reg_phys = u->iommu->reg_phys,
			.root_phys = virt_to_phys(u->iommu->root_entry),
			.first_page = p,
			.nr_pages = u->nr_ctx,
		};
		for (unsigned int k = 0; k < u->nr_ctx; k++)
			pages[p++] = u->ctx[k];
	}
	i = 0;
	list_for_each_entry(ld, &intel_lu_domains, link) {
		struct pt_iommu_vtdss_hw_info pt_info;
		struct intel_iommu *iommu = NULL;
		unsigned int unit = 0;

		pt_iommu_vtdss_hw_info(&ld->domain->sspt, &pt_info);
		/* The unit of its first frozen device names its DID */
		list_for_each_entry(ldev, &intel_lu_devices, link) {
			if (ldev->dom == ld) {
				iommu = ldev->iommu;
				break;
			}
		}
		list_for_each_entry(u, &intel_lu_units, link) {
			if (u->iommu == iommu)
				break;
			unit++;
		}
		drec[i++] = (struct vtd_lu_domain_rec) {
			.token = ld->token,
			.top_phys = pt_info.ssptptr,
			.first_page = p,
			.nr_pages = ld->nr_tables,
			.unit = iommu ? unit : U16_MAX,
			.did = iommu ? domain_id_iommu(ld->domain, iommu) : 0,
			.aw = pt_info.aw,
			/* Legacy mode (v1): the unit's coherency is the table's */
			.flags = iommu && !ecap_coherent(iommu->ecap) ?
				VTD_LU_DOMAIN_INCOHERENT : 0,
		};
		for (unsigned int k = 0; k < ld->nr_tables; k++)
			pages[p++] = ld->tables[k];
	}
	i = 0;
	list_for_each_entry(ldev, &intel_lu_devices, link) {
		unsigned int d = 0;

		list_for_each_entry(ld, &intel_lu_domains, link) {
			if (ld == ldev->dom)
				break;
			d++;
		}
		vrec[i++] = (struct vtd_lu_device_rec) {
			.segment = ldev->segment,
			.bus = ldev->bus,
			.devfn = ldev->devfn,
			.domain = d,
		};
	}

	blob = kho_alloc_preserve(len);
	if (IS_ERR(blob)) {
		ret = PTR_ERR(blob);
		goto out_free;
	}
	ret = vtd_lu_encode_rs(blob, len, urec, nr_units, drec, nr_domains,
			       vrec, nr_devices, pages, nr_pages, scratch,
			       nr_units + nr_pages, why, sizeof(why));
	if (ret >= 0 && (size_t)ret != len) {
		strscpy(why, "encoded length differs", sizeof(why));
		ret = -EINVAL;
	}
	if (ret < 0) {
		/* What the next kernel would refuse is not handed over */
		pr_err("handover not written: %s\n", why);
		kho_unpreserve_free(blob);
		goto out_free;
	}
	intel_lu_test_damage(blob, len);

	if (intel_lu_blob)
		kho_unpreserve_free(intel_lu_blob);
	intel_lu_blob = blob;
	intel_lu_anchor->blob_phys = cpu_to_le64(virt_to_phys(blob));
	intel_lu_anchor->blob_len = cpu_to_le64(len);
	ret = 0;
out_free:
	/* Never a stale blob: the next kernel then finds nothing frozen */
	if (ret && intel_lu_blob) {
		kho_unpreserve_free(intel_lu_blob);
		intel_lu_blob = NULL;
		intel_lu_anchor->blob_phys = 0;
		intel_lu_anchor->blob_len = 0;
	}
	kvfree(scratch);
	kvfree(pages);
	kvfree(vrec);
	kvfree(drec);
	kfree(urec);
	return ret;
}

static bool intel_lu_frozen_entry(struct intel_iommu *iommu, u8 bus, u8 devfn,
				  struct context_entry *ce)
{
	struct intel_lu_device *ldev;

	list_for_each_entry(ldev, &intel_lu_devices, link) {
		if (ldev->iommu == iommu && ldev->bus == bus &&
		    ldev->devfn == devfn)
			return context_domain_id(ce) == ldev->did &&
			       (ce->lo & VTD_PAGE_MASK) == ldev->slptptr;
	}
	return false;
}

/**
 * intel_lu_shutdown() - leave a unit translating for the next kernel
 * @iommu: the unit
 *
 * Called at kexec with the other CPUs stopped, after device_shutdown().
 * No locks, no allocation.
 *
 * Return: true if @iommu has frozen devices: then only their context
 * entries are left, the caches are flushed and translation stays on.
 */
bool intel_lu_shutdown(struct intel_iommu *iommu)
{
	struct intel_lu_unit *u = intel_lu_find_unit(iommu);
	unsigned int bus, devfn;

	if (!u || !u->nr_devices || sm_supported(iommu))
		return false;

	for (bus = 0; bus < ROOT_ENTRY_NR; bus++) {
		struct root_entry *re = &iommu->root_entry[bus];
		phys_addr_t ctx = re->lo & VTD_PAGE_MASK;
		struct context_entry *table;

		if (!(re->lo & 1))
			continue;
		/* A context table made after the freeze was not handed over */
		if (!bsearch(&ctx, u->ctx, u->nr_ctx, sizeof(u->ctx[0]),
			     cmp_phys)) {
			re->lo = 0;
			re->hi = 0;
			__iommu_flush_cache(iommu, re, sizeof(*re));
			continue;
		}
		table = phys_to_virt(ctx);
		for (devfn = 0; devfn < 256; devfn++) {
			struct context_entry *ce = &table[devfn];

			if (!context_present(ce) ||
			    intel_lu_frozen_entry(iommu, bus, devfn, ce))
				continue;
			context_clear_entry(ce);
			__iommu_flush_cache(iommu, ce, sizeof(*ce));
		}
	}
	iommu->flush.flush_context(iommu, 0, 0, 0, DMA_CCMD_GLOBAL_INVL);
	iommu->flush.flush_iotlb(iommu, 0, 0, 0, DMA_TLB_GLOBAL_FLUSH);
	pr_info("%s: translation left on for %u preserved device(s)\n",
		iommu->name, u->nr_devices);
	return true;
}

/* ---- FLB ---- */

static int intel_lu_flb_preserve(struct liveupdate_flb_op_args *args)
{
	struct vtd_lu_anchor *anchor;

	anchor = kho_alloc_preserve(sizeof(*anchor));
	if (IS_ERR(anchor))
		return PTR_ERR(anchor);
	guard(mutex)(&intel_lu_lock);
	intel_lu_anchor = anchor;
	args->data = virt_to_phys(anchor);
	args->obj = anchor;
	return 0;
}

static void intel_lu_flb_unpreserve(struct liveupdate_flb_op_args *args)
{
	guard(mutex)(&intel_lu_lock);
	if (intel_lu_blob)
		kho_unpreserve_free(intel_lu_blob);
	intel_lu_blob = NULL;
	kho_unpreserve_free(args->obj);
	intel_lu_anchor = NULL;
}

/* The Rust format's checksum: the kernel's chaining crc32c */
u32 vtd_lu_crc32c(u32 seed, const u8 *data, size_t len)
{
	return crc32c(seed, data, len);
}

/*
 * Checks a blob copied out of the handover with the Rust format's parser;
 * NULL if it is sound, else the reason (in @why). Then every count, slice
 * and index in it is in bounds, every page listed once, tokens unique.
 */
static const char *intel_lu_parse(struct intel_lu_incoming *in, size_t len,
				  char *why, size_t why_len)
{
	const struct vtd_lu_header *hdr = in->blob;
	/* A unit or a page takes 8 bytes or more: len / 8 entries do */
	size_t n = len / 8 ?: 1;
	u64 *scratch;
	int ret;

	scratch = intel_lu_adopt_alloc(kvmalloc_array(n, sizeof(*scratch),
						      GFP_KERNEL));
	if (!scratch)
		return "out of memory";
	ret = vtd_lu_parse_rs(in->blob, len, scratch, n, why, why_len);
	kvfree(scratch);
	if (ret)
		return why;
	in->hdr = hdr;
	in->units = (const void *)(hdr + 1);
	in->domains = (const void *)(in->units + le32_to_cpu(hdr->nr_units));
	in->devices = (const void *)(in->domains +
				     le32_to_cpu(hdr->nr_domains));
	in->pages = (const void *)(in->devices + le32_to_cpu(hdr->nr_devices));
	return NULL;
}

static int intel_lu_flb_retrieve(struct liveupdate_flb_op_args *args)
{
	char reason[VTD_LU_REASON_LEN];
	struct intel_lu_incoming *in;
	struct vtd_lu_anchor anchor;
	struct folio *afolio, *bfolio;
	const char *why = NULL;
	u64 blob_phys, len;

	/*
	 * Out of memory, the handover is refused like any other: LUO WARNs
	 * on a failed retrieve (at FINISH), so the object is an empty one.
	 */
	in = intel_lu_adopt_alloc(kzalloc_obj(*in));
	if (!in) {
		pr_err("handover refused: out of memory; preserved devices stay blocked\n");
		args->obj = &intel_lu_no_handover;
		return 0;
	}
	args->obj = in;
	afolio = kho_restore_folio(args->data);
	if (!afolio) {
		pr_err("handover refused: anchor not preserved\n");
		return 0;
	}
	memcpy(&anchor, folio_address(afolio), sizeof(anchor));
	folio_put(afolio);
	blob_phys = le64_to_cpu(anchor.blob_phys);
	len = le64_to_cpu(anchor.blob_len);

	/*
	 * A refused handover is still retrieved (an object without a blob):
	 * LUO counts the files that use it only when retrieve succeeds.
	 */
	if (!len) {
		pr_err("handover refused: nothing was frozen\n");
		return 0;
	}
	bfolio = kho_restore_folio(blob_phys);
	if (!bfolio) {
		why = "blob not preserved";
	} else if (len < sizeof(struct vtd_lu_header) || len > VTD_LU_MAX_LEN) {
		why = "length out of range";
	} else if (len > folio_size(bfolio)) {
		why = "blob longer than its memory";
	} else {
		in->blob = intel_lu_adopt_alloc(kvmalloc(len, GFP_KERNEL));
		if (in->blob)
			memcpy(in->blob, folio_address(bfolio), len);
	}
	if (bfolio)
		folio_put(bfolio);
	if (!why && !in->blob)
		why = "out of memory";
	if (!why)
		why = intel_lu_parse(in, len, reason, sizeof(reason));
	if (!why) {
		u32 nd = le32_to_cpu(in->hdr->nr_domains);
		u32 nv = le32_to_cpu(in->hdr->nr_devices);
		u32 i;

		in->dom = intel_lu_adopt_alloc(kvcalloc(nd, sizeof(*in->dom),
							GFP_KERNEL));
		in->dev = intel_lu_adopt_alloc(kvcalloc(nv, sizeof(*in->dev),
							GFP_KERNEL));
		if (!in->dom || !in->dev) {
			kvfree(in->dom);
			kvfree(in->dev);
			in->dom = NULL;
			in->dev = NULL;
			why = "out of memory";
		} else {
			for (i = 0; i < nd; i++)
				in->dom[i].rec = &in->domains[i];
			for (i = 0; i < nv; i++)
				in->dev[i].rec = &in->devices[i];
		}
	}
	if (why) {
		pr_err("handover refused: %s; preserved devices stay blocked\n",
		       why);
		kvfree(in->blob);
		/* Nothing may point into the freed copy */
		*in = (struct intel_lu_incoming){};
		return 0;
	}
	pr_info("handover of %llu bytes: %u unit(s), %u domain(s), %u device(s), %u pages\n",
		len, le32_to_cpu(in->hdr->nr_units),
		le32_to_cpu(in->hdr->nr_domains),
		le32_to_cpu(in->hdr->nr_devices),
		le32_to_cpu(in->hdr->nr_pages));
	return 0;
}

static void intel_lu_block_held(struct intel_lu_in_domain *dom,
				bool unrestored, bool give_back);

static void intel_lu_flb_finish(struct liveupdate_flb_op_args *args)
{
	/*
	 * Every file that could restore a domain has finished: block what is
	 * still held (a domain no file named) and give back the tables of
	 * every domain not restored. The incoming state stays: devices
	 * blocked or attached since then are looked up in it
	 * (intel_lu_probe_device() after a rescan).
	 */
	struct intel_lu_incoming *in = args->obj;

	guard(mutex)(&intel_lu_lock);
	if (intel_lu_in && in == intel_lu_in) {
		intel_lu_block_held(NULL, true, true);
		return;
	}
	/* A refused handover: LUO drops its pointer, nothing else has one */
	if (in != &intel_lu_no_handover)
		kfree(in);
}

static const struct liveupdate_flb_ops intel_lu_flb_ops = {
	.preserve = intel_lu_flb_preserve,
	.unpreserve = intel_lu_flb_unpreserve,
	.retrieve = intel_lu_flb_retrieve,
	.finish = intel_lu_flb_finish,
	.owner = THIS_MODULE,
};

static struct liveupdate_flb intel_lu_flb = {
	.ops = &intel_lu_flb_ops,
	.compatible = VTD_LU_FLB_COMPATIBLE,
};

/* ---- incoming ---- */

static const struct vtd_lu_unit *intel_lu_unit_of(struct intel_iommu *iommu,
						  u32 *index)
{
	u32 i, nu;

	if (!intel_lu_in)
		return NULL;
	nu = le32_to_cpu(intel_lu_in->hdr->nr_units);
	for (i = 0; i < nu; i++) {
		if (le64_to_cpu(intel_lu_in->units[i].reg_phys) ==
		    iommu->reg_phys) {
			*index = i;
			return &intel_lu_in->units[i];
		}
	}
	return NULL;
}

/* The device record a present context entry must match to be kept */
static struct intel_lu_in_device *
intel_lu_match_entry(u32 unit, u16 segment, u8 bus, u8 devfn,
		     struct context_entry *ce)
{
	u32 i, nv = le32_to_cpu(intel_lu_in->hdr->nr_devices);

	for (i = 0; i < nv; i++) {
		struct intel_lu_in_device *d = &intel_lu_in->dev[i];
		const struct vtd_lu_domain *dom =
			&intel_lu_in->domains[le16_to_cpu(d->rec->domain)];

		if (le16_to_cpu(dom->unit) != unit ||
		    le16_to_cpu(d->rec->segment) != segment ||
		    d->rec->bus != bus || d->rec->devfn != devfn)
			continue;
		if (context_domain_id(ce) != le16_to_cpu(dom->did) ||
		    (ce->lo & VTD_PAGE_MASK) != le64_to_cpu(dom->top_phys) ||
		    (ce->hi & 7) != dom->aw ||
		    ((ce->lo >> 2) & 3) != CONTEXT_TT_MULTI_LEVEL)
			return NULL;
		return d;
	}
	return NULL;
}

static const __le64 *intel_lu_in_slice(const __le64 *pages, u32 first,
					u32 nr, u64 phys)
{
	__le64 key = cpu_to_le64(phys);

	return bsearch(&key, &pages[first], nr, sizeof(__le64), cmp_phys);
}

/* The first device of a domain reserves the domain's DID for all of them */
static bool intel_lu_reserve_did(struct intel_iommu *iommu,
				 struct intel_lu_in_device *d)
{
	struct intel_lu_in_domain *dom =
		&intel_lu_in->dom[le16_to_cpu(d->rec->domain)];
	u16 did = le16_to_cpu(dom->rec->did);

	if (dom->iommu)
		return dom->iommu == iommu;
	if (did < IDA_START_DID || did >= iommu->max_domain_id ||
	    intel_lu_adopt_fail() ||
	    ida_alloc_range(&iommu->domain_ida, did, did, GFP_KERNEL) < 0)
		return false;
	dom->iommu = iommu;
	dom->did_reserved = true;
	return true;
}

/**
 * intel_lu_adopt_unit() - take over a unit that the previous kernel left
 *	translating
 * @iommu: the unit, with queued invalidation set up and its translation
 *	status read
 *
 * Called by init_dmars() before it would turn a pre-enabled translation
 * off. On success the unit's root and context tables are the handed-over
 * ones, restored in place, with every entry the handover does not name
 * cleared; translation stays on.
 *
 * Return: true if adopted. False if the unit has no handover (the caller
 * goes on as usual), or if it has one that is refused: then translation is
 * left on and the caller installs an empty root table, which blocks every
 * device instead of letting it through untranslated.
 */
bool intel_lu_adopt_unit(struct intel_iommu *iommu, bool *refused)
{
	DECLARE_BITMAP(seen, ROOT_ENTRY_NR) = {};
	const struct vtd_lu_unit *unit;
	struct root_entry *root;
	unsigned int bus, devfn;
	u32 first, nr, index;
	const char *why;
	void *obj;

	*refused = false;
	if (!intel_lu_in && !intel_lu_looked &&
	    !liveupdate_flb_get_incoming(&intel_lu_flb, &obj)) {
		/*
		 * Not kept: LUO then finishes the object with the last file
		 * that uses it (intel_lu_flb_finish()). The object stays.
		 */
		liveupdate_flb_put_incoming(&intel_lu_flb);
		if (((struct intel_lu_incoming *)obj)->blob)
			intel_lu_in = obj;
	}
	intel_lu_looked = true;
	unit = intel_lu_unit_of(iommu, &index);
	if (!unit) {
		/*
		 * A unit left translating by a kexec (not a kdump) whose
		 * handover is missing or was refused (logged), or with live
		 * update off in this kernel: block whatever it translated
		 * rather than let it through untranslated.
		 */
		if ((iommu->flags & VTD_FLAG_TRANS_PRE_ENABLED) &&
		    is_kho_boot() && !is_kdump_kernel()) {
			pr_err("%s: left translating without a usable handover: every device is blocked\n",
			       iommu->name);
			*refused = true;
		}
		return false;
	}

	first = le32_to_cpu(unit->first_page);
	nr = le32_to_cpu(unit->nr_pages);
	if (nr > ROOT_ENTRY_NR)
		why = "too many context tables";
	else if (!(iommu->flags & VTD_FLAG_TRANS_PRE_ENABLED))
		why = "translation is off";
	else if (sm_supported(iommu) ||
		 (readq(iommu->reg + DMAR_RTADDR_REG) & DMA_RTADDR_SMT))
		why = "scalable mode";
	else if ((readq(iommu->reg + DMAR_RTADDR_REG) & VTD_PAGE_MASK) !=
		 le64_to_cpu(unit->root_phys))
		why = "root table moved";
	else
		why = NULL;
	if (why)
		goto refuse;
	root = iommu_lu_restore_page(le64_to_cpu(unit->root_phys), false);
	if (!root) {
		why = "root table not preserved";
		goto refuse;
	}

	for (bus = 0; bus < ROOT_ENTRY_NR; bus++) {
		struct root_entry *re = &root[bus];
		phys_addr_t ctx = re->lo & VTD_PAGE_MASK;
		struct context_entry *table;
		const __le64 *at;

		/* Each listed context table once: a second root entry is cut */
		table = NULL;
		at = NULL;
		if (!re->hi && (re->lo & 1))
			at = intel_lu_in_slice(intel_lu_in->pages, first, nr,
					       ctx);
		if (at && !test_and_set_bit(at - &intel_lu_in->pages[first],
					    seen))
			table = iommu_lu_restore_page(ctx, false);
		if (!table) {
			re->lo = 0;
			re->hi = 0;
			__iommu_flush_cache(iommu, re, sizeof(*re));
			continue;
		}
		for (devfn = 0; devfn < 256; devfn++) {
			struct context_entry *ce = &table[devfn];
			struct intel_lu_in_device *d;

			if (!context_present(ce))
				continue;
			d = intel_lu_match_entry(index, iommu->segment, bus,
						 devfn, ce);
			if (d && !d->iommu && intel_lu_reserve_did(iommu, d)) {
				d->iommu = iommu;
				d->held = true;
				continue;
			}
			context_clear_entry(ce);
			__iommu_flush_cache(iommu, ce, sizeof(*ce));
		}
	}
	iommu->root_entry = root;
	iommu->flags &= ~VTD_FLAG_TRANS_PRE_ENABLED;
	pr_info("%s: adopted the previous kernel's translation tables\n",
		iommu->name);
	return true;

refuse:
	pr_err("%s: handover refused: %s; every device is blocked\n",
	       iommu->name, why);
	*refused = true;
	return false;
}

static struct intel_lu_in_device *
intel_lu_in_device_of(struct device_domain_info *info)
{
	u32 i, nv;

	if (!intel_lu_in)
		return NULL;
	nv = le32_to_cpu(intel_lu_in->hdr->nr_devices);
	for (i = 0; i < nv; i++) {
		struct intel_lu_in_device *d = &intel_lu_in->dev[i];

		if (d->iommu == info->iommu &&
		    le16_to_cpu(d->rec->segment) == info->segment &&
		    d->rec->bus == info->bus && d->rec->devfn == info->devfn)
			return d;
	}
	return NULL;
}

static struct intel_lu_in_domain *
intel_lu_in_domain_of(const struct intel_lu_in_device *d)
{
	return &intel_lu_in->dom[le16_to_cpu(d->rec->domain)];
}

/**
 * intel_lu_probe_device() - is this device's translation handed over?
 * @info: the device, just probed
 *
 * Return: true if its adopted context entry is still in place: the device
 * is held (no host driver, attach deferred) until a domain is attached or
 * it is blocked. A device probed again after that is not held.
 */
bool intel_lu_probe_device(struct device_domain_info *info)
{
	struct intel_lu_in_device *d;

	guard(mutex)(&intel_lu_lock);
	d = intel_lu_in_device_of(info);
	if (!d || !d->held)
		return false;
	/*
	 * This kernel would use the device IOTLB, which the handed-over
	 * entry does not enable: its invalidations would not match. Block.
	 */
	if (info->ats_supported) {
		__intel_lu_release_in_device(d, NULL, false);
		return false;
	}
	return true;
}

/**
 * intel_lu_held_by() - is the device held, and restored for @owner?
 * @info: the device
 * @owner: NULL for "held at all"; else the owner (an iommufd context)
 *	that restored the device's domain
 */
bool intel_lu_held_by(struct device_domain_info *info, void *owner)
{
	struct intel_lu_in_device *d;

	if (!READ_ONCE(info->lu_held))
		return false;
	guard(mutex)(&intel_lu_lock);
	d = intel_lu_in_device_of(info);
	if (!d || !d->held)
		return false;
	return !owner || (intel_lu_in_domain_of(d)->restored &&
			  intel_lu_in_domain_of(d)->owner == owner);
}

/**
 * intel_lu_attach_begin() - is @domain the one a held device's entry names?
 * @info: the device being attached
 * @domain: the domain being attached
 *
 * Return: true if @domain is the restored domain whose DID and tables the
 * device's context entry already names: the attach then writes nothing.
 * intel_lu_lock stays held until intel_lu_attach_end(), so a FINISH or a
 * dropped domain cannot clear the entry between the attach finding it
 * present and the hold ending; info->lu_held is cleared for the attach,
 * whose error path must not end the hold itself.
 */
bool intel_lu_attach_begin(struct device_domain_info *info,
			   struct dmar_domain *domain)
{
	struct intel_lu_in_device *d;

	if (!READ_ONCE(info->lu_held))
		return false;
	mutex_lock(&intel_lu_lock);
	d = intel_lu_in_device_of(info);
	if (d && d->held && intel_lu_in_domain_of(d)->restored == domain) {
		WRITE_ONCE(info->lu_held, false);
		return true;
	}
	mutex_unlock(&intel_lu_lock);
	return false;
}

/**
 * intel_lu_attach_end() - the attach intel_lu_attach_begin() allowed is over
 * @info: the device
 * @attached: the attach succeeded, and the domain owns the entry now;
 *	otherwise the entry is cleared (the device is blocked)
 */
void intel_lu_attach_end(struct device_domain_info *info, bool attached)
{
	struct intel_lu_in_device *d = intel_lu_in_device_of(info);

	lockdep_assert_held(&intel_lu_lock);
	if (d)
		__intel_lu_release_in_device(d, info, attached);
	mutex_unlock(&intel_lu_lock);
}

/* Clears a context entry by unit and RID, and flushes (blocks the RID) */
static void intel_lu_clear_entry(struct intel_iommu *iommu, u8 bus, u8 devfn)
{
	struct context_entry *ce;
	bool cleared = false;

	spin_lock(&iommu->lock);
	ce = iommu_context_addr(iommu, bus, devfn, 0);
	if (ce && context_present(ce)) {
		context_clear_entry(ce);
		__iommu_flush_cache(iommu, ce, sizeof(*ce));
		cleared = true;
	}
	spin_unlock(&iommu->lock);
	if (cleared) {
		iommu->flush.flush_context(iommu, 0, 0, 0,
					   DMA_CCMD_GLOBAL_INVL);
		iommu->flush.flush_iotlb(iommu, 0, 0, 0,
					 DMA_TLB_GLOBAL_FLUSH);
	}
}

/*
 * Ends the hold of @d: with @keep its entry stays (the restored domain is
 * being attached, and takes the device over), otherwise it is cleared and
 * the caches flushed, so the device is blocked. The cache tag the restore
 * gave the device goes in both cases (the attach assigns its own).
 */
static void __intel_lu_release_in_device(struct intel_lu_in_device *d,
					 struct device_domain_info *info,
					 bool keep)
{
	struct intel_lu_in_domain *dom = intel_lu_in_domain_of(d);

	lockdep_assert_held(&intel_lu_lock);
	if (info)
		WRITE_ONCE(info->lu_held, false);
	if (!d->held)
		return;
	d->held = false;
	/* Blocked first, so no unmap can skip a flush the entry needs */
	if (!keep)
		intel_lu_clear_entry(d->iommu, d->rec->bus, d->rec->devfn);
	if (dom->restored) {
		/* The tag and DID reference the restore gave this device */
		if (info && info->dev && info->iommu == d->iommu)
			cache_tag_unassign_domain(dom->restored, info->dev,
						  IOMMU_NO_PASID);
		domain_detach_iommu(dom->restored, d->iommu);
	}
}

/**
 * intel_lu_release_held() - a held device stops being held
 * @info: the device
 * @keep: its entry stays (the domain just attached is the restored one,
 *	whose DID and tables the entry already names); otherwise the entry
 *	is cleared and the caches flushed, so the device is blocked
 */
void intel_lu_release_held(struct device_domain_info *info, bool keep)
{
	struct intel_lu_in_device *d;

	guard(mutex)(&intel_lu_lock);
	d = intel_lu_in_device_of(info);
	if (d)
		__intel_lu_release_in_device(d, info, keep);
	else
		WRITE_ONCE(info->lu_held, false);
}

static int intel_lu_vet(struct intel_lu_in_domain *dom,
			struct iommu_domain *domain, void **top,
			const char **reason);

/*
 * A domain that will never be restored: no context entry names its tables
 * any more (its held devices were blocked, the caches flushed), so its
 * handed-over pages go back to the page allocator instead of staying
 * reserved. Only pages the table walk vets (listed, reached, each once,
 * RAM) are taken: a page list that is not the table's may name memory
 * another KHO user preserved. Pages a restore took belong to its domain.
 */
static void intel_lu_free_tables(struct intel_lu_in_domain *dom)
{
	u32 first = le32_to_cpu(dom->rec->first_page);
	u32 nr = le32_to_cpu(dom->rec->nr_pages);
	u64 token = le64_to_cpu(dom->rec->token);
	const char *why = "no device of its unit to vet it with";
	struct iommu_domain *domain;
	struct pci_dev *pdev = NULL;
	u32 i, nv, freed = 0;
	bool vetted = false;
	void *top;

	lockdep_assert_held(&intel_lu_lock);
	if (dom->tables_done || dom->tables_taken || dom->restored)
		return;
	/* Once: a failed vet (even out of memory) leaves them reserved */
	dom->tables_done = true;
	nv = le32_to_cpu(intel_lu_in->hdr->nr_devices);
	for (i = 0; i < nv && !pdev; i++) {
		struct intel_lu_in_device *d = &intel_lu_in->dev[i];
		struct device_domain_info *info;

		if (intel_lu_in_domain_of(d) != dom || !dom->iommu)
			continue;
		pdev = pci_get_domain_bus_and_slot(le16_to_cpu(d->rec->segment),
						   d->rec->bus, d->rec->devfn);
		info = pdev ? dev_iommu_priv_get(&pdev->dev) : NULL;
		if (!info || info->iommu != dom->iommu) {
			pci_dev_put(pdev);
			pdev = NULL;
		}
	}
	if (pdev) {
		/* A scratch domain for the table format; it takes no page */
		domain = intel_lu_alloc_ss_domain(&pdev->dev);
		why = "cannot allocate a domain";
		if (!IS_ERR(domain)) {
			vetted = !intel_lu_vet(dom, domain, &top, &why);
			domain->ops->free(domain);
		}
		pci_dev_put(pdev);
	}
	if (!vetted) {
		pr_warn("domain %#llx dropped unrestored: its %u table pages stay reserved (%s)\n",
			token, nr, why);
		return;
	}
	for (i = 0; i < nr; i++) {
		void *table = iommu_lu_restore_page(
			le64_to_cpu(intel_lu_in->pages[first + i]), false);

		if (table) {
			iommu_free_pages(table);
			freed++;
		}
	}
	pr_info("domain %#llx dropped unrestored: %u of its %u table pages freed\n",
		token, freed, nr);
}

/*
 * Blocks the held devices of @dom (NULL: of every domain; with
 * @unrestored, only of domains not restored) and gives back a DID no
 * restored domain took over; with @give_back, also the table pages of
 * those domains (intel_lu_free_tables()). Works from the records, so a
 * device removed or never probed is blocked too.
 */
static void intel_lu_block_held(struct intel_lu_in_domain *dom,
				bool unrestored, bool give_back)
{
	u32 i, nd = le32_to_cpu(intel_lu_in->hdr->nr_domains);
	u32 nv = le32_to_cpu(intel_lu_in->hdr->nr_devices);

	lockdep_assert_held(&intel_lu_lock);
	for (i = 0; i < nv; i++) {
		struct intel_lu_in_device *d = &intel_lu_in->dev[i];
		struct intel_lu_in_domain *di = intel_lu_in_domain_of(d);
		struct device_domain_info *info = NULL;
		struct pci_dev *pdev;

		if ((dom && di != dom) || (unrestored && di->restored) ||
		    !d->held)
			continue;
		pdev = pci_get_domain_bus_and_slot(le16_to_cpu(d->rec->segment),
						   d->rec->bus, d->rec->devfn);
		if (pdev)
			info = dev_iommu_priv_get(&pdev->dev);
		if (info && info->iommu != d->iommu)
			info = NULL;
		__intel_lu_release_in_device(d, info, false);
		pr_info("%04x:%02x:%02x.%d: blocked: nobody took its preserved translation\n",
			le16_to_cpu(d->rec->segment), d->rec->bus,
			PCI_SLOT(d->rec->devfn), PCI_FUNC(d->rec->devfn));
		pci_dev_put(pdev);
	}
	for (i = 0; i < nd; i++) {
		struct intel_lu_in_domain *di = &intel_lu_in->dom[i];

		if ((dom && di != dom) || (unrestored && di->restored))
			continue;
		if (di->did_reserved) {
			ida_free(&di->iommu->domain_ida,
				 le16_to_cpu(di->rec->did));
			di->did_reserved = false;
		}
		if (give_back)
			intel_lu_free_tables(di);
	}
}

struct intel_lu_vet {
	const __le64 *pages;
	u32 first, nr;
	unsigned long *seen;
	u32 nr_seen;
};

static int intel_lu_vet_table(void *arg, phys_addr_t table)
{
	struct intel_lu_vet *v = arg;
	__le64 key = cpu_to_le64(table);
	const __le64 *at;
	u32 i;

	at = bsearch(&key, &v->pages[v->first], v->nr, sizeof(__le64),
		     cmp_phys);
	if (!at)
		return -EUCLEAN;
	/*
	 * Listed is not enough to be read: it must be a page the previous
	 * kernel preserved (so RAM, mapped, and nobody else's here)
	 */
	if (!kho_page_preserved(table, 0))
		return -EUCLEAN;
	i = at - &v->pages[v->first];
	cond_resched();
	/* A table reached twice would be freed twice */
	if (test_and_set_bit(i, v->seen))
		return -ELOOP;
	v->nr_seen++;
	return 0;
}

static const struct pt_iommu_lu_walk_ops intel_lu_vet_ops = {
	.table = intel_lu_vet_table,
	.leaf = intel_lu_skip_leaf,
};

/*
 * Checks that @domain (a new one, for its format) can take @dom's tables:
 * the format matches, and every table pointer the walk from the top
 * follows is in @dom's page list, RAM, and reached once, and every listed
 * page is reached. Reads only; on failure *@reason says why.
 */
static int intel_lu_vet(struct intel_lu_in_domain *dom,
			struct iommu_domain *domain, void **top,
			const char **reason)
{
	struct pt_iommu_vtdss_hw_info pt_info;
	struct intel_lu_vet v = {};
	int ret;

	pt_iommu_vtdss_hw_info(&to_dmar_domain(domain)->sspt, &pt_info);
	*reason = "page-table format differs";
	if (pt_info.aw != dom->rec->aw ||
	    !ecap_coherent(dom->iommu->ecap) !=
	    !!(dom->rec->flags & VTD_LU_DOMAIN_INCOHERENT))
		return -EINVAL;

	v.pages = intel_lu_in->pages;
	v.first = le32_to_cpu(dom->rec->first_page);
	v.nr = le32_to_cpu(dom->rec->nr_pages);
	*reason = "out of memory";
	v.seen = bitmap_zalloc(v.nr, GFP_KERNEL);
	if (!v.seen)
		return -ENOMEM;
	ret = -EUCLEAN;
	*reason = "top table was not preserved";
	*top = NULL;
	if (kho_page_preserved(le64_to_cpu(dom->rec->top_phys), 0)) {
		*top = phys_to_virt(le64_to_cpu(dom->rec->top_phys));
		ret = pt_iommu_vtdss_lu_walk(domain, *top, &intel_lu_vet_ops,
					     &v);
		*reason = "page table reaches a page that was not handed over";
	}
	bitmap_free(v.seen);
	if (ret)
		return ret;
	*reason = "page list names pages the table does not use";
	if (v.nr_seen != v.nr)
		return -EUCLEAN;
	*reason = NULL;
	return 0;
}

/*
 * Builds the domain around the vetted tables; on failure *@reason says
 * why and nothing of the handover is consumed. Called with intel_lu_lock.
 */
static struct iommu_domain *__intel_lu_restore_domain(struct intel_lu_in_domain *dom,
						      struct device *dev,
						      const char **reason)
{
	u32 first = le32_to_cpu(dom->rec->first_page);
	u32 nr = le32_to_cpu(dom->rec->nr_pages);
	const __le64 *pages = intel_lu_in->pages;
	struct dmar_domain *dmar_domain;
	struct iommu_domain_info *dinfo;
	struct iommu_domain *domain;
	void *top;
	u32 i;
	int ret;

	domain = intel_lu_alloc_ss_domain(dev);
	*reason = "cannot allocate a domain";
	if (IS_ERR(domain))
		return domain;
	dmar_domain = to_dmar_domain(domain);
	ret = intel_lu_vet(dom, domain, &top, reason);
	if (ret)
		goto err_free;

	dinfo = kzalloc_obj(*dinfo);
	ret = -ENOMEM;
	*reason = "out of memory";
	if (!dinfo)
		goto err_free;
	dinfo->iommu = dom->iommu;
	dinfo->did = le16_to_cpu(dom->rec->did);
	ret = xa_err(xa_store(&dmar_domain->iommu_array, dom->iommu->seq_id,
			      dinfo, GFP_KERNEL));
	if (ret) {
		kfree(dinfo);
		goto err_free;
	}
	/* From here the pages are this domain's, whatever happens */
	dom->tables_taken = true;
	for (i = 0; i < nr; i++) {
		if (!iommu_lu_restore_page(le64_to_cpu(pages[first + i]),
					   dom->rec->flags &
					   VTD_LU_DOMAIN_INCOHERENT)) {
			/*
			 * Only if the previous kernel listed a page it did not
			 * preserve. Leak the domain: the unit may still walk
			 * its tables until the device is blocked.
			 */
			*reason = "page-table page not preserved";
			return ERR_PTR(-EUCLEAN);
		}
	}
	pt_iommu_vtdss_lu_adopt_top(domain, top);
	dmar_domain->lu_restored = true;
	*reason = NULL;
	return domain;

err_free:
	kfree(xa_erase(&dmar_domain->iommu_array, dom->iommu->seq_id));
	/* Not restored: its free takes no lock and no handed-over page */
	domain->ops->free(domain);
	return ERR_PTR(ret);
}

static struct iommu_domain *intel_lu_restore_domain(u64 token, void *owner,
						    const char **reason)
{
	struct intel_lu_in_domain *dom = NULL;
	struct iommu_domain_info *dinfo;
	struct iommu_domain *domain;
	struct pci_dev *pdev = NULL;
	u32 i, nd, nv;

	guard(mutex)(&intel_lu_lock);
	*reason = "no IOMMU handover";
	if (!intel_lu_in)
		return ERR_PTR(-ENOENT);
	nd = le32_to_cpu(intel_lu_in->hdr->nr_domains);
	nv = le32_to_cpu(intel_lu_in->hdr->nr_devices);
	for (i = 0; i < nd; i++)
		if (le64_to_cpu(intel_lu_in->domains[i].token) == token)
			dom = &intel_lu_in->dom[i];
	*reason = "token not in the IOMMU handover";
	if (!dom)
		return ERR_PTR(-ENOENT);
	*reason = "domain already restored or dropped";
	if (dom->restored || dom->dropped)
		return ERR_PTR(-EBUSY);
	/* Its held devices, probed: one gives the domain its unit */
	for (i = 0; i < nv && !pdev; i++) {
		struct intel_lu_in_device *d = &intel_lu_in->dev[i];

		if (intel_lu_in_domain_of(d) != dom || !d->held)
			continue;
		pdev = pci_get_domain_bus_and_slot(le16_to_cpu(d->rec->segment),
						   d->rec->bus, d->rec->devfn);
		if (pdev && (!dev_iommu_priv_get(&pdev->dev) ||
			     ((struct device_domain_info *)
			      dev_iommu_priv_get(&pdev->dev))->iommu !=
			     d->iommu)) {
			pci_dev_put(pdev);
			pdev = NULL;
		}
	}
	*reason = "no device kept its translation";
	if (!pdev || !dom->did_reserved)
		return ERR_PTR(-ENODEV);
	domain = __intel_lu_restore_domain(dom, &pdev->dev, reason);
	pci_dev_put(pdev);
	if (IS_ERR(domain))
		return domain;

	/*
	 * The DID moves to the domain. Each held device holds a reference on
	 * it (so it is not freed while an entry names it) and the domain's
	 * cache tag (so an unmap before the attach flushes its IOTLB); its
	 * attach takes a reference of its own, and the end of the hold drops
	 * the first. Freeing the domain unused releases the DID
	 * (intel_lu_domain_free()).
	 */
	dinfo = xa_load(&to_dmar_domain(domain)->iommu_array,
			dom->iommu->seq_id);
	dom->did_reserved = false;
	dom->restored = to_dmar_domain(domain);
	dom->owner = owner;
	/* The loop's own reference: a device released in it cannot free it */
	scoped_guard(mutex, &dom->iommu->did_lock)
		dinfo->refcnt = 1;
	for (i = 0; i < nv; i++) {
		struct intel_lu_in_device *d = &intel_lu_in->dev[i];
		struct device_domain_info *info = NULL;

		if (intel_lu_in_domain_of(d) != dom || !d->held)
			continue;
		pdev = pci_get_domain_bus_and_slot(le16_to_cpu(d->rec->segment),
						   d->rec->bus, d->rec->devfn);
		if (pdev)
			info = dev_iommu_priv_get(&pdev->dev);
		if (info && info->iommu != d->iommu)
			info = NULL;
		scoped_guard(mutex, &d->iommu->did_lock)
			dinfo->refcnt++;
		if (!info || cache_tag_assign_domain(dom->restored, &pdev->dev,
						     IOMMU_NO_PASID)) {
			if (info)
				WRITE_ONCE(info->lu_held, false);
			__intel_lu_release_in_device(d, NULL, false);
		}
		pci_dev_put(pdev);
	}
	/* With no device left held, this releases the DID */
	domain_detach_iommu(dom->restored, dom->iommu);
	return domain;
}

/**
 * intel_lu_domain_free() - a restored domain is being freed
 * @dmar_domain: the domain
 *
 * Its held devices still walk its tables: block them first. A DID the
 * domain took over but no device attached with is released.
 */
void intel_lu_domain_free(struct dmar_domain *dmar_domain)
{
	struct iommu_domain_info *dinfo;
	unsigned long idx;
	u32 i, nd;

	mutex_lock(&intel_lu_lock);
	nd = intel_lu_in ? le32_to_cpu(intel_lu_in->hdr->nr_domains) : 0;
	for (i = 0; i < nd; i++) {
		struct intel_lu_in_domain *dom = &intel_lu_in->dom[i];

		if (dom->restored != dmar_domain)
			continue;
		intel_lu_block_held(dom, false, false);
		dom->restored = NULL;
		dom->dropped = true;
	}
	mutex_unlock(&intel_lu_lock);

	/* Blocking the held devices dropped their references on the DID */
	xa_for_each(&dmar_domain->iommu_array, idx, dinfo) {
		if (WARN_ON(dinfo->refcnt))
			continue;
		ida_free(&dinfo->iommu->domain_ida, dinfo->did);
		xa_erase(&dmar_domain->iommu_array, idx);
		kfree(dinfo);
	}
}

struct intel_lu_leaves {
	iommu_lu_leaf_fn fn;
	void *arg;
};

static int intel_lu_leaf(void *arg, u64 iova, phys_addr_t oa,
			 unsigned int lg2sz, u64 entry)
{
	struct intel_lu_leaves *l = arg;
	u32 prot = 0;

	if (entry & DMA_PTE_READ)
		prot |= IOMMU_READ;
	if (entry & DMA_PTE_WRITE)
		prot |= IOMMU_WRITE;
	if (entry & DMA_PTE_SNP)
		prot |= IOMMU_CACHE;
	return l->fn(l->arg, iova, oa, 1ULL << lg2sz, prot);
}

static int intel_lu_leaf_table(void *arg, phys_addr_t table)
{
	return 0;
}

static const struct pt_iommu_lu_walk_ops intel_lu_leaf_ops = {
	.table = intel_lu_leaf_table,
	.leaf = intel_lu_leaf,
};

static int intel_lu_domain_leaves(struct iommu_domain *domain,
				  iommu_lu_leaf_fn fn, void *arg)
{
	struct intel_lu_leaves l = { .fn = fn, .arg = arg };

	return pt_iommu_vtdss_lu_walk(domain, NULL, &intel_lu_leaf_ops, &l);
}

/*
 * @token 0: an iommufd handover nobody can read, so which domains were
 * its is unknown: block the devices of every domain not restored, and
 * give nothing back (another file may still restore its domain; the
 * FLB's finish gives back what is left).
 */
static void intel_lu_drop_domain(u64 token)
{
	u32 i, nd;

	guard(mutex)(&intel_lu_lock);
	if (!intel_lu_in)
		return;
	if (!token) {
		intel_lu_block_held(NULL, true, false);
		return;
	}
	nd = le32_to_cpu(intel_lu_in->hdr->nr_domains);
	for (i = 0; i < nd; i++) {
		struct intel_lu_in_domain *dom = &intel_lu_in->dom[i];

		if (le64_to_cpu(dom->rec->token) != token)
			continue;
		intel_lu_block_held(dom, false, !dom->restored);
		dom->dropped = true;
	}
}

static const struct iommu_lu_ops intel_lu_ops = {
	.preserve_domain = intel_lu_preserve_domain,
	.unpreserve_domain = intel_lu_unpreserve_domain,
	.freeze_device = intel_lu_freeze_device,
	.unfreeze_device = intel_lu_unfreeze_device,
	.device_frozen = intel_lu_device_frozen,
	.commit = intel_lu_commit,
	.restore_domain = intel_lu_restore_domain,
	.domain_leaves = intel_lu_domain_leaves,
	.drop_domain = intel_lu_drop_domain,
};

void intel_lu_init(void)
{
	iommu_lu_register(&intel_lu_ops, &intel_lu_flb);
}
