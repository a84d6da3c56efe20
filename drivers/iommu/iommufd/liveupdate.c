// SPDX-License-Identifier: GPL-2.0-only
/*
 * iommufd live update: a LUO file handler that hands marked HWPTs, with
 * their IOAS mappings of guestmemfs memory and the IOMMU tables behind
 * them, to the next kernel, and gives them back to userspace validated.
 *
 * Outgoing (state machine of one preserved iommufd file):
 *  - preserve: every HWPT marked with IOMMU_HWPT_LIVEUPDATE_MARK_PRESERVE
 *    is pinned (IOMMU_DESTROY gets -EBUSY), its IOAS stays immutable (the
 *    mark), the guestmemfs holds of its areas are marked preserved, and
 *    the IOMMU driver preserves the domain's page-table pages (KHO).
 *  - freeze (reboot(KEXEC)): the devices attached to those HWPTs are
 *    frozen in the IOMMU driver (their context entries survive the
 *    shutdown), its handover is committed, and the HWPT/area blob
 *    (include/linux/kho/abi/iommufd.h) is written to KHO memory.
 *  - unfreeze / unpreserve undo each step (aborted kexec, closed session).
 *
 * Incoming:
 *  - retrieve (LIVEUPDATE_SESSION_RETRIEVE_FD): a new iommufd. For each
 *    HWPT: a new IOAS whose areas are guestmemfs holds taken by inode
 *    (nothing is written to any page table), the IOMMU driver's restored
 *    domain around the preserved tables, and a check that every leaf of
 *    that table is exactly what the areas' guestmemfs runs say (lu_rs.rs).
 *    Only then is the domain wrapped in a HWPT. Any mismatch refuses the
 *    whole file: the reason is logged, the preserved devices are blocked,
 *    RETRIEVE_FD fails.
 *  - IOMMU_HWPT_LIVEUPDATE_FIND_RESTORED names the HWPT and IOAS of a
 *    token; binding the preserved device's VFIO cdev and attaching it to
 *    that HWPT keeps its translation with no write to the IOMMU.
 *  - finish: devices nobody took are blocked; guestmemfs drops its boot
 *    holds.
 */

#define pr_fmt(fmt) "iommufd: " fmt

#include <linux/anon_inodes.h>
#include <linux/crc32c.h>
#include <linux/file.h>
#include <linux/guestmemfs.h>
#include <linux/iommu-lu.h>
#include <linux/kexec_handover.h>
#include <linux/kho/abi/iommufd.h>
#include <linux/liveupdate.h>
#include <linux/moduleparam.h>

#include "io_pagetable.h"
#include "iommufd_private.h"
#include "lu_rs.h"

/* Outgoing state of one preserved iommufd file (args->private_data) */
struct iommufd_lu_out {
	struct iommufd_ctx *ictx;
	unsigned int nr_hwpts;
	struct iommufd_hwpt_paging **hwpts;
	unsigned int nr_devs;		/* referenced */
	unsigned int nr_frozen;		/* the first ones, frozen */
	struct device **devs;
	void *blob;			/* kho_alloc_preserve() */
};

/* Only for the restore: reasons are logged, never handed to userspace */
#define IOMMUFD_LU_WHY	128

#if IS_ENABLED(CONFIG_IOMMUFD_TEST)
/*
 * Test only: damage the handover at the next freeze, so that the next
 * kernel's refusal paths can be tested (docs/testing.md): "version",
 * "crc", "offset" (the first area names the file 2 MiB further on, and
 * is 2 MiB shorter; checksum valid), "inode" (the first area names an
 * inode not in use).
 */
static char lu_test_damage[16];
module_param_string(lu_test_damage, lu_test_damage, sizeof(lu_test_damage),
		    0600);

static bool iommufd_lu_damage(const char *what)
{
	return sysfs_streq(lu_test_damage, what);
}
#else
static bool iommufd_lu_damage(const char *what)
{
	return false;
}
#endif

u32 iommufd_lu_crc32c(const u8 *data, size_t len)
{
	return crc32c(0, data, len);
}

