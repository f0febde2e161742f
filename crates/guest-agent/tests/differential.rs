//! The fake guest against the real one: the same agent requests through PVE's routes to a
//! process guest and to real qemu-guest-agent in QEMU, and the answers must be identical
//! (pids aside). Runs when the guest image exists; with `CI` set it must.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pve_client::{Params, PveClient};
use pve_sim::SimConfig;
use pve_sim::guest::qemu::{GuestImage, QemuGuestFactory, QemuOptions};
use serde_json::Value;

const AGENT: &str = "/nodes/pve1/qemu/100/agent";

/// What a request answered: the data, or the error status and PVE's message.
async fn call(c: &PveClient, method: &str, cmd: &str, p: &Params) -> Value {
    let path = format!("{AGENT}/{cmd}");
    let r = if method == "GET" {
        c.get(&path, p).await
    } else {
        c.post(&path, p).await
    };
    match r {
        Ok(v) => v,
        Err(e) => serde_json::json!({"status": e.status(), "message": e.pve_message()}),
    }
}

/// Runs a command to completion and returns its final exec-status (or the exec error).
async fn exec(c: &PveClient, argv: &[&str], input: Option<&str>) -> Value {
    let mut p = Params::new().with_array("command", argv.iter().copied());
    if let Some(i) = input {
        p = p.with("input-data", i);
    }
    let started = call(c, "POST", "exec", &p).await;
    let Some(pid) = started.get("pid").and_then(Value::as_i64) else {
        return started;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = call(c, "GET", "exec-status", &Params::new().with("pid", pid)).await;
        if st.get("exited").and_then(Value::as_i64) == Some(1) || Instant::now() > deadline {
            // The pid is forgotten after one exited read; the second answer must say so.
            let again = call(c, "GET", "exec-status", &Params::new().with("pid", pid)).await;
            return serde_json::json!({"status": st, "again": again});
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_guest_answers_like_qemu_guest_agent() {
    let Some(image) = GuestImage::locate() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no guest image: run `cargo xtask guest-image`"
        );
        eprintln!("skipping: no guest image (cargo xtask guest-image)");
        return;
    };
    if !pve_sim::guest::ProcessGuestFactory::available_or_skip() {
        return;
    }
    let qemu = Arc::new(
        QemuGuestFactory::start(image, QemuOptions::default())
            .await
            .unwrap(),
    );
    eprintln!(
        "differential: real side is qemu-guest-agent under {}",
        qemu.accelerator()
    );
    let fake = common::boot_vm(SimConfig::new().process_guests().unwrap()).await;
    let real = common::boot_vm(SimConfig::new().guests(qemu)).await;

    let execs: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        (
            "streams and exit code",
            vec!["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
            None,
        ),
        ("signal death", vec!["/bin/sh", "-c", "kill -TERM $$"], None),
        ("stdin", vec!["/bin/cat"], Some("line one\nline two\n")),
        (
            "latin-1 stdin",
            vec!["/bin/sh", "-c", "od -An -tx1 | tr -d ' \\n'"],
            Some("h\u{e9}"),
        ),
        (
            "non-UTF-8 output",
            vec!["/bin/sh", "-c", "printf '\\303\\251\\377\\000x'"],
            None,
        ),
        ("missing binary", vec!["/no/such/binary"], None),
        ("PATH lookup", vec!["true"], None),
        ("not executable", vec!["/etc/passwd"], None),
        (
            "user switch",
            vec!["/usr/sbin/runuser", "-u", "nobody", "--", "id", "-un"],
            None,
        ),
        (
            "no such user",
            vec!["/usr/sbin/runuser", "-u", "nosuchuser", "--", "true"],
            None,
        ),
        (
            "cwd and env of the agent",
            vec!["/bin/sh", "-c", "pwd; echo \"home=${HOME-unset}\""],
            None,
        ),
        (
            "100 KB output",
            vec!["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a"],
            None,
        ),
    ];
    let mut diffs = Vec::new();
    for (name, argv, input) in &execs {
        let (a, b) = (
            exec(&fake.client, argv, *input).await,
            exec(&real.client, argv, *input).await,
        );
        if a != b {
            diffs.push(format!("{name}:\n  process: {a}\n  qemu-ga: {b}"));
        }
    }
    // Files.
    let w = |f: &str, content: &str, encode: bool| {
        Params::new()
            .with("file", f)
            .with("content", content)
            .with("encode", encode)
    };
    let files: Vec<(&str, &str, &str, Params)> = vec![
        (
            "write",
            "POST",
            "file-write",
            w("/tmp/diff.txt", "hello\nworld\n", true),
        ),
        (
            "write base64",
            "POST",
            "file-write",
            w("/tmp/diff.bin", "AP8BAgM=", false),
        ),
        (
            "read text",
            "GET",
            "file-read",
            Params::new().with("file", "/tmp/diff.txt"),
        ),
        (
            "read binary decode=0",
            "GET",
            "file-read",
            Params::new()
                .with("file", "/tmp/diff.bin")
                .with("decode", false),
        ),
        (
            "read binary latin-1",
            "GET",
            "file-read",
            Params::new().with("file", "/tmp/diff.bin"),
        ),
        (
            "read offset/count",
            "GET",
            "file-read",
            Params::new()
                .with("file", "/tmp/diff.txt")
                .with("offset", 6)
                .with("count", 3),
        ),
        (
            "read missing",
            "GET",
            "file-read",
            Params::new().with("file", "/nonexistent/file"),
        ),
        (
            "read directory",
            "GET",
            "file-read",
            Params::new().with("file", "/etc"),
        ),
        (
            "write directory",
            "POST",
            "file-write",
            w("/tmp", "x", true),
        ),
        (
            "write missing parent",
            "POST",
            "file-write",
            w("/no/such/dir/f", "x", true),
        ),
        (
            "unknown pid",
            "GET",
            "exec-status",
            Params::new().with("pid", 999_999),
        ),
        ("hostname", "GET", "get-host-name", Params::new()),
    ];
    for (name, method, cmd, p) in &files {
        let (a, b) = (
            call(&fake.client, method, cmd, p).await,
            call(&real.client, method, cmd, p).await,
        );
        if a != b {
            diffs.push(format!("{name}:\n  process: {a}\n  qemu-ga: {b}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "the fake differs from qemu-ga:\n{}",
        diffs.join("\n")
    );
}
