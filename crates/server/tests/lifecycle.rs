//! The server on the embedded simulator with process guests, through HTTP as OpenSandbox's SDK
//! speaks it: create (202, then provisioned in the background), endpoints with a per-sandbox
//! token, ping readiness, commands as SSE with exit codes in `error.evalue`, files both ways,
//! list filters, pause/resume with the same process alive, renew, the reaper, delete → 404,
//! and nothing left in Proxmox.

#[path = "../../sandbox/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use pve_client::Secret;
use pvesandbox::Fleet;
use pvesandbox_server::{ServeOptions, Server};
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
}

const KEY: &str = "test key, not a secret";

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, self.url(path))
            .header("OPEN-SANDBOX-API-KEY", KEY);
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
}

/// The events of an SSE body (`data: {json}` frames).
fn events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

/// Every key of every object in `v`, with its value, for the "never null" rule.
fn nulls(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Null => out.push(at.to_owned()),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| nulls(v, &format!("{at}.{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| nulls(v, &format!("{at}[{i}]"), out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sandbox_through_the_opensandbox_api() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
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
    // reqwest is built without a default crypto provider; install ring once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        base: format!("http://{}", server.local_addr()),
    };
    use reqwest::Method as M;

    // No key, no service; a bad image is named.
    let res = api
        .http
        .post(api.url("/v1/sandboxes"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["code"].is_string() && body["message"].is_string(),
        "{body}"
    );
    let (status, body) = api
        .call(
            M::POST,
            "/v1/sandboxes",
            Some(json!({"image": {"uri": "nginx:latest"}})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_REQUEST")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("image.uri"),
        "{body}"
    );
    // An egress policy the firewall does not enforce is refused, not dropped in silence.
    let (status, body) = api
        .call(
            M::POST,
            "/v1/sandboxes",
            Some(json!({"image": {"uri": "debian13"}, "networkPolicy": {"defaultAction": "allow", "egress": []}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("networkPolicy"),
        "{body}"
    );

    let (status, created) = api
        .call(
            M::POST,
            "/v1/sandboxes",
            Some(json!({
                "image": {"uri": "debian:13"},
                "timeout": 600,
                "resourceLimits": {"cpu": "1", "memory": "512Mi"},
                "env": {"GREETING": "hello"},
                "metadata": {"team": "a"},
                "entrypoint": ["tail", "-f", "/dev/null"],
                "secureAccess": false,
            })),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let mut found = Vec::new();
    nulls(&created, "", &mut found);
    assert!(found.is_empty(), "nulls in the create answer: {found:?}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("s0."), "{id}");
    assert!(
        created["createdAt"].is_string() && created["expiresAt"].is_string(),
        "{created}"
    );

    let (status, ep) = api
        .call(
            M::GET,
            &format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=false"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{ep}");
    let execd = format!("http://{}", ep["endpoint"].as_str().unwrap());
    let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api
        .call(M::GET, &format!("/v1/sandboxes/{id}/endpoints/18080"), None)
        .await;
    assert_eq!(status, 200);
    let execd_call = |m: M, path: &str| {
        api.http
            .request(m, format!("{execd}{path}"))
            .header("X-EXECD-ACCESS-TOKEN", &token)
    };
    // The SDK's readiness loop: ping until 200 (504 until the guest answers).
    loop {
        let s = execd_call(M::GET, "/ping")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if s == 200 {
            break;
        }
        assert_eq!(s, 504, "not-ready pings answer 504");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrong = api
        .http
        .get(format!("{execd}/ping"))
        .header("X-EXECD-ACCESS-TOKEN", "0000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let (_, info) = api.call(M::GET, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(info["status"]["state"], "Running", "{info}");

    // Commands: env, stderr, the exit code in error.evalue; a timeout is -1.
    let run = |cmd: Value| async move {
        let res = execd_call(M::POST, "/command")
            .json(&cmd)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        events(&res.text().await.unwrap())
    };
    let evs = run(json!({"command": "echo $GREETING; echo oops >&2; exit 3"})).await;
    // Each stream keeps its order; the two are read apart, so they interleave as they come.
    let of = |kind: &str| -> Vec<String> {
        evs.iter()
            .filter(|e| e["type"] == kind)
            .map(|e| e["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(evs[0]["type"], "init", "{evs:?}");
    assert_eq!(
        (of("stdout"), of("stderr")),
        (vec!["hello".to_owned()], vec!["oops".to_owned()])
    );
    assert!(evs.iter().all(|e| e["timestamp"].is_i64()), "{evs:?}");
    let last = evs.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["error"]["evalue"].as_str()),
        (Some("error"), Some("3")),
        "{evs:?}"
    );
    let evs = run(json!({"command": "pwd", "cwd": "/tmp"})).await;
    assert_eq!(evs[1]["text"], "/tmp");
    assert_eq!(evs.last().unwrap()["type"], "execution_complete", "{evs:?}");
    let evs = run(json!({"command": "sleep 30", "timeout": 300})).await;
    assert_eq!(evs.last().unwrap()["error"]["evalue"], "-1", "{evs:?}");

    // Streaming: the first line arrives while the command still waits for a file that is only
    // made after the line was seen (a stream that waited for the end would time out first).
    let res = execd_call(M::POST, "/command")
        .json(&json!({
            "command": "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second",
            "timeout": 60000,
        }))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"first\"") {
        use futures_util::StreamExt;
        let chunk = body
            .next()
            .await
            .expect("the stream ended before the first line")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    run(json!({"command": "touch /tmp/go"})).await;
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let evs = events(&seen);
    let texts: Vec<&str> = evs
        .iter()
        .filter_map(|e| e["text"].as_str())
        .skip(1)
        .collect();
    assert_eq!(texts, ["first", "second"], "{evs:?}");
    assert_eq!(evs.last().unwrap()["type"], "execution_complete", "{evs:?}");

    // Background: init and complete at once; status, logs with a byte cursor, interrupt.
    let ended = |cmd: &str| {
        let path = format!("/command/status/{cmd}");
        async move {
            loop {
                let s: Value = execd_call(M::GET, &path)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if s["running"] == false {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let evs =
        run(json!({"command": "echo bg-out; echo bg-err >&2; echo bg-done", "background": true}))
            .await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["init", "execution_complete"], "{evs:?}");
    let cmd = evs[0]["text"].as_str().unwrap().to_owned();
    let status = ended(&cmd).await;
    assert_eq!(status["exit_code"], 0, "{status}");
    let logs = execd_call(M::GET, &format!("/command/{cmd}/logs"))
        .send()
        .await
        .unwrap();
    let cursor: u64 = logs.headers()["EXECD-COMMANDS-TAIL-CURSOR"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = logs.text().await.unwrap();
    assert_eq!(text, "bg-out\nbg-err\nbg-done\n");
    assert_eq!(cursor, text.len() as u64);
    let more = execd_call(M::GET, &format!("/command/{cmd}/logs?cursor={cursor}"))
        .send()
        .await
        .unwrap();
    assert_eq!(more.text().await.unwrap(), "");
    let evs = run(json!({"command": "sleep 100000", "background": true})).await;
    let cmd = evs[0]["text"].as_str().unwrap().to_owned();
    let stop = execd_call(M::DELETE, &format!("/command?id={cmd}"))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status().as_u16(), 200);
    let status = ended(&cmd).await;
    assert_eq!(status["exit_code"], 143, "SIGTERM: {status}");

    // Files: a multipart upload into a new directory, then ranges back.
    let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let form = reqwest::multipart::Form::new()
        .part(
            "metadata",
            reqwest::multipart::Part::text(r#"{"path": "/root/new/dir/blob.bin", "mode": 600}"#)
                .file_name("metadata")
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            "file",
            reqwest::multipart::Part::bytes(data.clone()).file_name("blob.bin"),
        );
    let up = execd_call(M::POST, "/files/upload")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(up.status().as_u16(), 200, "{}", up.text().await.unwrap());
    let all = execd_call(M::GET, "/files/download?path=/root/new/dir/blob.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(all.bytes().await.unwrap().as_ref(), data.as_slice());
    let part = execd_call(M::GET, "/files/download?path=/root/new/dir/blob.bin")
        .header("Range", "bytes=4-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[4..10]);
    let evs = run(json!({"command": "stat -c %a /root/new/dir/blob.bin"})).await;
    assert_eq!(evs[1]["text"], "600");

    // Listing with filters.
    let (_, l) = api
        .call(
            M::GET,
            "/v1/sandboxes?state=Running&state=Paused&metadata=team%3Da",
            None,
        )
        .await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["pagination"]["totalItems"], 1);
    let (_, l) = api
        .call(M::GET, "/v1/sandboxes?metadata=team%3Db", None)
        .await;
    assert_eq!(l["items"].as_array().unwrap().len(), 0, "{l}");

    // Pause keeps the process; resume lets it go on.
    run(json!({"command": "sleep 100000 >/dev/null 2>&1 & echo $! > /root/sleeper.pid"})).await;
    let alive = "kill -0 $(cat /root/sleeper.pid) && cat /root/sleeper.pid";
    let pid = run(json!({ "command": alive })).await[1]["text"].clone();
    assert!(
        pid.as_str().is_some_and(|p| p.parse::<u32>().is_ok()),
        "{pid}"
    );
    let (status, _) = api
        .call(M::POST, &format!("/v1/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(status, 202);
    let (_, info) = api.call(M::GET, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(info["status"]["state"], "Paused");
    assert_eq!(
        execd_call(M::GET, "/ping")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        504
    );
    let (status, _) = api
        .call(M::POST, &format!("/v1/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(status, 409, "pausing a paused sandbox");
    let (status, _) = api
        .call(M::POST, &format!("/v1/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(status, 202);
    assert_eq!(run(json!({ "command": alive })).await[1]["text"], pid);

    // A foreground command whose client leaves is killed, not left running unreachable.
    let mut res = execd_call(M::POST, "/command")
        .json(&json!({"command": "sleep 1001"}))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("\"init\"") {
        seen.push_str(&String::from_utf8_lossy(
            &res.chunk().await.unwrap().unwrap(),
        ));
    }
    let find = "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = 'sleep 1001 ' ] && echo ${p#/proc/}; done";
    let pid = run(json!({ "command": find })).await[1]["text"]
        .as_str()
        .expect("it runs while its client reads")
        .to_owned();
    drop(res);
    // The guest waits for its end (tail --pid), at most 30 s: 0 when it ended, 124 if not.
    let waited = run(json!({
        "command": format!("timeout 30 tail --pid={pid} -f /dev/null; echo $?")
    }))
    .await;
    assert_eq!(
        waited[1]["text"], "0",
        "still running after its client left: {waited:?}"
    );

    // Renew: later only.
    let (status, r) = api
        .call(
            M::POST,
            &format!("/v1/sandboxes/{id}/renew-expiration"),
            Some(json!({"expiresAt": "2099-01-01T00:00:00+00:00"})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert!(
        r["expiresAt"]
            .as_str()
            .unwrap()
            .starts_with("2099-01-01T00:00:00"),
        "{r}"
    );
    let (status, _) = api
        .call(
            M::POST,
            &format!("/v1/sandboxes/{id}/renew-expiration"),
            Some(json!({"expiresAt": "2098-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 400);

    // Delete: 204, then gone.
    let (status, _) = api
        .call(M::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, 204);
    while api
        .call(M::GET, &format!("/v1/sandboxes/{id}"), None)
        .await
        .0
        != 404
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The reaper: a sandbox whose expiry passes is removed.
    let (_, created) = api
        .call(M::POST, "/v1/sandboxes", Some(json!({"image": {"uri": "debian13"}, "timeout": null, "resourceLimits": {"memory": "512Mi"}})))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        created.get("expiresAt").is_none(),
        "manual cleanup has no expiry: {created}"
    );
    while api
        .call(M::GET, &format!("/v1/sandboxes/{id}"), None)
        .await
        .1["status"]["state"]
        != "Running"
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let (status, r) = api
        .call(
            M::POST,
            &format!("/v1/sandboxes/{id}/renew-expiration"),
            Some(json!({"expiresAt": soon.to_string()})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    while api
        .call(M::GET, &format!("/v1/sandboxes/{id}"), None)
        .await
        .0
        != 404
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server.stop().await.unwrap();
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_files_api_through_execd() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
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
    let api = Api {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        base: format!("http://{}", server.local_addr()),
    };
    use reqwest::Method as M;
    let (status, created) = api
        .call(
            M::POST,
            "/v1/sandboxes",
            Some(json!({"image": {"uri": "debian:13"}, "timeout": 600, "resourceLimits": {"memory": "512Mi"}})),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, ep) = api
        .call(M::GET, &format!("/v1/sandboxes/{id}/endpoints/44772"), None)
        .await;
    assert_eq!(status, 200, "{ep}");
    let execd = format!("http://{}", ep["endpoint"].as_str().unwrap());
    let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"]
        .as_str()
        .unwrap()
        .to_owned();
    let execd_call = |m: M, path: &str| {
        api.http
            .request(m, format!("{execd}{path}"))
            .header("X-EXECD-ACCESS-TOKEN", &token)
    };
    while execd_call(M::GET, "/ping")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
        != 200
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One call: status and body (JSON when it parses, else the text).
    let call = |m: M, path: String, body: Option<Value>| {
        let mut r = execd_call(m, &path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let res = r.send().await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
    };
    // A shell line through POST /command: its stdout lines.
    let sh = |cmd: &str| {
        let req = execd_call(M::POST, "/command").json(&json!({ "command": cmd }));
        async move {
            let evs = events(&req.send().await.unwrap().text().await.unwrap());
            assert_eq!(evs.last().unwrap()["type"], "execution_complete", "{evs:?}");
            evs.iter()
                .filter(|e| e["type"] == "stdout")
                .map(|e| e["text"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let paths = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a list: {v}"))
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect()
    };
    let is_error = |body: &Value, needle: &str| {
        body["code"].is_string() && body["message"].as_str().is_some_and(|m| m.contains(needle))
    };

    // A tree: a file whose directory matches a pattern its name does not, a directory whose
    // name matches `*.txt`, a symlink to a directory, and a name with a space and a newline.
    sh(
        "mkdir -p /root/ft/a/b /root/ft/dir.txt && printf hello > /root/ft/a/one.txt \
        && printf 'x.y xzy x.y' > /root/ft/a/b/two.txt && printf z > /root/ft/top.md \
        && printf i > /root/ft/dir.txt/inner.md && printf n > '/root/ft/a/odd name\nhere.txt' \
        && ln -s a /root/ft/link && chmod 644 /root/ft/a/one.txt",
    )
    .await;

    // Info: a map keyed by the paths as given, the symlink itself (not its target).
    let (status, info) = call(
        M::GET,
        "/files/info?path=/root/ft/a/one.txt&path=/root/ft/link&path=/root/ft/a/".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let one = &info["/root/ft/a/one.txt"];
    assert_eq!(
        (
            one["path"].as_str(),
            one["type"].as_str(),
            one["size"].as_u64(),
            one["mode"].as_u64(),
            one["owner"].as_str(),
            one["group"].as_str()
        ),
        (
            Some("/root/ft/a/one.txt"),
            Some("file"),
            Some(5),
            Some(644),
            Some("root"),
            Some("root")
        ),
        "{info}"
    );
    for t in ["modified_at", "created_at"] {
        let at: jiff::Timestamp = one[t].as_str().unwrap().parse().unwrap();
        assert!(
            jiff::Timestamp::now().duration_since(at).as_secs().abs() < 600,
            "{t}: {at}"
        );
    }
    assert_eq!(info["/root/ft/link"]["type"], "symlink", "{info}");
    assert_eq!(info["/root/ft/a/"]["type"], "directory", "{info}");
    assert_eq!(info["/root/ft/a/"]["path"], "/root/ft/a", "{info}");
    let mut found = Vec::new();
    nulls(&info, "", &mut found);
    assert!(found.is_empty(), "nulls in FileInfo: {found:?}");
    let (status, body) = call(
        M::GET,
        "/files/info?path=/root/ft/a/one.txt&path=/root/ft/nope".into(),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(is_error(&body, "/root/ft/nope"), "{body}");

    // Search: files only, recursive, the pattern against names, in walk order.
    let (status, hits) = call(
        M::GET,
        "/files/search?path=/root/ft&pattern=*.txt".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{hits}");
    assert_eq!(
        paths(&hits),
        [
            "/root/ft/a/b/two.txt",
            "/root/ft/a/odd name\nhere.txt",
            "/root/ft/a/one.txt"
        ],
        "dir.txt is a directory; inner.md's directory matches, its name does not"
    );
    let (_, hits) = call(
        M::GET,
        "/files/search?path=/root/ft&pattern=a*".into(),
        None,
    )
    .await;
    assert_eq!(paths(&hits), Vec::<String>::new(), "no name starts with a");
    let (_, hits) = call(
        M::GET,
        "/files/search?path=/root/ft&pattern=**/t*.%7Btxt,md%7D".into(),
        None,
    )
    .await;
    assert_eq!(paths(&hits), ["/root/ft/a/b/two.txt", "/root/ft/top.md"]);
    let (_, all) = call(M::GET, "/files/search?path=/root/ft".into(), None).await;
    assert_eq!(
        paths(&all).len(),
        6,
        "the default ** finds every non-directory, the symlink too: {all}"
    );
    let (status, body) = call(
        M::GET,
        "/files/search?path=/root/ft&pattern=a/*.txt".into(),
        None,
    )
    .await;
    assert!(status == 400 && is_error(&body, "pattern"), "{body}");
    let (status, _) = call(M::GET, "/files/search?path=/root/nope".into(), None).await;
    assert_eq!(status, 404);

    // Listing: depth 1 is the children only, lexical; depth 2 puts each directory's entries
    // right after it.
    let (status, l) = call(M::GET, "/directories/list?path=/root/ft".into(), None).await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(
        paths(&l),
        [
            "/root/ft/a",
            "/root/ft/dir.txt",
            "/root/ft/link",
            "/root/ft/top.md"
        ]
    );
    let types: Vec<&str> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["directory", "directory", "symlink", "file"]);
    let (_, l) = call(
        M::GET,
        "/directories/list?path=/root/ft&depth=2".into(),
        None,
    )
    .await;
    assert_eq!(
        paths(&l),
        [
            "/root/ft/a",
            "/root/ft/a/b",
            "/root/ft/a/odd name\nhere.txt",
            "/root/ft/a/one.txt",
            "/root/ft/dir.txt",
            "/root/ft/dir.txt/inner.md",
            "/root/ft/link",
            "/root/ft/top.md"
        ]
    );
    let (_, l) = call(
        M::GET,
        "/directories/list?path=/root/ft&depth=0".into(),
        None,
    )
    .await;
    assert_eq!(l, json!([]));
    for (q, want, needle) in [
        ("path=/root/ft/link", 400, "symbolic link"),
        ("path=/root/ft/top.md", 400, "not a directory"),
        ("path=/root/nope", 404, "/root/nope"),
        ("path=/root/ft&depth=-1", 400, "depth"),
        ("depth=1", 400, "path"),
    ] {
        let (status, body) = call(M::GET, format!("/directories/list?{q}"), None).await;
        assert_eq!(status, want, "{q}: {body}");
        assert!(is_error(&body, needle), "{q}: {body}");
    }

    // Directories: created with their parents and the mode asked for.
    let (status, body) = call(
        M::POST,
        "/directories".into(),
        Some(json!({"/root/ft/new/deep": {"mode": 700, "owner": null, "group": null}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sh("stat -c '%F %a' /root/ft/new/deep").await,
        ["directory 700"]
    );
    let (status, body) = call(
        M::POST,
        "/directories".into(),
        Some(json!({"/root/ft/x": {"mode": 789}})),
    )
    .await;
    assert!(
        status == 400 && is_error(&body, "\"/root/ft/x\".mode"),
        "{body}"
    );
    let (status, body) = call(
        M::POST,
        "/directories".into(),
        Some(json!({"/root/ft/top.md": {"mode": 755}})),
    )
    .await;
    assert!(
        status == 400 && is_error(&body, "not a directory"),
        "{body}"
    );

    // Permissions: mode and owner really change.
    let (status, body) = call(
        M::POST,
        "/files/permissions".into(),
        Some(json!({"/root/ft/a/one.txt": {"mode": 600, "owner": "nobody", "group": null}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sh("stat -c '%a %U' /root/ft/a/one.txt").await,
        ["600 nobody"]
    );
    let (_, info) = call(M::GET, "/files/info?path=/root/ft/a/one.txt".into(), None).await;
    assert_eq!(
        (
            &info["/root/ft/a/one.txt"]["mode"],
            &info["/root/ft/a/one.txt"]["owner"]
        ),
        (&json!(600), &json!("nobody")),
        "{info}"
    );
    let (status, body) = call(
        M::POST,
        "/files/permissions".into(),
        Some(json!({"/root/ft/top.md": {"mode": 600}, "/root/ft/nope": {"mode": 600}})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        sh("stat -c %a /root/ft/top.md").await,
        ["644"],
        "a missing path changes nothing"
    );
    let (status, body) = call(
        M::POST,
        "/files/permissions".into(),
        Some(json!({"/root/ft/top.md": {"owner": "no-such-user-here"}})),
    )
    .await;
    assert!(
        status == 400 && is_error(&body, "/root/ft/top.md"),
        "{body}"
    );

    // Move: the file is at its new path (parent created), not at the old.
    let (status, body) = call(
        M::POST,
        "/files/mv".into(),
        Some(json!([{"src": "/root/ft/top.md", "dest": "/root/ft/moved/top.md"}])),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sh("cat /root/ft/moved/top.md; [ -e /root/ft/top.md ] || echo gone").await,
        ["zgone"]
    );
    let (status, _) = call(M::GET, "/files/info?path=/root/ft/top.md".into(), None).await;
    assert_eq!(status, 404);
    let (status, body) = call(
        M::POST,
        "/files/mv".into(),
        Some(json!([{"src": "/root/ft/moved/top.md", "dest": "/root/ft/a/one.txt"}])),
    )
    .await;
    assert!(status == 400 && is_error(&body, "[0].dest"), "{body}");
    let (status, _) = call(
        M::POST,
        "/files/mv".into(),
        Some(json!([{"src": "/root/ft/nope", "dest": "/root/ft/nope2"}])),
    )
    .await;
    assert_eq!(status, 404);

    // Replace: literal (the dot is no wildcard), counted, mode and owner kept.
    let (status, r) = call(
        M::POST,
        "/files/replace?verbose=true".into(),
        Some(json!({
            "/root/ft/a/b/two.txt": {"old": "x.y", "new": "Z"},
            "/root/ft/a/one.txt": {"old": "l", "new": "LL"},
            "/root/ft/moved/top.md": {"old": "absent", "new": "-"},
        })),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        r,
        json!({
            "/root/ft/a/b/two.txt": {"replacedCount": 2},
            "/root/ft/a/one.txt": {"replacedCount": 2},
            "/root/ft/moved/top.md": {"replacedCount": 0},
        })
    );
    assert_eq!(
        sh("cat /root/ft/a/b/two.txt; echo; cat /root/ft/a/one.txt; echo; stat -c '%a %U' /root/ft/a/one.txt").await,
        ["Z xzy Z", "heLLLLo", "600 nobody"]
    );
    let (status, body) = call(
        M::POST,
        "/files/replace".into(),
        Some(json!({"/root/ft/a/b/two.txt": {"old": "Z", "new": "W"}})),
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &json!("")),
        "no body without verbose"
    );
    assert_eq!(sh("cat /root/ft/a/b/two.txt").await, ["W xzy W"]);
    let (status, body) = call(
        M::POST,
        "/files/replace".into(),
        Some(json!({"/root/ft/a/b/two.txt": {"old": "", "new": "W"}})),
    )
    .await;
    assert!(status == 400 && is_error(&body, ".old"), "{body}");
    let (status, _) = call(
        M::POST,
        "/files/replace".into(),
        Some(json!({"/root/ft/nope": {"old": "a", "new": "b"}})),
    )
    .await;
    assert_eq!(status, 404);

    // Delete files: gone; a missing one is fine; a directory is refused.
    let (status, body) = call(
        M::DELETE,
        "/files?path=/root/ft/a/b/two.txt&path=/root/ft/nope".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(M::GET, "/files/info?path=/root/ft/a/b/two.txt".into(), None).await;
    assert_eq!(status, 404);
    let (status, body) = call(M::DELETE, "/files?path=/root/ft/a".into(), None).await;
    assert!(status == 400 && is_error(&body, "directory"), "{body}");
    assert_eq!(sh("[ -f /root/ft/a/one.txt ] && echo kept").await, ["kept"]);

    // Delete directories: recursively, the rest stays.
    let (status, body) = call(
        M::DELETE,
        "/directories?path=/root/ft/a&path=/root/ft/new&path=/root/ft/nope".into(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, l) = call(M::GET, "/directories/list?path=/root/ft".into(), None).await;
    assert_eq!(
        paths(&l),
        ["/root/ft/dir.txt", "/root/ft/link", "/root/ft/moved"]
    );

    // Without the sandbox's token, nothing.
    let res = api
        .http
        .get(format!("{execd}/files/info?path=/root"))
        .header("X-EXECD-ACCESS-TOKEN", "0000")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);

    let (status, _) = api
        .call(M::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, 204);
    while api
        .call(M::GET, &format!("/v1/sandboxes/{id}"), None)
        .await
        .0
        != 404
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}
