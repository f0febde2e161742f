//! The pool against the simulator: capacity, placement, FIFO, lease drop, quarantine, probes,
//! clone permits, coalesced SDN applies, and handles used from other runtimes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pve_sim::{LatencyProfile, PveSim, SimConfig};
use pvesandbox_pool::{CleanupRetry, InstanceConfig, Needs, Pool, PoolError, PoolOptions};

const LONG: Duration = Duration::from_secs(20);
const SMALL: Needs = Needs {
    ram_mb: 1024,
    vcpus: 1,
};

fn instance(sim: &PveSim, id: &str, node: &str, extra: &str) -> InstanceConfig {
    let url = sim.url().trim_start_matches("https://");
    let (host, port) = url.split_once(':').unwrap();
    let (tid, secret) = sim.config().tokens[0].clone();
    let json = format!(
        r#"{{"instance_id": "{id}", "pool_id": "default", "host": "{host}", "port": {port}, "node": "{node}",
            "token_id": "{tid}", "token_secret": "{secret}", "fingerprint": "{}", "verify_tls": true {extra}}}"#,
        sim.fingerprint().unwrap()
    );
    serde_json::from_str(&json).unwrap()
}

async fn sim(nodes: &[&str]) -> PveSim {
    PveSim::start(SimConfig::new().nodes(nodes)).await.unwrap()
}

fn fast() -> PoolOptions {
    PoolOptions {
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
    }
}

/// Waits until `n` callers are queued (polls the supervisor's state, never a timer).
async fn until_waiting(pool: &Pool, n: usize) {
    while pool.stats().await.unwrap().waiting < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn four_samples_at_once_with_max_samples_4() {
    let sim = sim(&["pve1"]).await;
    let pool = Pool::start(
        vec![instance(&sim, "a", "pve1", r#", "max_samples": 4"#)],
        fast(),
    )
    .await
    .unwrap();
    let mut leases = Vec::new();
    for _ in 0..4 {
        leases.push(pool.acquire("default", SMALL, LONG).await.unwrap());
    }
    let e = pool
        .acquire("default", SMALL, Duration::from_millis(30))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PoolError::Timeout {
                busy: 1,
                quarantined: 0,
                ..
            }
        ),
        "{e}"
    );
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire("default", SMALL, LONG).await }
    });
    until_waiting(&pool, 1).await;
    leases.pop();
    waiting
        .await
        .unwrap()
        .expect("the freed slot goes to the waiter");
}

#[tokio::test]
async fn max_samples_1_is_one_sample_per_host() {
    let sim = sim(&["pve1"]).await;
    let pool = Pool::start(vec![instance(&sim, "a", "pve1", "")], fast())
        .await
        .unwrap();
    let first = pool.acquire("default", SMALL, LONG).await.unwrap();
    assert!(
        pool.acquire("default", SMALL, Duration::from_millis(20))
            .await
            .is_err()
    );
    drop(first);
    pool.acquire("default", SMALL, LONG).await.unwrap();
}

#[tokio::test]
async fn placement_prefers_most_free_capacity() {
    let sim = sim(&["pve1", "pve2"]).await;
    let pool = Pool::start(
        vec![
            instance(
                &sim,
                "big",
                "pve1",
                r#", "max_samples": 4, "ram_mb": 8192, "vcpus": 8"#,
            ),
            instance(
                &sim,
                "small",
                "pve2",
                r#", "max_samples": 4, "ram_mb": 4096, "vcpus": 8"#,
            ),
        ],
        fast(),
    )
    .await
    .unwrap();
    let needs = Needs {
        ram_mb: 2048,
        vcpus: 1,
    };
    let mut placed = Vec::new();
    let mut leases = Vec::new();
    for _ in 0..4 {
        let l = pool.acquire("default", needs, LONG).await.unwrap();
        placed.push(l.instance().id().to_owned());
        leases.push(l);
    }
    // big: 75 % free after one; small: 50 %. Then big 50 % vs small 50 % (tie → first); then
    // big 25 % vs small 50 %.
    assert_eq!(placed, ["big", "big", "small", "big"]);
    let stats = pool.stats().await.unwrap();
    assert_eq!(stats.instances[0].used.ram_mb, 6144);
    assert_eq!(stats.instances[1].used.ram_mb, 2048);
    // Both would be left with 0 % free (big by samples and RAM, small by RAM): the tie goes to
    // the first; after that only small has room.
    leases.push(pool.acquire("default", needs, LONG).await.unwrap());
    assert_eq!(leases.last().unwrap().instance().id(), "big");
    leases.push(pool.acquire("default", needs, LONG).await.unwrap());
    assert_eq!(leases.last().unwrap().instance().id(), "small");
    assert!(
        pool.acquire("default", needs, Duration::from_millis(20))
            .await
            .is_err(),
        "both full"
    );
}

