// SPDX-License-Identifier: GPL-2.0-only
/*
 * Live update of vfio-pci functions that keep running through the kexec:
 * the LUO file handler VFIO_PCI_LU_FH_COMPATIBLE for VFIO cdev files, and
 * one LUO object (FLB) that lists the functions for the next kernel. The
 * ABI is documented in include/linux/kho/abi/vfio_pci_lu.h.
 *
 * Old kernel:
 *  - preserve: the file is bound to an iommufd; the function is on a root
 *    bus, in D0, and has no VFs enabled. It is listed in the FLB page. A
 *    VF's PF must be bound to pci-pf-stub (other PF drivers disable
 *    SR-IOV at kexec or reset the PF at probe); the PF is listed too, and
 *    its sriov_numvfs gets -EBUSY until the VF is unpreserved.
 *    The VF's freeze also keeps the PF's bus mastering at shutdown (QEMU's
 *    igb receives only while the PF masters) and snapshots its SR-IOV
 *    state; VF Enable stays on.
 *  - freeze (inside reboot()): refused while interrupts are enabled, or
 *    while the IOMMU has not frozen the function's translation (the
 *    iommufd must be preserved before the device, and the device attached
 *    to a marked HWPT), or when the function left D0. From then on
 *    SET_IRQS, resets, config writes and low power entry through the file
 *    get -EBUSY, and the PCI core keeps bus mastering on at shutdown.
 *    Nothing resets the function.
 *    The iommufd must be preserved in the same session, before the cdev:
 *    LUO finishes a session's files in reverse order, so the cdev's finish
 *    (which stops an unadopted function) runs before the iommufd's (which
 *    blocks its translation and releases its memory).
 *
 * Next kernel:
 *  - enumeration adopts the SR-IOV state of a listed PF instead of
 *    disabling it (pci_lu_set_sriov_fn()), the PCI core re-creates its VFs
 *    without a VF Enable toggle (before vfio-pci registers), and the PF gets
 *    driver_override "pci-pf-stub". VFs bind only by driver_override
 *    until the FLB finishes, which also ends the sriov_numvfs pin.
 *  - before vfio-pci registers: a listed function that is found, matches
 *    and is still held by the IOMMU gets driver_override "vfio-pci" and
 *    waits for its VMM: other opens get -EBUSY and it is not runtime
 *    suspended. A listed function that does not qualify, but that the
 *    IOMMU holds, gets bus mastering cleared; one the IOMMU does not hold
 *    is not ours to touch (its DMA is blocked or the host's).
 *    A session that is never retrieved keeps its functions waiting and
 *    mastering: closing it, or LIVEUPDATE_SESSION_FINISH, ends that.
 *  - retrieve: a file that behaves as an open of the device's cdev; its
 *    first VFIO_DEVICE_BIND_IOMMUFD adopts the function with neither a
 *    reset nor a bus master clear (vfio_pci_core_enable()).
 *  - finish: a function its VMM did not adopt gets bus mastering cleared.
 *    LUO finishes files in reverse preservation order, so this happens
 *    before the iommufd's finish blocks the translation and frees memory.
 */

#include <linux/crc32c.h>
#include <linux/file.h>
#include <linux/iommu-lu.h>
#include <linux/kexec_handover.h>
#include <linux/kho/abi/vfio_pci_lu.h>
#include <linux/liveupdate.h>
#include <linux/moduleparam.h>
#include <linux/pci.h>
#include <linux/pci-liveupdate.h>
#include <linux/pm_runtime.h>
#include <linux/vfio_pci_core.h>

#include "vfio_pci_priv.h"

static_assert(sizeof(struct vfio_pci_lu_header) == 24);
static_assert(sizeof(struct vfio_pci_lu_sriov) == 64);
static_assert(sizeof(struct vfio_pci_lu_func) == 136);
static_assert(ARRAY_SIZE(((struct vfio_pci_lu_func *)0)->bar) == PCI_LU_NR_BARS);
static_assert(ARRAY_SIZE(((struct vfio_pci_lu_sriov *)0)->vf_bar) ==
	      PCI_SRIOV_NUM_BARS);
#define VFIO_PCI_LU_FUNC_FLAGS	(VFIO_PCI_LU_FUNC_FROZEN | VFIO_PCI_LU_FUNC_VF | \
				 VFIO_PCI_LU_FUNC_SRIOV_PF)
/* A PF driver that neither disables SR-IOV at kexec nor resets the PF */
#define VFIO_PCI_LU_PF_DRIVER	"pci-pf-stub"

/* The list is one page */
static_assert(sizeof(struct vfio_pci_lu_header) +
	      VFIO_PCI_LU_MAX_FUNCS * sizeof(struct vfio_pci_lu_func) <=
	      PAGE_SIZE);

static struct pci_driver *vfio_pci_lu_driver;
static const struct vfio_device_ops *vfio_pci_lu_ops;

/* Outgoing: the FLB's live object and one entry per preserved file */
struct vfio_pci_lu_out {
	struct mutex lock; /* files, parents and the page */
	struct list_head files;
	struct list_head parents;
	struct vfio_pci_lu_header *page;
};

/* The PF of preserved VFs: listed for its SR-IOV state, pinned */
struct vfio_pci_lu_parent {
	struct list_head link;
	struct pci_dev *pdev;
	unsigned int files;	/* preserved VFs */
	unsigned int frozen;	/* of them frozen */
	u32 rid;
	u16 command;
	u32 bars[PCI_LU_NR_BARS];
	u32 masks[PCI_LU_NR_BARS];
	struct pci_lu_sriov sriov;
};

struct vfio_pci_lu_file {
	struct list_head link;
	struct vfio_pci_lu_out *out;
	struct vfio_pci_core_device *vdev;
	struct vfio_pci_lu_parent *parent;	/* a VF's PF, else NULL */
	u32 rid;
	u16 command;
	u16 flags;
	u32 bars[PCI_LU_NR_BARS];
	u32 masks[PCI_LU_NR_BARS];
};

/* Incoming: what the previous kernel listed, and how far each got */
enum vfio_pci_lu_state {
	VFIO_PCI_LU_QUIET,	/* not adopted: bus mastering cleared */
	VFIO_PCI_LU_WAITING,	/* held for vfio-pci and its VMM */
	VFIO_PCI_LU_RETRIEVED,	/* its file was retrieved */
	VFIO_PCI_LU_ADOPTED,	/* bound by its VMM without reset */
	VFIO_PCI_LU_PARENT,	/* a VF's PF: SR-IOV kept until finish */
};

struct vfio_pci_lu_in_func {
	u32 rid;
	u16 vendor;
	u16 device;
	u16 command;
	u16 flags;
	u32 bars[PCI_LU_NR_BARS];
	u32 masks[PCI_LU_NR_BARS];
	struct pci_lu_sriov sriov;
	enum vfio_pci_lu_state state;
	struct pci_dev *pdev;
};

struct vfio_pci_lu_in {
	bool refused;
	u32 nr;
	struct vfio_pci_lu_in_func funcs[] __counted_by(nr);
};

/* A handover that cannot be read (or no memory to read it) */
static struct vfio_pci_lu_in vfio_pci_lu_refused = { .refused = true };

/*
 * The incoming list, NULL when there is none or it is finished. The lock
 * is innermost: taken under device_lock() and dev_set->lock, and nothing
 * sleeps under it.
 */
static DEFINE_SPINLOCK(vfio_pci_lu_in_lock);
static struct vfio_pci_lu_in *vfio_pci_lu_in;

static u32 vfio_pci_lu_rid(struct pci_dev *pdev)
{
	return (u32)pci_domain_nr(pdev->bus) << 16 | pci_dev_id(pdev);
}

