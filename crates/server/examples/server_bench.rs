//! `cargo xtask bench server [--realistic FACTOR]`: what a sandbox costs through the
//! OpenSandbox API, side by side with the library on the same fleet.
//!
//! Against the embedded simulator with process guests (root needed) and realistic task
//! durations (clone 2 s, start 8 s, agent up 12 s after start, ...; times FACTOR, default 1).
//! One process holds the simulator, the fleet and the server, so the RSS figures include the
//! simulator's state (the guests are processes of their own and are not counted).
//!
//! - create → Running: `POST /v1/sandboxes` until the `sandbox` event that says Running on
//!   `GET /v1/events` (the feed gives the exact moment, no polling), N in sequence, p50/p95;
//!   against `Run::sample_init` through the library.
//! - a trivial command (`true`) through execd's `POST /command` until its SSE stream ends,
//!   p50/p95; against `SandboxVm::exec`.
//! - 50 creates at once: wall time until the last is Running.
//! - RSS of the process before any sandbox and with 100 live ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use guest_agent::ExecRequest;
use pve_client::Secret;
use pvesandbox::embedded::{SimOptions, start_demo_sim_with};
use pvesandbox::{EvalConfig, Fleet, Settings, TaskOptions};
use pvesandbox_server::{ServeOptions, Server};
use serde_json::{Value, json};
use tokio::sync::Notify;

const KEY: &str = "bench key, not a secret";
/// Sequential creates (and library samples) for the latency percentiles.
const SEQUENTIAL: usize = 10;
/// Trivial commands (and library execs).
const COMMANDS: usize = 50;
/// Creates at once.
const BURST: usize = 50;
/// Live sandboxes for the memory figure.
const LIVE: usize = 100;
const EVAL: &str = r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1}]}"#;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn line(name: &str, v: &mut [Duration]) {
    println!(
        "  {name:<34} p50 {:>9.1} ms  p95 {:>9.1} ms  (n={})",
        pct(v, 0.5),
        pct(v, 0.95),
        v.len()
    );
}

/// VmRSS of this process, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// When each sandbox was first seen Running on the feed.
#[derive(Default)]
struct Running {
    at: Mutex<HashMap<String, Instant>>,
    changed: Notify,
}

impl Running {
    async fn wait(&self, id: &str) -> Instant {
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self.at.lock().unwrap().get(id) {
                return *t;
            }
            notified.await;
        }
    }
}

