//! Guests that are real QEMU VMs running the real qemu-guest-agent: the reference the fake
//! guests are checked against.
//!
//! A [`QemuGuestFactory`] cold-boots the image built by `cargo xtask guest-image` once (≈ 10–20 s
//! under TCG), waits for its agent, and saves the booted machine to a file (mapped-ram file
//! migration) with its disk frozen as a qcow2 base. Every [`GuestFactory::boot`] then starts a
//! new QEMU from that file on a fresh overlay (≈ 0.2 s), sets the guest clock and re-seeds the
//! guest RNG (both would otherwise replay the saved state) and names the host.
//!
//! Every QEMU is forked from one thread the factory owns, with a parent-death signal
//! (`setpriv --pdeathsig KILL`): when the factory is dropped, or the process dies in any way,
//! that thread ends and the kernel kills every QEMU. Files live in one temporary directory
//! removed on drop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::{BootSpec, BoxFuture, Guest, GuestFactory, QgaError};

/// Where the image built by `cargo xtask guest-image` lives.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The guest kernel, booted directly with `-kernel`.
    pub kernel: PathBuf,
    /// Its small initramfs (virtio modules only).
    pub initrd: PathBuf,
    /// The root filesystem; only ever used read-only, as a backing file.
    pub disk: PathBuf,
}

impl GuestImage {
    /// Environment variable naming the image directory (overrides the default cache).
    pub const ENV: &'static str = "PVESANDBOX_GUEST_IMAGE";

    /// The image files inside `dir` (not checked).
    pub fn in_dir(dir: &Path) -> Self {
        GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            disk: dir.join("disk.qcow2"),
        }
    }

    /// The directory `cargo xtask guest-image` writes to: `$PVESANDBOX_GUEST_IMAGE`, else
    /// `$HOME/.cache/pvesandbox/guest-image/current` (a link to the current recipe's build).
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(Self::ENV) {
            return Some(PathBuf::from(dir));
        }
        let home = std::env::var_os("HOME")?;
        Some(Path::new(&home).join(".cache/pvesandbox/guest-image/current"))
    }

    /// The built image, if all its files are there.
    pub fn locate() -> Option<Self> {
        let image = Self::in_dir(&Self::default_dir()?);
        image.exists().then_some(image)
    }

    fn exists(&self) -> bool {
        [&self.kernel, &self.initrd, &self.disk]
            .iter()
            .all(|p| p.is_file())
    }
}

/// How QEMU executes the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualisation (≈ 10× faster); only where the CPU shows vmx/svm and it works.
    Kvm,
    /// Multi-threaded software emulation: works everywhere.
    Tcg,
}

