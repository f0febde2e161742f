//! `PveClient` and its builder: one pooled connection set, authentication, retries, the
//! `{"data": ...}` envelope and error mapping. Typed calls live in `api/`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use crate::auth::{Credentials, Ticket, TicketStore};
use crate::tls::{Fingerprint, TlsMode};
use crate::{Error, Params, Result, Secret};

/// HTTP methods PVE uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Read; parameters in the query string; retried on transient failures.
    Get,
    /// Create / act; parameters in a form body; needs CSRF with tickets.
    Post,
    /// Update; form body; needs CSRF with tickets.
    Put,
    /// Remove; parameters in the query string; needs CSRF with tickets.
    Delete,
}

impl Method {
    /// Every method, in declaration order (the order `as usize` counts in).
    pub const ALL: [Method; 4] = [Method::Get, Method::Post, Method::Put, Method::Delete];

    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
    fn to_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        }
    }
}

/// A Proxmox VE API client. Cheap to clone: clones share the connection pool and the ticket.
#[derive(Clone)]
pub struct PveClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    /// `https://host:8006/api2/json`, no trailing slash.
    api: String,
    credentials: Credentials,
    token_header: Option<HeaderValue>,
    tickets: TicketStore,
    retries: u32,
    pacer: crate::pace::Pacer,
    calls: Calls,
}

/// Requests sent (every attempt, retries included), by method and outcome; shared by clones.
#[derive(Default)]
struct Calls([[std::sync::atomic::AtomicU64; 2]; 4]);

/// How many requests of one method a client and its clones sent ([`PveClient::calls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCount {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// Answered with a 2xx (`false`: an HTTP error or no answer at all).
    pub ok: bool,
    /// How many.
    pub count: u64,
}

impl PveClient {
    /// Requests this client and its clones sent so far, per method and outcome.
    pub fn calls(&self) -> Vec<CallCount> {
        let mut out = Vec::new();
        for m in Method::ALL {
            for ok in [true, false] {
                out.push(CallCount {
                    method: m.as_str(),
                    ok,
                    count: self.inner.calls.0[m as usize][usize::from(ok)]
                        .load(std::sync::atomic::Ordering::Relaxed),
                });
            }
        }
        out
    }
}

