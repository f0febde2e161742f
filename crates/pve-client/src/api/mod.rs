//! Typed calls, grouped the way the API tree is: cluster-wide, per node, per VM, per storage.
//!
//! Handles borrow the client: `client.node("pve1").qemu(vmid).start().await`. Each method is
//! one REST call and returns what PVE returns (a [`Upid`](crate::Upid) for async operations).

mod cluster;
mod node;
mod qemu;
mod storage;

pub use node::NodeApi;
pub use qemu::{CloneOptions, DestroyOptions, QemuApi, ShutdownOptions};
pub use storage::{DownloadUrl, StorageApi, Upload};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Path-segment encoding: PVE accepts `:` raw in UPIDs, but a strict encoder is always safe.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment.
pub(crate) fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub(crate) fn upid_of(
    method: crate::Method,
    path: &str,
    v: serde_json::Value,
) -> crate::Result<crate::Upid> {
    crate::client::decode(method, path, v)
}
