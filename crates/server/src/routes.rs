//! Every route the server answers, one row each in [`router`]: OpenSandbox's lifecycle API
//! under `/v1` (API key), and each sandbox's execd (`proxy/44772`) and egress
//! (`proxy/18080`) endpoints (the sandbox's token, or an API key).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use guest_agent::ExecRequest;

use crate::auth::{Auth, TOKEN_HEADER};
use crate::commands;
use crate::error::ApiError;
use crate::files;
use crate::sandboxes::{Entry, Sandboxes, sandbox_vm};
use crate::sessions;
use crate::wire;

/// What every handler shares.
pub struct App {
    pub(crate) sandboxes: Arc<Sandboxes>,
    pub(crate) auth: Auth,
    /// `host:port` clients reach the server at, for endpoint answers.
    pub(crate) public: String,
    /// Whether sandboxes reach the internet (the settings' `run.egress`).
    pub(crate) egress: bool,
    /// Background commands, for status, logs and interrupt.
    pub(crate) background: crate::commands::Background,
    /// Turns true when the server stops: endless streams end then, or graceful shutdown would
    /// wait for them forever.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

type Shared = State<Arc<App>>;

/// The largest upload (all parts of one request). It is held in memory until the guest agent
/// has it, so this bounds what one request can make the server hold; axum's default (2 MB)
/// refused the SDK's 5 MiB test file.
const UPLOAD_LIMIT: usize = 256 * 1024 * 1024;

/// The execd port OpenSandbox's SDK asks an endpoint for.
pub const EXECD_PORT: u16 = 44772;
/// The egress sidecar's port.
pub const EGRESS_PORT: u16 = 18080;

/// Which API a route belongs to, and so where its path is rooted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `sandbox-lifecycle.yml`, under `/v1`.
    Lifecycle,
    /// `execd-api.yaml`, under a sandbox's execd endpoint.
    Execd,
    /// `egress-api.yaml`, under a sandbox's egress endpoint.
    Egress,
    /// Not in OpenSandbox's specs: ours, or what its SDK sends beyond them; the path is whole.
    Ours,
}

impl Api {
    /// Where the spec's paths are rooted on this server.
    pub fn root(self) -> String {
        match self {
            Api::Lifecycle => "/v1".to_owned(),
            Api::Execd => format!("/v1/sandboxes/{{sandboxId}}/proxy/{EXECD_PORT}"),
            Api::Egress => format!("/v1/sandboxes/{{sandboxId}}/proxy/{EGRESS_PORT}"),
            Api::Ours => String::new(),
        }
    }
}

/// One served route: its API, method and path as that API's spec writes it.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The API (and so the spec) it belongs to.
    pub api: Api,
    /// `GET`, `POST`, `DELETE`, ...
    pub method: &'static str,
    /// The path within the API's root, with the spec's parameter names.
    pub path: &'static str,
}

impl Route {
    /// The path this server serves it at.
    pub fn full_path(&self) -> String {
        format!("{}{}", self.api.root(), self.path)
    }
}

/// One row per route, making both [`ROUTES`] (what the contract test checks against the
/// specs) and the router, so the two cannot disagree.
macro_rules! routes {
    ($( $api:ident $method:ident $path:literal => $handler:expr $(, limit $limit:expr)? ;)*) => {
        /// Every route served, in the order of [`router`]'s table.
        pub const ROUTES: &[Route] = &[$(Route {
            api: Api::$api,
            method: const_upper(stringify!($method)),
            path: $path,
        }),*];

        fn table(router: Router<Arc<App>>) -> Router<Arc<App>> {
            router $(.route(
                &Route { api: Api::$api, method: "", path: $path }.full_path(),
                axum::routing::$method($handler) $(.layer(DefaultBodyLimit::max($limit)))?,
            ))*
        }
    };
}

