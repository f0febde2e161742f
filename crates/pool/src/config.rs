//! Instance configuration: the peer's JSON instances file, as-is, plus our additions.
//!
//! ```json
//! {"instances": [{"instance_id": "a", "pool_id": "default", "host": "pve.example", "port": 8006,
//!   "user": "root", "user_realm": "pam", "password": "...", "node": "pve1",
//!   "verify_tls": true, "image_storage": "local-lvm", "extra_headers": []}]}
//! ```
//!
//! Our additions (all optional): `token_id` + `token_secret` (API token instead of the
//! password), `fingerprint` (pin the certificate), `ca_file`, `max_samples` (samples at once;
//! 1 reproduces the peer's one-sample-per-host), `ram_mb` and `vcpus` budgets, `vmid_range`
//! (`"9100-9199"` or `[9100, 9199]`), and `task_polling` (`learned` or `doubling`).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use pve_client::{PveClient, Secret, Vmid};
use serde::Deserialize;

use crate::PoolError;

/// One header added to every request (the peer's `HttpHeader`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct HttpHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// An inclusive range of VM ids this instance may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmidRange {
    /// First id.
    pub start: u32,
    /// Last id (inclusive).
    pub end: u32,
}

impl VmidRange {
    /// A checked range within PVE's 100..=999999999.
    pub fn new(start: u32, end: u32) -> Result<Self, String> {
        if start < Vmid::MIN || end > Vmid::MAX || start > end {
            return Err(format!(
                "vmid_range {start}-{end}: must satisfy 100 <= start <= end <= 999999999"
            ));
        }
        Ok(VmidRange { start, end })
    }
    /// As a Rust range.
    pub fn range(&self) -> RangeInclusive<u32> {
        self.start..=self.end
    }
    /// How many ids it holds.
    pub fn len(&self) -> u64 {
        u64::from(self.end - self.start) + 1
    }
    /// Never true for a valid range; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Default for VmidRange {
    /// 100 000 – 199 999: clear of the low ids people create by hand.
    fn default() -> Self {
        VmidRange {
            start: 100_000,
            end: 199_999,
        }
    }
}

impl<'de> Deserialize<'de> for VmidRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Pair([u32; 2]),
        }
        let (a, b) = match Raw::deserialize(d)? {
            Raw::Pair([a, b]) => (a, b),
            Raw::Text(s) => {
                let (a, b) = s.split_once('-').ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "vmid_range {s:?}: write it as \"START-END\", e.g. \"9100-9199\""
                    ))
                })?;
                let p = |x: &str| {
                    x.trim().parse::<u32>().map_err(|_| {
                        serde::de::Error::custom(format!("vmid_range {s:?}: {x:?} is not a number"))
                    })
                };
                (p(a)?, p(b)?)
            }
        };
        VmidRange::new(a, b).map_err(serde::de::Error::custom)
    }
}

fn default_port() -> u16 {
    8006
}
fn default_true() -> bool {
    true
}
fn default_storage() -> String {
    "local-lvm".into()
}

/// One Proxmox instance, as the peer's instances file describes it, plus our additions.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Unique name of the instance.
    pub instance_id: String,
    /// Instances with the same `pool_id` form one pool.
    pub pool_id: String,
    /// Host name or address.
    pub host: String,
    /// API port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User name without realm (`root`).
    #[serde(default)]
    pub user: Option<String>,
    /// Realm (`pam`, `pve`).
    #[serde(default)]
    pub user_realm: Option<String>,
    /// Password (or use `token_id` + `token_secret`); never printed.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The node VMs are created on.
    pub node: String,
    /// Verify TLS (ignored when `fingerprint` or `ca_file` is set).
    #[serde(default = "default_true")]
    pub verify_tls: bool,
    /// Storage for VM disks.
    #[serde(default = "default_storage")]
    pub image_storage: String,
    /// Headers added to every request.
    #[serde(default)]
    pub extra_headers: Vec<HttpHeader>,
    /// API token id, `user@realm!name`.
    #[serde(default)]
    pub token_id: Option<String>,
    /// API token secret; never printed.
    #[serde(default)]
    pub token_secret: Option<Secret>,
    /// Pinned SHA-256 certificate fingerprint.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// CA certificate(s) to trust, PEM.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Samples at once on this instance (default 1, the peer's behaviour).
    #[serde(default)]
    pub max_samples: Option<u32>,
    /// RAM budget for sandboxes, MiB (default: the node's memory).
    #[serde(default)]
    pub ram_mb: Option<u64>,
    /// vCPU budget for sandboxes (default: the node's CPUs).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// VM ids this instance may use.
    #[serde(default)]
    pub vmid_range: Option<VmidRange>,
    /// How task and agent waits pace their polls: `learned` (default) or `doubling` (the
    /// same schedule every time; for comparing, or when task times vary wildly).
    #[serde(default)]
    pub task_polling: TaskPolling,
}

