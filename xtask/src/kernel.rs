// SPDX-License-Identifier: GPL-2.0-only
//! Kernel source, work tree (pristine 7.3 + patch series + overlay),
//! configuration and build, and the upstream kselftests we run in the VM.

use crate::setup::{check_build_tools, LIBCLANG_PATH};
use crate::util::{
    free_bytes, jobs, output, path_with_cargo_bin, run_logged, say, secs, sha256, write_if_changed,
    Paths, Result,
};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Debian package with the upstream source; any 7.3.y is accepted.
const SOURCE_PACKAGE: &str = "linux-source-7.3";
const SOURCE_SUITE: &str = "trixie-backports";
const SOURCE_TARBALL: &str = "usr/src/linux-source-7.3.tar.xz";
const CONFIG_FRAGMENT: &str = "kconfig/guestmemfs.config";
/// Top-level directories of the repository that overlay the kernel tree.
const OVERLAY_ROOTS: &[&str] = &[
    "arch",
    "drivers",
    "fs",
    "include",
    "kernel",
    "lib",
    "mm",
    "rust",
    "tools/testing",
];
/// Upstream kselftest directories built and copied into the initramfs.
pub const KSELFTESTS: &[(&str, &[&str])] = &[
    (
        "iommu",
        &["iommufd", "iommufd_fail_nth", "iommufd_guestmemfs"],
    ),
    ("liveupdate", &["liveupdate"]),
    ("vfio", &["vfio_pci_driver_test", "vfio_dma_mapping_test"]),
];

/// The unpacked upstream source.
pub struct Source {
    pub version: String,
    pub sha256: String,
    pub tree: PathBuf,
}

fn apt_options(p: &Paths) -> Result<Vec<String>> {
    let apt = p.cache.join("apt");
    for dir in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(dir)).map_err(|e| e.to_string())?;
    }
    let list = apt.join("sources.list");
    write_if_changed(
        &list,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian {SOURCE_SUITE} main\n"
        )
        .as_bytes(),
    )?;
    Ok(vec![
        format!("-oDir::Etc::SourceList={}", list.display()),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={}", apt.join("lists").display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        "-oAPT::Sandbox::User=root".into(),
    ])
}

fn downloaded_debs(dl: &Path) -> Vec<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dl)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    name.starts_with(&format!("{SOURCE_PACKAGE}_")) && name.ends_with("_all.deb")
                })
                .collect()
        })
        .unwrap_or_default();
    debs.sort();
    debs
}

fn deb_version(deb: &Path) -> Result<String> {
    output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .arg("Version"),
        "dpkg-deb -f Version",
    )
    .map(|v| v.trim().to_owned())
}

