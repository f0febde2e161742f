//! Two processes allocating VM ids against one simulator never collide.
//!
//! The parent test starts a simulator and runs this same test binary twice as children
//! (`child_allocator` with the simulator's address in the environment); each child allocates
//! ids from the *same* range by creating VMs, concurrently with the other.

use std::collections::BTreeSet;
use std::process::Command;

use pve_client::{Params, PveClient, Vmid};
use pve_sim::{PveSim, SimConfig};
use pvesandbox_pool::{VmidAllocator, VmidRange};

const PER_CHILD: usize = 15;

#[tokio::test]
async fn child_allocator() {
    let Ok(url) = std::env::var("POOL_CHILD_SIM_URL") else {
        return;
    };
    let fp = std::env::var("POOL_CHILD_SIM_FP").unwrap();
    let client = PveClient::builder()
        .base_url(url)
        .api_token("root@pam!ci", "00000000-0000-0000-0000-000000000001")
        .fingerprint(&fp)
        .build()
        .unwrap();
    let alloc = VmidAllocator::new(VmidRange::new(1000, 1039).unwrap());
    let create = |id: Vmid| {
        let c = client.clone();
        async move {
            c.node("pve1")
                .qemu_create(
                    id,
                    &Params::new().with("name", format!("p{}", std::process::id())),
                )
                .await
        }
    };
    let results =
        futures_util::future::join_all((0..PER_CHILD).map(|_| alloc.allocate(create))).await;
    // The test harness may print its own text on the same line: mark each id clearly.
    for r in results {
        let (id, upid) = r.unwrap();
        client
            .wait_task(
                &upid,
                pve_client::WaitOptions::with_timeout(std::time::Duration::from_secs(30)),
            )
            .await
            .unwrap();
        println!("ALLOCATED {id}");
    }
}

#[tokio::test]
async fn two_processes_never_collide() {
    if std::env::var_os("POOL_CHILD_SIM_URL").is_some() {
        return;
    }
    let sim = PveSim::start(SimConfig::new()).await.unwrap();
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args([
                "--exact",
                "child_allocator",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("POOL_CHILD_SIM_URL", sim.url())
            .env("POOL_CHILD_SIM_FP", sim.fingerprint().unwrap())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = tokio::task::spawn_blocking(move || {
        [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
    })
    .await
    .unwrap();
    let mut all = BTreeSet::new();
    for out in &outs {
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split("ALLOCATED ")
            .skip(1)
            .map(|s| s.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), PER_CHILD);
        for id in ids {
            assert!(all.insert(id), "VM id {id} handed out to both processes");
        }
    }
    let in_sim: BTreeSet<u32> = sim.vmids().into_iter().collect();
    assert_eq!(
        in_sim, all,
        "every allocated id is a VM, and nothing else was created"
    );
    // Both processes competed for the same ids: the simulator refused some creates.
    let refused = sim
        .requests()
        .entries()
        .iter()
        .filter(|e| e.route == "/nodes/{node}/qemu" && e.method == "POST" && e.status == 500)
        .count();
    eprintln!(
        "two processes: {} ids, {refused} creates refused as already existing",
        all.len()
    );
}
