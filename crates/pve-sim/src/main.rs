//! `pve-sim`: run the Proxmox VE simulator for humans (demos, trying clients by hand).
//!
//! ```text
//! cargo run -p pve-sim -- --port 8006 --realistic 0.2
//! ```

use std::net::SocketAddr;

use clap::Parser;
use pve_sim::{LatencyProfile, PveSim, Seed, SimConfig, VmSeed};

/// Serve a simulated Proxmox VE API on loopback.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to bind; only loopback addresses are accepted.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8006)]
    port: u16,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    http: bool,
    /// Realistic task durations, scaled by this factor (e.g. 0.2); instant when absent.
    #[arg(long, value_name = "FACTOR")]
    realistic: Option<f64>,
    /// Node names, comma-separated.
    #[arg(long, default_value = "pve1", value_delimiter = ',')]
    nodes: Vec<String>,
    /// Password of root@pam.
    #[arg(
        long,
        env = "PVE_SIM_PASSWORD",
        default_value = "secret",
        hide_env_values = true
    )]
    password: String,
    /// Create template VMs with these ids (9000 by default).
    #[arg(long, default_value = "9000", value_delimiter = ',')]
    templates: Vec<u32>,
    /// VMs, templates and storage files to start with, as JSON (`pve_sim::Seed`).
    #[arg(long, value_name = "FILE")]
    seed: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    if !args.bind.is_loopback() {
        eprintln!(
            "pve-sim: refusing to bind {}: only loopback addresses are allowed",
            args.bind
        );
        std::process::exit(2);
    }
    let mut cfg =
        SimConfig::new().nodes(&args.nodes.iter().map(String::as_str).collect::<Vec<_>>());
    cfg.users = vec![("root@pam".into(), args.password)];
    if let Some(f) = args.realistic {
        cfg = cfg.latency(LatencyProfile::Realistic { time_factor: f });
    }
    if args.http {
        cfg = cfg.plain_http();
    }
    // A seed that does not parse fails before anything listens.
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            match Seed::from_json(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("pve-sim: --seed {}: {e}", path.display());
                    std::process::exit(2);
                }
            }
        }
        None => None,
    };
    let sim = PveSim::start_on(cfg, SocketAddr::new(args.bind, args.port)).await?;
    if let Some(seed) = &seed
        && let Err(e) = sim.seed(seed)
    {
        eprintln!("pve-sim: --seed: {e}");
        std::process::exit(2);
    }
    for id in &args.templates {
        sim.add_vm(VmSeed::template(*id, &format!("template-{id}")));
    }
    println!("pve-sim listening on {}", sim.url());
    if let Some(fp) = sim.fingerprint() {
        println!("fingerprint {fp}");
    }
    println!("user root@pam, token {}", sim.config().tokens[0].0);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
