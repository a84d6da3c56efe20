// SPDX-License-Identifier: GPL-2.0-only
//! The DMA blackout benchmark of `docs/benchmarks.md`: one VM, the same
//! UDP stream into the igb through two live updates of the host kernel,
//! ours (`vfio_lu_stream`: device preserved running) and the upstream-style
//! path (`vfio_lu_stream_reset`: ring in a LUO memfd, device stopped by the
//! kexec, reset at open, ring re-initialised). QEMU's trace gives the time
//! of every device write; the console gives the VMM's freeze and adoption.

use crate::stream::{Mark, StreamReport};
use crate::suites::{self, Expect, Suite};
use crate::util::{Paths, Result};
use crate::vm::Echo;

const OURS: &str = "vfio_lu_stream";
const BASELINE: &str = "vfio_lu_stream_reset";

const SUITE: Suite = Suite {
    name: "bench-dma",
    about: "DMA blackout through a live update: device kept running vs reset and re-mapped",
    tests: &[OURS, BASELINE],
    add: &["guestmemfs=2G"],
    remove: &[],
    memory: None,
    expect: Expect::Pass,
};

/// What one live update cost, from one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// Longest gap between two device writes (ms).
    pub blackout_ms: f64,
    /// The send interval (ms), the floor of the above.
    pub interval_ms: f64,
    /// Freeze (the old VMM's last poll) to the new VMM's re-bind (ms).
    pub downtime_ms: f64,
    /// Device writes between the kexec and the new kernel's userspace.
    pub writes_in_kexec: usize,
    /// Most frames waiting in the ring, and its size.
    pub peak: u64,
    pub ring: u64,
    pub sent: u64,
    pub lost: u64,
}

fn field(r: &StreamReport, key: &str) -> Result<u64> {
    r.result
        .as_ref()
        .and_then(|m| m.get(key))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{}: no `{key}` in the guest's result", r.test))
}

fn marker(r: &StreamReport, want: impl Fn(&Mark) -> bool) -> Result<u64> {
    r.markers
        .iter()
        .find(|m| want(&m.mark))
        .map(|m| m.t_ns)
        .ok_or_else(|| format!("{}: a live update marker is missing", r.test))
}

/// The cost of the (first) live update in `r`.
pub fn cost(r: &StreamReport) -> Result<Cost> {
    let writes = r
        .device_writes
        .as_ref()
        .filter(|w| w.len() > 1)
        .ok_or_else(|| format!("{}: no traced device writes", r.test))?;
    let blackout = writes
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0);
    let freeze = marker(r, |m| matches!(m, Mark::Freeze { .. }))?;
    let kexec = marker(r, |m| matches!(m, Mark::Kexec { .. }))?;
    let userspace = marker(r, |m| matches!(m, Mark::Userspace { .. }))?;
    let adopted = marker(r, |m| matches!(m, Mark::Adopted { .. }))?;
    let sent = field(r, "sent")?;
    Ok(Cost {
        blackout_ms: blackout as f64 / 1e6,
        interval_ms: 1e3 / f64::from(r.rate.max(1)),
        downtime_ms: adopted.saturating_sub(freeze) as f64 / 1e6,
        writes_in_kexec: writes
            .iter()
            .filter(|&&t| (kexec..userspace).contains(&t))
            .count(),
        peak: field(r, "peak")?,
        ring: field(r, "ring")?,
        sent,
        lost: sent.saturating_sub(field(r, "received")?),
    })
}

