// SPDX-License-Identifier: GPL-2.0-only
//! Paths, command execution and error reporting shared by all subcommands.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Errors are one line meant for a human; the log path says where to dig.
pub type Result<T> = std::result::Result<T, String>;

/// Where things live. Everything large is outside the repository.
pub struct Paths {
    /// Repository root.
    pub repo: PathBuf,
    /// `$GMFS_CACHE` or `~/.cache/guestmemfs`: kernel source, build, ccache.
    pub cache: PathBuf,
    /// `target/xtask` in the repository: logs and the initramfs.
    pub out: PathBuf,
}

impl Paths {
    pub fn new() -> Result<Self> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("xtask is not inside the repository")?
            .to_path_buf();
        let cache = match std::env::var_os("GMFS_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
                PathBuf::from(home).join(".cache/guestmemfs")
            }
        };
        let out = repo.join("target/xtask");
        for dir in [&cache, &out, &out.join("logs")] {
            fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        Ok(Paths { repo, cache, out })
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.out.join("logs").join(name)
    }
    /// Kernel work tree: pristine source + patch series + overlay.
    pub fn tree(&self) -> PathBuf {
        self.cache.join("linux")
    }
    /// Kernel build directory (`make O=`).
    pub fn build(&self) -> PathBuf {
        self.cache.join("build")
    }
    /// The kernel the VMs boot: the build's, or `$GMFS_KERNEL` (a saved
    /// bzImage, to show that new tests fail on an older kernel).
    pub fn bzimage(&self) -> PathBuf {
        match std::env::var_os("GMFS_KERNEL") {
            Some(k) => PathBuf::from(k),
            None => self.build().join("arch/x86/boot/bzImage"),
        }
    }
    pub fn kselftests(&self) -> PathBuf {
        self.cache.join("kselftests")
    }
    pub fn initramfs(&self) -> PathBuf {
        self.out.join("initramfs.cpio")
    }
}

/// Prints a progress line of the harness.
pub fn say(text: &str) {
    println!("xtask: {text}");
}

/// Runs a command with inherited output; fails with `what` on non-zero.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Runs a command and returns its stdout; stderr is included in errors.
pub fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(format!("{what} failed ({}): {last}", out.status))
    }
}

/// Runs a long command with all output going to `log`. On failure, prints
/// the error lines found in the log (not the whole log) and fails.
pub fn run_logged(cmd: &mut Command, log: &Path, what: &str) -> Result<()> {
    let file = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let status = cmd
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        return Ok(());
    }
    let lines = error_lines(log, 20);
    eprintln!(
        "xtask: {what} failed after {}s; error lines from {}:",
        start.elapsed().as_secs(),
        log.display()
    );
    for l in &lines {
        eprintln!("  {l}");
    }
    Err(format!(
        "{what} failed ({status}), full log: {}",
        log.display()
    ))
}

/// The lines of a build log that say what went wrong.
pub fn error_lines(log: &Path, max: usize) -> Vec<String> {
    let Ok(file) = fs::File::open(log) else {
        return Vec::new();
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(|l| l.ok()).collect();
    let mut picked: Vec<String> = all
        .iter()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("undefined reference") || l.contains("fatal")
        })
        .take(max)
        .cloned()
        .collect();
    if picked.is_empty() {
        picked = all.iter().rev().take(max).rev().cloned().collect();
    }
    picked
}

/// Looks a program up in PATH (and ~/.cargo/bin, where cargo installs).
pub fn which(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// PATH with ~/.cargo/bin appended, for tools installed by `cargo install`.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        let bin = PathBuf::from(home).join(".cargo/bin");
        if !dirs.contains(&bin) {
            dirs.push(bin);
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Free space in bytes of the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let out = output(
        Command::new("df").arg("-Pk").arg(path),
        "df (free disk space)",
    )?;
    let line = out.lines().nth(1).ok_or("df printed nothing")?;
    let avail: u64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("cannot parse df output {line:?}"))?;
    Ok(avail * 1024)
}

/// Number of CPUs to build with.
pub fn jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// sha256 of a file, as hex.
pub fn sha256(path: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg(path), "sha256sum")?;
    Ok(out.split_whitespace().next().unwrap_or("").to_owned())
}

/// Writes `data` to `path` only if the content differs, so make sees an
/// unchanged mtime for unchanged files. Replaces rather than truncates.
pub fn write_if_changed(path: &Path, data: &[u8]) -> Result<bool> {
    if fs::read(path).ok().as_deref() == Some(data) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("xtask-tmp");
    fs::write(&tmp, data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
    Ok(true)
}

/// Seconds since `start`, for progress lines.
pub fn secs(start: Instant) -> u64 {
    start.elapsed().as_secs()
}
