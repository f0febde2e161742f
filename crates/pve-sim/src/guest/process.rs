//! `ProcessGuest`: a VM made of Linux namespaces on this host, with a qemu-ga emulation.
//!
//! Each booted VM is one `unshare --mount --uts --ipc --net --pid --fork` whose first process
//! (pid 1 of the VM) mounts the VM's root, an overlay of a read-only base (the host's `/` by
//! default, or e.g. a debootstrap tree) with the VM's disk as upper layer, gives it its own
//! `/proc`, `/dev`, `/dev/pts`, `/dev/shm` and `/run`, sets the hostname to the VM name, brings
//! up loopback (the only interface of its network namespace), `pivot_root`s into it and then
//! just reaps orphans. Killing that process is the power button: the kernel kills every process
//! of a pid namespace whose init dies, and the mount namespace (with the overlay) goes with them.
//!
//! Commands run as root with cwd `/`, like qemu-ga under systemd: the simulator spawns them
//! from a thread that entered the VM's pid namespace (so they get a pid inside the VM and stay
//! direct children of the simulator, with their real wait status) through `nsenter`, which
//! enters the other namespaces and the VM's root without forking. File commands open paths
//! with `openat2(RESOLVE_IN_ROOT)` below the VM's root, so a symlink in the guest cannot point
//! them at host files.
//!
//! The disk (`upper`/`work` of the overlay) lives under a per-factory directory on the host
//! disk; it survives power cycles, is copied by `clone_disk` and removed by `destroy_disk` and
//! [`GuestFactory::shutdown`]. A fresh disk has opaque `/tmp`, `/var/tmp` and `/root`, so
//! neither host files there nor other VMs' disks show through the base.
//!
//! Needs root (no user namespaces: root inside is real root, `useradd` works), util-linux
//! `unshare`/`nsenter` and overlayfs; [`ProcessGuestFactory::probe`] says whether this host has
//! them.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::thread::LinkNameSpaceType;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::canned::command_not_found;
use super::{BootSpec, BoxFuture, Guest, GuestFactory, QgaError};

/// qemu-ga keeps at most this much of each output stream of a `guest-exec` (16 MiB).
const EXEC_MAX_OUTPUT: usize = 16 * 1024 * 1024;
/// qemu-ga's `guest-file-read` limit (48 MiB).
const FILE_READ_COUNT_MAX: i64 = 48 * 1024 * 1024;
/// qemu-ga's default `count` for `guest-file-read`.
const FILE_READ_COUNT_DEFAULT: i64 = 4096;
/// qemu-ga's first file handle (`QGA_PSTATE_DEFAULT_FD_COUNTER`).
const FIRST_FILE_HANDLE: i64 = 1000;
/// The `PATH` systemd gives services, hence qemu-ga and the commands it runs.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// glib's search path when the given environment has no `PATH`.
const GLIB_DEFAULT_PATH: &str = "/bin:/usr/bin:.";

/// pid 1 of a VM: sets the VM up, reports `ready`, then reaps orphans until it is killed.
/// Positional parameters: base, upper, work, mountpoint, hostname, directory to hide.
const INIT_SCRIPT: &str = r#"set -eu
base=$1 upper=$2 work=$3 root=$4 name=$5 hide=$6
mount -t overlay overlay -o "lowerdir=$base,upperdir=$upper,workdir=$work" "$root"
if [ -d "$root$hide" ]; then mount -t tmpfs -o size=4k,mode=000 hidden "$root$hide"; fi
for d in proc sys dev run; do mkdir -p "$root/$d"; done
mount -t proc proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys" 2>/dev/null || true
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for d in null zero full random urandom tty; do : > "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"; done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s pts/ptmx "$root/dev/ptmx"; ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
printf '%s' "$name" > /proc/sys/kernel/hostname
ip link set lo up 2>/dev/null || true
cd "$root"
pivot_root . .
umount -l .
cd /
echo ready
exec sh -c 'while :; do sleep 2147483647 & wait; done' </dev/null >/dev/null 2>&1
"#;

/// Where and from what a [`ProcessGuestFactory`] makes VMs.
#[derive(Debug, Clone)]
pub struct ProcessGuestOptions {
    /// Read-only lower layer of every VM's root (default `/`).
    pub base: PathBuf,
    /// Parent of the factory's own directory (disks, mountpoints); default the system temp dir.
    pub parent: Option<PathBuf>,
}

impl Default for ProcessGuestOptions {
    fn default() -> Self {
        ProcessGuestOptions {
            base: PathBuf::from("/"),
            parent: None,
        }
    }
}

/// Boots [`ProcessGuest`]s and keeps their disks in a directory it owns.
pub struct ProcessGuestFactory {
    inner: Arc<Factory>,
}

