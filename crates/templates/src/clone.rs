//! Cloning a template into a sandbox VM: the clone, one config call, and a resize when asked.

use pve_client::{CloneOptions, Params, PveClient, Vmid, WaitOptions};

use crate::{NicController, OsType, Result, Template};

/// One NIC of a clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// Bridge or vnet.
    pub bridge: String,
    /// Model.
    pub model: NicController,
    /// Fixed MAC (upper-cased when sent), or PVE's generated one.
    pub mac: Option<String>,
    /// PVE firewall on this NIC (`firewall=1`).
    pub firewall: bool,
}

impl NicSpec {
    /// The `netN` value.
    pub fn to_config(&self) -> String {
        let mut v = match &self.mac {
            Some(mac) => format!("{}={}", self.model.model(), mac.to_ascii_uppercase()),
            None => self.model.model().to_owned(),
        };
        v.push_str(&format!(",bridge={}", self.bridge));
        if self.firewall {
            v.push_str(",firewall=1");
        }
        v
    }
}

/// What a sandbox VM looks like; applied to the clone in one config call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSpec {
    /// Id of the new VM (allocate it by creating; see `pvesandbox-pool`'s `VmidAllocator`).
    pub newid: Vmid,
    /// Name (`dns-name`).
    pub name: Option<String>,
    /// Full copy instead of a linked clone (default: linked).
    pub full: bool,
    /// Target storage of a full clone.
    pub storage: Option<String>,
    /// Resource pool.
    pub pool: Option<String>,
    /// Memory in MiB (the peer's `ram_mb`, default 2048).
    pub memory_mb: u32,
    /// Cores (the peer's `vcpus`, default 2).
    pub cores: u32,
    /// CPU model (`None`: the template's).
    pub cpu: Option<String>,
    /// OS type (`None`: the template's).
    pub os_type: Option<OsType>,
    /// UEFI boot with an EFI vars disk on this storage (`efidisk0` + `bios=ovmf`).
    pub uefi: Option<String>,
    /// NICs: `None` keeps the template's, `Some(vec![])` removes them all.
    pub nics: Option<Vec<NicSpec>>,
    /// Guest agent on or off (`None`: the template's).
    pub agent: Option<bool>,
    /// Tags (`;`-joined).
    pub tags: Vec<String>,
    /// Description.
    pub description: Option<String>,
    /// Boot disk size in GiB; grown when bigger than the template's, never shrunk.
    pub disk_gib: Option<u64>,
    /// Further config keys set in the same call (e.g. `sata5=none,media=cdrom`).
    pub extra: Vec<(String, String)>,
}

impl CloneSpec {
    /// A linked clone with the peer's defaults: 2048 MiB, 2 cores, everything else kept.
    pub fn new(newid: Vmid) -> Self {
        CloneSpec {
            newid,
            name: None,
            full: false,
            storage: None,
            pool: None,
            memory_mb: 2048,
            cores: 2,
            cpu: None,
            os_type: None,
            uefi: None,
            nics: None,
            agent: None,
            tags: Vec::new(),
            description: None,
            disk_gib: None,
            extra: Vec::new(),
        }
    }
}

/// What [`clone_template`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneOutcome {
    /// The new VM.
    pub vmid: Vmid,
    /// Whether the boot disk was grown.
    pub resized: bool,
    /// REST calls made, task polls included.
    pub rest_calls: u32,
}

/// Clones `template` into `spec.newid` and configures it: `POST clone` (waited), one config
/// call (`PUT`, synchronous; `POST` and a wait when UEFI allocates an EFI disk), and `PUT
/// resize` (waited) only when `spec.disk_gib` exceeds the template's disk. Call it while
/// holding the storage's clone permit: PVE serialises clones of one template badly.
pub async fn clone_template(
    pve: &PveClient,
    template: &Template,
    spec: &CloneSpec,
    wait: WaitOptions,
) -> Result<CloneOutcome> {
    let upid = start_clone(pve, template, spec).await?;
    finish_clone(pve, template, spec, &upid, wait).await
}

