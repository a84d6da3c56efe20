// SPDX-License-Identifier: GPL-2.0-only
//! The guestmemfs benchmark that `cargo xtask bench` runs once per
//! configuration (docs/benchmarks.md). The VM boots with
//! `guestmemfs=<size> gtest.bench_files=N`.
//!
//! Stage 1 creates N empty files in one directory and times the creates,
//! lookups of existing and of missing names (with the dentry and inode
//! caches dropped first, so every stat reaches guestmemfs's lookup), a
//! full readdir and statfs; then kexecs. Stage 2 times the mount(2), reads
//! the adoption time the kernel logged, checks that the N files are there
//! and times one more lookup batch.
//!
//! Each measurement is one KTAP diagnostic line
//! `# bench: region=<size> files=<N> key=value ...` that the host parses;
//! a value the kernel does not report is `n/a`.

use super::gmfs::{mount, p, statfs, MNT};
use super::region::requested_size;
use super::{Ctx, Outcome, TestResult};
use crate::cmdline::TestBoot;
use crate::ktap::diag;
use crate::{pattern, sys};
use std::ffi::CString;
use std::fs::{self, File};
use std::time::{Duration, Instant};

/// How every measurement line starts (after KTAP's `# `).
pub const LINE_PREFIX: &str = "bench: ";
/// The directory (under the mount) that holds the files.
const DIR: &str = "bench";
/// Lookups per batch: names are stat'ed in rounds of at most this many
/// distinct names until this many stats are done.
const LOOKUPS: usize = 1000;
/// statfs(2) calls timed.
const STATFS_CALLS: usize = 1000;
/// Creates between two progress lines of a large run: a run that times
/// out still shows how far it got.
const PROGRESS_EVERY: usize = 10_000;
/// What the kernel logs when it adopts the handed-over filesystem; the
/// line ends with `, generation G, validated in U us`.
const ADOPTED: &str = "kept the filesystem from the previous kernel:";
/// Seeds of the random picks of existing names, before and after the
/// kexec.
const SEED_BEFORE: u64 = 0xbe_4c01;
const SEED_AFTER: u64 = 0xbe_4c02;

fn file_name(i: usize) -> CString {
    CString::new(format!("f{i:06}")).unwrap()
}

fn missing_name(i: usize) -> CString {
    CString::new(format!("missing{i:06}")).unwrap()
}

/// `bytes` as the `guestmemfs=` syntax writes it: 2G, 64G, 1T.
fn size_label(bytes: u64) -> String {
    let (t, g) = (1u64 << 40, 1u64 << 30);
    if bytes >= t && bytes.is_multiple_of(t) {
        format!("{}T", bytes / t)
    } else if bytes >= g && bytes.is_multiple_of(g) {
        format!("{}G", bytes / g)
    } else {
        format!("{}M", bytes >> 20)
    }
}

/// A time per operation in µs, to a precision that suits its size.
fn per_op(took: Duration, ops: usize) -> String {
    let us = took.as_secs_f64() * 1e6 / ops.max(1) as f64;
    if us >= 100.0 {
        format!("{us:.0}")
    } else if us >= 10.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.2}")
    }
}

/// `k` distinct indices of `0..n` (all of them if `k >= n`), in a
/// pseudo-random order fixed by `seed`: a partial Fisher-Yates shuffle
/// fed by the pattern generator.
fn sample(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let k = k.min(n);
    let mut random = vec![0u8; 8 * k];
    pattern::fill(seed, 0, &mut random);
    let mut idx: Vec<usize> = (0..n).collect();
    for (i, word) in random.chunks_exact(8).enumerate() {
        let r = u64::from_le_bytes(word.try_into().unwrap());
        idx.swap(i, i + (r % (n - i) as u64) as usize);
    }
    idx.truncate(k);
    idx
}

/// The figures of the kernel's adoption line: `... N inodes, ...,
/// generation G, validated in U us`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Adoption {
    inodes: Option<u64>,
    generation: Option<u64>,
    /// `None` for kernels that do not log the validation time.
    validated_us: Option<u64>,
}

fn parse_adoption(line: &str) -> Adoption {
    let mut a = Adoption::default();
    let Some((_, figures)) = line.split_once(ADOPTED) else {
        return a;
    };
    for part in figures.split(',').map(str::trim) {
        if let Some(n) = part.strip_suffix(" inodes") {
            a.inodes = n.parse().ok();
        } else if let Some(g) = part.strip_prefix("generation ") {
            a.generation = g.parse().ok();
        } else if let Some(us) = part
            .strip_prefix("validated in ")
            .and_then(|v| v.strip_suffix(" us"))
        {
            a.validated_us = us.parse().ok();
        }
    }
    a
}

