//! `cargo xtask`: project automation beyond `cargo build` and `cargo test`.
//!
//! - `cargo xtask test`  — what CI runs: sets up the fakepve venv if missing, then
//!   `cargo test --workspace` (fakepve, schema and guest tests fail loudly when `CI` is set),
//!   then the guest-agent suites again on real qemu-guest-agent (`PVESANDBOX_GUEST=qemu`).
//! - `cargo xtask lint`  — `cargo fmt --check` and `cargo clippy --all-targets -D warnings`.
//! - `cargo xtask bench [client|agent|pool|sandbox|server]` — release-mode figures: REST calls and wall time of
//!   the core flow; REST calls and p50/p99 of guest-agent exec and file transfers; leases per
//!   second and acquire latency of the pool; a sample's calls and phases (`sandbox --realistic
//!   [FACTOR]`: at PVE-like task durations, the doubling and learned poll schedules side by side);
//!   the OpenSandbox server's create → Running, command latency, 50 creates at once and RSS with
//!   100 sandboxes, against the library on the same fleet (`server [--realistic FACTOR]`).
//! - `cargo xtask venv` — create the test venvs if missing (CI runs it before cutting the network).
//! - `cargo xtask fakepve` — (re)create `.venv-fakepve` with fakepve from PyPI.
//! - `cargo xtask test-inspect` — the Inspect AI adapter: builds its wheel into
//!   `.venv-inspect` and runs Inspect's self-check (process and qemu-guest-agent guests), an
//!   offline `inspect eval` and the adapter's own tests (`cargo xtask test` runs it too).
//! - `cargo xtask inspect-venv` — (re)create `.venv-inspect` with the pinned inspect-ai.
//! - `cargo xtask test-opensandbox` — OpenSandbox's SDK and `osb` CLI 1.1.1 (pinned, in
//!   `.venv-opensandbox`) against `pvesandbox serve` on the embedded simulator
//!   (`cargo xtask test` runs it too).
//! - `cargo xtask guest-image` — build (or find cached) the Debian guest with qemu-guest-agent
//!   that pve-sim's QEMU guest backend boots; installs its host packages when missing.
//! - `cargo xtask nested-pve [--dry-run] ...` — build (once) and boot a nested Proxmox VE with
//!   QEMU/KVM for the end-to-end suite, and write its instances file (see `nested`).
//! - `cargo xtask e2e --target sim|fakepve|env|nested [...]` — the end-to-end suite
//!   (`crates/e2e`), built and run with `cargo run` so xtask links none of the sandbox stack.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use xshell::{Shell, cmd};

mod guest_image;
mod inspect;
mod nested;
mod opensandbox;

/// fakepve release the tests were written against (AGPL; installed, never vendored).
const FAKEPVE: &str = "fakepve[crypto]==0.5.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn fakepve_venv(sh: &Shell, force: bool) -> Result<()> {
    pinned_venv(sh, &root().join(".venv-fakepve"), &[FAKEPVE], force)
}

/// Creates the venv `venv` with exactly `pins` unless it already has them (`force`:
/// recreate). pip reaches PyPI with CI's blackhole proxy lifted, so this must run before
/// anything that must not phone home.
pub(crate) fn pinned_venv(sh: &Shell, venv: &Path, pins: &[&str], force: bool) -> Result<()> {
    let python = venv.join("bin/python");
    let check = "import importlib.metadata as m, sys; \
                 pins = sys.argv[1:]; \
                 sys.exit(any(m.version(p.split('==')[0].split('[')[0]) != p.split('==')[1] for p in pins))";
    if !force
        && python.exists()
        && cmd!(sh, "{python} -c {check} {pins...}")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
    {
        return Ok(());
    }
    eprintln!("xtask: creating {} with {}", venv.display(), pins.join(" "));
    cmd!(sh, "python3 -m venv --clear {venv}")
        .run()
        .context("python3 with the venv module is needed for the Python suites")?;
    let pip = venv.join("bin/pip");
    cmd!(
        sh,
        "{pip} install --quiet --disable-pip-version-check {pins...}"
    )
    .env_remove("HTTPS_PROXY")
    .env_remove("HTTP_PROXY")
    .env_remove("https_proxy")
    .env_remove("http_proxy")
    .run()?;
    Ok(())
}

