//! The server's own surfaces on the embedded simulator: `GET /v1/events` (a snapshot, then
//! every change of a sandbox's life in order with increasing ids, `Last-Event-ID` replaying
//! exactly what was missed, an id too old getting a snapshot) and `GET /metrics` (sandboxes by
//! state, create and command histograms, requests to Proxmox; the key or a bearer token).

#[path = "../../sandbox/tests/common/mod.rs"]
mod common;

use common::*;
use futures_util::StreamExt;
use pve_client::Secret;
use pvesandbox::Fleet;
use pvesandbox_server::{ServeOptions, Server};
use serde_json::{Value, json};

const KEY: &str = "feed key, not a secret";

/// One SSE event.
#[derive(Debug, Clone, PartialEq)]
struct Ev {
    id: u64,
    event: String,
    data: Value,
}

/// Reads SSE events off a response body as they come.
struct Reader {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
}

impl Reader {
    fn new(res: reqwest::Response) -> Reader {
        assert_eq!(res.status().as_u16(), 200);
        Reader {
            body: res.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Ev {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                // Keepalive comments carry no id.
                if let Some(id) = id {
                    return Ev {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    };
                }
                continue;
            }
            let chunk = self.body.next().await.expect("the feed ended").unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events up to and including the first `sandbox` event in `state`.
    async fn until_state(&mut self, state: &str) -> Vec<Ev> {
        let mut got = Vec::new();
        loop {
            let ev = self.next().await;
            let done = ev.event == "sandbox" && ev.data["sandbox"]["status"]["state"] == state;
            got.push(ev);
            if done {
                return got;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_and_the_metrics_follow_a_sandbox() {
    if !guests_available() {
        return;
    }
    let (_sim, settings) = world().await;
    let fleet = Fleet::start(settings).await.unwrap();
    let server = Server::start(
        fleet,
        ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            api_keys: vec![Secret::new(KEY)],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}", server.local_addr());
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("OPEN-SANDBOX-API-KEY", KEY)
    };
    let post = |path: &str| {
        http.post(format!("{base}{path}"))
            .header("OPEN-SANDBOX-API-KEY", KEY)
    };
    for path in ["/v1/events", "/metrics"] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{path}");
    }

    let mut feed = Reader::new(get("/v1/events").send().await.unwrap());
    let snap = feed.next().await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.data["sandboxes"], json!([]));
    assert_eq!(
        snap.data["instances"].as_array().unwrap().len(),
        1,
        "{snap:?}"
    );

    let created: Value = post("/v1/sandboxes")
        .json(&json!({"image": {"uri": "debian13"}, "timeout": 600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let mut seen = feed.until_state("Running").await;
    assert_eq!(seen[0].event, "sandbox");
    assert_eq!(seen[0].data["sandbox"]["status"]["state"], "Pending");
    let kinds: Vec<&str> = seen
        .iter()
        .filter(|e| e.event == "sample")
        .map(|e| e.data["kind"].as_str().unwrap())
        .collect();
    for k in [
        "leased",
        "vm_cloned",
        "vm_started",
        "agent_ready",
        "running",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(
        seen.iter()
            .all(|e| e.data["sandboxId"] == id.as_str() || e.data["sandbox"]["id"] == id.as_str()),
        "{seen:?}"
    );
    let running = seen.last().unwrap();
    assert!(
        running.data["vms"][0]["vmid"].as_u64().unwrap() >= 100,
        "{running:?}"
    );

    // A command through execd, failing, for the metrics.
    let ep: Value = get(&format!("/v1/sandboxes/{id}/endpoints/44772"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"].as_str().unwrap();
    let out = http
        .post(format!(
            "http://{}/command",
            ep["endpoint"].as_str().unwrap()
        ))
        .header("X-EXECD-ACCESS-TOKEN", token)
        .json(&json!({"command": "exit 3"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(out.contains("\"evalue\":\"3\""), "{out}");

    let res = post(&format!("/v1/sandboxes/{id}/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    seen.extend(feed.until_state("Paused").await);
    assert!(
        seen.windows(2).all(|w| w[0].id < w[1].id),
        "ids increase: {seen:?}"
    );
    assert_eq!(
        seen[0].id,
        snap.id + 1,
        "nothing before the first delta is lost"
    );

    // Reconnecting from the snapshot's id replays exactly what came since.
    let mut again = Reader::new(
        get("/v1/events")
            .header("Last-Event-ID", snap.id.to_string())
            .send()
            .await
            .unwrap(),
    );
    for want in &seen {
        assert_eq!(&again.next().await, want);
    }
    // An id from before this server's time: a snapshot, with the sandbox as it is now.
    let mut old = Reader::new(
        get("/v1/events")
            .header("Last-Event-ID", "1")
            .send()
            .await
            .unwrap(),
    );
    let now = old.next().await;
    assert_eq!(now.event, "snapshot");
    assert_eq!(now.id, seen.last().unwrap().id);
    assert_eq!(
        now.data["sandboxes"][0]["sandbox"]["status"]["state"], "Paused",
        "{now:?}"
    );

    // Metrics, with a bearer token as Prometheus sends it.
    let text = http
        .get(format!("{base}/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(value("pvesandbox_sandboxes{state=\"Paused\"}"), 1.0);
    assert_eq!(value("pvesandbox_sandboxes{state=\"Running\"}"), 0.0);
    assert_eq!(
        value("pvesandbox_create_seconds_count{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        value("pvesandbox_command_seconds_count{outcome=\"failed\"}"),
        1.0
    );
    let posts =
        value("pvesandbox_pve_requests_total{instance=\"sim\",method=\"POST\",outcome=\"ok\"}");
    assert!(posts >= 3.0, "clone, start, pause at least: {posts}");

    // Removal ends the sandbox's story in the feed.
    let res = http
        .delete(format!("{base}/v1/sandboxes/{id}"))
        .header("OPEN-SANDBOX-API-KEY", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let tail = feed.until_state("Terminated").await;
    assert!(
        tail.iter()
            .any(|e| e.data["sandbox"]["status"]["state"] == "Stopping"),
        "{tail:?}"
    );
    assert!(
        tail.iter().any(|e| e.data["kind"] == "torn_down"),
        "{tail:?}"
    );
    server.stop().await.unwrap();
}
