//! Drives guests from the simulated VM state: after every task effect the simulator compares
//! which VMs run (and since when) with the guests it has, and queues boots, power-offs, disk
//! clones and disk removals for the guest backend.
//!
//! Each VM has one queue worked off in order by one tokio task, so a stop followed by a start
//! can never boot the new guest on a disk the old one still uses, and a destroy cannot race a
//! later VM with the same id. Backend calls run without the state lock; a boot that finishes
//! after its VM was stopped again powers its guest off instead of installing it.
//!
//! Without a backend every running VM gets a [`CannedGuest`] at once, so the agent of a VM
//! started with the instant profile answers as soon as its start task has ended.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::guest::{BootSpec, CannedGuest, CloudInitGuest, Guest, GuestFactory};
use crate::state::{Shared, State};

/// The guest of one VM boot.
pub(crate) enum Slot {
    /// The backend is booting it.
    Booting,
    /// Its agent answers.
    Up(Arc<dyn Guest>),
    /// The backend could not boot it (the agent never answers).
    Failed,
}

pub(crate) struct GuestRec {
    /// Which boot of the VM this guest belongs to (`Vm::started_at`).
    started_at: Instant,
    pub(crate) slot: Slot,
    /// Frozen (or being frozen) by a pause.
    paused: bool,
}

/// Resolves when the backend froze or thawed a guest, with its error if it could not.
pub(crate) type Barrier = oneshot::Receiver<Result<(), String>>;

enum Op {
    Boot {
        spec: BootSpec,
        started_at: Instant,
        /// Booted from a cloud image: wrap the guest in the modelled `cloud-init`.
        cloud_init: bool,
    },
    PowerOff(Arc<dyn Guest>),
    /// Freeze (`pause`) or thaw the guest of boot `started_at`, whichever state its boot is in
    /// by the time the queue gets here.
    Freeze {
        started_at: Instant,
        pause: bool,
        done: oneshot::Sender<Result<(), String>>,
    },
    CloneDisk {
        from: u32,
    },
    DestroyDisk,
}

/// The simulator's guests and their queues.
#[derive(Default)]
pub(crate) struct Guests {
    pub(crate) recs: BTreeMap<u32, GuestRec>,
    /// VMs that may have a disk with the backend.
    disks: BTreeSet<u32>,
    queues: HashMap<u32, mpsc::UnboundedSender<Op>>,
    /// `(from, to)` disk copies asked for by finished clone tasks.
    pub(crate) pending_clones: Vec<(u32, u32)>,
    /// Freezes and thaws the last reconcile queued: the task that caused them ends after them.
    pub(crate) barriers: Vec<Barrier>,
}

impl State {
    /// The answering guest of `vmid`, if it has one.
    pub(crate) fn guest(&self, vmid: u32) -> Option<Arc<dyn Guest>> {
        match &self.guests.recs.get(&vmid)?.slot {
            Slot::Up(g) => Some(g.clone()),
            Slot::Booting | Slot::Failed => None,
        }
    }

    /// Brings guests in line with the VMs (see the module docs).
    pub(crate) fn reconcile_guests(&mut self, shared: &Arc<Shared>) {
        let factory = shared.cfg.guests.as_ref().map(|b| b.0.clone());
        self.guests.barriers.clear();
        for (from, to) in std::mem::take(&mut self.guests.pending_clones) {
            self.guests.disks.insert(to);
            self.enqueue(shared, &factory, to, Op::CloneDisk { from });
        }
        let mut wanted = Vec::new();
        for (&vmid, vm) in &self.vms {
            let want = vm.started_at.filter(|_| vm.running);
            let paused = vm.qmpstatus == "paused";
            wanted.push((
                vmid,
                want,
                vm.config.clone(),
                vm.cloud_image.is_some(),
                paused,
            ));
        }
        for (vmid, want, config, cloud_init, paused) in wanted {
            self.guests.disks.insert(vmid);
            let current = self.guests.recs.get(&vmid).map(|r| r.started_at);
            if let Some(started_at) = want
                && want == current
            {
                let rec = self.guests.recs.get_mut(&vmid).expect("just found");
                if rec.paused != paused {
                    rec.paused = paused;
                    let (done, barrier) = oneshot::channel();
                    let op = Op::Freeze {
                        started_at,
                        pause: paused,
                        done,
                    };
                    if factory.is_some() {
                        self.guests.barriers.push(barrier);
                    }
                    self.enqueue(shared, &factory, vmid, op);
                }
                continue;
            }
            if let Some(old) = self.guests.recs.remove(&vmid) {
                self.power_off(shared, &factory, vmid, old);
            }
            let Some(started_at) = want else { continue };
            let spec = BootSpec {
                vmid,
                name: config.get("name").cloned().unwrap_or_default(),
                config: config.into_iter().collect(),
            };
            let slot = match &factory {
                None => {
                    let g: Arc<dyn Guest> = Arc::new(CannedGuest::new(spec.clone()));
                    Slot::Up(if cloud_init {
                        CloudInitGuest::wrap(g)
                    } else {
                        g
                    })
                }
                Some(_) => {
                    let op = Op::Boot {
                        spec,
                        started_at,
                        cloud_init,
                    };
                    self.enqueue(shared, &factory, vmid, op);
                    Slot::Booting
                }
            };
            self.guests.recs.insert(
                vmid,
                GuestRec {
                    started_at,
                    slot,
                    paused: false,
                },
            );
        }
        let gone: Vec<u32> = self
            .guests
            .recs
            .keys()
            .filter(|v| !self.vms.contains_key(v))
            .copied()
            .collect();
        for vmid in gone {
            if let Some(old) = self.guests.recs.remove(&vmid) {
                self.power_off(shared, &factory, vmid, old);
            }
        }
        let destroyed: Vec<u32> = self
            .guests
            .disks
            .iter()
            .filter(|v| !self.vms.contains_key(v))
            .copied()
            .collect();
        for vmid in destroyed {
            self.guests.disks.remove(&vmid);
            self.enqueue(shared, &factory, vmid, Op::DestroyDisk);
        }
    }

