//! The process-level core every run shares: one pool over every configured instance (its
//! actor system, VM-id allocators, per-storage clone gates and coalesced SDN applies), and per
//! instance the subnet reservations and the template store.
//!
//! One `Fleet` per process, cheap to clone. Two evals of one process (an eval set, or a server
//! holding many users' sandboxes) that each started their own would count capacity twice and
//! clone onto one storage in parallel, which the clone gate exists to prevent; runs of one
//! fleet wait for the same leases and the same gates.
//!
//! Attaching to a live sample needs no fleet at all: [`locate`] and [`attach`] read it back
//! from Proxmox state (VM names and tags), as any process can.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex, Weak};

use guest_agent::GuestAgent;
use pve_client::PveClient;
use pve_sdn::SubnetReservations;
use pvesandbox_pool::{InstanceConfig, InstanceHandle, Pool, PoolOptions};
use pvesandbox_templates::Templates;

use crate::config::Settings;
use crate::error::Error;
use crate::eval::EvalConfig;
use crate::events::{Events, SampleEvent};
use crate::lifecycle::{Core, Run, SampleInfo, TaskOptions};
use crate::owner::{RunId, SampleId};

/// The process's pool, reservations and template stores; see the module docs.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    pool: Pool,
    instances: BTreeMap<String, FleetInstance>,
    events: Events,
    /// Every sample of every run from its lease to its teardown, detached ones included (they
    /// keep their lease here, so their slots stay counted while the fleet lives).
    samples: StdMutex<BTreeMap<SampleId, Arc<Core>>>,
}

