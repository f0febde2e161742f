//! The `pvesandbox` binary against the simulator: up, ls, exec, cp both ways, down, and the
//! exit codes and JSON that scripts rely on.

mod common;

use std::process::Output;

use common::*;
use pvesandbox::{RunId, Sandboxes, TaskOptions};

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
    Sandboxes::task_init(settings.clone(), one_vm(), TaskOptions::default())
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