/*
 * A LUO object that every preserved iommufd file uses: LUO finishes it
 * when the last of them is finished, and then guestmemfs stops keeping
 * the mapped files whole (guestmemfs_dma_handover_done()). It carries no
 * data: LUO counts the files.
 */
static int iommufd_lu_files_preserve(struct liveupdate_flb_op_args *args)
{
	args->data = 0;
	args->obj = &iommufd_lu_files_preserve;
	return 0;
}

static void iommufd_lu_files_unpreserve(struct liveupdate_flb_op_args *args)
{
}

static int iommufd_lu_files_retrieve(struct liveupdate_flb_op_args *args)
{
	args->obj = &iommufd_lu_files_retrieve;
	return 0;
}

static void iommufd_lu_files_finish(struct liveupdate_flb_op_args *args)
{
	guestmemfs_dma_handover_done();
}

static const struct liveupdate_flb_ops iommufd_lu_files_ops = {
	.preserve = iommufd_lu_files_preserve,
	.unpreserve = iommufd_lu_files_unpreserve,
	.retrieve = iommufd_lu_files_retrieve,
	.finish = iommufd_lu_files_finish,
	.owner = THIS_MODULE,
};

static struct liveupdate_flb iommufd_lu_files_flb = {
	.ops = &iommufd_lu_files_ops,
	.compatible = IOMMUFD_LU_FILES_FLB_COMPATIBLE,
};

/*
 * LUO drops a file's reference on the object after the file's finish,
 * and expects it retrieved by then: retrieve it (idempotent).
 */
static void iommufd_lu_file_done(void)
{
	void *obj;

	if (!liveupdate_flb_get_incoming(&iommufd_lu_files_flb, &obj))
		liveupdate_flb_put_incoming(&iommufd_lu_files_flb);
}

static const struct iommu_lu_ops *iommufd_lu_ops(void)
{
	struct liveupdate_flb *flb;

	return iommu_lu_get_ops(&flb);
}

static bool iommufd_lu_can_preserve(struct liveupdate_file_handler *handler,
				    struct file *file)
{
	return iommufd_file_is_ictx(file);
}

static int iommufd_lu_collect(struct iommufd_ctx *ictx,
			      struct iommufd_lu_out *out)
{
	struct iommufd_object *obj;
	unsigned long index;
	unsigned int n = 0;

	xa_lock(&ictx->objects);
	xa_for_each(&ictx->objects, index, obj)
		if (obj->type == IOMMUFD_OBJ_HWPT_PAGING &&
		    container_of(obj, struct iommufd_hwpt_paging, common.obj)
			    ->lu_token)
			n++;
	xa_unlock(&ictx->objects);
	if (!n)
		return -ENOENT;

	out->hwpts = kcalloc(n, sizeof(*out->hwpts), GFP_KERNEL);
	if (!out->hwpts)
		return -ENOMEM;
	xa_lock(&ictx->objects);
	xa_for_each(&ictx->objects, index, obj) {
		struct iommufd_hwpt_paging *hwpt_paging;

		if (obj->type != IOMMUFD_OBJ_HWPT_PAGING)
			continue;
		hwpt_paging = container_of(obj, struct iommufd_hwpt_paging,
					   common.obj);
		if (!hwpt_paging->lu_token || out->nr_hwpts == n)
			continue;
		/* Pins it: IOMMU_DESTROY gets -EBUSY until unpreserve */
		if (!refcount_inc_not_zero(&obj->users))
			continue;
		out->hwpts[out->nr_hwpts++] = hwpt_paging;
	}
	xa_unlock(&ictx->objects);
	return out->nr_hwpts ? 0 : -ENOENT;
}