/* The function at @rid, referenced, or NULL */
static struct pci_dev *vfio_pci_lu_pdev_of(u32 rid)
{
	return pci_get_domain_bus_and_slot(rid >> 16, (rid >> 8) & 0xff,
					   rid & 0xff);
}

/* Logs about function @rid when there is no pci_dev for it */
static void vfio_pci_lu_rid_err(u32 rid, const char *what)
{
	pr_err("vfio-pci: live update: %04x:%02x:%02x.%d %s\n", rid >> 16,
	       (rid >> 8) & 0xff, PCI_SLOT(rid & 0xff), PCI_FUNC(rid & 0xff),
	       what);
}

#if IS_ENABLED(CONFIG_IOMMUFD_TEST)
/*
 * Test only: damage the handover at the next freeze, so that the next
 * kernel's refusal paths can be tested (docs/testing.md): "version",
 * "crc", "device" (the first record names another device ID), "bar" (its
 * BAR 0 is recorded 1 MiB away) or "mask" (its BAR 0 sizing mask has a
 * hole), "sriov" (the first PF record's VF BAR 0 is recorded 1 MiB
 * away), each with a valid checksum.
 */
static char lu_test_damage[16];
module_param_string(lu_test_damage, lu_test_damage, sizeof(lu_test_damage),
		    0600);

/*
 * Test only, boot parameter vfio_pci_core.lu_fail_read=1: the allocation
 * of the handover read fails (the refused-handover path at boot).
 */
static bool lu_fail_read;
module_param(lu_fail_read, bool, 0400);

static void vfio_pci_lu_test_damage(struct vfio_pci_lu_header *h)
{
	struct vfio_pci_lu_func *rec = (void *)(h + 1), *pf = NULL;

	for (u32 i = le32_to_cpu(h->nr_funcs); i--;)
		if (le16_to_cpu(rec[i].flags) & VFIO_PCI_LU_FUNC_SRIOV_PF)
			pf = &rec[i];

	if (sysfs_streq(lu_test_damage, "version"))
		h->version = cpu_to_le32(99);
	else if (sysfs_streq(lu_test_damage, "crc"))
		h->crc = cpu_to_le32(le32_to_cpu(h->crc) ^ 1);
	else if (sysfs_streq(lu_test_damage, "device") && h->nr_funcs)
		rec[0].device = cpu_to_le16(le16_to_cpu(rec[0].device) ^ 1);
	else if (sysfs_streq(lu_test_damage, "bar") && h->nr_funcs)
		rec[0].bar[0] = cpu_to_le32(le32_to_cpu(rec[0].bar[0]) ^ SZ_1M);
	else if (sysfs_streq(lu_test_damage, "mask") && h->nr_funcs)
		rec[0].mask[0] = cpu_to_le32(le32_to_cpu(rec[0].mask[0]) ^ 0x100);
	else if (sysfs_streq(lu_test_damage, "sriov") && pf)
		pf->sriov.vf_bar[0] =
			cpu_to_le32(le32_to_cpu(pf->sriov.vf_bar[0]) ^ SZ_1M);
	else
		return;
	if (!sysfs_streq(lu_test_damage, "crc")) {
		h->crc = 0;
		h->crc = cpu_to_le32(crc32c(0, h, sizeof(*h) +
					    le32_to_cpu(h->nr_funcs) *
					    sizeof(*rec)));
	}
}
#else
static const bool lu_fail_read;

static void vfio_pci_lu_test_damage(struct vfio_pci_lu_header *h)
{
}
#endif

static void vfio_pci_lu_encode_func(struct vfio_pci_lu_func *rec,
				    struct pci_dev *pdev, u32 rid, u16 command,
				    u16 flags, const u32 *bars, const u32 *masks)
{
	rec->rid = cpu_to_le32(rid);
	rec->vendor = cpu_to_le16(pdev->vendor);
	rec->device = cpu_to_le16(pdev->device);
	rec->command = cpu_to_le16(command);
	rec->flags = cpu_to_le16(flags);
	for (unsigned int i = 0; i < PCI_LU_NR_BARS; i++) {
		rec->bar[i] = cpu_to_le32(bars[i]);
		rec->mask[i] = cpu_to_le32(masks[i]);
	}
}

/* Rewrites the whole page from the lists (out->lock held) */
static void vfio_pci_lu_encode(struct vfio_pci_lu_out *out)
{
	struct vfio_pci_lu_header *h = out->page;
	struct vfio_pci_lu_func *rec = (void *)(h + 1);
	struct vfio_pci_lu_parent *pa;
	struct vfio_pci_lu_file *lf;
	bool frozen = false;
	u32 nr = 0;

	lockdep_assert_held(&out->lock);
	memset(h, 0, PAGE_SIZE);
	list_for_each_entry(lf, &out->files, link) {
		struct pci_dev *pdev = lf->vdev->pdev;

		vfio_pci_lu_encode_func(&rec[nr++], pdev, lf->rid, lf->command,
					lf->flags | (pdev->is_virtfn ?
						     VFIO_PCI_LU_FUNC_VF : 0),
					lf->bars, lf->masks);
		frozen |= lf->flags & VFIO_PCI_LU_FUNC_FROZEN;
	}
	list_for_each_entry(pa, &out->parents, link) {
		struct vfio_pci_lu_sriov *s = &rec[nr].sriov;

		vfio_pci_lu_encode_func(&rec[nr++], pa->pdev, pa->rid,
					pa->command, VFIO_PCI_LU_FUNC_SRIOV_PF |
					(pa->frozen ? VFIO_PCI_LU_FUNC_FROZEN : 0),
					pa->bars, pa->masks);
		s->ctrl = cpu_to_le16(pa->sriov.ctrl);
		s->num_vfs = cpu_to_le16(pa->sriov.num_vfs);
		s->offset = cpu_to_le16(pa->sriov.offset);
		s->stride = cpu_to_le16(pa->sriov.stride);
		s->vf_device = cpu_to_le16(pa->sriov.vf_device);
		s->pgsz = cpu_to_le32(pa->sriov.pgsz);
		for (unsigned int i = 0; i < PCI_SRIOV_NUM_BARS; i++) {
			s->vf_bar[i] = cpu_to_le32(pa->sriov.vf_bar[i]);
			s->vf_mask[i] = cpu_to_le32(pa->sriov.vf_mask[i]);
		}
	}
	h->magic = cpu_to_le64(VFIO_PCI_LU_MAGIC);
	h->version = cpu_to_le32(VFIO_PCI_LU_VERSION);
	h->nr_funcs = cpu_to_le32(nr);
	h->crc = cpu_to_le32(crc32c(0, h, sizeof(*h) + nr * sizeof(*rec)));
	if (frozen)
		vfio_pci_lu_test_damage(h);
}

static int vfio_pci_lu_flb_preserve(struct liveupdate_flb_op_args *args)
{
	struct vfio_pci_lu_out *out;
	void *page;

	out = kzalloc_obj(*out, GFP_KERNEL);
	if (!out)
		return -ENOMEM;
	page = kho_alloc_preserve(PAGE_SIZE);
	if (IS_ERR(page)) {
		kfree(out);
		return PTR_ERR(page);
	}
	mutex_init(&out->lock);
	INIT_LIST_HEAD(&out->files);
	INIT_LIST_HEAD(&out->parents);
	out->page = page;
	mutex_lock(&out->lock);
	vfio_pci_lu_encode(out);
	mutex_unlock(&out->lock);
	args->data = virt_to_phys(page);
	args->obj = out;
	return 0;
}

static void vfio_pci_lu_flb_unpreserve(struct liveupdate_flb_op_args *args)
{
	struct vfio_pci_lu_out *out = args->obj;

	kho_unpreserve_free(out->page);
	mutex_destroy(&out->lock);
	kfree(out);
}

