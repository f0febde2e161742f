//! Storage routes: status, content, delete, upload, download-url.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Ctx;
use super::qemu::{is_disk_key, parse_size};
use crate::config::{StorageConfig, TaskKind};
use crate::error::ApiError;
use crate::image::{Sniffed, Sniffer};
use crate::propstring::PropString;
use crate::state::{Shared, State, Volume, unix_now};

/// Bytes used on `storage` of `node`: VM disks plus files.
pub(super) fn used_bytes(st: &State, node: &str, storage: &str) -> u64 {
    disk_volumes(st, node, storage)
        .iter()
        .map(|v| v.size)
        .sum::<u64>()
        + st.volumes
            .get(&(node.to_owned(), storage.to_owned()))
            .map_or(0, |v| v.iter().map(|v| v.size).sum())
}

/// VM disks on a storage, as content entries.
fn disk_volumes(st: &State, node: &str, storage: &str) -> Vec<Volume> {
    let mut out = Vec::new();
    for vm in st.vms.values().filter(|v| v.node == node) {
        for (k, v) in &vm.config {
            if !is_disk_key(k) {
                continue;
            }
            let p = PropString::parse(v);
            let Some(file) = p.file() else { continue };
            if file.split(':').next() != Some(storage) || file.contains(":iso/") {
                continue;
            }
            out.push(Volume {
                volid: file.to_owned(),
                content: "images".into(),
                format: "raw".into(),
                size: p.get("size").and_then(parse_size).unwrap_or(0),
                ctime: 0,
                members: Vec::new(),
                seed: None,
            });
        }
    }
    out
}

fn storage<'a>(shared: &'a Shared, ctx: &Ctx) -> Result<&'a StorageConfig, ApiError> {
    let id = ctx.req("storage");
    shared
        .cfg
        .storages
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::internal(format!("storage '{id}' does not exist")))
}

/// PVE normalizes upload names: anything outside `[-_.a-zA-Z0-9]` becomes `_`.
fn normalize_filename(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn volid_for(storage: &str, content: &str, filename: &str) -> String {
    format!("{storage}:{content}/{filename}")
}

/// Where a dir storage keeps a file (PVE's layout; `local` is `/var/lib/vz`).
fn dir_path(s: &StorageConfig, content: &str, filename: &str) -> String {
    let sub = match content {
        "iso" => "template/iso",
        "vztmpl" => "template/cache",
        other => other,
    };
    let root = if s.id == "local" {
        "/var/lib/vz".to_owned()
    } else {
        format!("/mnt/pve/{}", s.id)
    };
    format!("{root}/{sub}/{filename}")
}

/// The stored volume for a file's bytes.
fn volume_from(storage: &str, content: &str, filename: &str, f: &Sniffed) -> Volume {
    let seed = match (content, &f.bytes) {
        ("iso", Some(b)) => crate::image::read_seed(b),
        _ => None,
    };
    Volume {
        volid: volid_for(storage, content, filename),
        content: content.to_owned(),
        format: format_of(filename),
        size: f.size,
        ctime: unix_now(),
        members: if filename.ends_with(".ova") {
            f.members.clone()
        } else {
            Vec::new()
        },
        seed,
    }
}

/// GETs `url` (plain HTTP on a loopback address only: the simulator never leaves the host)
/// and sniffs the body as it streams.
async fn fetch(url: &str) -> Result<Sniffed, String> {
    use http_body_util::BodyExt;
    let fail = |e: &dyn std::fmt::Display| format!("download failed: {e}");
    let uri: http::Uri = url.parse().map_err(|e| fail(&e))?;
    if uri.scheme_str() != Some("http") {
        return Err(fail(&"the simulator fetches plain http:// URLs only"));
    }
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse()
            .map_err(|_| fail(&format!("'{host}' is not a loopback address")))?
    };
    if !ip.is_loopback() {
        return Err(fail(&format!("'{host}' is not a loopback address")));
    }
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| fail(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| fail(&e))?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let req = http::Request::get(path)
        .header(
            http::header::HOST,
            uri.authority().map_or("", |a| a.as_str()),
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(&e))?;
    let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
    if !resp.status().is_success() {
        return Err(fail(&resp.status()));
    }
    let mut body = resp.into_body();
    let mut sniff = Sniffer::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(&e))?;
        if let Some(data) = frame.data_ref() {
            sniff.feed(data);
        }
    }
    Ok(sniff.finish())
}

