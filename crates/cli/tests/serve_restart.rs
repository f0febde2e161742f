//! `kill -9` of `pvesandbox serve` while it creates a sandbox, then a new server on the same
//! Proxmox (the simulator, which lives in this test process and so survives the kill): the
//! sandbox it had finished is taken over as it was (same id, metadata, expiry, env, endpoint
//! token, files and processes), the one it was making ends removed, or Running if it got that
//! far, and nothing is left in Proxmox once the new server deletes what it holds.
//!
//! The kill points are REST requests the simulator answered for the server (waited on, not
//! slept for), every few across a whole create; each is followed by a restart that must
//! adopt the kept sandbox again (an adopted sandbox is adopted as well as a made one).

#[path = "../../sandbox/tests/common/mod.rs"]
mod common;

use std::process::Stdio;

use common::*;
use pvesandbox::{Run, TaskOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const KEY: &str = "restart key, not a secret";

/// Every how many requests of a create a server is killed (each kill costs a restart).
const KILL_STEP: usize = 3;

/// A `pvesandbox serve` child and how to reach it.
struct Serve {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Serve {
    async fn start(env: &[(String, String)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pvesandbox"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .env("OPEN_SANDBOX_API_KEY", KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("serve ended before it listened");
            if let Some(rest) = line.strip_prefix("pvesandbox serve: OpenSandbox API on ") {
                break rest.trim_end_matches("/v1").to_owned();
            }
        };
        // Keep reading its stdout, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let _ = rustls::crypto::ring::default_provider().install_default();
        Serve {
            child,
            base,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.base))
            .header("OPEN-SANDBOX-API-KEY", KEY)
    }

    async fn json(&self, m: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(m, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Opens `GET /v1/events`.
    async fn feed(&self) -> Feed {
        let res = self
            .req(reqwest::Method::GET, "/v1/events")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        Feed {
            res,
            buf: String::new(),
        }
    }

    /// The sandbox's execd: its URL and token.
    async fn execd(&self, id: &str) -> (String, String) {
        let (status, ep) = self
            .json(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/endpoints/44772"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{ep}");
        (
            format!("http://{}", ep["endpoint"].as_str().unwrap()),
            ep["headers"]["X-EXECD-ACCESS-TOKEN"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }

    /// Runs a shell line through execd's `POST /command`: its stdout.
    async fn sh(&self, execd: &(String, String), line: &str) -> String {
        let res = self
            .http
            .post(format!("{}/command", execd.0))
            .header("X-EXECD-ACCESS-TOKEN", &execd.1)
            .json(&json!({ "command": line }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{line}");
        let body = res.text().await.unwrap();
        let mut out = String::new();
        for data in body.lines().filter_map(|l| l.strip_prefix("data:")) {
            let ev: Value = serde_json::from_str(data.trim()).unwrap();
            assert_ne!(ev["type"], "error", "{line}: {body}");
            if ev["type"] == "stdout" {
                out.push_str(ev["text"].as_str().unwrap());
                out.push('\n');
            }
        }
        out
    }
}

impl Serve {
    /// Starts a shell line as a background command: its id.
    async fn background(&self, execd: &(String, String), line: &str) -> String {
        let body = self
            .http
            .post(format!("{}/command", execd.0))
            .header("X-EXECD-ACCESS-TOKEN", &execd.1)
            .json(&json!({ "command": line, "background": true }))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap())
            .find(|ev| ev["type"] == "init")
            .and_then(|ev| ev["text"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no init event: {body}"))
    }

    /// A background command's status and its log from the start.
    async fn command(&self, execd: &(String, String), cmd: &str) -> (Value, String) {
        let get = |path: String| {
            self.http
                .get(format!("{}{path}", execd.0))
                .header("X-EXECD-ACCESS-TOKEN", &execd.1)
                .send()
        };
        let res = get(format!("/command/status/{cmd}")).await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "status of {cmd}");
        let status = res.json().await.unwrap();
        let res = get(format!("/command/{cmd}/logs")).await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "logs of {cmd}");
        (status, res.text().await.unwrap())
    }
}

/// `GET /v1/events`, read as it comes.
struct Feed {
    res: reqwest::Response,
    buf: String,
}

impl Feed {
    /// Reads until a `sandbox` event shows `id` in `state`.
    async fn until(&mut self, id: &str, state: &str) {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let data: String = frame
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                let sb = &v["sandbox"];
                if sb["id"] == id {
                    assert_ne!(sb["status"]["state"], "Failed", "{sb}");
                    if sb["status"]["state"] == state {
                        return;
                    }
                }
            }
            let chunk = self.res.chunk().await.unwrap().expect("the feed ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

fn create_body() -> Value {
    json!({
        "image": {"uri": "debian13"},
        "timeout": 3600,
        "resourceLimits": {"cpu": "1", "memory": "512Mi"},
        "env": {"GREETING": "hello from before"},
        "metadata": {"team": "a"},
        "entrypoint": ["tail", "-f", "/dev/null"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_create_then_restart_adopts_the_finished_and_removes_the_half_made() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    // The `PROXMOX_*` form, without max_samples: serve allows many sandboxes anyway.
    let env = child_env(&sim, &settings);
    // The template exists before the server starts, as on a cluster in use.
    Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
        .await
        .unwrap();
    use reqwest::Method as M;

    let mut server = Serve::start(&env).await;
    let mut feed = server.feed().await;
    let before = sim.sim().requests_seen();
    let (status, made) = server
        .json(M::POST, "/v1/sandboxes", Some(create_body()))
        .await;
    assert_eq!(status, 202, "{made}");
    let kept = made["id"].as_str().unwrap().to_owned();
    feed.until(&kept, "Running").await;
    let whole_create = sim.sim().requests_seen() - before;
    let execd = server.execd(&kept).await;
    // A file and a process of the sandbox's, which every next server must find as they are.
    let pid = server
        .sh(
            &execd,
            "echo \"$GREETING\" > /root/greeting; nohup sleep 1000 >/dev/null 2>&1 & echo $!",
        )
        .await
        .trim()
        .to_owned();
    assert!(pid.parse::<u32>().is_ok(), "{pid:?}");
    // A background command, whose status and log every next server must serve.
    let cmd = server
        .background(&execd, "echo \"began $GREETING\"; exec sleep 1000")
        .await;
    let (cmd_status, _) = server.command(&execd, &cmd).await;
    // Metadata patched after the create is kept too.
    let (status, info) = server
        .json(
            M::PATCH,
            &format!("/v1/sandboxes/{kept}/metadata"),
            Some(json!({"stage": "patched"})),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["metadata"], json!({"team": "a", "stage": "patched"}));

    // Kill points across a whole create, from its first request to its last.
    let mut points: Vec<u64> = (1..whole_create).step_by(KILL_STEP).collect();
    // The last: its readiness is in Proxmox, the server died before it said so.
    points.push(whole_create);
    println!("a create takes {whole_create} requests; killing after each of {points:?}");
    for n in points {
        let base = sim.sim().requests_seen();
        let (status, made) = server
            .json(M::POST, "/v1/sandboxes", Some(create_body()))
            .await;
        assert_eq!(status, 202, "{made}");
        let half = made["id"].as_str().unwrap().to_owned();
        sim.sim().wait_for_requests(base + n).await;
        server.child.start_kill().unwrap();
        server.child.wait().await.unwrap();
        let existed = vms_of(&sim, &half).len();

        server = Serve::start(&env).await;
        let (status, again) = server
            .json(M::GET, &format!("/v1/sandboxes/{kept}"), None)
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["status"]["state"], "Running", "{again}");
        assert_eq!(again["metadata"], info["metadata"]);
        assert_eq!(again["image"], info["image"]);
        assert_eq!(again["entrypoint"], info["entrypoint"]);
        // Proxmox keeps the expiry to the second (RFC 3339: the first 19 characters).
        let secs = |v: &Value, k: &str| v[k].as_str().unwrap()[..19].to_owned();
        assert_eq!(secs(&again, "expiresAt"), secs(&info, "expiresAt"));
        assert_eq!(again["createdAt"], info["createdAt"]);
        // The token handed out before the restarts still opens execd (it derives from the
        // key).
        let here = server.execd(&kept).await;
        assert_eq!(here.1, execd.1);
        let out = server
            .sh(
                &here,
                &format!(
                    "cat /root/greeting; echo \"$GREETING\"; tr '\\0' ' ' < /proc/{pid}/cmdline"
                ),
            )
            .await;
        assert_eq!(
            out, "hello from before\nhello from before\nsleep 1000 \n",
            "the same files, env and processes after the restart"
        );
        let (status, log) = server.command(&here, &cmd).await;
        assert_eq!(status["running"], true, "{status}");
        assert_eq!(status["started_at"], cmd_status["started_at"]);
        assert_eq!(log, "began hello from before\n");

        let (status, body) = server
            .json(M::GET, &format!("/v1/sandboxes/{half}"), None)
            .await;
        // Proxmox holds the kept sandbox (one VM, one zone), and the other only if it runs.
        let left = sim.leftovers();
        match status {
            404 => {
                assert!(
                    vms_of(&sim, &half).is_empty(),
                    "{half}: removed from the API only"
                );
                assert_eq!((left.vms.len(), left.zones.len()), (1, 1), "{left:?}");
            }
            200 => {
                assert_eq!(body["status"]["state"], "Running", "{body}");
                assert_eq!((left.vms.len(), left.zones.len()), (2, 2), "{left:?}");
                let mut feed = server.feed().await;
                let (status, _) = server
                    .json(M::DELETE, &format!("/v1/sandboxes/{half}"), None)
                    .await;
                assert_eq!(status, 204);
                feed.until(&half, "Terminated").await;
            }
            other => panic!("{half}: {other} {body}"),
        }
        println!(
            "killed after request {n} ({existed} VM of {half}): after the restart it answered {status}"
        );
    }
    assert_eq!(vms_of(&sim, &kept).len(), 1);

    // Paused when its server dies: adopted paused, and resumed with the same processes.
    let mut feed = server.feed().await;
    let (status, body) = server
        .json(M::POST, &format!("/v1/sandboxes/{kept}/pause"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    feed.until(&kept, "Paused").await;
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    server = Serve::start(&env).await;
    let (_, again) = server
        .json(M::GET, &format!("/v1/sandboxes/{kept}"), None)
        .await;
    assert_eq!(again["status"]["state"], "Paused", "{again}");
    let mut feed = server.feed().await;
    let (status, body) = server
        .json(M::POST, &format!("/v1/sandboxes/{kept}/resume"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    feed.until(&kept, "Running").await;
    let here = server.execd(&kept).await;
    let out = server
        .sh(&here, &format!("tr '\\0' ' ' < /proc/{pid}/cmdline"))
        .await;
    assert_eq!(
        out, "sleep 1000 \n",
        "the same process after pause, restart, resume"
    );

    // The last server removes what it holds, and then nothing is left.
    let mut feed = server.feed().await;
    let (status, _) = server
        .json(M::DELETE, &format!("/v1/sandboxes/{kept}"), None)
        .await;
    assert_eq!(status, 204);
    feed.until(&kept, "Terminated").await;
    let left = sim.leftovers();
    assert!(left.is_empty(), "{left:?}");
}

/// The simulator's VMs of sandbox `id` (named `<vm>.<id>`).
fn vms_of(sim: &pvesandbox::embedded::DemoSim, id: &str) -> Vec<u32> {
    let tail = format!(".{id}");
    sim.sim()
        .vmids()
        .into_iter()
        .filter(|v| {
            sim.sim()
                .vm_config(*v)
                .is_some_and(|c| c.get("name").is_some_and(|n| n.ends_with(&tail)))
        })
        .collect()
}
