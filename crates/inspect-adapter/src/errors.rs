//! Failures as one Python exception, `NativeError(kind, message, path, stdout, stderr, limit)`.
//!
//! Which Python type Inspect must see depends on the *kind* of failure, and several of those
//! types (`OutputLimitExceededError`, `SandboxUserUnsupportedError`, `SandboxUnavailableError`)
//! live in inspect_ai, which this module must not import. So Rust names the kind and keeps the
//! data (the path as the caller gave it, the partial output of a timed-out command, the limit)
//! and `pvesandbox_inspect/_errors.py` builds the exact exception.

use pyo3::PyErr;
use pyo3::exceptions::PyException;

pyo3::create_exception!(
    _native,
    NativeError,
    PyException,
    "A pvesandbox failure: args are (kind, message, path, stdout, stderr, limit)."
);

type Fields = (
    &'static str,
    String,
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<u64>,
);

fn raise(f: Fields) -> PyErr {
    NativeError::new_err(f)
}

/// A failure with only a kind and a message.
pub(crate) fn plain(kind: &'static str, message: String) -> PyErr {
    raise((kind, message, None, None, None, None))
}

/// Maps a lifecycle error: an agent error of a command or file call keeps its own kind (Inspect
/// shows those to the model); everything else is named after its [`pvesandbox::ErrorKind`],
/// with names apart from the agent's (`not_found` is a missing file there), and fails the
/// sample.
pub(crate) fn lifecycle(e: pvesandbox::Error) -> PyErr {
    use pvesandbox::ErrorKind as K;
    let e = match e {
        pvesandbox::Error::Agent(a) => return agent(a),
        other => other,
    };
    let kind = match e.kind() {
        K::Config => "config",
        K::NotFound => "no_such_sandbox",
        K::PermissionDenied => "privilege",
        K::Conflict => "conflict",
        K::Unavailable => "proxmox",
        K::GuestAgent => "guest_agent",
        K::Leftover => "leftover",
        K::Timeout => "step_timeout",
        K::Io => "io",
        _ => "other",
    };
    plain(kind, e.to_string())
}

/// Maps a guest-agent error to the kind Inspect distinguishes, keeping the path or output.
pub(crate) fn agent(e: guest_agent::Error) -> PyErr {
    use guest_agent::Error as A;
    let message = e.to_string();
    match e {
        A::NotFound { path } => raise(("not_found", message, Some(path), None, None, None)),
        A::IsADirectory { path } => {
            raise(("is_a_directory", message, Some(path), None, None, None))
        }
        A::PermissionDenied { path } => {
            raise(("permission_denied", message, Some(path), None, None, None))
        }
        A::Timeout { stdout, stderr, .. } => {
            raise(("timeout", message, None, Some(stdout), Some(stderr), None))
        }
        A::OutputLimit { path, limit } => {
            raise(("output_limit", message, Some(path), None, None, Some(limit)))
        }
        A::UserUnsupported { .. } => plain("user_unsupported", message),
        A::AgentUnavailable { .. } => plain("unavailable", message),
        // The guest-side wrapper could not start the command: the sandbox, not the command,
        // is broken (Inspect's `SandboxUnavailableError`).
        A::Wrapper { .. } => plain("unavailable", message),
        A::InvalidRequest { .. } => plain("invalid_request", message),
        A::Corrupted { path, .. } => raise(("corrupted", message, Some(path), None, None, None)),
        A::Api(_) => plain("api", message),
        _ => plain("other", message),
    }
}
