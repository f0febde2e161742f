//! The CLI's commands other than `demo` and `doctor`.
//!
//! `exec`, `cp`, `ls`, `down` and `cleanup` work from Proxmox state alone (tags and VM names),
//! so they work from any shell, after `up` exited, and after a crash.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use guest_agent::{ExecRequest, GuestAgent};
use pvesandbox::owner::parse_vm_name;
use pvesandbox::{CleanupReport, CleanupTarget, Error, EvalConfig, Run, RunId, SampleId, Settings};

/// What every command gets from the global flags.
pub struct Ctx {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--json`.
    pub json: bool,
}

impl Ctx {
    /// Loads the settings (defaults < file < environment).
    pub fn settings(&self) -> Result<Settings, Error> {
        Settings::load(self.config.as_deref())
    }
    /// Settings that name at least one Proxmox, or a clear error saying how to name one.
    pub fn proxmox_settings(&self) -> Result<Settings, Error> {
        let s = self.settings()?;
        if s.has_proxmox() {
            Ok(s)
        } else {
            Err(Error::Config {
                field: "instances".into(),
                value: String::new(),
                fix: "no Proxmox configured: set PROXMOX_HOST (and PROXMOX_PASSWORD or PROXMOX_TOKEN_ID/SECRET), PROXMOX_CONFIG_FILE, or [[instances]] in pvesandbox.toml; `pvesandbox sim` serves a simulator and prints the variables".into(),
            })
        }
    }
}

/// `up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Eval config (the peer's `ProxmoxSandboxEnvironmentConfig` as JSON, YAML or TOML);
    /// default: one ubuntu24.04 VM on an auto network.
    #[arg(long, value_name = "PATH")]
    pub eval: Option<PathBuf>,
    /// Use this run id instead of a fresh one, so a supervisor knows what to clean up even
    /// if this process dies before printing it.
    #[arg(long)]
    pub run: Option<RunId>,
}

/// `exec`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["run", "sample"]))]
pub struct ExecArgs {
    /// The run (as printed by `up` / `ls`).
    #[arg(long)]
    pub run: Option<RunId>,
    /// Or one sample of a run, by its id (`s<sample>.<run>`, as `up` prints it).
    #[arg(long)]
    pub sample: Option<SampleId>,
    /// The sandbox: its name, or `<name>.s<sample>` for one sample's when the run has several
    /// (what Inspect's running-samples panel shows).
    #[arg(long, default_value = "default")]
    pub vm: String,
    /// Run as this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Working directory.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment variables, `KEY=VALUE`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Timeout in seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Pass this process's stdin to the command.
    #[arg(long)]
    pub stdin: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// `cp`.
#[derive(Args, Debug)]
pub struct CpArgs {
    /// Source: a local path, `RUN:VM:/path` or `SAMPLE:VM:/path`.
    pub from: String,
    /// Destination: a local path, `RUN:VM:/path` or `SAMPLE:VM:/path`.
    pub to: String,
}

/// `down`.
#[derive(Args, Debug)]
pub struct DownArgs {
    /// The run to remove.
    pub run: RunId,
}

/// `cleanup`.
#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// Remove everything of this run.
    #[arg(long, conflicts_with = "expired")]
    pub run: Option<RunId>,
    /// Remove everything whose expiry passed and whose owner is not running.
    #[arg(long)]
    pub expired: bool,
}

/// `gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Eval configs whose templates stay (repeatable). Without any, every built-in image at
    /// its current pin stays and everything else of ours goes (OVA imports, old pins).
    #[arg(long, value_name = "PATH")]
    pub keep: Vec<PathBuf>,
}

/// `sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Port on 127.0.0.1 (0 picks one).
    #[arg(long, default_value_t = 8006)]
    pub port: u16,
    /// Realistic task durations scaled by this factor; instant when absent.
    #[arg(long, value_name = "FACTOR")]
    pub realistic: Option<f64>,
    /// Guests that run commands (Linux namespaces); without it, guests answer pings only.
    #[arg(long)]
    pub process_guests: bool,
    /// VMs, templates and storage content to start with (YAML, JSON or TOML by extension;
    /// see `pve_sim::Seed`).
    #[arg(long, value_name = "FILE")]
    pub seed: Option<std::path::PathBuf>,
}

/// Reads an eval config file by extension (JSON, YAML, TOML).
pub fn load_eval(path: Option<&std::path::Path>) -> Result<EvalConfig, Error> {
    match path {
        None => Ok(EvalConfig::default()),
        Some(p) => EvalConfig::from_file(p),
    }
}

