//! The `pvesandbox` command line: demo, up, exec, cp, ls, down, cleanup, doctor, sim.
//!
//! Exit codes: 0 success; 1 the command ran but reported failure (a failed check, a demo
//! assertion); 2 bad configuration or arguments; 3 no such run/sandbox; 4 Proxmox or pool
//! error (unreachable, refused, locked, no capacity); 5 guest agent error; 7 something was
//! left behind (run `pvesandbox cleanup`); 8 timeout. A failed sample creation exits with its
//! cause's code, and any code but 7 means it removed everything it had made. `exec` exits
//! with the command's own status. Codes come from `pvesandbox::ErrorKind::exit_code`.

mod commands;
mod demo;
mod doctor;
mod progress;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Disposable, isolated Proxmox VE sandboxes for AI agents.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Config file (TOML, YAML or JSON); default: $PVESANDBOX_CONFIG or ./pvesandbox.toml.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// More logs (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 check failed, 2 bad configuration, 3 no such run or sandbox, 4 Proxmox/pool error, 5 guest agent error, 7 something left behind (run `pvesandbox cleanup`), 8 timeout; a failed `up` exits with its cause's code; `exec` returns the command's status.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the whole product working: two samples of two VMs each on their own networks.
    ///
    /// Without a configured Proxmox it starts the embedded simulator.
    Demo(demo::DemoArgs),
    /// Create one sample from an eval config and keep it until `down` (or its expiry).
    Up(commands::UpArgs),
    /// Run a command in a sandbox of a run.
    Exec(commands::ExecArgs),
    /// Copy a file into or out of a sandbox: `cp ./a RUN:VM:/path` or `cp RUN:VM:/path ./a`.
    Cp(commands::CpArgs),
    /// List runs and their VMs on every configured instance.
    Ls,
    /// Remove everything of one run.
    Down(commands::DownArgs),
    /// Remove what runs left behind: one run (`--run`), or everything expired (`--expired`).
    Cleanup(commands::CleanupArgs),
    /// Remove templates and imported images no eval needs any more.
    Gc(commands::GcArgs),
    /// Check that a Proxmox is ready for pvesandbox (version, privileges, storage, SDN, firewall).
    Doctor,
    /// Serve the Proxmox VE simulator on loopback (for trying clients by hand).
    Sim(commands::SimArgs),
    /// Serve OpenSandbox's API (lifecycle and execd) over Proxmox VMs; on the embedded
    /// simulator when no Proxmox is configured. The API key comes from OPEN_SANDBOX_API_KEY.
    Serve(serve::ServeArgs),
}

fn init_logs(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,pvesandbox=info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    init_logs(cli.verbose);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ctx = commands::Ctx {
        config: cli.config,
        json: cli.json,
    };
    let code = rt.block_on(async move {
        let r = match cli.command {
            Command::Demo(a) => demo::run(&ctx, a).await,
            Command::Up(a) => commands::up(&ctx, a).await,
            Command::Exec(a) => commands::exec(&ctx, a).await,
            Command::Cp(a) => commands::cp(&ctx, a).await,
            Command::Ls => commands::ls(&ctx).await,
            Command::Down(a) => commands::down(&ctx, a).await,
            Command::Cleanup(a) => commands::cleanup(&ctx, a).await,
            Command::Gc(a) => commands::gc(&ctx, a).await,
            Command::Doctor => doctor::run(&ctx).await,
            Command::Sim(a) => commands::sim(a).await,
            Command::Serve(a) => serve::run(&ctx, a).await,
        };
        match r {
            Ok(code) => code,
            Err(e) => {
                if ctx.json {
                    println!(
                        "{}",
                        serde_json::json!({"error": e.to_string(), "exit_code": e.exit_code(), "hint": e.hint()})
                    );
                } else {
                    eprintln!("pvesandbox: {e}");
                    if let Some(h) = e.hint() {
                        eprintln!("hint: {h}");
                    }
                }
                e.exit_code()
            }
        }
    });
    std::process::exit(code);
}
