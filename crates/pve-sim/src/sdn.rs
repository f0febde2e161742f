//! SDN zones, vnets and subnets, with PVE's pending-until-applied model.
//!
//! Writes change the *pending* configuration only; `PUT /cluster/sdn` copies pending to
//! running. Listings show running objects by default, `pending=1` shows the pending view with
//! a `state` of `new`, `changed` or `deleted`.

use std::collections::BTreeMap;

/// Object maps (id to properties) for one view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SdnConfig {
    /// Zones by id.
    pub zones: BTreeMap<String, BTreeMap<String, String>>,
    /// Vnets by id.
    pub vnets: BTreeMap<String, BTreeMap<String, String>>,
    /// Subnets by id (`zone-10.0.0.0-24`).
    pub subnets: BTreeMap<String, BTreeMap<String, String>>,
}

/// Running and pending SDN configuration.
#[derive(Debug, Clone, Default)]
pub struct Sdn {
    /// What is applied.
    pub running: SdnConfig,
    /// What will be applied by the next `PUT /cluster/sdn`.
    pub pending: SdnConfig,
}

impl Sdn {
    /// Applies pending to running.
    pub fn apply(&mut self) {
        self.running = self.pending.clone();
    }
}

/// The pending `state` of one object: `new`, `changed`, `deleted`, or none.
pub fn pending_state(
    running: Option<&BTreeMap<String, String>>,
    pending: Option<&BTreeMap<String, String>>,
) -> Option<&'static str> {
    match (running, pending) {
        (None, Some(_)) => Some("new"),
        (Some(_), None) => Some("deleted"),
        (Some(a), Some(b)) if a != b => Some("changed"),
        _ => None,
    }
}
