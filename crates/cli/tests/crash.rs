//! `kill -9` at random points of `pvesandbox up`, each followed by `pvesandbox cleanup --run`:
//! nothing of the run may remain (no VM, vnet or zone).
//!
//! The kill point is the Nth REST request the simulator answered for the child (waited on,
//! not slept for), N drawn from the length of a complete `up`. The seed is printed; set
//! `PVESANDBOX_CRASH_SEED` to replay a failure.

// The sandbox crate's test world, shared rather than copied.
#[path = "../../sandbox/tests/common/mod.rs"]
mod common;

use std::process::Stdio;

use common::*;
use pvesandbox::embedded::DemoSim;
use pvesandbox::{Run, RunId, Settings, TaskOptions};
use rand::{Rng, SeedableRng};
use tokio::process::Command;

const POINTS: usize = 20;

struct Child {
    env: Vec<(String, String)>,
    eval: std::path::PathBuf,
}

impl Child {
    fn new(sim: &DemoSim, settings: &Settings, dir: &std::path::Path) -> Child {
        let env = child_env(sim, settings);
        let eval = dir.join("eval.json");
        std::fs::write(
            &eval,
            r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1}]}"#,
        )
        .unwrap();
        Child { env, eval }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pvesandbox"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    fn up(&self, run: &RunId) -> Command {
        self.command(&[
            "up",
            "--run",
            run.as_str(),
            "--eval",
            self.eval.to_str().unwrap(),
        ])
    }

    async fn cleanup(&self, run: &RunId) {
        let out = self
            .command(&["cleanup", "--run", run.as_str()])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "cleanup --run {run} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_anywhere_then_cleanup_leaves_nothing() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let dir = tempfile::tempdir().unwrap();
    let child = Child::new(&sim, &settings, dir.path());
    // Warm the template once, as an eval's task_init would.
    Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
        .await
        .unwrap();

    // How many requests a complete `up` takes.
    let run = RunId::random();
    let before = sim.sim().requests_seen();
    let out = child.up(&run).output().await.unwrap();
    assert!(
        out.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = sim.sim().requests_seen() - before;
    assert!(!sim.leftovers().is_empty(), "up keeps its sample");
    child.cleanup(&run).await;
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());

    let seed = std::env::var("PVESANDBOX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("complete up = {full} requests; seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..POINTS {
        let n = rng.random_range(1..full);
        let run = RunId::random();
        let base = sim.sim().requests_seen();
        let mut proc = child.up(&run).spawn().unwrap();
        let killed = tokio::select! {
            _ = sim.sim().wait_for_requests(base + n) => {
                proc.start_kill().unwrap();
                true
            }
            _ = proc.wait() => false,
        };
        let _ = proc.wait().await;
        let at = sim.sim().requests_seen() - base;
        child.cleanup(&run).await;
        let left = sim.leftovers();
        println!("point {i}: kill after request {n} (saw {at}), killed={killed}: left {left}");
        assert!(
            left.is_empty(),
            "seed {seed}, point {i} (request {n}): run {run} left {left:?}"
        );
    }
}
