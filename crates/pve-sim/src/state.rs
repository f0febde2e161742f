//! The simulated cluster: VMs, tasks, storage, pools, tickets, and the request log.
//!
//! All of it sits behind one `std::sync::Mutex` in [`Shared`]. The lock is never held across
//! an `.await`: handlers take it, change the state, and drop it before the response is written;
//! tasks with a modelled duration run on a tokio task that sleeps *without* the lock and takes
//! it again only to apply their effect.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde_json::{Value, json};

use crate::config::{SimConfig, TaskKind};
use crate::error::ApiError;
use crate::faults::Faults;
use crate::log::RequestLog;

/// State shared by the server, tasks and the test handle.
pub struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) cfg: SimConfig,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler must not wedge every later request: the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A simulated QEMU VM.
#[derive(Debug, Clone)]
pub struct Vm {
    /// Node it lives on.
    pub node: String,
    /// Config as stored, every value a string (the way PVE keeps it in the `.conf` file).
    pub config: BTreeMap<String, String>,
    /// Pending changes (value, or `None` for a pending delete), applied at the next cold start.
    pub pending: BTreeMap<String, Option<String>>,
    /// Power state.
    pub running: bool,
    /// QEMU's view (`running`, `paused`, `stopped`, ...).
    pub qmpstatus: String,
    /// Snapshots in creation order.
    pub snapshots: Vec<Snap>,
    /// The config-file lock (`flock`) held by a running task, until this instant.
    pub flock_until: Option<Instant>,
    /// Template this VM is a linked clone of.
    pub linked_from: Option<u32>,
    /// When it last started (uptime, agent readiness).
    pub started_at: Option<Instant>,
    /// When its guest agent answers (after boot).
    pub agent_ready_at: Option<Instant>,
    /// Its disk came from an imported image (see [`crate::image`]'s cloud-image model).
    pub cloud_image: Option<CloudImage>,
}

/// A VM disk made from an `import` volume: a stock cloud image until a NoCloud seed installs
/// the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudImage {
    /// The volume it was imported from (`local:import/x.qcow2`).
    pub source: String,
    /// cloud-init installed and started the QEMU guest agent on this disk.
    pub agent_installed: bool,
}

/// A snapshot.
#[derive(Debug, Clone)]
pub struct Snap {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Unix time.
    pub snaptime: u64,
    /// RAM included.
    pub vmstate: bool,
    /// Parent snapshot.
    pub parent: Option<String>,
    /// Config at snapshot time.
    pub config: BTreeMap<String, String>,
}

/// A file on a storage that does not belong to a VM (ISO, import image, template).
#[derive(Debug, Clone)]
pub struct Volume {
    /// `local:iso/x.iso`.
    pub volid: String,
    /// `iso`, `import`, `vztmpl`, `images`.
    pub content: String,
    /// File format.
    pub format: String,
    /// Bytes.
    pub size: u64,
    /// Unix time.
    pub ctime: u64,
    /// Members of a tar archive (an OVA), name and size.
    pub members: Vec<(String, u64)>,
    /// What the file is as a NoCloud seed, for an ISO that is one.
    pub seed: Option<crate::image::NoCloudSeed>,
    /// Its `notes` attribute.
    pub notes: Option<String>,
    /// Its `protected` attribute.
    pub protected: bool,
}

/// A task, running or stopped.
#[derive(Debug, Clone)]
pub struct Task {
    /// UPID.
    pub upid: String,
    /// Node.
    pub node: String,
    /// Worker type.
    pub kind: String,
    /// Object id.
    pub id: String,
    /// User or token.
    pub user: String,
    /// Unix start time.
    pub starttime: u64,
    /// Worker pid.
    pub pid: u32,
    /// Process start ticks.
    pub pstart: u64,
    /// `None` while running; `OK` or the error afterwards.
    pub exitstatus: Option<String>,
    /// Unix end time.
    pub endtime: Option<u64>,
    /// Log lines.
    pub log: Vec<String>,
}

/// A resource pool.
#[derive(Debug, Clone, Default)]
pub struct PoolState {
    /// Comment.
    pub comment: Option<String>,
    /// Member VMs.
    pub vms: Vec<u32>,
}

/// A login ticket.
#[derive(Debug, Clone)]
pub struct TicketInfo {
    /// Owner.
    pub user: String,
    /// Issued at.
    pub issued: Instant,
    /// Matching CSRF token.
    pub csrf: String,
}

