// SPDX-License-Identifier: GPL-2.0-only
//! Runs the Linux tree's own kselftest binaries as regression guards.
//!
//! Their TAP output is passed through, indented as KTAP subtest lines, so
//! the host counts only our top-level result but the log keeps every case.

use super::{Ctx, Outcome, TestResult};
use crate::ktap::{diag, line};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// kselftest's exit code for "skipped" (tools/testing/selftests/kselftest.h).
const KSFT_SKIP: i32 = 4;
/// In the error of a run whose harness killed a case at its timeout.
const TIMED_OUT: &str = "a case timed out";

fn run(binary: &str) -> TestResult {
    run_env(binary, &[], &[])
}

fn run_env(binary: &str, args: &[&str], env: &[(&str, &str)]) -> TestResult {
    let path = format!("/bin/kselftest/{binary}");
    // One pipe for stdout and stderr keeps the harness's assertion
    // messages next to the case they belong to, and indented with it.
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let writer2 = writer.try_clone().map_err(|e| format!("pipe: {e}"))?;
    let mut child = Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .spawn()
        .map_err(|e| format!("run {path}: {e}"))?;
    let mut totals = None;
    let mut failed = Vec::new();
    let mut timed_out = false;
    for text in BufReader::new(reader).lines() {
        let text = text.map_err(|e| format!("read {binary} output: {e}"))?;
        line(&format!("    {text}"));
        if text.starts_with("# Totals:") {
            totals = Some(text.trim_start_matches("# ").to_owned());
        } else if text.starts_with("not ok ") {
            failed.push(text);
        } else if text.contains("Test terminated by timeout") {
            timed_out = true;
        }
    }
    let status = child.wait().map_err(|e| format!("wait {binary}: {e}"))?;
    let totals = totals.unwrap_or_else(|| "no totals line".to_owned());
    diag(&format!("{binary}: {totals}"));
    match status.code() {
        Some(0) => Ok(Outcome::Pass),
        Some(KSFT_SKIP) => Ok(Outcome::Skip(format!("{binary} skipped: {totals}"))),
        _ => {
            for f in &failed {
                diag(&format!("{binary}: {f}"));
            }
            let timeout = if timed_out {
                format!(" ({TIMED_OUT})")
            } else {
                String::new()
            };
            Err(format!("{binary} exited with {status}: {totals}{timeout}"))
        }
    }
}

pub fn iommufd(_ctx: &mut Ctx) -> TestResult {
    run("iommufd")
}

pub fn liveupdate(_ctx: &mut Ctx) -> TestResult {
    run("liveupdate")
}

pub fn iommufd_fail_nth(_ctx: &mut Ctx) -> TestResult {
    run("iommufd_fail_nth")
}

/// The 7.3 tree's VFIO selftests against the igb, bound to vfio-pci (the
/// live update changes must not change an ordinary open: reset, DMA, MSI).
///
/// Each IOMMU mode runs as its own process: under TCG a case can hit the
/// harness's 30 s timeout, and a killed case must not take the other
/// modes with it.
fn vfio(binary: &str) -> TestResult {
    const MODES: &[&str] = &[
        "iommufd",
        "iommufd_compat_type1",
        "iommufd_compat_type1v2",
        "vfio_type1_iommu",
        "vfio_type1v2_iommu",
    ];
    let bdf = super::igb_kexec::igb_bdf()?;
    crate::vfio::bind_vfio_pci(&bdf)?;
    let mut skipped = None;
    for mode in MODES {
        diag(&format!("{binary}: IOMMU mode {mode}"));
        // TCG with lockdep is slow: a mode whose case the harness killed
        // at its 30 s timeout (and whose later cases then fail on the
        // device it left open) runs once more; any other failure counts.
        let outcome = match run_env(binary, &["-v", mode, &bdf], &[]) {
            Err(why) if why.contains(TIMED_OUT) => {
                diag(&format!(
                    "{binary}: {mode}: a case timed out; running the mode again"
                ));
                run_env(binary, &["-v", mode, &bdf], &[])?
            }
            other => other?,
        };
        if let Outcome::Skip(why) = outcome {
            skipped = Some(why);
        }
    }
    Ok(skipped.map_or(Outcome::Pass, Outcome::Skip))
}

pub fn vfio_pci_driver(_ctx: &mut Ctx) -> TestResult {
    vfio("vfio_pci_driver_test")
}

pub fn vfio_dma_mapping(_ctx: &mut Ctx) -> TestResult {
    vfio("vfio_dma_mapping_test")
}

/// The fail_nth case over guestmemfs maps and the mark, with guestmemfs
/// mounted (without it the case passes trivially).
pub fn iommufd_fail_nth_guestmemfs(_ctx: &mut Ctx) -> TestResult {
    super::gmfs::mount()?;
    // Named explicitly: the case fails rather than pass without it.
    run_env(
        "iommufd_fail_nth",
        &["-t", "map_guestmemfs"],
        &[("GUESTMEMFS_DIR", "/mnt/gmfs")],
    )
}

/// `IOMMU_IOAS_MAP_FILE` of guestmemfs files (issue 7), on a mounted
/// guestmemfs (the test skips without one).
pub fn iommufd_guestmemfs(_ctx: &mut Ctx) -> TestResult {
    super::gmfs::mount()?;
    run("iommufd_guestmemfs")
}