/// Downloads (if needed) and unpacks linux-source-7.3 from Debian.
pub fn fetch_source(p: &Paths) -> Result<Source> {
    let dl = p.cache.join("dl");
    fs::create_dir_all(&dl).map_err(|e| e.to_string())?;
    let opts = apt_options(p)?;
    let index = output(
        Command::new("apt-get").args(&opts).args(["-q", "update"]),
        &format!("apt-get update ({SOURCE_SUITE}, for {SOURCE_PACKAGE})"),
    );
    let candidate = index.and_then(|_| {
        let policy = output(
            Command::new("apt-cache")
                .args(&opts)
                .args(["policy", SOURCE_PACKAGE]),
            "apt-cache policy",
        )?;
        policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .map(str::to_owned)
            .ok_or_else(|| format!("{SOURCE_PACKAGE} is not in {SOURCE_SUITE}"))
    });
    let deb = match candidate {
        Ok(version) => {
            let have = downloaded_debs(&dl)
                .into_iter()
                .find(|d| deb_version(d).ok().as_deref() == Some(version.as_str()));
            match have {
                Some(deb) => deb,
                None => {
                    say(&format!(
                        "downloading {SOURCE_PACKAGE} {version} from {SOURCE_SUITE}"
                    ));
                    output(
                        Command::new("apt-get")
                            .args(&opts)
                            .args(["-q", "download", &format!("{SOURCE_PACKAGE}={version}")])
                            .current_dir(&dl),
                        &format!("download of {SOURCE_PACKAGE} {version}"),
                    )?;
                    downloaded_debs(&dl)
                        .into_iter()
                        .find(|d| deb_version(d).ok().as_deref() == Some(version.as_str()))
                        .ok_or_else(|| {
                            format!(
                                "{SOURCE_PACKAGE} {version} downloaded but not found in {}",
                                dl.display()
                            )
                        })?
                }
            }
        }
        // Offline: a package downloaded earlier is good enough.
        Err(e) => match downloaded_debs(&dl).pop() {
            Some(deb) => {
                say(&format!(
                    "warning: {e}; using the already downloaded {}",
                    deb.display()
                ));
                deb
            }
            None => return Err(e),
        },
    };
    let version = deb_version(&deb)?;
    let sha = sha256(&deb)?;
    let root = p.cache.join("src").join(&version);
    let tree = root.join("linux-source-7.3");
    if !root.join(".complete").exists() {
        say(&format!(
            "unpacking {} into {}",
            deb.display(),
            root.display()
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let script = format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xO ./{SOURCE_TARBALL} | tar -xJ -C '{}'",
            deb.display(),
            root.display()
        );
        output(
            Command::new("bash").args(["-o", "pipefail", "-c", &script]),
            "unpacking the kernel source",
        )?;
        if !tree.join("Makefile").exists() {
            return Err(format!(
                "{} has no Makefile after unpacking",
                tree.display()
            ));
        }
        fs::write(root.join(".complete"), &sha).map_err(|e| e.to_string())?;
    }
    Ok(Source {
        version,
        sha256: sha,
        tree,
    })
}

/// The files a patch touches, from its `---`/`+++` lines.
fn patch_files(text: &str) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for line in text.lines() {
        for prefix in ["--- a/", "+++ b/"] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let path = rest.split('\t').next().unwrap_or(rest).trim_end();
                files.insert(path.to_owned());
            }
        }
    }
    files
}

/// Reads `patches/series`: patch file names in order, `#` comments.
pub fn series(p: &Paths) -> Result<Vec<PathBuf>> {
    let dir = p.repo.join("patches");
    let text =
        fs::read_to_string(dir.join("series")).map_err(|e| format!("patches/series: {e}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| dir.join(l))
        .collect())
}

/// Applies the series to copies of the pristine files in a scratch
/// directory and returns the resulting content of every touched file
/// (`None`: the series deletes it).
fn patched_files(p: &Paths, pristine: &Path) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
    let scratch = p.cache.join("patch-scratch");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let mut touched = BTreeSet::new();
    for patch in series(p)? {
        let name = patch
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(&patch).map_err(|e| format!("patch {name}: {e}"))?;
        for file in patch_files(&text) {
            let dst = scratch.join(&file);
            if !dst.exists() && pristine.join(&file).exists() && !touched.contains(&file) {
                fs::create_dir_all(dst.parent().unwrap()).map_err(|e| e.to_string())?;
                fs::copy(pristine.join(&file), &dst).map_err(|e| e.to_string())?;
            }
            touched.insert(file);
        }
        let out = Command::new("patch")
            .args([
                "-p1",
                "--batch",
                "--forward",
                "--no-backup-if-mismatch",
                "-r",
                "-",
                "-d",
            ])
            .arg(&scratch)
            .arg("-i")
            .arg(&patch)
            .output()
            .map_err(|e| format!("cannot run patch: {e}"))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut file = "?".to_owned();
            let mut reason = "does not apply".to_owned();
            for l in text.lines() {
                if let Some(f) = l.strip_prefix("patching file ") {
                    file = f.trim_matches('\'').to_owned();
                } else if l.contains("FAILED") || l.contains("malformed") || l.contains("Reversed")
                {
                    reason = l.trim().to_owned();
                    break;
                }
            }
            return Err(format!("patch {name} does not apply to {file}: {reason}"));
        }
    }
    let mut out = BTreeMap::new();
    for file in touched {
        let path = scratch.join(&file);
        out.insert(file, fs::read(&path).ok());
    }
    Ok(out)
}