/// What the fleet keeps of one instance for all its runs.
pub(crate) struct FleetInstance {
    pub(crate) handle: InstanceHandle,
    /// Ranges this process's samples hold on the instance, whichever run they belong to.
    pub(crate) subnets: SubnetReservations,
    /// Finds and builds templates (and remembers OVA digests) for every run.
    pub(crate) templates: Templates,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("instances", &self.inner.instances.keys())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Validates `settings` and starts the pool over every configured instance (probed in
    /// parallel; one that fails starts quarantined, as long as another is usable).
    pub async fn start(settings: Settings) -> Result<Fleet, Error> {
        settings.validate()?;
        let pool = Pool::start(settings.instances.clone(), PoolOptions::default()).await?;
        let mut instances = BTreeMap::new();
        for h in pool.instances() {
            let templates = Templates::new(
                h.client().clone(),
                crate::images::template_config(&settings, h.config())?,
            );
            instances.insert(
                h.id().to_owned(),
                FleetInstance {
                    handle: h.clone(),
                    subnets: SubnetReservations::new(),
                    templates,
                },
            );
        }
        Ok(Fleet {
            inner: Arc::new(Inner {
                settings,
                pool,
                instances,
                events: Events::new(),
                samples: StdMutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The process's live fleet for `settings`, or a new one: callers that each load the same
    /// settings (the Inspect adapter's tasks of one eval set) share one pool, one capacity
    /// count and one set of clone gates. A fleet lives while a clone of it does; the next call
    /// after that starts afresh. Settings that differ only in their secrets count as the same
    /// (they come from one process's sources).
    pub async fn shared(settings: Settings) -> Result<Fleet, Error> {
        static LIVE: tokio::sync::Mutex<Vec<(String, Weak<Inner>)>> =
            tokio::sync::Mutex::const_new(Vec::new());
        // Debug shows every field but the secrets.
        let key = format!("{settings:?}");
        // Held across the start, so concurrent callers wait for one fleet, not start two.
        let mut live = LIVE.lock().await;
        live.retain(|(_, w)| w.strong_count() > 0);
        if let Some(inner) = live
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(Fleet { inner });
        }
        let fleet = Fleet::start(settings).await?;
        live.push((key, Arc::downgrade(&fleet.inner)));
        Ok(fleet)
    }

    /// Starts a run of `eval` on this fleet: its templates ensured on every instance of the
    /// eval's pool (in parallel).
    pub async fn run(&self, eval: EvalConfig, opts: TaskOptions) -> Result<Run, Error> {
        Run::start(self.clone(), eval, opts, true).await
    }

    /// A run of `eval` that only takes over samples an earlier process made
    /// ([`Run::adopt`]): no template is looked for or built (a restarted server must not
    /// rebuild a template that was collected since), so its `sample_init` refuses.
    pub async fn adopting_run(&self, eval: EvalConfig, opts: TaskOptions) -> Result<Run, Error> {
        Run::start(self.clone(), eval, opts, false).await
    }

    /// A new run id whose key no live run on pool `pool_id` uses: network ids embed only the
    /// run's 4-character key (one listing per instance; a few draws at most, 36⁴ keys). For
    /// callers that must name a run before starting it ([`TaskOptions::run`]).
    pub async fn fresh_run_id(&self, pool_id: &str) -> Result<RunId, Error> {
        let mut run = RunId::random();
        for _ in 0..8 {
            let mut taken = false;
            for m in self.members(pool_id) {
                let zones = pve_sdn::list_owned_zones(m.handle.client()).await?;
                taken |= zones.iter().any(|(_, key, _)| key == run.key());
            }
            if !taken {
                break;
            }
            run = RunId::random();
        }
        Ok(run)
    }

    /// Whether `other` is a clone of this fleet (the same pool).
    pub fn same_as(&self, other: &Fleet) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The pool every run leases from.
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The instances of pool `pool_id`.
    pub(crate) fn members(&self, pool_id: &str) -> impl Iterator<Item = &FleetInstance> {
        self.inner
            .instances
            .values()
            .filter(move |i| i.handle.config().pool_id == pool_id)
    }

    /// One instance, by id.
    pub(crate) fn instance(&self, id: &str) -> &FleetInstance {
        &self.inner.instances[id]
    }

    /// The event stream of every sample of every run on this fleet, from now on (see
    /// [`crate::events`] for the delivery guarantees).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SampleEvent> {
        self.inner.events.subscribe()
    }

    /// Every live sample of the fleet (leased and not yet torn down, detached ones included),
    /// by id.
    pub fn samples(&self) -> Vec<SampleInfo> {
        lock(&self.inner.samples)
            .values()
            .map(|c| c.info())
            .collect()
    }

    /// One live sample of the fleet.
    pub fn sample(&self, id: &SampleId) -> Option<SampleInfo> {
        lock(&self.inner.samples).get(id).map(|c| c.info())
    }

    pub(crate) fn events(&self) -> &Events {
        &self.inner.events
    }

    pub(crate) fn register(&self, core: &Arc<Core>) {
        lock(&self.inner.samples).insert(core.tracker.id.clone(), core.clone());
    }

    pub(crate) fn unregister(&self, id: &SampleId) {
        lock(&self.inner.samples).remove(id);
    }

    /// Requests each instance's client sent to Proxmox so far, by instance id.
    pub fn pve_calls(&self) -> Vec<(String, Vec<pve_client::CallCount>)> {
        self.inner
            .instances
            .iter()
            .map(|(k, i)| (k.clone(), i.handle.client().calls()))
            .collect()
    }

    /// How many samples pool `pool_id` holds at once, over all runs.
    pub fn capacity(&self, pool_id: &str) -> usize {
        self.members(pool_id)
            .map(|i| i.handle.config().max_samples.unwrap_or(1) as usize)
            .sum()
    }
}

/// A live sample found from Proxmox state alone, by any process: its VMs by sandbox name, each
/// with a guest agent. Attaching removes nothing when dropped (`pvesandbox down` or the expiry
/// does). Through [`Fleet::attach`] it counts against its instance's capacity in that fleet
/// while any clone of it lives, so the fleet's own samples wait for the room it takes.
#[derive(Clone)]
pub struct Attached {
    /// The sample.
    pub id: SampleId,
    /// The instance it lives on.
    pub instance: String,
    /// Its VMs, by VM id.
    pub vms: Vec<AttachedVm>,
    /// Its place in the fleet's capacity count (none without a fleet).
    lease: Option<Arc<pvesandbox_pool::Lease>>,
}

/// One VM of an [`Attached`] sample.
#[derive(Clone)]
pub struct AttachedVm {
    /// Its sandbox name (`default`, `victim`).
    pub name: String,
    /// Its VM id.
    pub vmid: pve_client::Vmid,
    /// The node it runs on.
    pub node: String,
    /// Exec and files inside it.
    pub agent: GuestAgent,
    /// Its RAM, MiB.
    pub memory_mb: u64,
    /// Its vCPUs.
    pub cores: u32,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vms: Vec<_> = self.vms.iter().map(|v| (&v.name, v.vmid)).collect();
        f.debug_struct("Attached")
            .field("id", &self.id)
            .field("instance", &self.instance)
            .field("vms", &vms)
            .finish()
    }
}

impl Attached {
    /// One VM by sandbox name.
    pub fn get(&self, name: &str) -> Result<&AttachedVm, Error> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::NoSuchSandbox {
                name: name.into(),
                known: self.vms.iter().map(|v| v.name.clone()).collect(),
            })
    }
}

/// Every live sample of `run` on `instances`, from their VMs' tags and names (one listing per
/// instance).
pub async fn locate(instances: &[InstanceConfig], run: &RunId) -> Result<Vec<Attached>, Error> {
    let mut clients = Vec::new();
    for i in instances {
        clients.push((i.instance_id.clone(), i.client().map_err(Error::from_pool)?));
    }
    locate_with(&clients, run).await
}

/// The sample `id`, from Proxmox state alone (see [`Attached`]).
pub async fn attach(instances: &[InstanceConfig], id: &SampleId) -> Result<Attached, Error> {
    pick(locate(instances, &id.run).await?, id)
}

fn pick(found: Vec<Attached>, id: &SampleId) -> Result<Attached, Error> {
    found
        .into_iter()
        .find(|a| a.id == *id)
        .ok_or_else(|| Error::NoSuchRun {
            run: id.to_string(),
        })
}

pub(crate) async fn locate_with(
    clients: &[(String, PveClient)],
    run: &RunId,
) -> Result<Vec<Attached>, Error> {
    let mut out: BTreeMap<SampleId, Attached> = BTreeMap::new();
    for (instance, client) in clients {
        for vm in crate::vm::list_owned(client).await? {
            let Some((id, name)) = SampleId::of_vm_name(&vm.name) else {
                continue;
            };
            if id.run != *run || vm.tagged.run.as_ref().is_some_and(|r| r != run) {
                continue;
            }
            let a = out.entry(id.clone()).or_insert_with(|| Attached {
                id,
                instance: instance.clone(),
                vms: Vec::new(),
                lease: None,
            });
            a.vms.push(AttachedVm {
                name,
                vmid: vm.vmid,
                agent: GuestAgent::new(client.clone(), &vm.node, vm.vmid),
                node: vm.node,
                memory_mb: vm.memory_mb,
                cores: vm.cores,
            });
        }
    }
    Ok(out.into_values().collect())
}

impl Fleet {
    /// The live sample `id`, whichever process made it, through the fleet's clients. One this
    /// fleet did not make counts against its instance's capacity while the handle lives.
    pub async fn attach(&self, id: &SampleId) -> Result<Attached, Error> {
        let mut found = pick(locate_with(&self.clients(), &id.run).await?, id)?;
        // One of our own samples already holds its lease.
        if self.sample(id).is_some() {
            return Ok(found);
        }
        let needs = pvesandbox_pool::Needs {
            ram_mb: found.vms.iter().map(|v| v.memory_mb).sum(),
            vcpus: found.vms.iter().map(|v| v.cores).sum(),
        };
        let lease = self.inner.pool.adopt(&found.instance, needs).await?;
        found.lease = Some(Arc::new(lease));
        Ok(found)
    }
}

impl Fleet {
    /// `(instance id, client)` of every instance.
    pub(crate) fn clients(&self) -> Vec<(String, PveClient)> {
        self.inner
            .instances
            .iter()
            .map(|(k, i)| (k.clone(), i.handle.client().clone()))
            .collect()
    }

