//! Leases per second through the supervisor with 1 000 concurrent acquirers over 4 instances,
//! and the acquire latency when capacity is free.
//!
//! ```text
//! cargo xtask bench pool
//! ```

use std::time::{Duration, Instant};

use pve_sim::{PveSim, SimConfig};
use pvesandbox_pool::{InstanceConfig, Needs, Pool, PoolOptions};

const ACQUIRERS: usize = 1000;
const ROUNDS: usize = 5;

fn instance(sim: &PveSim, i: usize) -> InstanceConfig {
    let url = sim.url().trim_start_matches("https://");
    let (host, port) = url.split_once(':').expect("sim url has a port");
    let json = format!(
        r#"{{"instance_id": "i{i}", "pool_id": "bench", "host": "{host}", "port": {port}, "node": "pve{i}",
            "token_id": "root@pam!ci", "token_secret": "00000000-0000-0000-0000-000000000001",
            "fingerprint": "{}", "max_samples": 8}}"#,
        sim.fingerprint().unwrap_or_default()
    );
    serde_json::from_str(&json).expect("valid instance json")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = PveSim::start(SimConfig::new().nodes(&["pve0", "pve1", "pve2", "pve3"])).await?;
    let pool = Pool::start(
        (0..4).map(|i| instance(&sim, i)).collect(),
        PoolOptions::default(),
    )
    .await?;
    let needs = Needs {
        ram_mb: 1024,
        vcpus: 1,
    };

    // Capacity free: one caller at a time, so every acquire is served at once.
    let mut free = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let lease = pool
            .acquire("bench", needs, Duration::from_secs(10))
            .await?;
        free.push(t.elapsed());
        drop(lease);
    }
    free.sort();

    // Contention: 1 000 callers for 32 slots (4 instances × 8 samples).
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let tasks: Vec<_> = (0..ACQUIRERS)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let lease = pool
                        .acquire("bench", needs, Duration::from_secs(60))
                        .await
                        .expect("lease");
                    tokio::task::yield_now().await;
                    drop(lease);
                })
            })
            .collect();
        for task in tasks {
            task.await?;
        }
        rates.push(ACQUIRERS as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!("pool: 4 instances × max_samples 8, supervisor on its own actix thread");
    println!(
        "  {ACQUIRERS} concurrent acquirers, {ROUNDS} rounds: median {:.0} leases/s (min {:.0}, max {:.0})",
        rates[ROUNDS / 2],
        rates[0],
        rates[ROUNDS - 1]
    );
    println!(
        "  acquire with capacity free (2000 sequential): p50 {:?}, p99 {:?}, max {:?}",
        pct(&free, 0.5),
        pct(&free, 0.99),
        free[free.len() - 1]
    );
    Ok(())
}
