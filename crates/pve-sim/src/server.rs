//! HTTP(S) plumbing: accept loop, request parsing, authentication, validation, faults,
//! dispatch, the `{"data": ...}` envelope and the request log.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::access;
use crate::error::ApiError;
use crate::handlers::{self, Ctx, UploadInfo};
use crate::log::LoggedRequest;
use crate::spec::{self, RawParams};
use crate::state::{Shared, flock_timeout};

/// Accepts connections until `shutdown` flips to true.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        // Without TCP_NODELAY small responses wait for the peer's delayed ACK (~40 ms).
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acc) => {
                    let Ok(s) = acc.accept(stream).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(s), svc);
                    tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                }
            }
        });
    }
}

/// Why a request is answered without a response: the connection is dropped on purpose.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for Dropped {}

/// Past this many compressed bytes of barely compressible data, a gzipped guest-agent file read
/// breaks off. The peer hit it reading a 14.8 MiB binary (inspect_proxmox_sandbox #93); where
/// it starts on PVE is not known, so the simulator fails early rather than late: 1 MiB.
const FRAGILE_GZIP_LIMIT: usize = 1 << 20;

/// A JSON response; with `gzip` (the client accepts it), bodies over 1 KiB are compressed as
/// pve-http-server does (`APIServer/AnyEvent.pm` `response`). A `fragile` one (an agent
/// `file-read`) that stays large once compressed breaks off as pveproxy's does, with 597
/// `Broken pipe`: what clients avoid by asking for `Accept-Encoding: identity`.
fn respond(
    status: u16,
    body: Value,
    reason: Option<&str>,
    gzip: bool,
    fragile: bool,
) -> Response<Full<Bytes>> {
    let text = body.to_string().into_bytes();
    let packed = (gzip && text.len() > 1024)
        .then(|| {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&text).and_then(|()| enc.finish()).ok()
        })
        .flatten();
    if fragile
        && let Some(p) = &packed
        && p.len() > FRAGILE_GZIP_LIMIT
        // Base64 of random bytes compresses to about 3/4; text to far less.
        && p.len() * 10 > text.len() * 6
    {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::from_u16(597).unwrap_or(StatusCode::BAD_GATEWAY);
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Broken pipe"));
        return resp;
    }
    let gzipped = packed.is_some();
    let mut resp = Response::new(Full::new(Bytes::from(packed.unwrap_or(text))));
    if gzipped {
        resp.headers_mut().insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
    }
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    if let Some(r) = reason {
        // PVE puts the message in the status line too; keep it on one printable line.
        let line: String = r
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    ' '
                }
            })
            .collect();
        if let Ok(p) = hyper::ext::ReasonPhrase::try_from(line.into_bytes()) {
            resp.extensions_mut().insert(p);
        }
    }
    resp
}

fn error_response(e: &ApiError, gzip: bool) -> Response<Full<Bytes>> {
    let mut body = json!({"data": null, "message": format!("{}\n", e.message)});
    if !e.errors.is_empty() {
        body["errors"] = json!(e.errors);
    }
    respond(e.status, body, Some(&e.message), gzip, false)
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let method = req.method().as_str().to_owned();
    let full_path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let (drop_it, delay) = {
        let mut st = shared.lock();
        (st.faults.take_drop(), st.faults.delay)
    };
    if drop_it {
        shared.lock().log.push(LoggedRequest {
            method,
            route: full_path.clone(),
            path: full_path,
            status: 0,
        });
        return Err(Dropped);
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    if !delay.is_zero() {
        // Injected slowness: part of the simulated network, not synchronisation.
        tokio::time::sleep(delay).await;
    }
    let (route_name, result) = process(&shared, &method, &full_path, &query, &headers, body).await;
    let gzip = accepts_gzip(&headers);
    let resp = match result {
        Ok(v) => respond(
            200,
            json!({ "data": v }),
            None,
            gzip,
            route_name.ends_with("/agent/file-read"),
        ),
        Err(e) => error_response(&e, gzip),
    };
    let path = full_path
        .strip_prefix("/api2/json")
        .unwrap_or(&full_path)
        .to_owned();
    shared.lock().log.push(LoggedRequest {
        method,
        route: route_name,
        path,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

/// Whether the client said it takes gzip (pve-http-server looks for `gzip` anywhere in
/// `Accept-Encoding`).
fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("gzip"))
}

fn parse_urlencoded(s: &[u8], into: &mut RawParams) -> Result<(), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(s)
        .map_err(|e| ApiError::new(400, format!("unable to parse parameters: {e}")))?;
    for (k, v) in pairs {
        into.entry(k).or_default().push(v);
    }
    Ok(())
}

fn parse_json(s: &[u8], into: &mut RawParams) -> Result<(), ApiError> {
    let v: Value = serde_json::from_slice(s)
        .map_err(|e| ApiError::new(400, format!("unable to parse JSON body: {e}")))?;
    let Value::Object(m) = v else {
        return Err(ApiError::new(400, "JSON body must be an object"));
    };
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => (*b as u8).to_string(),
            other => other.to_string(),
        }
    }
    for (k, v) in m {
        let vals = match &v {
            Value::Array(a) => a.iter().map(scalar).collect(),
            Value::Null => continue,
            other => vec![scalar(other)],
        };
        into.entry(k).or_default().extend(vals);
    }
    Ok(())
}

