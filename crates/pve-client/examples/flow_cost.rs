//! Prints what the core sandbox flow costs against the instant simulator:
//! login, clone a template, start, wait, stop, destroy — REST calls and wall time.
//!
//! ```text
//! cargo xtask bench        # release build
//! cargo run -p pve-client --example flow_cost
//! ```

use std::time::{Duration, Instant};

use pve_client::{CloneOptions, DestroyOptions, PveClient, Vmid, WaitOptions};
use pve_sim::{PveSim, SimConfig, VmSeed};

const RUNS: u32 = 200;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = PveSim::start(SimConfig::new()).await?;
    sim.add_vm(VmSeed::template(9000, "tpl"));
    let wait = WaitOptions::with_timeout(Duration::from_secs(30));
    let mut times = Vec::with_capacity(RUNS as usize);
    let mut calls = 0;
    for i in 0..RUNS {
        sim.reset_requests();
        let started = Instant::now();
        // A fresh client each run, so the login is part of the measured flow.
        let pve = PveClient::builder()
            .base_url(sim.url())
            .password("root@pam", "secret")
            .fingerprint(sim.fingerprint().unwrap_or_default())
            .build()?;
        let node = pve.node("pve1");
        let id = Vmid(1000 + i);
        pve.wait_task(
            &node
                .qemu(Vmid(9000))
                .clone_vm(&CloneOptions::new(id))
                .await?,
            wait,
        )
        .await?;
        let vm = node.qemu(id);
        pve.wait_task(&vm.start().await?, wait).await?;
        pve.wait_task(&vm.stop().await?, wait).await?;
        pve.wait_task(&vm.destroy(DestroyOptions::thorough()).await?, wait)
            .await?;
        times.push(started.elapsed());
        calls = sim.requests().total();
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / RUNS;
    println!(
        "flow: login, clone, start, wait, stop, destroy (instant pve-sim, HTTPS, new client and TLS handshake each run)"
    );
    println!("  REST calls per flow: {calls}");
    println!(
        "  wall time over {RUNS} runs: mean {mean:?}, p50 {:?}, p95 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() * 95 / 100],
        times[times.len() - 1]
    );
    let counts = sim.requests().counts();
    for (route, n) in counts {
        println!("    {n:>2} × {route}");
    }
    Ok(())
}