impl Accelerator {
    fn qemu_arg(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg,thread=multi",
        }
    }

    /// The ones worth trying, best first. KVM must be both advertised by the CPU and openable:
    /// a nested pagetable-based hypervisor offers `/dev/kvm` without vmx/svm, and stock kernels
    /// never finish booting there.
    fn candidates() -> Vec<Accelerator> {
        let cpu_has_vt = fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        });
        let kvm_opens = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if cpu_has_vt && kvm_opens {
            vec![Accelerator::Kvm, Accelerator::Tcg]
        } else {
            vec![Accelerator::Tcg]
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// Tunables of a [`QemuGuestFactory`].
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// Guest RAM (also the size of the saved state file, which is sparse).
    pub memory_mib: u32,
    /// How long the cold boot may take until the agent answers (TCG on a busy 2-core machine
    /// is the slow case).
    pub boot_timeout: Duration,
    /// How long one QGA command may take before the guest counts as unavailable.
    pub command_timeout: Duration,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            memory_mib: 512,
            boot_timeout: Duration::from_secs(180),
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// Boots real QEMU guests from one saved, already-booted machine.
///
/// Deviation from the [`GuestFactory`] contract: disks do **not** persist across power cycles.
/// Every boot restores the saved RAM, and RAM restored onto any other disk than the one it was
/// saved with is an inconsistent machine, so each boot gets a fresh overlay of the frozen base
/// disk; [`GuestFactory::clone_disk`] and [`GuestFactory::destroy_disk`] are no-ops.
pub struct QemuGuestFactory {
    // Field order is drop order: the spawner thread must end (killing every QEMU) before the
    // directory their files live in is removed.
    spawner: Spawner,
    dir: TempDir,
    image: GuestImage,
    options: QemuOptions,
    accelerator: Accelerator,
    /// The frozen disk of the saved machine: every guest's overlay backs onto it.
    base: PathBuf,
    /// The saved machine (mapped-ram migration stream).
    state: PathBuf,
    cold_boot: Duration,
    next: AtomicU64,
}

impl QemuGuestFactory {
    /// Cold-boots `image`, waits for the agent and for systemd to settle, and saves the
    /// machine; resolves when guests can be booted from it.
    pub async fn start(image: GuestImage, options: QemuOptions) -> io::Result<Self> {
        if !image.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "guest image missing ({}); run `cargo xtask guest-image`",
                    image.disk.display()
                ),
            ));
        }
        let dir = TempDir::new("pvesandbox-qga")?;
        let mut factory = QemuGuestFactory {
            spawner: Spawner::new()?,
            base: dir.path().join("base.qcow2"),
            state: dir.path().join("state.mig"),
            dir,
            image,
            options,
            accelerator: Accelerator::Tcg,
            cold_boot: Duration::ZERO,
            next: AtomicU64::new(0),
        };
        let mut failures = Vec::new();
        for accelerator in Accelerator::candidates() {
            factory.accelerator = accelerator;
            match factory.save_booted_machine().await {
                Ok(()) => {
                    tracing::info!(
                        accelerator = %accelerator,
                        cold_boot_ms = factory.cold_boot.as_millis() as u64,
                        "qemu guest factory ready (accelerator {accelerator})"
                    );
                    return Ok(factory);
                }
                Err(e) => {
                    tracing::warn!(%accelerator, "cold boot failed: {e}");
                    failures.push(format!("{accelerator}: {e}"));
                }
            }
        }
        Err(io::Error::other(format!(
            "no accelerator could boot the guest: {}",
            failures.join("; ")
        )))
    }

    /// The directory holding everything this factory created (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The accelerator the guests run under (`kvm` or `tcg`), for logs and CI output.
    pub fn accelerator(&self) -> Accelerator {
        self.accelerator
    }

    /// How long the one cold boot took, from QEMU start to the first agent reply.
    pub fn cold_boot_time(&self) -> Duration {
        self.cold_boot
    }

    /// Boots a guest and returns it as its concrete type (for its timings).
    pub async fn boot_qga(&self, spec: BootSpec) -> io::Result<Arc<QgaGuest>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let vm_dir = self.dir.path().join(format!("vm-{}-{n}", spec.vmid));
        fs::create_dir(&vm_dir)?;
        let started = Instant::now();
        let disk = vm_dir.join("disk.qcow2");
        qemu_img_overlay(&self.base, &disk).await?;
        let child = self.spawn_qemu(&vm_dir, &disk, true).await?;
        let mut guest = QgaGuest {
            vmid: spec.vmid,
            dir: vm_dir.clone(),
            socket: vm_dir.join("qga.sock"),
            child: std::sync::Mutex::new(Some(child)),
            session: tokio::sync::Mutex::new(None),
            off: AtomicBool::new(false),
            timeout: self.options.command_timeout,
            restore_time: Duration::ZERO,
        };
        // On any error below, dropping `guest` kills its QEMU and removes its files.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut qmp = Qmp::connect(&vm_dir.join("qmp.sock"), deadline, &guest.child).await?;
        qmp.execute("migrate-set-capabilities", mapped_ram())
            .await?;
        qmp.execute(
            "migrate-incoming",
            json!({ "uri": format!("file:{}", self.state.display()) }),
        )
        .await?;
        // A restore takes ≈ 0.1–0.2 s: poll tightly.
        let status = loop {
            let s = qmp.execute("query-status", json!({})).await?;
            let status = s["status"].as_str().unwrap_or_default().to_owned();
            if status != "inmigrate" {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(guest.with_logs(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the restore did not finish",
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if status != "paused" {
            return Err(guest.with_logs(io::Error::other(format!(
                "restored VM is {status}, expected paused"
            ))));
        }
        qmp.execute("cont", json!({})).await?;
        drop(qmp);
        guest
            .ping()
            .await
            .map_err(|e| guest.with_logs(e.into_io()))?;
        guest.restore_time = started.elapsed();
        guest.after_restore(&spec.name).await?;
        tracing::debug!(
            vmid = spec.vmid,
            restore_ms = guest.restore_time.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "qemu guest booted"
        );
        Ok(Arc::new(guest))
    }

    async fn save_booted_machine(&mut self) -> io::Result<()> {
        let started = Instant::now();
        let _ = fs::remove_file(&self.base);
        qemu_img_overlay(&self.image.disk, &self.base).await?;
        let vm_dir = self.dir.path().join(format!("cold-{}", self.accelerator));
        let _ = fs::remove_dir_all(&vm_dir);
        fs::create_dir(&vm_dir)?;
        let child = self.spawn_qemu(&vm_dir, &self.base, false).await?;
        let guest = QgaGuest {
            vmid: 0,
            dir: vm_dir.clone(),
            socket: vm_dir.join("qga.sock"),
            child: std::sync::Mutex::new(Some(child)),
            session: tokio::sync::Mutex::new(None),
            off: AtomicBool::new(false),
            timeout: self.options.command_timeout,
            restore_time: Duration::ZERO,
        };
        // KVM that "works" but cannot boot a stock kernel shows up as a boot that never ends:
        // give it far less time than TCG needs before falling back.
        let budget = match self.accelerator {
            Accelerator::Kvm => self.options.boot_timeout.min(Duration::from_secs(60)),
            Accelerator::Tcg => self.options.boot_timeout,
        };
        guest
            .wait_for_agent(Instant::now() + budget)
            .await
            .map_err(|e| guest.with_logs(e))?;
        self.cold_boot = started.elapsed();
        // Let boot finish, or every restored guest would go on starting units.
        let settle = guest
            .exec_wait(
                "/bin/systemctl",
                &["is-system-running", "--wait"],
                Instant::now() + Duration::from_secs(120),
            )
            .await;
        if let Err(e) = settle {
            tracing::warn!("systemd did not settle: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut qmp = Qmp::connect(&vm_dir.join("qmp.sock"), deadline, &guest.child).await?;
        // Stopped first, so the disk no longer changes and can be frozen as the base.
        qmp.execute("stop", json!({})).await?;
        qmp.execute("migrate-set-capabilities", mapped_ram())
            .await?;
        qmp.execute(
            "migrate",
            json!({ "uri": format!("file:{}", self.state.display()) }),
        )
        .await?;
        loop {
            let m = qmp.execute("query-migrate", json!({})).await?;
            match m["status"].as_str() {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    return Err(io::Error::other(format!(
                        "saving the booted guest failed: {m}"
                    )));
                }
                _ if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "saving the booted guest did not finish",
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let _ = qmp.execute("quit", json!({})).await;
        guest.power_off_now().await;
        Ok(())
    }

    /// Starts QEMU for one machine. Restores (`incoming`) must use exactly the devices the
    /// saved machine had, so both paths share this one argument list.
    async fn spawn_qemu(&self, vm_dir: &Path, disk: &Path, incoming: bool) -> io::Result<Child> {
        let mut cmd = if Path::new("/usr/bin/setpriv").is_file() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"]);
            c
        } else {
            Command::new("qemu-system-x86_64")
        };
        let path = |name: &str| vm_dir.join(name).display().to_string();
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
            // Without it QEMU adds a user-mode NIC with outbound access.
            .args(["-nic", "none"])
            .args(["-accel", self.accelerator.qemu_arg()])
            .args(["-m", &self.options.memory_mib.to_string(), "-smp", "1"])
            .arg("-kernel")
            .arg(&self.image.kernel)
            .arg("-initrd")
            .arg(&self.image.initrd)
            .args(["-append", "console=ttyS0 root=/dev/vda rw quiet"])
            .arg("-drive")
            .arg(format!(
                "file={},format=qcow2,if=virtio,cache=unsafe",
                disk.display()
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qga0",
                path("qga.sock")
            ))
            // A restored guest would replay the saved RNG state. Kernels with the vmgenid
            // driver reseed at once when the id changes (`auto`: a new id per QEMU); Debian's
            // cloud kernel lacks it, so `after_restore` forces a reseed as well.
            .args(["-device", "vmgenid,guid=auto"])
            .args(["-device", "virtio-serial"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", path("qmp.sock")))
            .arg("-serial")
            .arg(format!("file:{}", path("console.log")));
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let log = fs::File::create(vm_dir.join("qemu.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.spawner.spawn(cmd).await
    }
}

impl GuestFactory for QemuGuestFactory {
    fn boot(&self, spec: BootSpec) -> BoxFuture<'_, io::Result<Arc<dyn Guest>>> {
        Box::pin(async move {
            let guest: Arc<dyn Guest> = self.boot_qga(spec).await?;
            Ok(guest)
        })
    }

    fn clone_disk(&self, _from: u32, _to: u32) -> BoxFuture<'_, io::Result<()>> {
        // Disks do not persist in this backend (see the type's doc): nothing to copy.
        Box::pin(async { Ok(()) })
    }

    fn destroy_disk(&self, _vmid: u32) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// One running QEMU guest, reached through its agent's virtio-serial socket.
///
/// Commands are serialised over one connection (qemu-ga handles one at a time). A session
/// starts with `guest-sync-delimited`, which also discards replies a previous client left
/// unread; a command that times out or is cancelled mid-flight ends its session for the same
/// reason. A timeout is reported as [`QgaError::Unavailable`] (the seam has no better class).
pub struct QgaGuest {
    vmid: u32,
    dir: PathBuf,
    socket: PathBuf,
    child: std::sync::Mutex<Option<Child>>,
    session: tokio::sync::Mutex<Option<Session>>,
    off: AtomicBool,
    timeout: Duration,
    restore_time: Duration,
}

/// How long a monitor command may take (PVE's QMP client waits 5 s for most).
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands qemu-ga does not answer when they succeed.
const NO_REPLY: [&str; 4] = [
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
];

impl QgaGuest {
    /// The VM id it was booted for.
    pub fn vmid(&self) -> u32 {
        self.vmid
    }

    /// From the start of [`GuestFactory::boot`] until the restored agent answered (before the
    /// clock, RNG and hostname were set).
    pub fn restore_time(&self) -> Duration {
        self.restore_time
    }

    /// The QEMU process id while it runs (power off forgets it).
    pub fn qemu_pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("child lock")
            .as_ref()
            .map(Child::id)
    }

    /// The guest's serial console so far (kernel and systemd messages), for diagnostics.
    pub fn console_log(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    async fn ping(&self) -> Result<Value, QgaError> {
        self.execute("guest-ping", json!({})).await
    }

    /// Waits for a cold-booting agent. Until the guest opens its port QEMU stops reading the
    /// socket, so the sync is sent once and only repeated every few seconds.
    async fn wait_for_agent(&self, deadline: Instant) -> io::Result<()> {
        let mut conn = poll(deadline, Duration::from_millis(20), || async {
            self.check_alive()?;
            Ok(LineConn::connect(&self.socket).await.ok())
        })
        .await?;
        let id = u64::from(rand::random::<u32>());
        loop {
            conn.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))
                .await?;
            let round = (Instant::now() + Duration::from_secs(5)).min(deadline);
            let mut answered = false;
            while !answered && Instant::now() < round {
                self.check_alive()?;
                let wait = Duration::from_millis(250).min(round - Instant::now());
                if let Ok(line) = tokio::time::timeout(wait, conn.next_line()).await {
                    answered = sync_reply_matches(&line?, id);
                }
            }
            if answered {
                // Re-sent syncs may still be answered: never reuse this connection.
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the guest agent did not answer",
                ));
            }
        }
    }

    fn check_alive(&self) -> io::Result<()> {
        let mut child = self.child.lock().expect("child lock");
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(status))) => Err(io::Error::other(format!("QEMU exited: {status}"))),
            Some(Err(e)) => Err(e),
            None => Err(io::Error::other("QEMU was stopped")),
        }
    }

    /// The clock is the saved machine's, so it is set; the RNG would replay the saved state in
    /// every guest, so fresh host entropy is mixed in; the hostname becomes the VM's name.
    async fn after_restore(&self, name: &str) -> io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(io::Error::other)?;
        self.execute("guest-set-time", json!({ "time": now.as_nanos() as u64 }))
            .await
            .map_err(QgaError::into_io)?;
        // Host entropy into the input pool, then RNDRESEEDCRNG so the CRNG draws from it now
        // (writes alone wait for the next periodic reseed, which may be seconds away: two
        // guests restored together read the same bytes until then). perl-base is essential in
        // Debian and can issue the ioctl; no helper binary is needed in the image.
        let seed: [u8; 64] = rand::random();
        let h = self
            .execute(
                "guest-file-open",
                json!({"path": "/dev/urandom", "mode": "w"}),
            )
            .await
            .map_err(QgaError::into_io)?;
        let wrote = self
            .execute(
                "guest-file-write",
                json!({"handle": h, "buf-b64": BASE64_STANDARD.encode(seed)}),
            )
            .await;
        self.execute("guest-file-close", json!({ "handle": h }))
            .await
            .map_err(QgaError::into_io)?;
        wrote.map_err(QgaError::into_io)?;
        // One exec for both (≈ 20 ms each under TCG).
        const SCRIPT: &str = r#"perl -e 'open(my $f, ">", "/dev/urandom") or die; ioctl($f, 0x5207, 0) or die "$!\n"' || exit 2
[ -z "$1" ] || hostname "$1" || exit 3"#;
        let deadline = Instant::now() + self.timeout;
        match self
            .exec_wait("/bin/sh", &["-c", SCRIPT, "sh", name], deadline)
            .await?
        {
            Some(0) => {}
            Some(3) => tracing::warn!(vmid = self.vmid, name, "could not set the hostname"),
            other => {
                return Err(io::Error::other(format!(
                    "reseeding the guest RNG failed (exit {other:?})"
                )));
            }
        }
        Ok(())
    }

    /// Runs a program to its end; resolves to its exit code (`None`: killed by a signal).
    async fn exec_wait(
        &self,
        path: &str,
        args: &[&str],
        deadline: Instant,
    ) -> io::Result<Option<i64>> {
        let pid = self
            .execute("guest-exec", json!({"path": path, "arg": args}))
            .await
            .map_err(QgaError::into_io)?["pid"]
            .clone();
        poll(deadline, Duration::from_millis(10), || async {
            let s = self
                .execute("guest-exec-status", json!({ "pid": pid }))
                .await
                .map_err(QgaError::into_io)?;
            Ok((s["exited"] == true).then(|| s["exitcode"].as_i64()))
        })
        .await
    }

    async fn run(
        &self,
        slot: &mut Option<Session>,
        command: &str,
        arguments: Value,
    ) -> Result<Value, QgaError> {
        if slot.as_ref().is_some_and(|s| !s.clean) {
            // The last command was cancelled mid-flight: its reply may still arrive.
            *slot = None;
        }
        let session = match slot {
            Some(s) => s,
            None => slot.insert(Session::open(&self.socket).await.map_err(unavailable)?),
        };
        session.clean = false;
        let request = if arguments.as_object().is_some_and(|o| o.is_empty()) || arguments.is_null()
        {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": arguments })
        };
        session.conn.send(&request).await.map_err(unavailable)?;
        if NO_REPLY.contains(&command) {
            // Success is silence (then the socket closes when QEMU exits); only a failure is
            // answered, and it comes at once.
            let reply =
                tokio::time::timeout(Duration::from_secs(1), session.conn.next_reply()).await;
            *slot = None;
            return match reply {
                Ok(Ok(v)) => reply_value(v),
                _ => Ok(json!({})),
            };
        }
        let reply = session.conn.next_reply().await.map_err(unavailable)?;
        session.clean = true;
        reply_value(reply)
    }

    /// Adds QEMU's own output and the console tail to an error: a failed boot is otherwise
    /// undiagnosable.
    fn with_logs(&self, e: io::Error) -> io::Error {
        let qemu = fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
        let console = self.console_log();
        let tail: String = {
            let lines: Vec<_> = console.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        io::Error::new(
            e.kind(),
            format!("{e}\n--- qemu:\n{qemu}\n--- console tail:\n{tail}"),
        )
    }

    /// One QMP command without arguments (`stop`, `cont`), on a monitor session of its own.
    async fn monitor(&self, command: &str) -> Result<(), String> {
        let deadline = Instant::now() + QMP_TIMEOUT;
        let run = async {
            let mut qmp = Qmp::connect(&self.dir.join("qmp.sock"), deadline, &self.child).await?;
            qmp.execute(command, json!({})).await
        };
        match tokio::time::timeout(QMP_TIMEOUT, run).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "VM {} qmp command '{command}' failed - {e}",
                self.vmid
            )),
            Err(_) => Err(format!(
                "VM {} qmp command '{command}' failed - got timeout",
                self.vmid
            )),
        }
    }

    async fn power_off_now(&self) {
        self.off.store(true, Ordering::SeqCst);
        *self.session.lock().await = None;
        let child = self.child.lock().expect("child lock").take();
        if let Some(mut child) = child {
            let _ = tokio::task::spawn_blocking(move || {
                let _ = child.kill();
                let _ = child.wait();
            })
            .await;
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Guest for QgaGuest {
    fn execute<'a>(
        &'a self,
        command: &'a str,
        arguments: Value,
    ) -> BoxFuture<'a, Result<Value, QgaError>> {
        Box::pin(async move {
            if self.off.load(Ordering::SeqCst) {
                return Err(QgaError::Unavailable("the VM is powered off".into()));
            }
            let mut slot = self.session.lock().await;
            match tokio::time::timeout(self.timeout, self.run(&mut slot, command, arguments)).await
            {
                Ok(result) => {
                    if matches!(result, Err(QgaError::Unavailable(_))) {
                        *slot = None;
                    }
                    result
                }
                Err(_) => {
                    *slot = None;
                    Err(QgaError::Unavailable(format!(
                        "{command}: no reply from the guest agent within {:?}",
                        self.timeout
                    )))
                }
            }
        })
    }

    fn power_off(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.power_off_now())
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.monitor("stop"))
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.monitor("cont"))
    }
}

