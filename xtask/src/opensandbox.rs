//! OpenSandbox's SDK and CLI, as published, against `pvesandbox serve`
//! (`cargo xtask test-opensandbox`): the venv pins the exact packages users install, and the
//! suite (`crates/server/tests/sdk`) starts the server binary on the embedded simulator.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use xshell::{Shell, cmd};

use crate::root;

/// The versions the server is checked against (what `opensandbox-sdk-surface.md` was read
/// from).
const PINS: [&str; 3] = [
    "opensandbox==1.1.1",
    "opensandbox-cli==1.1.1",
    "pytest==9.2.0",
];

fn venv() -> PathBuf {
    root().join(".venv-opensandbox")
}

/// Creates `.venv-opensandbox` with [`PINS`] unless it already has them (`force`: recreate).
pub fn venv_setup(sh: &Shell, force: bool) -> Result<()> {
    crate::pinned_venv(sh, &venv(), &PINS, force)
}

/// Builds the CLI and runs the SDK suite against its `serve`; prints the wall time.
pub fn test(sh: &Shell, rest: &[String]) -> Result<()> {
    venv_setup(sh, false)?;
    cmd!(sh, "cargo build --quiet -p pvesandbox-cli --bin pvesandbox").run()?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let python = venv().join("bin/python");
    let t = Instant::now();
    cmd!(
        sh,
        "{python} -m pytest -p no:cacheprovider -rfEs crates/server/tests/sdk {rest...}"
    )
    .env("PVESANDBOX_BIN", target.join("debug/pvesandbox"))
    .env("PYTHON", &python)
    .run()?;
    eprintln!(
        "xtask: OpenSandbox SDK and CLI 1.1.1 against pvesandbox serve: {:.1} s wall",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