/*
 * @m has all bits set from some bit up to its highest set bit (an address
 * sizing mask; a device may hardwire its upper address bits to zero)
 */
static bool vfio_pci_lu_contiguous(u64 m)
{
	if (!m)
		return false;
	if (fls64(m) < 64)
		m |= ~0ULL << fls64(m);
	return !(~m & (~m + 1));
}

/*
 * The sizing masks of @nr BAR registers describe BARs sizing could have
 * read: type bits as the register's, contiguous address bits, a base
 * aligned to the size (enumeration trusts them instead of sizing).
 */
static bool vfio_pci_lu_bars_sound(const __le32 *bars, const __le32 *masks,
				   unsigned int nr)
{
	u32 bar, mask;
	u64 m;

	for (unsigned int i = 0; i < nr; i++) {
		bar = le32_to_cpu(bars[i]);
		mask = le32_to_cpu(masks[i]);
		if (!mask)
			continue;
		if (bar & PCI_BASE_ADDRESS_SPACE_IO) {
			if ((mask ^ bar) & ~PCI_BASE_ADDRESS_IO_MASK ||
			    bar & ~mask & PCI_BASE_ADDRESS_IO_MASK)
				return false;
			continue;
		}
		if ((mask ^ bar) & ~PCI_BASE_ADDRESS_MEM_MASK)
			return false;
		m = mask & PCI_BASE_ADDRESS_MEM_MASK;
		if (bar & PCI_BASE_ADDRESS_MEM_TYPE_64) {
			if (i + 1 == nr)
				return false;
			m |= (u64)le32_to_cpu(masks[i + 1]) << 32;
			if (le32_to_cpu(bars[i + 1]) & ~(u32)(m >> 32))
				return false;
			i++;
		} else {
			m |= 0xffffffff00000000ULL;
		}
		if (!vfio_pci_lu_contiguous(m) ||
		    bar & ~mask & PCI_BASE_ADDRESS_MEM_MASK)
			return false;
	}
	return true;
}

/* The BAR, ROM and VF BAR sizing masks of one record are sound */
static bool vfio_pci_lu_masks_sound(const struct vfio_pci_lu_func *rec)
{
	u32 bar, mask;

	if (!vfio_pci_lu_bars_sound(rec->bar, rec->mask, PCI_STD_NUM_BARS) ||
	    !vfio_pci_lu_bars_sound(rec->sriov.vf_bar, rec->sriov.vf_mask,
				    PCI_SRIOV_NUM_BARS))
		return false;
	mask = le32_to_cpu(rec->mask[PCI_STD_NUM_BARS]);
	bar = le32_to_cpu(rec->bar[PCI_STD_NUM_BARS]);
	return !mask || (!(mask & ~PCI_ROM_ADDRESS_MASK) &&
			 vfio_pci_lu_contiguous(0xffffffff00000000ULL | mask) &&
			 !(bar & ~mask & PCI_ROM_ADDRESS_MASK));
}

/* A PF's SR-IOV state has VFs enabled, and nothing reserved set */
static bool vfio_pci_lu_sriov_sound(const struct vfio_pci_lu_sriov *s)
{
	u16 ctrl = le16_to_cpu(s->ctrl);
	u16 num_vfs = le16_to_cpu(s->num_vfs);

	for (unsigned int i = 0; i < PCI_SRIOV_NUM_BARS; i++) {
		u32 bar = le32_to_cpu(s->vf_bar[i]);

		/* Memory BARs only; no VF BAR hidden from enumeration */
		if (bar & PCI_BASE_ADDRESS_SPACE_IO || (bar && !s->vf_mask[i]))
			return false;
		/* The upper half of a 64-bit BAR is an address */
		if (bar & PCI_BASE_ADDRESS_MEM_TYPE_64)
			i++;
	}
	return !s->reserved && ctrl & PCI_SRIOV_CTRL_VFE &&
	       ctrl & PCI_SRIOV_CTRL_MSE && num_vfs && s->offset &&
	       (num_vfs == 1 || s->stride);
}

/* Function @rid is a VF of a PF listed in the @nr records at @rec */
static bool vfio_pci_lu_vf_listed(const struct vfio_pci_lu_func *rec, u32 nr,
				  u32 rid)
{
	for (u32 i = 0; i < nr; i++) {
		const struct vfio_pci_lu_sriov *s = &rec[i].sriov;
		u32 pf = le32_to_cpu(rec[i].rid);
		s32 d, stride;

		if (!(le16_to_cpu(rec[i].flags) & VFIO_PCI_LU_FUNC_SRIOV_PF) ||
		    pf >> 16 != rid >> 16)
			continue;
		/* As pci_iov_virtfn_bus() and pci_iov_virtfn_devfn() */
		d = (s32)(rid & 0xffff) - (s32)(pf & 0xffff) -
		    le16_to_cpu(s->offset);
		stride = le16_to_cpu(s->stride);
		if (d < 0)
			continue;
		if (stride ? d % stride == 0 &&
			     d / stride < le16_to_cpu(s->num_vfs) : !d)
			return true;
	}
	return false;
}

/* PF record @pf is the parent of at least one VF record */
static bool vfio_pci_lu_pf_used(const struct vfio_pci_lu_func *rec, u32 nr,
				const struct vfio_pci_lu_func *pf)
{
	for (u32 i = 0; i < nr; i++)
		if (le16_to_cpu(rec[i].flags) & VFIO_PCI_LU_FUNC_VF &&
		    vfio_pci_lu_vf_listed(pf, 1, le32_to_cpu(rec[i].rid)))
			return true;
	return false;
}

/* Checks the handed-over page; NULL if it is sound, else why not */
static const char *vfio_pci_lu_check(struct vfio_pci_lu_header *h)
{
	struct vfio_pci_lu_func *rec = (void *)(h + 1);
	u32 nr = le32_to_cpu(h->nr_funcs);
	u32 crc = le32_to_cpu(h->crc);

	if (le64_to_cpu(h->magic) != VFIO_PCI_LU_MAGIC)
		return "bad magic";
	if (le32_to_cpu(h->version) != VFIO_PCI_LU_VERSION)
		return "unknown version";
	if (nr > VFIO_PCI_LU_MAX_FUNCS)
		return "too many functions";
	h->crc = 0;
	if (crc32c(0, h, sizeof(*h) + nr * sizeof(*rec)) != crc)
		return "bad checksum";
	if (h->reserved)
		return "reserved header field set";
	for (u32 i = 0; i < nr; i++) {
		u16 flags = le16_to_cpu(rec[i].flags);

		if (rec[i].reserved || flags & ~VFIO_PCI_LU_FUNC_FLAGS)
			return "reserved record field or unknown flag set";
		for (u32 j = 0; j < i; j++)
			if (rec[j].rid == rec[i].rid)
				return "function listed twice";
		if (flags & VFIO_PCI_LU_FUNC_SRIOV_PF) {
			if (flags & VFIO_PCI_LU_FUNC_VF)
				return "a function listed as both VF and PF";
			if (!vfio_pci_lu_sriov_sound(&rec[i].sriov))
				return "SR-IOV state without VFs running";
			if (!vfio_pci_lu_pf_used(rec, nr, &rec[i]))
				return "a PF without a listed VF";
		} else if (memchr_inv(&rec[i].sriov, 0, sizeof(rec[i].sriov))) {
			return "SR-IOV state of a function that is not a PF";
		}
		if (flags & VFIO_PCI_LU_FUNC_VF &&
		    !vfio_pci_lu_vf_listed(rec, nr, le32_to_cpu(rec[i].rid)))
			return "a VF whose PF is not listed";
		if (!vfio_pci_lu_masks_sound(&rec[i]))
			return "BAR sizes that sizing cannot read";
	}
	return NULL;
}

