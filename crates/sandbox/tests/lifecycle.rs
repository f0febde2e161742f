//! The lifecycle against the simulator: samples, isolation, undo on failure, two runs on one
//! host, cleanup from Proxmox state, and the REST cost of a warm sample.

mod common;

use common::*;
use guest_agent::ExecRequest;
use pve_sim::FaultError;
use pvesandbox::{
    CleanupTarget, Error, ErrorKind, EventKind, Fleet, Run, SampleEvent, SampleState,
    SampleTimings, TaskOptions,
};

fn sh(cmd: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", cmd])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_vm_sample_runs_and_leaves_nothing() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let cfg = eval(
        r#"{"sdn_config": "auto", "vms_config": [
            {"vm_source_config": {"built_in": "debian13"}, "name": "attacker", "ram_mb": 512, "vcpus": 1},
            {"vm_source_config": {"built_in": "debian13"}, "name": "victim", "is_sandbox": false, "ram_mb": 512, "vcpus": 1, "await_before_next_vm": true},
            {"vm_source_config": {"built_in": "debian13"}, "name": "third", "ram_mb": 512, "vcpus": 1, "disk_gb": 20, "uefi_boot": true}
        ]}"#,
    );
    let task = Run::task_init(settings, cfg, TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let names: Vec<&str> = sample.sandboxes().iter().map(|v| v.name()).collect();
    assert_eq!(
        names,
        ["default", "victim", "third"],
        "the first sandbox VM is `default`"
    );
    let d = sample.get("default").unwrap();
    let out = d
        .exec(sh("echo -n out; echo -n err >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(
        (out.status, &out.stdout[..], &out.stderr[..]),
        (3, &b"out"[..], &b"err"[..])
    );
    d.write_file("/tmp/x/y.bin", &[0, 159, 146, 150])
        .await
        .unwrap();
    assert_eq!(
        d.read_file("/tmp/x/y.bin", None).await.unwrap(),
        [0, 159, 146, 150]
    );

    // What the VMs look like in PVE: tags, owner record, NIC on the sample's vnet with the
    // firewall flag, UEFI, agent off for the non-sandbox VM, isolation rules present.
    let zone = sample.zone().expect("an auto network has a zone");
    for vm in sample.sandboxes() {
        let c = sim.sim().vm_config(vm.vmid().0).unwrap();
        let tags = &c["tags"];
        assert!(
            tags.contains("pvesandbox") && tags.contains(&format!("run-{}", task.run_id())),
            "{tags}"
        );
        assert!(tags.contains("exp-"), "{tags}");
        assert!(pvesandbox::OwnerRecord::parse(&c["description"]).is_some());
        assert!(c["net0"].contains("firewall=1"), "{}", c["net0"]);
        assert_eq!(
            c["agent"].contains("enabled=1") || c["agent"] == "1",
            vm.is_sandbox(),
            "{}",
            c["agent"]
        );
    }
    let third = sim
        .sim()
        .vm_config(sample.get("third").unwrap().vmid().0)
        .unwrap();
    assert_eq!(third.get("bios").map(String::as_str), Some("ovmf"));
    assert!(third.contains_key("efidisk0"));
    let (running, _) = sim.sim().sdn();
    assert!(running.zones.contains_key(&zone), "the zone was applied");

    sample.cleanup(false).await.unwrap();
    sample.cleanup(false).await.unwrap(); // idempotent
    task.task_cleanup().await.unwrap();
    let left = sim.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_samples_get_their_own_networks() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let task = Run::task_init(settings, one_vm(), TaskOptions::default())
        .await
        .unwrap();
    let (a, b, c) = tokio::join!(task.sample_init(), task.sample_init(), task.sample_init());
    let samples = [a.unwrap(), b.unwrap(), c.unwrap()];
    let zones: std::collections::BTreeSet<_> = samples.iter().map(|s| s.zone().unwrap()).collect();
    assert_eq!(zones.len(), 3, "{zones:?}");
    let (running, _) = sim.sim().sdn();
    let cidrs: std::collections::BTreeSet<_> = running
        .subnets
        .values()
        .filter_map(|s| s.get("cidr").cloned())
        .collect();
    assert_eq!(
        cidrs.len(),
        running.subnets.len(),
        "disjoint subnets: {:?}",
        running.subnets
    );
    // Files written in one sample are not visible in another.
    samples[0]
        .get("default")
        .unwrap()
        .write_file("/root/mine", b"0")
        .await
        .unwrap();
    let other = samples[1]
        .get("default")
        .unwrap()
        .exec(sh("test -e /root/mine"))
        .await
        .unwrap();
    assert_eq!(other.status, 1);
    for s in &samples {
        s.cleanup(false).await.unwrap();
    }
    // The SDN apply was coalesced or at least not doubled per sample.
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_sample_init_undoes_everything_it_made() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let cfg = two_vms();
    let task = Run::task_init(settings, cfg, TaskOptions::default())
        .await
        .unwrap();
    sim.sim().fail_next(
        "POST",
        "/nodes/{node}/qemu/{vmid}/status/start",
        1,
        FaultError::task("start failed: QEMU exited with code 1"),
    );
    let mut events = task.fleet().subscribe();
    let err = task.sample_init().await.unwrap_err();
    let mut kinds = Vec::new();
    while let Ok(ev) = events.try_recv() {
        kinds.push(ev.kind);
    }
    match &kinds[kinds.len() - 2..] {
        [EventKind::Failed { step, message, .. }, EventKind::TornDown] => {
            assert!(matches!(step, pvesandbox::Step::Start { .. }), "{step}");
            assert!(message.contains("QEMU exited with code 1"), "{message}");
        }
        other => panic!("a failed sample's stream ends Failed, TornDown: {other:?}"),
    }
    assert!(
        task.fleet().samples().is_empty(),
        "{:?}",
        task.fleet().samples()
    );
    match &err {
        Error::SampleInit { step, leftover, .. } => {
            assert!(matches!(step, pvesandbox::Step::Start { .. }), "{step}");
            assert!(leftover.is_empty(), "{leftover:?}");
        }
        other => panic!("expected SampleInit, got {other:?}"),
    }
    assert!(err.to_string().contains("QEMU exited with code 1"), "{err}");
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
    // The instance is usable again: the next sample works.
    let s = task.sample_init().await.unwrap();
    s.cleanup(false).await.unwrap();
    assert!(sim.leftovers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runs_on_one_host_never_touch_each_other() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let a = Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
        .await
        .unwrap();
    let b = Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
        .await
        .unwrap();
    assert_ne!(a.run_id(), b.run_id());
    let sa = a.sample_init().await.unwrap();
    let sb = b.sample_init().await.unwrap();
    // Run A is "crashed": its cleanup comes from Proxmox state alone.
    std::mem::forget(sa);
    let report = pvesandbox::cleanup(&settings.instances, &CleanupTarget::Run(a.run_id().clone()))
        .await
        .unwrap();
    assert_eq!((report.vms.len(), report.zones.len()), (1, 1), "{report:?}");
    // Run B is untouched and still works.
    let vm = sb.get("default").unwrap();
    assert!(sim.sim().vm_running(vm.vmid().0).unwrap());
    assert_eq!(vm.exec(sh("true")).await.unwrap().status, 0);
    let (running, _) = sim.sim().sdn();
    assert!(running.zones.contains_key(&sb.zone().unwrap()));
    // Expired-only cleanup leaves live runs alone.
    let report = pvesandbox::cleanup(&settings.instances, &CleanupTarget::Expired)
        .await
        .unwrap();
    assert!(
        report.vms.is_empty() && report.zones.is_empty(),
        "{report:?}"
    );
    sb.cleanup(false).await.unwrap();
    b.task_cleanup().await.unwrap();
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runs_of_one_fleet_share_one_capacity_count() {
    // Two runs that each started their own pool would both get the instance's one slot.
    if !guests_available() {
        return;
    }
    let (sim, mut settings) = world().await;
    settings.instances[0].max_samples = Some(1);
    settings.run.lease_timeout_secs = 1;
    let fleet = Fleet::start(settings).await.unwrap();
    let a = fleet.run(one_vm(), TaskOptions::default()).await.unwrap();
    let b = fleet.run(one_vm(), TaskOptions::default()).await.unwrap();
    assert_ne!(a.run_id(), b.run_id());
    assert_eq!((a.capacity(), b.capacity()), (1, 1));
    let sa = a.sample_init().await.unwrap();
    // A's sample holds the slot: B waits its lease timeout out.
    let e = b.sample_init().await.unwrap_err();
    assert!(
        matches!(e, Error::Pool(pvesandbox_pool::PoolError::Timeout { .. })),
        "{e}"
    );
    sa.cleanup(false).await.unwrap();
    let sb = b.sample_init().await.unwrap();
    assert_eq!(
        sb.get("default")
            .unwrap()
            .exec(sh("true"))
            .await
            .unwrap()
            .status,
        0
    );
    sb.cleanup(false).await.unwrap();
    a.task_cleanup().await.unwrap();
    b.task_cleanup().await.unwrap();
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renew_moves_the_expiry_in_tags_and_owner_record() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let task = Run::task_init(settings, one_vm(), TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let vmid = sample.get("default").unwrap().vmid();
    let before = sim.sim().vm_config(vmid.0).unwrap();
    let old = pvesandbox::OwnerRecord::parse(&before["description"]).unwrap();
    let new = old.expires + 7 * 24 * 3600;
    sample
        .renew(std::time::UNIX_EPOCH + std::time::Duration::from_secs(new))
        .await
        .unwrap();
    let after = sim.sim().vm_config(vmid.0).unwrap();
    let record = pvesandbox::OwnerRecord::parse(&after["description"]).unwrap();
    assert_eq!(
        record,
        pvesandbox::OwnerRecord {
            expires: new,
            ..old
        }
    );
    let tags: Vec<&str> = after["tags"].split(';').collect();
    let mut want = vec![
        "pvesandbox".to_owned(),
        format!("run-{}", task.run_id()),
        format!("exp-{new}"),
    ];
    want.sort();
    assert_eq!(tags, want, "{}", after["tags"]);
    sample.cleanup(false).await.unwrap();
    task.task_cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_fleet_attaches_to_a_live_sample_by_its_id_string() {
    if !guests_available() {
        return;
    }
    let (_sim, settings) = world().await;
    let task = Run::task_init(settings.clone(), two_vms(), TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let id_text = sample.id().to_string();
    // Another fleet (as another process would start) knows nothing but the string.
    let other = Fleet::start(settings.clone()).await.unwrap();
    let id: pvesandbox::SampleId = id_text.parse().unwrap();
    let attached = other.attach(&id).await.unwrap();
    assert_eq!(attached.id, sample.id());
    let mut names: Vec<&str> = attached.vms.iter().map(|v| v.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["b", "default"]);
    let vm = attached.get("b").unwrap();
    assert_eq!(vm.vmid, sample.get("b").unwrap().vmid());
    let out = vm.agent.exec(&sh("hostname")).await.unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    // Without a fleet, from the settings alone, too.
    let again = pvesandbox::attach(&settings.instances, &id).await.unwrap();
    assert_eq!(again.vms.len(), 2);
    // A sample that does not exist is not found.
    let gone = pvesandbox::SampleId { seq: 99, ..id };
    let e = other.attach(&gone).await.unwrap_err();
    assert_eq!(e.kind(), pvesandbox::ErrorKind::NotFound, "{e}");
    sample.cleanup(false).await.unwrap();
    task.task_cleanup().await.unwrap();
}

#[tokio::test]
async fn fleets_are_shared_per_settings_while_alive() {
    if !guests_available() {
        return;
    }
    let (_sim, settings) = world().await;
    let one = Fleet::shared(settings.clone()).await.unwrap();
    let two = Fleet::shared(settings.clone()).await.unwrap();
    assert!(one.same_as(&two));
    let mut other = settings.clone();
    other.run.ttl_minutes += 1;
    assert!(!Fleet::shared(other).await.unwrap().same_as(&one));
    drop((one, two));
    // Nobody holds it any more: the next caller starts afresh.
    let three = Fleet::shared(settings).await.unwrap();
    let four = Fleet::shared(three.settings().clone()).await.unwrap();
    assert!(three.same_as(&four));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_resources_go_unless_their_owner_is_alive() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let task = Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let vmid = sample.get("default").unwrap().vmid();
    let client = settings.instances[0].client().unwrap();
    let vm = client.node("pve1").qemu(vmid);
    let expire = |desc: Option<String>| {
        let mut p = pve_client::Params::new()
            .with("tags", format!("pvesandbox;run-{};exp-1", task.run_id()));
        if let Some(d) = desc {
            p.push("description", d);
        }
        p
    };
    // Expired, but this process (the owner) is alive: kept.
    vm.update_config(&expire(None)).await.unwrap();
    let r = pvesandbox::cleanup(&settings.instances, &CleanupTarget::Expired)
        .await
        .unwrap();
    assert_eq!((r.vms.len(), r.kept.len()), (0, 1), "{r:?}");
    // Expired and the owner is gone (another host): removed, with its network.
    let mut rec =
        pvesandbox::OwnerRecord::parse(&sim.sim().vm_config(vmid.0).unwrap()["description"])
            .unwrap();
    rec.host = "gone-host".into();
    vm.update_config(&expire(Some(rec.description())))
        .await
        .unwrap();
    let r = pvesandbox::cleanup(&settings.instances, &CleanupTarget::Expired)
        .await
        .unwrap();
    assert_eq!((r.vms.len(), r.zones.len()), (1, 1), "{r:?}");
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
    // The sample's own cleanup afterwards finds everything gone and succeeds.
    sample.cleanup(false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_one_vm_sample_costs_few_rest_calls() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let task = Run::task_init(settings, one_vm(), TaskOptions::default())
        .await
        .unwrap();
    // Warm: the template exists, the pool probed. Count init + 10 execs + cleanup.
    sim.sim().reset_requests();
    let sample = task.sample_init().await.unwrap();
    let init = sim.sim().requests().total();
    for i in 0..10 {
        let out = sample
            .get("default")
            .unwrap()
            .exec(sh(&format!("echo {i}")))
            .await
            .unwrap();
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
    }
    let execs = sim.sim().requests().total() - init;
    sample.cleanup(false).await.unwrap();
    let total = sim.sim().requests().total();
    println!(
        "warm 1-VM sample: init {init}, 10 execs {execs}, cleanup {}, total {total} REST calls (peer: 161)\n{:#?}",
        total - init - execs,
        sim.sim().requests().counts()
    );
    assert!(
        total < 161 / 2,
        "{total} REST calls: {:#?}",
        sim.sim().requests().counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_network_two_linked_clones_and_teardown_rest_calls() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let cfg = two_vms();
    let task = Run::task_init(settings, cfg, TaskOptions::default())
        .await
        .unwrap();
    sim.sim().reset_requests();
    let sample = task.sample_init().await.unwrap();
    sample.cleanup(false).await.unwrap();
    let log = sim.sim().requests();
    let sdn = log
        .entries()
        .iter()
        .filter(|e| e.route.starts_with("/cluster/sdn"))
        .count();
    let clone = log.count("POST", "/nodes/{node}/qemu/{vmid}/clone")
        + log.count("PUT", "/nodes/{node}/qemu/{vmid}/config");
    let firewall = log
        .entries()
        .iter()
        .filter(|e| e.route.contains("/firewall/"))
        .count();
    let agent = log
        .entries()
        .iter()
        .filter(|e| e.route.contains("/agent/"))
        .count();
    let tasks = log.count("GET", "/nodes/{node}/tasks/{upid}/status");
    println!(
        "warm network + 2 linked clones + teardown: {} REST calls: SDN {sdn} (incl. teardown), clone+config {clone}, firewall {firewall}, agent pings {agent}, task polls {tasks}, other {}\n{:#?}",
        log.total(),
        log.total() - sdn - clone - firewall - agent - tasks,
        log.counts()
    );
    assert_eq!(
        log.count("PUT", "/cluster/sdn"),
        2,
        "one apply to create, one to remove"
    );
    assert_eq!(
        log.count("GET", "/cluster/sdn/ipams/{ipam}/status"),
        1,
        "one listing"
    );
    assert_eq!(
        sdn,
        1 + 3 + 1 + 3 + 1,
        "listing, 3 creates, apply, 3 deletes, apply"
    );
    assert_eq!(clone, 4, "one clone and one config call per VM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn egress_is_off_unless_asked_for() {
    if !guests_available() {
        return;
    }
    for egress in [false, true] {
        let (sim, mut settings) = world().await;
        settings.run.egress = egress;
        if egress {
            // The sandbox token lacks Sys.Modify, which creating the datacenter-wide egress
            // group takes: the first egress task says so, and works once an admin made it.
            let err = Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("Sys.Modify") && err.contains("administrator"),
                "{err}"
            );
            let admin = sim.embedded().admin_client().unwrap();
            pve_sdn::ensure_firewall_base(&admin, &[]).await.unwrap();
        }
        let task = Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
            .await
            .unwrap();
        let sample = task.sample_init().await.unwrap();
        let client = settings.instances[0].client().unwrap();
        let vmid = sample.get("default").unwrap().vmid();
        let rules = client
            .get(
                &format!("/nodes/pve1/qemu/{vmid}/firewall/rules"),
                &pve_client::Params::new(),
            )
            .await
            .unwrap();
        let groups = rules
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "group")
            .count();
        assert_eq!(groups, usize::from(egress), "egress={egress}: {rules}");
        let subnets = sim.sim().sdn().0.subnets;
        assert!(
            subnets.values().all(|s| s.get("snat").map(String::as_str)
                == Some(if egress { "1" } else { "0" })
                || (!egress && !s.contains_key("snat"))),
            "egress={egress}: {subnets:?}"
        );
        sample.cleanup(false).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_keeps_what_evals_need_and_templates_with_clones() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let task = Run::task_init(settings.clone(), one_vm(), TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let templates = || {
        sim.sim()
            .vmids()
            .into_iter()
            .filter(|id| {
                sim.sim()
                    .vm_config(*id)
                    .is_some_and(|c| c.get("template").map(String::as_str) == Some("1"))
            })
            .collect::<Vec<_>>()
    };
    let tpl = templates();
    assert_eq!(tpl.len(), 1);
    let debian = one_vm().vms_config[0].vm_source_config.clone();
    // Needed by the eval: kept.
    let r = pvesandbox::gc_templates(&settings, std::slice::from_ref(&debian))
        .await
        .unwrap();
    assert!(r[0].1.templates.is_empty(), "{r:?}");
    // Needed by no one, but a linked clone still runs on it: kept and reported; the image
    // it was imported from is needed by nothing any more.
    let r = pvesandbox::gc_templates(&settings, &[]).await.unwrap();
    assert!(!r[0].1.volumes.is_empty(), "{r:?}");
    assert_eq!(
        r[0].1.in_use.iter().map(|v| v.0).collect::<Vec<_>>(),
        tpl,
        "{r:?}"
    );
    assert_eq!(templates(), tpl);
    sample.cleanup(false).await.unwrap();
    // Needed by no one and unused: removed.
    let r = pvesandbox::gc_templates(&settings, &[]).await.unwrap();
    assert_eq!(
        r[0].1.templates.iter().map(|v| v.0).collect::<Vec<_>>(),
        tpl,
        "{r:?}"
    );
    assert!(templates().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_with_a_user_runs_as_that_user_in_its_home() {
    if !guests_available() {
        return;
    }
    let (_sim, settings) = world().await;
    let cfg = eval(
        r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1, "user": "daemon"}]}"#,
    );
    let task = Run::task_init(settings, cfg, TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let vm = sample.get("default").unwrap();
    assert_eq!(vm.user(), Some("daemon"));
    let out = vm.exec(sh("id -un; pwd")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "daemon\n/usr/sbin\n");
    // Files as that user: /root is closed to it.
    let err = vm.write_file("/root/x", b"x").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Agent(guest_agent::Error::PermissionDenied { .. })
        ),
        "{err:?}"
    );
    sample.cleanup(false).await.unwrap();
}

/// The most clones the simulator ever ran at once, from its request log alone: a clone holds
/// its storage's permit from its accepted `POST .../clone` until the poll that saw its
/// `qmclone` task end, which is its last (nothing polls a clone task after that).
fn most_clones_at_once(log: &pve_sim::RequestLog) -> usize {
    let entries = log.entries();
    let mut last_poll = std::collections::BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.route == "/nodes/{node}/tasks/{upid}/status" && e.path.contains("qmclone") {
            last_poll.insert(e.path.clone(), i);
        }
    }
    let ends: std::collections::BTreeSet<usize> = last_poll.into_values().collect();
    let (mut now, mut most) = (0usize, 0usize);
    for (i, e) in entries.iter().enumerate() {
        // A refused clone (its VM id taken) starts no task.
        if e.method == "POST" && e.route == "/nodes/{node}/qemu/{vmid}/clone" && e.status == 200 {
            now += 1;
            most = most.max(now);
        }
        if ends.contains(&i) {
            now = now.saturating_sub(1);
        }
    }
    most
}

/// A simulator whose clone tasks take 100 ms (a twentieth of the realistic 2 s), so clones
/// that run at once overlap for sure.
async fn slow_clones() -> (pvesandbox::embedded::DemoSim, pvesandbox::Settings) {
    let sim = pvesandbox::embedded::start_demo_sim_with(pvesandbox::embedded::SimOptions {
        port: 0,
        realistic: Some(0.05),
        process_guests: true,
        ..Default::default()
    })
    .await
    .expect("simulator");
    let mut settings = pvesandbox::Settings::default();
    settings.images.cache_dir = Some(tempfile::tempdir().unwrap().keep());
    let mut settings = sim.settings(settings).unwrap();
    settings.instances[0].max_samples = Some(8);
    (sim, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_of_one_fleet_clone_one_at_a_time_per_storage_and_two_fleets_do_not() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = slow_clones().await;
    let sim = &sim;
    let both = |fleet_a: Fleet, fleet_b: Fleet| async move {
        let a = fleet_a.run(one_vm(), TaskOptions::default()).await.unwrap();
        let b = fleet_b.run(one_vm(), TaskOptions::default()).await.unwrap();
        sim.sim().reset_requests();
        let (sa, sb) = tokio::join!(
            futures_util::future::join(a.sample_init(), a.sample_init()),
            futures_util::future::join(b.sample_init(), b.sample_init()),
        );
        let most = most_clones_at_once(&sim.sim().requests());

        for s in [sa.0, sa.1, sb.0, sb.1] {
            s.unwrap().cleanup(false).await.unwrap();
        }
        a.task_cleanup().await.unwrap();
        b.task_cleanup().await.unwrap();
        most
    };
    // Control: two fleets (as two processes would) each hold a permit of their own.
    let most = both(
        Fleet::start(settings.clone()).await.unwrap(),
        Fleet::start(settings.clone()).await.unwrap(),
    )
    .await;
    assert!(most >= 2, "the control did not clone in parallel ({most})");
    let fleet = Fleet::start(settings).await.unwrap();
    let most = both(fleet.clone(), fleet).await;
    assert_eq!(most, 1, "four samples of two runs of one fleet");
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_samples_events_arrive_in_order_and_end_with_torn_down() {
    if !guests_available() {
        return;
    }
    let (_sim, settings) = world().await;
    let fleet = Fleet::start(settings).await.unwrap();
    let mut rx = fleet.subscribe();
    let run = fleet.run(two_vms(), TaskOptions::default()).await.unwrap();
    let sample = run.sample_init().await.unwrap();
    let id = sample.id();
    assert_eq!(sample.state(), SampleState::Running);
    let listed = fleet.sample(&id).expect("in the registry");
    assert_eq!(listed.state, SampleState::Running);
    assert_eq!(listed.vms.len(), 2);
    sample.cleanup(false).await.unwrap();
    assert_eq!(sample.state(), SampleState::Terminated);
    assert!(fleet.sample(&id).is_none(), "{:?}", fleet.samples());

    let mut got = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        got.push(ev);
    }
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "{got:?}");
    let mine: Vec<_> = got.into_iter().filter(|e| e.sample == id).collect();
    let ids = |evs: &[SampleEvent]| evs.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&mine),
        ids(&sample.events()),
        "history and stream agree"
    );
    let kinds: Vec<&EventKind> = mine.iter().map(|e| &e.kind).collect();
    assert!(matches!(kinds[0], EventKind::Leased { .. }), "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 2], &EventKind::Running, "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 1], &EventKind::TornDown, "{kinds:?}");
    let pos = |want: &dyn Fn(&EventKind) -> bool| kinds.iter().position(|k| want(k));
    for vm in ["default", "b"] {
        let cloned = pos(&|k| matches!(k, EventKind::VmCloned { vm: v, .. } if v == vm));
        let started = pos(&|k| matches!(k, EventKind::VmStarted { vm: v, .. } if v == vm));
        let ready = pos(&|k| matches!(k, EventKind::AgentReady { vm: v } if v == vm));
        assert!(
            cloned.is_some() && cloned < started && started < ready,
            "{vm}: {kinds:?}"
        );
    }
    assert_eq!(
        kinds
            .iter()
            .filter(|k| matches!(k, EventKind::NetworkReady { .. }))
            .count(),
        1
    );
    assert_eq!(sample.timings(), SampleTimings::from_events(&mine));
    run.task_cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_sample_runs_nothing_and_resumes_with_the_same_processes() {
    if !guests_available() {
        return;
    }
    let (_sim, settings) = world().await;
    let task = Run::task_init(settings, one_vm(), TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let vm = sample.get("default").unwrap();
    let out = |o: guest_agent::ExecOutput| String::from_utf8_lossy(&o.stdout).into_owned();
    // The loop stamps the clock it shares with the host every 20 ms.
    vm.exec(sh(
        "(sh -c 'echo $$ > /root/loop.pid; while :; do date +%s%N >> /root/ticks; sleep 0.02; done' \
         >/dev/null 2>&1 &)",
    ))
    .await
    .unwrap();
    let ticks = async || -> Vec<u128> {
        out(vm.exec(sh("cat /root/ticks 2>/dev/null")).await.unwrap())
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    while ticks().await.len() < 3 {
        tokio::task::yield_now().await;
    }
    let pid = out(vm.exec(sh("cat /root/loop.pid")).await.unwrap());

    sample.pause().await.unwrap();
    let paused_at = now_ns();
    assert_eq!(sample.state(), SampleState::Paused);
    let e = vm.exec(sh("true")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::GuestAgent, "{e}");
    let e = sample.pause().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    // Not a synchronisation: the time that passes while paused is what is being tested.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let resumed_at = now_ns();
    sample.resume().await.unwrap();
    assert_eq!(sample.state(), SampleState::Running);

    while ticks().await.last().is_none_or(|t| *t < resumed_at) {
        tokio::task::yield_now().await;
    }
    let all = ticks().await;
    let while_paused: Vec<_> = all
        .iter()
        .filter(|t| (paused_at..resumed_at).contains(*t))
        .collect();
    assert!(
        while_paused.is_empty(),
        "ticks while paused: {while_paused:?}"
    );
    assert_eq!(out(vm.exec(sh("cat /root/loop.pid")).await.unwrap()), pid);
    let alive = vm
        .exec(sh("kill -0 $(cat /root/loop.pid) && echo alive"))
        .await
        .unwrap();
    assert_eq!(out(alive), "alive\n");
    let kinds: Vec<_> = sample.events().into_iter().map(|e| e.kind).collect();
    let paused = kinds.iter().position(|k| *k == EventKind::Paused);
    let resumed = kinds.iter().position(|k| *k == EventKind::Resumed);
    assert!(paused.is_some() && paused < resumed, "{kinds:?}");
    sample.cleanup(false).await.unwrap();
    task.task_cleanup().await.unwrap();
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn detached_and_attached_samples_keep_their_capacity_counted() {
    if !guests_available() {
        return;
    }
    let (sim, mut settings) = world().await;
    settings.instances[0].max_samples = Some(1);
    settings.run.lease_timeout_secs = 1;
    let timed_out = |r: Result<pvesandbox::Sample, Error>| {
        matches!(
            r,
            Err(Error::Pool(pvesandbox_pool::PoolError::Timeout { .. }))
        )
    };
    let a = Fleet::start(settings.clone()).await.unwrap();
    let run = a.run(one_vm(), TaskOptions::default()).await.unwrap();
    let sample = run.sample_init().await.unwrap();
    let id = sample.id();
    sample.detach();
    // Still live in its fleet, still holding the one slot.
    assert_eq!(
        a.sample(&id).map(|s| s.state),
        Some(SampleState::Running),
        "{:?}",
        a.samples()
    );
    assert!(timed_out(run.sample_init().await));

    // Another fleet (another process) that attaches to it counts it too, while it holds it.
    let b = Fleet::start(settings.clone()).await.unwrap();
    let other = b.run(one_vm(), TaskOptions::default()).await.unwrap();
    let attached = b.attach(&id).await.unwrap();
    assert!(timed_out(other.sample_init().await));
    drop(attached);
    let s = other.sample_init().await.unwrap();
    s.cleanup(false).await.unwrap();
    other.task_cleanup().await.unwrap();

    pvesandbox::cleanup(&settings.instances, &CleanupTarget::Run(id.run.clone()))
        .await
        .unwrap();
    assert!(sim.leftovers().is_empty(), "{:?}", sim.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adopting_run_builds_no_template_and_creates_nothing() {
    if !guests_available() {
        return;
    }
    let (sim, settings) = world().await;
    let fleet = Fleet::start(settings).await.unwrap();
    let run = fleet
        .adopting_run(one_vm(), TaskOptions::default())
        .await
        .unwrap();
    match run.sample_init().await {
        Err(Error::Config { field, .. }) => assert_eq!(field, "run"),
        other => panic!("an adopting run made a sample: {other:?}"),
    }
    // Nothing at all in Proxmox: no template looked for and built, no sample begun.
    assert!(sim.sim().vmids().is_empty(), "{:?}", sim.sim().vmids());
    assert!(run.adopt(0).await.is_err(), "nothing to adopt");
}
