//! `cargo xtask bench sandbox [--realistic [FACTOR]]`: what a sample costs, in REST calls and
//! wall time.
//!
//! Against the embedded simulator with process guests (root needed).
//!
//! - Default: instant tasks, after one warm-up sample: N samples of one VM, each
//!   `sample_init` + 10 trivial execs + cleanup, sequentially, then the same with 4 samples at
//!   once. Prints p50/p95 per phase and the REST calls per sample (the peer needs 161 for the
//!   1-VM flow).
//! - `--realistic [FACTOR]`: task durations as on a real PVE host (clone 2 s, start 8 s, agent
//!   up 12 s after start, ...; times FACTOR, default 1), once with each task polling schedule
//!   side by side (`doubling`, the old one, and `learned`): a cold 1-VM sample (the first of a
//!   fresh task: nothing learned, as in a one-shot `pvesandbox up`), a warm one (the next
//!   sample of that task), and 8 samples at once. Per phase: REST calls (of them task-status
//!   polls and agent pings) and wall time.

use std::time::{Duration, Instant};

use guest_agent::ExecRequest;
use pvesandbox::embedded::{DemoSim, SimOptions, start_demo_sim_with};
use pvesandbox::{EvalConfig, Run, Settings, TaskOptions};
use pvesandbox_pool::TaskPolling;

const SAMPLES: usize = 20;
const EVAL: &str = r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1}]}"#;

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--realistic") => {
            let factor = match args.get(1) {
                Some(f) => f
                    .parse()
                    .map_err(|_| format!("FACTOR {f:?}: not a number"))?,
                None => 1.0,
            };
            realistic(factor).await
        }
        None => instant().await,
        Some(other) => Err(format!("unknown argument {other:?}: use --realistic [FACTOR]").into()),
    }
}

async fn instant() -> Result<(), Box<dyn std::error::Error>> {
    let sim = start_demo_sim_with(SimOptions {
        port: 0,
        realistic: None,
        process_guests: true,
        ..Default::default()
    })
    .await?;
    let mut settings = sim.settings(Settings::default())?;
    settings.instances[0].max_samples = Some(4);
    let eval = EvalConfig::from_json(EVAL)?;
    let t = Instant::now();
    let task = Run::task_init(settings, eval, TaskOptions::default()).await?;
    println!(
        "task_init (template download + bake, instant tasks): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let run_one = |task: Run| async move {
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

/// REST calls of one phase: all, task-status polls, agent pings.
#[derive(Debug, Clone, Copy, Default)]
struct Calls {
    all: usize,
    polls: usize,
    pings: usize,
}

impl Calls {
    /// What the simulator logged since the last call, which it then forgets.
    fn take(sim: &DemoSim) -> Calls {
        let log = sim.sim().requests();
        sim.sim().reset_requests();
        Calls {
            all: log.total(),
            polls: log.count("GET", "/nodes/{node}/tasks/{upid}/status"),
            pings: log.count("POST", "/nodes/{node}/qemu/{vmid}/agent/ping"),
        }
    }
    fn add(self, o: Calls) -> Calls {
        Calls {
            all: self.all + o.all,
            polls: self.polls + o.polls,
            pings: self.pings + o.pings,
        }
    }
    fn per(self, n: usize) -> (f64, f64, f64) {
        let n = n as f64;
        (
            self.all as f64 / n,
            self.polls as f64 / n,
            self.pings as f64 / n,
        )
    }
}

/// One phase's cost under one schedule.
type Phase = (Calls, Duration);

/// A 1-VM sample's phases: init, one exec, cleanup.
async fn one_sample(sim: &DemoSim, task: &Run) -> Result<[Phase; 3], pvesandbox::Error> {
    Calls::take(sim);
    let t = Instant::now();
    let s = task.sample_init().await?;
    let init = (Calls::take(sim), t.elapsed());
    let t = Instant::now();
    s.get("default")?
        .exec(ExecRequest::new(["echo", "hello"]))
        .await?;
    let exec = (Calls::take(sim), t.elapsed());
    let t = Instant::now();
    s.cleanup(false).await?;
    Ok([init, exec, (Calls::take(sim), t.elapsed())])
}

struct Figures {
    cold: [Phase; 3],
    warm: [Phase; 3],
    /// 8 samples at once (init + exec + cleanup each): all calls, wall.
    eight: Phase,
}

async fn measure(
    sim: &DemoSim,
    polling: TaskPolling,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let mut settings = sim.settings(Settings::default())?;
    settings.instances[0].max_samples = Some(8);
    settings.instances[0].task_polling = polling;
    let t = Instant::now();
    let task = Run::task_init(
        settings,
        EvalConfig::from_json(EVAL)?,
        TaskOptions::default(),
    )
    .await?;
    eprintln!(
        "  {polling:?}: task_init {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cold = one_sample(sim, &task).await?;
    let warm = one_sample(sim, &task).await?;
    Calls::take(sim);
    let t = Instant::now();
    let jobs = (0..8).map(|_| {
        let task = task.clone();
        async move {
            let s = task.sample_init().await?;
            s.get("default")?
                .exec(ExecRequest::new(["echo", "hello"]))
                .await?;
            s.cleanup(false).await
        }
    });
    for r in futures_util::future::join_all(jobs).await {
        r?;
    }
    let eight = (Calls::take(sim), t.elapsed());
    task.task_cleanup().await?;
    Ok(Figures { cold, warm, eight })
}

async fn realistic(factor: f64) -> Result<(), Box<dyn std::error::Error>> {
    let sim = start_demo_sim_with(SimOptions {
        port: 0,
        realistic: Some(factor),
        process_guests: true,
        ..Default::default()
    })
    .await?;
    eprintln!("realistic task durations x{factor}; the template is built by the first run");
    let before = measure(&sim, TaskPolling::Doubling).await?;
    let after = measure(&sim, TaskPolling::Learned).await?;
    println!(
        "1-VM sample, task durations as on PVE x{factor}: REST calls (task polls/agent pings) and wall"
    );
    println!(
        "{:<22} {:>26} {:>26}",
        "", "doubling (before)", "learned (after)"
    );
    let cell = |(c, d): Phase| {
        format!(
            "{:>4} ({:>3}/{:>3}) {:>8.2} s",
            c.all,
            c.polls,
            c.pings,
            d.as_secs_f64()
        )
    };
    for (name, b, a) in [
        ("cold", &before.cold, &after.cold),
        ("warm", &before.warm, &after.warm),
    ] {
        for (i, phase) in ["sample_init", "1 exec", "cleanup"].iter().enumerate() {
            println!(
                "{:<22} {:>26} {:>26}",
                format!("{name} {phase}"),
                cell(b[i]),
                cell(a[i])
            );
        }
        let total = |p: &[Phase; 3]| {
            p.iter()
                .fold((Calls::default(), Duration::ZERO), |(c, d), (c2, d2)| {
                    (c.add(*c2), d + *d2)
                })
        };
        println!(
            "{:<22} {:>26} {:>26}",
            format!("{name} whole sample"),
            cell(total(b)),
            cell(total(a))
        );
    }
    let eight = |(c, d): Phase| {
        let (all, polls, pings) = c.per(8);
        format!(
            "{all:>5.1} ({polls:>4.1}/{pings:>4.1}) {:>6.2} s",
            d.as_secs_f64()
        )
    };
    println!(
        "{:<22} {:>26} {:>26}",
        "8 at once, per sample",
        eight(before.eight),
        eight(after.eight)
    );
    println!("(8 at once: calls per sample, wall for all eight)");
    println!("left behind: {}", sim.leftovers());
    Ok(())
}
