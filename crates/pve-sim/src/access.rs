//! Who may call what: PVE's permission checks for the routes the simulator serves.
//!
//! PVE checks a method's `permissions` before its handler runs (`check_api2_permissions` in
//! `PVE::RPCEnvironment`): `root@pam` passes everything; `user: world` needs no login;
//! `user: all` needs a login and leaves the rest to the handler (which filters listings or
//! checks by itself, see [`handler_check`] and [`list_filter`]); otherwise a `check`
//! expression of `perm` tests joined by `and` / `or` decides. A failed test answers HTTP 403
//! `Permission check failed (<path>, <privilege>)`.
//!
//! The simulator grants every principal other than `root@pam` the privileges in
//! [`crate::SimConfig::privileges`] on `/`, propagated, as one ACL on `/` does; a test's path
//! therefore only shapes the message. [`required`] is written by hand from what PVE 9.2.3
//! checks; `tests/schema_contract.rs` compares it with the official schema for every route.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// A method's permission rule, in the shape of the schema's `permissions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No `permissions` at all: only `root@pam` may call it.
    RootOnly,
    /// `user: world`: no authentication needed.
    World,
    /// `user: all`: any authenticated principal; the handler filters or checks.
    All,
    /// `["perm", path, privs]`, with `"any", 1` when one privilege suffices and
    /// `"require_param", p` when the test applies only if parameter `p` was given.
    Perm {
        /// ACL path with `{param}` placeholders.
        path: &'static str,
        /// The privileges tested.
        privs: &'static [&'static str],
        /// One of `privs` is enough (else all are needed).
        any: bool,
        /// The test fails unless this parameter was given.
        require_param: Option<&'static str>,
    },
    /// `["and", ...]`: every test passes; the first failure is the answer.
    And(&'static [Check]),
    /// `["or", ...]`: some test passes; else a bare `Permission check failed`.
    Or(&'static [Check]),
}

const fn perm(path: &'static str, privs: &'static [&'static str]) -> Check {
    Check::Perm {
        path,
        privs,
        any: false,
        require_param: None,
    }
}

const fn any(path: &'static str, privs: &'static [&'static str]) -> Check {
    Check::Perm {
        path,
        privs,
        any: true,
        require_param: None,
    }
}

const VM: &str = "/vms/{vmid}";
const VM_CONFIG: &[&str] = &[
    "VM.Config.Disk",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.HWType",
    "VM.Config.Options",
    "VM.Config.Cloudinit",
];
const AGENT_AUDIT: &[&str] = &["VM.GuestAgent.Audit", "VM.GuestAgent.Unrestricted"];
const SDN_SEE: &[&str] = &["SDN.Audit", "SDN.Allocate"];
const POOL_ALLOCATE: Check = Check::Perm {
    path: "/pool/{pool}",
    privs: &["VM.Allocate"],
    any: false,
    require_param: Some("pool"),
};
// Nested rules are consts: a `const fn` call inside `&[...]` is not promoted to 'static.
const CLONE: Check = Check::And(&[
    perm(VM, &["VM.Clone"]),
    Check::Or(&[perm("/vms/{newid}", &["VM.Allocate"]), POOL_ALLOCATE]),
]);
const DOWNLOAD_URL: Check = Check::And(&[
    perm("/storage/{storage}", &["Datastore.AllocateTemplate"]),
    Check::Or(&[
        perm("/", &["Sys.Audit", "Sys.Modify"]),
        perm("/nodes/{node}", &["Sys.AccessNetwork"]),
    ]),
]);
const CREATE: Check = Check::Or(&[perm(VM, &["VM.Allocate"]), POOL_ALLOCATE]);

/// The schema-level rule of `method route` (a templated path from [`crate::routes`]).
pub fn required(method: &str, route: &str) -> Check {
    let vm_sub = route.strip_prefix("/nodes/{node}/qemu/{vmid}");
    match (method, route, vm_sub) {
        ("POST", "/access/ticket", _) => Check::World,
        (
            "GET",
            "/version"
            | "/access/permissions"
            | "/cluster/nextid"
            | "/cluster/resources"
            | "/cluster/tasks"
            | "/nodes"
            | "/nodes/{node}/qemu"
            | "/nodes/{node}/tasks"
            | "/nodes/{node}/tasks/{upid}/status"
            | "/nodes/{node}/tasks/{upid}/log"
            | "/nodes/{node}/storage"
            | "/pools"
            | "/cluster/sdn/zones"
            | "/cluster/sdn/vnets"
            | "/cluster/sdn/ipams/{ipam}/status"
            | "/cluster/firewall/groups",
            _,
        )
        | ("POST", "/nodes/{node}/qemu", _)
        | ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}", _) => Check::All,
        // Vnets and subnets say in prose what they need; their handlers check it.
        (_, r, _) if r.starts_with("/cluster/sdn/vnets/{vnet}") => Check::All,
        ("GET", "/nodes/{node}/status", _) => perm("/nodes/{node}", &["Sys.Audit"]),

        // One VM.
        ("DELETE", _, Some("")) | ("POST", _, Some("/template")) => perm(VM, &["VM.Allocate"]),
        ("POST" | "PUT", _, Some("/config")) => any(VM, VM_CONFIG),
        ("PUT", _, Some("/resize")) => perm(VM, &["VM.Config.Disk"]),
        ("POST", _, Some("/clone")) => CLONE,
        ("POST", _, Some(s)) if s.starts_with("/status/") => perm(VM, &["VM.PowerMgmt"]),
        ("POST", _, Some("/snapshot")) | ("DELETE", _, Some("/snapshot/{snapname}")) => {
            perm(VM, &["VM.Snapshot"])
        }
        ("POST", _, Some("/snapshot/{snapname}/rollback")) => {
            any(VM, &["VM.Snapshot", "VM.Snapshot.Rollback"])
        }
        (_, _, Some("/agent/exec" | "/agent/exec-status")) => {
            perm(VM, &["VM.GuestAgent.Unrestricted"])
        }
        (_, _, Some("/agent/file-read")) => any(
            VM,
            &["VM.GuestAgent.FileRead", "VM.GuestAgent.Unrestricted"],
        ),
        (_, _, Some("/agent/file-write")) => any(
            VM,
            &["VM.GuestAgent.FileWrite", "VM.GuestAgent.Unrestricted"],
        ),
        (_, _, Some(s)) if s.starts_with("/agent/") => any(VM, AGENT_AUDIT),
        (_, _, Some(s)) if s.starts_with("/firewall/") => match method {
            "GET" => perm(VM, &["VM.Audit"]),
            _ => perm(VM, &["VM.Config.Network"]),
        },
        ("GET", _, Some(_)) => perm(VM, &["VM.Audit"]),

        // Storage.
        ("GET", "/nodes/{node}/storage/{storage}/content", _) => any(
            "/storage/{storage}",
            &["Datastore.Audit", "Datastore.AllocateSpace"],
        ),
        ("POST", "/nodes/{node}/storage/{storage}/upload", _) => {
            perm("/storage/{storage}", &["Datastore.AllocateTemplate"])
        }
        ("POST", "/nodes/{node}/storage/{storage}/download-url", _) => DOWNLOAD_URL,
        ("POST" | "PUT" | "DELETE", "/pools", _) => perm("/pool/{poolid}", &["Pool.Allocate"]),

        // SDN and the datacenter firewall.
        ("GET", "/cluster/sdn", _) => perm("/sdn", &["SDN.Audit"]),
        ("PUT", "/cluster/sdn", _) => perm("/sdn", &["SDN.Allocate"]),
        ("POST", "/cluster/sdn/zones", _) => perm("/sdn/zones", &["SDN.Allocate"]),
        (_, "/cluster/sdn/zones/{zone}", _) => perm("/sdn/zones/{zone}", &["SDN.Allocate"]),
        ("POST", "/cluster/sdn/vnets", _) => perm("/sdn/zones/{zone}", &["SDN.Allocate"]),
        ("GET", r, _) if r.starts_with("/cluster/firewall/") => perm("/", &["Sys.Audit"]),
        (_, r, _) if r.starts_with("/cluster/firewall/") => perm("/", &["Sys.Modify"]),
        // Fail closed: a route added without its rule is root's only, and the contract
        // test names it.
        _ => Check::RootOnly,
    }
}

/// What a `user: all` handler checks by itself before acting (PVE says it in the method's
/// description), or what a handler adds to the schema's rule for some parameters: `SDN.Use`
/// on the vnet a NIC joins and `Datastore.AllocateSpace` on a storage a new disk lands on.
/// `params` are the request's (first values); `zone_of` finds a vnet's zone.
pub(crate) fn handler_checks(
    method: &str,
    route: &str,
    params: &BTreeMap<String, String>,
    zone_of: &dyn Fn(&str) -> Option<String>,
    is_root: bool,
) -> Result<Vec<(String, Check)>, ApiError> {
    const SDN_ALLOCATE: &[&str] = &["SDN.Allocate"];
    let vnet_path = |vnet: &str| {
        format!(
            "/sdn/zones/{}/{vnet}",
            zone_of(vnet).unwrap_or_else(|| "localnetwork".into())
        )
    };
    let mut out = Vec::new();
    if let Some(vnet) = params.get("vnet")
        && route.starts_with("/cluster/sdn/vnets/{vnet}")
    {
        let privs = if method == "GET" {
            SDN_SEE
        } else {
            SDN_ALLOCATE
        };
        out.push((vnet_path(vnet), any("", privs)));
    }
    match (method, route) {
        ("POST", "/nodes/{node}/qemu") => out.push((String::new(), CREATE)),
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}") => out.push((
            String::new(),
            perm("/storage/{storage}", &["Datastore.Allocate"]),
        )),
        _ => {}
    }
    let configures = matches!(
        (method, route),
        ("POST", "/nodes/{node}/qemu") | ("POST" | "PUT", "/nodes/{node}/qemu/{vmid}/config")
    );
    if configures {
        let deleted = params.get("delete").map(String::as_str).unwrap_or_default();
        let deleted = deleted.split([',', ';', ' ']).filter(|k| !k.is_empty());
        let set = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| !NOT_CONFIG_KEYS.contains(k));
        for (opt, value) in set.chain(deleted.map(|k| (k, ""))) {
            match config_key_privs(opt, value) {
                KeyRule::Privs(privs, any_one) => out.push((
                    String::new(),
                    Check::Perm {
                        path: if privs == ["Sys.Modify"] { "/" } else { VM },
                        privs,
                        any: any_one,
                        require_param: None,
                    },
                )),
                KeyRule::RootOnly if !is_root => {
                    return Err(ApiError::internal(format!(
                        "only root can set '{opt}' config"
                    )));
                }
                KeyRule::RootOnly | KeyRule::Elsewhere => {}
            }
        }
        for (k, v) in params {
            let first = v.split(',').next().unwrap_or_default();
            if k.starts_with("net") && k[3..].parse::<u32>().is_ok() {
                // `virtio=MAC,bridge=vnet,...` or `model=...,bridge=...`.
                if let Some(bridge) = v.split(',').find_map(|p| p.strip_prefix("bridge=")) {
                    out.push((vnet_path(bridge), any("", &["SDN.Use"])));
                }
            } else if let Some((storage, size)) = first.split_once(':')
                && is_disk_key(k)
                && (size.parse::<f64>().is_ok() || v.contains("import-from="))
            {
                out.push((
                    format!("/storage/{storage}"),
                    any("", &["Datastore.AllocateSpace"]),
                ));
            }
        }
    }
    if (method, route) == ("POST", "/nodes/{node}/qemu/{vmid}/clone")
        && let Some(storage) = params.get("storage")
    {
        out.push((
            format!("/storage/{storage}"),
            any("", &["Datastore.AllocateSpace"]),
        ));
    }
    Ok(out)
}