async fn parse_multipart(
    body: Bytes,
    boundary: String,
    into: &mut RawParams,
) -> Result<Option<UploadInfo>, ApiError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut upload = None;
    let bad = |e: multer::Error| ApiError::new(400, format!("unable to parse multipart body: {e}"));
    while let Some(mut field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        if let Some(fname) = field.file_name().map(str::to_owned) {
            let mut sniff = crate::image::Sniffer::new();
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                sniff.feed(&chunk);
            }
            let sniffed = sniff.finish();
            into.entry(name).or_default().push(fname);
            upload = Some(UploadInfo { sniffed });
        } else {
            let text = field.text().await.map_err(bad)?;
            into.entry(name).or_default().push(text);
        }
    }
    Ok(upload)
}

async fn parse_params(
    query: &str,
    ctype: &str,
    body: Bytes,
    params: &mut RawParams,
) -> Result<Option<UploadInfo>, ApiError> {
    parse_urlencoded(query.as_bytes(), params)?;
    if body.is_empty() {
        return Ok(None);
    }
    if ctype.starts_with("application/json") {
        parse_json(&body, params)?;
    } else if ctype.starts_with("multipart/form-data") {
        let boundary =
            multer::parse_boundary(ctype).map_err(|e| ApiError::new(400, e.to_string()))?;
        return parse_multipart(body, boundary, params).await;
    } else {
        parse_urlencoded(&body, params)?;
    }
    Ok(None)
}

fn cookie_ticket(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == "PVEAuthCookie").then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
}

/// Authenticates; returns the user (or token id).
fn authenticate(
    shared: &Shared,
    method: &str,
    headers: &http::HeaderMap,
) -> Result<String, ApiError> {
    if let Some(auth) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let Some(tok) = auth.strip_prefix("PVEAPIToken=") else {
            return Err(ApiError::new(401, "authentication failure"));
        };
        // `user@realm!id=secret` (older clients used `:` before the secret).
        let (id, secret) = tok
            .rsplit_once('=')
            .or_else(|| tok.rsplit_once(':'))
            .ok_or_else(|| ApiError::new(401, "authentication failure"))?;
        return if shared
            .cfg
            .tokens
            .iter()
            .any(|(i, s)| i == id && s == secret)
        {
            Ok(id.to_owned())
        } else {
            Err(ApiError::new(401, "authentication failure"))
        };
    }
    let Some(ticket) = cookie_ticket(headers) else {
        return Err(ApiError::new(401, "No ticket"));
    };
    let st = shared.lock();
    let info = st
        .check_ticket(&ticket, shared.cfg.ticket_lifetime)
        .ok_or_else(|| ApiError::new(401, "invalid PVE ticket"))?;
    if method != "GET" {
        let csrf = headers
            .get("CSRFPreventionToken")
            .and_then(|v| v.to_str().ok());
        if csrf != Some(info.csrf.as_str()) {
            return Err(ApiError::new(401, "Permission denied - invalid csrf token"));
        }
    }
    Ok(info.user.clone())
}