static int iommufd_lu_set_preserved(struct iommufd_hwpt_paging *hwpt_paging,
				    bool preserved)
{
	struct io_pagetable *iopt = &hwpt_paging->ioas->iopt;
	struct iopt_area *area;
	int rc = 0;

	down_read(&iopt->iova_rwsem);
	for (area = iopt_area_iter_first(iopt, 0, ULONG_MAX); area;
	     area = iopt_area_iter_next(area, 0, ULONG_MAX)) {
		if (!area->pages || !iopt_is_gmfs(area->pages))
			continue;
		rc = guestmemfs_dma_set_preserved(area->pages->gmfs.hold,
						  preserved);
		/* Unmarking cannot fail but when frozen, and then it need not */
		if (rc && preserved)
			break;
	}
	up_read(&iopt->iova_rwsem);
	if (rc && preserved)
		iommufd_lu_set_preserved(hwpt_paging, false);
	return preserved ? rc : 0;
}

static void iommufd_lu_release_out(struct iommufd_lu_out *out,
				   unsigned int nr_preserved)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	unsigned int i;

	for (i = 0; i < out->nr_hwpts; i++) {
		struct iommufd_hwpt_paging *hwpt_paging = out->hwpts[i];

		if (i < nr_preserved) {
			iommufd_lu_set_preserved(hwpt_paging, false);
			ops->unpreserve_domain(hwpt_paging->common.domain);
		}
		refcount_dec(&hwpt_paging->common.obj.users);
	}
	kfree(out->hwpts);
	kfree(out);
}

static int iommufd_lu_preserve(struct liveupdate_file_op_args *args)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	struct iommufd_ctx *ictx = args->file->private_data;
	struct iommufd_lu_out *out;
	unsigned int i;
	int rc;

	if (!ops)
		return -EOPNOTSUPP;
	out = kzalloc_obj(*out);
	if (!out)
		return -ENOMEM;
	out->ictx = ictx;
	rc = iommufd_lu_collect(ictx, out);
	if (rc) {
		iommufd_lu_release_out(out, 0);
		return rc;
	}
	for (i = 0; i < out->nr_hwpts; i++) {
		struct iommufd_hwpt_paging *hwpt_paging = out->hwpts[i];

		if (hwpt_paging->nest_parent || hwpt_paging->common.fault ||
		    hwpt_paging->common.domain->dirty_ops) {
			rc = -EOPNOTSUPP;
			break;
		}
		rc = ops->preserve_domain(hwpt_paging->common.domain,
					  hwpt_paging->lu_token);
		if (rc)
			break;
		rc = iommufd_lu_set_preserved(hwpt_paging, true);
		if (rc) {
			ops->unpreserve_domain(hwpt_paging->common.domain);
			break;
		}
	}
	if (rc) {
		iommufd_lu_release_out(out, i);
		return rc;
	}
	args->private_data = out;
	return 0;
}

static void iommufd_lu_unpreserve(struct liveupdate_file_op_args *args)
{
	struct iommufd_lu_out *out = args->private_data;

	iommufd_lu_release_out(out, out->nr_hwpts);
}

static int iommufd_lu_add_dev(struct device *dev, void *arg)
{
	struct iommufd_lu_out *out = arg;
	struct device **devs;

	devs = krealloc_array(out->devs, out->nr_devs + 1, sizeof(*devs),
			      GFP_KERNEL);
	if (!devs)
		return -ENOMEM;
	out->devs = devs;
	out->devs[out->nr_devs++] = get_device(dev);
	return 0;
}

static void iommufd_lu_unfreeze_devs(struct iommufd_lu_out *out)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();

	unsigned int i;

	for (i = 0; i < out->nr_devs; i++) {
		if (i < out->nr_frozen)
			ops->unfreeze_device(out->devs[i]);
		put_device(out->devs[i]);
	}
	kfree(out->devs);
	out->devs = NULL;
	out->nr_devs = 0;
	out->nr_frozen = 0;
}

/* Fills the area records of one HWPT's IOAS; returns how many, or -errno */
static int iommufd_lu_areas(struct iommufd_hwpt_paging *hwpt_paging,
			    struct iommufd_lu_area_rec *recs, unsigned int max)
{
	struct io_pagetable *iopt = &hwpt_paging->ioas->iopt;
	struct iopt_area *area;
	unsigned int n = 0;
	int rc = 0;