/// `up`: one sample, kept.
pub async fn up(ctx: &Ctx, a: UpArgs) -> Result<i32, Error> {
    let settings = ctx.proxmox_settings()?;
    let eval = load_eval(a.eval.as_deref())?;
    let opts = pvesandbox::TaskOptions {
        run: a.run,
        ..Default::default()
    };
    let task = Run::task_init(settings, eval, opts).await?;
    let sample = task.sample_init().await?;
    let vms: Vec<_> = sample
        .sandboxes()
        .iter()
        .map(|v| serde_json::json!({"name": v.name(), "vmid": v.vmid(), "node": v.node(), "instance": v.instance()}))
        .collect();
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({
                "run": task.run_id().as_str(),
                "sample": sample.id().to_string(),
                "sandboxes": vms,
            })
        );
    } else {
        println!("run {} (sample {})", task.run_id(), sample.id());
        for v in sample.sandboxes() {
            println!(
                "  {:<12} vm {} on {}/{}",
                v.name(),
                v.vmid(),
                v.instance(),
                v.node()
            );
        }
        println!(
            "exec: pvesandbox exec --sample {} -- uname -a\nremove: pvesandbox down {}",
            sample.id(),
            task.run_id()
        );
    }
    // Kept on purpose: `down` or `cleanup --expired` removes it.
    sample.detach();
    Ok(0)
}

/// Where a command goes: a run (any of its samples) or one sample.
#[derive(Debug, Clone)]
enum Target {
    Run(RunId),
    Sample(SampleId),
}

impl Target {
    /// `s<sample>.<run>` is a sample, anything else must be a run id.
    fn parse(s: &str) -> Option<Target> {
        match s.parse::<SampleId>() {
            Ok(id) => Some(Target::Sample(id)),
            Err(_) => s.parse().ok().map(Target::Run),
        }
    }
}

/// A sandbox, found from PVE state: in a run by `name` (the first sample having it) or
/// `name.s<sample>`; in a sample by `name`.
async fn find(settings: &Settings, target: &Target, name: &str) -> Result<GuestAgent, Error> {
    let run = match target {
        Target::Sample(id) => {
            let sample = pvesandbox::attach(&settings.instances, id).await?;
            return Ok(sample.get(name)?.agent.clone());
        }
        Target::Run(run) => run,
    };
    let samples = pvesandbox::locate(&settings.instances, run).await?;
    if samples.is_empty() {
        return Err(Error::NoSuchRun {
            run: run.to_string(),
        });
    }
    let mut known = Vec::new();
    for s in &samples {
        for vm in &s.vms {
            if vm.name == name || format!("{}.s{}", vm.name, s.id.seq) == name {
                return Ok(vm.agent.clone());
            }
            known.push(vm.name.clone());
        }
    }
    Err(Error::NoSuchSandbox {
        name: name.into(),
        known,
    })
}

/// `exec`.
pub async fn exec(ctx: &Ctx, a: ExecArgs) -> Result<i32, Error> {
    let settings = ctx.proxmox_settings()?;
    let target = match (a.run, a.sample) {
        (_, Some(id)) => Target::Sample(id),
        (Some(run), None) => Target::Run(run),
        (None, None) => {
            return Err(Error::Config {
                field: "--run".into(),
                value: String::new(),
                fix: "name the run (--run) or one sample (--sample)".into(),
            });
        }
    };
    let agent = find(&settings, &target, &a.vm).await?;
    let mut req = ExecRequest::new(a.argv);
    if let Some(u) = a.user {
        req = req.user(u);
    }
    if let Some(c) = a.cwd {
        req = req.cwd(c);
    }
    if let Some(t) = a.timeout {
        req = req.timeout(Duration::from_secs(t));
    }
    for kv in a.env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Error::Config {
                field: "--env".into(),
                value: kv,
                fix: "write KEY=VALUE".into(),
            });
        };
        req = req.env(k, v);
    }
    if a.stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|source| Error::Io {
                what: "reading stdin".into(),
                source,
            })?;
        req = req.stdin(buf);
    }
    let out = agent.exec(&req).await?;
    if ctx.json {
        println!(
            "{}",
            serde_json::json!({
                "status": out.status,
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
                "stdout_truncated": out.stdout_truncated,
                "stderr_truncated": out.stderr_truncated,
            })
        );
    } else {
        let _ = std::io::stdout().write_all(&out.stdout);
        let _ = std::io::stderr().write_all(&out.stderr);
    }
    Ok(out.status)
}

/// `RUN:VM:/path` or `SAMPLE:VM:/path`, or `None` for a local path.
fn remote(spec: &str) -> Option<(Target, String, String)> {
    let (target, rest) = spec.split_once(':')?;
    let (vm, path) = rest.split_once(':')?;
    Some((Target::parse(target)?, vm.to_owned(), path.to_owned()))
}