/// Parameters of the config and create routes that are not VM config keys.
const NOT_CONFIG_KEYS: &[&str] = &[
    "node",
    "vmid",
    "delete",
    "digest",
    "revert",
    "skiplock",
    "background_delay",
    "force",
    "pool",
    "archive",
    "storage",
    "start",
    "unique",
    "bwlimit",
    "live-restore",
    "import-working-storage",
];

/// What changing one config key needs (qemu-server's `check_vm_modify_config_perm`).
enum KeyRule {
    /// These privileges on the VM (`true`: any one of them).
    Privs(&'static [&'static str], bool),
    /// Refused to everyone but root@pam.
    RootOnly,
    /// Checked by value elsewhere (drives, the storage they land on, serial sockets).
    Elsewhere,
}

fn config_key_privs(opt: &str, value: &str) -> KeyRule {
    let base = opt.trim_end_matches(|c: char| c.is_ascii_digit());
    let indexed = base.len() < opt.len();
    match (base, indexed) {
        (
            "cores" | "cpu" | "cpulimit" | "cpuunits" | "numa" | "smp" | "sockets" | "vcpus"
            | "affinity",
            false,
        )
        | ("numa", true) => KeyRule::Privs(&["VM.Config.CPU"], false),
        ("memory" | "balloon" | "shares", false) => KeyRule::Privs(&["VM.Config.Memory"], false),
        (
            "acpi" | "hotplug" | "kvm" | "machine" | "scsihw" | "smbios1" | "tablet" | "vga"
            | "watchdog" | "audio",
            _,
        ) => KeyRule::Privs(&["VM.Config.HWType"], false),
        (
            "agent" | "autostart" | "bios" | "description" | "keyboard" | "localtime"
            | "migrate_downtime" | "migrate_speed" | "name" | "onboot" | "ostype" | "protection"
            | "reboot" | "startdate" | "tdf" | "template" | "tags",
            false,
        ) => KeyRule::Privs(&["VM.Config.Options"], false),
        // It changes how the host boots its guests.
        ("startup", false) => KeyRule::Privs(&["Sys.Modify"], false),
        ("freeze", false) => KeyRule::Privs(&["VM.PowerMgmt"], false),
        ("boot" | "bootdisk" | "vmstatestorage", false) | ("unused", true) => {
            KeyRule::Privs(&["VM.Config.Disk"], false)
        }
        ("cdrom", false) => KeyRule::Privs(&["VM.Config.CDROM"], false),
        ("ide" | "sata" | "scsi" | "virtio" | "efidisk" | "tpmstate", true) => {
            if value.contains("media=cdrom") {
                KeyRule::Privs(&["VM.Config.CDROM"], false)
            } else {
                KeyRule::Privs(&["VM.Config.Disk"], false)
            }
        }
        ("net", true) => KeyRule::Privs(&["VM.Config.Network"], false),
        (
            "cicustom" | "cipassword" | "citype" | "ciuser" | "ciupgrade" | "nameserver"
            | "searchdomain" | "sshkeys",
            false,
        )
        | ("ipconfig", true) => KeyRule::Privs(&["VM.Config.Cloudinit", "VM.Config.Network"], true),
        ("vmstate", false) => KeyRule::Privs(&["VM.Config.Disk", "VM.PowerMgmt"], false),
        // A socket is virtual hardware; a host device is root's.
        ("serial", true) if value.is_empty() || value == "socket" => {
            KeyRule::Privs(&["VM.Config.HWType"], false)
        }
        ("args" | "hookscript" | "lock", false) | ("hostpci" | "serial", true) => KeyRule::RootOnly,
        // Keys this table does not know: the schema's any-of `VM.Config.*` already held.
        _ => KeyRule::Elsewhere,
    }
}

