//! Leases on Proxmox VE instances for sandboxes.
//!
//! - [`InstanceActor`]: one per Proxmox instance, owning its [`pve_client::PveClient`] and
//!   [`VmidAllocator`]; probes the instance and serialises only what Proxmox needs serialised
//!   (clones per storage, SDN apply per cluster).
//! - [`VmidAllocator`]: ids from a configured range, allocated by *creating* with them, so two
//!   processes never collide without any lock server.
//! - [`PoolSupervisor`]: FIFO leases per pool, placed on the instance with the most free
//!   capacity, quarantine and background retry for instances whose cleanup failed.
//! - [`Pool`]: the handle everyone else uses.
//!
//! # Using actors from any runtime
//!
//! actix actors must run on an actix system (a single-threaded tokio runtime with a
//! `LocalSet`); `Actor::start()` panics anywhere else, and a PyO3 extension or a tokio
//! multi-thread runtime is "anywhere else". So [`Pool::start`] runs one dedicated OS thread
//! ([`ActorRuntime`]) with an `actix_rt::System`, starts every actor there with
//! `start_in_arbiter`, and wraps the `Addr`s in handles ([`Pool`], [`InstanceHandle`],
//! [`Lease`]) that are `Clone + Send + Sync` with plain `async fn`s. `Addr::send` works from
//! any executor, so callers never see actix. Each instance's HTTP client is built on the actor
//! thread's runtime as far as the actors' own requests go; dropping the last [`Pool`] clone stops the system and joins the thread.
//!
//! What a shutdown does to leases in flight: they become inert (dropping them tells no one);
//! the VMs they stood for are the sandbox's to clean up, which it can do from Proxmox state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pvesandbox_pool::PoolError> {
//! use pvesandbox_pool::{InstancesFile, Needs, Pool, PoolOptions};
//! let file = InstancesFile::from_json(&std::fs::read_to_string("instances.json").unwrap())?;
//! let pool = Pool::start(file.instances, PoolOptions::default()).await?;
//! let lease = pool.acquire("default", Needs { ram_mb: 2048, vcpus: 2 }, std::time::Duration::from_secs(600)).await?;
//! println!("sample runs on {}", lease.instance().id());
//! drop(lease); // the slot is free again
//! # Ok(()) }
//! ```

mod allocator;
mod config;
mod error;
mod instance;
mod runtime;
mod supervisor;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;

pub use allocator::{AllocError, VmidAllocator};
pub use config::{HttpHeader, InstanceConfig, InstancesFile, TaskPolling, VmidRange};
pub use error::PoolError;
pub use instance::{InstanceHandle, InstanceInfo};
pub use supervisor::{Capacity, CleanupRetry, InstanceStats, Lease, Needs, PoolOptions, PoolStats};

// The actors stay inside: only this crate knows actix.
use instance::InstanceActor;
use runtime::ActorRuntime;
use supervisor::PoolSupervisor;

use supervisor::{Acquire, Adopt, GetStats, Slot};

