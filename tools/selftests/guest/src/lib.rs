// SPDX-License-Identifier: GPL-2.0-only
//! In-guest side of the guestmemfs VM test harness.
//!
//! `gmfs-init` (src/main.rs) is PID 1 of the test initramfs. It reads the
//! tests to run from the kernel command line (`gtest.run=a,b,c`), runs
//! them, prints KTAP on the serial console and, for tests with stages,
//! kexecs into the same kernel to run the next stage (see
//! `docs/testing.md`). The catalogue in [`tests::CATALOG`] is also read by
//! the host harness (`xtask`) for test names and timeouts.

pub mod cmdline;
pub mod igb;
pub mod igb_pf;
pub mod igb_rx;
pub mod iommu_debugfs;
pub mod kmemleak;
pub mod ktap;
pub mod liveupdate;
pub mod pattern;
pub mod stream;
pub mod sys;
pub mod tests;
pub mod vfio;
