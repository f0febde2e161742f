//! A simulator with guests that really run commands, and a ready agent handle on one VM.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use guest_agent::{ExecOutput, ExecRequest, GuestAgent};
use pve_client::{PveClient, Vmid, WaitOptions};
use pve_sim::{PveSim, SimConfig, VmSeed};

pub const NODE: &str = "pve1";

/// A running VM with a process guest, its agent answering.
pub struct Env {
    pub sim: PveSim,
    pub client: PveClient,
    pub vm: GuestAgent,
}

/// Process guests need namespaces and root. Without them: skip, unless CI says they must work.
pub fn guests_available() -> bool {
    match pve_sim::guest::ProcessGuestFactory::probe() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "process guests unavailable on CI: {why}"
            );
            eprintln!("skipping: process guests unavailable ({why})");
            false
        }
    }
}

pub async fn env() -> Env {
    env_with(SimConfig::new()).await
}

pub async fn env_with(cfg: SimConfig) -> Env {
    let sim = PveSim::start(cfg.process_guests().expect("process guests"))
        .await
        .expect("simulator starts");
    sim.add_vm(VmSeed::vm(100, "box"));
    let client = PveClient::builder()
        .base_url(sim.url())
        .password("root@pam", "secret")
        .fingerprint(sim.fingerprint().unwrap())
        .build()
        .unwrap();
    let upid = client.node(NODE).qemu(Vmid(100)).start().await.unwrap();
    client
        .wait_task(&upid, WaitOptions::with_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    let vm = GuestAgent::new(client.clone(), NODE, 100);
    vm.wait_ready(Instant::now() + Duration::from_secs(30))
        .await
        .expect("agent answers");
    Env { sim, client, vm }
}

impl Env {
    /// `sh -c script` as root, asserting it ran.
    pub async fn sh(&self, script: &str) -> ExecOutput {
        self.vm
            .exec(&ExecRequest::new(["sh", "-c", script]).timeout(Duration::from_secs(60)))
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// What the library left in the guest's temp dir.
    pub async fn transfer_files(&self) -> String {
        let out = self.sh("ls -A /tmp | grep pvesandbox || true").await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
