//! The crate's one error type.
//!
//! Every variant carries what a caller needs to decide and to report: the request (method and
//! path, never parameters, which may hold secrets), PVE's own message, and for parameter errors
//! PVE's per-field map. Predicates (`status()`, `is_retryable()`, ...) let callers classify
//! without matching on variants, which may grow (`#[non_exhaustive]`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Upid;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to Proxmox VE.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given something unusable (named field, value, fix).
    #[error("invalid client configuration: {field}: {message}")]
    Config {
        /// Builder field at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// PVE answered with an HTTP error (400 parameter errors, 403, 500 semantic errors, 595/596/597 proxy errors...).
    #[error("{method} {path}: HTTP {status}: {message}{}", fmt_field_errors(.errors))]
    Api {
        /// HTTP method of the request.
        method: &'static str,
        /// API path (below `/api2/json`), without query.
        path: String,
        /// HTTP status.
        status: u16,
        /// PVE's message (body `message`, else the HTTP reason phrase), trimmed.
        message: String,
        /// Per-parameter errors of a 400 `Parameter verification failed.`.
        errors: BTreeMap<String, String>,
    },
    /// Authentication failed or was refused (401, or login rejected).
    #[error("{method} {path}: authentication failed: {message}")]
    Auth {
        /// HTTP method of the request.
        method: &'static str,
        /// API path.
        path: String,
        /// PVE's wording, e.g. `authentication failure` or `permission denied - invalid PVE ticket`.
        message: String,
    },
    /// The TLS handshake failed: untrusted certificate, fingerprint mismatch, ...
    #[error("{method} {path}: TLS error: {message}")]
    Tls {
        /// HTTP method of the request.
        method: &'static str,
        /// API path.
        path: String,
        /// The underlying reason.
        message: String,
    },
    /// The server could not be reached (refused, DNS, reset before a response).
    #[error("{method} {path}: connection failed: {message}")]
    Connect {
        /// HTTP method of the request.
        method: &'static str,
        /// API path.
        path: String,
        /// The underlying reason.
        message: String,
    },
    /// The request did not complete in time.
    #[error("{method} {path}: timed out")]
    Timeout {
        /// HTTP method of the request.
        method: &'static str,
        /// API path.
        path: String,
    },
    /// The response was not what PVE sends (bad JSON, missing `data`, wrong shape).
    #[error("{method} {path}: unexpected response: {message}")]
    Decode {
        /// HTTP method of the request.
        method: &'static str,
        /// API path.
        path: String,
        /// What did not parse.
        message: String,
    },
    /// A task ended with anything but `OK` (or `WARNINGS: N`).
    #[error("task {upid} failed: {exitstatus}")]
    Task {
        /// The task (boxed: a UPID is large and errors should stay small).
        upid: Box<Upid>,
        /// PVE's exit status, i.e. the error message.
        exitstatus: String,
        /// The last lines of the task log.
        log_tail: Vec<String>,
    },
    /// A task was still running when the caller's deadline passed.
    #[error("task {upid} still running after {waited:?}")]
    TaskTimeout {
        /// The task (boxed: a UPID is large and errors should stay small).
        upid: Box<Upid>,
        /// How long we waited.
        waited: Duration,
    },
    /// Reading a local file for an upload or a CA bundle failed.
    #[error("{path}: {source}")]
    Io {
        /// The local file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn fmt_field_errors(errors: &BTreeMap<String, String>) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(" ({})", parts.join("; "))
}

impl Error {
    /// The HTTP status, when PVE answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::Auth { .. } => Some(401),
            _ => None,
        }
    }

    /// PVE's message for API errors, the exit status for task errors.
    pub fn pve_message(&self) -> Option<&str> {
        match self {
            Error::Api { message, .. } | Error::Auth { message, .. } => Some(message),
            Error::Task { exitstatus, .. } => Some(exitstatus),
            _ => None,
        }
    }

    /// The per-parameter errors of a 400 (empty otherwise).
    pub fn field_errors(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Error::Api { errors, .. } if !errors.is_empty() => Some(errors),
            _ => None,
        }
    }

    /// True for PVE's "does not exist" answers: PVE reports missing VMs as 500, never 404.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Api {
                status, message, ..
            } => {
                *status == 404
                    || (*status == 500
                        && (message.contains("does not exist") || message.contains("no such")))
            }
            _ => false,
        }
    }

    /// True when PVE refused to create something because its id is taken: `unable to create VM
    /// 101: config file already exists`, `VM 101 already exists on node 'pve1'`, `pool 'x'
    /// already exists`. VM-id allocation relies on this: create, and move on when it is true.
    pub fn is_already_exists(&self) -> bool {
        match self {
            Error::Api {
                status: 500,
                message,
                ..
            } => message.contains("already exists"),
            Error::Api {
                status: 400,
                errors,
                ..
            } => errors.values().any(|m| m.contains("already exists")),
            _ => false,
        }
    }

    /// True for 403 `Permission check failed`.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Api { status: 403, .. })
    }

    /// True when the object is locked by another task (`VM is locked (clone)`, `can't lock file ... got timeout`).
    pub fn is_locked(&self) -> bool {
        self.pve_message()
            .is_some_and(|m| m.contains("is locked (") || m.contains("can't lock file"))
    }

    /// True when repeating the *same* request may succeed and cannot do harm twice:
    /// connection failures before a response, timeouts, and PVE's proxy errors (595 node
    /// unreachable, 596/597 proxied connection broken), 502/503/504 gateways.
    ///
    /// The client itself retries only idempotent requests on these; see `PveClientBuilder::retries`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Api { status, .. } => matches!(status, 502..=504 | 595..=597),
            _ => false,
        }
    }
}