struct Factory {
    dir: PathBuf,
    base: PathBuf,
    unshare: PathBuf,
    nsenter: PathBuf,
    closed: AtomicBool,
    live: Mutex<Vec<Weak<Machine>>>,
}

impl std::fmt::Debug for ProcessGuestFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGuestFactory")
            .field("dir", &self.inner.dir)
            .field("base", &self.inner.base)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn find_tool(name: &str) -> io::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_else(|_| SERVICE_PATH.into());
    std::env::split_paths(&format!("{path}:/usr/sbin:/sbin:/usr/bin:/bin"))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} not found")))
}

impl ProcessGuestFactory {
    /// A factory with the host's `/` as base and its directory under the system temp dir.
    pub fn new() -> io::Result<Self> {
        Self::with_options(ProcessGuestOptions::default())
    }

    /// A factory with explicit options.
    pub fn with_options(opts: ProcessGuestOptions) -> io::Result<Self> {
        if !opts.base.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("guest base {} is not a directory", opts.base.display()),
            ));
        }
        let unshare = find_tool("unshare")?;
        let nsenter = find_tool("nsenter")?;
        let parent = opts.parent.unwrap_or_else(std::env::temp_dir);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = parent.join(format!("pve-sim-guests-{}-{stamp:x}", std::process::id()));
        std::fs::create_dir_all(dir.join("disks"))?;
        std::fs::create_dir_all(dir.join("mnt"))?;
        Ok(ProcessGuestFactory {
            inner: Arc::new(Factory {
                dir: std::fs::canonicalize(&dir)?,
                base: std::fs::canonicalize(&opts.base)?,
                unshare,
                nsenter,
                closed: AtomicBool::new(false),
                live: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The directory holding disks and mountpoints (removed by [`GuestFactory::shutdown`]).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether this host can run process guests: root, util-linux `unshare`/`nsenter`, and an
    /// overlay mount in a private mount namespace. The error says what is missing.
    pub fn probe() -> Result<(), String> {
        // Once per process: concurrent probes (tests run in parallel) would share the
        // pid-named scratch dir and remove it under each other.
        static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        RESULT.get_or_init(Self::probe_once).clone()
    }

    /// For test suites: whether process guests can run here, saying on stderr why they are
    /// skipped. With `CI` set a host that cannot run them is a failure, not a skip.
    pub fn available_or_skip() -> bool {
        match Self::probe() {
            Ok(()) => true,
            Err(why) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "process guests unavailable on CI: {why}"
                );
                eprintln!("skipping: process guests unavailable ({why})");
                false
            }
        }
    }

    fn probe_once() -> Result<(), String> {
        if !rustix::process::geteuid().is_root() {
            return Err("process guests need root".into());
        }
        let unshare = find_tool("unshare").map_err(|e| e.to_string())?;
        find_tool("nsenter").map_err(|e| e.to_string())?;
        let dir = std::env::temp_dir().join(format!("pve-sim-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["lower", "upper", "work", "mnt"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
        }
        let out = Command::new(unshare)
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t overlay overlay -o lowerdir=\"$1/lower\",upperdir=\"$1/upper\",workdir=\"$1/work\" \"$1/mnt\"")
            .arg("sh")
            .arg(&dir)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "overlay mount in a mount namespace failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("unshare: {e}")),
        }
    }
}

impl Factory {
    fn disk(&self, vmid: u32) -> PathBuf {
        self.dir.join("disks").join(vmid.to_string())
    }

