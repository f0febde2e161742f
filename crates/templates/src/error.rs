//! The crate's one error type.

use pve_client::Vmid;

/// What went wrong; every variant names the thing concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable.
    #[error("invalid {field}: {message}")]
    Config {
        /// The config field (`vm_source_config`, `images.ubuntu24.04.url`, ...).
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A PVE call failed.
    #[error(transparent)]
    Pve(#[from] pve_client::Error),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A client-side download failed.
    #[error("downloading {url}: {message}")]
    Download {
        /// The URL (never carries credentials: it comes from our config).
        url: String,
        /// The cause.
        message: String,
    },
    /// A downloaded or local file does not have the pinned checksum.
    #[error(
        "{what}: checksum mismatch: got {got}, expected {expected} (fix the pinned checksum or the mirror)"
    )]
    Checksum {
        /// URL or path.
        what: String,
        /// The digest computed.
        got: String,
        /// The pinned digest.
        expected: String,
    },
    /// An OVA or archive does not contain what it should.
    #[error("{path}: {message}")]
    BadImage {
        /// The file.
        path: String,
        /// What is missing.
        message: String,
    },
    /// No template carries the tag of an `existing_vm_template_tag` source.
    #[error(
        "no template tagged '{tag}' on node {node} (existing_vm_template_tag: tag a template with it, or fix the tag)"
    )]
    TemplateNotFound {
        /// The tag.
        tag: String,
        /// The node searched.
        node: String,
    },
    /// The template VM of a bake never got a guest agent, or cloud-init failed.
    #[error("template {key} (VM {vmid}): {message}")]
    Bake {
        /// The template key.
        key: String,
        /// The VM being baked.
        vmid: Vmid,
        /// What failed.
        message: String,
    },
    /// Waiting for another process's bake, or for a guest, took longer than allowed.
    #[error("template {key}: timed out after {secs} s {waiting_for}")]
    Timeout {
        /// The template key.
        key: String,
        /// What we waited for.
        waiting_for: String,
        /// Seconds waited.
        secs: u64,
    },
    /// Every VM id in the configured range is taken.
    #[error(
        "no free VM id in the template range {start}..={end} (vmid_range: widen it or remove unused VMs)"
    )]
    NoFreeVmid {
        /// First id.
        start: u32,
        /// Last id.
        end: u32,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}
