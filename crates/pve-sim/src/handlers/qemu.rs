//! QEMU VMs: list, create, config, clone, template, power, destroy, resize, snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};
use sha1::{Digest, Sha1};

use super::Ctx;
use crate::access::is_cdrom;
use crate::config::TaskKind;
use crate::error::ApiError;
use crate::propstring::PropString;
use crate::spec::{ParamType, find_route, lookup};
use crate::state::{Shared, Snap, State, Vm, unix_now};

/// Keys that only steer a request and are never stored in the config.
const NOT_STORED: &[&str] = &[
    "node",
    "vmid",
    "digest",
    "delete",
    "revert",
    "skiplock",
    "background_delay",
    "force",
    "start",
    "pool",
    "storage",
    "unique",
    "archive",
    "bwlimit",
    "live-restore",
    "ha-managed",
    "import-working-storage",
];

/// Keys a running VM takes at once; everything else waits for the next cold start.
const HOT_KEYS: &[&str] = &[
    "name",
    "description",
    "tags",
    "onboot",
    "protection",
    "startup",
    "lock",
    "hookscript",
];

pub(super) fn is_disk_key(k: &str) -> bool {
    ["scsi", "virtio", "sata", "ide"].iter().any(|p| {
        k.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) || k == "efidisk0"
        || k == "tpmstate0"
}

fn is_net_key(k: &str) -> bool {
    k.strip_prefix("net")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

const NIC_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

fn guest_type() -> &'static str {
    "VM"
}

fn locked(vm: &Vm) -> Option<String> {
    vm.config
        .get("lock")
        .map(|l| format!("{} is locked ({l})", guest_type()))
}

/// Size strings (`32G`, `512M`, `1.5T`, bare number = bytes... PVE disks: bare = GiB in `STORAGE:N`).
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        'B' => 1.0,
        'K' => 1024.0,
        'M' => 1024.0 * 1024.0,
        'G' => 1024.0 * 1024.0 * 1024.0,
        'T' => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// Renders bytes the way PVE writes `size=`: the largest unit that divides evenly.
pub(super) fn fmt_size(bytes: u64) -> String {
    for (unit, m) in [
        ("T", 1u64 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ] {
        if bytes >= m && bytes.is_multiple_of(m) {
            return format!("{}{unit}", bytes / m);
        }
    }
    bytes.to_string()
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        (b[6] & 0x0f) | 0x40,
        b[7],
        (b[8] & 0x3f) | 0x80,
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// The size of the image `import-from` names: a volume, or a member of an OVA volume
/// (`local:import/x.ova/disk.vmdk`).
fn import_source_size(st: &State, src: &str) -> Option<u64> {
    let vols = || st.volumes.values().flatten();
    if let Some(v) = vols().find(|v| v.volid == src) {
        return Some(v.size);
    }
    let (ova, member) = src.split_once(".ova/")?;
    let ova = format!("{ova}.ova");
    vols()
        .find(|v| v.volid == ova)?
        .members
        .iter()
        .find(|(n, _)| n == member)
        .map(|(_, size)| *size)
}

/// The image a request's disks import from, when one does (the VM becomes a cloud image).
fn imported_image(ctx: &Ctx) -> Option<String> {
    ctx.params
        .iter()
        .filter(|(k, _)| is_disk_key(k) && k.as_str() != "efidisk0" && k.as_str() != "tpmstate0")
        .find_map(|(_, v)| {
            PropString::parse(v.first()?)
                .get("import-from")
                .map(str::to_owned)
        })
}

/// Whether a NoCloud seed that installs the guest agent is attached as a CD-ROM.
fn seed_installs_agent(st: &State, cfg: &BTreeMap<String, String>) -> bool {
    cfg.iter()
        .filter(|(k, _)| is_disk_key(k))
        .filter_map(|(_, v)| PropString::parse(v).file().map(str::to_owned))
        .any(|file| {
            st.volumes
                .values()
                .flatten()
                .any(|v| v.volid == file && v.seed.as_ref().is_some_and(|s| s.installs_agent))
        })
}

fn next_disk_index(st: &State, node: &str, storage: &str, vmid: u32) -> u32 {
    let prefix = format!("{storage}:vm-{vmid}-disk-");
    let base_prefix = format!("{storage}:base-{vmid}-disk-");
    let mut used: Vec<u32> = Vec::new();
    if let Some(vm) = st.vms.get(&vmid).filter(|v| v.node == node) {
        for v in vm
            .config
            .values()
            .chain(vm.snapshots.iter().flat_map(|s| s.config.values()))
        {
            let file = PropString::parse(v).file().unwrap_or_default().to_owned();
            for p in [&prefix, &base_prefix] {
                if let Some(n) = file.strip_prefix(p.as_str()).and_then(|r| r.parse().ok()) {
                    used.push(n);
                }
            }
        }
    }
    (0..).find(|i| !used.contains(i)).unwrap_or(0)
}

/// pve-guest-common `GuestHelpers::get_unique_tags`, which qemu-server applies to `tags` on
/// create and update: split on `,` `;` and whitespace, lower-cased and sorted (each unless
/// the datacenter's tag-style says otherwise), de-duplicated, joined with `;`.
fn unique_tags(value: &str, style: crate::config::TagStyle) -> String {
    let mut tags: Vec<String> = value
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            if style.case_sensitive {
                t.to_owned()
            } else {
                t.to_lowercase()
            }
        })
        .collect();
    if !style.ordering_config {
        // Lower-casing first makes the case-insensitive sort of PVE a plain one.
        tags.sort();
    }
    let mut seen = std::collections::HashSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    tags.join(";")
}

/// Turns request values into stored config values: allocates `STORAGE:SIZE` disks, gives NICs
/// MACs. `vm_cfg` is the VM's config so far (for disk numbering).
fn normalize(
    st: &State,
    shared: &Shared,
    node: &str,
    vmid: u32,
    key: &str,
    value: &str,
    taken: &mut Vec<String>,
) -> Result<String, ApiError> {
    if key == "tags" {
        return Ok(unique_tags(value, shared.cfg.tag_style));
    }
    if is_net_key(key) {
        let mut p = PropString::parse(value);
        let model = p.remove("model").or_else(|| p.take_default()).or_else(|| {
            NIC_MODELS
                .iter()
                .find(|m| p.get(m).is_some())
                .map(|m| m.to_string())
        });
        let Some(model) = model else {
            return Err(ApiError::param(
                key,
                "invalid format - missing property 'model'",
            ));
        };
        if !NIC_MODELS.contains(&model.as_str()) {
            return Err(ApiError::param(
                key,
                format!(
                    "invalid format - value '{model}' does not have a value in the enumeration '{}'",
                    NIC_MODELS.join(", ")
                ),
            ));
        }
        let mac = p
            .remove(&model)
            .or_else(|| p.remove("macaddr"))
            .unwrap_or_else(|| st.new_mac());
        p.insert_first(&model, &mac);
        return Ok(p.to_string());
    }
    if is_disk_key(key) {
        let mut p = PropString::parse(value);
        let file = p.file().unwrap_or_default().to_owned();
        if file == "none"
            || file == "cdrom"
            || file.contains(":iso/")
            || p.get("media") == Some("cdrom")
        {
            return Ok(value.to_owned());
        }
        let Some((storage, size)) = file.split_once(':') else {
            return Ok(value.to_owned());
        };
        let Ok(gib) = size.parse::<f64>() else {
            return Ok(value.to_owned());
        };
        let Some(sc) = shared.cfg.storages.iter().find(|s| s.id == storage) else {
            return Err(ApiError::internal(format!(
                "storage '{storage}' does not exist"
            )));
        };
        if !sc.content.iter().any(|c| c == "images") {
            return Err(ApiError::internal(format!(
                "storage '{storage}' does not support content-type 'images'"
            )));
        }
        let mut bytes = (gib * (1u64 << 30) as f64) as u64;
        if let Some(src) = p.remove("import-from") {
            let found = import_source_size(st, &src);
            match found {
                Some(sz) => bytes = bytes.max(sz),
                None => return Err(ApiError::internal(format!("can't find file '{src}'"))),
            }
        }
        // EFI vars and TPM state have fixed sizes whatever the request says.
        if key == "efidisk0" || key == "tpmstate0" {
            bytes = 4 << 20;
        }
        let mut idx = next_disk_index(st, node, storage, vmid);
        while taken.contains(&format!("{storage}:vm-{vmid}-disk-{idx}")) {
            idx += 1;
        }
        let volid = format!("{storage}:vm-{vmid}-disk-{idx}");
        taken.push(volid.clone());
        p.set_file(&volid);
        p.set("size", &fmt_size(bytes));
        return Ok(p.to_string());
    }
    Ok(value.to_owned())
}

/// The config as PVE returns it: integer and boolean keys as numbers, the rest as strings,
/// plus `digest`.
fn config_json(cfg: &BTreeMap<String, String>) -> Value {
    let route = find_route("POST", "/nodes/x/qemu/100/config")
        .ok()
        .map(|(r, _)| r);
    let mut m = Map::new();
    for (k, v) in cfg {
        let spec = route.and_then(|r| lookup(r, k));
        let val = match spec.map(|s| &s.ty) {
            Some(ParamType::Integer) => v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n)),
            Some(ParamType::Boolean) => json!(crate::spec::parse_bool(v).map_or(0, |b| b as i64)),
            Some(ParamType::Number) => v.parse::<f64>().map_or_else(|_| json!(v), |n| json!(n)),
            _ => json!(v),
        };
        m.insert(k.clone(), val);
    }
    m.insert("digest".into(), json!(digest(cfg)));
    Value::Object(m)
}

