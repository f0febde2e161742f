//! The checks, in the order they run. Each is a named step with its own wall time; a check
//! the target cannot support is skipped with the reason.
//!
//! Library checks call `pvesandbox::Run` directly; CLI checks run the `pvesandbox`
//! binary as a child aimed at the same Proxmox. Every assertion is made against Proxmox state
//! read through the API (per run: VMs by tag, zones and vnets by the run's key), so the same
//! check means the same thing on every target.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use guest_agent::ExecRequest;
use pvesandbox::{EvalConfig, Run, RunId, Sample, TaskOptions};

use crate::report::{CheckResult, Outcome};
use crate::target::Target;
use crate::world::{RunState, World, exit_code};

/// What a check needs beyond VMs, clones, tags, config and cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Persistent SDN zones and vnets.
    Sdn,
    /// Commands that really run.
    Exec,
    /// The simulator's request log.
    RequestLog,
    /// A way to hold a child between its clone and its start.
    Pause,
}

/// Runs the checks and collects their results.
pub struct Suite<'a> {
    world: &'a World,
    only: &'a [String],
    /// Results so far, in order.
    pub results: Vec<CheckResult>,
}

impl<'a> Suite<'a> {
    /// A suite over `world`, restricted to names containing one of `only` (all when empty).
    pub fn new(world: &'a World, only: &'a [String]) -> Suite<'a> {
        Suite {
            world,
            only,
            results: Vec::new(),
        }
    }

    fn wanted(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }

    fn skip_reason(&self, needs: &[Need]) -> Option<String> {
        let w = self.world;
        needs.iter().find_map(|n| match n {
            Need::Sdn => w.caps.sdn.map(str::to_owned),
            Need::Exec => w.caps.exec.map(str::to_owned),
            Need::RequestLog => w
                .sim
                .is_none()
                .then(|| format!("needs the simulator's request log; {} has none", w.target)),
            Need::Pause => (w.target == Target::FakePve).then(|| {
                "fakepve finishes a clone at once and cannot be slowed (time scale 0), so a child cannot be caught between clone and start; crash@start covers the kill with VMs present".to_owned()
            }),
        })
    }

    async fn check<Fut>(&mut self, name: &str, needs: &[Need], f: impl FnOnce() -> Fut)
    where
        Fut: Future<Output = Result<String>>,
    {
        if self.wanted(name) {
            self.check_always(name, needs, f).await;
        }
    }

    /// [`Suite::check`] even when `--only` leaves it out (setup others depend on).
    async fn check_always<Fut>(&mut self, name: &str, needs: &[Need], f: impl FnOnce() -> Fut)
    where
        Fut: Future<Output = Result<String>>,
    {
        let t = Instant::now();
        let runs_before = self.world.runs().len();
        let (outcome, detail) = match self.skip_reason(needs) {
            Some(why) => (Outcome::Skip(why), String::new()),
            None => match f().await {
                Ok(detail) => (Outcome::Pass, detail),
                Err(e) => {
                    // A failed check may stop before its own cleanup; sweep its runs so the
                    // next checks start from a clean cluster (a passing check is never swept,
                    // so a leak there still fails final.nothing_left).
                    let swept = self.sweep(runs_before).await;
                    (Outcome::Fail(format!("{e:#}{swept}")), String::new())
                }
            },
        };
        let r = CheckResult {
            name: name.into(),
            target: self.world.target.to_string(),
            outcome,
            seconds: t.elapsed().as_secs_f64(),
            detail,
        };
        eprintln!(
            "e2e: {:<32} {} ({:.2} s){}",
            r.name,
            r.outcome.word(),
            r.seconds,
            match &r.outcome {
                Outcome::Pass => String::new(),
                Outcome::Fail(w) | Outcome::Skip(w) => format!(": {w}"),
            }
        );
        self.results.push(r);
    }

    async fn sweep(&self, from: usize) -> String {
        let runs = self.world.runs();
        let mut notes = String::new();
        for r in &runs[from..] {
            let target = pvesandbox::CleanupTarget::Run(r.clone());
            match pvesandbox::cleanup(&self.world.settings.instances, &target).await {
                Ok(rep) if rep.vms.is_empty() && rep.zones.is_empty() && rep.failed.is_empty() => {}
                Ok(rep) => {
                    notes += &format!(
                        " [swept run {r}: {} VM(s), {} zone(s), {} failure(s)]",
                        rep.vms.len(),
                        rep.zones.len(),
                        rep.failed.len()
                    )
                }
                Err(e) => notes += &format!(" [sweeping run {r} failed: {e}]"),
            }
        }
        notes
    }

    /// Every check, in order.
    pub async fn run_all(&mut self) {
        let w = self.world;
        self.check("templates.ensure_idempotent", &[], || templates(w))
            .await;
        self.check("lifecycle.sample", &[], || lifecycle(w)).await;
        self.check("network.auto", &[Need::Sdn], || network_auto(w))
            .await;
        self.check("network.custom_topology", &[Need::Sdn], || topology(w))
            .await;
        self.check("samples.multi_vm", &[], || multi_vm(w)).await;
        self.check("samples.await_before_next_vm", &[Need::RequestLog], || {
            await_order(w)
        })
        .await;
        self.exec_group().await;
        self.check("cleanup.ctrl_c", &[], || {
            killed(w, Signal::Int, Point::Clone)
        })
        .await;
        for p in [Point::Clone, Point::Network, Point::Start] {
            let needs: &[Need] = match p {
                Point::Network => &[Need::Sdn],
                Point::Clone => &[Need::Pause],
                Point::Start => &[],
            };
            self.check(&format!("cleanup.crash@{}", p.name()), needs, || {
                killed(w, Signal::Kill, p)
            })
            .await;
        }
        self.check("runs.concurrent_isolated", &[], || concurrent(w))
            .await;
        self.check("final.nothing_left", &[], || nothing_left(w))
            .await;
    }

    /// The exec and file checks share one sample (library and CLI).
    async fn exec_group(&mut self) {
        const NAMES: [&str; 12] = [
            "exec.exit_codes",
            "exec.stdin",
            "exec.env",
            "exec.cwd",
            "exec.timeout",
            "exec.user",
            "files.binary",
            "files.non_ascii_path",
            "cli.exec",
            "cli.exec_stdin",
            "cli.cp",
            "exec.sample_cleanup",
        ];
        if !NAMES.iter().any(|n| self.wanted(n)) {
            return;
        }
        let w = self.world;
        let mut up: Option<(Run, Sample)> = None;
        let mut setup_err = None;
        self.check_always("exec.sample_up", &[Need::Exec], || async {
            match exec_sample(w).await {
                Ok(s) => {
                    up = Some(s);
                    Ok(String::new())
                }
                Err(e) => {
                    setup_err = Some(format!("{e:#}"));
                    Err(e)
                }
            }
        })
        .await;
        macro_rules! on_sample {
            ($name:expr, $f:expr) => {{
                let up = &up;
                let setup_err = &setup_err;
                self.check($name, &[Need::Exec], || async move {
                    match up {
                        Some((task, sample)) => $f(w, task, sample).await,
                        None => Err(anyhow!(
                            "no sample: exec.sample_up failed ({})",
                            setup_err.as_deref().unwrap_or("not run")
                        )),
                    }
                })
                .await;
            }};
        }
        on_sample!("exec.exit_codes", exit_codes);
        on_sample!("exec.stdin", stdin);
        on_sample!("exec.env", env);
        on_sample!("exec.cwd", cwd);
        on_sample!("exec.timeout", timeout);
        on_sample!("exec.user", user);
        on_sample!("files.binary", binary_files);
        on_sample!("files.non_ascii_path", non_ascii_path);
        on_sample!("cli.exec", cli_exec);
        on_sample!("cli.exec_stdin", cli_exec_stdin);
        on_sample!("cli.cp", cli_cp);
        on_sample!("exec.sample_cleanup", sample_cleanup);
    }
}

