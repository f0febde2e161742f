//! Response and identifier types for the calls sandboxes need.
//!
//! PVE's `returns` schemas are not exhaustive, so every struct keeps unknown keys in `extra`
//! and tolerates missing optional ones. Numbers and booleans go through [`crate::lenient`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lenient;

/// A VM or container id (`pve-vmid`: 100 ..= 999_999_999).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Vmid(pub u32);

impl Vmid {
    /// Smallest id PVE accepts.
    pub const MIN: u32 = 100;
    /// Largest id PVE accepts.
    pub const MAX: u32 = 999_999_999;

    /// A checked vmid.
    pub fn new(id: u32) -> Option<Self> {
        (Self::MIN..=Self::MAX).contains(&id).then_some(Vmid(id))
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vmid({})", self.0)
    }
}

impl std::str::FromStr for Vmid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<u32>()
            .ok()
            .and_then(Vmid::new)
            .ok_or_else(|| format!("{s:?} is not a VM id (an integer from 100 to 999999999)"))
    }
}

impl<'de> Deserialize<'de> for Vmid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient::u32(d).map(Vmid)
    }
}

/// `GET /version`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Version {
    /// Full version, e.g. `9.2.3`.
    pub version: String,
    /// Release, e.g. `9.2`. Gate features on this.
    pub release: String,
    /// Git id of the build.
    pub repoid: String,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Version {
    /// `(major, minor)` of `release`, if it parses.
    pub fn release_tuple(&self) -> Option<(u32, u32)> {
        let mut it = self.release.split('.');
        Some((
            it.next()?.parse().ok()?,
            it.next().unwrap_or("0").parse().ok()?,
        ))
    }
}

/// One entry of `GET /cluster/resources`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct ClusterResource {
    /// `qemu/100`, `node/pve1`, `storage/pve1/local`, ...
    pub id: String,
    /// `qemu`, `lxc`, `node`, `storage`, `pool`, `sdn`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Node it lives on.
    pub node: Option<String>,
    /// Guest id.
    #[serde(default, deserialize_with = "lenient::opt::u32")]
    pub vmid: Option<u32>,
    /// Guest name.
    pub name: Option<String>,
    /// `running`, `stopped`, `online`, `available`, ...
    pub status: Option<String>,
    /// Whether the guest is a template.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub template: Option<bool>,
    /// Semicolon-separated tags.
    pub tags: Option<String>,
    /// Resource pool.
    pub pool: Option<String>,
    /// Config lock held, if any.
    pub lock: Option<String>,
    /// Storage id (storage entries).
    pub storage: Option<String>,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub mem: Option<u64>,
    /// Memory size, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub maxmem: Option<u64>,
    /// CPU load (0..maxcpu).
    #[serde(default, deserialize_with = "lenient::opt::float")]
    pub cpu: Option<f64>,
    /// CPUs.
    #[serde(default, deserialize_with = "lenient::opt::float")]
    pub maxcpu: Option<f64>,
    /// Disk used, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub disk: Option<u64>,
    /// Disk size, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub maxdisk: Option<u64>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ClusterResource {
    /// Tags as a list (PVE separates them with `;`, older versions with `,` or spaces).
    pub fn tag_list(&self) -> Vec<&str> {
        split_tags(self.tags.as_deref())
    }
}

pub(crate) fn split_tags(tags: Option<&str>) -> Vec<&str> {
    tags.unwrap_or("")
        .split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .collect()
}

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Node name.
    pub node: String,
    /// `online`, `offline` or `unknown`.
    pub status: String,
    /// CPU load.
    #[serde(default, deserialize_with = "lenient::opt::float")]
    pub cpu: Option<f64>,
    /// CPUs.
    #[serde(default, deserialize_with = "lenient::opt::u32")]
    pub maxcpu: Option<u32>,
    /// Memory used, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub mem: Option<u64>,
    /// Memory size, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub maxmem: Option<u64>,
    /// Uptime, seconds.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub uptime: Option<u64>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `GET /nodes/{node}/status` (selected fields; everything else in `extra`).
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// `pve-manager/9.2.3/...`.
    pub pveversion: Option<String>,
    /// Uptime, seconds.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub uptime: Option<u64>,
    /// Memory: `total`, `used`, `free` in bytes.
    pub memory: Option<MemoryInfo>,
    /// CPU info, e.g. `cpus`.
    pub cpuinfo: Option<CpuInfo>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Memory figures of a node.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct MemoryInfo {
    /// Bytes in total.
    #[serde(deserialize_with = "lenient::u64")]
    pub total: u64,
    /// Bytes in use.
    #[serde(deserialize_with = "lenient::u64")]
    pub used: u64,
    /// Bytes free.
    #[serde(deserialize_with = "lenient::u64")]
    pub free: u64,
}

/// CPU figures of a node.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct CpuInfo {
    /// Logical CPUs.
    #[serde(deserialize_with = "lenient::u32")]
    pub cpus: u32,
    /// CPU model.
    pub model: Option<String>,
}

