// SPDX-License-Identifier: GPL-2.0-only
//! `cargo xtask bench`: the guestmemfs benchmark (docs/benchmarks.md).
//!
//! One VM per configuration, one after the other, each running the guest
//! test `guestmemfs_bench` with `guestmemfs=<size> gtest.bench_files=N`.
//! The `# bench: key=value ...` lines of a VM make one row of a markdown
//! table, with ratios against the smallest configuration of its dimension
//! (10 files; a 2 GiB region). The table goes to stdout and to
//! `target/xtask/bench.md`. A VM that fails or times out gives a row
//! saying so, with whatever it measured before; the run goes on and the
//! command exits non-zero.

use crate::suites::{self, Expect, Suite, Tally};
use crate::util::{say, Paths, Result};
use crate::vm::{Echo, VmOutcome};
use gmfs_guest::tests::bench::LINE_PREFIX;
use gmfs_guest::tests::region::memparse;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

/// The guest test every benchmark VM runs.
pub const TEST: &str = "guestmemfs_bench";

/// What a group of configurations varies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dimension {
    Files,
    Region,
}

impl Dimension {
    fn name(self) -> &'static str {
        match self {
            Dimension::Files => "files",
            Dimension::Region => "region",
        }
    }
}

/// One benchmark configuration: a VM of its own.
pub struct Case {
    pub dimension: Dimension,
    /// The `guestmemfs=` size, as the guest reports it (`region=`).
    pub region: &'static str,
    pub files: u64,
    pub suite: Suite,
}

/// A [`Case`] whose kernel parameters are spelled from the same literals
/// as its `region` and `files`.
macro_rules! case {
    ($dimension:ident, $region:literal, $files:literal, $memory:expr) => {
        Case {
            dimension: Dimension::$dimension,
            region: $region,
            files: $files,
            suite: Suite {
                name: concat!("bench_", $region, "_", stringify!($files)),
                about: concat!(
                    "benchmark: ",
                    stringify!($files),
                    " files in a ",
                    $region,
                    " region, mount after kexec"
                ),
                tests: &[TEST],
                add: &[
                    concat!("guestmemfs=", $region),
                    concat!("gtest.bench_files=", stringify!($files)),
                ],
                remove: &[],
                memory: $memory,
                expect: Expect::Pass,
            },
        }
    };
}

/// The configurations, in table order; the first of each dimension is
/// the base of its ratios.
pub const CASES: &[Case] = &[
    // A 128 GiB region has 131072 inode slots (one per MiB), room for
    // 100,000 files; its guest RAM is lazily backed.
    case!(Files, "128G", 10, Some("136G")),
    case!(Files, "128G", 10000, Some("136G")),
    case!(Files, "128G", 100000, Some("136G")),
    // 2G fits the default 4G guest, as in the guestmemfs suite.
    case!(Region, "2G", 10, None),
    case!(Region, "64G", 10, Some("72G")),
    case!(Region, "1T", 10, Some("1040G")),
];

/// A column of the table: a key of the `bench:` lines.
struct Metric {
    key: &'static str,
    header: &'static str,
    /// Header of its ratio column, if it has one.
    ratio: Option<&'static str>,
}

const METRICS: &[Metric] = &[
    Metric {
        key: "create_us",
        header: "create µs",
        ratio: Some("×create"),
    },
    Metric {
        key: "create_total_ms",
        header: "all creates ms",
        ratio: None,
    },
    Metric {
        key: "lookup_hit_us",
        header: "lookup hit µs",
        ratio: Some("×hit"),
    },
    Metric {
        key: "lookup_miss_us",
        header: "lookup miss µs",
        ratio: Some("×miss"),
    },
    Metric {
        key: "readdir_us_per_entry",
        header: "readdir µs/entry",
        ratio: Some("×readdir"),
    },
    Metric {
        key: "statfs_us",
        header: "statfs µs",
        ratio: Some("×statfs"),
    },
    Metric {
        key: "adopt_us",
        header: "adopt µs",
        ratio: Some("×adopt"),
    },
    Metric {
        key: "mount_us",
        header: "mount µs",
        ratio: Some("×mount"),
    },
    Metric {
        key: "kexec_lookup_hit_us",
        header: "hit after kexec µs",
        ratio: Some("×hit after kexec"),
    },
];

