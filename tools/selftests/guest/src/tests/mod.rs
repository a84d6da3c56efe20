// SPDX-License-Identifier: GPL-2.0-only
//! The catalogue of in-guest tests.
//!
//! A test is a function run inside PID 1. It returns [`Outcome::Kexec`]
//! to have the harness kexec into the same kernel and call it again with
//! the next stage number; file descriptors it pushed to [`Ctx::keep`]
//! stay open over that kexec (which is how LUO sessions are preserved).

use std::os::fd::OwnedFd;

pub mod bench;
mod demo;
mod gmfs;
mod gmfs_hardening;
mod gmfs_memory_errors;
mod harness;
mod igb;
mod igb_kexec;
mod kselftest;
pub mod lu_bench;
mod luo;
pub mod region;
mod smoke;
mod vfio_lu;
mod vfio_lu_sriov;

/// State a test gets from the runner.
pub struct Ctx {
    /// Stage of the test this boot runs, from 1.
    pub stage: u32,
    /// Fds that must stay open until the kexec (LUO sessions).
    pub keep: Vec<OwnedFd>,
    /// Set by a stage for the next one: what it expects to find there.
    pub note_out: Option<String>,
    /// The previous stage's `note_out`.
    pub note_in: Option<String>,
    /// Set by a stage: kernel parameters for the next boot only.
    pub once_out: Vec<String>,
}

/// How a test (stage) ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Skip(String),
    /// This stage passed; kexec and run stage `ctx.stage + 1`.
    Kexec,
}

/// A test failure, with the reason shown in KTAP.
pub type TestResult = Result<Outcome, String>;

pub struct Test {
    pub name: &'static str,
    pub summary: &'static str,
    /// Host-side limit for the whole test, kexec boots included.
    pub timeout_s: u64,
    pub run: fn(&mut Ctx) -> TestResult,
}