fn is_disk_key(k: &str) -> bool {
    let bus = k.trim_end_matches(|c: char| c.is_ascii_digit());
    bus.len() < k.len()
        && matches!(
            bus,
            "scsi" | "virtio" | "sata" | "ide" | "efidisk" | "tpmstate"
        )
}

/// For a `user: all` listing: the privileges (any one) an entry needs to be shown, keyed by
/// the entry's `type` for `/cluster/resources` (`None` key: every entry).
pub(crate) fn list_filter(
    route: &str,
    entry_type: Option<&str>,
) -> Option<&'static [&'static str]> {
    match (route, entry_type) {
        ("/cluster/resources", Some("qemu" | "lxc")) | ("/nodes/{node}/qemu", _) => {
            Some(&["VM.Audit"])
        }
        ("/cluster/resources", Some("storage")) | ("/nodes/{node}/storage", _) => {
            Some(&["Datastore.Audit", "Datastore.AllocateSpace"])
        }
        ("/cluster/resources", Some("sdn" | "network"))
        | ("/cluster/sdn/zones" | "/cluster/sdn/vnets", _)
        | ("/cluster/sdn/ipams/{ipam}/status", _) => Some(SDN_SEE),
        ("/cluster/sdn/vnets/{vnet}/subnets", _) => Some(SDN_SEE),
        ("/pools", _) => Some(&["Pool.Audit"]),
        _ => None,
    }
}

