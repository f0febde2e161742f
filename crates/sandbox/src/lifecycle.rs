//! The lifecycle: task init, sample init, the sandboxes, sample and task cleanup.
//!
//! ```text
//! task_init ─ load/validate ─ start pool ─ ensure templates (every instance × source, parallel)
//! sample_init ─ lease ─ network (plan, create, coalesced apply)
//!             ─ per VM, in parallel: vmid by clone ─ configure ─ firewall ─ start
//!             ─ wait for every sandbox VM's agent (parallel)
//!             └ on any failure: destroy what it made, tear the network down, then return
//! sample.cleanup ─ destroy VMs (parallel) ─ tear network down ─ release lease   (idempotent)
//! task_cleanup ─ clean unfinished samples ─ sweep the run from Proxmox state
//! ```
//!
//! Every VM carries the run's tags and owner record from the moment it exists (the clone call
//! itself sets them), so a crash at any point leaves only things `cleanup --run` finds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use guest_agent::{ExecOutput, ExecRequest, GuestAgent};
use pve_client::{PveClient, Vmid};
use pve_sdn::{Egress, Network, NetworkIds, NetworkOptions, SdnError, SdnSpec};
use pvesandbox_pool::{InstanceHandle, Lease, Needs};
use pvesandbox_templates::{Progress, Template};
use tokio::sync::Mutex;

use crate::cleanup::{CleanupReport, CleanupTarget, cleanup_instance};
use crate::config::Settings;
use crate::error::Error;
use crate::eval::{EvalConfig, VmConfig};
use crate::events::{EventKind, SampleEvent, SampleState, Step, Tracker};
use crate::fleet::Fleet;
use crate::owner::{OwnerRecord, RunId, SampleId, vm_name};
use crate::vm;

/// Template downloads and builds as `(instance, event)`: the templates crate's progress,
/// told which instance it is on. Samples report through their events instead
/// ([`crate::Fleet::subscribe`]).
pub type TemplateProgressFn = Arc<dyn Fn(&str, &Progress) + Send + Sync>;

/// Options of [`Run::task_init`].
#[derive(Default, Clone)]
pub struct TaskOptions {
    /// Reuse this run id (e.g. to resume cleanup; default: a fresh one).
    pub run: Option<RunId>,
    /// Called while templates are fetched and built.
    pub progress: Option<TemplateProgressFn>,
    /// Written into every VM's owner record from its clone on ([`OwnerRecord::notes`]): what
    /// a front end needs to take its samples over after a restart. Never secrets.
    pub notes: BTreeMap<String, String>,
}

/// Wall time of each phase of one sample, for the demo's table and benchmarks; read from its
/// events ([`SampleTimings::from_events`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleTimings {
    /// Waiting for a lease.
    pub lease: Duration,
    /// Cloning, networking, configuring and starting the VMs (overlapping).
    pub vms: Duration,
    /// Creating and applying the network (overlaps with the clones).
    pub network: Duration,
    /// Waiting for guest agents.
    pub agents: Duration,
}

impl SampleTimings {
    /// The phases of a sample's creation from its events: the lease until `Leased`, the VMs
    /// from there to the last `VmStarted`, the network's own `took`, the agents from the last
    /// start to `Running`.
    pub fn from_events(events: &[SampleEvent]) -> SampleTimings {
        let at = |f: &dyn Fn(&EventKind) -> bool| {
            events
                .iter()
                .filter(|e| f(&e.kind))
                .map(|e| e.elapsed)
                .max()
        };
        let lease = at(&|k| matches!(k, EventKind::Leased { .. })).unwrap_or_default();
        let started = at(&|k| matches!(k, EventKind::VmStarted { .. })).unwrap_or(lease);
        let running = at(&|k| matches!(k, EventKind::Running)).unwrap_or(started);
        let network = events
            .iter()
            .find_map(|e| match &e.kind {
                EventKind::NetworkReady { took, .. } => Some(*took),
                _ => None,
            })
            .unwrap_or_default();
        SampleTimings {
            lease,
            vms: started.saturating_sub(lease),
            network,
            agents: running.saturating_sub(started),
        }
    }
}

struct Instance {
    handle: InstanceHandle,
    /// Template per VM of the eval (index into `vms_config`).
    per_vm: Vec<Template>,
}

struct Inner {
    fleet: Fleet,
    eval: EvalConfig,
    run: RunId,
    /// The instances of the eval's pool.
    instances: BTreeMap<String, Instance>,
    next_sample: AtomicU32,
    /// Samples not yet cleaned, by sequence number: what task cleanup must still do.
    open: StdMutex<BTreeMap<u32, Arc<Core>>>,
    /// [`TaskOptions::notes`].
    notes: BTreeMap<String, String>,
}

/// A run: one eval (or one `pvesandbox up`) on a [`Fleet`], owning a run id; cheap to clone.
#[derive(Clone)]
pub struct Run {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("run", &self.inner.run)
            .field("instances", &self.inner.instances.keys())
            .finish_non_exhaustive()
    }
}

/// The pool's SDN apply, coalesced per instance, as pve-sdn's applier.
struct PoolApplier(InstanceHandle);

impl pve_sdn::Applier for PoolApplier {
    async fn apply(&self) -> Result<(), SdnError> {
        self.0.apply_sdn().await.map_err(|e| SdnError::Apply {
            source: Box::new(e),
        })
    }
}

/// The network's typed error, kept for the report while VMs see only its message.
type NetFailure = Arc<StdMutex<Option<SdnError>>>;

/// The network of a sample, created once by whichever VM needs it first.
type SharedNet =
    futures_util::future::Shared<futures_util::future::BoxFuture<'static, Result<Network, String>>>;