static void vfio_pci_lu_read_sriov(struct pci_lu_sriov *st,
				   const struct vfio_pci_lu_sriov *s)
{
	st->ctrl = le16_to_cpu(s->ctrl);
	st->num_vfs = le16_to_cpu(s->num_vfs);
	st->offset = le16_to_cpu(s->offset);
	st->stride = le16_to_cpu(s->stride);
	st->vf_device = le16_to_cpu(s->vf_device);
	st->pgsz = le32_to_cpu(s->pgsz);
	for (unsigned int i = 0; i < PCI_SRIOV_NUM_BARS; i++) {
		st->vf_bar[i] = le32_to_cpu(s->vf_bar[i]);
		st->vf_mask[i] = le32_to_cpu(s->vf_mask[i]);
	}
}

static struct vfio_pci_lu_in *vfio_pci_lu_read(phys_addr_t phys)
{
	struct vfio_pci_lu_header *h;
	struct vfio_pci_lu_func *rec;
	struct vfio_pci_lu_in *in;
	const char *reason;
	struct folio *folio;
	u32 nr;

	/* Touch nothing KHO did not hand over as this one page */
	if (!PAGE_ALIGNED(phys) || !kho_page_preserved(phys, 0)) {
		pr_err("vfio-pci: live update handover refused: page %pa not handed over\n",
		       &phys);
		return &vfio_pci_lu_refused;
	}
	folio = kho_restore_folio(phys);
	if (!folio) {
		pr_err("vfio-pci: live update handover refused: page %pa not restored\n",
		       &phys);
		return &vfio_pci_lu_refused;
	}
	h = folio_address(folio);
	rec = (void *)(h + 1);
	reason = vfio_pci_lu_check(h);
	if (reason) {
		pr_err("vfio-pci: live update handover refused: %s\n", reason);
		folio_put(folio);
		return &vfio_pci_lu_refused;
	}
	nr = le32_to_cpu(h->nr_funcs);
	in = lu_fail_read ? NULL : kzalloc_flex(*in, funcs, nr, GFP_KERNEL);
	if (!in) {
		pr_err("vfio-pci: live update handover refused: out of memory\n");
		folio_put(folio);
		return &vfio_pci_lu_refused;
	}
	in->nr = nr;
	for (u32 i = 0; i < nr; i++) {
		in->funcs[i].rid = le32_to_cpu(rec[i].rid);
		in->funcs[i].vendor = le16_to_cpu(rec[i].vendor);
		in->funcs[i].device = le16_to_cpu(rec[i].device);
		in->funcs[i].command = le16_to_cpu(rec[i].command);
		in->funcs[i].flags = le16_to_cpu(rec[i].flags);
		for (unsigned int b = 0; b < PCI_LU_NR_BARS; b++) {
			in->funcs[i].bars[b] = le32_to_cpu(rec[i].bar[b]);
			in->funcs[i].masks[b] = le32_to_cpu(rec[i].mask[b]);
		}
		vfio_pci_lu_read_sriov(&in->funcs[i].sriov, &rec[i].sriov);
		in->funcs[i].state = VFIO_PCI_LU_QUIET;
	}
	folio_put(folio);
	return in;
}

/* Never fails: LUO would warn at finish. A bad page is a refused object. */
static int vfio_pci_lu_flb_retrieve(struct liveupdate_flb_op_args *args)
{
	args->obj = vfio_pci_lu_read(args->data);
	return 0;
}

static void vfio_pci_lu_quiesce(struct pci_dev *pdev, const char *why)
{
	pci_clear_master(pdev);
	pci_warn(pdev, "live update: %s; bus mastering cleared\n", why);
}

static void vfio_pci_lu_stop_unpinned(u32 rid, const char *why);

static void vfio_pci_lu_flb_finish(struct liveupdate_flb_op_args *args)
{
	struct vfio_pci_lu_in *in = args->obj;

	if (in == &vfio_pci_lu_refused) {
		scoped_guard(spinlock, &vfio_pci_lu_in_lock)
			vfio_pci_lu_in = NULL;
		return;
	}
	/*
	 * Every file finished first, so only a function listed without a
	 * file can still wait: stop it before the list goes.
	 */
	for (u32 i = 0; i < in->nr; i++)
		vfio_pci_lu_stop_unpinned(in->funcs[i].rid,
					  "listed without a preserved file");
	scoped_guard(spinlock, &vfio_pci_lu_in_lock)
		vfio_pci_lu_in = NULL;
	for (u32 i = 0; i < in->nr; i++) {
		/* No VF waits any more: sriov_numvfs and autoprobe again */
		if (in->funcs[i].state == VFIO_PCI_LU_PARENT)
			pci_iov_lu_release(in->funcs[i].pdev);
		pci_dev_put(in->funcs[i].pdev);
	}
	kfree(in);
}

static const struct liveupdate_flb_ops vfio_pci_lu_flb_ops = {
	.preserve = vfio_pci_lu_flb_preserve,
	.unpreserve = vfio_pci_lu_flb_unpreserve,
	.retrieve = vfio_pci_lu_flb_retrieve,
	.finish = vfio_pci_lu_flb_finish,
	.owner = THIS_MODULE,
};

static struct liveupdate_flb vfio_pci_lu_flb = {
	.ops = &vfio_pci_lu_flb_ops,
	.compatible = VFIO_PCI_LU_FLB_COMPATIBLE,
};

/* The incoming record of @rid (vfio_pci_lu_in_lock held) */
static struct vfio_pci_lu_in_func *vfio_pci_lu_find(u32 rid)
{
	lockdep_assert_held(&vfio_pci_lu_in_lock);
	if (!vfio_pci_lu_in)
		return NULL;
	for (u32 i = 0; i < vfio_pci_lu_in->nr; i++)
		if (vfio_pci_lu_in->funcs[i].rid == rid)
			return &vfio_pci_lu_in->funcs[i];
	return NULL;
}

static struct vfio_pci_core_device *vfio_pci_lu_vdev(struct vfio_device *device)
{
	if (!device || device->ops != vfio_pci_lu_ops)
		return NULL;
	return container_of(device, struct vfio_pci_core_device, vdev);
}

/*
 * The BAR and ROM registers of @pdev, and what sizing them read back at
 * enumeration (kept by the PCI core): the next kernel takes the sizes
 * from here instead of sizing a running function (pci_lu_set_bars_fn()).
 */
static void vfio_pci_lu_bar_masks(struct pci_dev *pdev, u32 *bars, u32 *masks)
{
	for (unsigned int i = 0; i < PCI_STD_NUM_BARS; i++)
		pci_read_config_dword(pdev, PCI_BASE_ADDRESS_0 + 4 * i, &bars[i]);
	pci_read_config_dword(pdev, PCI_ROM_ADDRESS, &bars[PCI_STD_NUM_BARS]);
	memcpy(masks, pdev->lu_bar_masks, sizeof(pdev->lu_bar_masks));
}

/* The handover cannot describe the BARs of @pdev */
static bool vfio_pci_lu_bars_unfit(struct pci_dev *pdev)
{
	return pdev->hdr_type != PCI_HEADER_TYPE_NORMAL ||
	       pdev->non_compliant_bars ||
	       pci_find_capability(pdev, PCI_CAP_ID_EA);
}

/*
 * @pf is bound to the PF driver that keeps SR-IOV through a kexec. Read
 * unlocked at the freeze: the PF is pinned, and its driver matters at
 * shutdown only.
 */
