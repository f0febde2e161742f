//! pve-sim: a stateful Proxmox VE API simulator for tests, benchmarks and demos.
//!
//! [`PveSim::start`] serves the PVE REST API on `127.0.0.1:0` (HTTPS with a generated
//! certificate, or plain HTTP) from an in-process tokio task. It behaves like PVE where
//! clients can tell:
//! - **auth**: tickets that expire, CSRF on writes, API tokens, PVE's 401 wording;
//! - **validation**: every request is checked against the route's parameter table
//!   ([`routes`], syntax in [`spec`]); unknown or ill-typed parameters give 400
//!   `Parameter verification failed.` with a per-field map. `tests/schema_contract.rs` checks
//!   that table against the official PVE schema;
//! - **behaviour**: configs written back as PVE writes them, disks allocated and renamed,
//!   MACs generated, linked clones only from templates, tasks with real UPIDs that take a
//!   modelled time ([`LatencyProfile`]) and end `OK` or `TASK ERROR: ...`, config locks,
//!   snapshots, pools, storage content, SDN pending until applied;
//! - **faults** on demand: failing calls, held locks, expired tickets, dropped connections,
//!   slow responses;
//! - a **request log** with per-route counters.
//!
//! It never shares types with `pve-client`: each side is checked against the schema on its own.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = pve_sim::PveSim::start(pve_sim::SimConfig::new()).await?;
//! sim.add_vm(pve_sim::VmSeed::template(9000, "tpl"));
//! println!("{} fingerprint {}", sim.url(), sim.fingerprint().unwrap_or_default());
//! # Ok(()) }
//! ```

pub mod access;
mod config;
mod error;
mod faults;
mod firewall;
pub mod guest;
mod handlers;
mod image;
mod lifecycle;
mod log;
mod propstring;
pub mod routes;
mod sdn;
mod seed;
mod server;
pub mod spec;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio::sync::watch;

pub use config::{GuestBackend, LatencyProfile, SimConfig, StorageConfig, TagStyle, TaskKind};
pub use error::ApiError;
pub use faults::FaultError;
pub use log::{LoggedRequest, RequestLog};
pub use sdn::SdnConfig;
pub use seed::{Seed, SeedError, SeedVm, SeedVolume};
// ---- firewall (pve-sdn) ----
pub use firewall::{Firewall, Group, Rule, VmFirewall};

use state::{Shared, State, Vm};

/// A VM to put into the simulator before a test runs.
#[derive(Debug, Clone)]
pub struct VmSeed {
    /// VM id.
    pub vmid: u32,
    /// Node (default: the first).
    pub node: Option<String>,
    /// Config as PVE stores it (`memory` → `"2048"`, disks as `local-lvm:vm-100-disk-0,size=8G`).
    pub config: Vec<(String, String)>,
    /// Power state.
    pub running: bool,
}

impl VmSeed {
    /// A stopped VM with one 8 GiB disk, a NIC on `vmbr0`, the guest agent enabled.
    pub fn vm(vmid: u32, name: &str) -> Self {
        let mac = format!(
            "BC:24:11:{:02X}:{:02X}:{:02X}",
            (vmid >> 16) & 0xff,
            (vmid >> 8) & 0xff,
            vmid & 0xff
        );
        let config = [
            ("name", name.to_owned()),
            ("memory", "2048".into()),
            ("cores", "2".into()),
            ("sockets", "1".into()),
            ("ostype", "l26".into()),
            ("agent", "1".into()),
            ("scsihw", "virtio-scsi-single".into()),
            ("scsi0", format!("local-lvm:vm-{vmid}-disk-0,size=8G")),
            ("net0", format!("virtio={mac},bridge=vmbr0")),
            ("boot", "order=scsi0;net0".into()),
            (
                "smbios1",
                format!("uuid=00000000-0000-4000-8000-{vmid:012}"),
            ),
            ("vmgenid", format!("00000000-0000-4000-8000-{vmid:012}")),
            ("meta", "creation-qemu=9.2.0,ctime=1760000000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        VmSeed {
            vmid,
            node: None,
            config,
            running: false,
        }
    }

    /// Like [`VmSeed::vm`] but converted to a template (disk `base-<vmid>-disk-0`).
    pub fn template(vmid: u32, name: &str) -> Self {
        let mut s = Self::vm(vmid, name);
        for (k, v) in s.config.iter_mut() {
            if k == "scsi0" {
                *v = format!("local-lvm:base-{vmid}-disk-0,size=8G");
            }
        }
        s.config.push(("template".into(), "1".into()));
        s
    }

    /// Sets or adds a config key.
    #[must_use]
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.config.retain(|(k, _)| k != key);
        self.config.push((key.into(), value.into()));
        self
    }