impl Run {
    /// A fleet of its own and one run on it: what a one-eval process (`pvesandbox up`) needs.
    /// Processes with several runs start one [`Fleet`] and call [`Fleet::run`] on it.
    pub async fn task_init(
        settings: Settings,
        eval: EvalConfig,
        opts: TaskOptions,
    ) -> Result<Run, Error> {
        Fleet::start(settings).await?.run(eval, opts).await
    }

    /// Validates the eval and, `with_templates`, makes sure every template exists on every
    /// instance of the eval's pool (instances in parallel); without, the run can only adopt.
    pub(crate) async fn start(
        fleet: Fleet,
        eval: EvalConfig,
        opts: TaskOptions,
        with_templates: bool,
    ) -> Result<Run, Error> {
        eval.validate()?;
        let settings = fleet.settings();
        let members: Vec<_> = fleet.members(&eval.instance_pool_id).collect();
        if members.is_empty() {
            return Err(Error::Config {
                field: "instance_pool_id".into(),
                value: eval.instance_pool_id.clone(),
                fix: format!(
                    "no instance has this pool_id; configured pools: {:?}",
                    settings
                        .instances
                        .iter()
                        .map(|i| i.pool_id.as_str())
                        .collect::<std::collections::BTreeSet<_>>()
                ),
            });
        }
        let run = match opts.run.clone() {
            Some(run) => run,
            None => fleet.fresh_run_id(&eval.instance_pool_id).await?,
        };
        // The record of the longest name, with the notes, must fit PVE's description before
        // anything is cloned (PVE would refuse the clone's configuration with a 400).
        for name in eval.sandbox_names() {
            let mut probe = OwnerRecord::here(&run, u32::MAX, &name, settings.run.ttl());
            probe.notes = opts.notes.clone();
            notes_fit(&probe)?;
        }
        let jobs = members.iter().map(|m| {
            let eval = &eval;
            let progress = opts.progress.clone();
            let (h, templates) = (&m.handle, &m.templates);
            async move {
                if !with_templates {
                    return Ok::<_, Error>((
                        h.id().to_owned(),
                        Instance {
                            handle: h.clone(),
                            per_vm: Vec::new(),
                        },
                    ));
                }
                if settings.run.egress {
                    // The host's own address, when it is a public one, is out of bounds too.
                    let host: Vec<String> = h
                        .config()
                        .host
                        .parse::<std::net::Ipv4Addr>()
                        .map(|ip| vec![format!("{ip}/32")])
                        .unwrap_or_default();
                    pve_sdn::ensure_firewall_base(h.client(), &host).await?;
                }
                // One ensure per distinct source; VMs sharing a source share the template.
                let mut by_source: BTreeMap<String, Template> = BTreeMap::new();
                let mut per_vm = Vec::new();
                for vm in &eval.vms_config {
                    let opts = crate::images::bake_options(vm);
                    let key = format!("{:?}{opts:?}", vm.vm_source_config);
                    if let Some(t) = by_source.get(&key) {
                        per_vm.push(t.clone());
                        continue;
                    }
                    let id = h.id().to_owned();
                    let p = progress.clone();
                    let report = move |ev: pvesandbox_templates::Progress| {
                        if let Some(p) = &p {
                            p(&id, &ev)
                        }
                    };
                    let t = templates
                        .ensure_template_with(&vm.vm_source_config, &opts, &report)
                        .await?;
                    by_source.insert(key, t.clone());
                    per_vm.push(t);
                }
                Ok::<_, Error>((
                    h.id().to_owned(),
                    Instance {
                        handle: h.clone(),
                        per_vm,
                    },
                ))
            }
        });
        let mut instances = BTreeMap::new();
        for r in futures_util::future::join_all(jobs).await {
            let (id, inst) = r?;
            instances.insert(id, inst);
        }
        Ok(Run {
            inner: Arc::new(Inner {
                fleet: fleet.clone(),
                eval,
                run,
                instances,
                next_sample: AtomicU32::new(0),
                open: StdMutex::new(BTreeMap::new()),
                notes: opts.notes,
            }),
        })
    }

    /// The run id (tags `run-<id>`; `pvesandbox cleanup --run <id>`).
    pub fn run_id(&self) -> &RunId {
        &self.inner.run
    }

    /// The eval config.
    pub fn eval(&self) -> &EvalConfig {
        &self.inner.eval
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        self.inner.fleet.settings()
    }

    /// The fleet it runs on.
    pub fn fleet(&self) -> &Fleet {
        &self.inner.fleet
    }

    /// How many samples the eval's pool holds at once, shared with every other run of the
    /// fleet on that pool (Inspect's `default_concurrency`).
    pub fn capacity(&self) -> usize {
        self.inner
            .fleet
            .capacity(&self.inner.eval.instance_pool_id)
            .max(1)
    }