/// [`InstanceConfig::task_polling`], in the config file's spelling.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskPolling {
    /// Around what the last waits of the same kind took ([`pve_client::Pacing::Learned`]).
    #[default]
    Learned,
    /// From 2 ms doubling to a cap, every time ([`pve_client::Pacing::Doubling`]).
    Doubling,
}

impl fmt::Debug for InstanceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceConfig")
            .field("instance_id", &self.instance_id)
            .field("pool_id", &self.pool_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("node", &self.node)
            .field("user", &self.user)
            .field("token_id", &self.token_id)
            .field("password", &self.password)
            .field("token_secret", &self.token_secret)
            .field("max_samples", &self.max_samples)
            .field("vmid_range", &self.vmid_range)
            .finish_non_exhaustive()
    }
}

/// The peer's `PROXMOX_CONFIG_FILE`: `{"instances": [...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesFile {
    /// The instances.
    pub instances: Vec<InstanceConfig>,
}

/// A serde error's text without the values it quotes (``integer `123456` ``, `string "x"`):
/// the value may be a password, and the error cannot say which field it was in.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote = None;
    for c in message.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '`' || c == '"' => {
                quote = Some(c);
                out.push_str("(value not shown)");
            }
            None => out.push(c),
        }
    }
    out
}

impl InstancesFile {
    /// Parses and validates the JSON text of an instances file.
    pub fn from_json(text: &str) -> Result<Self, PoolError> {
        let f: InstancesFile = serde_json::from_str(text).map_err(|e| PoolError::Config {
            field: "instances".into(),
            message: without_values(&e.to_string()),
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for i in &f.instances {
            i.validate()?;
            if !seen.insert(&i.instance_id) {
                return Err(PoolError::Config {
                    field: format!("instances[{}].instance_id", i.instance_id),
                    message: "duplicate instance_id: each instance needs its own".into(),
                });
            }
        }
        Ok(f)
    }
}

impl InstanceConfig {
    fn field(&self, name: &str) -> String {
        format!("instances[{}].{name}", self.instance_id)
    }

    /// Checks the fields that cannot be checked by their types alone.
    pub fn validate(&self) -> Result<(), PoolError> {
        let err = |field: &str, message: String| {
            Err(PoolError::Config {
                field: self.field(field),
                message,
            })
        };
        match (&self.token_id, &self.token_secret, &self.password) {
            (Some(_), Some(_), _) | (None, None, Some(_)) => {}
            (Some(_), None, _) | (None, Some(_), _) => return err("token_secret", "token_id and token_secret go together: set both, or use password".into()),
            (None, None, None) => return err("password", "no credentials: set password (with user and user_realm) or token_id and token_secret".into()),
        }
        if self.max_samples == Some(0) {
            return err(
                "max_samples",
                "0 would never run a sample: use at least 1".into(),
            );
        }
        if let Some(fp) = &self.fingerprint
            && fp.parse::<pve_client::Fingerprint>().is_err()
        {
            return err(
                "fingerprint",
                format!("{fp:?} is not a SHA-256 fingerprint (`AA:BB:..`, 32 bytes)"),
            );
        }
        for h in &self.extra_headers {
            let n = h.name.to_ascii_lowercase();
            if n == "cookie" || n == "csrfpreventiontoken" || n == "authorization" {
                return err(
                    "extra_headers",
                    format!("header {:?} is set by the client itself; remove it", h.name),
                );
            }
        }
        Ok(())
    }

    /// A client for this instance.
    pub fn client(&self) -> Result<PveClient, PoolError> {
        let mut b = PveClient::builder().base_url(format!("https://{}:{}", self.host, self.port));
        b = match (&self.token_id, &self.token_secret) {
            (Some(id), Some(secret)) => b.api_token(id.clone(), secret.clone()),
            _ => {
                let user = self.user.clone().unwrap_or_else(|| "root".into());
                let realm = self.user_realm.clone().unwrap_or_else(|| "pam".into());
                let user = if user.contains('@') {
                    user
                } else {
                    format!("{user}@{realm}")
                };
                b.password(
                    user,
                    self.password.clone().unwrap_or_else(|| Secret::new("")),
                )
            }
        };
        b = match (&self.fingerprint, &self.ca_file, self.verify_tls) {
            (Some(fp), _, _) => b.fingerprint(fp),
            (None, Some(ca), _) => b.ca_file(ca),
            (None, None, true) => b,
            (None, None, false) => b.danger_accept_invalid_certs(),
        };
        for h in &self.extra_headers {
            b = b.header(&h.name, &h.value);
        }
        b = b.pacing(match self.task_polling {
            TaskPolling::Learned => pve_client::Pacing::Learned,
            TaskPolling::Doubling => pve_client::Pacing::Doubling,
        });
        b.build().map_err(|e| PoolError::Config {
            field: self.field("host"),
            message: e.to_string(),
        })
    }

    /// Extra header values by name (for code that builds its own requests).
    pub fn header_map(&self) -> BTreeMap<String, String> {
        self.extra_headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = r#"{"instances": [{"instance_id": "a", "pool_id": "default", "host": "10.0.0.5", "port": 8006,
        "user": "root", "user_realm": "pam", "password": "hunter2", "node": "pve1", "verify_tls": false,
        "image_storage": "local-lvm", "extra_headers": [{"name": "X-Proxy", "value": "1"}]}]}"#;

