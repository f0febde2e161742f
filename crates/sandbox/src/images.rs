//! From settings and eval config to the templates crate's inputs: where templates are built,
//! how they are baked, what a clone looks like.

use pve_client::Vmid;
use pve_sdn::Network;
use pvesandbox_pool::InstanceConfig;
use pvesandbox_templates::{
    BakeOptions, BuiltIn, Checksum, CloneSpec, ImageCatalog, ImageSpec, NicController, NicSpec,
    TemplateConfig, VmSource,
};

use crate::config::Settings;
use crate::error::Error;
use crate::eval::VmConfig;
use crate::owner::OwnerRecord;

/// The images with the user's mirror and overrides applied.
pub(crate) fn catalog(settings: &Settings) -> Result<ImageCatalog, Error> {
    let mut c = ImageCatalog::pinned();
    if let Some(m) = &settings.images.mirror {
        c = c.with_mirror(m);
    }
    for (name, o) in &settings.images.overrides {
        let b: BuiltIn =
            serde_json::from_value(serde_json::Value::String(name.clone())).map_err(|_| {
                Error::Config {
                    field: format!("images.overrides.{name}"),
                    value: name.clone(),
                    fix: "override one of the built-ins: ubuntu24.04, debian13, kali2025.4".into(),
                }
            })?;
        let pinned = c.get(b).clone();
        let checksum = match &o.sha256 {
            Some(h) => Checksum::sha256(h).map_err(|e| Error::Config {
                field: format!("images.overrides.{name}.sha256"),
                value: h.clone(),
                fix: e.to_string(),
            })?,
            // Same file at another place: the pinned digest still applies.
            None => pinned.checksum.clone(),
        };
        c = c.with_image(
            b,
            ImageSpec {
                url: o.url.clone(),
                checksum,
                format: pinned.format,
            },
        );
    }
    Ok(c)
}

/// Where templates are built on one instance.
pub(crate) fn template_config(
    settings: &Settings,
    instance: &InstanceConfig,
) -> Result<TemplateConfig, Error> {
    let mut t = TemplateConfig::new(instance.node.clone());
    t.image_storage = instance.image_storage.clone();
    if let Some(s) = &settings.images.import_storage {
        t.file_storage = s.clone();
    }
    if let Some(b) = &settings.images.bake_bridge {
        t.bake_bridge = b.clone();
    }
    t.images = catalog(settings)?;
    t.cache_dir = settings.images.cache_dir();
    Ok(t)
}

/// How a VM's template is baked (only OVAs use anything but the defaults).
pub(crate) fn bake_options(vm: &VmConfig) -> BakeOptions {
    let mut o = BakeOptions::default();
    if matches!(vm.vm_source_config, VmSource::Ova(_)) {
        if let Some(d) = vm.disk_controller {
            o.disk_controller = d;
        }
        if let Some(os) = vm.os_type {
            o.os_type = os;
        }
        o.cpu = vm.cpu.clone();
        o.verify_agent = vm.is_sandbox;
    }
    o
}

/// What the clone call itself carries: id, name, owner record, linked or full.
pub(crate) fn clone_base(
    vmid: Vmid,
    pve_name: &str,
    record: &OwnerRecord,
    storage: &str,
    linked: bool,
) -> CloneSpec {
    let mut s = CloneSpec::new(vmid);
    s.name = Some(pve_name.to_owned());
    s.description = Some(record.description());
    s.tags = record.tags();
    s.full = !linked;
    if !linked {
        s.storage = Some(storage.to_owned());
    }
    s
}

/// The whole clone: hardware, NICs on the sample's network, UEFI, disk size.
pub(crate) fn clone_spec(
    base: CloneSpec,
    vm: &VmConfig,
    index: usize,
    network: &Network,
    storage: &str,
) -> Result<CloneSpec, Error> {
    let mut s = base;
    s.memory_mb = vm.ram() as u32;
    s.cores = vm.cores();
    s.cpu = vm.cpu.clone();
    if !matches!(vm.vm_source_config, VmSource::BuiltIn(_)) {
        s.os_type = vm.os_type;
    }
    s.agent = Some(vm.is_sandbox);
    s.disk_gib = vm.disk_gb;
    if vm.uefi_boot {
        s.uefi = Some(storage.to_owned());
    }
    // Isolation rules only filter NICs that carry the firewall flag, so our own networks
    // always get it; on existing vnets it is the peer's per-NIC option.
    let firewall = vm.firewall || network.zone.is_some();
    let model = vm.nic_controller.unwrap_or(NicController::Virtio);
    s.nics = match &vm.nics {
        None => network.first_vnet().map(|bridge| {
            vec![NicSpec {
                bridge: bridge.to_owned(),
                model,
                mac: None,
                firewall,
            }]
        }),
        Some(nics) => Some(
            nics.iter()
                .enumerate()
                .map(|(j, n)| {
                    let bridge =
                        network
                            .resolve_alias(&n.vnet_alias)
                            .ok_or_else(|| Error::Config {
                                field: format!("vms_config[{index}].nics[{j}].vnet_alias"),
                                value: n.vnet_alias.clone(),
                                fix: "no vnet of the sample and no existing vnet has this alias"
                                    .into(),
                            })?;
                    Ok(NicSpec {
                        bridge: bridge.to_owned(),
                        model,
                        mac: n.mac.clone(),
                        firewall,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?,
        ),
    };
    Ok(s)
}