fn or_na(v: Option<u64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

/// Prints the `# bench:` lines of one configuration.
struct Report {
    /// `region=<size> files=<N>`, on every line.
    tag: String,
}

impl Report {
    fn line(&self, fields: &str) {
        diag(&format!("{LINE_PREFIX}{} {fields}", self.tag));
    }
}

/// Stats every name of `names` in `dir`, in rounds until at least
/// [`LOOKUPS`] stats are done, dropping the dentry and inode caches before
/// each round so that every stat reaches the filesystem's lookup. Only
/// the stats are timed. Existing names must be found and missing ones
/// must give `ENOENT`. Returns the time per stat and the stats done.
fn lookup_batch(dir: &File, names: &[CString], exist: bool) -> Result<(String, usize), String> {
    let rounds = LOOKUPS.div_ceil(names.len().max(1));
    let mut spent = Duration::ZERO;
    for _ in 0..rounds {
        sys::drop_caches(2).map_err(|e| format!("drop_caches: {e}"))?;
        let start = Instant::now();
        for name in names {
            match (sys::stat_at(dir, name), exist) {
                (Ok(_), true) => {}
                (Err(e), false) if e.raw_os_error() == Some(libc::ENOENT) => {}
                (r, _) => {
                    return Err(format!(
                        "stat {DIR}/{}: {:?}, expected {}",
                        name.to_string_lossy(),
                        r.map(|_| "found"),
                        if exist { "the file" } else { "ENOENT" }
                    ))
                }
            }
        }
        spent += start.elapsed();
    }
    let done = rounds * names.len();
    Ok((per_op(spent, done), done))
}

/// Reads the whole directory in passes until at least [`LOOKUPS`] entries
/// are read (one pass from 1,000 files on); fails unless every pass lists
/// `n` entries. Returns the time per entry.
fn readdir_timed(n: usize) -> Result<String, String> {
    let passes = LOOKUPS.div_ceil(n);
    let mut spent = Duration::ZERO;
    for _ in 0..passes {
        let start = Instant::now();
        let listed = fs::read_dir(p(DIR))
            .and_then(|entries| {
                entries
                    .map(|e| e.map(|_| 1))
                    .sum::<std::io::Result<usize>>()
            })
            .map_err(|e| format!("readdir {DIR}: {e}"))?;
        spent += start.elapsed();
        if listed != n {
            return Err(format!("readdir {DIR} lists {listed} files, expected {n}"));
        }
    }
    Ok(per_op(spent, passes * n))
}

fn open_dir() -> Result<File, String> {
    File::open(p(DIR)).map_err(|e| format!("open {DIR}: {e}"))
}

fn existing(n: usize, seed: u64) -> Vec<CString> {
    sample(n, LOOKUPS, seed)
        .into_iter()
        .map(file_name)
        .collect()
}

/// Stage 1: create, look up, list, statfs; then kexec.
fn before_kexec(out: &Report, n: usize) -> TestResult {
    mount()?;
    let s = statfs(MNT)?;
    if s.ffree < n as u64 + 1 {
        return Err(format!(
            "{n} files and their directory need {} free inodes; the filesystem has {} of {}: boot with a larger guestmemfs= region",
            n + 1,
            s.ffree,
            s.files
        ));
    }
    fs::create_dir(p(DIR)).map_err(|e| format!("mkdir {DIR}: {e}"))?;
    let dir = open_dir()?;
    let names: Vec<CString> = (0..n).map(file_name).collect();
    let start = Instant::now();
    for (i, name) in names.iter().enumerate() {
        sys::create_at(&dir, name, 0o644)
            .map_err(|e| format!("create {DIR}/{}: {e}", name.to_string_lossy()))?;
        if (i + 1).is_multiple_of(PROGRESS_EVERY) && i + 1 < n {
            diag(&format!(
                "bench-progress: created {} of {n} files in {} s",
                i + 1,
                start.elapsed().as_secs()
            ));
        }
    }
    let took = start.elapsed();
    out.line(&format!(
        "create_us={} create_total_ms={} inodes={}",
        per_op(took, n),
        took.as_millis(),
        s.files
    ));
    let (hit, done) = lookup_batch(&dir, &existing(n, SEED_BEFORE), true)?;
    out.line(&format!("lookup_hit_us={hit} lookups={done}"));
    let missing: Vec<CString> = (0..LOOKUPS).map(missing_name).collect();
    let (miss, _) = lookup_batch(&dir, &missing, false)?;
    out.line(&format!("lookup_miss_us={miss}"));
    out.line(&format!("readdir_us_per_entry={}", readdir_timed(n)?));
    let start = Instant::now();
    for _ in 0..STATFS_CALLS {
        statfs(MNT)?;
    }
    out.line(&format!(
        "statfs_us={}",
        per_op(start.elapsed(), STATFS_CALLS)
    ));
    Ok(Outcome::Kexec)
}

/// Stage 2: mount, adoption time, all files there, one lookup batch.
fn after_kexec(out: &Report, n: usize) -> TestResult {
    let log = sys::kernel_log().map_err(|e| format!("kernel log: {e}"))?;
    // Outside the timing: only mount(2) itself is timed.
    fs::create_dir_all(MNT).map_err(|e| format!("mkdir {MNT}: {e}"))?;
    let start = Instant::now();
    let mounted = mount();
    let took = start.elapsed();
    if let Err(e) = mounted {
        let why = log
            .iter()
            .find(|l| l.contains("guestmemfs") && l.contains("refus"))
            .map_or(String::new(), |l| format!(" (kernel log: {l})"));
        return Err(format!("{e}{why}"));
    }
    out.line(&format!("mount_us={}", took.as_micros()));
    let adopted = log.iter().find(|l| l.contains(ADOPTED));
    match adopted {
        Some(l) => diag(&format!("kernel log: {l}")),
        None => diag(&format!("no \"{ADOPTED}\" line in the kernel log")),
    }
    let a = adopted.map(|l| parse_adoption(l)).unwrap_or_default();
    out.line(&format!(
        "adopt_us={} generation={} kept_inodes={}",
        or_na(a.validated_us),
        or_na(a.generation),
        or_na(a.inodes)
    ));
    // Fails unless all N files are listed.
    let readdir = readdir_timed(n)?;
    let dir = open_dir()?;
    let (hit, done) = lookup_batch(&dir, &existing(n, SEED_AFTER), true)?;
    out.line(&format!(
        "files_found={n} kexec_readdir_us_per_entry={readdir} kexec_lookup_hit_us={hit} kexec_lookups={done}"
    ));
    Ok(Outcome::Pass)
}

/// The benchmark; see the module documentation.
pub fn bench(ctx: &mut Ctx) -> TestResult {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let n = TestBoot::parse(&cmdline)?
        .bench_files
        .ok_or("no gtest.bench_files=N on the kernel command line (`cargo xtask bench` sets it)")?;
    let region = requested_size().ok_or("boot without guestmemfs=<size>")?;
    let out = Report {
        tag: format!("region={} files={n}", size_label(region)),
    };
    if ctx.stage == 1 {
        before_kexec(&out, n)
    } else {
        after_kexec(&out, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_distinct_in_range_and_reproducible() {
        for (n, k) in [(10, 1000), (1000, 1000), (100_000, 1000), (1, 1)] {
            let s = sample(n, k, 7);
            assert_eq!(s.len(), k.min(n));
            let mut sorted = s.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), s.len());
            assert!(s.iter().all(|&i| i < n));
            assert_eq!(s, sample(n, k, 7));
        }
        assert_ne!(sample(100_000, 1000, 1), sample(100_000, 1000, 2));
    }

    #[test]
    fn adoption_line() {
        let line = "guestmemfs: kept the filesystem from the previous kernel: 1007 inodes, 1009 of 1024 blocks used, 0 orphans freed, generation 5, validated in 1234 us";
        assert_eq!(
            parse_adoption(line),
            Adoption {
                inodes: Some(1007),
                generation: Some(5),
                validated_us: Some(1234)
            }
        );
        // A kernel without the validation time.
        let old = "guestmemfs: kept the filesystem from the previous kernel: 3 inodes, 1 of 1023 blocks used, 0 orphans freed, generation 2";
        let a = parse_adoption(old);
        assert_eq!((a.generation, a.validated_us), (Some(2), None));
        assert_eq!(or_na(a.validated_us), "n/a");
    }

    #[test]
    fn labels_and_formats() {
        assert_eq!(size_label(2 << 30), "2G");
        assert_eq!(size_label(128 << 30), "128G");
        assert_eq!(size_label(1 << 40), "1T");
        assert_eq!(size_label(1536 << 30), "1536G");
        assert_eq!(size_label(6 << 20), "6M");
        assert_eq!(per_op(Duration::from_micros(12_345), 1000), "12.3");
        assert_eq!(per_op(Duration::from_micros(1_500), 1000), "1.50");
        assert_eq!(per_op(Duration::from_millis(250), 1000), "250");
        assert_eq!(file_name(42).to_str().unwrap(), "f000042");
    }
}
