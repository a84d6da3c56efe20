// SPDX-License-Identifier: GPL-2.0-only
//! `cargo xtask bench-lu`: the iommufd live update benchmark
//! (docs/benchmarks.md, "iommufd live update").
//!
//! One VM per configuration, each running the two-stage guest test
//! `iommufd_lu_bench` with `gtest.lu_bench=GIB,MAPS,LEAF`: stage 2 times,
//! in the same boot, the restore of this design against the upstream
//! re-map path. The `# lubench: key=value ...` lines become one row of a
//! markdown table (stdout and `target/xtask/bench-lu.md`). A VM that fails
//! gives a row saying so; the run goes on and the command exits non-zero.

use crate::suites::{self, Expect, Suite, Tally};
use crate::util::{say, Paths, Result};
use crate::vm::Echo;
use gmfs_guest::tests::lu_bench::LINE_PREFIX;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// The guest test every VM runs.
pub const TEST: &str = "iommufd_lu_bench";

pub struct Case {
    pub gib: u64,
    pub maps: u64,
    pub leaf: &'static str,
    pub suite: Suite,
}

macro_rules! case {
    ($gib:literal, $maps:literal, $leaf:literal, $memory:literal, $region:literal) => {
        Case {
            gib: $gib,
            maps: $maps,
            leaf: $leaf,
            suite: Suite {
                name: concat!("bench_lu_", $gib, "g_", $maps, "x_", $leaf),
                about: concat!(
                    "iommufd live update benchmark: a ",
                    $gib,
                    " GiB file mapped ",
                    $maps,
                    " times with ",
                    $leaf,
                    " IOPTEs; restore vs re-map after kexec"
                ),
                tests: &[TEST],
                add: &[
                    concat!("guestmemfs=", $region),
                    concat!("gtest.lu_bench=", $gib, ",", $maps, ",", $leaf),
                ],
                remove: &[],
                memory: Some($memory),
                expect: Expect::Pass,
            },
        }
    };
}

/// The configurations, in table order. Guest RAM holds the memfd of the
/// upstream path besides the guestmemfs region.
pub const CASES: &[Case] = &[
    case!(1, 1, "1g", "8G", "2G"),
    case!(4, 1, "1g", "16G", "5G"),
    case!(4, 4, "1g", "16G", "5G"),
    case!(4, 16, "1g", "16G", "5G"),
    case!(1, 1, "2m", "8G", "2G"),
    case!(4, 1, "2m", "16G", "5G"),
    case!(1, 1, "4k", "8G", "2G"),
    case!(4, 1, "4k", "16G", "5G"),
];

struct Row<'a> {
    case: &'a Case,
    values: BTreeMap<String, String>,
    status: String,
    secs: u64,
}

impl Row<'_> {
    fn number(&self, key: &str) -> Option<f64> {
        self.values.get(key)?.parse().ok()
    }

    fn ms(&self, key: &str) -> String {
        self.number(key)
            .map_or("–".into(), |v| format!("{:.2}", v / 1000.0))
    }
}