    /// A fresh disk: empty upper layer except opaque `/tmp`, `/var/tmp` and `/root`.
    fn create_disk(&self, vmid: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let disk = self.disk(vmid);
        let upper = disk.join("upper");
        std::fs::create_dir_all(disk.join("work"))?;
        std::fs::create_dir_all(upper.join("var"))?;
        std::fs::set_permissions(upper.join("var"), std::fs::Permissions::from_mode(0o755))?;
        for (d, mode) in [("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700)] {
            let p = upper.join(d);
            std::fs::create_dir_all(&p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
            rustix::fs::setxattr(
                &p,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )?;
        }
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    fn boot_blocking(self: &Arc<Self>, spec: &BootSpec) -> io::Result<Arc<Machine>> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(io::Error::other("guest factory is shut down"));
        }
        let disk = self.disk(spec.vmid);
        if !disk.join("upper").is_dir() {
            self.create_disk(spec.vmid)?;
        }
        let mnt = self.dir.join("mnt").join(spec.vmid.to_string());
        std::fs::create_dir_all(&mnt)?;
        let mut child = Command::new(&self.unshare)
            .args([
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                INIT_SCRIPT,
                "sh",
            ])
            .arg(&self.base)
            .arg(disk.join("upper"))
            .arg(disk.join("work"))
            .arg(&mnt)
            .arg(hostname_of(spec))
            .arg(&self.dir)
            .env_clear()
            .env("PATH", SERVICE_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let mut out = io::BufReader::new(child.stdout.take().expect("piped"));
        let _ = out.read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(io::Error::other(format!(
                "VM {} did not boot: {}",
                spec.vmid,
                err.trim()
            )));
        }
        let init = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))?
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .ok_or_else(|| io::Error::other("VM init vanished"))?;
        let ns = |kind: &str| {
            rustix::fs::open(
                format!("/proc/{init}/ns/{kind}"),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let fds = Fds {
            pid: ns("pid")?,
            uts: ns("uts")?,
            root: rustix::fs::open(
                format!("/proc/{init}/root"),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?,
            init,
        };
        let machine = Arc::new(Machine {
            vmid: spec.vmid,
            nsenter: self.nsenter.clone(),
            power: Mutex::new(Some(Power {
                unshare: child,
                fds: Arc::new(fds),
            })),
            execs: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            next_handle: AtomicI64::new(FIRST_FILE_HANDLE),
            synthetic_pid: AtomicU64::new(1 << 22),
            frozen: Mutex::new(Vec::new()),
        });
        let mut live = lock(&self.live);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&machine));
        drop(live);
        // A shutdown that raced this boot must not leave the new VM running.
        if self.closed.load(Ordering::SeqCst) {
            machine.kill_blocking();
            return Err(io::Error::other("guest factory is shut down"));
        }
        Ok(machine)
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let live: Vec<_> = std::mem::take(&mut *lock(&self.live));
        for m in live.iter().filter_map(Weak::upgrade) {
            m.kill_blocking();
        }
        // The kernel tears a dead VM's mount namespace (and its overlay) down asynchronously;
        // a removal racing that teardown fails with ENOTEMPTY/EBUSY, so it gets a few retries.
        for _ in 0..50 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!(dir = %self.dir.display(), "could not remove the guest directory");
    }
}

impl Drop for Factory {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The hostname a VM gets: its name, or PVE's default `VM<vmid>` when it has none.
fn hostname_of(spec: &BootSpec) -> String {
    if spec.name.is_empty() {
        format!("VM{}", spec.vmid)
    } else {
        spec.name.clone()
    }
}

impl GuestFactory for ProcessGuestFactory {
    fn boot(&self, spec: BootSpec) -> BoxFuture<'_, io::Result<Arc<dyn Guest>>> {
        let f = self.inner.clone();
        Box::pin(async move {
            let m = tokio::task::spawn_blocking(move || f.boot_blocking(&spec))
                .await
                .map_err(io::Error::other)??;
            Ok(Arc::new(ProcessGuest { machine: m }) as Arc<dyn Guest>)
        })
    }

    fn clone_disk(&self, from: u32, to: u32) -> BoxFuture<'_, io::Result<()>> {
        let f = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let src = f.disk(from);
                let dst = f.disk(to);
                let _ = std::fs::remove_dir_all(&dst);
                if !src.join("upper").is_dir() {
                    // Never booted: the clone starts from a fresh disk too.
                    return Ok(());
                }
                std::fs::create_dir_all(dst.join("work"))?;
                // `cp -a` keeps what overlayfs stores in the upper layer: whiteouts (0/0
                // character devices) and opaque directories (trusted.* xattrs).
                let st = Command::new("cp")
                    .args(["-a", "--reflink=auto"])
                    .arg(src.join("upper"))
                    .arg(dst.join("upper"))
                    .status()?;
                if st.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("copying disk of VM {from}: {st}")))
                }
            })
            .await
            .map_err(io::Error::other)?
        })
    }

    fn destroy_disk(&self, vmid: u32) -> BoxFuture<'_, io::Result<()>> {
        let f = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir(f.dir.join("mnt").join(vmid.to_string()));
                match std::fs::remove_dir_all(f.disk(vmid)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            })
            .await
            .map_err(io::Error::other)?
        })
    }

    fn shutdown(&self) {
        self.inner.shutdown();
    }
}

/// Namespace handles of a running VM; dropping them lets its namespaces go.
struct Fds {
    pid: OwnedFd,
    uts: OwnedFd,
    root: OwnedFd,
    init: i32,
}

struct Power {
    unshare: Child,
    fds: Arc<Fds>,
}

/// One boot of one VM.
struct Machine {
    vmid: u32,
    nsenter: PathBuf,
    power: Mutex<Option<Power>>,
    execs: Mutex<HashMap<i64, Arc<Mutex<ExecInfo>>>>,
    files: Mutex<HashMap<i64, Arc<Mutex<OpenFile>>>>,
    next_handle: AtomicI64,
    synthetic_pid: AtomicU64,
    /// Processes the last pause stopped, for the resume to continue (and no others).
    frozen: Mutex<Vec<i32>>,
}

