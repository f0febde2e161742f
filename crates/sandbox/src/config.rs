//! Settings: where Proxmox is and how runs behave. Defaults < config file < environment.
//!
//! Sources, lowest precedence first (each layer overrides the fields it sets):
//!
//! 1. built-in defaults;
//! 2. our config file: `--config PATH`, else `$PVESANDBOX_CONFIG`, else `./pvesandbox.toml`
//!    (or `.yaml`/`.yml`/`.json`) when present — format by extension;
//! 3. the peer's single-instance variables `PROXMOX_HOST`, `PROXMOX_PORT`, `PROXMOX_USER`,
//!    `PROXMOX_REALM`, `PROXMOX_PASSWORD`, `PROXMOX_NODE`, `PROXMOX_VERIFY_TLS`,
//!    `PROXMOX_IMAGE_STORAGE` (used only when `PROXMOX_HOST` is set, with the peer's defaults),
//!    plus ours `PROXMOX_TOKEN_ID`, `PROXMOX_TOKEN_SECRET`, `PROXMOX_FINGERPRINT`;
//! 4. the peer's instances file `$PROXMOX_CONFIG_FILE` (JSON `{"instances": [...]}`) —
//!    unlike the peer, a path that does not exist is an error, not silently ignored;
//! 5. `PVESANDBOX_<SECTION>__<FIELD>` variables, e.g. `PVESANDBOX_RUN__TTL_MINUTES=90`.
//!
//! Every field is documented in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Json, Serialized, Toml, Yaml};
use pvesandbox_pool::InstanceConfig;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How runs behave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Minutes after which anything a run made may be deleted by `cleanup --expired`, even if
    /// its owner is unknown. Make it longer than your longest eval.
    pub ttl_minutes: u64,
    /// Seconds to wait for a VM's guest agent after start.
    pub agent_timeout_secs: u64,
    /// Seconds a sample may wait for a free Proxmox instance.
    pub lease_timeout_secs: u64,
    /// Whether sandboxes may reach the internet (SNAT + firewall egress); off by default.
    pub egress: bool,
    /// IPv4 supernet the `auto` network picks its /24 from (default `192.168.0.0/16`).
    pub supernet: Option<String>,
    /// Linked clones (fast, share the template's disk) unless false.
    pub linked_clones: bool,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            ttl_minutes: 12 * 60,
            agent_timeout_secs: 300,
            lease_timeout_secs: 3600,
            egress: false,
            supernet: None,
            linked_clones: true,
        }
    }
}

impl RunSettings {
    /// The run's time to live.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_minutes * 60)
    }
    /// How long to wait for a guest agent.
    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout_secs)
    }
    /// How long to wait for a lease.
    pub fn lease_timeout(&self) -> Duration {
        Duration::from_secs(self.lease_timeout_secs)
    }
}

/// Where images come from and where they go.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// A base URL replacing the image hosts of the built-in images (air-gapped mirrors).
    pub mirror: Option<String>,
    /// Per built-in image, a full URL (and optionally `sha256`) replacing the pinned one.
    pub overrides: BTreeMap<String, ImageOverride>,
    /// Storage holding downloaded/imported images and seed ISOs (default `local`).
    pub import_storage: Option<String>,
    /// Bridge or vnet template builds attach to; needs DHCP and a way to the distribution
    /// mirrors, since cloud-init installs the guest agent from them (default `vmbr0`).
    pub bake_bridge: Option<String>,
    /// Local cache for images downloaded by this machine (default
    /// `$XDG_CACHE_HOME/pvesandbox/images` or `~/.cache/pvesandbox/images`).
    pub cache_dir: Option<PathBuf>,
}

impl ImageSettings {
    /// The local image cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(d) = &self.cache_dir {
            return d.clone();
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("pvesandbox").join("images")
    }
}

/// A replacement source for one built-in image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageOverride {
    /// Where to fetch it.
    pub url: String,
    /// Its SHA-256 (hex); required unless the URL is the pinned one's mirror.
    pub sha256: Option<String>,
}

/// Everything pvesandbox reads, apart from the per-eval sample shape.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The Proxmox instances (the peer's instances file format).
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    /// Run behaviour.
    #[serde(default)]
    pub run: RunSettings,
    /// Image sources.
    #[serde(default)]
    pub images: ImageSettings,
}

impl Settings {
    /// Whether any Proxmox is configured (else the CLI's demo uses the embedded simulator).
    pub fn has_proxmox(&self) -> bool {
        !self.instances.is_empty()
    }

