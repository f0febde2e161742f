//! A simulator, a client, a loopback HTTP server for image downloads, and fake images.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use pve_client::PveClient;
use pve_sim::{PveSim, SimConfig};
use pvesandbox_templates::{
    BuiltIn, Checksum, ImageCatalog, ImageFormat, ImageSpec, Progress, TemplateConfig,
};
use sha2::Digest;

pub const NODE: &str = "pve1";

pub fn client(sim: &PveSim) -> PveClient {
    client_for(sim.url(), sim.fingerprint().unwrap())
}

pub fn client_for(url: &str, fp: &str) -> PveClient {
    PveClient::builder()
        .base_url(url)
        .api_token("root@pam!ci", "00000000-0000-0000-0000-000000000001")
        .fingerprint(fp)
        .build()
        .unwrap()
}

pub async fn sim() -> PveSim {
    PveSim::start(SimConfig::new()).await.unwrap()
}

/// Serves fixed files over plain HTTP on 127.0.0.1 and counts GETs per path.
#[derive(Clone)]
pub struct FileServer {
    pub base: String,
    files: Arc<Mutex<HashMap<String, Bytes>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl FileServer {
    pub async fn start() -> FileServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let s = FileServer {
            base,
            files: Arc::default(),
            hits: Arc::default(),
        };
        let s2 = s.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let s3 = s2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let s4 = s3.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                *s4.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                                let body = s4.files.lock().unwrap().get(&path).cloned();
                                Ok::<_, std::convert::Infallible>(match body {
                                    Some(b) => hyper::Response::new(Full::new(b)),
                                    None => hyper::Response::builder()
                                        .status(404)
                                        .body(Full::new(Bytes::from_static(b"not found")))
                                        .unwrap(),
                                })
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        s
    }

    /// Serves `data` at `/<name>`; returns the URL.
    pub fn put(&self, name: &str, data: Vec<u8>) -> String {
        self.files
            .lock()
            .unwrap()
            .insert(format!("/{name}"), Bytes::from(data));
        format!("{}/{name}", self.base)
    }

    pub fn hits(&self, name: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(&format!("/{name}"))
            .copied()
            .unwrap_or(0)
    }
}

pub fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

pub fn sha512(b: &[u8]) -> String {
    sha2::Sha512::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A tar archive of `members`.
pub fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OVA: a descriptor and one disk of `disk` bytes.
pub fn ova(disk: &[u8]) -> Vec<u8> {
    tar_of(&[
        ("appliance.ovf", b"<Envelope/>"),
        ("appliance-disk1.vmdk", disk),
    ])
}

pub fn tar_xz(members: &[(&str, &[u8])]) -> Vec<u8> {
    let tar = tar_of(members);
    let mut w = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::default()).unwrap();
    std::io::Write::write_all(&mut w, &tar).unwrap();
    w.finish().unwrap()
}

/// Fake images for the three built-ins, served by `srv`, with their real checksums.
pub fn catalog(srv: &FileServer) -> ImageCatalog {
    let ubuntu = ova(&[1u8; 3000]);
    let debian = b"QFI\xfb fake debian qcow2 image".repeat(100);
    let kali = tar_xz(&[("disk.raw", &[7u8; 5000])]);
    let pinned = ImageCatalog::pinned();
    let name = |b: BuiltIn| pinned.get(b).remote_name().to_owned();
    ImageCatalog::pinned()
        .with_image(
            BuiltIn::Ubuntu2404,
            ImageSpec {
                url: srv.put(&name(BuiltIn::Ubuntu2404), ubuntu.clone()),
                checksum: Checksum::sha256(&sha256(&ubuntu)).unwrap(),
                format: ImageFormat::Ova {
                    disk: "appliance-disk1.vmdk".into(),
                },
            },
        )
        .with_image(
            BuiltIn::Debian13,
            ImageSpec {
                url: srv.put(&name(BuiltIn::Debian13), debian.clone()),
                checksum: Checksum::sha512(&sha512(&debian)).unwrap(),
                format: ImageFormat::Qcow2,
            },
        )
        .with_image(
            BuiltIn::Kali20254,
            ImageSpec {
                url: srv.put(&name(BuiltIn::Kali20254), kali.clone()),
                checksum: Checksum::sha256(&sha256(&kali)).unwrap(),
                format: ImageFormat::TarXzRaw {
                    disk: "disk.raw".into(),
                },
            },
        )
}

/// A fresh scratch directory.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "pvesandbox-tpl-test-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn config(cache: &Path, images: ImageCatalog) -> TemplateConfig {
    let mut c = TemplateConfig::new(NODE);
    c.cache_dir = cache.to_owned();
    c.images = images;
    c
}

/// Collects progress events.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<Progress>>>);

impl Events {
    pub fn sink(&self) -> impl Fn(Progress) + Send + Sync + use<> {
        let v = self.0.clone();
        move |p| v.lock().unwrap().push(p)
    }
    pub fn all(&self) -> Vec<Progress> {
        self.0.lock().unwrap().clone()
    }
}
