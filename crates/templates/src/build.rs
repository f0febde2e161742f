//! `ensure_template`: find, claim, wait for, or bake a template.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pve_client::{
    DestroyOptions, DownloadUrl, Params, ShutdownOptions, Upload, VmEntry, Vmid, WaitOptions,
};
use serde_json::Value;
use sha2::Digest;

use crate::images::{ImageFormat, ImageSpec};
use crate::progress::{Phase, Progress, ProgressEvent, ProgressFn};
use crate::seed::NoCloudSeed;
use crate::{
    BUILDING_TAG, BakeOptions, BuiltIn, DiskController, Error, FILE_PREFIX, KEY_TAG_PREFIX, OsType,
    Result, STARTED_TAG_PREFIX, TAG, Template, Templates, VmSource, tags_of, unix_now,
};

/// What a source needs.
pub(crate) struct Plan {
    pub key: String,
    pub kind: PlanKind,
    pub opts: BakeOptions,
}

pub(crate) enum PlanKind {
    Existing,
    BuiltIn(BuiltIn, ImageSpec),
    Ova { path: PathBuf, sha256: String },
}

impl Plan {
    pub(crate) async fn of(
        t: &Templates,
        source: &VmSource,
        opts: &BakeOptions,
        progress: ProgressFn<'_>,
    ) -> Result<Plan> {
        Ok(match source {
            VmSource::ExistingTag(tag) => Plan {
                key: tag.clone(),
                kind: PlanKind::Existing,
                opts: opts.clone(),
            },
            VmSource::BuiltIn(b) => {
                let spec = t.cfg.images.get(*b).clone();
                Plan {
                    key: format!("{}-{}", b.name(), spec.short()),
                    kind: PlanKind::BuiltIn(*b, spec),
                    opts: BakeOptions::default(),
                }
            }
            VmSource::Ova(path) => {
                let sha256 = t.ova_digest(path, progress).await?;
                let mut key = format!("ova-{}", &sha256[..16]);
                if opts != &BakeOptions::default() {
                    let h = sha2::Sha256::digest(format!("{opts:?}"));
                    let bus = match opts.disk_controller {
                        DiskController::Scsi => "scsi",
                        DiskController::Ide => "ide",
                    };
                    key.push_str(&format!("-{bus}-{:02x}{:02x}{:02x}", h[0], h[1], h[2]));
                }
                Plan {
                    key,
                    kind: PlanKind::Ova {
                        path: path.clone(),
                        sha256,
                    },
                    opts: opts.clone(),
                }
            }
        })
    }

    fn key_tag(&self) -> String {
        format!("{KEY_TAG_PREFIX}{}", self.key)
    }

    /// The storage file holding the image (`pvesandbox-debian13-25b430e641.qcow2`).
    pub(crate) fn image_file(&self) -> Option<String> {
        match &self.kind {
            PlanKind::Existing => None,
            PlanKind::BuiltIn(b, spec) => {
                let ext = match spec.format {
                    ImageFormat::Ova { .. } => "ova",
                    ImageFormat::Qcow2 => "qcow2",
                    ImageFormat::TarXzRaw { .. } => "raw",
                };
                Some(format!("{FILE_PREFIX}{}-{}.{ext}", b.name(), spec.short()))
            }
            PlanKind::Ova { sha256, .. } => Some(format!("{FILE_PREFIX}ova-{}.ova", &sha256[..16])),
        }
    }

    fn verify_agent(&self) -> bool {
        match self.kind {
            PlanKind::BuiltIn(..) => true,
            _ => self.opts.verify_agent,
        }
    }
}

/// The boot disk of a template of ours, from its key (IDE OVAs carry `-ide-` in theirs).
fn boot_disk_of_key(key: &str) -> String {
    if key.contains("-ide-") {
        "ide0".into()
    } else {
        "scsi0".into()
    }
}

fn is_template(e: &VmEntry) -> bool {
    e.template == Some(true)
}

