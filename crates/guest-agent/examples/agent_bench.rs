//! `cargo xtask bench agent`: REST calls and latency of guest-agent operations against the
//! instant simulator with process guests (real commands in a namespaced guest).
//!
//! Prints, per operation: REST calls per run, p50 and p99 wall time.

use std::time::{Duration, Instant};

use guest_agent::{ExecRequest, GuestAgent};
use pve_client::{PveClient, Vmid, WaitOptions};
use pve_sim::{PveSim, SimConfig, VmSeed};

async fn measure<F, Fut>(sim: &PveSim, name: &str, runs: usize, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // One untimed run warms connections and the handle's poll timing.
    op().await;
    let mut times = Vec::with_capacity(runs);
    let mut calls = Vec::with_capacity(runs);
    for _ in 0..runs {
        sim.reset_requests();
        let t = Instant::now();
        op().await;
        times.push(t.elapsed());
        calls.push(sim.requests().total());
    }
    times.sort();
    calls.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<28} {runs:>4} runs  REST calls p50 {:>4} max {:>4}   p50 {:>9.2?}  p99 {:>9.2?}",
        calls[calls.len() / 2],
        calls[calls.len() - 1],
        pct(0.5),
        pct(0.99),
    );
}

#[tokio::main]
async fn main() {
    if let Err(why) = pve_sim::guest::ProcessGuestFactory::probe() {
        eprintln!("process guests unavailable: {why}");
        std::process::exit(1);
    }
    let sim = PveSim::start(SimConfig::new().process_guests().unwrap())
        .await
        .unwrap();
    sim.add_vm(VmSeed::vm(100, "bench"));
    let client = PveClient::builder()
        .base_url(sim.url())
        .password("root@pam", "secret")
        .fingerprint(sim.fingerprint().unwrap())
        .build()
        .unwrap();
    let upid = client.node("pve1").qemu(Vmid(100)).start().await.unwrap();
    client
        .wait_task(&upid, WaitOptions::with_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    let vm = GuestAgent::new(client, "pve1", pve_client::Vmid(100));
    vm.wait_ready(Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();

    println!("guest-agent against pve-sim (instant latency, process guest), release build");
    measure(&sim, "exec true", 200, || async {
        vm.exec(&ExecRequest::new(["true"])).await.unwrap();
    })
    .await;
    let mib = vec![0x5au8; 1024 * 1024];
    measure(&sim, "exec cat, 1 MiB stdin", 20, || async {
        let out = vm
            .exec(&ExecRequest::new(["wc", "-c"]).stdin(mib.clone()))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1048576");
    })
    .await;
    measure(&sim, "exec 10 MiB stdout", 10, || async {
        let out = vm
            .exec(&ExecRequest::new(["head", "-c", "10485760", "/dev/zero"]))
            .await
            .unwrap();
        assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    })
    .await;
    let big: Vec<u8> = (0..50 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    measure(&sim, "write_file 50 MiB", 5, || async {
        vm.write_file("/root/big.bin", &big).await.unwrap();
    })
    .await;
    measure(&sim, "read_file 50 MiB", 5, || async {
        let back = vm.read_file("/root/big.bin", None).await.unwrap();
        assert_eq!(back.len(), big.len());
    })
    .await;
}
