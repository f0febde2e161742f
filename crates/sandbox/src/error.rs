//! One error type for the lifecycle, classifiable by what the caller can do about it.

/// Everything the lifecycle can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting or eval config field is wrong; nothing was sent to Proxmox.
    #[error("invalid configuration: {field} = {value:?}: {fix}")]
    Config {
        /// The field, as a path (`vms_config[1].ram_mb`, `PROXMOX_PORT`).
        field: String,
        /// The offending value (never a secret).
        value: String,
        /// What to do.
        fix: String,
    },
    /// The pool could not lease an instance, or is misconfigured.
    #[error(transparent)]
    Pool(#[from] pvesandbox_pool::PoolError),
    /// A Proxmox API call failed.
    #[error(transparent)]
    Api(#[from] pve_client::Error),
    /// The guest agent (exec, files) failed.
    #[error(transparent)]
    Agent(#[from] guest_agent::Error),
    /// Creating, applying or removing a network failed (or its config is invalid).
    #[error(transparent)]
    Sdn(#[from] pve_sdn::SdnError),
    /// Getting a template or cloning it failed.
    #[error(transparent)]
    Template(#[from] pvesandbox_templates::Error),
    /// No VM id could be claimed.
    #[error(transparent)]
    Alloc(#[from] pvesandbox_pool::AllocError),
    /// A sandbox name that the sample does not have.
    #[error("no sandbox named {name:?} in this sample; it has: {known:?}")]
    NoSuchSandbox {
        /// Requested name.
        name: String,
        /// Names it has.
        known: Vec<String>,
    },
    /// Nothing of that run exists on any configured instance.
    #[error("run {run} not found on any configured Proxmox instance")]
    NoSuchRun {
        /// The run id.
        run: String,
    },
    /// A step of sample creation failed; what it had made was removed (or `leftover` says not).
    #[error("{step} failed: {source}{}", leftover_note(.leftover))]
    SampleInit {
        /// The step (`network`, `clone vm "victim"`, `agent of "default"`).
        step: String,
        /// Why.
        #[source]
        source: Box<Error>,
        /// What could not be undone (run `pvesandbox cleanup --run` for it).
        leftover: Vec<String>,
    },
    /// Cleanup left something behind.
    #[error("cleanup left {} object(s) behind: {}", .leftover.len(), .leftover.join("; "))]
    Cleanup {
        /// What remains, each with its reason.
        leftover: Vec<String>,
    },
    /// A step did not finish in time.
    #[error("{what} did not finish within {secs} s")]
    Timeout {
        /// The step.
        what: String,
        /// The limit.
        secs: u64,
    },
}

fn leftover_note(l: &[String]) -> String {
    if l.is_empty() {
        "; everything it had created was removed".into()
    } else {
        format!(
            "; could not remove: {} (run `pvesandbox cleanup --run <id>`)",
            l.join(", ")
        )
    }
}

impl Error {
    /// A configuration error from figment, naming the field path and the source.
    pub(crate) fn from_figment(e: figment::Error) -> Error {
        let field = if e.path.is_empty() {
            "(top level)".to_owned()
        } else {
            e.path.join(".")
        };
        let value = match &e.kind {
            figment::error::Kind::InvalidType(actual, _) => actual.to_string(),
            figment::error::Kind::UnknownField(f, _) => f.clone(),
            _ => String::new(),
        };
        let origin = e
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        let fix = match &e.kind {
            figment::error::Kind::UnknownField(_, expected) => {
                format!("unknown field{origin}; expected one of {expected:?}")
            }
            kind => format!("{kind}{origin}"),
        };
        Error::Config { field, value, fix }
    }

    /// A pool error; its configuration errors become [`Error::Config`], keeping the field.
    pub fn from_pool(e: pvesandbox_pool::PoolError) -> Error {
        match e {
            pvesandbox_pool::PoolError::Config { field, message } => Error::Config {
                field,
                value: String::new(),
                fix: message,
            },
            other => Error::Pool(other),
        }
    }

    /// What to do next, when the cause is one the user fixes outside pvesandbox: today a
    /// privilege the token lacks (PVE's 403), wherever in the chain it was wrapped.
    pub fn hint(&self) -> Option<&'static str> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if e.downcast_ref::<pve_client::Error>()
                .is_some_and(pve_client::Error::is_permission_denied)
            {
                return Some(
                    "the API token lacks a privilege: `pvesandbox doctor` lists what is missing and the pveum commands that grant it",
                );
            }
            cause = e.source();
        }
        None
    }

    /// The process exit code the CLI uses for this error (documented in `pvesandbox --help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } => 2,
            Error::NoSuchSandbox { .. } | Error::NoSuchRun { .. } => 3,
            Error::Sdn(pve_sdn::SdnError::Invalid { .. }) => 2,
            Error::Pool(_)
            | Error::Api(_)
            | Error::Sdn(_)
            | Error::Template(_)
            | Error::Alloc(_) => 4,
            Error::Agent(_) => 5,
            Error::SampleInit { .. } => 6,
            Error::Cleanup { .. } => 7,
            Error::Timeout { .. } => 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_anywhere_in_the_chain_points_at_doctor() {
        let denied = pve_client::Error::Api {
            method: "POST",
            path: "/nodes/pve1/qemu/100/agent/exec".into(),
            status: 403,
            message: "Permission check failed (/vms/100, VM.GuestAgent.Unrestricted)".into(),
            errors: Default::default(),
        };
        let wrapped = Error::Sdn(pve_sdn::SdnError::Api {
            what: "POST /cluster/sdn/zones".into(),
            source: denied,
        });
        assert!(
            wrapped
                .hint()
                .is_some_and(|h| h.contains("pvesandbox doctor"))
        );
        let other = pve_client::Error::Api {
            method: "GET",
            path: "/nodes/pve1/qemu/100/config".into(),
            status: 500,
            message: "Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist".into(),
            errors: Default::default(),
        };
        assert_eq!(Error::Api(other).hint(), None);
    }
}
