//! How a simulator instance is set up: nodes, users, tokens, timings.

use std::sync::Arc;
use std::time::Duration;

use crate::guest::GuestFactory;

/// The guest backend a simulator boots VMs with (see [`crate::guest`]).
#[derive(Clone)]
pub struct GuestBackend(pub Arc<dyn GuestFactory>);

impl std::fmt::Debug for GuestBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestBackend")
    }
}

/// How long simulated tasks take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyProfile {
    /// Every task finishes before its UPID is returned: for tests.
    Instant,
    /// Durations close to a real PVE host (clone ≈ 2 s, start ≈ 8 s, ...) multiplied by
    /// `time_factor` (0.1 makes a start take 0.8 s): for demos and benchmarks.
    Realistic {
        /// Multiplier on every modelled duration.
        time_factor: f64,
    },
}

/// Kinds of simulated work with a modelled duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// `qmcreate`.
    Create,
    /// `qmclone`.
    Clone,
    /// `qmtemplate`.
    Template,
    /// `qmstart`.
    Start,
    /// `qmstop`.
    Stop,
    /// `qmshutdown`.
    Shutdown,
    /// `qmreboot`.
    Reboot,
    /// `qmsuspend`.
    Suspend,
    /// `qmresume`.
    Resume,
    /// `qmdestroy`.
    Destroy,
    /// `resize`.
    Resize,
    /// `qmsnapshot`.
    Snapshot,
    /// `qmrollback`.
    Rollback,
    /// `qmdelsnapshot`.
    DeleteSnapshot,
    /// `qmconfig`.
    Config,
    /// `imgcopy` (upload).
    Upload,
    /// `download`.
    Download,
    /// `reload` (SDN apply).
    SdnApply,
    /// Guest agent becoming ready after a start.
    AgentBoot,
}

impl LatencyProfile {
    /// Modelled duration of a task of `kind`.
    pub fn duration(&self, kind: TaskKind) -> Duration {
        let LatencyProfile::Realistic { time_factor } = *self else {
            return Duration::ZERO;
        };
        let secs = match kind {
            TaskKind::Create => 1.0,
            TaskKind::Clone => 2.0,
            TaskKind::Template => 2.0,
            TaskKind::Start => 8.0,
            TaskKind::Stop => 1.0,
            TaskKind::Shutdown => 4.0,
            TaskKind::Reboot => 10.0,
            TaskKind::Suspend => 1.0,
            TaskKind::Resume => 0.5,
            TaskKind::Destroy => 1.5,
            TaskKind::Resize => 0.5,
            TaskKind::Snapshot => 1.0,
            TaskKind::Rollback => 2.0,
            TaskKind::DeleteSnapshot => 1.0,
            TaskKind::Config => 0.3,
            TaskKind::Upload => 1.0,
            TaskKind::Download => 5.0,
            TaskKind::SdnApply => 2.0,
            TaskKind::AgentBoot => 12.0,
        };
        Duration::from_secs_f64((secs * time_factor).max(0.0))
    }
}

/// A storage every node has.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Storage id, e.g. `local`.
    pub id: String,
    /// Plugin type, e.g. `dir`, `lvmthin`.
    pub kind: String,
    /// Content types it accepts.
    pub content: Vec<String>,
    /// Capacity, bytes.
    pub total: u64,
    /// Whether all nodes share it.
    pub shared: bool,
}

/// The datacenter's `tag-style` as far as storing tags goes (`datacenter.cfg`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagStyle {
    /// `case-sensitive=1`: tags keep their case and sort case-sensitively (default: lower-cased).
    pub case_sensitive: bool,
    /// `ordering=config`: tags keep the order they were given in (default: sorted).
    pub ordering_config: bool,
}

