//! Per-VM calls: config, clone, template, power, destroy, resize, snapshots.

use serde_json::Value;

use crate::api::{NodeApi, seg, upid_of};
use crate::{Method, Params, Result, Snapshot, Upid, VmConfig, VmStatus, Vmid};

/// Calls on one QEMU VM. Get one with [`NodeApi::qemu`].
#[derive(Debug, Clone, Copy)]
pub struct QemuApi<'a> {
    pub(crate) node: NodeApi<'a>,
    pub(crate) vmid: Vmid,
}

/// Options of `POST .../clone`.
#[derive(Debug, Clone)]
pub struct CloneOptions {
    /// Id of the new VM.
    pub newid: Vmid,
    /// Name of the new VM.
    pub name: Option<String>,
    /// Full copy instead of a linked clone (linked is PVE's default from a template).
    pub full: Option<bool>,
    /// Target storage (full clones only).
    pub storage: Option<String>,
    /// Target format (full clones only): `raw`, `qcow2`, `vmdk`.
    pub format: Option<String>,
    /// Resource pool for the new VM.
    pub pool: Option<String>,
    /// Target node (shared storage only).
    pub target: Option<String>,
    /// Description of the new VM.
    pub description: Option<String>,
    /// Clone from this snapshot.
    pub snapname: Option<String>,
}

impl CloneOptions {
    /// A linked clone (from a template) or full clone (from a VM) with id `newid`.
    pub fn new(newid: Vmid) -> Self {
        CloneOptions {
            newid,
            name: None,
            full: None,
            storage: None,
            format: None,
            pool: None,
            target: None,
            description: None,
            snapname: None,
        }
    }
    /// Sets the new VM's name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Requests a full (not linked) copy.
    #[must_use]
    pub fn full(mut self, full: bool) -> Self {
        self.full = Some(full);
        self
    }
    /// Puts the new VM into a pool.
    #[must_use]
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }
    /// Sets the new VM's description.
    #[must_use]
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }
    fn params(&self) -> Params {
        Params::new()
            .with("newid", self.newid)
            .with_opt("name", self.name.as_deref())
            .with_opt("full", self.full)
            .with_opt("storage", self.storage.as_deref())
            .with_opt("format", self.format.as_deref())
            .with_opt("pool", self.pool.as_deref())
            .with_opt("target", self.target.as_deref())
            .with_opt("description", self.description.as_deref())
            .with_opt("snapname", self.snapname.as_deref())
    }
}

/// Options of `DELETE /nodes/{node}/qemu/{vmid}`.
#[derive(Debug, Clone, Copy)]
pub struct DestroyOptions {
    /// Also remove the id from backup jobs, replication, HA and ACLs.
    pub purge: bool,
    /// Also delete disks with this vmid that the config does not reference.
    pub destroy_unreferenced_disks: bool,
}

impl DestroyOptions {
    /// What a sandbox wants: leave nothing behind (`purge=1`, `destroy-unreferenced-disks=1`).
    pub fn thorough() -> Self {
        DestroyOptions {
            purge: true,
            destroy_unreferenced_disks: true,
        }
    }
}

/// Options of `POST .../status/shutdown`.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownOptions {
    /// Seconds to wait for the guest.
    pub timeout: Option<u32>,
    /// Hard-stop when the timeout passes.
    pub force_stop: bool,
}

impl<'a> QemuApi<'a> {
    fn path(&self, rest: &str) -> String {
        self.node.path(&format!("/qemu/{}{rest}", self.vmid))
    }

    async fn task(&self, method: Method, rest: &str, params: &Params) -> Result<Upid> {
        let path = self.path(rest);
        let v = self.node.client.call(method, &path, params).await?;
        upid_of(method, &path, v)
    }

    /// The VM id.
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// `GET .../config` (pending changes applied, as PVE does by default).
    pub async fn config(&self) -> Result<VmConfig> {
        self.node
            .client
            .call(Method::Get, &self.path("/config"), &Params::new())
            .await
    }

    /// `GET .../config?current=1`: the running configuration, without pending changes.
    pub async fn config_current(&self) -> Result<VmConfig> {
        self.node
            .client
            .call(
                Method::Get,
                &self.path("/config"),
                &Params::new().with("current", true),
            )
            .await
    }