/// `cp`.
pub async fn cp(ctx: &Ctx, a: CpArgs) -> Result<i32, Error> {
    let settings = ctx.proxmox_settings()?;
    let io_err = |what: &str, path: &str, e: std::io::Error| Error::Config {
        field: what.into(),
        value: path.into(),
        fix: e.to_string(),
    };
    let bytes = match (remote(&a.from), remote(&a.to)) {
        (None, Some((run, vm, path))) => {
            let data = std::fs::read(&a.from).map_err(|e| io_err("from", &a.from, e))?;
            find(&settings, &run, &vm)
                .await?
                .write_file(&path, &data)
                .await?;
            data.len()
        }
        (Some((run, vm, path)), None) => {
            let data = find(&settings, &run, &vm)
                .await?
                .read_file(&path, None)
                .await?;
            std::fs::write(&a.to, &data).map_err(|e| io_err("to", &a.to, e))?;
            data.len()
        }
        _ => {
            return Err(Error::Config {
                field: "cp".into(),
                value: format!("{} {}", a.from, a.to),
                fix: "exactly one side must be RUN:VM:/path, the other a local path".into(),
            });
        }
    };
    if ctx.json {
        println!("{}", serde_json::json!({"bytes": bytes}));
    } else {
        println!("{bytes} bytes");
    }
    Ok(0)
}

