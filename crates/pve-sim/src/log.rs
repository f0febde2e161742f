//! The request log: every request with its route and status, and counters per route, so tests
//! and benchmarks can assert how many REST calls a flow costs.

use std::collections::BTreeMap;

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// HTTP method.
    pub method: String,
    /// Route template (`/nodes/{node}/qemu/{vmid}/clone`), or the raw path if none matched.
    pub route: String,
    /// Concrete path.
    pub path: String,
    /// Answered status (0 when the connection was dropped).
    pub status: u16,
}

/// All requests since start (or the last reset).
#[derive(Debug, Clone)]
pub struct RequestLog {
    entries: Vec<LoggedRequest>,
    /// Requests ever logged (resets do not lower it), for tests that act when the Nth
    /// request has been answered instead of sleeping.
    seen: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            entries: Vec::new(),
            seen: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl RequestLog {
    pub(crate) fn push(&mut self, r: LoggedRequest) {
        self.entries.push(r);
        self.seen.send_modify(|n| *n += 1);
    }
    /// A receiver of the count of requests ever logged.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.seen.subscribe()
    }
    /// Every request in order.
    pub fn entries(&self) -> &[LoggedRequest] {
        &self.entries
    }
    /// How many requests hit `method route`.
    pub fn count(&self, method: &str, route: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| e.method == method && e.route == route)
            .count()
    }
    /// Requests per `"METHOD route"`.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in &self.entries {
            *m.entry(format!("{} {}", e.method, e.route)).or_insert(0) += 1;
        }
        m
    }
    /// Total requests.
    pub fn total(&self) -> usize {
        self.entries.len()
    }
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}
