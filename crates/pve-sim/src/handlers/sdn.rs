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
        // Repeated keys (`dhcp-range`) are kept one per line: their values hold commas.
        .map(|(k, v)| (k.clone(), v.join("\n")))
        .collect()
}

/// Keys PVE keeps at the top level of a pending listing entry (everything else of a new or
/// changed object goes under `pending`), as `PVE::Network::SDN::pending_config` does.
const PENDING_TOP: &[&str] = &["type", "vnet"];

/// One entry of a listing. The running view shows running properties; the pending view is
/// PVE's `pending_config` shape: running properties at the top, what differs under `pending`
/// (`"deleted"` for a removed key), and `state` `new`/`changed`/`deleted`.
fn entry(
    key: &str,
    id: &str,
    run: Option<&BTreeMap<String, String>>,
    pen: Option<&BTreeMap<String, String>>,
    show_pending: bool,
) -> Value {
    let mut v = json!({ key: id });
    if !show_pending {
        for (k, val) in run.into_iter().flatten() {
            v[k] = json!(val);
        }
        return v;
    }
    for (k, val) in run.into_iter().flatten() {
        v[k] = json!(val);
    }
    let mut changes = serde_json::Map::new();
    if let (Some(r), Some(p)) = (run, pen) {
        for k in r.keys().filter(|k| !p.contains_key(*k)) {
            changes.insert(k.clone(), json!("deleted"));
        }
    }
    for (k, val) in pen.into_iter().flatten() {
        if PENDING_TOP.contains(&k.as_str()) {
            v[k] = json!(val);
        } else if run.and_then(|r| r.get(k)) != Some(val) {
            changes.insert(k.clone(), json!(val));
        }
    }
    if let Some(s) = pending_state(run, pen) {
        v["state"] = json!(s);
        if s != "deleted" {
            v["pending"] = Value::Object(changes);
        }
    }
    v
}

/// What `Subnets::sdn_subnets_config` adds to a subnet for the API: its `id`, the keys
/// computed from it (`zone-10.0.0.0-24`), and `dhcp-range` decoded into an array of
/// `{start-address, end-address}` objects (`[]` when it has none), in a pending entry's
/// changes too.
fn subnet_json_keys(v: &mut Value, id: &str) {
    v["id"] = json!(id);
    v["dhcp-range"] = dhcp_ranges(v.get("dhcp-range"));
    if let Some(changes) = v.get_mut("pending").and_then(Value::as_object_mut)
        && let Some(r) = changes.get("dhcp-range").filter(|r| *r != "deleted")
    {
        let decoded = dhcp_ranges(Some(r));
        changes.insert("dhcp-range".into(), decoded);
    }
    let mut parts = id.rsplitn(3, '-');
    let (Some(mask), Some(network), Some(zone)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    v["zone"] = json!(zone);
    v["network"] = json!(network);
    v["mask"] = json!(mask);
    v["cidr"] = json!(format!("{network}/{mask}"));
}

/// Stored `dhcp-range` lines (`start-address=A,end-address=B`, one per range) as the API
/// returns them.
fn dhcp_ranges(stored: Option<&Value>) -> Value {
    let lines = stored.and_then(Value::as_str).unwrap_or_default();
    let ranges = lines.lines().filter(|l| !l.is_empty()).map(|line| {
        let range: serde_json::Map<String, Value> = line
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), json!(v.trim())))
            .collect();
        Value::Object(range)
    });
    Value::Array(ranges.collect())
}

/// Which configuration a listing shows, as pve-network's index handlers choose it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    /// The edited configuration (`.cfg` files), what PVE lists by default.
    Edited,
    /// `running=1`: what the last apply made live.
    Running,
    /// `pending=1`: running values with the edits beside them, deleted objects included.
    Diff,
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
    // `pending` wins when both are set (it is tested first).
    let view = if ctx.flag("pending") {
        View::Diff
    } else if ctx.flag("running") {
        View::Running
    } else {
        View::Edited
    };
    let mut ids: Vec<&String> = match view {
        View::Diff => run.keys().chain(pen.keys()).collect(),
        View::Running => run.keys().collect(),
        View::Edited => pen.keys().collect(),
    };
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        // Filters look at what the object will be when the edits are shown.
        let Some(obj) = (match view {
            View::Diff => pen.get(id).or(run.get(id)),
            View::Running => run.get(id),
            View::Edited => pen.get(id),
        }) else {
            continue;
        };
        if !filter(obj) {
            continue;
        }
        let mut v = match view {
            View::Diff => entry(key, id, run.get(id), pen.get(id), true),
            View::Running => entry(key, id, run.get(id), None, false),
            View::Edited => entry(key, id, pen.get(id), None, false),
        };
        if kind == "subnets" {
            subnet_json_keys(&mut v, id);
        }
        out.push(v);
    }
    Value::Array(out)
}