/// `get` → `GET`, for the three methods used (a `const fn` cannot build strings).
const fn const_upper(m: &'static str) -> &'static str {
    match m.as_bytes() {
        b"get" => "GET",
        b"post" => "POST",
        b"delete" => "DELETE",
        b"put" => "PUT",
        b"patch" => "PATCH",
        _ => panic!("a method routes! does not know"),
    }
}

routes! {
    Lifecycle post "/sandboxes" => create;
    Lifecycle get "/sandboxes" => list;
    Lifecycle get "/sandboxes/{sandboxId}" => get_one;
    Lifecycle delete "/sandboxes/{sandboxId}" => delete;
    Lifecycle post "/sandboxes/{sandboxId}/pause" => pause;
    Lifecycle post "/sandboxes/{sandboxId}/resume" => resume;
    Lifecycle post "/sandboxes/{sandboxId}/renew-expiration" => renew;
    Lifecycle get "/sandboxes/{sandboxId}/endpoints/{port}" => endpoint;
    Lifecycle patch "/sandboxes/{sandboxId}/metadata" => patch_metadata;
    // The SDK reports create timings here, fire-and-forget (not in the spec).
    Ours post "/v1/metrics/events" => || async { StatusCode::NO_CONTENT };
    Execd get "/ping" => ping;
    Execd post "/command" => command;
    Execd delete "/command" => command_interrupt;
    Execd get "/command/status/{id}" => command_status;
    Execd get "/command/{id}/logs" => command_logs;
    Execd get "/metrics" => vm_metrics;
    Execd get "/metrics/watch" => vm_metrics_watch;
    Execd post "/session" => session_create;
    Execd post "/session/{sessionId}/run" => session_run;
    Execd delete "/session/{sessionId}" => session_delete;
    Execd post "/files/upload" => upload, limit UPLOAD_LIMIT;
    Execd get "/files/download" => download;
    Execd get "/files/info" => files::info;
    Execd get "/files/search" => files::search;
    Execd post "/files/permissions" => files::permissions;
    Execd post "/files/mv" => files::move_files;
    Execd post "/files/replace" => files::replace;
    Execd delete "/files" => files::remove_files;
    Execd get "/directories/list" => files::list;
    Execd post "/directories" => files::make_dirs;
    Execd delete "/directories" => files::remove_dirs;
    Egress get "/policy" => policy;
    Ours get "/v1/events" => events;
    Ours get "/metrics" => metrics;
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    table(Router::new())
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                code: "NOT_FOUND",
                message: "no such route".into(),
            }
        })
        .with_state(app)
}

impl App {
    fn key(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.auth.key_ok(headers) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "missing or wrong OPEN-SANDBOX-API-KEY",
            ))
        }
    }

    /// The sandbox `id`, if the request may use its endpoints.
    pub(crate) fn endpoint_of(
        &self,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<Arc<Entry>, ApiError> {
        if !self.auth.token_ok(id, headers) {
            return Err(ApiError::unauthorized(&format!(
                "missing or wrong {TOKEN_HEADER}: use the headers of GET /v1/sandboxes/{id}/endpoints/{EXECD_PORT}"
            )));
        }
        self.sandboxes.get(id)
    }

    /// Background command `cmd` of `entry`: one this process started, or one an earlier
    /// server did (its directory in the guest; kept from then on).
    async fn background_command(
        &self,
        entry: &Entry,
        cmd: &str,
    ) -> Result<Arc<commands::Started>, ApiError> {
        if let Some(c) = self.background.get(&entry.id, cmd) {
            return Ok(c);
        }
        let sample = entry.sample().ok_or_else(|| no_command(cmd))?;
        let found = commands::Started::find(sandbox_vm(&sample)?.agent(), cmd)
            .await?
            .ok_or_else(|| no_command(cmd))?;
        let found = Arc::new(found);
        self.background.keep(&entry.id, found.clone());
        Ok(found)
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e))
}

