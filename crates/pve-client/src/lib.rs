//! An async client for the Proxmox VE REST API.
//!
//! `pve-client` knows PVE's wire format and nothing else: no sandboxes, no actors, no config
//! files. It gives you
//! - a [`PveClient`] built with [`PveClient::builder`]: password (ticket + CSRF) or API-token
//!   auth, TLS that verifies by default or pins the SHA-256 fingerprint the PVE GUI shows, one
//!   pooled keep-alive connection set for every call including uploads;
//! - single-flight ticket renewal (before the 2 h expiry, and once on a 401);
//! - typed calls for guests, tasks, storage and pools, plus raw [`PveClient::get`]/`post`/`put`/`delete`;
//! - [`Upid`] and [`PveClient::wait_task`], which polls until the task ends on a schedule learned
//!   per task type (a [`Pacer`]: the first poll just before the usual end, then 2 ms doubling
//!   to 250 ms) and turns anything but `OK` into [`Error::Task`] with the log's tail;
//! - one [`Error`] enum with PVE's status, message and per-field errors, and predicates such as
//!   [`Error::is_retryable`].
//!
//! Secrets ([`Secret`]) print as `***` everywhere: `Debug`, `Display`, errors, tracing.
//!
//! ```no_run
//! # async fn demo() -> pve_client::Result<()> {
//! use pve_client::{CloneOptions, PveClient, Vmid, WaitOptions};
//! use std::time::Duration;
//!
//! let pve = PveClient::builder()
//!     .base_url("https://pve.example:8006")
//!     .api_token("root@pam!ci", "00000000-0000-0000-0000-000000000000")
//!     .fingerprint("AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99")
//!     .build()?;
//! let node = pve.node("pve1");
//! let upid = node.qemu(Vmid(9000)).clone_vm(&CloneOptions::new(Vmid(101)).name("box")).await?;
//! pve.wait_task(&upid, WaitOptions::with_timeout(Duration::from_secs(120))).await?;
//! # Ok(()) }
//! ```

pub mod api;
mod auth;
mod client;
mod error;
pub mod lenient;
mod pace;
mod params;
mod propstring;
mod secret;
mod task;
mod tls;
mod types;
mod upid;

pub use api::{
    CloneOptions, DestroyOptions, DownloadUrl, NodeApi, QemuApi, ShutdownOptions, StorageApi,
    Upload,
};
pub use auth::Credentials;
pub use client::{CallCount, Method, PveClient, PveClientBuilder};
pub use error::{Error, Result};
pub use pace::{Pacer, Pacing, Schedule};
pub use params::{ParamValue, Params};
pub use propstring::PropertyString;
pub use secret::Secret;
pub use task::WaitOptions;
pub use tls::{Fingerprint, TlsMode};
pub use types::*;
pub use upid::{Upid, UpidParseError};
