//! The privileges pvesandbox's API token needs on Proxmox VE 9.2, in one place.
//!
//! `pvesandbox doctor` checks these; `cargo xtask nested-pve` grants exactly these (a role on
//! `/` for its user and token) by compiling this very file (`#[path]`), so the two cannot
//! drift; the README points here. Every name is one the PVE 9.2.3 schema's permission checks
//! use (a test in xtask reads the schema).

/// Name of the role the first-boot script creates with [`PRIVILEGES`].
pub const ROLE: &str = "PVESandbox";

/// Every privilege a sandbox run uses, grouped by what needs it.
pub const PRIVILEGES: &[&str] = &[
    // VMs: create from templates, configure, start/stop, snapshots for reset, inspect.
    "VM.Allocate",
    "VM.Clone",
    "VM.Audit",
    "VM.PowerMgmt",
    "VM.Console",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    // Also per-VM firewall rules and IP sets (the sandbox's isolation).
    "VM.Config.Network",
    "VM.Config.Options",
    // Guest agent: 9.2 split the old VM.Monitor check; exec needs Unrestricted.
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.FileRead",
    "VM.GuestAgent.FileWrite",
    "VM.GuestAgent.Unrestricted",
    // Storage: disks, image import and uploads; `gc` deleting imported images no template
    // needs any more (PVE wants Datastore.Allocate to delete a volume).
    "Datastore.Audit",
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    // download-url: the node fetches template images itself.
    "Sys.AccessNetwork",
    // SDN: one zone with vnets and subnets per sample, and attaching NICs to them.
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    // Node status and other users' tasks; resource pools that group a run's VMs.
    "Sys.Audit",
    "Pool.Allocate",
    "Pool.Audit",
];
