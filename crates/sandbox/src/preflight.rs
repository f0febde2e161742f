//! Pre-flight checks of a Proxmox instance (`pvesandbox doctor`).
//!
//! Each check reads; none changes anything. A failed check says what to do.

use pve_client::{Params, PveClient};
use pvesandbox_pool::InstanceConfig;
use serde::Serialize;

pub use crate::privileges::{PRIVILEGES, ROLE, STORAGE_PRIVILEGES, STORAGE_ROLE};

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, with a caveat.
    Warn,
    /// pvesandbox will fail here.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Instance id.
    pub instance: String,
    /// What was checked.
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// Details and, for failures, the fix.
    pub detail: String,
}

/// Runs every check against one instance whose images go to the default file storage.
pub async fn check_instance(cfg: &InstanceConfig) -> Vec<Check> {
    check_instance_with(cfg, pvesandbox_templates::DEFAULT_FILE_STORAGE).await
}

/// Runs every check against one instance whose images are downloaded to `file_storage`
/// (`images.import_storage`).
pub async fn check_instance_with(cfg: &InstanceConfig, file_storage: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |name, status, detail: String| {
        out.push(Check {
            instance: cfg.instance_id.clone(),
            name,
            status,
            detail,
        })
    };
    let client = match cfg.client() {
        Ok(c) => c,
        Err(e) => {
            push("config", Status::Fail, e.to_string());
            return out;
        }
    };
    let version = match client.version().await {
        Ok(v) => v,
        Err(e) => {
            push(
                "connect",
                Status::Fail,
                format!("{e}; check host, port, TLS and credentials"),
            );
            return out;
        }
    };
    push(
        "connect",
        Status::Pass,
        format!("{} as {}", client.api_url(), client.principal()),
    );
    let major: u32 = version
        .version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    push(
        "version",
        match major {
            9.. => Status::Pass,
            8 => Status::Warn,
            _ => Status::Fail,
        },
        match major {
            9.. => format!("Proxmox VE {}", version.version),
            8 => format!(
                "Proxmox VE {}: works, but file reads page through exec (9.2 reads by offset) and `import` content needs 8.2+",
                version.version
            ),
            _ => format!(
                "Proxmox VE {}: pvesandbox needs 8.2 or later",
                version.version
            ),
        },
    );
    let have = privileges(&client, &mut push).await;
    file_storage_privileges(&client, file_storage, have.as_ref(), &mut push).await;
    egress(&client, have.as_ref(), &mut push).await;
    storages(&client, cfg, &mut push).await;
    match client.get("/cluster/sdn/zones", &Params::new()).await {
        Ok(_) => push(
            "sdn",
            Status::Pass,
            "SDN available; sample zones use IPAM `pve` and DHCP `dnsmasq`: install dnsmasq on every node and `systemctl disable --now dnsmasq` (cannot be checked through the API)".into(),
        ),
        Err(e) => push("sdn", Status::Fail, format!("{e}: install libpve-network-perl (PVE 8+ ships it)")),
    }
    match client.get("/cluster/firewall/options", &Params::new()).await {
        Ok(v) if v.get("enable").and_then(serde_json::Value::as_u64) == Some(1) => push(
            "firewall",
            Status::Pass,
            "datacenter firewall enabled: sample isolation rules take effect".into(),
        ),
        Ok(_) => push(
            "firewall",
            Status::Fail,
            "datacenter firewall is off, so samples are NOT isolated from each other or the host: enable it (Datacenter > Firewall > Options > Firewall: Yes) after allowing your own access to 8006/22".into(),
        ),
        Err(e) => push("firewall", Status::Warn, format!("cannot read firewall options: {e}")),
    }
    out
}

/// What the token holds on `path` (`GET /access/permissions`), as `{privilege: 1}`.
async fn permissions_on(
    client: &PveClient,
    path: &str,
) -> Result<serde_json::Value, pve_client::Error> {
    let v = client
        .get("/access/permissions", &Params::new().with("path", path))
        .await?;
    Ok(v.get(path).cloned().unwrap_or_default())
}

/// The privileges of `wanted` that `have` lacks.
fn missing<'a>(have: &serde_json::Value, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|p| have.get(p).is_none())
        .collect()
}

