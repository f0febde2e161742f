//! Every client flow against the in-process simulator (`pve-sim`), over real HTTPS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pve_client::{
    CloneOptions, DestroyOptions, DownloadUrl, Error, Params, PveClient, ShutdownOptions, Upload,
    Vmid, WaitOptions,
};
use pve_sim::{FaultError, LatencyProfile, PveSim, SimConfig, VmSeed};

const NODE: &str = "pve1";
const TEMPLATE: Vmid = Vmid(9000);

fn wait() -> WaitOptions {
    WaitOptions::with_timeout(Duration::from_secs(30))
}

async fn sim_with(cfg: SimConfig) -> PveSim {
    let sim = PveSim::start(cfg).await.expect("simulator starts");
    sim.add_vm(VmSeed::template(TEMPLATE.0, "tpl-debian").with("tags", "pvesandbox;base"));
    sim
}

async fn sim() -> PveSim {
    sim_with(SimConfig::new()).await
}

fn password_client(sim: &PveSim) -> PveClient {
    PveClient::builder()
        .base_url(sim.url())
        .password("root@pam", "secret")
        .fingerprint(sim.fingerprint().unwrap())
        .build()
        .unwrap()
}

fn token_client(sim: &PveSim) -> PveClient {
    let (id, secret) = sim.config().tokens[0].clone();
    PveClient::builder()
        .base_url(sim.url())
        .api_token(id, secret)
        .fingerprint(sim.fingerprint().unwrap())
        .build()
        .unwrap()
}

async fn clone_and_wait(pve: &PveClient, newid: u32) -> Vmid {
    let upid = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(newid)).name(format!("box-{newid}")))
        .await
        .unwrap();
    pve.wait_task(&upid, wait()).await.unwrap();
    Vmid(newid)
}

#[tokio::test]
async fn login_clone_start_stop_destroy_costs_few_calls() {
    let sim = sim().await;
    let started = Instant::now();
    let pve = password_client(&sim);
    let node = pve.node(NODE);
    let upid = node
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(101)).name("box"))
        .await
        .unwrap();
    // PVE names the source VM in a clone's UPID.
    assert_eq!(
        (upid.task_type(), upid.id(), upid.node()),
        ("qmclone", "9000", NODE)
    );
    pve.wait_task(&upid, wait()).await.unwrap();
    let vm = node.qemu(Vmid(101));
    pve.wait_task(&vm.start().await.unwrap(), wait())
        .await
        .unwrap();
    assert!(vm.status().await.unwrap().is_running());
    pve.wait_task(&vm.stop().await.unwrap(), wait())
        .await
        .unwrap();
    pve.wait_task(
        &vm.destroy(DestroyOptions::thorough()).await.unwrap(),
        wait(),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    assert!(
        node.qemu_list()
            .await
            .unwrap()
            .iter()
            .all(|v| v.vmid != Vmid(101))
    );
    assert!(sim.vm_config(101).is_none());

    let log = sim.requests();
    // login + 4 × (action + one status poll) + one status/current + the final list.
    assert_eq!(log.count("POST", "/access/ticket"), 1);
    assert_eq!(
        log.count("GET", "/nodes/{node}/tasks/{upid}/status"),
        4,
        "{:#?}",
        log.counts()
    );
    assert_eq!(log.total(), 11, "{:#?}", log.counts());
    eprintln!(
        "flow login+clone+start+stop+destroy: {} REST calls (incl. 1 status, 1 list), {elapsed:?}",
        log.total()
    );
}

#[tokio::test]
async fn clone_config_reads_back_like_pve() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let vm = pve.node(NODE).qemu(clone_and_wait(&pve, 101).await);
    let cfg = vm.config().await.unwrap();
    let tpl = pve.node(NODE).qemu(TEMPLATE).config().await.unwrap();
    assert_eq!(
        cfg.get_prop("scsi0").unwrap().default_value(),
        Some("local-lvm:vm-101-disk-0")
    );
    assert_eq!(cfg.get_prop("scsi0").unwrap().get("size"), Some("8G"));
    let mac = |c: &pve_client::VmConfig| {
        c.get_prop("net0")
            .unwrap()
            .get("virtio")
            .unwrap()
            .to_owned()
    };
    assert_ne!(mac(&cfg), mac(&tpl), "a clone gets a new MAC");
    assert!(mac(&cfg).starts_with("BC:24:11:"));
    assert_eq!(cfg.get("name").as_deref(), Some("box-101"));
    assert_eq!(
        cfg.0["memory"],
        serde_json::json!("2048"),
        "memory is a property string, sent as a string"
    );
    assert_eq!(
        cfg.0["cores"],
        serde_json::json!(2),
        "integer keys are numbers"
    );
    assert_eq!(cfg.digest().map(|d| d.len()), Some(40));
    assert!(cfg.get("template").is_none() && cfg.get("lock").is_none());
    assert_ne!(cfg.get("smbios1"), tpl.get("smbios1"));
}