fn main() -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(root());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            fakepve_venv(&sh, false)?;
            let rest = &args[1..];
            // A no-op when the image is cached (.ci/run builds it before cutting the network).
            guest_image::build(&sh)?;
            cmd!(sh, "cargo test --workspace {rest...}").run()?;
            // The same guest-agent suites against real qemu-guest-agent in QEMU guests. Test
            // output is captured, so say here which accelerator they get.
            let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let accel = if cpu.contains(" vmx") || cpu.contains(" svm") {
                "kvm when /dev/kvm works, else tcg"
            } else {
                "tcg (no vmx/svm on this CPU)"
            };
            eprintln!("xtask: qemu-guest-agent suites: QEMU accelerator {accel}");
            cmd!(
                sh,
                "cargo test -p guest-agent --test self_check --test guarantees {rest...} -- --test-threads 2"
            )
            .env("PVESANDBOX_GUEST", "qemu")
            .run()?;

            // e2e: the end-to-end suite on the two targets that run here; each prints its
            // table, and both run before a failure is reported so CI shows both tables.
            let sim = e2e(&sh, &["--target".into(), "sim".into()]);
            let fake = e2e(&sh, &["--target".into(), "fakepve".into()]);
            sim.context("e2e --target sim")?;
            fake.context("e2e --target fakepve")?;
            // ---- Inspect AI adapter (crates/inspect-adapter) ----
            inspect::test(&sh, &[])?;
            // ---- end Inspect AI adapter ----
            opensandbox::test(&sh, &[])?;
        }
        Some("lint") => {
            cmd!(sh, "cargo fmt --all -- --check").run()?;
            cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings").run()?;
        }
        Some("bench") => {
            let which = args.get(1).map(String::as_str).unwrap_or("all");
            if matches!(which, "all" | "client") {
                cmd!(
                    sh,
                    "cargo run --release --quiet -p pve-client --example flow_cost"
                )
                .run()?;
            }
            if matches!(which, "all" | "agent") {
                cmd!(
                    sh,
                    "cargo run --release --quiet -p guest-agent --example agent_bench"
                )
                .run()?;
            }
            if matches!(which, "all" | "pool") {
                cmd!(
                    sh,
                    "cargo run --release --quiet -p pvesandbox-pool --example lease_bench"
                )
                .run()?;
            }
            if matches!(which, "all" | "sandbox") {
                // `bench sandbox --realistic [FACTOR]`: PVE-like task durations, both poll
                // schedules side by side.
                let rest = args.get(2..).unwrap_or_default();
                cmd!(
                    sh,
                    "cargo run --release --quiet -p pvesandbox --example sample_bench -- {rest...}"
                )
                .run()?;
            }
            if matches!(which, "all" | "server") {
                // `bench server [--realistic FACTOR]`: realistic task durations times FACTOR.
                let rest = args.get(2..).unwrap_or_default();
                cmd!(
                    sh,
                    "cargo run --release --quiet -p pvesandbox-server --example server_bench -- {rest...}"
                )
                .run()?;
            }
        }
        Some("venv") => {
            fakepve_venv(&sh, false)?;
            inspect::venv_setup(&sh, false)?;
            opensandbox::venv_setup(&sh, false)?;
        }
        Some("test-opensandbox") => opensandbox::test(&sh, &args[1..])?,
        Some("inspect-venv") => inspect::venv_setup(&sh, true)?,
        Some("test-inspect") => inspect::test(&sh, &args[1..])?,
        Some("fakepve") => fakepve_venv(&sh, true)?,
        Some("guest-image") => guest_image::build(&sh)?,
        Some("nested-pve") => nested::main(&sh, &args[1..])?,
        // e2e
        Some("e2e") => e2e(&sh, &args[1..])?,
        other => {
            bail!(
                "unknown task {other:?}; try: test, lint, bench, venv, fakepve, guest-image, nested-pve, e2e, inspect-venv, test-inspect, test-opensandbox"
            )
        }
    }
    Ok(())
}

/// `cargo xtask e2e ARGS`: builds the `pvesandbox` CLI the suite drives, then runs the suite
/// (`pvesandbox-e2e`, which finds the CLI next to itself). The fakepve target gets its venv.
fn e2e(sh: &Shell, args: &[String]) -> Result<()> {
    let target = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--target") {
            Some("") => args.get(i + 1).cloned(),
            Some(v) => v.strip_prefix('=').map(str::to_owned),
            None => None,
        })
        .unwrap_or_else(|| "sim".into());
    if target == "fakepve" {
        fakepve_venv(sh, false)?;
    }
    cmd!(sh, "cargo build --quiet -p pvesandbox-cli --bin pvesandbox").run()?;
    cmd!(sh, "cargo run --quiet -p pvesandbox-e2e -- {args...}").run()?;
    Ok(())
}

/// Checks `cargo test` makes on the tree itself (habit: what CI checks, tests check).
#[cfg(test)]
mod tidy {
    use super::root;
    use std::fs;
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn every_module_opens_with_a_doc_comment() {
        let mut files = Vec::new();
        for c in fs::read_dir(root().join("crates")).unwrap().flatten() {
            let src = c.path().join("src");
            if src.is_dir() {
                rust_files(&src, &mut files);
            }
        }
        assert!(files.len() > 10, "found only {} files", files.len());
        let missing: Vec<_> = files
            .iter()
            .filter(|f| {
                !fs::read_to_string(f)
                    .unwrap()
                    .trim_start()
                    .starts_with("//!")
            })
            .collect();
        assert!(
            missing.is_empty(),
            "modules without a `//!` doc line: {missing:#?}"
        );
    }

