//! The Inspect AI adapter's test venv and suite (`cargo xtask inspect-venv`, `test-inspect`).
//!
//! The venv pins exact versions (inspect-ai moves its provider contract every few releases);
//! the adapter is built as a wheel by maturin and installed with `--no-index --no-deps`, so
//! once the venv exists nothing below needs the network.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

use crate::root;

/// The exact versions CI tests against (the package itself accepts
/// `inspect-ai>=0.3.275,<0.3.300`).
const PINS: [&str; 4] = [
    "inspect-ai==0.3.285",
    "pytest==9.2.0",
    "pytest-asyncio==1.5.0",
    "maturin==1.16.0",
];

fn venv() -> PathBuf {
    root().join(".venv-inspect")
}

/// Creates `.venv-inspect` with [`PINS`] unless it already has them (`force`: recreate).
pub fn venv_setup(sh: &Shell, force: bool) -> Result<()> {
    crate::pinned_venv(sh, &venv(), &PINS, force)
}

/// Builds the adapter wheel into the venv and runs its Python suite: the self-check against
/// process guests and against qemu-guest-agent guests (44 checks each), then the rest (offline
/// eval, lifecycle, cleanup, overhead). Prints each run's wall time.
pub fn test(sh: &Shell, rest: &[String]) -> Result<()> {
    venv_setup(sh, false)?;
    let venv = venv();
    let python = venv.join("bin/python");
    let maturin = venv.join("bin/maturin");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let wheels = target.join("inspect-wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    cmd!(
        sh,
        "{maturin} build --release --quiet --manifest-path crates/inspect-adapter/Cargo.toml -i {python} --out {wheels}"
    )
    .run()?;
    let wheel = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("maturin built no wheel")?;
    cmd!(
        sh,
        "{python} -m pip install --quiet --disable-pip-version-check --no-index --no-deps --force-reinstall {wheel}"
    )
    .run()?;

    // The CLI the connection() command names, to run that command in a test.
    cmd!(sh, "cargo build --quiet -p pvesandbox-cli --bin pvesandbox").run()?;
    let cli = target.join("debug/pvesandbox");

    let _dir = sh.push_dir(root().join("crates/inspect-adapter"));
    let pytest = |what: &str, guests: &str, args: &[&str]| -> Result<()> {
        let t = Instant::now();
        cmd!(
            sh,
            "{python} -m pytest -p no:cacheprovider -rfEs {args...} {rest...}"
        )
        .env("PVESANDBOX_EMBEDDED_SIM", guests)
        .env("PVE_INSPECT_TEST_CLI", &cli)
        .run()?;
        eprintln!(
            "xtask: inspect adapter: {what} ({guests} guests): {:.1} s wall",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    };
    pytest(
        "Inspect self-check",
        "process",
        &["-s", "tests/test_self_check.py"],
    )?;
    pytest(
        "Inspect self-check",
        "qemu",
        &["-s", "tests/test_self_check.py"],
    )?;
    pytest(
        "adapter tests and offline eval",
        "process",
        &["-s", "tests", "--ignore=tests/test_self_check.py"],
    )?;
    Ok(())
}
