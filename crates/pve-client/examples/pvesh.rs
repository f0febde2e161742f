//! `pvesh`: call any Proxmox VE API path with pve-client, like PVE's own `pvesh`.
//!
//! ```text
//! export PVE_URL=https://pve.example:8006
//! export PVE_TOKEN_ID='root@pam!ci' PVE_TOKEN_SECRET=...      # or PVE_USER + PVE_PASSWORD
//! export PVE_FINGERPRINT=AA:BB:...                             # or PVE_CA_FILE=..., or PVE_INSECURE=1
//!
//! cargo run -p pve-client --example pvesh -- get /version
//! cargo run -p pve-client --example pvesh -- get /cluster/resources type=vm
//! cargo run -p pve-client --example pvesh -- post /nodes/pve1/qemu/9000/clone newid=101 name=box --wait
//! cargo run -p pve-client --example pvesh -- put /nodes/pve1/qemu/101/config tags=a tags=b
//! cargo run -p pve-client --example pvesh -- delete /nodes/pve1/qemu/101 purge=1 --wait
//! cargo run -p pve-client --example pvesh -- demo
//! ```
//!
//! `get|post|put|delete PATH [key=value ...] [--wait]` prints the response's `data` as pretty
//! JSON. Keys may repeat (PVE's arrays: `command=ls command=-l`). When `data` is a task id
//! (UPID) and `--wait` is given, it waits for the task (up to 10 minutes) and prints its exit
//! status; a failed task exits with status 1 and shows the end of the task log.
//!
//! `demo` runs the core flow (version, clone template `PVE_TEMPLATE` (default 9000) to a free
//! id, start, stop, destroy) against the configured PVE, or, when `PVE_URL` is unset, against
//! an embedded pve-sim.
//!
//! TLS is verified against the system roots unless `PVE_FINGERPRINT` (pin the certificate's
//! SHA-256, as the PVE GUI shows it), `PVE_CA_FILE` (e.g. the node's
//! `/etc/pve/pve-root-ca.pem`) or `PVE_INSECURE=1` (accept anything; tests only) says
//! otherwise. Set at most one of them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use pve_client::{
    CloneOptions, DestroyOptions, Error, Params, PveClient, TaskStatus, Upid, Vmid, WaitOptions,
};
use serde_json::Value;

const USAGE: &str = "\
usage: pvesh get|post|put|delete PATH [key=value ...] [--wait]
       pvesh demo
environment: PVE_URL; PVE_TOKEN_ID + PVE_TOKEN_SECRET or PVE_USER + PVE_PASSWORD;
             at most one of PVE_FINGERPRINT, PVE_CA_FILE, PVE_INSECURE=1";

/// How long `--wait` and the demo wait for one task.
const TASK_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the whole cause chain on one line, no backtrace (this is a CLI).
            eprintln!("pvesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let method = match command.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return Ok(());
        }
        "demo" => return demo().await,
        "get" => pve_client::Method::Get,
        "post" => pve_client::Method::Post,
        "put" => pve_client::Method::Put,
        "delete" => pve_client::Method::Delete,
        other => bail!("unknown command {other:?}\n{USAGE}"),
    };
    let call = Call::parse(method, &args[1..])?;
    let pve = client_from_env()?;
    let data: Value = pve.call(call.method, &call.path, &call.params).await?;
    println!("{}", serde_json::to_string_pretty(&data)?);

    let upid = data.as_str().and_then(|s| s.parse::<Upid>().ok());
    match upid {
        Some(upid) if call.wait => {
            let status = wait(&pve, &upid).await?;
            println!("{}", status.exitstatus.as_deref().unwrap_or("OK"));
        }
        Some(_) => eprintln!("(a task; add --wait to wait for it)"),
        None if call.wait => eprintln!("(--wait ignored: the result is not a task id)"),
        None => {}
    }
    Ok(())
}

/// One parsed command line.
struct Call {
    method: pve_client::Method,
    path: String,
    params: Params,
    wait: bool,
}

