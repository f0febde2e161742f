//! What runs inside a simulated VM: the guest behind `/nodes/{node}/qemu/{vmid}/agent/*`.
//!
//! The seam is QEMU guest agent (QGA) *protocol*, not PVE's REST shape: a [`Guest`] answers QGA
//! commands (`guest-exec`, `guest-file-open`, ...) with QGA's own JSON and error objects, and
//! the simulator's agent routes translate PVE parameters into QGA commands the way PVE's
//! `PVE::API2::Qemu::Agent` does (base64 in and out, 1 MiB read loop, booleans as 0/1, `Agent
//! error: ...` wording). Keeping the seam there means a backend that relays to a real
//! qemu-guest-agent and one that fakes it are interchangeable, and any difference between them is
//! a bug in the fake.
//!
//! Lifecycle (driven by the simulator's VM state, never by the backend itself):
//! - [`GuestFactory::boot`] when a VM starts; the returned guest answers until
//!   [`Guest::power_off`], called on stop, reset or destroy;
//! - [`Guest::pause`] on `status/suspend` (PVE's QMP `stop`): nothing in the guest runs until
//!   [`Guest::resume`] (`status/resume`, QMP `cont`); the task ends only once the backend has
//!   done it, as PVE's ends after QMP answered;
//! - the VM's disk outlives power cycles: [`GuestFactory::clone_disk`] on clone,
//!   [`GuestFactory::destroy_disk`] on destroy.

mod canned;
mod cloudinit;
pub mod process;
pub mod qemu;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

/// A boxed, sendable future (the trait must be object-safe: backends are chosen at run time).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The host's wall clock in nanoseconds since the epoch: `guest-get-time` of guests that share
/// it (a pid namespace has no clock of its own).
pub(crate) fn host_time_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Why a QGA command did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QgaError {
    /// The agent answered `{"error": {"class": ..., "desc": ...}}`.
    #[error("{desc}")]
    Command {
        /// QGA error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// Human-readable description, exactly as the agent wrote it.
        desc: String,
    },
    /// No agent is listening (not booted yet, crashed, powered off): PVE reports
    /// `QEMU guest agent is not running`.
    #[error("guest agent unavailable: {0}")]
    Unavailable(String),
}

impl QgaError {
    /// A `GenericError`, the class qemu-ga uses for almost everything.
    pub fn generic(desc: impl Into<String>) -> Self {
        QgaError::Command {
            class: "GenericError".into(),
            desc: desc.into(),
        }
    }
}

/// A running guest that answers QEMU guest agent commands.
pub trait Guest: Send + Sync + 'static {
    /// Runs one QGA command (`"guest-exec"`, `"guest-file-read"`, ...) with its `arguments`
    /// object and resolves to the command's `return` value.
    fn execute<'a>(
        &'a self,
        command: &'a str,
        arguments: Value,
    ) -> BoxFuture<'a, Result<Value, QgaError>>;

    /// Ends everything running in the guest (power off). Later commands fail with
    /// [`QgaError::Unavailable`].
    fn power_off(&self) -> BoxFuture<'_, ()>;

    /// Freezes every process of the guest, RAM kept (QMP `stop`). The default suits guests
    /// with nothing running of their own (the canned one).
    fn pause(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Lets a paused guest run on (QMP `cont`).
    fn resume(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// What the simulator tells a factory about the VM it boots.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// VM id; also the key of its disk.
    pub vmid: u32,
    /// The VM's `name` (becomes the guest's hostname).
    pub name: String,
    /// The VM's config as stored (`net0`, `memory`, ...), for backends that model hardware.
    pub config: BTreeMap<String, String>,
}

/// Makes guests for VMs and keeps their disks between power cycles.
pub trait GuestFactory: Send + Sync + 'static {
    /// Boots the guest of `spec.vmid` from its disk (a fresh one for a VM never booted) and
    /// resolves once its agent answers.
    fn boot(&self, spec: BootSpec) -> BoxFuture<'_, std::io::Result<Arc<dyn Guest>>>;

    /// Gives `to` a copy of `from`'s disk (full or linked clone; the sim does not care which).
    fn clone_disk(&self, from: u32, to: u32) -> BoxFuture<'_, std::io::Result<()>>;

    /// Forgets `vmid`'s disk. Idempotent.
    fn destroy_disk(&self, vmid: u32) -> BoxFuture<'_, std::io::Result<()>>;

    /// Powers off every guest this factory booted and removes every disk, synchronously: the
    /// simulator calls it from `Drop`, where nothing can be awaited. Later boots fail.
    fn shutdown(&self) {}
}

pub(crate) use canned::CannedGuest;
pub(crate) use cloudinit::CloudInitGuest;
pub use process::{ProcessGuestFactory, ProcessGuestOptions};
