//! `cargo xtask nested-pve`: a Proxmox VE inside QEMU/KVM, for the end-to-end suite.
//!
//! The first run builds a base image: it fetches (or takes) a PVE ISO and checks its SHA-256,
//! writes an answer file ([`answer`]) and a first-boot script ([`firstboot`]), bakes both into
//! the ISO with `proxmox-auto-install-assistant prepare-iso --fetch-from iso` (natively when
//! the tool is installed, else in a `debian:trixie-slim` container that installs it from
//! Proxmox's repository — the tool only ships as a PVE package), installs onto an empty qcow2
//! disk ([`qemu::install_args`]), and boots it once so the first-boot script can create the
//! API token and write it onto a small results disk ([`qemu::first_boot_args`]). The installed
//! disk becomes `DIR/base.qcow2`, and the results `DIR/base.results`.
//!
//! Every run then boots a fresh qcow2 overlay on that base in the background with the API
//! forwarded to `127.0.0.1:<port>` ([`qemu::run_args`]), waits for the API, and writes the
//! instances file the e2e suite reads (`DIR/instances.json`, the peer's format plus our
//! token and fingerprint fields). `--stop` ends the VM; `--keep` reuses the last overlay.
//!
//! Why `--fetch-from iso` and not an answer served over HTTP from a 127.0.0.1 listener (the
//! guest would reach it as 10.0.2.2): the HTTP mode still needs `prepare-iso` to embed the
//! mode and URL, so it removes no dependency; it only saves re-preparing the ISO when the
//! answer changes, which a rebuild does anyway.
//!
//! Everything is a [`plan::Plan`] first: `--dry-run` prints it (every command, every file in
//! full, passwords redacted) and a real run executes the same value. A real run needs KVM
//! with nested virtualisation; a dry run needs nothing, not even the ISO.
//!
//! Directory layout (`--dir`, default `~/.cache/pvesandbox/nested-pve`): `iso/` downloads,
//! `build/` the install's working files and console logs, `base.qcow2` + `base.results` +
//! `base.recipe` (hash of ISO, answer file and first-boot script: a change means rebuild),
//! `root-password`, `run/` the overlay, console log and pidfile, `instances.json`.

pub mod answer;
pub mod firstboot;
#[cfg(test)]
mod golden;
pub mod plan;
pub mod privileges;
pub mod qemu;
pub mod sizing;

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use answer::Answer;
use firstboot::FirstBoot;
use plan::{InstanceTemplate, Plan, Step};
use qemu::Machine;

/// The pinned default: the latest PVE 9.x ISO at the time of writing (9.2-1, 1 706 178 560
/// bytes). Proxmox publishes the SHA-256 on its download page; the value here was taken from
/// two independent public records of that checksum, since this project's build machines cannot
/// reach proxmox.com. A mismatch stops the build before anything boots.
pub const DEFAULT_ISO_URL: &str = "https://enterprise.proxmox.com/iso/proxmox-ve_9.2-1.iso";
/// SHA-256 of [`DEFAULT_ISO_URL`].
pub const DEFAULT_ISO_SHA256: &str =
    "4e88fe416df9b527624a175f24c9aa07c714d3332afb1ee3dbf3879573ef2c6c";
/// Where `prepare-iso` runs when the tool is not installed on the host.
pub const CONTAINER_IMAGE: &str = "debian:trixie-slim";
/// Default host port for the API.
pub const DEFAULT_API_PORT: u16 = 18006;
/// Default size of the (sparse) base disk.
pub const DEFAULT_DISK_GIB: u32 = 64;
/// Host name of the nested node; the node name is `pve`.
pub const FQDN: &str = "pve.nested.test";
/// Upper bound for the unattended install (QEMU is killed after it).
pub const INSTALL_TIMEOUT_S: u32 = 3600;
/// Upper bound for the first boot (apt-get over slirp included).
pub const FIRST_BOOT_TIMEOUT_S: u32 = 1800;
/// Console log of the first boot, in `build/` (kept: it explains a bad token later too).
const FIRST_BOOT_LOG: &str = "first-boot-console.log";
/// Retries (2 s apart, 10 s each at most) for the API to answer after the VM starts.
pub const API_WAIT_TRIES: u32 = 150;

/// What went wrong, naming the flag or file and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// A bad or missing command-line value.
    #[error("--{flag}: {message}")]
    Arg {
        /// The flag, without dashes.
        flag: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// No usable KVM for a real run.
    #[error(
        "a real run needs KVM: {reason}. TCG (software emulation) is far too slow for Proxmox VE \
         — the install takes hours and its guests time out — so nested-pve refuses to use it. Run \
         on a host with VT-x/AMD-V, nested virtualisation on and read-write access to /dev/kvm, \
         or pass --dry-run to review the plan"
    )]
    NoKvm {
        /// Why KVM is unusable.
        reason: String,
    },
    /// The base image was built from different inputs.
    #[error(
        "{base} was built from another recipe (ISO, answer file, first-boot script or disk size \
         changed): pass --rebuild to install afresh, or --dir for a separate directory"
    )]
    BaseRecipeChanged {
        /// The base image.
        base: PathBuf,
    },
    /// `prepare-iso` cannot run here.
    #[error(
        "preparing the ISO needs proxmox-auto-install-assistant (a Proxmox package) or a \
         container runtime (docker or podman) to install it in {CONTAINER_IMAGE}; install one"
    )]
    NoPrepareTool,
    /// A VM from an earlier run is still up.
    #[error(
        "a nested PVE is already running (pid {pid}, pidfile {}): stop it with \
         `cargo xtask nested-pve --stop --dir {}` or use another --dir",
        pidfile.display(),
        dir.display()
    )]
    AlreadyRunning {
        /// QEMU's pid.
        pid: u32,
        /// Its pidfile.
        pidfile: PathBuf,
        /// The --dir it belongs to.
        dir: PathBuf,
    },
    /// `--stop` with nothing running.
    #[error("no nested PVE is running for --dir {} (no live pid in {})", dir.display(), pidfile.display())]
    NotRunning {
        /// The --dir.
        dir: PathBuf,
        /// The pidfile looked at.
        pidfile: PathBuf,
    },
    /// The first boot's results are missing or report a failure.
    #[error("{}: {message}; see the first boot's console log {}", path.display(), serial_log.display())]
    Results {
        /// The results file.
        path: PathBuf,
        /// Console log of the first boot.
        serial_log: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A step of the plan failed.
    #[error("step {step} failed: {what}")]
    Step {
        /// 1-based step number, as the dry run prints it.
        step: usize,
        /// What failed.
        what: String,
    },
}