/// The simulated cluster.
pub struct State {
    /// VMs by id.
    pub vms: BTreeMap<u32, Vm>,
    /// Tasks by UPID.
    pub tasks: HashMap<String, Task>,
    /// UPIDs in start order.
    pub task_order: Vec<String>,
    /// Non-VM volumes by `(node, storage)`.
    pub volumes: BTreeMap<(String, String), Vec<Volume>>,
    /// Pools by id.
    pub pools: BTreeMap<String, PoolState>,
    /// Valid tickets.
    pub tickets: HashMap<String, TicketInfo>,
    /// Request log.
    pub log: RequestLog,
    /// Armed faults.
    pub faults: Faults,
    /// SDN configuration.
    pub sdn: crate::sdn::Sdn,
    /// Firewall configuration.
    pub firewall: crate::firewall::Firewall,
    /// Guests of running VMs, and the backend queues that boot and stop them.
    pub(crate) guests: crate::lifecycle::Guests,
    next_pid: u32,
    boot: Instant,
}

/// A task's outcome once the guest backend did what the task asked of it (froze or thawed a
/// guest): a task of PVE ends when QMP answered, not before.
async fn after(
    barriers: Vec<crate::lifecycle::Barrier>,
    outcome: Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    for b in barriers {
        if let Ok(Err(e)) = b.await {
            return Err(e);
        }
    }
    outcome
}