	down_read(&iopt->iova_rwsem);
	for (area = iopt_area_iter_first(iopt, 0, ULONG_MAX); area;
	     area = iopt_area_iter_next(area, 0, ULONG_MAX)) {
		struct guestmemfs_dma_id id;

		if (!area->pages || !iopt_is_gmfs(area->pages)) {
			rc = -EINVAL;
			break;
		}
		if (recs) {
			if (n == max) {
				rc = -EAGAIN;
				break;
			}
			guestmemfs_dma_describe(area->pages->gmfs.hold, &id);
			recs[n] = (struct iommufd_lu_area_rec) {
				.iova = iopt_area_iova(area),
				.length = iopt_area_length(area),
				.ino = id.ino,
				.igen = id.igen,
				.offset = id.start +
					  iopt_area_index(area) * PAGE_SIZE +
					  area->page_offset,
				.prot = area->iommu_prot &
					(IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE),
			};
		}
		n++;
	}
	up_read(&iopt->iova_rwsem);
	return rc ? rc : n;
}

static int iommufd_lu_encode(struct iommufd_lu_out *out)
{
	struct iommufd_lu_hwpt_rec *hwpts;
	struct iommufd_lu_area_rec *areas;
	unsigned int i, nr_areas = 0;
	size_t len;
	void *blob;
	int rc;

	for (i = 0; i < out->nr_hwpts; i++) {
		rc = iommufd_lu_areas(out->hwpts[i], NULL, 0);
		if (rc < 0)
			return rc;
		nr_areas += rc;
	}
	if (out->nr_hwpts > IOMMUFD_LU_MAX_HWPTS ||
	    nr_areas > IOMMUFD_LU_MAX_AREAS)
		return -E2BIG;
	len = sizeof(struct iommufd_lu_header) +
	      out->nr_hwpts * sizeof(struct iommufd_lu_hwpt) +
	      nr_areas * sizeof(struct iommufd_lu_area) + sizeof(__le32);

	hwpts = kvcalloc(out->nr_hwpts, sizeof(*hwpts), GFP_KERNEL);
	areas = kvcalloc(nr_areas, sizeof(*areas), GFP_KERNEL);
	rc = -ENOMEM;
	if (!hwpts || !areas)
		goto out_free;
	nr_areas = 0;
	for (i = 0; i < out->nr_hwpts; i++) {
		struct iommufd_hwpt_paging *hwpt_paging = out->hwpts[i];
		int n = iommufd_lu_areas(hwpt_paging, &areas[nr_areas],
					 IOMMUFD_LU_MAX_AREAS - nr_areas);

		if (n < 0) {
			rc = n;
			goto out_free;
		}
		hwpts[i] = (struct iommufd_lu_hwpt_rec) {
			.token = hwpt_paging->lu_token,
			.domain = i,
			.flags = hwpt_paging->enforce_cache_coherency ?
				 IOMMUFD_LU_HWPT_ENFORCE_CC : 0,
			.first_area = nr_areas,
			.nr_areas = n,
		};
		nr_areas += n;
	}
	blob = kho_alloc_preserve(len);
	if (IS_ERR(blob)) {
		rc = PTR_ERR(blob);
		goto out_free;
	}
	if (nr_areas && iommufd_lu_damage("offset") &&
	    areas[0].length > SZ_2M) {
		areas[0].offset += SZ_2M;
		areas[0].length -= SZ_2M;
	}
	if (nr_areas && iommufd_lu_damage("inode"))
		areas[0].ino = U32_MAX;
	rc = iommufd_lu_rs_encode(blob, len, hwpts, out->nr_hwpts, areas,
				  nr_areas);
	if (rc) {
		kho_unpreserve_free(blob);
		goto out_free;
	}
	if (iommufd_lu_damage("version"))
		((struct iommufd_lu_header *)blob)->version = cpu_to_le32(99);
	if (iommufd_lu_damage("crc"))
		((u8 *)blob)[len - 5] ^= 0x40;
	out->blob = blob;
out_free:
	kvfree(hwpts);
	kvfree(areas);
	return rc;
}