#[tokio::test]
async fn create_allocates_disks_and_macs() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let node = pve.node(NODE);
    let p = Params::new()
        .with("name", "fresh")
        .with("memory", 1024)
        .with("scsi0", "local-lvm:4")
        .with("scsi1", "local-lvm:2")
        .with("net0", "virtio,bridge=vmbr0")
        .with("tags", "a;b");
    pve.wait_task(&node.qemu_create(Vmid(150), &p).await.unwrap(), wait())
        .await
        .unwrap();
    let cfg = node.qemu(Vmid(150)).config().await.unwrap();
    assert_eq!(
        cfg.get("scsi0").as_deref(),
        Some("local-lvm:vm-150-disk-0,size=4G")
    );
    assert_eq!(
        cfg.get("scsi1").as_deref(),
        Some("local-lvm:vm-150-disk-1,size=2G")
    );
    assert!(cfg.get("net0").unwrap().starts_with("virtio=BC:24:11:"));
    assert_eq!(cfg.get("boot").as_deref(), Some("order=scsi0;scsi1;net0"));
    assert_eq!(cfg.tag_list(), ["a", "b"]);
    // The same id again is refused; the allocator relies on this.
    let e = node
        .qemu_create(Vmid(150), &Params::new())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert!(e.is_already_exists(), "{e}");
    let content = node.storage("local-lvm").content(None).await.unwrap();
    assert!(
        content
            .iter()
            .any(|c| c.volid == "local-lvm:vm-150-disk-1" && c.size == Some(2 << 30))
    );
}

#[tokio::test]
async fn parameter_errors_are_typed_with_the_field() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let e = pve
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &Params::new().with("newid", "abc"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert_eq!(e.pve_message(), Some("Parameter verification failed."));
    assert_eq!(
        e.field_errors().unwrap()["newid"],
        "type check ('integer') failed - got 'abc'"
    );
    let e = pve
        .post(
            "/nodes/pve1/qemu/9000/clone",
            &Params::new().with("newid", 101).with("fast", true),
        )
        .await
        .unwrap_err();
    assert!(
        e.field_errors().unwrap()["fast"].contains("not defined in schema"),
        "{e}"
    );
    let e = pve
        .node(NODE)
        .qemu(Vmid(101))
        .resize("scsi0", "1G")
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // A literal `+` must survive encoding (PVE would read a space and reject the pattern).
    let vm = pve.node(NODE).qemu(clone_and_wait(&pve, 101).await);
    pve.wait_task(&vm.resize("scsi0", "+2G").await.unwrap(), wait())
        .await
        .unwrap();
    assert_eq!(
        vm.config()
            .await
            .unwrap()
            .get_prop("scsi0")
            .unwrap()
            .get("size"),
        Some("10G")
    );
    let e = vm.resize("scsi0", "4G").await.unwrap_err();
    assert_eq!(e.pve_message(), Some("shrinking disks is not supported"));
}

#[tokio::test]
async fn missing_vm_is_500_not_404() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let e = pve.node(NODE).qemu(Vmid(999)).status().await.unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert!(e.is_not_found());
    assert_eq!(
        e.pve_message(),
        Some("Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist")
    );
}

#[tokio::test]
async fn failed_task_carries_exit_status_and_log() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let upid = pve.node(NODE).qemu(TEMPLATE).start().await.unwrap();
    match pve.wait_task(&upid, wait()).await.unwrap_err() {
        Error::Task {
            exitstatus,
            log_tail,
            ..
        } => {
            assert_eq!(exitstatus, "you can't start a vm if it's a template");
            assert_eq!(
                log_tail.last().map(String::as_str),
                Some("TASK ERROR: you can't start a vm if it's a template")
            );
        }
        other => panic!("expected a task error, got {other}"),
    }
}

