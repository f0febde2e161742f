//! `InstanceActor`: one Proxmox instance, owning its client and VM-id allocator.
//!
//! The actor checks the instance when asked ([`Probe`]: version, node online, image storage,
//! live memory and CPUs) and serialises exactly what Proxmox needs serialised:
//! - **clones per storage**: parallel clones onto one storage can run into the cluster
//!   filesystem's lock timeout, so a [`ClonePermit`] for a storage is granted one at a time;
//! - **SDN apply per cluster**: `PUT /cluster/sdn` reloads the whole cluster's network; callers
//!   who arrive while one apply runs share the *next* one ([`ApplySdn`] coalesces).
//!
//! Everything else (VM calls, agent calls) runs concurrently on the caller's side with the
//! client from [`InstanceHandle::client`].
//!
//! Message delivery: handles use `send` (awaited, never `do_send`) so no request is silently
//! lost. Handlers that wait on I/O return `ResponseActFuture`/`ResponseFuture`, which lets
//! other messages interleave while the I/O runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use pve_client::{PveClient, Vmid};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::allocator::{AllocError, VmidAllocator};
use crate::config::InstanceConfig;
use crate::error::PoolError;

/// What a probe learned about an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceInfo {
    /// PVE version, e.g. `9.2.3`.
    pub version: String,
    /// Node memory, MiB.
    pub node_ram_mb: u64,
    /// Node memory in use, MiB.
    pub node_ram_used_mb: u64,
    /// Node CPUs.
    pub node_cpus: u32,
    /// Storages on the node.
    pub storages: Vec<String>,
}

/// The actor.
pub struct InstanceActor {
    cfg: Arc<InstanceConfig>,
    client: PveClient,
    allocator: VmidAllocator,
    info: Option<InstanceInfo>,
    clone_gates: HashMap<String, Arc<Semaphore>>,
    sdn: Arc<SdnGate>,
}

impl Actor for InstanceActor {
    type Context = Context<Self>;
}

impl InstanceActor {
    /// An actor for `cfg`. Call it inside [`crate::ActorRuntime::spawn`] so the client's
    /// connection pool belongs to the actor thread.
    pub fn new(cfg: Arc<InstanceConfig>, client: PveClient) -> Self {
        let allocator = VmidAllocator::new(cfg.vmid_range.unwrap_or_default());
        InstanceActor {
            cfg,
            client,
            allocator,
            info: None,
            clone_gates: HashMap::new(),
            sdn: Arc::new(SdnGate::default()),
        }
    }
}

/// Checks the instance and refreshes its live capacity.
#[derive(Message)]
#[rtype(result = "Result<InstanceInfo, PoolError>")]
pub struct Probe;

impl Handler<Probe> for InstanceActor {
    type Result = ResponseActFuture<Self, Result<InstanceInfo, PoolError>>;

    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        let cfg = self.cfg.clone();
        Box::pin(
            async move { probe(&client, &cfg).await }
                .into_actor(self)
                .map(|res, act, _| {
                    if let Ok(info) = &res {
                        act.info = Some(info.clone());
                    }
                    res
                }),
        )
    }
}