    fn power_off(
        &mut self,
        shared: &Arc<Shared>,
        factory: &Option<Arc<dyn GuestFactory>>,
        vmid: u32,
        rec: GuestRec,
    ) {
        // A guest still booting is powered off by its boot op, which finds its record gone.
        if let Slot::Up(g) = rec.slot {
            self.enqueue(shared, factory, vmid, Op::PowerOff(g));
        }
    }

    fn enqueue(
        &mut self,
        shared: &Arc<Shared>,
        factory: &Option<Arc<dyn GuestFactory>>,
        vmid: u32,
        op: Op,
    ) {
        let Some(factory) = factory else { return };
        let tx = match self.guests.queues.get(&vmid) {
            Some(tx) => tx.clone(),
            None => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    tracing::warn!(vmid, "no tokio runtime: guest lifecycle ignored");
                    return;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                rt.spawn(worker(Arc::downgrade(shared), factory.clone(), vmid, rx));
                self.guests.queues.insert(vmid, tx.clone());
                tx
            }
        };
        let _ = tx.send(op);
    }
}

async fn worker(
    shared: Weak<Shared>,
    factory: Arc<dyn GuestFactory>,
    vmid: u32,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    while let Some(op) = rx.recv().await {
        match op {
            Op::Boot {
                spec,
                started_at,
                cloud_init,
            } => {
                let current = |s: &Shared| {
                    s.lock()
                        .guests
                        .recs
                        .get(&vmid)
                        .is_some_and(|r| r.started_at == started_at)
                };
                // Superseded while queued (stopped or restarted again): skip the boot.
                if !shared.upgrade().is_some_and(|s| current(&s)) {
                    continue;
                }
                let booted = factory.boot(spec).await.map(|g| {
                    if cloud_init {
                        CloudInitGuest::wrap(g)
                    } else {
                        g
                    }
                });
                let leftover = match shared.upgrade() {
                    None => booted.ok(),
                    Some(s) => {
                        let mut st = s.lock();
                        match st.guests.recs.get_mut(&vmid) {
                            Some(r) if r.started_at == started_at => {
                                r.slot = match booted {
                                    Ok(g) => Slot::Up(g),
                                    Err(e) => {
                                        tracing::warn!(vmid, "guest boot failed: {e}");
                                        Slot::Failed
                                    }
                                };
                                None
                            }
                            _ => booted.ok(),
                        }
                    }
                };
                if let Some(g) = leftover {
                    g.power_off().await;
                }
            }
            Op::PowerOff(g) => g.power_off().await,
            Op::Freeze {
                started_at,
                pause,
                done,
            } => {
                // The guest of that boot, if it is still the VM's and came up at all.
                let guest = shared.upgrade().and_then(|s| {
                    let st = s.lock();
                    let rec = st.guests.recs.get(&vmid)?;
                    match &rec.slot {
                        Slot::Up(g) if rec.started_at == started_at => Some(g.clone()),
                        _ => None,
                    }
                });
                let r = match guest {
                    Some(g) if pause => g.pause().await,
                    Some(g) => g.resume().await,
                    None => Ok(()),
                };
                let _ = done.send(r);
            }
            Op::CloneDisk { from } => {
                if let Err(e) = factory.clone_disk(from, vmid).await {
                    tracing::warn!(vmid, from, "disk clone failed: {e}");
                }
            }
            Op::DestroyDisk => {
                if let Err(e) = factory.destroy_disk(vmid).await {
                    tracing::warn!(vmid, "disk removal failed: {e}");
                }
            }
        }
    }
}