/// `GET /cluster/sdn/ipams/pve/status`, as pve-network's `ipamindex` builds it: the IPAM
/// database gets a subnet's gateway when the subnet is *created*, but the route only reports
/// zones of the *running* config with `ipam=pve` and `dhcp` set, and subnets it can place in
/// a running vnet of that zone. Entries are the stored ones plus `zone`, `subnet`, `ip`, `vnet`.
fn ipam_status(st: &State, ipam: &str) -> Result<Value, ApiError> {
    if ipam != "pve" {
        return Err(ApiError::internal("Currently only PVE IPAM is supported!"));
    }
    let mut out = Vec::new();
    for s in st.sdn.pending.subnets.values() {
        let zone = s.get("zone").cloned().unwrap_or_default();
        let reported =
            st.sdn.running.zones.get(&zone).is_some_and(|z| {
                z.get("ipam").is_some_and(|i| i == "pve") && z.contains_key("dhcp")
            });
        let vnet = s.get("vnet").cloned().unwrap_or_default();
        let vnet_running = st
            .sdn
            .running
            .vnets
            .get(&vnet)
            .is_some_and(|v| v.get("zone") == Some(&zone));
        let Some(gw) = s.get("gateway").filter(|_| reported && vnet_running) else {
            continue;
        };
        out.push(json!({
            "zone": zone,
            "vnet": vnet,
            "subnet": s.get("cidr").cloned().unwrap_or_default(),
            "ip": gw,
            "hostname": format!("{vnet}-gw"),
            "gateway": 1,
        }));
    }
    Ok(Value::Array(out))
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
        ("GET", "/cluster/sdn/ipams/{ipam}/status") => ipam_status(st, ctx.req("ipam")),
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
                return Err(ApiError::internal(format!(
                    "sdn zone '{zone}' does not exist"
                )));
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
                return Err(ApiError::param("vnet", format!("{vnet} don't exist")));
            };
            let cidr = ctx.req("subnet").to_owned();
            check_subnet(&cidr, ctx)?;
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
                format!("sdn subnet object ID '{id}' already defined")
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
                    "sdn {singular} '{id}' does not exist"
                )));
            }
            match m {
                "GET" => {
                    // As the listings: the edited object unless `running` or `pending` asks.
                    let run = map(&mut st.sdn.running, kind).get(&id).cloned();
                    let pen = map(&mut st.sdn.pending, kind).get(&id).cloned();
                    let mut v = if ctx.flag("pending") {
                        entry(singular, &id, run.as_ref(), pen.as_ref(), true)
                    } else if ctx.flag("running") {
                        let Some(run) = run else {
                            return Err(ApiError::internal(format!(
                                "sdn {singular} '{id}' does not exist"
                            )));
                        };
                        entry(singular, &id, Some(&run), None, false)
                    } else {
                        entry(singular, &id, pen.as_ref(), None, false)
                    };
                    if kind == "subnets" {
                        subnet_json_keys(&mut v, &id);
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
                        && let Some((vnet, _)) = st
                            .sdn
                            .pending
                            .vnets
                            .iter()
                            .find(|(_, v)| v.get("zone") == Some(&id))
                    {
                        // Zones/Plugin.pm `on_delete_hook` (a `die` without newline: real PVE
                        // appends " at .../Zones/Plugin.pm line N.").
                        return Err(ApiError::internal(format!(
                            "zone {id} is used by vnet {vnet}"
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
                        return Err(ApiError::param(
                            "vnet",
                            "Can't delete vnet if subnets exists",
                        ));
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

fn ipv4(s: &str) -> Option<u32> {
    s.parse::<std::net::Ipv4Addr>().ok().map(u32::from)
}

/// `SubnetPlugin::on_update_hook` and `validate_dhcp_ranges`, for IPv4 subnets: the gateway
/// inside the subnet, each DHCP range well-formed, ordered, inside, and not overlapping.
fn check_subnet(cidr: &str, ctx: &Ctx) -> Result<(), ApiError> {
    let Some((net, mask)) = cidr
        .split_once('/')
        .and_then(|(a, m)| Some((ipv4(a)?, m.parse::<u32>().ok().filter(|m| *m <= 32)?)))
    else {
        return Ok(()); // IPv6: not modelled beyond the format check.
    };
    let hostmask = if mask == 0 {
        u32::MAX
    } else {
        (1u32 << (32 - mask)) - 1
    };
    let inside = |ip: u32| ip & !hostmask == net & !hostmask;
    if let Some(gw) = ctx.str("gateway")
        && mask != 32
        && !ipv4(gw).is_some_and(inside)
    {
        return Err(ApiError::param(
            "gateway",
            format!("{gw} is not in subnet {cidr}"),
        ));
    }
    let mut seen: Vec<(u32, u32)> = Vec::new();
    for r in ctx.params.get("dhcp-range").into_iter().flatten() {
        let field = |k: &str| {
            r.split(',')
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .unwrap_or_default()
                .to_owned()
        };
        let (s, e) = (field("start-address"), field("end-address"));
        let err = |m: String| ApiError::param("dhcp-range", m);
        let start = ipv4(&s).ok_or_else(|| err(format!("start-address is not a valid IP {s}")))?;
        let end = ipv4(&e).ok_or_else(|| err(format!("end-address is not a valid IP {e}")))?;
        if start > end {
            return Err(err(format!(
                "start-address {s} must be smaller than end-address {e}"
            )));
        }
        if !inside(start) {
            return Err(err(format!("start-address {s} is not in subnet {cidr}")));
        }
        if !inside(end) {
            return Err(err(format!("end-address {e} is not in subnet {cidr}")));
        }
        if seen.iter().any(|(a, b)| start <= *b && *a <= end) {
            return Err(err("dhcp ranges must not overlap".into()));
        }
        seen.push((start, end));
    }
    Ok(())
}
