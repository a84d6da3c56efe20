// SPDX-License-Identifier: GPL-2.0-only
//! The `gtest.*` kernel command-line parameters that drive a test boot.
//!
//! - `gtest.run=a,b,c`: tests to run, in order (numbered 1..N in KTAP);
//! - `gtest.next=I`: index of the first test this boot runs (after kexec);
//! - `gtest.stage=S`: stage of test `I` that this boot runs (default 1);
//! - `gtest.kexec_extra=p1,p2`: parameters added to the command line of
//!   every kexec'd kernel (used to break a stage on purpose);
//! - `gtest.once=k1,k2`: the parameters with these keys were set by the
//!   previous stage for this boot only (a kexec drops them);
//! - `gtest.note=V`: what the previous stage expects the next one to find
//!   (e.g. a physical address), for checking; never the handed-over state;
//! - `gtest.bench_files=N`: files the benchmark test creates (N >= 1; set by
//!   `cargo xtask bench`);
//! - `gtest.lu_bench=GIB,MAPS,LEAF`: the iommufd live update benchmark's
//!   configuration (`cargo xtask bench-lu`).

/// What a test boot was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBoot {
    pub run: Vec<String>,
    pub next: usize,
    pub stage: u32,
    pub kexec_extra: Vec<String>,
    /// Keys of the parameters that hold for this boot only.
    pub once: Vec<String>,
    pub note: Option<String>,
    /// `gtest.bench_files=N` of the benchmark (`tests/bench.rs`).
    pub bench_files: Option<usize>,
    /// `gtest.lu_bench=GIB,MAPS,LEAF` (`tests/lu_bench.rs` checks it).
    pub lu_bench: Option<String>,
    tokens: Vec<String>,
}

