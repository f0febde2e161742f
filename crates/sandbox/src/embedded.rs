//! The embedded simulator: the whole product on one machine with no Proxmox.
//!
//! Used by `pvesandbox demo` (when no Proxmox is configured), `pvesandbox sim`, the tests and
//! the benchmarks. It serves HTTPS on loopback with a generated certificate, which the
//! instance config pins by fingerprint, so TLS verification stays on.

use std::net::{Ipv4Addr, SocketAddr};

use pve_sim::{LatencyProfile, PveSim, SimConfig};
use pvesandbox_pool::InstanceConfig;

use crate::error::Error;

/// How to start it.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Realistic task durations scaled by this factor (e.g. 0.05); instant when `None`.
    pub realistic: Option<f64>,
    /// Guests that run commands (Linux namespaces, needs root); else they only answer pings.
    pub process_guests: bool,
    /// The node's CPU count, when not the simulator's 16 (the pool never overcommits vCPUs,
    /// so this bounds how many 1-core sandboxes run at once).
    pub node_cpus: Option<u32>,
}

/// A running simulator and how to reach it.
pub struct EmbeddedSim {
    sim: PveSim,
    token_id: String,
    token_secret: String,
    admin_user: String,
    admin_password: String,
}

impl std::fmt::Debug for EmbeddedSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSim")
            .field("url", &self.sim.url())
            .finish_non_exhaustive()
    }
}

/// Starts the simulator.
pub async fn start_sim(opts: SimOptions) -> Result<EmbeddedSim, Error> {
    start_sim_on(opts, false).await
}

/// Starts the simulator; with `qemu_guests`, its guests are real qemu-guest-agents in QEMU VMs
/// booted from the image `cargo xtask guest-image` caches (the Inspect adapter runs Inspect's
/// self-check on both kinds), instead of what `opts.process_guests` says.
async fn start_sim_on(opts: SimOptions, qemu_guests: bool) -> Result<EmbeddedSim, Error> {
    let mut cfg = SimConfig::new();
    if let Some(f) = opts.realistic {
        cfg = cfg.latency(LatencyProfile::Realistic { time_factor: f });
    }
    if let Some(n) = opts.node_cpus {
        cfg.node_cpus = n;
    }
    if qemu_guests {
        use pve_sim::guest::qemu::{GuestImage, QemuGuestFactory, QemuOptions};
        let image = GuestImage::locate().ok_or_else(|| Error::Config {
            field: "qemu guests".into(),
            value: format!("{:?}", GuestImage::default_dir()),
            fix: "no guest image there: run `cargo xtask guest-image`".into(),
        })?;
        let factory = QemuGuestFactory::start(image, QemuOptions::default())
            .await
            .map_err(|e| Error::Config {
                field: "qemu guests".into(),
                value: e.to_string(),
                fix: "the cold boot of the guest image failed: check QEMU (`cargo xtask guest-image` installs it)".into(),
            })?;
        cfg = cfg.guests(std::sync::Arc::new(factory));
    } else if opts.process_guests {
        cfg = cfg.process_guests().map_err(|e| Error::Config {
            field: "process guests".into(),
            value: e.to_string(),
            fix: "the simulator's guests need Linux user+mount+pid namespaces (run as root or allow unprivileged user namespaces)".into(),
        })?;
    }
    // The token holds exactly what the README tells administrators to grant (the same list
    // `doctor` checks and nested-pve grants), and the simulator refuses the rest with PVE's
    // 403: every test and the demo prove that list suffices. root@pam stays the administrator.
    cfg.privileges = Some(
        crate::privileges::PRIVILEGES
            .iter()
            .map(|p| (*p).to_owned())
            .collect(),
    );
    cfg.acl = vec![(
        format!("/storage/{}", pvesandbox_templates::DEFAULT_FILE_STORAGE),
        // The entry replaces what `/` grants there (as in PVE), so it repeats the main list.
        crate::privileges::PRIVILEGES
            .iter()
            .chain(crate::privileges::STORAGE_PRIVILEGES)
            .map(|p| (*p).to_owned())
            .collect(),
    )];
    let (token_id, token_secret) = cfg.tokens[0].clone();
    let (admin_user, admin_password) = cfg.users[0].clone();
    let sim = PveSim::start_on(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port)))
        .await
        .map_err(|e| Error::Config {
            field: "sim port".into(),
            value: opts.port.to_string(),
            fix: format!("cannot listen: {e}"),
        })?;
    Ok(EmbeddedSim {
        sim,
        token_id,
        token_secret,
        admin_user,
        admin_password,
    })
}

