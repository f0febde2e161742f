//! Errors the simulator answers with, shaped like PVE's.

use std::collections::BTreeMap;

/// An HTTP error answer: status, message (also the reason phrase), per-field errors for 400.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Message, without PVE's trailing newline.
    pub message: String,
    /// Per-parameter errors (400 only).
    pub errors: BTreeMap<String, String>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            errors: BTreeMap::new(),
        }
    }

    /// 400 `Parameter verification failed.` with the per-field map.
    pub fn params(errors: BTreeMap<String, String>) -> Self {
        ApiError {
            status: 400,
            message: "Parameter verification failed.".into(),
            errors,
        }
    }

    /// 400 for one field.
    pub fn param(field: &str, msg: impl Into<String>) -> Self {
        Self::params(BTreeMap::from([(field.to_owned(), msg.into())]))
    }

    /// 500 with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
}