/// `ls`.
pub async fn ls(ctx: &Ctx) -> Result<i32, Error> {
    let settings = ctx.proxmox_settings()?;
    let mut rows = Vec::new();
    for i in &settings.instances {
        let client = i.client().map_err(Error::from_pool)?;
        for vm in pvesandbox::owned_vms(&client).await? {
            let (name, sample) = parse_vm_name(&vm.name)
                .map(|(n, s, _)| (n, s.to_string()))
                .unwrap_or_else(|| (vm.name.clone(), "?".into()));
            rows.push(serde_json::json!({
                "run": vm.tagged.run.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                "sample": sample,
                "name": name,
                "instance": i.instance_id,
                "node": vm.node,
                "vmid": vm.vmid,
                "status": vm.status,
                "expires": vm.tagged.expires,
            }));
        }
    }
    if ctx.json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(0);
    }
    println!(
        "{:<11} {:>6} {:<12} {:<10} {:<8} {:>8} {:<8} EXPIRES IN",
        "RUN", "SAMPLE", "NAME", "INSTANCE", "NODE", "VMID", "STATUS"
    );
    let now = pvesandbox::owner::unix_now();
    for r in rows {
        let exp = r["expires"]
            .as_u64()
            .map(|e| {
                if e <= now {
                    "expired".to_owned()
                } else {
                    format!("{} min", (e - now) / 60)
                }
            })
            .unwrap_or_default();
        println!(
            "{:<11} {:>6} {:<12} {:<10} {:<8} {:>8} {:<8} {exp}",
            r["run"].as_str().unwrap_or(""),
            r["sample"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["instance"].as_str().unwrap_or(""),
            r["node"].as_str().unwrap_or(""),
            r["vmid"],
            r["status"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

fn print_report(ctx: &Ctx, r: &CleanupReport) {
    if ctx.json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    println!(
        "removed {} VM(s), {} network(s); kept {}; failed {}",
        r.vms.len(),
        r.zones.len(),
        r.kept.len(),
        r.failed.len()
    );
    for v in r.vms.iter().chain(&r.zones) {
        println!("  removed {v}");
    }
    for k in &r.kept {
        println!("  kept    {k}");
    }
    for f in &r.failed {
        println!("  FAILED  {f}");
    }
}

/// `down`.
pub async fn down(ctx: &Ctx, a: DownArgs) -> Result<i32, Error> {
    cleanup(
        ctx,
        CleanupArgs {
            run: Some(a.run),
            expired: false,
        },
    )
    .await
}

/// `cleanup`.
pub async fn cleanup(ctx: &Ctx, a: CleanupArgs) -> Result<i32, Error> {
    let target = match (a.run, a.expired) {
        (Some(r), _) => CleanupTarget::Run(r),
        (None, true) => CleanupTarget::Expired,
        (None, false) => {
            return Err(Error::Config {
                field: "cleanup".into(),
                value: String::new(),
                fix: "say what to remove: --run ID or --expired".into(),
            });
        }
    };
    let settings = ctx.proxmox_settings()?;
    let report = pvesandbox::cleanup(&settings.instances, &target).await?;
    print_report(ctx, &report);
    report.into_result().map(|_| 0)
}

/// `gc`.
pub async fn gc(ctx: &Ctx, a: GcArgs) -> Result<i32, Error> {
    let settings = ctx.proxmox_settings()?;
    let keep: Vec<pvesandbox_templates::VmSource> = if a.keep.is_empty() {
        pvesandbox_templates::BuiltIn::ALL
            .into_iter()
            .map(pvesandbox_templates::VmSource::BuiltIn)
            .collect()
    } else {
        let mut v = Vec::new();
        for p in &a.keep {
            v.extend(
                EvalConfig::from_file(p)?
                    .vms_config
                    .into_iter()
                    .map(|vm| vm.vm_source_config),
            );
        }
        v
    };
    let reports = pvesandbox::gc_templates(&settings, &keep).await?;
    if ctx.json {
        let v: Vec<_> = reports
            .iter()
            .map(|(i, r)| {
                serde_json::json!({
                    "instance": i,
                    "templates": r.templates.iter().map(|v| v.0).collect::<Vec<_>>(),
                    "volumes": r.volumes,
                    "in_use": r.in_use.iter().map(|v| v.0).collect::<Vec<_>>(),
                    "not_permitted": r.not_permitted,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        for (i, r) in &reports {
            println!(
                "{i}: removed {} template(s) {:?}, {} file(s) {:?}; kept {} with linked clones",
                r.templates.len(),
                r.templates.iter().map(|v| v.0).collect::<Vec<_>>(),
                r.volumes.len(),
                r.volumes,
                r.in_use.len()
            );
            if !r.not_permitted.is_empty() {
                println!(
                    "{i}: kept {} unneeded file(s) {:?}: the token may not delete volumes there (`pvesandbox doctor` prints the grant: roles {} and {} on that storage)",
                    r.not_permitted.len(),
                    r.not_permitted,
                    pvesandbox::preflight::ROLE,
                    pvesandbox::preflight::STORAGE_ROLE
                );
            }
        }
    }
    Ok(0)
}

/// `sim`: serves until Ctrl-C, printing the variables that point pvesandbox at it.
pub async fn sim(a: SimArgs) -> Result<i32, Error> {
    // Read the seed before anything starts, so a bad file fails fast and leaves nothing.
    let seed = a.seed.as_deref().map(load_seed).transpose()?;
    let sim = pvesandbox::embedded::start_demo_sim_with(pvesandbox::embedded::SimOptions {
        port: a.port,
        realistic: a.realistic,
        process_guests: a.process_guests,
        ..Default::default()
    })
    .await?;
    if let (Some(seed), Some(path)) = (&seed, &a.seed) {
        sim.sim().seed(seed).map_err(|e| Error::Config {
            field: format!("sim --seed ({})", e.field),
            value: path.display().to_string(),
            fix: e.message,
        })?;
    }
    println!("pve-sim listening on {}", sim.sim().url());
    println!("# an API token with the privileges pvesandbox needs, and the built-in image mirror:");
    for (k, v) in sim.env() {
        println!("export {k}={v}");
    }
    let (user, password) = sim.embedded().password_login();
    let (name, realm) = user.split_once('@').unwrap_or((user, "pam"));
    println!("# or a password login as the administrator ({user}, every privilege):");
    println!("#   export PROXMOX_USER={name} PROXMOX_REALM={realm} PROXMOX_PASSWORD={password}");
    println!("#   (and unset PROXMOX_TOKEN_ID PROXMOX_TOKEN_SECRET)");
    // SIGTERM (what service managers and `kill` send) stops it as Ctrl-C does: dropping the
    // simulator powers its guests off and removes their directories.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Config {
            field: "sim".into(),
            value: e.to_string(),
            fix: "cannot install a SIGTERM handler; stop the simulator with Ctrl-C".into(),
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(sim);
    Ok(0)
}

/// Reads a `sim --seed` file by extension (YAML, TOML, else JSON).
fn load_seed(path: &std::path::Path) -> Result<pve_sim::Seed, Error> {
    use figment::Figment;
    use figment::providers::{Format, Json, Toml, Yaml};
    let bad = |fix: String| Error::Config {
        field: "sim --seed".into(),
        value: path.display().to_string(),
        fix,
    };
    if !path.is_file() {
        return Err(bad("no such file".into()));
    }
    let fig = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => Figment::from(Yaml::file_exact(path)),
        Some("toml") => Figment::from(Toml::file_exact(path)),
        _ => Figment::from(Json::file_exact(path)),
    };
    fig.extract().map_err(|e| bad(e.to_string()))
}