/// What a task does when its modelled time is up: log lines on success, the error otherwise.
pub type TaskEffect = Box<dyn FnOnce(&mut State) -> Result<Vec<String>, String> + Send>;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist`.
pub fn no_such_vm(node: &str, vmid: u32) -> ApiError {
    ApiError::new(
        500,
        format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"),
    )
}

/// `can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout`.
pub fn flock_timeout(vmid: u32) -> String {
    format!("can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout")
}

impl State {
    pub(crate) fn new() -> Self {
        State {
            vms: BTreeMap::new(),
            tasks: HashMap::new(),
            task_order: Vec::new(),
            volumes: BTreeMap::new(),
            pools: BTreeMap::new(),
            tickets: HashMap::new(),
            log: RequestLog::default(),
            faults: Faults::default(),
            sdn: crate::sdn::Sdn::default(),
            firewall: Default::default(),
            guests: Default::default(),
            next_pid: 0x1000,
            boot: Instant::now(),
        }
    }

    /// The VM `vmid` on `node`, or PVE's "does not exist" error.
    pub fn vm(&self, node: &str, vmid: u32) -> Result<&Vm, ApiError> {
        self.vms
            .get(&vmid)
            .filter(|v| v.node == node)
            .ok_or_else(|| no_such_vm(node, vmid))
    }

    /// Mutable [`State::vm`].
    pub fn vm_mut(&mut self, node: &str, vmid: u32) -> Result<&mut Vm, ApiError> {
        self.vms
            .get_mut(&vmid)
            .filter(|v| v.node == node)
            .ok_or_else(|| no_such_vm(node, vmid))
    }

    /// A MAC in Proxmox's OUI `BC:24:11`, unique in this simulator.
    pub fn new_mac(&self) -> String {
        let mut rng = rand::rng();
        loop {
            let mac = format!(
                "BC:24:11:{:02X}:{:02X}:{:02X}",
                rng.random::<u8>(),
                rng.random::<u8>(),
                rng.random::<u8>()
            );
            let used = self
                .vms
                .values()
                .any(|vm| vm.config.values().any(|v| v.contains(&mac)));
            if !used {
                return mac;
            }
        }
    }

    /// Starts a task. Its `effect` runs when the modelled duration has passed (at once for the
    /// instant profile) and decides the exit status; `holds_flock` makes it hold the VM's
    /// config-file lock meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn_task(
        &mut self,
        shared: &Arc<Shared>,
        node: &str,
        user: &str,
        kind: TaskKind,
        worker: &str,
        id: &str,
        flock_vm: Option<u32>,
        effect: TaskEffect,
    ) -> String {
        let upid = self.begin_task(node, user, worker, id);
        let duration = shared.cfg.latency.duration(kind);
        if duration.is_zero() {
            let outcome = effect(self);
            self.reconcile_guests(shared);
            let barriers = std::mem::take(&mut self.guests.barriers);
            if barriers.is_empty() {
                self.finish_task(&upid, outcome);
            } else {
                let (shared, upid) = (shared.clone(), upid.clone());
                tokio::spawn(async move {
                    let outcome = after(barriers, outcome).await;
                    shared.lock().finish_task(&upid, outcome);
                });
            }
            return upid;
        }
        if let Some(vmid) = flock_vm
            && let Some(vm) = self.vms.get_mut(&vmid)
        {
            vm.flock_until = Some(Instant::now() + duration);
        }
        let shared2 = shared.clone();
        let upid2 = upid.clone();
        tokio::spawn(async move {
            // The modelled duration of the task: the one place the simulator sleeps on purpose.
            tokio::time::sleep(duration).await;
            let (outcome, barriers) = {
                let mut st = shared2.lock();
                if let Some(vmid) = flock_vm
                    && let Some(vm) = st.vms.get_mut(&vmid)
                {
                    vm.flock_until = None;
                }
                let outcome = effect(&mut st);
                st.reconcile_guests(&shared2);
                (outcome, std::mem::take(&mut st.guests.barriers))
            };
            let outcome = after(barriers, outcome).await;
            shared2.lock().finish_task(&upid2, outcome);
        });
        upid
    }

    /// Starts a task the caller finishes itself with [`State::finish_task`] (work that must
    /// `.await`, such as a download).
    pub(crate) fn begin_task(&mut self, node: &str, user: &str, worker: &str, id: &str) -> String {
        self.next_pid += 1;
        let pid = self.next_pid;
        let pstart = (self.boot.elapsed().as_millis() as u64 / 10) + 0x1B58;
        let starttime = unix_now();
        let upid = format!(
            "UPID:{node}:{pid:08X}:{pstart:08X}:{:08X}:{worker}:{id}:{user}:",
            starttime as u32
        );
        self.tasks.insert(
            upid.clone(),
            Task {
                upid: upid.clone(),
                node: node.into(),
                kind: worker.into(),
                id: id.into(),
                user: user.into(),
                starttime,
                pid,
                pstart,
                exitstatus: None,
                endtime: None,
                log: Vec::new(),
            },
        );
        self.task_order.push(upid.clone());
        upid
    }

    /// A task that fails at once with `message` (`TASK ERROR: message`).
    pub(crate) fn failed_task(
        &mut self,
        shared: &Arc<Shared>,
        node: &str,
        user: &str,
        worker: &str,
        id: &str,
        message: String,
    ) -> String {
        self.spawn_task(
            shared,
            node,
            user,
            TaskKind::Config,
            worker,
            id,
            None,
            Box::new(move |_| Err(message)),
        )
    }

    pub(crate) fn finish_task(&mut self, upid: &str, outcome: Result<Vec<String>, String>) {
        if let Some(t) = self.tasks.get_mut(upid) {
            t.endtime = Some(unix_now());
            match outcome {
                Ok(lines) => {
                    // `RESTEnvironment::log_warn` counts `WARN:` lines; a worker that warned
                    // still succeeds, but ends as `WARNINGS: n`, not `OK`.
                    let warnings = lines.iter().filter(|l| l.starts_with("WARN: ")).count();
                    t.log.extend(lines);
                    if warnings == 0 {
                        t.log.push("TASK OK".into());
                        t.exitstatus = Some("OK".into());
                    } else {
                        t.log.push(format!("TASK WARNINGS: {warnings}"));
                        t.exitstatus = Some(format!("WARNINGS: {warnings}"));
                    }
                }
                Err(msg) => {
                    t.log.push(format!("TASK ERROR: {msg}"));
                    t.exitstatus = Some(msg);
                }
            }
        }
    }

    /// Task status JSON as PVE returns it.
    pub fn task_status(&self, upid: &str) -> Option<Value> {
        let t = self.tasks.get(upid)?;
        let mut v = json!({
            "upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart, "starttime": t.starttime,
            "type": t.kind, "id": t.id, "user": t.user,
            "status": if t.exitstatus.is_some() { "stopped" } else { "running" },
        });
        if let Some(e) = &t.exitstatus {
            v["exitstatus"] = json!(e);
        }
        if let Some((_, tok)) = t.user.split_once('!') {
            v["tokenid"] = json!(tok);
        }
        Some(v)
    }

    /// Issues a ticket for `user`; returns `(ticket, csrf)`.
    pub fn issue_ticket(&mut self, user: &str) -> (String, String) {
        let mut rng = rand::rng();
        let sig: String = (0..43)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect();
        let now = unix_now();
        let ticket = format!("PVE:{user}:{now:08X}::{sig}");
        let csrf_sig: String = (0..43)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect();
        let csrf = format!("{now:08X}:{csrf_sig}");
        self.tickets.insert(
            ticket.clone(),
            TicketInfo {
                user: user.into(),
                issued: Instant::now(),
                csrf: csrf.clone(),
            },
        );
        (ticket, csrf)
    }

    /// The ticket's info if it is valid and not older than `lifetime`.
    pub fn check_ticket(&self, ticket: &str, lifetime: Duration) -> Option<&TicketInfo> {
        self.tickets
            .get(ticket)
            .filter(|t| t.issued.elapsed() < lifetime)
    }
}
