//! Errors as OpenSandbox's `{code, message}` bodies with the status each means: the one place
//! an [`ErrorKind`] becomes an HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pvesandbox::ErrorKind;

use crate::wire::ErrorBody;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// OpenSandbox's `code` (`INVALID_REQUEST`, `NOT_FOUND`, ...).
    pub code: &'static str,
    /// What went wrong, naming the field and the fix where the caller's input is at fault.
    pub message: String,
}

impl ApiError {
    /// 400 naming `field`.
    pub fn invalid(field: &str, fix: impl std::fmt::Display) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            message: format!("{field}: {fix}"),
        }
    }

    /// 404 for the sandbox `id`.
    pub fn no_sandbox(id: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: format!("no sandbox {id:?}"),
        }
    }

    /// 409: the sandbox is not in a state that allows it.
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "CONFLICT",
            message: message.into(),
        }
    }

    /// 401.
    pub fn unauthorized(message: &str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHORIZED",
            message: message.into(),
        }
    }
}

impl From<pvesandbox::Error> for ApiError {
    fn from(e: pvesandbox::Error) -> Self {
        let (status, code) = status_of(e.kind());
        let mut message = e.to_string();
        if let Some(h) = e.hint() {
            message = format!("{message} ({h})");
        }
        ApiError {
            status,
            code,
            message,
        }
    }
}

/// The HTTP status and code of each kind. Unavailable is 502, not 503: the SDK retries 503 on
/// every GET with backoff, and a Proxmox that failed a call is not made well by asking again
/// at once.
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::Config => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "CONFLICT"),
        ErrorKind::PermissionDenied => (StatusCode::BAD_GATEWAY, "PROXMOX_PERMISSION_DENIED"),
        ErrorKind::Unavailable => (StatusCode::BAD_GATEWAY, "PROXMOX_UNAVAILABLE"),
        ErrorKind::GuestAgent => (StatusCode::BAD_GATEWAY, "GUEST_AGENT_ERROR"),
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "TIMEOUT"),
        ErrorKind::Leftover => (StatusCode::INTERNAL_SERVER_ERROR, "CLEANUP_INCOMPLETE"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
    }
}

impl From<guest_agent::Error> for ApiError {
    fn from(e: guest_agent::Error) -> Self {
        ApiError::from(pvesandbox::Error::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}