#[tokio::test]
async fn linked_clone_rules() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let mut opts = CloneOptions::new(Vmid(101));
    opts.storage = Some("local-lvm".into());
    let e = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&opts)
        .await
        .unwrap_err();
    assert_eq!(
        e.pve_message(),
        Some("parameter 'storage' not allowed for linked clones")
    );
    pve.wait_task(
        &pve.node(NODE)
            .qemu(TEMPLATE)
            .clone_vm(&opts.clone().full(true))
            .await
            .unwrap(),
        wait(),
    )
    .await
    .unwrap();
    let e = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(101)))
        .await
        .unwrap_err();
    assert_eq!(
        e.pve_message(),
        Some("unable to create VM 101: config file already exists")
    );
    assert!(e.is_already_exists());
    // A template with linked clones cannot be destroyed.
    let linked = clone_and_wait(&pve, 102).await;
    let upid = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .destroy(DestroyOptions::thorough())
        .await
        .unwrap();
    let e = pve.wait_task(&upid, wait()).await.unwrap_err();
    assert!(
        e.to_string().contains("still in use by linked clone"),
        "{e}"
    );
    pve.wait_task(
        &pve.node(NODE)
            .qemu(linked)
            .destroy(DestroyOptions::thorough())
            .await
            .unwrap(),
        wait(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn tls_modes() {
    let sim = sim().await;
    let (id, secret) = sim.config().tokens[0].clone();
    let dir = std::env::temp_dir().join(format!("pve-client-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    let builder = || {
        PveClient::builder()
            .base_url(sim.url())
            .api_token(id.clone(), secret.clone())
    };
    builder()
        .ca_file(&ca)
        .build()
        .unwrap()
        .version()
        .await
        .expect("verify against the CA");
    builder()
        .fingerprint(&sim.fingerprint().unwrap().replace(':', "").to_lowercase())
        .build()
        .unwrap()
        .version()
        .await
        .expect("pinned, plain hex");
    builder()
        .danger_accept_invalid_certs()
        .build()
        .unwrap()
        .version()
        .await
        .expect("insecure");
    let wrong = "00:".repeat(31) + "00";
    let e = builder()
        .fingerprint(&wrong)
        .build()
        .unwrap()
        .version()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e}");
    assert!(e.to_string().contains("fingerprint mismatch"), "{e}");
    let e = builder().build().unwrap().version().await.unwrap_err();
    assert!(
        matches!(e, Error::Tls { .. }),
        "default verification must reject a private CA: {e}"
    );
    assert_eq!(
        sim.requests().total(),
        3,
        "rejected handshakes never reach the API"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn wrong_credentials_are_auth_errors_without_secrets() {
    let sim = sim().await;
    let e = PveClient::builder()
        .base_url(sim.url())
        .password("root@pam", "wrong-pw-1234")
        .fingerprint(sim.fingerprint().unwrap())
        .build()
        .unwrap()
        .version()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert_eq!(e.pve_message(), Some("authentication failure"));
    assert!(!format!("{e} {e:?}").contains("wrong-pw-1234"));
    let e = PveClient::builder()
        .base_url(sim.url())
        .api_token("root@pam!ci", "nope-secret-987")
        .fingerprint(sim.fingerprint().unwrap())
        .build()
        .unwrap()
        .version()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("nope-secret-987"));
}

#[tokio::test]
async fn expired_ticket_is_renewed_once_for_many_callers() {
    let sim = sim().await;
    let pve = password_client(&sim);
    pve.version().await.unwrap();
    sim.expire_all_tickets();
    let calls = (0..40).map(|_| {
        let pve = pve.clone();
        tokio::spawn(async move { pve.version().await })
    });
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(
        sim.request_count("POST", "/access/ticket"),
        2,
        "one login, one renewal: never two logins racing"
    );
}

#[tokio::test]
async fn ticket_renewed_before_expiry() {
    let sim = sim_with(SimConfig::new().ticket_lifetime(Duration::from_secs(3600))).await;
    let pve = PveClient::builder()
        .base_url(sim.url())
        .password("root@pam", "secret")
        .fingerprint(sim.fingerprint().unwrap())
        .ticket_renew_after(Duration::ZERO)
        .build()
        .unwrap();
    for _ in 0..3 {
        pve.version().await.unwrap();
    }
    assert_eq!(sim.request_count("POST", "/access/ticket"), 3);
    assert_eq!(
        sim.requests()
            .entries()
            .iter()
            .filter(|e| e.status == 401)
            .count(),
        0,
        "renewed before PVE refused it"
    );
}

#[tokio::test]
async fn dropped_connections_retried_only_when_safe() {
    let sim = sim().await;
    let pve = token_client(&sim);
    sim.drop_connections(1);
    pve.version().await.expect("an idempotent GET is retried");
    assert_eq!(
        sim.request_count("GET", "/api2/json/version") + sim.request_count("GET", "/version"),
        2
    );
    sim.drop_connections(1);
    let e = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(101)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Connect { .. }) && e.is_retryable(),
        "{e}"
    );
    assert!(
        sim.vm_config(101).is_none(),
        "a POST that may have been sent is not repeated"
    );
}

#[tokio::test]
async fn proxy_errors_are_retried_for_reads() {
    let sim = sim().await;
    let pve = token_client(&sim);
    sim.fail_next(
        "GET",
        "/nodes",
        2,
        FaultError::http(596, "Connection timed out"),
    );
    assert_eq!(pve.nodes().await.unwrap().len(), 1);
    assert_eq!(sim.request_count("GET", "/nodes"), 3);
    sim.fail_next(
        "GET",
        "/nodes",
        3,
        FaultError::http(595, "No route to host"),
    );
    let e = pve.nodes().await.unwrap_err();
    assert_eq!(e.status(), Some(595));
    assert!(e.is_retryable());
}

#[tokio::test]
async fn injected_catalogue_errors() {
    let sim = sim().await;
    let pve = token_client(&sim);
    sim.fail_next(
        "POST",
        "/nodes/{node}/qemu/{vmid}/clone",
        1,
        FaultError::http(500, "storage 'local-lvm' is not available on node 'pve1'"),
    );
    let e = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(101)))
        .await
        .unwrap_err();
    assert_eq!(
        e.pve_message(),
        Some("storage 'local-lvm' is not available on node 'pve1'")
    );
    sim.fail_next(
        "POST",
        "/nodes/{node}/qemu/{vmid}/clone",
        1,
        FaultError::task("clone failed: out of space"),
    );
    let upid = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(101)))
        .await
        .unwrap();
    let e = pve.wait_task(&upid, wait()).await.unwrap_err();
    assert_eq!(e.pve_message(), Some("clone failed: out of space"));
    // Third time it works.
    clone_and_wait(&pve, 101).await;
}

