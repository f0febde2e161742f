//! The sample shape: the peer's `ProxmoxSandboxEnvironmentConfig`, accepted unchanged.
//!
//! Field names, defaults and meanings are the peer's (`instance_pool_id`, `sdn_config`,
//! `vms_config` with `vm_source_config`, `name`, `ram_mb`, `vcpus`, `nics`, `is_sandbox`,
//! `uefi_boot`, `disk_controller`, `nic_controller`, `firewall`, `os_type`, `cpu`,
//! `await_before_next_vm`), so an eval written for it runs unchanged. Where the peer accepted
//! nonsense (negative RAM, a gateway outside its subnet, duplicate names that silently
//! overwrote each other), [`EvalConfig::validate`] refuses it before any API call, naming the
//! field, the value and the fix. Our additions: `disk_gb` (grow the disk at clone) and `user`
//! (who `exec` runs as by default).

use std::collections::BTreeSet;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Json, Toml, Yaml};
use pve_sdn::SdnSpec;
use pvesandbox_templates::{DiskController, NicController, OsType, VmSource};
use serde::{Deserialize, Serialize};

use crate::error::Error;

fn default_pool() -> String {
    "default".into()
}
fn default_vms() -> Vec<VmConfig> {
    vec![VmConfig::built_in("ubuntu24.04")]
}
fn yes() -> bool {
    true
}

/// One sample: which pool, which network, which VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The pool (instances with this `pool_id`) samples run on.
    #[serde(default = "default_pool")]
    pub instance_pool_id: String,
    /// `"auto"` (default), a topology, or `null` (attach to existing vnets by alias).
    #[serde(default)]
    pub sdn_config: SdnSpec,
    /// The VMs; default one `ubuntu24.04`.
    #[serde(default = "default_vms")]
    pub vms_config: Vec<VmConfig>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            instance_pool_id: default_pool(),
            sdn_config: SdnSpec::default(),
            vms_config: default_vms(),
        }
    }
}

/// One NIC: which vnet, optionally a fixed MAC and a static IPv4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNicConfig {
    /// The vnet, by the alias the topology gave it (or an existing vnet's alias).
    pub vnet_alias: String,
    /// A fixed MAC address (`AA:BB:CC:DD:EE:FF`).
    #[serde(default)]
    pub mac: Option<String>,
    /// A static IPv4 (needs `mac`; reserved in PVE's IPAM).
    #[serde(default)]
    pub ipv4: Option<std::net::Ipv4Addr>,
}

/// One VM of a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Where the VM comes from: `built_in`, `ova` or `existing_vm_template_tag`.
    pub vm_source_config: VmSource,
    /// Its name (a DNS label); also its sandbox name unless it is the first sandbox VM.
    #[serde(default)]
    pub name: Option<String>,
    /// Memory, MiB (default 2048).
    #[serde(default)]
    pub ram_mb: Option<i64>,
    /// vCPUs (default 2).
    #[serde(default)]
    pub vcpus: Option<i64>,
    /// NICs; `None`: the first vnet; `[]`: no network at all.
    #[serde(default)]
    pub nics: Option<Vec<VmNicConfig>>,
    /// Whether it runs agent commands (needs the guest agent); `false` for routers, victims.
    #[serde(default = "yes")]
    pub is_sandbox: bool,
    /// UEFI (OVMF) instead of SeaBIOS.
    #[serde(default)]
    pub uefi_boot: bool,
    /// `scsi` or `ide`.
    #[serde(default)]
    pub disk_controller: Option<DiskController>,
    /// `virtio` (default) or `e1000`.
    #[serde(default)]
    pub nic_controller: Option<NicController>,
    /// PVE firewall flag on each NIC. Isolation rules are always applied; this only adds the
    /// peer's per-NIC flag for configs that rely on it.
    #[serde(default)]
    pub firewall: bool,
    /// Guest OS type (`l26` default; Windows types for OVA/template sources).
    #[serde(default)]
    pub os_type: Option<OsType>,
    /// CPU model (default: the template's).
    #[serde(default)]
    pub cpu: Option<String>,
    /// Boot this VM (and wait for its agent) before creating the next one.
    #[serde(default)]
    pub await_before_next_vm: bool,
    /// Ours: grow the system disk to this many GiB at clone.
    #[serde(default)]
    pub disk_gb: Option<u64>,
    /// Ours: the user `exec` runs as when the caller names none (default root).
    #[serde(default)]
    pub user: Option<String>,
}