impl fmt::Debug for PveClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PveClient")
            .field("api", &self.inner.api)
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PveClient`]. Setters never fail; the first problem is reported by [`build`](Self::build).
///
/// Defaults: TLS verification against the system roots, connect timeout 10 s, request timeout
/// 60 s, 2 retries for idempotent requests, tickets renewed after 1 h 45 min (PVE's expire
/// after 2 h).
#[must_use]
pub struct PveClientBuilder {
    base_url: Option<String>,
    credentials: Option<Credentials>,
    tls: TlsMode,
    connect_timeout: Duration,
    timeout: Duration,
    headers: HeaderMap,
    retries: u32,
    renew_after: Duration,
    pacing: crate::Pacing,
    error: Option<Error>,
}

impl fmt::Debug for PveClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PveClientBuilder")
            .field("base_url", &self.base_url)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PveClient {
    /// Starts a builder.
    pub fn builder() -> PveClientBuilder {
        PveClientBuilder {
            base_url: None,
            credentials: None,
            tls: TlsMode::Verify,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            headers: HeaderMap::new(),
            retries: 2,
            renew_after: Duration::from_secs(105 * 60),
            pacing: crate::Pacing::default(),
            error: None,
        }
    }
}

impl PveClientBuilder {
    fn fail(mut self, field: &'static str, message: String) -> Self {
        self.error.get_or_insert(Error::Config { field, message });
        self
    }

    /// The server: `https://pve.example:8006` (`/api2/json` is added when missing).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Password authentication with `user@realm`.
    pub fn password(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.credentials = Some(Credentials::Password {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// API-token authentication with `user@realm!tokenid` and its secret.
    pub fn api_token(mut self, token_id: impl Into<String>, secret: impl Into<Secret>) -> Self {
        self.credentials = Some(Credentials::Token {
            token_id: token_id.into(),
            secret: secret.into(),
        });
        self
    }

    /// Any [`Credentials`].
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// TLS mode (default [`TlsMode::Verify`]).
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls = mode;
        self
    }

    /// Trust the CA certificates in this PEM file in addition to the system roots.
    pub fn ca_file(self, path: impl Into<PathBuf>) -> Self {
        self.tls(TlsMode::VerifyWithCa(path.into()))
    }

    /// Pin the server certificate's SHA-256 fingerprint (`AA:BB:...` or plain hex).
    pub fn fingerprint(self, fingerprint: &str) -> Self {
        match fingerprint.parse::<Fingerprint>() {
            Ok(fp) => self.tls(TlsMode::Pinned(fp)),
            Err(e) => self.fail("fingerprint", e),
        }
    }

    /// Accept any certificate. Never the default; only for throw-away test setups.
    pub fn danger_accept_invalid_certs(self) -> Self {
        self.tls(TlsMode::Insecure)
    }

    /// How long to wait for a TCP + TLS connection (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long one request may take, end to end (default 60 s; uploads are exempt).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// An extra header sent with every request (e.g. for an authenticating proxy in front of PVE).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => n,
            Err(e) => return self.fail("extra_headers", format!("header name {name:?}: {e}")),
        };
        match HeaderValue::from_str(value) {
            Ok(mut v) => {
                // Extra headers often carry proxy credentials: keep them out of reqwest's Debug.
                v.set_sensitive(true);
                self.headers.insert(name, v);
                self
            }
            Err(e) => self.fail("extra_headers", format!("value of header {name}: {e}")),
        }
    }

    /// How many times an idempotent request (GET) is retried after a connection failure,
    /// timeout, or PVE proxy error (595-597, 502-504). Default 2. Non-idempotent requests are
    /// retried only when the connection failed before anything was sent.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Renew the ticket once it is this old (default 1 h 45 min; PVE tickets live 2 h).
    pub fn ticket_renew_after(mut self, d: Duration) -> Self {
        self.renew_after = d;
        self
    }

    /// How task and agent waits schedule their polls (default [`Pacing::Learned`](crate::Pacing)).
    pub fn pacing(mut self, pacing: crate::Pacing) -> Self {
        self.pacing = pacing;
        self
    }

    /// Builds the client. Fails with [`Error::Config`] naming the field at fault.
    pub fn build(self) -> Result<PveClient> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let raw = self.base_url.ok_or(Error::Config {
            field: "base_url",
            message: "missing: set it to the node's API address, e.g. https://pve.example:8006"
                .into(),
        })?;
        let api = normalize_base_url(&raw)?;
        let credentials = self.credentials.ok_or(Error::Config {
            field: "credentials",
            message:
                "missing: call .password(\"user@realm\", ..) or .api_token(\"user@realm!id\", ..)"
                    .into(),
        })?;
        credentials.validate().map_err(|message| Error::Config {
            field: "credentials",
            message,
        })?;
        let token_header = match &credentials {
            Credentials::Token { token_id, secret } => {
                let mut v =
                    HeaderValue::from_str(&format!("PVEAPIToken={token_id}={}", secret.expose()))
                        .map_err(|_| Error::Config {
                        field: "credentials",
                        message: "token id and secret must be printable ASCII".into(),
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
            Credentials::Password { .. } => None,
        };
        let tls = crate::tls::client_config(&self.tls)?;
        let mut headers = self.headers;
        // pveproxy gzips large bodies for clients that accept it, and a gzipped stream of
        // incompressible data (agent file-read) can break off mid-way with 596/597. Say so
        // explicitly rather than rely on reqwest's feature flags.
        headers
            .entry(reqwest::header::ACCEPT_ENCODING)
            .or_insert(HeaderValue::from_static("identity"));
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .default_headers(headers)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("pve-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config {
                field: "tls",
                message: e.to_string(),
            })?;
        Ok(PveClient {
            inner: Arc::new(Inner {
                http,
                api,
                credentials,
                token_header,
                tickets: TicketStore::new(self.renew_after),
                retries: self.retries,
                pacer: crate::pace::Pacer::new(self.pacing),
                calls: Calls::default(),
            }),
        })
    }
}

fn normalize_base_url(raw: &str) -> Result<String> {
    let bad = |m: &str| Error::Config {
        field: "base_url",
        message: format!("{raw:?}: {m}"),
    };
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| bad(&format!("{e}; expected e.g. https://pve.example:8006")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(bad("scheme must be https (or http for a local simulator)"));
    }
    if url.host_str().is_none() {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not contain a query or fragment"));
    }
    let mut s = url.as_str().trim_end_matches('/').to_owned();
    if !s.ends_with("/api2/json") {
        s.push_str("/api2/json");
    }
    Ok(s)
}

/// The body of one request attempt.
pub(crate) enum Body<'a> {
    /// Query string (GET, DELETE) or form (POST, PUT).
    Params(&'a Params),
    /// A multipart form, rebuilt for every attempt because its stream is consumed.
    Multipart(
        &'a (
                dyn Fn()
            -> futures_util::future::BoxFuture<'static, Result<reqwest::multipart::Form>>
                    + Send
                    + Sync
            ),
    ),
}

impl PveClient {
    /// The API base, e.g. `https://pve:8006/api2/json`.
    pub fn api_url(&self) -> &str {
        &self.inner.api
    }

    /// Who this client authenticates as.
    pub fn principal(&self) -> &str {
        self.inner.credentials.principal()
    }

