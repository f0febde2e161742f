//! The `pvesandbox` binary against the simulator: up, ls, exec, cp both ways, down, and the
//! exit codes and JSON that scripts rely on.

// The sandbox crate's test world, shared rather than copied.
#[path = "../../sandbox/tests/common/mod.rs"]
mod common;

use std::process::Output;

use common::*;
use pvesandbox::{Run, RunId, TaskOptions};

struct Cli {
    env: Vec<(String, String)>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_pvesandbox"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().cloned())
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_ls_exec_cp_down() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    // Warm the template in-process; the CLI finds it by tag.
    Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
        .await
        .unwrap();
    let env = child_env(&sim, &settings);
    let cli = Cli { env };
    let dir = tempfile::tempdir().unwrap();
    let eval = dir.path().join("eval.yaml");
    std::fs::write(
        &eval,
        "vms_config:\n  - vm_source_config: {built_in: debian13}\n    ram_mb: 512\n    vcpus: 1\n",
    )
    .unwrap();
    // The commands run blocking child processes; keep them off the runtime's workers.
    let (run, up, ls, exec, fail, cp_in, back, down, after) =
        tokio::task::spawn_blocking(move || {
            let up: serde_json::Value =
                serde_json::from_str(&cli.ok(&["--json", "up", "--eval", eval.to_str().unwrap()]))
                    .unwrap();
            let run: RunId = up["run"].as_str().unwrap().parse().unwrap();
            let ls: serde_json::Value = serde_json::from_str(&cli.ok(&["--json", "ls"])).unwrap();
            let exec = cli.ok(&[
                "exec",
                "--run",
                run.as_str(),
                "--",
                "sh",
                "-c",
                "echo hi from $(hostname)",
            ]);
            let fail = cli.run(&["exec", "--run", run.as_str(), "--", "sh", "-c", "exit 7"]);
            // A fresh process attaches to the sample by its id string alone.
            let sample = up["sample"].as_str().unwrap().to_owned();
            let by_id = cli.ok(&["exec", "--sample", &sample, "--", "hostname"]);
            assert_eq!(by_id.trim(), format!("default.{sample}"));
            let none = cli.run(&["exec", "--sample", &format!("s9.{run}"), "--", "true"]);
            assert_eq!(none.status.code(), Some(3), "no such sample: exit 3");
            let local = dir.path().join("in.bin");
            std::fs::write(&local, [0u8, 1, 2, 255]).unwrap();
            let remote = format!("{run}:default:/root/in.bin");
            let cp_in = cli.ok(&["cp", local.to_str().unwrap(), &remote]);
            let back_path = dir.path().join("back.bin");
            cli.ok(&["cp", &remote, back_path.to_str().unwrap()]);
            let back = std::fs::read(&back_path).unwrap();
            let down = cli.ok(&["down", run.as_str()]);
            let after = cli.run(&["exec", "--run", run.as_str(), "--", "true"]);
            (run, up, ls, exec, fail, cp_in, back, down, after)
        })
        .await
        .unwrap();
    assert_eq!(up["sandboxes"][0]["name"], "default");
    let rows = ls.as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["run"] == run.as_str() && r["name"] == "default"),
        "{ls}"
    );
    assert_eq!(exec.trim(), format!("hi from default.s0.{run}"));
    assert_eq!(
        fail.status.code(),
        Some(7),
        "exec returns the command's status"
    );
    assert_eq!(cp_in.trim(), "4 bytes");
    assert_eq!(back, [0u8, 1, 2, 255]);
    assert!(down.contains("removed 1 VM(s), 1 network(s)"), "{down}");
    assert_eq!(after.status.code(), Some(3), "no such run: exit 3");
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}