fn eval_of(w: &World, vms: &[serde_json::Value]) -> Result<EvalConfig> {
    Ok(EvalConfig::from_json(&w.eval(vms).to_string())?)
}

async fn task(w: &World, eval: EvalConfig) -> Result<Run> {
    let run = w.new_run();
    Ok(Run::task_init(
        w.settings.clone(),
        eval,
        TaskOptions {
            run: Some(run),
            ..Default::default()
        },
    )
    .await?)
}

/// After a task's cleanup: nothing of its run may remain.
async fn assert_gone(w: &World, run: &RunId) -> Result<()> {
    let s = w.state_of(run).await?;
    ensure!(s.is_empty(), "run {run} left {s}");
    Ok(())
}

async fn templates(w: &World) -> Result<String> {
    let before = w.templates().await?;
    let vms_before = w.non_templates().await?;
    let eval = eval_of(w, &[serde_json::json!({})])?;
    let t = Instant::now();
    let a = task(w, eval.clone()).await?;
    let first = t.elapsed();
    let after_first = w.templates().await?;
    ensure!(
        !after_first.is_empty(),
        "no template exists after task_init"
    );
    let t = Instant::now();
    let b = task(w, eval).await?;
    let second = t.elapsed();
    let after_second = w.templates().await?;
    ensure!(
        after_second == after_first,
        "the second ensure changed the templates: {after_first:?} -> {after_second:?}"
    );
    // Ensuring templates creates no VM of the run (a build's VM ends as the template).
    for t in [&a, &b] {
        let s = w.state_of(t.run_id()).await?;
        ensure!(
            s.vms.is_empty(),
            "task_init left VMs of run {}: {s}",
            t.run_id()
        );
    }
    // On a target of its own, nothing else may have appeared either.
    if w.target != Target::Env {
        let vms_after = w.non_templates().await?;
        ensure!(
            vms_after == vms_before,
            "ensuring templates left {} non-template VM(s) behind",
            vms_after as i64 - vms_before as i64
        );
    }
    for t in [&a, &b] {
        t.task_cleanup().await?;
        assert_gone(w, t.run_id()).await?;
    }
    Ok(format!(
        "templates {} -> {} -> {}; first ensure {:.3} s, second {:.3} s",
        before.len(),
        after_first.len(),
        after_second.len(),
        first.as_secs_f64(),
        second.as_secs_f64()
    ))
}

