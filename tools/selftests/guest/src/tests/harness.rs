// SPDX-License-Identifier: GPL-2.0-only
//! Tests of the harness itself.

use super::{Ctx, TestResult};
use crate::ktap::diag;

/// Never returns: the host must kill the VM at this test's timeout and
/// report it (suite `negative_hang`).
pub fn hang(_ctx: &mut Ctx) -> TestResult {
    diag("hanging on purpose until the host kills the VM");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