/// One entry of `GET /nodes/{node}/qemu`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct VmEntry {
    /// VM id.
    pub vmid: Vmid,
    /// `running` or `stopped`.
    pub status: String,
    /// Name.
    pub name: Option<String>,
    /// Whether the VM is a template.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub template: Option<bool>,
    /// Semicolon-separated tags.
    pub tags: Option<String>,
    /// Config lock held, if any.
    pub lock: Option<String>,
    /// Memory size, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub maxmem: Option<u64>,
    /// CPUs.
    #[serde(default, deserialize_with = "lenient::opt::float")]
    pub cpus: Option<f64>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl VmEntry {
    /// Tags as a list.
    pub fn tag_list(&self) -> Vec<&str> {
        split_tags(self.tags.as_deref())
    }
}

/// `GET /nodes/{node}/qemu/{vmid}/status/current`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct VmStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// QEMU's view: `running`, `paused`, `prelaunch`, `suspended`, ...
    pub qmpstatus: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Config lock held, if any.
    pub lock: Option<String>,
    /// Whether the VM is a template.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub template: Option<bool>,
    /// Whether the guest agent is enabled in the config.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub agent: Option<bool>,
    /// Uptime, seconds.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub uptime: Option<u64>,
    /// Semicolon-separated tags.
    pub tags: Option<String>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl VmStatus {
    /// True when the VM runs.
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }
}

/// A VM configuration as PVE returns it: keys to values, mostly strings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(transparent)]
pub struct VmConfig(pub BTreeMap<String, Value>);

impl VmConfig {
    /// A value rendered as text (numbers become their decimal form).
    pub fn get(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v => Some(v.to_string()),
        }
    }
    /// A value parsed as an integer (PVE sends `"2048"` or `2048`).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
    /// A property-string value, parsed.
    pub fn get_prop(&self, key: &str) -> Option<crate::PropertyString> {
        self.get(key).map(|s| crate::PropertyString::parse(&s))
    }
    /// The SHA1 digest for optimistic concurrency.
    pub fn digest(&self) -> Option<String> {
        self.get("digest")
    }
    /// Tags as a list.
    pub fn tag_list(&self) -> Vec<String> {
        split_tags(self.get("tags").as_deref())
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct TaskStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// For a stopped task: `OK`, `WARNINGS: N`, or the error message.
    pub exitstatus: Option<String>,
    /// Worker type.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Object id.
    pub id: String,
    /// Node.
    pub node: String,
    /// Who started it.
    pub user: String,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl TaskStatus {
    /// True once the task has finished.
    pub fn is_stopped(&self) -> bool {
        self.status == "stopped"
    }
    /// True when it finished successfully (`OK` or `WARNINGS: N`).
    pub fn is_ok(&self) -> bool {
        matches!(self.exitstatus.as_deref(), Some(s) if s == "OK" || s.starts_with("WARNINGS"))
    }
}

/// One task log line.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskLogLine {
    /// Line number, from 1.
    #[serde(deserialize_with = "lenient::u64")]
    pub n: u64,
    /// Text.
    pub t: String,
}

/// One entry of `GET /cluster/tasks`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct TaskEntry {
    /// The task id.
    pub upid: String,
    /// `OK`, an error, or absent while running.
    pub status: Option<String>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One entry of `GET /nodes/{node}/storage`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct StorageInfo {
    /// Storage id.
    pub storage: String,
    /// Plugin type: `dir`, `lvmthin`, `zfspool`, `rbd`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Comma-separated content types: `images,rootdir,iso,vztmpl,import,...`.
    pub content: String,
    /// Whether the storage is active.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub active: Option<bool>,
    /// Whether the storage is enabled.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub enabled: Option<bool>,
    /// Whether all nodes see the same storage.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub shared: Option<bool>,
    /// Free bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub avail: Option<u64>,
    /// Total bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub total: Option<u64>,
    /// Used bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub used: Option<u64>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl StorageInfo {
    /// True when the storage accepts this content type.
    pub fn supports(&self, content: &str) -> bool {
        self.content.split(',').any(|c| c.trim() == content)
    }
}

/// One entry of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct StorageContent {
    /// Volume id, e.g. `local:iso/debian.iso`.
    pub volid: String,
    /// `raw`, `qcow2`, `iso`, `ova`, ...
    pub format: String,
    /// Content type (`iso`, `images`, `import`, ...).
    pub content: Option<String>,
    /// Size, bytes.
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub size: Option<u64>,
    /// Owner VM.
    #[serde(default, deserialize_with = "lenient::opt::u32")]
    pub vmid: Option<u32>,
    /// Creation time (Unix seconds).
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub ctime: Option<u64>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One entry of `GET /nodes/{node}/qemu/{vmid}/snapshot`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Name; `current` is the pseudo-entry for "you are here".
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Parent snapshot.
    pub parent: Option<String>,
    /// Creation time (Unix seconds).
    #[serde(default, deserialize_with = "lenient::opt::u64")]
    pub snaptime: Option<u64>,
    /// Whether RAM was saved.
    #[serde(default, deserialize_with = "lenient::opt::bool")]
    pub vmstate: Option<bool>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One entry of `GET /pools`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Pool {
    /// Pool id.
    pub poolid: String,
    /// Comment.
    pub comment: Option<String>,
    /// Members (when a single pool is requested).
    #[serde(default)]
    pub members: Vec<Value>,
    /// Unknown keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}