pub fn overlay_files(repo: &Path) -> Result<Vec<String>> {
    fn walk(repo: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(repo, &path, out)?;
            } else {
                out.push(
                    path.strip_prefix(repo)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for root in OVERLAY_ROOTS {
        let dir = repo.join(root);
        if dir.is_dir() {
            walk(repo, &dir, &mut out)?;
        }
    }
    out.sort();
    Ok(out)
}

/// Brings the work tree to pristine + series + overlay, touching only files
/// whose content changes so incremental builds stay incremental.
pub fn sync_tree(p: &Paths, src: &Source) -> Result<()> {
    let tree = p.tree();
    let stamp = tree.join(".xtask-source");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(src.version.as_str()) {
        say(&format!(
            "creating the kernel work tree {} from {}",
            tree.display(),
            src.version
        ));
        let _ = fs::remove_dir_all(&tree);
        output(
            Command::new("cp").arg("-a").arg(&src.tree).arg(&tree),
            "copying the pristine kernel tree",
        )?;
        fs::write(&stamp, &src.version).map_err(|e| e.to_string())?;
    }
    let mut desired: BTreeMap<String, Option<Vec<u8>>> = patched_files(p, &src.tree)?;
    for file in overlay_files(&p.repo)? {
        if desired.contains_key(&file) {
            return Err(format!(
                "{file} is both in the overlay and changed by patches/"
            ));
        }
        let data = fs::read(p.repo.join(&file)).map_err(|e| format!("{file}: {e}"))?;
        desired.insert(file, Some(data));
    }
    let managed: Vec<String> = desired.keys().cloned().collect();
    // Files managed last time but not now go back to pristine.
    let manifest = tree.join(".xtask-managed");
    let previous = fs::read_to_string(&manifest).unwrap_or_default();
    for file in previous.lines().filter(|l| !l.is_empty()) {
        if !desired.contains_key(file) {
            desired.insert(file.to_owned(), fs::read(src.tree.join(file)).ok());
        }
    }
    let mut changed = 0;
    for (file, content) in &desired {
        let dst = tree.join(file);
        match content {
            Some(data) => changed += write_if_changed(&dst, data)? as usize,
            None => {
                if dst.exists() {
                    fs::remove_file(&dst).map_err(|e| e.to_string())?;
                    changed += 1;
                }
            }
        }
    }
    fs::write(&manifest, managed.join("\n")).map_err(|e| e.to_string())?;
    say(&format!(
        "work tree: {} patches, {} managed files, {changed} updated",
        series(p)?.len(),
        managed.len()
    ));
    Ok(())
}

pub fn make(p: &Paths) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(p.tree())
        .arg(format!("O={}", p.build().display()))
        .arg("ARCH=x86_64")
        .arg("CC=ccache gcc")
        .env("LIBCLANG_PATH", LIBCLANG_PATH)
        .env("CCACHE_DIR", p.cache.join("ccache"))
        .env("PATH", path_with_cargo_bin());
    cmd
}

/// Parses a config fragment into (symbol, value) with `n` for "is not set".
fn fragment_options(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("# CONFIG_") {
                let sym = rest.strip_suffix(" is not set")?;
                return Some((format!("CONFIG_{sym}"), "n".to_owned()));
            }
            if l.starts_with("CONFIG_") {
                let (sym, val) = l.split_once('=')?;
                return Some((sym.to_owned(), val.to_owned()));
            }
            None
        })
        .collect()
}