async fn lifecycle(w: &World) -> Result<String> {
    let task = task(w, eval_of(w, &[serde_json::json!({})])?).await?;
    let run = task.run_id().clone();
    let sample = task.sample_init().await?;
    let vm = sample.get("default")?;
    let s = w.state_of(&run).await?;
    ensure!(
        s.vms.len() == 1 && s.vms[0].1.vmid == vm.vmid(),
        "expected VM {} tagged run-{run}, found {s}",
        vm.vmid()
    );
    ensure!(
        s.vms[0].1.status == "running",
        "VM {} is {:?}, not running",
        vm.vmid(),
        s.vms[0].1.status
    );
    let cfg = w.vm_config(vm.instance(), vm.node(), vm.vmid()).await?;
    let desc = cfg.get("description").cloned().unwrap_or_default();
    let rec = pvesandbox::OwnerRecord::parse(&desc)
        .ok_or_else(|| anyhow!("VM {} has no owner record: {desc:?}", vm.vmid()))?;
    ensure!(
        rec.run == run && rec.name == "default",
        "owner record {rec:?}"
    );
    if w.caps.exec.is_none() {
        let out = vm.exec(ExecRequest::new(["uname", "-s"])).await?;
        ensure!(out.success(), "uname exited {}", out.status);
    }
    sample.cleanup(false).await?;
    sample.cleanup(false).await.context("a second cleanup")?;
    task.task_cleanup().await?;
    assert_gone(w, &run).await?;
    Ok(format!("vm {} on {}", vm.vmid(), vm.node()))
}

/// `net<n>`'s bridge.
fn bridge(cfg: &std::collections::BTreeMap<String, String>, n: usize) -> Option<String> {
    cfg.get(&format!("net{n}"))?
        .split(',')
        .find_map(|p| p.strip_prefix("bridge="))
        .map(str::to_owned)
}

async fn network_auto(w: &World) -> Result<String> {
    let task = task(
        w,
        eval_of(
            w,
            &[serde_json::json!({}), serde_json::json!({"name": "peer"})],
        )?,
    )
    .await?;
    let run = task.run_id().clone();
    let sample = task.sample_init().await?;
    let zone = sample.zone().context("an auto network made no zone")?;
    let s = w.state_of(&run).await?;
    ensure!(s.zones == [zone.clone()], "zones of the run: {:?}", s.zones);
    ensure!(s.vnets.len() == 1, "vnets of the run: {s}");
    let vnet = &s.vnets[0].vnet;
    for vm in sample.sandboxes() {
        let cfg = w.vm_config(vm.instance(), vm.node(), vm.vmid()).await?;
        ensure!(
            bridge(&cfg, 0).as_deref() == Some(vnet.as_str()),
            "{} net0 = {:?}, expected bridge {vnet}",
            vm.name(),
            cfg.get("net0")
        );
        ensure!(
            cfg.get("net0").is_some_and(|n| n.contains("firewall=1")),
            "{} net0 has no firewall flag: {:?}",
            vm.name(),
            cfg.get("net0")
        );
        ensure!(!cfg.contains_key("net1"), "{} has a second NIC", vm.name());
    }
    sample.cleanup(false).await?;
    task.task_cleanup().await?;
    assert_gone(w, &run).await?;
    Ok(format!("zone {zone}, vnet {vnet}"))
}