/// Checks [`PRIVILEGES`]; returns what the token holds on `/` when it could be read.
async fn privileges(
    client: &PveClient,
    push: &mut impl FnMut(&'static str, Status, String),
) -> Option<serde_json::Value> {
    let have = match permissions_on(client, "/").await {
        Ok(h) => h,
        Err(e) => {
            push(
                "privileges",
                Status::Fail,
                format!("cannot read permissions: {e}"),
            );
            return None;
        }
    };
    let lacking = missing(&have, PRIVILEGES);
    if lacking.is_empty() {
        push(
            "privileges",
            Status::Pass,
            format!("all {} privileges on /", PRIVILEGES.len()),
        );
    } else {
        push(
            "privileges",
            Status::Fail,
            format!(
                "missing on /: {}; grant the whole list with `pveum role add {ROLE} -privs \"{}\"` and `pveum acl modify / -token '<token id>' -role {ROLE}`",
                lacking.join(", "),
                PRIVILEGES.join(",")
            ),
        );
    }
    Some(have)
}

/// The file storage needs [`PRIVILEGES`] too (downloads, uploads, listing it) and, for `gc`
/// alone, [`STORAGE_PRIVILEGES`]. An ACL entry on `/storage/<id>` replaces what `/` grants
/// there rather than adding to it, so a grant there must carry both roles.
async fn file_storage_privileges(
    client: &PveClient,
    storage: &str,
    on_root: Option<&serde_json::Value>,
    push: &mut impl FnMut(&'static str, Status, String),
) {
    let path = format!("/storage/{storage}");
    let have = match permissions_on(client, &path).await {
        Ok(h) => h,
        Err(e) => {
            let msg = format!("cannot read permissions on {path}: {e}");
            return push("gc", Status::Warn, msg);
        }
    };
    let grant = format!(
        "`pveum role add {STORAGE_ROLE} -privs \"{}\"` and `pveum acl modify {path} -token '<token id>' -role {ROLE},{STORAGE_ROLE}` (both roles: an entry on {path} replaces what / grants there)",
        STORAGE_PRIVILEGES.join(",")
    );
    // What `/` grants but this path lost to an entry of its own (what `/` lacks is the
    // privileges check's to report).
    let lacking: Vec<&str> = missing(&have, PRIVILEGES)
        .into_iter()
        .filter(|p| on_root.is_some_and(|r| r.get(p).is_some()))
        .collect();
    if !lacking.is_empty() {
        return push(
            "gc",
            Status::Fail,
            format!(
                "missing on {path}: {}, so image downloads and uploads fail there: {grant}",
                lacking.join(", ")
            ),
        );
    }
    let lacking = missing(&have, STORAGE_PRIVILEGES);
    if lacking.is_empty() {
        push(
            "gc",
            Status::Pass,
            format!("{} on {path}", STORAGE_PRIVILEGES.join(", ")),
        );
    } else {
        push(
            "gc",
            Status::Warn,
            format!(
                "missing on {path}: {}; `pvesandbox gc` keeps images it may not delete: {grant}",
                lacking.join(", ")
            ),
        );
    }
}

/// `run.egress` needs a datacenter security group; creating it takes Sys.Modify on `/`,
/// which [`PRIVILEGES`] leaves out on purpose: say whether this token can run egress tasks.
async fn egress(
    client: &PveClient,
    have: Option<&serde_json::Value>,
    push: &mut impl FnMut(&'static str, Status, String),
) {
    let group = pve_sdn::EGRESS_GROUP;
    let path = format!("/cluster/firewall/groups/{group}");
    let exists = match client.get(&path, &Params::new()).await {
        Ok(serde_json::Value::Array(rules)) => !rules.is_empty(),
        Ok(_) => false,
        Err(e) if e.is_not_found() => false,
        Err(e) => {
            push("egress", Status::Warn, format!("cannot read {path}: {e}"));
            return;
        }
    };
    let can_create = have.is_some_and(|h| h.get("Sys.Modify").is_some());
    match (exists, can_create) {
        (true, _) => push(
            "egress",
            Status::Pass,
            format!("security group {group} present: `run.egress = true` works with this token"),
        ),
        (false, true) => push(
            "egress",
            Status::Pass,
            format!(
                "security group {group} absent; this token creates it on the first `run.egress = true` task"
            ),
        ),
        (false, false) => push(
            "egress",
            Status::Warn,
            format!(
                "security group {group} absent and this token may not create it (Sys.Modify on /): matters only with `run.egress = true`; run the first egress task once with an administrator's token, or grant Sys.Modify"
            ),
        ),
    }
}

async fn storages(
    client: &PveClient,
    cfg: &InstanceConfig,
    push: &mut impl FnMut(&'static str, Status, String),
) {
    let list = match client.node(&cfg.node).storages(None).await {
        Ok(l) => l,
        Err(e) => {
            push(
                "storage",
                Status::Fail,
                format!("node {:?}: {e}; check `node`", cfg.node),
            );
            return;
        }
    };
    let has = |id: &str, content: &str| {
        list.iter()
            .any(|s| s.storage == id && s.content.split(',').any(|c| c == content))
    };
    if has(&cfg.image_storage, "images") {
        push(
            "storage",
            Status::Pass,
            format!("{} holds VM disks", cfg.image_storage),
        );
    } else {
        push(
            "storage",
            Status::Fail,
            format!(
                "image_storage {:?} does not exist on {} or does not allow `images`; pick one of: {}",
                cfg.image_storage,
                cfg.node,
                list.iter()
                    .map(|s| s.storage.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let import: Vec<&str> = list
        .iter()
        .filter(|s| s.content.split(',').any(|c| c == "import"))
        .map(|s| s.storage.as_str())
        .collect();
    if import.is_empty() {
        push(
            "import",
            Status::Fail,
            "no storage allows `import` content (built-in images and OVAs are imported from it): `pvesm set local --content iso,vztmpl,backup,import`".into(),
        );
    } else {
        push(
            "import",
            Status::Pass,
            format!("import content on {}", import.join(", ")),
        );
    }
}
