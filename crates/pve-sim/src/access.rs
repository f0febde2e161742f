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
//! [`crate::SimConfig::privileges`] on `/`, propagated, as one ACL entry on `/` does, and
//! those of [`crate::SimConfig::acl`] on deeper paths, where the most specific entry wins as
//! in PVE. [`required`] is written by hand from what PVE 9.2.3 checks;
//! `tests/schema_contract.rs` compares it with the official schema for every route.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// Every privilege PVE 9.2 knows (`pveum role list` of `Administrator`), which `root@pam`
/// and its unseparated tokens hold on every path.
pub const ALL_PRIVILEGES: &[&str] = &[
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
    "Datastore.Audit",
    "Group.Allocate",
    "Mapping.Audit",
    "Mapping.Modify",
    "Mapping.Use",
    "Permissions.Modify",
    "Pool.Allocate",
    "Pool.Audit",
    "Realm.Allocate",
    "Realm.AllocateUser",
    "SDN.Allocate",
    "SDN.Audit",
    "SDN.Use",
    "Sys.AccessNetwork",
    "Sys.Audit",
    "Sys.Console",
    "Sys.Incoming",
    "Sys.Modify",
    "Sys.PowerMgmt",
    "Sys.Syslog",
    "User.Modify",
    "VM.Allocate",
    "VM.Audit",
    "VM.Backup",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Console",
    "VM.GuestAgent.Audit",
    "VM.GuestAgent.FileRead",
    "VM.GuestAgent.FileSystemMgmt",
    "VM.GuestAgent.FileWrite",
    "VM.GuestAgent.Unrestricted",
    "VM.Migrate",
    "VM.PowerMgmt",
    "VM.Replicate",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

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
        | ("GET" | "PUT" | "DELETE", "/nodes/{node}/storage/{storage}/content/{volume}", _) => {
            Check::All
        }
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

/// Who is asking: `root@pam` passes every check; anyone else holds `held` on every path
/// (`None`: all privileges, a simulator configured without a list).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller<'a> {
    /// The caller is `root@pam` itself (not one of its tokens).
    pub root: bool,
    /// Privileges held on `/`, propagated.
    pub held: Option<&'a [String]>,
    /// Further grants on sub-paths, propagated below them.
    pub acl: &'a [(String, Vec<String>)],
    /// The user or token id (`user@realm!token`), which owns the tasks it starts.
    pub user: &'a str,
}

impl<'a> Caller<'a> {
    /// The caller `user` of a simulator configured with `cfg`.
    pub(crate) fn of(cfg: &'a crate::SimConfig, user: &'a str) -> Self {
        Caller {
            root: user == "root@pam",
            held: cfg.privileges.as_deref(),
            acl: &cfg.acl,
            user,
        }
    }

    /// Whether it may see task `upid` (or a task listing's entry owned by `owner`): its own
    /// tasks always, others' with Sys.Audit on the node.
    pub(crate) fn sees_task_of(&self, owner: &str, node: &str) -> bool {
        owner == self.user || self.has_any_on(&format!("/nodes/{node}"), &["Sys.Audit"])
    }

    /// Privileges it holds on `/`; `None`: all of them.
    pub(crate) fn privileges(&self) -> Option<&'a [String]> {
        if self.root { None } else { self.held }
    }

    /// Privileges it holds on `path`: those of the most specific ACL entry on `path` or
    /// above it, `/` being the outermost; `None`: all of them. PVE does not add a deeper
    /// entry to what `/` grants, it replaces it (`PVE::AccessControl::roles`: "overwrite
    /// previous settings"), so a grant on `/storage/x` must repeat what `/` gives.
    pub(crate) fn privileges_on(&self, path: &str) -> Option<Vec<&'a str>> {
        let root = self.privileges()?;
        let covers = |acl_path: &str| {
            let a = acl_path.trim_end_matches('/');
            path == a
                || path
                    .strip_prefix(a)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let deepest = self
            .acl
            .iter()
            .filter(|(p, _)| covers(p))
            .max_by_key(|(p, _)| p.trim_end_matches('/').len());
        let privs = deepest.map_or(root, |(_, privs)| privs.as_slice());
        Some(privs.iter().map(String::as_str).collect())
    }

    /// Whether it holds one of `privs` on `path`.
    pub(crate) fn has_any_on(&self, path: &str, privs: &[&str]) -> bool {
        self.privileges_on(path)
            .is_none_or(|h| privs.iter().any(|p| h.contains(p)))
    }
}

