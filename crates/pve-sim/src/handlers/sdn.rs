//! SDN routes: zones, vnets, subnets (pending until `PUT /cluster/sdn`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Ctx;
use crate::config::TaskKind;
use crate::error::ApiError;
use crate::sdn::{SdnConfig, pending_state};
use crate::state::{Shared, State};

/// Which object map of a config a route addresses.
fn map<'a>(
    cfg: &'a mut SdnConfig,
    kind: &str,
) -> &'a mut BTreeMap<String, BTreeMap<String, String>> {
    match kind {
        "zones" => &mut cfg.zones,
        "vnets" => &mut cfg.vnets,
        _ => &mut cfg.subnets,
    }
}

const CONTROL: &[&str] = &[
    "lock-token",
    "digest",
    "delete",
    "pending",
    "running",
    "release-lock",
    "type-filter",
];

fn props(ctx: &Ctx, skip: &[&str]) -> BTreeMap<String, String> {
    ctx.params
        .iter()
        .filter(|(k, _)| !CONTROL.contains(&k.as_str()) && !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.join(",")))
        .collect()
}

fn listing(
    st: &State,
    kind: &str,
    ctx: &Ctx,
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Value {
    let key = match kind {
        "zones" => "zone",
        "vnets" => "vnet",
        _ => "subnet",
    };
    let mut running = st.sdn.running.clone();
    let mut pending = st.sdn.pending.clone();
    let run = map(&mut running, kind).clone();
    let pen = map(&mut pending, kind).clone();
    let show_pending = ctx.flag("pending");
    let ids: Vec<&String> = if show_pending {
        run.keys().chain(pen.keys()).collect()
    } else {
        run.keys().collect()
    };
    let mut ids = ids;
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        let obj = if show_pending {
            pen.get(id).or(run.get(id))
        } else {
            run.get(id)
        };
        let Some(obj) = obj else { continue };
        if !filter(obj) {
            continue;
        }
        let mut v = json!({ key: id });
        for (k, val) in obj {
            v[k] = json!(val);
        }
        if show_pending && let Some(s) = pending_state(run.get(id), pen.get(id)) {
            v["state"] = json!(s);
        }
        out.push(v);
    }
    Value::Array(out)
}