fn digest(cfg: &BTreeMap<String, String>) -> String {
    let mut h = Sha1::new();
    for (k, v) in cfg {
        h.update(format!("{k}: {v}\n").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn vm_summary(vmid: u32, vm: &Vm) -> Value {
    let mem_mib = vm
        .config
        .get("memory")
        .and_then(|m| {
            PropString::parse(m)
                .file()
                .and_then(|c| c.parse::<u64>().ok())
        })
        .unwrap_or(512);
    let cores: u64 = vm
        .config
        .get("cores")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let sockets: u64 = vm
        .config
        .get("sockets")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let maxdisk: u64 = vm
        .config
        .iter()
        .filter(|(k, _)| is_disk_key(k))
        .filter_map(|(_, v)| PropString::parse(v).get("size").and_then(parse_size))
        .sum();
    let uptime = vm
        .started_at
        .filter(|_| vm.running)
        .map_or(0, |t| t.elapsed().as_secs());
    let mut v = json!({
        "vmid": vmid, "status": if vm.running { "running" } else { "stopped" },
        "name": vm.config.get("name").cloned().unwrap_or_else(|| format!("VM {vmid}")),
        "maxmem": mem_mib << 20, "mem": if vm.running { (mem_mib << 20) / 4 } else { 0 },
        "cpus": cores * sockets, "cpu": 0, "maxdisk": maxdisk, "disk": 0, "uptime": uptime,
        "netin": 0, "netout": 0, "diskread": 0, "diskwrite": 0,
    });
    if vm.config.get("template").is_some_and(|t| t == "1") {
        v["template"] = json!(1);
    }
    for k in ["tags", "lock"] {
        if let Some(t) = vm.config.get(k) {
            v[k] = json!(t);
        }
    }
    if vm.running {
        v["pid"] = json!(10000 + vmid);
        v["qmpstatus"] = json!(vm.qmpstatus);
    }
    v
}

fn check_digest(ctx: &Ctx, vm: &Vm) -> Result<(), ApiError> {
    match ctx.str("digest") {
        Some(d) if d != digest(&vm.config) => Err(ApiError::internal(
            "checksum mismatch (file change by other user?)",
        )),
        _ => Ok(()),
    }
}

fn upid_value(upid: String) -> Result<Value, ApiError> {
    Ok(Value::String(upid))
}

pub(super) fn handle(shared: &Arc<Shared>, st: &mut State, ctx: &Ctx) -> Result<Value, ApiError> {
    let node = ctx.node().to_owned();
    let user = ctx.user.clone();
    let route = ctx.route.path.trim_start_matches("/nodes/{node}/qemu");
    let vmid = ctx.vmid();
    match (ctx.method.as_str(), route) {
        ("GET", "") => Ok(Value::Array(
            st.vms
                .iter()
                .filter(|(_, v)| v.node == node)
                .map(|(id, v)| vm_summary(*id, v))
                .collect(),
        )),
        ("POST", "") => create(shared, st, ctx, &node, &user),
        ("GET", "/{vmid}/config") => {
            let vm = st.vm(&node, vmid)?;
            if let Some(snap) = ctx.str("snapshot") {
                let s = vm
                    .snapshots
                    .iter()
                    .find(|s| s.name == snap)
                    .ok_or_else(|| {
                        ApiError::internal(format!("snapshot '{snap}' does not exist"))
                    })?;
                return Ok(config_json(&s.config));
            }
            let mut cfg = vm.config.clone();
            if !ctx.flag("current") {
                for (k, v) in &vm.pending {
                    match v {
                        Some(v) => cfg.insert(k.clone(), v.clone()),
                        None => cfg.remove(k),
                    };
                }
            }
            Ok(config_json(&cfg))
        }
        ("GET", "/{vmid}/pending") => {
            let vm = st.vm(&node, vmid)?;
            let mut keys: Vec<&String> = vm.config.keys().chain(vm.pending.keys()).collect();
            keys.sort();
            keys.dedup();
            let cfg = config_json(&vm.config);
            Ok(Value::Array(
                keys.into_iter()
                    .map(|k| {
                        let mut e = json!({ "key": k });
                        if let Some(v) = cfg.get(k) {
                            e["value"] = v.clone();
                        }
                        match vm.pending.get(k) {
                            Some(Some(p)) => e["pending"] = json!(p),
                            Some(None) => e["delete"] = json!(1),
                            None => {}
                        }
                        e
                    })
                    .collect(),
            ))
        }
        ("POST" | "PUT", "/{vmid}/config") => update_config(shared, st, ctx, &node, &user, vmid),
        ("DELETE", "/{vmid}") => destroy(shared, st, ctx, &node, &user, vmid),
        ("POST", "/{vmid}/clone") => clone(shared, st, ctx, &node, &user, vmid),
        ("POST", "/{vmid}/template") => {
            let vm = st.vm(&node, vmid)?;
            if let Some(l) = locked(vm) {
                return Err(ApiError::internal(l));
            }
            if vm.config.get("template").is_some_and(|t| t == "1") {
                return Err(ApiError::internal(
                    "you can't convert a template to a template",
                ));
            }
            if vm.running {
                return Err(ApiError::internal(
                    "you can't convert a VM to template if VM is running",
                ));
            }
            if !vm.snapshots.is_empty() {
                return Err(ApiError::internal(
                    "unable to create template, because VM contains snapshots",
                ));
            }
            // qemu-server writes `template: 1` before the worker converts the disks, so
            // for the whole task (and after a failed conversion) the VM already reads as a
            // template whose disks are still `vm-` volumes.
            st.vm_mut(&node, vmid)?
                .config
                .insert("template".into(), "1".into());
            upid_value(st.spawn_task(
                shared,
                &node,
                &user,
                TaskKind::Template,
                "qmtemplate",
                &vmid.to_string(),
                Some(vmid),
                Box::new(move |st| {
                    let vm = st.vms.get_mut(&vmid).ok_or("VM vanished")?;
                    for (k, v) in vm.config.iter_mut() {
                        if is_disk_key(k) {
                            *v = v.replace(
                                &format!(":vm-{vmid}-disk-"),
                                &format!(":base-{vmid}-disk-"),
                            );
                        }
                    }
                    Ok(vec![])
                }),
            ))
        }
        ("GET", "/{vmid}/status/current") => {
            let vm = st.vm(&node, vmid)?;
            let mut v = vm_summary(vmid, vm);
            v["ha"] = json!({"managed": 0});
            v["qmpstatus"] = json!(if vm.running {
                vm.qmpstatus.as_str()
            } else {
                "stopped"
            });
            if vm.config.get("agent").is_some_and(|a| {
                PropString::parse(a)
                    .file()
                    .is_some_and(|e| crate::spec::parse_bool(e) == Some(true))
                    || PropString::parse(a)
                        .get("enabled")
                        .is_some_and(|e| e == "1")
            }) {
                v["agent"] = json!(1);
            }
            Ok(v)
        }
        ("POST", r) if r.starts_with("/{vmid}/status/") => power(
            shared,
            st,
            ctx,
            &node,
            &user,
            vmid,
            &r["/{vmid}/status/".len()..],
        ),
        ("PUT", "/{vmid}/resize") => resize(shared, st, ctx, &node, &user, vmid),
        ("GET", "/{vmid}/snapshot") => {
            let vm = st.vm(&node, vmid)?;
            let mut out: Vec<Value> = vm
                .snapshots
                .iter()
                .map(|s| {
                    let mut v = json!({"name": s.name, "description": s.description, "snaptime": s.snaptime});
                    if let Some(p) = &s.parent {
                        v["parent"] = json!(p);
                    }
                    if s.vmstate {
                        v["vmstate"] = json!(1);
                    }
                    v
                })
                .collect();
            let mut cur = json!({"name": "current", "description": "You are here!", "running": vm.running as i64, "digest": digest(&vm.config)});
            if let Some(p) = vm.config.get("parent") {
                cur["parent"] = json!(p);
            }
            out.push(cur);
            Ok(Value::Array(out))
        }
        ("POST", "/{vmid}/snapshot") => snapshot(shared, st, ctx, &node, &user, vmid),
        ("POST", "/{vmid}/snapshot/{snapname}/rollback") => {
            rollback(shared, st, ctx, &node, &user, vmid)
        }
        ("DELETE", "/{vmid}/snapshot/{snapname}") => {
            delete_snapshot(shared, st, ctx, &node, &user, vmid)
        }
        (m, r) => Err(ApiError::new(
            501,
            format!("Method '{m} /nodes/{{node}}/qemu{r}' not implemented"),
        )),
    }
}

fn create(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
) -> Result<Value, ApiError> {
    let vmid = ctx.vmid();
    if let Some(existing) = st.vms.get(&vmid)
        && (!ctx.flag("force") || existing.node != node)
    {
        return Err(ApiError::internal(format!(
            "VM {vmid} already exists on node '{}'",
            existing.node
        )));
    }
    if let Some(pool) = ctx.str("pool")
        && !st.pools.contains_key(pool)
    {
        return Err(ApiError::internal(format!("pool '{pool}' does not exist")));
    }
    let mut cfg = BTreeMap::new();
    let mut taken = Vec::new();
    for (k, vals) in &ctx.params {
        if NOT_STORED.contains(&k.as_str()) {
            continue;
        }
        cfg.insert(
            k.clone(),
            normalize(st, shared, node, vmid, k, &vals[0], &mut taken)?,
        );
    }
    cfg.entry("smbios1".into())
        .or_insert_with(|| format!("uuid={}", uuid()));
    cfg.entry("vmgenid".into()).or_insert_with(uuid);
    cfg.insert(
        "meta".into(),
        format!("creation-qemu=9.2.0,ctime={}", unix_now()),
    );
    if !cfg.contains_key("boot") {
        let order: Vec<&str> = cfg
            .keys()
            .filter(|k| is_disk_key(k) && *k != "efidisk0" && *k != "tpmstate0")
            .chain(cfg.keys().filter(|k| is_net_key(k)))
            .map(String::as_str)
            .collect();
        if !order.is_empty() {
            cfg.insert("boot".into(), format!("order={}", order.join(";")));
        }
    }
    let start = ctx.flag("start");
    cfg.insert("lock".into(), "create".into());
    st.vms.insert(
        vmid,
        Vm {
            node: node.into(),
            config: cfg,
            pending: BTreeMap::new(),
            running: false,
            qmpstatus: "stopped".into(),
            snapshots: vec![],
            flock_until: None,
            linked_from: None,
            started_at: None,
            agent_ready_at: None,
            cloud_image: imported_image(ctx).map(|source| crate::state::CloudImage {
                source,
                agent_installed: false,
            }),
        },
    );
    if let Some(pool) = ctx.str("pool") {
        st.pools.entry(pool.into()).or_default().vms.push(vmid);
    }
    let shared2 = shared.clone();
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        TaskKind::Create,
        "qmcreate",
        &vmid.to_string(),
        Some(vmid),
        Box::new(move |st| {
            let vm = st.vms.get_mut(&vmid).ok_or("VM vanished")?;
            vm.config.remove("lock");
            if start {
                boot(&shared2, vm);
            }
            Ok(vec![])
        }),
    ))
}

fn boot(shared: &Shared, vm: &mut Vm) {
    for (k, v) in std::mem::take(&mut vm.pending) {
        match v {
            Some(v) => vm.config.insert(k, v),
            None => vm.config.remove(&k),
        };
    }
    vm.running = true;
    vm.qmpstatus = "running".into();
    let now = Instant::now();
    vm.started_at = Some(now);
    vm.agent_ready_at = Some(now + shared.cfg.latency.duration(TaskKind::AgentBoot));
}

fn update_config(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
) -> Result<Value, ApiError> {
    let vm = st.vm(node, vmid)?;
    check_digest(ctx, vm)?;
    if let Some(l) = locked(vm)
        && !ctx.flag("skiplock")
        // Changing only the lock itself is how a stale lock is cleared.
        && ctx.str("delete") != Some("lock")
    {
        return Err(ApiError::internal(l));
    }
    let running = vm.running;
    let mut set = Vec::new();
    let mut taken = Vec::new();
    for (k, vals) in &ctx.params {
        if NOT_STORED.contains(&k.as_str()) {
            continue;
        }
        set.push((
            k.clone(),
            normalize(st, shared, node, vmid, k, &vals[0], &mut taken)?,
        ));
    }
    let deletes: Vec<String> = ctx
        .str("delete")
        .map(|d| {
            d.split([',', ';', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let reverts: Vec<String> = ctx
        .str("revert")
        .map(|d| {
            d.split([',', ';', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(k) = deletes.iter().find(|k| set.iter().any(|(s, _)| s == *k)) {
        return Err(ApiError::param(
            "delete",
            format!("cannot set and delete '{k}' at the same time"),
        ));
    }
    let vm = st.vm_mut(node, vmid)?;
    if let Some(source) = imported_image(ctx) {
        vm.cloud_image = Some(crate::state::CloudImage {
            source,
            agent_installed: false,
        });
    }
    for k in reverts {
        vm.pending.remove(&k);
    }
    for (k, v) in set {
        // qemu-server's `vmconfig_update_disk` changes the medium of a running VM's CD-ROM
        // drive at once (`change_medium`); a drive that is new, or not a CD-ROM on both
        // sides, waits for the next cold start.
        let medium_change =
            is_disk_key(&k) && vm.config.get(&k).is_some_and(|old| is_cdrom(old)) && is_cdrom(&v);
        if running && !HOT_KEYS.contains(&k.as_str()) && !medium_change {
            vm.pending.insert(k, Some(v));
        } else {
            vm.pending.remove(&k);
            vm.config.insert(k, v);
        }
    }
    for k in deletes {
        if running && !HOT_KEYS.contains(&k.as_str()) {
            vm.pending.insert(k, None);
        } else {
            vm.config.remove(&k);
        }
    }
    if ctx.method == "POST" {
        // The async variant runs a worker when disks or hotplug are involved; always do, so
        // callers exercise their UPID path.
        return upid_value(st.spawn_task(
            shared,
            node,
            user,
            TaskKind::Config,
            "qmconfig",
            &vmid.to_string(),
            Some(vmid),
            Box::new(|_| Ok(vec![])),
        ));
    }
    Ok(Value::Null)
}

fn destroy(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
) -> Result<Value, ApiError> {
    let vm = st.vm(node, vmid)?;
    if vm.running {
        return Err(ApiError::internal(format!(
            "VM {vmid} is running - destroy failed"
        )));
    }
    if vm.config.get("protection").is_some_and(|p| p == "1") {
        return Err(ApiError::internal(
            "can't remove VM {vmid} - protection mode enabled".replace("{vmid}", &vmid.to_string()),
        ));
    }
    if let Some(l) = locked(vm)
        && !ctx.flag("skiplock")
    {
        let msg = l.clone();
        return upid_value(st.failed_task(shared, node, user, "qmdestroy", &vmid.to_string(), msg));
    }
    let is_template = vm.config.get("template").is_some_and(|t| t == "1");
    let purge = ctx.flag("purge");
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        TaskKind::Destroy,
        "qmdestroy",
        &vmid.to_string(),
        Some(vmid),
        Box::new(move |st| {
            if is_template
                && let Some((child, _)) = st.vms.iter().find(|(_, v)| v.linked_from == Some(vmid))
            {
                let base = st
                    .vms
                    .get(&vmid)
                    .and_then(|v| {
                        v.config.iter().find(|(k, _)| is_disk_key(k)).map(|(_, d)| {
                            PropString::parse(d).file().unwrap_or_default().to_owned()
                        })
                    })
                    .unwrap_or_default();
                let _ = child;
                return Err(format!(
                    "base volume '{base}' is still in use by linked cloned"
                ));
            }
            st.vms.remove(&vmid);
            st.firewall.vms.remove(&vmid);
            for p in st.pools.values_mut() {
                p.vms.retain(|v| *v != vmid);
            }
            let mut log = vec![format!("destroying VM {vmid}")];
            if purge {
                log.push(format!("purging VM {vmid} from related configurations.."));
            }
            Ok(log)
        }),
    ))
}

fn clone(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
) -> Result<Value, ApiError> {
    let src = st.vm(node, vmid)?;
    let newid = ctx.int("newid").unwrap_or_default() as u32;
    let is_template = src.config.get("template").is_some_and(|t| t == "1");
    let full = ctx
        .str("full")
        .map(|_| ctx.flag("full"))
        .unwrap_or(!is_template);
    if !full {
        for p in ["storage", "format"] {
            if ctx.str(p).is_some() {
                return Err(ApiError::internal(format!(
                    "parameter '{p}' not allowed for linked clones"
                )));
            }
        }
        if !is_template {
            return Err(ApiError::internal(
                "Linked clone feature is not supported for drive 'scsi0'",
            ));
        }
    }
    if let Some(target) = ctx.str("target")
        && target != node
    {
        return Err(ApiError::internal(format!(
            "can't clone VM to node '{target}' (VM uses local storage)"
        )));
    }
    if let Some(snap) = ctx.str("snapname")
        && !src.snapshots.iter().any(|s| s.name == snap)
    {
        return Err(ApiError::internal(format!(
            "snapshot '{snap}' does not exist"
        )));
    }
    if st.vms.contains_key(&newid) {
        return Err(ApiError::internal(format!(
            "unable to create VM {newid}: config file already exists"
        )));
    }
    if let Some(pool) = ctx.str("pool")
        && !st.pools.contains_key(pool)
    {
        return Err(ApiError::internal(format!("pool '{pool}' does not exist")));
    }
    if let Some(l) = locked(src) {
        return Err(ApiError::internal(l));
    }
    let base_cfg = match ctx.str("snapname") {
        Some(snap) => src
            .snapshots
            .iter()
            .find(|s| s.name == snap)
            .map(|s| s.config.clone())
            .unwrap_or_default(),
        None => src.config.clone(),
    };
    let cloud_image = src.cloud_image.clone();
    let src_name = src
        .config
        .get("name")
        .cloned()
        .unwrap_or_else(|| format!("VM{vmid}"));
    let target_storage = ctx.str("storage").map(str::to_owned);
    let mut cfg = BTreeMap::new();
    let mut idx = 0;
    for (k, v) in &base_cfg {
        if matches!(
            k.as_str(),
            "template"
                | "lock"
                | "parent"
                | "snaptime"
                | "vmstate"
                | "meta"
                | "smbios1"
                | "vmgenid"
        ) {
            continue;
        }
        let value = if is_disk_key(k) {
            let mut p = PropString::parse(v);
            let file = p.file().unwrap_or_default().to_owned();
            if file == "none" || file.contains(":iso/") || p.get("media") == Some("cdrom") {
                v.clone()
            } else {
                let storage = target_storage
                    .clone()
                    .unwrap_or_else(|| file.split(':').next().unwrap_or("local-lvm").to_owned());
                p.set_file(&format!("{storage}:vm-{newid}-disk-{idx}"));
                idx += 1;
                p.to_string()
            }
        } else if is_net_key(k) {
            let mut p = PropString::parse(v);
            if let Some(model) = NIC_MODELS.iter().find(|m| p.get(m).is_some()) {
                let mac = st.new_mac();
                p.set(model, &mac);
            }
            p.to_string()
        } else {
            v.clone()
        };
        cfg.insert(k.clone(), value);
    }
    cfg.insert(
        "name".into(),
        ctx.str("name")
            .map_or_else(|| format!("Copy-of-VM-{src_name}"), str::to_owned),
    );
    if let Some(d) = ctx.str("description") {
        cfg.insert("description".into(), d.into());
    }
    cfg.insert("smbios1".into(), format!("uuid={}", uuid()));
    cfg.insert("vmgenid".into(), uuid());
    cfg.insert(
        "meta".into(),
        format!("creation-qemu=9.2.0,ctime={}", unix_now()),
    );
    cfg.insert("lock".into(), "clone".into());
    st.vms.insert(
        newid,
        Vm {
            node: node.into(),
            config: cfg,
            pending: BTreeMap::new(),
            running: false,
            qmpstatus: "stopped".into(),
            snapshots: vec![],
            flock_until: None,
            linked_from: (!full).then_some(vmid),
            started_at: None,
            agent_ready_at: None,
            cloud_image,
        },
    );
    if let Some(pool) = ctx.str("pool") {
        st.pools.entry(pool.into()).or_default().vms.push(newid);
    }
    // PVE names the *source* in a clone's UPID. The target is protected by its `lock: clone`
    // config entry, not by holding the config-file lock for the whole copy.
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        TaskKind::Clone,
        "qmclone",
        &vmid.to_string(),
        None,
        Box::new(move |st| {
            let vm = st.vms.get_mut(&newid).ok_or("clone target vanished")?;
            vm.config.remove("lock");
            st.guests.pending_clones.push((vmid, newid));
            Ok(vec![format!(
                "create {} clone of drive(s)",
                if full { "full" } else { "linked" }
            )])
        }),
    ))
}

fn power(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
    action: &str,
) -> Result<Value, ApiError> {
    let vm = st.vm(node, vmid)?;
    let id = vmid.to_string();
    let is_template = vm.config.get("template").is_some_and(|t| t == "1");
    let lock = if ctx.flag("skiplock") {
        None
    } else {
        locked(vm)
    };
    let running = vm.running;
    let (kind, worker) = match action {
        "start" => (TaskKind::Start, "qmstart"),
        "stop" => (TaskKind::Stop, "qmstop"),
        "shutdown" => (TaskKind::Shutdown, "qmshutdown"),
        "reboot" => (TaskKind::Reboot, "qmreboot"),
        "reset" => (TaskKind::Stop, "qmreset"),
        // Pause (QMP `stop`, RAM kept) and hibernate (state to disk) are different tasks.
        "suspend" if ctx.flag("todisk") => (TaskKind::Suspend, "qmsuspend"),
        "suspend" => (TaskKind::Suspend, "qmpause"),
        "resume" => (TaskKind::Resume, "qmresume"),
        other => {
            return Err(ApiError::new(
                501,
                format!(
                    "Method 'POST /nodes/{{node}}/qemu/{{vmid}}/status/{other}' not implemented"
                ),
            ));
        }
    };
    // Synchronous refusals, answered before a worker is forked (as PVE does).
    match action {
        "suspend" | "reboot" | "reset" if !running => {
            return Err(ApiError::internal(format!("VM {vmid} not running")));
        }
        "resume" if !running && vm.config.get("lock").map(String::as_str) != Some("suspended") => {
            return Err(ApiError::internal(format!("VM {vmid} not running")));
        }
        "shutdown" if vm.qmpstatus == "paused" => {
            return Err(ApiError::internal("VM is paused - cannot shutdown"));
        }
        _ => {}
    }
    if action == "start" && is_template {
        return upid_value(st.failed_task(
            shared,
            node,
            user,
            worker,
            &id,
            "you can't start a vm if it's a template".into(),
        ));
    }
    if let Some(l) = lock.filter(|_| {
        !(action == "resume"
            || (action == "start" && vm.config.get("lock").is_some_and(|l| l == "suspended")))
    }) {
        return upid_value(st.failed_task(shared, node, user, worker, &id, l));
    }
    let todisk = ctx.flag("todisk");
    let shared2 = shared.clone();
    let action = action.to_owned();
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        kind,
        worker,
        &id,
        Some(vmid),
        Box::new(move |st| {
            // cloud-init reads a seed on the boot that sees it (pending changes apply first).
            let seeded = st.vms.get(&vmid).is_some_and(|vm| {
                let mut cfg = vm.config.clone();
                for (k, v) in &vm.pending {
                    match v {
                        Some(v) => cfg.insert(k.clone(), v.clone()),
                        None => cfg.remove(k),
                    };
                }
                seed_installs_agent(st, &cfg)
            });
            let vm = st.vms.get_mut(&vmid).ok_or_else(|| {
                format!("Configuration file 'nodes/pve/qemu-server/{vmid}.conf' does not exist")
            })?;
            let booting = matches!(action.as_str(), "start" | "reboot" | "reset" | "resume");
            if booting
                && seeded
                && let Some(ci) = vm.cloud_image.as_mut()
            {
                ci.agent_installed = true;
            }
            match action.as_str() {
                "start" => {
                    if vm.running {
                        return Err(format!("VM {vmid} already running"));
                    }
                    if vm.config.get("lock").is_some_and(|l| l == "suspended") {
                        vm.config.remove("lock");
                    }
                    boot(&shared2, vm);
                }
                "stop" | "shutdown" => {
                    vm.running = false;
                    vm.qmpstatus = "stopped".into();
                    vm.started_at = None;
                    vm.agent_ready_at = None;
                }
                "reboot" | "reset" => boot(&shared2, vm),
                "suspend" => {
                    if todisk {
                        vm.running = false;
                        vm.qmpstatus = "stopped".into();
                        vm.config.insert("lock".into(), "suspended".into());
                    } else {
                        vm.qmpstatus = "paused".into();
                    }
                }
                "resume" => {
                    if vm.config.get("lock").is_some_and(|l| l == "suspended") {
                        vm.config.remove("lock");
                        boot(&shared2, vm);
                    } else {
                        vm.qmpstatus = "running".into();
                    }
                }
                _ => {}
            }
            Ok(vec![])
        }),
    ))
}

fn resize(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
) -> Result<Value, ApiError> {
    let vm = st.vm(node, vmid)?;
    check_digest(ctx, vm)?;
    if let Some(l) = locked(vm) {
        return Err(ApiError::internal(l));
    }
    let disk = ctx.req("disk").to_owned();
    let Some(current) = vm.config.get(&disk) else {
        return Err(ApiError::internal(format!("disk '{disk}' does not exist")));
    };
    let mut p = PropString::parse(current);
    if p.get("media") == Some("cdrom") {
        return Err(ApiError::internal("you can't resize a cdrom"));
    }
    let cur = p.get("size").and_then(parse_size).unwrap_or(0);
    let req = ctx.req("size");
    let (relative, amount) = match req.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, req),
    };
    // A bare number is bytes in PVE's resize (unlike `STORAGE:N` at create, which is GiB).
    let amount = parse_size(amount)
        .ok_or_else(|| ApiError::param("size", "value does not match the regex pattern"))?;
    let new = if relative { cur + amount } else { amount };
    if new < cur {
        return Err(ApiError::internal("shrinking disks is not supported"));
    }
    p.set("size", &fmt_size(new));
    let value = p.to_string();
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        TaskKind::Resize,
        "resize",
        &vmid.to_string(),
        Some(vmid),
        Box::new(move |st| {
            let vm = st.vms.get_mut(&vmid).ok_or("VM vanished")?;
            vm.config.insert(disk, value);
            Ok(vec![])
        }),
    ))
}

