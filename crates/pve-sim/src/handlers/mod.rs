//! Route handlers. Each gets the parsed, validated request and the state lock.

pub(crate) mod agent;
mod cluster;
mod firewall;
mod qemu;
mod sdn;
mod storage;

use std::sync::Arc;

use serde_json::Value;

use crate::error::ApiError;
use crate::spec::{RawParams, Route, parse_bool};
use crate::state::{Shared, State};

/// A validated request.
pub(crate) struct Ctx {
    pub method: String,
    pub route: &'static Route,
    pub params: RawParams,
    /// The authenticated user or token (`root@pam`, `root@pam!ci`).
    pub user: String,
    /// Upload body facts (size, sha256), for `POST .../upload`.
    pub upload: Option<UploadInfo>,
}

/// What the simulator keeps of an uploaded file.
#[derive(Debug, Clone)]
pub(crate) struct UploadInfo {
    /// Size, digests, tar members, small files' bytes.
    pub sniffed: crate::image::Sniffed,
}

impl Ctx {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    pub fn req(&self, name: &str) -> &str {
        // Validation already rejected requests without required parameters.
        self.str(name).unwrap_or_default()
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        self.str(name).and_then(|v| v.parse().ok())
    }
    pub fn flag(&self, name: &str) -> bool {
        self.str(name).and_then(parse_bool).unwrap_or(false)
    }
    pub fn node(&self) -> &str {
        self.req("node")
    }
    pub fn vmid(&self) -> u32 {
        self.int("vmid").unwrap_or_default() as u32
    }
}

/// Routes whose answer is a UPID: when they cannot take a lock, the *task* fails.
pub(crate) fn returns_task(method: &str, route: &str) -> bool {
    matches!(
        (method, route),
        ("POST", "/nodes/{node}/qemu")
            | ("POST", "/nodes/{node}/qemu/{vmid}/clone")
            | ("POST", "/nodes/{node}/qemu/{vmid}/template")
            | ("POST", "/nodes/{node}/qemu/{vmid}/config")
            | ("DELETE", "/nodes/{node}/qemu/{vmid}")
            | ("PUT", "/nodes/{node}/qemu/{vmid}/resize")
            | ("POST", "/nodes/{node}/qemu/{vmid}/snapshot")
            | (
                "POST",
                "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback"
            )
            | ("DELETE", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}")
            | ("POST", "/nodes/{node}/storage/{storage}/upload")
            | (
                "POST" | "DELETE",
                "/nodes/{node}/storage/{storage}/content/{volume}"
            )
            | ("POST", "/nodes/{node}/storage/{storage}/download-url")
            | ("PUT", "/cluster/sdn")
    ) || (method == "POST" && route.starts_with("/nodes/{node}/qemu/{vmid}/status/"))
}

/// Routes that take the VM's config-file lock.
pub(crate) fn takes_vm_flock(method: &str, route: &str) -> bool {
    method != "GET"
        && route.starts_with("/nodes/{node}/qemu/{vmid}")
        && !route.contains("/agent/")
        && !route.contains("/firewall/")
        && !route.ends_with("/clone")
}

/// Guest-agent routes, which [`agent::prepare`] and [`agent::run`] serve outside the state lock.
pub(crate) fn is_agent(route: &str) -> bool {
    route.starts_with("/nodes/{node}/qemu/{vmid}/agent/")
}

/// pveproxy's answer for a `{node}` that is not a cluster member.
pub(crate) fn check_node(shared: &Shared, ctx: &Ctx) -> Result<(), ApiError> {
    if shared
        .cfg
        .nodes
        .iter()
        .any(|n| ctx.params.get("node").is_none_or(|v| v.first() == Some(n)))
    {
        return Ok(());
    }
    let n = ctx.node();
    Err(ApiError::internal(format!(
        "hostname lookup '{n}' failed - failed to get address info for: {n}: Name or service not known"
    )))
}

pub(crate) fn dispatch(shared: &Arc<Shared>, st: &mut State, ctx: &Ctx) -> Result<Value, ApiError> {
    check_node(shared, ctx)?;
    let r = ctx.route.path;
    let m = ctx.method.as_str();
    if r.starts_with("/cluster/firewall") || r.starts_with("/nodes/{node}/qemu/{vmid}/firewall/") {
        return firewall::handle(st, ctx);
    }
    if r.starts_with("/nodes/{node}/qemu") {
        return qemu::handle(shared, st, ctx);
    }
    if r.starts_with("/nodes/{node}/storage") {
        return storage::handle(shared, st, ctx);
    }
    if r.starts_with("/cluster/sdn") {
        return sdn::handle(shared, st, ctx);
    }
    cluster::handle(shared, st, ctx).unwrap_or_else(|| {
        Err(ApiError::new(
            501,
            format!("Method '{m} {r}' not implemented"),
        ))
    })
}
