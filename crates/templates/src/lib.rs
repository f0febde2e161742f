//! VM templates on Proxmox VE: where sandbox VMs are cloned from.
//!
//! - [`VmSource`] reads the peer's `vm_source_config` unchanged: a built-in image
//!   ([`BuiltIn`]: `ubuntu24.04`, `debian13`, `kali2025.4`), a local OVA, or an existing template
//!   found by tag.
//! - [`Templates::ensure_template`] returns the template for a source, building it when
//!   missing. Built-ins come from dated URLs with pinned checksums ([`ImageCatalog`],
//!   overridable by mirror or per image), fetched by PVE itself (`download-url`, checksum
//!   checked by PVE) or, for archives PVE cannot import, downloaded, unpacked and uploaded by
//!   us, cached locally by checksum. OVAs are hashed (SHA-256) and cached by content, not by
//!   name and size.
//! - A bake boots the imported disk with a NoCloud seed that installs the QEMU guest agent
//!   ([`NoCloudSeed`]), waits for the agent and `cloud-init status --wait`, cleans cloud-init's
//!   per-instance state and machine id, shuts down, detaches the seed and NICs, and only then
//!   converts the VM into a template.
//! - Several processes may ask for the same template at once: the VM id of a template is
//!   derived from its key (probing upwards past foreign VMs), so creating the claim VM (tags
//!   `pvesandbox`, `tpl-<key>`, `building`, `bs-<unix start>`) is the atomic claim; whoever
//!   finds the id taken waits for that VM to become a template, and takes over a claim older
//!   than [`TemplateConfig::stale_after`]. Two claims of one key at different ids (possible
//!   only if a foreign VM in the probe window vanished mid-race) are settled by the lowest id.
//! - [`clone_template`] makes a sandbox VM: a linked clone by default, then one config call
//!   (memory, cores, CPU, OS type, NICs, tags, UEFI) and a resize only when the requested disk
//!   is bigger than the template's. Per-storage clone serialisation is the caller's.
//! - [`Templates::gc`] removes our templates and image files no source refers to; it never
//!   touches VMs without the `pvesandbox` tag or files without the `pvesandbox-` prefix.
//!
//! Progress ([`Progress`]) goes to a caller callback, for progress bars.

mod build;
mod clone;
mod error;
mod fetch;
mod gc;
mod images;
mod progress;
mod seed;
mod source;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use pve_client::{PveClient, VmEntry, Vmid};

pub use clone::{
    CloneOutcome, CloneSpec, NicSpec, clone_template, configure_clone, finish_clone, start_clone,
};
pub use error::{Error, Result};
pub use gc::GcReport;
pub use images::{Checksum, ChecksumAlgorithm, ImageCatalog, ImageFormat, ImageSpec};
pub use progress::{Phase, Progress, ProgressEvent, ProgressFn};
pub use seed::NoCloudSeed;
pub use source::{
    BakeOptions, BuiltIn, DiskController, NicController, OsType, VmSource, VmSourceConfig,
};

/// Tag on every VM this crate creates.
pub const TAG: &str = "pvesandbox";
/// Tag on a template (or claim) while it is being built.
pub const BUILDING_TAG: &str = "building";
/// Prefix of the tag naming a template's key (`tpl-<key>`).
pub const KEY_TAG_PREFIX: &str = "tpl-";
/// Prefix of every file this crate puts on a storage.
pub const FILE_PREFIX: &str = "pvesandbox-";
/// Prefix of the tag holding a build's start (Unix seconds).
const STARTED_TAG_PREFIX: &str = "bs-";

/// The storage images are downloaded and imported to unless configured otherwise (PVE's
/// `local` dir storage, the only one a stock install has for files).
pub const DEFAULT_FILE_STORAGE: &str = "local";

/// Where and how templates are built.
#[derive(Debug, Clone)]
pub struct TemplateConfig {
    /// Node that holds the templates.
    pub node: String,
    /// Storage for VM disks (the peer's `image_storage`, e.g. `local-lvm`).
    pub image_storage: String,
    /// File storage for downloaded images and seed ISOs (needs `import` and `iso` content,
    /// e.g. `local`).
    pub file_storage: String,
    /// Bridge or vnet the bake VM's NIC joins; it needs DHCP and a way to the distribution
    /// mirrors (cloud-init installs the agent from them).
    pub bake_bridge: String,
    /// VM ids for templates. A template's id is derived from its key inside this range.
    pub vmid_range: RangeInclusive<u32>,
    /// Local cache for client-side downloads (unpacked archives).
    pub cache_dir: PathBuf,
    /// The built-in images.
    pub images: ImageCatalog,
    /// Packages the bake installs besides `qemu-guest-agent`.
    pub packages: Vec<String>,
    /// Memory of the bake VM (MiB).
    pub bake_memory_mb: u32,
    /// Cores of the bake VM.
    pub bake_cores: u32,
    /// A claim whose build started longer ago than this is taken over.
    pub stale_after: Duration,
    /// How long to wait for another process's build.
    pub wait_timeout: Duration,
    /// How long a bake waits for the guest agent after the start.
    pub agent_timeout: Duration,
    /// How long `cloud-init status --wait` may take (package installation).
    pub cloud_init_timeout: Duration,
    /// How long one PVE task (download, import, shutdown) may take.
    pub task_timeout: Duration,
}