fn run_case<'a>(p: &Paths, case: &'a Case, echo: Echo) -> Row<'a> {
    let start = Instant::now();
    let outcome = suites::run_suite_vm(p, &case.suite, echo);
    let secs = start.elapsed().as_secs();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            return Row {
                case,
                values: BTreeMap::new(),
                status: format!("error: {e}"),
                secs,
            }
        }
    };
    suites::report(&case.suite, &outcome, echo, &mut Tally::default());
    let mut values = BTreeMap::new();
    for l in &outcome.ktap {
        if let Some(fields) = l
            .strip_prefix("# ")
            .and_then(|d| d.strip_prefix(LINE_PREFIX))
        {
            println!("  {fields}");
            for (k, v) in fields.split_whitespace().filter_map(|f| f.split_once('=')) {
                values.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    let passed = outcome
        .results
        .iter()
        .rev()
        .find(|r| r.name == TEST)
        .is_some_and(|r| r.ok && !r.skipped());
    let mut status = if passed {
        "ok".to_owned()
    } else {
        format!("failed (serial log {})", outcome.log.display())
    };
    let want = [
        ("gib", case.gib.to_string()),
        ("maps", case.maps.to_string()),
        ("leaf", case.leaf.to_string()),
    ];
    for (k, v) in want {
        if values.get(k).is_some_and(|got| *got != v) {
            status = format!("wrong configuration: {k}={} expected {v}", values[k]);
        }
    }
    Row {
        case,
        values,
        status,
        secs,
    }
}

fn table(rows: &[Row]) -> String {
    let header = [
        "GiB",
        "maps",
        "IOPTE",
        "result",
        "VM s",
        "restore ms",
        "re-map ms",
        "restore IOMMU ms",
        "re-map IOMMU ms",
        "IOMMU restore / re-map",
        "total restore / re-map",
        "retrieve ms",
        "preserve ms",
        "VT-d handover B",
        "table pages",
        "iommufd handover B",
        "restore IOMMU ms / mapping",
        "re-map IOMMU ms / GiB mapped",
    ];
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let c = r.case;
        let mapped = (c.gib * c.maps) as f64;
        let per = |key: &str, n: f64| {
            r.number(key)
                .map_or("–".into(), |v| format!("{:.3}", v / 1000.0 / n))
        };
        let ratio = |a: &str, b: &str| match (r.number(a), r.number(b)) {
            (Some(o), Some(m)) if m > 0.0 => format!("{:.2} %", 100.0 * o / m),
            _ => "–".into(),
        };
        let get = |k: &str| r.values.get(k).cloned().unwrap_or_else(|| "–".into());
        let cells = [
            c.gib.to_string(),
            c.maps.to_string(),
            c.leaf.to_string(),
            r.status.clone(),
            r.secs.to_string(),
            r.ms("ours_us"),
            r.ms("remap_us"),
            r.ms("ours_iommu_us"),
            r.ms("remap_iommu_us"),
            ratio("ours_iommu_us", "remap_iommu_us"),
            ratio("ours_us", "remap_us"),
            r.ms("retrieve_us"),
            r.ms("preserve_us"),
            get("vtd_handover_bytes"),
            get("table_pages"),
            get("iommufd_handover_bytes"),
            per("ours_iommu_us", c.maps as f64),
            per("remap_iommu_us", mapped),
        ];
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// How the restore time moves with the number of mappings and with the
/// bytes mapped (1 GiB IOPTEs), as ratios of two rows of the same run.
fn shape(rows: &[Row]) -> String {
    let find = |gib, maps, leaf| {
        rows.iter()
            .find(|r| r.case.gib == gib && r.case.maps == maps && r.case.leaf == leaf)
            .and_then(|r| r.number("ours_iommu_us"))
    };
    let mut out = String::new();
    let mut line = |what: &str, a: Option<f64>, b: Option<f64>, x: f64| {
        if let (Some(a), Some(b)) = (a, b) {
            let _ = writeln!(
                out,
                "- {what}: IOMMU restore ×{:.2} for ×{x} ({:.2} ms → {:.2} ms)",
                b / a,
                a / 1000.0,
                b / 1000.0
            );
        }
    };
    line(
        "bytes, 1 → 4 GiB, one mapping, 1 GiB IOPTEs",
        find(1, 1, "1g"),
        find(4, 1, "1g"),
        4.0,
    );
    line(
        "mappings, 1 → 16 of 4 GiB, 1 GiB IOPTEs",
        find(4, 1, "1g"),
        find(4, 16, "1g"),
        16.0,
    );
    line(
        "IOPTE size, 1 GiB → 4 KiB, 4 GiB",
        find(4, 1, "1g"),
        find(4, 1, "4k"),
        262144.0 / 4.0,
    );
    out
}

/// Runs every configuration; Ok(false) if one failed.
pub fn run(p: &Paths, echo: Echo) -> Result<bool> {
    let mut rows = Vec::new();
    for case in CASES {
        say(&format!("VM {}: {}", case.suite.name, case.suite.about));
        rows.push(run_case(p, case, echo));
    }
    let text = format!("{}\n{}", table(&rows), shape(&rows));
    println!("\n{text}");
    let out = p.out.join("bench-lu.md");
    std::fs::write(&out, &text).map_err(|e| format!("{}: {e}", out.display()))?;
    say(&format!("table written to {}", out.display()));
    Ok(rows.iter().all(|r| r.status == "ok"))
}
