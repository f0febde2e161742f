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
                notes: None,
                protected: false,
            });
        }
    }
    out
}

/// pve-storage's `$real_volume_id`: a volume with `:` is a whole volume id, which must be on
/// the path's storage; anything else is a name on it.
fn real_volume_id(storage: &str, volume: &str) -> Result<String, ApiError> {
    match volume.split_once(':') {
        Some((sid, _)) if sid != storage => Err(ApiError::param(
            "volume",
            format!("storage ID mismatch ({sid} != {storage})"),
        )),
        Some(_) => Ok(volume.to_owned()),
        None => Ok(format!("{storage}:{volume}")),
    }
}

/// A file or VM disk on a storage, by volume id.
fn find_volume(st: &State, node: &str, storage: &str, volid: &str) -> Option<Volume> {
    st.volumes
        .get(&(node.to_owned(), storage.to_owned()))
        .and_then(|l| l.iter().find(|v| v.volid == volid).cloned())
        .or_else(|| {
            disk_volumes(st, node, storage)
                .into_iter()
                .find(|v| v.volid == volid)
        })
}

/// Where PVE keeps a volume: a file under a directory storage's layout, an LV otherwise.
fn volume_path(s: &StorageConfig, volid: &str) -> String {
    let name = volid.split_once(':').map_or(volid, |(_, n)| n);
    if s.kind != "dir" {
        return format!("/dev/pve/{name}");
    }
    match name.split_once('/') {
        Some((content, file)) => dir_path(s, content, file),
        None => dir_path(s, "images", name),
    }
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
        notes: None,
        protected: false,
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
        ("GET", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            let s = storage(shared, ctx)?.clone();
            let volid = real_volume_id(&s.id, ctx.req("volume"))?;
            let Some(v) = find_volume(st, &node, &s.id, &volid) else {
                // The file is gone, so the plugin's size probe finds no format.
                return Err(ApiError::internal(format!(
                    "volume_size_info on '{volid}' failed - no format"
                )));
            };
            let mut e = json!({
                "path": volume_path(&s, &volid), "size": v.size, "used": v.size, "format": v.format,
            });
            if let Some(n) = &v.notes {
                e["notes"] = json!(n);
            }
            if v.protected {
                e["protected"] = json!(1);
            }
            Ok(e)
        }
        ("PUT", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            let s = storage(shared, ctx)?.id.clone();
            let volid = real_volume_id(&s, ctx.req("volume"))?;
            let notes = ctx.str("notes").map(str::to_owned);
            let protected = ctx.str("protected").map(|_| ctx.flag("protected"));
            let Some(v) = st
                .volumes
                .get_mut(&(node.clone(), s))
                .and_then(|l| l.iter_mut().find(|v| v.volid == volid))
            else {
                return Err(ApiError::internal(format!(
                    "volume_size_info on '{volid}' failed - no format"
                )));
            };
            if let Some(n) = notes {
                v.notes = (!n.is_empty()).then_some(n);
            }
            if let Some(p) = protected {
                v.protected = p;
            }
            Ok(Value::Null)
        }
        ("POST", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            let s = storage(shared, ctx)?.id.clone();
            let src = real_volume_id(&s, ctx.req("volume"))?;
            let dst = real_volume_id(&s, ctx.req("target"))?;
            let target_node = ctx.str("target_node").unwrap_or(&node).to_owned();
            let (src_node, user) = (node.clone(), ctx.user.clone());
            let upid = st.spawn_task(
                shared,
                &node,
                &user,
                TaskKind::Upload,
                "imgcopy",
                "",
                None,
                Box::new(move |st| {
                    let (sid, _) = src.split_once(':').unwrap_or_default();
                    let (dsid, dname) = dst.split_once(':').unwrap_or_default();
                    let mut vol = find_volume(st, &src_node, sid, &src)
                        .ok_or_else(|| format!("unable to parse volume ID '{src}'"))?;
                    vol.volid = dst.clone();
                    vol.content = dname.split('/').next().unwrap_or_default().to_owned();
                    vol.ctime = unix_now();
                    let list = st
                        .volumes
                        .entry((target_node, dsid.to_owned()))
                        .or_default();
                    list.retain(|v| v.volid != dst);
                    list.push(vol);
                    Ok(vec![format!("copy {src} to {dst}")])
                }),
            );
            Ok(Value::String(upid))
        }
        ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}") => {
            let s = storage(shared, ctx)?.clone();
            let volid = real_volume_id(&s.id, ctx.req("volume"))?;
            if disk_volumes(st, &node, &s.id)
                .iter()
                .any(|v| v.volid == volid)
            {
                return Err(ApiError::internal(format!(
                    "unable to delete '{volid}' - volume is still in use"
                )));
            }
            // `API2/Storage/Content.pm` `delete` answers with an `imgdel` worker at once; the
            // worker frees the volume, and a file already gone is only a warning
            // (`Plugin::free_image`), so the task still ends well.
            let id = crate::access::volume_owner(&volid)
                .map_or(s.id.clone(), |vmid| format!("{vmid}@{}", s.id));
            let path = volume_path(&s, &volid);
            let key = (node.clone(), s.id.clone());
            let upid = st.spawn_task(
                shared,
                &node,
                &ctx.user,
                TaskKind::Config,
                "imgdel",
                &id,
                None,
                Box::new(move |st| {
                    let list = st.volumes.entry(key).or_default();
                    let before = list.len();
                    list.retain(|v| v.volid != volid);
                    let mut log = Vec::new();
                    if list.len() == before {
                        log.push(format!("WARN: disk image '{path}' does not exist"));
                    }
                    log.push(format!("Removed volume '{volid}'"));
                    Ok(log)
                }),
            );
            Ok(Value::String(upid))
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