fn login(shared: &Shared, params: &RawParams) -> Result<Value, ApiError> {
    let get = |k: &str| {
        params
            .get(k)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default()
    };
    let mut user = get("username");
    if let Some(realm) = params.get("realm").and_then(|v| v.first())
        && !user.contains('@')
    {
        user = format!("{user}@{realm}");
    }
    let password = get("password");
    let mut st = shared.lock();
    let by_password = shared
        .cfg
        .users
        .iter()
        .any(|(u, p)| *u == user && *p == password);
    // Renewal: a still-valid ticket of the same user works as the password.
    let by_ticket = st
        .check_ticket(&password, shared.cfg.ticket_lifetime)
        .is_some_and(|t| t.user == user);
    if !(by_password || by_ticket) {
        return Err(ApiError::new(401, "authentication failure"));
    }
    let (ticket, csrf) = st.issue_ticket(&user);
    Ok(json!({"ticket": ticket, "CSRFPreventionToken": csrf, "username": user, "cap": {}}))
}

async fn process(
    shared: &Arc<Shared>,
    method: &str,
    full_path: &str,
    query: &str,
    headers: &http::HeaderMap,
    body: Bytes,
) -> (String, Result<Value, ApiError>) {
    let Some(path) = full_path.strip_prefix("/api2/json") else {
        return (full_path.to_owned(), Err(ApiError::new(404, "Not Found")));
    };
    let (route, vars) = match spec::find_route(method, path) {
        Ok(r) => r,
        Err(_) => {
            return (
                path.to_owned(),
                Err(ApiError::new(
                    501,
                    format!("Method '{method} {path}' not implemented"),
                )),
            );
        }
    };
    let name = route.path.to_owned();
    let mut params = RawParams::new();
    let ctype = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let parsed = parse_params(query, &ctype, body, &mut params).await;
    let upload = match parsed {
        Ok(u) => u,
        Err(e) => return (name, Err(e)),
    };
    if method == "POST" && route.path == "/access/ticket" {
        let errors = spec::validate(route, &params);
        if !errors.is_empty() {
            return (name, Err(ApiError::params(errors)));
        }
        return (name, login(shared, &params));
    }
    let user = match authenticate(shared, method, headers) {
        Ok(u) => u,
        Err(e) => return (name, Err(e)),
    };
    for (k, v) in vars {
        params.insert(k, vec![v]);
    }
    // PVE checks the method's permission rule before it verifies parameters
    // (`rest_handler`); what the handler checks itself comes after.
    // The Ctx below takes `user`; the caller borrows a copy.
    let who = user.clone();
    let caller = access::Caller::of(&shared.cfg, &who);
    let flat = first_values(&params);
    if let Err(e) = access::evaluate(&access::required(method, route.path), caller, &flat, "") {
        return (name, Err(e));
    }
    let errors = spec::validate(route, &params);
    if !errors.is_empty() {
        return (name, Err(ApiError::params(errors)));
    }
    let ctx = Ctx {
        method: method.to_owned(),
        route,
        params,
        user,
        upload,
    };
    let is_task = handlers::returns_task(method, route.path);
    if let Err(denied) = access::handler_check(method, route.path, &flat, &SimWorld(shared), caller)
    {
        if !(denied.in_worker && is_task) {
            return (name, Err(denied.error));
        }
        let (worker, message) = if route.path == "/nodes/{node}/qemu" {
            let vmid = ctx.vmid();
            let m = format!("unable to create VM {vmid} - {}", denied.error.message);
            ("qmcreate", m)
        } else {
            ("qmconfig", denied.error.message)
        };
        let mut st = shared.lock();
        let upid = st.failed_task(
            shared,
            ctx.node(),
            &ctx.user,
            worker,
            &ctx.vmid().to_string(),
            message,
        );
        return (name, Ok(Value::String(upid)));
    }
    if handlers::takes_vm_flock(method, route.path)
        && let Err(msg) = wait_flock(shared, ctx.vmid()).await
    {
        let mut st = shared.lock();
        return (
            name,
            if is_task {
                Ok(Value::String(st.failed_task(
                    shared,
                    ctx.node(),
                    &ctx.user,
                    "qmconfig",
                    &ctx.vmid().to_string(),
                    msg,
                )))
            } else {
                Err(ApiError::internal(msg))
            },
        );
    }
    let call = {
        let mut st = shared.lock();
        if let Some(f) = st.faults.take(method, route.path) {
            if f.in_task {
                let node = ctx
                    .params
                    .get("node")
                    .and_then(|v| v.first())
                    .cloned()
                    .unwrap_or_else(|| shared.cfg.nodes[0].clone());
                let id = ctx
                    .params
                    .get("vmid")
                    .and_then(|v| v.first())
                    .cloned()
                    .unwrap_or_default();
                let worker = route
                    .path
                    .rsplit('/')
                    .next()
                    .unwrap_or("task")
                    .trim_matches(['{', '}'])
                    .replace('-', "");
                return (
                    name,
                    Ok(Value::String(st.failed_task(
                        shared, &node, &ctx.user, &worker, &id, f.message,
                    ))),
                );
            }
            return (name, Err(ApiError::new(f.status, f.message)));
        }
        if !handlers::is_agent(route.path) {
            let result = handlers::dispatch(shared, &mut st, &ctx);
            return (name, result.map(|v| filter_listing(route.path, v, caller)));
        }
        handlers::check_node(shared, &ctx).and_then(|()| handlers::agent::prepare(&st, &ctx))
    };
    // The guest may take as long as the command it runs: it is never awaited under the lock.
    let result = match call {
        Ok(call) => handlers::agent::run(call, &ctx).await,
        Err(e) => Err(e),
    };
    (name, result)
}

