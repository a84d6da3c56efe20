// SPDX-License-Identifier: GPL-2.0-only
//! Build and VM test harness of the guestmemfs project.
//!
//! `cargo xtask help` lists the commands; docs/testing.md explains them.

mod bench;
mod bench_dma;
mod bench_lu;
mod image;
mod kernel;
mod ktap;
mod setup;
mod stream;
mod suites;
mod util;
mod vm;

use gmfs_guest::tests::CATALOG;
use std::process::{Command, ExitCode};
use std::time::Instant;
use suites::{Suite, Tally, SUITES};
use util::{say, Paths, Result};
use vm::Echo;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup            install the prerequisites (Debian packages, QEMU >= 8,
                   rust-src, the musl target, bindgen)
  build            build the kernel, the kselftests and the test initramfs
  test [NAME...]   run everything: host checks, kernel build, all VM suites;
                   with NAMEs, only those suites, guest tests, or `host`
  demo             the live update demo: a passthrough NIC keeps receiving
                   a UDP stream into guestmemfs while the host kexecs;
                   prints the timeline, writes the plot (SVG)
  bench            guestmemfs benchmark: one VM per file count and region
                   size; prints a markdown table (also target/xtask/bench.md)
                   for docs/benchmarks.md
  bench-lu         iommufd live update benchmark: restore after kexec against
                   the upstream re-map path, one VM per size, mapping count
                   and IOPTE size (also target/xtask/bench-lu.md)
  bench-dma        DMA blackout through a live update: a NIC kept running
                   against the upstream-style reset + re-map path, one VM
                   (also target/xtask/bench-dma.md)
  export           write the whole change as a git format-patch series
                   against the pristine 7.3 source (target/xtask/export)
  list             list the VM suites and guest tests
  help             this text