    /// Creates one sample: lease, VMs and network, agents. On failure, everything it made
    /// is removed before the error returns (the error says if something could not be). Its
    /// events go to the fleet's stream as they happen, `Running` last on success, `Failed` and
    /// `TornDown` on failure.
    pub async fn sample_init(&self) -> Result<Sample, Error> {
        let inner = &self.inner;
        if inner
            .instances
            .values()
            .any(|i| i.per_vm.len() != inner.eval.vms_config.len())
        {
            return Err(Error::Config {
                field: "run".into(),
                value: inner.run.to_string(),
                fix: "made by Fleet::adopting_run, which only adopts: start a run with Fleet::run to create samples".into(),
            });
        }
        let seq = inner.next_sample.fetch_add(1, Ordering::SeqCst);
        let events = inner.fleet.events();
        let tracker = Tracker::new(SampleId {
            run: inner.run.clone(),
            seq,
        });
        let needs = Needs {
            ram_mb: inner.eval.vms_config.iter().map(VmConfig::ram).sum(),
            vcpus: inner.eval.vms_config.iter().map(VmConfig::cores).sum(),
        };
        let acquired = inner
            .fleet
            .pool()
            .acquire(
                &inner.eval.instance_pool_id,
                needs,
                inner.fleet.settings().run.lease_timeout(),
            )
            .await;
        let lease = match acquired {
            Ok(lease) => lease,
            Err(e) => {
                let e = Error::from(e);
                events.emit(&tracker, failure(Step::Lease, &e));
                // Nothing was made: the stream of this sample ends here.
                events.emit(&tracker, EventKind::TornDown);
                return Err(e);
            }
        };
        let handle = lease.instance().clone();
        events.emit(
            &tracker,
            EventKind::Leased {
                instance: handle.id().to_owned(),
            },
        );
        let core = Arc::new(Core {
            tracker,
            seq,
            instance: handle.id().to_owned(),
            handle: handle.clone(),
            vms: StdMutex::new(Vec::new()),
            network: StdMutex::new(None),
            adopted_zone: None,
            lease: StdMutex::new(Some(lease)),
            done: Mutex::new(false),
        });
        lock(&inner.open).insert(seq, core.clone());
        inner.fleet.register(&core);
        match self.build(&core).await {
            Ok(sandboxes) => {
                events.emit(&core.tracker, EventKind::Running);
                Ok(Sample {
                    task: self.clone(),
                    core,
                    sandboxes,
                })
            }
            Err((step, e)) => {
                events.emit(&core.tracker, failure(step.clone(), &e));
                let leftover = match core.teardown(self).await {
                    Ok(()) => Vec::new(),
                    Err(Error::Cleanup { leftover }) => leftover,
                    Err(other) => vec![other.to_string()],
                };
                Err(Error::SampleInit {
                    step,
                    source: Box::new(e),
                    leftover,
                })
            }
        }
    }

