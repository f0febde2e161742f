//! The real-agent guest backend: QEMU VMs restored from one saved boot, driven through the
//! `GuestFactory`/`Guest` traits exactly as the simulator drives them.
//!
//! Needs the image from `cargo xtask guest-image` and qemu-system-x86; skipped without the
//! image unless `CI` is set. The error texts asserted here are qemu-ga 7.2's own: the fake guest
//! must reproduce them verbatim.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use pve_sim::guest::qemu::{GuestImage, QemuGuestFactory, QemuOptions};
use pve_sim::guest::{BootSpec, Guest, GuestFactory, QgaError};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// One cold boot per test binary; every test restores from it.
static FACTORY: OnceCell<Option<QemuGuestFactory>> = OnceCell::const_new();

async fn factory() -> Option<&'static QemuGuestFactory> {
    FACTORY
        .get_or_init(|| async {
            let Some(image) = GuestImage::locate() else {
                let msg = format!(
                    "no guest image in {:?}: run `cargo xtask guest-image`",
                    GuestImage::default_dir()
                );
                assert!(std::env::var_os("CI").is_none(), "{msg}");
                eprintln!("SKIPPED: {msg}");
                return None;
            };
            let f = QemuGuestFactory::start(image, QemuOptions::default())
                .await
                .expect("cold boot of the guest image");
            eprintln!(
                "qga: accelerator {}, cold boot to agent {:.2} s",
                f.accelerator(),
                f.cold_boot_time().as_secs_f64()
            );
            Some(f)
        })
        .await
        .as_ref()
}

async fn boot(f: &QemuGuestFactory, vmid: u32, name: &str) -> Arc<dyn Guest> {
    let started = Instant::now();
    let g = f
        .boot_qga(BootSpec {
            vmid,
            name: name.into(),
            config: Default::default(),
        })
        .await
        .expect("boot from the saved state");
    eprintln!(
        "qga: vm {vmid} restored to agent-ready in {:.0} ms (boot incl. clock/RNG/hostname {:.0} ms)",
        g.restore_time().as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    g
}

async fn ok(g: &dyn Guest, command: &str, args: Value) -> Value {
    g.execute(command, args)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e:?}"))
}

async fn err(g: &dyn Guest, command: &str, args: Value) -> (String, String) {
    match g.execute(command, args).await {
        Err(QgaError::Command { class, desc }) => (class, desc),
        other => panic!("{command}: expected a command error, got {other:?}"),
    }
}

/// Polls `guest-exec-status` until the process exited (deadline, not a sleep, decides).
async fn wait_exit(g: &dyn Guest, pid: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = ok(g, "guest-exec-status", json!({ "pid": pid })).await;
        if s["exited"] == true {
            return s;
        }
        assert!(Instant::now() < deadline, "pid {pid} still running: {s}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(g: &dyn Guest, script: &str) -> Value {
    let pid = ok(
        g,
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}),
    )
    .await["pid"]
        .clone();
    wait_exit(g, &pid).await
}

fn b64(s: &str) -> String {
    BASE64_STANDARD.encode(s)
}

#[tokio::test]
async fn ping_exec_and_exec_round_trip() {
    let Some(f) = factory().await else { return };
    let g = boot(f, 100, "ping").await;
    assert_eq!(ok(&*g, "guest-ping", json!({})).await, json!({}));
    let info = ok(&*g, "guest-info", json!({})).await;
    eprintln!("qga: agent version {}", info["version"]);

    let pid = ok(
        &*g,
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "echo hi; echo err >&2; exit 3"], "capture-output": true}),
    )
    .await["pid"]
        .clone();
    let s = wait_exit(&*g, &pid).await;
    assert_eq!(s["exitcode"], 3, "{s}");
    assert_eq!(s["out-data"], b64("hi\n"), "{s}");
    assert_eq!(s["err-data"], b64("err\n"), "{s}");
    assert!(s.get("signal").is_none(), "{s}");
    // The status is handed out once; then the pid is forgotten.
    let (class, desc) = err(&*g, "guest-exec-status", json!({ "pid": pid })).await;
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("GenericError", "Invalid parameter 'pid'")
    );

    // Without capture-output there is no data at all.
    let pid = ok(
        &*g,
        "guest-exec",
        json!({"path": "/bin/echo", "arg": ["x"]}),
    )
    .await["pid"]
        .clone();
    let s = wait_exit(&*g, &pid).await;
    assert_eq!(s, json!({"exited": true, "exitcode": 0}));

    let mut rounds = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let pid = ok(&*g, "guest-exec", json!({"path": "/bin/true"})).await["pid"].clone();
        wait_exit(&*g, &pid).await;
        rounds.push(t.elapsed());
    }
    rounds.sort();
    let t = Instant::now();
    for _ in 0..20 {
        ok(&*g, "guest-ping", json!({})).await;
    }
    eprintln!(
        "qga: guest-exec /bin/true + status polling: median {:.1} ms (min {:.1}, max {:.1}); guest-ping {:.2} ms",
        rounds[5].as_secs_f64() * 1e3,
        rounds[0].as_secs_f64() * 1e3,
        rounds[9].as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3 / 20.0
    );
    g.power_off().await;
}

