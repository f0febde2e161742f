//! The privilege list, compiled from the sandbox crate's file so `doctor` and the nested
//! build share one list without xtask linking the sandbox stack.

#[path = "../../../crates/sandbox/src/privileges.rs"]
mod list;
pub use list::{PRIVILEGES, ROLE, STORAGE_PRIVILEGES, STORAGE_ROLE};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_duplicates() {
        let mut v = PRIVILEGES.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), PRIVILEGES.len());
        assert!(
            STORAGE_PRIVILEGES.iter().all(|p| !PRIVILEGES.contains(p)),
            "a storage-only privilege is also granted on /"
        );
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
            .chain(STORAGE_PRIVILEGES)
            .filter(|p| !text.contains(&format!("{p}\"")) && !text.contains(&format!("{p}'")))
            .collect();
        assert!(unknown.is_empty(), "not in the PVE schema: {unknown:?}");
    }
}