async fn create(State(app): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    app.key(&headers)?;
    let req: wire::CreateSandboxRequest = json_body(&body)?;
    let entry = app.sandboxes.create(req).await?;
    let location = format!("/v1/sandboxes/{}", entry.id);
    // The spec's CreateSandboxResponse has no `image` (it marks undeclared fields out).
    let mut created = entry.wire();
    created.image = None;
    let mut res = (StatusCode::ACCEPTED, Json(created)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// The page size when none is asked for, and the most one page holds (the spec's).
const PAGE_SIZE: (usize, usize) = (20, 200);

async fn list(
    State(app): Shared,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<wire::ListSandboxesResponse>, ApiError> {
    app.key(&headers)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid("query", e))?;
    let mut states = Vec::new();
    let mut wanted: Vec<(String, String)> = Vec::new();
    let (mut page, mut size) = (1usize, PAGE_SIZE.0);
    for (k, v) in pairs {
        match k.as_str() {
            "state" => states.push(v),
            // One value: `k=v&k2=v2`, URL-encoded once more (ANDed).
            "metadata" => wanted.extend(
                serde_urlencoded::from_str::<Vec<(String, String)>>(&v)
                    .map_err(|e| ApiError::invalid("metadata", e))?,
            ),
            "page" => {
                page = v
                    .parse()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| ApiError::invalid("page", "an integer ≥ 1"))?
            }
            "pageSize" => {
                size = v
                    .parse()
                    .ok()
                    .filter(|s| (1..=PAGE_SIZE.1).contains(s))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "pageSize",
                            format!("an integer from 1 to {}", PAGE_SIZE.1),
                        )
                    })?
            }
            _ => {}
        }
    }
    let all: Vec<wire::Sandbox> = app
        .sandboxes
        .all()
        .iter()
        .map(|e| e.wire())
        .filter(|s| states.is_empty() || states.iter().any(|w| w == s.status.state))
        .filter(|s| wanted.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
        .collect();
    let total = all.len();
    let pages = total.div_ceil(size);
    let items = all.into_iter().skip((page - 1) * size).take(size).collect();
    Ok(Json(wire::ListSandboxesResponse {
        items,
        pagination: wire::Pagination {
            page,
            page_size: size,
            total_items: total,
            total_pages: pages,
            has_next_page: page < pages,
        },
    }))
}

