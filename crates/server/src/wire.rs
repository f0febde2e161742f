//! OpenSandbox's JSON, as `sandbox-lifecycle.yml` and `execd-api.yaml` define it and the SDK
//! 1.1.1 really parses it: optional fields are omitted, never `null` (the SDK's generated
//! `from_dict` fails on `null`), times are RFC 3339, and every name is the spec's camelCase.
//! These types are the server's own; the fleet's types are converted at the edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes` (fields we do not act on are accepted and ignored, as the spec's
/// "runtime may ignore" allows; `volumes`, `platform` and a `networkPolicy` other than what
/// is enforced are refused, since silently dropping them would lie).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandboxRequest {
    /// The image: a built-in, or `pve-template:<tag>`.
    pub image: Option<ImageSpec>,
    /// Seconds until the reaper removes it; `None` is manual cleanup.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// `cpu`, `memory` (Kubernetes quantities).
    #[serde(default)]
    pub resource_limits: BTreeMap<String, String>,
    /// Environment of every command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Labels for filtering.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Started in the background once the sandbox runs (the idle default is skipped).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Scheduling constraint: only linux/amd64 is served.
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    /// Volumes: not served.
    #[serde(default)]
    pub volumes: Option<serde_json::Value>,
    /// Restoring from a snapshot: not served yet.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Egress rules: only the policy the hypervisor already enforces is accepted.
    #[serde(default)]
    pub network_policy: Option<NetworkPolicy>,
}

/// `networkPolicy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// `allow` or `deny`.
    #[serde(default)]
    pub default_action: Option<String>,
    /// Rules in order.
    #[serde(default)]
    pub egress: Vec<serde_json::Value>,
}

/// `image`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImageSpec {
    /// What to boot.
    pub uri: String,
}

/// `platform`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PlatformSpec {
    /// `linux` or `windows`.
    pub os: String,
    /// `amd64` or `arm64`.
    pub arch: String,
}

/// `Sandbox` (also the create response, which is a subset of it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Its id (`s<n>.<run>`, the tail of its VM names in Proxmox).
    pub id: String,
    /// What it was created from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Where it is in its life.
    pub status: SandboxStatus,
    /// Its labels (omitted when empty).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The entrypoint it was given.
    pub entrypoint: Vec<String>,
    /// When the reaper removes it (omitted for manual cleanup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was asked for.
    pub created_at: String,
}

/// `SandboxStatus`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `Pending`, `Running`, `Pausing`, `Paused`, `Resuming`, `Stopping`, `Terminated`,
    /// `Failed`.
    pub state: &'static str,
    /// Machine-readable why (`provision_failed`, `ttl_expiry`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the state last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_at: Option<String>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Serialize)]
pub struct ListSandboxesResponse {
    /// This page.
    pub items: Vec<Sandbox>,
    /// Where it is.
    pub pagination: Pagination,
}

/// `PaginationInfo`: every field is required by the SDK.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    /// 1-based.
    pub page: usize,
    /// Items per page.
    pub page_size: usize,
    /// Items over all pages.
    pub total_items: usize,
    /// Pages.
    pub total_pages: usize,
    /// Whether another page follows.
    pub has_next_page: bool,
}

/// `POST /v1/sandboxes/{id}/renew-expiration`, both ways.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Expiration {
    /// RFC 3339.
    pub expires_at: String,
}

/// `Endpoint`.
#[derive(Debug, Serialize)]
pub struct Endpoint {
    /// `host[:port][/path]`, no scheme.
    pub endpoint: String,
    /// Headers the client must send to it.
    pub headers: BTreeMap<String, String>,
}

/// `ErrorResponse`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// `INVALID_REQUEST`, `NOT_FOUND`, ...
    pub code: String,
    /// What went wrong and, where it is the caller's, how to fix it.
    pub message: String,
}

/// execd `POST /command`.
#[derive(Debug, Deserialize)]
pub struct RunCommand {
    /// A shell command line (`sh -c`).
    #[serde(default)]
    pub command: Option<String>,
    /// Or an argv (the SDK's list form).
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Start it and return at once.
    #[serde(default)]
    pub background: bool,
    /// Milliseconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Extra environment.
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
}

/// `POST session`'s body (optional).
#[derive(Debug, Default, Deserialize)]
pub struct CreateSession {
    /// The session's working directory.
    #[serde(default)]
    pub cwd: Option<String>,
}

/// `POST session/{id}/run`'s body.
#[derive(Debug, Deserialize)]
pub struct RunInSession {
    /// A shell command line, run by the session's shell itself.
    pub command: String,
    /// Working directory for this run (and, as a `cd` in the session, the next ones).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Milliseconds; a run killed by it ends its session.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// One frame of the command stream (`data: {json}`): `type` and an integer `timestamp` are
/// what the SDK needs on every event, or it drops the event.
#[derive(Debug, Serialize)]
pub struct StreamEvent {
    /// `init`, `stdout`, `stderr`, `error`, `execution_complete`, `ping`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// `init`: the execution id; `stdout`/`stderr`: one line without its newline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `execution_complete`: milliseconds the command took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<u64>,
    /// `error`: the exit code travels in `evalue`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StreamError>,
}

/// The `error` of a [`StreamEvent`].
#[derive(Debug, Serialize)]
pub struct StreamError {
    /// `CommandExecError`.
    pub ename: &'static str,
    /// The exit code (`-1` when a timeout killed it), or a start failure's message.
    pub evalue: String,
    /// `exit status N`.
    pub traceback: Vec<String>,
}

/// The metadata part of a multipart upload.
#[derive(Debug, Deserialize)]
pub struct UploadMeta {
    /// Where the file goes.
    pub path: String,
    /// Permission bits as octal digits written in decimal (`755`).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// execd's `FileInfo`: every field but `type` is required by the SDK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileInfo {
    /// Absolute path.
    pub path: String,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Bytes (a directory's own size, as `stat` reports it).
    pub size: u64,
    /// RFC 3339.
    pub modified_at: String,
    /// RFC 3339 (the inode change time: Linux keeps no portable creation time, and execd
    /// reports the same).
    pub created_at: String,
    /// User name, or the numeric uid when the guest has no name for it.
    pub owner: String,
    /// Group name, or the numeric gid.
    pub group: String,
    /// Permission bits as octal digits written in decimal (`644`, `1777`).
    pub mode: u32,
}

/// execd's `Permission`, the value of each entry of `POST directories` and
/// `POST files/permissions` (the SDK sends `owner` and `group` as `null` when unset).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Permission {
    /// Octal digits written in decimal (`755`).
    #[serde(default)]
    pub mode: Option<u32>,
    /// A user name or uid.
    #[serde(default)]
    pub owner: Option<String>,
    /// A group name or gid.
    #[serde(default)]
    pub group: Option<String>,
}

/// execd's `RenameFileItem`.
#[derive(Debug, Clone, Deserialize)]
pub struct RenameItem {
    /// What to move.
    pub src: String,
    /// Where to.
    pub dest: String,
}

/// execd's `ReplaceFileContentItem`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReplaceItem {
    /// The literal text to replace (not empty).
    pub old: String,
    /// What replaces it.
    pub new: String,
}

/// execd's `ReplaceFileContentResult`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaceResult {
    /// Occurrences replaced; 0 when the text was not found.
    pub replaced_count: u64,
}