/// What one VM measured.
struct Row<'a> {
    case: &'a Case,
    /// Keys of its `bench:` lines; a later line overrides an earlier one.
    values: BTreeMap<String, String>,
    /// The `bench:` lines as printed.
    lines: Vec<String>,
    ok: bool,
    /// `ok`, or what went wrong.
    status: String,
    secs: u64,
}

impl Row<'_> {
    fn number(&self, key: &str) -> Option<f64> {
        self.values
            .get(key)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    }

    /// The size along the row's dimension.
    fn size(&self) -> Option<f64> {
        match self.case.dimension {
            Dimension::Files => Some(self.case.files as f64),
            Dimension::Region => memparse(self.case.region).map(|b| b as f64),
        }
    }
}

/// The `bench:` lines of a VM's KTAP and their key=value pairs.
fn bench_values(ktap: &[String]) -> (BTreeMap<String, String>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut lines = Vec::new();
    for l in ktap {
        let Some(fields) = l
            .strip_prefix("# ")
            .and_then(|d| d.strip_prefix(LINE_PREFIX))
        else {
            continue;
        };
        for (k, v) in fields.split_whitespace().filter_map(|f| f.split_once('=')) {
            values.insert(k.to_owned(), v.to_owned());
        }
        lines.push(fields.to_owned());
    }
    (values, lines)
}

/// Whether the VM's run of [`TEST`] passed, and if not, what happened.
fn verdict(outcome: &VmOutcome) -> (bool, String) {
    let diag_after = |prefix: &str| {
        outcome
            .ktap
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("# ")?.strip_prefix(prefix))
            .map(str::to_owned)
    };
    let result = outcome.results.iter().rev().find(|r| r.name == TEST);
    match (result, &outcome.timed_out) {
        (Some(r), _) if r.ok && !r.skipped() => (true, "ok".into()),
        (Some(r), _) if r.ok => (
            false,
            format!("skipped: {}", r.directive.as_deref().unwrap_or("")),
        ),
        (Some(_), _) => (
            false,
            format!(
                "failed: {}",
                diag_after(&format!("{TEST}: ")).unwrap_or_else(|| "see the serial log".into())
            ),
        ),
        (None, Some(why)) => {
            let progress = diag_after("bench-progress: ")
                .map(|p| format!("; last progress: {p}"))
                .unwrap_or_default();
            (false, format!("timeout: {why}{progress}"))
        }
        (None, None) => (
            false,
            "no result: the guest stopped (crash or panic?)".into(),
        ),
    }
}

/// Runs one configuration's VM and makes its row.
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
                lines: Vec::new(),
                ok: false,
                status: format!("error: {e}"),
                secs,
            }
        }
    };
    // Prints the KTAP and the end of the serial log when it failed.
    suites::report(&case.suite, &outcome, echo, &mut Tally::default());
    let (values, lines) = bench_values(&outcome.ktap);
    let (mut ok, mut status) = verdict(&outcome);
    let files = case.files.to_string();
    for (key, want) in [("region", case.region), ("files", files.as_str())] {
        if let Some(got) = values.get(key).filter(|got| *got != want) {
            (ok, status) = (
                false,
                format!("wrong configuration: the guest reports {key}={got}, expected {want}"),
            );
        }
    }
    println!(
        "xtask: VM {} finished in {secs}s: {status} (serial log: {})",
        case.suite.name,
        outcome.log.display()
    );
    for l in &lines {
        println!("  {l}");
    }
    Row {
        case,
        values,
        lines,
        ok,
        status,
        secs,
    }
}

/// A ratio to two or three significant digits.
fn ratio_text(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// The first row of `row`'s dimension: the base of its ratios.
fn base_of<'r, 'a>(rows: &'r [Row<'a>], row: &Row) -> &'r Row<'a> {
    rows.iter()
        .find(|b| b.case.dimension == row.case.dimension)
        .expect("a row is in its own dimension")
}

