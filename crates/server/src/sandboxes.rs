//! The server's sandboxes: each is one pvesandbox sample of a run of its own on the process's
//! one [`Fleet`] (its shape comes from the create request, so runs cannot be shared), known by
//! its [`SampleId`] from the moment the create is answered.
//!
//! A create is answered `202 Pending` at once and provisioned in the background; the run id is
//! drawn first, so the sandbox id (`s0.<run>`, the tail of its VM names) is known before
//! anything exists in Proxmox, and everything it will make is findable by it. A delete that
//! arrives while provisioning runs is carried out when it ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use guest_agent::ExecRequest;
use pvesandbox::{EvalConfig, Fleet, Run, Sample, SampleId, SampleState, TaskOptions};
use pvesandbox_templates::BuiltIn;

use crate::error::ApiError;
use crate::wire;

/// The entrypoint OpenSandbox's SDK sends when the caller gives none: an idle process a VM
/// does not need.
const IDLE_ENTRYPOINT: [&str; 3] = ["tail", "-f", "/dev/null"];

/// The shortest `timeout` the spec allows, seconds.
const MIN_TIMEOUT_SECS: i64 = 60;

/// What each sandbox VM's owner record notes ([`pvesandbox::OwnerRecord::notes`]), so a
/// restarted server takes its sandboxes over from Proxmox alone ([`Sandboxes::recover`]).
/// The VM's readers see them: the environment (secrets, often) goes into the guest instead
/// ([`ENV_FILE`]).
mod note {
    /// Made by this server; the value is [`SERVER`](self::SERVER_VALUE).
    pub const SERVER: &str = "server";
    /// The one value of [`SERVER`].
    pub const SERVER_VALUE: &str = "opensandbox";
    /// `image.uri` as given.
    pub const IMAGE: &str = "image";
    /// RAM, MiB, from `resourceLimits`.
    pub const RAM_MB: &str = "ram_mb";
    /// vCPUs, from `resourceLimits`.
    pub const VCPUS: &str = "vcpus";
    /// The entrypoint, a JSON array.
    pub const ENTRYPOINT: &str = "entrypoint";
    /// The metadata, a JSON object.
    pub const METADATA: &str = "metadata";
    /// When the create came, unix milliseconds.
    pub const CREATED: &str = "created_ms";
    /// Present when `timeout` was null: no expiry in the API (the record's is a backstop).
    pub const NO_TIMEOUT: &str = "no_timeout";
    /// Present once provisioning ended well: a sandbox without it was being made when its
    /// server died, and is removed rather than adopted.
    pub const READY: &str = "ready";
}

/// Where a sandbox's `env` lives in its guest (root only), for a restarted server.
const ENV_FILE: &str = "/var/lib/pvesandbox/env.json";

/// The most `env` JSON a sandbox keeps, and a restarted server reads back from the guest
/// (which may have replaced it with anything).
const MAX_ENV_BYTES: usize = 64 * 1024;

/// The most `metadata` (as JSON) a sandbox keeps: PVE holds a VM description to 8 KiB, and the
/// owner record and the rest of the notes need about 1 KiB of it.
const MAX_METADATA_BYTES: usize = 4096;

/// The most `entrypoint` (as JSON) a sandbox keeps, under the same limit.
const MAX_ENTRYPOINT_BYTES: usize = 2048;

/// Every sandbox of the server, by id.
pub struct Sandboxes {
    fleet: Fleet,
    pool_id: String,
    /// Whether sandboxes reach the internet (the settings' `run.egress`).
    egress: bool,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Where state changes are published (`GET /v1/events`).
    pub feed: crate::feed::Feed,
    /// What `GET /metrics` reports.
    pub metrics: crate::metrics::Metrics,
}

/// One sandbox.
pub struct Entry {
    /// `s0.<run>`.
    pub id: String,
    /// The same, as the fleet knows it.
    pub sample_id: SampleId,
    /// When the create came.
    pub created_at: SystemTime,
    /// `image.uri` as given.
    pub image: String,
    /// As given.
    pub entrypoint: Vec<String>,
    /// As given, then as patched.
    metadata: Mutex<BTreeMap<String, String>>,
    /// The environment every command gets.
    pub env: BTreeMap<String, String>,
    expires_at: Mutex<Option<SystemTime>>,
    phase: Mutex<Phase>,
    changed_at: Mutex<SystemTime>,
    /// A delete came while it was still being made.
    delete_asked: AtomicBool,
}

enum Phase {
    Pending,
    Ready {
        run: Run,
        sample: Arc<Sample>,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
    Stopping,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind these locks; a panic elsewhere leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|t| format!("{t:.3}"))
        .unwrap_or_default()
}