    /// Every sample on pool `pool_id`'s instances, whichever process made it, with the owner
    /// record of its first VM: what a restarted front end decides to take over or remove.
    /// One listing per instance and one config read per sample.
    pub async fn survey(&self, pool_id: &str) -> Result<Vec<Surveyed>, Error> {
        let mut out = Vec::new();
        for inst in self.members(pool_id) {
            let client = inst.handle.client();
            let mut by_sample: BTreeMap<SampleId, Vec<crate::vm::OwnedVm>> = BTreeMap::new();
            for vm in crate::vm::list_owned(client).await? {
                if let Some((id, _)) = SampleId::of_vm_name(&vm.name) {
                    by_sample.entry(id).or_default().push(vm);
                }
            }
            for (id, vms) in by_sample {
                let first = &vms[0];
                let cfg = client
                    .node(&first.node)
                    .qemu(first.vmid)
                    .config_current()
                    .await?;
                let record =
                    crate::owner::OwnerRecord::parse(&cfg.get("description").unwrap_or_default())
                        .filter(|r| r.run == id.run && r.sample == id.seq);
                out.push(Surveyed {
                    id,
                    instance: inst.handle.id().to_owned(),
                    record,
                });
            }
        }
        Ok(out)
    }
}

/// A sample as [`Fleet::survey`] found it in Proxmox.
#[derive(Debug, Clone)]
pub struct Surveyed {
    /// The sample.
    pub id: SampleId,
    /// The instance it lives on.
    pub instance: String,
    /// Its first VM's owner record, if it holds one for this sample (`None`: not safe to
    /// judge by its record).
    pub record: Option<crate::owner::OwnerRecord>,
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The registry is a plain map; a panic elsewhere leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