/// The privileges `user` holds on every path; `None`: all of them (`root@pam`, or a
/// simulator configured without a privilege list).
pub(crate) fn held<'a>(cfg: &'a crate::SimConfig, user: &str) -> Option<&'a [String]> {
    if user == "root@pam" {
        return None;
    }
    cfg.privileges.as_deref()
}

/// Whether `held` grants one of `privs`.
pub(crate) fn has_any(held: Option<&[String]>, privs: &[&str]) -> bool {
    held.is_none_or(|h| privs.iter().any(|p| h.iter().any(|x| x == p)))
}

/// Evaluates `check` for a principal holding `held`; `path` overrides the test's own path
/// (already resolved by [`handler_checks`]) when not empty.
pub(crate) fn evaluate(
    check: &Check,
    held: Option<&[String]>,
    params: &BTreeMap<String, String>,
    path: &str,
) -> Result<(), ApiError> {
    let denied = |what: Option<String>| {
        ApiError::new(
            403,
            match what {
                Some(w) => format!("Permission check failed ({w})"),
                None => "Permission check failed".to_owned(),
            },
        )
    };
    match check {
        Check::World | Check::All => Ok(()),
        Check::RootOnly if held.is_none() => Ok(()),
        Check::RootOnly => Err(denied(Some("user != root@pam".into()))),
        Check::Perm {
            path: template,
            privs,
            any,
            require_param,
        } => {
            if require_param.is_some_and(|p| !params.contains_key(p)) {
                return Err(denied(None));
            }
            let path = if path.is_empty() {
                fill(template, params)
            } else {
                path.to_owned()
            };
            if *any {
                if has_any(held, privs) {
                    Ok(())
                } else {
                    Err(denied(Some(format!("{path}, {}", privs.join("|")))))
                }
            } else {
                match privs.iter().find(|p| !has_any(held, &[p])) {
                    None => Ok(()),
                    Some(p) => Err(denied(Some(format!("{path}, {p}")))),
                }
            }
        }
        Check::And(all) => all.iter().try_for_each(|c| evaluate(c, held, params, path)),
        Check::Or(one) => {
            if one.iter().any(|c| evaluate(c, held, params, path).is_ok()) {
                Ok(())
            } else {
                Err(denied(None))
            }
        }
    }
}

