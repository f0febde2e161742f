//! pve-client against fakepve, an independent fake Proxmox VE (Python, AGPL-3.0, run only as an
//! external process).
//!
//! Every test starts its own fakepve through `tests/fakepve/launch.py` (about half a second), so
//! tests share no state and may run in parallel. The interpreter is `$FAKEPVE_PYTHON`, else
//! `<workspace>/.venv-fakepve/bin/python`; create it with
//!
//! ```text
//! python3 -m venv .venv-fakepve && .venv-fakepve/bin/pip install 'fakepve[crypto]'
//! ```
//!
//! Without it the tests print `SKIPPED: fakepve not installed` and pass, except when `CI` is
//! set: there a missing fakepve is a failure.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pve_client::{
    CloneOptions, DestroyOptions, Error, Params, PveClient, PveClientBuilder, TaskStatus, Upid,
    Upload, Vmid, WaitOptions,
};
use tokio::sync::mpsc;

const NODE: &str = "pve1";
/// The template launch.py creates.
const TEMPLATE: Vmid = Vmid(9000);
/// Python start-up plus certificate generation; generous for loaded CI machines.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Answer to a launcher command (`revoke`, `tickets`).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Tasks finish at once (time_scale 0); this only bounds a hang.
const TASK_TIMEOUT: Duration = Duration::from_secs(30);

/// One running fakepve. Dropping it kills the process and removes its directory; closing its
/// stdin alone would also make launch.py exit, so even a harness killed with SIGKILL leaves no
/// fakepve behind.
struct FakePve {
    child: Child,
    /// Commands to launch.py; `None` once closed.
    stdin: Option<ChildStdin>,
    /// launch.py's stdout, line by line, from a reader thread that ends at EOF.
    lines: mpsc::UnboundedReceiver<String>,
    url: String,
    ca: PathBuf,
    fingerprint: String,
    password: String,
    token_id: String,
    token_secret: String,
    /// Holds the certificate, launch.py's stderr and test files.
    workdir: PathBuf,
}

