//! Property test of the supervisor over random acquire / release / failed-cleanup sequences:
//! never over capacity, nobody starves, everything is released in the end.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use pve_sim::{PveSim, SimConfig};
use pvesandbox_pool::{CleanupRetry, InstanceConfig, Lease, Needs, Pool, PoolOptions, PoolStats};

#[derive(Debug, Clone)]
enum Op {
    Acquire(u64),
    Release(usize),
    Dirty(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![Just(1024u64), Just(2048), Just(4096)].prop_map(Op::Acquire),
        2 => (0..8usize).prop_map(Op::Release),
        1 => (0..8usize).prop_map(Op::Dirty),
    ]
}

fn instance(sim: &PveSim, i: usize, max_samples: u32) -> InstanceConfig {
    let url = sim.url().trim_start_matches("https://");
    let (host, port) = url.split_once(':').unwrap();
    let json = format!(
        r#"{{"instance_id": "i{i}", "pool_id": "p", "host": "{host}", "port": {port}, "node": "pve1",
            "token_id": "root@pam!ci", "token_secret": "00000000-0000-0000-0000-000000000001",
            "fingerprint": "{}", "max_samples": {max_samples}, "ram_mb": 8192, "vcpus": 8}}"#,
        sim.fingerprint().unwrap()
    );
    serde_json::from_str(&json).unwrap()
}

fn within_capacity(s: &PoolStats) -> Result<(), TestCaseError> {
    for i in &s.instances {
        prop_assert!(i.used.max_samples <= i.cap.max_samples, "{i:?}");
        prop_assert!(i.used.ram_mb <= i.cap.ram_mb, "{i:?}");
        prop_assert!(i.used.vcpus <= i.cap.vcpus, "{i:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn supervisor_invariants(caps in proptest::collection::vec(1u32..=3, 1..=3), ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let sim = PveSim::start(SimConfig::new()).await.unwrap();
            let instances = caps.iter().enumerate().map(|(i, c)| instance(&sim, i, *c)).collect();
            let opts = PoolOptions { retry_initial: Duration::from_millis(1), retry_max: Duration::from_millis(4) };
            let pool = Pool::start(instances, opts).await.unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Lease>();
            let mut pending = Vec::new();
            let mut held: Vec<Lease> = Vec::new();
            for op in ops {
                while let Ok(l) = rx.try_recv() {
                    held.push(l);
                }
                match op {
                    Op::Acquire(ram) => {
                        let (pool, tx) = (pool.clone(), tx.clone());
                        pending.push(tokio::spawn(async move {
                            let lease = pool.acquire("p", Needs { ram_mb: ram, vcpus: 1 }, Duration::from_secs(30)).await.expect("no caller starves");
                            tx.send(lease).ok();
                        }));
                    }
                    Op::Release(k) if !held.is_empty() => {
                        let i = k % held.len();
                        held.swap_remove(i);
                    }
                    Op::Dirty(k) if !held.is_empty() => {
                        let i = k % held.len();
                        let retry: CleanupRetry = Arc::new(|| Box::pin(async { Ok(()) }));
                        held.swap_remove(i).release_dirty(retry);
                    }
                    _ => {}
                }
                within_capacity(&pool.stats().await.unwrap())?;
            }
            // Drain: give every lease back as it arrives until all callers were served.
            drop(held);
            drop(tx);
            let drain = async {
                while let Some(l) = rx.recv().await {
                    within_capacity(&pool.stats().await.unwrap())?;
                    drop(l);
                }
                Ok::<(), TestCaseError>(())
            };
            tokio::time::timeout(Duration::from_secs(30), async {
                let (d, joined) = tokio::join!(drain, futures_util::future::join_all(pending));
                for j in joined {
                    j.expect("acquirer panicked: starved past its deadline");
                }
                d
            }).await.expect("everyone is served")?;
            // Everything returns to zero once the last releases and quarantine retries are processed.
            loop {
                let s = pool.stats().await.unwrap();
                if s.waiting == 0 && s.instances.iter().all(|i| i.used.max_samples == 0 && i.used.ram_mb == 0 && !i.quarantined) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