async fn get_one(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<wire::Sandbox>, ApiError> {
    app.key(&headers)?;
    Ok(Json(app.sandboxes.get(&id)?.wire()))
}

async fn delete(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.key(&headers)?;
    app.sandboxes.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause and resume finish before they answer (a VM pauses in about a second), so the next
/// call sees `Paused` or `Running`, never a half-done state.
async fn pause(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    power(&app, &headers, &id, true).await
}

async fn resume(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    power(&app, &headers, &id, false).await
}

async fn power(
    app: &App,
    headers: &HeaderMap,
    id: &str,
    pause: bool,
) -> Result<StatusCode, ApiError> {
    app.key(headers)?;
    let entry = app.sandboxes.get(id)?;
    let Some(sample) = entry.sample() else {
        let only = if pause {
            "only a running one pauses"
        } else {
            "only a paused one resumes"
        };
        return Err(ApiError::conflict(format!(
            "sandbox {id} is {}; {only}",
            entry.state()
        )));
    };
    if pause {
        sample.pause().await?;
    } else {
        sample.resume().await?;
    }
    Ok(StatusCode::ACCEPTED)
}

/// `PATCH sandboxes/{id}/metadata`: a JSON Merge Patch of the metadata; the whole sandbox
/// comes back.
async fn patch_metadata(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::Sandbox>, ApiError> {
    app.key(&headers)?;
    let patch: BTreeMap<String, Option<String>> = json_body(&body)?;
    Ok(Json(app.sandboxes.patch_metadata(&id, patch).await?.wire()))
}

async fn renew(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<wire::Expiration>, ApiError> {
    app.key(&headers)?;
    let req: wire::Expiration = json_body(&body)?;
    let at: jiff::Timestamp = req
        .expires_at
        .parse()
        .map_err(|e| ApiError::invalid("expiresAt", format!("not RFC 3339: {e}")))?;
    app.sandboxes.renew(&id, SystemTime::from(at)).await?;
    Ok(Json(wire::Expiration {
        expires_at: crate::sandboxes::rfc3339(SystemTime::from(at)),
    }))
}

async fn endpoint(
    State(app): Shared,
    headers: HeaderMap,
    Path((id, port)): Path<(String, String)>,
) -> Result<Json<wire::Endpoint>, ApiError> {
    app.key(&headers)?;
    app.sandboxes.get(&id)?;
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::invalid("port", "1 to 65535"))?;
    if port != EXECD_PORT && port != EGRESS_PORT {
        return Err(ApiError::invalid(
            "port",
            format!(
                "{port}: only {EXECD_PORT} (execd) and {EGRESS_PORT} (egress) are served; a VM's own ports are not reachable from here"
            ),
        ));
    }
    Ok(Json(wire::Endpoint {
        endpoint: format!("{}/v1/sandboxes/{id}/proxy/{port}", app.public),
        headers: BTreeMap::from([(TOKEN_HEADER.to_owned(), app.auth.token(&id))]),
    }))
}

/// 200 once the sandbox's agent answers; 504 before (the SDK polls every 200 ms and treats
/// 503 as a reason for backoff and warnings, 504 as "not yet").
async fn ping(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let not_ready = |why: String| ApiError {
        status: StatusCode::GATEWAY_TIMEOUT,
        code: "SANDBOX_NOT_READY",
        message: why,
    };
    let Some(sample) = entry.sample() else {
        return Err(not_ready(format!("sandbox {id} is {}", entry.state())));
    };
    if entry.state() != "Running" {
        return Err(not_ready(format!("sandbox {id} is {}", entry.state())));
    }
    let vm = sandbox_vm(&sample)?;
    vm.agent()
        .ping()
        .await
        .map_err(|e| not_ready(e.to_string()))?;
    Ok(StatusCode::OK)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn event(kind: &'static str) -> wire::StreamEvent {
    wire::StreamEvent {
        kind,
        timestamp: now_ms(),
        text: None,
        execution_time: None,
        error: None,
    }
}

fn sse(ev: &wire::StreamEvent) -> Event {
    Event::default().data(serde_json::to_string(ev).unwrap_or_default())
}

/// One command, as execd's SSE: `init` with the execution id, one `stdout`/`stderr` event
/// per line as the command prints it, then `execution_complete`, or `error` with the exit code
/// in `evalue` (`-1` when the timeout killed it), and the stream ends. A background command
/// gets `init` and `execution_complete` at once; its output is in its logs.
async fn command(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let req: wire::RunCommand = json_body(&body)?;
    let argv = match (req.argv, req.command) {
        (Some(a), _) if !a.is_empty() => a,
        (_, Some(c)) => vec!["sh".to_owned(), "-c".to_owned(), c],
        _ => {
            return Err(ApiError::invalid(
                "command",
                "give command (a shell line) or argv",
            ));
        }
    };
    let sample = entry.running()?;
    let vm = sandbox_vm(&sample)?;
    let spec = commands::Spec {
        argv,
        env: entry
            .env
            .iter()
            .chain(&req.envs)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: req.cwd,
        combined: req.background,
    };
    let started = Arc::new(commands::start(vm.agent(), spec).await?);
    let (tx, rx) = tokio::sync::mpsc::channel::<wire::StreamEvent>(commands::QUEUE);
    let mut init = event("init");
    init.text = Some(started.id.clone());
    let _ = tx.try_send(init);
    if req.background {
        app.background.keep(&id, started);
        let mut done = event("execution_complete");
        done.execution_time = Some(0);
        let _ = tx.try_send(done);
    } else {
        tokio::spawn(relay(app, started, req.timeout, tx));
    }
    Ok(stream_of(rx))
}

/// The SSE response of a command's events.
fn stream_of(
    rx: tokio::sync::mpsc::Receiver<wire::StreamEvent>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok(sse(&ev)), rx))
    }))
}