    /// `POST .../config` (asynchronous). Returns the task, or `None` when PVE finished without
    /// one. Use this for anything that allocates storage or hotplugs.
    pub async fn update_config_async(&self, params: &Params) -> Result<Option<Upid>> {
        let path = self.path("/config");
        match self
            .node
            .client
            .call::<Value>(Method::Post, &path, params)
            .await?
        {
            Value::Null => Ok(None),
            v => upid_of(Method::Post, &path, v).map(Some),
        }
    }

    /// `PUT .../config` (synchronous).
    pub async fn update_config(&self, params: &Params) -> Result<()> {
        self.node
            .client
            .call::<Value>(Method::Put, &self.path("/config"), params)
            .await?;
        Ok(())
    }

    /// `POST .../clone`. The task's UPID names the *source* vmid, as on PVE.
    pub async fn clone_vm(&self, opts: &CloneOptions) -> Result<Upid> {
        self.task(Method::Post, "/clone", &opts.params()).await
    }

    /// `POST .../template`: convert to a template (irreversible).
    pub async fn template(&self) -> Result<Upid> {
        self.task(Method::Post, "/template", &Params::new()).await
    }

    /// `GET .../status/current`.
    pub async fn status(&self) -> Result<VmStatus> {
        self.node
            .client
            .call(Method::Get, &self.path("/status/current"), &Params::new())
            .await
    }

    /// `POST .../status/start`.
    pub async fn start(&self) -> Result<Upid> {
        self.task(Method::Post, "/status/start", &Params::new())
            .await
    }

    /// `POST .../status/stop`: pull the plug.
    pub async fn stop(&self) -> Result<Upid> {
        self.task(Method::Post, "/status/stop", &Params::new())
            .await
    }

    /// `POST .../status/shutdown`: ACPI (or agent) shutdown.
    pub async fn shutdown(&self, opts: ShutdownOptions) -> Result<Upid> {
        let p = Params::new()
            .with_opt("timeout", opts.timeout)
            .with_opt("forceStop", opts.force_stop.then_some(true));
        self.task(Method::Post, "/status/shutdown", &p).await
    }

    /// `POST .../status/suspend`, to RAM or (with `todisk`) to disk.
    pub async fn suspend(&self, todisk: bool) -> Result<Upid> {
        self.task(
            Method::Post,
            "/status/suspend",
            &Params::new().with_opt("todisk", todisk.then_some(true)),
        )
        .await
    }

    /// `POST .../status/resume`.
    pub async fn resume(&self) -> Result<Upid> {
        self.task(Method::Post, "/status/resume", &Params::new())
            .await
    }

    /// `DELETE /nodes/{node}/qemu/{vmid}`. The VM must be stopped.
    pub async fn destroy(&self, opts: DestroyOptions) -> Result<Upid> {
        let p = Params::new()
            .with_opt("purge", opts.purge.then_some(true))
            .with_opt(
                "destroy-unreferenced-disks",
                opts.destroy_unreferenced_disks.then_some(true),
            );
        self.task(Method::Delete, "", &p).await
    }

    /// `PUT .../resize`: `size` is absolute (`32G`) or relative (`+8G`).
    pub async fn resize(&self, disk: &str, size: &str) -> Result<Upid> {
        self.task(
            Method::Put,
            "/resize",
            &Params::new().with("disk", disk).with("size", size),
        )
        .await
    }

    /// `GET .../snapshot` (includes the `current` pseudo-entry).
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.node
            .client
            .call(Method::Get, &self.path("/snapshot"), &Params::new())
            .await
    }

    /// `POST .../snapshot`, with RAM when `vmstate`.
    pub async fn snapshot(
        &self,
        name: &str,
        vmstate: bool,
        description: Option<&str>,
    ) -> Result<Upid> {
        let p = Params::new()
            .with("snapname", name)
            .with_opt("vmstate", vmstate.then_some(true))
            .with_opt("description", description);
        self.task(Method::Post, "/snapshot", &p).await
    }

    /// `POST .../snapshot/{name}/rollback`.
    pub async fn rollback(&self, name: &str, start: bool) -> Result<Upid> {
        let p = Params::new().with_opt("start", start.then_some(true));
        self.task(
            Method::Post,
            &format!("/snapshot/{}/rollback", seg(name)),
            &p,
        )
        .await
    }

    /// `DELETE .../snapshot/{name}`.
    pub async fn delete_snapshot(&self, name: &str, force: bool) -> Result<Upid> {
        let p = Params::new().with_opt("force", force.then_some(true));
        self.task(Method::Delete, &format!("/snapshot/{}", seg(name)), &p)
            .await
    }
}
