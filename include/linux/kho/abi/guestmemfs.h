/* SPDX-License-Identifier: GPL-2.0-only */
#ifndef _LINUX_KHO_ABI_GUESTMEMFS_H
#define _LINUX_KHO_ABI_GUESTMEMFS_H

/**
 * DOC: guestmemfs kexec handover ABI
 *
 * guestmemfs memory has no struct pages, so KHO cannot preserve it. The
 * filesystem metadata lives inside the region itself; the only thing
 * handed over through KHO is a 64-byte locator blob, in the top-level
 * KHO subtree named "guestmemfs", that says where the region is:
 *
 *   offset  field       type  value
 *   0       magic       u64   "GMFSLOC1" (little endian bytes)
 *   8       version     u32   1
 *   12      length      u32   64
 *   16      base        u64   physical base address of the region
 *   24      size        u64   size in bytes
 *   32      generation  u64   superblock generation at publication
 *   40      flags       u32   GUESTMEMFS_LOCATOR_* bits, unknown ones refused
 *   44      reserved    16 bytes of zero
 *   60      crc32c      u32   over bytes 0..59
 *
 * All integers are little endian. A change of layout or meaning requires
 * a new version; a kernel refuses any version it does not know. A
 * locator is refused as a whole (no memory is taken on its word) unless
 * the subtree is exactly 64 bytes, magic, version, length and checksum
 * match, no unknown flag is set, the reserved bytes are zero and the
 * region is aligned;
 * the superblock in the region must then carry the same generation, or
 * the filesystem is refused (region kept, mount fails until reformat).
 * The outgoing kernel rewrites the generation when it freezes the
 * metadata at kexec. The
 * encoder and validator are fs/guestmemfs/format/src/shared/locator.rs.
 */

#define GUESTMEMFS_KHO_NODE	"guestmemfs"
#define GUESTMEMFS_LOCATOR_SIZE	64

/*
 * A memory error hit the metadata blocks: the next kernel keeps the region
 * reserved but neither reads nor adopts the filesystem (reading could
 * consume the error again, in the kernel). A kernel that does not know
 * this flag refuses the whole locator and takes no region.
 */
#define GUESTMEMFS_LOCATOR_META_POISONED	(1U << 0)

/*
 * IOMMU mappings of the region may have been handed over (files flagged
 * DMA_HELD in the metadata, or an earlier handover not resolved yet): the
 * next kernel refuses a reformat until the IOMMU side resolves the
 * handover (guestmemfs_dma_handover_done()), even when it refuses the
 * filesystem itself. A kernel that does not know this flag refuses the
 * whole locator and takes no region.
 */
#define GUESTMEMFS_LOCATOR_DMA_HELD		(1U << 1)

#endif /* _LINUX_KHO_ABI_GUESTMEMFS_H */
