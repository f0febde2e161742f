//! The JUnit XML report CI systems read: one `<testsuite>` per run, one `<testcase>` per check.

use std::fmt::Write as _;

use crate::report::{CheckResult, Outcome};

/// Text as XML character data or attribute value: the five special characters as entities,
/// and characters XML 1.0 cannot carry at all (most C0 controls, U+FFFE/U+FFFF) as U+FFFD,
/// since a failure message may quote raw guest output.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Tabs and newlines survive in attributes only as references.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The whole report for `suite` (e.g. `e2e-sim`).
pub fn render(suite: &str, results: &[CheckResult]) -> String {
    let failures = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .count();
    let skipped = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skip(_)))
        .count();
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"{s}\" tests=\"{n}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">",
        s = escape(suite),
        n = results.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{s}\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{total:.3}\">",
        s = escape(suite),
        n = results.len()
    );
    for r in results {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            escape(&r.name),
            escape(suite),
            r.seconds
        );
        match &r.outcome {
            Outcome::Pass if r.detail.is_empty() => x.push_str("/>\n"),
            Outcome::Pass => {
                let _ = writeln!(
                    x,
                    ">\n      <system-out>{}</system-out>\n    </testcase>",
                    escape(&r.detail)
                );
            }
            Outcome::Fail(why) => {
                let _ = writeln!(
                    x,
                    ">\n      <failure message=\"{m}\">{m}</failure>\n    </testcase>",
                    m = escape(why)
                );
            }
            Outcome::Skip(why) => {
                let _ = writeln!(
                    x,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    escape(why)
                );
            }
        }
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, outcome: Outcome) -> CheckResult {
        CheckResult {
            name: name.into(),
            target: "sim".into(),
            outcome,
            seconds: 0.25,
            detail: String::new(),
        }
    }

    #[test]
    fn escape_covers_markup_quotes_and_controls() {
        assert_eq!(escape("plain ünï ✓"), "plain ünï ✓");
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;"
        );
        assert_eq!(escape("a\tb\nc\r"), "a&#9;b&#10;c&#13;");
        assert_eq!(
            escape("nul\0 bell\x07 esc\x1b"),
            "nul\u{FFFD} bell\u{FFFD} esc\u{FFFD}"
        );
        assert_eq!(escape("\u{FFFE}\u{FFFF}"), "\u{FFFD}\u{FFFD}");
        // Already-escaped text is escaped again, not passed through.
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn counts_and_elements_match_the_outcomes() {
        let xml = render(
            "e2e-sim",
            &[
                result("templates.ensure_idempotent", Outcome::Pass),
                result(
                    "exec.exit_codes",
                    Outcome::Fail("expected 3, got <0> & \"1\"".into()),
                ),
                result(
                    "network.auto",
                    Outcome::Skip("fakepve keeps no SDN state".into()),
                ),
            ],
        );
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
        assert!(
            xml.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\" time=\"0.750\""),
            "{xml}"
        );
        assert!(xml.contains("<testcase name=\"templates.ensure_idempotent\" classname=\"e2e-sim\" time=\"0.250\"/>"), "{xml}");
        assert!(
            xml.contains("<failure message=\"expected 3, got &lt;0&gt; &amp; &quot;1&quot;\">"),
            "{xml}"
        );
        assert!(
            xml.contains("<skipped message=\"fakepve keeps no SDN state\"/>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert_eq!(xml.matches("</testcase>").count(), 2);
        assert!(xml.trim_end().ends_with("</testsuites>"));
    }

    #[test]
    fn an_empty_run_is_still_a_valid_document() {
        let xml = render("e2e-env", &[]);
        assert!(xml.contains("tests=\"0\" failures=\"0\""));
        assert!(xml.contains("</testsuite>\n</testsuites>"));
    }
}