/// How many sweeps a pause makes before giving up on a guest that forks faster than it is
/// stopped (each sweep stops everything the last one found; a sweep finding nothing new ends).
const FREEZE_SWEEPS: usize = 64;

/// A process's state letter (`R`, `S`, `T`, `Z`, ...) from `/proc/<pid>/stat`; the command
/// name before it may hold spaces and parentheses, so it is read after the last `)`.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Every process whose pid namespace is `ns` (the text of a `/proc/<pid>/ns/pid` link).
fn processes_in(ns: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l.as_path() == ns)
        })
        .collect()
}

impl Machine {
    /// Stops every process of the VM (SIGSTOP from outside its pid namespace reaches its init
    /// too) and returns once each is stopped, so nothing runs after the pause task ends.
    /// Processes the guest had stopped itself are left for it to continue.
    fn freeze_blocking(&self) -> Result<(), String> {
        let init = self.fds().map_err(|e| e.to_string())?.init;
        let ns = std::fs::read_link(format!("/proc/{init}/ns/pid"))
            .map_err(|e| format!("VM {}: no pid namespace: {e}", self.vmid))?;
        let mut frozen = lock(&self.frozen);
        for _ in 0..FREEZE_SWEEPS {
            let fresh: Vec<i32> = processes_in(&ns)
                .into_iter()
                .filter(|p| {
                    !frozen.contains(p)
                        && !matches!(proc_state(*p), Some('T' | 't' | 'Z' | 'X') | None)
                })
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            for pid in fresh {
                if let Some(p) = rustix::process::Pid::from_raw(pid)
                    && rustix::process::kill_process(p, rustix::process::Signal::STOP).is_ok()
                {
                    frozen.push(pid);
                }
            }
            // A signal is delivered when its target next runs; wait for each to have stopped
            // (bounded: a stopping process needs one scheduling slice).
            for pid in frozen.iter() {
                for _ in 0..1000 {
                    if matches!(proc_state(*pid), Some('T' | 't' | 'Z' | 'X') | None) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        Err(format!(
            "VM {}: the guest kept starting processes while it was being paused",
            self.vmid
        ))
    }

    fn thaw(&self) {
        for pid in std::mem::take(&mut *lock(&self.frozen)) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::CONT);
            }
        }
    }

    fn fds(&self) -> Result<Arc<Fds>, QgaError> {
        lock(&self.power)
            .as_ref()
            .map(|p| p.fds.clone())
            .ok_or_else(|| QgaError::Unavailable(format!("VM {} is powered off", self.vmid)))
    }

    fn take_power(&self) -> Option<Power> {
        let p = lock(&self.power).take();
        lock(&self.files).clear();
        lock(&self.execs).clear();
        lock(&self.frozen).clear();
        if let Some(p) = &p
            && let Some(pid) = rustix::process::Pid::from_raw(p.fds.init)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        p
    }

    fn kill_blocking(&self) {
        if let Some(mut p) = self.take_power() {
            let _ = p.unshare.kill();
            let _ = p.unshare.wait();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Last handle gone without a power-off (a panicking caller): do not leak the VM.
        self.kill_blocking();
    }
}

/// A VM's guest agent (see the module docs).
pub struct ProcessGuest {
    machine: Arc<Machine>,
}

impl std::fmt::Debug for ProcessGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGuest")
            .field("vmid", &self.machine.vmid)
            .finish()
    }
}

fn generic(desc: impl Into<String>) -> QgaError {
    QgaError::generic(desc)
}

/// `strerror(errno)` without Rust's ` (os error N)` suffix, as glib and qemu print it.
fn strerror(e: &io::Error) -> String {
    let s = match e.raw_os_error() {
        Some(n) => io::Error::from_raw_os_error(n).to_string(),
        None => return e.to_string(),
    };
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn arg_str<'a>(args: &'a Value, name: &str) -> Result<&'a str, QgaError> {
    match &args[name] {
        Value::String(s) => Ok(s),
        Value::Null => Err(generic(format!("Parameter '{name}' is missing"))),
        _ => Err(generic(format!(
            "Invalid parameter type for '{name}', expected: string"
        ))),
    }
}

fn arg_int(args: &Value, name: &str) -> Result<Option<i64>, QgaError> {
    match &args[name] {
        Value::Null => Ok(None),
        v => v.as_i64().map(Some).ok_or_else(|| {
            generic(format!(
                "Invalid parameter type for '{name}', expected: integer"
            ))
        }),
    }
}