/// Where the ISO comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsoSource {
    /// Downloaded into `DIR/iso/` (once).
    Url(String),
    /// A local file, used in place.
    Path(PathBuf),
}

impl IsoSource {
    fn file_name(&self) -> String {
        match self {
            IsoSource::Url(u) => u.rsplit('/').next().unwrap_or("proxmox-ve.iso").to_owned(),
            IsoSource::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// The command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--iso PATH|URL`.
    pub iso: IsoSource,
    /// `--iso-sha256 HEX` (defaults to the pinned value for the pinned ISO).
    pub iso_sha256: Option<String>,
    /// `--dir DIR` (absolute).
    pub dir: PathBuf,
    /// `--cpus N`.
    pub cpus: Option<u32>,
    /// `--memory-mib N`.
    pub memory_mib: Option<u64>,
    /// `--disk-gib N`.
    pub disk_gib: u32,
    /// `--api-port PORT`.
    pub api_port: u16,
    /// `--config PATH`: the instances file (default `DIR/instances.json`).
    pub config: Option<PathBuf>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--keep`: reuse the previous run's overlay instead of a fresh one.
    pub keep: bool,
    /// `--rebuild`: install a new base even if one exists.
    pub rebuild: bool,
    /// `--stop`: stop the running VM.
    pub stop: bool,
}

/// `cargo xtask nested-pve --help`.
pub const USAGE: &str = "\
cargo xtask nested-pve [OPTIONS]

Builds (once) and boots a nested Proxmox VE with QEMU/KVM; writes the e2e suite's instances file.

  --iso PATH|URL       installer ISO (default: the pinned PVE 9.2-1 download)
  --iso-sha256 HEX     its SHA-256 (required unless the ISO is the pinned one)
  --dir DIR            working directory (default: ~/.cache/pvesandbox/nested-pve)
  --cpus N             vCPUs (default: 75% of the host's, at least 2)
  --memory-mib N       memory (default: 75% of the host's, at least 4096)
  --disk-gib N         sparse base disk size (default: 64)
  --api-port PORT      host port for the API on 127.0.0.1 (default: 18006)
  --config PATH        instances file to write (default: DIR/instances.json)
  --dry-run            print every command and file instead of running; needs no KVM, no ISO
  --keep               boot the previous run's overlay again instead of a fresh one
  --rebuild            install a new base image even if one exists
  --stop               stop the nested PVE started from DIR
";

fn default_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache/pvesandbox/nested-pve")
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// Parses the arguments after `nested-pve`; `Ok(None)` means `--help` was printed.
pub fn parse_args(args: &[String]) -> Result<Option<Options>, NestedError> {
    let mut o = Options {
        iso: IsoSource::Url(DEFAULT_ISO_URL.into()),
        iso_sha256: None,
        dir: default_dir(),
        cpus: None,
        memory_mib: None,
        disk_gib: DEFAULT_DISK_GIB,
        api_port: DEFAULT_API_PORT,
        config: None,
        dry_run: false,
        keep: false,
        rebuild: false,
        stop: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &'static str| {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| NestedError::Arg {
                    flag,
                    message: "needs a value".into(),
                })
        };
        fn num<T: std::str::FromStr>(flag: &'static str, v: String) -> Result<T, NestedError> {
            v.parse().map_err(|_| NestedError::Arg {
                flag,
                message: format!("{v:?} is not a valid number"),
            })
        }
        match name {
            "--iso" => {
                let v = value("iso")?;
                o.iso = if v.starts_with("http://") || v.starts_with("https://") {
                    IsoSource::Url(v)
                } else {
                    IsoSource::Path(absolute(v.into()))
                };
            }
            "--iso-sha256" => {
                let v = value("iso-sha256")?.to_ascii_lowercase();
                if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(NestedError::Arg {
                        flag: "iso-sha256",
                        message: format!("{v:?} is not a SHA-256 (64 hex digits)"),
                    });
                }
                o.iso_sha256 = Some(v);
            }
            "--dir" => o.dir = absolute(value("dir")?.into()),
            "--cpus" => o.cpus = Some(num("cpus", value("cpus")?)?),
            "--memory-mib" => o.memory_mib = Some(num("memory-mib", value("memory-mib")?)?),
            "--disk-gib" => {
                o.disk_gib = num("disk-gib", value("disk-gib")?)?;
                if o.disk_gib < 16 {
                    return Err(NestedError::Arg {
                        flag: "disk-gib",
                        message: "Proxmox VE needs at least 16 GiB (the disk is sparse)".into(),
                    });
                }
            }
            "--api-port" => {
                o.api_port = num("api-port", value("api-port")?)?;
                if o.api_port == 0 {
                    return Err(NestedError::Arg {
                        flag: "api-port",
                        message: "0 is not a port; pick a free one, e.g. 18006".into(),
                    });
                }
            }
            "--config" => o.config = Some(absolute(value("config")?.into())),
            "--dry-run" => o.dry_run = true,
            "--keep" => o.keep = true,
            "--rebuild" => o.rebuild = true,
            "--stop" => o.stop = true,
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => {
                return Err(NestedError::Arg {
                    flag: "help",
                    message: format!(
                        "unknown argument {other:?}; see `cargo xtask nested-pve --help`"
                    ),
                });
            }
        }
    }
    Ok(Some(o))
}

/// How `prepare-iso` will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepare {
    /// `proxmox-auto-install-assistant` is on the host.
    Native,
    /// In a container, with this runtime (`docker` or `podman`).
    Container(String),
}

/// Facts about the host the plan depends on (read once; tests make their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `/proc/cpuinfo`.
    pub cpuinfo: String,
    /// `/proc/meminfo`.
    pub meminfo: String,
    /// `Ok` when KVM is usable for nesting, else why not.
    pub kvm: Result<(), String>,
    /// How to prepare the ISO; `None` when neither way is available.
    pub prepare: Option<Prepare>,
    /// Owner for files a container creates.
    pub uid: u32,
    /// Group for files a container creates.
    pub gid: u32,
}

/// Whether KVM can run a nested hypervisor: the CPU flag, `/dev/kvm`, the nested parameter.
pub fn kvm_status(cpuinfo: &str, dev_kvm: &Path, nested_params: &[&Path]) -> Result<(), String> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Err(format!(
            "the CPU shows neither vmx nor svm, so {} cannot give a guest hardware \
             virtualisation to nest",
            dev_kvm.display()
        ));
    }
    if let Err(e) = fs::OpenOptions::new().read(true).write(true).open(dev_kvm) {
        return Err(format!(
            "{} cannot be opened read-write ({e})",
            dev_kvm.display()
        ));
    }
    for p in nested_params {
        if let Ok(v) = fs::read_to_string(p)
            && matches!(v.trim(), "N" | "0")
        {
            return Err(format!(
                "nested virtualisation is off ({} = {}); enable it, e.g. \
                 `modprobe -r kvm_intel && modprobe kvm_intel nested=1`",
                p.display(),
                v.trim()
            ));
        }
    }
    Ok(())
}

impl Host {
    /// Reads the real host.
    pub fn detect() -> Host {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kvm = kvm_status(
            &cpuinfo,
            Path::new("/dev/kvm"),
            &[
                Path::new("/sys/module/kvm_intel/parameters/nested"),
                Path::new("/sys/module/kvm_amd/parameters/nested"),
            ],
        );
        let prepare = if crate::guest_image::on_path("proxmox-auto-install-assistant") {
            Some(Prepare::Native)
        } else {
            ["podman", "docker"]
                .into_iter()
                .find(|r| crate::guest_image::on_path(r))
                .map(|r| Prepare::Container(r.into()))
        };
        let id = |flag: &str| {
            std::process::Command::new("id")
                .arg(flag)
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
                .unwrap_or(0)
        };
        Host {
            cpuinfo,
            meminfo: fs::read_to_string("/proc/meminfo").unwrap_or_default(),
            kvm,
            prepare,
            uid: id("-u"),
            gid: id("-g"),
        }
    }
}

/// Paths inside `--dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The directory.
    pub dir: PathBuf,
}

impl Layout {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    /// The installed system, kept read-only as every overlay's backing file.
    pub fn base(&self) -> PathBuf {
        self.p("base.qcow2")
    }
    /// The first boot's results (token, fingerprint, node), mode 600.
    pub fn base_results(&self) -> PathBuf {
        self.p("base.results")
    }
    /// Hash of the inputs the base was built from.
    pub fn base_recipe(&self) -> PathBuf {
        self.p("base.recipe")
    }
    /// Working files of a build.
    pub fn build(&self) -> PathBuf {
        self.p("build")
    }
    /// Downloaded ISOs.
    pub fn iso_dir(&self) -> PathBuf {
        self.p("iso")
    }
    /// Per-run files.
    pub fn run(&self) -> PathBuf {
        self.p("run")
    }
    /// The run's overlay.
    pub fn overlay(&self) -> PathBuf {
        self.p("run/overlay.qcow2")
    }
    /// QEMU's pidfile for the run.
    pub fn pidfile(&self) -> PathBuf {
        self.p("run/qemu.pid")
    }
}

/// What already exists in `--dir` (read once; tests make their own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `base.qcow2` and `base.results` exist.
    pub base: bool,
    /// Contents of `base.recipe`.
    pub base_recipe: Option<String>,
    /// `run/overlay.qcow2` exists.
    pub overlay: bool,
    /// Pid of a live QEMU from the pidfile.
    pub running_pid: Option<u32>,
    /// The URL's ISO is already downloaded.
    pub iso_cached: bool,
}

impl Observed {
    /// Looks at the directory.
    pub fn read(layout: &Layout, iso: &IsoSource) -> Observed {
        let running_pid = fs::read_to_string(layout.pidfile())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|pid| {
                // A stale pidfile after a host reboot may name an unrelated process.
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("pvesandbox-nested"))
            });
        Observed {
            base: layout.base().is_file() && layout.base_results().is_file(),
            base_recipe: fs::read_to_string(layout.base_recipe())
                .ok()
                .map(|s| s.trim().to_owned()),
            overlay: layout.overlay().is_file(),
            running_pid,
            iso_cached: matches!(iso, IsoSource::Url(_))
                && layout.iso_dir().join(iso.file_name()).is_file(),
        }
    }
}