impl TestBoot {
    /// Parses a kernel command line. Malformed `gtest.*` values are errors
    /// rather than defaults, so a harness bug cannot silently skip tests.
    pub fn parse(cmdline: &str) -> Result<Self, String> {
        let tokens: Vec<String> = cmdline.split_whitespace().map(str::to_owned).collect();
        let mut boot = TestBoot {
            run: Vec::new(),
            next: 0,
            stage: 1,
            kexec_extra: Vec::new(),
            once: Vec::new(),
            note: None,
            bench_files: None,
            lu_bench: None,
            tokens: Vec::new(),
        };
        for token in &tokens {
            let Some((key, value)) = token.split_once('=') else {
                continue;
            };
            match key {
                "gtest.run" => boot.run = split_list(value),
                "gtest.next" => {
                    boot.next = value
                        .parse()
                        .map_err(|_| format!("bad gtest.next value {value:?}"))?
                }
                "gtest.stage" => {
                    boot.stage = value
                        .parse()
                        .ok()
                        .filter(|s| *s >= 1)
                        .ok_or_else(|| format!("bad gtest.stage value {value:?}"))?
                }
                "gtest.kexec_extra" => boot.kexec_extra = split_list(value),
                "gtest.once" => boot.once = split_list(value),
                "gtest.note" => boot.note = Some(value.to_owned()),
                "gtest.lu_bench" => boot.lu_bench = Some(value.to_owned()),
                "gtest.bench_files" => {
                    boot.bench_files = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|n| *n >= 1)
                            .ok_or_else(|| format!("bad gtest.bench_files value {value:?}"))?,
                    )
                }
                _ => {}
            }
        }
        boot.tokens = tokens;
        Ok(boot)
    }

    /// True when this boot is the first of the run (prints the KTAP header).
    pub fn is_first_boot(&self) -> bool {
        self.next == 0 && self.stage == 1
    }

    /// Command line for the kernel that continues with test `next` at
    /// `stage`: this boot's parameters with the position replaced, this
    /// boot's one-boot parameters dropped, the `gtest.kexec_extra`
    /// parameters appended once and `once` (parameters for the next boot
    /// only) appended.
    pub fn next_cmdline(
        &self,
        next: usize,
        stage: u32,
        note: Option<&str>,
        once: &[String],
    ) -> String {
        let key = |t: &str| t.split_once('=').map_or(t, |(k, _)| k).to_owned();
        let mut out: Vec<String> = self
            .tokens
            .iter()
            .filter(|t| {
                !t.starts_with("gtest.next=")
                    && !t.starts_with("gtest.stage=")
                    && !t.starts_with("gtest.note=")
                    && !t.starts_with("gtest.once=")
                    && !self.once.contains(&key(t))
            })
            .cloned()
            .collect();
        for extra in &self.kexec_extra {
            if !out.contains(extra) {
                out.push(extra.clone());
            }
        }
        if !once.is_empty() {
            out.extend(once.iter().cloned());
            let keys: Vec<String> = once.iter().map(|t| key(t)).collect();
            out.push(format!("gtest.once={}", keys.join(",")));
        }
        out.push(format!("gtest.next={next}"));
        out.push(format!("gtest.stage={stage}"));
        if let Some(note) = note {
            out.push(format!("gtest.note={note}"));
        }
        out.join(" ")
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_lists() {
        let b = TestBoot::parse("console=ttyS0 gtest.run=a,b,,c quiet").unwrap();
        assert_eq!(b.run, ["a", "b", "c"]);
        assert_eq!((b.next, b.stage), (0, 1));
        assert!(b.is_first_boot());
    }

    #[test]
    fn rejects_bad_numbers() {
        assert!(TestBoot::parse("gtest.next=x").is_err());
        assert!(TestBoot::parse("gtest.stage=0").is_err());
        for bad in ["x", "0", "-1", "", "10k", "1e3"] {
            assert!(
                TestBoot::parse(&format!("gtest.bench_files={bad}")).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bench_files_is_optional_and_kept_over_kexec() {
        assert_eq!(TestBoot::parse("quiet").unwrap().bench_files, None);
        let b = TestBoot::parse("gtest.run=t gtest.bench_files=100000").unwrap();
        assert_eq!(b.bench_files, Some(100_000));
        let next = TestBoot::parse(&b.next_cmdline(0, 2, None, &[])).unwrap();
        assert_eq!(next.bench_files, Some(100_000));
    }

    #[test]
    fn next_cmdline_replaces_position_and_adds_extra_once() {
        let b =
            TestBoot::parse("a=1 gtest.run=t gtest.next=0 gtest.stage=1 gtest.kexec_extra=x=1,y")
                .unwrap();
        let next = b.next_cmdline(0, 2, None, &[]);
        assert_eq!(
            next,
            "a=1 gtest.run=t gtest.kexec_extra=x=1,y x=1 y gtest.next=0 gtest.stage=2"
        );
        let b2 = TestBoot::parse(&next).unwrap();
        assert_eq!((b2.next, b2.stage), (0, 2));
        assert_eq!(
            b2.next_cmdline(1, 1, Some("0x100"), &[]),
            "a=1 gtest.run=t gtest.kexec_extra=x=1,y x=1 y gtest.next=1 gtest.stage=1 gtest.note=0x100"
        );
        assert_eq!(
            TestBoot::parse("gtest.note=0x100").unwrap().note.as_deref(),
            Some("0x100")
        );
    }

    #[test]
    fn once_parameters_hold_for_one_boot() {
        let b = TestBoot::parse("a=1 gtest.run=t gtest.kexec_extra=x=1").unwrap();
        let once = ["f=3,100,0,1".to_owned(), "g".to_owned()];
        let next = b.next_cmdline(0, 2, None, &once);
        assert_eq!(
            next,
            "a=1 gtest.run=t gtest.kexec_extra=x=1 x=1 f=3,100,0,1 g gtest.once=f,g gtest.next=0 gtest.stage=2"
        );
        let b2 = TestBoot::parse(&next).unwrap();
        assert_eq!(b2.once, ["f", "g"]);
        assert_eq!(
            b2.next_cmdline(0, 3, None, &[]),
            "a=1 gtest.run=t gtest.kexec_extra=x=1 x=1 gtest.next=0 gtest.stage=3"
        );
        // A new value replaces the one of this boot.
        assert_eq!(
            b2.next_cmdline(0, 3, None, &["f=4,100,0,1".to_owned()]),
            "a=1 gtest.run=t gtest.kexec_extra=x=1 x=1 f=4,100,0,1 gtest.once=f gtest.next=0 gtest.stage=3"
        );
    }
}
