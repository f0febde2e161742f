//! guest-agent: commands and files inside Proxmox VE guests, through the QEMU guest agent.
//!
//! A [`GuestAgent`] is a cheap, cloneable handle on one VM's agent over a shared
//! [`pve_client::PveClient`]. It holds no global state and spawns no tasks of its own.
//!
//! ```no_run
//! # async fn demo(client: pve_client::PveClient) -> guest_agent::Result<()> {
//! use guest_agent::{ExecRequest, GuestAgent};
//! use std::time::Duration;
//! let vm = GuestAgent::new(client, "pve1", pve_client::Vmid(100));
//! vm.wait_ready(std::time::Instant::now() + Duration::from_secs(60)).await?;
//! let out = vm
//!     .exec(&ExecRequest::new(["sh", "-c", "echo hi; exit 3"]).timeout(Duration::from_secs(5)))
//!     .await?;
//! assert_eq!((out.status, out.stdout.as_slice()), (3, &b"hi\n"[..]));
//! vm.write_file("notes/a.bin", &[0, 255, 10]).await?;
//! assert_eq!(vm.read_file("notes/a.bin", None).await?, [0, 255, 10]);
//! # Ok(()) }
//! ```
//!
//! How it stays exact and cheap:
//! - **exec** sends one `agent/exec` of `/bin/sh -c <ASCII shim>` and polls `exec-status` from
//!   about a millisecond, growing to 100 ms, so a trivial command costs two REST calls. The shim
//!   (see [`exec`]) applies cwd, env and user, runs the command in its own session, enforces the
//!   timeout in the guest (killing the whole session), and reports wrapper failures on a
//!   nonce-tagged stderr line that is stripped before the caller sees stderr. Signals come back
//!   as 128+N. Stdin up to 40 KiB rides in `input-data`; larger stdin and very long argv travel
//!   as files that the shim removes before the command starts.
//! - **files** go through `agent/file-write` (one call up to 40 KiB; beyond that concurrent
//!   chunks reassembled in the guest and checked by size and SHA-256) and `agent/file-read`
//!   paged with `offset`/`count` (PVE ≥ 9.2; older PVE falls back to paging through exec).
//! - **errors** are one enum, [`Error`], with the path or partial output where the caller
//!   needs it.

mod error;
pub mod exec;
mod files;
mod shell;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pve_client::{Params, PveClient, Vmid};
use serde::Deserialize;

pub use error::{Error, Result};
pub use exec::{ExecOutput, ExecRequest};

/// Bytes per `file-write` call (and per stdin/script chunk): 40 KiB encodes to 54,616 base64
/// characters, under PVE's 61,440-character `content` cap and, percent-encoded, under
/// pveproxy's 64 KiB POST body limit.
pub const WRITE_CHUNK: usize = 40 * 1024;

/// PVE's `file-read` cap per call (and the largest `count`).
pub const READ_PAGE: u64 = 16 * 1024 * 1024;

/// A handle on the guest agent of one VM.
#[derive(Clone)]
pub struct GuestAgent {
    inner: Arc<Inner>,
}

struct Inner {
    client: PveClient,
    vmid: Vmid,
    /// `/nodes/{node}/qemu/{vmid}/agent`.
    base: String,
    workdir: String,
    tmpdir: String,
    upload_concurrency: usize,
    /// Files are read and written as this user (through exec) instead of the agent's root.
    file_user: Option<String>,
    /// When to send the first `exec-status` poll, learned from recent commands (µs).
    first_poll_us: AtomicU64,
    /// Whether `file-read` takes `offset`/`count`/`decode`: 0 unknown, 1 yes, 2 no.
    paged_reads: AtomicU8,
}

impl std::fmt::Debug for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAgent")
            .field("base", &self.inner.base)
            .field("workdir", &self.inner.workdir)
            .finish_non_exhaustive()
    }
}

/// What `get-osinfo` reports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct OsInfo {
    /// `debian`, `ubuntu`, `mswindows`, ...
    pub id: String,
    /// Distribution name.
    pub name: String,
    /// Human-readable name and version.
    pub pretty_name: String,
    /// Version number.
    pub version_id: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Architecture.
    pub machine: String,
}

/// One network interface as the agent sees it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Interface {
    /// Interface name (`eth0`).
    pub name: String,
    /// MAC address.
    pub hardware_address: String,
    /// Addresses.
    pub ip_addresses: Vec<IpAddress>,
}

/// An address on an [`Interface`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct IpAddress {
    /// The address.
    pub ip_address: String,
    /// `ipv4` or `ipv6`.
    pub ip_address_type: String,
    /// Prefix length.
    pub prefix: u32,
}

impl GuestAgent {
    /// A handle on VM `vmid` on `node`. Relative paths and the default cwd resolve against
    /// `/root` until [`GuestAgent::workdir`] says otherwise.
    pub fn new(client: PveClient, node: &str, vmid: Vmid) -> Self {
        GuestAgent {
            inner: Arc::new(Inner {
                client,
                vmid,
                base: format!("/nodes/{node}/qemu/{vmid}/agent"),
                workdir: "/root".into(),
                tmpdir: "/tmp".into(),
                upload_concurrency: 8,
                file_user: None,
                first_poll_us: AtomicU64::new(1000),
                paged_reads: AtomicU8::new(0),
            }),
        }
    }