fn snapshot(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
) -> Result<Value, ApiError> {
    let name = ctx.req("snapname").to_owned();
    if name == "current" || name == "pending" {
        return Err(ApiError::internal(format!(
            "unable to use snapshot name '{name}' (reserved name)"
        )));
    }
    let vm = st.vm(node, vmid)?;
    let id = vmid.to_string();
    if vm.config.get("template").is_some_and(|t| t == "1") {
        return upid_value(st.failed_task(
            shared,
            node,
            user,
            "qmsnapshot",
            &id,
            "you can't take a snapshot if it's a template".into(),
        ));
    }
    if vm.snapshots.iter().any(|s| s.name == name) {
        return upid_value(st.failed_task(
            shared,
            node,
            user,
            "qmsnapshot",
            &id,
            format!("snapshot name '{name}' already used"),
        ));
    }
    if let Some(l) = locked(vm) {
        return upid_value(st.failed_task(shared, node, user, "qmsnapshot", &id, l));
    }
    // RAM is saved only from a running VM; PVE silently ignores vmstate otherwise.
    let vmstate = ctx.flag("vmstate") && vm.running;
    let description = ctx.str("description").unwrap_or_default().to_owned();
    let kind = if vmstate {
        TaskKind::Start
    } else {
        TaskKind::Snapshot
    };
    st.vm_mut(node, vmid)?
        .config
        .insert("lock".into(), "snapshot".into());
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        kind,
        "qmsnapshot",
        &id,
        Some(vmid),
        Box::new(move |st| {
            let vm = st.vms.get_mut(&vmid).ok_or("VM vanished")?;
            vm.config.remove("lock");
            let mut cfg = vm.config.clone();
            cfg.remove("parent");
            let parent = vm.config.get("parent").cloned();
            vm.snapshots.push(Snap {
                name: name.clone(),
                description,
                snaptime: unix_now(),
                vmstate,
                parent,
                config: cfg,
            });
            vm.config.insert("parent".into(), name);
            Ok(vec![])
        }),
    ))
}