impl Drop for QgaGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.get_mut().ok().and_then(Option::take) {
            let _ = child.kill();
            // Reap off the caller's thread; SIGKILL makes this quick.
            std::thread::spawn(move || child.wait());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn unavailable(e: io::Error) -> QgaError {
    QgaError::Unavailable(e.to_string())
}

impl QgaError {
    fn into_io(self) -> io::Error {
        io::Error::other(self.to_string())
    }
}

fn reply_value(mut reply: Value) -> Result<Value, QgaError> {
    if let Some(v) = reply.get_mut("return") {
        return Ok(v.take());
    }
    let e = &reply["error"];
    Err(QgaError::Command {
        class: e["class"].as_str().unwrap_or("GenericError").to_owned(),
        desc: e["desc"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Whether `line` holds the delimited reply to `guest-sync-delimited {id}`: 0xFF, then JSON.
/// 0xFF never occurs in UTF-8, so anything before the last one is a stale leftover.
fn sync_reply_matches(line: &[u8], id: u64) -> bool {
    let Some(at) = line.iter().rposition(|&b| b == 0xFF) else {
        return false;
    };
    serde_json::from_slice::<Value>(&line[at + 1..])
        .is_ok_and(|v| v.get("return").and_then(Value::as_u64) == Some(id))
}

fn mapped_ram() -> Value {
    json!({"capabilities": [{"capability": "mapped-ram", "state": true}]})
}

/// An agent connection whose stream is known to be in step.
struct Session {
    conn: LineConn,
    /// False while a command is in flight: a session dropped in that state is not reused.
    clean: bool,
}

impl Session {
    async fn open(socket: &Path) -> io::Result<Self> {
        let mut conn = LineConn::connect(socket).await?;
        let id = u64::from(rand::random::<u32>());
        conn.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))
            .await?;
        while !sync_reply_matches(&conn.next_line().await?, id) {}
        Ok(Session { conn, clean: true })
    }
}

/// Newline-delimited JSON over a unix socket (QGA and QMP both speak it). Reading is
/// cancel-safe: a partial line stays buffered for the next call.
struct LineConn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    partial: Vec<u8>,
}

impl LineConn {
    async fn connect(path: &Path) -> io::Result<Self> {
        let (r, w) = UnixStream::connect(path).await?.into_split();
        Ok(LineConn {
            reader: BufReader::with_capacity(1 << 16, r),
            writer: w,
            partial: Vec::new(),
        })
    }

    async fn send(&mut self, message: &Value) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(message)?;
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await
    }

    async fn next_line(&mut self) -> io::Result<Vec<u8>> {
        let n = self.reader.read_until(b'\n', &mut self.partial).await?;
        if n == 0 || self.partial.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the socket closed",
            ));
        }
        Ok(std::mem::take(&mut self.partial))
    }

    /// The next `return` or `error` object, skipping stale delimited sync replies and events.
    async fn next_reply(&mut self) -> io::Result<Value> {
        loop {
            let line = self.next_line().await?;
            if line.contains(&0xFF) {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if v.get("return").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
        }
    }
}