fn arg_strings(args: &Value, name: &str) -> Result<Option<Vec<String>>, QgaError> {
    match &args[name] {
        Value::Null => Ok(None),
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    generic(format!(
                        "Invalid parameter type for '{name}', expected: string"
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(Some),
        _ => Err(generic(format!(
            "Invalid parameter type for '{name}', expected: array"
        ))),
    }
}

/// qemu's `qbase64_decode`: the base64 alphabet plus newlines (PVE sends MIME-style lines).
fn qbase64_decode(s: &str) -> Result<Vec<u8>, QgaError> {
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=\n".contains(&b))
    {
        return Err(generic("Base64 data contains invalid characters"));
    }
    let compact: String = s.chars().filter(|c| *c != '\n').collect();
    B64.decode(compact)
        .map_err(|_| generic("Base64 data is not valid"))
}

#[derive(Default)]
struct Capture {
    data: Vec<u8>,
    truncated: bool,
    closed: bool,
}

struct ExecInfo {
    status: Option<std::process::ExitStatus>,
    has_output: bool,
    out: Capture,
    err: Capture,
}

enum RwState {
    New,
    Reading,
    Writing,
}

struct OpenFile {
    file: std::fs::File,
    state: RwState,
}

/// glib's `G_SPAWN_SEARCH_PATH` done up front against the VM's root, so a missing binary fails
/// `guest-exec` itself as in qemu-ga (nsenter would only fail after the fork).
fn search_path(root: &OwnedFd, program: &str, path_var: &str) -> Result<(), io::Error> {
    let check = |p: &str| -> io::Result<()> {
        let fd = openat2_in(root, p, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
        if ft == rustix::fs::FileType::RegularFile && st.st_mode & 0o111 != 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(
                rustix::io::Errno::ACCESS.raw_os_error(),
            ))
        }
    };
    if program.contains('/') {
        return check(program);
    }
    let mut last = io::Error::from_raw_os_error(rustix::io::Errno::NOENT.raw_os_error());
    let mut eacces = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        match check(&format!("{dir}/{program}")) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ACCESS.raw_os_error()) => {
                eacces = Some(e)
            }
            Err(e) => last = e,
        }
    }
    Err(eacces.unwrap_or(last))
}

fn openat2_in(root: &OwnedFd, path: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    // qemu-ga's cwd is `/`: relative paths start there too.
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, rel, flags, mode, ResolveFlags::IN_ROOT) {
            // The kernel asks for a retry when a rename raced the lookup.
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            r => return r.map_err(io::Error::from),
        }
    }
}

fn open_flags(mode: &str) -> Option<OFlags> {
    let base = match mode {
        "r" | "rb" => OFlags::RDONLY,
        "w" | "wb" => OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        "a" | "ab" => OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND,
        "r+" | "rb+" | "r+b" => OFlags::RDWR,
        "w+" | "wb+" | "w+b" => OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC,
        "a+" | "ab+" | "a+b" => OFlags::RDWR | OFlags::CREATE | OFlags::APPEND,
        _ => return None,
    };
    Some(base | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC)
}

async fn capture<R: AsyncRead + Unpin>(mut r: R, info: Arc<Mutex<ExecInfo>>, stderr: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        let mut i = lock(&info);
        let c = if stderr { &mut i.err } else { &mut i.out };
        if n == 0 {
            c.closed = true;
            return;
        }
        let room = EXEC_MAX_OUTPUT - c.data.len();
        if n > room {
            c.truncated = true;
        }
        c.data.extend_from_slice(&buf[..n.min(room)]);
    }
}

