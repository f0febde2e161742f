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
use pve_client::PveClient;
use pve_sdn::{Egress, Network, NetworkIds, NetworkOptions, SdnError, SdnSpec};
use pvesandbox_pool::{InstanceHandle, Lease, Needs};
use pvesandbox_templates::{Progress, Template};
use tokio::sync::Mutex;

use crate::cleanup::{CleanupReport, CleanupTarget, cleanup_instance};
use crate::config::Settings;
use crate::error::Error;
use crate::eval::{EvalConfig, VmConfig};
use crate::fleet::Fleet;
use crate::owner::{OwnerRecord, RunId, vm_name};
use crate::vm;

/// Progress of long steps (template downloads and builds) as `(instance, event)`.
pub type ProgressFn = Arc<dyn Fn(&str, &Progress) + Send + Sync>;

/// Options of [`Run::task_init`].
#[derive(Default, Clone)]
pub struct TaskOptions {
    /// Reuse this run id (e.g. to resume cleanup; default: a fresh one).
    pub run: Option<RunId>,
    /// Called while templates are fetched and built.
    pub progress: Option<ProgressFn>,
}

/// Wall time of each phase of one sample, for the demo's table and benchmarks.
#[derive(Debug, Clone, Default)]
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
    open: StdMutex<BTreeMap<u32, Arc<SampleState>>>,
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

    /// Validates the eval and makes sure every template exists on every instance of the
    /// eval's pool (instances in parallel).
    pub(crate) async fn start(
        fleet: Fleet,
        eval: EvalConfig,
        opts: TaskOptions,
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
        let mut run = opts.run.clone().unwrap_or_else(RunId::random);
        // Network ids embed only the run's 4-character key; make sure no live run shares it.
        if opts.run.is_none() {
            for _ in 0..8 {
                let mut taken = false;
                for m in &members {
                    let zones = pve_sdn::list_owned_zones(m.handle.client()).await?;
                    taken |= zones.iter().any(|(_, key, _)| key == run.key());
                }
                if !taken {
                    break;
                }
                run = RunId::random();
            }
        }
        let jobs = members.iter().map(|m| {
            let eval = &eval;
            let progress = opts.progress.clone();
            let (h, templates) = (&m.handle, &m.templates);
            async move {
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
    /// is removed before the error returns (the error says if something could not be).
    pub async fn sample_init(&self) -> Result<Sample, Error> {
        let inner = &self.inner;
        let seq = inner.next_sample.fetch_add(1, Ordering::SeqCst);
        let mut timings = SampleTimings::default();
        let needs = Needs {
            ram_mb: inner.eval.vms_config.iter().map(VmConfig::ram).sum(),
            vcpus: inner.eval.vms_config.iter().map(VmConfig::cores).sum(),
        };
        let t = Instant::now();
        let lease = inner
            .fleet
            .pool()
            .acquire(
                &inner.eval.instance_pool_id,
                needs,
                inner.fleet.settings().run.lease_timeout(),
            )
            .await?;
        timings.lease = t.elapsed();
        let handle = lease.instance().clone();
        let state = Arc::new(SampleState {
            seq,
            instance: handle.id().to_owned(),
            handle: handle.clone(),
            vms: StdMutex::new(Vec::new()),
            network: StdMutex::new(None),
            lease: StdMutex::new(Some(lease)),
            done: Mutex::new(false),
        });
        lock(&inner.open).insert(seq, state.clone());
        match self.build(&state, &mut timings).await {
            Ok(sandboxes) => Ok(Sample {
                task: self.clone(),
                state,
                sandboxes,
                timings,
            }),
            Err((step, e)) => {
                let leftover = match state.teardown(self).await {
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
        state: &Arc<SampleState>,
        first_vm: tokio::sync::watch::Receiver<bool>,
        took: Arc<StdMutex<Option<Duration>>>,
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
            *lock(&took) = Some(t.elapsed());
            match r {
                Ok(net) => {
                    *lock(&state.network) = Some(net.clone());
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

    async fn build(
        &self,
        state: &Arc<SampleState>,
        timings: &mut SampleTimings,
    ) -> Result<Vec<SandboxVm>, (String, Error)> {
        let inner = &self.inner;
        let inst = &inner.instances[&state.instance];
        let run = &inner.fleet.settings().run;
        let (first_tx, first_rx) = tokio::sync::watch::channel(false);
        let net_time: Arc<StdMutex<Option<Duration>>> = Arc::default();
        let (net, net_failure) = self
            .network_future(state, first_rx, net_time.clone())
            .map_err(|e| ("network".to_owned(), e))?;
        let names = inner.eval.sandbox_names();
        let t = Instant::now();
        let create_one = |i: usize| {
            let vmc = &inner.eval.vms_config[i];
            let name = names[i].clone();
            let template = &inst.per_vm[i];
            let net = net.clone();
            let first_tx = &first_tx;
            async move {
                let step = format!("vm {name:?}");
                let client = inst.handle.client();
                let node = inst.handle.node();
                let record = OwnerRecord::here(&inner.run, state.seq, &name, run.ttl());
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
                lock(&state.vms).push((vmid.0, name.clone()));
                let _ = first_tx.send(true);
                client
                    .wait_task(&upid, pve_client::WaitOptions::with_timeout(CLONE_TIMEOUT))
                    .await
                    .map_err(|e| (step.clone(), Error::from(e)))?;
                drop(permit);
                let network = net.await.map_err(|m| {
                    (
                        "network".to_owned(),
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
                pvesandbox_templates::finish_clone(
                    client,
                    template,
                    &spec,
                    &upid,
                    pve_client::WaitOptions::with_timeout(CLONE_TIMEOUT),
                )
                .await
                .map_err(|e| (step.clone(), Error::from(e)))?;
                pve_sdn::vm_firewall(client, node, vmid.0, &network)
                    .await
                    .map_err(|e| (format!("firewall of {name:?}"), Error::from(e)))?;
                vm::start(client, node, vmid.0)
                    .await
                    .map_err(|e| (format!("start of {name:?}"), Error::from(e)))?;
                let mut agent = GuestAgent::new(client.clone(), node, vmid.0);
                if let Some(u) = &vmc.user {
                    agent = agent.file_user(u.clone());
                }
                let vm = SandboxVm {
                    name: name.clone(),
                    vmid: vmid.0,
                    node: node.to_owned(),
                    instance: inst.handle.id().to_owned(),
                    is_sandbox: vmc.is_sandbox,
                    user: vmc.user.clone(),
                    agent,
                };
                if vmc.await_before_next_vm && vmc.is_sandbox {
                    vm.wait_agent(run.agent_timeout())
                        .await
                        .map_err(|e| (format!("agent of {name:?}"), e))?;
                }
                Ok::<_, (String, Error)>(vm)
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
        timings.vms = t.elapsed();
        timings.network = lock(&net_time).unwrap_or_default();
        // The network's own typed error beats the VMs' "network failed" echoes.
        if let Some(e) = lock(&net_failure).take() {
            return Err(("network".to_owned(), Error::from(e)));
        }
        let mut vms = Vec::new();
        for r in results {
            vms.push(r?);
        }
        let t = Instant::now();
        let waits = vms.iter().filter(|v| v.is_sandbox).map(|v| async move {
            v.wait_agent(run.agent_timeout())
                .await
                .map_err(|e| (format!("agent of {:?}", v.name), e))
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
        timings.agents = t.elapsed();
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

/// What a sample made, for teardown (also after a failed init).
struct SampleState {
    seq: u32,
    instance: String,
    handle: InstanceHandle,
    vms: StdMutex<Vec<(u32, String)>>,
    network: StdMutex<Option<Network>>,
    lease: StdMutex<Option<Lease>>,
    /// Held during teardown, so concurrent cleanups of one sample do the work once.
    done: Mutex<bool>,
}

impl SampleState {
    /// The background retry the pool runs while the instance is quarantined: the same
    /// teardown, from ids alone.
    fn retry(&self, vms: &[(u32, String)], zone: Option<String>) -> pvesandbox_pool::CleanupRetry {
        let client = self.handle.client().clone();
        let node = self.handle.node().to_owned();
        let vmids: Vec<u32> = vms.iter().map(|(v, _)| *v).collect();
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
    async fn teardown(&self, task: &Run) -> Result<(), Error> {
        let mut done = self.done.lock().await;
        if *done {
            return Ok(());
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
                Ok(()) => self.handle.allocator().release(pve_client::Vmid(*vmid)),
                Err(e) => failed.push(format!("{}/{vmid} ({name}): {e}", self.instance)),
            }
        }
        let net = lock(&self.network).clone();
        let net_zone = net.as_ref().and_then(|n| n.zone.clone());
        if failed.is_empty()
            && let Some(net) = net
        {
            let subnets = &task.inner.fleet.instance(&self.instance).subnets;
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
            Ok(())
        } else {
            // Keep the instance out of rotation until a retry cleans it.
            if let Some(lease) = lock(&self.lease).take() {
                lease.release_dirty(self.retry(&vms, net_zone));
            }
            Err(Error::Cleanup { leftover: failed })
        }
    }
}

/// A created sample: its sandboxes by name, until [`Sample::cleanup`].
pub struct Sample {
    task: Run,
    state: Arc<SampleState>,
    sandboxes: Vec<SandboxVm>,
    timings: SampleTimings,
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("seq", &self.state.seq)
            .field("instance", &self.state.instance)
            .field("sandboxes", &self.sandboxes)
            .finish_non_exhaustive()
    }
}

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
        self.state.seq
    }
    /// Its identity across processes (`s<seq>.<run>`; [`crate::Fleet::attach`] takes it).
    pub fn id(&self) -> crate::owner::SampleId {
        crate::owner::SampleId {
            run: self.task.run_id().clone(),
            seq: self.state.seq,
        }
    }
    /// The network's zone id, if the sample made one.
    pub fn zone(&self) -> Option<String> {
        lock(&self.state.network)
            .as_ref()
            .and_then(|n| n.zone.clone())
    }
    /// Phase timings of its creation.
    pub fn timings(&self) -> &SampleTimings {
        &self.timings
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
        let vms = lock(&self.state.vms).clone();
        let client = self.state.handle.client();
        let node = client.node(&self.state.handle.config().node);
        for (vmid, name) in vms {
            let vm = node.qemu(pve_client::Vmid(vmid));
            let cfg = vm.config_current().await?;
            let description = cfg.get("description").unwrap_or_default();
            let Some(mut record) = OwnerRecord::parse(&description) else {
                return Err(Error::NotOurs {
                    vm: format!("{}/{vmid} ({name})", self.state.instance),
                    why: "its description holds no owner record any more; not renewed".into(),
                });
            };
            record.expires = expires;
            let mut tags: Vec<String> = cfg
                .tag_list()
                .into_iter()
                .filter(|t| !t.starts_with(crate::owner::EXPIRY_PREFIX))
                .collect();
            tags.push(format!("{}{expires}", crate::owner::EXPIRY_PREFIX));
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
    /// Removes everything the sample made (idempotent). With `interrupted`, defers to the
    /// task's cleanup instead, as Inspect asks for a cancelled sample.
    pub async fn cleanup(&self, interrupted: bool) -> Result<(), Error> {
        if interrupted {
            return Ok(());
        }
        self.state.teardown(&self.task).await
    }
    /// Leaves the sample running after this process exits (`pvesandbox up`); `down` or the
    /// expiry removes it.
    pub fn detach(self) {
        lock(&self.task.inner.open).remove(&self.state.seq);
        // The process is about to exit; the slot does not need returning.
        if let Some(lease) = lock(&self.state.lease).take() {
            std::mem::forget(lease);
        }
    }
}

/// One VM of a sample, with its guest agent.
#[derive(Clone)]
pub struct SandboxVm {
    name: String,
    vmid: u32,
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
    pub fn vmid(&self) -> u32 {
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
