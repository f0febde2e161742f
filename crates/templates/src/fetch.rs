//! Local file work: streamed hashing, OVA member lists, the client-side download and unpack of
//! images PVE cannot import as published (Kali's `tar.xz`), cached by checksum.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::error::io;
use crate::images::{ChecksumAlgorithm, ImageSpec};
use crate::{Error, Result};

/// Bytes between two progress reports.
const REPORT_EVERY: u64 = 8 << 20;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(a: ChecksumAlgorithm) -> Self {
        match a {
            ChecksumAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            ChecksumAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

/// SHA-256 of a local file, streamed in 1 MiB reads on a blocking thread; `progress(done,
/// total)` every few MiB.
pub(crate) async fn sha256_file(
    path: &Path,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        let total = f.metadata().map_err(io(&path))?.len();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let (mut done, mut reported) = (0u64, 0u64);
        loop {
            let n = f.read(&mut buf).map_err(io(&path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            done += n as u64;
            if done - reported >= REPORT_EVERY {
                progress(done, total);
                reported = done;
            }
        }
        progress(done, total);
        Ok(hex(&h.finalize()))
    })
    .await
    .map_err(|e| Error::Io {
        path: "hash worker".into(),
        source: std::io::Error::other(e),
    })?
}

/// The disk images (`*.vmdk`) inside an OVA, in archive order. Reads only the tar headers.
pub(crate) async fn ova_disks(path: &Path) -> Result<Vec<String>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path).map_err(io(&path))?;
        let mut ar = tar::Archive::new(f);
        let mut disks = Vec::new();
        for e in ar.entries_with_seek().map_err(io(&path))? {
            let e = e.map_err(io(&path))?;
            let name = e.path().map_err(io(&path))?.to_string_lossy().into_owned();
            if name.to_ascii_lowercase().ends_with(".vmdk") {
                disks.push(name);
            }
        }
        if disks.is_empty() {
            return Err(Error::BadImage {
                path: path.display().to_string(),
                message: "no .vmdk disk inside (is it an OVA?)".into(),
            });
        }
        Ok(disks)
    })
    .await
    .map_err(|e| Error::Io {
        path: "tar worker".into(),
        source: std::io::Error::other(e),
    })?
}

/// An HTTP(S) client for image downloads: rustls with the platform's roots.
fn http_client() -> Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new(provider.clone()).map_err(|e| Error::Config {
            field: "tls",
            message: e.to_string(),
        })?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config {
            field: "tls",
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| Error::Config {
            field: "http",
            message: e.to_string(),
        })
}

/// Downloads `spec.url` into `cache_dir` (once: a file whose checksum matched is reused),
/// verifying the pinned checksum as it streams.
pub(crate) async fn download_cached(
    spec: &ImageSpec,
    cache_dir: &Path,
    progress: &(dyn Fn(u64, Option<u64>) + Send + Sync),
) -> Result<PathBuf> {
    tokio::fs::create_dir_all(cache_dir)
        .await
        .map_err(io(cache_dir))?;
    let done_path = cache_dir.join(format!("{}-{}", spec.short(), spec.remote_name()));
    if tokio::fs::try_exists(&done_path).await.unwrap_or(false) {
        return Ok(done_path);
    }
    let url = spec.url.clone();
    let dl = |message: String| Error::Download {
        url: url.clone(),
        message,
    };
    let resp = http_client()?
        .get(&spec.url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| dl(e.to_string()))?;
    let total = resp.content_length();
    let part = done_path.with_extension(format!("part{}", std::process::id()));
    let mut out = tokio::fs::File::create(&part).await.map_err(io(&part))?;
    let mut h = Hasher::new(spec.checksum.algorithm);
    let (mut done, mut reported) = (0u64, 0u64);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| dl(e.to_string()))?;
        h.update(&chunk);
        out.write_all(&chunk).await.map_err(io(&part))?;
        done += chunk.len() as u64;
        if done - reported >= REPORT_EVERY {
            progress(done, total);
            reported = done;
        }
    }
    progress(done, total);
    out.flush().await.map_err(io(&part))?;
    drop(out);
    let got = h.finish();
    if got != spec.checksum.hex {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(Error::Checksum {
            what: spec.url.clone(),
            got,
            expected: spec.checksum.hex.clone(),
        });
    }
    // Rename last: a crash never leaves a file that looks verified.
    tokio::fs::rename(&part, &done_path)
        .await
        .map_err(io(&done_path))?;
    Ok(done_path)
}

/// Unpacks `member` of the `tar.xz` at `archive` to `dest` (once: an existing `dest` is
/// reused; it is written under a temporary name and renamed when complete).
pub(crate) async fn extract_tar_xz(
    archive: &Path,
    member: &str,
    dest: &Path,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<()> {
    if tokio::fs::try_exists(dest).await.unwrap_or(false) {
        return Ok(());
    }
    let (archive, member, dest) = (archive.to_owned(), member.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&archive).map_err(io(&archive))?;
        let xz = lzma_rust2::XzReader::new(std::io::BufReader::new(f), true);
        let mut ar = tar::Archive::new(xz);
        for e in ar.entries().map_err(io(&archive))? {
            let mut e = e.map_err(io(&archive))?;
            let name = e
                .path()
                .map_err(io(&archive))?
                .to_string_lossy()
                .into_owned();
            if name.trim_start_matches("./") != member {
                continue;
            }
            let part = dest.with_extension(format!("part{}", std::process::id()));
            let mut out = std::fs::File::create(&part).map_err(io(&part))?;
            let mut buf = vec![0u8; 1 << 20];
            let (mut done, mut reported) = (0u64, 0u64);
            loop {
                let n = e.read(&mut buf).map_err(io(&archive))?;
                if n == 0 {
                    break;
                }
                std::io::Write::write_all(&mut out, &buf[..n]).map_err(io(&part))?;
                done += n as u64;
                if done - reported >= REPORT_EVERY {
                    progress(done);
                    reported = done;
                }
            }
            progress(done);
            std::fs::rename(&part, &dest).map_err(io(&dest))?;
            return Ok(());
        }
        Err(Error::BadImage {
            path: archive.display().to_string(),
            message: format!("no member '{member}' in the archive"),
        })
    })
    .await
    .map_err(|e| Error::Io {
        path: "unpack worker".into(),
        source: std::io::Error::other(e),
    })?
}