/// Follows a foreground command (or session run) to its end, `timeout_ms` at most, passing
/// its lines and its end to `tx` as execd's events, then removes its files. A command whose
/// client went away before its end is killed (its process group): nothing could read its
/// output or stop it any more.
async fn relay(
    app: Arc<App>,
    started: Arc<commands::Started>,
    timeout_ms: Option<u64>,
    tx: tokio::sync::mpsc::Sender<wire::StreamEvent>,
) {
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms.max(1)));
    let t = Instant::now();
    let metrics = &app.sandboxes.metrics;
    let (otx, mut orx) = tokio::sync::mpsc::channel(commands::QUEUE);
    let follow = started.follow(deadline, otx);
    let client = tx.clone();
    // Owns the receiving end, so that `follow` sees it closed when the client left.
    let pass = async move {
        loop {
            let o = tokio::select! {
                o = orx.recv() => match o {
                    Some(o) => o,
                    None => return false,
                },
                // A quiet command prints nothing that would find the client gone.
                () = client.closed() => return false,
            };
            let (ev, end) = match o {
                commands::Output::Stdout(line) => (text_event("stdout", line), false),
                commands::Output::Stderr(line) => (text_event("stderr", line), false),
                commands::Output::Exit(end) => {
                    let outcome = match end {
                        Some(0) => "ok",
                        Some(_) => "failed",
                        None => "timeout",
                    };
                    metrics.command(t.elapsed(), outcome);
                    (exit_event(end, t), true)
                }
            };
            if client.send(ev).await.is_err() || end {
                return end;
            }
        }
    };
    let (followed, ended) = tokio::join!(follow, pass);
    if let Err(e) = followed {
        let _ = tx.send(error_event(e.to_string(), e.to_string())).await;
    }
    if !ended {
        let _ = started.kill("KILL").await;
    }
    // Removed before the stream ends: the next command of a client waiting for this one's
    // end would otherwise contend with the removal in the guest (measured: 57 ms against
    // 64 ms per trivial command on `bench server`).
    started.forget().await;
}

/// `POST session`: a bash session whose state (working directory, variables, functions)
/// carries over between its runs.
async fn session_create(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    // The SDK omits the body without a cwd.
    let req: wire::CreateSession = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        json_body(&body)?
    };
    let sample = entry.running()?;
    let env: Vec<(String, String)> = entry
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sid = sessions::create(sandbox_vm(&sample)?.agent(), req.cwd.as_deref(), &env).await?;
    Ok(Json(serde_json::json!({ "session_id": sid })))
}

/// `POST session/{sid}/run`: one command in the session's shell, as `POST command` streams
/// a foreground one.
async fn session_run(
    State(app): Shared,
    headers: HeaderMap,
    Path((id, sid)): Path<(String, String)>,
    body: Bytes,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let req: wire::RunInSession = json_body(&body)?;
    let sample = entry.running()?;
    let agent = sandbox_vm(&sample)?.agent();
    let started = match sessions::run(agent, &sid, &req.command, req.cwd.as_deref()).await {
        Ok(s) => Arc::new(s),
        Err(sessions::Failure::Missing(m)) => return Err(no_session(&sid, m)),
        Err(sessions::Failure::Guest(e)) => return Err(e.into()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<wire::StreamEvent>(commands::QUEUE);
    let mut init = event("init");
    init.text = Some(started.id.clone());
    let _ = tx.try_send(init);
    tokio::spawn(relay(app, started, req.timeout, tx));
    Ok(stream_of(rx))
}

/// `DELETE session/{sid}`: ends the session's shell and what it started.
async fn session_delete(
    State(app): Shared,
    headers: HeaderMap,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let sample = entry.running()?;
    if sessions::delete(sandbox_vm(&sample)?.agent(), &sid).await? {
        Ok(StatusCode::OK)
    } else {
        Err(no_session(&sid, sessions::Missing::NoSession))
    }
}

/// How often `GET metrics/watch` sends, as execd does.
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// execd's `Metrics` of the sandbox VM, from Proxmox's `status/current`: the hypervisor's
/// view of the whole VM (its vCPUs, the CPU share it used since PVE's last sample, its
/// memory as the balloon or QEMU reports it), not a cgroup inside it.
async fn metrics_of(vm: &pvesandbox::SandboxVm) -> Result<serde_json::Value, ApiError> {
    let st = vm
        .client()
        .node(vm.node())
        .qemu(vm.vmid())
        .status()
        .await
        .map_err(pvesandbox::Error::from)?;
    let num = |k: &str| {
        st.extra
            .get(k)
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(0.0)
    };
    const MIB: f64 = 1024.0 * 1024.0;
    Ok(serde_json::json!({
        "cpu_count": num("cpus"),
        // PVE's `cpu` is the share of all the VM's vCPUs, 0 to 1.
        "cpu_used_pct": num("cpu") * 100.0,
        "mem_total_mib": num("maxmem") / MIB,
        "mem_used_mib": num("mem") / MIB,
        "timestamp": commands::unix_ms(SystemTime::now()),
    }))
}

/// `GET metrics`: the VM's CPU and memory now ([`metrics_of`]).
async fn vm_metrics(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let sample = entry.running()?;
    Ok(Json(metrics_of(sandbox_vm(&sample)?).await?))
}

/// `GET metrics/watch`: [`metrics_of`] every second as SSE, until the client leaves, the
/// sandbox goes or the server stops.
async fn vm_metrics_watch(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    use futures_util::StreamExt;
    let entry = app.endpoint_of(&id, &headers)?;
    let sample = entry.running()?;
    let mut stopping = app.stopping.clone();
    let tick = tokio::time::interval(METRICS_EVERY);
    let stream = futures_util::stream::unfold((tick, sample), |(mut tick, sample)| async move {
        tick.tick().await;
        let vm = sandbox_vm(&sample).ok()?;
        let m = metrics_of(vm).await.ok()?;
        Some((Event::default().data(m.to_string()), (tick, sample)))
    })
    .take_until(async move {
        let _ = stopping.wait_for(|s| *s).await;
    })
    .map(Ok);
    Ok(Sse::new(stream))
}

fn no_session(sid: &str, why: sessions::Missing) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: match why {
            sessions::Missing::NoSession => format!("no session {sid:?} in this sandbox"),
            sessions::Missing::Ended => format!(
                "session {sid:?} ended (a run called exit, or a timeout killed it): create another"
            ),
        },
    }
}

