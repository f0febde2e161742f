//! Where a VM comes from, in the peer's config shape: `{existing_vm_template_tag?, ova?,
//! built_in?}` with exactly one set, plus the hardware fields a clone applies.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::Error;

/// One of the images this crate knows how to fetch and bake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BuiltIn {
    /// Ubuntu 24.04 LTS (noble) server cloud image.
    #[serde(rename = "ubuntu24.04")]
    Ubuntu2404,
    /// Debian 13 (trixie) generic cloud image.
    #[serde(rename = "debian13")]
    Debian13,
    /// Kali Linux 2025.4 generic cloud image.
    #[serde(rename = "kali2025.4")]
    Kali20254,
}

impl BuiltIn {
    /// Every built-in.
    pub const ALL: [BuiltIn; 3] = [BuiltIn::Ubuntu2404, BuiltIn::Debian13, BuiltIn::Kali20254];

    /// The name users write in configs (`ubuntu24.04`, `debian13`, `kali2025.4`).
    pub fn name(self) -> &'static str {
        match self {
            BuiltIn::Ubuntu2404 => "ubuntu24.04",
            BuiltIn::Debian13 => "debian13",
            BuiltIn::Kali20254 => "kali2025.4",
        }
    }
}

impl std::fmt::Display for BuiltIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a VM's template comes from. Deserializes from the peer's `VmSourceConfig`
/// (`{"existing_vm_template_tag": ...}`, `{"ova": ...}` or `{"built_in": ...}`, exactly one
/// set); other keys are ignored, as the peer ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum VmSource {
    /// A template the user made, found by this PVE tag.
    ExistingTag(String),
    /// A local OVA file, imported once and cached by its content hash.
    Ova(PathBuf),
    /// A built-in cloud image.
    BuiltIn(BuiltIn),
}

/// The peer's `VmSourceConfig`, field for field.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VmSourceConfig {
    /// Tag of an existing template.
    #[serde(default)]
    pub existing_vm_template_tag: Option<String>,
    /// Path of a local OVA file.
    #[serde(default)]
    pub ova: Option<PathBuf>,
    /// A built-in image.
    #[serde(default)]
    pub built_in: Option<BuiltIn>,
}

impl TryFrom<VmSourceConfig> for VmSource {
    type Error = Error;

    fn try_from(c: VmSourceConfig) -> Result<Self, Error> {
        match (c.existing_vm_template_tag, c.ova, c.built_in) {
            (Some(t), None, None) => Ok(VmSource::ExistingTag(t)),
            (None, Some(p), None) => Ok(VmSource::Ova(p)),
            (None, None, Some(b)) => Ok(VmSource::BuiltIn(b)),
            (t, o, b) => {
                let set: Vec<&str> = [
                    t.is_some().then_some("existing_vm_template_tag"),
                    o.is_some().then_some("ova"),
                    b.is_some().then_some("built_in"),
                ]
                .into_iter()
                .flatten()
                .collect();
                let got = if set.is_empty() {
                    "none".to_owned()
                } else {
                    set.join(" and ")
                };
                Err(Error::Config {
                    field: "vm_source_config",
                    message: format!(
                        "set exactly one of existing_vm_template_tag, ova, built_in (got {got})"
                    ),
                })
            }
        }
    }
}

impl<'de> Deserialize<'de> for VmSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        VmSourceConfig::deserialize(d)?
            .try_into()
            .map_err(serde::de::Error::custom)
    }
}

/// The bus the template's disks sit on (the peer's `disk_controller`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskController {
    /// `scsiN` on a `virtio-scsi-single` controller.
    #[default]
    Scsi,
    /// `ideN` (old guests, some appliances).
    Ide,
}

impl DiskController {
    /// The config key of disk `n` (`scsi0`, `ide0`).
    pub fn key(self, n: u32) -> String {
        match self {
            DiskController::Scsi => format!("scsi{n}"),
            DiskController::Ide => format!("ide{n}"),
        }
    }
}

/// A NIC model (the peer's `nic_controller`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicController {
    /// paravirtualised.
    #[default]
    Virtio,
    /// Intel e1000 (guests without virtio drivers).
    E1000,
}