fn rollback(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
) -> Result<Value, ApiError> {
    let name = ctx.req("snapname").to_owned();
    let vm = st.vm(node, vmid)?;
    let id = vmid.to_string();
    let fail = |msg: String, st: &mut State| {
        upid_value(st.failed_task(shared, node, user, "qmrollback", &id, msg))
    };
    if vm.config.get("template").is_some_and(|t| t == "1") {
        return fail("you can't rollback if vm is a template".into(), st);
    }
    let Some(snap) = vm.snapshots.iter().find(|s| s.name == name).cloned() else {
        return fail(format!("snapshot '{name}' does not exist"), st);
    };
    if let Some(l) = locked(vm) {
        return fail(l, st);
    }
    let start = ctx.flag("start");
    let shared2 = shared.clone();
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        TaskKind::Rollback,
        "qmrollback",
        &id,
        Some(vmid),
        Box::new(move |st| {
            let vm = st.vms.get_mut(&vmid).ok_or("VM vanished")?;
            let mut cfg = snap.config.clone();
            cfg.insert("parent".into(), snap.name.clone());
            vm.config = cfg;
            vm.pending.clear();
            // With saved RAM the VM comes back running, whatever `start` says.
            if snap.vmstate || start {
                boot(&shared2, vm);
            } else {
                vm.running = false;
                vm.qmpstatus = "stopped".into();
            }
            Ok(vec![])
        }),
    ))
}