static int iommufd_lu_freeze(struct liveupdate_file_op_args *args)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	struct iommufd_lu_out *out = args->private_data;
	unsigned int i;
	int rc = 0;

	for (i = 0; i < out->nr_hwpts && !rc; i++) {
		struct iommufd_hwpt_paging *hwpt_paging = out->hwpts[i];

		unsigned int first = out->nr_devs;

		rc = iommufd_hwpt_walk_devices(out->ictx,
						  &hwpt_paging->common,
						  iommufd_lu_add_dev, out);
		/* Nothing would keep its translation: refuse now, not after */
		if (!rc && out->nr_devs == first) {
			pr_err("live update: HWPT token %#llx has no device attached\n",
			       hwpt_paging->lu_token);
			rc = -ENODEV;
		}
		while (!rc && out->nr_frozen < out->nr_devs) {
			struct device *dev = out->devs[out->nr_frozen];

			rc = ops->freeze_device(dev,
						hwpt_paging->common.domain);
			if (rc)
				dev_err(dev,
					"live update: cannot keep its translation (HWPT token %#llx): %d\n",
					hwpt_paging->lu_token, rc);
			else
				out->nr_frozen++;
		}
	}
	if (!rc)
		rc = iommufd_lu_encode(out);
	if (!rc)
		rc = ops->commit();
	if (rc) {
		if (out->blob)
			kho_unpreserve_free(out->blob);
		out->blob = NULL;
		iommufd_lu_unfreeze_devs(out);
		return rc;
	}
	args->serialized_data = virt_to_phys(out->blob);
	return 0;
}

static void iommufd_lu_unfreeze(struct liveupdate_file_op_args *args)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	struct iommufd_lu_out *out = args->private_data;

	if (out->blob)
		kho_unpreserve_free(out->blob);
	out->blob = NULL;
	iommufd_lu_unfreeze_devs(out);
	ops->commit();
	args->serialized_data = 0;
}

/* ---- incoming ---- */

struct iommufd_lu_pieces {
	struct iommufd_lu_piece *p;
	size_t nr, max;
};

static int iommufd_lu_add_piece(struct iommufd_lu_pieces *ps, u64 iova,
				u64 phys, u64 len, u32 prot)
{
	struct iommufd_lu_piece *last = ps->nr ? &ps->p[ps->nr - 1] : NULL;

	prot &= IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE;
	/* Contiguous in IOVA and memory: one piece (4 KiB leaves add up) */
	if (last && last->iova + last->len == iova &&
	    last->phys + last->len == phys && last->prot == prot &&
	    last->len + len > last->len) {
		last->len += len;
		return 0;
	}
	if (ps->nr == ps->max) {
		size_t max = max_t(size_t, 64, ps->max * 2);
		struct iommufd_lu_piece *p;

		p = kvrealloc(ps->p, array_size(max, sizeof(*p)), GFP_KERNEL);
		if (!p)
			return -ENOMEM;
		ps->p = p;
		ps->max = max;
	}
	/* The check compares access; snooping only of a coherent HWPT */
	ps->p[ps->nr++] = (struct iommufd_lu_piece) {
		.iova = iova, .phys = phys, .len = len, .prot = prot,
	};
	return 0;
}

static int iommufd_lu_leaf(void *arg, u64 iova, u64 phys, u64 len, u32 prot)
{
	return iommufd_lu_add_piece(arg, iova, phys, len, prot);
}