async fn probe(client: &PveClient, cfg: &InstanceConfig) -> Result<InstanceInfo, PoolError> {
    let fail = |message: String| PoolError::Instance {
        instance: cfg.instance_id.clone(),
        message,
        source: None,
    };
    let api = |what: &str, e: pve_client::Error| PoolError::Instance {
        instance: cfg.instance_id.clone(),
        message: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    };
    let version = client.version().await.map_err(|e| api("GET /version", e))?;
    // One call for every node's live load: /cluster/resources (type node) carries status,
    // memory and CPUs, cluster-wide.
    let nodes = client
        .cluster_resources(Some("node"))
        .await
        .map_err(|e| api("GET /cluster/resources", e))?;
    let node = nodes
        .iter()
        .find(|n| n.node.as_deref() == Some(cfg.node.as_str()))
        .ok_or_else(|| {
            fail(format!(
                "node {:?} is not in the cluster (nodes: {:?}); fix `node`",
                cfg.node,
                nodes
                    .iter()
                    .filter_map(|n| n.node.as_deref())
                    .collect::<Vec<_>>()
            ))
        })?;
    let status = node.status.as_deref().unwrap_or("unknown");
    if status != "online" {
        return Err(fail(format!("node {:?} is {status}", cfg.node)));
    }
    let storages = client
        .node(&cfg.node)
        .storages(None)
        .await
        .map_err(|e| api("storage list", e))?;
    let names: Vec<String> = storages.iter().map(|s| s.storage.clone()).collect();
    match storages.iter().find(|s| s.storage == cfg.image_storage) {
        None => {
            return Err(fail(format!(
                "image_storage {:?} does not exist on node {:?} (storages: {names:?})",
                cfg.image_storage, cfg.node
            )));
        }
        Some(s) if !s.supports("images") => {
            return Err(fail(format!(
                "image_storage {:?} does not hold VM disks (content: {})",
                cfg.image_storage, s.content
            )));
        }
        Some(_) => {}
    }
    Ok(InstanceInfo {
        version: version.version,
        node_ram_mb: node.maxmem.unwrap_or(0) >> 20,
        node_ram_used_mb: node.mem.unwrap_or(0) >> 20,
        node_cpus: node.maxcpu.unwrap_or(0.0) as u32,
        storages: names,
    })
}

/// The last probe's result, if any.
#[derive(Message)]
#[rtype(result = "Option<InstanceInfo>")]
pub struct GetInfo;

impl Handler<GetInfo> for InstanceActor {
    type Result = MessageResult<GetInfo>;
    fn handle(&mut self, _: GetInfo, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.info.clone())
    }
}

/// Waits for the right to clone onto `storage`; the permit is held until dropped.
#[derive(Message)]
#[rtype(result = "OwnedSemaphorePermit")]
pub struct ClonePermit {
    /// Target storage.
    pub storage: String,
}

impl Handler<ClonePermit> for InstanceActor {
    type Result = ResponseFuture<OwnedSemaphorePermit>;
    fn handle(&mut self, msg: ClonePermit, _: &mut Context<Self>) -> Self::Result {
        // One permit per storage: PVE's cluster-filesystem lock times out (after ~10 s) when
        // several clones allocate volumes on one storage at once.
        let gate = self
            .clone_gates
            .entry(msg.storage)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        Box::pin(async move {
            gate.acquire_owned()
                .await
                .expect("clone gates are never closed")
        })
    }
}

/// Coalesces SDN applies: a caller is satisfied by any apply that *started* after it asked.
#[derive(Default)]
struct SdnGate {
    /// Requests so far (each caller takes a ticket number).
    requested: AtomicU64,
    /// Highest ticket covered by a finished, successful apply.
    applied: AtomicU64,
    /// Held while an apply runs; waiters queue here.
    running: tokio::sync::Mutex<()>,
    /// How many `PUT /cluster/sdn` were actually sent (for tests and benchmarks).
    applies: AtomicU64,
}

/// Applies pending SDN changes (`PUT /cluster/sdn`) and waits for the reload task.
#[derive(Message)]
#[rtype(result = "Result<(), PoolError>")]
pub struct ApplySdn;