/// How a command ended, as execd says it: `execution_complete`, or `error` with the exit code
/// in `evalue` (`-1` when the timeout killed it).
fn exit_event(end: Option<i32>, started: Instant) -> wire::StreamEvent {
    match end {
        Some(0) => {
            let mut ev = event("execution_complete");
            ev.execution_time = Some(started.elapsed().as_millis() as u64);
            ev
        }
        Some(code) => error_event(code.to_string(), format!("exit status {code}")),
        None => error_event("-1".into(), "killed: the timeout passed".into()),
    }
}

fn text_event(kind: &'static str, text: String) -> wire::StreamEvent {
    let mut ev = event(kind);
    ev.text = Some(text);
    ev
}

fn error_event(evalue: String, trace: String) -> wire::StreamEvent {
    let mut ev = event("error");
    ev.error = Some(wire::StreamError {
        ename: "CommandExecError",
        evalue,
        traceback: vec![trace],
    });
    ev
}

/// `GET command/status/{cmd}`: whether a background command runs, and how it ended.
async fn command_status(
    State(app): Shared,
    headers: HeaderMap,
    Path((id, cmd)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let c = app.background_command(&entry, &cmd).await?;
    let mut v = serde_json::json!({
        "id": c.id,
        "running": true,
        "started_at": crate::sandboxes::rfc3339(c.started_at),
    });
    if let Some(code) = c.exit().await? {
        v["running"] = false.into();
        v["exit_code"] = code.into();
    }
    Ok(Json(v))
}

/// `GET command/{cmd}/logs?cursor=N`: its output from byte `N`; the next cursor comes back
/// in `EXECD-COMMANDS-TAIL-CURSOR` (a byte offset, as execd's is).
async fn command_logs(
    State(app): Shared,
    headers: HeaderMap,
    Path((id, cmd)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let c = app.background_command(&entry, &cmd).await?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid("query", e))?;
    let cursor: u64 = match pairs.iter().find(|(k, _)| k == "cursor") {
        Some((_, v)) => v
            .parse()
            .map_err(|_| ApiError::invalid("cursor", "a byte offset"))?,
        None => 0,
    };
    let bytes = c.log(cursor).await?;
    let next = cursor + bytes.len() as u64;
    // text/plain as the spec says; the bytes are the guest's, passed on as they are.
    let mut res = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        bytes,
    )
        .into_response();
    res.headers_mut()
        .insert("EXECD-COMMANDS-TAIL-CURSOR", HeaderValue::from(next));
    Ok(res)
}

/// `DELETE command?id=`: interrupts a background command's whole process group.
async fn command_interrupt(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid("query", e))?;
    let cmd = pairs
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ApiError::invalid("id", "required: the command's id"))?;
    let c = app.background_command(&entry, &cmd).await?;
    c.kill("TERM").await?;
    Ok(StatusCode::OK)
}

fn no_command(cmd: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: format!("no background command {cmd:?} in this sandbox"),
    }
}