#[tokio::test]
async fn waiters_are_served_in_order() {
    let sim = sim(&["pve1"]).await;
    let pool = Pool::start(vec![instance(&sim, "a", "pve1", "")], fast())
        .await
        .unwrap();
    let held = pool.acquire("default", SMALL, LONG).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..5 {
        let p = pool.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let lease = p.acquire("default", SMALL, LONG).await.unwrap();
            tx.send(i).unwrap();
            drop(lease);
        });
        until_waiting(&pool, i + 1).await;
    }
    drop(held);
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn leases_return_on_panic_and_cancellation() {
    let sim = sim(&["pve1"]).await;
    let pool = Pool::start(vec![instance(&sim, "a", "pve1", "")], fast())
        .await
        .unwrap();
    let p = pool.clone();
    let r = tokio::spawn(async move {
        let _lease = p.acquire("default", SMALL, LONG).await.unwrap();
        panic!("sample crashed");
    })
    .await;
    assert!(r.is_err());
    let held = pool
        .acquire("default", SMALL, LONG)
        .await
        .expect("slot came back after the panic");
    // A caller that gives up while queued must not take the slot with it.
    let waiter = tokio::spawn({
        let p = pool.clone();
        async move { p.acquire("default", SMALL, LONG).await }
    });
    until_waiting(&pool, 1).await;
    waiter.abort();
    let _ = waiter.await;
    drop(held);
    pool.acquire("default", SMALL, LONG)
        .await
        .expect("the cancelled waiter did not keep the slot");
    let s = pool.stats().await.unwrap();
    assert_eq!(s.waiting, 0);
}

#[tokio::test]
async fn failed_cleanup_quarantines_then_retries() {
    let sim = sim(&["pve1", "pve2"]).await;
    let pool = Pool::start(
        vec![
            instance(&sim, "a", "pve1", ""),
            instance(&sim, "b", "pve2", ""),
        ],
        fast(),
    )
    .await
    .unwrap();
    let la = pool.acquire("default", SMALL, LONG).await.unwrap();
    assert_eq!(la.instance().id(), "a");
    let attempts = Arc::new(AtomicU32::new(0));
    let a2 = attempts.clone();
    let retry: CleanupRetry = Arc::new(move || {
        let n = a2.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if n < 3 {
                Err(format!("VM 101 still locked (attempt {n})"))
            } else {
                Ok(())
            }
        })
    });
    la.release_dirty(retry);
    // While `a` is quarantined, samples go to `b`, and evals are not blocked.
    let lb = pool.acquire("default", SMALL, LONG).await.unwrap();
    assert_eq!(lb.instance().id(), "b");
    // The next sample waits for `a` to come back, which it does after the third try.
    let la = pool.acquire("default", SMALL, LONG).await.unwrap();
    assert_eq!(la.instance().id(), "a");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert!(
        pool.stats()
            .await
            .unwrap()
            .instances
            .iter()
            .all(|i| !i.quarantined)
    );
}