impl FakePve {
    /// Starts fakepve and waits for its `READY` line. `None` (after printing `SKIPPED`) when
    /// fakepve is not installed and `CI` is unset.
    async fn start() -> Option<FakePve> {
        let python = python();
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakepve/launch.py");
        let workdir = unique_dir();
        std::fs::create_dir_all(&workdir).expect("create the fakepve work directory");
        let stderr_path = workdir.join("launch.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create launch.stderr");
        let password = format!("pw-{}", uuid_like());
        let token_id = "root@pam!ci".to_owned();
        let token_secret = uuid_like();
        let spawned = Command::new(&python)
            .arg(&launcher)
            .arg("--workdir")
            .arg(&workdir)
            .env("FAKEPVE_PASSWORD", &password)
            .env("FAKEPVE_TOKEN_ID", &token_id)
            .env("FAKEPVE_TOKEN_SECRET", &token_secret)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_dir_all(&workdir);
                return missing(&format!("no interpreter at {}", python.display()));
            }
            Err(e) => panic!("cannot run {}: {e}", python.display()),
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::unbounded_channel();
        // A plain thread, not spawn_blocking: it must not keep the test's runtime alive, and it
        // ends by itself when the child's stdout closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut fake = FakePve {
            child,
            stdin,
            lines,
            url: String::new(),
            ca: PathBuf::new(),
            fingerprint: String::new(),
            password,
            token_id,
            token_secret,
            workdir,
        };
        let line = match fake
            .next_line_starting(&["READY ", "MISSING "], READY_TIMEOUT)
            .await
        {
            Ok(line) => line,
            Err(why) => panic!(
                "fakepve did not get ready: {why}\nlaunch.py stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            ),
        };
        if let Some(reason) = line.strip_prefix("MISSING ") {
            return missing(&format!("{} ({reason})", python.display()));
        }
        for word in line.split_whitespace().skip(1) {
            match word.split_once('=') {
                Some(("url", v)) => fake.url = v.to_owned(),
                Some(("ca", v)) => fake.ca = PathBuf::from(v),
                Some(("fingerprint", v)) => fake.fingerprint = v.to_owned(),
                _ => {}
            }
        }
        assert!(
            fake.url.starts_with("https://127.0.0.1:")
                && fake.ca.is_file()
                && fake.fingerprint.len() == 95,
            "unexpected READY line: {line}"
        );
        Some(fake)
    }

    /// Waits for the next stdout line starting with one of `prefixes`, skipping others.
    async fn next_line_starting(
        &mut self,
        prefixes: &[&str],
        timeout: Duration,
    ) -> Result<String, NoLine> {
        let mut skipped = Vec::new();
        let found = tokio::time::timeout(timeout, async {
            while let Some(line) = self.lines.recv().await {
                if prefixes.iter().any(|p| line.starts_with(p)) {
                    return Some(line);
                }
                skipped.push(line);
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err(NoLine::Exited { skipped }),
            Err(_) => Err(NoLine::TimedOut { timeout, skipped }),
        }
    }

    /// Sends one command to launch.py and returns its reply line (starting with `reply`).
    async fn command(&mut self, command: &str, reply: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .expect("write to launch.py");
        self.next_line_starting(&[reply, "ERROR "], REPLY_TIMEOUT)
            .await
            .unwrap_or_else(|why| panic!("{command}: {why}"))
    }

    /// Tickets fakepve currently accepts.
    async fn ticket_count(&mut self) -> usize {
        let line = self.command("tickets", "TICKETS ").await;
        line["TICKETS ".len()..]
            .parse()
            .unwrap_or_else(|_| panic!("bad reply {line:?}"))
    }

    /// A builder aimed at this fakepve, with no credentials and TLS left at the default.
    fn builder(&self) -> PveClientBuilder {
        PveClient::builder().base_url(&self.url)
    }

    /// API token, verifying the certificate against launch.py's CA file.
    fn token_client(&self) -> PveClient {
        self.builder()
            .api_token(&self.token_id, self.token_secret.as_str())
            .ca_file(&self.ca)
            .build()
            .expect("token client")
    }

    /// root@pam with the right password, pinned fingerprint.
    fn password_client(&self) -> PveClient {
        self.builder()
            .password("root@pam", self.password.as_str())
            .fingerprint(&self.fingerprint)
            .build()
            .expect("password client")
    }
}

/// Why no wanted line came from launch.py.
#[derive(Debug)]
enum NoLine {
    /// Its stdout closed: it exited.
    Exited {
        /// Lines seen meanwhile.
        skipped: Vec<String>,
    },
    /// Nothing matching within the time limit.
    TimedOut {
        /// The limit.
        timeout: Duration,
        /// Lines seen meanwhile.
        skipped: Vec<String>,
    },
}

impl std::fmt::Display for NoLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoLine::Exited { skipped } => write!(f, "launch.py exited; its output: {skipped:?}"),
            NoLine::TimedOut { timeout, skipped } => {
                write!(f, "no answer within {timeout:?}; other output: {skipped:?}")
            }
        }
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FAKEPVE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-fakepve");
    if cfg!(windows) {
        venv.join("Scripts/python.exe")
    } else {
        venv.join("bin/python")
    }
}

fn missing(reason: &str) -> Option<FakePve> {
    if std::env::var_os("CI").is_some() {
        panic!(
            "fakepve is required when CI is set, but it is missing: {reason}. Install it with \
             `python3 -m venv .venv-fakepve && .venv-fakepve/bin/pip install 'fakepve[crypto]'` \
             at the workspace root, or point FAKEPVE_PYTHON at an interpreter that has it"
        );
    }
    eprintln!("SKIPPED: fakepve not installed ({reason})");
    None
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Distinct per call and per process, so every fakepve gets its own secrets and directory.
fn uuid_like() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        pid & 0xffff_ffff,
        n & 0xffff,
        (nanos >> 12) & 0xfff,
        nanos & 0xfff,
        (nanos >> 24) & 0xffff_ffff_ffff
    )
}

fn unique_dir() -> PathBuf {
    std::env::temp_dir().join(format!("pve-client-fakepve-{}", uuid_like()))
}

async fn wait_ok(pve: &PveClient, upid: &Upid) -> TaskStatus {
    pve.wait_task(upid, WaitOptions::with_timeout(TASK_TIMEOUT))
        .await
        .unwrap_or_else(|e| panic!("task {upid}: {e}"))
}