/// Options of the fragment that did not survive Kconfig resolution.
fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    let actual: BTreeMap<String, String> = fragment_options(config).into_iter().collect();
    fragment_options(fragment)
        .into_iter()
        .filter(|(sym, want)| {
            let have = actual.get(sym).map(String::as_str).unwrap_or("n");
            have != want
        })
        .map(|(sym, want)| {
            let have = actual.get(&sym).map(String::as_str).unwrap_or("n");
            format!("{sym}={want} (got {have})")
        })
        .collect()
}

/// Configures and builds bzImage and the uapi headers.
pub fn build(p: &Paths) -> Result<Source> {
    check_build_tools()?;
    let need: u64 = if p.build().exists() { 1 << 30 } else { 5 << 30 };
    let free = free_bytes(&p.cache)?;
    if free < need {
        return Err(format!(
            "only {} MiB free in {}; the kernel build needs {} MiB",
            free >> 20,
            p.cache.display(),
            need >> 20
        ));
    }
    let src = fetch_source(p)?;
    say(&format!(
        "kernel source: {SOURCE_PACKAGE} {} sha256 {}",
        src.version, src.sha256
    ));
    sync_tree(p, &src)?;
    fs::create_dir_all(p.build()).map_err(|e| e.to_string())?;
    let fragment_path = p.repo.join(CONFIG_FRAGMENT);
    let fragment =
        fs::read_to_string(&fragment_path).map_err(|e| format!("{CONFIG_FRAGMENT}: {e}"))?;
    run_logged(
        make(p)
            .arg(format!("KCONFIG_ALLCONFIG={}", fragment_path.display()))
            .arg("allnoconfig"),
        &p.log("kernel-config.log"),
        "kernel configuration (allnoconfig + fragment)",
    )?;
    let config = fs::read_to_string(p.build().join(".config")).map_err(|e| e.to_string())?;
    let missing = missing_options(&fragment, &config);
    if !missing.is_empty() {
        let rust_hint = if missing.iter().any(|m| m.starts_with("CONFIG_RUST=")) {
            " (Rust unavailable? see `make rustavailable`)"
        } else {
            ""
        };
        return Err(format!(
            "{CONFIG_FRAGMENT}: options lost to Kconfig dependencies{rust_hint}: {}",
            missing.join(", ")
        ));
    }
    let start = Instant::now();
    say(&format!(
        "building bzImage with -j{} (log: {})",
        jobs(),
        p.log("kernel-build.log").display()
    ));
    run_logged(
        make(p)
            .arg(format!("-j{}", jobs()))
            .args(["bzImage", "headers"]),
        &p.log("kernel-build.log"),
        "kernel build",
    )?;
    let size = fs::metadata(p.bzimage()).map(|m| m.len()).unwrap_or(0);
    say(&format!(
        "kernel built in {}s: {} ({} KiB)",
        secs(start),
        p.bzimage().display(),
        size >> 10
    ));
    fs::write(
        p.out.join("kernel-source.txt"),
        format!("{SOURCE_PACKAGE} {}\nsha256 {}\n", src.version, src.sha256),
    )
    .map_err(|e| e.to_string())?;
    Ok(src)
}

/// Builds the upstream kselftests listed in KSELFTESTS, statically linked.
pub fn build_kselftests(p: &Paths) -> Result<()> {
    for (dir, binaries) in KSELFTESTS {
        let out = p.kselftests().join(dir);
        fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        run_logged(
            Command::new("make")
                .arg("-C")
                .arg(p.tree().join("tools/testing/selftests").join(dir))
                .arg(format!("OUTPUT={}", out.display()))
                .arg(format!(
                    "KHDR_INCLUDES=-isystem {}",
                    p.build().join("usr/include").display()
                ))
                .arg("LDFLAGS=-static")
                .arg(format!("-j{}", jobs())),
            &p.log(&format!("kselftest-{dir}.log")),
            &format!("build of tools/testing/selftests/{dir}"),
        )?;
        for bin in *binaries {
            if !out.join(bin).is_file() {
                return Err(format!("kselftest {dir}/{bin} was not built"));
            }
        }
    }
    Ok(())
}