    #[test]
    fn peer_file_loads_as_is() {
        let f = InstancesFile::from_json(PEER).unwrap();
        let i = &f.instances[0];
        assert_eq!(
            (
                i.instance_id.as_str(),
                i.pool_id.as_str(),
                i.node.as_str(),
                i.verify_tls
            ),
            ("a", "default", "pve1", false)
        );
        assert_eq!(i.max_samples, None);
        assert!(!format!("{i:?}").contains("hunter2"));
        let c = i.client().unwrap();
        assert_eq!(c.principal(), "root@pam");
        assert_eq!(c.api_url(), "https://10.0.0.5:8006/api2/json");
    }

    fn check(json_instance: &str, field: &str) {
        let text = format!(r#"{{"instances": [{json_instance}]}}"#);
        match InstancesFile::from_json(&text) {
            Err(PoolError::Config { field: f, .. }) => {
                assert!(f.ends_with(field), "{f} should name {field}")
            }
            other => panic!("expected a config error naming {field}, got {other:?}"),
        }
    }

    #[test]
    fn bad_input_names_the_field() {
        let base = r#""instance_id": "a", "pool_id": "p", "host": "h", "node": "n""#;
        check(&format!("{{{base}}}"), "password");
        check(
            &format!(r#"{{{base}, "token_id": "root@pam!x"}}"#),
            "token_secret",
        );
        check(
            &format!(r#"{{{base}, "password": "x", "max_samples": 0}}"#),
            "max_samples",
        );
        check(
            &format!(r#"{{{base}, "password": "x", "fingerprint": "AB"}}"#),
            "fingerprint",
        );
        check(
            &format!(
                r#"{{{base}, "password": "x", "extra_headers": [{{"name": "Cookie", "value": "x"}}]}}"#
            ),
            "extra_headers",
        );
        check(
            &format!(r#"{{{base}, "password": "x", "vmid_range": "300-200"}}"#),
            "instances",
        );
        let ok = InstancesFile::from_json(&format!(r#"{{"instances": [{{{base}, "token_id": "root@pam!ci", "token_secret": "s", "vmid_range": "9100-9199", "max_samples": 4}}]}}"#)).unwrap();
        assert_eq!(
            ok.instances[0].vmid_range,
            Some(VmidRange {
                start: 9100,
                end: 9199
            })
        );
    }

    #[test]
    fn a_numeric_password_is_never_echoed() {
        let e = InstancesFile::from_json(
            r#"{"instances": [{"instance_id": "a", "pool_id": "p", "host": "h", "node": "n", "password": 123456}]}"#,
        )
        .unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("123456"), "{shown}");
        assert!(shown.contains("expected a string"), "{shown}");
    }
}