/* Maps the areas of one HWPT record into @ioas by guestmemfs inode */
static int iommufd_lu_map_areas(struct iommufd_ctx *ictx,
				struct iommufd_ioas *ioas,
				const struct iommufd_lu_area_rec *areas,
				unsigned int nr, struct iommufd_lu_pieces *want,
				char *why)
{
	unsigned int i;
	int rc;

	for (i = 0; i < nr; i++) {
		const struct iommufd_lu_area_rec *a = &areas[i];
		struct guestmemfs_dma_id id = {
			.ino = a->ino, .igen = a->igen,
			.start = a->offset, .len = a->length,
		};
		struct guestmemfs_dma_hold *hold;
		const struct phys_vec *runs;
		unsigned int nr_runs, r;
		u64 iova = a->iova;

		hold = guestmemfs_dma_hold_id(&id);
		if (IS_ERR(hold)) {
			snprintf(why, IOMMUFD_LU_WHY,
				 "guestmemfs inode %llu range %#llx+%#llx: error %ld",
				 a->ino, a->offset, a->length, PTR_ERR(hold));
			return PTR_ERR(hold);
		}
		runs = guestmemfs_dma_runs(hold, &nr_runs);
		for (r = 0; r < nr_runs; r++) {
			rc = iommufd_lu_add_piece(want, iova, runs[r].paddr,
						  runs[r].len, a->prot);
			if (rc) {
				guestmemfs_dma_release(hold);
				strscpy(why, "out of memory", IOMMUFD_LU_WHY);
				return rc;
			}
			iova += runs[r].len;
		}
		/* Consumes the hold; nothing is written to a page table */
		rc = iopt_map_gmfs_hold(ictx, &ioas->iopt, hold, a->iova,
					a->length, a->prot);
		if (rc) {
			snprintf(why, IOMMUFD_LU_WHY,
				 "IOVA %#llx+%#llx cannot be mapped: error %d",
				 a->iova, a->length, rc);
			return rc;
		}
	}
	return 0;
}

static int iommufd_lu_restore_hwpt(struct iommufd_ctx *ictx,
				   const struct iommufd_lu_hwpt_rec *h,
				   const struct iommufd_lu_area_rec *areas,
				   char *why)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	struct iommufd_lu_pieces want = {}, have = {};
	struct iommufd_hwpt_paging *hwpt_paging;
	struct iommu_domain *domain;
	struct iommufd_ioas *ioas;
	const char *reason;
	int rc;

	ioas = iommufd_ioas_alloc(ictx);
	if (IS_ERR(ioas)) {
		strscpy(why, "out of memory", IOMMUFD_LU_WHY);
		return PTR_ERR(ioas);
	}
	rc = iommufd_lu_map_areas(ictx, ioas, &areas[h->first_area],
				  h->nr_areas, &want, why);
	if (rc)
		goto out_ioas;

	domain = ops->restore_domain(h->token, ictx, &reason);
	if (IS_ERR(domain)) {
		rc = PTR_ERR(domain);
		strscpy(why, reason, IOMMUFD_LU_WHY);
		goto out_ioas;
	}
	rc = ops->domain_leaves(domain, iommufd_lu_leaf, &have);
	if (!rc)
		rc = iommufd_lu_rs_check(want.p, want.nr, have.p, have.nr,
					 h->flags, why, IOMMUFD_LU_WHY);
	else
		strscpy(why, "out of memory", IOMMUFD_LU_WHY);
	if (rc)
		goto out_domain;

	mutex_lock(&ioas->mutex);
	hwpt_paging = iommufd_hwpt_paging_adopt(ictx, ioas, domain,
						h->flags &
						IOMMUFD_LU_HWPT_ENFORCE_CC);
	if (IS_ERR(hwpt_paging)) {
		mutex_unlock(&ioas->mutex);
		rc = PTR_ERR(hwpt_paging);
		snprintf(why, IOMMUFD_LU_WHY, "cannot adopt the domain: %d", rc);
		goto out_domain;
	}
	hwpt_paging->lu_restored_token = h->token;
	iommufd_object_finalize(ictx, &ioas->obj);
	iommufd_object_finalize(ictx, &hwpt_paging->common.obj);
	mutex_unlock(&ioas->mutex);
	kvfree(want.p);
	kvfree(have.p);
	return 0;

out_domain:
	/* Its devices may still walk its tables: block them, then free */
	ops->drop_domain(h->token);
	iommu_domain_free(domain);