    /// Loads from the real environment and files.
    pub fn load(config_file: Option<&Path>) -> Result<Settings, Error> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Settings::load_from(config_file, &env)
    }

    /// Loads from `env` (the variables) and the files it and `config_file` name.
    pub fn load_from(
        config_file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, Error> {
        let mut fig = Figment::from(Serialized::defaults(Defaults::default()));
        if let Some(path) = our_config_file(config_file, env)? {
            fig = match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => fig.merge(Yaml::file_exact(&path)),
                Some("json") => fig.merge(Json::file_exact(&path)),
                _ => fig.merge(Toml::file_exact(&path)),
            };
        }
        if let Some(instance) = peer_env_instance(env)? {
            fig = fig.merge(Serialized::default("instances", vec![instance]));
        }
        if let Some(path) = env.get("PROXMOX_CONFIG_FILE").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(Error::Config {
                    field: "PROXMOX_CONFIG_FILE".into(),
                    value: path.display().to_string(),
                    fix: "no such file: point it at a JSON file {\"instances\": [...]} or unset it"
                        .into(),
                });
            }
            fig = fig.merge(Json::file_exact(&path));
        }
        // Only `PVESANDBOX_<SECTION>__<FIELD>` are settings; other PVESANDBOX_ variables
        // belong to tools (the guest image, the test harness, the adapter's embedded mode).
        let ours = env
            .iter()
            .filter(|(k, _)| k.starts_with("PVESANDBOX_") && k.contains("__"))
            .map(|(k, v)| (k.clone(), v.clone()));
        // Our variables come from `env` (the process environment in `load`), not figment's
        // `Env` provider, so tests and the Python adapter can pass a map without touching the
        // process environment.
        let mut overrides = serde_json::Map::new();
        for (k, v) in ours {
            let path: Vec<String> = k["PVESANDBOX_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            insert_path(&mut overrides, &path, env_value(&v));
        }
        fig = fig.merge(Serialized::globals(serde_json::Value::Object(overrides)));
        let settings: Settings = fig.extract().map_err(Error::from_figment)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let file = pvesandbox_pool::InstancesFile {
            instances: self.instances.clone(),
        };
        let mut seen = std::collections::BTreeSet::new();
        for i in &file.instances {
            i.validate().map_err(Error::from_pool)?;
            if !seen.insert(i.instance_id.clone()) {
                return Err(Error::Config {
                    field: format!("instances[{}].instance_id", i.instance_id),
                    value: i.instance_id.clone(),
                    fix: "duplicate: give each instance its own instance_id".into(),
                });
            }
        }
        if self.run.ttl_minutes == 0 {
            return Err(Error::Config {
                field: "run.ttl_minutes".into(),
                value: "0".into(),
                fix: "a run must be allowed to live: use at least 1 (minutes)".into(),
            });
        }
        if let Some(s) = &self.run.supernet {
            let ok = s.split_once('/').is_some_and(|(a, p)| {
                a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 24)
            });
            if !ok {
                return Err(Error::Config {
                    field: "run.supernet".into(),
                    value: s.clone(),
                    fix: "write an IPv4 network of /24 or larger, e.g. \"10.80.0.0/16\"".into(),
                });
            }
        }
        for (name, o) in &self.images.overrides {
            if let Some(h) = &o.sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(Error::Config {
                    field: format!("images.overrides.{name}.sha256"),
                    value: h.clone(),
                    fix: "write the SHA-256 as 64 hex digits".into(),
                });
            }
        }
        Ok(())
    }
}

/// Defaults as a serializable layer, so figment reports which layer set a bad value.
#[derive(Serialize, Default)]
struct Defaults {
    run: RunSettings,
    images: ImageSettings,
}

