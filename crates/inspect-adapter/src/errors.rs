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

/// Maps a lifecycle error: agent errors keep their own kinds, everything else is named after
/// the lifecycle step that failed (all of which fail the sample in Inspect).
pub(crate) fn lifecycle(e: pvesandbox::Error) -> PyErr {
    use pvesandbox::Error as E;
    let e = match e {
        E::Agent(a) => return agent(a),
        other => other,
    };
    let kind = match &e {
        E::Config { .. } => "config",
        E::Pool(_) => "pool",
        E::Api(_) => "api",
        E::NoSuchSandbox { .. } => "no_such_sandbox",
        E::NoSuchRun { .. } => "no_such_run",
        E::SampleInit { .. } => "sample_init",
        E::Cleanup { .. } => "cleanup",
        E::Timeout { .. } => "step_timeout",
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