impl Handler<ApplySdn> for InstanceActor {
    type Result = ResponseFuture<Result<(), PoolError>>;
    fn handle(&mut self, _: ApplySdn, _: &mut Context<Self>) -> Self::Result {
        let gate = self.sdn.clone();
        let client = self.client.clone();
        let my = gate.requested.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let _running = gate.running.lock().await;
            if gate.applied.load(Ordering::SeqCst) >= my {
                return Ok(());
            }
            // Everyone who asked before this point is covered by the apply we start now.
            let covers = gate.requested.load(Ordering::SeqCst);
            gate.applies.fetch_add(1, Ordering::SeqCst);
            let v = client
                .put("/cluster/sdn", &pve_client::Params::new())
                .await?;
            let upid: pve_client::Upid =
                serde_json::from_value(v).map_err(|e| PoolError::Instance {
                    instance: "sdn".into(),
                    message: format!("PUT /cluster/sdn did not return a UPID: {e}"),
                    source: None,
                })?;
            client
                .wait_task(
                    &upid,
                    pve_client::WaitOptions::with_timeout(std::time::Duration::from_secs(120)),
                )
                .await?;
            gate.applied.fetch_max(covers, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// The handle's view of an instance.
#[derive(Message)]
#[rtype(result = "InstanceParts")]
pub(crate) struct GetParts;

/// What a handle keeps: cheap clones of what the actor owns.
#[derive(Clone)]
pub(crate) struct InstanceParts {
    pub client: PveClient,
    pub allocator: VmidAllocator,
    sdn: Arc<SdnGate>,
}

impl Handler<GetParts> for InstanceActor {
    type Result = MessageResult<GetParts>;
    fn handle(&mut self, _: GetParts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(InstanceParts {
            client: self.client.clone(),
            allocator: self.allocator.clone(),
            sdn: self.sdn.clone(),
        })
    }
}

/// A cheap, `Clone + Send + Sync` handle on an instance, awaitable from any tokio runtime.
#[derive(Clone)]
pub struct InstanceHandle {
    id: Arc<str>,
    cfg: Arc<InstanceConfig>,
    addr: Addr<InstanceActor>,
    parts: InstanceParts,
}

impl std::fmt::Debug for InstanceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl InstanceHandle {
    pub(crate) async fn new(
        cfg: Arc<InstanceConfig>,
        addr: Addr<InstanceActor>,
    ) -> Result<Self, PoolError> {
        let parts = addr.send(GetParts).await.map_err(|_| PoolError::ShutDown)?;
        Ok(InstanceHandle {
            id: cfg.instance_id.as_str().into(),
            cfg,
            addr,
            parts,
        })
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Its configuration.
    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }
    /// The node VMs go on.
    pub fn node(&self) -> &str {
        &self.cfg.node
    }
    /// The instance's client (shares the actor's connection pool and ticket).
    pub fn client(&self) -> &PveClient {
        &self.parts.client
    }
    /// The instance's VM-id allocator.
    pub fn allocator(&self) -> &VmidAllocator {
        &self.parts.allocator
    }

    /// Allocates a VM id by running `create` with candidate ids (see [`VmidAllocator::allocate`]).
    pub async fn allocate_vmid<F, Fut, T>(&self, create: F) -> Result<(Vmid, T), AllocError>
    where
        F: FnMut(Vmid) -> Fut,
        Fut: std::future::Future<Output = Result<T, pve_client::Error>>,
    {
        self.parts.allocator.allocate(create).await
    }

    /// Re-checks the instance (used on start and when retrying a quarantined instance).
    pub async fn probe(&self) -> Result<InstanceInfo, PoolError> {
        self.addr
            .send(Probe)
            .await
            .map_err(|_| PoolError::ShutDown)?
    }
    /// The last probe's result.
    pub async fn info(&self) -> Option<InstanceInfo> {
        self.addr.send(GetInfo).await.ok().flatten()
    }
    /// Waits for this instance's clone slot on `storage`; clone while holding the permit.
    pub async fn clone_permit(&self, storage: &str) -> Result<OwnedSemaphorePermit, PoolError> {
        self.addr
            .send(ClonePermit {
                storage: storage.to_owned(),
            })
            .await
            .map_err(|_| PoolError::ShutDown)
    }
    /// Applies pending SDN changes, coalesced with other callers.
    pub async fn apply_sdn(&self) -> Result<(), PoolError> {
        self.addr
            .send(ApplySdn)
            .await
            .map_err(|_| PoolError::ShutDown)?
    }
    /// How many `PUT /cluster/sdn` this instance actually sent.
    pub fn sdn_applies(&self) -> u64 {
        self.parts.sdn.applies.load(Ordering::SeqCst)
    }
}