/// Linked clone of the template, waited for.
async fn clone_template(pve: &PveClient, newid: Vmid) {
    let upid = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(newid).name(format!("box-{newid}")))
        .await
        .expect("clone");
    wait_ok(pve, &upid).await;
}

fn mac_of(net: &str) -> String {
    pve_client::PropertyString::parse(net)
        .iter()
        .find_map(|(k, v)| (k.is_some_and(|k| k != "bridge") && v.contains(':')).then_some(v))
        .unwrap_or_else(|| panic!("no MAC in {net:?}"))
        .to_owned()
}

#[tokio::test]
async fn password_login_and_wrong_password() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let version = fake.password_client().version().await.expect("version");
    assert!(!version.version.is_empty());
    assert!(version.release_tuple().is_some(), "{version:?}");

    let wrong = fake
        .builder()
        .password("root@pam", format!("{}-wrong", fake.password))
        .ca_file(&fake.ca)
        .build()
        .unwrap();
    match wrong.version().await {
        Err(Error::Auth { path, message, .. }) => {
            assert_eq!(path, "/access/ticket");
            assert!(!message.is_empty());
        }
        other => panic!("expected Error::Auth, got {other:?}"),
    }
}

#[tokio::test]
async fn api_token_with_ca_file_and_pinned_fingerprint() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let token = |b: PveClientBuilder| {
        b.api_token(&fake.token_id, fake.token_secret.as_str())
            .build()
            .unwrap()
    };

    // Verify against the generated certificate as CA.
    let via_ca = token(fake.builder().ca_file(&fake.ca));
    via_ca.version().await.expect("verify with ca_file");
    // Pin its fingerprint instead.
    let pinned = token(fake.builder().fingerprint(&fake.fingerprint));
    pinned.version().await.expect("pinned fingerprint");

    // One hex digit off: refused in the handshake.
    let mut wrong_fp = fake.fingerprint.clone();
    let first = if wrong_fp.starts_with('0') { "1" } else { "0" };
    wrong_fp.replace_range(0..1, first);
    let err = token(fake.builder().fingerprint(&wrong_fp))
        .version()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Tls { .. }),
        "wrong fingerprint: {err:?}"
    );

    // Default mode: system roots only, which do not know the self-signed certificate.
    let err = token(fake.builder()).version().await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "default verify: {err:?}");

    // And a wrong secret is an authentication error, not an API error.
    let err = fake
        .builder()
        .api_token(&fake.token_id, format!("{}0", fake.token_secret))
        .ca_file(&fake.ca)
        .build()
        .unwrap()
        .version()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "wrong secret: {err:?}");
}