out_ioas:
	iommufd_object_abort_and_destroy(ictx, &ioas->obj);
	kvfree(want.p);
	kvfree(have.p);
	return rc;
}

static int iommufd_lu_retrieve(struct liveupdate_file_op_args *args)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	struct iommufd_lu_hwpt_rec *hwpts = NULL;
	struct iommufd_lu_area_rec *areas = NULL;
	char why[IOMMUFD_LU_WHY] = "";
	u32 nr_hwpts, nr_areas, i;
	struct folio *folio;
	struct file *file;
	u64 token = 0;
	int rc;

	if (!ops) {
		pr_err("live update refused: no IOMMU driver can restore\n");
		return -EOPNOTSUPP;
	}
	folio = kho_restore_folio(args->serialized_data);
	if (!folio) {
		pr_err("live update handover refused: not preserved\n");
		ops->drop_domain(0);
		return -EINVAL;
	}
	rc = iommufd_lu_rs_decode(folio_address(folio), folio_size(folio),
				  &nr_hwpts, &nr_areas, NULL, NULL, why,
				  sizeof(why));
	if (!rc) {
		hwpts = kvcalloc(nr_hwpts, sizeof(*hwpts), GFP_KERNEL);
		areas = kvcalloc(nr_areas, sizeof(*areas), GFP_KERNEL);
		if (!hwpts || !areas) {
			strscpy(why, "out of memory", sizeof(why));
			rc = -ENOMEM;
		}
	}
	if (!rc)
		rc = iommufd_lu_rs_decode(folio_address(folio),
					  folio_size(folio), &nr_hwpts,
					  &nr_areas, hwpts, areas, why,
					  sizeof(why));
	folio_put(folio);
	if (rc)
		goto out_refuse;
	pr_info("live update: handover of %zu bytes: %u HWPT(s), %u area(s)\n",
		sizeof(struct iommufd_lu_header) +
		nr_hwpts * sizeof(struct iommufd_lu_hwpt) +
		nr_areas * sizeof(struct iommufd_lu_area) + sizeof(__le32),
		nr_hwpts, nr_areas);

	file = iommufd_file_create();
	if (IS_ERR(file)) {
		rc = PTR_ERR(file);
		strscpy(why, "cannot create an iommufd", sizeof(why));
		goto out_refuse;
	}
	for (i = 0; i < nr_hwpts; i++) {
		token = hwpts[i].token;
		rc = iommufd_lu_restore_hwpt(file->private_data, &hwpts[i],
					     areas, why);
		if (rc)
			break;
	}
	if (rc) {
		/*
		 * HWPTs restored before the failure are freed with the file:
		 * block their devices first (out_refuse blocks the rest).
		 */
		while (i--)
			ops->drop_domain(hwpts[i].token);
		fput(file);
		goto out_refuse;
	}
	for (i = 0; i < nr_hwpts; i++)
		pr_info("live update: HWPT token %#llx restored\n",
			hwpts[i].token);
	kvfree(hwpts);
	kvfree(areas);
	args->file = file;
	return 0;

out_refuse:
	if (token)
		pr_err("live update token %#llx refused: %s\n", token, why);
	else
		pr_err("live update handover refused: %s\n", why);
	/*
	 * Nothing of this file is handed back: block all its devices; if
	 * its tokens cannot be read, every translation not yet restored.
	 */
	for (i = 0; hwpts && i < nr_hwpts; i++)
		ops->drop_domain(hwpts[i].token);
	if (!hwpts)
		ops->drop_domain(0);
	kvfree(hwpts);
	kvfree(areas);
	return rc;
}

static bool iommufd_lu_can_finish(struct liveupdate_file_op_args *args)
{
	return true;
}

/* A restored HWPT is destroyed: its devices still held are blocked */
void iommufd_lu_drop(u64 token)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();

	if (ops)
		ops->drop_domain(token);
}

