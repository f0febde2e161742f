//! Check outcomes and the table printed on stdout.

use std::fmt::Write as _;

/// How a check ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every assertion held.
    Pass,
    /// Something did not hold; why.
    Fail(String),
    /// The target cannot support it; why.
    Skip(String),
}

impl Outcome {
    /// `pass`, `FAIL` or `skip`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "skip",
        }
    }
}

/// One named check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// Dotted name, e.g. `cleanup.crash@clone`.
    pub name: String,
    /// The target it ran against.
    pub target: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Wall time.
    pub seconds: f64,
    /// What it measured or saw (kept in the JUnit output).
    pub detail: String,
}

/// The stdout table: check, target, result, seconds, then the reason for anything not passed.
pub fn table(results: &[CheckResult]) -> String {
    let w = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w$}  {:<8} {:<6} {:>8}",
        "check", "target", "result", "seconds"
    );
    for r in results {
        let _ = write!(
            s,
            "{:<w$}  {:<8} {:<6} {:>8.3}",
            r.name,
            r.target,
            r.outcome.word(),
            r.seconds
        );
        match &r.outcome {
            Outcome::Pass => {}
            Outcome::Fail(why) | Outcome::Skip(why) => {
                let first = why.lines().next().unwrap_or_default();
                let _ = write!(s, "  {first}");
            }
        }
        s.push('\n');
    }
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let _ = writeln!(
        s,
        "{} passed, {} failed, {} skipped, {:.2} s",
        count(|o| matches!(o, Outcome::Pass)),
        count(|o| matches!(o, Outcome::Fail(_))),
        count(|o| matches!(o, Outcome::Skip(_))),
        results.iter().map(|r| r.seconds).sum::<f64>()
    );
    s
}
