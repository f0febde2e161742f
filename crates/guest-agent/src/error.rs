//! The crate's one error type, shaped after what a sandbox caller must tell apart.
//!
//! Inspect (and any agent harness) shows some failures to the model as tool errors and treats
//! everything else as infrastructure failure. So the variants that are the *command's* or the
//! *path's* fault carry the path or the partial output, and everything about PVE itself stays
//! inside [`Error::Api`] with `pve-client`'s classifiable error.

use std::time::Duration;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file (or a working directory) does not exist.
    #[error("{path}: No such file or directory")]
    NotFound {
        /// The path as the caller gave it.
        path: String,
    },
    /// A directory where a file was expected.
    #[error("{path}: Is a directory")]
    IsADirectory {
        /// The path as the caller gave it.
        path: String,
    },
    /// Not readable, not writable, or not executable for the user.
    #[error("{path}: Permission denied")]
    PermissionDenied {
        /// The path (for exec: the program) as the caller gave it.
        path: String,
    },
    /// The command ran past its timeout; it and every process in its session were killed.
    #[error("command timed out after {timeout:?}")]
    Timeout {
        /// The timeout that passed.
        timeout: Duration,
        /// Output captured before the kill.
        stdout: Vec<u8>,
        /// Error output captured before the kill.
        stderr: Vec<u8>,
    },
    /// A file is larger than the caller's limit (reads always fail rather than truncate).
    #[error("{path}: the read limit of {limit} bytes was exceeded")]
    OutputLimit {
        /// The path as the caller gave it.
        path: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The guest cannot run commands as this user (no such user, or no way to switch).
    #[error("cannot run as user {user:?}: {reason}")]
    UserUnsupported {
        /// The user as the caller gave it.
        user: String,
        /// Why.
        reason: String,
    },
    /// No agent answers: VM stopped, agent not started or not installed, agent crashed.
    #[error("guest agent of VM {vmid} unavailable: {message}")]
    AgentUnavailable {
        /// The VM.
        vmid: pve_client::Vmid,
        /// PVE's words.
        message: String,
    },
    /// The request itself is wrong (e.g. an environment variable name `sh` cannot export).
    #[error("invalid {field}: {message}")]
    InvalidRequest {
        /// Which part of the request.
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A transferred file does not match what was sent (size or SHA-256).
    #[error("{path}: written file does not match: {detail}")]
    Corrupted {
        /// The path as the caller gave it.
        path: String,
        /// Expected vs found.
        detail: String,
    },
    /// The guest-side wrapper failed in a way it could not classify (its stderr is kept).
    #[error("guest wrapper failed ({stage}): {stderr}")]
    Wrapper {
        /// Which step (`upload`, `setsid`, ...).
        stage: String,
        /// What the guest printed.
        stderr: String,
    },
    /// PVE answered with an error that is none of the above.
    #[error(transparent)]
    Api(#[from] pve_client::Error),
}

impl Error {
    /// True for errors that are about the guest being unreachable rather than the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::AgentUnavailable { .. })
    }
}

/// Messages PVE gives when no agent answers (fakepve and PVE wording).
pub(crate) fn unavailable_message(msg: &str) -> bool {
    msg.contains("QEMU guest agent is not running")
        || msg.contains("No QEMU guest agent configured")
        || msg.contains("not running")
        || msg.contains("guest agent unavailable")
}

/// Maps a PVE error on a file operation to the path error it describes, if any.
pub(crate) fn classify_file(e: pve_client::Error, path: &str, vmid: pve_client::Vmid) -> Error {
    let Some(msg) = e.pve_message() else {
        return Error::Api(e);
    };
    // qemu-ga reports strerror() texts inside "Agent error: ..."; match the errno text only.
    if msg.contains("No such file or directory") {
        Error::NotFound { path: path.into() }
    } else if msg.contains("Is a directory") {
        Error::IsADirectory { path: path.into() }
    } else if msg.contains("Permission denied") {
        Error::PermissionDenied { path: path.into() }
    } else if unavailable_message(msg) {
        Error::AgentUnavailable {
            vmid,
            message: msg.to_owned(),
        }
    } else {
        Error::Api(e)
    }
}

/// Maps a PVE error on any agent call: only "no agent" is special.
pub(crate) fn classify(e: pve_client::Error, vmid: pve_client::Vmid) -> Error {
    match e.pve_message() {
        Some(msg) if e.status() == Some(500) && unavailable_message(msg) => {
            Error::AgentUnavailable {
                vmid,
                message: msg.to_owned(),
            }
        }
        _ => Error::Api(e),
    }
}
