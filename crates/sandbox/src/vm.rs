//! VM operations the lifecycle and cleanup share: start, stop-and-destroy, listing ours.

use std::time::{Duration, Instant};

use pve_client::{DestroyOptions, PveClient, Upid, Vmid, WaitOptions};

use crate::owner::{Tagged, parse_tags, parse_vm_name};

/// Longest wait for one VM task (stop, destroy, start).
const TASK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a config lock (a clone in flight, a crashed task) may delay a destroy.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

async fn wait(client: &PveClient, upid: Upid) -> Result<(), pve_client::Error> {
    client
        .wait_task(&upid, WaitOptions::with_timeout(TASK_TIMEOUT))
        .await
        .map(|_| ())
}

/// Runs `op` until it succeeds, fails for another reason than a config lock, or the lock
/// outlives [`LOCK_PATIENCE`]. A lock belongs to a task that ends on its own (a clone, a
/// start); waiting for it is the only correct thing, and PVE offers no notification.
async fn patiently<F, Fut, T>(mut op: F) -> Result<T, pve_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, pve_client::Error>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match op().await {
            Err(e) if e.is_locked() && start.elapsed() < LOCK_PATIENCE => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Stops (hard) and destroys a VM with its disks. A VM that is already gone is success.
pub(crate) async fn destroy(
    client: &PveClient,
    node: &str,
    vmid: Vmid,
) -> Result<(), pve_client::Error> {
    let q = client.node(node).qemu(vmid);
    let gone = |e: &pve_client::Error| e.is_not_found();
    match patiently(|| async { wait(client, q.stop().await?).await }).await {
        Ok(()) => {}
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(e),
    }
    match patiently(|| async { wait(client, q.destroy(DestroyOptions::thorough()).await?).await })
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Starts a VM and waits for the start task.
pub(crate) async fn start(
    client: &PveClient,
    node: &str,
    vmid: Vmid,
) -> Result<(), pve_client::Error> {
    let q = client.node(node).qemu(vmid);
    patiently(|| async { wait(client, q.start().await?).await }).await
}

/// One VM of ours, as `/cluster/resources` lists it.
#[derive(Debug, Clone)]
pub struct OwnedVm {
    /// Its id.
    pub vmid: Vmid,
    /// The node it lives on.
    pub node: String,
    /// Its name.
    pub name: String,
    /// `running`, `stopped`.
    pub status: String,
    /// Its RAM, MiB (`maxmem`).
    pub memory_mb: u64,
    /// Its vCPUs (`maxcpu`).
    pub cores: u32,
    /// What its tags say.
    pub tagged: Tagged,
}

/// Every non-template VM of ours in the cluster: one call. Ours means tagged `pvesandbox`, or
/// named `<name>.s<sample>.<run>`: a crash between the clone (which sets name and owner
/// record but cannot set tags) and the configuration leaves the template's tags on the VM.
pub(crate) async fn list_owned(client: &PveClient) -> Result<Vec<OwnedVm>, pve_client::Error> {
    let all = client.cluster_resources(Some("vm")).await?;
    Ok(all
        .into_iter()
        .filter(|r| r.kind == "qemu" && r.template != Some(true))
        .filter_map(|r| {
            let name = r.name.unwrap_or_default();
            let by_name = parse_vm_name(&name).map(|(_, _, run)| run);
            let tagged = match parse_tags(r.tags.as_deref().unwrap_or("")) {
                Some(mut t) => {
                    if t.run.is_none() {
                        t.run = by_name;
                    }
                    t
                }
                None => Tagged {
                    run: Some(by_name?),
                    expires: None,
                },
            };
            Some(OwnedVm {
                vmid: Vmid(r.vmid?),
                node: r.node?,
                name,
                status: r.status.unwrap_or_default(),
                memory_mb: r.maxmem.unwrap_or(0) >> 20,
                cores: r.maxcpu.unwrap_or(0.0) as u32,
                tagged,
            })
        })
        .collect())
}