impl NicController {
    /// PVE's model name.
    pub fn model(self) -> &'static str {
        match self {
            NicController::Virtio => "virtio",
            NicController::E1000 => "e1000",
        }
    }
}

/// PVE's `ostype` (the peer's `OsType` list, which is PVE's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsType {
    /// Linux 2.4.
    L24,
    /// Linux 2.6 and later.
    #[default]
    L26,
    /// Anything else.
    Other,
    /// Solaris.
    Solaris,
    /// Windows 2000.
    W2k,
    /// Windows 2003.
    W2k3,
    /// Windows 2008.
    W2k8,
    /// Windows 10 / 2016 / 2019.
    Win10,
    /// Windows 11 / 2022 / 2025.
    Win11,
    /// Windows 7.
    Win7,
    /// Windows 8 / 2012.
    Win8,
    /// Windows Vista.
    Wvista,
    /// Windows XP.
    Wxp,
}

impl OsType {
    /// PVE's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OsType::L24 => "l24",
            OsType::L26 => "l26",
            OsType::Other => "other",
            OsType::Solaris => "solaris",
            OsType::W2k => "w2k",
            OsType::W2k3 => "w2k3",
            OsType::W2k8 => "w2k8",
            OsType::Win10 => "win10",
            OsType::Win11 => "win11",
            OsType::Win7 => "win7",
            OsType::Win8 => "win8",
            OsType::Wvista => "wvista",
            OsType::Wxp => "wxp",
        }
    }

    /// Windows guests (the peer's rule: the name starts with `w`).
    pub fn is_windows(self) -> bool {
        self.as_str().starts_with('w')
    }
}

/// How an imported template is put together: bus, OS type, CPU model, and whether the agent
/// is checked before sealing. Built-ins always use the defaults (`scsi`, `l26`, `host`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BakeOptions {
    /// Bus of the imported disks.
    pub disk_controller: DiskController,
    /// OS type of the template.
    pub os_type: OsType,
    /// CPU model of the template (`None`: `host`).
    pub cpu: Option<String>,
    /// Boot the imported VM with a NoCloud seed and seal it only after its guest agent
    /// answered (default). `false` seals an OVA without booting it, for appliances that have
    /// no agent (routers, victims: the peer's `is_sandbox=False` VMs).
    pub verify_agent: bool,
}

impl Default for BakeOptions {
    fn default() -> Self {
        BakeOptions {
            disk_controller: DiskController::Scsi,
            os_type: OsType::L26,
            cpu: None,
            verify_agent: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_three_shapes_deserialize() {
        let s: VmSource = serde_json::from_str(r#"{"built_in": "kali2025.4"}"#).unwrap();
        assert_eq!(s, VmSource::BuiltIn(BuiltIn::Kali20254));
        let s: VmSource = serde_json::from_str(
            r#"{"ova": "/x/y.ova", "existing_vm_template_tag": null, "built_in": null}"#,
        )
        .unwrap();
        assert_eq!(s, VmSource::Ova("/x/y.ova".into()));
        let s: VmSource = serde_json::from_str(r#"{"existing_vm_template_tag": "win11"}"#).unwrap();
        assert_eq!(s, VmSource::ExistingTag("win11".into()));
    }

    #[test]
    fn zero_or_two_sources_are_refused_naming_the_field() {
        for bad in [r#"{}"#, r#"{"ova": "/a.ova", "built_in": "debian13"}"#] {
            let e = serde_json::from_str::<VmSource>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("vm_source_config"), "{e}");
            assert!(e.contains("exactly one"), "{e}");
        }
        let e = serde_json::from_str::<VmSource>(r#"{"built_in": "ubuntu22.04"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ubuntu22.04"), "{e}");
    }

    #[test]
    fn os_types_are_the_peers_list() {
        let all = r#"["l24","l26","other","solaris","w2k","w2k3","w2k8","win10","win11","win7","win8","wvista","wxp"]"#;
        let v: Vec<OsType> = serde_json::from_str(all).unwrap();
        assert_eq!(v.len(), 13);
        assert!(v.iter().filter(|o| o.is_windows()).count() == 9);
        let back = serde_json::to_string(&v).unwrap();
        assert_eq!(back, all);
    }
}