/// The first value of each parameter: what PVE's permission templates (`/vms/{vmid}`) and
/// handler checks read.
fn first_values(params: &RawParams) -> BTreeMap<String, String> {
    params
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.first()?.clone())))
        .collect()
}

/// The cluster as permission checks see it; each lookup takes the state lock briefly.
struct SimWorld<'a>(&'a Shared);

impl access::World for SimWorld<'_> {
    fn zone_of(&self, vnet: &str) -> Option<String> {
        let st = self.0.lock();
        [&st.sdn.pending, &st.sdn.running]
            .into_iter()
            .find_map(|c| c.vnets.get(vnet)?.get("zone").cloned())
    }

    fn vm_config(&self, vmid: u32) -> Option<BTreeMap<String, String>> {
        self.0.lock().vms.get(&vmid).map(|v| v.config.clone())
    }
}

/// Drops the entries of a `user: all` listing the caller may not see, as PVE's handlers do.
fn filter_listing(route: &str, v: Value, caller: access::Caller<'_>) -> Value {
    // root@pam, or a simulator without a privilege list: everything shows.
    if caller.privileges().is_none() {
        return v;
    }
    if let ("/cluster/tasks" | "/nodes/{node}/tasks", Value::Array(items)) = (route, &v) {
        // The cluster-wide list asks for Sys.Audit on `/`, a node's list on that node.
        let mine = |e: &Value| {
            let owner = e["user"].as_str().unwrap_or_default();
            match route {
                "/cluster/tasks" => owner == caller.user || caller.has_any_on("/", &["Sys.Audit"]),
                _ => caller.sees_task_of(owner, e["node"].as_str().unwrap_or_default()),
            }
        };
        return Value::Array(items.iter().filter(|e| mine(e)).cloned().collect());
    }
    // Without Sys.Audit a node is listed, but not its load.
    let v = match (route, v) {
        ("/cluster/resources", Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .map(|mut e| {
                    let node = e["node"].as_str().unwrap_or_default().to_owned();
                    if e["type"] == "node"
                        && !caller.has_any_on(&format!("/nodes/{node}"), &["Sys.Audit"])
                        && let Some(o) = e.as_object_mut()
                    {
                        for k in [
                            "cpu", "maxcpu", "mem", "maxmem", "disk", "maxdisk", "uptime",
                        ] {
                            o.remove(k);
                        }
                    }
                    e
                })
                .collect(),
        ),
        (_, v) => v,
    };
    match v {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .filter(|e| {
                    access::list_filter(route, e["type"].as_str())
                        .is_none_or(|privs| caller.has_any_on(&access::entry_path(route, e), privs))
                })
                .collect(),
        ),
        v => v,
    }
}

/// Waits for a VM's config-file lock like PVE (up to the lock timeout); the error is PVE's
/// `can't lock file ... got timeout`.
async fn wait_flock(shared: &Shared, vmid: u32) -> Result<(), String> {
    let started = Instant::now();
    let limit = shared.cfg.lock_wait();
    loop {
        let until = shared.lock().vms.get(&vmid).and_then(|v| v.flock_until);
        let now = Instant::now();
        match until {
            Some(t) if t > now => {
                let waited = now - started;
                if waited >= limit {
                    return Err(flock_timeout(vmid));
                }
                // Modelled lock wait: sleep until the holder is done or our patience ends.
                tokio::time::sleep((t - now).min(limit - waited).max(Duration::from_millis(1)))
                    .await;
            }
            _ => return Ok(()),
        }
    }
}
