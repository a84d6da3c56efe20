// SPDX-License-Identifier: GPL-2.0-only
//! `cargo xtask setup`: installs every prerequisite on a Debian 12 machine.
//! Idempotent: checks first, installs only what is missing, says what.

use crate::util::{output, run, say, which, Result};
use std::fs;
use std::path::Path;
use std::process::Command;

/// Debian packages for the kernel build, the kselftests and the harness.
const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "bc",
    "bison",
    "flex",
    "cpio",
    "kmod",
    "dwarves",
    "libelf-dev",
    "libssl-dev",
    "libclang-19-dev",
    "ccache",
    "libcap-dev",
    "patch",
    "xz-utils",
    "rsync",
];

/// Where `libclang-19-dev` puts libclang; the kernel needs >= 17.
pub const LIBCLANG_PATH: &str = "/usr/lib/llvm-19/lib";
/// Oldest bindgen the Linux 7.3 Rust build accepts.
const BINDGEN_MIN: (u32, u32, u32) = (0, 71, 1);
const BINDGEN_VERSION: &str = "0.73.2";
/// QEMU 8 is the first with the `igb` device.
const QEMU_MIN_MAJOR: u32 = 8;
const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

pub fn setup() -> Result<()> {
    let sudo = root_prefix()?;
    apt_packages(&sudo)?;
    qemu(&sudo)?;
    rust()?;
    say("setup: all prerequisites present");
    Ok(())
}

/// `sudo` when not root (and sudo exists), else nothing.
fn root_prefix() -> Result<Vec<String>> {
    let uid = output(Command::new("id").arg("-u"), "id -u")?;
    if uid.trim() == "0" {
        return Ok(Vec::new());
    }
    if which("sudo").is_some() {
        return Ok(vec!["sudo".into(), "-n".into()]);
    }
    Err("setup needs root (or sudo) to install Debian packages".into())
}

fn apt(sudo: &[String], args: &[&str], what: &str) -> Result<()> {
    let mut cmd = Command::new(sudo.first().map(String::as_str).unwrap_or("apt-get"));
    if !sudo.is_empty() {
        cmd.args(&sudo[1..]).arg("apt-get");
    }
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
    run(&mut cmd, what)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_packages(sudo: &[String]) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "setup: installing Debian packages: {}",
        missing.join(" ")
    ));
    apt(sudo, &["update", "-q"], "apt-get update")?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(sudo, &args, "apt-get install")
}

fn codename() -> Result<String> {
    let text =
        fs::read_to_string("/etc/os-release").map_err(|e| format!("/etc/os-release: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| "no VERSION_CODENAME in /etc/os-release".into())
}

/// Major version of the installed qemu-system-x86_64, if any.
pub fn qemu_major() -> Option<u32> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
}

fn qemu(sudo: &[String]) -> Result<()> {
    if qemu_major().is_some_and(|m| m >= QEMU_MIN_MAJOR) {
        return Ok(());
    }
    let suite = format!("{}-backports", codename()?);
    let list = format!("/etc/apt/sources.list.d/{suite}.sources");
    let configured = Path::new(&list).exists()
        || Command::new("grep")
            .args([
                "-rqs",
                &suite,
                "/etc/apt/sources.list",
                "/etc/apt/sources.list.d",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !configured {
        say(&format!(
            "setup: adding the {suite} apt source ({list}) for QEMU >= {QEMU_MIN_MAJOR}"
        ));
        let text = format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        let tmp = std::env::temp_dir().join("xtask-backports.sources");
        fs::write(&tmp, text).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(sudo.first().map(String::as_str).unwrap_or("cp"));
        if !sudo.is_empty() {
            cmd.args(&sudo[1..]).arg("cp");
        }
        run(cmd.arg(&tmp).arg(&list), "install apt source")?;
    }
    say(&format!("setup: installing qemu-system-x86 from {suite}"));
    apt(sudo, &["update", "-q"], "apt-get update")?;
    apt(
        sudo,
        &[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-t",
            &suite,
            "qemu-system-x86",
        ],
        "apt-get install qemu-system-x86",
    )?;
    match qemu_major() {
        Some(m) if m >= QEMU_MIN_MAJOR => Ok(()),
        other => Err(format!(
            "qemu-system-x86_64 is {other:?} after installing from {suite}; need >= {QEMU_MIN_MAJOR}"
        )),
    }
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().nth(1)?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

fn rust() -> Result<()> {
    let components = output(
        Command::new("rustup").args(["component", "list", "--installed"]),
        "rustup component list",
    )?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        say("setup: installing the rust-src component (kernel Rust needs core's source)");
        run(
            Command::new("rustup").args(["component", "add", "rust-src"]),
            "rustup component add rust-src",
        )?;
    }
    for component in ["rustfmt", "clippy"] {
        if !components.lines().any(|l| l.starts_with(component)) {
            say(&format!("setup: installing the {component} component"));
            run(
                Command::new("rustup").args(["component", "add", component]),
                "rustup component add",
            )?;
        }
    }
    let targets = output(
        Command::new("rustup").args(["target", "list", "--installed"]),
        "rustup target list",
    )?;
    if !targets.lines().any(|l| l.trim() == MUSL_TARGET) {
        say(&format!(
            "setup: installing the {MUSL_TARGET} target (static guest binaries)"
        ));
        run(
            Command::new("rustup").args(["target", "add", MUSL_TARGET]),
            "rustup target add",
        )?;
    }
    let bindgen_ok = which("bindgen")
        .and_then(|b| Command::new(b).arg("--version").output().ok())
        .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)))
        .is_some_and(|v| v >= BINDGEN_MIN);
    if !bindgen_ok {
        say(&format!(
            "setup: installing bindgen-cli {BINDGEN_VERSION} with cargo (~2 min)"
        ));
        run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
                "install",
                "--locked",
                "bindgen-cli",
                "--version",
                BINDGEN_VERSION,
            ]),
            "cargo install bindgen-cli",
        )?;
    }
    Ok(())
}

/// Tools the kernel build needs, checked before starting it so a missing
/// one is a single clear line.
pub fn check_build_tools() -> Result<()> {
    for tool in [
        "make",
        "gcc",
        "flex",
        "bison",
        "bc",
        "perl",
        "ccache",
        "patch",
        "bindgen",
        "rustc",
        "qemu-system-x86_64",
        "dpkg-deb",
        "apt-get",
        "xz",
    ] {
        if which(tool).is_none() {
            return Err(format!("missing tool `{tool}`; run `cargo xtask setup`"));
        }
    }
    if !Path::new(LIBCLANG_PATH).join("libclang.so").exists()
        && !Path::new(LIBCLANG_PATH).join("libclang-19.so").exists()
    {
        return Err(format!(
            "libclang 19 not found in {LIBCLANG_PATH}; run `cargo xtask setup`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindgen_versions() {
        assert_eq!(parse_version("bindgen 0.73.2"), Some((0, 73, 2)));
        assert!(parse_version("bindgen 0.60.1").unwrap() < BINDGEN_MIN);
        assert_eq!(parse_version("garbage"), None);
    }
}