environment:
  GMFS_CACHE       kernel source, build tree and ccache (~/.cache/guestmemfs)
  GMFS_VERBOSE=1   echo the whole serial console while VMs run
  GMFS_KERNEL      boot this bzImage instead of building one (e.g. an
                   older build, to see new tests fail on it)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match command.as_str() {
        "setup" if rest.is_empty() => setup::setup().map(|_| true),
        "build" if rest.is_empty() => setup::setup().and_then(|_| build_all()).map(|_| true),
        "test" => test(rest),
        "demo" if rest.is_empty() => demo(),
        "bench" if rest.is_empty() => setup::setup()
            .and_then(|_| build_all())
            .and_then(|p| bench::run(&p, echo_mode())),
        "bench-lu" if rest.is_empty() => setup::setup()
            .and_then(|_| build_all())
            .and_then(|p| bench_lu::run(&p, echo_mode())),
        "bench-dma" if rest.is_empty() => setup::setup()
            .and_then(|_| build_all())
            .and_then(|p| bench_dma::run(&p, echo_mode())),
        "export" if rest.is_empty() => Paths::new().and_then(|p| kernel::export(&p)).map(|out| {
            say(&format!("patch series written to {}", out.display()));
            true
        }),
        "list" if rest.is_empty() => {
            list();
            Ok(true)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(true)
        }
        _ => {
            eprintln!(
                "xtask: unknown command or arguments: {}\n\n{USAGE}",
                args.join(" ")
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list() {
    println!("VM suites (cargo xtask test <suite>):");
    for s in SUITES {
        println!("  {:<22} {} [{}]", s.name, s.about, s.tests.join(", "));
    }
    println!(
        "  {:<22} struct pages with and without guestmemfs=2G (two boots, compared on the host)",
        suites::MEMMAP_COST
    );
    println!("\nbenchmark VMs (cargo xtask bench runs them all, one after the other):");
    for c in bench::CASES {
        println!("  {:<22} {}", c.suite.name, c.suite.about);
    }
    println!("\nlive update benchmark VMs (cargo xtask bench-lu):");
    for c in bench_lu::CASES {
        println!("  {:<22} {}", c.suite.name, c.suite.about);
    }
    println!("\nguest tests (cargo xtask test <test> runs one alone):");
    for t in CATALOG {
        println!("  {:<28} {:>5}s  {}", t.name, t.timeout_s, t.summary);
    }
    println!("\nhost checks (cargo xtask test host): cargo test, rustfmt, clippy, checkpatch");
}

/// Kernel, kselftests, guest binaries, initramfs.
fn build_all() -> Result<Paths> {
    let p = Paths::new()?;
    if std::env::var_os("GMFS_KERNEL").is_some() {
        say(&format!(
            "GMFS_KERNEL: booting {} (no kernel build)",
            p.bzimage().display()
        ));
    } else {
        kernel::build(&p)?;
    }
    kernel::build_kselftests(&p)?;
    let init = image::build_guest(&p)?;
    image::build_initramfs(&p, &init)?;
    Ok(p)
}

/// One host check: a command that must succeed.
fn check(tally: &mut Tally, name: &str, cmd: &mut Command) {
    let out = cmd.output();
    match out {
        Ok(o) if o.status.success() => {
            println!("  host: PASS {name}");
            tally.pass();
        }
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            println!("  host: FAIL {name}");
            for l in text.lines().take(40) {
                println!("    {l}");
            }
            tally.fail(format!("host/{name}"));
        }
        Err(e) => tally.fail(format!("host/{name}: cannot run: {e}")),
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if let Ok(p) = Paths::new() {
        cmd.current_dir(&p.repo);
    }
    cmd
}

/// Host checks: unit and property tests, rustfmt, clippy.
fn host_checks(tally: &mut Tally) {
    say("host checks");
    // `cargo test` counts each unit test; parse its summary lines.
    let out = cargo().args(["test", "--workspace", "--quiet"]).output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let (mut passed, mut failed) = (0, 0);
            for l in text.lines().filter(|l| l.starts_with("test result:")) {
                let num = |key: &str| -> usize {
                    l.split(';')
                        .find(|f| f.contains(key))
                        .and_then(|f| f.split_whitespace().rev().nth(1)?.parse().ok())
                        .unwrap_or(0)
                };
                passed += num(" passed");
                failed += num(" failed");
            }
            println!("  host: cargo test: {passed} passed, {failed} failed");
            tally.passed += passed;
            if !o.status.success() {
                failed = failed.max(1);
                for l in String::from_utf8_lossy(&o.stderr).lines().take(40) {
                    println!("    {l}");
                }
                for l in text
                    .lines()
                    .filter(|l| l.contains("FAILED") || l.contains("panicked"))
                {
                    println!("    {l}");
                }
            }
            for _ in 0..failed {
                tally.fail("host/cargo test".into());
            }
        }
        Err(e) => tally.fail(format!("host/cargo test: {e}")),
    }
    check(
        tally,
        "rustfmt",
        cargo().args(["fmt", "--all", "--", "--check", "--color", "never"]),
    );
    check(
        tally,
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]),
    );
}

/// Checks that need the kernel tree: checkpatch on the series and the
/// overlay's C, the kernel's rustfmt settings on the overlay's Rust.
fn kernel_checks(p: &Paths, tally: &mut Tally) -> Result<()> {
    let checkpatch = p.tree().join("scripts/checkpatch.pl");
    let mut patches = kernel::series(p)?;
    patches.sort();
    // Run from the kernel tree: inside this repository's git checkout,
    // checkpatch reads the patch files as changes to the repository.
    let mut cmd = Command::new("perl");
    cmd.current_dir(p.tree())
        .arg(&checkpatch)
        .args(["--no-tree", "--quiet"])
        .args(&patches);
    check(tally, "checkpatch patches/", &mut cmd);
    let overlay_c: Vec<_> = walk_overlay(p, &["c", "h"]);
    if !overlay_c.is_empty() {
        let mut cmd = Command::new("perl");
        cmd.current_dir(p.tree())
            .arg(&checkpatch)
            .args(["--no-tree", "--quiet", "--file"])
            .args(&overlay_c);
        check(tally, "checkpatch overlay C", &mut cmd);
    }
    // The kernel's own clippy settings (CLIPPY=1) on the overlay's Rust:
    // any warning fails the check. This rebuilds the Rust crates with
    // clippy-driver; the next normal build recompiles them.
    let log = p.log("kernel-clippy.log");
    let res = util::run_logged(
        kernel::make(p)
            .arg("CLIPPY=1")
            .arg(format!("-j{}", util::jobs()))
            .arg("fs/guestmemfs/")
            .arg("drivers/iommu/iommufd/lu_rs.o")
            .arg("drivers/iommu/intel/lu_vtd_rs.o"),
        &log,
        "clippy of the kernel Rust",
    );
    let warnings: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("warning") || l.starts_with("error"))
        .map(str::to_owned)
        .collect();
    match (res, warnings.is_empty()) {
        (Ok(()), true) => {
            println!("  host: PASS clippy kernel Rust");
            tally.pass();
        }
        _ => {
            println!("  host: FAIL clippy kernel Rust (log: {})", log.display());
            for w in warnings.iter().take(20) {
                println!("    {w}");
            }
            tally.fail("host/clippy kernel Rust".into());
        }
    }
    let overlay_rs = walk_overlay(p, &["rs"]);
    if !overlay_rs.is_empty() {
        let mut cmd = Command::new("rustfmt");
        cmd.args(["--check", "--edition", "2021", "--config-path"])
            .arg(p.tree().join(".rustfmt.toml"))
            .args(&overlay_rs);
        check(tally, "rustfmt kernel Rust", &mut cmd);
    }
    Ok(())
}

