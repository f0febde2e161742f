//! Garbage collection of templates and image files no source refers to.

use pve_client::Vmid;

use crate::build::Plan;
use crate::seed::NoCloudSeed;
use crate::{BakeOptions, FILE_PREFIX, KEY_TAG_PREFIX, Result, TAG, Templates, VmSource, tags_of};

/// What [`Templates::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Templates destroyed.
    pub templates: Vec<Vmid>,
    /// Files deleted (volume ids).
    pub volumes: Vec<String>,
    /// Unused templates kept because linked clones still use them.
    pub in_use: Vec<Vmid>,
    /// Files no source needs, kept because the token may not delete volumes on that storage
    /// (PVE wants Datastore.Allocate on `/storage/<id>`; grant it there alone).
    pub not_permitted: Vec<String>,
}

pub(crate) async fn run(t: &Templates, keep: &[VmSource]) -> Result<GcReport> {
    let mut keys = Vec::new();
    let mut files = vec![NoCloudSeed::bake(&t.cfg.packages).filename()];
    for s in keep {
        let plan = Plan::of(t, s, &BakeOptions::default(), &|_| {}).await?;
        files.extend(plan.image_file());
        keys.push(format!("{KEY_TAG_PREFIX}{}", plan.key));
    }
    let node = t.pve.node(&t.cfg.node);
    let mut report = GcReport::default();
    for e in node.qemu_list().await? {
        let tags = tags_of(&e);
        let ours = tags.iter().any(|x| x == TAG);
        let key = tags.iter().find(|x| x.starts_with(KEY_TAG_PREFIX));
        // Only finished templates: a claim belongs to a build in progress.
        if !ours || e.template != Some(true) {
            continue;
        }
        let Some(key) = key else { continue };
        // A kept OVA whose template was made with other options has another key: keep
        // every template whose key starts with a kept key.
        if keys
            .iter()
            .any(|k| key == k || key.starts_with(&format!("{k}-")))
        {
            continue;
        }
        let vm = node.qemu(e.vmid);
        let r = match vm.destroy(pve_client::DestroyOptions::thorough()).await {
            Ok(upid) => t.pve.wait_task(&upid, t.wait_opts_pub()).await.map(drop),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => report.templates.push(e.vmid),
            Err(err) if err.to_string().contains("linked clone") => report.in_use.push(e.vmid),
            Err(err) => return Err(err.into()),
        }
    }
    let storage = node.storage(&t.cfg.file_storage);
    for c in storage.content(None).await? {
        let Some((_, name)) = c.volid.split_once('/') else {
            continue;
        };
        let kind = c.content.as_deref().unwrap_or_default();
        if !(kind == "import" || kind == "iso") || !name.starts_with(FILE_PREFIX) {
            continue;
        }
        if files.iter().any(|f| f == name) {
            continue;
        }
        match storage.delete_volume(&c.volid).await {
            Ok(Some(upid)) => {
                t.pve.wait_task(&upid, t.wait_opts_pub()).await?;
            }
            Ok(None) => {}
            // A template we kept still imports from it, or a VM mounts the ISO: leave it.
            Err(e) if e.to_string().contains("in use") => continue,
            // Deleting volumes is a storage-wide privilege an administrator may well keep
            // from the sandbox token; the rest of the collection still happened.
            Err(e) if e.is_permission_denied() => {
                report.not_permitted.push(c.volid);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        report.volumes.push(c.volid);
    }
    Ok(report)
}
