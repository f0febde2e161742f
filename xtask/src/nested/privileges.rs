//! The privileges pvesandbox's API token needs on Proxmox VE 9.2, in one place.
//!
//! The nested build grants exactly these (a role on `/` for the user and its token);
//! `pvesandbox doctor` checks the same list, and the README quotes it. Every name is one the
//! PVE 9.2.3 API schema's permission checks use (a test below reads the schema when present).

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
    // Storage: disks, image import and uploads.
    "Datastore.Audit",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_duplicates() {
        let mut v = PRIVILEGES.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), PRIVILEGES.len());
    }

    /// Every privilege must be one PVE 9.2.3 checks somewhere (a typo would make the
    /// first-boot `pveum role add` fail inside the VM, where nobody sees it quickly).
    #[test]
    fn every_privilege_is_named_in_the_pve_schema() {
        let schema = crate::root().join("../shared/pve-api/pve-api-schema.json");
        let Ok(text) = std::fs::read_to_string(&schema) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{} is missing",
                schema.display()
            );
            eprintln!("skipped: {} is missing", schema.display());
            return;
        };
        let unknown: Vec<_> = PRIVILEGES
            .iter()
            .filter(|p| !text.contains(&format!("{p}\"")) && !text.contains(&format!("{p}'")))
            .collect();
        assert!(unknown.is_empty(), "not in the PVE schema: {unknown:?}");
    }
}