#[tokio::test]
async fn signal_death_and_exec_errors() {
    let Some(f) = factory().await else { return };
    let g = boot(f, 101, "signals").await;
    let s = run(&*g, "kill -TERM $$").await;
    assert_eq!(s["signal"], 15, "{s}");
    assert!(s.get("exitcode").is_none(), "{s}");

    let (class, desc) = err(&*g, "guest-exec", json!({"path": "/no/such/binary"})).await;
    assert_eq!(class, "GenericError");
    assert_eq!(
        desc,
        "Guest agent command failed, error was 'Failed to execute child process \u{201c}/no/such/binary\u{201d} (No such file or directory)'"
    );
    let (_, desc) = err(&*g, "guest-exec-status", json!({"pid": 999_999})).await;
    assert_eq!(desc, "Invalid parameter 'pid'");
    let (class, desc) = err(&*g, "guest-no-such-command", json!({})).await;
    assert_eq!(class, "CommandNotFound");
    assert_eq!(desc, "The command guest-no-such-command has not been found");

    // env and stdin as PVE passes them.
    let pid = ok(
        &*g,
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "echo $K; cat"], "env": ["K=V"],
               "input-data": b64("in"), "capture-output": true}),
    )
    .await["pid"]
        .clone();
    let s = wait_exit(&*g, &pid).await;
    assert_eq!(s["out-data"], b64("V\nin"), "{s}");

    // Root with a login shell, runuser and /tmp are what sandboxes rely on.
    let s = run(
        &*g,
        "id -u; getent passwd root | cut -d: -f7; test -d /tmp && runuser -u nobody -- id -un",
    )
    .await;
    assert_eq!(s["out-data"], b64("0\n/bin/bash\nnobody\n"), "{s}");
    g.power_off().await;
}

#[tokio::test]
async fn file_round_trip_and_errors() {
    let Some(f) = factory().await else { return };
    let g = boot(f, 102, "files").await;
    let h = ok(
        &*g,
        "guest-file-open",
        json!({"path": "/tmp/round", "mode": "w"}),
    )
    .await;
    let w = ok(
        &*g,
        "guest-file-write",
        json!({"handle": h, "buf-b64": b64("hello\nworld")}),
    )
    .await;
    assert_eq!(w, json!({"count": 11, "eof": false}));
    assert_eq!(
        ok(&*g, "guest-file-close", json!({ "handle": h })).await,
        json!({})
    );

    let h = ok(&*g, "guest-file-open", json!({"path": "/tmp/round"})).await;
    let r = ok(&*g, "guest-file-read", json!({"handle": h, "count": 1024})).await;
    assert_eq!(r["buf-b64"], b64("hello\nworld"), "{r}");
    assert_eq!(r["count"], 11, "{r}");
    let r = ok(&*g, "guest-file-read", json!({"handle": h, "count": 1024})).await;
    assert_eq!(r, json!({"count": 0, "buf-b64": "", "eof": true}));
    ok(&*g, "guest-file-close", json!({ "handle": h })).await;
    let (_, desc) = err(&*g, "guest-file-read", json!({"handle": h})).await;
    assert_eq!(desc, format!("handle '{h}' has not been found"));

    let (class, desc) = err(&*g, "guest-file-open", json!({"path": "/nonexistent/file"})).await;
    assert_eq!(class, "GenericError");
    assert_eq!(
        desc,
        "failed to open file '/nonexistent/file' (mode: 'r'): No such file or directory"
    );
    let (_, desc) = err(&*g, "guest-file-open", json!({"path": "/tmp", "mode": "w"})).await;
    assert_eq!(
        desc,
        "failed to open file '/tmp' (mode: 'w'): Is a directory"
    );
    // A directory opens for reading; reading it is what fails.
    let h = ok(&*g, "guest-file-open", json!({"path": "/tmp"})).await;
    let (_, desc) = err(&*g, "guest-file-read", json!({"handle": h})).await;
    eprintln!("qga: reading a directory handle: {desc:?}");
    assert_eq!(desc, "failed to read file: Is a directory");
    ok(&*g, "guest-file-close", json!({ "handle": h })).await;
    g.power_off().await;
}