fn our_config_file(
    explicit: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Option<PathBuf>, Error> {
    let named = explicit.map(Path::to_path_buf).or_else(|| {
        env.get("PVESANDBOX_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    if let Some(p) = named {
        if !p.is_file() {
            return Err(Error::Config {
                field: "config file".into(),
                value: p.display().to_string(),
                fix: "no such file: check --config / PVESANDBOX_CONFIG".into(),
            });
        }
        return Ok(Some(p));
    }
    Ok([
        "pvesandbox.toml",
        "pvesandbox.yaml",
        "pvesandbox.yml",
        "pvesandbox.json",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file()))
}

/// The peer's `PROXMOX_*` single instance, with the peer's defaults, when `PROXMOX_HOST` is set.
fn peer_env_instance(env: &BTreeMap<String, String>) -> Result<Option<serde_json::Value>, Error> {
    let Some(host) = env.get("PROXMOX_HOST").filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let get = |k: &str, d: &str| env.get(k).cloned().unwrap_or_else(|| d.to_owned());
    let port: u16 = get("PROXMOX_PORT", "8006")
        .parse()
        .map_err(|_| Error::Config {
            field: "PROXMOX_PORT".into(),
            value: get("PROXMOX_PORT", ""),
            fix: "write a port number, e.g. 8006".into(),
        })?;
    let mut v = serde_json::json!({
        "instance_id": "default",
        "pool_id": "default",
        "host": host,
        "port": port,
        "user": get("PROXMOX_USER", "root"),
        "user_realm": get("PROXMOX_REALM", "pam"),
        "node": get("PROXMOX_NODE", "proxmox"),
        // The peer treats only "1" as true.
        "verify_tls": get("PROXMOX_VERIFY_TLS", "1") == "1",
        "image_storage": get("PROXMOX_IMAGE_STORAGE", "local-lvm"),
    });
    let o = v.as_object_mut().expect("object");
    match (env.get("PROXMOX_TOKEN_ID"), env.get("PROXMOX_TOKEN_SECRET")) {
        (Some(id), Some(secret)) => {
            o.insert("token_id".into(), id.clone().into());
            o.insert("token_secret".into(), secret.clone().into());
        }
        _ => {
            o.insert(
                "password".into(),
                get("PROXMOX_PASSWORD", "password").into(),
            );
        }
    }
    if let Some(fp) = env.get("PROXMOX_FINGERPRINT") {
        o.insert("fingerprint".into(), fp.clone().into());
    }
    Ok(Some(v))
}

/// Environment values are text; numbers and booleans are recognised so `__TTL_MINUTES=90` works.
fn env_value(v: &str) -> serde_json::Value {
    if let Ok(n) = v.parse::<u64>() {
        return n.into();
    }
    match v {
        "true" => true.into(),
        "false" => false.into(),
        _ => v.into(),
    }
}

fn insert_path(
    map: &mut serde_json::Map<String, serde_json::Value>,
    path: &[String],
    v: serde_json::Value,
) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), v);
        }
        [first, rest @ ..] => {
            let e = map
                .entry(first.clone())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let serde_json::Value::Object(m) = e {
                insert_path(m, rest, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn field_of(r: Result<Settings, Error>) -> String {
        match r {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn nothing_configured_means_no_proxmox() {
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert!(!s.has_proxmox());
        assert_eq!(s.run, RunSettings::default());
    }

    #[test]
    fn peer_env_variables_make_one_instance_with_the_peers_defaults() {
        let s = Settings::load_from(
            None,
            &env(&[("PROXMOX_HOST", "10.1.2.3"), ("PROXMOX_VERIFY_TLS", "true")]),
        )
        .unwrap();
        let i = &s.instances[0];
        assert_eq!(
            (
                i.instance_id.as_str(),
                i.pool_id.as_str(),
                i.host.as_str(),
                i.port
            ),
            ("default", "default", "10.1.2.3", 8006)
        );
        assert_eq!(i.node, "proxmox");
        assert_eq!(i.image_storage, "local-lvm");
        assert!(!i.verify_tls, "the peer treats only \"1\" as true");
        assert_eq!(i.password.as_ref().map(|p| p.expose()), Some("password"));
        assert!(!format!("{s:?}").contains("\"password\""));
        let s = Settings::load_from(
            None,
            &env(&[
                ("PROXMOX_HOST", "h"),
                ("PROXMOX_TOKEN_ID", "root@pam!ci"),
                ("PROXMOX_TOKEN_SECRET", "s3cr3t"),
            ]),
        )
        .unwrap();
        assert_eq!(s.instances[0].token_id.as_deref(), Some("root@pam!ci"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert_eq!(
            field_of(Settings::load_from(
                None,
                &env(&[("PROXMOX_HOST", "h"), ("PROXMOX_PORT", "x")])
            )),
            "PROXMOX_PORT"
        );
    }

    #[test]
    fn layers_override_in_order_file_then_peer_file_then_our_env() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("pvesandbox.toml");
        std::fs::write(
            &ours,
            "[run]\nttl_minutes = 30\negress = true\n\n[[instances]]\ninstance_id = \"toml\"\npool_id = \"p\"\nhost = \"t\"\nnode = \"n\"\npassword = \"x\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some(&ours), &env(&[])).unwrap();
        assert_eq!((s.run.ttl_minutes, s.run.egress), (30, true));
        assert_eq!(s.instances[0].instance_id, "toml");

        let peer = dir.path().join("instances.json");
        std::fs::write(
            &peer,
            r#"{"instances": [{"instance_id": "a", "pool_id": "default", "host": "10.0.0.5", "port": 8006,
            "user": "root", "user_realm": "pam", "password": "hunter2", "node": "pve1", "verify_tls": false,
            "image_storage": "local-lvm", "extra_headers": []}]}"#,
        )
        .unwrap();
        let e = env(&[
            ("PROXMOX_CONFIG_FILE", peer.to_str().unwrap()),
            ("PROXMOX_HOST", "ignored-when-the-file-exists"),
            ("PVESANDBOX_RUN__TTL_MINUTES", "90"),
        ]);
        let mut e = e;
        e.insert("PVESANDBOX_GUEST_IMAGE".into(), "/somewhere".into());
        let s = Settings::load_from(Some(&ours), &e).unwrap();
        assert_eq!(s.instances.len(), 1);
        assert_eq!(s.instances[0].instance_id, "a");
        assert_eq!(s.run.ttl_minutes, 90, "our env beats the file");
        assert!(
            s.run.egress,
            "fields the env does not set keep the file's value"
        );

        let yaml = dir.path().join("c.yaml");
        std::fs::write(&yaml, "run:\n  agent_timeout_secs: 7\n").unwrap();
        let s = Settings::load_from(Some(&yaml), &env(&[])).unwrap();
        assert_eq!(s.run.agent_timeout_secs, 7);
    }

    #[test]
    fn bad_input_names_the_field_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&f, text).unwrap();
            Settings::load_from(Some(&f), &env(&[]))
        };
        assert_eq!(
            field_of(load("[run]\nttl_minutes = 0\n")),
            "run.ttl_minutes"
        );
        assert_eq!(
            field_of(load("[run]\nttl_minuets = 5\n")),
            "run.ttl_minuets"
        );
        assert_eq!(
            field_of(load("[run]\nsupernet = \"10.0.0.0/25\"\n")),
            "run.supernet"
        );
        assert_eq!(field_of(load("[run]\negress = \"yes\"\n")), "run.egress");
        assert_eq!(
            field_of(load(
                "[images.overrides.\"debian13\"]\nurl = \"http://m/x\"\nsha256 = \"abc\"\n"
            )),
            "images.overrides.debian13.sha256"
        );
        assert_eq!(
            field_of(Settings::load_from(
                None,
                &env(&[("PROXMOX_CONFIG_FILE", "/nonexistent/instances.json")])
            )),
            "PROXMOX_CONFIG_FILE"
        );
        assert_eq!(
            field_of(Settings::load_from(
                Some(Path::new("/nonexistent.toml")),
                &env(&[])
            )),
            "config file"
        );
        let msg = load("[run]\nttl_minuets = 5\n").unwrap_err().to_string();
        assert!(
            msg.contains("ttl_minuets") && msg.contains("ttl_minutes"),
            "{msg}"
        );
    }

    #[test]
    fn a_numeric_secret_in_any_config_file_is_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let base = "instance_id: a\n    pool_id: p\n    host: h\n    node: n\n";
        let files = [
            (
                "pvesandbox.yaml",
                format!("instances:\n  - {base}    password: 123456\n"),
                "instances.0.password",
            ),
            (
                "pvesandbox.toml",
                "[[instances]]\ninstance_id = \"a\"\npool_id = \"p\"\nhost = \"h\"\nnode = \"n\"\ntoken_id = \"root@pam!x\"\ntoken_secret = 123456\n".to_owned(),
                "instances.0.token_secret",
            ),
        ];
        for (name, text, field) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let e = Settings::load_from(Some(&path), &env(&[])).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("123456"), "{name}: {shown}");
            assert!(
                shown.contains(field) && shown.contains("quote it"),
                "{name}: {shown}"
            );
        }
        // The peer's instances file, through PROXMOX_CONFIG_FILE.
        let peer = dir.path().join("instances.json");
        std::fs::write(
            &peer,
            r#"{"instances": [{"instance_id": "a", "pool_id": "p", "host": "h", "node": "n", "password": 123456}]}"#,
        )
        .unwrap();
        let e = Settings::load_from(
            None,
            &env(&[("PROXMOX_CONFIG_FILE", peer.to_str().unwrap())]),
        )
        .unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("123456"), "{shown}");
        assert_eq!(e.kind(), crate::ErrorKind::Config);
    }
}