#[test]
fn bad_configuration_exits_2_naming_the_field() {
    let cli = Cli {
        env: vec![
            ("PROXMOX_HOST".into(), "127.0.0.1".into()),
            ("PROXMOX_PORT".into(), "not-a-port".into()),
        ],
    };
    let out = cli.run(&["ls"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PROXMOX_PORT") && err.contains("not-a-port"),
        "{err}"
    );
    let out = Cli { env: vec![] }.run(&["--json", "cleanup"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 2);
}

/// `pvesandbox sim` as another client meets it: a seeded world, the exports and password
/// login it prints, `up` and `down` against it through its image mirror, and SIGTERM
/// stopping it as Ctrl-C does, with its guests' directories removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sim_serves_a_seeded_world_and_sigterm_removes_its_guests() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    if !guests_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(
        &seed,
        "vms:\n  - {vmid: 100, name: web, running: true, config: {memory: 1024}}\n\
         volumes:\n  - {storage: local, content: iso, filename: tools.iso, size: 4096}\n",
    )
    .unwrap();
    // Process guests live under TMPDIR: what must be gone once the simulator stopped.
    let guests = dir.path().join("guests");
    std::fs::create_dir(&guests).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pvesandbox"))
        .args(["sim", "--port", "0", "--process-guests", "--seed"])
        .arg(&seed)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TMPDIR", &guests)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut env = Vec::new();
    let mut login = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(kv) = line.strip_prefix("export ") {
            let (k, v) = kv.split_once('=').unwrap();
            env.push((k.to_owned(), v.to_owned()));
        } else if let Some(l) = line.strip_prefix("#   export ") {
            login = Some(l.to_owned());
            break;
        }
    }
    let var = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    // The password login it prints works, and the seed is there.
    let login = login.expect("a password login line");
    let field = |k: &str| {
        login
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_owned()
    };
    let client = pve_client::PveClient::builder()
        .base_url(format!("https://127.0.0.1:{}", var("PROXMOX_PORT")))
        .password(
            format!("{}@{}", field("PROXMOX_USER"), field("PROXMOX_REALM")),
            field("PROXMOX_PASSWORD"),
        )
        .fingerprint(&var("PROXMOX_FINGERPRINT"))
        .build()
        .unwrap();
    let node = var("PROXMOX_NODE");
    let vms = client
        .get(&format!("/nodes/{node}/qemu"), &Default::default())
        .await
        .unwrap();
    assert!(
        vms.as_array()
            .unwrap()
            .iter()
            .any(|v| v["vmid"] == 100 && v["status"] == "running"),
        "{vms}"
    );
    let isos = client
        .get(
            &format!("/nodes/{node}/storage/local/content/local:iso/tools.iso"),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(isos["size"], 4096);

    // `up` and `down` with nothing but what it printed (and an image cache).
    env.push((
        "PVESANDBOX_IMAGES__CACHE_DIR".into(),
        dir.path().join("cache").display().to_string(),
    ));
    let eval = dir.path().join("eval.yaml");
    std::fs::write(
        &eval,
        "vms_config:\n  - vm_source_config: {built_in: debian13}\n    ram_mb: 512\n    vcpus: 1\n",
    )
    .unwrap();
    let (up, down) = tokio::task::spawn_blocking(move || {
        let cli = Cli { env };
        let up: serde_json::Value =
            serde_json::from_str(&cli.ok(&["--json", "up", "--eval", eval.to_str().unwrap()]))
                .unwrap();
        let run = up["run"].as_str().unwrap().to_owned();
        (up, cli.ok(&["down", &run]))
    })
    .await
    .unwrap();
    assert_eq!(up["sandboxes"][0]["name"], "default", "{up}");
    assert!(down.contains("removed 1 VM(s)"), "{down}");

    assert!(
        std::fs::read_dir(&guests).unwrap().next().is_some(),
        "the seeded running VM has a guest directory"
    );
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().await.unwrap();
    assert!(status.success(), "SIGTERM ends it cleanly: {status}");
    let left: Vec<_> = std::fs::read_dir(&guests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `pvesandbox serve` on a fresh machine: one command, no Proxmox configured, the embedded
/// simulator underneath; it refuses to run without a key unless told, answers OpenSandbox's
/// create, and on SIGTERM removes what it made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_starts_on_the_embedded_simulator_with_one_command() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    if !guests_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bare = |args: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_pvesandbox"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TMPDIR", dir.path())
            .env("PVESANDBOX_IMAGES__CACHE_DIR", dir.path().join("cache"))
            .kill_on_drop(true);
        c
    };
    let refused = bare(&["serve", "--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("serve.api_keys"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut child = bare(&["serve", "--listen", "127.0.0.1:0"])
        .env("OPEN_SANDBOX_API_KEY", "k")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut domain = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("export OPEN_SANDBOX_DOMAIN=") {
            domain = rest.split(' ').next().map(str::to_owned);
            break;
        }
    }
    let base = format!("http://{}", domain.expect("the export line"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let created: serde_json::Value = http
        .post(format!("{base}/v1/sandboxes"))
        .header("OPEN-SANDBOX-API-KEY", "k")
        .json(&serde_json::json!({"image": {"uri": "debian13"}, "resourceLimits": {"memory": "512Mi"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("an id").to_owned();
    loop {
        let s: serde_json::Value = http
            .get(format!("{base}/v1/sandboxes/{id}"))
            .header("OPEN-SANDBOX-API-KEY", "k")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match s["status"]["state"].as_str() {
            Some("Running") => break,
            Some("Pending") => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            other => panic!("{other:?}: {s}"),
        }
    }
    let pid = child.id().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
}
