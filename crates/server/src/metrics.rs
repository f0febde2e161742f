//! `GET /metrics`: Prometheus text (OpenMetrics) for operators: sandboxes by state, how long
//! creates and commands take, requests the server sent to Proxmox, and what the reaper did.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabel {
    instance: String,
    method: &'static str,
    outcome: &'static str,
}

/// The OpenSandbox states a sandbox can be listed in (each is exported, zeros included, so a
/// dashboard's series do not appear and vanish).
pub const STATES: [&str; 8] = [
    "Pending",
    "Running",
    "Pausing",
    "Paused",
    "Resuming",
    "Stopping",
    "Terminated",
    "Failed",
];

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    sandboxes: Family<StateLabel, Gauge>,
    creates: Family<OutcomeLabel, Histogram>,
    commands: Family<OutcomeLabel, Histogram>,
    pve_calls: Family<CallLabel, Counter>,
    reaped: Counter,
    /// Scrapes are encoded one at a time (the state gauges are set just before).
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let sandboxes = Family::<StateLabel, Gauge>::default();
        // 0.25 s to ~17 min: a warm start on the simulator to a slow full clone on a busy node.
        let creates = Family::<OutcomeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 13))
        });
        // 10 ms to ~40 min: a trivial command through the agent to a long build.
        let commands = Family::<OutcomeLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 18))
        });
        let pve_calls = Family::<CallLabel, Counter>::default();
        let reaped = Counter::default();
        let mut registry = Registry::with_prefix("pvesandbox");
        registry.register(
            "sandboxes",
            "Sandboxes the server holds, by OpenSandbox state",
            sandboxes.clone(),
        );
        registry.register(
            "create_seconds",
            "From a create request to Running (outcome ok) or Failed",
            creates.clone(),
        );
        registry.register(
            "command_seconds",
            "Foreground commands through execd, from start to exit (outcome: ok, failed, timeout)",
            commands.clone(),
        );
        registry.register(
            "pve_requests",
            "HTTP requests sent to Proxmox (every attempt), by instance, method and outcome",
            pve_calls.clone(),
        );
        registry.register(
            "reaper_removals",
            "Sandboxes the reaper removed because their expiry passed",
            reaped.clone(),
        );
        Metrics {
            registry,
            sandboxes,
            creates,
            commands,
            pve_calls,
            reaped,
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    /// A create ended after `took`, `ok` or failed.
    pub fn created(&self, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.creates
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }

    /// A foreground command ended after `took` (`outcome`: `ok`, `failed`, `timeout`).
    pub fn command(&self, took: Duration, outcome: &'static str) {
        self.commands
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }

    /// The reaper removed a sandbox.
    pub fn reaped(&self) {
        self.reaped.inc();
    }

    /// The text exposition, with `states` (one entry per sandbox) and `calls` (cumulative,
    /// per instance) read at scrape time.
    pub fn encode(
        &self,
        states: impl IntoIterator<Item = &'static str>,
        calls: Vec<(String, Vec<pve_client::CallCount>)>,
    ) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = [0i64; STATES.len()];
        for s in states {
            if let Some(i) = STATES.iter().position(|k| *k == s) {
                counts[i] += 1;
            }
        }
        for (state, n) in STATES.iter().zip(counts) {
            self.sandboxes.get_or_create(&StateLabel { state }).set(n);
        }
        for (instance, counts) in calls {
            for c in counts {
                let label = CallLabel {
                    instance: instance.clone(),
                    method: c.method,
                    outcome: if c.ok { "ok" } else { "failed" },
                };
                let counter = self.pve_calls.get_or_create(&label);
                // The client's counts only grow; the counter follows them.
                counter.inc_by(c.count.saturating_sub(counter.get()));
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