    /// Our own crates a package depends on (normal dependencies only, not dev).
    fn our_deps(manifest: &str) -> Vec<String> {
        let mut in_deps = false;
        let mut out = Vec::new();
        for line in manifest.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_deps = t == "[dependencies]";
                continue;
            }
            if in_deps && let Some(name) = t.split(['.', ' ', '=']).next() {
                let n = name.trim();
                if [
                    "pve-client",
                    "pve-sim",
                    "pve-sdn",
                    "guest-agent",
                    "pvesandbox-pool",
                    "pvesandbox-templates",
                    "pvesandbox",
                    "pvesandbox-cli",
                    "pvesandbox-server",
                ]
                .contains(&n)
                {
                    out.push(n.to_owned());
                }
            }
        }
        out
    }

    /// The crates below the sandbox (directory names).
    const LIBRARIES: [&str; 6] = [
        "pve-client",
        "pve-sim",
        "pve-sdn",
        "guest-agent",
        "pool",
        "templates",
    ];

    #[test]
    fn dependencies_flow_one_way() {
        let read =
            |c: &str| fs::read_to_string(root().join("crates").join(c).join("Cargo.toml")).unwrap();
        assert!(
            our_deps(&read("pve-client")).is_empty(),
            "pve-client sits at the bottom"
        );
        assert!(
            our_deps(&read("pve-sim")).is_empty(),
            "pve-sim shares no code with the client it tests"
        );
        // pve-sdn: listed on its own line so parallel branches adding crates merge cleanly.
        let libs = ["guest-agent", "pool"].into_iter().chain(["pve-sdn"]);
        for lib in libs {
            assert_eq!(
                our_deps(&read(lib)),
                ["pve-client"],
                "{lib} is a library over pve-client alone"
            );
        }
        // templates
        assert_eq!(
            our_deps(&read("templates")),
            ["pve-client"],
            "templates is a library over pve-client alone"
        );
        // The sandbox composes every library (and, behind its `embedded` feature, the
        // simulator for demos and tests); nothing of ours depends on it but the front ends.
        let mut sandbox = our_deps(&read("sandbox"));
        sandbox.sort();
        assert_eq!(
            sandbox,
            [
                "guest-agent",
                "pve-client",
                "pve-sdn",
                "pve-sim",
                "pvesandbox-pool",
                "pvesandbox-templates"
            ],
            "pvesandbox sits on every library"
        );
        for lib in LIBRARIES {
            assert!(
                !our_deps(&read(lib)).contains(&"pvesandbox".to_owned()),
                "{lib} must not depend on the sandbox"
            );
        }
        // The server is a front end over the library (and the types its wire form converts);
        // only the CLI, which starts it, depends on it.
        let mut server = our_deps(&read("server"));
        server.sort();
        assert_eq!(
            server,
            [
                "guest-agent",
                "pve-client",
                "pvesandbox",
                "pvesandbox-templates"
            ],
            "pvesandbox-server is a front end over the library"
        );
        // The CLI is a front end: the library, the types its commands print, the simulator
        // it serves (`pvesandbox sim`) and the server it starts; nothing depends on it.
        let mut cli = our_deps(&read("cli"));
        cli.sort();
        assert_eq!(
            cli,
            [
                "guest-agent",
                "pve-client",
                "pve-sim",
                "pvesandbox",
                "pvesandbox-server",
                "pvesandbox-templates"
            ],
            "pvesandbox-cli is a front end over the library"
        );
        for c in LIBRARIES
            .iter()
            .chain(&["sandbox", "inspect-adapter", "e2e"])
        {
            let deps = our_deps(&read(c));
            assert!(
                !deps.contains(&"pvesandbox-cli".to_owned())
                    && !deps.contains(&"pvesandbox-server".to_owned()),
                "{c} must not depend on a front end"
            );
        }
        // ---- Inspect AI adapter ----
        // The adapter wraps the sandbox crate; it names guest-agent only for the exec request
        // and error types the sandbox API hands out. Never the simulator or the raw client.
        assert_eq!(
            our_deps(&read("inspect-adapter")),
            ["pvesandbox", "guest-agent"],
            "inspect-adapter is a thin layer over pvesandbox"
        );
        // ---- end Inspect AI adapter ----
        assert_eq!(
            our_deps(
                "[dependencies]\npve-client.workspace = true\n[dev-dependencies]\npve-sim.workspace = true\n"
            ),
            ["pve-client"]
        );
    }

    // e2e
    /// The README's real-cluster instructions quote the privilege list and give it to
    /// `pveum role add`; both must follow `nested/privileges.rs`.
    #[test]
    fn readme_quotes_the_privileges_the_token_needs() {
        let readme = fs::read_to_string(root().join("README.md")).unwrap();
        let privs = crate::nested::privileges::PRIVILEGES;
        for p in privs {
            assert!(
                readme.contains(&format!("\"{p}\",")),
                "README.md does not quote privilege {p}"
            );
        }
        let joined = format!("--privs \"{}\"", privs.join(","));
        assert!(
            readme.contains(&joined),
            "README.md's `pveum role add` line differs from {joined}"
        );
        let storage = crate::nested::privileges::STORAGE_PRIVILEGES;
        let joined = format!(
            "pveum role add {} --privs \"{}\"",
            crate::nested::privileges::STORAGE_ROLE,
            storage.join(",")
        );
        assert!(
            readme.contains(&joined),
            "README.md does not grant gc's storage role: {joined}"
        );
    }
}
