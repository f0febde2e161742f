//! pvesandbox: disposable, isolated Proxmox VE sandboxes for AI agents.
//!
//! The lifecycle in one place, composed from the workspace's libraries: a [`pvesandbox_pool`]
//! lease, a `pve-sdn` network, VMs cloned from `pvesandbox-templates`, and [`guest_agent`] for
//! exec and files. Both the `pvesandbox` CLI and the Inspect adapter call this crate.

pub mod config;
mod error;
pub mod owner;

pub use config::{ImageOverride, ImageSettings, RunSettings, Settings};
pub use error::Error;
pub use owner::{OwnerRecord, RunId};