    /// The network future: waits until the sample owns a VM (so a zone never exists without
    /// an owner `cleanup --expired` can see), then creates and applies the network once.
    fn network_future(
        &self,
        state: &Arc<Core>,
        first_vm: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(SharedNet, NetFailure), Error> {
        let inner = self.inner.clone();
        let inst_id = state.instance.clone();
        let state = state.clone();
        let failure: NetFailure = Arc::default();
        let fail = failure.clone();
        let ids = NetworkIds::for_sample(
            inner.run.key(),
            state.seq,
            match &inner.eval.sdn_config {
                SdnSpec::Topology(c) => c.vnet_configs.len(),
                _ => 1,
            },
        )?;
        let fut = async move {
            let mut rx = first_vm;
            let _ = rx.wait_for(|v| *v).await;
            let t = Instant::now();
            let inst = &inner.instances[&inst_id];
            let opts = NetworkOptions {
                egress: if inner.fleet.settings().run.egress {
                    Egress::Internet
                } else {
                    Egress::None
                },
                supernet: inner.fleet.settings().run.supernet.clone(),
                ..Default::default()
            };
            let applier = PoolApplier(inst.handle.clone());
            let r = pve_sdn::create_network(
                inst.handle.client(),
                &inner.eval.sdn_config,
                &ids,
                &opts,
                &inner.fleet.instance(&inst_id).subnets,
                &applier,
            )
            .await;
            match r {
                Ok(net) => {
                    *lock(&state.network) = Some(net.clone());
                    inner.fleet.events().emit(
                        &state.tracker,
                        EventKind::NetworkReady {
                            zone: net.zone.clone(),
                            took: t.elapsed(),
                        },
                    );
                    Ok(net)
                }
                Err(e) => {
                    let msg = e.to_string();
                    *lock(&fail) = Some(e);
                    Err(msg)
                }
            }
        };
        let boxed: futures_util::future::BoxFuture<'static, Result<Network, String>> =
            Box::pin(fut);
        Ok((boxed.shared(), failure))
    }

    async fn build(&self, state: &Arc<Core>) -> Result<Vec<SandboxVm>, (Step, Error)> {
        let inner = &self.inner;
        let inst = &inner.instances[&state.instance];
        let run = &inner.fleet.settings().run;
        let events = inner.fleet.events();
        let (first_tx, first_rx) = tokio::sync::watch::channel(false);
        let (net, net_failure) = self
            .network_future(state, first_rx)
            .map_err(|e| (Step::Network, e))?;
        let names = inner.eval.sandbox_names();
        let create_one = |i: usize| {
            let vmc = &inner.eval.vms_config[i];
            let name = names[i].clone();
            let template = &inst.per_vm[i];
            let net = net.clone();
            let first_tx = &first_tx;
            async move {
                let step = Step::Clone { vm: name.clone() };
                let client = inst.handle.client();
                let node = inst.handle.node();
                let mut record = OwnerRecord::here(&inner.run, state.seq, &name, run.ttl());
                record.notes = inner.notes.clone();
                let pve_name = vm_name(&name, state.seq, &inner.run);
                let storage = inst.handle.config().image_storage.clone();
                // Clones from one storage run one at a time (PVE serialises them badly): the
                // permit is held from the clone call until its task ended.
                let permit = inst
                    .handle
                    .clone_permit(&storage)
                    .await
                    .map_err(|e| (step.clone(), Error::from(e)))?;
                // The clone call is the VM-id claim (allocate by creating); it carries the
                // owner record and the run-bearing name from the first instant.
                let (vmid, upid) =
                    inst.handle
                        .allocate_vmid(|id| {
                            let spec = crate::images::clone_base(
                                id,
                                &pve_name,
                                &record,
                                &storage,
                                run.linked_clones,
                            );
                            async move {
                                pvesandbox_templates::start_clone(client, template, &spec).await
                            }
                        })
                        .await
                        .map_err(|e| (step.clone(), Error::from(e)))?;
                lock(&state.vms).push((vmid, name.clone()));
                let _ = first_tx.send(true);
                client
                    .wait_task(&upid, pve_client::WaitOptions::with_timeout(CLONE_TIMEOUT))
                    .await
                    .map_err(|e| (step.clone(), Error::from(e)))?;
                drop(permit);
                events.emit(
                    &state.tracker,
                    EventKind::VmCloned {
                        vm: name.clone(),
                        vmid,
                    },
                );
                let step = Step::Configure { vm: name.clone() };
                let network = net.await.map_err(|m| {
                    (
                        Step::Network,
                        Error::Config {
                            field: "sdn_config".into(),
                            value: String::new(),
                            fix: m,
                        },
                    )
                })?;
                let spec = crate::images::clone_spec(
                    crate::images::clone_base(
                        vmid,
                        &pve_name,
                        &record,
                        &storage,
                        run.linked_clones,
                    ),
                    vmc,
                    i,
                    &network,
                    &storage,
                )
                .map_err(|e| (step.clone(), e))?;
                // The clone task was waited for above, inside the permit.
                pvesandbox_templates::configure_clone(
                    client,
                    template,
                    &spec,
                    pve_client::WaitOptions::with_timeout(CLONE_TIMEOUT),
                )
                .await
                .map_err(|e| (step.clone(), Error::from(e)))?;
                pve_sdn::vm_firewall(client, node, vmid, &network)
                    .await
                    .map_err(|e| (Step::Firewall { vm: name.clone() }, Error::from(e)))?;
                vm::start(client, node, vmid)
                    .await
                    .map_err(|e| (Step::Start { vm: name.clone() }, Error::from(e)))?;
                events.emit(
                    &state.tracker,
                    EventKind::VmStarted {
                        vm: name.clone(),
                        vmid,
                    },
                );
                let mut agent = GuestAgent::new(client.clone(), node, vmid);
                if let Some(u) = &vmc.user {
                    agent = agent.file_user(u.clone());
                }
                let vm = SandboxVm {
                    name: name.clone(),
                    vmid,
                    node: node.to_owned(),
                    instance: inst.handle.id().to_owned(),
                    is_sandbox: vmc.is_sandbox,
                    user: vmc.user.clone(),
                    agent,
                };
                if vmc.await_before_next_vm && vmc.is_sandbox {
                    vm.wait_agent(run.agent_timeout())
                        .await
                        .map_err(|e| (Step::Agent { vm: name.clone() }, e))?;
                    events.emit(&state.tracker, EventKind::AgentReady { vm: name.clone() });
                }
                Ok::<_, (Step, Error)>(vm)
            }
        };
        // VMs flagged await_before_next_vm end a batch: the next VM is created only after
        // it booted. Within a batch everything runs in parallel. No task is cancelled when
        // another fails: a cancelled clone could leave a VM nobody recorded.
        let mut results = Vec::new();
        let mut batch = Vec::new();
        for i in 0..inner.eval.vms_config.len() {
            batch.push(create_one(i));
            if inner.eval.vms_config[i].await_before_next_vm {
                let done = futures_util::future::join_all(std::mem::take(&mut batch)).await;
                let failed = done.iter().any(Result::is_err);
                results.extend(done);
                if failed {
                    break;
                }
            }
        }
        results.extend(futures_util::future::join_all(batch).await);
        // The network's own typed error beats the VMs' "network failed" echoes.
        if let Some(e) = lock(&net_failure).take() {
            return Err((Step::Network, Error::from(e)));
        }
        let mut vms = Vec::new();
        for r in results {
            vms.push(r?);
        }
        let waited: Vec<&str> = inner
            .eval
            .vms_config
            .iter()
            .zip(&names)
            .filter(|(c, _)| c.await_before_next_vm && c.is_sandbox)
            .map(|(_, n)| n.as_str())
            .collect();
        let waited = &waited;
        let waits = vms.iter().filter(|v| v.is_sandbox).map(|v| async move {
            if !waited.contains(&v.name.as_str()) {
                v.wait_agent(run.agent_timeout())
                    .await
                    .map_err(|e| (Step::Agent { vm: v.name.clone() }, e))?;
                events.emit(&state.tracker, EventKind::AgentReady { vm: v.name.clone() });
            }
            Ok(())
        });
        for r in futures_util::future::join_all(waits).await {
            r?;
        }
        // A sandbox with a `user` works in that user's home, as a container would: relative
        // paths and commands without a cwd start there (root's /root is closed to them).
        let homes = vms.iter().map(|v| async move {
            match (&v.user, v.is_sandbox) {
                (Some(u), true) => Some(home_of(&v.agent, u).await),
                _ => None,
            }
        });
        let homes = futures_util::future::join_all(homes).await;
        for (vm, home) in vms.iter_mut().zip(homes) {
            if let Some(h) = home {
                vm.agent = vm.agent.clone().workdir(&h);
            }
        }
        Ok(vms)
    }

    /// Cleans every sample not yet cleaned, then sweeps the run from Proxmox state (what an
    /// interrupted sample or a crash of an earlier process with this run id left).
    pub async fn task_cleanup(&self) -> Result<CleanupReport, Error> {
        let open: Vec<_> = lock(&self.inner.open).values().cloned().collect();
        let mut leftover = Vec::new();
        for r in futures_util::future::join_all(open.iter().map(|s| s.teardown(self))).await {
            if let Err(e) = r {
                leftover.push(e.to_string());
            }
        }
        let target = CleanupTarget::Run(self.inner.run.clone());
        let mut report = CleanupReport::default();
        for i in self.inner.instances.values() {
            report.extend(cleanup_instance(i.handle.id(), i.handle.client(), &target).await);
        }
        report.failed.extend(leftover);
        report.into_result()
    }
}

impl Run {
    /// Takes over sample `seq` of this run from an earlier process that is gone (a restarted
    /// server): its VMs are found from Proxmox state, each owner record is moved to this
    /// process ([`OwnerRecord::taken_over`]), and its slot is counted in the pool. It is then
    /// a sample of this run like any other (commands, pause, renew, cleanup, which also
    /// removes its network by zone id). Running VMs make it [`SampleState::Running`], paused
    /// ones [`SampleState::Paused`]; any other VM state (stopped, locked, missing a record)
    /// refuses the adoption and changes nothing, so the caller decides what to do with it.
    pub async fn adopt(&self, seq: u32) -> Result<Sample, Error> {
        let inner = &self.inner;
        let id = SampleId {
            run: inner.run.clone(),
            seq,
        };
        if let Some(live) = inner.fleet.sample(&id) {
            return Err(Error::WrongState {
                sample: id.to_string(),
                state: Box::new(live.state),
                action: "adopt",
                needs: "not live in this process",
            });
        }
        let found = crate::fleet::locate_with(&inner.fleet.clients(), &inner.run)
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| Error::NoSuchRun {
                run: id.to_string(),
            })?;
        let inst = inner
            .instances
            .get(&found.instance)
            .ok_or_else(|| Error::Config {
                field: "instance_pool_id".into(),
                value: inner.eval.instance_pool_id.clone(),
                fix: format!(
                    "sample {id} lives on instance {}, which is not in this run's pool",
                    found.instance
                ),
            })?;
        let names = inner.eval.sandbox_names();
        let mut paused = 0;
        for v in &found.vms {
            let st = inst
                .handle
                .client()
                .node(&v.node)
                .qemu(v.vmid)
                .status()
                .await?;
            let q = st.qmpstatus.as_deref().unwrap_or(&st.status);
            let ok =
                st.status == "running" && st.lock.is_none() && matches!(q, "running" | "paused");
            if !ok || !names.contains(&v.name) {
                return Err(Error::NotOurs {
                    vm: format!("{}/{} ({})", found.instance, v.vmid, v.name),
                    why: format!(
                        "not adoptable: status {}, qmpstatus {q}, lock {}, sandbox name {} in the eval",
                        st.status,
                        st.lock.as_deref().unwrap_or("none"),
                        if names.contains(&v.name) {
                            "known"
                        } else {
                            "unknown"
                        },
                    ),
                });
            }
            if q == "paused" {
                paused += 1;
            }
        }
        if let Some(missing) = names
            .iter()
            .find(|n| !found.vms.iter().any(|v| &v.name == *n))
        {
            return Err(Error::NotOurs {
                vm: format!("{}/{id}", found.instance),
                why: format!("not adoptable: its VM {missing} is gone"),
            });
        }
        if paused != 0 && paused != found.vms.len() {
            return Err(Error::NotOurs {
                vm: format!("{}/{id}", found.instance),
                why: format!(
                    "{paused} of its {} VMs are paused: resume or pause them all first",
                    found.vms.len()
                ),
            });
        }
        let tracker = Tracker::new(id.clone());
        let needs = Needs {
            ram_mb: found.vms.iter().map(|v| v.memory_mb).sum(),
            vcpus: found.vms.iter().map(|v| v.cores).sum(),
        };
        let lease = inner.fleet.pool().adopt(&found.instance, needs).await?;
        let zone = match &inner.eval.sdn_config {
            SdnSpec::Topology(c) => Some(c.vnet_configs.len()),
            SdnSpec::Auto => Some(1),
            _ => None,
        }
        .map(|n| NetworkIds::for_sample(inner.run.key(), seq, n).map(|ids| ids.zone))
        .transpose()?;
        let core = Arc::new(Core {
            tracker,
            seq,
            instance: found.instance.clone(),
            handle: inst.handle.clone(),
            vms: StdMutex::new(found.vms.iter().map(|v| (v.vmid, v.name.clone())).collect()),
            network: StdMutex::new(None),
            adopted_zone: zone,
            lease: StdMutex::new(Some(lease)),
            done: Mutex::new(false),
        });
        core.rewrite_records("adopted", OwnerRecord::taken_over)
            .await?;
        let mut sandboxes = Vec::new();
        for (i, vmc) in inner.eval.vms_config.iter().enumerate() {
            let Some(v) = found.vms.iter().find(|v| v.name == names[i]) else {
                continue;
            };
            let mut agent = GuestAgent::new(inst.handle.client().clone(), &v.node, v.vmid);
            if let Some(u) = &vmc.user {
                agent = agent.file_user(u.clone());
                if vmc.is_sandbox {
                    let home = home_of(&agent, u).await;
                    agent = agent.workdir(&home);
                }
            }
            sandboxes.push(SandboxVm {
                name: v.name.clone(),
                vmid: v.vmid,
                node: v.node.clone(),
                instance: found.instance.clone(),
                is_sandbox: vmc.is_sandbox,
                user: vmc.user.clone(),
                agent,
            });
        }
        lock(&inner.open).insert(seq, core.clone());
        inner.fleet.register(&core);
        inner.fleet.events().emit(
            &core.tracker,
            EventKind::Adopted {
                paused: paused != 0,
            },
        );
        Ok(Sample {
            task: self.clone(),
            core,
            sandboxes,
        })
    }
}

