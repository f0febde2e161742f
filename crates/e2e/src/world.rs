//! The world a run sees: settings for the library, the environment for `pvesandbox` children,
//! what the target can do, and how to look at Proxmox state (per run, from the API alone).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use pve_client::{Params, PveClient};
use pvesandbox::embedded::{DemoSim, SimOptions};
use pvesandbox::{OwnedVm, RunId, Settings};

use crate::target::{Args, Target};

/// Why a target cannot support a capability (`None`: it can).
#[derive(Debug, Clone, Default)]
pub struct Caps {
    /// SDN zones/vnets that persist.
    pub sdn: Option<&'static str>,
    /// Commands that really run in the guest.
    pub exec: Option<&'static str>,
}

/// The tag fakepve's template gets, for `existing_vm_template_tag`.
const FAKEPVE_TEMPLATE_TAG: &str = "e2e-tpl";

/// Everything a check needs.
pub struct World {
    /// The target.
    pub target: Target,
    /// Settings for [`pvesandbox::Run::task_init`].
    pub settings: Settings,
    /// `vm_source_config` of every VM.
    pub source: serde_json::Value,
    /// What the target supports.
    pub caps: Caps,
    /// The CLI binary.
    pub pvesandbox: PathBuf,
    /// `--config` for children, when the suite wrote one.
    child_config: Option<PathBuf>,
    /// Variables children get / lose.
    child_env: Vec<(String, String)>,
    child_env_remove: Vec<String>,
    /// Scratch directory (children's cwd for sim/fakepve/nested), removed on drop.
    pub workdir: PathBuf,
    /// One client per instance.
    pub clients: Vec<(String, String, PveClient)>,
    /// The embedded simulator (sim target).
    pub sim: Option<DemoSim>,
    fakepve: Option<FakePve>,
    /// Every run the suite made, for the final sweep.
    pub runs: Mutex<Vec<RunId>>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// fakepve as a child process; closing its stdin (drop) also ends it.
struct FakePve {
    child: std::process::Child,
    stdin: Mutex<Option<std::process::ChildStdin>>,
    /// The launcher's stdout, line by line (a reader thread ends at EOF).
    lines: Mutex<std::sync::mpsc::Receiver<String>>,
}

impl FakePve {
    /// Sends a launcher command and returns its reply line.
    fn command(&self, command: &str, reply: &str) -> Result<String> {
        use std::io::Write;
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let w = stdin.as_mut().context("fakepve's stdin is closed")?;
        writeln!(w, "{command}")?;
        w.flush()?;
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| anyhow!("fakepve did not answer {command:?}"))?;
            if line.starts_with(reply) {
                return Ok(line);
            }
            if line.starts_with("ERROR ") {
                bail!("fakepve: {line}");
            }
        }
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        drop(self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "pvesandbox-e2e-{}-{}",
        std::process::id(),
        pvesandbox::owner::unix_now()
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

fn pvesandbox_bin(args: &Args) -> Result<PathBuf> {
    let p = match &args.pvesandbox {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("pvesandbox"))
            .context("no directory for this executable")?,
    };
    if !p.is_file() {
        bail!(
            "the pvesandbox CLI is not at {}: build it first (`cargo build -p pvesandbox-cli`) or pass --pvesandbox PATH",
            p.display()
        );
    }
    Ok(p)
}

/// `{"instances": [instance], "run": …, "images": …}` written for children and the library.
fn write_config(dir: &Path, instance: serde_json::Value, base: &Settings) -> Result<PathBuf> {
    let path = dir.join("pvesandbox-e2e.json");
    let v = serde_json::json!({
        "instances": [instance],
        "run": base.run,
        "images": base.images,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&v)?)?;
    Ok(path)
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Variables that would point a child somewhere else than the suite's target.
const FOREIGN: &[&str] = &[
    "PROXMOX_HOST",
    "PROXMOX_CONFIG_FILE",
    "PVESANDBOX_CONFIG",
    "PROXMOX_TOKEN_ID",
    "PROXMOX_TOKEN_SECRET",
    "PROXMOX_PASSWORD",
    "PROXMOX_FINGERPRINT",
];

impl World {
    /// Sets the target up (starts the simulator or fakepve, loads configuration).
    pub async fn new(args: &Args) -> Result<World> {
        let pvesandbox = pvesandbox_bin(args)?;
        let workdir = scratch()?;
        let defaults = Settings::default();
        let mut w = World {
            target: args.target,
            settings: defaults.clone(),
            source: serde_json::json!({"built_in": "debian13"}),
            caps: Caps::default(),
            pvesandbox,
            child_config: None,
            child_env: Vec::new(),
            child_env_remove: FOREIGN.iter().map(|s| s.to_string()).collect(),
            workdir,
            clients: Vec::new(),
            sim: None,
            fakepve: None,
            runs: Mutex::new(Vec::new()),
        };
        match args.target {
            Target::Sim => {
                let sim = pvesandbox::embedded::start_demo_sim_with(SimOptions {
                    port: 0,
                    realistic: None,
                    process_guests: true,
                    ..Default::default()
                })
                .await?;
                // The demo's settings carry the loopback image mirror; the instance is
                // rebuilt from the simulator's variables so children read the same file.
                let s = sim.settings(defaults.clone())?;
                let env: BTreeMap<String, String> = sim.embedded().env().into_iter().collect();
                let inst = serde_json::json!({
                    "instance_id": "sim",
                    "pool_id": "default",
                    "host": "127.0.0.1",
                    "port": env["PROXMOX_PORT"].parse::<u16>()?,
                    "node": env["PROXMOX_NODE"],
                    "token_id": env["PROXMOX_TOKEN_ID"],
                    "token_secret": env["PROXMOX_TOKEN_SECRET"],
                    "fingerprint": env["PROXMOX_FINGERPRINT"],
                    "image_storage": "local-lvm",
                    "max_samples": 4,
                });
                let cfg = write_config(&w.workdir, inst, &s)?;
                w.settings = Settings::load_from(Some(&cfg), &no_env())?;
                w.child_config = Some(cfg);
                w.sim = Some(sim);
            }
            Target::FakePve => {
                let (fake, inst) = start_fakepve(&w.workdir).await?;
                let cfg = write_config(&w.workdir, inst, &defaults)?;
                w.settings = Settings::load_from(Some(&cfg), &no_env())?;
                w.child_config = Some(cfg);
                w.fakepve = Some(fake);
                w.source = serde_json::json!({"existing_vm_template_tag": FAKEPVE_TEMPLATE_TAG});
                w.caps = Caps {
                    sdn: Some("fakepve 0.5.0 fakes SDN without state (a created zone never lists)"),
                    exec: Some(
                        "fakepve 0.5.0 executes nothing (exec-status answers scripted defaults)",
                    ),
                };
            }
            Target::Env => {
                w.settings = Settings::load(None)?;
                if !w.settings.has_proxmox() {
                    bail!(
                        "--target env: no Proxmox configured; set PROXMOX_HOST (+ PROXMOX_TOKEN_ID/PROXMOX_TOKEN_SECRET or PROXMOX_PASSWORD), PROXMOX_CONFIG_FILE, or [[instances]] in ./pvesandbox.toml"
                    );
                }
                // Children inherit the same environment and working directory.
                w.child_env_remove.clear();
            }
            Target::Nested => {
                let path = args.instances.clone().unwrap_or_else(|| {
                    let home = std::env::var_os("HOME").unwrap_or_default();
                    PathBuf::from(home).join(".cache/pvesandbox/nested-pve/instances.json")
                });
                if !path.is_file() {
                    bail!(
                        "--target nested: no instances file at {}; boot the nested Proxmox with `cargo xtask nested-pve` (it writes that file) or pass --instances PATH",
                        path.display()
                    );
                }
                let path = path.canonicalize()?;
                // The instances file replaces any other Proxmox; our own PVESANDBOX_*
                // variables (image overrides, run settings) still apply, as for children.
                let mut env: BTreeMap<String, String> = std::env::vars()
                    .filter(|(k, _)| !FOREIGN.contains(&k.as_str()))
                    .collect();
                env.insert("PROXMOX_CONFIG_FILE".into(), path.display().to_string());
                w.settings = Settings::load_from(None, &env)?;
                w.child_env = vec![("PROXMOX_CONFIG_FILE".into(), path.display().to_string())];
            }
        }
        if let Some(src) = &args.vm_source {
            w.source = serde_json::from_str(src)?;
        }
        for i in &w.settings.instances {
            let client = i
                .client()
                .map_err(|e| anyhow!("instance {}: {e}", i.instance_id))?;
            w.clients
                .push((i.instance_id.clone(), i.node.clone(), client));
        }
        if args.target == Target::FakePve {
            let (_, node, c) = &w.clients[0];
            c.put(
                &format!("/nodes/{node}/qemu/9000/config"),
                &Params::new().with("tags", FAKEPVE_TEMPLATE_TAG),
            )
            .await
            .context("tagging fakepve's template")?;
        }
        Ok(w)
    }

    /// fakepve only: whether VMs created from now on get a guest agent (`false` holds a
    /// `pvesandbox up` child in its agent wait, a point it can be stopped at).
    pub fn hold_agents(&self, hold: bool) -> Result<()> {
        if let Some(f) = &self.fakepve {
            let (cmd, reply) = if hold {
                ("agents off", "AGENTS off")
            } else {
                ("agents on", "AGENTS on")
            };
            f.command(cmd, reply)?;
        }
        Ok(())
    }

    /// Records a run for the final sweep.
    pub fn track(&self, run: &RunId) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(run.clone());
    }

    /// The runs made so far, in order.
    pub fn runs(&self) -> Vec<RunId> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A fresh run id whose 4-character network key no tracked run shares.
    pub fn new_run(&self) -> RunId {
        loop {
            let r = RunId::random();
            let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            if !runs.iter().any(|o| o.key() == r.key()) {
                drop(runs);
                self.track(&r);
                return r;
            }
        }
    }

    /// A `pvesandbox` command aimed at the target (global flags first).
    pub fn cli(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.pvesandbox);
        if let Some(cfg) = &self.child_config {
            c.arg("--config").arg(cfg);
        }
        for k in &self.child_env_remove {
            c.env_remove(k);
        }
        for (k, v) in &self.child_env {
            c.env(k, v);
        }
        if self.target != Target::Env {
            c.current_dir(&self.workdir);
        }
        c.stdin(Stdio::null()).kill_on_drop(true);
        c
    }