/// A QMP monitor session (only used while saving and restoring).
struct Qmp(LineConn);

impl Qmp {
    async fn connect(
        path: &Path,
        deadline: Instant,
        child: &std::sync::Mutex<Option<Child>>,
    ) -> io::Result<Self> {
        let conn = poll(deadline, Duration::from_millis(2), || async {
            if let Some(Ok(Some(status))) = child
                .lock()
                .expect("child lock")
                .as_mut()
                .map(Child::try_wait)
            {
                return Err(io::Error::other(format!("QEMU exited: {status}")));
            }
            Ok(LineConn::connect(path).await.ok())
        })
        .await?;
        let mut qmp = Qmp(conn);
        qmp.0.next_line().await?; // the greeting
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn execute(&mut self, command: &str, arguments: Value) -> io::Result<Value> {
        self.0
            .send(&json!({"execute": command, "arguments": arguments}))
            .await?;
        let reply = self.0.next_reply().await?;
        reply_value(reply).map_err(|e| io::Error::other(format!("QMP {command}: {e}")))
    }
}

/// Polls `check` every `every` until it yields a value, fails, or `deadline` passes.
async fn poll<T, F, Fut>(deadline: Instant, every: Duration, mut check: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<Option<T>>>,
{
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "gave up waiting (deadline passed)",
            ));
        }
        tokio::time::sleep(every).await;
    }
}

async fn qemu_img_overlay(backing: &Path, overlay: &Path) -> io::Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(overlay);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(io::Error::other)??;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

type SpawnRequest = (Command, tokio::sync::oneshot::Sender<io::Result<Child>>);

/// The thread every QEMU is forked from. A parent-death signal fires when the *thread* that
/// forked the child ends, so forking from short-lived runtime threads would kill guests at
/// random; this thread lives exactly as long as the factory.
struct Spawner {
    tx: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    fn new() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("qemu-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(Spawner {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let gone = || io::Error::other("the QEMU spawner thread is gone");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send((cmd, reply))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A directory removed, with everything in it, on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> io::Result<Self> {
        remove_orphans(prefix);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

/// Removes directories of processes that are gone. A factory in a `static` (one cold boot per
/// test binary) is never dropped, so its directory (≈ 150 MiB of saved state) outlives the
/// process; its QEMUs do not (parent-death signal).
fn remove_orphans(prefix: &str) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let pid = rest
            .trim_start_matches('-')
            .split('-')
            .next()
            .unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
