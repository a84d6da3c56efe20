// SPDX-License-Identifier: GPL-2.0-only
//! Reading the guest's KTAP from the serial console.
//!
//! Only top-level lines count (no indentation): nested output of upstream
//! kselftests is indented and kept in the log only.

/// A top-level result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestLine {
    pub number: usize,
    pub name: String,
    pub ok: bool,
    /// Text after `# ` on the result line (e.g. `SKIP reason`).
    pub directive: Option<String>,
}

impl TestLine {
    pub fn skipped(&self) -> bool {
        self.directive
            .as_deref()
            .is_some_and(|d| d.to_ascii_uppercase().starts_with("SKIP"))
    }
}

/// One console line, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Result(TestLine),
    Plan(usize),
    /// `# gtest: start NAME stage N`
    Start(String),
    /// `# gtest: done`
    Done,
    /// Any other `# ` diagnostic at top level.
    Diag(String),
    Other,
}

/// `line` without a kernel message glued to its end: the console thread
/// prints asynchronously, so `[    0.89] guestmemfs: ...` can land on
/// the line a test is writing.
pub fn without_printk(line: &str) -> &str {
    let mut from = 1;
    while let Some(i) = line.get(from..).and_then(|r| r.find('[')).map(|i| i + from) {
        let stamp = line[i + 1..].trim_start_matches(' ');
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let secs = digits(stamp);
        if secs > 0 && stamp[secs..].starts_with('.') {
            let frac = digits(&stamp[secs + 1..]);
            if frac > 0 && stamp[secs + 1 + frac..].starts_with(']') {
                return &line[..i];
            }
        }
        from = i + 1;
    }
    line
}

pub fn classify(raw: &str) -> Line {
    let line = without_printk(raw.trim_end_matches(['\r', '\n']));
    if let Some(rest) = line.strip_prefix("# gtest: start ") {
        let name = rest.split_whitespace().next().unwrap_or("").to_owned();
        return Line::Start(name);
    }
    if line == "# gtest: done" {
        return Line::Done;
    }
    if let Some(rest) = line.strip_prefix("# ") {
        return Line::Diag(rest.to_owned());
    }
    if let Some(n) = line.strip_prefix("1..") {
        if let Ok(n) = n.trim().parse() {
            return Line::Plan(n);
        }
    }
    let (ok, rest) = if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else {
        return Line::Other;
    };
    let (number, rest) = match rest.split_once(' ') {
        Some((n, r)) => (n, r),
        None => (rest, ""),
    };
    let Ok(number) = number.parse() else {
        return Line::Other;
    };
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n.trim().to_owned(), Some(d.trim().to_owned())),
        None => (rest.trim().to_owned(), None),
    };
    Line::Result(TestLine {
        number,
        name,
        ok,
        directive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results() {
        assert_eq!(
            classify("ok 3 luo_memfd_kexec\r\n"),
            Line::Result(TestLine {
                number: 3,
                name: "luo_memfd_kexec".into(),
                ok: true,
                directive: None
            })
        );
        let skip = classify("ok 1 x # SKIP no device");
        match skip {
            Line::Result(t) => {
                assert!(t.ok && t.skipped());
                assert_eq!(t.directive.as_deref(), Some("SKIP no device"));
            }
            other => panic!("{other:?}"),
        }
        match classify("not ok 2 y") {
            Line::Result(t) => assert!(!t.ok && !t.skipped()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn printk_glued_to_a_result() {
        let l = "ok 5 guestmemfs_poison_after_freeze[    0.890652] guestmemfs: memory error";
        match classify(l) {
            Line::Result(t) => assert_eq!(t.name, "guestmemfs_poison_after_freeze"),
            other => panic!("{other:?}"),
        }
        assert_eq!(classify("# gtest: done[   12.5] x"), Line::Done);
        assert_eq!(
            without_printk("ok 1 a[b] [1.x] [ 2.]"),
            "ok 1 a[b] [1.x] [ 2.]"
        );
    }

    #[test]
    fn nested_and_noise_are_not_results() {
        assert_eq!(classify("    ok 1 iommufd.basic"), Line::Other);
        assert_eq!(classify("[    1.234] ok 1 fake"), Line::Other);
        assert_eq!(classify("ok x y"), Line::Other);
    }

    #[test]
    fn control_lines() {
        assert_eq!(classify("1..4"), Line::Plan(4));
        assert_eq!(
            classify("# gtest: start luo_memfd_kexec stage 2"),
            Line::Start("luo_memfd_kexec".into())
        );
        assert_eq!(classify("# gtest: done"), Line::Done);
        assert_eq!(classify("# hello"), Line::Diag("hello".into()));
    }
}
