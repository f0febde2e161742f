//! Per-node calls.

use crate::api::{QemuApi, StorageApi, seg};
use crate::{Method, NodeStatus, Params, PveClient, Result, StorageInfo, Upid, VmEntry, Vmid};

/// Calls on one node. Get one with [`PveClient::node`].
#[derive(Debug, Clone, Copy)]
pub struct NodeApi<'a> {
    pub(crate) client: &'a PveClient,
    pub(crate) node: &'a str,
}

impl PveClient {
    /// Calls on `node`.
    pub fn node<'a>(&'a self, node: &'a str) -> NodeApi<'a> {
        NodeApi { client: self, node }
    }
}

impl<'a> NodeApi<'a> {
    pub(crate) fn path(&self, rest: &str) -> String {
        format!("/nodes/{}{rest}", seg(self.node))
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node
    }

    /// Calls on VM `vmid` of this node.
    pub fn qemu(&self, vmid: Vmid) -> QemuApi<'a> {
        QemuApi { node: *self, vmid }
    }

    /// Calls on storage `storage` of this node.
    pub fn storage(&self, storage: &'a str) -> StorageApi<'a> {
        StorageApi {
            node: *self,
            storage,
        }
    }

    /// `GET /nodes/{node}/status`.
    pub async fn status(&self) -> Result<NodeStatus> {
        self.client
            .call(Method::Get, &self.path("/status"), &Params::new())
            .await
    }

    /// `GET /nodes/{node}/qemu`.
    pub async fn qemu_list(&self) -> Result<Vec<VmEntry>> {
        self.client
            .call(Method::Get, &self.path("/qemu"), &Params::new())
            .await
    }

    /// `POST /nodes/{node}/qemu`: create VM `vmid` with config `params` (disks as
    /// `STORAGE:SIZE_GiB`, NICs as `virtio,bridge=vmbr0`, ...). Returns the `qmcreate` task.
    pub async fn qemu_create(&self, vmid: Vmid, params: &Params) -> Result<Upid> {
        let mut p = Params::new().with("vmid", vmid);
        for (k, v) in params.pairs() {
            p.push(k, v.as_str());
        }
        let path = self.path("/qemu");
        let v = self.client.call(Method::Post, &path, &p).await?;
        crate::api::upid_of(Method::Post, &path, v)
    }

    /// `GET /nodes/{node}/storage`, optionally only storages accepting `content`.
    pub async fn storages(&self, content: Option<&str>) -> Result<Vec<StorageInfo>> {
        self.client
            .call(
                Method::Get,
                &self.path("/storage"),
                &Params::new().with_opt("content", content),
            )
            .await
    }
}