impl Entry {
    /// The sample, once it runs.
    pub fn sample(&self) -> Option<Arc<Sample>> {
        match &*lock(&self.phase) {
            Phase::Ready { sample, .. } => Some(sample.clone()),
            _ => None,
        }
    }

    /// The sample, or a 409 naming the state when it is not made yet or is going.
    pub fn running(&self) -> Result<Arc<Sample>, ApiError> {
        self.sample()
            .ok_or_else(|| ApiError::conflict(format!("sandbox {} is {}", self.id, self.state())))
    }

    /// OpenSandbox's state name.
    pub fn state(&self) -> &'static str {
        match &*lock(&self.phase) {
            Phase::Pending => "Pending",
            Phase::Failed { .. } => "Failed",
            Phase::Stopping => "Stopping",
            Phase::Ready { sample, .. } => match sample.state() {
                SampleState::Pending => "Pending",
                SampleState::Running => "Running",
                SampleState::Pausing => "Pausing",
                SampleState::Paused => "Paused",
                SampleState::Resuming => "Resuming",
                SampleState::Terminating => "Stopping",
                SampleState::Terminated => "Terminated",
                SampleState::Failed { .. } => "Failed",
                _ => "Unknown",
            },
        }
    }

    /// Its metadata now.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        lock(&self.metadata).clone()
    }

    /// When the reaper removes it.
    pub fn expires_at(&self) -> Option<SystemTime> {
        *lock(&self.expires_at)
    }

    /// The wire form.
    pub fn wire(&self) -> wire::Sandbox {
        let (reason, message) = match &*lock(&self.phase) {
            Phase::Failed { reason, message } => {
                (Some((*reason).to_owned()), Some(message.clone()))
            }
            _ => (None, None),
        };
        wire::Sandbox {
            id: self.id.clone(),
            image: Some(wire::ImageSpec {
                uri: self.image.clone(),
            }),
            status: wire::SandboxStatus {
                state: self.state(),
                reason,
                message,
                last_transition_at: Some(rfc3339(*lock(&self.changed_at))),
            },
            metadata: self.metadata(),
            entrypoint: self.entrypoint.clone(),
            expires_at: self.expires_at().map(rfc3339),
            created_at: rfc3339(self.created_at),
        }
    }

    /// Since the create came.
    pub fn age(&self) -> Duration {
        self.created_at.elapsed().unwrap_or_default()
    }

    fn set(&self, phase: Phase) {
        *lock(&self.phase) = phase;
        *lock(&self.changed_at) = SystemTime::now();
    }
}

/// The VM source an `image.uri` names: a built-in by its name or a Docker-style alias, or an
/// existing template by its tag (`pve-template:<tag>`).
pub fn source_of(uri: &str) -> Result<serde_json::Value, ApiError> {
    if let Some(tag) = uri.strip_prefix("pve-template:") {
        if tag.is_empty() {
            return Err(ApiError::invalid("image.uri", "pve-template: needs a tag"));
        }
        return Ok(serde_json::json!({ "existing_vm_template_tag": tag }));
    }
    let alias = match uri {
        "debian:13" | "debian:trixie" | "debian" | "debian:latest" => Some(BuiltIn::Debian13),
        "ubuntu:24.04" | "ubuntu:noble" | "ubuntu" | "ubuntu:latest" => Some(BuiltIn::Ubuntu2404),
        "kalilinux/kali-rolling" | "kali" => Some(BuiltIn::Kali20254),
        _ => None,
    };
    let Some(built_in) = alias.or_else(|| BuiltIn::ALL.into_iter().find(|b| b.name() == uri))
    else {
        let names: Vec<&str> = BuiltIn::ALL.iter().map(|b| b.name()).collect();
        return Err(ApiError::invalid(
            "image.uri",
            format!(
                "{uri:?} is not an image here: use a built-in ({}; or debian:13, ubuntu:24.04), \
                 or pve-template:<tag> for a template of your own",
                names.join(", ")
            ),
        ));
    };
    Ok(serde_json::json!({ "built_in": built_in.name() }))
}

/// vCPUs from a Kubernetes CPU quantity (`"2"`, `"500m"`, `"1.5"`), rounded up.
pub fn cores_of(q: &str) -> Result<u32, ApiError> {
    let bad = || {
        ApiError::invalid(
            "resourceLimits.cpu",
            format!("{q:?} is not a CPU quantity (2, 500m)"),
        )
    };
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<u64>().map_err(|_| bad())?,
        None => (q.parse::<f64>().map_err(|_| bad())? * 1000.0).ceil() as u64,
    };
    if millis == 0 || millis > 128_000 {
        return Err(bad());
    }
    Ok(millis.div_ceil(1000) as u32)
}

