// SPDX-License-Identifier: GPL-2.0-only
//! LUO (`/dev/liveupdate`) preservation across kexec, with upstream uapi.

use super::{Ctx, Outcome, TestResult};
use crate::ktap::diag;
use crate::liveupdate::LiveUpdate;
use crate::{pattern, sys};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

const SESSION: &str = "gtest-luo-memfd";
const TOKEN: u64 = 0x1a;
const SEED: u64 = 0x6775_6573_746d_656d;
/// Not a multiple of the page size, so the partial last page is checked.
const SIZE: u64 = 16 * 1024 * 1024 + 5000;
const CHUNK: usize = 1 << 20;

pub fn memfd_kexec(ctx: &mut Ctx) -> TestResult {
    match ctx.stage {
        1 => preserve(ctx),
        2 => verify(),
        s => Err(format!("no stage {s}")),
    }
}

/// The 7.3 `kho` selftest's check, in this harness's kexec instead of its
/// own vmtest.sh VM: `lib/test_kho.c` (built in) saves folios and an FDT
/// at the first boot; after the kexec it verifies them and logs the result.
pub fn kho_selftest(ctx: &mut Ctx) -> TestResult {
    let log = sys::kernel_log().map_err(|e| e.to_string())?;
    let restored = |l: &&String| l.contains("KHO restore");
    match ctx.stage {
        1 => match log.iter().find(restored) {
            Some(l) => Err(format!("first boot already restored KHO test data: {l}")),
            None => Ok(Outcome::Kexec),
        },
        2 => match log.iter().find(restored) {
            Some(l) if l.contains("KHO restore succeeded") => {
                diag(&format!("stage 2: {}", l.trim()));
                Ok(Outcome::Pass)
            }
            Some(l) => Err(format!("test_kho after kexec: {l}")),
            None => Err("test_kho logged nothing after the kexec".into()),
        },
        s => Err(format!("no stage {s}")),
    }
}

fn preserve(ctx: &mut Ctx) -> TestResult {
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.create_session(SESSION).map_err(|e| e.to_string())?;
    let mut memfd = sys::memfd_create("gtest-pattern").map_err(|e| format!("memfd_create: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < SIZE {
        let n = CHUNK.min((SIZE - off) as usize);
        pattern::fill(SEED, off, &mut buf[..n]);
        memfd
            .write_all(&buf[..n])
            .map_err(|e| format!("write memfd: {e}"))?;
        off += n as u64;
    }
    session
        .preserve_fd(memfd.as_raw_fd(), TOKEN)
        .map_err(|e| e.to_string())?;
    diag(&format!(
        "stage 1: memfd of {SIZE} bytes preserved in session {SESSION:?} token {TOKEN:#x}"
    ));
    // The session must still be open when the kexec happens.
    ctx.keep.push(session.into_owned_fd());
    Ok(Outcome::Kexec)
}

fn verify() -> TestResult {
    let luo = LiveUpdate::open().map_err(|e| e.to_string())?;
    let session = luo.retrieve_session(SESSION).map_err(|e| e.to_string())?;
    let fd: OwnedFd = session.retrieve_fd(TOKEN).map_err(|e| e.to_string())?;
    let memfd = File::from(fd);
    let size = memfd.metadata().map_err(|e| e.to_string())?.len();
    if size != SIZE {
        return Err(format!("retrieved memfd has {size} bytes, expected {SIZE}"));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < SIZE {
        let n = CHUNK.min((SIZE - off) as usize);
        // Read by offset: LUO restores the file position too, which stage
        // 1 left at the end of the data.
        memfd
            .read_exact_at(&mut buf[..n], off)
            .map_err(|e| format!("read memfd at {off}: {e}"))?;
        if let Some(bad) = pattern::first_mismatch(SEED, off, &buf[..n]) {
            return Err(format!(
                "memfd byte {bad} differs from the preserved pattern"
            ));
        }
        off += n as u64;
    }
    session.finish().map_err(|e| e.to_string())?;
    diag(&format!(
        "stage 2: all {SIZE} bytes of the memfd match after kexec; session finished"
    ));
    Ok(Outcome::Pass)
}