#[tokio::test]
async fn held_config_lock_times_out_like_pve() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let vm = pve.node(NODE).qemu(clone_and_wait(&pve, 101).await);
    sim.hold_config_lock(101, Duration::from_secs(60));
    let e = vm
        .update_config(&Params::new().with("memory", 4096))
        .await
        .unwrap_err();
    assert!(e.is_locked(), "{e}");
    assert_eq!(
        e.pve_message(),
        Some("can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout")
    );
    let e = pve
        .wait_task(&vm.start().await.unwrap(), wait())
        .await
        .unwrap_err();
    assert!(e.is_locked(), "{e}");
    sim.set_lock(101, Some("backup"));
    sim.hold_config_lock(101, Duration::ZERO);
    let e = pve
        .wait_task(&vm.start().await.unwrap(), wait())
        .await
        .unwrap_err();
    assert_eq!(e.pve_message(), Some("VM is locked (backup)"));
}

#[tokio::test]
async fn realistic_tasks_take_time_and_hold_locks() {
    // clone ≈ 2 s × 0.25 = 0.5 s.
    let sim =
        sim_with(SimConfig::new().latency(LatencyProfile::Realistic { time_factor: 0.25 })).await;
    let pve = token_client(&sim);
    let node = pve.node(NODE);
    let upid = node
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(101)))
        .await
        .unwrap();
    let started = Instant::now();
    // The clone is still running: its target is locked.
    let e = pve
        .wait_task(&node.qemu(Vmid(101)).start().await.unwrap(), wait())
        .await
        .unwrap_err();
    assert_eq!(e.pve_message(), Some("VM is locked (clone)"));
    let short = WaitOptions {
        timeout: Duration::from_millis(20),
        ..wait()
    };
    assert!(matches!(
        pve.wait_task(&upid, short).await.unwrap_err(),
        Error::TaskTimeout { .. }
    ));
    sim.reset_requests();
    pve.wait_task(&upid, wait()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "modelled duration: {:?}",
        started.elapsed()
    );
    let polls = sim.request_count("GET", "/nodes/{node}/tasks/{upid}/status");
    // 2 ms doubling to 250 ms: a 0.5 s task needs about 9 polls, not hundreds.
    assert!(polls <= 10, "polling backs off ({polls} polls)");
}

