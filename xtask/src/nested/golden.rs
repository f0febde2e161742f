//! Golden-file comparison for the generated files (tests only).
//!
//! Files live in `xtask/golden/nested/`. Run the tests with `UPDATE_GOLDEN=1` to rewrite them
//! from the current output, then review the diff like any other change.

use std::fs;

/// Compares `actual` with the golden file `name`, or rewrites it when `UPDATE_GOLDEN` is set.
pub fn check(name: &str, actual: &str) {
    let path = crate::root().join("xtask/golden/nested").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `UPDATE_GOLDEN=1 cargo test -p xtask` to create it",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the generated text from line {}:\n  golden:    {:?}\n  generated: {:?}\n\
             If the change is intended, run `UPDATE_GOLDEN=1 cargo test -p xtask` and review the diff.",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}
