//! `pvesandbox demo`: two samples of two VMs each, concurrently, on their own networks.
//!
//! Without a configured Proxmox it runs everything against the embedded simulator (process
//! guests, realistic task durations scaled down), so a fresh clone shows the product working.

use std::time::{Duration, Instant};

use clap::Args;
use guest_agent::ExecRequest;
use pvesandbox::{Error, EvalConfig, Run, Sample, TaskOptions};

use crate::commands::Ctx;
use crate::progress::Bars;

/// `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Scale of the simulator's realistic task durations (1.0 = a real PVE's typical times).
    #[arg(long, default_value_t = 0.05)]
    pub time_factor: f64,
    /// Eval config to run instead of the built-in two-VM sample.
    #[arg(long, value_name = "PATH")]
    pub eval: Option<std::path::PathBuf>,
}

/// Phase name and duration per sample.
type Row = Vec<(&'static str, Duration)>;

/// The demo's sample: `default` (sandbox) and `peer` (also a sandbox) on one auto network.
fn demo_eval() -> EvalConfig {
    EvalConfig::from_json(
        r#"{"sdn_config": "auto", "vms_config": [
            {"vm_source_config": {"built_in": "debian13"}, "ram_mb": 1024, "vcpus": 1},
            {"vm_source_config": {"built_in": "debian13"}, "name": "peer", "ram_mb": 1024, "vcpus": 1}
        ]}"#,
    )
    .expect("the demo's eval config is valid")
}

async fn one_sample(task: &Run, idx: usize) -> Result<(Sample, Row), Error> {
    let sample = task.sample_init().await?;
    let mut row: Row = vec![
        ("lease", sample.timings().lease),
        ("network", sample.timings().network),
        ("clone+start", sample.timings().vms),
        ("agents", sample.timings().agents),
    ];
    let t = Instant::now();
    for vm in sample.sandboxes() {
        let out = vm
            .exec(ExecRequest::new([
                "sh",
                "-c",
                "echo hello from $(hostname)",
            ]))
            .await?;
        println!(
            "  sample {idx} {:<8} exec -> {}",
            vm.name(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    row.push(("exec", t.elapsed()));
    let t = Instant::now();
    let default = sample.get("default")?;
    let secret = format!("secret of sample {idx}\n");
    default
        .write_file(&format!("/root/sample-{idx}.txt"), secret.as_bytes())
        .await?;
    let back = default
        .read_file(&format!("/root/sample-{idx}.txt"), None)
        .await?;
    if back != secret.as_bytes() {
        return Err(Error::Config {
            field: "demo".into(),
            value: String::from_utf8_lossy(&back).into_owned(),
            fix: "read_file returned other bytes than write_file wrote: a bug".into(),
        });
    }
    row.push(("files", t.elapsed()));
    Ok((sample, row))
}

/// Runs the demo; exit 1 when an isolation check fails.
pub async fn run(ctx: &Ctx, a: DemoArgs) -> Result<i32, Error> {
    let mut settings = ctx.settings()?;
    let eval = match &a.eval {
        Some(p) => EvalConfig::from_file(p)?,
        None => demo_eval(),
    };
    let mut sim_used = None;
    if !settings.has_proxmox() {
        println!(
            "No Proxmox configured (PROXMOX_HOST / PROXMOX_CONFIG_FILE): using the embedded simulator, task durations x{}",
            a.time_factor
        );
        let sim = pvesandbox::embedded::start_demo_sim(a.time_factor).await?;
        settings = sim.settings(settings)?;
        sim_used = Some(sim);
    }
    let bars = Bars::new(ctx.json);
    let t = Instant::now();
    let task = Run::task_init(
        settings,
        eval,
        TaskOptions {
            run: None,
            progress: Some(bars.callback()),
            ..Default::default()
        },
    )
    .await?;
    bars.finish();
    let task_init = t.elapsed();
    println!(
        "run {} (templates ready in {:.2} s)",
        task.run_id(),
        task_init.as_secs_f64()
    );

    let (a0, a1) = tokio::join!(one_sample(&task, 0), one_sample(&task, 1));
    let (s0, mut r0) = a0?;
    let (s1, mut r1) = a1?;

    // Isolation: each sample's VM sees its own file and not the other sample's.
    let mut isolated = true;
    for (mine, other, s) in [(0, 1, &s0), (1, 0, &s1)] {
        let vm = s.get("default")?;
        let probe = vm
            .exec(ExecRequest::new([
                "sh".to_owned(),
                "-c".to_owned(),
                format!("test -e /root/sample-{mine}.txt && ! test -e /root/sample-{other}.txt"),
            ]))
            .await?;
        let zone = s.zone().unwrap_or_default();
        println!(
            "  sample {mine}: zone {zone}, own file visible, sample {other}'s file {}",
            if probe.success() {
                "not visible (isolated)"
            } else {
                "VISIBLE"
            }
        );
        isolated &= probe.success();
    }
    let z0 = s0.zone();
    let z1 = s1.zone();
    isolated &= z0 != z1;

    let (c0, c1) = tokio::join!(
        async {
            let t = Instant::now();
            s0.cleanup(false).await.map(|_| t.elapsed())
        },
        async {
            let t = Instant::now();
            s1.cleanup(false).await.map(|_| t.elapsed())
        }
    );
    r0.push(("cleanup", c0?));
    r1.push(("cleanup", c1?));
    let t = Instant::now();
    task.task_cleanup().await?;
    let task_cleanup = t.elapsed();

    print_table(&[r0, r1]);
    println!(
        "task init {:.3} s, task cleanup {:.3} s",
        task_init.as_secs_f64(),
        task_cleanup.as_secs_f64()
    );
    if let Some(sim) = &sim_used {
        println!(
            "REST calls served by the simulator: {}",
            sim.sim().requests().total()
        );
        let left = sim.leftovers();
        println!("left behind: {left}");
        if !left.is_empty() {
            return Ok(1);
        }
    }
    Ok(if isolated { 0 } else { 1 })
}

fn print_table(rows: &[Row]) {
    let phases: Vec<&str> = rows[0].iter().map(|(p, _)| *p).collect();
    print!("{:<12}", "phase");
    for i in 0..rows.len() {
        print!("{:>12}", format!("sample {i}"));
    }
    println!();
    for (k, p) in phases.iter().enumerate() {
        print!("{p:<12}");
        for r in rows {
            print!("{:>10.3} s", r[k].1.as_secs_f64());
        }
        println!();
    }
}
