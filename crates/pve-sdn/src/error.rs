//! The crate's error type: every variant names what was wrong and how to fix it.

/// Everything that can go wrong planning, creating, isolating or tearing down a network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdnError {
    /// A config value is unusable; nothing was sent to PVE.
    #[error("invalid {field} = {value:?}: {fix}")]
    Invalid {
        /// Where, e.g. `sdn_config.vnet_configs[1].subnets[0].gateway`.
        field: String,
        /// The offending value as written.
        value: String,
        /// What to change.
        fix: String,
    },
    /// Every candidate `/24` for an `auto` network is taken.
    #[error(
        "no free /24 left in {supernet} for an auto network: configure a larger or another supernet, or tear down stale sandbox networks (`list_owned_zones`)"
    )]
    NoFreeSubnet {
        /// The range searched.
        supernet: String,
    },
    /// A subnet of a user topology overlaps one that already exists (or is reserved by another
    /// sample of this process). Simple zones on one host must not overlap: the host routes them.
    #[error(
        "{field} = {cidr} overlaps {existing} ({owner}): pick another range, or wait for that sandbox to finish"
    )]
    SubnetInUse {
        /// The config field, e.g. `sdn_config.vnet_configs[0].subnets[0].cidr`.
        field: String,
        /// The requested range.
        cidr: String,
        /// The range it overlaps.
        existing: String,
        /// Who holds it (`zone X` or `another sample of this process`).
        owner: String,
    },
    /// A PVE call failed.
    #[error("{what}: {source}")]
    Api {
        /// The step, e.g. `POST /cluster/sdn/zones (zone Zab12001)`.
        what: String,
        /// The client's error.
        #[source]
        source: pve_client::Error,
    },
    /// Creating the network failed midway; what had been created was removed again.
    #[error("{step} failed: {source}; undone: [{}]{}", undone.join(", "), if undo_failed.is_empty() { String::new() } else { format!("; could NOT undo: [{}] (remove with teardown_by_ids)", undo_failed.join(", ")) })]
    Create {
        /// The failing step.
        step: String,
        /// Why it failed.
        #[source]
        source: Box<SdnError>,
        /// Objects deleted again (`zone X`, `vnet Y`, `subnet Z`).
        undone: Vec<String>,
        /// Objects whose removal failed too.
        undo_failed: Vec<String>,
    },
    /// The SDN apply (`PUT /cluster/sdn` and its task) failed.
    #[error("SDN apply failed: {source}")]
    Apply {
        /// The applier's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// PVE answered something this crate cannot read.
    #[error("unexpected answer from {path}: {message}")]
    Decode {
        /// The route.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// Teardown removed what it could; these objects remain.
    #[error("teardown of zone {zone} left: [{}]", failures.join("; "))]
    Teardown {
        /// The zone.
        zone: String,
        /// One line per object that could not be removed, with PVE's reason.
        failures: Vec<String>,
    },
}

impl SdnError {
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        SdnError::Invalid {
            field: field.into(),
            value: value.into(),
            fix: fix.into(),
        }
    }

    pub(crate) fn api(what: impl Into<String>, source: pve_client::Error) -> Self {
        SdnError::Api {
            what: what.into(),
            source,
        }
    }

    /// The config field an [`SdnError::Invalid`] or [`SdnError::SubnetInUse`] names.
    pub fn field(&self) -> Option<&str> {
        match self {
            SdnError::Invalid { field, .. } | SdnError::SubnetInUse { field, .. } => Some(field),
            SdnError::Create { source, .. } => source.field(),
            _ => None,
        }
    }
}
