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
    /// A VM that should be ours no longer says so (its owner record or tags were changed).
    #[error("{vm} is no longer recognisably ours: {why}")]
    NotOurs {
        /// `instance/vmid (name)`.
        vm: String,
        /// What is missing.
        why: String,
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
        /// Where it failed (`network`, `clone of "victim"`, `agent of "default"`).
        step: crate::events::Step,
        /// Why.
        #[source]
        source: Box<Error>,
        /// What could not be undone (run `pvesandbox cleanup --run` for it).
        leftover: Vec<String>,
    },
    /// The sample is not in a state that allows the action (pausing a sample that is not
    /// running, resuming one that is not paused).
    #[error("cannot {action} sample {sample}: it is {state:?}, and only a {needs} sample can be")]
    WrongState {
        /// The sample id.
        sample: String,
        /// Its state.
        state: Box<crate::events::SampleState>,
        /// What was asked (`pause`, `resume`).
        action: &'static str,
        /// The state it needs.
        needs: &'static str,
    },
    /// A resumed guest's clock could not be stepped to the host's.
    #[error("the clock of {vm:?} is {off:?} off after the resume and could not be set: {why}")]
    ClockFix {
        /// Sandbox name.
        vm: String,
        /// How far off it was.
        off: std::time::Duration,
        /// What `date -s` said.
        why: String,
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
    /// A local file or stream could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written (`reading stdin`, `writing ./out`).
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a caller can do about an [`Error`]: the one classification every front end maps from
/// (the CLI's exit codes, the Inspect adapter's exception kinds, the server's HTTP statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A setting, eval config field or argument is wrong: fix it and retry.
    Config,
    /// The run, sample or sandbox named does not exist, or a path in the guest.
    NotFound,
    /// Proxmox refused for a privilege the credentials lack (a 403 anywhere in the chain).
    PermissionDenied,
    /// Something is in the way: a lock held, an id or name already taken.
    Conflict,
    /// Proxmox or the pool could not serve: unreachable, a failed call or task, no capacity.
    Unavailable,
    /// The guest agent (exec, files) failed.
    GuestAgent,
    /// Something made could not be removed (`pvesandbox cleanup` takes it from here).
    Leftover,
    /// A step did not finish in time.
    Timeout,
    /// A local file or stream failed.
    Io,
}

impl ErrorKind {
    /// The CLI's exit code (documented in `pvesandbox --help`).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Io => 1,
            ErrorKind::Config => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::PermissionDenied | ErrorKind::Conflict | ErrorKind::Unavailable => 4,
            ErrorKind::GuestAgent => 5,
            ErrorKind::Leftover => 7,
            ErrorKind::Timeout => 8,
        }
    }
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

/// `e` as a Proxmox API error, seeing through the `transparent` wrappers of the crates below
/// (their `source()` is the inner error's source, so a walk of the chain skips the inner
/// error itself).
fn as_api<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a pve_client::Error> {
    if let Some(api) = e.downcast_ref::<pve_client::Error>() {
        return Some(api);
    }
    match e.downcast_ref::<Error>() {
        Some(Error::Api(api)) => return Some(api),
        Some(Error::Pool(p)) => return as_api(p),
        Some(Error::Agent(a)) => return as_api(a),
        Some(Error::Template(t)) => return as_api(t),
        _ => {}
    }
    match e.downcast_ref::<pvesandbox_pool::PoolError>() {
        Some(pvesandbox_pool::PoolError::Api(api)) => return Some(api),
        Some(pvesandbox_pool::PoolError::Instance {
            source: Some(api), ..
        }) => return Some(api),
        _ => {}
    }
    if let Some(guest_agent::Error::Api(api)) = e.downcast_ref() {
        return Some(api);
    }
    if let Some(pvesandbox_templates::Error::Pve(api)) = e.downcast_ref() {
        return Some(api);
    }
    None
}

/// Fields whose values are credentials: never echoed by a configuration error.
fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "password"
        || name == "secret"
        || name.ends_with("_secret")
        || name.ends_with("_password")
}

impl Error {
    /// A configuration error from figment, naming the field path and the source.
    pub(crate) fn from_figment(e: figment::Error) -> Error {
        let field = if e.path.is_empty() {
            "(top level)".to_owned()
        } else {
            e.path.join(".")
        };
        let origin = e
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        // figment renders the value it found into both its kind and `Actual`
        // (``signed int `123456` ``): for a secret field neither may be shown.
        if e.path.last().is_some_and(|f| is_secret_field(f)) {
            let fix = match &e.kind {
                figment::error::Kind::InvalidType(_, expected) => {
                    format!("expected {expected}{origin}; quote it if it is a number")
                }
                _ => format!("not a valid value{origin}"),
            };
            return Error::Config {
                field,
                value: "(secret, not shown)".into(),
                fix,
            };
        }
        let value = match &e.kind {
            figment::error::Kind::InvalidType(actual, _) => actual.to_string(),
            figment::error::Kind::UnknownField(f, _) => f.clone(),
            _ => String::new(),
        };
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
        (self.kind() == ErrorKind::PermissionDenied).then_some(
            "the API token lacks a privilege: `pvesandbox doctor` lists what is missing and the pveum commands that grant it",
        )
    }