/// The token's owner and name, and where the results disk appears in the VM.
pub fn first_boot() -> FirstBoot {
    FirstBoot {
        user: "pvesandbox".into(),
        realm: "pve".into(),
        token_name: "e2e".into(),
        results_device: "/dev/vdb".into(),
    }
}

fn answer(root_password: &str) -> Answer {
    Answer {
        fqdn: FQDN.into(),
        root_password: root_password.into(),
        filesystem: "ext4".into(),
        disk: "vda".into(),
    }
}

/// Hash of everything the base image depends on (the random root password excluded).
pub fn recipe(iso_sha256: &str, disk_gib: u32) -> String {
    let mut h = Sha256::new();
    h.update(iso_sha256.as_bytes());
    h.update(answer("<password>").render().as_bytes());
    h.update(first_boot().render().as_bytes());
    h.update(disk_gib.to_le_bytes());
    format!("{:x}", h.finalize())
}

fn iso_checksum(o: &Options) -> Result<String, NestedError> {
    if let Some(s) = &o.iso_sha256 {
        return Ok(s.clone());
    }
    let pinned_name = IsoSource::Url(DEFAULT_ISO_URL.into()).file_name();
    match &o.iso {
        IsoSource::Url(u) if u == DEFAULT_ISO_URL => Ok(DEFAULT_ISO_SHA256.into()),
        IsoSource::Path(_) if o.iso.file_name() == pinned_name => Ok(DEFAULT_ISO_SHA256.into()),
        _ => Err(NestedError::Arg {
            flag: "iso-sha256",
            message: format!(
                "{} is not the pinned ISO ({pinned_name}); give its SHA-256 from Proxmox's \
                 download page",
                o.iso.file_name()
            ),
        }),
    }
}