fn started_at(tags: &[String]) -> Option<u64> {
    tags.iter()
        .find_map(|t| t.strip_prefix(STARTED_TAG_PREFIX)?.parse().ok())
}

fn maxdisk(e: &VmEntry) -> Option<u64> {
    e.extra.get("maxdisk").and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

impl Templates {
    fn emit(&self, progress: ProgressFn<'_>, key: &str, phase: Phase) {
        progress(Progress {
            key: key.to_owned(),
            event: ProgressEvent::Phase(phase),
        });
    }

    pub(crate) fn wait_opts_pub(&self) -> WaitOptions {
        self.wait_opts()
    }

    fn wait_opts(&self) -> WaitOptions {
        WaitOptions::with_timeout(self.cfg.task_timeout)
    }

    pub(crate) async fn ova_digest(
        &self,
        path: &std::path::Path,
        progress: ProgressFn<'_>,
    ) -> Result<String> {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(crate::error::io(path))?;
        let id = (
            path.to_owned(),
            meta.len(),
            meta.modified().map_err(crate::error::io(path))?,
        );
        if let Some(d) = self
            .ova_digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(d.clone());
        }
        let key = format!("ova:{}", path.display());
        self.emit(progress, &key, Phase::Hashing);
        // The callback is borrowed; hashing runs on a blocking thread: relay through a channel.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hashing = crate::fetch::sha256_file(path, move |done, total| {
            let _ = tx.send((done, total));
        });
        tokio::pin!(hashing);
        let digest = loop {
            tokio::select! {
                r = &mut hashing => break r?,
                Some((done, total)) = rx.recv() => progress(Progress {
                    key: key.clone(),
                    event: ProgressEvent::Bytes { what: "hash", done, total: Some(total) },
                }),
            }
        };
        self.ova_digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, digest.clone());
        Ok(digest)
    }

    /// Whether a listed template of ours is done converting: PVE writes `template: 1` before
    /// its `qmtemplate` worker turns the disks into base volumes (and leaves it when that
    /// fails), so the flag alone can show a template that cannot be linked-cloned yet.
    async fn converted(&self, e: &VmEntry, key: &str) -> Result<bool> {
        let cfg = self.pve.node(&self.cfg.node).qemu(e.vmid).config().await?;
        let disk = boot_disk_of_key(key);
        // `local-lvm:base-9000-disk-0`, or on a directory `local:9000/base-9000-disk-0.qcow2`.
        let file = cfg.get(&disk).unwrap_or_default();
        let volname = file.split(',').next().and_then(|f| f.split_once(':'));
        Ok(volname.is_some_and(|(_, v)| v.split('/').any(|p| p.starts_with("base-"))))
    }

    /// A template from a listing entry.
    fn template_of(&self, e: &VmEntry, key: &str) -> Template {
        Template {
            vmid: e.vmid,
            node: self.cfg.node.clone(),
            key: key.to_owned(),
            tags: tags_of(e),
            boot_disk: boot_disk_of_key(key),
            disk_bytes: maxdisk(e),
            nics: Vec::new(),
        }
    }

    async fn existing(&self, tag: &str) -> Result<Template> {
        let node = self.pve.node(&self.cfg.node);
        let list = node.qemu_list().await?;
        let Some(e) = list
            .iter()
            .filter(|e| is_template(e) && tags_of(e).iter().any(|t| t == tag))
            .min_by_key(|e| e.vmid)
        else {
            return Err(Error::TemplateNotFound {
                tag: tag.to_owned(),
                node: self.cfg.node.clone(),
            });
        };
        // A user's template: its disks and NICs are not ours to know without reading it.
        let cfg = node.qemu(e.vmid).config().await?;
        let keys: Vec<&String> = cfg.0.keys().collect();
        let boot_disk = ["scsi", "virtio", "sata", "ide"]
            .iter()
            .find_map(|bus| {
                (0..31).map(|n| format!("{bus}{n}")).find(|k| {
                    keys.contains(&k) && cfg.get(k).is_some_and(|v| !v.contains("media=cdrom"))
                })
            })
            .unwrap_or_else(|| "scsi0".into());
        let mut nics: Vec<String> = keys
            .iter()
            .filter(|k| {
                k.strip_prefix("net")
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .map(|k| k.to_string())
            .collect();
        nics.sort();
        Ok(Template {
            nics,
            boot_disk,
            ..self.template_of(e, tag)
        })
    }

    /// Deterministic probe order of VM ids for `key`.
    fn probe_order(&self, key: &str) -> impl Iterator<Item = u32> + '_ {
        let (start, end) = (*self.cfg.vmid_range.start(), *self.cfg.vmid_range.end());
        let span = u64::from(end - start) + 1;
        let h = sha2::Sha256::digest(key.as_bytes());
        let first = u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % span;
        (0..span).map(move |i| start + ((first + i) % span) as u32)
    }

    async fn remove_vm(&self, vmid: Vmid) -> Result<()> {
        let vm = self.pve.node(&self.cfg.node).qemu(vmid);
        let gone = |e: &pve_client::Error| e.is_not_found();
        match vm.status().await {
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(s) if s.is_running() => {
                let upid = vm.stop().await?;
                self.pve.wait_task(&upid, self.wait_opts()).await?;
            }
            Ok(_) => {}
        }
        match vm.destroy(DestroyOptions::thorough()).await {
            Ok(upid) => match self.pve.wait_task(&upid, self.wait_opts()).await {
                Err(e) if gone(&e) => Ok(()),
                r => r.map(drop).map_err(Into::into),
            },
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the claim VM at the first free id of the key's probe order. `Ok(None)`: the
    /// id we tried was taken meanwhile (by whom, the next listing tells).
    async fn claim(
        &self,
        plan: &Plan,
        list: &[VmEntry],
        elsewhere: &mut Vec<u32>,
    ) -> Result<Option<Vmid>> {
        let node = self.pve.node(&self.cfg.node);
        let now = unix_now();
        let tags = [
            TAG.to_owned(),
            plan.key_tag(),
            BUILDING_TAG.to_owned(),
            format!("{STARTED_TAG_PREFIX}{now}"),
        ]
        .join(";");
        let Some(id) = self
            .probe_order(&plan.key)
            .find(|id| !list.iter().any(|e| e.vmid.0 == *id) && !elsewhere.contains(id))
        else {
            return Err(Error::NoFreeVmid {
                start: *self.cfg.vmid_range.start(),
                end: *self.cfg.vmid_range.end(),
            });
        };
        let vmid = Vmid(id);
        let os = match plan.kind {
            PlanKind::Ova { .. } => plan.opts.os_type,
            _ => OsType::L26,
        };
        let p = Params::new()
            .with(
                "name",
                format!("{FILE_PREFIX}tpl-{}", plan.key.replace('.', "-")),
            )
            .with("tags", tags.as_str())
            .with("memory", self.cfg.bake_memory_mb)
            .with("cores", self.cfg.bake_cores)
            .with("cpu", plan.opts.cpu.as_deref().unwrap_or("host"))
            .with("ostype", os.as_str())
            .with("scsihw", "virtio-scsi-single")
            .with("serial0", "socket")
            .with("agent", "enabled=1")
            .with("net0", format!("virtio,bridge={}", self.cfg.bake_bridge))
            .with(
                "description",
                format!(
                    "pvesandbox template {} (built by pid {} since {now})",
                    plan.key,
                    std::process::id()
                ),
            );
        match node.qemu_create(vmid, &p).await {
            Ok(upid) => {
                self.pve.wait_task(&upid, self.wait_opts()).await?;
                Ok(Some(vmid))
            }
            Err(e) if e.is_already_exists() => {
                // Ids are cluster-wide but the listing is this node's: an id taken on another
                // node never shows in it, so remember it rather than retry it forever.
                let listed_now = self
                    .pve
                    .node(&self.cfg.node)
                    .qemu_list()
                    .await?
                    .iter()
                    .any(|e| e.vmid == vmid);
                if !listed_now {
                    elsewhere.push(id);
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) async fn ensure(
    t: &Templates,
    source: &VmSource,
    opts: &BakeOptions,
    progress: ProgressFn<'_>,
) -> Result<Template> {
    let plan = Plan::of(t, source, opts, progress).await?;
    if let PlanKind::Existing = plan.kind {
        return t.existing(&plan.key).await;
    }
    let key_tag = plan.key_tag();
    let node = t.pve.node(&t.cfg.node);
    let deadline = Instant::now() + t.cfg.wait_timeout;
    let mut backoff = Duration::from_millis(20);
    let mut waiting_on = None;
    let mut elsewhere = Vec::new();
    loop {
        let list = node.qemu_list().await?;
        let ours = |e: &&VmEntry| {
            let tags = tags_of(e);
            tags.iter().any(|x| x == TAG) && tags.contains(&key_tag)
        };
        if let Some(e) = list
            .iter()
            .filter(ours)
            .filter(|e| is_template(e))
            .min_by_key(|e| e.vmid)
            && t.converted(e, &plan.key).await?
        {
            return Ok(t.template_of(e, &plan.key));
        }
        // Not converted yet: a build in progress like any other claim (taken over once stale).
        if let Some(c) = list.iter().filter(ours).min_by_key(|e| e.vmid) {
            let age = started_at(&tags_of(c)).map(|s| unix_now().saturating_sub(s));
            if age.is_none_or(|a| a > t.cfg.stale_after.as_secs()) {
                t.emit(progress, &plan.key, Phase::TakingOver { vmid: c.vmid });
                t.remove_vm(c.vmid).await?;
                continue;
            }
            if waiting_on != Some(c.vmid) {
                t.emit(
                    progress,
                    &plan.key,
                    Phase::WaitingForOtherBuilder { vmid: c.vmid },
                );
                waiting_on = Some(c.vmid);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    key: plan.key.clone(),
                    waiting_for: format!("for the build in VM {}", c.vmid),
                    secs: t.cfg.wait_timeout.as_secs(),
                });
            }
            // Polling another process's build: nothing to await but PVE's state.
            tokio::time::sleep(backoff.min(deadline - Instant::now())).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        }
        let Some(vmid) = t.claim(&plan, &list, &mut elsewhere).await? else {
            continue;
        };
        // Settle a double claim (see the crate docs): the lowest id builds.
        let after = node.qemu_list().await?;
        let rival = after
            .iter()
            .filter(ours)
            .filter(|e| e.vmid != vmid)
            .any(|e| is_template(e) || e.vmid < vmid);
        if rival {
            t.remove_vm(vmid).await?;
            continue;
        }
        t.emit(progress, &plan.key, Phase::Claimed { vmid });
        return match bake(t, &plan, vmid, progress).await {
            Ok(tpl) => Ok(tpl),
            Err(e) => {
                // Leave no half-built claim behind: waiters then retry instead of timing out.
                if let Err(c) = t.remove_vm(vmid).await {
                    tracing::warn!(%vmid, "removing the failed build's VM: {c}");
                }
                Err(e)
            }
        };
    }
}

async fn bake(
    t: &Templates,
    plan: &Plan,
    vmid: Vmid,
    progress: ProgressFn<'_>,
) -> Result<Template> {
    let node = t.pve.node(&t.cfg.node);
    let vm = node.qemu(vmid);
    let files = node.storage(&t.cfg.file_storage);
    let have: Vec<String> = files
        .content(None)
        .await?
        .into_iter()
        .map(|c| c.volid)
        .collect();
    let fs = &t.cfg.file_storage;
    let volid = |content: &str, name: &str| format!("{fs}:{content}/{name}");
    let image_file = plan.image_file().expect("built-in or OVA");
    let image_vol = volid("import", &image_file);
    let bake_err = |message: String| Error::Bake {
        key: plan.key.clone(),
        vmid,
        message,
    };
    if have.contains(&image_vol) {
        t.emit(
            progress,
            &plan.key,
            Phase::ImageCached {
                volid: image_vol.clone(),
            },
        );
    } else {
        fetch_image(t, plan, &image_file, progress).await?;
    }
    let disks: Vec<String> = match &plan.kind {
        PlanKind::BuiltIn(_, spec) => match &spec.format {
            ImageFormat::Ova { disk } => vec![format!("{image_vol}/{disk}")],
            _ => vec![image_vol.clone()],
        },
        PlanKind::Ova { path, .. } => crate::fetch::ova_disks(path)
            .await?
            .into_iter()
            .map(|d| format!("{image_vol}/{d}"))
            .collect(),
        PlanKind::Existing => unreachable!("existing templates are not baked"),
    };
    let bus = plan.opts.disk_controller;
    let seed_slot = match bus {
        DiskController::Scsi => "ide2",
        DiskController::Ide => "sata0",
    };
    let verify = plan.verify_agent();
    let mut p = Params::new();
    for (i, d) in disks.iter().enumerate() {
        p.push(
            &bus.key(i as u32),
            format!("{}:0,import-from={d}", t.cfg.image_storage),
        );
    }
    p.push("boot", format!("order={}", bus.key(0)));
    if verify {
        let seed = NoCloudSeed::bake(&t.cfg.packages);
        let name = seed.filename();
        let seed_vol = volid("iso", &name);
        if !have.contains(&seed_vol) {
            upload_seed(t, plan, &seed, &name, progress).await?;
        }
        p.push(seed_slot, format!("{seed_vol},media=cdrom"));
    }
    t.emit(progress, &plan.key, Phase::ImportingDisks);
    if let Some(upid) = vm.update_config_async(&p).await? {
        t.pve.wait_task(&upid, t.wait_opts()).await?;
    }
    if verify {
        t.emit(progress, &plan.key, Phase::Booting);
        let upid = vm.start().await?;
        t.pve.wait_task(&upid, t.wait_opts()).await?;
        t.emit(progress, &plan.key, Phase::WaitingForAgent);
        wait_agent(t, vmid)
            .await
            .map_err(|e| bake_err(e.to_string()))?;
        t.emit(progress, &plan.key, Phase::CloudInit);
        let windows = plan.opts.os_type.is_windows() && matches!(plan.kind, PlanKind::Ova { .. });
        if !windows {
            match agent_run(
                t,
                vmid,
                &["cloud-init", "status", "--wait"],
                t.cfg.cloud_init_timeout,
            )
            .await
            {
                Ok((_, out)) if out.contains("status: done") => {
                    // Clones must not share the bake's machine id (same DHCP leases) nor
                    // think cloud-init already ran for them.
                    agent_run(
                        t,
                        vmid,
                        &["cloud-init", "clean", "--machine-id", "--logs"],
                        t.cfg.agent_timeout,
                    )
                    .await
                    .map_err(|e| bake_err(format!("cloud-init clean: {e}")))?;
                }
                Ok((code, out)) => {
                    return Err(bake_err(format!(
                        "cloud-init status --wait exited {code} without 'status: done': {}",
                        out.trim()
                    )));
                }
                // An OVA without cloud-init whose agent answered is fine as it is.
                Err(e) if matches!(plan.kind, PlanKind::Ova { .. }) => {
                    tracing::info!(key = %plan.key, "no cloud-init in the OVA ({e}); agent answered");
                }
                Err(e) => return Err(bake_err(format!("cloud-init status --wait: {e}"))),
            }
        }
        t.emit(progress, &plan.key, Phase::ShuttingDown);
        let upid = vm
            .shutdown(ShutdownOptions {
                timeout: Some(300),
                force_stop: true,
            })
            .await?;
        t.pve.wait_task(&upid, t.wait_opts()).await?;
    }
    t.emit(progress, &plan.key, Phase::Sealing);
    let started = unix_now();
    let tags = [
        TAG.to_owned(),
        plan.key_tag(),
        format!("{STARTED_TAG_PREFIX}{started}"),
    ]
    .join(";");
    let mut delete = vec!["net0"];
    if verify {
        delete.push(seed_slot);
    }
    vm.update_config(
        &Params::new()
            .with("delete", delete.join(","))
            .with("tags", tags.as_str())
            .with("description", format!("pvesandbox template {}", plan.key)),
    )
    .await?;
    let upid = vm.template().await?;
    t.pve.wait_task(&upid, t.wait_opts()).await?;
    let list = node.qemu_list().await?;
    let e = list
        .iter()
        .find(|e| e.vmid == vmid)
        .ok_or_else(|| bake_err("the template vanished after conversion".into()))?;
    t.emit(progress, &plan.key, Phase::Ready { vmid });
    Ok(t.template_of(e, &plan.key))
}

async fn fetch_image(
    t: &Templates,
    plan: &Plan,
    file: &str,
    progress: ProgressFn<'_>,
) -> Result<()> {
    let node = t.pve.node(&t.cfg.node);
    let storage = node.storage(&t.cfg.file_storage);
    match &plan.kind {
        PlanKind::BuiltIn(_, spec) if !matches!(spec.format, ImageFormat::TarXzRaw { .. }) => {
            t.emit(
                progress,
                &plan.key,
                Phase::ServerDownload {
                    url: spec.url.clone(),
                },
            );
            let upid = storage
                .download_url(&DownloadUrl {
                    url: spec.url.clone(),
                    content: "import".into(),
                    filename: file.to_owned(),
                    checksum: Some((
                        spec.checksum.algorithm.as_str().into(),
                        spec.checksum.hex.clone(),
                    )),
                    compression: None,
                })
                .await?;
            t.pve.wait_task(&upid, t.wait_opts()).await?;
        }
        PlanKind::BuiltIn(_, spec) => {
            let ImageFormat::TarXzRaw { disk } = &spec.format else {
                unreachable!("matched above")
            };
            t.emit(
                progress,
                &plan.key,
                Phase::ClientDownload {
                    url: spec.url.clone(),
                },
            );
            let key = plan.key.clone();
            let bytes = |what: &'static str| {
                let key = key.clone();
                move |done: u64, total: Option<u64>| {
                    progress(Progress {
                        key: key.clone(),
                        event: ProgressEvent::Bytes { what, done, total },
                    })
                }
            };
            let archive =
                crate::fetch::download_cached(spec, &t.cfg.cache_dir, &bytes("download")).await?;
            t.emit(progress, &plan.key, Phase::Extracting);
            let raw = t.cfg.cache_dir.join(file);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let extracting = crate::fetch::extract_tar_xz(&archive, disk, &raw, move |d| {
                let _ = tx.send(d);
            });
            tokio::pin!(extracting);
            let report = bytes("extract");
            loop {
                tokio::select! {
                    r = &mut extracting => { r?; break; }
                    Some(d) = rx.recv() => report(d, None),
                }
            }
            upload(t, plan, &raw, "import", file, progress).await?;
        }
        PlanKind::Ova { path, sha256 } => {
            let _ = sha256;
            upload(t, plan, path, "import", file, progress).await?;
        }
        PlanKind::Existing => unreachable!("existing templates are not fetched"),
    }
    Ok(())
}

async fn upload(
    t: &Templates,
    plan: &Plan,
    path: &std::path::Path,
    content: &str,
    file: &str,
    progress: ProgressFn<'_>,
) -> Result<()> {
    t.emit(
        progress,
        &plan.key,
        Phase::Uploading {
            filename: file.to_owned(),
        },
    );
    let len = tokio::fs::metadata(path)
        .await
        .map_err(crate::error::io(path))?
        .len();
    let checksum = match &plan.kind {
        PlanKind::Ova { sha256, .. } if content == "import" => {
            Some(("sha256".into(), sha256.clone()))
        }
        _ => None,
    };
    let upid = t
        .pve
        .node(&t.cfg.node)
        .storage(&t.cfg.file_storage)
        .upload(&Upload {
            file: path.to_owned(),
            content: content.into(),
            filename: file.to_owned(),
            checksum,
        })
        .await?;
    t.pve.wait_task(&upid, t.wait_opts()).await?;
    progress(Progress {
        key: plan.key.clone(),
        event: ProgressEvent::Bytes {
            what: "upload",
            done: len,
            total: Some(len),
        },
    });
    Ok(())
}

async fn upload_seed(
    t: &Templates,
    plan: &Plan,
    seed: &NoCloudSeed,
    name: &str,
    progress: ProgressFn<'_>,
) -> Result<()> {
    let iso = seed.to_iso().map_err(|e| Error::Bake {
        key: plan.key.clone(),
        vmid: Vmid(0),
        message: format!("writing the seed ISO: {e}"),
    })?;
    tokio::fs::create_dir_all(&t.cfg.cache_dir)
        .await
        .map_err(crate::error::io(&t.cfg.cache_dir))?;
    let path = t
        .cfg
        .cache_dir
        .join(format!("{name}.{}", std::process::id()));
    tokio::fs::write(&path, &iso)
        .await
        .map_err(crate::error::io(&path))?;
    let r = upload(t, plan, &path, "iso", name, progress).await;
    let _ = tokio::fs::remove_file(&path).await;
    r
}

fn agent_path(t: &Templates, vmid: Vmid, cmd: &str) -> String {
    format!("/nodes/{}/qemu/{vmid}/agent/{cmd}", t.cfg.node)
}

/// Pings the agent until it answers (it comes up when cloud-init has installed it).
async fn wait_agent(t: &Templates, vmid: Vmid) -> Result<()> {
    let deadline = Instant::now() + t.cfg.agent_timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        match t
            .pve
            .post(&agent_path(t, vmid, "ping"), &Params::new())
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.status() == Some(500) && Instant::now() < deadline => {
                // Nothing to await but the guest: poll with backoff under the deadline.
                tokio::time::sleep(backoff.min(deadline - Instant::now())).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) if e.status() == Some(500) => {
                return Err(Error::Timeout {
                    key: format!("VM {vmid}"),
                    waiting_for: format!("for the guest agent ({e})"),
                    secs: t.cfg.agent_timeout.as_secs(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `cmd` through the agent and waits for it: (exit code, stdout).
async fn agent_run(
    t: &Templates,
    vmid: Vmid,
    cmd: &[&str],
    timeout: Duration,
) -> Result<(i64, String)> {
    let v = t
        .pve
        .post(
            &agent_path(t, vmid, "exec"),
            &Params::new().with_array("command", cmd.iter().copied()),
        )
        .await?;
    let pid = v["pid"]
        .as_i64()
        .or_else(|| v["pid"].as_str()?.parse().ok())
        .ok_or_else(|| Error::Bake {
            key: format!("VM {vmid}"),
            vmid,
            message: format!("agent exec answered without a pid: {v}"),
        })?;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let s = t
            .pve
            .get(
                &agent_path(t, vmid, "exec-status"),
                &Params::new().with("pid", pid),
            )
            .await?;
        let exited =
            matches!(&s["exited"], Value::Bool(true)) || s["exited"] == 1 || s["exited"] == "1";
        if exited {
            let code = s["exitcode"].as_i64().unwrap_or(-1);
            // PVE hands decoded bytes over as one character per byte.
            let out: String = s["out-data"].as_str().unwrap_or_default().to_owned();
            return Ok((code, out));
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                key: format!("VM {vmid}"),
                waiting_for: format!("for `{}`", cmd.join(" ")),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(backoff.min(deadline - Instant::now())).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