#[tokio::test]
async fn snapshots_with_and_without_ram() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let vm = pve.node(NODE).qemu(clone_and_wait(&pve, 101).await);
    pve.wait_task(
        &vm.snapshot("cold", false, Some("before boot"))
            .await
            .unwrap(),
        wait(),
    )
    .await
    .unwrap();
    pve.wait_task(&vm.start().await.unwrap(), wait())
        .await
        .unwrap();
    pve.wait_task(&vm.snapshot("warm", true, None).await.unwrap(), wait())
        .await
        .unwrap();
    let snaps = vm.snapshots().await.unwrap();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cold", "warm", "current"]);
    assert_eq!(snaps[1].vmstate, Some(true));
    assert_eq!(snaps[1].parent.as_deref(), Some("cold"));
    assert_eq!(snaps[2].parent.as_deref(), Some("warm"));
    let e = pve
        .wait_task(&vm.snapshot("warm", false, None).await.unwrap(), wait())
        .await
        .unwrap_err();
    assert_eq!(e.pve_message(), Some("snapshot name 'warm' already used"));
    let e = vm.snapshot("current", false, None).await.unwrap_err();
    assert_eq!(
        e.pve_message(),
        Some("unable to use snapshot name 'current' (reserved name)")
    );
    pve.wait_task(&vm.stop().await.unwrap(), wait())
        .await
        .unwrap();
    pve.wait_task(&vm.rollback("warm", false).await.unwrap(), wait())
        .await
        .unwrap();
    assert!(
        vm.status().await.unwrap().is_running(),
        "a RAM snapshot comes back running"
    );
    pve.wait_task(&vm.stop().await.unwrap(), wait())
        .await
        .unwrap();
    pve.wait_task(&vm.rollback("cold", false).await.unwrap(), wait())
        .await
        .unwrap();
    assert!(!vm.status().await.unwrap().is_running());
    pve.wait_task(&vm.delete_snapshot("cold", false).await.unwrap(), wait())
        .await
        .unwrap();
    let snaps = vm.snapshots().await.unwrap();
    assert_eq!(
        snaps.iter().find(|s| s.name == "warm").unwrap().parent,
        None
    );
}

#[tokio::test]
async fn pending_changes_apply_at_next_start() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let vm = pve.node(NODE).qemu(clone_and_wait(&pve, 101).await);
    pve.wait_task(&vm.start().await.unwrap(), wait())
        .await
        .unwrap();
    let digest = vm.config().await.unwrap().digest().unwrap();
    let upid = vm
        .update_config_async(
            &Params::new()
                .with("memory", 4096)
                .with("tags", "run-1")
                .with("digest", digest.as_str()),
        )
        .await
        .unwrap();
    pve.wait_task(&upid.expect("async config returns a task"), wait())
        .await
        .unwrap();
    assert_eq!(
        vm.config().await.unwrap().get("memory").as_deref(),
        Some("4096")
    );
    assert_eq!(
        vm.config_current().await.unwrap().get("memory").as_deref(),
        Some("2048")
    );
    assert_eq!(
        vm.config_current().await.unwrap().get("tags").as_deref(),
        Some("run-1"),
        "tags apply at once"
    );
    let e = vm
        .update_config(
            &Params::new()
                .with("name", "x")
                .with("digest", digest.as_str()),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    pve.wait_task(
        &vm.shutdown(ShutdownOptions {
            timeout: Some(10),
            force_stop: true,
        })
        .await
        .unwrap(),
        wait(),
    )
    .await
    .unwrap();
    pve.wait_task(&vm.start().await.unwrap(), wait())
        .await
        .unwrap();
    assert_eq!(
        vm.config_current().await.unwrap().get("memory").as_deref(),
        Some("4096")
    );
}