impl EmbeddedSim {
    /// Its base URL.
    pub fn url(&self) -> &str {
        self.sim.url()
    }
    /// The simulator itself (state inspection in tests, request counts).
    pub fn sim(&self) -> &PveSim {
        &self.sim
    }
    /// The node VMs go to.
    pub fn node(&self) -> &str {
        &self.sim.config().nodes[0]
    }
    /// An instance config pointing at it (token auth, pinned certificate).
    pub fn instance(&self, instance_id: &str, pool_id: &str, max_samples: u32) -> InstanceConfig {
        serde_json::from_value(serde_json::json!({
            "instance_id": instance_id,
            "pool_id": pool_id,
            "host": "127.0.0.1",
            "port": self.sim.addr().port(),
            "node": self.node(),
            "token_id": self.token_id,
            "token_secret": self.token_secret,
            "fingerprint": self.sim.fingerprint(),
            "image_storage": "local-lvm",
            "max_samples": max_samples,
        }))
        .expect("a valid instance config")
    }
    /// A client logged in as the simulator's administrator (`root@pam`, every privilege),
    /// for what an administrator prepares once; sandboxes use [`EmbeddedSim::instance`]'s
    /// least-privileged token.
    pub fn admin_client(&self) -> Result<pve_client::PveClient, Error> {
        let mut cfg = self.instance("admin", "admin", 1);
        let (user, realm) = self
            .admin_user
            .split_once('@')
            .unwrap_or((self.admin_user.as_str(), "pam"));
        cfg.token_id = None;
        cfg.token_secret = None;
        cfg.user = Some(user.to_owned());
        cfg.user_realm = Some(realm.to_owned());
        cfg.password = Some(self.admin_password.clone().into());
        cfg.client().map_err(Error::from_pool)
    }

    /// The password login of its administrator (`root@pam`, every privilege), which many
    /// clients use instead of a token.
    pub fn password_login(&self) -> (&str, &str) {
        (&self.admin_user, &self.admin_password)
    }

