//! `GET /v1/events`: the server's inventory as one SSE stream, beyond OpenSandbox's API. A new
//! subscriber gets a `snapshot` (every sandbox with its VMs, and the instances), then deltas:
//! `sandbox` (its wire form, on every state or expiry change), `sample` (the fleet's events:
//! clones, networks, starts, agents, pause, resume, teardown, failures, each with how long it
//! took) and `reaper` (an expiry acted on).
//!
//! Delivery: every event has an `id:`; ids increase in publication order, which is the order
//! every subscriber sees (one lock assigns the id and sends). A client reconnecting with
//! `Last-Event-ID` gets exactly the events after it from a buffer of the last [`BUFFER`]; when
//! that id is older than the buffer (or from before a restart), it gets a fresh `snapshot`
//! instead, whose id is the last event it includes. A subscriber that falls [`BUFFER`] events
//! behind is sent a new snapshot rather than a stream with holes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for `Last-Event-ID` replay (and a slow subscriber's lag): the whole life of
/// about a hundred sandboxes (each publishes some 12).
pub const BUFFER: usize = 1024;

/// How often an idle stream gets a keepalive comment, under the 30 to 60 s idle timeouts of
/// common proxies.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// One published event.
#[derive(Debug)]
pub struct Item {
    /// Its `id:`.
    pub id: u64,
    /// Its `event:` (`sandbox`, `sample`, `reaper`).
    pub event: &'static str,
    /// Its `data:`, JSON.
    pub data: String,
}

struct Ring {
    last: u64,
    items: VecDeque<Arc<Item>>,
}

/// The event hub.
pub struct Feed {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Item>>,
}

impl Default for Feed {
    fn default() -> Self {
        // Ids start at the start time's microseconds, so ids of a previous run of the server
        // (lower) never pass for this one's: a client holding one gets a snapshot.
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Feed {
            ring: Mutex::new(Ring {
                last: base,
                items: VecDeque::with_capacity(BUFFER),
            }),
            tx: broadcast::channel(BUFFER).0,
        }
    }
}

/// What a new subscriber starts from.
pub struct Follow {
    /// The events after its `Last-Event-ID`, when the buffer still holds all of them; `None`:
    /// it needs a snapshot.
    pub replay: Option<Vec<Arc<Item>>>,
    /// The id of the last event published when it subscribed (a snapshot's id).
    pub last: u64,
    /// Everything published after that.
    pub rx: broadcast::Receiver<Arc<Item>>,
}

impl Feed {
    /// Publishes `data` as an `event`.
    pub fn publish(&self, event: &'static str, data: &impl Serialize) {
        let data = serde_json::to_string(data).unwrap_or_default();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.last += 1;
        let item = Arc::new(Item {
            id: ring.last,
            event,
            data,
        });
        if ring.items.len() == BUFFER {
            ring.items.pop_front();
        }
        ring.items.push_back(item.clone());
        // Sent under the lock: ids reach every receiver in order. No receiver is no error.
        let _ = self.tx.send(item);
    }

    /// Subscribes, replaying what came after `last_seen` if it can.
    pub fn follow(&self, last_seen: Option<u64>) -> Follow {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let oldest = ring.items.front().map_or(ring.last + 1, |i| i.id);
        let replay = last_seen
            .filter(|l| l.saturating_add(1) >= oldest && *l <= ring.last)
            .map(|l| ring.items.iter().filter(|i| i.id > l).cloned().collect());
        Follow {
            replay,
            last: ring.last,
            rx,
        }
    }
}

/// A fleet event as the feed's `sample` event: `kind` in snake case, its fields, when.
pub fn sample_event(ev: &pvesandbox::SampleEvent) -> serde_json::Value {
    use pvesandbox::EventKind as K;
    use serde_json::json;
    let mut v = match &ev.kind {
        K::Leased { instance } => json!({"kind": "leased", "instance": instance}),
        K::VmCloned { vm, vmid } => json!({"kind": "vm_cloned", "vm": vm, "vmid": vmid.0}),
        K::NetworkReady { zone, took } => json!({
            "kind": "network_ready", "zone": zone, "tookMs": took.as_millis() as u64,
        }),
        K::VmStarted { vm, vmid } => json!({"kind": "vm_started", "vm": vm, "vmid": vmid.0}),
        K::AgentReady { vm } => json!({"kind": "agent_ready", "vm": vm}),
        K::Running => json!({"kind": "running"}),
        K::Failed {
            step,
            kind,
            message,
        } => json!({
            "kind": "failed", "step": step.to_string(), "errorKind": format!("{kind:?}"),
            "message": message,
        }),
        K::Paused => json!({"kind": "paused"}),
        K::Resumed => json!({"kind": "resumed"}),
        K::Adopted { paused } => json!({"kind": "adopted", "paused": paused}),
        K::Renewed { expires_at } => json!({
            "kind": "renewed", "expiresAt": crate::sandboxes::rfc3339(*expires_at),
        }),
        K::TornDown => json!({"kind": "torn_down"}),
        _ => json!({"kind": "other"}),
    };
    v["sandboxId"] = ev.sample.to_string().into();
    v["at"] = crate::sandboxes::rfc3339(ev.at).into();
    v["elapsedMs"] = (ev.elapsed.as_millis() as u64).into();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_gives_exactly_what_came_after_and_a_snapshot_when_too_old() {
        let feed = Feed::default();
        feed.publish("sandbox", &1);
        let first = feed.follow(None).last;
        for n in 2..=5 {
            feed.publish("sandbox", &n);
        }
        let f = feed.follow(Some(first));
        let data: Vec<&str> = f
            .replay
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| &*i.data)
            .collect();
        assert_eq!(data, ["2", "3", "4", "5"]);
        assert_eq!(f.last, first + 4);
        assert!(feed.follow(Some(f.last)).replay.unwrap().is_empty());
        // From another run of the server, or from the future: a snapshot.
        assert!(feed.follow(Some(first - 10)).replay.is_none());
        assert!(feed.follow(Some(f.last + 1)).replay.is_none());
        for n in 0..BUFFER {
            feed.publish("sandbox", &n);
        }
        assert!(feed.follow(Some(first)).replay.is_none(), "evicted");
        let f = feed.follow(Some(f.last + BUFFER as u64 - 1));
        assert_eq!(f.replay.unwrap().len(), 1);
    }
}