/// The markdown table: one row per metric, both paths and their ratio.
pub fn table(ours: &Cost, base: &Cost) -> Vec<String> {
    let ratio = |b: f64, o: f64| {
        if o > 0.0 {
            format!("{:.0}x", b / o)
        } else {
            "-".to_owned()
        }
    };
    vec![
        "| per live update | device kept running (ours) | reset + re-map (upstream-style) | upstream-style / ours |".into(),
        "|---|---|---|---|".into(),
        format!(
            "| DMA blackout: longest gap between device writes (send interval {:.1} ms) | {:.1} ms | {:.1} ms | {} |",
            ours.interval_ms,
            ours.blackout_ms,
            base.blackout_ms,
            ratio(base.blackout_ms, ours.blackout_ms)
        ),
        format!(
            "| device writes between the runner's kexec line (the kernel is then loaded, ~1 s, and entered) and the new kernel's userspace | {} | {} | - |",
            ours.writes_in_kexec, base.writes_in_kexec
        ),
        format!(
            "| VMM downtime: freeze to the device re-bound | {:.0} ms | {:.0} ms | {} |",
            ours.downtime_ms,
            base.downtime_ms,
            ratio(base.downtime_ms, ours.downtime_ms)
        ),
        format!(
            "| frames lost of those sent | {} of {} | {} of {} | - |",
            ours.lost, ours.sent, base.lost, base.sent
        ),
        format!(
            "| frames waiting in the ring at the peak | {} of {} | {} of {} | - |",
            ours.peak, ours.ring, base.peak, base.ring
        ),
    ]
}

pub fn run(p: &Paths, echo: Echo) -> Result<bool> {
    let outcome = suites::run_suite_vm(p, &SUITE, echo)?;
    if let Some(why) = &outcome.timed_out {
        return Err(format!("bench-dma: {why}"));
    }
    let failed: Vec<&str> = outcome
        .results
        .iter()
        .filter(|t| !t.ok)
        .map(|t| t.name.as_str())
        .collect();
    if !failed.is_empty() || outcome.results.len() != SUITE.tests.len() {
        return Err(format!(
            "bench-dma: guest tests failed: {failed:?} (log: {})",
            outcome.log.display()
        ));
    }
    let of = |test: &str| {
        outcome
            .streams
            .iter()
            .find(|s| s.test == test)
            .ok_or_else(|| format!("bench-dma: no stream of {test}"))
            .and_then(cost)
    };
    let (ours, base) = (of(OURS)?, of(BASELINE)?);
    let mut lines = vec![
        "DMA blackout through a live update (QEMU TCG, igb, 500 frames/s of UDP from the host):"
            .to_owned(),
        String::new(),
    ];
    lines.extend(table(&ours, &base));
    let text = lines.join("\n") + "\n";
    print!("\n{text}");
    let out = p.out.join("bench-dma.md");
    std::fs::write(&out, &text).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nxtask: table written to {}", out.display());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Marker;

    fn report(test: &str, writes: Vec<u64>, lost: u64) -> StreamReport {
        let m = |t_ns, mark| Marker { t_ns, mark };
        StreamReport {
            test: test.into(),
            rate: 500,
            device_writes: Some(writes),
            markers: vec![
                m(
                    1_000_000_000,
                    Mark::Freeze {
                        last: Some(1),
                        head: Some(2),
                    },
                ),
                m(1_100_000_000, Mark::Kexec { stage: 2 }),
                m(5_000_000_000, Mark::Userspace { stage: 2 }),
                m(
                    6_000_000_000,
                    Mark::Adopted {
                        buffered: 3,
                        first: None,
                        last: None,
                    },
                ),
            ],
            result: Some(crate::stream::key_values(&format!(
                "sent=100 received={} peak=7 ring=32768",
                100 - lost
            ))),
            ..StreamReport::default()
        }
    }

    #[test]
    fn costs_and_ratio() {
        let ours = cost(&report(
            OURS,
            vec![0, 2_000_000, 1_500_000_000, 1_502_000_000],
            0,
        ))
        .unwrap();
        assert_eq!(ours.writes_in_kexec, 2);
        assert!((ours.blackout_ms - 1498.0).abs() < 1e-9);
        assert!((ours.downtime_ms - 5000.0).abs() < 1e-9);
        assert_eq!((ours.lost, ours.sent, ours.peak), (0, 100, 7));
        let base = cost(&report(BASELINE, vec![0, 7_000_000_000], 40)).unwrap();
        assert_eq!(base.writes_in_kexec, 0);
        let t = table(&ours, &base);
        assert!(t[2].contains("| 1498.0 ms | 7000.0 ms | 5x |"), "{}", t[2]);
        assert!(
            t[5].contains("0 of 100 | 60 of 100") || t[5].contains("40 of 100"),
            "{}",
            t[5]
        );
    }

    #[test]
    fn a_stream_without_writes_has_no_cost() {
        assert!(cost(&report(OURS, vec![], 0)).is_err());
    }
}