/// Overlay files (the same list the work tree gets) with one of `exts`.
fn walk_overlay(p: &Paths, exts: &[&str]) -> Vec<std::path::PathBuf> {
    kernel::overlay_files(&p.repo)
        .unwrap_or_default()
        .into_iter()
        .filter(|f| {
            std::path::Path::new(f)
                .extension()
                .is_some_and(|x| exts.iter().any(|e| x == *e))
        })
        .map(|f| p.repo.join(f))
        .collect()
}

fn echo_mode() -> Echo {
    if std::env::var("GMFS_VERBOSE").is_ok_and(|v| v == "1") {
        Echo::All
    } else {
        Echo::Results
    }
}

fn test(names: &[String]) -> Result<bool> {
    // Resolve names before the long build so a typo fails at once.
    let mut run_host = names.is_empty();
    let mut run_memmap = names.is_empty();
    let mut selected: Vec<Suite> = Vec::new();
    for name in names {
        if name == "host" {
            run_host = true;
        } else if name == suites::MEMMAP_COST {
            run_memmap = true;
        } else if let Some(s) = SUITES.iter().find(|s| s.name == name) {
            selected.push(Suite { ..*s });
        } else if let Some(t) = CATALOG.iter().find(|t| t.name == name) {
            selected.push(suites::single(t.name));
        } else {
            eprintln!("xtask: unknown suite or test {name:?}\n\n{USAGE}\n");
            list();
            std::process::exit(2);
        }
    }
    if names.is_empty() {
        selected = SUITES.iter().map(|s| Suite { ..*s }).collect();
    }
    let start = Instant::now();
    setup::setup()?;
    let mut tally = Tally::default();
    if run_host {
        host_checks(&mut tally);
    }
    if !selected.is_empty() || run_host || run_memmap {
        match build_all() {
            Ok(p) => {
                if run_host {
                    kernel_checks(&p, &mut tally)?;
                }
                for suite in &selected {
                    if let Err(e) = suites::run(&p, suite, echo_mode(), &mut tally) {
                        tally.fail(format!("{}: {e}", suite.name));
                    }
                }
                if run_memmap {
                    if let Err(e) = suites::memmap_cost(&p, echo_mode(), &mut tally) {
                        tally.fail(format!("{}: {e}", suites::MEMMAP_COST));
                    }
                }
            }
            Err(e) => tally.fail(format!("build: {e}")),
        }
    }
    println!();
    if !tally.failures.is_empty() {
        println!("failures:");
        for f in &tally.failures {
            println!("  {f}");
        }
    }
    if tally.skipped > 0 {
        println!("{} skipped", tally.skipped);
    }
    println!("total time {}s", start.elapsed().as_secs());
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(tally.failed == 0)
}

fn demo() -> Result<bool> {
    setup::setup()?;
    let p = build_all()?;
    println!("\n=== guestmemfs project demo: Linux 7.3 + Rust in QEMU (q35, emulated Intel IOMMU, igb NIC) ===");
    let mut tally = Tally::default();
    suites::run(&p, &suites::DEMO, Echo::Human, &mut tally)?;
    println!(
        "\n=== demo: {} checks passed, {} failed ===",
        tally.passed, tally.failed
    );
    for f in &tally.failures {
        println!("  {f}");
    }
    Ok(tally.failed == 0)
}