impl TemplateConfig {
    /// Defaults for `node`: disks on `local-lvm`, files on `local`, bake NIC on `vmbr0`, ids
    /// 9000..=9999, cache under the system temp dir, the pinned images, Python for Inspect,
    /// 2 GiB / 2 cores to bake, claims stale after 2 h.
    pub fn new(node: impl Into<String>) -> Self {
        TemplateConfig {
            node: node.into(),
            image_storage: "local-lvm".into(),
            file_storage: DEFAULT_FILE_STORAGE.into(),
            bake_bridge: "vmbr0".into(),
            vmid_range: 9000..=9999,
            cache_dir: std::env::temp_dir().join("pvesandbox-images"),
            images: ImageCatalog::pinned(),
            packages: [
                "python3",
                "python3-pip",
                "python3-venv",
                "python-is-python3",
            ]
            .map(String::from)
            .to_vec(),
            bake_memory_mb: 2048,
            bake_cores: 2,
            stale_after: Duration::from_secs(2 * 3600),
            wait_timeout: Duration::from_secs(3 * 3600),
            agent_timeout: Duration::from_secs(15 * 60),
            cloud_init_timeout: Duration::from_secs(30 * 60),
            task_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// A template VM, as found by [`Templates::ensure_template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Its VM id.
    pub vmid: Vmid,
    /// Node it is on.
    pub node: String,
    /// Its key (`ubuntu24.04-513a22ebe3`), or the tag of an existing template.
    pub key: String,
    /// Its PVE tags.
    pub tags: Vec<String>,
    /// Its boot disk key (`scsi0`, `ide0`).
    pub boot_disk: String,
    /// Size of its disks in bytes, when PVE reported it (`maxdisk`).
    pub disk_bytes: Option<u64>,
    /// NIC keys it has (`net0`, ...); ours have none, a user's may.
    pub nics: Vec<String>,
}

impl Template {
    /// The `tpl-<key>` tag of a template of ours.
    pub fn key_tag(&self) -> String {
        format!("{KEY_TAG_PREFIX}{}", self.key)
    }
}

/// Builds, finds and garbage-collects templates on one node.
#[derive(Debug)]
pub struct Templates {
    pve: PveClient,
    cfg: TemplateConfig,
    /// OVA digests by (path, size, mtime): an OVA is hashed once per process.
    ova_digests: Mutex<HashMap<(PathBuf, u64, SystemTime), String>>,
}

impl Templates {
    /// Templates on `cfg.node`, through `pve`.
    pub fn new(pve: PveClient, cfg: TemplateConfig) -> Self {
        Templates {
            pve,
            cfg,
            ova_digests: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TemplateConfig {
        &self.cfg
    }

    /// The template for `source`, built with default [`BakeOptions`] when missing. When it
    /// exists this is one listing and one config read, which tells a converted template from
    /// one PVE has flagged `template` but whose disks it is still converting (plus hashing an
    /// OVA the first time in a process).
    pub async fn ensure_template(
        &self,
        source: &VmSource,
        progress: ProgressFn<'_>,
    ) -> Result<Template> {
        self.ensure_template_with(source, &BakeOptions::default(), progress)
            .await
    }

    /// [`Templates::ensure_template`] with explicit options for imported (OVA) templates;
    /// built-ins ignore them. Options other than the default are part of the template key.
    pub async fn ensure_template_with(
        &self,
        source: &VmSource,
        opts: &BakeOptions,
        progress: ProgressFn<'_>,
    ) -> Result<Template> {
        build::ensure(self, source, opts, progress).await
    }

    /// The template key of `source` (what its `tpl-<key>` tag carries). Hashes an OVA.
    pub async fn key_of(&self, source: &VmSource, opts: &BakeOptions) -> Result<String> {
        Ok(build::Plan::of(self, source, opts, &|_| {}).await?.key)
    }

    /// Removes our templates and files that no source in `keep` needs (see [`GcReport`]).
    pub async fn gc(&self, keep: &[VmSource]) -> Result<GcReport> {
        gc::run(self, keep).await
    }
}

/// The tags of a listing entry.
pub(crate) fn tags_of(e: &VmEntry) -> Vec<String> {
    e.tag_list().into_iter().map(str::to_owned).collect()
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Callers spawn these on a multi-threaded runtime: the futures must be `Send`.
    #[test]
    fn the_public_futures_are_send() {
        let pve = PveClient::builder()
            .base_url("https://127.0.0.1:1")
            .api_token("root@pam!x", "00000000-0000-0000-0000-000000000000")
            .build()
            .unwrap();
        let t = Templates::new(pve.clone(), TemplateConfig::new("pve1"));
        let src = VmSource::BuiltIn(BuiltIn::Debian13);
        assert_send(&t.ensure_template(&src, &|_| {}));
        assert_send(&t.gc(&[]));
        let tpl = Template {
            vmid: Vmid(9000),
            node: "pve1".into(),
            key: "k".into(),
            tags: vec![],
            boot_disk: "scsi0".into(),
            disk_bytes: None,
            nics: vec![],
        };
        let spec = CloneSpec::new(Vmid(100));
        assert_send(&clone_template(
            &pve,
            &tpl,
            &spec,
            pve_client::WaitOptions::with_timeout(Duration::from_secs(1)),
        ));
    }
}