/// What handlers need to know of the cluster to decide.
pub(crate) trait World {
    /// The zone of a vnet (pending config first, as PVE reads `sdn/vnets.cfg`).
    fn zone_of(&self, vnet: &str) -> Option<String>;
    /// A VM's current config.
    fn vm_config(&self, vmid: u32) -> Option<BTreeMap<String, String>>;
}

/// A handler's refusal, and whether PVE raises it inside the task it already started (an
/// async `POST .../config` then answers a UPID whose task fails with this message).
#[derive(Debug)]
pub(crate) struct Denied {
    /// The answer.
    pub error: ApiError,
    /// Raised by the worker, not before it.
    pub in_worker: bool,
}

/// What a handler checks by itself once the schema's rule passed and the parameters were
/// verified: `user: all` methods' prose rules, and what qemu-server adds per parameter
/// (each config key's privilege, `Datastore.AllocateSpace` where a disk is allocated,
/// `SDN.Use` on the vnet a NIC joins or leaves, drives and tags in the worker).
pub(crate) fn handler_check(
    method: &str,
    route: &str,
    params: &BTreeMap<String, String>,
    world: &dyn World,
    caller: Caller<'_>,
) -> Result<(), Denied> {
    if caller.root {
        return Ok(());
    }
    let mut steps = Steps {
        caller,
        params,
        in_worker: false,
    };
    let vmid: u32 = params.get("vmid").and_then(|v| v.parse().ok()).unwrap_or(0);
    if let Some(vnet) = params.get("vnet")
        && route.starts_with("/cluster/sdn/vnets/{vnet}")
    {
        let privs: &[&str] = if method == "GET" {
            SDN_SEE
        } else {
            &["SDN.Allocate"]
        };
        steps.any(&vnet_path(world, vnet, None), privs)?;
    }
    match (method, route) {
        ("POST", "/nodes/{node}/qemu") => {
            if let Some(storage) = params.get("storage") {
                steps.all(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
            }
            steps.check("", &CREATE)?;
            if params.get("start").is_some_and(|v| v == "1" || v == "true") {
                steps.all(&vm_path(vmid), &["VM.PowerMgmt"])?;
            }
            steps.config_keys(params, &[], vmid)?;
            // Serial ports at creation here; an update checks them under the config lock.
            for (opt, value) in params.iter().filter(|(k, _)| is_indexed(k, "serial")) {
                if value == "socket" {
                    steps.all(&vm_path(vmid), &["VM.Config.HWType"])?;
                } else {
                    steps
                        .root_only(format!("only root can set '{opt}' config for real devices"))?;
                }
            }
            steps.storage_access(params)?;
            steps.bridge_access(world, params.iter())?;
            // create_vm checks tags inside its worker.
            steps.in_worker = true;
            if params.contains_key("tags") {
                steps.all(&vm_path(vmid), &["VM.Config.Options"])?;
            }
        }
        ("POST" | "PUT", "/nodes/{node}/qemu/{vmid}/config") => {
            let delete = split_list(params.get("delete").map(String::as_str).unwrap_or(""));
            steps.config_keys(params, &delete, vmid)?;
            steps.storage_access(params)?;
            steps.bridge_access(world, params.iter())?;
            // The rest runs under the config lock, in the worker for the async POST.
            steps.in_worker = method == "POST";
            let current = world.vm_config(vmid).unwrap_or_default();
            for opt in &delete {
                let Some(old) = current.get(*opt) else {
                    continue;
                };
                steps.changed_key(world, vmid, opt, Some(old), None)?;
            }
            for (opt, new) in params {
                steps.changed_key(world, vmid, opt, current.get(opt), Some(new))?;
            }
        }
        ("POST", "/nodes/{node}/qemu/{vmid}/clone") => {
            let source = world.vm_config(vmid).unwrap_or_default();
            for (opt, value) in &source {
                if !is_disk_key(opt) || is_cdrom(value) || value == "none" {
                    continue;
                }
                let storage = params
                    .get("storage")
                    .cloned()
                    .or_else(|| drive_file(value).split_once(':').map(|(s, _)| s.to_owned()));
                if let Some(storage) = storage {
                    steps.all(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
                }
            }
            if let Some(s) = source.get("vmstatestorage") {
                steps.all(&format!("/storage/{s}"), &["Datastore.AllocateSpace"])?;
            }
            steps.bridge_access(world, source.iter())?;
        }
        ("PUT", "/nodes/{node}/qemu/{vmid}/resize") => {
            // Growing a disk allocates on its storage.
            let disk = params.get("disk").map(String::as_str).unwrap_or_default();
            let current = world.vm_config(vmid).unwrap_or_default();
            if let Some((storage, _)) = current
                .get(disk)
                .and_then(|v| drive_file(v).split_once(':'))
            {
                steps.all(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
            }
        }
        ("GET", "/nodes/{node}/tasks/{upid}/status" | "/nodes/{node}/tasks/{upid}/log") => {
            // UPID:node:pid:pstart:starttime:type:id:user:
            let upid = params.get("upid").map(String::as_str).unwrap_or_default();
            let owner = upid.split(':').nth(7).unwrap_or_default();
            let node = params.get("node").map(String::as_str).unwrap_or_default();
            if !caller.sees_task_of(owner, node) {
                steps.all(&format!("/nodes/{node}"), &["Sys.Audit"])?;
            }
        }
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            steps.check("", &perm("/storage/{storage}", &["Datastore.Allocate"]))?;
        }
        ("GET" | "PUT", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            // pve-storage `check_volume_access`: templates and ISOs need read access to the
            // storage, a guest's disk also its VM's disk privilege, anything else the
            // storage's administrator.
            let volume = params.get("volume").map(String::as_str).unwrap_or_default();
            let (storage, name) = match volume.split_once(':') {
                Some((sid, name)) => (sid, name),
                None => (
                    params
                        .get("storage")
                        .map(String::as_str)
                        .unwrap_or_default(),
                    volume,
                ),
            };
            let at = format!("/storage/{storage}");
            match (name.split_once('/').map(|(c, _)| c), volume_owner(name)) {
                (Some("iso" | "vztmpl" | "import"), _) => {
                    steps.any(&at, &["Datastore.AllocateSpace", "Datastore.Audit"])?;
                }
                (_, Some(vmid)) => {
                    steps.all(&at, &["Datastore.Audit"])?;
                    steps.all(&format!("/vms/{vmid}"), &["VM.Config.Disk"])?;
                }
                _ => steps.all(&at, &["Datastore.Allocate"])?,
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks evaluated in order; the first failure is the answer.
struct Steps<'a> {
    caller: Caller<'a>,
    params: &'a BTreeMap<String, String>,
    in_worker: bool,
}

impl Steps<'_> {
    fn deny(&self, error: ApiError) -> Denied {
        Denied {
            error,
            in_worker: self.in_worker,
        }
    }

    fn check(&self, path: &str, check: &Check) -> Result<(), Denied> {
        evaluate(check, self.caller, self.params, path).map_err(|e| self.deny(e))
    }

    fn all(&self, path: &str, privs: &'static [&'static str]) -> Result<(), Denied> {
        self.check(path, &perm("", privs))
    }

    fn any(&self, path: &str, privs: &'static [&'static str]) -> Result<(), Denied> {
        self.check(path, &any("", privs))
    }

    fn root_only(&self, message: String) -> Result<(), Denied> {
        Err(self.deny(ApiError::internal(message)))
    }

    /// qemu-server's `check_vm_modify_config_perm` over set and deleted keys.
    fn config_keys(
        &self,
        params: &BTreeMap<String, String>,
        delete: &[&str],
        vmid: u32,
    ) -> Result<(), Denied> {
        let set = params
            .keys()
            .map(String::as_str)
            .filter(|k| !NOT_CONFIG_KEYS.contains(k));
        for opt in delete.iter().copied().chain(set) {
            match config_key_rule(opt) {
                KeyRule::Privs(privs, true) => self.any(&vm_path(vmid), privs)?,
                KeyRule::Privs(privs, false) => self.all(&vm_path(vmid), privs)?,
                KeyRule::Console => self.all("/", &["Sys.Console"])?,
                KeyRule::Startup => {
                    self.all(&vm_path(vmid), &["VM.Config.Options"])?;
                    self.all("/", &["Sys.Modify"])?;
                }
                KeyRule::Elsewhere => {}
                KeyRule::RootOnly => self.root_only(format!("only root can set '{opt}' config"))?,
            }
        }
        Ok(())
    }

    /// `Datastore.AllocateSpace` on every storage a new disk is allocated on.
    fn storage_access(&self, params: &BTreeMap<String, String>) -> Result<(), Denied> {
        for (opt, value) in params {
            if !is_disk_key(opt) || is_cdrom(value) {
                continue;
            }
            if let Some(storage) = new_disk_storage(drive_file(value)) {
                let storage = match storage {
                    Some(s) => s.to_owned(),
                    None => match params.get("storage") {
                        Some(s) => s.clone(),
                        None => continue,
                    },
                };
                self.all(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
            }
        }
        if let Some(s) = params.get("vmstatestorage") {
            self.all(&format!("/storage/{s}"), &["Datastore.AllocateSpace"])?;
        }
        Ok(())
    }

    /// `SDN.Use` on the vnet (and VLAN tag) of every NIC in `conf`.
    fn bridge_access<'k>(
        &self,
        world: &dyn World,
        conf: impl Iterator<Item = (&'k String, &'k String)>,
    ) -> Result<(), Denied> {
        for (opt, value) in conf {
            if is_indexed(opt, "net")
                && let Some((bridge, tag)) = nic_bridge(value)
            {
                self.all(&vnet_path(world, bridge, tag), &["SDN.Use"])?;
            }
        }
        Ok(())
    }

    /// What qemu-server checks under the config lock for one key being set (`new`) or
    /// deleted (`new` = `None`), given its current value `old`.
    fn changed_key(
        &self,
        world: &dyn World,
        vmid: u32,
        opt: &str,
        old: Option<&String>,
        new: Option<&String>,
    ) -> Result<(), Denied> {
        let vm = vm_path(vmid);
        if is_disk_key(opt) {
            for v in old.into_iter().chain(new) {
                if is_cloudinit(v) {
                    self.all(&vm, &["VM.Config.Cloudinit", "VM.Config.CDROM"])?;
                } else if is_cdrom(v) {
                    self.all(&vm, &["VM.Config.CDROM"])?;
                } else {
                    self.all(&vm, &["VM.Config.Disk"])?;
                }
            }
        } else if is_indexed(opt, "unused") && new.is_none() {
            self.all(&vm, &["VM.Config.Disk"])?;
            // Freeing the volume is a change on its storage too.
            if let Some((storage, _)) = old.and_then(|v| drive_file(v).split_once(':')) {
                self.all(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])?;
            }
        } else if is_indexed(opt, "serial") {
            let socket = |v: Option<&String>| v.is_none_or(|v| v == "socket");
            match new {
                None if old.is_some_and(|v| v == "socket") => {
                    self.all(&vm, &["VM.Config.HWType"])?
                }
                None => self.root_only(format!(
                    "only root can delete '{opt}' config for real devices"
                ))?,
                Some(n) if socket(old) && n == "socket" => self.all(&vm, &["VM.Config.HWType"])?,
                Some(_) => self.root_only(format!(
                    "only root can modify '{opt}' config for real devices"
                ))?,
            }
        } else if opt == "tags" {
            self.all(&vm, &["VM.Config.Options"])?;
        } else if is_indexed(opt, "net")
            && let Some((bridge, tag)) = old.and_then(|v| nic_bridge(v))
        {
            self.all(&vnet_path(world, bridge, tag), &["SDN.Use"])?;
        }
        Ok(())
    }
}

/// The guest owning a volume by its name (pve-storage `parse_volname`: `vm-100-disk-0`,
/// `base-100-disk-0`, `100/vm-100-disk-0.qcow2`, a linked clone's `base-100-disk-0/vm-101-...`
/// belongs to the clone), if any.
pub(crate) fn volume_owner(volume: &str) -> Option<u32> {
    let name = volume.split_once(':').map_or(volume, |(_, n)| n);
    let file = name.rsplit('/').next().unwrap_or(name);
    let rest = file
        .strip_prefix("vm-")
        .or_else(|| file.strip_prefix("base-"))?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[digits..]
        .starts_with('-')
        .then(|| rest[..digits].parse().ok())
        .flatten()
}

fn vm_path(vmid: u32) -> String {
    format!("/vms/{vmid}")
}

/// `/sdn/zones/<zone>/<vnet>[/<tag>]`; a plain Linux bridge is in zone `localnetwork`.
fn vnet_path(world: &dyn World, vnet: &str, tag: Option<&str>) -> String {
    let zone = world
        .zone_of(vnet)
        .unwrap_or_else(|| "localnetwork".to_owned());
    match tag {
        Some(t) => format!("/sdn/zones/{zone}/{vnet}/{t}"),
        None => format!("/sdn/zones/{zone}/{vnet}"),
    }
}

/// A NIC's bridge and VLAN tag from `virtio=MAC,bridge=X,tag=N,...`.
fn nic_bridge(value: &str) -> Option<(&str, Option<&str>)> {
    let mut bridge = None;
    let mut tag = None;
    for part in value.split(',') {
        if let Some(b) = part.strip_prefix("bridge=") {
            bridge = Some(b);
        } else if let Some(t) = part.strip_prefix("tag=") {
            tag = Some(t);
        }
    }
    Some((bridge?, tag))
}

/// PVE's `split_list`: whitespace, commas, semicolons and NULs separate; `cdrom` is `ide2`.
fn split_list(list: &str) -> Vec<&str> {
    list.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '\0'))
        .filter(|k| !k.is_empty())
        .map(|k| if k == "cdrom" { "ide2" } else { k })
        .collect()
}

