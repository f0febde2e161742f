//! pvesandbox: disposable, isolated Proxmox VE sandboxes for AI agents.
//!
//! The lifecycle in one place, composed from the workspace's libraries: a
//! [`pvesandbox_pool`] lease, a [`pve_sdn`] network, VMs cloned from
//! [`pvesandbox_templates`] templates, and [`guest_agent`] for exec and files. Both the
//! `pvesandbox` CLI and the Inspect adapter call this crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pvesandbox::Error> {
//! use pvesandbox::{EvalConfig, Run, Settings, TaskOptions};
//! let settings = Settings::load(None)?; // PROXMOX_* / PROXMOX_CONFIG_FILE / pvesandbox.toml
//! let task = Run::task_init(settings, EvalConfig::default(), TaskOptions::default()).await?;
//! let sample = task.sample_init().await?;
//! let out = sample
//!     .get("default")?
//!     .exec(guest_agent::ExecRequest::new(["uname", "-a"]))
//!     .await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! sample.cleanup(false).await?;
//! task.task_cleanup().await?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`config`] (settings, layered with figment), [`eval`] (the sample shape, the
//! peer's format), [`lifecycle`] (task/sample init and cleanup), [`owner`] (tags and owner
//! records), [`cleanup`](mod@cleanup) (from Proxmox state alone), [`embedded`] (the simulator for demos
//! and tests), [`preflight`] (`doctor`).

pub mod cleanup;
pub mod config;
pub mod embedded;
mod error;
pub mod eval;
pub mod events;
mod fleet;
mod images;
pub mod lifecycle;
pub mod owner;
pub mod preflight;
mod privileges;
mod vm;

pub use cleanup::{CleanupReport, CleanupTarget, cleanup};
pub use config::{ImageOverride, ImageSettings, RunSettings, Settings};
pub use error::{Error, ErrorKind};
pub use eval::{EvalConfig, VmConfig, VmNicConfig};
pub use events::{EventKind, SampleEvent, SampleState, Step};
pub use fleet::{Attached, AttachedVm, Fleet, attach, locate};
pub use lifecycle::{ProgressFn, Run, Sample, SampleInfo, SampleTimings, SandboxVm, TaskOptions};
pub use owner::{OwnerRecord, RunId, SampleId};
pub use vm::OwnedVm;

/// Removes, on every configured instance, our templates and imported images that none of
/// `keep` needs (built-ins are keyed by their image checksum, so a moved pin frees the old
/// build). Never touches untagged VMs or templates with linked clones. Returns
/// `(instance, report)` per instance.
pub async fn gc_templates(
    settings: &Settings,
    keep: &[pvesandbox_templates::VmSource],
) -> Result<Vec<(String, pvesandbox_templates::GcReport)>, Error> {
    let mut out = Vec::new();
    for i in &settings.instances {
        let client = i.client().map_err(Error::from_pool)?;
        let t = pvesandbox_templates::Templates::new(client, images::template_config(settings, i)?);
        out.push((i.instance_id.clone(), t.gc(keep).await?));
    }
    Ok(out)
}

/// Every VM of ours in the cluster `client` talks to (one call).
pub async fn owned_vms(client: &pve_client::PveClient) -> Result<Vec<OwnedVm>, Error> {
    Ok(vm::list_owned(client).await?)
}