fn markdown_table(header: &[String], body: &[Vec<String>]) -> String {
    let cell = |c: &String| c.replace('|', "/");
    let mut out = String::new();
    let row = |out: &mut String, cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(cell).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    };
    row(&mut out, header);
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for cells in body {
        row(&mut out, cells);
    }
    out
}

/// One row per configuration: each metric, then each ratio against the
/// first configuration of the same dimension.
fn table(rows: &[Row]) -> String {
    let mut header: Vec<String> = ["dimension", "region", "files", "result", "VM s"]
        .map(String::from)
        .to_vec();
    header.extend(METRICS.iter().map(|m| m.header.to_owned()));
    header.extend(METRICS.iter().filter_map(|m| m.ratio.map(String::from)));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let base = base_of(rows, r);
            let mut cells = vec![
                r.case.dimension.name().to_owned(),
                r.case.region.to_owned(),
                r.case.files.to_string(),
                r.status.clone(),
                r.secs.to_string(),
            ];
            cells.extend(
                METRICS
                    .iter()
                    .map(|m| r.values.get(m.key).cloned().unwrap_or_else(|| "–".into())),
            );
            cells.extend(METRICS.iter().filter(|m| m.ratio.is_some()).map(|m| {
                match (r.number(m.key), base.number(m.key)) {
                    (Some(v), Some(b)) if b > 0.0 => ratio_text(v / b),
                    _ => "–".into(),
                }
            }));
            cells
        })
        .collect();
    markdown_table(&header, &body)
}

/// How a slope of log(time) against log(size) reads.
fn shape_word(slope: f64) -> &'static str {
    if slope < 0.25 {
        "flat: O(1) or O(log n)"
    } else if slope < 0.8 {
        "sublinear"
    } else if slope < 1.25 {
        "linear"
    } else {
        "superlinear"
    }
}

/// For each dimension and metric with a ratio: the overall ratio and the
/// slope of log(time) over log(size) on the last step measured.
fn shape(rows: &[Row]) -> String {
    let mut out = String::new();
    for dimension in [Dimension::Files, Dimension::Region] {
        for m in METRICS.iter().filter(|m| m.ratio.is_some()) {
            let points: Vec<(f64, f64, &Row)> = rows
                .iter()
                .filter(|r| r.case.dimension == dimension)
                .filter_map(|r| Some((r.size()?, r.number(m.key)?, r)))
                .filter(|(x, v, _)| *x > 0.0 && *v > 0.0)
                .collect();
            let [.., (x0, v0, r0), (x1, v1, r1)] = points.as_slice() else {
                continue;
            };
            let (_, first_v, first) = points[0];
            let label = |r: &Row| match dimension {
                Dimension::Files => format!("{} files", r.case.files),
                Dimension::Region => format!("{} region", r.case.region),
            };
            let slope = (v1 / v0).ln() / (x1 / x0).ln();
            let _ = writeln!(
                out,
                "- {}: {}: ×{} from {} to {}; last step {} → {} (size ×{}): slope {slope:.2}, {}",
                dimension.name(),
                m.header,
                ratio_text(v1 / first_v),
                label(first),
                label(r1),
                label(r0),
                label(r1),
                ratio_text(x1 / x0),
                shape_word(slope)
            );
        }
    }
    out
}