fn guest_pid(host_pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

impl ProcessGuest {
    async fn exec(&self, args: &Value) -> Result<Value, QgaError> {
        let path = arg_str(args, "path")?.to_owned();
        let argv = arg_strings(args, "arg")?.unwrap_or_default();
        let env = arg_strings(args, "env")?;
        let input = match &args["input-data"] {
            Value::Null => None,
            v => Some(qbase64_decode(v.as_str().ok_or_else(|| {
                generic("Invalid parameter type for 'input-data', expected: string")
            })?)?),
        };
        let (out, err) = match &args["capture-output"] {
            Value::Null | Value::Bool(false) => (false, false),
            Value::Bool(true) => (true, true),
            Value::String(s) => match s.as_str() {
                "none" => (false, false),
                "stdout" => (true, false),
                "stderr" => (false, true),
                "separated" => (true, true),
                other => {
                    return Err(generic(format!(
                        "capture-output '{other}' is not supported by this guest"
                    )));
                }
            },
            _ => return Err(generic("Invalid parameter type for 'capture-output'")),
        };
        let env: Vec<(String, String)> = match env {
            Some(list) => list
                .iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.clone(), String::new()),
                })
                .collect(),
            None => vec![("PATH".into(), SERVICE_PATH.into())],
        };
        let fds = self.machine.fds()?;
        let path_var = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map_or(GLIB_DEFAULT_PATH, |(_, v)| v.as_str());
        if let Err(e) = search_path(&fds.root, &path, path_var) {
            return Err(generic(format!(
                "Guest agent command failed, error was 'Failed to execute child process “{path}” ({})'",
                strerror(&e)
            )));
        }
        let mut cmd = tokio::process::Command::new(&self.machine.nsenter);
        cmd.arg("-t")
            .arg(fds.init.to_string())
            .args(["-m", "-u", "-i", "-n", "-r", "-w", "--"])
            .arg(&path)
            .args(&argv)
            .env_clear()
            .envs(env)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if out { Stdio::piped() } else { Stdio::null() })
            .stderr(if err { Stdio::piped() } else { Stdio::null() });
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fds2 = fds.clone();
        // setns(CLONE_NEWPID) changes where the *calling thread's* children go; a throwaway
        // thread keeps that away from the runtime's threads.
        std::thread::spawn(move || {
            let _rt = handle.enter();
            let r = rustix::thread::move_into_link_name_space(
                fds2.pid.as_fd(),
                Some(LinkNameSpaceType::ProcessID),
            )
            .map_err(io::Error::from)
            .and_then(|()| cmd.spawn());
            let _ = tx.send(r);
        });
        let mut child = rx
            .await
            .map_err(|_| generic("spawn thread vanished"))?
            .map_err(|e| {
                generic(format!(
                    "Guest agent command failed, error was 'Failed to execute child process “{path}” ({})'",
                    strerror(&e)
                ))
            })?;
        let host_pid = child.id().unwrap_or_default();
        let pid = guest_pid(host_pid)
            .unwrap_or_else(|| self.machine.synthetic_pid.fetch_add(1, Ordering::SeqCst) as i64);
        let info = Arc::new(Mutex::new(ExecInfo {
            status: None,
            has_output: out || err,
            out: Capture {
                closed: !out,
                ..Capture::default()
            },
            err: Capture {
                closed: !err,
                ..Capture::default()
            },
        }));
        if let (Some(mut stdin), Some(data)) = (child.stdin.take(), input) {
            tokio::spawn(async move {
                // A command that does not read its stdin gets EPIPE here; qemu-ga ignores it too.
                let _ = stdin.write_all(&data).await;
            });
        }
        if let Some(o) = child.stdout.take() {
            tokio::spawn(capture(o, info.clone(), false));
        }
        if let Some(e) = child.stderr.take() {
            tokio::spawn(capture(e, info.clone(), true));
        }
        let info2 = info.clone();
        tokio::spawn(async move {
            let st = child.wait().await;
            lock(&info2).status =
                Some(st.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9)));
        });
        lock(&self.machine.execs).insert(pid, info);
        Ok(json!({"pid": pid}))
    }

    fn exec_status(&self, args: &Value) -> Result<Value, QgaError> {
        let pid = arg_int(args, "pid")?.ok_or_else(|| generic("Parameter 'pid' is missing"))?;
        let mut execs = lock(&self.machine.execs);
        let Some(info) = execs.get(&pid).cloned() else {
            return Err(generic("Invalid parameter 'pid'"));
        };
        let mut guard = lock(&info);
        let i = &mut *guard;
        let mut finished = i.status.is_some();
        if i.has_output {
            // Only once both pipes hit EOF is all output in: a background child holding them
            // keeps the command "running", as in qemu-ga.
            finished = finished && i.out.closed && i.err.closed;
        }
        let mut r = json!({"exited": finished});
        if !finished {
            return Ok(r);
        }
        use std::os::unix::process::ExitStatusExt;
        let st = i.status.expect("finished");
        if let Some(code) = st.code() {
            r["exitcode"] = json!(code);
        } else if let Some(sig) = st.signal() {
            r["signal"] = json!(sig);
        }
        for (key, c) in [("out", &mut i.out), ("err", &mut i.err)] {
            if !c.data.is_empty() {
                r[format!("{key}-data")] = json!(B64.encode(std::mem::take(&mut c.data)));
                // qemu-ga 7.2 reports the flag with every stream that has data, true or false
                // (found by tests/differential.rs in guest-agent).
                r[format!("{key}-truncated")] = json!(c.truncated);
            }
        }
        drop(guard);
        execs.remove(&pid);
        Ok(r)
    }

    fn file(&self, args: &Value) -> Result<Arc<Mutex<OpenFile>>, QgaError> {
        let h = arg_int(args, "handle")?.ok_or_else(|| generic("Parameter 'handle' is missing"))?;
        lock(&self.machine.files)
            .get(&h)
            .cloned()
            .ok_or_else(|| generic(format!("handle '{h}' has not been found")))
    }

    fn file_open(&self, args: &Value) -> Result<Value, QgaError> {
        let path = arg_str(args, "path")?;
        let mode = match &args["mode"] {
            Value::Null => "r",
            _ => arg_str(args, "mode")?,
        };
        let flags =
            open_flags(mode).ok_or_else(|| generic(format!("invalid file open mode '{mode}'")))?;
        let fds = self.machine.fds()?;
        let fail = |e: &io::Error| {
            generic(format!(
                "failed to open file '{path}' (mode: '{mode}'): {}",
                strerror(e)
            ))
        };
        // qemu-ga creates exclusively first so that only a file it created gets mode 0666.
        let (fd, created) = if flags.contains(OFlags::CREATE) {
            match openat2_in(&fds.root, path, flags | OFlags::EXCL, Mode::empty()) {
                Ok(fd) => (fd, true),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {
                    let fd = openat2_in(&fds.root, path, flags - OFlags::CREATE, Mode::empty())
                        .map_err(|e| fail(&e))?;
                    (fd, false)
                }
                Err(e) => return Err(fail(&e)),
            }
        } else {
            (
                openat2_in(&fds.root, path, flags, Mode::empty()).map_err(|e| fail(&e))?,
                false,
            )
        };
        if created {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o666)).map_err(|e| {
                generic(format!(
                    "failed to set permission 0666 on new file '{path}' (mode: '{mode}'): {}",
                    strerror(&e.into())
                ))
            })?;
        }
        let handle = self.machine.next_handle.fetch_add(1, Ordering::SeqCst);
        lock(&self.machine.files).insert(
            handle,
            Arc::new(Mutex::new(OpenFile {
                file: std::fs::File::from(fd),
                state: RwState::New,
            })),
        );
        Ok(json!(handle))
    }

    async fn file_read(&self, args: &Value) -> Result<Value, QgaError> {
        let f = self.file(args)?;
        let count = arg_int(args, "count")?.unwrap_or(FILE_READ_COUNT_DEFAULT);
        if !(0..=FILE_READ_COUNT_MAX).contains(&count) {
            return Err(generic(format!(
                "value '{count}' is invalid for argument count"
            )));
        }
        tokio::task::spawn_blocking(move || {
            let mut f = lock(&f);
            if matches!(f.state, RwState::Writing) {
                f.file
                    .flush()
                    .map_err(|e| generic(format!("failed to flush file: {}", strerror(&e))))?;
                f.state = RwState::New;
            }
            // fread(): fill the buffer unless EOF comes first; feof() only after a short read.
            let mut buf = vec![0u8; count as usize];
            let (mut n, mut eof) = (0, false);
            while n < buf.len() {
                match f.file.read(&mut buf[n..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(generic(format!("failed to read file: {}", strerror(&e))));
                    }
                }
            }
            f.state = RwState::Reading;
            let mut r = json!({"count": n, "eof": eof});
            if n > 0 {
                r["buf-b64"] = json!(B64.encode(&buf[..n]));
            }
            Ok(r)
        })
        .await
        .map_err(|e| generic(e.to_string()))?
    }

    async fn file_write(&self, args: &Value) -> Result<Value, QgaError> {
        let f = self.file(args)?;
        let buf = qbase64_decode(arg_str(args, "buf-b64")?)?;
        let count = match arg_int(args, "count")? {
            None => buf.len(),
            Some(c) if c < 0 || c as usize > buf.len() => {
                return Err(generic(format!(
                    "value '{c}' is invalid for argument count"
                )));
            }
            Some(c) => c as usize,
        };
        tokio::task::spawn_blocking(move || {
            let mut f = lock(&f);
            f.file
                .write_all(&buf[..count])
                .map_err(|e| generic(format!("failed to write to file: {}", strerror(&e))))?;
            f.state = RwState::Writing;
            Ok(json!({"count": count, "eof": false}))
        })
        .await
        .map_err(|e| generic(e.to_string()))?
    }

    fn file_seek(&self, args: &Value) -> Result<Value, QgaError> {
        let f = self.file(args)?;
        let offset =
            arg_int(args, "offset")?.ok_or_else(|| generic("Parameter 'offset' is missing"))?;
        let whence = match &args["whence"] {
            Value::String(s) if s == "set" => 0,
            Value::String(s) if s == "cur" => 1,
            Value::String(s) if s == "end" => 2,
            Value::Number(n) => n.as_i64().unwrap_or(-1),
            Value::Null => return Err(generic("Parameter 'whence' is missing")),
            other => return Err(generic(format!("Invalid parameter 'whence': {other}"))),
        };
        let pos = match whence {
            0 if offset >= 0 => SeekFrom::Start(offset as u64),
            0 => return Err(generic("failed to seek file: Invalid argument")),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            w => return Err(generic(format!("invalid whence code {w}"))),
        };
        let mut f = lock(&f);
        let position = f
            .file
            .seek(pos)
            .map_err(|e| generic(format!("failed to seek file: {}", strerror(&e))))?;
        f.state = RwState::New;
        Ok(json!({"position": position, "eof": false}))
    }

    fn file_close(&self, args: &Value) -> Result<Value, QgaError> {
        let h = arg_int(args, "handle")?.ok_or_else(|| generic("Parameter 'handle' is missing"))?;
        lock(&self.machine.files)
            .remove(&h)
            .map(|_| json!({}))
            .ok_or_else(|| generic(format!("handle '{h}' has not been found")))
    }

    async fn host_name(&self) -> Result<Value, QgaError> {
        let fds = self.machine.fds()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let r = rustix::thread::move_into_link_name_space(
                fds.uts.as_fd(),
                Some(LinkNameSpaceType::HostNameAndNISDomainName),
            )
            .map(|()| {
                rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned()
            });
            let _ = tx.send(r);
        });
        let name = rx
            .await
            .map_err(|_| generic("uts thread vanished"))?
            .map_err(|e| generic(strerror(&e.into())))?;
        Ok(json!({"host-name": name}))
    }

    fn osinfo(&self) -> Result<Value, QgaError> {
        let fds = self.machine.fds()?;
        let mut text = String::new();
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            if let Ok(fd) = openat2_in(
                &fds.root,
                p,
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) && std::fs::File::from(fd).read_to_string(&mut text).is_ok()
            {
                break;
            }
        }
        let field = |k: &str| {
            text.lines().find_map(|l| {
                let v = l.strip_prefix(k)?.strip_prefix('=')?;
                Some(v.trim_matches('"').to_owned())
            })
        };
        let u = rustix::system::uname();
        let mut r = json!({
            "kernel-release": u.release().to_string_lossy(),
            "kernel-version": u.version().to_string_lossy(),
            "machine": u.machine().to_string_lossy(),
        });
        for (key, k) in [
            ("id", "ID"),
            ("name", "NAME"),
            ("pretty-name", "PRETTY_NAME"),
            ("version", "VERSION"),
            ("version-id", "VERSION_ID"),
        ] {
            if let Some(v) = field(k) {
                r[key] = json!(v);
            }
        }
        Ok(r)
    }
}