    /// What the caller can do about it. A failed sample creation is classified by its cause,
    /// or as [`ErrorKind::Leftover`] when it could not undo everything; a 403 anywhere in the
    /// chain is [`ErrorKind::PermissionDenied`].
    pub fn kind(&self) -> ErrorKind {
        if let Some(api) = self.api_cause() {
            if api.is_permission_denied() {
                return ErrorKind::PermissionDenied;
            }
            if api.is_locked() || api.is_already_exists() {
                return ErrorKind::Conflict;
            }
        }
        use pvesandbox_pool::PoolError as P;
        match self {
            Error::Config { .. } | Error::Sdn(pve_sdn::SdnError::Invalid { .. }) => {
                ErrorKind::Config
            }
            Error::Pool(P::Config { .. } | P::UnknownPool { .. } | P::NeverFits { .. }) => {
                ErrorKind::Config
            }
            Error::Template(pvesandbox_templates::Error::Config { .. }) => ErrorKind::Config,
            Error::NoSuchSandbox { .. } | Error::NoSuchRun { .. } | Error::NotOurs { .. } => {
                ErrorKind::NotFound
            }
            // The caller named a path that is not there: theirs to fix, not the agent's fault.
            Error::Agent(guest_agent::Error::NotFound { .. }) => ErrorKind::NotFound,
            Error::Agent(_) | Error::ClockFix { .. } => ErrorKind::GuestAgent,
            Error::WrongState { .. } => ErrorKind::Conflict,
            Error::SampleInit { leftover, .. } if !leftover.is_empty() => ErrorKind::Leftover,
            Error::SampleInit { source, .. } => source.kind(),
            Error::Cleanup { .. } => ErrorKind::Leftover,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Io { .. } => ErrorKind::Io,
            Error::Pool(_)
            | Error::Api(_)
            | Error::Sdn(_)
            | Error::Template(_)
            | Error::Alloc(_) => ErrorKind::Unavailable,
        }
    }

    /// The first Proxmox API error in the chain, wherever it was wrapped.
    fn api_cause(&self) -> Option<&pve_client::Error> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(api) = as_api(e) {
                return Some(api);
            }
            cause = e.source();
        }
        None
    }

    /// The process exit code the CLI uses for this error: its [`kind`](Self::kind)'s.
    pub fn exit_code(&self) -> i32 {
        self.kind().exit_code()
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

    fn api(status: u16, message: &str) -> pve_client::Error {
        pve_client::Error::Api {
            method: "POST",
            path: "/nodes/pve1/qemu/9000/clone".into(),
            status,
            message: message.into(),
            errors: Default::default(),
        }
    }

    #[test]
    fn one_kind_per_error_and_one_exit_code_per_kind() {
        let init = |source: Error, leftover: Vec<String>| Error::SampleInit {
            step: crate::events::Step::Clone {
                vm: "default".into(),
            },
            source: Box::new(source),
            leftover,
        };
        let cases = [
            (
                Error::Config {
                    field: "vms_config[0].ram_mb".into(),
                    value: "0".into(),
                    fix: "at least 16".into(),
                },
                ErrorKind::Config,
                2,
            ),
            (Error::NoSuchRun { run: "r".into() }, ErrorKind::NotFound, 3),
            (
                Error::Api(api(403, "Permission check failed (/vms/9000, VM.Clone)")),
                ErrorKind::PermissionDenied,
                4,
            ),
            (
                Error::Api(api(
                    500,
                    "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout",
                )),
                ErrorKind::Conflict,
                4,
            ),
            (
                Error::Api(api(595, "No route to host")),
                ErrorKind::Unavailable,
                4,
            ),
            (
                Error::Agent(guest_agent::Error::Api(api(
                    403,
                    "Permission check failed (/vms/100, VM.GuestAgent.Unrestricted)",
                ))),
                ErrorKind::PermissionDenied,
                4,
            ),
            // A failed creation is its cause, wherever the cause was wrapped ...
            (
                init(
                    Error::Pool(pvesandbox_pool::PoolError::Instance {
                        instance: "a".into(),
                        message: "GET /version: 403".into(),
                        source: Some(Box::new(api(403, "Permission check failed (/, Sys.Audit)"))),
                    }),
                    vec![],
                ),
                ErrorKind::PermissionDenied,
                4,
            ),
            (
                init(
                    Error::Timeout {
                        what: "agent".into(),
                        secs: 300,
                    },
                    vec![],
                ),
                ErrorKind::Timeout,
                8,
            ),
            // ... unless it could not undo everything.
            (
                init(
                    Error::Api(api(595, "No route to host")),
                    vec!["VM 123".into()],
                ),
                ErrorKind::Leftover,
                7,
            ),
            (
                Error::Io {
                    what: "reading stdin".into(),
                    source: std::io::Error::other("closed"),
                },
                ErrorKind::Io,
                1,
            ),
        ];
        for (e, kind, code) in cases {
            assert_eq!((e.kind(), e.exit_code()), (kind, code), "{e}");
        }
    }
}