/* Blocks the devices of this file's tokens that nobody attached */
static void iommufd_lu_drop_restored(struct iommufd_ctx *ictx)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	struct iommufd_object *obj;
	unsigned long index;

	xa_for_each(&ictx->objects, index, obj) {
		u64 token;

		if (READ_ONCE(obj->type) != IOMMUFD_OBJ_HWPT_PAGING)
			continue;
		obj = iommufd_get_object(ictx, index, IOMMUFD_OBJ_HWPT_PAGING);
		if (IS_ERR(obj))
			continue;
		token = container_of(obj, struct iommufd_hwpt_paging,
				     common.obj)->lu_restored_token;
		iommufd_put_object(ictx, obj);
		if (token)
			ops->drop_domain(token);
	}
}

/* Never retrieved: read the tokens to block their devices */
static void iommufd_lu_drop_unretrieved(u64 serialized)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();
	struct iommufd_lu_hwpt_rec *hwpts = NULL;
	u32 nr_hwpts, nr_areas, i;
	char why[IOMMUFD_LU_WHY];
	struct folio *folio;
	int rc;

	folio = kho_restore_folio(serialized);
	if (!folio) {
		ops->drop_domain(0);
		return;
	}
	rc = iommufd_lu_rs_decode(folio_address(folio), folio_size(folio),
				  &nr_hwpts, &nr_areas, NULL, NULL, why,
				  sizeof(why));
	if (!rc) {
		struct iommufd_lu_area_rec *areas;

		hwpts = kvcalloc(nr_hwpts, sizeof(*hwpts), GFP_KERNEL);
		areas = kvcalloc(nr_areas, sizeof(*areas), GFP_KERNEL);
		rc = hwpts && areas ?
		     iommufd_lu_rs_decode(folio_address(folio),
					  folio_size(folio), &nr_hwpts,
					  &nr_areas, hwpts, areas, why,
					  sizeof(why)) : -ENOMEM;
		kvfree(areas);
	}
	folio_put(folio);
	for (i = 0; !rc && i < nr_hwpts; i++)
		ops->drop_domain(hwpts[i].token);
	if (rc)
		ops->drop_domain(0);
	kvfree(hwpts);
}

static void iommufd_lu_finish(struct liveupdate_file_op_args *args)
{
	const struct iommu_lu_ops *ops = iommufd_lu_ops();

	/* A failed retrieve blocked its devices already */
	if (ops && args->retrieve_status > 0 && args->file)
		iommufd_lu_drop_restored(args->file->private_data);
	else if (ops && !args->retrieve_status)
		iommufd_lu_drop_unretrieved(args->serialized_data);
	iommufd_lu_file_done();
}

static const struct liveupdate_file_ops iommufd_lu_file_ops = {
	.can_preserve = iommufd_lu_can_preserve,
	.preserve = iommufd_lu_preserve,
	.unpreserve = iommufd_lu_unpreserve,
	.freeze = iommufd_lu_freeze,
	.unfreeze = iommufd_lu_unfreeze,
	.retrieve = iommufd_lu_retrieve,
	.can_finish = iommufd_lu_can_finish,
	.finish = iommufd_lu_finish,
	.owner = THIS_MODULE,
};

static struct liveupdate_file_handler iommufd_lu_handler = {
	.ops = &iommufd_lu_file_ops,
	.compatible = IOMMUFD_LU_FH_COMPATIBLE,
};

int iommufd_lu_init(void)
{
	struct liveupdate_flb *flb;
	int rc;

	if (!iommu_lu_get_ops(&flb))
		return 0;
	rc = liveupdate_register_file_handler(&iommufd_lu_handler);
	if (rc)
		return rc == -EOPNOTSUPP ? 0 : rc;
	/*
	 * LUO finishes a handler's FLBs in reverse order: the driver's (which
	 * blocks every device still held) before the files' (which lets
	 * guestmemfs free what no hold keeps).
	 */
	rc = liveupdate_register_flb(&iommufd_lu_handler,
				     &iommufd_lu_files_flb);
	if (!rc)
		rc = liveupdate_register_flb(&iommufd_lu_handler, flb);
	if (rc)
		liveupdate_unregister_file_handler(&iommufd_lu_handler);
	return rc;
}
