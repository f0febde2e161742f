//! A simulator's starting world from a file: the VMs, templates and storage content another
//! client expects to find (fakepve's seeding, for `pvesandbox sim --seed FILE`).
//!
//! ```yaml
//! vms:
//!   - vmid: 9000
//!     name: debian-tpl
//!     template: true
//!   - vmid: 100
//!     name: web
//!     running: true
//!     config: {memory: 4096, cores: 4, tags: "prod;web"}
//! volumes:
//!   - {storage: local, content: iso, filename: debian-13.iso, size: 700000000}
//! ```
//!
//! A VM starts from [`VmSeed::vm`] (or [`VmSeed::template`]): one 8 GiB disk on `local-lvm`, a
//! NIC on `vmbr0`, the agent on; `config` sets or replaces keys as PVE stores them. Everything
//! is checked before anything is added, and an error names the entry and the field.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::VmSeed;
use crate::config::SimConfig;
use crate::state::{Volume, unix_now};

/// What to put into a simulator before clients connect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// VMs and templates.
    #[serde(default)]
    pub vms: Vec<SeedVm>,
    /// Files on storages (ISOs, import images, container templates).
    #[serde(default)]
    pub volumes: Vec<SeedVolume>,
}

/// One VM of a [`Seed`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedVm {
    /// VM id (100–999999999).
    pub vmid: u32,
    /// Its name (default `vm<vmid>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Node (default: the first).
    #[serde(default)]
    pub node: Option<String>,
    /// Running, its agent answering.
    #[serde(default)]
    pub running: bool,
    /// A template (disk `base-<vmid>-disk-0`).
    #[serde(default)]
    pub template: bool,
    /// Config keys as PVE stores them; numbers and booleans may be written bare.
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
}

/// One file of a [`Seed`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedVolume {
    /// Node (default: the first).
    #[serde(default)]
    pub node: Option<String>,
    /// Storage id; it must accept `content`.
    pub storage: String,
    /// `iso`, `import`, `vztmpl`, `snippets`, ...
    pub content: String,
    /// File name (`debian-13.iso`); the volume id is `<storage>:<content>/<filename>`.
    pub filename: String,
    /// Bytes (default 1 MiB).
    #[serde(default = "default_size")]
    pub size: u64,
}

fn default_size() -> u64 {
    1 << 20
}

impl Seed {
    /// Parses a seed from JSON text.
    pub fn from_json(text: &str) -> Result<Seed, SeedError> {
        serde_json::from_str(text).map_err(|e| SeedError::new("seed".into(), e.to_string()))
    }

    /// Checks every entry against `cfg` and turns it into what the simulator stores; the
    /// error names the entry and field at fault.
    pub(crate) fn resolve(&self, cfg: &SimConfig) -> Result<Resolved, SeedError> {
        let route = crate::spec::find_route("PUT", "/nodes/x/qemu/100/config")
            .map(|(r, _)| r)
            .map_err(|_| {
                SeedError::new(
                    "vms".into(),
                    "the simulator serves no VM config route".into(),
                )
            })?;
        let node_of = |n: &Option<String>, at: &str| match n {
            None => Ok(cfg.nodes[0].clone()),
            Some(n) if cfg.nodes.contains(n) => Ok(n.clone()),
            Some(n) => Err(SeedError::new(
                format!("{at}.node"),
                format!(
                    "{n:?} is not a node of this simulator ({})",
                    cfg.nodes.join(", ")
                ),
            )),
        };
        let mut out = Resolved::default();
        let mut seen = std::collections::BTreeSet::new();
        for (i, v) in self.vms.iter().enumerate() {
            let at = format!("vms[{i}]");
            if !(100..=999_999_999).contains(&v.vmid) {
                return Err(SeedError::new(
                    format!("{at}.vmid"),
                    format!("{} is outside 100-999999999", v.vmid),
                ));
            }
            if !seen.insert(v.vmid) {
                return Err(SeedError::new(
                    format!("{at}.vmid"),
                    format!("{} appears twice", v.vmid),
                ));
            }
            if v.running && v.template {
                return Err(SeedError::new(
                    format!("{at}.running"),
                    "a template cannot run".into(),
                ));
            }
            let name = v.name.clone().unwrap_or_else(|| format!("vm{}", v.vmid));
            let mut vm = if v.template {
                VmSeed::template(v.vmid, &name)
            } else {
                VmSeed::vm(v.vmid, &name)
            };
            vm.node = Some(node_of(&v.node, &at)?);
            vm.running = v.running;
            for (k, val) in &v.config {
                let val = match val {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Bool(b) => u8::from(*b).to_string(),
                    serde_json::Value::Number(n) => n.to_string(),
                    other => {
                        return Err(SeedError::new(
                            format!("{at}.config.{k}"),
                            format!("{other} is not a string, number or boolean"),
                        ));
                    }
                };
                if crate::spec::lookup(route, k).is_none() {
                    return Err(SeedError::new(
                        format!("{at}.config.{k}"),
                        "not a VM config key PVE accepts (see `qm config`)".into(),
                    ));
                }
                vm = vm.with(k, &val);
            }
            out.vms.push(vm);
        }
        for (i, f) in self.volumes.iter().enumerate() {
            let at = format!("volumes[{i}]");
            let node = node_of(&f.node, &at)?;
            let Some(s) = cfg.storages.iter().find(|s| s.id == f.storage) else {
                return Err(SeedError::new(
                    format!("{at}.storage"),
                    format!("no storage {:?}", f.storage),
                ));
            };
            if !s.content.contains(&f.content) {
                return Err(SeedError::new(
                    format!("{at}.content"),
                    format!(
                        "storage {:?} does not hold {:?} (it holds {})",
                        s.id,
                        f.content,
                        s.content.join(", ")
                    ),
                ));
            }
            if f.filename.is_empty() || f.filename.contains('/') {
                return Err(SeedError::new(
                    format!("{at}.filename"),
                    format!("{:?} must be a plain file name", f.filename),
                ));
            }
            let format = f
                .filename
                .rsplit_once('.')
                .map_or("raw", |(_, e)| e)
                .to_owned();
            out.volumes.push((
                (node, s.id.clone()),
                Volume {
                    volid: format!("{}:{}/{}", s.id, f.content, f.filename),
                    content: f.content.clone(),
                    format,
                    size: f.size,
                    ctime: unix_now(),
                    members: Vec::new(),
                    seed: None,
                    notes: None,
                    protected: false,
                },
            ));
        }
        Ok(out)
    }
}

/// A seed entry that cannot be used: which field (`vms[2].config.memory`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SeedError {
    /// The entry and field at fault, as a path into the seed.
    pub field: String,
    /// What is wrong with it, and what would do.
    pub message: String,
}

impl SeedError {
    fn new(field: String, message: String) -> Self {
        SeedError { field, message }
    }
}

/// A checked [`Seed`].
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    pub vms: Vec<VmSeed>,
    pub volumes: Vec<((String, String), Volume)>,
}