static bool vfio_pci_lu_on_pf_stub(struct pci_dev *pf)
{
	struct pci_driver *drv = READ_ONCE(pf->driver);

	return drv && !strcmp(drv->name, VFIO_PCI_LU_PF_DRIVER);
}

/*
 * A VF is preserved only while its PF keeps SR-IOV through the kexec and
 * the next boot: on pci-pf-stub, on a root bus, in D0. The PF is pinned:
 * its sriov_numvfs gets -EBUSY until the VF is unpreserved.
 */
static int vfio_pci_lu_pin_pf(struct pci_dev *vf)
{
	struct pci_dev *pf = pci_physfn(vf);
	const char *reason = NULL;
	int ret;

	/* A concurrent sriov_numvfs write may wait for this VF's file */
	ret = device_lock_interruptible(&pf->dev);
	if (ret)
		return ret;
	if (!vfio_pci_lu_on_pf_stub(pf))
		/* Other PF drivers disable SR-IOV at kexec or reset the PF */
		reason = "its PF is not bound to " VFIO_PCI_LU_PF_DRIVER;
	else if (!pci_is_root_bus(pf->bus))
		reason = "its PF is behind a bridge";
	else if (vfio_pci_lu_bars_unfit(pf))
		reason = "its PF has BARs the handover cannot describe";
	else if (pf->current_state != PCI_D0)
		reason = "its PF is not in D0";
	else if (pci_iov_lu_pin(pf))
		reason = "its PF's SR-IOV cannot be kept (VF Resizable BARs, a dependency link or VFs off its bus)";
	device_unlock(&pf->dev);
	if (reason) {
		pci_err(vf, "live update: cannot preserve: %s\n", reason);
		return -EOPNOTSUPP;
	}
	return 0;
}

/* The PF's registers and SR-IOV state, as the next kernel checks them */
static void vfio_pci_lu_parent_snapshot(struct vfio_pci_lu_parent *pa)
{
	pci_read_config_word(pa->pdev, PCI_COMMAND, &pa->command);
	vfio_pci_lu_bar_masks(pa->pdev, pa->bars, pa->masks);
	pci_iov_lu_state(pa->pdev, &pa->sriov);
}

/* Lists PF @pf for VF file @lf, once for all its VFs (out->lock held) */
static int vfio_pci_lu_get_parent(struct vfio_pci_lu_file *lf,
				  struct pci_dev *pf)
{
	struct vfio_pci_lu_parent *pa;
	u32 rid = vfio_pci_lu_rid(pf);

	lockdep_assert_held(&lf->out->lock);
	list_for_each_entry(pa, &lf->out->parents, link)
		if (pa->rid == rid)
			goto found;
	pa = kzalloc_obj(*pa, GFP_KERNEL);
	if (!pa)
		return -ENOMEM;
	pa->pdev = pci_dev_get(pf);
	pa->rid = rid;
	/* Sound before any freeze; the first freeze takes it again */
	vfio_pci_lu_parent_snapshot(pa);
	list_add_tail(&pa->link, &lf->out->parents);
found:
	pa->files++;
	lf->parent = pa;
	return 0;
}

/* At a VF's freeze: its PF still keeps SR-IOV for the next kernel */
static int vfio_pci_lu_pf_still_fit(struct pci_dev *vf)
{
	struct pci_dev *pf = pci_physfn(vf);
	const char *reason = NULL;
	struct pci_lu_sriov st;

	if (!vfio_pci_lu_on_pf_stub(pf))
		reason = "its PF is no longer bound to " VFIO_PCI_LU_PF_DRIVER;
	else if (pf->current_state != PCI_D0)
		reason = "its PF left D0";
	else if (pci_iov_lu_state(pf, &st) ||
		 !(st.ctrl & PCI_SRIOV_CTRL_VFE) ||
		 !(st.ctrl & PCI_SRIOV_CTRL_MSE))
		reason = "VF Enable or VF MSE of its PF is off";
	if (reason) {
		pci_err(vf, "live update refused: %s\n", reason);
		return -EBUSY;
	}
	return 0;
}

static bool vfio_pci_lu_can_preserve(struct liveupdate_file_handler *handler,
				     struct file *file)
{
	return vfio_pci_lu_vdev(vfio_device_lu_from_file(file, true));
}

static int vfio_pci_lu_preserve(struct liveupdate_file_op_args *args)
{
	struct vfio_pci_core_device *vdev =
		vfio_pci_lu_vdev(vfio_device_lu_from_file(args->file, true));
	struct vfio_pci_lu_file *lf, *other;
	struct vfio_pci_lu_out *out;
	const char *reason = NULL;
	struct pci_dev *pdev;
	unsigned int nr = 0;
	int ret;

	if (!vdev)
		return -EOPNOTSUPP;
	pdev = vdev->pdev;
	if (pci_num_vf(pdev))
		reason = "SR-IOV is enabled (preserve a VF, its PF on pci-pf-stub)";
	else if (vfio_pci_lu_bars_unfit(pdev))
		reason = "BARs the handover cannot describe";
	else if (!pci_is_root_bus(pdev->bus))
		reason = "functions behind a bridge are not supported";
	else if (pci_domain_nr(pdev->bus) > 0xffff)
		reason = "PCI domain above 0xffff";
	else if (pdev->current_state != PCI_D0 || vdev->pm_runtime_engaged)
		reason = "not in D0";
	if (reason) {
		pci_err(pdev, "live update: cannot preserve: %s\n", reason);
		return -EOPNOTSUPP;
	}

	lf = kzalloc_obj(*lf, GFP_KERNEL);
	if (!lf)
		return -ENOMEM;
	ret = liveupdate_flb_get_outgoing(&vfio_pci_lu_flb, (void **)&out);
	if (ret)
		goto free;
	/* LUO keeps the object until the last file is unpreserved */
	liveupdate_flb_put_outgoing(&vfio_pci_lu_flb);

	lf->out = out;
	lf->vdev = vdev;
	lf->rid = vfio_pci_lu_rid(pdev);
	if (pdev->is_virtfn) {
		ret = vfio_pci_lu_pin_pf(pdev);
		if (ret)
			goto free;
	}
	scoped_guard(mutex, &out->lock) {
		list_for_each_entry(other, &out->files, link) {
			if (other->rid == lf->rid) {
				ret = -EBUSY;
				break;
			}
			nr++;
		}
		nr += list_count_nodes(&out->parents);
		if (!ret && nr + pdev->is_virtfn >= VFIO_PCI_LU_MAX_FUNCS)
			ret = -ENOSPC;
		if (!ret && pdev->is_virtfn)
			ret = vfio_pci_lu_get_parent(lf, pci_physfn(pdev));
		if (!ret) {
			list_add_tail(&lf->link, &out->files);
			vfio_pci_lu_encode(out);
		}
	}
	if (ret)
		goto unpin;
	args->serialized_data = ((u64)VFIO_PCI_LU_FILE_TAG << 32) | lf->rid;
	args->private_data = lf;
	return 0;

unpin:
	if (pdev->is_virtfn)
		pci_iov_lu_unpin(pci_physfn(pdev));
free:
	kfree(lf);
	return ret;
}

static void vfio_pci_lu_unpreserve(struct liveupdate_file_op_args *args)
{
	struct vfio_pci_lu_file *lf = args->private_data;
	struct vfio_pci_lu_parent *pa = lf->parent;
	struct pci_dev *pf = pa ? pa->pdev : NULL;

	scoped_guard(mutex, &lf->out->lock) {
		list_del(&lf->link);
		if (pf)
			pci_iov_lu_unpin(pf);
		if (pa && !--pa->files) {
			list_del(&pa->link);
			pci_dev_put(pa->pdev);
			kfree(pa);
		}
		vfio_pci_lu_encode(lf->out);
	}
	kfree(lf);
}