    /// The `PROXMOX_*` variables that point pvesandbox (or the peer) at it.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("PROXMOX_HOST".into(), "127.0.0.1".into()),
            ("PROXMOX_PORT".into(), self.sim.addr().port().to_string()),
            ("PROXMOX_NODE".into(), self.node().to_owned()),
            ("PROXMOX_TOKEN_ID".into(), self.token_id.clone()),
            ("PROXMOX_TOKEN_SECRET".into(), self.token_secret.clone()),
            ("PROXMOX_IMAGE_STORAGE".into(), "local-lvm".into()),
        ];
        if let Some(fp) = self.sim.fingerprint() {
            v.push(("PROXMOX_FINGERPRINT".into(), fp.to_owned()));
        }
        v
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 serving fixed files: the demo's "image mirror", so the
/// simulator's `download-url` fetches a real (small) image with a real checksum, exactly the
/// path a built-in image takes on a real PVE.
#[derive(Debug)]
pub struct FileServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    /// Serves `files` (path without the leading `/` → contents) until dropped.
    pub async fn start(files: Vec<(String, Vec<u8>)>) -> std::io::Result<FileServer> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let files = std::sync::Arc::new(files);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let files = files.clone();
                tokio::spawn(async move {
                    let mut r = BufReader::new(stream);
                    let mut line = String::new();
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    // Headers are read and ignored: every request is a plain GET.
                    loop {
                        let mut h = String::new();
                        match r.read_line(&mut h).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) if h == "\r\n" || h == "\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let path = line
                        .split(' ')
                        .nth(1)
                        .unwrap_or("/")
                        .trim_start_matches('/');
                    let mut stream = r.into_inner();
                    let reply = match files.iter().find(|(p, _)| p == path) {
                        Some((_, body)) => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            [head.into_bytes(), body.clone()].concat()
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = stream.write_all(&reply).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(FileServer { addr, task })
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The demo's world: a simulator with process guests and realistic (scaled) task durations,
/// and a loopback mirror holding a small stand-in for each built-in image.
#[derive(Debug)]
pub struct DemoSim {
    sim: EmbeddedSim,
    mirror: FileServer,
    images: Vec<(String, String, String)>,
}

/// Starts the demo's simulator and image mirror.
pub async fn start_demo_sim(time_factor: f64) -> Result<DemoSim, Error> {
    start_demo_sim_with(SimOptions {
        port: 0,
        realistic: Some(time_factor),
        process_guests: true,
        ..Default::default()
    })
    .await
}

/// [`start_demo_sim`] with explicit simulator options (tests use instant tasks).
pub async fn start_demo_sim_with(opts: SimOptions) -> Result<DemoSim, Error> {
    demo_on(start_sim(opts).await?).await
}

/// [`start_demo_sim_with`] whose guests are real qemu-guest-agents in QEMU VMs (from the image
/// `cargo xtask guest-image` caches) rather than process guests.
pub async fn start_demo_sim_qemu(opts: SimOptions) -> Result<DemoSim, Error> {
    demo_on(start_sim_on(opts, true).await?).await
}

/// The demo's world around a started simulator.
async fn demo_on(sim: EmbeddedSim) -> Result<DemoSim, Error> {
    use sha2::Digest;
    // As an administrator would before using pvesandbox (`doctor` checks it): isolation is
    // PVE firewall rules, which only apply with the datacenter firewall on.
    sim.admin_client()?
        .put(
            "/cluster/firewall/options",
            &pve_client::Params::new().with("enable", 1),
        )
        .await?;
    // Stand-ins: a qcow2 header is all the simulator's importer looks at; the checksum is
    // real, so a corrupted download fails exactly as on PVE.
    let debian = b"QFI\xfb pvesandbox demo stand-in for the debian13 cloud image\n".repeat(64);
    let ubuntu_like = b"QFI\xfb pvesandbox demo stand-in image\n".repeat(64);
    let files = vec![
        ("debian13.qcow2".to_owned(), debian),
        ("generic.qcow2".to_owned(), ubuntu_like),
    ];
    let images = files
        .iter()
        .map(|(p, b)| (p.clone(), hex(&sha2::Sha256::digest(b))))
        .collect::<Vec<_>>();
    let mirror = FileServer::start(files).await.map_err(|e| Error::Config {
        field: "demo mirror".into(),
        value: String::new(),
        fix: format!("cannot listen on loopback: {e}"),
    })?;
    let images = images
        .into_iter()
        .map(|(p, h)| (p.clone(), mirror.url(&p), h))
        .collect();
    Ok(DemoSim {
        sim,
        mirror,
        images,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl DemoSim {
    /// The simulator.
    pub fn sim(&self) -> &PveSim {
        self.sim.sim()
    }
    /// The embedded simulator handle.
    pub fn embedded(&self) -> &EmbeddedSim {
        &self.sim
    }
    /// What another process needs to run `pvesandbox up` against it: the `PROXMOX_*` of
    /// [`EmbeddedSim::env`] plus the built-in image served by the loopback mirror and the
    /// bridge template builds use, as `PVESANDBOX_*` settings.
    pub fn env(&self) -> Vec<(String, String)> {
        let (_, url, sha) = &self.images[0];
        let mut v = self.sim.env();
        v.extend([
            (
                "PVESANDBOX_IMAGES__OVERRIDES__DEBIAN13__URL".into(),
                url.clone(),
            ),
            (
                "PVESANDBOX_IMAGES__OVERRIDES__DEBIAN13__SHA256".into(),
                sha.clone(),
            ),
            ("PVESANDBOX_IMAGES__BAKE_BRIDGE".into(), "vmbr0".into()),
        ]);
        v
    }

    /// `settings` pointed at the simulator (2 samples at once) and the loopback mirror.
    pub fn settings(&self, mut settings: crate::Settings) -> Result<crate::Settings, Error> {
        settings.instances = vec![self.sim.instance("sim", "default", 2)];
        let (_, debian_url, debian_sha) = &self.images[0];
        settings.images.overrides.insert(
            "debian13".into(),
            crate::ImageOverride {
                url: debian_url.clone(),
                sha256: Some(debian_sha.clone()),
            },
        );
        // Kali and Ubuntu are archives/OVAs upstream; the demo only uses debian13.
        settings
            .images
            .bake_bridge
            .get_or_insert_with(|| "vmbr0".into());
        settings.images.cache_dir.get_or_insert_with(|| {
            std::env::temp_dir().join(format!("pvesandbox-demo-{}", std::process::id()))
        });
        let _ = &self.mirror;
        settings.validate()?;
        Ok(settings)
    }
    /// What the simulator still holds besides templates: VMs and SDN zones.
    pub fn leftovers(&self) -> Leftovers {
        let sim = self.sim();
        let vms = sim
            .vmids()
            .into_iter()
            .filter(|id| {
                sim.vm_config(*id)
                    .is_some_and(|c| c.get("template").map(String::as_str) != Some("1"))
            })
            .collect();
        let (running, pending) = sim.sdn();
        let zones = running
            .zones
            .keys()
            .chain(pending.zones.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let vnets = running
            .vnets
            .keys()
            .chain(pending.vnets.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Leftovers { vms, zones, vnets }
    }
}

/// What a simulator holds that a cleanup should have removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Non-template VMs.
    pub vms: Vec<u32>,
    /// SDN zones (applied or pending).
    pub zones: Vec<String>,
    /// SDN vnets (applied or pending).
    pub vnets: Vec<String>,
}

impl Leftovers {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.vms.is_empty() && self.zones.is_empty() && self.vnets.is_empty()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} VM(s), {} zone(s), {} vnet(s)",
            self.vms.len(),
            self.zones.len(),
            self.vnets.len()
        )
    }
}