    fn with_inner(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            client: shared.client.clone(),
            vmid: shared.vmid,
            base: shared.base.clone(),
            workdir: shared.workdir.clone(),
            tmpdir: shared.tmpdir.clone(),
            upload_concurrency: shared.upload_concurrency,
            file_user: shared.file_user.clone(),
            first_poll_us: AtomicU64::new(shared.first_poll_us.load(Ordering::Relaxed)),
            paged_reads: AtomicU8::new(shared.paged_reads.load(Ordering::Relaxed)),
        });
        f(&mut inner);
        GuestAgent {
            inner: Arc::new(inner),
        }
    }

    /// The directory relative paths and commands without a cwd start from (absolute).
    pub fn workdir(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/').to_owned();
        self.with_inner(|i| i.workdir = if dir.is_empty() { "/".into() } else { dir })
    }

    /// Where transfer files live briefly in the guest (default `/tmp`).
    pub fn tmpdir(self, dir: &str) -> Self {
        let dir = dir.trim_end_matches('/').to_owned();
        self.with_inner(|i| i.tmpdir = dir)
    }

    /// How many `file-write` chunks are in flight at once (default 8).
    pub fn upload_concurrency(self, n: usize) -> Self {
        self.with_inner(|i| i.upload_concurrency = n.max(1))
    }

    /// Read and write files as `user` rather than as the agent (root), so permissions apply
    /// as they would to that user. Transfers then go through exec: a small file costs an exec
    /// instead of a single `file-write`/`file-read`.
    pub fn file_user(self, user: impl Into<String>) -> Self {
        let user = user.into();
        self.with_inner(|i| i.file_user = Some(user))
    }

    /// The VM id.
    pub fn vmid(&self) -> Vmid {
        self.inner.vmid
    }

    /// The client it talks through.
    pub fn client(&self) -> &PveClient {
        &self.inner.client
    }

    /// The directory relative paths resolve against.
    pub fn default_workdir(&self) -> &str {
        &self.inner.workdir
    }

    /// `path` made absolute against the working directory.
    pub fn resolve(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_owned()
        } else if self.inner.workdir == "/" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.inner.workdir)
        }
    }

    fn path(&self, cmd: &str) -> String {
        format!("{}/{cmd}", self.inner.base)
    }

    /// One `agent/ping`.
    pub async fn ping(&self) -> Result<()> {
        self.inner
            .client
            .post(&self.path("ping"), &Params::new())
            .await
            .map_err(|e| error::classify(e, self.inner.vmid))?;
        Ok(())
    }

    /// Pings until the agent answers or `deadline` passes (then [`Error::AgentUnavailable`]).
    /// Paced by the client's [`Pacer`](pve_client::Pacer) under the kind `agent-ready`: the
    /// first wait pings at once, then from 10 ms doubling to 500 ms (a booting VM is not worth
    /// hammering, a restored one answers within milliseconds); later waits ping first just
    /// before the time the last ones took.
    pub async fn wait_ready(&self, deadline: Instant) -> Result<()> {
        let mut schedule = self.inner.client.pacer().schedule(
            "agent-ready",
            Duration::from_millis(10),
            Duration::from_millis(500),
        );
        let mut pause = schedule.first();
        loop {
            if !pause.is_zero() {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
            match self.ping().await {
                Ok(()) => {
                    schedule.done();
                    return Ok(());
                }
                Err(e @ Error::AgentUnavailable { .. }) if Instant::now() >= deadline => {
                    return Err(e);
                }
                Err(Error::AgentUnavailable { .. }) => {}
                Err(Error::Api(e)) if e.is_retryable() && Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
            pause = schedule.after_pending();
        }
    }

    async fn result<T: serde::de::DeserializeOwned>(&self, cmd: &str) -> Result<T> {
        let v = self
            .inner
            .client
            .get(&self.path(cmd), &Params::new())
            .await
            .map_err(|e| error::classify(e, self.inner.vmid))?;
        let r = v.get("result").cloned().unwrap_or(v);
        serde_json::from_value(r).map_err(|e| {
            Error::Api(pve_client::Error::Decode {
                method: "GET",
                path: self.path(cmd),
                message: e.to_string(),
            })
        })
    }

    /// `agent/get-osinfo`.
    pub async fn os_info(&self) -> Result<OsInfo> {
        self.result("get-osinfo").await
    }

    /// `agent/get-time`: the guest's wall clock. Anything but a non-negative integer of
    /// nanoseconds (an error object, a float, a negative number) is refused as a decode error.
    pub async fn time(&self) -> Result<std::time::SystemTime> {
        let ns: u64 = self.result("get-time").await?;
        Ok(std::time::UNIX_EPOCH + Duration::from_nanos(ns))
    }

    /// `agent/network-get-interfaces`.
    pub async fn interfaces(&self) -> Result<Vec<Interface>> {
        self.result("network-get-interfaces").await
    }
}