async fn topology(w: &World) -> Result<String> {
    let mut eval = w.eval(&[
        serde_json::json!({"nics": [{"vnet_alias": "lan"}, {"vnet_alias": "dmz"}]}),
        serde_json::json!({"name": "web", "nics": [{"vnet_alias": "dmz"}]}),
    ]);
    eval["sdn_config"] = serde_json::json!({
        "vnet_configs": [
            {"alias": "lan", "subnets": [{"cidr": "10.231.7.0/24", "gateway": "10.231.7.1",
                "snat": false,
                "dhcp_ranges": [{"start": "10.231.7.50", "end": "10.231.7.99"}]}]},
            {"alias": "dmz", "subnets": [{"cidr": "10.231.8.0/24", "gateway": "10.231.8.1",
                "snat": false,
                "dhcp_ranges": [{"start": "10.231.8.50", "end": "10.231.8.99"}]}]}
        ],
        "use_pve_ipam_dnsnmasq": true
    });
    let task = task(w, EvalConfig::from_json(&eval.to_string())?).await?;
    let run = task.run_id().clone();
    let sample = task.sample_init().await?;
    let s = w.state_of(&run).await?;
    ensure!(
        s.zones.len() == 1 && s.vnets.len() == 2,
        "expected 1 zone, 2 vnets: {s}"
    );
    let by_alias = |a: &str| {
        s.vnets
            .iter()
            .find(|v| v.alias.as_deref() == Some(a))
            .map(|v| v.vnet.clone())
            .ok_or_else(|| anyhow!("no vnet with alias {a}: {:?}", s.vnets))
    };
    let (lan, dmz) = (by_alias("lan")?, by_alias("dmz")?);
    ensure!(lan != dmz, "both aliases on one vnet {lan}");
    let d = sample.get("default")?;
    let cfg = w.vm_config(d.instance(), d.node(), d.vmid()).await?;
    ensure!(
        bridge(&cfg, 0) == Some(lan.clone()) && bridge(&cfg, 1) == Some(dmz.clone()),
        "default: net0 {:?} net1 {:?}, expected {lan} and {dmz}",
        cfg.get("net0"),
        cfg.get("net1")
    );
    let web = sample.get("web")?;
    let cfg = w.vm_config(web.instance(), web.node(), web.vmid()).await?;
    ensure!(
        bridge(&cfg, 0) == Some(dmz.clone()) && !cfg.contains_key("net1"),
        "web: net0 {:?} net1 {:?}, expected only {dmz}",
        cfg.get("net0"),
        cfg.get("net1")
    );
    let c = w.client(d.instance())?;
    for (vnet, cidr) in [(&lan, "10.231.7.0"), (&dmz, "10.231.8.0")] {
        let subnets = c
            .get(
                &format!("/cluster/sdn/vnets/{vnet}/subnets"),
                &pve_client::Params::new().with("pending", true),
            )
            .await?;
        ensure!(
            subnets.to_string().contains(cidr),
            "vnet {vnet} has no subnet {cidr}: {subnets}"
        );
    }
    sample.cleanup(false).await?;
    task.task_cleanup().await?;
    assert_gone(w, &run).await?;
    Ok(format!("lan={lan} dmz={dmz}"))
}

fn multi_vm_eval(w: &World) -> Result<EvalConfig> {
    eval_of(
        w,
        &[
            serde_json::json!({"await_before_next_vm": true}),
            serde_json::json!({"name": "router", "is_sandbox": false}),
            serde_json::json!({"name": "victim"}),
        ],
    )
}

async fn multi_vm(w: &World) -> Result<String> {
    let task = task(w, multi_vm_eval(w)?).await?;
    let run = task.run_id().clone();
    let sample = task.sample_init().await?;
    let names: Vec<_> = sample
        .sandboxes()
        .iter()
        .map(|v| v.name().to_owned())
        .collect();
    ensure!(
        names == ["default", "router", "victim"],
        "sandboxes {names:?}"
    );
    let flags: Vec<_> = sample.sandboxes().iter().map(|v| v.is_sandbox()).collect();
    ensure!(flags == [true, false, true], "is_sandbox flags {flags:?}");
    let s = w.state_of(&run).await?;
    ensure!(s.vms.len() == 3, "expected 3 VMs of the run: {s}");
    let router = sample.get("router")?;
    let cfg = w
        .vm_config(router.instance(), router.node(), router.vmid())
        .await?;
    ensure!(
        cfg.get("agent")
            .is_none_or(|a| a.starts_with('0') || a.contains("enabled=0")),
        "the is_sandbox=false VM has its agent enabled: {:?}",
        cfg.get("agent")
    );
    let mut detail = format!(
        "vmids {:?}",
        s.vms.iter().map(|(_, v)| v.vmid).collect::<Vec<_>>()
    );
    if w.caps.exec.is_none() {
        for n in ["default", "victim"] {
            let out = sample.get(n)?.exec(ExecRequest::new(["hostname"])).await?;
            ensure!(out.success(), "{n}: hostname exited {}", out.status);
            detail += &format!(", {n}: {}", String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    sample.cleanup(false).await?;
    task.task_cleanup().await?;
    assert_gone(w, &run).await?;
    Ok(detail)
}

/// With `await_before_next_vm` on the first VM, the next clone starts only after its agent
/// answered: read from the simulator's request log.
async fn await_order(w: &World) -> Result<String> {
    let sim = w.sim.as_ref().context("sim")?.sim();
    let task = task(w, multi_vm_eval(w)?).await?;
    let base = sim.requests().total();
    let sample = task.sample_init().await?;
    let log = sim.requests();
    let entries = &log.entries()[base..];
    let default = sample.get("default")?.vmid();
    let ping = entries
        .iter()
        .position(|e| {
            e.route == "/nodes/{node}/qemu/{vmid}/agent/ping"
                && e.path.contains(&format!("/qemu/{default}/"))
                && e.status == 200
        })
        .ok_or_else(|| anyhow!("no successful agent ping of VM {default}"))?;
    const CLONE: &str = "/nodes/{node}/qemu/{vmid}/clone";
    // Only clones PVE accepted: the allocator's attempts on taken ids answer 500.
    let before = entries[..ping]
        .iter()
        .filter(|e| e.route == CLONE && e.status == 200)
        .count();
    let total = entries
        .iter()
        .filter(|e| e.route == CLONE && e.status == 200)
        .count();
    sample.cleanup(false).await?;
    task.task_cleanup().await?;
    ensure!(total >= 3, "{total} clone requests for 3 VMs");
    ensure!(
        before == 1,
        "{before} clone request(s) before the awaited VM's agent answered (expected 1)"
    );
    Ok(format!(
        "first agent answer at request {ping} of the sample; clones before it: {before}/{total}"
    ))
}

async fn exec_sample(w: &World) -> Result<(Run, Sample)> {
    let task = task(w, eval_of(w, &[serde_json::json!({})])?).await?;
    let sample = task.sample_init().await?;
    Ok((task, sample))
}

async fn run(sample: &Sample, req: ExecRequest) -> Result<guest_agent::ExecOutput> {
    Ok(sample.get("default")?.exec(req).await?)
}

async fn exit_codes(_: &World, _: &Run, s: &Sample) -> Result<String> {
    for (argv, want) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "exit 255"], 255),
        (vec!["sh", "-c", "kill -TERM $$"], 143),
        (vec!["sh", "-c", "kill -KILL $$"], 137),
    ] {
        let out = run(s, ExecRequest::new(argv.clone())).await?;
        ensure!(
            out.status == want,
            "{argv:?} exited {}, expected {want}",
            out.status
        );
    }
    let out = run(
        s,
        ExecRequest::new(["sh", "-c", "echo out; echo err >&2; exit 4"]),
    )
    .await?;
    ensure!(
        (out.status, &out.stdout[..], &out.stderr[..]) == (4, b"out\n", b"err\n"),
        "streams mixed or lost: {out:?}"
    );
    match run(s, ExecRequest::new(["/nonexistent/cmd"])).await {
        Ok(o) => ensure!(o.status == 127, "a missing command exited {}", o.status),
        Err(e) => ensure!(e.to_string().contains("nonexistent"), "{e}"),
    }
    Ok("0, 1, 3, 255, 143 (TERM), 137 (KILL), 127".into())
}