/// How long one pause or resume task may take (PVE's QMP `stop`/`cont` answer within seconds;
/// the rest is the task's bookkeeping and a loaded node).
const POWER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one clone (and its configuration) may take.
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long the probe of a sandbox user's home directory may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The home directory of `user` in the guest (where relative paths of a non-root sandbox
/// resolve, as a container's working directory would), or `/home/<user>` when the user does
/// not exist yet (a sample's setup may create it).
async fn home_of(agent: &GuestAgent, user: &str) -> String {
    let req = ExecRequest::new(["getent", "passwd", user])
        .user("root")
        .cwd("/")
        .timeout(PROBE_TIMEOUT);
    let fallback = format!("/home/{user}");
    match agent.exec(&req).await {
        Ok(out) if out.success() => String::from_utf8_lossy(&out.stdout)
            .trim_end()
            .split(':')
            .nth(5)
            .filter(|h| h.starts_with('/'))
            .map_or(fallback, str::to_owned),
        _ => fallback,
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The error for a record whose notes make the VM description longer than PVE takes.
fn notes_fit(record: &OwnerRecord) -> Result<(), Error> {
    record.fits().map_err(|n| Error::Config {
        field: "notes".into(),
        value: format!("{n} characters of VM description"),
        fix: format!(
            "PVE holds {} characters of description and the owner record needs some: keep the notes shorter",
            crate::owner::DESCRIPTION_MAX
        ),
    })
}

/// A `Failed` event for `e` at `step`.
fn failure(step: Step, e: &Error) -> EventKind {
    EventKind::Failed {
        step,
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// What a sample made, for teardown (also after a failed init), with its state and history;
/// shared by its [`Sample`] handle, its run's open set and the fleet's registry.
pub(crate) struct Core {
    pub(crate) tracker: Tracker,
    seq: u32,
    instance: String,
    handle: InstanceHandle,
    vms: StdMutex<Vec<(Vmid, String)>>,
    network: StdMutex<Option<Network>>,
    /// The zone of an adopted sample's network, which an earlier process made (its plan is
    /// gone with that process; the zone id is all teardown needs).
    adopted_zone: Option<String>,
    /// Held until the teardown succeeds: the sample's slot in the pool's capacity count.
    lease: StdMutex<Option<Lease>>,
    /// Held during teardown, so concurrent cleanups of one sample do the work once.
    done: Mutex<bool>,
}

/// One live sample as the fleet's registry shows it ([`Fleet::samples`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleInfo {
    /// The sample.
    pub id: SampleId,
    /// Where it is in its life.
    pub state: SampleState,
    /// The instance it lives on.
    pub instance: String,
    /// `(vmid, sandbox name)` of every VM it made so far.
    pub vms: Vec<(Vmid, String)>,
}

impl Core {
    pub(crate) fn info(&self) -> SampleInfo {
        SampleInfo {
            id: self.tracker.id.clone(),
            state: self.tracker.state(),
            instance: self.instance.clone(),
            vms: lock(&self.vms).clone(),
        }
    }

    /// The background retry the pool runs while the instance is quarantined: the same
    /// teardown, from ids alone.
    fn retry(&self, vms: &[(Vmid, String)], zone: Option<String>) -> pvesandbox_pool::CleanupRetry {
        let client = self.handle.client().clone();
        let node = self.handle.node().to_owned();
        let vmids: Vec<Vmid> = vms.iter().map(|(v, _)| *v).collect();
        Arc::new(move || {
            let (client, node, vmids, zone) =
                (client.clone(), node.clone(), vmids.clone(), zone.clone());
            Box::pin(async move {
                for vmid in vmids {
                    vm::destroy(&client, &node, vmid)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if let Some(zone) = zone {
                    pve_sdn::teardown_by_ids(
                        &client,
                        &zone,
                        &pve_sdn::DirectApplier(client.clone()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
    }

    /// Destroys the VMs (parallel), then removes the network (PVE's IPAM refuses to delete
    /// a subnet whose addresses guests still hold), then returns the lease. Idempotent.
    /// Ends the sample's events with `TornDown` (or `Failed` at [`Step::Teardown`]).
    async fn teardown(&self, task: &Run) -> Result<(), Error> {
        let mut done = self.done.lock().await;
        if *done {
            return Ok(());
        }
        let fleet = &task.inner.fleet;
        if !matches!(self.tracker.state(), SampleState::Failed { .. }) {
            self.tracker.set(SampleState::Terminating);
        }
        let client = self.handle.client();
        let node = self.handle.node();
        let vms = lock(&self.vms).clone();
        let mut failed = Vec::new();
        let results = futures_util::future::join_all(
            vms.iter()
                .map(|(vmid, _)| async move { vm::destroy(client, node, *vmid).await }),
        )
        .await;
        for ((vmid, name), r) in vms.iter().zip(results) {
            match r {
                Ok(()) => self.handle.allocator().release(*vmid),
                Err(e) => failed.push(format!("{}/{vmid} ({name}): {e}", self.instance)),
            }
        }
        let net = lock(&self.network).clone();
        let net_zone = net
            .as_ref()
            .and_then(|n| n.zone.clone())
            .or_else(|| self.adopted_zone.clone());
        if failed.is_empty()
            && net.is_none()
            && let Some(zone) = &self.adopted_zone
        {
            let applier = PoolApplier(self.handle.clone());
            if let Err(e) = pve_sdn::teardown_by_ids(client, zone, &applier).await {
                failed.push(format!("{}/network {zone}: {e}", self.instance));
            }
        }
        if failed.is_empty()
            && let Some(net) = net
        {
            let subnets = &fleet.instance(&self.instance).subnets;
            let applier = PoolApplier(self.handle.clone());
            if let Err(e) = pve_sdn::teardown(client, &net, subnets, &applier).await {
                failed.push(format!(
                    "{}/network {}: {e}",
                    self.instance,
                    net.zone.as_deref().unwrap_or("-")
                ));
            }
        }
        if failed.is_empty() {
            *done = true;
            lock(&task.inner.open).remove(&self.seq);
            // Dropping the lease returns the slot.
            lock(&self.lease).take();
            fleet.events().emit(&self.tracker, EventKind::TornDown);
            fleet.unregister(&self.tracker.id);
            Ok(())
        } else {
            // Keep the instance out of rotation until a retry cleans it.
            if let Some(lease) = lock(&self.lease).take() {
                lease.release_dirty(self.retry(&vms, net_zone));
            }
            let e = Error::Cleanup { leftover: failed };
            fleet
                .events()
                .emit(&self.tracker, failure(Step::Teardown, &e));
            Err(e)
        }
    }

    /// Rewrites every VM's owner record through `change` (and its `exp-` tag to the record's
    /// expiry, other tags kept), each with its config digest so a concurrent change is refused
    /// rather than overwritten. A VM whose record is gone is not ours any more (`what` says
    /// what was not done to it).
    async fn rewrite_records(
        &self,
        what: &str,
        change: impl Fn(OwnerRecord) -> OwnerRecord,
    ) -> Result<(), Error> {
        let vms = lock(&self.vms).clone();
        let client = self.handle.client();
        let node = client.node(self.handle.node());
        for (vmid, name) in vms {
            let vm = node.qemu(vmid);
            let cfg = vm.config_current().await?;
            let description = cfg.get("description").unwrap_or_default();
            let Some(record) = OwnerRecord::parse(&description) else {
                return Err(Error::NotOurs {
                    vm: format!("{}/{vmid} ({name})", self.instance),
                    why: format!("its description holds no owner record any more; not {what}"),
                });
            };
            let record = change(record);
            notes_fit(&record)?;
            let mut tags: Vec<String> = cfg
                .tag_list()
                .into_iter()
                .filter(|t| !t.starts_with(crate::owner::EXPIRY_PREFIX))
                .collect();
            tags.push(format!("{}{}", crate::owner::EXPIRY_PREFIX, record.expires));
            tags.sort();
            let mut p = pve_client::Params::new()
                .with("tags", tags.join(";"))
                .with("description", record.description());
            if let Some(d) = cfg.digest() {
                p = p.with("digest", d);
            }
            vm.update_config(&p).await?;
        }
        Ok(())
    }

    /// Pauses (`pause`) or resumes every VM of the sample, all at once, each to the end of its
    /// task; `Err` names the VMs that failed, the others stay done.
    async fn power(&self, pause: bool) -> Result<(), Error> {
        let client = self.handle.client();
        let node = client.node(self.handle.node());
        let vms = lock(&self.vms).clone();
        let jobs = vms.iter().map(|(vmid, _)| {
            let vm = node.qemu(*vmid);
            async move {
                let upid = if pause {
                    vm.suspend(false).await?
                } else {
                    vm.resume().await?
                };
                client
                    .wait_task(&upid, pve_client::WaitOptions::with_timeout(POWER_TIMEOUT))
                    .await
                    .map(drop)
            }
        });
        let mut first = None;
        for r in futures_util::future::join_all(jobs).await {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| Err(Error::from(e)))
    }
}

/// A created sample: its sandboxes by name, until [`Sample::cleanup`].
pub struct Sample {
    task: Run,
    core: Arc<Core>,
    sandboxes: Vec<SandboxVm>,
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("id", &self.core.tracker.id)
            .field("instance", &self.core.instance)
            .field("sandboxes", &self.sandboxes)
            .finish_non_exhaustive()
    }
}

/// A sample's clock may be this far off the host's after a resume before it is stepped: the
/// agent round trip that reads it takes milliseconds, a pause lasts seconds or more.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(500);

/// How long the agents of a resumed sample may take to answer again.
const RESUME_AGENT_TIMEOUT: Duration = Duration::from_secs(30);

impl Sample {
    /// The sandboxes, in config order (the first sandbox VM is `default`).
    pub fn sandboxes(&self) -> &[SandboxVm] {
        &self.sandboxes
    }
    /// One sandbox by name.
    pub fn get(&self, name: &str) -> Result<&SandboxVm, Error> {
        self.sandboxes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::NoSuchSandbox {
                name: name.into(),
                known: self.sandboxes.iter().map(|v| v.name.clone()).collect(),
            })
    }
    /// Sequence number within the run.
    pub fn seq(&self) -> u32 {
        self.core.seq
    }
    /// Its identity across processes (`s<seq>.<run>`; [`crate::Fleet::attach`] takes it).
    pub fn id(&self) -> SampleId {
        self.core.tracker.id.clone()
    }
    /// Where it is in its life.
    pub fn state(&self) -> SampleState {
        self.core.tracker.state()
    }
    /// Everything that happened to it so far, in order (the fleet's stream, for this sample,
    /// without the risk of lagging).
    pub fn events(&self) -> Vec<SampleEvent> {
        self.core.tracker.history()
    }
    /// The network's zone id, if the sample made one.
    pub fn zone(&self) -> Option<String> {
        lock(&self.core.network)
            .as_ref()
            .and_then(|n| n.zone.clone())
    }
    /// Phase timings of its creation, from its events.
    pub fn timings(&self) -> SampleTimings {
        SampleTimings::from_events(&self.core.tracker.history())
    }
    /// Moves the sample's expiry to `expires_at`: every VM's `exp-` tag and owner record are
    /// rewritten (other tags kept), each with its config digest so a concurrent change is
    /// refused rather than overwritten. Until then `cleanup --expired` leaves it alone.
    pub async fn renew(&self, expires_at: std::time::SystemTime) -> Result<(), Error> {
        let expires = expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| Error::Config {
                field: "expires_at".into(),
                value: format!("{expires_at:?}"),
                fix: "give a time after 1970".into(),
            })?
            .as_secs();
        self.core
            .rewrite_records("renewed", |mut r| {
                r.expires = expires;
                r
            })
            .await?;
        self.task
            .fleet()
            .events()
            .emit(&self.core.tracker, EventKind::Renewed { expires_at });
        Ok(())
    }
    /// Adds `notes` to every VM's owner record (an existing key is replaced): what a front end
    /// learns once the sample exists, for the process that takes it over after a restart. One
    /// config call per VM, each with its digest. Never secrets: the VM's readers see them.
    pub async fn annotate(&self, notes: &BTreeMap<String, String>) -> Result<(), Error> {
        self.core
            .rewrite_records("annotated", |mut r| {
                r.notes
                    .extend(notes.iter().map(|(k, v)| (k.clone(), v.clone())));
                r
            })
            .await
    }
    /// Pauses every VM of the sample with its RAM kept (`status/suspend`, task `qmpause`):
    /// nothing in them runs, and commands fail as PVE's agent does on a paused VM, until
    /// [`resume`](Self::resume). Only a running sample pauses. If a VM cannot be paused, the
    /// others are resumed again and the sample stays running.
    pub async fn pause(&self) -> Result<(), Error> {
        let t = &self.core.tracker;
        t.transition(&[SampleState::Running], SampleState::Pausing)
            .map_err(|now| self.wrong_state(now, "pause", "running"))?;
        if let Err(e) = self.core.power(true).await {
            // Best effort back to where it was: a half-paused sample helps nobody.
            let _ = self.core.power(false).await;
            t.set(SampleState::Running);
            self.task.fleet().events().emit(t, failure(Step::Pause, &e));
            return Err(e);
        }
        self.task.fleet().events().emit(t, EventKind::Paused);
        Ok(())
    }
    /// Resumes a paused sample (`status/resume`, task `qmresume`): the same processes go on
    /// where they stopped. A paused guest's clock stood still, so each sandbox's clock is then
    /// stepped to the host's when it is more than [`CLOCK_TOLERANCE`] off; that needs the
    /// agent and root in the guest, and its failure is returned with the sample running.
    pub async fn resume(&self) -> Result<(), Error> {
        let t = &self.core.tracker;
        t.transition(&[SampleState::Paused], SampleState::Resuming)
            .map_err(|now| self.wrong_state(now, "resume", "paused"))?;
        if let Err(e) = self.core.power(false).await {
            t.set(SampleState::Paused);
            self.task
                .fleet()
                .events()
                .emit(t, failure(Step::Resume, &e));
            return Err(e);
        }
        self.task.fleet().events().emit(t, EventKind::Resumed);
        let fixes = self
            .sandboxes
            .iter()
            .filter(|v| v.is_sandbox)
            .map(|v| v.fix_clock());
        for r in futures_util::future::join_all(fixes).await {
            r?;
        }
        Ok(())
    }
    fn wrong_state(&self, now: SampleState, action: &'static str, needs: &'static str) -> Error {
        Error::WrongState {
            sample: self.id().to_string(),
            state: Box::new(now),
            action,
            needs,
        }
    }
    /// Removes everything the sample made (idempotent). With `interrupted`, defers to the
    /// task's cleanup instead, as Inspect asks for a cancelled sample.
    pub async fn cleanup(&self, interrupted: bool) -> Result<(), Error> {
        if interrupted {
            return Ok(());
        }
        self.core.teardown(&self.task).await
    }
    /// Leaves the sample running after this handle is gone (`pvesandbox up`); `down` or the
    /// expiry removes it. It stays in the fleet's registry, holding its slot in the capacity
    /// count for as long as the fleet lives; its run's cleanup no longer tears it down.
    pub fn detach(self) {
        lock(&self.task.inner.open).remove(&self.core.seq);
    }
}

/// One VM of a sample, with its guest agent.
#[derive(Clone)]
pub struct SandboxVm {
    name: String,
    vmid: Vmid,
    node: String,
    instance: String,
    is_sandbox: bool,
    user: Option<String>,
    agent: GuestAgent,
}

impl std::fmt::Debug for SandboxVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxVm")
            .field("name", &self.name)
            .field("vmid", &self.vmid)
            .field("node", &self.node)
            .finish()
    }
}

impl SandboxVm {
    /// Sandbox name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// VM id.
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }
    /// Node.
    pub fn node(&self) -> &str {
        &self.node
    }
    /// Instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }
    /// The user commands and file operations run as by default (`None`: root).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    /// Whether commands run in it.
    pub fn is_sandbox(&self) -> bool {
        self.is_sandbox
    }
    /// The guest agent handle (exec, files).
    pub fn agent(&self) -> &GuestAgent {
        &self.agent
    }
    /// The client of its instance.
    pub fn client(&self) -> &PveClient {
        self.agent.client()
    }
    /// Steps the guest's clock to the host's when it is more than [`CLOCK_TOLERANCE`] off
    /// (after a pause or a rollback the guest's clock lags by the time it stood still).
    async fn fix_clock(&self) -> Result<(), Error> {
        self.wait_agent(RESUME_AGENT_TIMEOUT).await?;
        let guest = self.agent.time().await?;
        let now = std::time::SystemTime::now();
        let off = match guest.duration_since(now) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if off <= CLOCK_TOLERANCE {
            return Ok(());
        }
        // Read the host clock again at the last moment: the agent round trip took time.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let set = ExecRequest::new([
            "date".to_owned(),
            "-u".to_owned(),
            "-s".to_owned(),
            format!("@{}.{:09}", now.as_secs(), now.subsec_nanos()),
        ])
        .user("root")
        .cwd("/")
        .timeout(PROBE_TIMEOUT);
        let out = self.agent.exec(&set).await?;
        if !out.success() {
            return Err(Error::ClockFix {
                vm: self.name.clone(),
                off,
                why: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    async fn wait_agent(&self, timeout: Duration) -> Result<(), Error> {
        self.agent
            .wait_ready(Instant::now() + timeout)
            .await
            .map_err(Error::from)
    }
    /// Runs a command (as the VM's configured `user` unless the request names one).
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, Error> {
        let req = match (&self.user, req.get_user()) {
            (Some(u), None) => req.user(u.clone()),
            _ => req,
        };
        Ok(self.agent.exec(&req).await?)
    }
    /// Reads a file, up to `limit` bytes.
    pub async fn read_file(&self, path: &str, limit: Option<u64>) -> Result<Vec<u8>, Error> {
        Ok(self.agent.read_file(path, limit).await?)
    }
    /// Writes a file, creating parent directories.
    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), Error> {
        Ok(self.agent.write_file(path, contents).await?)
    }
}
