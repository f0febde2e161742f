//! pvesandbox: disposable, isolated Proxmox VE sandboxes for AI agents.
//!
//! The lifecycle in one place, composed from the workspace's libraries: a
//! [`pvesandbox_pool`] lease, a [`pve_sdn`] network, VMs cloned from
//! [`pvesandbox_templates`] templates, and [`guest_agent`] for exec and files. The
//! `pvesandbox` command (crate `pvesandbox-cli`), the Inspect adapter and the lifecycle server
//! call this crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pvesandbox::Error> {
//! use pvesandbox::{EvalConfig, Fleet, Settings, TaskOptions};
//! let settings = Settings::load(None)?; // PROXMOX_* / PROXMOX_CONFIG_FILE / pvesandbox.toml
//! let fleet = Fleet::start(settings).await?; // one per process
//! let mut events = fleet.subscribe(); // every sample's SampleEvents, in order
//! let run = fleet.run(EvalConfig::default(), TaskOptions::default()).await?;
//! let sample = run.sample_init().await?;
//! let out = sample
//!     .get("default")?
//!     .exec(guest_agent::ExecRequest::new(["uname", "-a"]))
//!     .await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! sample.pause().await?; // RAM kept; nothing runs
//! sample.resume().await?;
//! sample.cleanup(false).await?;
//! run.task_cleanup().await?;
//! while let Ok(ev) = events.try_recv() {
//!     println!("{} {} {:?}", ev.id, ev.sample, ev.kind);
//! }
//! # Ok(()) }
//! ```
//!
//! Modules: [`config`] (settings, layered with figment), [`eval`] (the sample shape, the
//! peer's format), [`lifecycle`] (runs, samples, pause/resume, cleanup), [`events`] (states
//! and the event stream), [`owner`] (tags, owner records, ids), [`cleanup`](mod@cleanup) (from
//! Proxmox state alone), [`preflight`] (`doctor`), and `embedded` (the simulator for demos and
//! tests; the `embedded` feature, on by default).

pub mod cleanup;
pub mod config;
#[cfg(feature = "embedded")]
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
pub use fleet::{Attached, AttachedVm, Fleet, Surveyed, attach, locate};
pub use lifecycle::{
    Run, Sample, SampleInfo, SampleTimings, SandboxVm, TaskOptions, TemplateProgressFn,
};
pub use owner::{DESCRIPTION_MAX, OwnerRecord, RunId, SampleId};
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