/// The first half of [`clone_template`]: only `POST clone`, which claims `spec.newid`
/// (name, description, pool and storage go with it). Its error is PVE's own, so a VM-id
/// allocator can tell "id taken" (`is_already_exists`) from a real failure.
pub async fn start_clone(
    pve: &PveClient,
    template: &Template,
    spec: &CloneSpec,
) -> std::result::Result<pve_client::Upid, pve_client::Error> {
    let mut opts = CloneOptions::new(spec.newid);
    opts.name = spec.name.clone();
    opts.pool = spec.pool.clone();
    opts.description = spec.description.clone();
    if spec.full {
        opts.full = Some(true);
        opts.storage = spec.storage.clone();
    }
    pve.node(&template.node)
        .qemu(template.vmid)
        .clone_vm(&opts)
        .await
}

/// The second half of [`clone_template`]: waits for the clone task `upid`, then configures
/// and resizes as `spec` says ([`configure_clone`]).
pub async fn finish_clone(
    pve: &PveClient,
    template: &Template,
    spec: &CloneSpec,
    upid: &pve_client::Upid,
    wait: WaitOptions,
) -> Result<CloneOutcome> {
    let polls = wait_counting(pve, upid, wait).await?;
    let mut out = configure_clone(pve, template, spec, wait).await?;
    out.rest_calls += polls;
    Ok(out)
}

/// Configures and resizes a clone whose task has ended, as `spec` says: for callers that
/// waited for the clone themselves (to hold a storage's clone permit exactly that long).
/// `wait` bounds the configuration's own tasks; `rest_calls` counts the clone call too.
pub async fn configure_clone(
    pve: &PveClient,
    template: &Template,
    spec: &CloneSpec,
    wait: WaitOptions,
) -> Result<CloneOutcome> {
    let node = pve.node(&template.node);
    let mut calls = 1u32;
    let vm = node.qemu(spec.newid);
    let mut p = Params::new()
        .with("memory", spec.memory_mb)
        .with("cores", spec.cores);
    if let Some(cpu) = &spec.cpu {
        p.push("cpu", cpu.as_str());
    }
    if let Some(os) = spec.os_type {
        p.push("ostype", os.as_str());
    }
    if let Some(a) = spec.agent {
        p.push("agent", if a { "enabled=1" } else { "enabled=0" });
    }
    if !spec.tags.is_empty() {
        p.push("tags", spec.tags.join(";"));
    }
    let mut delete = Vec::new();
    if let Some(nics) = &spec.nics {
        for (i, n) in nics.iter().enumerate() {
            p.push(&format!("net{i}"), n.to_config());
        }
        delete.extend(
            template
                .nics
                .iter()
                .filter(|k| {
                    k.strip_prefix("net")
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| n >= nics.len())
                })
                .cloned(),
        );
    }
    if let Some(storage) = &spec.uefi {
        p.push(
            "efidisk0",
            format!("{storage}:1,efitype=4m,pre-enrolled-keys=0"),
        );
        p.push("bios", "ovmf");
    }
    for (k, v) in &spec.extra {
        p.push(k, v.as_str());
    }
    if !delete.is_empty() {
        p.push("delete", delete.join(","));
    }
    if spec.uefi.is_some() {
        // Allocating the EFI disk needs the asynchronous setter.
        let upid = vm.update_config_async(&p).await?;
        calls += 1;
        if let Some(upid) = upid {
            calls += wait_counting(pve, &upid, wait).await?;
        }
    } else {
        vm.update_config(&p).await?;
        calls += 1;
    }
    let mut resized = false;
    if let Some(gib) = spec.disk_gib {
        let want = gib << 30;
        if template.disk_bytes.is_none_or(|have| want > have) {
            let upid = vm.resize(&template.boot_disk, &format!("{gib}G")).await?;
            calls += 1;
            calls += wait_counting(pve, &upid, wait).await?;
            resized = true;
        }
    }
    Ok(CloneOutcome {
        vmid: spec.newid,
        resized,
        rest_calls: calls,
    })
}

/// Waits for a task and returns how many status polls it took.
async fn wait_counting(pve: &PveClient, upid: &pve_client::Upid, wait: WaitOptions) -> Result<u32> {
    Ok(pve.wait_task_counted(upid, wait).await?.1)
}