/// `opt` is `base` followed by a number (`net0`, `unused3`).
fn is_indexed(opt: &str, base: &str) -> bool {
    opt.strip_prefix(base)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_disk_key(k: &str) -> bool {
    ["ide", "sata", "scsi", "virtio", "efidisk", "tpmstate"]
        .iter()
        .any(|b| is_indexed(k, b))
}

/// A drive's volume: the `file=` property, or the leading one written without its key.
fn drive_file(value: &str) -> &str {
    value
        .split(',')
        .find_map(|p| p.strip_prefix("file="))
        .or_else(|| value.split(',').next().filter(|p| !p.contains('=')))
        .unwrap_or_default()
}

/// qemu-server's `drive_is_cdrom`, as a drive value (`none,media=cdrom`, `cdrom`).
pub(crate) fn is_cdrom(value: &str) -> bool {
    value.split(',').any(|p| p == "media=cdrom") || drive_file(value) == "cdrom"
}

/// qemu-server's `drive_is_cloudinit`: the volume name ends in `[vm-N-]cloudinit[.fmt]`
/// after a `:` or `/` (`local-lvm:vm-105-cloudinit`, `local:105/vm-105-cloudinit.qcow2`).
fn is_cloudinit(value: &str) -> bool {
    let file = drive_file(value);
    if file == "cloudinit" {
        return true;
    }
    let Some(i) = file.rfind([':', '/']) else {
        return false;
    };
    let name = &file[i + 1..];
    let name = ["raw", "qcow2", "vmdk"]
        .iter()
        .find_map(|ext| name.strip_suffix(&format!(".{ext}")[..]))
        .unwrap_or(name);
    let name = name
        .strip_prefix("vm-")
        .and_then(|r| {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            (digits > 0 && r[digits..].starts_with('-')).then(|| &r[digits + 1..])
        })
        .unwrap_or(name);
    name == "cloudinit"
}

/// For a volume that asks for a new disk (`[storage:]size`, PVE's `NEW_DISK_RE`): its
/// storage, if named.
fn new_disk_storage(file: &str) -> Option<Option<&str>> {
    let (storage, size) = match file.split_once(':') {
        Some((s, size)) if !s.is_empty() && !s.contains(['/', ' ']) => (Some(s), size),
        Some(_) => return None,
        None => (None, file),
    };
    let (whole, frac) = size.split_once('.').unwrap_or((size, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(whole) && digits(frac)).then_some(storage)
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
    /// VM.Config.Options on the VM and Sys.Modify on `/`: it changes how the host boots.
    Startup,
    /// Sys.Console on `/` (`ha-managed`: it hands the VM to the HA stack).
    Console,
    /// Checked by value elsewhere (drives, serial/usb/PCI devices, tags).
    Elsewhere,
    /// Anything else: root@pam's alone, new options included.
    RootOnly,
}

fn config_key_rule(opt: &str) -> KeyRule {
    const ELSEWHERE: &[&str] = &["unused", "serial", "usb", "hostpci", "virtiofs"];
    if is_disk_key(opt) || opt == "cdrom" || opt == "tags" {
        return KeyRule::Elsewhere;
    }
    if ELSEWHERE.iter().any(|b| is_indexed(opt, b)) {
        return KeyRule::Elsewhere;
    }
    let privs: &'static [&'static str] = match opt {
        "cores" | "cpu" | "runningcpu" | "cpulimit" | "cpuunits" | "numa" | "smp" | "sockets"
        | "vcpus" => &["VM.Config.CPU"],
        _ if is_indexed(opt, "numa") => &["VM.Config.CPU"],
        "memory" | "balloon" | "shares" | "allow-ksm" => &["VM.Config.Memory"],
        "acpi" | "hotplug" | "kvm" | "machine" | "runningmachine" | "scsihw" | "smbios1"
        | "tablet" | "vga" | "watchdog" | "audio0" | "rng0" => &["VM.Config.HWType"],
        "startup" => return KeyRule::Startup,
        "ha-managed" => return KeyRule::Console,
        "agent" | "autostart" | "bios" | "description" | "keyboard" | "localtime"
        | "migrate_downtime" | "migrate_speed" | "name" | "onboot" | "ostype" | "protection"
        | "reboot" | "startdate" | "tdf" | "template" => &["VM.Config.Options"],
        "freeze" => &["VM.PowerMgmt"],
        "boot" | "bootdisk" | "vmstatestorage" => &["VM.Config.Disk"],
        "running-nets-host-mtu" => &["VM.Config.Network"],
        _ if is_indexed(opt, "net") => &["VM.Config.Network"],
        "cicustom" | "cipassword" | "citype" | "ciuser" | "ciupgrade" | "nameserver"
        | "searchdomain" | "sshkeys" => {
            return KeyRule::Privs(&["VM.Config.Cloudinit", "VM.Config.Network"], true);
        }
        _ if is_indexed(opt, "ipconfig") => {
            return KeyRule::Privs(&["VM.Config.Cloudinit", "VM.Config.Network"], true);
        }
        "vmstate" => &["VM.Config.Disk", "VM.PowerMgmt"],
        _ => return KeyRule::RootOnly,
    };
    KeyRule::Privs(privs, false)
}

/// For a `user: all` listing: the privileges (any one) an entry needs to be shown, keyed by
/// the entry's `type` for `/cluster/resources` (`None`: the route's every entry).
pub(crate) fn list_filter(
    route: &str,
    entry_type: Option<&str>,
) -> Option<&'static [&'static str]> {
    match (route, entry_type) {
        ("/cluster/resources", Some("qemu" | "lxc")) | ("/nodes/{node}/qemu", _) => {
            Some(&["VM.Audit"])
        }
        ("/cluster/resources", Some("storage")) => Some(&["Datastore.Audit"]),
        ("/nodes/{node}/storage", _) => Some(&["Datastore.Audit", "Datastore.AllocateSpace"]),
        ("/cluster/resources", Some("sdn" | "network")) => Some(&["SDN.Audit"]),
        ("/cluster/resources", Some("pool")) | ("/pools", _) => Some(&["Pool.Audit"]),
        (
            "/cluster/sdn/zones"
            | "/cluster/sdn/vnets"
            | "/cluster/sdn/vnets/{vnet}/subnets"
            | "/cluster/sdn/ipams/{ipam}/status",
            _,
        ) => Some(SDN_SEE),
        _ => None,
    }
}