/// `{name}` placeholders replaced by parameters (PVE's `template_replace`).
fn fill(template: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in params {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn privs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn messages_name_the_path_and_the_missing_privilege() {
        let p = params(&[("vmid", "105"), ("newid", "200")]);
        let clone = required("POST", "/nodes/{node}/qemu/{vmid}/clone");
        let some = privs(&["VM.Allocate"]);
        let err = evaluate(&clone, Some(&some), &p, "").unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (403, "Permission check failed (/vms/105, VM.Clone)")
        );
        // `or` answers bare, as PVE's raise_perm_exc() without an argument does.
        let only_clone = privs(&["VM.Clone"]);
        let err = evaluate(&clone, Some(&only_clone), &p, "").unwrap_err();
        assert_eq!(err.message, "Permission check failed");
        let both = privs(&["VM.Clone", "VM.Allocate"]);
        assert!(evaluate(&clone, Some(&both), &p, "").is_ok());
        // `any` lists every privilege that would have done.
        let err = evaluate(
            &required("POST", "/nodes/{node}/qemu/{vmid}/agent/file-write"),
            Some(&privs(&["VM.Audit"])),
            &p,
            "",
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "Permission check failed (/vms/105, VM.GuestAgent.FileWrite|VM.GuestAgent.Unrestricted)"
        );
        // root@pam (held = None) passes everything, even root-only methods.
        assert!(evaluate(&Check::RootOnly, None, &p, "").is_ok());
        assert!(evaluate(&Check::RootOnly, Some(&both), &p, "").is_err());
    }

    #[test]
    fn each_config_key_needs_its_own_privilege() {
        let route = "/nodes/{node}/qemu/{vmid}/config";
        let zone = |_: &str| None;
        let run = |kv: &[(&str, &str)], held: &[&str]| {
            let p = params(kv);
            let held = privs(held);
            handler_checks("PUT", route, &p, &zone, false).and_then(|checks| {
                checks
                    .iter()
                    .try_for_each(|(path, c)| evaluate(c, Some(&held), &p, path))
            })
        };
        let vm = [("vmid", "105")];
        let with = |extra: &[(&'static str, &'static str)]| {
            vm.iter().chain(extra).copied().collect::<Vec<_>>()
        };
        // Memory is not CPU, and deleting a key is changing it.
        assert!(run(&with(&[("memory", "512")]), &["VM.Config.Memory"]).is_ok());
        let err = run(
            &with(&[("memory", "512"), ("cores", "2")]),
            &["VM.Config.Memory"],
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "Permission check failed (/vms/105, VM.Config.CPU)"
        );
        let err = run(&with(&[("delete", "tags,memory")]), &["VM.Config.Memory"]).unwrap_err();
        assert_eq!(
            err.message,
            "Permission check failed (/vms/105, VM.Config.Options)"
        );
        // A cloud-init key takes either of two privileges.
        assert!(run(&with(&[("ipconfig0", "ip=dhcp")]), &["VM.Config.Network"]).is_ok());
        // Some keys are root's whatever the privileges, with PVE's 500.
        let err = run(&with(&[("args", "-S")]), &["VM.Config.Options"]).unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (500, "only root can set 'args' config")
        );
        assert!(run(&with(&[("serial0", "socket")]), &["VM.Config.HWType"]).is_ok());
        assert!(run(&with(&[("serial0", "/dev/ttyS0")]), &["VM.Config.HWType"]).is_err());
    }

    #[test]
    fn nics_need_sdn_use_and_new_disks_allocate_space() {
        let p = params(&[
            ("vmid", "105"),
            ("net0", "virtio=BC:24:11:00:00:01,bridge=Zab12s0,firewall=1"),
            ("scsi1", "local-lvm:8"),
            ("scsi0", "local-lvm:vm-105-disk-0,size=4G"),
        ]);
        let zone = |v: &str| (v == "Zab12s0").then(|| "Zab12s0".to_owned());
        let checks: Vec<_> =
            handler_checks("POST", "/nodes/{node}/qemu/{vmid}/config", &p, &zone, false)
                .unwrap()
                .into_iter()
                .filter(|(p, _)| !p.is_empty())
                .collect();
        let paths: Vec<&str> = checks.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/sdn/zones/Zab12s0/Zab12s0", "/storage/local-lvm"]);
        let err = evaluate(
            &checks[0].1,
            Some(&privs(&["VM.Config.Network"])),
            &p,
            &checks[0].0,
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "Permission check failed (/sdn/zones/Zab12s0/Zab12s0, SDN.Use)"
        );
    }
}
