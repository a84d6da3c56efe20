// SPDX-License-Identifier: GPL-2.0-only
//! The guest side: static Rust binaries and the initramfs that carries
//! them, the kernel itself (for kexec) and the upstream kselftests.

use crate::kernel::KSELFTESTS;
use crate::util::{run, say, Paths, Result};
use std::fs;
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::Command;

pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

/// Builds PID 1 and the in-guest tests as one static binary.
pub fn build_guest(p: &Paths) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(cargo).current_dir(&p.repo).args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "gmfs-guest",
            "--target",
            GUEST_TARGET,
        ]),
        "build of the guest binaries (gmfs-guest)",
    )?;
    Ok(p.repo
        .join("target")
        .join(GUEST_TARGET)
        .join("release/gmfs-init"))
}

/// Packs the initramfs: /init, /boot/bzImage (the kernel to kexec into),
/// /bin/kselftest/*, and /dev/console so PID 1 has a console before it
/// mounts devtmpfs.
pub fn build_initramfs(p: &Paths, init: &PathBuf) -> Result<()> {
    let read = |path: &PathBuf| fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let out = p.initramfs();
    let file = fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut w = initramfs::Writer::new(BufWriter::new(file));
    let io = |e: std::io::Error| format!("writing {}: {e}", out.display());
    for dir in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "mnt",
        "bin",
        "bin/kselftest",
        "boot",
        "etc",
    ] {
        w.dir(dir, 0o755).map_err(io)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    w.file("init", 0o755, &read(init)?).map_err(io)?;
    w.file("boot/bzImage", 0o644, &read(&p.bzimage())?)
        .map_err(io)?;
    for (dir, binaries) in KSELFTESTS {
        for bin in *binaries {
            let path = p.kselftests().join(dir).join(bin);
            w.file(&format!("bin/kselftest/{bin}"), 0o755, &read(&path)?)
                .map_err(io)?;
        }
    }
    w.finish().map_err(io)?;
    let size = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    say(&format!(
        "initramfs: {} ({} KiB)",
        out.display(),
        size >> 10
    ));
    Ok(())
}