    /// The poll schedules this client (and its clones) learned; guest-agent waits use it too.
    pub fn pacer(&self) -> &crate::Pacer {
        &self.inner.pacer
    }

    /// `GET path` with query parameters; returns `data` as JSON.
    pub async fn get(&self, path: &str, params: &Params) -> Result<Value> {
        self.call(Method::Get, path, params).await
    }
    /// `POST path` with a form body; returns `data` as JSON.
    pub async fn post(&self, path: &str, params: &Params) -> Result<Value> {
        self.call(Method::Post, path, params).await
    }
    /// `PUT path` with a form body; returns `data` as JSON.
    pub async fn put(&self, path: &str, params: &Params) -> Result<Value> {
        self.call(Method::Put, path, params).await
    }
    /// `DELETE path` with query parameters; returns `data` as JSON.
    pub async fn delete(&self, path: &str, params: &Params) -> Result<Value> {
        self.call(Method::Delete, path, params).await
    }

    /// Any call, `data` deserialized into `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: &Params,
    ) -> Result<T> {
        let data = self.execute(method, path, Body::Params(params)).await?;
        decode(method, path, data)
    }

    /// Sends a request with authentication, the single 401 re-login, and retries; returns `data`.
    pub(crate) async fn execute(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<Value> {
        let span = tracing::debug_span!("pve_request", method = method.as_str(), path);
        async move {
            let started = Instant::now();
            let mut attempt = 0u32;
            let mut relogged = false;
            let mut stale = None;
            loop {
                let ticket = self.ticket(stale.take()).await?;
                let result = self.send_once(method, path, &body, ticket.as_deref()).await;
                self.inner.calls.0[method as usize][usize::from(result.is_ok())]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match result {
                    Err(Error::Auth { .. }) if ticket.is_some() && !relogged => {
                        // The ticket was revoked or expired early: renew once, then give up.
                        relogged = true;
                        stale = ticket.map(|t| t.generation);
                        tracing::debug!("ticket rejected, logging in again");
                    }
                    Err(e) if attempt < self.inner.retries && self.may_retry(method, &e) => {
                        attempt += 1;
                        // Exponential backoff: 100 ms, 200 ms, 400 ms, ... bounded by the retry count.
                        let pause = Duration::from_millis(100 << (attempt - 1).min(6));
                        tracing::debug!(error = %e, attempt, ?pause, "retrying");
                        tokio::time::sleep(pause).await;
                    }
                    other => {
                        tracing::debug!(
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            ok = other.is_ok(),
                            "done"
                        );
                        return other;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn may_retry(&self, method: Method, e: &Error) -> bool {
        match method {
            Method::Get => e.is_retryable(),
            // A refused connection never reached PVE, so even a POST cannot run twice.
            _ => matches!(e, Error::Connect { message, .. } if message.starts_with("connect:")),
        }
    }

    async fn ticket(&self, stale: Option<u64>) -> Result<Option<Arc<Ticket>>> {
        let Credentials::Password { user, password } = &self.inner.credentials else {
            return Ok(None);
        };
        let t = self
            .inner
            .tickets
            .get_or_login(stale, || self.login(user, password))
            .await?;
        Ok(Some(t))
    }

    async fn login(&self, user: &str, password: &Secret) -> Result<(Secret, Secret)> {
        #[derive(serde::Deserialize)]
        struct Login {
            ticket: String,
            #[serde(rename = "CSRFPreventionToken")]
            csrf: String,
        }
        tracing::debug!(user, "logging in");
        let params = Params::new()
            .with("username", user)
            .with_secret("password", password);
        let data = self
            .send_once(Method::Post, "/access/ticket", &Body::Params(&params), None)
            .await
            .map_err(|e| match e {
                // PVE answers a wrong password with 401 "authentication failure".
                Error::Api {
                    status: 401,
                    path,
                    message,
                    ..
                } => Error::Auth {
                    method: "POST",
                    path,
                    message,
                },
                other => other,
            })?;
        let login: Login = decode(Method::Post, "/access/ticket", data)?;
        Ok((Secret::new(login.ticket), Secret::new(login.csrf)))
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: &Body<'_>,
        ticket: Option<&Ticket>,
    ) -> Result<Value> {
        let m = method.as_str();
        let mut url = format!("{}{}", self.inner.api, path);
        if let (Body::Params(p), Method::Get | Method::Delete) = (body, method)
            && !p.is_empty()
        {
            url.push('?');
            url.push_str(&p.encode());
        }
        let mut req = self.inner.http.request(method.to_reqwest(), &url);
        if let Some(h) = &self.inner.token_header {
            req = req.header(reqwest::header::AUTHORIZATION, h.clone());
        }
        if let Some(t) = ticket {
            let mut cookie = HeaderValue::from_str(&format!("PVEAuthCookie={}", t.cookie.expose()))
                .map_err(|_| Error::Decode {
                    method: m,
                    path: path.into(),
                    message: "ticket is not ASCII".into(),
                })?;
            cookie.set_sensitive(true);
            req = req.header(reqwest::header::COOKIE, cookie);
            if method != Method::Get {
                let mut csrf =
                    HeaderValue::from_str(t.csrf.expose()).map_err(|_| Error::Decode {
                        method: m,
                        path: path.into(),
                        message: "CSRF token is not ASCII".into(),
                    })?;
                csrf.set_sensitive(true);
                req = req.header("CSRFPreventionToken", csrf);
            }
        }
        req = match body {
            Body::Params(p) if !p.is_empty() && matches!(method, Method::Post | Method::Put) => req
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(p.encode()),
            Body::Params(_) => req,
            // Uploads of multi-GiB images may take hours on slow links: the per-request
            // timeout would cut them off, so they get a day.
            Body::Multipart(make) => req
                .multipart(make().await?)
                .timeout(Duration::from_secs(24 * 3600)),
        };
        let resp = req.send().await.map_err(|e| map_reqwest(m, path, e))?;
        let status = resp.status();
        let reason = status.canonical_reason().unwrap_or("").to_owned();
        let bytes = resp.bytes().await.map_err(|e| map_reqwest(m, path, e))?;
        if status.is_success() {
            let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
                method: m,
                path: path.into(),
                message: format!(
                    "invalid JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            })?;
            return match v.get_mut("data") {
                Some(d) => Ok(d.take()),
                None => Err(Error::Decode {
                    method: m,
                    path: path.into(),
                    message: "no `data` in response".into(),
                }),
            };
        }
        Err(api_error(m, path, status.as_u16(), &reason, &bytes))
    }
}

fn api_error(method: &'static str, path: &str, status: u16, reason: &str, body: &[u8]) -> Error {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| reason.to_owned());
    let errors = json
        .as_ref()
        .and_then(|j| j.get("errors"))
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map_or_else(|| v.to_string(), |s| s.trim().to_owned()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if status == 401 {
        return Error::Auth {
            method,
            path: path.into(),
            message,
        };
    }
    Error::Api {
        method,
        path: path.into(),
        status,
        message,
        errors,
    }
}

fn map_reqwest(method: &'static str, path: &str, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        return Error::Timeout {
            method,
            path: path.into(),
        };
    }
    // The chain holds the rustls error for handshake failures; report those as TLS, not connect.
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut chain = Vec::new();
    while let Some(s) = src {
        if let Some(tls) = find_rustls(s) {
            return Error::Tls {
                method,
                path: path.into(),
                message: tls.to_string(),
            };
        }
        chain.push(s.to_string());
        src = s.source();
    }
    let detail = chain.last().cloned().unwrap_or_default();
    if e.is_connect() {
        return Error::Connect {
            method,
            path: path.into(),
            message: format!("connect: {detail}"),
        };
    }
    if e.is_request() || e.is_body() {
        return Error::Connect {
            method,
            path: path.into(),
            message: format!("connection broken: {detail}"),
        };
    }
    Error::Decode {
        method,
        path: path.into(),
        message: detail,
    }
}

/// The rustls error inside `e`, if any. `io::Error` does not expose the error it wraps through
/// `source()`, so look inside it explicitly.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

pub(crate) fn decode<T: DeserializeOwned>(method: Method, path: &str, data: Value) -> Result<T> {
    serde_json::from_value(data).map_err(|e| Error::Decode {
        method: method.as_str(),
        path: path.into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms() {
        assert_eq!(
            normalize_base_url("https://h:8006").unwrap(),
            "https://h:8006/api2/json"
        );
        assert_eq!(
            normalize_base_url("https://h:8006/api2/json/").unwrap(),
            "https://h:8006/api2/json"
        );
        assert!(normalize_base_url("h:8006").is_err());
        assert!(normalize_base_url("ftp://h").is_err());
    }

    #[test]
    fn builder_errors_name_the_field() {
        let e = PveClient::builder()
            .base_url("https://h:8006")
            .password("root", "x")
            .build()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    field: "credentials",
                    ..
                }
            ),
            "{e}"
        );
        let e = PveClient::builder()
            .base_url("https://h:8006")
            .api_token("root@pam", "x")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("user@realm!tokenid"), "{e}");
        let e = PveClient::builder()
            .fingerprint("AB:CD")
            .build()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Config {
                    field: "fingerprint",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = PveClient::builder()
            .base_url("https://h:8006")
            .api_token("root@pam!ci", "s3cr3t-token")
            .header("X-Proxy-Auth", "proxy-s3cr3t")
            .build()
            .unwrap();
        let b = PveClient::builder().password("root@pam", "pw-s3cr3t");
        for text in [format!("{c:?}"), format!("{b:?}")] {
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }
}