pub(super) fn handle(shared: &Arc<Shared>, st: &mut State, ctx: &Ctx) -> Result<Value, ApiError> {
    let route = ctx.route.path;
    let m = ctx.method.as_str();
    match (m, route) {
        ("GET", "/cluster/sdn") => Ok(
            json!([{"id": "zones"}, {"id": "vnets"}, {"id": "controllers"}, {"id": "ipams"}, {"id": "dns"}]),
        ),
        ("PUT", "/cluster/sdn") => {
            let upid = st.spawn_task(
                shared,
                &shared.cfg.nodes[0],
                &ctx.user,
                TaskKind::SdnApply,
                "reloadnetworkall",
                "",
                None,
                Box::new(|st| {
                    st.sdn.apply();
                    Ok(vec!["applying SDN configuration".into()])
                }),
            );
            Ok(Value::String(upid))
        }
        ("GET", "/cluster/sdn/zones") => {
            let ty = ctx.str("type").map(str::to_owned);
            Ok(listing(st, "zones", ctx, |o| {
                ty.as_deref()
                    .is_none_or(|t| o.get("type").map(String::as_str) == Some(t))
            }))
        }
        ("GET", "/cluster/sdn/vnets") => Ok(listing(st, "vnets", ctx, |_| true)),
        ("GET", "/cluster/sdn/vnets/{vnet}/subnets") => {
            let vnet = ctx.req("vnet").to_owned();
            Ok(listing(st, "subnets", ctx, |o| {
                o.get("vnet") == Some(&vnet)
            }))
        }
        ("POST", "/cluster/sdn/zones") => create(
            st,
            "zones",
            ctx.req("zone").to_owned(),
            props(ctx, &["zone"]),
            || format!("sdn zone object ID '{}' already defined", ctx.req("zone")),
        ),
        ("POST", "/cluster/sdn/vnets") => {
            let zone = ctx.req("zone");
            if !st.sdn.pending.zones.contains_key(zone) {
                return Err(ApiError::internal(format!("zone '{zone}' does not exist")));
            }
            create(
                st,
                "vnets",
                ctx.req("vnet").to_owned(),
                props(ctx, &["vnet"]),
                || format!("sdn vnet object ID '{}' already defined", ctx.req("vnet")),
            )
        }
        ("POST", "/cluster/sdn/vnets/{vnet}/subnets") => {
            let vnet = ctx.req("vnet").to_owned();
            let Some(zone) = st
                .sdn
                .pending
                .vnets
                .get(&vnet)
                .and_then(|v| v.get("zone"))
                .cloned()
            else {
                return Err(ApiError::internal(format!("vnet '{vnet}' does not exist")));
            };
            let cidr = ctx.req("subnet").to_owned();
            let id = format!("{zone}-{}", cidr.replace('/', "-"));
            let mut p = props(ctx, &["subnet"]);
            p.insert("vnet".into(), vnet);
            p.insert("zone".into(), zone);
            p.insert("cidr".into(), cidr.clone());
            p.insert(
                "network".into(),
                cidr.split('/').next().unwrap_or_default().to_owned(),
            );
            p.insert(
                "mask".into(),
                cidr.split('/').nth(1).unwrap_or_default().to_owned(),
            );
            create(st, "subnets", id.clone(), p, || {
                format!("{id} already exists")
            })
        }
        ("GET" | "PUT" | "DELETE", r) => {
            let (kind, id) = if r.ends_with("{subnet}") {
                ("subnets", ctx.req("subnet").to_owned())
            } else if r.ends_with("{vnet}") {
                ("vnets", ctx.req("vnet").to_owned())
            } else {
                ("zones", ctx.req("zone").to_owned())
            };
            let singular = &kind[..kind.len() - 1];
            let exists = map(&mut st.sdn.pending, kind).contains_key(&id);
            if !exists {
                return Err(ApiError::internal(format!(
                    "sdn {singular} object ID '{id}' does not exist"
                )));
            }
            match m {
                "GET" => {
                    let obj = if ctx.flag("pending") {
                        map(&mut st.sdn.pending, kind).get(&id).cloned()
                    } else {
                        map(&mut st.sdn.running, kind)
                            .get(&id)
                            .cloned()
                            .or_else(|| map(&mut st.sdn.pending, kind).get(&id).cloned())
                    };
                    let mut v = json!({ singular: id });
                    for (k, val) in obj.unwrap_or_default() {
                        v[k] = json!(val);
                    }
                    Ok(v)
                }
                "PUT" => {
                    let skip = ["zone", "vnet", "subnet"];
                    let mut upd = props(ctx, &skip);
                    if kind == "vnets" {
                        // `zone` is a real property of a vnet, not only its id.
                        if let Some(z) = ctx.str("zone") {
                            upd.insert("zone".into(), z.into());
                        }
                    }
                    let deletes: Vec<String> = ctx
                        .str("delete")
                        .map(|d| d.split(',').map(str::to_owned).collect())
                        .unwrap_or_default();
                    let obj = map(&mut st.sdn.pending, kind)
                        .get_mut(&id)
                        .expect("checked above");
                    obj.extend(upd);
                    for d in deletes {
                        obj.remove(&d);
                    }
                    Ok(Value::Null)
                }
                _ => {
                    if kind == "zones"
                        && st
                            .sdn
                            .pending
                            .vnets
                            .values()
                            .any(|v| v.get("zone") == Some(&id))
                    {
                        return Err(ApiError::internal(format!(
                            "cannot delete zone '{id}', vnets are still using it"
                        )));
                    }
                    if kind == "vnets"
                        && st
                            .sdn
                            .pending
                            .subnets
                            .values()
                            .any(|s| s.get("vnet") == Some(&id))
                    {
                        return Err(ApiError::internal(format!(
                            "cannot delete vnet '{id}', it has subnets defined"
                        )));
                    }
                    map(&mut st.sdn.pending, kind).remove(&id);
                    Ok(Value::Null)
                }
            }
        }
        _ => Err(ApiError::new(
            501,
            format!("Method '{m} {route}' not implemented"),
        )),
    }
}

fn create(
    st: &mut State,
    kind: &str,
    id: String,
    props: BTreeMap<String, String>,
    dup: impl FnOnce() -> String,
) -> Result<Value, ApiError> {
    let objs = map(&mut st.sdn.pending, kind);
    if objs.contains_key(&id) {
        return Err(ApiError::internal(dup()));
    }
    objs.insert(id, props);
    Ok(Value::Null)
}