fn cmd(why: &str, program: &str, args: &[&str]) -> Step {
    Step::Command {
        why: why.into(),
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

fn ps(p: &Path) -> String {
    p.display().to_string()
}

/// Proxmox's no-subscription apt source for trixie: the container that prepares the ISO and
/// the installed node's first boot both use it.
pub(crate) const PVE_NO_SUBSCRIPTION_SOURCES: &str = "\
Types: deb
URIs: http://download.proxmox.com/debian/pve
Suites: trixie
Components: pve-no-subscription
Signed-By: /usr/share/keyrings/proxmox-archive-keyring.gpg
";

/// The script that runs `prepare-iso` inside the container.
pub fn container_script() -> String {
    format!(
        r#"#!/bin/bash
# Runs inside {CONTAINER_IMAGE} (generated by `cargo xtask nested-pve`): installs
# proxmox-auto-install-assistant from Proxmox's no-subscription repository (it only ships as a
# PVE package) and bakes the answer file and first-boot script into the ISO.
# $1 is the original ISO (mounted read-only); /work holds the inputs and receives prepared.iso.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl xorriso
# Proxmox's archive key for trixie, authenticated by HTTPS from Proxmox itself.
curl -fsSL -o /usr/share/keyrings/proxmox-archive-keyring.gpg \
  https://enterprise.proxmox.com/debian/proxmox-archive-keyring-trixie.gpg
cat > /etc/apt/sources.list.d/pve-no-subscription.sources <<'EOF'
{PVE_NO_SUBSCRIPTION_SOURCES}EOF
apt-get update -qq
apt-get install -y -qq --no-install-recommends proxmox-auto-install-assistant
proxmox-auto-install-assistant validate-answer /work/answer.toml
proxmox-auto-install-assistant prepare-iso "$1" --fetch-from iso \
  --answer-file /work/answer.toml --on-first-boot /work/first-boot.sh \
  --output /work/prepared.iso
chown "$HOST_UID:$HOST_GID" /work/prepared.iso
"#
    )
}

/// Plans a build (when needed) and a run, or a stop.
pub fn plan(
    o: &Options,
    host: &Host,
    seen: &Observed,
    root_password: &str,
) -> Result<Plan, NestedError> {
    let l = Layout { dir: o.dir.clone() };
    let mut p = Plan::default();

    if o.stop {
        let pid = seen.running_pid.ok_or_else(|| NestedError::NotRunning {
            dir: l.dir.clone(),
            pidfile: l.pidfile(),
        })?;
        p.steps.push(cmd(
            "stop the nested PVE (QEMU exits; the overlay stays for --keep)",
            "kill",
            &[&pid.to_string()],
        ));
        p.steps
            .push(cmd("forget the pid", "rm", &["-f", &ps(&l.pidfile())]));
        return Ok(p);
    }
    if let Some(pid) = seen.running_pid {
        return Err(NestedError::AlreadyRunning {
            pid,
            pidfile: l.pidfile(),
            dir: l.dir.clone(),
        });
    }

    let m = sizing::size(&host.cpuinfo, &host.meminfo, o.cpus, o.memory_mib)?;
    p.notes.push(format!(
        "VM size: {} vCPUs, {} MiB (override with --cpus/--memory-mib)",
        m.cpus, m.memory_mib
    ));
    match &host.kvm {
        Ok(()) => p.notes.push("KVM: usable for nesting".into()),
        Err(why) => p.notes.push(format!(
            "KVM: not usable ({why}); a real run stops before step 1"
        )),
    }

    let sha = iso_checksum(o)?;
    let recipe = recipe(&sha, o.disk_gib);
    let build = o.rebuild || !seen.base;
    if !build && seen.base_recipe.as_deref() != Some(recipe.as_str()) {
        return Err(NestedError::BaseRecipeChanged { base: l.base() });
    }
    if build {
        plan_build(&mut p, o, host, seen, &l, m, &sha, &recipe, root_password)?;
    } else {
        p.notes.push(format!(
            "base image: {} (built, recipe matches)",
            ps(&l.base())
        ));
    }
    plan_run(&mut p, o, seen, &l, m);
    Ok(p)
}

#[allow(clippy::too_many_arguments)]
fn plan_build(
    p: &mut Plan,
    o: &Options,
    host: &Host,
    seen: &Observed,
    l: &Layout,
    m: Machine,
    sha: &str,
    recipe: &str,
    root_password: &str,
) -> Result<(), NestedError> {
    let b = l.build();
    let f = |name: &str| b.join(name);
    p.notes.push(format!(
        "base image: none at {} (or --rebuild): install first",
        ps(&l.base())
    ));
    p.steps.push(cmd(
        "working directories",
        "mkdir",
        &["-p", &ps(&b), &ps(&l.iso_dir())],
    ));

    let iso = iso_steps(p, o, seen, l, sha);

    // 2. The inputs of the unattended install.
    p.steps.push(Step::WriteFile {
        why: "root password of the nested PVE (for its console; clients use the token)".into(),
        path: l.dir.join("root-password"),
        contents: format!("{root_password}\n"),
        mode: 0o600,
        secrets: vec![root_password.into()],
    });
    p.steps.push(Step::WriteFile {
        why: "answer file for the automated installer".into(),
        path: f("answer.toml"),
        contents: answer(root_password).render(),
        mode: 0o600,
        secrets: vec![root_password.into()],
    });
    p.steps.push(Step::WriteFile {
        why: "first-boot script (runs once in the installed system, then powers off)".into(),
        path: f("first-boot.sh"),
        contents: first_boot().render(),
        mode: 0o755,
        secrets: vec![],
    });

    let prepared = f("prepared.iso");
    prepare_steps(p, o, host, l, &iso, &prepared)?;

    // 4. Install, then the first boot.
    let disk = f("base.qcow2");
    let results = f("results.img");
    let install_log = f("install-console.log");
    let first_log = f(FIRST_BOOT_LOG);
    p.steps.push(cmd(
        "empty target disk (sparse)",
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            &ps(&disk),
            &format!("{}G", o.disk_gib),
        ],
    ));
    let mut install = vec![INSTALL_TIMEOUT_S.to_string(), "qemu-system-x86_64".into()];
    install.extend(qemu::install_args(m, &disk, &prepared, &install_log));
    p.steps.push(Step::Command {
        why: format!(
            "unattended install from the prepared ISO; the installer powers off when done \
             (console: {})",
            ps(&install_log)
        ),
        program: "timeout".into(),
        args: install,
    });
    p.steps.push(cmd(
        "results disk the first-boot script writes the token onto (vdb in the VM)",
        "qemu-img",
        &["create", "-f", "raw", &ps(&results), "1M"],
    ));
    p.steps.push(cmd(
        "the token lands on it: nobody else may read it",
        "chmod",
        &["600", &ps(&results)],
    ));
    let mut first = vec![
        FIRST_BOOT_TIMEOUT_S.to_string(),
        "qemu-system-x86_64".into(),
    ];
    first.extend(qemu::first_boot_args(m, &disk, &results, &first_log));
    p.steps.push(Step::Command {
        why: format!(
            "first boot: the first-boot script prepares the node, creates the token, powers off \
             (console: {})",
            ps(&first_log)
        ),
        program: "timeout".into(),
        args: first,
    });
    p.steps.push(Step::CheckResults {
        results: results.clone(),
        serial_log: first_log,
    });

    // 5. Keep the result; drop what holds the root password or is large.
    p.steps.push(cmd(
        "keep the installed disk as the base image",
        "mv",
        &[&ps(&disk), &ps(&l.base())],
    ));
    p.steps.push(cmd(
        "keep the token with it (mode 600 from above)",
        "mv",
        &[&ps(&results), &ps(&l.base_results())],
    ));
    p.steps.push(Step::WriteFile {
        why: "what the base was built from (a change means --rebuild)".into(),
        path: l.base_recipe(),
        contents: format!("{recipe}\n"),
        mode: 0o644,
        secrets: vec![],
    });
    p.steps.push(cmd(
        "remove the prepared ISO and answer file (they hold the root password)",
        "rm",
        &["-f", &ps(&prepared), &ps(&f("answer.toml"))],
    ));
    Ok(())
}

/// Steps that fetch (when a URL) and always check the ISO; returns where it will be.
fn iso_steps(p: &mut Plan, o: &Options, seen: &Observed, l: &Layout, sha: &str) -> PathBuf {
    let f = |name: &str| l.build().join(name);
    let download = matches!(o.iso, IsoSource::Url(_)) && !seen.iso_cached;
    let iso = match &o.iso {
        IsoSource::Path(path) => path.clone(),
        IsoSource::Url(url) => {
            let iso = l.iso_dir().join(o.iso.file_name());
            if seen.iso_cached {
                p.notes.push(format!(
                    "ISO: {} (downloaded earlier; checked again)",
                    ps(&iso)
                ));
            } else {
                let partial = format!("{}.partial", ps(&iso));
                p.steps.push(cmd(
                    "download the ISO (resumes a partial download)",
                    "curl",
                    &[
                        "--fail",
                        "--location",
                        "--continue-at",
                        "-",
                        "--output",
                        &partial,
                        url,
                    ],
                ));
                p.steps.push(Step::WriteFile {
                    why: "the published checksum of the download".into(),
                    path: f("iso.sha256"),
                    contents: format!("{sha}  {partial}\n"),
                    mode: 0o644,
                    secrets: vec![],
                });
                p.steps.push(cmd(
                    "check the download",
                    "sha256sum",
                    &["--check", "--strict", &ps(&f("iso.sha256"))],
                ));
                p.steps
                    .push(cmd("keep the checked ISO", "mv", &[&partial, &ps(&iso)]));
            }
            iso
        }
    };
    if !download {
        p.steps.push(Step::WriteFile {
            why: "the expected checksum of the ISO".into(),
            path: f("iso.sha256"),
            contents: format!("{sha}  {}\n", ps(&iso)),
            mode: 0o644,
            secrets: vec![],
        });
        p.steps.push(cmd(
            "check the ISO",
            "sha256sum",
            &["--check", "--strict", &ps(&f("iso.sha256"))],
        ));
    }

    iso
}

/// Steps that bake the answer file and first-boot script into `prepared`.
fn prepare_steps(
    p: &mut Plan,
    o: &Options,
    host: &Host,
    l: &Layout,
    iso: &Path,
    prepared: &Path,
) -> Result<(), NestedError> {
    let b = l.build();
    let f = |name: &str| b.join(name);
    match &host.prepare {
        Some(Prepare::Native) => {
            p.steps.push(cmd(
                "check the answer file with the installer's own parser",
                "proxmox-auto-install-assistant",
                &["validate-answer", &ps(&f("answer.toml"))],
            ));
            p.steps.push(cmd(
                "bake the answer file and first-boot script into a copy of the ISO",
                "proxmox-auto-install-assistant",
                &[
                    "prepare-iso",
                    &ps(iso),
                    "--fetch-from",
                    "iso",
                    "--answer-file",
                    &ps(&f("answer.toml")),
                    "--on-first-boot",
                    &ps(&f("first-boot.sh")),
                    "--output",
                    &ps(prepared),
                ],
            ));
        }
        other => {
            let runtime = match other {
                Some(Prepare::Container(r)) => r.clone(),
                _ => {
                    if !o.dry_run {
                        return Err(NestedError::NoPrepareTool);
                    }
                    p.notes.push(
                        "prepare-iso: neither proxmox-auto-install-assistant nor docker/podman \
                         found; showing the docker path (a real run stops here)"
                            .into(),
                    );
                    "docker".into()
                }
            };
            p.steps.push(Step::WriteFile {
                why: format!("prepare-iso inside {CONTAINER_IMAGE} (the tool is a PVE package)"),
                path: f("prepare-iso.sh"),
                contents: container_script(),
                mode: 0o755,
                secrets: vec![],
            });
            let iso_dir = iso.parent().map(ps).unwrap_or_else(|| "/".into());
            p.steps.push(cmd(
                "bake the answer file and first-boot script into a copy of the ISO (needs the \
                 network: Debian and Proxmox package repositories)",
                &runtime,
                &[
                    "run",
                    "--rm",
                    "--volume",
                    &format!("{iso_dir}:/iso:ro"),
                    "--volume",
                    &format!("{}:/work", ps(&b)),
                    "--env",
                    &format!("HOST_UID={}", host.uid),
                    "--env",
                    &format!("HOST_GID={}", host.gid),
                    CONTAINER_IMAGE,
                    "bash",
                    "/work/prepare-iso.sh",
                    &format!("/iso/{}", o.iso.file_name()),
                ],
            ));
        }
    }

    Ok(())
}

fn plan_run(p: &mut Plan, o: &Options, seen: &Observed, l: &Layout, m: Machine) {
    let overlay = l.overlay();
    p.steps
        .push(cmd("run directory", "mkdir", &["-p", &ps(&l.run())]));
    // An overlay on a base that was just rebuilt would read garbage: only a kept base keeps it.
    if o.keep && seen.overlay && seen.base && !o.rebuild {
        p.notes
            .push(format!("overlay: reusing {} (--keep)", ps(&overlay)));
    } else {
        p.steps.push(cmd(
            "fresh overlay on the base: every run starts from the just-installed node",
            "qemu-img",
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                &ps(&l.base()),
                "-F",
                "qcow2",
                &ps(&overlay),
            ],
        ));
    }
    let run = qemu::run_args(
        m,
        &overlay,
        o.api_port,
        &l.run().join("console.log"),
        &l.pidfile(),
    );
    p.steps.push(Step::Command {
        why: format!(
            "boot the overlay in the background, API on https://127.0.0.1:{}",
            o.api_port
        ),
        program: "qemu-system-x86_64".into(),
        args: run,
    });
    p.steps.push(cmd(
        "wait until the API answers (no credentials are sent, so the certificate is not checked here; \
         the instances file pins it)",
        "curl",
        &[
            "--silent", "--show-error", "--fail", "--insecure", "--output", "/dev/null",
            "--max-time", "10", "--retry", &API_WAIT_TRIES.to_string(), "--retry-delay", "2",
            "--retry-all-errors", &format!("https://127.0.0.1:{}/", o.api_port),
        ],
    ));
    let fb = first_boot();
    p.steps.push(Step::WriteInstances {
        path: o
            .config
            .clone()
            .unwrap_or_else(|| l.dir.join("instances.json")),
        results: l.base_results(),
        serial_log: l.build().join(FIRST_BOOT_LOG),
        instance: InstanceTemplate {
            instance_id: "nested-pve".into(),
            pool_id: "nested".into(),
            host: "127.0.0.1".into(),
            port: o.api_port,
            image_storage: "local-lvm".into(),
            user: fb.user.clone(),
            user_realm: fb.realm.clone(),
            token_id: fb.token_id(),
        },
    });
}

