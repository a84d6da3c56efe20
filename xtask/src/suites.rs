// SPDX-License-Identifier: GPL-2.0-only
//! VM test suites: which guest tests run in one VM, with which kernel
//! parameters, and whether they must pass or must fail (negative checks
//! that prove a test can fail when its condition is broken).

use crate::stream;
use crate::util::{Paths, Result};
use crate::vm::{self, Echo, VmRun, BASE_CMDLINE};
use gmfs_guest::tests::CATALOG;
use std::path::Path;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    Pass,
    /// The guest must report `not ok`: the suite breaks the test's
    /// condition on purpose.
    Fail,
    /// The host must kill the VM at the (only) test's timeout.
    Timeout,
}

pub struct Suite {
    pub name: &'static str,
    pub about: &'static str,
    pub tests: &'static [&'static str],
    /// Kernel parameters added to BASE_CMDLINE.
    pub add: &'static [&'static str],
    /// Kernel parameters removed from BASE_CMDLINE.
    pub remove: &'static [&'static str],
    /// Guest memory (QEMU size syntax); `None`: the VM default (4G).
    pub memory: Option<&'static str>,
    pub expect: Expect,
}

pub const SUITES: &[Suite] = &[
    Suite {
        name: "smoke",
        about: "IOMMU on, Rust guestmemfs built in, LUO memfd across kexec",
        tests: &["iommu_present", "guestmemfs_registered", "luo_memfd_kexec"],
        add: &[],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "iommufd",
        about: "the 7.3 tree's iommufd, liveupdate and kho selftests (regression guard)",
        tests: &[
            "kselftest_iommufd",
            "kselftest_iommufd_fail_nth",
            "kselftest_liveupdate",
            "kselftest_kho",
        ],
        // The *_hugepage and *_huge fixtures map MAP_HUGETLB buffers.
        add: &["hugepages=256"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "iommufd_guestmemfs",
        about: "guestmemfs=2G: IOMMU_IOAS_MAP_FILE of guestmemfs files (kselftest, mock domain)",
        tests: &[
            "kselftest_iommufd_guestmemfs",
            "kselftest_iommufd_fail_nth_guestmemfs",
        ],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "iommufd_igb",
        about: "guestmemfs=2G, kmemleak: igb DMA into guestmemfs through VFIO cdev + iommufd, VT-d page table checked",
        tests: &[
            "iommufd_igb_dma",
            "iommufd_lu_abort",
            "iommufd_igb_kexec",
            "iommufd_lu_refuse_version",
            "iommufd_lu_refuse_crc",
            "iommufd_lu_refuse_offset",
            "iommufd_lu_refuse_inode",
            "iommufd_lu_refuse_vtd_version",
            "iommufd_lu_refuse_vtd_pages",
            "iommufd_lu_refuse_guestmemfs",
            "iommufd_lu_unretrieved",
            "iommufd_lu_fail_nth_restore",
        ],
        add: &["guestmemfs=2G", "kmemleak=on"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "vfio_lu",
        about: "guestmemfs=2G, kmemleak: a NIC keeps receiving a UDP stream into guestmemfs through a live update (VFIO cdev + iommufd preserved, no reset); refusals",
        tests: &[
            "vfio_lu_stream",
            "vfio_lu_unretrieved",
            "vfio_lu_refuse_version",
            "vfio_lu_refuse_device",
            "vfio_lu_refuse_bar",
            "vfio_lu_refuse_mask",
            "vfio_lu_fail_read",
        ],
        add: &["guestmemfs=2G", "kmemleak=on"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "vfio_lu_sriov",
        about: "guestmemfs=2G, kmemleak: SR-IOV: the igb's VF0 (PF on pci-pf-stub, sriov_numvfs=1) keeps receiving a UDP stream through a live update, PF and SR-IOV state untouched (QEMU trace); refused with the PF on another driver",
        tests: &[
            "vfio_lu_stream_vf",
            "vfio_lu_vf_refuse_pf_driver",
            "vfio_lu_vf_refuse_sriov",
        ],
        add: &["guestmemfs=2G", "kmemleak=on", crate::vm::IGB_VFS],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "vfio_lu_fail_nth",
        about: "guestmemfs=2G, kmemleak: fault injection over PRESERVE_FD and RETRIEVE_FD of the VFIO cdev",
        tests: &["vfio_lu_fail_nth"],
        add: &["guestmemfs=2G", "kmemleak=on"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "vfio_selftests",
        about: "the 7.3 VFIO selftests on the igb (no guestmemfs reserve: they map 1 GiB of shmem)",
        tests: &["kselftest_vfio_pci_driver", "kselftest_vfio_dma_mapping"],
        add: &[],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "vfio_lu_soak",
        about: "guestmemfs=2G, kmemleak: 20 live updates in a row in one VM with the UDP stream running",
        tests: &["vfio_lu_soak"],
        add: &["guestmemfs=2G", "kmemleak=on"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "iommufd_lu_fail_nth_preserve",
        about: "guestmemfs=2G, kmemleak: fault injection over PRESERVE_FD and the freeze in reboot(KEXEC), from a fresh boot",
        tests: &["iommufd_lu_fail_nth_preserve"],
        add: &["guestmemfs=2G", "kmemleak=on"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "iommufd_lu_fail_nth_adopt",
        about: "guestmemfs=2G, kmemleak: fault injection at boot over the VT-d handover retrieve and adoption",
        tests: &["iommufd_lu_fail_nth_adopt"],
        add: &["guestmemfs=2G", "kmemleak=on"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "iommufd_two_devices",
        about: "guestmemfs=2G, two igb: a preserved device keeps its translation, an unpreserved one on the same unit loses it",
        tests: &["iommufd_lu_unpreserved_device"],
        add: &["guestmemfs=2G", crate::vm::SECOND_IGB],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_region",
        about: "guestmemfs=2G: reserved, aligned, not in the direct map, kept over kexec",
        tests: &[
            "guestmemfs_region_reserved",
            "guestmemfs_region_not_in_direct_map",
            "guestmemfs_region_kexec",
            "guestmemfs_region_not_in_direct_map",
        ],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs",
        about: "guestmemfs=2G: operations, huge mappings, permissions, 3 kexecs, freeze",
        tests: &[
            "guestmemfs_operations",
            "guestmemfs_huge_mappings",
            "guestmemfs_qemu_backing",
            "guestmemfs_permissions",
            "guestmemfs_persistence",
            "guestmemfs_many_files",
            "guestmemfs_frozen",
        ],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_corrupt_magic",
        about: "damaged superblock handed over: refused, region kept untouched",
        tests: &["guestmemfs_corrupt_magic"],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_corrupt_cycle",
        about: "extent cycle handed over: refused, region kept untouched",
        tests: &["guestmemfs_corrupt_cycle"],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_corrupt_overlap",
        about: "overlapping blocks handed over: refused, region kept untouched",
        tests: &["guestmemfs_corrupt_overlap"],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_corrupt_locator",
        about: "damaged KHO locator checksum: nothing reserved, mount ENODEV",
        tests: &["guestmemfs_corrupt_locator"],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_locator_generation",
        about: "locator and superblock generations disagree: region kept, mount refused",
        tests: &["guestmemfs_locator_generation"],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_memory_errors",
        about: "guestmemfs=2G: simulated memory errors: SIGBUS to mappers, bad blocks never reused, kept over 2 kexecs",
        // The freeze test goes last: nothing changes after it.
        tests: &[
            "guestmemfs_poison_mapped",
            "guestmemfs_poison_never_reused",
            "guestmemfs_poison_unmapped",
            "guestmemfs_poison_kexec",
            "guestmemfs_poison_reformat",
            "guestmemfs_poison_after_freeze",
        ],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_metadata_error",
        about: "guestmemfs=2G: a memory error in the metadata: Failed, no changes, not read by the next kernel, no reformat",
        tests: &["guestmemfs_poison_metadata_kexec"],
        add: &["guestmemfs=2G"],
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_hardening",
        about: "guestmemfs=4G in 8G: huge mappings at any offset/first touch, EOF, full-fs SIGBUS, races, GUP",
        // The mapping tests need two whole free GiBs, so they run first,
        // and filling the region last; every test cleans up after itself.
        tests: &[
            "guestmemfs_map_any_offset",
            "guestmemfs_fault_order",
            "guestmemfs_size_tail",
            "guestmemfs_gup_efault",
            "guestmemfs_attr_race",
            "guestmemfs_rename_race",
            "guestmemfs_truncate_fault_race",
            "guestmemfs_full_fault_sigbus",
            "guestmemfs_zeroing_unlocked",
        ],
        // 8G: q35 puts 2G below 4 GiB and the rest above, so a 4G region
        // needs 6G above 4 GiB.
        add: &["guestmemfs=4G"],
        remove: &[],
        memory: Some("8G"),
        expect: Expect::Pass,
    },
    Suite {
        name: "guestmemfs_large",
        about: "guestmemfs=512G in 520G of lazily backed RAM: kept across kexec",
        tests: &["guestmemfs_large_region_kexec"],
        add: &["guestmemfs=512G"],
        remove: &[],
        memory: Some("520G"),
        expect: Expect::Pass,
    },
    Suite {
        name: "negative_iommu_off",
        about: "without intel_iommu=on the IOMMU check must fail",
        tests: &["iommu_present"],
        add: &[],
        remove: &["intel_iommu=on"],
        memory: None,
        expect: Expect::Fail,
    },
    Suite {
        name: "negative_luo_off",
        about: "with liveupdate=off after the kexec the memfd must not come back",
        tests: &["luo_memfd_kexec"],
        add: &["gtest.kexec_extra=liveupdate=off"],
        remove: &[],
        memory: None,
        expect: Expect::Fail,
    },
    Suite {
        name: "negative_hang",
        about: "a guest test that hangs must be killed at its timeout",
        tests: &["harness_hang"],
        add: &[],
        remove: &[],
        memory: None,
        expect: Expect::Timeout,
    },
];

/// The demo's VM: readable information, then the smoke tests.
pub const DEMO: Suite = Suite {
    name: "demo",
    about: "live update: a passthrough NIC keeps receiving into guestmemfs while the host kexecs",
    tests: &[
        "demo_info",
        "iommu_present",
        "guestmemfs_region_not_in_direct_map",
        "guestmemfs_persistence",
        "vfio_lu_stream",
    ],
    add: &["guestmemfs=2G"],
    remove: &[],
    memory: None,
    expect: Expect::Pass,
};

/// Host check across two boots: the struct-page (memmap) cost of the
/// guestmemfs region, which must be nothing. Ordinary RAM costs 64 bytes
/// of `struct page` per 4 KiB page, 16 MiB per GiB; booting with
/// `guestmemfs=2G` must save about that much for the 2 GiB.
pub const MEMMAP_COST: &str = "memmap_cost";
const MEMMAP_REGION: u64 = 2 << 30;

fn memmap_pages(
    p: &Paths,
    name: &'static str,
    add: &'static [&'static str],
    echo: Echo,
) -> Result<Option<u64>> {
    let suite = Suite {
        name,
        about: "memmap pages of this boot",
        tests: &["memmap_report"],
        add,
        remove: &[],
        memory: None,
        expect: Expect::Pass,
    };
    let mut tally = Tally::default();
    let outcome = run_suite_vm(p, &suite, echo)?;
    report(&suite, &outcome, echo, &mut tally);
    Ok(outcome.ktap.iter().find_map(|l| {
        l.strip_prefix("# memmap_pages ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }))
}

/// Runs the two boots and adds one result to `tally`.
pub fn memmap_cost(p: &Paths, echo: Echo, tally: &mut Tally) -> Result<()> {
    println!("xtask: VM pair {MEMMAP_COST}: struct pages with and without guestmemfs=2G");
    let plain = memmap_pages(p, "memmap_plain", &[], echo)?;
    let region = memmap_pages(p, "memmap_guestmemfs", &["guestmemfs=2G"], echo)?;
    let (Some(plain), Some(region)) = (plain, region) else {
        tally.fail(format!(
            "{MEMMAP_COST}: a boot did not report its memmap pages"
        ));
        return Ok(());
    };
    let saved = plain.saturating_sub(region) * 4096;
    let per_gib = saved / (MEMMAP_REGION >> 30);
    let line = format!(
        "memmap pages: {plain} without, {region} with guestmemfs=2G: {} MiB saved, {} KiB per GiB of region (RAM costs 16384 KiB per GiB)",
        saved >> 20,
        per_gib >> 10
    );
    println!("  {MEMMAP_COST}: {line}");
    // All of the region's memmap must be gone: allow 1% for rounding.
    if per_gib >= (16 << 20) * 99 / 100 {
        tally.pass();
    } else {
        tally.fail(format!("{MEMMAP_COST}: {line}"));
    }
    Ok(())
}

/// A suite made of one guest test, for `cargo xtask test <guest test>`,
/// with the kernel parameters and memory of the first passing suite that
/// lists it (a guestmemfs test needs its region); the benchmark test gets
/// its configuration with the default memory.
pub fn single(name: &'static str) -> Suite {
    let home = SUITES
        .iter()
        .find(|s| s.expect == Expect::Pass && s.tests.contains(&name))
        .or_else(|| {
            crate::bench::CASES
                .iter()
                .map(|c| &c.suite)
                .find(|s| s.tests.contains(&name) && s.memory.is_none())
        });
    Suite {
        name,
        about: "single guest test",
        tests: std::slice::from_ref(&CATALOG.iter().find(|t| t.name == name).unwrap().name),
        add: home.map(|s| s.add).unwrap_or(&[]),
        remove: home.map(|s| s.remove).unwrap_or(&[]),
        memory: home.and_then(|s| s.memory),
        expect: Expect::Pass,
    }
}

/// Counts of one test command.
#[derive(Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn pass(&mut self) {
        self.passed += 1;
    }
    pub fn fail(&mut self, what: String) {
        self.failed += 1;
        self.failures.push(what);
    }
}

fn timeout(name: &str) -> u64 {
    CATALOG
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.timeout_s)
        .unwrap_or(60)
}

/// Boots the VM for `suite` and returns what the guest reported.
pub fn run_suite_vm(p: &Paths, suite: &Suite, echo: Echo) -> Result<vm::VmOutcome> {
    let mut cmdline: Vec<String> = BASE_CMDLINE
        .iter()
        .filter(|a| !suite.remove.contains(a))
        .map(|a| a.to_string())
        .collect();
    cmdline.extend(suite.add.iter().map(|a| a.to_string()));
    cmdline.push(format!("gtest.run={}", suite.tests.join(",")));
    let run = VmRun {
        name: suite.name.to_owned(),
        tests: suite
            .tests
            .iter()
            .map(|t| (t.to_string(), timeout(t)))
            .collect(),
        cmdline,
        echo,
        memory: suite.memory,
        trace_rx: suite.tests.iter().any(|t| stream::STREAM_TESTS.contains(t)),
    };
    if echo != Echo::Human {
        println!("xtask: VM {}: {}", suite.name, suite.about);
    }
    vm::run(p, &run)
}

/// Runs a suite in a fresh VM and adds its results to `tally`.
pub fn run(p: &Paths, suite: &Suite, echo: Echo, tally: &mut Tally) -> Result<()> {
    let start = std::time::Instant::now();
    let outcome = run_suite_vm(p, suite, echo)?;
    report(suite, &outcome, echo, tally);
    println!(
        "xtask: VM {} finished in {}s (serial log: {})",
        suite.name,
        start.elapsed().as_secs(),
        outcome.log.display()
    );
    Ok(())
}

/// Adds a VM's results to `tally` and prints the details of failures.
pub fn report(suite: &Suite, outcome: &vm::VmOutcome, echo: Echo, tally: &mut Tally) {
    let mut failed_here = false;
    for (index, name) in suite.tests.iter().enumerate() {
        let label = format!("{}/{name}", suite.name);
        let result = outcome
            .results
            .iter()
            .rev()
            .find(|r| r.number == index + 1 && r.name == *name);
        let missing = || match &outcome.timed_out {
            Some(why) => format!("{label}: no result, VM killed: {why}"),
            None => format!("{label}: no result, the guest stopped (crash or panic?)"),
        };
        match (suite.expect, result) {
            (Expect::Timeout, None) if outcome.timed_out.is_some() => {
                println!(
                    "  {}: {label} was killed at its timeout as it must be",
                    suite.name
                );
                tally.pass()
            }
            (Expect::Timeout, Some(_)) => {
                tally.fail(format!("{label}: finished but must time out"));
                failed_here = true;
            }
            (_, None) => {
                tally.fail(missing());
                failed_here = true;
            }
            (Expect::Pass, Some(r)) if r.ok && r.skipped() => tally.skipped += 1,
            (Expect::Pass, Some(r)) if r.ok => tally.pass(),
            (Expect::Pass, Some(_)) => {
                tally.fail(format!("{label}: failed"));
                failed_here = true;
            }
            (Expect::Fail, Some(r)) if !r.ok => {
                if echo != Echo::Human {
                    println!(
                        "  {}: {label} failed as it must ({})",
                        suite.name, suite.about
                    );
                }
                tally.pass()
            }
            (Expect::Fail, Some(_)) => {
                tally.fail(format!("{label}: passed but must fail ({})", suite.about));
                failed_here = true;
            }
        }
    }
    failed_here |= report_streams(suite, outcome, echo, tally);
    if failed_here || outcome.timed_out.is_some() {
        if let Some(why) = &outcome.timed_out {
            eprintln!("xtask: VM {} killed: {why}", suite.name);
        }
        eprintln!("xtask: KTAP from VM {}:", suite.name);
        for l in &outcome.ktap {
            eprintln!("  {l}");
        }
        eprintln!("xtask: last lines of the serial log:");
        for l in vm::tail(&outcome.log, 40) {
            eprintln!("  | {l}");
        }
    }
}

/// Adds one `<test>.host_stream` result per UDP stream of the VM (the
/// checks of [`stream::check`]) and writes its timeline, as text and SVG,
/// next to the serial log. True if one failed.
fn report_streams(suite: &Suite, outcome: &vm::VmOutcome, echo: Echo, tally: &mut Tally) -> bool {
    let dir = outcome.log.parent().unwrap_or(Path::new("."));
    let mut failed = false;
    for (i, r) in outcome.streams.iter().enumerate() {
        // Tests that cut their stream on purpose (a device left quiet) have
        // nothing for the host to check.
        if !stream::STREAM_TESTS.contains(&r.test.as_str()) {
            continue;
        }
        let test = if r.test.is_empty() {
            "unknown"
        } else {
            &r.test
        };
        // Several streams of one test get numbered names.
        let of_test = |s: &[stream::StreamReport]| s.iter().filter(|o| o.test == r.test).count();
        let nth = match of_test(&outcome.streams) {
            1 => String::new(),
            _ => format!("-{}", of_test(&outcome.streams[..i]) + 1),
        };
        let name = format!("{test}.host_stream{nth}");
        let checks = stream::check(r);
        let timeline = stream::timeline(r);
        let check_lines: Vec<String> = checks
            .iter()
            .map(|(what, res)| match res {
                Ok(detail) => format!("PASS {what}: {detail}"),
                Err(why) => format!("FAIL {what}: {why}"),
            })
            .collect();
        let txt = dir.join(format!("{test}{nth}-timeline.txt"));
        let svg = dir.join(format!("{test}{nth}-timeline.svg"));
        let text = format!("{}\n\n{}\n", timeline.join("\n"), check_lines.join("\n"));
        let written = std::fs::write(&txt, text)
            .map_err(|e| format!("write {}: {e}", txt.display()))
            .and_then(|()| stream::write_svg(r, &svg));
        if let Err(e) = written {
            eprintln!("xtask: {e}");
        }
        let ok = checks.iter().all(|c| c.1.is_ok());
        let status = if ok { "PASS" } else { "FAIL" };
        match echo {
            Echo::Human => {
                println!("\n  Live update timeline (host clock):");
                for l in &timeline {
                    println!("    {l}");
                }
                println!("\n  => {status} {name}");
            }
            _ => println!("  {}: {status} {name}", suite.name),
        }
        for l in &check_lines {
            println!("    {l}");
        }
        println!("    timeline: {} {}", txt.display(), svg.display());
        if ok {
            tally.pass();
        } else {
            let why: Vec<String> = checks
                .iter()
                .filter_map(|(what, res)| res.as_ref().err().map(|e| format!("{what}: {e}")))
                .collect();
            tally.fail(format!("{}/{name}: {}", suite.name, why.join("; ")));
            eprintln!("xtask: timeline of {}/{name}:", suite.name);
            for l in &timeline {
                eprintln!("  {l}");
            }
            failed = true;
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_name_known_tests() {
        for suite in SUITES.iter().chain(std::iter::once(&DEMO)) {
            for t in suite.tests {
                assert!(CATALOG.iter().any(|c| c.name == *t), "{t}");
            }
            for r in suite.remove {
                assert!(BASE_CMDLINE.contains(r), "{r}");
            }
        }
    }

    #[test]
    fn single_test_borrows_its_suite_setup() {
        let t = single("guestmemfs_large_region_kexec");
        assert_eq!(t.add, ["guestmemfs=512G"]);
        assert_eq!(t.memory, Some("520G"));
        assert_eq!(t.expect, Expect::Pass);
        // Only listed by a suite that must fail: run as is.
        let t = single("harness_hang");
        assert!(t.add.is_empty() && t.memory.is_none());
        // In no suite at all.
        assert!(single("memmap_report").add.is_empty());
        // The benchmark alone: its small configuration.
        let t = single("guestmemfs_bench");
        assert_eq!(t.add, ["guestmemfs=2G", "gtest.bench_files=10"]);
        assert!(t.memory.is_none());
    }
}