/// Reads `GET /v1/events` and records Running (and failures, which end the bench).
async fn follow(res: reqwest::Response, running: Arc<Running>) {
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let now = Instant::now();
            let mut event = "";
            let mut data = String::new();
            for l in frame.lines() {
                if let Some(v) = l.strip_prefix("event:") {
                    event = if v.trim() == "sandbox" { "sandbox" } else { "" };
                } else if let Some(v) = l.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event != "sandbox" {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let sb = &v["sandbox"];
            match sb["status"]["state"].as_str() {
                Some("Running") => {
                    let id = sb["id"].as_str().unwrap_or_default().to_owned();
                    running.at.lock().unwrap().entry(id).or_insert(now);
                    running.changed.notify_waiters();
                }
                Some("Failed") => {
                    eprintln!("a sandbox failed: {sb}");
                    std::process::exit(1);
                }
                _ => {}
            }
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    running: Arc<Running>,
}

impl Api {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .header("OPEN-SANDBOX-API-KEY", KEY)
    }

    async fn create(&self) -> Result<String, Box<dyn std::error::Error>> {
        let res = self
            .req(reqwest::Method::POST, "/v1/sandboxes")
            .json(&json!({
                "image": {"uri": "debian13"},
                "timeout": 3600,
                "resourceLimits": {"cpu": "1", "memory": "512Mi"},
                "entrypoint": ["tail", "-f", "/dev/null"],
            }))
            .send()
            .await?;
        if res.status().as_u16() != 202 {
            return Err(format!("create: {} {}", res.status(), res.text().await?).into());
        }
        let v: Value = res.json().await?;
        Ok(v["id"].as_str().ok_or("create: no id")?.to_owned())
    }

    /// Create → Running.
    async fn create_running(&self) -> Result<(String, Duration), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let id = self.create().await?;
        let at = self.running.wait(&id).await;
        Ok((id, at - t))
    }

    async fn delete(&self, id: &str) -> Result<(), Box<dyn std::error::Error>> {
        let res = self
            .req(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"))
            .send()
            .await?;
        if res.status().as_u16() != 204 {
            return Err(format!("delete {id}: {}", res.status()).into());
        }
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Err(why) = pve_sim::guest::ProcessGuestFactory::probe() {
        eprintln!("server_bench needs process guests (Linux namespaces, root): {why}");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let factor: f64 = match args.as_slice() {
        [] => 1.0,
        [flag, f] if flag == "--realistic" => f
            .parse()
            .map_err(|_| format!("FACTOR {f:?}: not a number"))?,
        other => return Err(format!("unknown arguments {other:?}: use --realistic FACTOR").into()),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = start_demo_sim_with(SimOptions {
        port: 0,
        realistic: Some(factor),
        process_guests: true,
        // 100 one-core sandboxes at once, and the 10 the library side uses.
        node_cpus: Some(128),
    })
    .await?;
    let mut settings = sim.settings(Settings::default())?;
    settings.instances[0].max_samples = Some((LIVE + 10) as u32);
    let fleet = Fleet::start(settings).await?;
    let server = Server::start(
        fleet.clone(),
        ServeOptions {
            listen: "127.0.0.1:0".parse()?,
            api_keys: vec![Secret::new(KEY)],
            ..Default::default()
        },
    )
    .await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let running = Arc::new(Running::default());
    let api = Api {
        http,
        base: format!("http://{}", server.local_addr()),
        running: running.clone(),
    };
    let feed = api.req(reqwest::Method::GET, "/v1/events").send().await?;
    tokio::spawn(follow(feed, running));
    println!("realistic task durations × {factor}; one process: simulator, fleet, server");
    let rss_base = rss_mib();

    // The library on the same fleet: a run per sample, as the server makes one per sandbox.
    let eval = EvalConfig::from_json(EVAL)?;
    let (mut lib_init, mut lib_exec) = (Vec::new(), Vec::new());
    // Warm-up: the template is baked once, by whichever side comes first.
    let warm = fleet.run(eval.clone(), TaskOptions::default()).await?;
    warm.sample_init().await?.cleanup(false).await?;
    for i in 0..SEQUENTIAL {
        let run = fleet.run(eval.clone(), TaskOptions::default()).await?;
        let t = Instant::now();
        let sample = run.sample_init().await?;
        lib_init.push(t.elapsed());
        if i == 0 {
            let vm = sample.get("default")?;
            for _ in 0..COMMANDS {
                let t = Instant::now();
                vm.exec(ExecRequest::new(["true"])).await?;
                lib_exec.push(t.elapsed());
            }
        }
        sample.cleanup(false).await?;
    }

    // The server.
    let (mut create, mut command) = (Vec::new(), Vec::new());
    for i in 0..SEQUENTIAL {
        let (id, took) = api.create_running().await?;
        create.push(took);
        if i == 0 {
            let ep: Value = api
                .req(
                    reqwest::Method::GET,
                    &format!("/v1/sandboxes/{id}/endpoints/44772"),
                )
                .send()
                .await?
                .json()
                .await?;
            let url = format!(
                "http://{}/command",
                ep["endpoint"].as_str().ok_or("no endpoint")?
            );
            let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"]
                .as_str()
                .ok_or("no execd token")?
                .to_owned();
            for _ in 0..COMMANDS {
                let t = Instant::now();
                let body = api
                    .http
                    .post(&url)
                    .header("X-EXECD-ACCESS-TOKEN", &token)
                    .json(&json!({"command": "true"}))
                    .send()
                    .await?
                    .text()
                    .await?;
                command.push(t.elapsed());
                if !body.contains("execution_complete") {
                    return Err(format!("command did not complete: {body}").into());
                }
            }
        }
        api.delete(&id).await?;
    }
    println!("{SEQUENTIAL} sandboxes one after another (1 VM, 512 MiB, 1 core):");
    line("server: create → Running", &mut create);
    line("library: sample_init", &mut lib_init);
    println!("{COMMANDS} trivial commands (`true`) in one sandbox:");
    line("server: POST /command (SSE to end)", &mut command);
    line("library: SandboxVm::exec", &mut lib_exec);

    let t = Instant::now();
    let burst = futures_util::future::join_all((0..BURST).map(|_| api.create_running())).await;
    let wall = t.elapsed();
    let mut ids = Vec::new();
    let mut each = Vec::new();
    for r in burst {
        let (id, took) = r?;
        ids.push(id);
        each.push(took);
    }
    println!("{BURST} creates at once:");
    println!(
        "  wall until the last is Running     {:>9.1} ms",
        wall.as_secs_f64() * 1000.0
    );
    line("each create → Running", &mut each);

    let more =
        futures_util::future::join_all((ids.len()..LIVE).map(|_| api.create_running())).await;
    for r in more {
        ids.push(r?.0);
    }
    let rss_live = rss_mib();
    println!("memory (VmRSS of the process):");
    println!("  no sandbox                         {rss_base:>9.1} MiB");
    println!(
        "  {LIVE} live sandboxes                 {rss_live:>9.1} MiB  ({:.2} MiB each)",
        (rss_live - rss_base) / LIVE as f64
    );

    for r in futures_util::future::join_all(ids.iter().map(|id| api.delete(id))).await {
        r?;
    }
    // Deletes are carried out in the background; the fleet's registry says when they are done.
    let mut events = fleet.subscribe();
    while !fleet.samples().is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    }
    server.stop().await?;
    warm.task_cleanup().await?;
    println!("left behind: {}", sim.leftovers());
    Ok(())
}
