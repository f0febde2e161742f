//! `cargo xtask bench sandbox`: what a warm sample costs, in REST calls and wall time.
//!
//! Against the embedded simulator with process guests (root needed), instant tasks, after one
//! warm-up sample: N samples of one VM, each `sample_init` + 10 trivial execs + cleanup,
//! sequentially, then the same with 4 samples at once. Prints p50/p95 per phase and the REST
//! calls per sample (the peer needs 161 for the 1-VM flow).

use std::time::{Duration, Instant};

use guest_agent::ExecRequest;
use pvesandbox::embedded::{SimOptions, start_demo_sim_with};
use pvesandbox::{EvalConfig, Sandboxes, Settings, TaskOptions};

const SAMPLES: usize = 20;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Err(why) = pve_sim::guest::ProcessGuestFactory::probe() {
        eprintln!("sample_bench needs process guests (Linux namespaces, root): {why}");
        std::process::exit(2);
    }
    let sim = start_demo_sim_with(SimOptions {
        port: 0,
        realistic: None,
        process_guests: true,
    })
    .await?;
    let mut settings = sim.settings(Settings::default())?;
    settings.instances[0].max_samples = Some(4);
    let eval = EvalConfig::from_json(
        r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1}]}"#,
    )?;
    let t = Instant::now();
    let task = Sandboxes::task_init(settings, eval, TaskOptions::default()).await?;
    println!(
        "task_init (template download + bake, instant tasks): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let run_one = |task: Sandboxes| async move {
        let t = Instant::now();
        let s = task.sample_init().await?;
        let init = t.elapsed();
        let t = Instant::now();
        let vm = s.get("default")?;
        for i in 0..10 {
            vm.exec(ExecRequest::new(["echo", &i.to_string()])).await?;
        }
        let execs = t.elapsed();
        let t = Instant::now();
        s.cleanup(false).await?;
        Ok::<_, pvesandbox::Error>((init, execs, t.elapsed()))
    };
    run_one(task.clone()).await?; // warm-up: pool probed, code paths hot
    let (mut init, mut execs, mut clean) = (Vec::new(), Vec::new(), Vec::new());
    sim.sim().reset_requests();
    for _ in 0..SAMPLES {
        let (i, e, c) = run_one(task.clone()).await?;
        init.push(i);
        execs.push(e);
        clean.push(c);
    }
    let calls = sim.sim().requests().total() as f64 / SAMPLES as f64;
    println!("{SAMPLES} sequential 1-VM samples (init + 10 execs + cleanup):");
    for (name, v) in [
        ("sample_init", &mut init),
        ("10 execs", &mut execs),
        ("cleanup", &mut clean),
    ] {
        println!(
            "  {name:<12} p50 {:>7.1} ms  p95 {:>7.1} ms",
            pct(v, 0.5),
            pct(v, 0.95)
        );
    }
    println!("  REST calls per sample: {calls:.1} (peer: 161)");
    let t = Instant::now();
    let jobs = (0..4).map(|_| run_one(task.clone()));
    for r in futures_util::future::join_all(jobs).await {
        r?;
    }
    println!(
        "4 samples at once: {:.1} ms wall",
        t.elapsed().as_secs_f64() * 1000.0
    );
    task.task_cleanup().await?;
    let left = sim.leftovers();
    println!("left behind: {left}");
    Ok(())
}
