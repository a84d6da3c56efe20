// SPDX-License-Identifier: GPL-2.0-only
//! PID 1 of the test initramfs: mounts the pseudo filesystems, runs the
//! tests named by `gtest.run=` and prints KTAP on the console, kexecs for
//! staged tests, and powers the VM off when done.
//!
//! Run outside a VM with `--list` to print the catalogue.

use gmfs_guest::cmdline::TestBoot;
use gmfs_guest::ktap::{diag, line};
use gmfs_guest::sys;
use gmfs_guest::tests::{self, Ctx, Outcome};
use std::panic::{self, AssertUnwindSafe};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--list") {
        for t in tests::CATALOG {
            println!("{:<28} {:>5}s  {}", t.name, t.timeout_s, t.summary);
        }
        return;
    }
    if std::process::id() != 1 {
        eprintln!("gmfs-init: must run as PID 1 of the test VM (or pass --list)");
        std::process::exit(2);
    }
    sys::mount_pseudo_filesystems();
    // Keep routine kernel messages off the console the KTAP goes to;
    // warnings and errors still show, and everything stays in the log.
    let _ = std::fs::write("/proc/sys/kernel/printk", "4");
    run();
    sys::power_off();
}

fn run() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let boot = match TestBoot::parse(&cmdline) {
        Ok(b) => b,
        Err(e) => {
            diag(&format!("gtest: {e}"));
            line("Bail out! bad gtest parameters");
            return;
        }
    };
    if boot.is_first_boot() {
        line("KTAP version 1");
        line(&format!("1..{}", boot.run.len()));
    }
    let mut ctx = Ctx {
        stage: 1,
        keep: Vec::new(),
        note_out: None,
        note_in: None,
        once_out: Vec::new(),
    };
    for (index, name) in boot.run.iter().enumerate().skip(boot.next) {
        let number = index + 1;
        ctx.stage = if index == boot.next { boot.stage } else { 1 };
        ctx.note_in = if index == boot.next {
            boot.note.clone()
        } else {
            None
        };
        ctx.note_out = None;
        ctx.once_out.clear();
        diag(&format!("gtest: start {name} stage {}", ctx.stage));
        let Some(test) = tests::find(name) else {
            line(&format!("not ok {number} {name} # unknown test"));
            continue;
        };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| (test.run)(&mut ctx)))
            .unwrap_or_else(|_| Err("test panicked".into()));
        match outcome {
            Ok(Outcome::Pass) => line(&format!("ok {number} {name}")),
            Ok(Outcome::Skip(why)) => line(&format!("ok {number} {name} # SKIP {why}")),
            Ok(Outcome::Kexec) => {
                let next =
                    boot.next_cmdline(index, ctx.stage + 1, ctx.note_out.as_deref(), &ctx.once_out);
                diag(&format!(
                    "gtest: {name} stage {} done, kexec into stage {}",
                    ctx.stage,
                    ctx.stage + 1
                ));
                let err = match sys::kexec_same_kernel(&next) {
                    Ok(()) => "reboot returned".to_owned(),
                    Err(e) => e.to_string(),
                };
                diag(&format!("{name}: kexec failed: {err}"));
                line(&format!("not ok {number} {name}"));
                ctx.keep.clear();
            }
            Err(why) => {
                diag(&format!("{name}: {why}"));
                line(&format!("not ok {number} {name}"));
            }
        }
    }
    diag("gtest: done");
}
