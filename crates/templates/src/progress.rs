//! Progress events for the CLI's progress bars, delivered to a caller callback.

use pve_client::Vmid;

/// One step of [`crate::Templates::ensure_template`]. Every event names the template key, so
/// one callback can drive a bar per template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The template key (`ubuntu24.04-513a22ebe3`, `ova-...`).
    pub key: String,
    /// What happened.
    pub event: ProgressEvent,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressEvent {
    /// A new phase began.
    Phase(Phase),
    /// Bytes of a download or upload so far; `total` when known.
    Bytes {
        /// What moves: `download`, `hash`, `extract` or `upload`.
        what: &'static str,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: Option<u64>,
    },
}

/// Phases of getting a template.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Hashing a local OVA to find its cache key.
    Hashing,
    /// We claimed the build: VM `vmid` carries the `building` tag.
    Claimed {
        /// The claim VM.
        vmid: Vmid,
    },
    /// Another process builds it; we wait for VM `vmid`.
    WaitingForOtherBuilder {
        /// The other process's claim VM.
        vmid: Vmid,
    },
    /// The other builder's claim went stale; we remove it and take over.
    TakingOver {
        /// The stale claim.
        vmid: Vmid,
    },
    /// The image is already in storage: no download.
    ImageCached {
        /// Its volume id.
        volid: String,
    },
    /// PVE downloads the image itself (`download-url`).
    ServerDownload {
        /// The URL.
        url: String,
    },
    /// We download the image (it needs unpacking before PVE can import it).
    ClientDownload {
        /// The URL.
        url: String,
    },
    /// Unpacking a downloaded archive.
    Extracting,
    /// Uploading a file to the storage.
    Uploading {
        /// The target file name.
        filename: String,
    },
    /// Importing the disks into the template VM.
    ImportingDisks,
    /// Booting with the NoCloud seed.
    Booting,
    /// Waiting for the guest agent.
    WaitingForAgent,
    /// `cloud-init status --wait` inside the guest.
    CloudInit,
    /// Shutting the VM down.
    ShuttingDown,
    /// Converting the VM into a template.
    Sealing,
    /// The template is ready.
    Ready {
        /// The template VM.
        vmid: Vmid,
    },
}

/// A progress callback. `&|_| {}` ignores everything.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);