fn format_of(filename: &str) -> String {
    filename
        .rsplit_once('.')
        .map_or("raw", |(_, e)| e)
        .to_owned()
}

pub(super) fn handle(shared: &Arc<Shared>, st: &mut State, ctx: &Ctx) -> Result<Value, ApiError> {
    let node = ctx.node().to_owned();
    match (ctx.method.as_str(), ctx.route.path) {
        ("GET", "/nodes/{node}/storage") => {
            let content = ctx.str("content");
            Ok(Value::Array(
                shared.cfg.storages.iter()
                    .filter(|s| content.is_none_or(|c| c.split(',').all(|c| s.content.iter().any(|x| x == c))))
                    .filter(|s| ctx.str("storage").is_none_or(|x| x == s.id))
                    .map(|s| {
                        let used = used_bytes(st, &node, &s.id);
                        json!({"storage": s.id, "type": s.kind, "content": s.content.join(","), "active": 1, "enabled": 1, "shared": s.shared as i64,
                               "total": s.total, "used": used, "avail": s.total.saturating_sub(used), "used_fraction": used as f64 / s.total as f64})
                    })
                    .collect(),
            ))
        }
        ("GET", "/nodes/{node}/storage/{storage}/content") => {
            let s = storage(shared, ctx)?;
            let mut vols = disk_volumes(st, &node, &s.id);
            vols.extend(
                st.volumes
                    .get(&(node.clone(), s.id.clone()))
                    .cloned()
                    .unwrap_or_default(),
            );
            let content = ctx.str("content");
            let vmid = ctx.int("vmid");
            Ok(Value::Array(
                vols.into_iter()
                    .filter(|v| content.is_none_or(|c| c == v.content))
                    .filter(|v| vmid.is_none_or(|id| v.volid.contains(&format!("-{id}-disk-"))))
                    .map(|v| {
                        let mut e = json!({"volid": v.volid, "content": v.content, "format": v.format, "size": v.size, "ctime": v.ctime});
                        if let Some(id) = v.volid.split(['-', ':']).skip_while(|p| *p != "vm" && *p != "base").nth(1).and_then(|x| x.parse::<u32>().ok()) {
                            e["vmid"] = json!(id);
                        }
                        e
                    })
                    .collect(),
            ))
        }
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            let s = storage(shared, ctx)?.id.clone();
            let volume = ctx.req("volume");
            let volid = if volume.contains(':') {
                volume.to_owned()
            } else {
                format!("{s}:{volume}")
            };
            if disk_volumes(st, &node, &s).iter().any(|v| v.volid == volid) {
                return Err(ApiError::internal(format!(
                    "unable to delete '{volid}' - volume is still in use"
                )));
            }
            let list = st.volumes.entry((node.clone(), s)).or_default();
            let before = list.len();
            list.retain(|v| v.volid != volid);
            if list.len() == before {
                return Err(ApiError::internal(format!(
                    "volume '{volid}' does not exist"
                )));
            }
            Ok(Value::Null)
        }
        ("POST", "/nodes/{node}/storage/{storage}/upload") => {
            let s = storage(shared, ctx)?.clone();
            let content = ctx.req("content").to_owned();
            if !s.content.contains(&content) {
                return Err(ApiError::internal(format!(
                    "storage '{}' does not support content-type '{content}'",
                    s.id
                )));
            }
            let Some(up) = &ctx.upload else {
                return Err(ApiError::internal("missing temporary file name"));
            };
            let filename = normalize_filename(ctx.req("filename"));
            if let Some(algo) = ctx.str("checksum-algorithm") {
                let want = ctx.str("checksum").unwrap_or_default().to_ascii_lowercase();
                let got = up.sniffed.digests.get(algo).cloned().unwrap_or_default();
                if want != got {
                    let msg = format!("checksum mismatch: got '{got}' != expect '{want}'");
                    return Ok(Value::String(
                        st.failed_task(shared, &node, &ctx.user, "imgcopy", "", msg),
                    ));
                }
            }
            let vol = volume_from(&s.id, &content, &filename, &up.sniffed);
            let key = (node.clone(), s.id.clone());
            let upid = st.spawn_task(
                shared,
                &node,
                &ctx.user,
                TaskKind::Upload,
                "imgcopy",
                "",
                None,
                Box::new(move |st| {
                    let list = st.volumes.entry(key).or_default();
                    list.retain(|v| v.volid != vol.volid);
                    let line = format!("target file: {}", vol.volid);
                    list.push(vol);
                    Ok(vec![line])
                }),
            );
            Ok(Value::String(upid))
        }
        ("POST", "/nodes/{node}/storage/{storage}/download-url") => {
            let s = storage(shared, ctx)?.clone();
            let content = ctx.req("content").to_owned();
            if !s.content.contains(&content) {
                return Err(ApiError::internal(format!(
                    "storage '{}' does not support content-type '{content}'",
                    s.id
                )));
            }
            let filename = normalize_filename(ctx.req("filename"));
            let url = ctx.req("url").to_owned();
            let checksum = ctx.str("checksum-algorithm").map(|a| {
                (
                    a.to_owned(),
                    ctx.str("checksum").unwrap_or_default().to_ascii_lowercase(),
                )
            });
            let compression = ctx.str("compression").map(str::to_owned);
            let target = volid_for(&s.id, &content, &filename);
            if st
                .volumes
                .get(&(node.clone(), s.id.clone()))
                .is_some_and(|l| l.iter().any(|v| v.volid == target))
            {
                return Err(ApiError::internal(format!(
                    "refusing to override existing file '{}'",
                    dir_path(&s, &content, &filename)
                )));
            }
            let upid = st.begin_task(&node, &ctx.user, "download", "");
            let key = (node.clone(), s.id.clone());
            let modelled = shared.cfg.latency.duration(TaskKind::Download);
            let shared2 = shared.clone();
            let upid2 = upid.clone();
            tokio::spawn(async move {
                let target = volid_for(&s.id, &content, &filename);
                let fetched = fetch(&url).await;
                // The modelled transfer time of a real mirror, on top of the loopback fetch.
                tokio::time::sleep(modelled).await;
                let outcome = fetched.and_then(|sniffed| {
                    if compression.is_some() {
                        return Err("the simulator does not decompress downloads".to_owned());
                    }
                    let mut lines = vec![
                        format!("downloading {url} to {target}"),
                        format!("{} bytes downloaded", sniffed.size),
                    ];
                    if let Some((algo, want)) = &checksum {
                        lines.push("calculating checksum...".into());
                        let got = sniffed
                            .digests
                            .get(algo.as_str())
                            .cloned()
                            .unwrap_or_default();
                        if &got != want {
                            return Err(format!(
                                "checksum mismatch: got '{got}' != expect '{want}'"
                            ));
                        }
                        lines.push("checksum verified".into());
                    }
                    lines.push("download of URL finished".into());
                    Ok((lines, volume_from(&s.id, &content, &filename, &sniffed)))
                });
                let mut st = shared2.lock();
                let outcome = outcome.map(|(lines, vol)| {
                    let list = st.volumes.entry(key).or_default();
                    list.retain(|v| v.volid != vol.volid);
                    list.push(vol);
                    lines
                });
                st.finish_task(&upid2, outcome);
            });
            Ok(Value::String(upid))
        }
        (m, r) => Err(ApiError::new(
            501,
            format!("Method '{m} {r}' not implemented"),
        )),
    }
}