pub const CATALOG: &[Test] = &[
    Test {
        name: "demo_info",
        summary: "print what the guest sees: kernel, IOMMU, devices, guestmemfs, LUO",
        timeout_s: 30,
        run: demo::info,
    },
    Test {
        name: "iommu_present",
        summary: "dmar0 in /sys/class/iommu and the igb NIC in an IOMMU group",
        timeout_s: 30,
        run: smoke::iommu_present,
    },
    Test {
        name: "guestmemfs_registered",
        summary: "the Rust guestmemfs module is built in and registered",
        timeout_s: 30,
        run: smoke::guestmemfs_registered,
    },
    Test {
        name: "luo_memfd_kexec",
        summary: "a memfd preserved in a LUO session survives kexec byte for byte",
        timeout_s: 180,
        run: luo::memfd_kexec,
    },
    Test {
        name: "kselftest_kho",
        summary: "the 7.3 kho selftest's check (lib/test_kho.c built in): data saved at boot, kexec, \"KHO restore succeeded\"",
        timeout_s: 180,
        run: luo::kho_selftest,
    },
    Test {
        name: "kselftest_iommufd",
        summary: "tools/testing/selftests/iommu/iommufd from the 7.3 tree",
        timeout_s: 600,
        run: kselftest::iommufd,
    },
    Test {
        name: "kselftest_liveupdate",
        summary: "tools/testing/selftests/liveupdate/liveupdate from the 7.3 tree (LUO uapi, with our iommufd handler registered)",
        timeout_s: 300,
        run: kselftest::liveupdate,
    },
    Test {
        name: "kselftest_iommufd_fail_nth",
        summary: "tools/testing/selftests/iommu/iommufd_fail_nth from the 7.3 tree",
        timeout_s: 1800,
        run: kselftest::iommufd_fail_nth,
    },
    Test {
        name: "kselftest_iommufd_fail_nth_guestmemfs",
        summary: "iommufd_fail_nth -t map_guestmemfs: every allocation of map/alloc/replace/mark fails cleanly, no hold or block leaked",
        timeout_s: 300,
        run: kselftest::iommufd_fail_nth_guestmemfs,
    },
    Test {
        name: "kselftest_iommufd_guestmemfs",
        summary: "IOMMU_IOAS_MAP_FILE of guestmemfs files on the mock domain: translation, bad ranges, EBUSY shrink, unlink keeps memory",
        timeout_s: 120,
        run: kselftest::iommufd_guestmemfs,
    },
    Test {
        name: "guestmemfs_region_reserved",
        summary: "guestmemfs=<size> reserves an aligned region, not System RAM",
        timeout_s: 30,
        run: region::region_reserved,
    },
    Test {
        name: "guestmemfs_region_not_in_direct_map",
        summary: "the region is absent from the kernel direct map (control: RAM is present)",
        timeout_s: 60,
        run: region::region_not_in_direct_map,
    },
    Test {
        name: "guestmemfs_region_kexec",
        summary: "the region is kept at the same address over 2 kexecs (KHO locator)",
        timeout_s: 300,
        run: region::region_survives_kexec,
    },
    Test {
        name: "guestmemfs_operations",
        summary: "VFS operations, attributes, errors, truncate, fallocate, ENOSPC, statfs",
        timeout_s: 120,
        run: gmfs::operations,
    },
    Test {
        name: "guestmemfs_huge_mappings",
        summary: "1 GiB touched with <= 1 fault (PUD), <= 512 (PMD), vs shmem; SIGBUS past EOF",
        timeout_s: 300,
        run: gmfs::huge_mappings,
    },
    Test {
        name: "guestmemfs_qemu_backing",
        summary: "guest RAM mapped the way QEMU's memory-backend-file maps it",
        timeout_s: 120,
        run: gmfs::qemu_backing,
    },
    Test {
        name: "guestmemfs_permissions",
        summary: "VFS permission checks for a non-root user",
        timeout_s: 60,
        run: gmfs::permissions,
    },
    Test {
        name: "guestmemfs_many_files",
        summary: "1,000 files survive a kexec; reports the handover size",
        timeout_s: 300,
        run: gmfs::many_files,
    },
    Test {
        name: "guestmemfs_frozen",
        summary: "after the kexec-time freeze: EBUSY for changes, mapped data usable",
        timeout_s: 60,
        run: gmfs::frozen,
    },
    Test {
        name: "guestmemfs_persistence",
        summary: "a tree of files with patterns and attributes survives 3 kexecs",
        timeout_s: 400,
        run: gmfs::persistence,
    },
    Test {
        name: "guestmemfs_corrupt_magic",
        summary: "bad superblock magic in the handover: refused, logged, data untouched",
        timeout_s: 200,
        run: gmfs::corrupt_magic,
    },
    Test {
        name: "guestmemfs_corrupt_cycle",
        summary: "an extent list cycle in the handover: refused, logged, data untouched",
        timeout_s: 200,
        run: gmfs::corrupt_cycle,
    },
    Test {
        name: "guestmemfs_corrupt_overlap",
        summary: "overlapping extents in the handover: refused, logged, data untouched",
        timeout_s: 200,
        run: gmfs::corrupt_overlap,
    },
    Test {
        name: "guestmemfs_corrupt_locator",
        summary: "damaged KHO locator checksum: nothing reserved, mount ENODEV",
        timeout_s: 200,
        run: gmfs::corrupt_locator,
    },
    Test {
        name: "guestmemfs_locator_generation",
        summary: "locator generation != superblock's: region kept, mount EUCLEAN, reformat works",
        timeout_s: 200,
        run: gmfs_hardening::locator_generation,
    },
    // Zeroing and touching GiBs under TCG: a 2 GiB stamp pass, 5 checked
    // placements and 3 mremap checks of about 1 GiB each (two with 4 KiB
    // faults only).
    Test {
        name: "guestmemfs_map_any_offset",
        summary: "every page right through mappings at any file offset/alignment and mremap",
        timeout_s: 900,
        run: gmfs_hardening::map_any_offset,
    },
    Test {
        name: "guestmemfs_fault_order",
        summary:
            "random first touch: <= 1 fault per GiB (1 GiB-aligned), per 2 MiB (2 MiB-aligned)",
        timeout_s: 600,
        run: gmfs_hardening::fault_order,
    },
    Test {
        name: "guestmemfs_size_tail",
        summary: "any size: EOF page readable, zeros past EOF, SIGBUS beyond, zeros after regrow",
        timeout_s: 180,
        run: gmfs_hardening::size_tail,
    },
    Test {
        name: "guestmemfs_zeroing_unlocked",
        summary: "stat() keeps completing while a fault zeroes a fresh 1 GiB unit",
        timeout_s: 120,
        run: gmfs_hardening::zeroing_unlocked,
    },
    Test {
        name: "guestmemfs_full_fault_sigbus",
        summary: "a fault needing a block on a full filesystem gets SIGBUS, not endless refaults",
        timeout_s: 300,
        run: gmfs_hardening::full_fault_sigbus,
    },
    Test {
        name: "guestmemfs_attr_race",
        summary: "chmod/chown racing stat: every change sticks, also after inode cache drops",
        timeout_s: 180,
        run: gmfs_hardening::attr_race,
    },
    Test {
        name: "guestmemfs_truncate_fault_race",
        summary: "ftruncate racing faults: exit or SIGBUS only, no kernel warnings, no leaks",
        timeout_s: 180,
        run: gmfs_hardening::truncate_fault_race,
    },
    Test {
        name: "guestmemfs_rename_race",
        summary: "rename racing lookup/readdir: ENOENT only, one name, same inode and data",
        timeout_s: 180,
        run: gmfs_hardening::rename_race,
    },
    Test {
        name: "guestmemfs_gup_efault",
        summary:
            "process_vm_readv/writev of guestmemfs: EFAULT remote, works local; pipe I/O works",
        timeout_s: 60,
        run: gmfs_hardening::gup_efault,
    },
    Test {
        name: "guestmemfs_large_region_kexec",
        summary: "512 GiB region with sparse files kept across kexec: statfs and data identical",
        timeout_s: 900,
        run: gmfs_hardening::large_region_kexec,
    },
    // Run by `cargo xtask bench` only (no suite of `cargo xtask test`):
    // one VM per configuration. The old table-scanning kernel needs most
    // of this for 100,000 files; a run past it is reported as a timeout.
    Test {
        name: "guestmemfs_bench",
        summary: "benchmark: create/lookup/readdir/statfs of gtest.bench_files=N files, mount and adoption after kexec",
        timeout_s: 1800,
        run: bench::bench,
    },
    Test {
        name: "memmap_report",
        summary: "report nr_memmap_boot_pages + nr_memmap_pages for the host to compare",
        timeout_s: 30,
        run: region::memmap_report,
    },
    Test {
        name: "harness_hang",
        summary: "hangs on purpose: the host must kill the VM at this timeout",
        timeout_s: 15,
        run: harness::hang,
    },
    Test {
        name: "guestmemfs_poison_mapped",
        summary: "memory error in a PUD-mapped page: consumer BUS_MCEERR_AR, early mapper _AO, later touches _AR, rest intact",
        timeout_s: 240,
        run: gmfs_memory_errors::poison_mapped,
    },
    Test {
        name: "guestmemfs_poison_never_reused",
        summary: "bad blocks (in a file, free) leave statfs and are never allocated again, also after unlink and a fill",
        timeout_s: 240,
        run: gmfs_memory_errors::poison_never_reused,
    },
    Test {
        name: "guestmemfs_poison_unmapped",
        summary: "memory error in an unmapped file block and a metadata block; hook refuses holes (ENXIO)",
        timeout_s: 120,
        run: gmfs_memory_errors::poison_unmapped,
    },
    Test {
        name: "guestmemfs_poison_kexec",
        summary: "bad blocks stay listed and raise BUS_MCEERR_AR after two kexecs; data around them intact",
        timeout_s: 400,
        run: gmfs_memory_errors::poison_kexec,
    },
    Test {
        name: "guestmemfs_poison_reformat",
        summary: "mount -o reformat keeps every bad block listed and out of use",
        timeout_s: 120,
        run: gmfs_memory_errors::poison_reformat,
    },
    Test {
        name: "guestmemfs_poison_metadata_kexec",
        summary: "memory error in the metadata: Failed, no more changes (EIO); next kernel refuses without reading; reformat works",
        timeout_s: 300,
        run: gmfs_memory_errors::poison_metadata_kexec,
    },
    Test {
        name: "guestmemfs_poison_after_freeze",
        summary: "after the kexec freeze a bad block is kept out of use in memory only (superblock unchanged)",
        timeout_s: 120,
        run: gmfs_memory_errors::poison_after_freeze,
    },
    Test {
        name: "iommufd_igb_dma",
        summary: "igb via VFIO cdev + iommufd (rust-vmm crates) DMAs into guestmemfs files: data seen by the CPU, VT-d leaves 1G/2M/4K, no faults but the planted one",
        timeout_s: 400,
        run: igb::igb_dma,
    },
    Test {
        name: "kselftest_vfio_pci_driver",
        summary: "tools/testing/selftests/vfio/vfio_pci_driver_test from the 7.3 tree on the igb (memcpy DMA, MSI, iommufd and type1 modes)",
        timeout_s: 600,
        run: kselftest::vfio_pci_driver,
    },
    Test {
        name: "kselftest_vfio_dma_mapping",
        summary: "tools/testing/selftests/vfio/vfio_dma_mapping_test from the 7.3 tree on the igb",
        timeout_s: 600,
        run: kselftest::vfio_dma_mapping,
    },
    Test {
        name: "vfio_lu_stream",
        summary: "a UDP stream into igb's RX ring in guestmemfs while iommufd + VFIO cdev are preserved and the host kexecs: device never stopped or reset, every frame exactly once and in order, frames written while no VMM ran, no DMAR fault",
        timeout_s: 900,
        run: vfio_lu::stream,
    },
    Test {
        name: "vfio_lu_stream_vf",
        summary: "SR-IOV: the igb PF on pci-pf-stub with one VF; the VF, passed through, receives the UDP stream while its iommufd + cdev are preserved and the host kexecs: every frame exactly once and in order; the PF never reset (marker kept), sriov_numvfs, VF Enable and the VF BARs kept, sriov_numvfs <- 0 EBUSY while the VF is preserved, then free after FINISH",
        timeout_s: 900,
        run: vfio_lu_sriov::stream_vf,
    },
    Test {
        name: "vfio_lu_vf_refuse_pf_driver",
        summary: "SR-IOV: a VF whose PF is on vfio-pci (enable_sriov), not pci-pf-stub: PRESERVE_FD of its cdev fails with EOPNOTSUPP",
        timeout_s: 120,
        run: vfio_lu_sriov::vf_refuse_pf_driver,
    },
    Test {
        name: "vfio_lu_vf_refuse_sriov",
        summary: "SR-IOV: the handover's SR-IOV state of the PF does not match its registers (vfio_pci_core.lu_test_damage=sriov): the next kernel disables SR-IOV as usual (VF stopped), clears the PF's bus mastering, the VF's cdev is not retrievable, no DMAR fault",
        timeout_s: 600,
        run: vfio_lu_sriov::vf_refuse_sriov,
    },
    Test {
        name: "vfio_lu_soak",
        summary: "20 live updates in a row with the UDP stream running: the device adopted and re-preserved each time, every frame exactly once, a guestmemfs data file intact, MemTotal after the 20th as after the 1st, kmemleak clean",
        timeout_s: 1800,
        run: vfio_lu::soak,
    },
    Test {
        name: "vfio_lu_stream_reset",
        summary: "benchmark baseline, the upstream-style path: ring in a LUO-preserved memfd, device not preserved (stopped by the kexec, reset at open, ring re-initialised); checks only that the stream resumes",
        timeout_s: 900,
        run: vfio_lu::stream_reset,
    },
    Test {
        name: "vfio_lu_fail_nth",
        summary: "fault injection over PRESERVE_FD of the VFIO cdev (device untouched, nothing leaked) and over its RETRIEVE_FD after the kexec (one kexec per allocation; each failure leaves the device quiet), kmemleak checked; the last round adopts",
        timeout_s: 1500,
        run: vfio_lu::fail_nth,
    },
    Test {
        name: "vfio_lu_unretrieved",
        summary: "the VMM never retrieves its preserved, running device: held (EBUSY) and still receiving until FINISH, then bus mastering off before its translation goes, no DMAR fault",
        timeout_s: 900,
        run: vfio_lu::unretrieved,
    },
    Test {
        name: "vfio_lu_refuse_version",
        summary: "a vfio-pci handover of another version: refused at boot, the running device quiesced (bus master off), its cdev not retrievable, no DMAR fault",
        timeout_s: 900,
        run: vfio_lu::refuse_version,
    },
    Test {
        name: "vfio_lu_refuse_device",
        summary: "a vfio-pci handover record naming another device ID (checksum valid): that function quiesced at boot, not retrievable",
        timeout_s: 900,
        run: vfio_lu::refuse_device,
    },
    Test {
        name: "vfio_lu_refuse_bar",
        summary: "a vfio-pci handover whose BAR 0 register differs from the function's (checksum valid): enumeration sizes it as usual, the function quiesced, not retrievable",
        timeout_s: 900,
        run: vfio_lu::refuse_bar,
    },
    Test {
        name: "vfio_lu_refuse_mask",
        summary: "a vfio-pci handover whose BAR 0 sizing mask has a hole (checksum valid): refused whole at boot, the device quiesced, not retrievable",
        timeout_s: 900,
        run: vfio_lu::refuse_mask,
    },
    Test {
        name: "vfio_lu_fail_read",
        summary: "the next kernel's allocation for reading the vfio-pci handover fails (vfio_pci_core.lu_fail_read=1 for one boot): handover refused, the running device quiesced, not retrievable, no DMAR fault",
        timeout_s: 900,
        run: vfio_lu::fail_read,
    },
    Test {
        name: "iommufd_igb_kexec",
        summary: "igb DMAs pattern A, HWPT marked, iommufd preserved, kexec; VT-d table adopted as left (debugfs), HWPT restored by token, device attached with no map, pattern B lands in the same guestmemfs pages, A intact, no faults",
        timeout_s: 600,
        run: igb_kexec::igb_kexec,
    },
    Test {
        name: "iommufd_lu_refuse_version",
        summary: "iommufd handover with version 99: refused with the reason, RETRIEVE_FD fails, device blocked, data intact, device usable from scratch",
        timeout_s: 400,
        run: igb_kexec::refuse_version,
    },
    Test {
        name: "iommufd_lu_refuse_crc",
        summary: "iommufd handover with a flipped byte: checksum refusal, device blocked, data intact",
        timeout_s: 400,
        run: igb_kexec::refuse_crc,
    },
    Test {
        name: "iommufd_lu_refuse_offset",
        summary: "handover names other file blocks (checksum valid): the leaf check refuses, device blocked",
        timeout_s: 400,
        run: igb_kexec::refuse_offset,
    },
    Test {
        name: "iommufd_lu_refuse_inode",
        summary: "handover names an inode not in use: guestmemfs refuses the hold, iommufd refuses, device blocked",
        timeout_s: 400,
        run: igb_kexec::refuse_inode,
    },
    Test {
        name: "iommufd_lu_refuse_vtd_version",
        summary: "VT-d handover with version 99: refused at boot with the reason, translation kept on with an empty root (blocked)",
        timeout_s: 400,
        run: igb_kexec::refuse_vtd_version,
    },
    Test {
        name: "iommufd_lu_refuse_vtd_pages",
        summary: "VT-d page list misses a table page: the vetting walk refuses the domain, device blocked",
        timeout_s: 400,
        run: igb_kexec::refuse_vtd_pages,
    },
    Test {
        name: "iommufd_lu_bench",
        summary: "benchmark (cargo xtask bench-lu): restore of a preserved HWPT after kexec vs re-map of a LUO memfd, gtest.lu_bench=GIB,MAPS,LEAF",
        timeout_s: 900,
        run: lu_bench::lu_bench,
    },
    Test {
        name: "iommufd_lu_refuse_guestmemfs",
        summary: "guestmemfs refuses its own handover (damaged superblock magic): iommufd refuses too (EUCLEAN), device blocked; -o reformat after FINISH",
        timeout_s: 400,
        run: igb_kexec::refuse_guestmemfs,
    },
    Test {
        name: "iommufd_lu_unretrieved",
        summary: "the iommufd is preserved but never retrieved: a host driver (pci-pf-stub) cannot bind the held device (EBUSY); FINISH blocks it and frees its table pages; then pci-pf-stub binds and the default domain is attached at bind",
        timeout_s: 400,
        run: igb_kexec::unretrieved,
    },
    Test {
        name: "iommufd_lu_fail_nth_adopt",
        summary: "fault injection at boot (intel_iommu.lu_fail_adopt=N,100,0,1, next boot only): the N-th allocation of the VT-d handover retrieve and adoption fails, for every N it reaches (a kexec each): no WARN, RETRIEVE_FD fails or restores, FINISH works, no translation, hold or kmemleak object left",
        timeout_s: 1500,
        run: igb_kexec::fail_nth_adopt,
    },
    Test {
        name: "iommufd_lu_fail_nth_restore",
        summary: "fail_nth over RETRIEVE_FD: the n-th allocation of the restore fails, for every n it reaches (a kexec each): clean refusal, device blocked after FINISH, no guestmemfs hold, kmemleak object or kernel warning left (about 72 rounds with kmemleak on)",
        timeout_s: 2700,
        run: igb_kexec::fail_nth_restore,
    },
    Test {
        name: "iommufd_lu_fail_nth_preserve",
        summary: "fail_nth over PRESERVE_FD and the freeze in reboot(KEXEC): each allocation fails in turn, cleanly (session closes, HWPT destroyable, file shrinks; a failed freeze fails the reboot); then the kexec and the HWPT back",
        timeout_s: 900,
        run: igb_kexec::fail_nth_preserve,
    },
    Test {
        name: "iommufd_lu_unpreserved_device",
        summary: "two igb on one VT-d unit, one preserved: after kexec it keeps its table; the other has none (debugfs) and its DMA to its old IOVA faults",
        timeout_s: 300,
        run: igb_kexec::unpreserved_device,
    },
    Test {
        name: "iommufd_lu_abort",
        summary: "preserved iommufd: its HWPT cannot be destroyed (EBUSY); closing the session before kexec undoes it all: HWPT destroyed, file shrinks",
        timeout_s: 120,
        run: igb_kexec::abort,
    },
];

pub fn find(name: &str) -> Option<&'static Test> {
    CATALOG.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod catalog_tests {
    use super::*;

    #[test]
    fn names_are_unique_and_kernel_cmdline_safe() {
        for (i, t) in CATALOG.iter().enumerate() {
            assert!(t
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert!(CATALOG[..i].iter().all(|o| o.name != t.name));
            assert!(find(t.name).is_some());
        }
    }
}