/// The ACL path a listing's entry is checked on (`/vms/100`, `/storage/local`, ...).
pub(crate) fn entry_path(route: &str, entry: &serde_json::Value) -> String {
    let f = |k: &str| match &entry[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let vnet_path = || match (f("zone"), f("vnet")) {
        (z, v) if !z.is_empty() && !v.is_empty() => format!("/sdn/zones/{z}/{v}"),
        (z, _) => format!("/sdn/zones/{z}"),
    };
    match (route, entry["type"].as_str()) {
        ("/cluster/resources", Some("qemu" | "lxc")) | ("/nodes/{node}/qemu", _) => {
            format!("/vms/{}", f("vmid"))
        }
        ("/cluster/resources", Some("storage")) | ("/nodes/{node}/storage", _) => {
            format!("/storage/{}", f("storage"))
        }
        ("/cluster/resources", Some("node")) => format!("/nodes/{}", f("node")),
        ("/cluster/resources", Some("sdn" | "network")) => format!("/sdn/zones/{}", f("sdn")),
        ("/cluster/resources", Some("pool")) => format!("/pool/{}", f("pool")),
        ("/pools", _) => format!("/pool/{}", f("poolid")),
        ("/cluster/sdn/zones", _) => format!("/sdn/zones/{}", f("zone")),
        _ if route.starts_with("/cluster/sdn/") => vnet_path(),
        _ => "/".to_owned(),
    }
}

/// Evaluates `check` for `caller`; `path` overrides the test's own path (already resolved
/// by the handler) when not empty.
pub(crate) fn evaluate(
    check: &Check,
    caller: Caller<'_>,
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
        _ if caller.root => Ok(()),
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
                if caller.has_any_on(&path, privs) {
                    Ok(())
                } else {
                    Err(denied(Some(format!("{path}, {}", privs.join("|")))))
                }
            } else {
                match privs.iter().find(|p| !caller.has_any_on(&path, &[p])) {
                    None => Ok(()),
                    Some(p) => Err(denied(Some(format!("{path}, {p}")))),
                }
            }
        }
        Check::And(all) => all
            .iter()
            .try_for_each(|c| evaluate(c, caller, params, path)),
        Check::Or(one) => {
            if one
                .iter()
                .any(|c| evaluate(c, caller, params, path).is_ok())
            {
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

    fn token(held: &[String]) -> Caller<'_> {
        Caller {
            root: false,
            held: Some(held),
            acl: &[],
            user: "t@pve!x",
        }
    }

    /// A cluster with VM 105 (`current`) and vnet `vnetA` in zone `zoneA`.
    struct Fake(BTreeMap<String, String>);
    impl World for Fake {
        fn zone_of(&self, vnet: &str) -> Option<String> {
            (vnet == "vnetA").then(|| "zoneA".to_owned())
        }
        fn vm_config(&self, vmid: u32) -> Option<BTreeMap<String, String>> {
            (vmid == 105).then(|| self.0.clone())
        }
    }

    #[test]
    fn messages_name_the_path_and_the_missing_privilege() {
        let p = params(&[("vmid", "105"), ("newid", "200")]);
        let clone = required("POST", "/nodes/{node}/qemu/{vmid}/clone");
        let some = privs(&["VM.Allocate"]);
        let err = evaluate(&clone, token(&some), &p, "").unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (403, "Permission check failed (/vms/105, VM.Clone)")
        );
        // `or` answers bare, as PVE's raise_perm_exc() without an argument does.
        let only_clone = privs(&["VM.Clone"]);
        let err = evaluate(&clone, token(&only_clone), &p, "").unwrap_err();
        assert_eq!(err.message, "Permission check failed");
        let both = privs(&["VM.Clone", "VM.Allocate"]);
        assert!(evaluate(&clone, token(&both), &p, "").is_ok());
        // `any` lists every privilege that would have done.
        let audit = privs(&["VM.Audit"]);
        let err = evaluate(
            &required("POST", "/nodes/{node}/qemu/{vmid}/agent/file-write"),
            token(&audit),
            &p,
            "",
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "Permission check failed (/vms/105, VM.GuestAgent.FileWrite|VM.GuestAgent.Unrestricted)"
        );
        // Root-only methods: root@pam yes, its tokens and everyone else no.
        let root = Caller {
            root: true,
            held: Some(&both),
            acl: &[],
            user: "root@pam",
        };
        assert!(evaluate(&Check::RootOnly, root, &p, "").is_ok());
        let all = Caller {
            root: false,
            held: None,
            acl: &[],
            user: "root@pam!ci",
        };
        assert!(evaluate(&Check::RootOnly, all, &p, "").is_err());
    }

    fn update(
        method: &str,
        kv: &[(&str, &str)],
        held: &[&str],
        current: &[(&str, &str)],
    ) -> Result<(), Denied> {
        let mut kv = kv.to_vec();
        kv.push(("vmid", "105"));
        let held = privs(held);
        handler_check(
            method,
            "/nodes/{node}/qemu/{vmid}/config",
            &params(&kv),
            &Fake(params(current)),
            token(&held),
        )
    }

    #[test]
    fn each_config_key_needs_its_own_privilege() {
        let msg = |r: Result<(), Denied>| r.unwrap_err().error.message;
        assert!(update("PUT", &[("memory", "512")], &["VM.Config.Memory"], &[]).is_ok());
        assert_eq!(
            msg(update(
                "PUT",
                &[("memory", "512"), ("cores", "2")],
                &["VM.Config.Memory"],
                &[]
            )),
            "Permission check failed (/vms/105, VM.Config.CPU)"
        );
        // Deleting a key is changing it; `smbios1` is hardware.
        assert_eq!(
            msg(update(
                "PUT",
                &[("delete", "smbios1;memory")],
                &["VM.Config.Memory"],
                &[]
            )),
            "Permission check failed (/vms/105, VM.Config.HWType)"
        );
        // A cloud-init key takes either of two privileges; `startup` also takes Sys.Modify.
        assert!(
            update(
                "PUT",
                &[("ipconfig0", "ip=dhcp")],
                &["VM.Config.Network"],
                &[]
            )
            .is_ok()
        );
        assert_eq!(
            msg(update(
                "PUT",
                &[("startup", "order=1")],
                &["VM.Config.Options"],
                &[]
            )),
            "Permission check failed (/, Sys.Modify)"
        );
        // Keys no rule names are root's, with PVE's 500 (`affinity` among them).
        for key in ["args", "affinity", "hugepages"] {
            let err = update("PUT", &[(key, "1")], &["VM.Config.Options"], &[]).unwrap_err();
            assert_eq!(
                (err.error.status, err.error.message),
                (500, format!("only root can set '{key}' config"))
            );
        }
    }

    #[test]
    fn drives_serials_and_tags_are_checked_by_value_in_the_worker() {
        let all_config = [
            "VM.Config.Disk",
            "VM.Config.CPU",
            "VM.Config.Memory",
            "VM.Config.Options",
            "VM.Config.HWType",
            "VM.Config.Network",
        ];
        let current = [("ide2", "local-lvm:vm-105-cloudinit,media=cdrom")];
        // Deleting the cloud-init drive takes Cloudinit and CDROM, decided from its value,
        // and the async POST raises it inside its task.
        let err = update("POST", &[("delete", "ide2")], &all_config, &current).unwrap_err();
        assert!(err.in_worker);
        assert_eq!(
            err.error.message,
            "Permission check failed (/vms/105, VM.Config.Cloudinit)"
        );
        // The synchronous PUT answers the same thing directly.
        let err = update("PUT", &[("delete", "ide2")], &all_config, &current).unwrap_err();
        assert!(!err.in_worker);
        assert!(
            update(
                "PUT",
                &[("scsi1", "local-lvm:8")],
                &["VM.Config.Disk", "Datastore.AllocateSpace"],
                &[]
            )
            .is_ok()
        );
        assert_eq!(
            update("PUT", &[("scsi1", "local-lvm:8")], &["VM.Config.Disk"], &[])
                .unwrap_err()
                .error
                .message,
            "Permission check failed (/storage/local-lvm, Datastore.AllocateSpace)"
        );
        assert!(update("PUT", &[("serial0", "socket")], &["VM.Config.HWType"], &[]).is_ok());
        assert_eq!(
            update(
                "PUT",
                &[("serial0", "/dev/ttyS0")],
                &["VM.Config.HWType"],
                &[]
            )
            .unwrap_err()
            .error
            .message,
            "only root can modify 'serial0' config for real devices"
        );
        assert_eq!(
            update("PUT", &[("tags", "a;b")], &["VM.Config.Memory"], &[])
                .unwrap_err()
                .error
                .message,
            "Permission check failed (/vms/105, VM.Config.Options)"
        );
    }

    #[test]
    fn nics_need_sdn_use_on_the_new_and_the_old_vnet() {
        let net = ["VM.Config.Network"];
        let err = update(
            "PUT",
            &[("net0", "virtio=BC:24:11:00:00:01,bridge=vnetA,tag=7")],
            &net,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.error.message,
            "Permission check failed (/sdn/zones/zoneA/vnetA/7, SDN.Use)"
        );
        let current = [("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0")];
        let err = update("PUT", &[("delete", "net0")], &net, &current).unwrap_err();
        assert_eq!(
            err.error.message,
            "Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)"
        );
    }

    proptest::proptest! {
        /// The simulator faces whatever a client sends: no parameter value, however odd,
        /// may panic the checks (they slice strings by byte offsets).
        #[test]
        fn odd_values_never_panic(
            key in proptest::sample::select(vec![
                "net0", "scsi0", "ide2", "unused0", "serial0", "delete", "tags", "storage",
                "upid", "vnet", "disk", "start", "cicustom", "ha-managed",
            ]),
            value in "\\PC{0,40}",
            old in "\\PC{0,40}",
        ) {
            let held = privs(&["VM.Audit"]);
            let world = Fake(params(&[("scsi0", &old), ("ide2", &old), ("net0", &old)]));
            let p = params(&[("vmid", "105"), ("node", "pve1"), (key, &value)]);
            for (method, route) in [
                ("PUT", "/nodes/{node}/qemu/{vmid}/config"),
                ("POST", "/nodes/{node}/qemu/{vmid}/config"),
                ("POST", "/nodes/{node}/qemu"),
                ("POST", "/nodes/{node}/qemu/{vmid}/clone"),
                ("PUT", "/nodes/{node}/qemu/{vmid}/resize"),
                ("GET", "/nodes/{node}/tasks/{upid}/status"),
                ("PUT", "/cluster/sdn/vnets/{vnet}"),
            ] {
                let _ = handler_check(method, route, &p, &world, token(&held));
            }
            let _ = (is_cloudinit(&value), is_cdrom(&value), new_disk_storage(&value));
            let _ = (split_list(&value), nic_bridge(&value), drive_file(&value));
        }
    }

    #[test]
    fn volume_syntax() {
        assert_eq!(new_disk_storage("local-lvm:8"), Some(Some("local-lvm")));
        assert_eq!(new_disk_storage("4.5"), Some(None));
        assert_eq!(new_disk_storage("local-lvm:vm-100-disk-0"), None);
        assert_eq!(new_disk_storage("local:inf"), None);
        assert_eq!(new_disk_storage("local:-1"), None);
        assert_eq!(drive_file("file=local-lvm:8,size=8G"), "local-lvm:8");
        assert_eq!(split_list("a, b;c\0cdrom"), ["a", "b", "c", "ide2"]);
        for ci in [
            "local-lvm:vm-105-cloudinit,media=cdrom",
            "local:105/vm-105-cloudinit.qcow2,media=cdrom",
            "local-lvm:cloudinit",
        ] {
            assert!(is_cloudinit(ci), "{ci}");
        }
        for not in [
            "local:iso/cloudinit-seed.iso,media=cdrom",
            "local-lvm:vm-105-disk-0",
        ] {
            assert!(!is_cloudinit(not), "{not}");
        }
    }
}
