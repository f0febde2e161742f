//! Fault injection: make the next calls fail, hold locks, expire tickets, drop connections,
//! slow everything down. Armed through [`crate::PveSim`]; consumed by the server.

use std::time::Duration;

/// An error to answer with instead of running a route.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultError {
    /// HTTP status (ignored when `in_task`).
    pub status: u16,
    /// PVE's message, e.g. from the error catalogue.
    pub message: String,
    /// Answer with a UPID whose task ends `TASK ERROR: message` instead of an HTTP error.
    pub in_task: bool,
}

impl FaultError {
    /// An HTTP error.
    pub fn http(status: u16, message: impl Into<String>) -> Self {
        FaultError {
            status,
            message: message.into(),
            in_task: false,
        }
    }
    /// A task that fails with `message`.
    pub fn task(message: impl Into<String>) -> Self {
        FaultError {
            status: 200,
            message: message.into(),
            in_task: true,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RouteFault {
    pub method: String,
    pub route: String,
    pub remaining: u32,
    pub error: FaultError,
}

/// Armed faults.
#[derive(Debug, Default)]
pub struct Faults {
    pub(crate) routes: Vec<RouteFault>,
    pub(crate) drop_next: u32,
    pub(crate) delay: Duration,
}

impl Faults {
    /// Takes one armed failure for `method route`, if any.
    pub(crate) fn take(&mut self, method: &str, route: &str) -> Option<FaultError> {
        let f = self
            .routes
            .iter_mut()
            .find(|f| f.method == method && f.route == route && f.remaining > 0)?;
        f.remaining -= 1;
        let e = f.error.clone();
        self.routes.retain(|f| f.remaining > 0);
        Some(e)
    }

    /// True (and counts down) when this request's connection should be dropped.
    pub(crate) fn take_drop(&mut self) -> bool {
        if self.drop_next > 0 {
            self.drop_next -= 1;
            true
        } else {
            false
        }
    }
}
