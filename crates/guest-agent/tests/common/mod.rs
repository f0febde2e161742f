//! A simulator with guests that really run commands, and a ready agent handle on one VM.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_agent::{ExecOutput, ExecRequest, GuestAgent};
use pve_client::{PveClient, Vmid, WaitOptions};
use pve_sim::guest::qemu::{GuestImage, QemuGuestFactory, QemuOptions};
use pve_sim::{PveSim, SimConfig, VmSeed};

pub const NODE: &str = "pve1";

/// A running VM with a process guest, its agent answering.
pub struct Env {
    pub sim: PveSim,
    pub client: PveClient,
    pub vm: GuestAgent,
}

/// Which guest backend the suite runs on: `PVESANDBOX_GUEST=qemu` for real qemu-guest-agent
/// in QEMU VMs restored from one saved boot, anything else for namespaced process guests.
pub fn qemu_backend() -> bool {
    std::env::var("PVESANDBOX_GUEST").is_ok_and(|v| v == "qemu")
}

/// One cold boot per test binary; every test's VM restores from it.
static QEMU: tokio::sync::OnceCell<Arc<QemuGuestFactory>> = tokio::sync::OnceCell::const_new();

async fn qemu_factory() -> Arc<QemuGuestFactory> {
    QEMU.get_or_init(|| async {
        let image = GuestImage::locate().unwrap_or_else(|| {
            panic!(
                "PVESANDBOX_GUEST=qemu but no guest image in {:?}: run `cargo xtask guest-image`",
                GuestImage::default_dir()
            )
        });
        let f = QemuGuestFactory::start(image, QemuOptions::default())
            .await
            .expect("cold boot of the guest image");
        eprintln!(
            "guest backend: qemu-guest-agent in QEMU, accelerator {}, cold boot {:.1} s",
            f.accelerator(),
            f.cold_boot_time().as_secs_f64()
        );
        Arc::new(f)
    })
    .await
    .clone()
}

/// Process guests need namespaces and root. Without them: skip, unless CI says they must work.
pub fn guests_available() -> bool {
    if qemu_backend() {
        return true;
    }
    pve_sim::guest::ProcessGuestFactory::available_or_skip()
}

pub async fn env() -> Env {
    env_with(SimConfig::new()).await
}

pub async fn env_with(cfg: SimConfig) -> Env {
    let cfg = if qemu_backend() {
        cfg.guests(qemu_factory().await)
    } else {
        cfg.process_guests().expect("process guests")
    };
    boot_vm(cfg).await
}

/// A simulator from `cfg` exactly as given (guest backend included), VM 100 started and its
/// agent answering.
pub async fn boot_vm(cfg: SimConfig) -> Env {
    let sim = PveSim::start(cfg).await.expect("simulator starts");
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
    let vm = GuestAgent::new(client.clone(), NODE, pve_client::Vmid(100));
    vm.wait_ready(Instant::now() + Duration::from_secs(120))
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