#[tokio::test]
async fn guests_from_one_saved_state_are_isolated() {
    let Some(f) = factory().await else { return };
    let (a, b) = tokio::join!(boot(f, 103, "alpha"), boot(f, 104, "beta"));
    let h = ok(
        &*a,
        "guest-file-open",
        json!({"path": "/root/mine", "mode": "w"}),
    )
    .await;
    ok(
        &*a,
        "guest-file-write",
        json!({"handle": h, "buf-b64": b64("a")}),
    )
    .await;
    ok(&*a, "guest-file-close", json!({ "handle": h })).await;
    let (_, desc) = err(&*b, "guest-file-open", json!({"path": "/root/mine"})).await;
    assert_eq!(
        desc,
        "failed to open file '/root/mine' (mode: 'r'): No such file or directory"
    );
    assert_eq!(
        ok(&*a, "guest-get-host-name", json!({})).await["host-name"],
        "alpha"
    );
    assert_eq!(
        ok(&*b, "guest-get-host-name", json!({})).await["host-name"],
        "beta"
    );
    // Restored clocks are set to now, and the RNGs no longer replay the saved state.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let t = ok(&*a, "guest-get-time", json!({})).await.as_i64().unwrap();
    assert!(
        (t - now_ns).abs() < 10_000_000_000,
        "guest clock off by {} s",
        (t - now_ns) / 1_000_000_000
    );
    let rand = "head -c 16 /dev/urandom | od -An -tx1";
    let (ra, rb) = tokio::join!(run(&*a, rand), run(&*b, rand));
    assert_ne!(ra["out-data"], rb["out-data"]);

    a.power_off().await;
    assert!(matches!(
        a.execute("guest-ping", json!({})).await,
        Err(QgaError::Unavailable(_))
    ));
    // The other guest is unaffected.
    ok(&*b, "guest-ping", json!({})).await;
    b.power_off().await;
    // Disks do not persist in this backend; the disk calls are accepted and do nothing.
    f.clone_disk(103, 105).await.unwrap();
    f.destroy_disk(105).await.unwrap();
}

/// A QEMU that was killed but not yet reaped is a zombie: as dead as it gets.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test]
async fn dropping_the_factory_ends_its_guests_and_files() {
    // Its own factory (a second cold boot): the shared one is never dropped.
    if factory().await.is_none() {
        return;
    }
    let f = QemuGuestFactory::start(GuestImage::locate().unwrap(), QemuOptions::default())
        .await
        .unwrap();
    let dir = f.dir().to_path_buf();
    let g = f
        .boot_qga(BootSpec {
            vmid: 200,
            name: "orphan".into(),
            config: Default::default(),
        })
        .await
        .unwrap();
    let pid = g.qemu_pid().unwrap();
    assert!(running(pid));
    drop(f);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(Instant::now() < deadline, "QEMU {pid} outlived its factory");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        g.execute("guest-ping", json!({})).await,
        Err(QgaError::Unavailable(_))
    ));
}

#[tokio::test]
async fn guest_shutdown_has_no_reply_and_ends_the_vm() {
    let Some(f) = factory().await else { return };
    let g = boot(f, 105, "shutdown").await;
    assert_eq!(ok(&*g, "guest-shutdown", json!({})).await, json!({}));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match g.execute("guest-ping", json!({})).await {
            Err(QgaError::Unavailable(_)) => break,
            other => assert!(
                Instant::now() < deadline,
                "still up after shutdown: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    g.power_off().await;
}

/// A small file's contents through guest-file-open/read/close.
async fn read_small(g: &dyn Guest, path: &str) -> String {
    let h = ok(g, "guest-file-open", json!({ "path": path })).await;
    let r = ok(g, "guest-file-read", json!({"handle": h, "count": 4096})).await;
    ok(g, "guest-file-close", json!({ "handle": h })).await;
    let bytes = BASE64_STANDARD
        .decode(r["buf-b64"].as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// The guest's clock minus the host's, in nanoseconds.
async fn clock_offset(g: &dyn Guest) -> i64 {
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    ok(g, "guest-get-time", json!({})).await.as_i64().unwrap() - host
}

#[tokio::test]
async fn pause_stops_the_vcpus_and_resume_keeps_the_processes() {
    let Some(f) = factory().await else { return };
    let g = boot(f, 106, "paused").await;
    run(
        &*g,
        // The pid is written before `run` returns: `$!`, not the loop's own `$$` later.
        "nohup sh -c 'while :; do sleep 0.05; done' >/dev/null 2>&1 & echo $! > /root/loop.pid",
    )
    .await;
    let pid = read_small(&*g, "/root/loop.pid").await;
    let before = clock_offset(&*g).await;
    g.pause().await.unwrap();
    // Not a synchronisation: the time that passes while paused is what is being tested.
    let paused_for = Duration::from_millis(1500);
    tokio::time::sleep(paused_for).await;
    g.resume().await.unwrap();
    // kvmclock (and TCG's virtual clock) stood still: the guest's wall clock lags by the pause.
    let lag = before - clock_offset(&*g).await;
    assert!(
        lag > (paused_for.as_nanos() / 2) as i64,
        "the guest clock lags {lag} ns after a {paused_for:?} pause: the VM kept running"
    );
    // The same process, alive: the pid file through the agent's file calls, then its status.
    assert_eq!(read_small(&*g, "/root/loop.pid").await, pid);
    let alive = run(&*g, &format!("kill -0 {}", pid.trim())).await;
    assert_eq!(alive["exitcode"], 0, "{alive}");
    g.power_off().await;
}