/// The commands this emulation answers (reported by `guest-info`).
const SUPPORTED: &[&str] = &[
    "guest-sync",
    "guest-sync-delimited",
    "guest-ping",
    "guest-info",
    "guest-exec",
    "guest-exec-status",
    "guest-file-open",
    "guest-file-read",
    "guest-file-write",
    "guest-file-seek",
    "guest-file-flush",
    "guest-file-close",
    "guest-get-host-name",
    "guest-get-osinfo",
    "guest-network-get-interfaces",
    "guest-set-time",
    "guest-get-time",
];

impl Guest for ProcessGuest {
    fn execute<'a>(
        &'a self,
        command: &'a str,
        arguments: Value,
    ) -> BoxFuture<'a, Result<Value, QgaError>> {
        Box::pin(async move {
            // A powered-off VM has no agent, whatever the command.
            self.machine.fds()?;
            let args = &arguments;
            match command {
                "guest-ping" => Ok(json!({})),
                "guest-sync" | "guest-sync-delimited" => Ok(args["id"].clone()),
                "guest-info" => {
                    let cmds: Vec<Value> = SUPPORTED
                        .iter()
                        .map(|n| json!({"name": n, "enabled": true, "success-response": true}))
                        .collect();
                    Ok(json!({"version": "10.0.2", "supported_commands": cmds}))
                }
                "guest-exec" => self.exec(args).await,
                "guest-exec-status" => self.exec_status(args),
                "guest-file-open" => self.file_open(args),
                "guest-file-read" => self.file_read(args).await,
                "guest-file-write" => self.file_write(args).await,
                "guest-file-seek" => self.file_seek(args),
                "guest-file-flush" => self.file(args).map(|_| json!({})),
                "guest-file-close" => self.file_close(args),
                "guest-get-host-name" => self.host_name().await,
                "guest-get-osinfo" => self.osinfo(),
                // A network namespace with nothing but loopback.
                "guest-network-get-interfaces" => Ok(json!([{
                    "name": "lo", "hardware-address": "00:00:00:00:00:00",
                    "ip-addresses": [
                        {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                        {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128},
                    ],
                }])),
                // The VM shares the host clock (there is no time namespace for CLOCK_REALTIME):
                // setting it is accepted and has nothing to do.
                "guest-set-time" => Ok(json!({})),
                "guest-get-time" => Ok(json!(super::host_time_ns())),
                other => Err(command_not_found(other)),
            }
        })
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), String>> {
        let machine = self.machine.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || machine.freeze_blocking())
                .await
                .map_err(|e| e.to_string())?
        })
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), String>> {
        self.machine.thaw();
        Box::pin(async { Ok(()) })
    }

    fn power_off(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(mut p) = self.machine.take_power() {
                let _ = p.unshare.kill();
                let _ = tokio::task::spawn_blocking(move || p.unshare.wait()).await;
            }
        })
    }
}