fn all_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 256) as u8).collect()
}

async fn stdin(_: &World, _: &Run, s: &Sample) -> Result<String> {
    let data = all_bytes(300_000);
    let out = run(s, ExecRequest::new(["cat"]).stdin(data.clone())).await?;
    ensure!(
        out.status == 0 && out.stdout == data,
        "cat returned {} of {} bytes",
        out.stdout.len(),
        data.len()
    );
    let out = run(s, ExecRequest::new(["wc", "-c"]).stdin(Vec::new())).await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "0",
        "empty stdin: {out:?}"
    );
    Ok(format!("{} binary bytes through cat", data.len()))
}

async fn env(_: &World, _: &Run, s: &Sample) -> Result<String> {
    let v = "bär baz $HOME `x` 'q' \"d\"\n2nd line";
    let out = run(
        s,
        ExecRequest::new(["sh", "-c", "printf %s \"$E2E_VALUE\""]).env("E2E_VALUE", v),
    )
    .await?;
    ensure!(
        out.stdout == v.as_bytes(),
        "got {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::new())
}

async fn cwd(_: &World, _: &Run, s: &Sample) -> Result<String> {
    run(s, ExecRequest::new(["mkdir", "-p", "/tmp/e2e cwd ✓"])).await?;
    let out = run(s, ExecRequest::new(["pwd"]).cwd("/tmp/e2e cwd ✓")).await?;
    ensure!(
        out.stdout == "/tmp/e2e cwd ✓\n".as_bytes(),
        "pwd: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::new())
}

async fn timeout(_: &World, _: &Run, s: &Sample) -> Result<String> {
    let t = Instant::now();
    let r = run(
        s,
        ExecRequest::new(["sh", "-c", "sleep 61 & sleep 61"]).timeout(Duration::from_secs(1)),
    )
    .await;
    let took = t.elapsed();
    match r {
        Err(e) if e.to_string().contains("timed out") => {}
        Err(e) => bail!("expected a timeout, got error {e}"),
        Ok(o) => bail!("expected a timeout, got exit {}", o.status),
    }
    ensure!(
        took < Duration::from_secs(30),
        "the 1 s timeout took {took:?}"
    );
    // The guest's init keeps a sleep of its own: look for ours by its argument.
    let left = run(
        s,
        ExecRequest::new(["sh", "-c", "pgrep -f '^sleep 61$' | wc -l"]),
    )
    .await?;
    ensure!(
        String::from_utf8_lossy(&left.stdout).trim() == "0",
        "sleeps survived the timeout: {:?}",
        String::from_utf8_lossy(&left.stdout)
    );
    Ok(format!(
        "1 s timeout reported after {:.2} s, no process left",
        took.as_secs_f64()
    ))
}

async fn user(_: &World, _: &Run, s: &Sample) -> Result<String> {
    let out = run(s, ExecRequest::new(["id", "-un"])).await?;
    ensure!(
        out.stdout == b"root\n",
        "default user {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(s, ExecRequest::new(["id", "-un"]).user("nobody")).await?;
    ensure!(out.stdout == b"nobody\n", "as nobody: {out:?}");
    Ok(String::new())
}

async fn binary_files(_: &World, _: &Run, s: &Sample) -> Result<String> {
    let vm = s.get("default")?;
    let data = all_bytes(1 << 20);
    vm.write_file("/tmp/e2e/bin/all-bytes.dat", &data).await?;
    let back = vm.read_file("/tmp/e2e/bin/all-bytes.dat", None).await?;
    ensure!(
        back == data,
        "read back {} bytes, wrote {}",
        back.len(),
        data.len()
    );
    let out = run(
        s,
        ExecRequest::new(["wc", "-c", "/tmp/e2e/bin/all-bytes.dat"]),
    )
    .await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).starts_with(&data.len().to_string()),
        "guest sees {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let empty = vm.write_file("/tmp/e2e/bin/empty", b"").await;
    empty?;
    ensure!(
        vm.read_file("/tmp/e2e/bin/empty", None).await?.is_empty(),
        "empty file not empty"
    );
    Ok(format!("{} bytes round-tripped", data.len()))
}

async fn non_ascii_path(_: &World, _: &Run, s: &Sample) -> Result<String> {
    let vm = s.get("default")?;
    let dir = "/tmp/e2e/ünï cödé ✓";
    let path = format!("{dir}/файл 名前.txt");
    let body = "héllo wörld ✓\n".as_bytes();
    vm.write_file(&path, body).await?;
    ensure!(
        vm.read_file(&path, None).await? == body,
        "read back differs"
    );
    let out = run(s, ExecRequest::new(["cat", path.as_str()])).await?;
    ensure!(out.stdout == body, "cat {path}: {out:?}");
    let out = run(s, ExecRequest::new(["ls", dir])).await?;
    ensure!(
        out.stdout == "файл 名前.txt\n".as_bytes(),
        "ls: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(path)
}

async fn cli_exec(w: &World, task: &Run, _: &Sample) -> Result<String> {
    let run = task.run_id().to_string();
    let (code, out, err) = w
        .run_cli(
            &[
                "exec",
                "--run",
                &run,
                "--vm",
                "default",
                "--env",
                "K=v ä",
                "--cwd",
                "/tmp",
                "--",
                "sh",
                "-c",
                "printf '%s:' \"$K\"; pwd; echo oops >&2; exit 7",
            ],
            None,
        )
        .await?;
    ensure!(code == 7, "exit {code}, expected 7; stderr {err}");
    ensure!(
        out == "v ä:/tmp\n".as_bytes(),
        "stdout {:?}",
        String::from_utf8_lossy(&out)
    );
    ensure!(err.contains("oops"), "stderr {err:?}");
    let (code, _, err) = w
        .run_cli(&["exec", "--run", &run, "--vm", "nope", "--", "true"], None)
        .await?;
    ensure!(
        code == 3,
        "an unknown sandbox exited {code} (expected 3): {err}"
    );
    Ok(String::new())
}

async fn cli_exec_stdin(w: &World, task: &Run, _: &Sample) -> Result<String> {
    let run = task.run_id().to_string();
    let data = all_bytes(70_000);
    let (code, out, err) = w
        .run_cli(
            &["exec", "--run", &run, "--stdin", "--", "cat"],
            Some(&data),
        )
        .await?;
    ensure!(
        code == 0 && out == data,
        "exit {code}, {} of {} bytes back; {err}",
        out.len(),
        data.len()
    );
    Ok(String::new())
}

async fn cli_cp(w: &World, task: &Run, s: &Sample) -> Result<String> {
    let run = task.run_id().to_string();
    let local = w.workdir.join("cp-in.bin");
    let back = w.workdir.join("cp-out.bin");
    let data = all_bytes(200_003);
    std::fs::write(&local, &data)?;
    let remote = format!("{run}:default:/tmp/e2e/cp ✓.bin");
    let (code, _, err) = w
        .run_cli(&["cp", local.to_str().context("path")?, &remote], None)
        .await?;
    ensure!(code == 0, "cp in exited {code}: {err}");
    ensure!(
        s.get("default")?
            .read_file("/tmp/e2e/cp ✓.bin", None)
            .await?
            == data,
        "the guest holds other bytes"
    );
    let (code, _, err) = w
        .run_cli(&["cp", &remote, back.to_str().context("path")?], None)
        .await?;
    ensure!(code == 0, "cp out exited {code}: {err}");
    ensure!(std::fs::read(&back)? == data, "copied back other bytes");
    Ok(format!("{} bytes in and out", data.len()))
}

async fn sample_cleanup(w: &World, task: &Run, s: &Sample) -> Result<String> {
    s.cleanup(false).await?;
    task.task_cleanup().await?;
    assert_gone(w, task.run_id()).await?;
    Ok(String::new())
}

/// Where a child is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// Once the first clone was asked for.
    Clone,
    /// Once the first vnet was asked for.
    Network,
    /// Once the first VM start was asked for.
    Start,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Clone => "clone",
            Point::Network => "network",
            Point::Start => "start",
        }
    }
    /// The simulator route whose request count marks the point.
    fn route(self) -> (&'static str, &'static str) {
        match self {
            Point::Clone => ("POST", "/nodes/{node}/qemu/{vmid}/clone"),
            Point::Network => ("POST", "/cluster/sdn/vnets"),
            Point::Start => ("POST", "/nodes/{node}/qemu/{vmid}/status/start"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Int,
    Kill,
}

/// Waits until the child reached `p`: on the simulator, by its request count for the point's
/// route; elsewhere, by what Proxmox shows for the run.
async fn reach(
    w: &World,
    run: &RunId,
    p: Point,
    child: &mut tokio::process::Child,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (method, route) = p.route();
    let base = w.sim.as_ref().map(|s| s.sim().requests().total());
    // Requests answered when the log was last read: the next wait is for one more.
    let mut seen = 0;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "pvesandbox up ended ({}) before reaching the {} point",
                exit_code(&status),
                p.name()
            );
        }
        if let (Some(sim), Some(base)) = (&w.sim, base) {
            // Accepted requests only: the VM-id allocator's clones onto taken ids answer 500.
            // Count before reading, so a request landing in between wakes the wait below.
            seen = sim.sim().requests_seen();
            let log = sim.sim().requests();
            let hit = log.entries()[base..]
                .iter()
                .position(|e| e.method == method && e.route == route && e.status == 200);
            if let Some(i) = hit {
                return Ok(format!(
                    "{method} {route} = request {} of the child (log at {} when seen)",
                    i + 1,
                    log.total() - base
                ));
            }
        } else {
            let s = w.state_of(run).await?;
            let hit = match p {
                Point::Clone => !s.vms.is_empty(),
                Point::Network => !s.zones.is_empty(),
                Point::Start => s.vms.iter().any(|(_, v)| v.status == "running"),
            };
            if hit {
                return Ok(format!("state: {s}"));
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the {} point never came",
            p.name()
        );
        match &w.sim {
            // Woken by the simulator's next request; the bound only lets a child that exited
            // without one be noticed.
            Some(sim) => {
                let next = sim.sim().wait_for_requests(seen + 1);
                let _ = tokio::time::timeout(Duration::from_millis(100), next).await;
            }
            // A real Proxmox tells nothing: poll its state, the interval bounding how far
            // past the point the child gets.
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `pvesandbox up` interrupted (SIGINT) or killed (SIGKILL) at `p`, then
/// `pvesandbox cleanup --run ID` must leave nothing of the run.
async fn killed(w: &World, sig: Signal, p: Point) -> Result<String> {
    let run = w.new_run();
    let eval = w.eval(&[serde_json::json!({}), serde_json::json!({"name": "peer"})]);
    let file = w.eval_file(&format!("up-{run}"), &eval)?;
    // Modelled latency widens the window between requests, so the kill lands mid-sample
    // (the simulator otherwise finishes a sample in tens of milliseconds).
    if let Some(sim) = &w.sim {
        sim.sim().slow_responses(Duration::from_millis(10));
    }
    w.hold_agents(true)?;
    let mut c = w.cli();
    c.args(["up", "--run", run.as_str(), "--eval"])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().context("spawning pvesandbox up")?;
    let pid = child.id().context("child pid")?;
    let reached = reach(w, &run, p, &mut child).await;
    let signal = match sig {
        Signal::Int => rustix::process::Signal::INT,
        Signal::Kill => rustix::process::Signal::KILL,
    };
    let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
    let _ = rustix::process::kill_process(pid, signal);
    let status = child.wait().await?;
    if let Some(sim) = &w.sim {
        sim.sim().slow_responses(Duration::ZERO);
    }
    w.hold_agents(false)?;
    let reached = reached?;
    let code = exit_code(&status);
    let want = match sig {
        Signal::Int => -2,
        Signal::Kill => -9,
    };
    ensure!(
        code == want,
        "pvesandbox up ended with {code}, expected signal {}",
        -want
    );
    let left = w.state_of(&run).await?;
    ensure!(
        !left.vms.is_empty(),
        "the child left no VM at the {} point: nothing to test",
        p.name()
    );
    let (code, out, err) = w.run_cli(&["cleanup", "--run", run.as_str()], None).await?;
    ensure!(
        code == 0,
        "cleanup --run exited {code}: {}{err}",
        String::from_utf8_lossy(&out)
    );
    let after = w.state_of(&run).await?;
    ensure!(after.is_empty(), "after cleanup --run: {after}");
    Ok(format!(
        "stopped at {reached}; left {left}; cleanup removed all"
    ))
}

/// Two `pvesandbox up` processes at once; cleaning run A leaves run B whole.
async fn concurrent(w: &World) -> Result<String> {
    let (a, b) = (w.new_run(), w.new_run());
    let eval = w.eval(&[serde_json::json!({})]);
    let file = w.eval_file("concurrent", &eval)?;
    let f = file.to_str().context("path")?;
    let up_a = ["--json", "up", "--run", a.as_str(), "--eval", f];
    let up_b = ["--json", "up", "--run", b.as_str(), "--eval", f];
    let (ra, rb) = tokio::join!(w.run_cli(&up_a, None), w.run_cli(&up_b, None));
    for (r, res) in [(&a, ra?), (&b, rb?)] {
        ensure!(res.0 == 0, "up --run {r} exited {}: {}", res.0, res.2);
        let v: serde_json::Value = serde_json::from_slice(&res.1)
            .with_context(|| format!("up --json printed {:?}", String::from_utf8_lossy(&res.1)))?;
        ensure!(v["run"] == r.as_str(), "up printed run {}", v["run"]);
    }
    let (sa, sb) = (w.state_of(&a).await?, w.state_of(&b).await?);
    ensure!(sa.vms.len() == 1 && sb.vms.len() == 1, "A: {sa}; B: {sb}");
    let ids = |s: &RunState| s.vms.iter().map(|(_, v)| v.vmid).collect::<Vec<_>>();
    ensure!(ids(&sa) != ids(&sb), "both runs own VM {:?}", ids(&sa));
    if w.caps.sdn.is_none() {
        ensure!(
            sa.zones.len() == 1 && sb.zones.len() == 1 && sa.zones != sb.zones,
            "zones A {:?} B {:?}",
            sa.zones,
            sb.zones
        );
        let va: Vec<_> = sa.vnets.iter().map(|v| &v.vnet).collect();
        let vb: Vec<_> = sb.vnets.iter().map(|v| &v.vnet).collect();
        ensure!(va != vb, "both runs on vnet {va:?}");
    }
    let (code, ls, err) = w.run_cli(&["--json", "ls"], None).await?;
    ensure!(code == 0, "ls exited {code}: {err}");
    let ls = String::from_utf8_lossy(&ls);
    ensure!(
        ls.contains(a.as_str()) && ls.contains(b.as_str()),
        "ls lacks a run: {ls}"
    );
    let (code, out, err) = w.run_cli(&["cleanup", "--run", a.as_str()], None).await?;
    ensure!(
        code == 0,
        "cleanup --run A exited {code}: {}{err}",
        String::from_utf8_lossy(&out)
    );
    let (sa2, sb2) = (w.state_of(&a).await?, w.state_of(&b).await?);
    ensure!(sa2.is_empty(), "A after its cleanup: {sa2}");
    ensure!(
        ids(&sb2) == ids(&sb) && sb2.zones == sb.zones && sb2.vnets.len() == sb.vnets.len(),
        "cleaning A touched B: before {sb}, after {sb2}"
    );
    ensure!(
        sb2.vms.iter().all(|(_, v)| v.status == "running"),
        "B's VM is no longer running: {:?}",
        sb2.vms.iter().map(|(_, v)| &v.status).collect::<Vec<_>>()
    );
    if w.caps.exec.is_none() {
        let (code, _, err) = w
            .run_cli(&["exec", "--run", b.as_str(), "--", "true"], None)
            .await?;
        ensure!(
            code == 0,
            "exec in B after A's cleanup exited {code}: {err}"
        );
    }
    let (code, _, err) = w.run_cli(&["down", b.as_str()], None).await?;
    ensure!(code == 0, "down B exited {code}: {err}");
    let sb3 = w.state_of(&b).await?;
    ensure!(sb3.is_empty(), "B after down: {sb3}");
    Ok(format!(
        "A vm {:?} zones {:?}; B vm {:?} zones {:?}",
        ids(&sa),
        sa.zones,
        ids(&sb),
        sb.zones
    ))
}

/// Nothing of any run the suite made is left; on the simulator, nothing at all but templates.
async fn nothing_left(w: &World) -> Result<String> {
    let runs = w.runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut left = Vec::new();
    for r in &runs {
        let s = w.state_of(r).await?;
        if !s.is_empty() {
            left.push(format!("{r}: {s}"));
        }
    }
    ensure!(left.is_empty(), "left behind: {}", left.join("; "));
    if let Some(sim) = &w.sim {
        let l = sim.leftovers();
        ensure!(l.is_empty(), "the simulator still holds {l}: {l:?}");
        return Ok(format!(
            "{} runs, simulator empty; {} REST calls in all",
            runs.len(),
            sim.sim().requests().total()
        ));
    }
    if w.target == Target::FakePve {
        let n = w.non_templates().await?;
        ensure!(n == 0, "fakepve holds {n} non-template VM(s)");
    }
    Ok(format!("{} runs checked", runs.len()))
}