/// Commits of new files, in the order they go before the patch series:
/// (path prefix, subject, body). New files are inert until a patch hooks
/// them in, so every step of the exported series builds.
const NEW_FILE_COMMITS: &[(&str, &str, &str)] = &[
    (
        "rust/",
        "rust: add the kernel::kho module",
        "Safe wrappers over the Kexec HandOver C API for Rust users: preserved\n\
         buffers, published subtrees (withdrawn on drop) and retrieval of\n\
         handed-over subtrees. Wired into the kernel crate by a later patch.",
    ),
    (
        "drivers/iommu/liveupdate/",
        "iommu: add the live update handover format crate",
        "no_std Rust: encode, decode and validate the iommufd and the VT-d live\n\
         update handovers, and the restore check of an adopted page table\n\
         against the guestmemfs memory it must translate. Host unit and\n\
         property tests; built into iommufd and the VT-d driver by later\n\
         patches.",
    ),
    (
        "include/linux/kho/abi/iommu",
        "kho: add the iommufd and VT-d live update ABI headers",
        "The handover of a preserved iommufd (marked HWPTs and their\n\
         guestmemfs mappings) and of the VT-d state that keeps its devices\n\
         translating (root, context and page-table pages, domain IDs, device\n\
         bindings), documented field by field. Used by later patches.",
    ),
    (
        "include/linux/iommu-lu.h",
        "iommu: add the live update driver interface",
        "What iommufd asks of the IOMMU driver to preserve and restore a\n\
         domain across kexec. Used by later patches.",
    ),
    (
        "drivers/iommu/intel/",
        "iommu/vt-d: add live update preserve, adopt and restore",
        "Preserve the tables of marked domains and the contexts of their\n\
         devices through a LUO object, keep translation on for them at\n\
         shutdown, adopt the tables in place at boot, hold the devices, and\n\
         build a domain around the vetted tables on request. The handover\n\
         blob is encoded and checked by the Rust format crate (lu_vtd_rs.rs).\n\
         Built and hooked into the driver by a later patch.",
    ),
    (
        "drivers/iommu/iommufd/",
        "iommufd: add the live update file handler",
        "The LUO file handler that preserves an iommufd's marked HWPTs and\n\
         restores them, validated against the guestmemfs files, on\n\
         RETRIEVE_FD; the handover format comes from the Rust crate\n\
         (lu_rs.rs). Built by a later patch.",
    ),
    (
        "include/linux/kho/abi/vfio",
        "kho: add the vfio-pci live update ABI header",
        "The handover of vfio-pci functions kept running through a kexec: the\n\
         file's serialized data and the page that lists the functions for\n\
         the next kernel, documented field by field. Used by a later patch.",
    ),
    (
        "include/linux/pci-liveupdate.h",
        "PCI: add the live update SR-IOV interface",
        "How a live update user gives the PCI core the SR-IOV state of a PF\n\
         whose VFs keep running through a kexec, has the VFs re-created, and\n\
         pins the PF meanwhile. Implemented by the PCI/IOV patch.",
    ),
    (
        "drivers/vfio/",
        "vfio/pci: add the live update handler",
        "The LUO handler for vfio-pci cdev files that keeps the function\n\
         running: preserve, freeze (refused with interrupts on or the\n\
         translation not frozen), the next kernel's claim, retrieve and\n\
         finish. Built and hooked into vfio-pci by a later patch.",
    ),
    (
        "tools/testing/",
        "selftests/iommu: add iommufd_guestmemfs",
        "kselftest-harness tests of IOMMU_IOAS_MAP_FILE on guestmemfs files, on\n\
         the mock domain: translation, bad ranges, EBUSY on a shrink into a\n\
         mapped range, an unlinked file kept until the last unmap, IOAS_COPY,\n\
         in-kernel access refused. Built by a later patch.",
    ),
    (
        "",
        "fs: add guestmemfs",
        "A memory filesystem for guest RAM in a boot-time region without struct\n\
         pages or a direct mapping, mapped with 1 GiB/2 MiB entries and kept\n\
         across kexec through a KHO locator. Rust core and no_std format crate,\n\
         C glue for the VFS, the early reservation and the fault path. Hooked\n\
         into Kbuild and setup_arch() by later patches.",
    ),
];