static const char *const vfio_pci_lu_irq_names[] = {
	[VFIO_PCI_INTX_IRQ_INDEX] = "INTx",
	[VFIO_PCI_MSI_IRQ_INDEX] = "MSI",
	[VFIO_PCI_MSIX_IRQ_INDEX] = "MSI-X",
	[VFIO_PCI_ERR_IRQ_INDEX] = "error IRQ",
	[VFIO_PCI_REQ_IRQ_INDEX] = "request IRQ",
};

static int vfio_pci_lu_freeze(struct liveupdate_file_op_args *args)
{
	struct vfio_pci_lu_file *lf = args->private_data;
	struct vfio_pci_core_device *vdev = lf->vdev;
	struct pci_dev *pdev = vdev->pdev;
	const char *irq = NULL;
	u16 cmd = 0;

	if (lf->parent && vfio_pci_lu_pf_still_fit(pdev))
		return -EBUSY;
	if (pci_num_vf(pdev)) {
		/* The next kernel would disable them under the running PF */
		pci_err(pdev, "live update refused: SR-IOV was enabled after preserve\n");
		return -EBUSY;
	}
	/* Resets, config writes and low power entry hold lu_lock to read */
	guard(rwsem_write)(&vdev->lu_lock);
	scoped_guard(mutex, &vdev->igate) {
		if (vdev->irq_type < ARRAY_SIZE(vfio_pci_lu_irq_names))
			irq = vfio_pci_lu_irq_names[vdev->irq_type];
		else if (pdev->msix_enabled)
			irq = "MSI-X";
		else if (pdev->msi_enabled)
			irq = "MSI";
		if (irq) {
			pci_err(pdev, "live update refused: %s enabled (disable interrupts before kexec)\n",
				irq);
			return -EBUSY;
		}
		if (!iommu_lu_device_frozen(&pdev->dev)) {
			pci_err(pdev, "live update refused: translation not preserved (preserve the iommufd before the device, the device attached to a marked HWPT)\n");
			return -EINVAL;
		}
		if (READ_ONCE(vdev->pm_runtime_engaged) ||
		    pdev->current_state != PCI_D0) {
			pci_err(pdev, "live update refused: not in D0\n");
			return -EBUSY;
		}
		vdev->lu_frozen = true;
		pci_read_config_word(pdev, PCI_COMMAND, &cmd);
		WRITE_ONCE(pdev->liveupdate_outgoing, true);
	}
	scoped_guard(mutex, &lf->out->lock) {
		lf->command = cmd;
		lf->flags = VFIO_PCI_LU_FUNC_FROZEN;
		vfio_pci_lu_bar_masks(pdev, lf->bars, lf->masks);
		/* The PF keeps mastering too: in QEMU's igb it gates VF DMA */
		if (lf->parent && !lf->parent->frozen++) {
			vfio_pci_lu_parent_snapshot(lf->parent);
			WRITE_ONCE(lf->parent->pdev->liveupdate_outgoing, true);
		}
		vfio_pci_lu_encode(lf->out);
	}
	pci_info(pdev, "live update: frozen, keeps running through the kexec (bus master %s)\n",
		 cmd & PCI_COMMAND_MASTER ? "on" : "off");
	return 0;
}

static void vfio_pci_lu_unfreeze(struct liveupdate_file_op_args *args)
{
	struct vfio_pci_lu_file *lf = args->private_data;
	struct vfio_pci_core_device *vdev = lf->vdev;

	scoped_guard(rwsem_write, &vdev->lu_lock) {
		guard(mutex)(&vdev->igate);
		vdev->lu_frozen = false;
		WRITE_ONCE(vdev->pdev->liveupdate_outgoing, false);
	}
	scoped_guard(mutex, &lf->out->lock) {
		if (lf->parent && lf->flags & VFIO_PCI_LU_FUNC_FROZEN &&
		    !--lf->parent->frozen)
			WRITE_ONCE(lf->parent->pdev->liveupdate_outgoing, false);
		lf->command = 0;
		lf->flags = 0;
		vfio_pci_lu_encode(lf->out);
	}
}

/* The vfio-pci device bound to @pdev, if any (device_lock held) */
static struct vfio_pci_core_device *vfio_pci_lu_bound(struct pci_dev *pdev)
{
	device_lock_assert(&pdev->dev);
	if (pdev->driver != vfio_pci_lu_driver)
		return NULL;
	return dev_get_drvdata(&pdev->dev);
}

/* Ends the wait of an adoptable function (dev_set->lock held) */
static void vfio_pci_lu_release(struct vfio_pci_core_device *vdev)
{
	vdev->lu_adopt = false;
	WRITE_ONCE(vdev->vdev.lu_incoming, false);
	if (vdev->lu_pm_held) {
		vdev->lu_pm_held = false;
		pm_runtime_put(&vdev->pdev->dev);
	}
}

/*
 * Stops function @rid if it still waits for its VMM, and ends the wait
 * of @vdev, its vfio-pci device if bound (dev_set->lock held, the caller
 * keeps it registered).
 */
static void vfio_pci_lu_stop(struct pci_dev *pdev,
			     struct vfio_pci_core_device *vdev, u32 rid,
			     const char *why)
{
	struct vfio_pci_lu_in_func *f;
	bool quiet = false;

	scoped_guard(spinlock, &vfio_pci_lu_in_lock) {
		f = vfio_pci_lu_find(rid);
		if (f && (f->state == VFIO_PCI_LU_WAITING ||
			  f->state == VFIO_PCI_LU_RETRIEVED)) {
			f->state = VFIO_PCI_LU_QUIET;
			quiet = true;
		}
	}
	if (quiet) {
		vfio_pci_lu_quiesce(pdev, why);
		/* Host drivers may bind it again, unless the admin chose */
		if (device_match_driver_override(&pdev->dev,
						 &vfio_pci_lu_driver->driver) > 0)
			device_set_driver_override(&pdev->dev, "");
	}
	if (vdev && vdev->lu_adopt)
		vfio_pci_lu_release(vdev);
}

/*
 * Stops function @rid when no retrieved file pins its vfio-pci device:
 * device_lock() keeps the driver bound meanwhile.
 */
static void vfio_pci_lu_stop_unpinned(u32 rid, const char *why)
{
	struct vfio_pci_core_device *vdev;
	struct vfio_pci_lu_in_func *f;
	struct pci_dev *pdev = NULL;

	scoped_guard(spinlock, &vfio_pci_lu_in_lock) {
		f = vfio_pci_lu_find(rid);
		if (f && (f->state == VFIO_PCI_LU_WAITING ||
			  f->state == VFIO_PCI_LU_RETRIEVED))
			pdev = pci_dev_get(f->pdev);
	}
	if (!pdev)
		return;
	device_lock(&pdev->dev);
	vdev = vfio_pci_lu_bound(pdev);
	if (vdev) {
		/* Against a concurrent VFIO_DEVICE_BIND_IOMMUFD */
		guard(mutex)(&vdev->vdev.dev_set->lock);
		vfio_pci_lu_stop(pdev, vdev, rid, why);
	} else {
		vfio_pci_lu_stop(pdev, NULL, rid, why);
	}
	device_unlock(&pdev->dev);
	pci_dev_put(pdev);
}

