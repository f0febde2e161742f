//! Cluster-wide calls: version, next free id, resources, tasks, nodes, pools.

use crate::{
    ClusterResource, Method, NodeInfo, Params, Pool, PveClient, Result, TaskEntry, Version, Vmid,
};

impl PveClient {
    /// `GET /version`.
    pub async fn version(&self) -> Result<Version> {
        self.call(Method::Get, "/version", &Params::new()).await
    }

    /// `GET /cluster/nextid`: a free id *at the time of the check* (racy by nature: create
    /// with the id and retry on "already exists" instead of trusting it).
    pub async fn next_id(&self) -> Result<Vmid> {
        self.call(Method::Get, "/cluster/nextid", &Params::new())
            .await
    }

    /// `GET /cluster/nextid?vmid=N`: whether `vmid` is free. PVE answers an error when it is
    /// taken; that error is returned as `Ok(false)`.
    pub async fn is_vmid_free(&self, vmid: Vmid) -> Result<bool> {
        match self
            .get("/cluster/nextid", &Params::new().with("vmid", vmid))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(400) || e.status() == Some(500) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /cluster/resources`, optionally of one `type` (`vm`, `storage`, `node`, `sdn`).
    pub async fn cluster_resources(&self, kind: Option<&str>) -> Result<Vec<ClusterResource>> {
        self.call(
            Method::Get,
            "/cluster/resources",
            &Params::new().with_opt("type", kind),
        )
        .await
    }

    /// `GET /cluster/tasks`: recent tasks cluster-wide.
    pub async fn cluster_tasks(&self) -> Result<Vec<TaskEntry>> {
        self.call(Method::Get, "/cluster/tasks", &Params::new())
            .await
    }

    /// `GET /nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.call(Method::Get, "/nodes", &Params::new()).await
    }

    /// `GET /pools`.
    pub async fn pools(&self) -> Result<Vec<Pool>> {
        self.call(Method::Get, "/pools", &Params::new()).await
    }

    /// `GET /pools?poolid=ID`: one pool with its members.
    pub async fn pool(&self, poolid: &str) -> Result<Pool> {
        let list: Vec<Pool> = self
            .call(Method::Get, "/pools", &Params::new().with("poolid", poolid))
            .await?;
        list.into_iter().next().ok_or_else(|| crate::Error::Api {
            method: "GET",
            path: "/pools".into(),
            status: 500,
            message: format!("pool '{poolid}' does not exist"),
            errors: Default::default(),
        })
    }

    /// `POST /pools`.
    pub async fn create_pool(&self, poolid: &str, comment: Option<&str>) -> Result<()> {
        self.post(
            "/pools",
            &Params::new()
                .with("poolid", poolid)
                .with_opt("comment", comment),
        )
        .await?;
        Ok(())
    }

    /// `DELETE /pools?poolid=ID`.
    pub async fn delete_pool(&self, poolid: &str) -> Result<()> {
        self.delete("/pools", &Params::new().with("poolid", poolid))
            .await?;
        Ok(())
    }
}
