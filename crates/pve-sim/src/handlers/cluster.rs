//! Cluster-wide routes: tickets, version, nextid, resources, tasks, nodes, pools.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Ctx;
use super::qemu::vm_summary;
use crate::error::ApiError;
use crate::state::{PoolState, Shared, State};

pub(super) fn handle(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
) -> Option<Result<Value, ApiError>> {
    let cfg = &shared.cfg;
    Some(match (ctx.method.as_str(), ctx.route.path) {
        ("GET", "/version") => Ok(json!({
            "version": cfg.version, "release": cfg.version.rsplit_once('.').map_or(cfg.version.as_str(), |(r, _)| r),
            "repoid": "5e2a9c5d", "console": "xtermjs",
        })),
        ("GET", "/access/permissions") => Ok(permissions(cfg, ctx)),
        ("GET", "/cluster/nextid") => next_id(st, ctx),
        ("GET", "/cluster/resources") => Ok(resources(shared, st, ctx.str("type"))),
        ("GET", "/cluster/tasks") => Ok(Value::Array(
            st.task_order
                .iter()
                .rev()
                .take(500)
                .filter_map(|u| task_entry(st, u))
                .collect(),
        )),
        ("GET", "/nodes/{node}/tasks") => {
            let node = ctx.node();
            let limit = ctx.int("limit").unwrap_or(50).max(0) as usize;
            let start = ctx.int("start").unwrap_or(0).max(0) as usize;
            Ok(Value::Array(
                st.task_order
                    .iter()
                    .rev()
                    .filter(|u| st.tasks.get(*u).is_some_and(|t| t.node == node))
                    .skip(start)
                    .take(limit)
                    .filter_map(|u| task_entry(st, u))
                    .collect(),
            ))
        }
        ("GET", "/nodes/{node}/tasks/{upid}/status") => {
            let upid = ctx.req("upid");
            st.task_status(upid)
                .filter(|t| t["node"] == ctx.node())
                .ok_or_else(|| ApiError::internal(format!("no such task '{upid}'")))
        }
        ("GET", "/nodes/{node}/tasks/{upid}/log") => {
            let upid = ctx.req("upid");
            let t = st
                .tasks
                .get(upid)
                .filter(|t| t.node == ctx.node())
                .ok_or_else(|| ApiError::internal(format!("no such task '{upid}'")));
            t.map(|t| {
                let start = ctx.int("start").unwrap_or(0).max(0) as usize;
                let limit = ctx.int("limit").unwrap_or(50).max(0) as usize;
                // A running task's log has no final line yet; PVE shows "no content" for an empty log.
                let lines: Vec<&str> = if t.log.is_empty() {
                    vec!["no content"]
                } else {
                    t.log.iter().map(String::as_str).collect()
                };
                Value::Array(
                    lines
                        .iter()
                        .enumerate()
                        .skip(start)
                        .take(limit)
                        .map(|(i, l)| json!({"n": i + 1, "t": l}))
                        .collect(),
                )
            })
        }
        ("GET", "/nodes") => Ok(Value::Array(
            cfg.nodes
                .iter()
                .map(|n| node_entry(shared, st, n))
                .collect(),
        )),
        ("GET", "/nodes/{node}/status") => {
            let (used, _) = node_load(st, ctx.node());
            Ok(json!({
                "pveversion": format!("pve-manager/{}/5e2a9c5d", cfg.version), "kversion": "Linux 6.14.8-2-pve #1 SMP PREEMPT_DYNAMIC",
                "uptime": 86400, "cpu": 0.02, "wait": 0, "loadavg": ["0.10", "0.08", "0.05"],
                "memory": {"total": cfg.node_memory, "used": used, "free": cfg.node_memory.saturating_sub(used), "available": cfg.node_memory.saturating_sub(used)},
                "cpuinfo": {"cpus": cfg.node_cpus, "cores": cfg.node_cpus, "sockets": 1, "model": "Simulated CPU", "mhz": "3000.000", "hvm": "1", "flags": ""},
                "rootfs": {"total": 100u64 << 30, "used": 10u64 << 30, "free": 90u64 << 30, "avail": 90u64 << 30},
                "swap": {"total": 0, "used": 0, "free": 0},
                "boot-info": {"mode": "efi", "secureboot": 0},
                "current-kernel": {"sysname": "Linux", "release": "6.14.8-2-pve", "machine": "x86_64", "version": "#1 SMP PREEMPT_DYNAMIC"},
            }))
        }
        ("GET", "/pools") => Ok(pools(st, ctx.str("poolid"))),
        ("POST", "/pools") => {
            let id = ctx.req("poolid");
            if st.pools.contains_key(id) {
                return Some(Err(ApiError::internal(format!(
                    "pool '{id}' already exists"
                ))));
            }
            if let Some((parent, _)) = id.rsplit_once('/')
                && !st.pools.contains_key(parent)
            {
                return Some(Err(ApiError::internal(format!(
                    "parent '{parent}' of pool '{id}' does not exist"
                ))));
            }
            st.pools.insert(
                id.into(),
                PoolState {
                    comment: ctx.str("comment").map(str::to_owned),
                    vms: vec![],
                },
            );
            Ok(Value::Null)
        }
        ("PUT", "/pools") => {
            let id = ctx.req("poolid").to_owned();
            if !st.pools.contains_key(&id) {
                return Some(Err(ApiError::internal(format!(
                    "pool '{id}' does not exist"
                ))));
            }
            let vms: Vec<u32> = ctx
                .str("vms")
                .map(|v| {
                    v.split([',', ';', ' '])
                        .filter_map(|s| s.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if let Some(missing) = vms.iter().find(|v| !st.vms.contains_key(v)) {
                return Some(Err(ApiError::internal(format!(
                    "VM {missing} does not exist"
                ))));
            }
            let delete = ctx.flag("delete");
            for v in &vms {
                if !delete
                    && !ctx.flag("allow-move")
                    && st.pools.iter().any(|(p, s)| *p != id && s.vms.contains(v))
                {
                    return Some(Err(ApiError::internal(format!(
                        "VM {v} belongs already to another pool"
                    ))));
                }
            }
            if !delete {
                for s in st.pools.values_mut() {
                    s.vms.retain(|x| !vms.contains(x));
                }
            }
            let pool = st.pools.get_mut(&id).expect("checked above");
            if let Some(c) = ctx.str("comment") {
                pool.comment = Some(c.into());
            }
            if delete {
                pool.vms.retain(|x| !vms.contains(x));
            } else {
                pool.vms.extend(vms);
            }
            Ok(Value::Null)
        }
        ("DELETE", "/pools") => {
            let id = ctx.req("poolid");
            match st.pools.get(id) {
                None => Err(ApiError::internal(format!("pool '{id}' does not exist"))),
                Some(p) if !p.vms.is_empty() => Err(ApiError::internal(format!(
                    "pool '{id}' is not empty (contains VM {})",
                    p.vms[0]
                ))),
                Some(_) if st.pools.keys().any(|k| k.starts_with(&format!("{id}/"))) => {
                    let sub = st
                        .pools
                        .keys()
                        .find(|k| k.starts_with(&format!("{id}/")))
                        .cloned()
                        .unwrap_or_default();
                    Err(ApiError::internal(format!(
                        "pool '{id}' is not empty (contains pool '{sub}')"
                    )))
                }
                Some(_) => {
                    st.pools.remove(id);
                    Ok(Value::Null)
                }
            }
        }
        _ => return None,
    })
}

fn next_id(st: &State, ctx: &Ctx) -> Result<Value, ApiError> {
    if let Some(v) = ctx.int("vmid") {
        if st.vms.contains_key(&(v as u32)) {
            return Err(ApiError::param("vmid", format!("VM {v} already exists")));
        }
        // PVE answers the id as a JSON string here too, although the schema says integer.
        return Ok(json!(v.to_string()));
    }
    (100u32..=999_999_999)
        .find(|id| !st.vms.contains_key(id))
        .map(|id| json!(id.to_string()))
        .ok_or_else(|| ApiError::internal("unable to get any free VMID in range [100, 999999999]"))
}

fn task_entry(st: &State, upid: &str) -> Option<Value> {
    let t = st.tasks.get(upid)?;
    let mut v = json!({"upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart, "starttime": t.starttime, "type": t.kind, "id": t.id, "user": t.user});
    if let Some(e) = &t.exitstatus {
        v["status"] = json!(e);
        v["endtime"] = json!(t.endtime);
    }
    Some(v)
}

fn node_load(st: &State, node: &str) -> (u64, usize) {
    let running: Vec<_> = st
        .vms
        .iter()
        .filter(|(_, v)| v.node == node && v.running)
        .collect();
    let mem = running
        .iter()
        .map(|(id, v)| vm_summary(**id, v)["maxmem"].as_u64().unwrap_or(0))
        .sum::<u64>()
        + (2 << 30);
    (mem, running.len())
}

fn node_entry(shared: &Shared, st: &State, node: &str) -> Value {
    let (mem, _) = node_load(st, node);
    json!({"node": node, "status": "online", "type": "node", "id": format!("node/{node}"), "cpu": 0.02, "maxcpu": shared.cfg.node_cpus,
           "mem": mem, "maxmem": shared.cfg.node_memory, "disk": 10u64 << 30, "maxdisk": 100u64 << 30, "uptime": 86400, "level": "",
           "ssl_fingerprint": ""})
}

fn pool_of(st: &State, vmid: u32) -> Option<&str> {
    st.pools
        .iter()
        .find(|(_, p)| p.vms.contains(&vmid))
        .map(|(k, _)| k.as_str())
}

fn resources(shared: &Shared, st: &State, kind: Option<&str>) -> Value {
    let mut out = Vec::new();
    if kind.is_none_or(|k| k == "vm") {
        for (id, vm) in &st.vms {
            let mut v = vm_summary(*id, vm);
            v["id"] = json!(format!("qemu/{id}"));
            v["type"] = json!("qemu");
            v["node"] = json!(vm.node);
            v["template"] = json!(vm.config.get("template").is_some_and(|t| t == "1") as i64);
            if let Some(p) = pool_of(st, *id) {
                v["pool"] = json!(p);
            }
            out.push(v);
        }
    }
    if kind.is_none_or(|k| k == "node") {
        out.extend(shared.cfg.nodes.iter().map(|n| node_entry(shared, st, n)));
    }
    if kind.is_none_or(|k| k == "storage") {
        for n in &shared.cfg.nodes {
            for s in &shared.cfg.storages {
                let used = super::storage::used_bytes(st, n, &s.id);
                out.push(json!({"id": format!("storage/{n}/{}", s.id), "type": "storage", "node": n, "storage": s.id, "status": "available",
                    "plugintype": s.kind, "content": s.content.join(","), "shared": s.shared as i64, "disk": used, "maxdisk": s.total}));
            }
        }
    }
    if kind.is_none() {
        for id in st.pools.keys() {
            out.push(json!({"id": format!("/pool/{id}"), "type": "pool", "pool": id}));
        }
    }
    if kind.is_none_or(|k| k == "sdn") {
        for n in &shared.cfg.nodes {
            for z in st.sdn.running.zones.keys() {
                out.push(json!({"id": format!("sdn/{n}/{z}"), "type": "sdn", "sdn": z, "node": n, "status": "ok"}));
            }
        }
    }
    Value::Array(out)
}

fn pools(st: &State, only: Option<&str>) -> Value {
    Value::Array(
        st.pools
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o == k.as_str()))
            .map(|(k, p)| {
                let mut v = json!({"poolid": k});
                if let Some(c) = &p.comment {
                    v["comment"] = json!(c);
                }
                if only.is_some() {
                    v["members"] = Value::Array(
                        p.vms
                            .iter()
                            .filter_map(|id| {
                                st.vms.get(id).map(|vm| {
                                    let mut m = vm_summary(*id, vm);
                                    m["id"] = json!(format!("qemu/{id}"));
                                    m["type"] = json!("qemu");
                                    m["node"] = json!(vm.node);
                                    m
                                })
                            })
                            .collect(),
                    );
                }
                v
            })
            .collect(),
    )
}

/// `GET /access/permissions`: `{path: {privilege: propagate}}` for the caller (or `userid`).
/// The simulator grants every principal but `root@pam` the privileges in `SimConfig::privileges` (all of
/// them by default) on `/`, propagated, as an Administrator ACL on `/` does, plus `SimConfig::acl`'s
/// grants on and below their paths.
fn permissions(cfg: &crate::SimConfig, ctx: &Ctx) -> Value {
    let path = ctx.str("path").unwrap_or("/").to_owned();
    let privs: Vec<&str> = crate::access::Caller::of(cfg, &ctx.user)
        .privileges_on(&path)
        .unwrap_or_else(|| crate::access::ALL_PRIVILEGES.to_vec());
    let map: serde_json::Map<String, Value> = privs
        .into_iter()
        .map(|p| (p.to_owned(), json!(1)))
        .collect();
    json!({ path: Value::Object(map) })
}