    /// Runs `pvesandbox ARGS` to the end: (status code or -signal, stdout, stderr).
    pub async fn run_cli(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<(i32, Vec<u8>, String)> {
        use tokio::io::AsyncWriteExt;
        let mut c = self.cli();
        c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().context("spawning pvesandbox")?;
        if let Some(bytes) = stdin {
            let mut w = child.stdin.take().context("stdin")?;
            w.write_all(bytes).await?;
            drop(w);
        }
        let out = tokio::time::timeout(Duration::from_secs(900), child.wait_with_output())
            .await
            .map_err(|_| anyhow!("pvesandbox {args:?} did not finish within 900 s"))??;
        Ok((
            exit_code(&out.status),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The `eval` JSON for these VMs on an auto network (or, without SDN, on none).
    pub fn eval(&self, vms: &[serde_json::Value]) -> serde_json::Value {
        let vms: Vec<_> = vms
            .iter()
            .map(|v| {
                let mut v = v.clone();
                let o = v.as_object_mut().expect("a VM is an object");
                o.insert("vm_source_config".into(), self.source.clone());
                o.entry("ram_mb").or_insert(512.into());
                o.entry("vcpus").or_insert(1.into());
                if self.caps.sdn.is_some() {
                    o.insert("nics".into(), serde_json::json!([]));
                }
                v
            })
            .collect();
        let sdn = if self.caps.sdn.is_some() {
            serde_json::Value::Null
        } else {
            "auto".into()
        };
        serde_json::json!({"sdn_config": sdn, "vms_config": vms})
    }

    /// Writes an eval config for a child and returns its path.
    pub fn eval_file(&self, name: &str, eval: &serde_json::Value) -> Result<PathBuf> {
        let p = self.workdir.join(format!("{name}.json"));
        std::fs::write(&p, serde_json::to_vec_pretty(eval)?)?;
        Ok(p)
    }

    /// What of `run` exists in Proxmox, from the API alone.
    pub async fn state_of(&self, run: &RunId) -> Result<RunState> {
        let mut s = RunState::default();
        for (id, _, c) in &self.clients {
            for vm in pvesandbox::owned_vms(c).await? {
                if vm.tagged.run.as_ref() == Some(run) {
                    s.vms.push((id.clone(), vm));
                }
            }
            if self.caps.sdn.is_some() {
                continue;
            }
            for (zone, key, _) in pve_sdn::list_owned_zones(c).await? {
                if key == run.key() {
                    s.zones.push(zone);
                }
            }
            let vnets = c
                .get("/cluster/sdn/vnets", &Params::new().with("pending", true))
                .await?;
            for v in vnets.as_array().into_iter().flatten() {
                // A vnet not yet applied carries its properties under `pending`.
                let prop = |k: &str| {
                    v.get(k)
                        .or_else(|| v.get("pending").and_then(|p| p.get(k)))
                        .and_then(|z| z.as_str())
                        .map(str::to_owned)
                };
                let zone = prop("zone").unwrap_or_default();
                if zone.len() == 8 && zone.starts_with('Z') && &zone[1..5] == run.key() {
                    s.vnets.push(VnetRow {
                        vnet: v["vnet"].as_str().unwrap_or_default().to_owned(),
                        alias: prop("alias"),
                    });
                }
            }
        }
        s.vms.sort_by_key(|(_, v)| v.vmid);
        Ok(s)
    }

    /// A VM's config as `key → value`.
    pub async fn vm_config(
        &self,
        instance: &str,
        node: &str,
        vmid: pve_client::Vmid,
    ) -> Result<BTreeMap<String, String>> {
        let c = self.client(instance)?;
        let v = c
            .get(&format!("/nodes/{node}/qemu/{vmid}/config"), &Params::new())
            .await?;
        Ok(v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect())
    }

    /// The client of an instance.
    pub fn client(&self, instance: &str) -> Result<&PveClient> {
        self.clients
            .iter()
            .find(|(i, _, _)| i == instance)
            .map(|(_, _, c)| c)
            .ok_or_else(|| anyhow!("no instance {instance}"))
    }

    /// Template VMs on every instance, as `(instance, vmid)`.
    pub async fn templates(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for (id, _, c) in &self.clients {
            let v = c
                .get("/cluster/resources", &Params::new().with("type", "vm"))
                .await?;
            for r in v.as_array().into_iter().flatten() {
                let t = r
                    .get("template")
                    .map(|t| t == 1 || t == "1")
                    .unwrap_or(false);
                if t && let Some(vmid) = r.get("vmid").and_then(|v| v.as_u64()) {
                    out.push((id.clone(), vmid));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// VMs that are not templates, on every instance.
    pub async fn non_templates(&self) -> Result<usize> {
        let mut n = 0;
        for (_, _, c) in &self.clients {
            let v = c
                .get("/cluster/resources", &Params::new().with("type", "vm"))
                .await?;
            n += v
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| {
                    !r.get("template")
                        .map(|t| t == 1 || t == "1")
                        .unwrap_or(false)
                })
                .count();
        }
        Ok(n)
    }
}

/// One vnet of a run.
#[derive(Debug, Clone)]
pub struct VnetRow {
    /// Its id.
    pub vnet: String,
    /// Its alias.
    pub alias: Option<String>,
}

/// What of a run exists.
#[derive(Debug, Default)]
pub struct RunState {
    /// VMs, with their instance.
    pub vms: Vec<(String, OwnedVm)>,
    /// SDN zones (applied or pending).
    pub zones: Vec<String>,
    /// Vnets in those zones.
    pub vnets: Vec<VnetRow>,
}

impl RunState {
    /// Nothing at all.
    pub fn is_empty(&self) -> bool {
        self.vms.is_empty() && self.zones.is_empty() && self.vnets.is_empty()
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} VM(s) {:?}, {} zone(s) {:?}, {} vnet(s) {:?}",
            self.vms.len(),
            self.vms.iter().map(|(_, v)| v.vmid).collect::<Vec<_>>(),
            self.zones.len(),
            self.zones,
            self.vnets.len(),
            self.vnets.iter().map(|v| &v.vnet).collect::<Vec<_>>()
        )
    }
}

/// Exit code, or minus the signal that ended the process.
pub fn exit_code(s: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code()
        .or_else(|| s.signal().map(|n| -n))
        .unwrap_or(i32::MIN)
}

fn fakepve_python() -> PathBuf {
    std::env::var_os("FAKEPVE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv-fakepve/bin/python"))
}

/// Starts fakepve through pve-client's launcher (a token, template 9000, agents for new VMs)
/// and returns it with the instance entry pointing at it.
async fn start_fakepve(workdir: &Path) -> Result<(FakePve, serde_json::Value)> {
    let python = fakepve_python();
    if !python.exists() {
        bail!(
            "--target fakepve: no interpreter at {}; create the venv with `cargo xtask venv` or set FAKEPVE_PYTHON",
            python.display()
        );
    }
    let launcher = workspace().join("crates/e2e/fakepve/launch.py");
    let dir = workdir.join("fakepve");
    std::fs::create_dir_all(&dir)?;
    let secret = format!(
        "e2e-{}-{}",
        std::process::id(),
        pvesandbox::owner::unix_now()
    );
    let mut child = std::process::Command::new(&python)
        .arg(&launcher)
        .arg("--workdir")
        .arg(&dir)
        .env("FAKEPVE_TOKEN_ID", "root@pam!e2e")
        .env("FAKEPVE_TOKEN_SECRET", &secret)
        .env("FAKEPVE_PASSWORD", &secret)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr"))?)
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let stdin = child.stdin.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let fake = FakePve {
        child,
        stdin: Mutex::new(stdin),
        lines: Mutex::new(rx),
    };
    // The launcher prints one line (READY or MISSING) first.
    let line = {
        let lines = fake.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default()
    };
    if !line.starts_with("READY ") {
        bail!(
            "fakepve did not start: {:?}; stderr: {}",
            line.trim(),
            std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
        );
    }
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no {k} in {line:?}"))
    };
    let url = field("url=")?;
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow!("no port in {url}"))?;
    let inst = serde_json::json!({
        "instance_id": "fakepve",
        "pool_id": "default",
        "host": "127.0.0.1",
        "port": port,
        "node": "pve1",
        "token_id": "root@pam!e2e",
        "token_secret": secret,
        "fingerprint": field("fingerprint=")?,
        "image_storage": "local-lvm",
        "max_samples": 4,
    });
    Ok((fake, inst))
}