#[tokio::test]
async fn typed_errors_for_impossible_requests() {
    let sim = sim(&["pve1"]).await;
    let pool = Pool::start(
        vec![instance(
            &sim,
            "a",
            "pve1",
            r#", "ram_mb": 4096, "vcpus": 4"#,
        )],
        fast(),
    )
    .await
    .unwrap();
    let e = pool.acquire("gpu", SMALL, LONG).await.unwrap_err();
    assert!(
        matches!(&e, PoolError::UnknownPool { known, .. } if known == &["default"]),
        "{e}"
    );
    let e = pool
        .acquire(
            "default",
            Needs {
                ram_mb: 8192,
                vcpus: 1,
            },
            LONG,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PoolError::NeverFits {
                max_ram_mb: 4096,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn probes_check_node_and_storage() {
    let sim = sim(&["pve1"]).await;
    let e = Pool::start(vec![instance(&sim, "a", "pve9", "")], fast())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("node \"pve9\" is not in the cluster"),
        "{e}"
    );
    let e = Pool::start(
        vec![instance(&sim, "a", "pve1", r#", "image_storage": "local""#)],
        fast(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("does not hold VM disks"), "{e}");
    // One good instance is enough; the bad one starts quarantined.
    let pool = Pool::start(
        vec![
            instance(&sim, "bad", "pve9", ""),
            instance(&sim, "good", "pve1", ""),
        ],
        fast(),
    )
    .await
    .unwrap();
    let s = pool.stats().await.unwrap();
    assert_eq!(
        s.instances
            .iter()
            .map(|i| (i.id.as_str(), i.quarantined))
            .collect::<Vec<_>>(),
        [("bad", true), ("good", false)]
    );
    assert_eq!(
        pool.acquire("default", SMALL, LONG)
            .await
            .unwrap()
            .instance()
            .id(),
        "good"
    );
    let info = pool.instances()[1].info().await.unwrap();
    assert_eq!((info.node_cpus, info.version.as_str()), (16, "9.2.3"));
}

#[tokio::test]
async fn clone_permits_serialise_per_storage() {
    let sim = sim(&["pve1"]).await;
    let pool = Pool::start(vec![instance(&sim, "a", "pve1", "")], fast())
        .await
        .unwrap();
    let inst = &pool.instances()[0];
    let p1 = inst.clone_permit("local-lvm").await.unwrap();
    let _other = inst
        .clone_permit("local")
        .await
        .expect("another storage is independent");
    let second = tokio::spawn({
        let inst = inst.clone();
        async move { inst.clone_permit("local-lvm").await.map(|_| ()) }
    });
    // The second permit cannot be granted while the first is held.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), async {
            while !second.is_finished() {
                tokio::task::yield_now().await
            }
        })
        .await
        .is_err()
    );
    drop(p1);
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn sdn_applies_coalesce() {
    // An apply takes 2 s × 0.25 = 500 ms here.
    let sim =
        PveSim::start(SimConfig::new().latency(LatencyProfile::Realistic { time_factor: 0.25 }))
            .await
            .unwrap();
    let pool = Pool::start(vec![instance(&sim, "a", "pve1", "")], fast())
        .await
        .unwrap();
    let inst = pool.instances()[0].clone();
    let apply_all = |n: usize| {
        let inst = inst.clone();
        async move {
            let calls = (0..n).map(|_| {
                let inst = inst.clone();
                tokio::spawn(async move { inst.apply_sdn().await })
            });
            for c in futures_util::future::join_all(calls).await {
                c.unwrap().unwrap();
            }
        }
    };
    // Ten callers at once: whoever asked before the first apply began shares it, the rest
    // share one more.
    apply_all(10).await;
    let burst = inst.sdn_applies();
    assert!((1..=2).contains(&burst), "{burst} applies for one burst");
    // Callers arriving while an apply runs need the next one (their change may have missed the
    // running one); five such callers share exactly that one.
    let first = tokio::spawn(apply_all(1));
    while sim.request_count("PUT", "/cluster/sdn") < burst as usize + 1 {
        tokio::task::yield_now().await;
    }
    apply_all(5).await;
    first.await.unwrap();
    assert_eq!(inst.sdn_applies(), burst + 2);
    assert_eq!(sim.request_count("PUT", "/cluster/sdn"), burst as usize + 2);
}

#[test]
fn handles_work_from_other_runtimes() {
    // Build the pool on one runtime, use it from a different one on another thread.
    let rt1 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (sim, pool) = rt1.block_on(async {
        let sim = sim(&["pve1"]).await;
        let pool = Pool::start(
            vec![instance(&sim, "a", "pve1", r#", "max_samples": 2"#)],
            fast(),
        )
        .await
        .unwrap();
        (sim, pool)
    });
    let p2 = pool.clone();
    let got = std::thread::spawn(move || {
        let rt2 = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt2.block_on(async move {
            let lease = p2.acquire("default", SMALL, LONG).await.unwrap();
            let v = lease.instance().client().version().await.unwrap();
            v.version
        })
    })
    .join()
    .unwrap();
    assert_eq!(got, "9.2.3");
    drop(pool);
    drop(rt1);
    drop(sim);
}

#[tokio::test]
async fn allocates_vmids_by_creating() {
    let sim = sim(&["pve1"]).await;
    // 150 exists already (made by someone else): the allocator must skip it.
    sim.add_vm(pve_sim::VmSeed::vm(150, "someone-elses"));
    let pool = Pool::start(
        vec![instance(&sim, "a", "pve1", r#", "vmid_range": "150-152""#)],
        fast(),
    )
    .await
    .unwrap();
    let inst = pool.instances()[0].clone();
    let create = |id: pve_client::Vmid| {
        let c = inst.client().clone();
        async move {
            c.node("pve1")
                .qemu_create(id, &pve_client::Params::new().with("name", "x"))
                .await
        }
    };
    let (a, _) = inst.allocate_vmid(create).await.unwrap();
    let (b, _) = inst.allocate_vmid(create).await.unwrap();
    assert_eq!((a.0, b.0), (151, 152));
    let e = inst.allocate_vmid(create).await.unwrap_err();
    assert!(e.to_string().contains("no free VM id in 150-152"), "{e}");
}