    /// Starts it running (its agent answers at once).
    #[must_use]
    pub fn running(mut self) -> Self {
        self.running = true;
        self
    }
}

/// A running simulator. Dropping it stops the server.
pub struct PveSim {
    addr: SocketAddr,
    url: String,
    fingerprint: Option<String>,
    ca_pem: Option<String>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for PveSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PveSim")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn make_tls() -> std::io::Result<(tokio_rustls::TlsAcceptor, String, String)> {
    let io = |e: rcgen::Error| std::io::Error::other(e.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(io)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(io)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pve-sim Root CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(io)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().map_err(io)?;
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(io)?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pve-sim");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(io)?;
    let fp = sha2::Sha256::digest(leaf.der().as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key_der)
        .map_err(std::io::Error::other)?;
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        fp,
        ca_cert.pem(),
    ))
}

impl PveSim {
    /// Starts a simulator on `127.0.0.1:0` on the current tokio runtime.
    pub async fn start(cfg: SimConfig) -> std::io::Result<PveSim> {
        Self::start_on(cfg, "127.0.0.1:0".parse().expect("static addr")).await
    }

    /// Starts a simulator on `addr` (keep it on loopback).
    pub async fn start_on(cfg: SimConfig, addr: SocketAddr) -> std::io::Result<PveSim> {
        if cfg.nodes.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "SimConfig.nodes: at least one node is needed",
            ));
        }
        // Parse the route table now, so a broken table fails here and not on the first request.
        spec::routes();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tls, fingerprint, ca_pem) = if cfg.tls {
            let (acc, fp, pem) = make_tls()?;
            (Some(acc), Some(fp), Some(pem))
        } else {
            (None, None, None)
        };
        let url = format!("{}://{addr}", if cfg.tls { "https" } else { "http" });
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            cfg,
        });
        let (tx, rx) = watch::channel(false);
        tokio::spawn(server::serve(listener, tls, shared.clone(), rx));
        Ok(PveSim {
            addr,
            url,
            fingerprint,
            ca_pem,
            shared,
            shutdown: tx,
        })
    }

    /// `https://127.0.0.1:PORT` (no `/api2/json`).
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// SHA-256 fingerprint of the server certificate, `AA:BB:...` (HTTPS only).
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }
    /// PEM of the CA that signed the server certificate, for clients that verify (HTTPS only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }
    /// The configuration it runs with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Adds a VM (or template) as if it had always been there.
    pub fn add_vm(&self, seed: VmSeed) {
        let node = seed
            .node
            .unwrap_or_else(|| self.shared.cfg.nodes[0].clone());
        let now = Instant::now();
        let vm = Vm {
            node,
            config: seed.config.into_iter().collect(),
            pending: BTreeMap::new(),
            running: seed.running,
            qmpstatus: if seed.running { "running" } else { "stopped" }.into(),
            snapshots: vec![],
            flock_until: None,
            linked_from: None,
            started_at: seed.running.then_some(now),
            agent_ready_at: seed.running.then_some(now),
            cloud_image: None,
        };
        let mut st = self.shared.lock();
        st.vms.insert(seed.vmid, vm);
        st.reconcile_guests(&self.shared);
    }

    /// Adds everything `seed` holds, after checking all of it (nothing is added on an error,
    /// which names the entry and field).
    pub fn seed(&self, seed: &Seed) -> Result<(), SeedError> {
        let r = seed.resolve(&self.shared.cfg)?;
        if let Some(v) = r.vms.iter().find(|v| self.vm_config(v.vmid).is_some()) {
            return Err(SeedError {
                field: "vms".into(),
                message: format!("VM {} already exists", v.vmid),
            });
        }
        for vm in r.vms {
            self.add_vm(vm);
        }
        let mut st = self.shared.lock();
        for (key, vol) in r.volumes {
            let list = st.volumes.entry(key).or_default();
            list.retain(|v| v.volid != vol.volid);
            list.push(vol);
        }
        Ok(())
    }

    /// A VM's stored config (every value a string), or `None`.
    pub fn vm_config(&self, vmid: u32) -> Option<BTreeMap<String, String>> {
        self.shared.lock().vms.get(&vmid).map(|v| v.config.clone())
    }
    /// Whether VM `vmid` runs; `None` if it does not exist.
    pub fn vm_running(&self, vmid: u32) -> Option<bool> {
        self.shared.lock().vms.get(&vmid).map(|v| v.running)
    }
    /// Ids of all VMs.
    pub fn vmids(&self) -> Vec<u32> {
        self.shared.lock().vms.keys().copied().collect()
    }
    /// How many tasks have not finished yet.
    pub fn running_tasks(&self) -> usize {
        self.shared
            .lock()
            .tasks
            .values()
            .filter(|t| t.exitstatus.is_none())
            .count()
    }

    /// The firewall configuration (datacenter options, security groups, per-VM options and rules).
    pub fn firewall(&self) -> Firewall {
        self.shared.lock().firewall.clone()
    }

    /// The applied (`running`) and the `pending` SDN configuration.
    pub fn sdn(&self) -> (SdnConfig, SdnConfig) {
        let st = self.shared.lock();
        (st.sdn.running.clone(), st.sdn.pending.clone())
    }

    /// A copy of the request log.
    pub fn requests(&self) -> RequestLog {
        self.shared.lock().log.clone()
    }
    /// Requests to `method route` so far (`route` as declared: `/nodes/{node}/qemu/{vmid}/clone`).
    pub fn request_count(&self, method: &str, route: &str) -> usize {
        self.shared.lock().log.count(method, route)
    }
    /// Forgets the request log.
    pub fn reset_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// Requests answered since start, resets included.
    pub fn requests_seen(&self) -> u64 {
        *self.shared.lock().log.subscribe().borrow()
    }

    /// Returns once `n` requests have been answered since start (resets included): lets a
    /// test act at an exact point of a client's flow without sleeping.
    pub async fn wait_for_requests(&self, n: u64) {
        let mut rx = self.shared.lock().log.subscribe();
        let _ = rx.wait_for(|seen| *seen >= n).await;
    }

    /// Fails the next `times` requests to `method route` with `error` (validation still runs first).
    pub fn fail_next(&self, method: &str, route: &str, times: u32, error: FaultError) {
        self.shared.lock().faults.routes.push(faults::RouteFault {
            method: method.into(),
            route: route.into(),
            remaining: times,
            error,
        });
    }
    /// Another task holds VM `vmid`'s config-file lock for `d`.
    pub fn hold_config_lock(&self, vmid: u32, d: Duration) {
        if let Some(vm) = self.shared.lock().vms.get_mut(&vmid) {
            vm.flock_until = Some(Instant::now() + d);
        }
    }
    /// Sets a config lock (`lock: <kind>`) as a crashed task would leave it.
    pub fn set_lock(&self, vmid: u32, kind: Option<&str>) {
        if let Some(vm) = self.shared.lock().vms.get_mut(&vmid) {
            match kind {
                Some(k) => vm.config.insert("lock".into(), k.into()),
                None => vm.config.remove("lock"),
            };
        }
    }
    /// Invalidates every ticket issued so far; the next request with one gets 401.
    pub fn expire_all_tickets(&self) {
        self.shared.lock().tickets.clear();
    }
    /// How many tickets were issued and are still valid.
    pub fn tickets_issued(&self) -> usize {
        self.shared.lock().tickets.len()
    }
    /// Drops the connection of the next `n` requests without answering.
    pub fn drop_connections(&self, n: u32) {
        self.shared.lock().faults.drop_next = n;
    }
    /// Delays every response by `d` (zero to stop).
    pub fn slow_responses(&self, d: Duration) {
        self.shared.lock().faults.delay = d;
    }

    /// Stops the server.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for PveSim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        // Requests still in flight may hold a guest a little longer; the backend's shutdown
        // powers everything off and removes the disks regardless.
        let recs = std::mem::take(&mut self.shared.lock().guests.recs);
        drop(recs);
        if let Some(b) = &self.shared.cfg.guests {
            b.0.shutdown();
        }
    }
}