/// MiB from a Kubernetes memory quantity (`"2Gi"`, `"512Mi"`, `"1G"`, bytes), rounded up.
pub fn memory_mib_of(q: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::invalid(
            "resourceLimits.memory",
            format!("{q:?} is not a memory quantity (512Mi, 2Gi)"),
        )
    };
    let units: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let bytes = num.parse::<f64>().map_err(|_| bad())? * mult;
    let mib = (bytes / (1024.0 * 1024.0)).ceil();
    if !(16.0..=4_194_304.0).contains(&mib) {
        return Err(bad());
    }
    Ok(mib as u64)
}

impl Sandboxes {
    /// Sandboxes on `fleet`'s pool `pool_id`.
    pub fn new(fleet: Fleet, pool_id: String) -> Arc<Sandboxes> {
        Arc::new(Sandboxes {
            egress: fleet.settings().run.egress,
            fleet,
            pool_id,
            entries: Mutex::new(BTreeMap::new()),
            feed: Default::default(),
            metrics: Default::default(),
        })
    }

    /// One sandbox.
    pub fn get(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        lock(&self.entries)
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::no_sandbox(id))
    }

    /// Every sandbox, by id.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        lock(&self.entries).values().cloned().collect()
    }

    /// Validates `req`, draws the sandbox's id and provisions it in the background.
    pub async fn create(
        self: &Arc<Self>,
        req: wire::CreateSandboxRequest,
    ) -> Result<Arc<Entry>, ApiError> {
        let image = req.image.ok_or_else(|| {
            ApiError::invalid("image", "required (image.uri); snapshots are not served")
        })?;
        if req.snapshot_id.is_some() {
            return Err(ApiError::invalid(
                "snapshotId",
                "restoring snapshots is not served yet: give image.uri",
            ));
        }
        if req
            .volumes
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != &serde_json::json!([]))
        {
            return Err(ApiError::invalid(
                "volumes",
                "not served: a VM's disk is its own; copy files in through execd",
            ));
        }
        if let Some(p) = &req.platform
            && (p.os != "linux" || p.arch != "amd64")
        {
            return Err(ApiError::invalid(
                "platform",
                format!("only linux/amd64 is served, not {}/{}", p.os, p.arch),
            ));
        }
        if let Some(p) = &req.network_policy {
            let default = p.default_action.as_deref().unwrap_or("deny");
            let enforced = if self.egress { "allow" } else { "deny" };
            if default != enforced || !p.egress.is_empty() {
                return Err(ApiError::invalid(
                    "networkPolicy",
                    format!(
                        "per-sandbox egress rules are not served yet; sandboxes here {} (networkPolicy {{\"defaultAction\": \"{enforced}\", \"egress\": []}} is accepted)",
                        if self.egress {
                            "reach the internet but no private range"
                        } else {
                            "reach nothing outside their own network"
                        }
                    ),
                ));
            }
        }
        let timeout = match req.timeout {
            None => None,
            Some(t) if t >= MIN_TIMEOUT_SECS => Some(Duration::from_secs(t as u64)),
            Some(t) => {
                return Err(ApiError::invalid(
                    "timeout",
                    format!("{t} s: at least {MIN_TIMEOUT_SECS} s, or null for manual cleanup"),
                ));
            }
        };
        for k in req.env.keys() {
            if !is_env_name(k) {
                return Err(ApiError::invalid(
                    "env",
                    format!("{k:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
        }
        let cores = req
            .resource_limits
            .get("cpu")
            .map(|q| cores_of(q))
            .transpose()?
            .unwrap_or(1);
        let memory = req
            .resource_limits
            .get("memory")
            .map(|q| memory_mib_of(q))
            .transpose()?
            .unwrap_or(2048);
        let eval = serde_json::json!({
            "instance_pool_id": self.pool_id,
            "vms_config": [{
                "vm_source_config": source_of(&image.uri)?,
                "ram_mb": memory,
                "vcpus": cores,
            }],
        });
        let eval = EvalConfig::from_json(&eval.to_string())?;
        let entrypoint_json = json_within(
            "entrypoint",
            &req.entrypoint,
            MAX_ENTRYPOINT_BYTES,
            "put a longer command in a script",
        )?;
        let metadata_json = json_within(
            "metadata",
            &req.metadata,
            MAX_METADATA_BYTES,
            "Proxmox keeps it in the VM's description",
        )?;
        json_within("env", &req.env, MAX_ENV_BYTES, "pass large values as files")?;
        let run_id = self.fleet.fresh_run_id(&self.pool_id).await?;
        let sample_id = SampleId {
            run: run_id.clone(),
            seq: 0,
        };
        let id = sample_id.to_string();
        let now = SystemTime::now();
        let mut notes = BTreeMap::from([
            (note::SERVER.to_owned(), note::SERVER_VALUE.to_owned()),
            (note::IMAGE.to_owned(), image.uri.clone()),
            (note::RAM_MB.to_owned(), memory.to_string()),
            (note::VCPUS.to_owned(), cores.to_string()),
            (note::ENTRYPOINT.to_owned(), entrypoint_json),
            (note::METADATA.to_owned(), metadata_json),
            (
                note::CREATED.to_owned(),
                now.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
                    .to_string(),
            ),
        ]);
        if timeout.is_none() {
            notes.insert(note::NO_TIMEOUT.to_owned(), "1".to_owned());
        }
        notes_fit(&run_id, &notes)?;
        let entry = Arc::new(Entry {
            id: id.clone(),
            sample_id,
            created_at: now,
            image: image.uri,
            entrypoint: req.entrypoint,
            metadata: Mutex::new(req.metadata),
            env: req.env,
            expires_at: Mutex::new(timeout.map(|t| now + t)),
            phase: Mutex::new(Phase::Pending),
            changed_at: Mutex::new(now),
            delete_asked: AtomicBool::new(false),
        });
        lock(&self.entries).insert(id, entry.clone());
        self.announce(&entry);
        let me = self.clone();
        let e = entry.clone();
        tokio::spawn(async move { me.provision(e, eval, run_id, notes).await });
        Ok(entry)
    }

    async fn provision(
        self: Arc<Self>,
        entry: Arc<Entry>,
        eval: EvalConfig,
        run: pvesandbox::RunId,
        notes: BTreeMap<String, String>,
    ) {
        let opts = TaskOptions {
            run: Some(run),
            notes,
            ..Default::default()
        };
        let made = async {
            let run = self.fleet.run(eval, opts).await?;
            let sample = match run.sample_init().await {
                Ok(s) => s,
                Err(e) => {
                    let _ = run.task_cleanup().await;
                    return Err(e);
                }
            };
            let sample = Arc::new(sample);
            let rest = async {
                if let Some(t) = entry.expires_at() {
                    sample.renew(t).await?;
                }
                save_env(&entry, &sample).await?;
                self.start_entrypoint(&entry, &sample).await?;
                // Last: only now may a restarted server adopt it as it is.
                sample
                    .annotate(&BTreeMap::from([(note::READY.to_owned(), "1".to_owned())]))
                    .await
            };
            if let Err(e) = rest.await {
                let _ = sample.cleanup(false).await;
                let _ = run.task_cleanup().await;
                return Err(e);
            }
            Ok((run, sample))
        };
        let made = made.await;
        self.metrics.created(entry.age(), made.is_ok());
        match made {
            Ok((run, sample)) => {
                entry.set(Phase::Ready { run, sample });
                self.announce(&entry);
                if entry.delete_asked.load(Ordering::SeqCst) {
                    let _ = self.delete(&entry.id).await;
                }
            }
            Err(e) => {
                tracing::warn!(sandbox = %entry.id, error = %e, "provisioning failed");
                entry.set(Phase::Failed {
                    reason: "provision_failed",
                    message: e.to_string(),
                });
                self.announce(&entry);
                if entry.delete_asked.load(Ordering::SeqCst) {
                    lock(&self.entries).remove(&entry.id);
                }
            }
        }
    }

    /// Starts the entrypoint in the background, as the container's main process would be
    /// (the idle default is skipped: a VM stays up without it). Its output goes to
    /// `/var/log/pvesandbox-entrypoint.log`.
    async fn start_entrypoint(
        &self,
        entry: &Entry,
        sample: &Sample,
    ) -> Result<(), pvesandbox::Error> {
        if entry.entrypoint.is_empty() || entry.entrypoint == IDLE_ENTRYPOINT {
            return Ok(());
        }
        // argv goes in as positional parameters: no quoting of the caller's words.
        let mut argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "nohup \"$@\" >/var/log/pvesandbox-entrypoint.log 2>&1 </dev/null &".to_owned(),
            "entrypoint".to_owned(),
        ];
        argv.extend(entry.entrypoint.iter().cloned());
        let mut req = ExecRequest::new(argv);
        for (k, v) in &entry.env {
            req = req.env(k.clone(), v);
        }
        let out = sandbox_vm(sample)?.exec(req).await?;
        if !out.success() {
            return Err(pvesandbox::Error::Config {
                field: "entrypoint".into(),
                value: entry.entrypoint.join(" "),
                fix: format!(
                    "could not be started: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// Removes the sandbox: at once from the listing's point of view (`Stopping`), in the
    /// background in Proxmox; a pending one when its provisioning ends.
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<(), ApiError> {
        let entry = self.get(id)?;
        let taken = {
            let mut phase = lock(&entry.phase);
            match std::mem::replace(&mut *phase, Phase::Stopping) {
                Phase::Ready { run, sample } => Some((run, sample)),
                Phase::Pending => {
                    *phase = Phase::Pending;
                    entry.delete_asked.store(true, Ordering::SeqCst);
                    None
                }
                Phase::Failed { .. } => {
                    drop(phase);
                    lock(&self.entries).remove(id);
                    self.announce_gone(&entry);
                    return Ok(());
                }
                Phase::Stopping => None,
            }
        };
        *lock(&entry.changed_at) = SystemTime::now();
        self.announce(&entry);
        if let Some((run, sample)) = taken {
            let me = self.clone();
            tokio::spawn(async move { me.tear_down(&entry, run, sample).await });
        }
        Ok(())
    }

    async fn tear_down(&self, entry: &Entry, run: Run, sample: Arc<Sample>) {
        let done = async {
            sample.cleanup(false).await?;
            run.task_cleanup().await.map(drop)
        };
        match done.await {
            Ok(()) => {
                lock(&self.entries).remove(&entry.id);
                self.announce_gone(entry);
            }
            Err(e) => {
                entry.set(Phase::Failed {
                    reason: "cleanup_failed",
                    message: e.to_string(),
                });
                self.announce(entry);
            }
        }
    }

    /// Removes every running sandbox and waits until they are gone; pending ones are removed
    /// when their provisioning ends (or, if the process ends first, by `cleanup --expired`).
    pub async fn remove_all(&self) {
        let mut jobs = Vec::new();
        for entry in self.all() {
            let taken = {
                let mut phase = lock(&entry.phase);
                match std::mem::replace(&mut *phase, Phase::Stopping) {
                    Phase::Ready { run, sample } => Some((run, sample)),
                    other => {
                        *phase = other;
                        entry.delete_asked.store(true, Ordering::SeqCst);
                        None
                    }
                }
            };
            if let Some((run, sample)) = taken {
                jobs.push(async move { self.tear_down(&entry, run, sample).await });
            }
        }
        futures_util::future::join_all(jobs).await;
    }

    /// Moves the expiry (the spec: only later, and in the future).
    pub async fn renew(&self, id: &str, at: SystemTime) -> Result<(), ApiError> {
        let entry = self.get(id)?;
        if at <= SystemTime::now() {
            return Err(ApiError::invalid("expiresAt", "must be in the future"));
        }
        if entry.expires_at().is_some_and(|now| at <= now) {
            return Err(ApiError::invalid(
                "expiresAt",
                "must be later than the current expiresAt",
            ));
        }
        let sample = entry.sample().ok_or_else(|| {
            ApiError::conflict(format!(
                "sandbox {id} is {}; renew it once it runs",
                entry.state()
            ))
        })?;
        sample.renew(at).await?;
        *lock(&entry.expires_at) = Some(at);
        self.announce(&entry);
        Ok(())
    }

    /// Applies a JSON Merge Patch (RFC 7396) to the metadata: a string sets a key, `null`
    /// removes it. Keys and values follow Kubernetes' label rules, as the spec says; the
    /// result is kept in Proxmox (the owner records' notes) before it is answered.
    pub async fn patch_metadata(
        &self,
        id: &str,
        patch: BTreeMap<String, Option<String>>,
    ) -> Result<Arc<Entry>, ApiError> {
        let entry = self.get(id)?;
        for (k, v) in &patch {
            label_key(k)?;
            if let Some(v) = v {
                label_value(k, v)?;
            }
        }
        let sample = entry.sample().ok_or_else(|| {
            ApiError::conflict(format!(
                "sandbox {id} is {}; patch its metadata once it runs",
                entry.state()
            ))
        })?;
        let mut next = entry.metadata();
        for (k, v) in patch {
            match v {
                Some(v) => next.insert(k, v),
                None => next.remove(&k),
            };
        }
        let json = json_within(
            "metadata",
            &next,
            MAX_METADATA_BYTES,
            "after the patch; Proxmox keeps it in the VM's description",
        )?;
        sample
            .annotate(&BTreeMap::from([(note::METADATA.to_owned(), json)]))
            .await
            .map_err(|e| match e {
                pvesandbox::Error::Config { field, value, .. } if field == "notes" => {
                    ApiError::invalid(
                        "metadata",
                        format!(
                            "after the patch the VM's description would take {value}; Proxmox holds {}: shorten the metadata",
                            pvesandbox::DESCRIPTION_MAX
                        ),
                    )
                }
                e => e.into(),
            })?;
        *lock(&entry.metadata) = next;
        *lock(&entry.changed_at) = SystemTime::now();
        self.announce(&entry);
        Ok(entry)
    }

    /// Removes every sandbox whose expiry passed; called by the reaper.
    pub async fn reap(self: &Arc<Self>) {
        let now = SystemTime::now();
        let due: Vec<String> = self
            .all()
            .into_iter()
            .filter(|e| e.expires_at().is_some_and(|t| t <= now) && e.sample().is_some())
            .map(|e| e.id.clone())
            .collect();
        for id in due {
            tracing::info!(sandbox = %id, "expired: removing");
            if self.delete(&id).await.is_ok() {
                self.metrics.reaped();
                self.feed.publish(
                    "reaper",
                    &serde_json::json!({"sandboxId": id, "action": "expired"}),
                );
            }
        }
    }
}

impl Sandboxes {
    /// What the feed says of a sandbox: its wire form, where it lives and its VMs.
    pub fn inventory(&self, entry: &Entry) -> serde_json::Value {
        let info = self.fleet.sample(&entry.sample_id);
        serde_json::json!({
            "sandbox": entry.wire(),
            "instance": info.as_ref().map(|i| i.instance.clone()),
            "vms": info.map(|i| i.vms.iter().map(|(vmid, name)| serde_json::json!({
                "name": name, "vmid": vmid.0,
            })).collect::<Vec<_>>()).unwrap_or_default(),
        })
    }

    /// Publishes the sandbox's current form.
    pub fn announce(&self, entry: &Entry) {
        self.feed.publish("sandbox", &self.inventory(entry));
    }

    /// Passes a fleet event on to the feed; a pause or resume also changes the sandbox.
    pub fn on_sample_event(&self, ev: &pvesandbox::SampleEvent) {
        self.feed.publish("sample", &crate::feed::sample_event(ev));
        if matches!(
            ev.kind,
            pvesandbox::EventKind::Paused | pvesandbox::EventKind::Resumed
        ) && let Ok(entry) = self.get(&ev.sample.to_string())
        {
            self.announce(&entry);
        }
    }

    /// Publishes that the sandbox is gone (listing it no longer finds it).
    fn announce_gone(&self, entry: &Entry) {
        let mut w = entry.wire();
        w.status.state = "Terminated";
        w.status.last_transition_at = Some(rfc3339(SystemTime::now()));
        self.feed.publish(
            "sandbox",
            &serde_json::json!({"sandbox": w, "instance": null, "vms": []}),
        );
    }

    /// The instances sandboxes go to, for the feed's snapshot.
    pub fn instances(&self) -> serde_json::Value {
        let s = self.fleet.settings();
        serde_json::Value::Array(
            s.instances
                .iter()
                .filter(|i| i.pool_id == self.pool_id)
                .map(|i| {
                    serde_json::json!({
                        "instance": i.instance_id,
                        "node": i.node,
                        "maxSamples": i.max_samples,
                    })
                })
                .collect(),
        )
    }

    /// The fleet the sandboxes live on.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}

/// `value` as JSON, refused naming `field` when longer than `max` bytes (`hint`: why, or what
/// to do instead).
fn json_within<T: serde::Serialize>(
    field: &'static str,
    value: &T,
    max: usize,
    hint: &str,
) -> Result<String, ApiError> {
    let json = serde_json::to_string(value).unwrap_or_default();
    if json.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("{} bytes as JSON: at most {max} ({hint})", json.len()),
        ));
    }
    Ok(json)
}

/// Whether `notes` fit a VM description with the rest of its owner record (and the `ready`
/// note to come): the metadata and entrypoint are in it as JSON inside JSON, escaped twice.
fn notes_fit(run: &pvesandbox::RunId, notes: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let mut probe = pvesandbox::OwnerRecord::here(run, 0, "default", Duration::ZERO);
    probe.notes = notes.clone();
    probe.notes.insert(note::READY.to_owned(), "1".to_owned());
    probe.fits().map_err(|n| {
        ApiError::invalid(
            "metadata",
            format!(
                "with the entrypoint and the rest of the owner record, {n} characters of the VM's description; Proxmox holds {}: shorten the metadata",
                pvesandbox::DESCRIPTION_MAX
            ),
        )
    })
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters (`[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`); `opensandbox.io/` is reserved.
fn label_key(k: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::invalid("metadata", format!("key {k:?}: {why}"));
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p == "opensandbox.io" || p.ends_with(".opensandbox.io") {
            return Err(bad("the opensandbox.io/ prefix is reserved"));
        }
        let dns_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(dns_label) {
            return Err(bad("its prefix must be a DNS subdomain (example.com/)"));
        }
    }
    if !is_label_text(name) || name.is_empty() {
        return Err(bad(
            "a name of 1 to 63 characters: letters, digits, -, _ and ., starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or what [`label_key`] allows as a name.
fn label_value(k: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || is_label_text(v) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "metadata",
            format!(
                "value of {k:?}: at most 63 characters, letters, digits, -, _ and ., starting and ending with a letter or digit"
            ),
        ))
    }
}

fn is_label_text(s: &str) -> bool {
    let ends = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    s.len() <= 63
        && ends(s.as_bytes().first())
        && ends(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(k: &str) -> bool {
    k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && k.bytes().next().is_some_and(|b| !b.is_ascii_digit())
}

/// Keeps the sandbox's `env` in its guest, readable by root only, for a restarted server.
async fn save_env(entry: &Entry, sample: &Sample) -> Result<(), pvesandbox::Error> {
    if entry.env.is_empty() {
        return Ok(());
    }
    let json = serde_json::to_vec(&entry.env).unwrap_or_default();
    let dir = ENV_FILE.rsplit_once('/').map_or("/", |(d, _)| d);
    let req = ExecRequest::new([
        "sh".to_owned(),
        "-c".to_owned(),
        "umask 077 && mkdir -p \"$1\" && cat > \"$2\"".to_owned(),
        "save-env".to_owned(),
        dir.to_owned(),
        ENV_FILE.to_owned(),
    ])
    .stdin(json);
    let out = sandbox_vm(sample)?.exec(req).await?;
    if !out.success() {
        return Err(pvesandbox::Error::Config {
            field: "env".into(),
            value: String::new(),
            fix: format!(
                "could not be kept in the guest: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// The `env` a sandbox's guest kept ([`save_env`]). The guest may have rewritten the file:
/// it is read bounded and parsed strictly, and anything off yields no environment (with a
/// warning) rather than a failure; the guest only spoils its own commands' environment.
async fn load_env(id: &str, sample: &Sample) -> BTreeMap<String, String> {
    let vm = match sandbox_vm(sample) {
        Ok(vm) => vm,
        Err(_) => return BTreeMap::new(),
    };
    let parsed = match vm.read_file(ENV_FILE, Some(MAX_ENV_BYTES as u64)).await {
        Ok(bytes) => serde_json::from_slice::<BTreeMap<String, String>>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|env| match env.keys().find(|k| !is_env_name(k)) {
                Some(k) => Err(format!("{k:?} is not a variable name")),
                None => Ok(env),
            }),
        // No file: the sandbox had no env.
        Err(e) if e.kind() == pvesandbox::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e.to_string()),
    };
    parsed.unwrap_or_else(|why| {
        tracing::warn!(sandbox = %id, %why, "its env file is unusable: commands get no sandbox env");
        BTreeMap::new()
    })
}

enum Outcome {
    Adopted,
    Remove,
    Left,
}

/// What [`Sandboxes::recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Sandboxes taken over as they were.
    pub adopted: Vec<String>,
    /// Half-made sandboxes removed from Proxmox.
    pub removed: Vec<String>,
    /// Sandboxes left alone: their server still runs (on this host), or adopting failed.
    pub left: Vec<String>,
}

impl Sandboxes {
    /// Takes over what an earlier server left in Proxmox, before serving: every sandbox whose
    /// VMs say this server made it (their notes) and whose owner process is gone. A sandbox
    /// provisioned to the end is adopted (same id, image, metadata, expiry and env, its
    /// processes untouched, running or paused); one that was still being made when its server
    /// died on this host is removed with everything of its run, so a crash mid-create leaves
    /// nothing. A sandbox whose owner is provably alive (another server on this host) is left
    /// alone, and so is a half-made one whose server ran on another host (it may be making it
    /// still; its expiry is the backstop).
    pub async fn recover(self: &Arc<Self>) -> Result<Recovered, pvesandbox::Error> {
        let found = self.fleet.survey(&self.pool_id).await?;
        let mut out = Recovered::default();
        let jobs = found.into_iter().filter_map(|s| {
            let record = s.record.clone()?;
            if record.notes.get(note::SERVER).map(String::as_str) != Some(note::SERVER_VALUE) {
                return None;
            }
            Some(async move {
                let id = s.id.to_string();
                if record.owner_alive() {
                    return (s.id, id, Outcome::Left);
                }
                if !record.notes.contains_key(note::READY) {
                    // Half-made: by a server that died here, or one still making it on
                    // another host (a replica), which must not lose it under its feet.
                    if record.owner_gone_here() {
                        tracing::info!(sandbox = %id, "half-made by a server that died: removing");
                        return (s.id, id, Outcome::Remove);
                    }
                    tracing::info!(
                        sandbox = %id, host = %record.host,
                        "half-made by a server on another host: left to it (or to its expiry)"
                    );
                    return (s.id, id, Outcome::Left);
                }
                // A failure here may be passing (Proxmox busy): the sandbox is left for its
                // expiry (or `cleanup --run`), never removed on a guess.
                match self.adopt(&s, &record).await {
                    Ok(()) => (s.id, id, Outcome::Adopted),
                    Err(e) => {
                        tracing::warn!(
                            sandbox = %id, error = %e,
                            "cannot be adopted: left in Proxmox until it expires (`pvesandbox cleanup --run {}` removes it now)",
                            s.id.run
                        );
                        (s.id, id, Outcome::Left)
                    }
                }
            })
        });
        let results = futures_util::future::join_all(jobs).await;
        let instances: Vec<_> = self
            .fleet
            .settings()
            .instances
            .iter()
            .filter(|i| i.pool_id == self.pool_id)
            .cloned()
            .collect();
        for (sample, id, outcome) in results {
            match outcome {
                Outcome::Adopted => out.adopted.push(id),
                Outcome::Left => out.left.push(id),
                Outcome::Remove => {
                    // The whole run: a half-made sandbox may have a network and no VM yet.
                    let target = pvesandbox::CleanupTarget::Run(sample.run);
                    pvesandbox::cleanup(&instances, &target)
                        .await?
                        .into_result()?;
                    out.removed.push(id);
                }
            }
        }
        Ok(out)
    }

    async fn adopt(
        self: &Arc<Self>,
        s: &pvesandbox::Surveyed,
        record: &pvesandbox::OwnerRecord,
    ) -> Result<(), pvesandbox::Error> {
        let notes = &record.notes;
        let bad = |field: &str| pvesandbox::Error::Config {
            field: format!("owner record notes.{field}"),
            value: notes.get(field).cloned().unwrap_or_default(),
            fix: "not as this server writes it".into(),
        };
        let get = |field: &str| notes.get(field).ok_or_else(|| bad(field));
        let image = get(note::IMAGE)?.clone();
        let ram: u64 = get(note::RAM_MB)?.parse().map_err(|_| bad(note::RAM_MB))?;
        let cores: u32 = get(note::VCPUS)?.parse().map_err(|_| bad(note::VCPUS))?;
        let entrypoint: Vec<String> =
            serde_json::from_str(get(note::ENTRYPOINT)?).map_err(|_| bad(note::ENTRYPOINT))?;
        let metadata: BTreeMap<String, String> =
            serde_json::from_str(get(note::METADATA)?).map_err(|_| bad(note::METADATA))?;
        let created: u64 = get(note::CREATED)?
            .parse()
            .map_err(|_| bad(note::CREATED))?;
        let source = source_of(&image).map_err(|_| bad(note::IMAGE))?;
        let eval = serde_json::json!({
            "instance_pool_id": self.pool_id,
            "vms_config": [{"vm_source_config": source, "ram_mb": ram, "vcpus": cores}],
        });
        let eval = EvalConfig::from_json(&eval.to_string())?;
        let run = self
            .fleet
            .adopting_run(
                eval,
                TaskOptions {
                    run: Some(s.id.run.clone()),
                    notes: notes.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let sample = Arc::new(run.adopt(s.id.seq).await?);
        let id = s.id.to_string();
        let env = load_env(&id, &sample).await;
        let expires_at = (!notes.contains_key(note::NO_TIMEOUT))
            .then(|| std::time::UNIX_EPOCH + Duration::from_secs(record.expires));
        let now = SystemTime::now();
        let entry = Arc::new(Entry {
            id: id.clone(),
            sample_id: s.id.clone(),
            created_at: std::time::UNIX_EPOCH + Duration::from_millis(created),
            image,
            entrypoint,
            metadata: Mutex::new(metadata),
            env,
            expires_at: Mutex::new(expires_at),
            phase: Mutex::new(Phase::Ready { run, sample }),
            changed_at: Mutex::new(now),
            delete_asked: AtomicBool::new(false),
        });
        lock(&self.entries).insert(id.clone(), entry.clone());
        tracing::info!(sandbox = %id, state = entry.state(), "adopted from an earlier server");
        self.announce(&entry);
        Ok(())
    }
}

/// The sandbox VM commands and files go to: the sample's first (`default`).
pub fn sandbox_vm(sample: &Sample) -> Result<&pvesandbox::SandboxVm, pvesandbox::Error> {
    sample.get("default")
}