/// Octal digits written as a decimal number (`755`), as the SDK sends a mode.
fn mode_text(mode: u32) -> Result<String, ApiError> {
    let text = mode.to_string();
    if text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ApiError::invalid(
            "metadata.mode",
            format!("{mode}: octal digits, e.g. 644"),
        ));
    }
    Ok(text)
}

/// `POST files/upload`: multipart pairs of a `metadata` part (`{path, mode}`) and a `file`
/// part; parent directories are created.
async fn upload(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    mut form: Multipart,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let sample = entry.running()?;
    let vm = sandbox_vm(&sample)?;
    let mut meta: Option<wire::UploadMeta> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::invalid("multipart", e))?
    {
        match field.name() {
            Some("metadata") => {
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::invalid("metadata", e))?;
                meta = Some(json_body(&bytes)?);
            }
            Some("file") => {
                let m = meta.take().ok_or_else(|| {
                    ApiError::invalid("multipart", "a file part must follow its metadata part")
                })?;
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::invalid("file", e))?;
                vm.write_file(&m.path, &bytes).await?;
                if let Some(mode) = m.mode {
                    let out = vm
                        .exec(
                            ExecRequest::new([
                                "chmod".to_owned(),
                                mode_text(mode)?,
                                m.path.clone(),
                            ])
                            .user("root"),
                        )
                        .await?;
                    if !out.success() {
                        return Err(ApiError::invalid(
                            "metadata.mode",
                            String::from_utf8_lossy(&out.stderr).trim(),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(StatusCode::OK)
}

/// `GET files/download?path=`: the bytes, or the part a `Range: bytes=a-b` (or `offset` and
/// `limit`) asks for with 206.
async fn download(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid("query", e))?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let path = get("path").ok_or_else(|| ApiError::invalid("path", "required"))?;
    let sample = entry.running()?;
    let vm = sandbox_vm(&sample)?;
    let octets = HeaderValue::from_static("application/octet-stream");
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let window = match (range, get("offset"), get("limit")) {
        (None, None, None) => None,
        (Some(r), _, _) => Some(Window::Range(r.to_owned())),
        (None, o, l) => {
            let start: u64 = o
                .map_or(Ok(0), |o| o.parse())
                .map_err(|_| ApiError::invalid("offset", "an integer"))?;
            let limit: u64 = l
                .map_or(Ok(DOWNLOAD_LIMIT), |l| l.parse())
                .map_err(|_| ApiError::invalid("limit", "an integer"))?;
            Some(Window::At(start, limit.min(DOWNLOAD_LIMIT)))
        }
    };
    let Some(window) = window else {
        let data = vm.read_file(&path, Some(DOWNLOAD_LIMIT)).await?;
        return Ok(([(header::CONTENT_TYPE, octets)], data).into_response());
    };
    // The size decides what a range means (`bytes=-n`); only the asked bytes are read.
    let len = file_size(vm, &path).await?;
    let (a, b) = match window {
        Window::Range(r) => parse_range(&r, len)?,
        Window::At(start, limit) => (start.min(len), start.saturating_add(limit).min(len)),
    };
    if b - a > DOWNLOAD_LIMIT {
        return Err(ApiError::invalid(
            "Range",
            format!("at most {DOWNLOAD_LIMIT} bytes per request"),
        ));
    }
    let body = vm.agent().read_at(&path, a, b - a).await?;
    let mut res = (
        StatusCode::PARTIAL_CONTENT,
        [(header::CONTENT_TYPE, octets)],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{}/{len}", b.saturating_sub(1))) {
        res.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    Ok(res)
}

/// What part of a file a download asks for.
enum Window {
    /// A `Range` header.
    Range(String),
    /// `offset` and `limit`.
    At(u64, u64),
}

/// The largest download one request returns: it is held in memory on its way out, and the
/// guest decides how large its files are.
const DOWNLOAD_LIMIT: u64 = 256 * 1024 * 1024;

/// A file's size in the guest (`stat`; the agent has no call for it).
async fn file_size(vm: &pvesandbox::SandboxVm, path: &str) -> Result<u64, ApiError> {
    let out = vm
        .exec(ExecRequest::new([
            "stat".to_owned(),
            "-L".to_owned(),
            "-c".to_owned(),
            "%s".to_owned(),
            path.to_owned(),
        ]))
        .await?;
    if !out.success() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: format!("{path}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid("path", "the guest reported no size for it"))
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` as a half-open `[start, end)` within `len`.
fn parse_range(r: &str, len: u64) -> Result<(u64, u64), ApiError> {
    let bad = || ApiError {
        status: StatusCode::RANGE_NOT_SATISFIABLE,
        code: "INVALID_RANGE",
        message: format!("Range {r:?} does not fit a file of {len} bytes (bytes=a-b, a-, -n)"),
    };
    let spec = r.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| bad())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| bad())?;
            let b: u64 = b.parse().map_err(|_| bad())?;
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= end {
        return Err(bad());
    }
    Ok((start, end))
}

/// `GET /v1/events`: the inventory feed ([`crate::feed`]); `Last-Event-ID` resumes it.
async fn events(
    State(app): Shared,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    use futures_util::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    app.key(&headers)?;
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let follow = app.sandboxes.feed.follow(last_seen);
    let first = match follow.replay {
        Some(items) => items.iter().map(|i| item_event(i)).collect(),
        None => vec![snapshot(&app, follow.last)],
    };
    let mut stopping = app.stopping.clone();
    let live = futures_util::stream::unfold((follow.rx, app), |(mut rx, app)| async move {
        let ev = match rx.recv().await {
            Ok(item) => item_event(&item),
            // Fell a buffer behind: a stream with holes would mislead, a snapshot does not.
            Err(RecvError::Lagged(_)) => {
                let f = app.sandboxes.feed.follow(None);
                rx = f.rx;
                snapshot(&app, f.last)
            }
            Err(RecvError::Closed) => return None,
        };
        Some((ev, (rx, app)))
    });
    let stream = futures_util::stream::iter(first)
        .chain(live)
        .take_until(async move {
            let _ = stopping.wait_for(|s| *s).await;
        })
        .map(Ok);
    Ok(Sse::new(stream)
        .keep_alive(axum::response::sse::KeepAlive::new().interval(crate::feed::KEEPALIVE)))
}

fn item_event(item: &crate::feed::Item) -> Event {
    Event::default()
        .id(item.id.to_string())
        .event(item.event)
        .data(&item.data)
}

/// Every sandbox and instance now, as the event with id `last`.
fn snapshot(app: &App, last: u64) -> Event {
    let sandboxes: Vec<serde_json::Value> = app
        .sandboxes
        .all()
        .iter()
        .map(|e| app.sandboxes.inventory(e))
        .collect();
    let data = serde_json::json!({
        "sandboxes": sandboxes,
        "instances": app.sandboxes.instances(),
    });
    Event::default()
        .id(last.to_string())
        .event("snapshot")
        .data(data.to_string())
}

/// `GET /metrics`: Prometheus text; the API key, or `Authorization: Bearer <key>`.
async fn metrics(State(app): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    app.key(&headers)?;
    let states: Vec<&'static str> = app.sandboxes.all().iter().map(|e| e.state()).collect();
    let text = app
        .sandboxes
        .metrics
        .encode(states, app.sandboxes.fleet().pve_calls());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The egress policy as the egress sidecar reports it: without `run.egress` a sandbox
/// reaches nothing outside its network; with it, the internet but no private range.
async fn policy(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.endpoint_of(&id, &headers)?;
    let default = if app.egress { "allow" } else { "deny" };
    Ok(Json(serde_json::json!({
        "status": "active",
        "mode": "proxmox-firewall",
        "enforcementMode": "hypervisor",
        "policy": {"defaultAction": default, "egress": []},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=4-9", 20).unwrap(), (4, 10));
        assert_eq!(parse_range("bytes=4-", 20).unwrap(), (4, 20));
        assert_eq!(parse_range("bytes=-5", 20).unwrap(), (15, 20));
        assert_eq!(parse_range("bytes=4-100", 20).unwrap(), (4, 20));
        assert_eq!(
            parse_range("bytes=30-", 20).unwrap_err().status,
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert!(parse_range("items=1-2", 20).is_err());
        assert_eq!(mode_text(755).unwrap(), "755");
        assert!(mode_text(789).is_err());
    }
}
