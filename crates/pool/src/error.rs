//! The pool's error type.

use std::time::Duration;

/// Everything that can go wrong getting or using a lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The instance configuration is unusable (field named, with the fix).
    #[error("invalid pool configuration: {field}: {message}")]
    Config {
        /// The field at fault, e.g. `instances[a].password`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// No instance has this `pool_id`.
    #[error("no instance has pool_id {pool:?}; known pools: {known:?}")]
    UnknownPool {
        /// Requested pool.
        pool: String,
        /// Pools that exist.
        known: Vec<String>,
    },
    /// The request is larger than any instance of the pool could ever hold.
    #[error(
        "a sample needing {ram_mb} MiB and {vcpus} vCPUs never fits pool {pool:?} (largest instance: {max_ram_mb} MiB, {max_vcpus} vCPUs)"
    )]
    NeverFits {
        /// Pool.
        pool: String,
        /// Requested RAM.
        ram_mb: u64,
        /// Requested vCPUs.
        vcpus: u32,
        /// Largest RAM budget of the pool.
        max_ram_mb: u64,
        /// Largest vCPU budget of the pool.
        max_vcpus: u32,
    },
    /// No lease became free before the deadline.
    #[error(
        "no lease on pool {pool:?} within {waited:?} ({busy} instances busy, {quarantined} quarantined after failed cleanup)"
    )]
    Timeout {
        /// Pool.
        pool: String,
        /// How long we waited.
        waited: Duration,
        /// Instances at capacity.
        busy: usize,
        /// Instances waiting for a cleanup retry.
        quarantined: usize,
    },
    /// An instance failed its start-up check.
    #[error("instance {instance}: {message}")]
    Instance {
        /// The instance id.
        instance: String,
        /// What failed (with the cause's text, so the message stands alone).
        message: String,
        /// The API error behind it, kept typed so callers can classify it (a 403 is a
        /// privilege the token lacks).
        #[source]
        source: Option<Box<pve_client::Error>>,
    },
    /// The pool's actor thread could not be started.
    #[error("cannot start the pool's actor thread: {0}")]
    Runtime(#[source] std::io::Error),
    /// No instance could be reached at all.
    #[error("no instance is usable: {}", .failures.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    NoInstanceUsable {
        /// Each instance's failure.
        failures: Vec<PoolError>,
    },
    /// The pool's actors are gone (the pool was shut down).
    #[error("the pool has been shut down")]
    ShutDown,
    /// Proxmox answered with an error.
    #[error(transparent)]
    Api(#[from] pve_client::Error),
}