impl Call {
    fn parse(method: pve_client::Method, args: &[String]) -> Result<Call> {
        let mut path = None;
        let mut params = Params::new();
        let mut wait = false;
        for arg in args {
            if arg == "--wait" {
                wait = true;
            } else if path.is_none() {
                path = Some(if arg.starts_with('/') {
                    arg.clone()
                } else {
                    format!("/{arg}")
                });
            } else {
                let (key, value) = arg
                    .split_once('=')
                    .ok_or_else(|| anyhow!("{arg:?}: parameters are key=value\n{USAGE}"))?;
                params.push(key, value);
            }
        }
        let path = path.ok_or_else(|| anyhow!("missing PATH, e.g. /version\n{USAGE}"))?;
        Ok(Call {
            method,
            path,
            params,
            wait,
        })
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Builds the client from `PVE_*`; every error names the variable to fix.
fn client_from_env() -> Result<PveClient> {
    let url = env("PVE_URL").ok_or_else(|| {
        anyhow!("PVE_URL is not set: point it at the node, e.g. PVE_URL=https://pve.example:8006")
    })?;
    let mut builder = PveClient::builder().base_url(url);

    builder = match (env("PVE_TOKEN_ID"), env("PVE_USER")) {
        (Some(_), Some(_)) => bail!("set PVE_TOKEN_ID or PVE_USER, not both"),
        (Some(token_id), None) => {
            let secret = env("PVE_TOKEN_SECRET")
                .ok_or_else(|| anyhow!("PVE_TOKEN_ID is set but PVE_TOKEN_SECRET is not"))?;
            builder.api_token(token_id, secret)
        }
        (None, Some(user)) => {
            let password = env("PVE_PASSWORD")
                .ok_or_else(|| anyhow!("PVE_USER is set but PVE_PASSWORD is not"))?;
            builder.password(user, password)
        }
        (None, None) => bail!(
            "no credentials: set PVE_TOKEN_ID and PVE_TOKEN_SECRET (e.g. root@pam!ci and its \
             secret), or PVE_USER and PVE_PASSWORD (e.g. root@pam)"
        ),
    };

    let insecure = match env("PVE_INSECURE").as_deref() {
        None | Some("0" | "false" | "no") => false,
        Some("1" | "true" | "yes") => true,
        Some(other) => {
            bail!("PVE_INSECURE={other:?}: use 1 to accept any certificate, or unset it")
        }
    };
    builder = match (env("PVE_FINGERPRINT"), env("PVE_CA_FILE"), insecure) {
        (None, None, false) => builder,
        (Some(fp), None, false) => builder.fingerprint(&fp),
        (None, Some(ca), false) => builder.ca_file(ca),
        (None, None, true) => builder.danger_accept_invalid_certs(),
        _ => bail!("set at most one of PVE_FINGERPRINT, PVE_CA_FILE and PVE_INSECURE=1"),
    };

    builder.build().map_err(|e| match e {
        Error::Config { field, message } => {
            let var = match field {
                "base_url" => "PVE_URL",
                "fingerprint" => "PVE_FINGERPRINT",
                "ca_file" => "PVE_CA_FILE",
                "credentials" => "PVE_TOKEN_ID/PVE_USER",
                _ => "PVE_*",
            };
            anyhow!("{var}: {message}")
        }
        other => other.into(),
    })
}

/// Waits for a task; a failed task becomes an error that shows the end of its log.
async fn wait(pve: &PveClient, upid: &Upid) -> Result<TaskStatus> {
    match pve
        .wait_task(upid, WaitOptions::with_timeout(TASK_TIMEOUT))
        .await
    {
        Ok(status) => Ok(status),
        Err(Error::Task {
            exitstatus,
            log_tail,
            ..
        }) => {
            for line in &log_tail {
                eprintln!("  | {line}");
            }
            bail!("task {upid} failed: {exitstatus}")
        }
        Err(e) => Err(e.into()),
    }
}

/// Clone, start, stop, destroy: against `PVE_URL` when set, else an embedded pve-sim.
async fn demo() -> Result<()> {
    // Keeps the simulator serving until the demo ends.
    let mut _sim = None;
    let pve = if env("PVE_URL").is_some() {
        client_from_env()?
    } else {
        let sim = pve_sim::PveSim::start(pve_sim::SimConfig::new()).await?;
        sim.add_vm(pve_sim::VmSeed::template(9000, "tpl-demo"));
        println!("no PVE_URL: using an embedded pve-sim at {}", sim.url());
        let pve = PveClient::builder()
            .base_url(sim.url())
            .password("root@pam", "secret")
            .fingerprint(sim.fingerprint().unwrap_or_default())
            .build()?;
        _sim = Some(sim);
        pve
    };
    let template: Vmid = env("PVE_TEMPLATE")
        .as_deref()
        .unwrap_or("9000")
        .parse()
        .map_err(|e| anyhow!("PVE_TEMPLATE: {e}"))?;

    let version = pve.version().await?;
    println!("PVE {} (release {})", version.version, version.release);
    let node_name = match env("PVE_NODE") {
        Some(n) => n,
        None => pve
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.status == "online")
            .map(|n| n.node)
            .context("no online node; set PVE_NODE")?,
    };
    let node = pve.node(&node_name);
    let newid = pve.next_id().await?;
    println!("clone {template} -> {newid} on {node_name}");
    let clone = CloneOptions::new(newid).name(format!("pvesh-demo-{newid}"));
    wait(&pve, &node.qemu(template).clone_vm(&clone).await?).await?;
    let vm = node.qemu(newid);
    println!("start {newid}");
    wait(&pve, &vm.start().await?).await?;
    println!("status {newid}: {}", vm.status().await?.status);
    println!("stop {newid}");
    wait(&pve, &vm.stop().await?).await?;
    println!("destroy {newid}");
    wait(&pve, &vm.destroy(DestroyOptions::thorough()).await?).await?;
    println!("done");
    Ok(())
}
