//! The privileges pvesandbox's API token needs on Proxmox VE 9.2, in one place.
//!
//! `pvesandbox doctor` checks these; `cargo xtask nested-pve` grants exactly these (a role on
//! `/` for its user and token, and both roles on the file storage `local` for `gc`) by compiling
//! this very file (`#[path]`), so the two cannot drift; the README points here. Every name is one the PVE 9.2.3 schema's permission checks
//! use (a test in xtask reads the schema).

/// Name of the role the first-boot script creates with [`PRIVILEGES`].
pub const ROLE: &str = "PVESandbox";

/// Every privilege a sandbox run uses, on `/`, grouped by what needs it. Nothing more:
/// where PVE accepts any one of several privileges the list holds just the one we need
/// (`VM.GuestAgent.Unrestricted` covers the agent's audit and file checks), and the
/// embedded simulator, which enforces PVE's permission rules, grants its token exactly this
/// list so every test fails if code starts needing something else.
pub const PRIVILEGES: &[&str] = &[
    // VMs: create templates and clones, configure, start/stop/destroy, read their state.
    "VM.Allocate",
    "VM.Clone",
    "VM.Audit",
    "VM.PowerMgmt",
    // The NoCloud seed ISO a template is baked with.
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    // Also per-VM firewall rules (the sandbox's isolation).
    "VM.Config.Network",
    "VM.Config.Options",
    // Guest agent: exec needs Unrestricted since 9.2, and it satisfies every other agent call.
    "VM.GuestAgent.Unrestricted",
    // Storage: disks, image import and uploads (it also lets us list storages and content).
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    // download-url: the node fetches template images itself.
    "Sys.AccessNetwork",
    // SDN: one zone with vnets and subnets per sample (Allocate also lists them), and
    // attaching NICs to them.
    "SDN.Allocate",
    "SDN.Use",
    // Node status and the datacenter firewall's state.
    "Sys.Audit",
];

/// Name of the role for [`STORAGE_PRIVILEGES`].
pub const STORAGE_ROLE: &str = "PVESandboxGC";

/// What `pvesandbox gc` needs on `/storage/<file storage>` (where images are imported) to
/// delete images no template needs any more. Granted there alone: on `/` it would let the
/// token delete any guest's volumes and edit storage definitions. PVE's ACL entry on that
/// path replaces what `/` grants there, so it must carry [`ROLE`] too. Without it `gc`
/// keeps those files and says so.
pub const STORAGE_PRIVILEGES: &[&str] = &["Datastore.Allocate"];
