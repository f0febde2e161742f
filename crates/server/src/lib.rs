//! `pvesandbox serve`: OpenSandbox's lifecycle API and its in-sandbox execd API, served over
//! Proxmox VE VMs, so OpenSandbox's SDKs and CLI work unmodified with VM isolation and
//! pause/resume that keeps RAM.
//!
//! This is the only crate that knows OpenSandbox's JSON ([`wire`]). A sandbox is one sample of
//! a run of its own on the process's one [`pvesandbox::Fleet`] ([`sandboxes`]). Its execd and
//! egress endpoints are served here under `/v1/sandboxes/{id}/proxy/{port}`, through the guest
//! agent ([`routes`]), with a per-sandbox token in the endpoint's headers ([`auth`]).
//!
//! The HTTP framework is axum: it is tokio-native like everything else here (the pool's actix
//! system stays inside the pool crate), it compiles in half the time of actix-web, and its SSE
//! and multipart support are what execd's command stream and uploads need.
//!
//! ```no_run
//! # async fn demo(fleet: pvesandbox::Fleet) -> Result<(), pvesandbox::Error> {
//! let opts = pvesandbox_server::ServeOptions {
//!     api_keys: vec![pve_client::Secret::new("a long random key")],
//!     ..Default::default()
//! };
//! let server = pvesandbox_server::Server::start(fleet, opts).await?;
//! println!("OPEN_SANDBOX_DOMAIN={}", server.local_addr());
//! server.wait().await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod commands;
pub mod error;
pub mod feed;
/// execd's files API beyond upload and download: info, search, listings, mkdir, chmod, mv,
/// delete and replace, one guest exec per request where it can.
pub mod files;
pub mod metrics;
pub mod routes;
pub mod sandboxes;
pub mod sessions;
pub mod tls;
pub mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pve_client::Secret;
use pvesandbox::{Error, Fleet};

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (default `127.0.0.1:8080`, OpenSandbox's default domain).
    pub listen: SocketAddr,
    /// Accepted `OPEN-SANDBOX-API-KEY`s (kept hashed once the server starts).
    pub api_keys: Vec<Secret>,
    /// Serve without keys: allowed only on a loopback address.
    pub unauthenticated: bool,
    /// `host:port` clients reach the server at, for endpoint answers (default: the bound
    /// address).
    pub public_address: Option<String>,
    /// The instance pool sandboxes go to (default: the first configured instance's).
    pub pool_id: Option<String>,
    /// How often the reaper looks for expired sandboxes.
    pub reap_every: Duration,
    /// Serve HTTPS with this certificate (default: plain HTTP).
    pub tls: Option<tls::TlsFiles>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            api_keys: Vec::new(),
            unauthenticated: false,
            public_address: None,
            pool_id: None,
            reap_every: Duration::from_secs(1),
            tls: None,
        }
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    sandboxes: Arc<sandboxes::Sandboxes>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds and serves on `fleet`. Without API keys it refuses to start unless told to run
    /// unauthenticated, and then only on loopback.
    pub async fn start(fleet: Fleet, opts: ServeOptions) -> Result<Server, Error> {
        if opts.api_keys.is_empty() && !opts.unauthenticated {
            return Err(Error::Config {
                field: "serve.api_keys".into(),
                value: String::new(),
                fix: "no API key: set OPEN_SANDBOX_API_KEY (or serve.api_keys), or pass --unauthenticated to serve loopback without one".into(),
            });
        }
        if opts.unauthenticated && !opts.listen.ip().is_loopback() {
            return Err(Error::Config {
                field: "listen".into(),
                value: opts.listen.to_string(),
                fix: "an unauthenticated server listens on loopback only; set an API key to serve other addresses".into(),
            });
        }
        let pool_id = match opts.pool_id.clone() {
            Some(p) => p,
            None => fleet
                .settings()
                .instances
                .first()
                .map(|i| i.pool_id.clone())
                .ok_or_else(|| Error::Config {
                    field: "instances".into(),
                    value: String::new(),
                    fix: "no Proxmox instance configured".into(),
                })?,
        };
        // Before binding or adopting anything: a bad certificate is a config error at once.
        let acceptor = opts.tls.as_ref().map(tls::acceptor).transpose()?;
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| Error::Io {
                what: format!("listening on {}", opts.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            what: "reading the bound address".into(),
            source,
        })?;
        let egress = fleet.settings().run.egress;
        let sandboxes = sandboxes::Sandboxes::new(fleet, pool_id);
        // Before the first request: a client asking for a sandbox of the previous process
        // finds it, never a 404 that turns into a 200 a moment later.
        let recovered = sandboxes.recover().await?;
        if recovered != Default::default() {
            tracing::info!(
                adopted = recovered.adopted.len(),
                removed = recovered.removed.len(),
                left = recovered.left.len(),
                "took over what an earlier server left"
            );
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let app = Arc::new(routes::App {
            sandboxes: sandboxes.clone(),
            auth: auth::Auth::new(&opts.api_keys, opts.unauthenticated),
            public: opts
                .public_address
                .clone()
                .unwrap_or_else(|| addr.to_string()),
            egress,
            background: Default::default(),
            stopping: stop.subscribe(),
        });
        let reaper = sandboxes.clone();
        let mut reaper_stop = stop.subscribe();
        let every = opts.reap_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => reaper.reap().await,
                    _ = reaper_stop.changed() => break,
                }
            }
        });
        let feed = sandboxes.clone();
        let mut events = sandboxes.fleet().subscribe();
        let mut feed_stop = stop.subscribe();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) => feed.on_sample_event(&ev),
                        // The fleet's own buffer overflowed: the feed misses those deltas,
                        // the sandbox states it publishes stay right.
                        Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "fleet events lost for the feed"),
                        Err(RecvError::Closed) => break,
                    },
                    _ = feed_stop.changed() => break,
                }
            }
        });
        let router = routes::router(app).layer(axum::middleware::from_fn(request_id));
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let task = match acceptor {
            None => tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }),
            Some(acceptor) => {
                let listener =
                    tls::TlsListener::new(listener, acceptor).map_err(|source| Error::Io {
                        what: format!("listening on {addr}"),
                        source,
                    })?;
                tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                })
            }
        };
        Ok(Server {
            addr,
            stop,
            task,
            sandboxes,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until [`stop`](Self::stop) or an I/O error.
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .map_err(|e| Error::Io {
                what: "the server task".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| Error::Io {
                what: "serving".into(),
                source,
            })
    }

    /// Stops accepting and removes every running sandbox it made, waiting for both.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.sandboxes.remove_all().await;
        self.wait().await
    }

    /// Stops accepting and leaves the sandboxes in Proxmox, where the next server on the same
    /// instances takes them over at its start (their expiry removes them otherwise).
    pub async fn stop_keeping(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.wait().await
    }
}

/// A random (version 4) UUID, the form the spec gives `X-Request-ID`.
fn uuid_v4() -> String {
    let r = rand::random::<u128>();
    // Version 4 in bits 76..80, variant 10 in bits 62..64 (RFC 9562 §5.4).
    let r = (r & !(0xf << 76)) | (0x4 << 76);
    let r = (r & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Echoes the client's `X-Request-ID` (the SDK puts it into its exceptions) or gives one, and
/// runs the request in a span carrying it, so every log line of the request names it.
async fn request_id(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let id = req
        .headers()
        .get("x-request-id")
        .cloned()
        .or_else(|| uuid_v4().parse().ok());
    let span = tracing::info_span!(
        "request",
        id = id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        method = %req.method(),
        path = req.uri().path(),
    );
    let mut res = next.run(req).instrument(span).await;
    if let Some(id) = id {
        res.headers_mut().insert("x-request-id", id);
    }
    res
}