#[tokio::test]
async fn linked_clone_start_stop_destroy() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let node = pve.node(NODE);
    let newid = Vmid(101);
    let template_config = node.qemu(TEMPLATE).config().await.expect("template config");
    let template_mac = mac_of(&template_config.get("net0").expect("template net0"));

    let upid = node
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(newid).name("box-101").full(false))
        .await
        .expect("clone");
    assert_eq!(upid.task_type(), "qmclone");
    assert_eq!(
        upid.id(),
        TEMPLATE.to_string(),
        "clone UPID names the source"
    );
    assert_eq!(upid.node(), NODE);
    wait_ok(&pve, &upid).await;

    let vm = node.qemu(newid);
    let config = vm.config().await.expect("clone config");
    let scsi0 = config.get_prop("scsi0").expect("clone has scsi0");
    assert_eq!(
        scsi0.default_value(),
        Some("local-lvm:vm-101-disk-0"),
        "{config:?}"
    );
    let mac = mac_of(&config.get("net0").expect("clone net0"));
    assert_ne!(mac, template_mac, "a clone gets a new MAC");
    assert_eq!(config.get("name").as_deref(), Some("box-101"));

    let listed: BTreeSet<Vmid> = node
        .qemu_list()
        .await
        .unwrap()
        .iter()
        .map(|e| e.vmid)
        .collect();
    assert!(listed.contains(&newid), "{listed:?}");

    wait_ok(&pve, &vm.start().await.expect("start")).await;
    let status = vm.status().await.expect("status");
    assert!(status.is_running(), "{status:?}");

    wait_ok(&pve, &vm.stop().await.expect("stop")).await;
    assert!(!vm.status().await.unwrap().is_running());

    let upid = vm
        .destroy(DestroyOptions::thorough())
        .await
        .expect("destroy");
    assert_eq!(upid.task_type(), "qmdestroy");
    wait_ok(&pve, &upid).await;

    assert!(
        node.qemu_list()
            .await
            .unwrap()
            .iter()
            .all(|e| e.vmid != newid),
        "101 still in qemu list"
    );
    let resources = pve.cluster_resources(Some("vm")).await.unwrap();
    assert!(
        resources.iter().any(|r| r.vmid == Some(TEMPLATE.0)),
        "the template should still be listed: {resources:?}"
    );
    assert!(
        resources.iter().all(|r| r.vmid != Some(newid.0)),
        "101 still in cluster resources: {resources:?}"
    );
    assert!(vm.status().await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn next_id_is_a_free_vmid() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    // What fakepve (like PVE) really sends: a string.
    let raw = pve.get("/cluster/nextid", &Params::new()).await.unwrap();
    assert!(raw.is_string(), "expected a JSON string, got {raw}");

    let id = pve.next_id().await.expect("next_id");
    assert_eq!(raw.as_str().unwrap().parse::<Vmid>().unwrap(), id);
    assert!(Vmid::new(id.0).is_some());
    let taken: BTreeSet<Vmid> = pve
        .node(NODE)
        .qemu_list()
        .await
        .unwrap()
        .iter()
        .map(|e| e.vmid)
        .collect();
    assert!(!taken.contains(&id), "{id:?} is taken: {taken:?}");

    clone_template(&pve, id).await;
    let after = pve.next_id().await.unwrap();
    assert_ne!(after, id, "next_id must skip the id just used");
    assert!(!pve.is_vmid_free(id).await.unwrap());
    assert!(pve.is_vmid_free(after).await.unwrap());
}

#[tokio::test]
async fn clone_into_a_taken_id_is_already_exists() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let id = Vmid(105);
    clone_template(&pve, id).await;
    let err = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(id))
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert!(!err.is_not_found() && !err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn parameter_error_is_400_with_field_errors() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let path = format!("/nodes/{NODE}/qemu/{TEMPLATE}/clone");
    let err = pve
        .post(&path, &Params::new().with("newid", "abc"))
        .await
        .unwrap_err();
    match &err {
        Error::Api {
            status,
            errors,
            path: p,
            method,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(*method, "POST");
            assert_eq!(p, &path);
            let newid = errors.get("newid").expect("an error for newid");
            assert!(newid.contains("abc"), "{newid}");
        }
        other => panic!("expected Error::Api, got {other:?}"),
    }
    assert!(err.field_errors().is_some_and(|e| e.contains_key("newid")));
    assert!(!err.is_retryable() && !err.is_not_found());
}

#[tokio::test]
async fn missing_vm_is_not_found() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let err = pve.node(NODE).qemu(Vmid(999)).status().await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.status(), Some(500), "PVE reports a missing VM as 500");
    assert!(err.pve_message().unwrap().contains("999"), "{err}");
    // The template exists: its status is not "not found".
    pve.node(NODE).qemu(TEMPLATE).status().await.unwrap();
}