fn delete_snapshot(
    shared: &Arc<Shared>,
    st: &mut State,
    ctx: &Ctx,
    node: &str,
    user: &str,
    vmid: u32,
) -> Result<Value, ApiError> {
    let name = ctx.req("snapname").to_owned();
    let vm = st.vm(node, vmid)?;
    if vm.config.get("template").is_some_and(|t| t == "1") {
        return Err(ApiError::internal(
            "you can't delete a snapshot if vm is a template",
        ));
    }
    if !vm.snapshots.iter().any(|s| s.name == name) {
        return Err(ApiError::internal(format!(
            "snapshot '{name}' does not exist"
        )));
    }
    upid_value(st.spawn_task(
        shared,
        node,
        user,
        TaskKind::DeleteSnapshot,
        "qmdelsnapshot",
        &vmid.to_string(),
        Some(vmid),
        Box::new(move |st| {
            let vm = st.vms.get_mut(&vmid).ok_or("VM vanished")?;
            let removed = vm
                .snapshots
                .iter()
                .position(|s| s.name == name)
                .map(|i| vm.snapshots.remove(i))
                .ok_or_else(|| format!("snapshot '{name}' does not exist"))?;
            for s in vm.snapshots.iter_mut() {
                if s.parent.as_deref() == Some(name.as_str()) {
                    s.parent = removed.parent.clone();
                }
            }
            if vm.config.get("parent") == Some(&name) {
                match removed.parent {
                    Some(p) => vm.config.insert("parent".into(), p),
                    None => vm.config.remove("parent"),
                };
            }
            Ok(vec![])
        }),
    ))
}