fn git(repo: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(repo)
        .args(["-c", "user.name=guestmemfs project"])
        .args(["-c", "user.email=guestmemfs@localhost"]);
    cmd
}

/// Writes the whole change against the pristine source as a
/// `git format-patch` series: new files first, then `patches/series`.
pub fn export(p: &Paths) -> Result<PathBuf> {
    let src = fetch_source(p)?;
    let repo = p.cache.join("export-git");
    let out = p.out.join("export");
    let _ = fs::remove_dir_all(&repo);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&repo).map_err(|e| e.to_string())?;
    output(git(&repo).args(["init", "-q"]), "git init")?;
    // Base: the pristine version of every file the series changes.
    let mut touched = BTreeSet::new();
    for patch in series(p)? {
        let text = fs::read_to_string(&patch).map_err(|e| e.to_string())?;
        touched.extend(patch_files(&text));
    }
    for file in &touched {
        let from = src.tree.join(file);
        if from.exists() {
            let to = repo.join(file);
            fs::create_dir_all(to.parent().unwrap()).map_err(|e| e.to_string())?;
            fs::copy(&from, &to).map_err(|e| format!("{file}: {e}"))?;
        }
    }
    output(git(&repo).args(["add", "-A"]), "git add")?;
    let base_msg = format!("base: pristine files of {SOURCE_PACKAGE} {}", src.version);
    output(
        git(&repo).args(["commit", "-q", "-m", &base_msg]),
        "git commit",
    )?;
    let base = output(git(&repo).args(["rev-parse", "HEAD"]), "git rev-parse")?;
    let mut overlay = overlay_files(&p.repo)?;
    for (prefix, subject, body) in NEW_FILE_COMMITS {
        let (mine, rest): (Vec<String>, Vec<String>) =
            overlay.into_iter().partition(|f| f.starts_with(prefix));
        overlay = rest;
        if mine.is_empty() {
            continue;
        }
        for file in &mine {
            let to = repo.join(file);
            fs::create_dir_all(to.parent().unwrap()).map_err(|e| e.to_string())?;
            fs::copy(p.repo.join(file), &to).map_err(|e| format!("{file}: {e}"))?;
        }
        output(git(&repo).args(["add", "-A"]), "git add")?;
        let msg = format!(
            "{subject}\n\n{body}\n\nSigned-off-by: guestmemfs project <guestmemfs@localhost>"
        );
        output(git(&repo).args(["commit", "-q", "-m", &msg]), "git commit")?;
    }
    for patch in series(p)? {
        output(git(&repo).arg("am").arg("-q").arg(&patch), "git am")
            .map_err(|e| format!("{}: {e}", patch.display()))?;
    }
    output(
        git(&repo)
            .args(["format-patch", "-q", "-o"])
            .arg(&out)
            .arg(format!("{}..HEAD", base.trim())),
        "git format-patch",
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_file_list() {
        let text = "--- a/fs/Kconfig\n+++ b/fs/Kconfig\n@@\n--- /dev/null\n+++ b/fs/new.c\t2020\n";
        let files: Vec<String> = patch_files(text).into_iter().collect();
        assert_eq!(files, ["fs/Kconfig", "fs/new.c"]);
    }

    #[test]
    fn fragment_check() {
        let fragment = "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=4\n";
        assert!(missing_options(fragment, "CONFIG_A=y\nCONFIG_C=4\n").is_empty());
        assert_eq!(
            missing_options(fragment, "CONFIG_A=y\nCONFIG_B=y\n"),
            ["CONFIG_B=n (got y)", "CONFIG_C=4 (got n)"]
        );
    }
}