/// Everything [`crate::PveSim::start`] needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Node names; the first is where unqualified things go.
    pub nodes: Vec<String>,
    /// `(user@realm, password)` pairs accepted by `POST /access/ticket`.
    pub users: Vec<(String, String)>,
    /// `(user@realm!id, secret)` API tokens.
    pub tokens: Vec<(String, String)>,
    /// How long a ticket stays valid (PVE: 2 h).
    pub ticket_lifetime: Duration,
    /// Task durations.
    pub latency: LatencyProfile,
    /// Serve HTTPS with a generated certificate (default) or plain HTTP.
    pub tls: bool,
    /// Storages on every node.
    pub storages: Vec<StorageConfig>,
    /// Memory per node, bytes.
    pub node_memory: u64,
    /// CPUs per node.
    pub node_cpus: u32,
    /// Version string answered by `GET /version`.
    pub version: String,
    /// What runs inside started VMs. `None`: an agent with canned answers to ping, info,
    /// get-osinfo, get-host-name and network-get-interfaces that knows no exec or file
    /// commands (PVE then answers `Agent error: The command guest-exec has not been found`).
    pub guests: Option<GuestBackend>,
    /// Privileges every principal but `root@pam` holds on `/`, propagated: what
    /// `GET /access/permissions` answers and what every request is checked against (403
    /// `Permission check failed (path, privilege)`, see [`crate::access`]); `None`: all of
    /// them, as root has.
    pub privileges: Option<Vec<String>>,
    /// ACL entries on sub-paths (`/storage/local`), propagated below them. As in PVE the most
    /// specific entry covering a path decides, replacing what `/` grants there; only
    /// meaningful with `privileges` set.
    pub acl: Vec<(String, Vec<String>)>,
    /// How guests' `tags` are normalised when stored.
    pub tag_style: TagStyle,
}

impl SimConfig {
    /// One node `pve1`, user `root@pam` / `secret`, token `root@pam!ci`, instant tasks, HTTPS,
    /// storages `local` (dir) and `local-lvm` (lvmthin).
    pub fn new() -> Self {
        SimConfig {
            nodes: vec!["pve1".into()],
            users: vec![("root@pam".into(), "secret".into())],
            tokens: vec![(
                "root@pam!ci".into(),
                "00000000-0000-0000-0000-000000000001".into(),
            )],
            ticket_lifetime: Duration::from_secs(2 * 3600),
            latency: LatencyProfile::Instant,
            tls: true,
            storages: vec![
                StorageConfig {
                    id: "local".into(),
                    kind: "dir".into(),
                    content: ["iso", "vztmpl", "backup", "import", "snippets"]
                        .map(String::from)
                        .to_vec(),
                    total: 100 << 30,
                    shared: false,
                },
                StorageConfig {
                    id: "local-lvm".into(),
                    kind: "lvmthin".into(),
                    content: ["images", "rootdir"].map(String::from).to_vec(),
                    total: 400 << 30,
                    shared: false,
                },
            ],
            node_memory: 64 << 30,
            node_cpus: 16,
            version: "9.2.3".into(),
            guests: None,
            privileges: None,
            acl: Vec::new(),
            tag_style: TagStyle::default(),
        }
    }

    /// Sets the node names.
    #[must_use]
    pub fn nodes(mut self, nodes: &[&str]) -> Self {
        self.nodes = nodes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the latency profile.
    #[must_use]
    pub fn latency(mut self, latency: LatencyProfile) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the ticket lifetime.
    #[must_use]
    pub fn ticket_lifetime(mut self, d: Duration) -> Self {
        self.ticket_lifetime = d;
        self
    }

    /// Boots VMs with `factory` (see [`crate::guest`]).
    #[must_use]
    pub fn guests(mut self, factory: Arc<dyn GuestFactory>) -> Self {
        self.guests = Some(GuestBackend(factory));
        self
    }

    /// Boots VMs as namespaced process guests over the host's `/`
    /// ([`crate::guest::ProcessGuestFactory`]); fails where the factory cannot be made.
    pub fn process_guests(self) -> std::io::Result<Self> {
        let f = crate::guest::ProcessGuestFactory::new()?;
        Ok(self.guests(Arc::new(f)))
    }

    /// Serves plain HTTP instead of HTTPS.
    #[must_use]
    pub fn plain_http(mut self) -> Self {
        self.tls = false;
        self
    }
}

impl SimConfig {
    /// How long a request waits for a VM's config-file lock held by a task before failing with
    /// `can't lock file ... got timeout` (PVE: 10 s; scaled; none for instant tasks, where a
    /// held lock can only come from fault injection).
    pub fn lock_wait(&self) -> Duration {
        match self.latency {
            LatencyProfile::Instant => Duration::ZERO,
            LatencyProfile::Realistic { time_factor } => {
                Duration::from_secs_f64(10.0 * time_factor)
            }
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::new()
    }
}
