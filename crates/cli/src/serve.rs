//! `pvesandbox serve`: the OpenSandbox-compatible server, on the configured Proxmox or, when
//! none is configured, on the embedded simulator with process guests (so it starts on a fresh
//! machine with one command).

use std::net::SocketAddr;

use clap::Args;
use pve_client::Secret;
use pvesandbox::{Error, Fleet};
use pvesandbox_server::{ServeOptions, Server};

use crate::commands::Ctx;

/// The variable the API key is read from: the one OpenSandbox's SDK and CLI read on the
/// client side, so one export serves both on one machine. A key on the command line would be
/// visible to every user in `ps`.
const API_KEY_ENV: &str = "OPEN_SANDBOX_API_KEY";

/// Sandboxes at once on an instance whose `max_samples` is unset.
const DEFAULT_MAX_SANDBOXES: u32 = 64;

/// `serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve without an API key (only on loopback).
    #[arg(long)]
    pub unauthenticated: bool,
    /// `host:port` clients reach this server at, for the endpoints it hands out (default: the
    /// listen address).
    #[arg(long)]
    pub public_address: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<std::path::PathBuf>,
    /// With the embedded simulator: scale of its realistic task durations.
    #[arg(long, default_value_t = 0.05)]
    pub time_factor: f64,
}

/// Serves until Ctrl-C or SIGTERM. On Proxmox the sandboxes then stay for the next start to
/// take over; on the embedded simulator (which ends with the process) they are removed.
pub async fn run(ctx: &Ctx, a: ServeArgs) -> Result<i32, Error> {
    let mut settings = ctx.settings()?;
    let mut sim = None;
    if !settings.has_proxmox() {
        let s = pvesandbox::embedded::start_demo_sim(a.time_factor).await?;
        settings = s.settings(settings)?;
        // A server holds many sandboxes; the simulator's node has room for them.
        settings.instances[0].max_samples = Some(16);
        eprintln!(
            "No Proxmox configured (PROXMOX_HOST / PROXMOX_CONFIG_FILE): serving the embedded simulator at {} (images: debian13)",
            s.sim().url()
        );
        sim = Some(s);
    }
    // The peer's default of one sample at a time suits one eval, not a server many users
    // share; the pool still bounds each instance by its node's memory and CPUs.
    for i in settings
        .instances
        .iter_mut()
        .filter(|i| i.max_samples.is_none())
    {
        i.max_samples = Some(DEFAULT_MAX_SANDBOXES);
        eprintln!(
            "instance {}: up to {DEFAULT_MAX_SANDBOXES} sandboxes at once (max_samples unset), as its node's memory and CPUs allow",
            i.instance_id
        );
    }
    let api_keys: Vec<Secret> = std::env::var(API_KEY_ENV)
        .ok()
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .into_iter()
        .collect();
    let scheme = if a.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    if scheme == "http" && !a.listen.ip().is_loopback() {
        eprintln!(
            "warning: plain HTTP on {}: API keys and endpoint tokens cross the network in clear; give --tls-cert and --tls-key",
            a.listen
        );
    }
    let fleet = Fleet::start(settings).await?;
    let server = Server::start(
        fleet,
        ServeOptions {
            listen: a.listen,
            api_keys,
            unauthenticated: a.unauthenticated,
            public_address: a.public_address,
            tls: a
                .tls_cert
                .zip(a.tls_key)
                .map(|(cert, key)| pvesandbox_server::tls::TlsFiles { cert, key }),
            ..Default::default()
        },
    )
    .await?;
    println!(
        "pvesandbox serve: OpenSandbox API on {scheme}://{}/v1",
        server.local_addr()
    );
    println!(
        "export OPEN_SANDBOX_DOMAIN={} OPEN_SANDBOX_PROTOCOL={scheme}",
        server.local_addr()
    );
    if a.unauthenticated {
        println!("# no API key: anyone on this machine may create sandboxes");
    } else {
        println!("# clients send the key in {API_KEY_ENV} (OPEN-SANDBOX-API-KEY header)");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Io {
            what: "installing a SIGTERM handler".into(),
            source,
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if sim.is_some() {
        // The simulator ends with this process, and its sandboxes with it.
        eprintln!("stopping: removing this server's sandboxes");
        server.stop().await?;
    } else {
        // A restart (an upgrade, systemd) must not cost users their sandboxes.
        eprintln!(
            "stopping: sandboxes stay in Proxmox; the next `pvesandbox serve` takes them over, their expiry removes them otherwise"
        );
        server.stop_keeping().await?;
    }
    drop(sim);
    Ok(0)
}
