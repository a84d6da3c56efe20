// SPDX-License-Identifier: GPL-2.0-only
//! KTAP output on the console.
//!
//! Every line goes out in a single write(2) so kernel messages printed on
//! the same serial console cannot split it.

use std::io::Write;

/// Writes one line to stdout (the console) with a single write.
pub fn line(text: &str) {
    let mut buf = String::with_capacity(text.len() + 1);
    buf.push_str(text);
    buf.push('\n');
    let _ = std::io::stdout().lock().write_all(buf.as_bytes());
}

/// A KTAP diagnostic line (`# ...`); multi-line text gives several lines.
pub fn diag(text: &str) {
    for l in text.lines() {
        line(&format!("# {l}"));
    }
}