#[tokio::test]
async fn upload_and_download_into_storage() {
    let sim = sim().await;
    let pve = token_client(&sim);
    let st = pve.node(NODE).storage("local");
    let path = std::env::temp_dir().join(format!("pve-client-upload-{}.iso", std::process::id()));
    let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let up = Upload {
        file: path.clone(),
        content: "iso".into(),
        filename: "tiny.iso".into(),
        checksum: Some(("sha256".into(), sha)),
    };
    let upid = st.upload(&up).await.unwrap();
    assert_eq!(upid.task_type(), "imgcopy");
    pve.wait_task(&upid, wait()).await.unwrap();
    let iso = st.content(Some("iso")).await.unwrap();
    assert!(
        iso.iter()
            .any(|c| c.volid == "local:iso/tiny.iso" && c.size == Some(1 << 20)),
        "{iso:?}"
    );
    let bad = Upload {
        checksum: Some(("sha256".into(), "00".repeat(32))),
        filename: "bad.iso".into(),
        ..up
    };
    let e = pve
        .wait_task(&st.upload(&bad).await.unwrap(), wait())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    std::fs::remove_file(path).ok();
    // The simulator fetches download-url from loopback only: serve the image from here.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/debian.qcow2", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut req = [0u8; 4096];
            let _ = tcp.read(&mut req).await;
            let body = b"QFI\xfb fake qcow2";
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(body).await;
        }
    });
    let d = DownloadUrl {
        url,
        content: "import".into(),
        filename: "debian.qcow2".into(),
        checksum: None,
        compression: None,
    };
    pve.wait_task(&st.download_url(&d).await.unwrap(), wait())
        .await
        .unwrap();
    assert!(
        st.content(Some("import"))
            .await
            .unwrap()
            .iter()
            .any(|c| c.volid == "local:import/debian.qcow2")
    );
    let e = pve
        .node(NODE)
        .storage("local-lvm")
        .download_url(&d)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("does not support content-type 'import'"),
        "{e}"
    );
}

#[tokio::test]
async fn pools_resources_nodes_and_ids() {
    let sim = sim().await;
    let pve = token_client(&sim);
    pve.create_pool("sandboxes", Some("ours")).await.unwrap();
    let upid = pve
        .node(NODE)
        .qemu(TEMPLATE)
        .clone_vm(&CloneOptions::new(Vmid(101)).pool("sandboxes"))
        .await
        .unwrap();
    pve.wait_task(&upid, wait()).await.unwrap();
    assert_eq!(pve.pool("sandboxes").await.unwrap().members.len(), 1);
    let e = pve.delete_pool("sandboxes").await.unwrap_err();
    assert_eq!(
        e.pve_message(),
        Some("pool 'sandboxes' is not empty (contains VM 101)")
    );
    let res = pve.cluster_resources(Some("vm")).await.unwrap();
    let tpl = res.iter().find(|r| r.vmid == Some(9000)).unwrap();
    assert_eq!(
        (tpl.template, tpl.tag_list()),
        (Some(true), vec!["pvesandbox", "base"])
    );
    assert_eq!(
        res.iter()
            .find(|r| r.vmid == Some(101))
            .unwrap()
            .pool
            .as_deref(),
        Some("sandboxes")
    );
    assert_eq!(pve.next_id().await.unwrap(), Vmid(100));
    assert!(!pve.is_vmid_free(Vmid(101)).await.unwrap());
    assert!(pve.is_vmid_free(Vmid(102)).await.unwrap());
    let nodes = pve.nodes().await.unwrap();
    assert_eq!(nodes[0].node, NODE);
    let status = pve.node(NODE).status().await.unwrap();
    assert_eq!(status.cpuinfo.unwrap().cpus, 16);
    let storages = pve.node(NODE).storages(Some("images")).await.unwrap();
    assert_eq!(
        storages
            .iter()
            .map(|s| s.storage.as_str())
            .collect::<Vec<_>>(),
        ["local-lvm"]
    );
    let v = pve.version().await.unwrap();
    assert_eq!(v.release_tuple(), Some((9, 2)));
    pve.wait_task(
        &pve.node(NODE)
            .qemu(Vmid(101))
            .destroy(DestroyOptions::thorough())
            .await
            .unwrap(),
        wait(),
    )
    .await
    .unwrap();
    pve.delete_pool("sandboxes").await.unwrap();
    assert!(pve.pools().await.unwrap().is_empty());
}

#[tokio::test]
async fn many_concurrent_clones_share_one_client() {
    let sim = sim().await;
    let pve = Arc::new(password_client(&sim));
    let tasks: Vec<_> = (0..20u32)
        .map(|i| {
            let pve = pve.clone();
            tokio::spawn(async move { clone_and_wait(&pve, 200 + i).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sim.vmids().len(), 21);
    assert_eq!(sim.request_count("POST", "/access/ticket"), 1);
}