static int vfio_pci_lu_retrieve(struct liveupdate_file_op_args *args)
{
	u32 rid = lower_32_bits(args->serialized_data);
	struct vfio_pci_core_device *vdev;
	struct vfio_pci_lu_in_func *f;
	struct pci_dev *pdev = NULL;
	const char *why = NULL;
	struct file *file;
	int ret = -ENODEV;

	if (upper_32_bits(args->serialized_data) != VFIO_PCI_LU_FILE_TAG) {
		pr_err("vfio-pci: live update: unknown file data %#llx\n",
		       args->serialized_data);
		return -EINVAL;
	}
	scoped_guard(spinlock, &vfio_pci_lu_in_lock) {
		f = vfio_pci_lu_find(rid);
		if (f && f->state == VFIO_PCI_LU_WAITING)
			pdev = pci_dev_get(f->pdev);
	}
	if (!pdev) {
		vfio_pci_lu_rid_err(rid, "was not handed over running (see the boot log)");
		return -ENODEV;
	}

	device_lock(&pdev->dev);
	vdev = vfio_pci_lu_bound(pdev);
	if (!iommu_lu_device_held(&pdev->dev, NULL)) {
		why = "its translation is no longer handed over";
	} else if (!vdev) {
		why = "not bound to vfio-pci";
	} else if (!READ_ONCE(vdev->lu_adopt)) {
		why = "vfio-pci did not claim it";
	} else {
		file = vfio_device_lu_open_file(&vdev->vdev);
		if (IS_ERR(file)) {
			ret = PTR_ERR(file);
			why = "cannot open it";
		}
	}
	if (why) {
		device_unlock(&pdev->dev);
		pci_err(pdev, "live update: cannot retrieve: %s (%d)\n", why,
			ret);
		/* A failed retrieve is final: stop the function now */
		vfio_pci_lu_stop_unpinned(rid, "retrieve failed");
		pci_dev_put(pdev);
		return ret;
	}
	ret = 0;
	scoped_guard(spinlock, &vfio_pci_lu_in_lock) {
		f = vfio_pci_lu_find(rid);
		if (f && f->state == VFIO_PCI_LU_WAITING)
			f->state = VFIO_PCI_LU_RETRIEVED;
		else
			ret = -EBUSY;
	}
	if (ret)
		fput(file);
	else
		args->file = file;
	device_unlock(&pdev->dev);
	pci_dev_put(pdev);
	return ret;
}

static bool vfio_pci_lu_can_finish(struct liveupdate_file_op_args *args)
{
	/*
	 * Always: a function not adopted by now is quiesced, since closing
	 * the incoming session finishes it too and a refusal would keep it
	 * (and its memory) held forever.
	 */
	return true;
}

static void vfio_pci_lu_finish(struct liveupdate_file_op_args *args)
{
	u32 rid = lower_32_bits(args->serialized_data);
	struct vfio_pci_core_device *vdev;

	if (upper_32_bits(args->serialized_data) != VFIO_PCI_LU_FILE_TAG)
		return;
	if (args->retrieve_status <= 0 || !args->file) {
		vfio_pci_lu_stop_unpinned(rid, "not adopted by its VMM before FINISH");
		return;
	}
	/*
	 * The retrieved file keeps vfio-pci's device registered, so no
	 * device_lock(): an unbind waiting for that file would hold it.
	 */
	vdev = vfio_pci_lu_vdev(vfio_device_lu_from_file(args->file, false));
	if (!vdev)
		return;
	guard(mutex)(&vdev->vdev.dev_set->lock);
	vfio_pci_lu_stop(vdev->pdev, vdev, rid,
			 "not adopted by its VMM before FINISH");
}

static const struct liveupdate_file_ops vfio_pci_lu_file_ops = {
	.can_preserve = vfio_pci_lu_can_preserve,
	.preserve = vfio_pci_lu_preserve,
	.unpreserve = vfio_pci_lu_unpreserve,
	.freeze = vfio_pci_lu_freeze,
	.unfreeze = vfio_pci_lu_unfreeze,
	.retrieve = vfio_pci_lu_retrieve,
	.can_finish = vfio_pci_lu_can_finish,
	.finish = vfio_pci_lu_finish,
	.owner = THIS_MODULE,
};

static struct liveupdate_file_handler vfio_pci_lu_handler = {
	.ops = &vfio_pci_lu_file_ops,
	.compatible = VFIO_PCI_LU_FH_COMPATIBLE,
};

/* vfio-pci's probe (device_lock held), before the device is registered */
void vfio_pci_lu_probe(struct vfio_pci_core_device *vdev)
{
	u32 rid = vfio_pci_lu_rid(vdev->pdev);
	struct vfio_pci_lu_in_func *f;

	if (vdev->vdev.ops != vfio_pci_lu_ops)
		return;
	guard(spinlock)(&vfio_pci_lu_in_lock);
	f = vfio_pci_lu_find(rid);
	if (!f || f->state != VFIO_PCI_LU_WAITING)
		return;
	vdev->lu_adopt = true;
	vdev->vdev.lu_incoming = true;
	vdev->lu_pm_held = !vdev->disable_idle_d3;
}

/* vfio-pci's remove, or a failed probe: undoes vfio_pci_lu_probe() */
void vfio_pci_lu_remove(struct vfio_pci_core_device *vdev)
{
	/* The caller takes the usage count back: no idle check here */
	if (vdev->lu_pm_held)
		pm_runtime_put_noidle(&vdev->pdev->dev);
	vdev->lu_pm_held = false;
	vdev->lu_adopt = false;
	WRITE_ONCE(vdev->vdev.lu_incoming, false);
}

/*
 * vfio_pci_core_enable(), dev_set->lock held: adopt the function as it
 * runs? Only while the IOMMU still holds it; else it is stopped here and
 * the enable takes the normal path (bus master clear and reset).
 */
bool vfio_pci_lu_adoptable(struct vfio_pci_core_device *vdev)
{
	struct pci_dev *pdev = vdev->pdev;

	lockdep_assert_held(&vdev->vdev.dev_set->lock);
	if (!vdev->lu_adopt)
		return false;
	if (iommu_lu_device_held(&pdev->dev, NULL))
		return true;
	vfio_pci_lu_stop(pdev, vdev, vfio_pci_lu_rid(pdev),
			 "its translation is no longer handed over; reset instead of adopted");
	return false;
}

/* The end of an adopting vfio_pci_core_enable() (dev_set->lock held) */
void vfio_pci_lu_adopted(struct vfio_pci_core_device *vdev, int err)
{
	struct pci_dev *pdev = vdev->pdev;
	u32 rid = vfio_pci_lu_rid(pdev);
	struct vfio_pci_lu_in_func *f;

	if (err) {
		vfio_pci_lu_stop(pdev, vdev, rid, "adoption failed");
		return;
	}
	scoped_guard(spinlock, &vfio_pci_lu_in_lock) {
		f = vfio_pci_lu_find(rid);
		if (f)
			f->state = VFIO_PCI_LU_ADOPTED;
	}
	pci_info(pdev, "live update: adopted by its VMM without reset\n");
	vfio_pci_lu_release(vdev);
}

/* A refused handover: stop every function still translating through it */
static void __init vfio_pci_lu_quiesce_held(void)
{
	struct pci_dev *pdev = NULL;

	for_each_pci_dev(pdev)
		if (iommu_lu_device_held(&pdev->dev, NULL))
			vfio_pci_lu_quiesce(pdev, "handover refused");
}

/*
 * Enumeration of a function: the BAR sizing masks the handover has for
 * it (pci_lu_set_bars_fn()); the PCI core checks the registers.
 */
static bool vfio_pci_lu_bars(struct pci_dev *dev, u32 *bars, u32 *masks)
{
	struct vfio_pci_lu_in_func *f;

	guard(spinlock)(&vfio_pci_lu_in_lock);
	f = vfio_pci_lu_find(vfio_pci_lu_rid(dev));
	if (!f || f->state == VFIO_PCI_LU_ADOPTED ||
	    f->state == VFIO_PCI_LU_PARENT || f->vendor != dev->vendor ||
	    f->device != dev->device || !(f->flags & VFIO_PCI_LU_FUNC_FROZEN) ||
	    f->flags & VFIO_PCI_LU_FUNC_VF)
		return false;
	memcpy(bars, f->bars, sizeof(f->bars));
	memcpy(masks, f->masks, sizeof(f->masks));
	return true;
}