/// A random root password (24 characters of `[A-Za-z0-9]`).
fn random_password() -> std::io::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// The `nested-pve` task.
pub fn main(sh: &xshell::Shell, args: &[String]) -> anyhow::Result<()> {
    let Some(o) = parse_args(args)? else {
        return Ok(());
    };
    let host = Host::detect();
    let seen = Observed::read(&Layout { dir: o.dir.clone() }, &o.iso);
    let plan = plan(&o, &host, &seen, &random_password()?)?;
    if o.dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    if !o.stop {
        host.kvm
            .clone()
            .map_err(|reason| NestedError::NoKvm { reason })?;
        if (o.rebuild || !seen.base)
            && let IsoSource::Path(iso) = &o.iso
            && !iso.is_file()
        {
            return Err(NestedError::Arg {
                flag: "iso",
                message: format!(
                    "{} does not exist (a dry run accepts that; a real run cannot)",
                    iso.display()
                ),
            }
            .into());
        }
        if !crate::guest_image::on_path("qemu-system-x86_64")
            || !crate::guest_image::on_path("qemu-img")
        {
            // The same QEMU the guest-image task installs (bookworm-backports).
            crate::guest_image::host_packages(sh)?;
        }
    }
    plan.execute()?;
    if !o.stop {
        let config = o
            .config
            .clone()
            .unwrap_or_else(|| o.dir.join("instances.json"));
        println!("api=https://127.0.0.1:{}", o.api_port);
        println!("config={}", config.display());
        println!(
            "stop: cargo xtask nested-pve --stop --dir {}",
            o.dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            cpuinfo: (0..8)
                .map(|i| format!("processor\t: {i}\nflags\t\t: fpu vmx\n\n"))
                .collect(),
            meminfo: "MemTotal:       16777216 kB\n".into(),
            kvm: Ok(()),
            prepare: Some(Prepare::Container("docker".into())),
            uid: 1000,
            gid: 1000,
        }
    }

    fn opts(extra: &[&str]) -> Options {
        let mut args: Vec<String> = ["--dir", "/nested", "--iso", "/isos/proxmox-ve_9.2-1.iso"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        parse_args(&args).unwrap().unwrap()
    }

    fn built(o: &Options) -> Observed {
        Observed {
            base: true,
            base_recipe: Some(recipe(&iso_checksum(o).unwrap(), o.disk_gib)),
            ..Observed::default()
        }
    }

    /// The programs of the command steps, with `timeout`'s wrapped program after it.
    fn programs(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .map(|s| match s {
                Step::Command { program, args, .. } if program == "timeout" => {
                    format!("timeout {}", args[1])
                }
                Step::Command { program, .. } => program.clone(),
                Step::WriteFile { path, .. } => format!("write {}", path.display()),
                Step::CheckResults { .. } => "check-results".into(),
                Step::WriteInstances { .. } => "write-instances".into(),
            })
            .collect()
    }

    fn position(p: &Plan, needle: &str) -> usize {
        p.steps
            .iter()
            .position(|s| s.command_line().is_some_and(|l| l.contains(needle)))
            .unwrap_or_else(|| panic!("no step runs {needle:?}:\n{}", p.render()))
    }

    #[test]
    fn without_a_base_it_installs_first_then_boots_an_overlay() {
        let o = opts(&[]);
        let p = plan(&o, &host(), &Observed::default(), "pw").unwrap();
        let install = position(&p, "media=cdrom");
        let first_boot = position(&p, "results.img,if=virtio,format=raw");
        let keep_base = position(&p, "mv /nested/build/base.qcow2 /nested/base.qcow2");
        let overlay = position(
            &p,
            "-b /nested/base.qcow2 -F qcow2 /nested/run/overlay.qcow2",
        );
        let run = position(&p, "hostfwd=tcp:127.0.0.1:18006-10.0.2.15:8006");
        assert!(
            install < first_boot && first_boot < keep_base && keep_base < overlay && overlay < run
        );
        let check = p
            .steps
            .iter()
            .position(|s| matches!(s, Step::CheckResults { .. }))
            .unwrap();
        assert!(
            first_boot < check && check < keep_base,
            "the base is kept only after the check"
        );
        assert!(matches!(p.steps.last(), Some(Step::WriteInstances { .. })));
    }

    #[test]
    fn with_a_base_it_only_boots_an_overlay() {
        let o = opts(&[]);
        let p = plan(&o, &host(), &built(&o), "pw").unwrap();
        assert_eq!(
            programs(&p),
            [
                "mkdir",
                "qemu-img",
                "qemu-system-x86_64",
                "curl",
                "write-instances"
            ]
        );
        assert!(p.render().contains(
            "qemu-img create -f qcow2 -b /nested/base.qcow2 -F qcow2 /nested/run/overlay.qcow2"
        ));
    }

    #[test]
    fn a_base_from_another_recipe_needs_rebuild() {
        let o = opts(&["--disk-gib", "32"]);
        let mut seen = built(&opts(&[]));
        let e = plan(&o, &host(), &seen, "pw").unwrap_err().to_string();
        assert!(
            e.contains("--rebuild") && e.contains("/nested/base.qcow2"),
            "{e}"
        );
        seen.overlay = true;
        let p = plan(
            &opts(&["--disk-gib", "32", "--rebuild", "--keep"]),
            &host(),
            &seen,
            "pw",
        )
        .unwrap();
        position(&p, "media=cdrom");
        // A rebuilt base invalidates the old overlay even with --keep.
        position(&p, "-b /nested/base.qcow2");
    }

    #[test]
    fn keep_reuses_the_previous_overlay() {
        let o = opts(&["--keep"]);
        let mut seen = built(&o);
        seen.overlay = true;
        let p = plan(&o, &host(), &seen, "pw").unwrap();
        assert_eq!(
            programs(&p),
            ["mkdir", "qemu-system-x86_64", "curl", "write-instances"]
        );
        seen.overlay = false;
        let p = plan(&o, &host(), &seen, "pw").unwrap();
        position(&p, "-b /nested/base.qcow2");
    }

    #[test]
    fn a_running_vm_blocks_a_second_start_and_stop_ends_it() {
        let o = opts(&[]);
        let mut seen = built(&o);
        seen.running_pid = Some(4242);
        let e = plan(&o, &host(), &seen, "pw").unwrap_err().to_string();
        assert!(
            e.contains("4242") && e.contains("--stop --dir /nested"),
            "{e}"
        );
        let p = plan(&opts(&["--stop"]), &host(), &seen, "pw").unwrap();
        assert_eq!(p.steps[0].command_line().unwrap(), "kill 4242");
        seen.running_pid = None;
        let e = plan(&opts(&["--stop"]), &host(), &seen, "pw")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no nested PVE is running"), "{e}");
    }

    #[test]
    fn the_iso_is_downloaded_once_and_always_checked() {
        let url = |extra: &[&str]| {
            let mut a: Vec<String> = vec!["--dir".into(), "/nested".into()];
            a.extend(extra.iter().map(|s| s.to_string()));
            parse_args(&a).unwrap().unwrap()
        };
        let o = url(&[]);
        let p = plan(&o, &host(), &Observed::default(), "pw").unwrap();
        let r = p.render();
        assert!(
            r.contains(&format!(
                "--output /nested/iso/proxmox-ve_9.2-1.iso.partial {DEFAULT_ISO_URL}"
            )),
            "{r}"
        );
        assert!(r.contains(&format!(
            "{DEFAULT_ISO_SHA256}  /nested/iso/proxmox-ve_9.2-1.iso.partial"
        )));
        assert!(
            position(&p, "sha256sum --check")
                < position(&p, "mv /nested/iso/proxmox-ve_9.2-1.iso.partial")
        );
        let cached = Observed {
            iso_cached: true,
            ..Observed::default()
        };
        let p = plan(&o, &host(), &cached, "pw").unwrap();
        assert!(
            !p.render().contains("--continue-at"),
            "a downloaded ISO is not fetched again"
        );
        assert!(p.render().contains(&format!(
            "{DEFAULT_ISO_SHA256}  /nested/iso/proxmox-ve_9.2-1.iso"
        )));

        // Any other ISO needs its checksum.
        let e = plan(
            &url(&["--iso", "https://example.invalid/proxmox-ve_9.1-1.iso"]),
            &host(),
            &Observed::default(),
            "pw",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--iso-sha256:") && e.contains("proxmox-ve_9.1-1.iso"),
            "{e}"
        );
        let sha = "ab".repeat(32);
        let p = plan(
            &url(&["--iso", "/x/other.iso", "--iso-sha256", &sha]),
            &host(),
            &Observed::default(),
            "pw",
        )
        .unwrap();
        assert!(p.render().contains(&format!("{sha}  /x/other.iso")));
    }

    #[test]
    fn prepare_iso_runs_natively_or_in_a_container() {
        let o = opts(&[]);
        let mut h = host();
        h.prepare = Some(Prepare::Native);
        let p = plan(&o, &h, &Observed::default(), "pw").unwrap();
        assert!(
            position(
                &p,
                "proxmox-auto-install-assistant validate-answer /nested/build/answer.toml"
            ) < position(
                &p,
                "proxmox-auto-install-assistant prepare-iso /isos/proxmox-ve_9.2-1.iso --fetch-from iso --answer-file /nested/build/answer.toml --on-first-boot /nested/build/first-boot.sh --output /nested/build/prepared.iso"
            )
        );

        h.prepare = Some(Prepare::Container("podman".into()));
        let p = plan(&o, &h, &Observed::default(), "pw").unwrap();
        position(
            &p,
            "podman run --rm --volume /isos:/iso:ro --volume /nested/build:/work --env HOST_UID=1000 --env HOST_GID=1000 debian:trixie-slim bash /work/prepare-iso.sh /iso/proxmox-ve_9.2-1.iso",
        );

        h.prepare = None;
        let e = plan(&o, &h, &Observed::default(), "pw")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("proxmox-auto-install-assistant") && e.contains("docker or podman"),
            "{e}"
        );
        let p = plan(&opts(&["--dry-run"]), &h, &Observed::default(), "pw").unwrap();
        assert!(p.notes.iter().any(|n| n.contains("a real run stops here")));
        position(&p, "docker run");
    }

    #[test]
    fn the_root_password_is_written_but_never_shown() {
        let p = plan(&opts(&[]), &host(), &Observed::default(), "S3cretRootPw").unwrap();
        let r = p.render();
        assert!(!r.contains("S3cretRootPw"));
        assert!(r.contains("root-password = \"<redacted>\""));
        let written = p.steps.iter().any(|s| matches!(s, Step::WriteFile { path, contents, mode: 0o600, .. }
            if path.ends_with("build/answer.toml") && contents.contains("root-password = \"S3cretRootPw\"")));
        assert!(written);
    }

    #[test]
    fn dry_run_matches_the_golden_plan() {
        let p = plan(&opts(&["--dry-run"]), &host(), &Observed::default(), "pw").unwrap();
        golden::check("dry-run.txt", &p.render());
    }

    #[test]
    fn the_instances_file_loads_with_the_pool_loader() {
        let p = plan(
            &opts(&["--api-port", "18123"]),
            &host(),
            &Observed::default(),
            "pw",
        )
        .unwrap();
        let Some(Step::WriteInstances { instance, .. }) = p.steps.last() else {
            panic!("the plan ends with the instances file");
        };
        let fp = (0..32)
            .map(|i| format!("{i:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let results = plan::Results {
            token_id: instance.token_id.clone(),
            token_secret: "0b6e8a4e-1d1b-4f3e-9c39-5c2d8b1f7a10".into(),
            fingerprint: fp.clone(),
            node: "pve".into(),
        };
        let text = plan::instances_json(instance, &results);
        let f = pvesandbox_pool::InstancesFile::from_json(&text).unwrap();
        let i = &f.instances[0];
        assert_eq!(
            (i.host.as_str(), i.port, i.node.as_str()),
            ("127.0.0.1", 18123, "pve")
        );
        assert_eq!(i.token_id.as_deref(), Some("pvesandbox@pve!e2e"));
        assert_eq!(i.fingerprint.as_deref(), Some(fp.as_str()));
        assert_eq!(
            i.client().unwrap().api_url(),
            "https://127.0.0.1:18123/api2/json"
        );
    }

    /// The overlay steps of a real plan, run with the real qemu-img on a small base: the
    /// result is a qcow2 whose backing file is the base. (QEMU itself needs KVM: not run.)
    #[test]
    fn the_overlay_steps_make_a_real_overlay_on_the_base() {
        if !crate::guest_image::on_path("qemu-img") {
            assert!(std::env::var_os("CI").is_none(), "qemu-img is missing");
            eprintln!("skipped: qemu-img is missing");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-overlay-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let o = parse_args(&["--dir".to_string(), dir.display().to_string()])
            .unwrap()
            .unwrap();
        let l = Layout { dir: dir.clone() };
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(l.base())
            .arg("16M")
            .status()
            .unwrap();
        assert!(made.success());
        let p = plan(&o, &host(), &built(&o), "pw").unwrap();
        let upto = position(&p, "qemu-img create -f qcow2 -b") + 1;
        Plan {
            notes: vec![],
            steps: p.steps[..upto].to_vec(),
        }
        .execute()
        .unwrap();
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(l.overlay())
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["backing-filename"], l.base().display().to_string());
        assert_eq!(info["backing-filename-format"], "qcow2");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The last step of a real plan, executed: the results disk becomes an instances file
    /// the pool loads; a results disk from a failed first boot stops it.
    #[test]
    fn the_instances_step_reads_the_results_disk() {
        let dir = std::env::temp_dir().join(format!("xtask-instances-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let o = parse_args(&["--dir".to_string(), dir.display().to_string()])
            .unwrap()
            .unwrap();
        let l = Layout { dir: dir.clone() };
        let fp = vec!["AB"; 32].join(":");
        let mut disk = format!(
            "status=ok\ntoken_id=pvesandbox@pve!e2e\ntoken_secret=s3cr3t-uuid\nfingerprint={fp}\nnode=pve\n"
        )
        .into_bytes();
        disk.resize(4096, 0);
        fs::write(l.base_results(), &disk).unwrap();
        let p = plan(&o, &host(), &built(&o), "pw").unwrap();
        let last = Plan {
            notes: vec![],
            steps: vec![p.steps.last().unwrap().clone()],
        };
        last.execute().unwrap();
        let text = fs::read_to_string(dir.join("instances.json")).unwrap();
        let f = pvesandbox_pool::InstancesFile::from_json(&text).unwrap();
        assert_eq!(
            f.instances[0].token_secret.as_ref().map(|s| s.expose()),
            Some("s3cr3t-uuid")
        );
        assert_eq!(f.instances[0].node, "pve");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("instances.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        fs::write(l.base_results(), b"status=failed\nline=77\n").unwrap();
        let e = last.execute().unwrap_err().to_string();
        assert!(e.contains("status=failed") && e.contains("line 77"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kvm_is_checked_for_the_flag_the_device_and_nesting() {
        let with_vmx = "processor\t: 0\nflags\t\t: fpu vmx sse\n";
        let e = kvm_status("flags\t\t: fpu sse\n", Path::new("/dev/kvm"), &[]).unwrap_err();
        assert!(e.contains("vmx") && e.contains("/dev/kvm"), "{e}");
        let e = kvm_status(with_vmx, Path::new("/nonexistent/kvm"), &[]).unwrap_err();
        assert!(
            e.contains("/nonexistent/kvm cannot be opened read-write"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("xtask-kvm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (dev, nested) = (dir.join("kvm"), dir.join("nested"));
        fs::write(&dev, "").unwrap();
        fs::write(&nested, "N\n").unwrap();
        let e = kvm_status(with_vmx, &dev, &[&nested, Path::new("/nonexistent")]).unwrap_err();
        assert!(e.contains("nested virtualisation is off"), "{e}");
        fs::write(&nested, "Y\n").unwrap();
        assert_eq!(kvm_status(with_vmx, &dev, &[&nested]), Ok(()));
        fs::remove_dir_all(&dir).unwrap();

        let msg = NestedError::NoKvm { reason: "x".into() }.to_string();
        assert!(
            msg.contains("/dev/kvm") && msg.contains("TCG") && msg.contains("--dry-run"),
            "{msg}"
        );
    }

    #[test]
    fn arguments() {
        let o = parse_args(&[]).unwrap().unwrap();
        assert_eq!(o.iso, IsoSource::Url(DEFAULT_ISO_URL.into()));
        assert_eq!(
            (o.api_port, o.disk_gib, o.dry_run),
            (DEFAULT_API_PORT, DEFAULT_DISK_GIB, false)
        );
        assert!(o.dir.ends_with(".cache/pvesandbox/nested-pve"));
        let o = opts(&["--cpus=3", "--memory-mib", "8192", "--config", "/c/i.json"]);
        assert_eq!((o.cpus, o.memory_mib), (Some(3), Some(8192)));
        assert_eq!(o.config, Some(PathBuf::from("/c/i.json")));
        assert_eq!(o.iso, IsoSource::Path("/isos/proxmox-ve_9.2-1.iso".into()));
        let err = |a: &[&str]| {
            parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["--iso-sha256", "abc"]).starts_with("--iso-sha256: "));
        assert!(err(&["--cpus", "many"]).starts_with("--cpus: "));
        assert!(err(&["--api-port", "0"]).starts_with("--api-port: "));
        assert!(err(&["--disk-gib", "8"]).starts_with("--disk-gib: "));
        assert!(err(&["--dir"]).starts_with("--dir: needs a value"));
        assert!(err(&["--frobnicate"]).contains("unknown argument"));
    }
}