#[tokio::test]
async fn starting_a_template_fails_in_the_task() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let upid = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .start()
        .await
        .expect("PVE accepts the request and fails the task");
    assert_eq!(upid.task_type(), "qmstart");
    match pve
        .wait_task(&upid, WaitOptions::with_timeout(TASK_TIMEOUT))
        .await
    {
        Err(Error::Task {
            upid: failed,
            exitstatus,
            log_tail,
        }) => {
            assert_eq!(failed.as_str(), upid.as_str());
            assert!(exitstatus.contains("template"), "{exitstatus}");
            assert!(
                log_tail.iter().any(|l| l.contains("template")),
                "{log_tail:?}"
            );
        }
        other => panic!("expected Error::Task, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_create_list_rollback_delete() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let vm = pve.node(NODE).qemu(Vmid(102));
    clone_template(&pve, vm.vmid()).await;
    let memory_before = vm.config().await.unwrap().get_u64("memory").unwrap();

    let upid = vm
        .snapshot("before", false, Some("clean state"))
        .await
        .expect("snapshot");
    wait_ok(&pve, &upid).await;
    let snaps = vm.snapshots().await.expect("list");
    let names: BTreeSet<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains("current") && names.contains("before"),
        "{snaps:?}"
    );
    let current = snaps.iter().find(|s| s.name == "current").unwrap();
    assert_eq!(current.parent.as_deref(), Some("before"));
    let before = snaps.iter().find(|s| s.name == "before").unwrap();
    assert_eq!(before.description, "clean state");
    assert_ne!(before.vmstate, Some(true));

    // Change something, then roll back to the snapshot.
    vm.update_config(&Params::new().with("memory", memory_before * 2))
        .await
        .expect("update config");
    assert_eq!(
        vm.config().await.unwrap().get_u64("memory"),
        Some(memory_before * 2)
    );
    wait_ok(&pve, &vm.rollback("before", false).await.expect("rollback")).await;
    assert_eq!(
        vm.config().await.unwrap().get_u64("memory"),
        Some(memory_before)
    );

    wait_ok(
        &pve,
        &vm.delete_snapshot("before", false).await.expect("delete"),
    )
    .await;
    let names: Vec<String> = vm
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["current"]);
}

#[tokio::test]
async fn upload_iso_to_local() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let file = fake.workdir.join("payload.bin");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &payload).unwrap();
    let filename = format!("pvc-{}.iso", uuid_like());

    let storage = pve.node(NODE).storage("local");
    let upid = storage
        .upload(&Upload {
            file,
            content: "iso".into(),
            filename: filename.clone(),
            checksum: None,
        })
        .await
        .expect("upload");
    assert_eq!(upid.task_type(), "imgcopy");
    wait_ok(&pve, &upid).await;

    let volid = format!("local:iso/{filename}");
    let content = storage.content(Some("iso")).await.expect("content");
    let entry = content
        .iter()
        .find(|c| c.volid == volid)
        .unwrap_or_else(|| panic!("{volid} not in {content:?}"));
    assert_eq!(entry.size, Some(payload.len() as u64));
}

#[tokio::test]
async fn relogin_after_tickets_revoked() {
    let Some(mut fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.password_client();
    pve.version().await.expect("first login");
    assert_eq!(fake.ticket_count().await, 1);

    let revoked = fake.command("revoke", "REVOKED").await;
    assert_eq!(revoked, "REVOKED 1");
    assert_eq!(fake.ticket_count().await, 0);

    // The old ticket now gets 401: the client logs in once more and repeats the call. A burst
    // of concurrent calls must share that one login (single-flight), and a POST must carry the
    // new CSRF token.
    let calls = (0..16).map(|_| pve.version());
    for result in futures_util::future::join_all(calls).await {
        result.expect("call after revocation");
    }
    assert_eq!(fake.ticket_count().await, 1, "exactly one new login");
    clone_template(&pve, Vmid(103)).await;
}

#[tokio::test]
async fn clones_get_a_guest_agent() {
    let Some(fake) = FakePve::start().await else {
        return;
    };
    let pve = fake.token_client();
    let vm = pve.node(NODE).qemu(Vmid(104));
    clone_template(&pve, vm.vmid()).await;
    wait_ok(&pve, &vm.start().await.unwrap()).await;
    let ping = format!("/nodes/{NODE}/qemu/104/agent/ping");
    pve.post(&ping, &Params::new())
        .await
        .expect("launch.py gives new VMs an agent");
    // The template never got one (and is not running anyway).
    let err = pve
        .post(
            &format!("/nodes/{NODE}/qemu/{TEMPLATE}/agent/ping"),
            &Params::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(500), "{err:?}");
}

#[tokio::test]
async fn launcher_exits_when_stdin_closes() {
    let Some(mut fake) = FakePve::start().await else {
        return;
    };
    // What happens when the test process dies: the pipe closes, nobody kills the child.
    drop(fake.stdin.take());
    let eof = fake.next_line_starting(&[], REPLY_TIMEOUT).await;
    assert!(matches!(eof, Err(NoLine::Exited { .. })), "{eof:?}");
    let status = fake.child.wait().expect("wait for launch.py");
    assert!(status.success(), "launch.py exited with {status}");
}