impl VmConfig {
    /// A VM from a built-in image with the peer's defaults.
    pub fn built_in(name: &str) -> VmConfig {
        let source: VmSource =
            serde_json::from_value(serde_json::json!({ "built_in": name })).expect("built-in");
        VmConfig {
            vm_source_config: source,
            name: None,
            ram_mb: None,
            vcpus: None,
            nics: None,
            is_sandbox: true,
            uefi_boot: false,
            disk_controller: None,
            nic_controller: None,
            firewall: false,
            os_type: None,
            cpu: None,
            await_before_next_vm: false,
            disk_gb: None,
            user: None,
        }
    }
    /// Memory in MiB, after defaults.
    pub fn ram(&self) -> u64 {
        self.ram_mb.unwrap_or(2048).max(0) as u64
    }
    /// vCPUs, after defaults.
    pub fn cores(&self) -> u32 {
        self.vcpus.unwrap_or(2).max(0) as u32
    }
}

fn bad(field: String, value: impl ToString, fix: &str) -> Error {
    Error::Config {
        field,
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// Whether `s` is one DNS label (what PVE accepts as a VM name, without dots).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl EvalConfig {
    /// Reads a JSON, YAML or TOML file (by extension) and validates it.
    pub fn from_file(path: &Path) -> Result<EvalConfig, Error> {
        if !path.is_file() {
            return Err(bad("eval config".into(), path.display(), "no such file"));
        }
        let fig = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Figment::from(Yaml::file_exact(path)),
            Some("toml") => Figment::from(Toml::file_exact(path)),
            _ => Figment::from(Json::file_exact(path)),
        };
        let cfg: EvalConfig = fig.extract().map_err(Error::from_figment)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses JSON text (what the Inspect adapter passes) and validates it.
    pub fn from_json(text: &str) -> Result<EvalConfig, Error> {
        let cfg: EvalConfig = serde_json::from_str(text).map_err(|e| {
            bad(
                "sandbox config".into(),
                e.to_string(),
                "fix the field named in the message (the peer's field names apply)",
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The sandbox names the VMs get, in order: the first sandbox VM is `default`; every other
    /// VM its `name`, or `vm<index>` when it has none.
    pub fn sandbox_names(&self) -> Vec<String> {
        let first = self.vms_config.iter().position(|v| v.is_sandbox);
        self.vms_config
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if Some(i) == first {
                    "default".to_owned()
                } else {
                    v.name.clone().unwrap_or_else(|| format!("vm{i}"))
                }
            })
            .collect()
    }

    /// Checks everything types alone cannot, before any API call.
    pub fn validate(&self) -> Result<(), Error> {
        if self.instance_pool_id.is_empty() {
            return Err(bad(
                "instance_pool_id".into(),
                "",
                "name the pool (the instances' pool_id), e.g. \"default\"",
            ));
        }
        self.sdn_config.validate()?;
        if self.vms_config.is_empty() {
            return Err(bad(
                "vms_config".into(),
                "[]",
                "a sample needs at least one VM",
            ));
        }
        if !self.vms_config.iter().any(|v| v.is_sandbox) {
            return Err(bad(
                "vms_config".into(),
                "no VM with is_sandbox=true",
                "mark at least one VM is_sandbox: true (the one commands run in)",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, (vm, sandbox)) in self.vms_config.iter().zip(self.sandbox_names()).enumerate() {
            let f = |k: &str| format!("vms_config[{i}].{k}");
            if let Some(n) = &vm.name
                && !dns_label(n)
            {
                return Err(bad(
                    f("name"),
                    n,
                    "use a DNS label: letters, digits and '-', at most 63, not starting or ending with '-'",
                ));
            }
            if !names.insert(sandbox.clone()) {
                return Err(bad(
                    f("name"),
                    &sandbox,
                    "two VMs would get this sandbox name; give them distinct names",
                ));
            }
            if let Some(r) = vm.ram_mb
                && !(16..=4 * 1024 * 1024).contains(&r)
            {
                return Err(bad(f("ram_mb"), r, "use 16 to 4194304 MiB"));
            }
            if let Some(c) = vm.vcpus
                && !(1..=512).contains(&c)
            {
                return Err(bad(f("vcpus"), c, "use 1 to 512"));
            }
            if vm.disk_gb == Some(0) {
                return Err(bad(f("disk_gb"), 0, "omit it or give the size in GiB"));
            }
            for (j, nic) in vm.nics.iter().flatten().enumerate() {
                if nic.ipv4.is_some() && nic.mac.is_none() {
                    return Err(bad(
                        format!("vms_config[{i}].nics[{j}].ipv4"),
                        nic.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                        "a static ipv4 needs a fixed mac on the same NIC",
                    ));
                }
                if let Some(m) = &nic.mac {
                    let ok = m.len() == 17
                        && m.split(':').count() == 6
                        && m.split(':')
                            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
                    if !ok {
                        return Err(bad(
                            format!("vms_config[{i}].nics[{j}].mac"),
                            m,
                            "write a MAC as AA:BB:CC:DD:EE:FF",
                        ));
                    }
                }
                // Aliases resolve at sample time (the sample's vnets first, then existing
                // vnets, as the peer does), so an unknown one is reported then, by field.
            }
            if let Some(os) = &vm.os_type
                && *os != OsType::L26
                && matches!(vm.vm_source_config, VmSource::BuiltIn(_))
            {
                return Err(bad(
                    f("os_type"),
                    os.as_str(),
                    "built-in images are Linux (l26); other OS types need an ova or existing_vm_template_tag source",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer's config as pydantic's `model_dump(mode="json")` writes it: every field,
    /// nulls included.
    const PEER_DUMP: &str = r#"{
        "instance_pool_id": "default",
        "sdn_config": {"vnet_configs": [{"alias": "lan", "subnets": [{"cidr": "10.20.30.0/24",
            "gateway": "10.20.30.1", "snat": false,
            "dhcp_ranges": [{"start": "10.20.30.50", "end": "10.20.30.100"}]}]}],
            "use_pve_ipam_dnsnmasq": true},
        "vms_config": [
            {"vm_source_config": {"existing_vm_template_tag": null, "ova": null, "built_in": "ubuntu24.04"},
             "name": null, "ram_mb": 2048, "vcpus": 2, "nics": null, "is_sandbox": true,
             "uefi_boot": false, "disk_controller": null, "nic_controller": null, "firewall": false,
             "os_type": "l26", "cpu": null, "await_before_next_vm": false},
            {"vm_source_config": {"existing_vm_template_tag": null, "ova": "/evals/victim.ova", "built_in": null},
             "name": "victim", "ram_mb": 1024, "vcpus": 1,
             "nics": [{"vnet_alias": "lan", "mac": "52:54:00:12:34:56", "ipv4": "10.20.30.7"}],
             "is_sandbox": false, "uefi_boot": true, "disk_controller": "ide", "nic_controller": "e1000",
             "firewall": true, "os_type": "win10", "cpu": "kvm64", "await_before_next_vm": true},
            {"vm_source_config": {"existing_vm_template_tag": "kali-template"}, "nics": []}
        ]
    }"#;

    #[test]
    fn the_peers_config_dump_is_accepted_unchanged() {
        let cfg = EvalConfig::from_json(PEER_DUMP).unwrap();
        assert_eq!(cfg.vms_config.len(), 3);
        assert!(matches!(cfg.sdn_config, SdnSpec::Topology(_)));
        let victim = &cfg.vms_config[1];
        assert_eq!(
            victim.vm_source_config,
            VmSource::Ova("/evals/victim.ova".into())
        );
        assert_eq!(victim.disk_controller, Some(DiskController::Ide));
        assert_eq!(victim.nic_controller, Some(NicController::E1000));
        assert_eq!(victim.os_type, Some(OsType::Win10));
        assert_eq!(cfg.vms_config[2].nics, Some(vec![]));
        assert_eq!(cfg.sandbox_names(), ["default", "victim", "vm2"]);
        // Defaults: one ubuntu24.04 VM on an auto network in the default pool.
        let d = EvalConfig::from_json("{}").unwrap();
        assert_eq!(d, EvalConfig::default());
        assert_eq!(d.sdn_config, SdnSpec::Auto);
        assert_eq!((d.vms_config[0].ram(), d.vms_config[0].cores()), (2048, 2));
        // `null` attaches to existing vnets.
        let n = EvalConfig::from_json(r#"{"sdn_config": null}"#).unwrap();
        assert_eq!(n.sdn_config, SdnSpec::Existing);
    }

    fn field(json: &str) -> String {
        match EvalConfig::from_json(json) {
            Err(Error::Config { field, .. }) => field,
            Err(Error::Sdn(e)) => e.field().unwrap_or_default().to_owned(),
            other => panic!("expected a config error for {json}, got {other:?}"),
        }
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let vm = |extra: &str| {
            format!(
                r#"{{"vms_config": [{{"vm_source_config": {{"built_in": "debian13"}}{extra}}}]}}"#
            )
        };
        assert_eq!(field(&vm(r#", "ram_mb": -5"#)), "vms_config[0].ram_mb");
        assert_eq!(field(&vm(r#", "vcpus": 0"#)), "vms_config[0].vcpus");
        assert_eq!(
            field(&vm(r#", "name": "no_underscores""#)),
            "vms_config[0].name"
        );
        assert_eq!(field(&vm(r#", "is_sandbox": false"#)), "vms_config");
        assert_eq!(
            field(&vm(r#", "os_type": "win11""#)),
            "vms_config[0].os_type"
        );
        assert_eq!(field(&vm(r#", "disk_gb": 0"#)), "vms_config[0].disk_gb");
        assert_eq!(
            field(&vm(
                r#", "nics": [{"vnet_alias": "x", "ipv4": "10.0.0.5"}]"#
            )),
            "vms_config[0].nics[0].ipv4"
        );
        assert_eq!(
            field(&vm(r#", "nics": [{"vnet_alias": "x", "mac": "52:54:00"}]"#)),
            "vms_config[0].nics[0].mac"
        );
        assert_eq!(field(r#"{"vms_config": []}"#), "vms_config");
        assert_eq!(
            field(
                r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "name": "default"}, {"vm_source_config": {"built_in": "debian13"}, "name": "default"}]}"#
            ),
            "vms_config[1].name"
        );
        assert_eq!(
            field(
                r#"{"sdn_config": {"vnet_configs": [{"subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.0.1.1", "snat": true, "dhcp_ranges": [{"start": "10.0.0.5", "end": "10.0.0.9"}]}]}]}}"#
            ),
            "sdn_config.vnet_configs[0].subnets[0].gateway"
        );
        let msg = EvalConfig::from_json(
            r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mbb": 1}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("ram_mbb"), "{msg}");
        let msg = EvalConfig::from_json(
            r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13", "ova": "/x.ova"}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("vm_source_config") && msg.contains("exactly one"),
            "{msg}"
        );
    }
}