/// The pool: start it once, clone it freely, `acquire` from anywhere.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    supervisor: Addr<PoolSupervisor>,
    instances: Vec<InstanceHandle>,
    // Last field: dropped after the addresses, stopping the actor thread.
    _runtime: ActorRuntime,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("instances", &self.inner.instances)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts the actors, probes every instance (in parallel), and returns the handle.
    ///
    /// An instance that fails its probe is reported in the error if *no* instance is usable;
    /// otherwise it starts quarantined and is re-probed in the background.
    pub async fn start(
        instances: Vec<InstanceConfig>,
        opts: PoolOptions,
    ) -> Result<Pool, PoolError> {
        if instances.is_empty() {
            return Err(PoolError::Config {
                field: "instances".into(),
                message: "empty: configure at least one Proxmox instance".into(),
            });
        }
        for i in &instances {
            i.validate()?;
        }
        let runtime = ActorRuntime::start("pvesandbox-pool").map_err(PoolError::Runtime)?;
        let mut handles = Vec::new();
        for cfg in instances {
            let cfg = Arc::new(cfg);
            // A reqwest client binds to no runtime when built; its connections belong to
            // whichever runtime drives a request, so cloning it into the actor is safe.
            let client = cfg.client()?;
            let c2 = cfg.clone();
            let addr = runtime.spawn(move |_| InstanceActor::new(c2, client));
            handles.push(InstanceHandle::new(cfg, addr).await?);
        }
        let probes = futures_util::future::join_all(handles.iter().map(|h| h.probe())).await;
        let mut failures = Vec::new();
        let mut slots = Vec::new();
        for (h, p) in handles.iter().zip(probes) {
            let cfg = h.config();
            let (cap, ok) = match &p {
                Ok(info) => (
                    Capacity {
                        max_samples: cfg.max_samples.unwrap_or(1),
                        ram_mb: cfg
                            .ram_mb
                            .unwrap_or(info.node_ram_mb)
                            .min(info.node_ram_mb.max(1)),
                        vcpus: cfg.vcpus.unwrap_or(info.node_cpus),
                    },
                    true,
                ),
                Err(_) => (
                    Capacity {
                        max_samples: cfg.max_samples.unwrap_or(1),
                        ram_mb: cfg.ram_mb.unwrap_or(0),
                        vcpus: cfg.vcpus.unwrap_or(0),
                    },
                    false,
                ),
            };
            if let Err(e) = p {
                tracing::warn!(instance = %h.id(), error = %e, "instance failed its probe");
                failures.push(e);
            }
            slots.push(Slot {
                pool: cfg.pool_id.clone(),
                handle: h.clone(),
                cap,
                used: Capacity {
                    max_samples: 0,
                    ram_mb: 0,
                    vcpus: 0,
                },
                quarantined: !ok,
            });
        }
        if failures.len() == handles.len() {
            return Err(PoolError::NoInstanceUsable { failures });
        }
        let supervisor = runtime.spawn(move |_| PoolSupervisor::new(slots, opts));
        Ok(Pool {
            inner: Arc::new(PoolInner {
                supervisor,
                instances: handles,
                _runtime: runtime,
            }),
        })
    }

    /// Waits (FIFO) for a lease on `pool` for a sample with `needs`, up to `deadline`.
    pub async fn acquire(
        &self,
        pool: &str,
        needs: Needs,
        deadline: Duration,
    ) -> Result<Lease, PoolError> {
        let started = Instant::now();
        let rx = self
            .inner
            .supervisor
            .send(Acquire {
                pool: pool.to_owned(),
                needs,
            })
            .await
            .map_err(|_| PoolError::ShutDown)??;
        match tokio::time::timeout(deadline.saturating_sub(started.elapsed()), rx).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(_)) => Err(PoolError::ShutDown),
            Err(_) => {
                let stats = self.stats().await.ok();
                Err(supervisor::deadline_error(
                    pool,
                    supervisor::elapsed_since(started),
                    stats.as_ref(),
                ))
            }
        }
    }

    /// Counts a sample that already exists on `instance` (another process made it; this one
    /// attached to it) against that instance's budget until the lease drops. Granted at once,
    /// even over budget: the sample is there whether or not it is counted, and counting it
    /// makes later leases wait for it.
    pub async fn adopt(&self, instance: &str, needs: Needs) -> Result<Lease, PoolError> {
        self.inner
            .supervisor
            .send(Adopt {
                instance: instance.to_owned(),
                needs,
            })
            .await
            .map_err(|_| PoolError::ShutDown)?
    }

    /// A snapshot of capacity, use and quarantine per instance.
    pub async fn stats(&self) -> Result<PoolStats, PoolError> {
        self.inner
            .supervisor
            .send(GetStats)
            .await
            .map_err(|_| PoolError::ShutDown)
    }

    /// Every instance, in configuration order.
    pub fn instances(&self) -> &[InstanceHandle] {
        &self.inner.instances
    }
}