/*
 * Enumeration of a PF: the SR-IOV state of its VFs that the handover has
 * (pci_lu_set_sriov_fn()); the PCI core checks the registers.
 */
static bool vfio_pci_lu_sriov(struct pci_dev *dev, struct pci_lu_sriov *st)
{
	struct vfio_pci_lu_in_func *f;

	guard(spinlock)(&vfio_pci_lu_in_lock);
	f = vfio_pci_lu_find(vfio_pci_lu_rid(dev));
	if (!f || !(f->flags & VFIO_PCI_LU_FUNC_SRIOV_PF) ||
	    !(f->flags & VFIO_PCI_LU_FUNC_FROZEN) ||
	    f->vendor != dev->vendor || f->device != dev->device)
		return false;
	*st = f->sriov;
	return true;
}

/* The handover read at arch_initcall, before PCI enumeration */
static struct vfio_pci_lu_in *vfio_pci_lu_early_in __initdata;

/* The PF of listed VFs: kept, never quiesced, until the FLB finishes */
static void __init vfio_pci_lu_claim_pf(struct vfio_pci_lu_in_func *f,
					struct pci_dev *pdev)
{
	if (!pci_iov_lu_adopted(pdev)) {
		/*
		 * The PCI core stopped the VFs and the PF when it gave the
		 * state up; the PF may be a host driver's by now.
		 */
		pci_err(pdev, "live update: SR-IOV state not adopted; its VFs are not adopted\n");
		pci_dev_put(pdev);
		return;
	}
	scoped_guard(spinlock, &vfio_pci_lu_in_lock) {
		f->pdev = pdev;
		f->state = VFIO_PCI_LU_PARENT;
	}
	pci_info(pdev, "live update: PF of running VFs, sriov_numvfs kept until the session finishes\n");
}

static void __init vfio_pci_lu_claim(void)
{
	struct vfio_pci_lu_in *in = vfio_pci_lu_early_in;

	if (!in)
		return;
	if (in->refused) {
		vfio_pci_lu_quiesce_held();
		return;
	}
	for (u32 i = 0; i < in->nr; i++) {
		struct vfio_pci_lu_in_func *f = &in->funcs[i];
		const char *reason = NULL;
		struct pci_dev *pdev;

		pdev = vfio_pci_lu_pdev_of(f->rid);
		if (!pdev) {
			vfio_pci_lu_rid_err(f->rid, "not found");
			continue;
		}
		if (f->flags & VFIO_PCI_LU_FUNC_SRIOV_PF) {
			vfio_pci_lu_claim_pf(f, pdev);
			continue;
		}
		if (pdev->vendor != f->vendor || pdev->device != f->device ||
		    pdev->is_virtfn != !!(f->flags & VFIO_PCI_LU_FUNC_VF))
			reason = "another device at this address";
		else if (pdev->is_virtfn &&
			 !pci_iov_lu_adopted(pci_physfn(pdev)))
			reason = "its PF's SR-IOV state was not adopted";
		else if (!(f->flags & VFIO_PCI_LU_FUNC_FROZEN))
			reason = "never frozen";
		else if (!pdev->liveupdate_incoming)
			reason = "its BARs changed (sized at enumeration)";
		else if (!iommu_lu_device_held(&pdev->dev, NULL))
			reason = "its translation was not handed over";
		else if (device_set_driver_override(&pdev->dev, "vfio-pci"))
			reason = "cannot set driver_override";
		if (reason) {
			/*
			 * Not held: its DMA is blocked or the host's, not
			 * ours; but a VF of an adopted PF is nobody else's.
			 */
			if (iommu_lu_device_held(&pdev->dev, NULL) ||
			    (pdev->is_virtfn &&
			     pci_iov_lu_adopted(pci_physfn(pdev))))
				vfio_pci_lu_quiesce(pdev, reason);
			else
				pci_err(pdev, "live update: not adopted: %s\n",
					reason);
			pci_dev_put(pdev);
			continue;
		}
		scoped_guard(spinlock, &vfio_pci_lu_in_lock) {
			f->pdev = pdev;
			f->state = VFIO_PCI_LU_WAITING;
		}
		pci_info(pdev, "live update: handed over running (command %#06x), held for its VMM\n",
			 f->command);
	}
}

/*
 * Before PCI enumeration (subsys_initcall): register the handler and read
 * what the previous kernel handed over, so that enumeration takes the
 * BAR sizes of running functions from it.
 */
static int __init vfio_pci_lu_early_init(void)
{
	void *obj;
	int ret;

	ret = liveupdate_register_file_handler(&vfio_pci_lu_handler);
	if (ret) {
		if (ret != -EOPNOTSUPP)
			pr_warn("vfio-pci: live update handler not registered: %d\n",
				ret);
		return 0;
	}
	ret = liveupdate_register_flb(&vfio_pci_lu_handler, &vfio_pci_lu_flb);
	if (ret) {
		pr_warn("vfio-pci: live update object not registered: %d\n",
			ret);
		liveupdate_unregister_file_handler(&vfio_pci_lu_handler);
		return 0;
	}
	if (liveupdate_flb_get_incoming(&vfio_pci_lu_flb, &obj))
		return 0;
	vfio_pci_lu_early_in = obj;
	scoped_guard(spinlock, &vfio_pci_lu_in_lock)
		vfio_pci_lu_in = obj;
	/* LUO keeps the object until its last file finishes */
	liveupdate_flb_put_incoming(&vfio_pci_lu_flb);
	pci_lu_set_bars_fn(vfio_pci_lu_bars);
	pci_lu_set_sriov_fn(vfio_pci_lu_sriov);
	return 0;
}
arch_initcall(vfio_pci_lu_early_init);

/*
 * A PF whose VFs run on binds to pci-pf-stub: set before PF drivers
 * register (device_initcall), as its own driver would reset the PF.
 */
static int __init vfio_pci_lu_pf_override(void)
{
	struct vfio_pci_lu_in *in = vfio_pci_lu_early_in;
	struct pci_dev *pdev;

	for (u32 i = 0; in && i < in->nr; i++) {
		if (!(in->funcs[i].flags & VFIO_PCI_LU_FUNC_SRIOV_PF))
			continue;
		pdev = vfio_pci_lu_pdev_of(in->funcs[i].rid);
		if (pdev && pci_iov_lu_adopted(pdev) &&
		    device_set_driver_override(&pdev->dev,
					       VFIO_PCI_LU_PF_DRIVER))
			pci_err(pdev, "live update: cannot set driver_override " VFIO_PCI_LU_PF_DRIVER "\n");
		pci_dev_put(pdev);
	}
	return 0;
}
rootfs_initcall(vfio_pci_lu_pf_override);

/**
 * vfio_pci_lu_init - claim what a live update handed over, for vfio-pci
 * @driver: vfio-pci's driver, which adopted functions are bound to
 * @ops: its device ops (only plain vfio-pci devices are preserved)
 *
 * Called before @driver registers, so that the functions a live update
 * handed over running are claimed for it first.
 *
 * Return: 0.
 */
int __init vfio_pci_lu_init(struct pci_driver *driver,
			    const struct vfio_device_ops *ops)
{
	vfio_pci_lu_driver = driver;
	vfio_pci_lu_ops = ops;
	/* The IOMMU is up: VFs it holds must exist before they are claimed */
	pci_iov_lu_add_vfs();
	vfio_pci_lu_claim();
	return 0;
}
