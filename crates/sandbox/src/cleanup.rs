//! Cleanup from Proxmox state alone: what a run left, or what expired, on every instance.
//!
//! Nothing here reads local files or memory of the run: after `kill -9` the tags, owner
//! records and network ids in PVE are all there is, and all that is needed.

use std::collections::BTreeMap;

use pve_client::PveClient;
use pvesandbox_pool::InstanceConfig;
use serde::Serialize;

use crate::error::Error;
use crate::owner::{OwnerRecord, RunId, unix_now};
use crate::vm::{self, OwnedVm};

/// What to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupTarget {
    /// Everything one run made.
    Run(RunId),
    /// Everything whose expiry has passed and whose owner is not provably alive.
    Expired,
}

/// What a cleanup removed, kept, and failed to remove.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// VMs destroyed: `instance/vmid (name)`.
    pub vms: Vec<String>,
    /// SDN zones removed (with their vnets and subnets): `instance/zone`.
    pub zones: Vec<String>,
    /// Expired objects left alone because their owner is still running.
    pub kept: Vec<String>,
    /// What could not be removed, with the reason.
    pub failed: Vec<String>,
}

impl CleanupReport {
    /// Folds another report into this one.
    pub fn extend(&mut self, other: CleanupReport) {
        self.vms.extend(other.vms);
        self.zones.extend(other.zones);
        self.kept.extend(other.kept);
        self.failed.extend(other.failed);
    }
    /// `Err(Error::Cleanup)` when something is left.
    pub fn into_result(self) -> Result<CleanupReport, Error> {
        if self.failed.is_empty() {
            Ok(self)
        } else {
            Err(Error::Cleanup {
                leftover: self.failed,
            })
        }
    }
}

/// Cleans every configured instance (in parallel).
pub async fn cleanup(
    instances: &[InstanceConfig],
    target: &CleanupTarget,
) -> Result<CleanupReport, Error> {
    let mut report = CleanupReport::default();
    let jobs = instances.iter().map(|i| async move {
        let client = i.client().map_err(Error::from_pool)?;
        Ok::<_, Error>(cleanup_instance(&i.instance_id, &client, target).await)
    });
    for r in futures_util::future::join_all(jobs).await {
        report.extend(r?);
    }
    Ok(report)
}

/// Whether `vm` is to be removed, and (for expired ones) whether its owner still lives.
async fn decide(client: &PveClient, vm: &OwnedVm, target: &CleanupTarget) -> Decision {
    match target {
        CleanupTarget::Run(run) => {
            if vm.tagged.run.as_ref() == Some(run) {
                Decision::Remove
            } else {
                Decision::Skip
            }
        }
        CleanupTarget::Expired => {
            if vm.tagged.expires.is_some_and(|e| e > unix_now()) {
                return Decision::Skip;
            }
            // The description holds the owner (and, before the clone was configured, the
            // only expiry); one GET, only for candidates.
            let record = client
                .node(&vm.node)
                .qemu(vm.vmid)
                .config()
                .await
                .ok()
                .and_then(|c| c.get("description"))
                .and_then(|d| OwnerRecord::parse(&d));
            match record {
                Some(r) if r.owner_alive() => Decision::Keep,
                Some(r) if vm.tagged.expires.is_none() && r.expires > unix_now() => Decision::Skip,
                Some(_) => Decision::Remove,
                // Ours by name but without tags or record: never configured, so it came
                // from a crash; without an expiry there is no safe moment, unless tagged.
                None if vm.tagged.expires.is_some() => Decision::Remove,
                None => Decision::Skip,
            }
        }
    }
}

enum Decision {
    Remove,
    Keep,
    Skip,
}

/// Cleans one instance: VMs first (they hold NICs on the vnets), then networks.
pub async fn cleanup_instance(
    instance: &str,
    client: &PveClient,
    target: &CleanupTarget,
) -> CleanupReport {
    let mut report = CleanupReport::default();
    let owned = match vm::list_owned(client).await {
        Ok(v) => v,
        Err(e) => {
            report
                .failed
                .push(format!("{instance}: listing VMs failed: {e}"));
            return report;
        }
    };
    // Runs that still have live (kept) VMs keep their networks too.
    let mut live_runs: BTreeMap<String, ()> = BTreeMap::new();
    let mut doomed = Vec::new();
    // Expired candidates cost one config read each; read them all at once.
    let decisions =
        futures_util::future::join_all(owned.iter().map(|vm| decide(client, vm, target))).await;
    for (vm, decision) in owned.iter().zip(decisions) {
        match decision {
            Decision::Remove => doomed.push(vm.clone()),
            Decision::Keep => {
                report
                    .kept
                    .push(format!("{instance}/{} ({}): owner alive", vm.vmid, vm.name));
                if let Some(r) = &vm.tagged.run {
                    live_runs.insert(r.key().to_owned(), ());
                }
            }
            Decision::Skip => {
                if let Some(r) = &vm.tagged.run {
                    live_runs.insert(r.key().to_owned(), ());
                }
            }
        }
    }
    let results = futures_util::future::join_all(
        doomed
            .iter()
            .map(|vm| async move { (vm, vm::destroy(client, &vm.node, vm.vmid).await) }),
    )
    .await;
    for (vm, r) in results {
        match r {
            Ok(()) => report
                .vms
                .push(format!("{instance}/{} ({})", vm.vmid, vm.name)),
            Err(e) => {
                // Its NICs still hold addresses in the run's subnets: keep the network.
                if let Some(r) = &vm.tagged.run {
                    live_runs.insert(r.key().to_owned(), ());
                }
                report
                    .failed
                    .push(format!("{instance}/{} ({}): {e}", vm.vmid, vm.name))
            }
        }
    }
    // Networks: a run's zones go with its VMs. Zones are created only after the sample owns
    // a VM, so an expired run's zone with no VM left is an orphan of a crash.
    let zones = match pve_sdn::list_owned_zones(client).await {
        Ok(z) => z,
        Err(e) => {
            report
                .failed
                .push(format!("{instance}: listing SDN zones failed: {e}"));
            return report;
        }
    };
    let doomed_zones: Vec<String> = zones
        .into_iter()
        .filter(|(_, key, _)| match target {
            CleanupTarget::Run(run) => key == run.key() && !live_runs.contains_key(key),
            CleanupTarget::Expired => !live_runs.contains_key(key),
        })
        .map(|(zone, _, _)| zone)
        .collect();
    if doomed_zones.is_empty() {
        return report;
    }
    for zone in &doomed_zones {
        match pve_sdn::delete_by_ids(client, zone).await {
            Ok(_) => report.zones.push(format!("{instance}/{zone}")),
            Err(e) => report.failed.push(format!("{instance}/{zone}: {e}")),
        }
    }
    // One apply for all of them.
    if let Err(e) = pve_sdn::apply_now(client).await {
        report
            .failed
            .push(format!("{instance}: applying the SDN removal failed: {e}"));
    }
    report
}