/// The first line of a command's output, or `unknown`.
fn first_line_of(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// When, what and where: date, kernel source, repository state, QEMU,
/// host CPU.
fn provenance(p: &Paths) -> String {
    let date = first_line_of(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let source = std::fs::read_to_string(p.out.join("kernel-source.txt"))
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown (no target/xtask/kernel-source.txt)".into());
    let kernel = match std::env::var_os("GMFS_KERNEL") {
        Some(k) => format!(
            "GMFS_KERNEL={} (last kernel source built: {source})",
            k.to_string_lossy()
        ),
        None => source,
    };
    let commit = first_line_of(
        Command::new("git")
            .arg("-C")
            .arg(&p.repo)
            .args(["describe", "--always", "--dirty"]),
    );
    let qemu = first_line_of(Command::new("qemu-system-x86_64").arg("--version"));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    format!(
        "- date: {date}\n- kernel source: {kernel}\n- repository: {commit}\n\
         - {qemu}, TCG, 2 vCPUs; host CPU: {cpu}, {} threads\n",
        crate::util::jobs()
    )
}

/// The whole report: provenance, table, shape, raw lines.
fn render(provenance: &str, rows: &[Row], total_secs: u64) -> String {
    let mut out = format!(
        "Benchmark run (`cargo xtask bench`, {total_secs} s in all):\n\n{provenance}\n{}",
        table(rows)
    );
    let shape = shape(rows);
    if !shape.is_empty() {
        let _ = write!(
            out,
            "\nShape: slope of log(time) against log(size) on the last step \
             (about 0: flat; about 1: linear in the size):\n\n{shape}"
        );
    }
    out.push_str("\nThe `bench:` lines of each VM:\n\n```\n");
    for r in rows {
        let _ = writeln!(out, "{}: {}", r.case.suite.name, r.status);
        for l in &r.lines {
            let _ = writeln!(out, "  {l}");
        }
    }
    out.push_str("```\n");
    out
}

/// Runs every configuration and reports; true if every VM passed.
pub fn run(p: &Paths, echo: Echo) -> Result<bool> {
    let start = Instant::now();
    let provenance = provenance(p);
    let mut rows = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        say(&format!(
            "bench {}/{}: guestmemfs={} with {} files, {} of guest RAM",
            i + 1,
            CASES.len(),
            case.region,
            case.files,
            case.suite.memory.unwrap_or("4G (default)")
        ));
        rows.push(run_case(p, case, echo));
    }
    let report = render(&provenance, &rows, start.elapsed().as_secs());
    let path = p.out.join("bench.md");
    std::fs::write(&path, &report).map_err(|e| format!("write {}: {e}", path.display()))?;
    println!("\n{report}");
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.case.suite.name)
        .collect();
    say(&format!("table written to {}", path.display()));
    if !failed.is_empty() {
        say(&format!("failed or timed out: {}", failed.join(", ")));
    }
    Ok(failed.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmfs_guest::tests::CATALOG;

    /// A VM outcome with these KTAP lines and result.
    fn outcome(ktap: &[&str], result: Option<bool>, timed_out: Option<&str>) -> VmOutcome {
        VmOutcome {
            results: result
                .map(|ok| crate::ktap::TestLine {
                    number: 1,
                    name: TEST.into(),
                    ok,
                    directive: None,
                })
                .into_iter()
                .collect(),
            ktap: ktap.iter().map(|s| s.to_string()).collect(),
            timed_out: timed_out.map(str::to_owned),
            done: result.is_some(),
            log: "vm.log".into(),
            streams: Vec::new(),
        }
    }

    #[test]
    fn cases_are_consistent() {
        for c in CASES {
            assert_eq!(
                c.suite.add,
                [
                    format!("guestmemfs={}", c.region),
                    format!("gtest.bench_files={}", c.files)
                ]
            );
            assert_eq!(c.suite.tests, [TEST]);
            // Guest RAM beyond the region: the default 4G for 2G, else a
            // lazily backed size with 8 GiB or more to spare.
            let region = memparse(c.region).unwrap();
            let memory = memparse(c.suite.memory.unwrap_or("4G")).unwrap();
            assert!(memory >= region + (2 << 30), "{}", c.suite.name);
            // 131072 inode slots per 128 GiB: the files and their directory fit.
            assert!(c.files + 2 <= (region >> 20).max(1024), "{}", c.suite.name);
        }
        let bench = CATALOG.iter().find(|t| t.name == TEST).unwrap();
        assert!(bench.timeout_s >= 1800);
        // Not part of `cargo xtask test`.
        assert!(suites::SUITES.iter().all(|s| !s.tests.contains(&TEST)));
        for d in [Dimension::Files, Dimension::Region] {
            let sizes: Vec<f64> = CASES
                .iter()
                .filter(|c| c.dimension == d)
                .map(|c| match d {
                    Dimension::Files => c.files as f64,
                    Dimension::Region => memparse(c.region).unwrap() as f64,
                })
                .collect();
            assert!(
                sizes.windows(2).all(|w| w[0] < w[1]),
                "{d:?} smallest first"
            );
        }
    }

    #[test]
    fn parses_bench_lines_only() {
        let ktap = [
            "# gtest: start guestmemfs_bench stage 1",
            "# bench: region=128G files=10 create_us=12.3 create_total_ms=0",
            "# bench-progress: created 10000 of 100000 files in 3 s",
            "# bench: region=128G files=10 adopt_us=n/a generation=2",
            "ok 1 guestmemfs_bench",
        ]
        .map(String::from);
        let (values, lines) = bench_values(&ktap);
        assert_eq!(lines.len(), 2);
        assert_eq!(values["create_us"], "12.3");
        assert_eq!(values["adopt_us"], "n/a");
        assert_eq!(values["files"], "10");
        assert!(!values.contains_key("created"));
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            verdict(&outcome(&[], Some(true), None)),
            (true, "ok".into())
        );
        let (ok, why) = verdict(&outcome(
            &["# guestmemfs_bench: stat bench/f000001: gone"],
            Some(false),
            None,
        ));
        assert!(!ok && why == "failed: stat bench/f000001: gone", "{why}");
        let (ok, why) = verdict(&outcome(
            &["# bench-progress: created 20000 of 100000 files in 1700 s"],
            None,
            Some("test guestmemfs_bench did not finish within 1800s"),
        ));
        assert!(!ok);
        assert_eq!(
            why,
            "timeout: test guestmemfs_bench did not finish within 1800s; \
             last progress: created 20000 of 100000 files in 1700 s"
        );
        assert!(!verdict(&outcome(&[], None, None)).0);
    }

    fn row<'a>(case: &'a Case, kv: &[(&str, &str)], ok: bool) -> Row<'a> {
        Row {
            case,
            values: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            lines: Vec::new(),
            ok,
            status: if ok { "ok" } else { "timeout: x | y" }.into(),
            secs: 60,
        }
    }

    #[test]
    fn table_ratios_and_shape() {
        let rows = vec![
            row(
                &CASES[0],
                &[("lookup_hit_us", "10"), ("adopt_us", "100")],
                true,
            ),
            row(
                &CASES[1],
                &[("lookup_hit_us", "11"), ("adopt_us", "10000")],
                true,
            ),
            row(
                &CASES[2],
                &[("lookup_hit_us", "12"), ("adopt_us", "100000")],
                true,
            ),
            row(&CASES[3], &[("adopt_us", "n/a")], true),
            row(&CASES[4], &[("adopt_us", "200")], true),
            row(&CASES[5], &[], false),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + rows.len());
        let cols = lines[0].matches('|').count();
        assert!(lines.iter().all(|l| l.matches('|').count() == cols), "{t}");
        let header: Vec<&str> = lines[0].split(" | ").collect();
        let cells = |i: usize| -> Vec<String> {
            lines[i]
                .split(" | ")
                .map(|c| c.trim_matches(['|', ' ']).to_owned())
                .collect()
        };
        let at = |name: &str| {
            header
                .iter()
                .position(|h| h.trim_matches(['|', ' ']) == name)
                .unwrap()
        };
        assert_eq!(cells(3)[at("×hit")], "1.10");
        assert_eq!(cells(4)[at("×adopt")], "1000");
        // A base without the value: no ratio; n/a shown as is.
        assert_eq!(cells(5)[at("×adopt")], "–");
        assert_eq!(cells(5)[at("adopt µs")], "n/a");
        assert_eq!(cells(7)[at("result")], "timeout: x / y");
        let s = shape(&rows);
        assert!(
            s.contains("files: lookup hit µs: ×1.20 from 10 files to 100000 files"),
            "{s}"
        );
        assert!(s.contains("files: adopt µs: ×1000"), "{s}");
        assert!(s.contains("slope 1.00, linear"), "{s}");
        assert!(s.contains("slope 0.04, flat"), "{s}");
        // The region dimension has one number only (n/a is not one).
        assert!(!s.contains("region: adopt"), "{s}");
        let report = render("- date: today\n", &rows, 42);
        assert!(report.contains("bench_1T_10: timeout"));
    }
}
