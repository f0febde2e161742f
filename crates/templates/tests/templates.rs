//! Templates against the simulator: built-ins through `download-url` from a loopback server,
//! Kali through a client-side download, OVA import cached by content, existing tags, the bake
//! (seed, agent, cloud-init, seal), idempotence, clone, GC and progress.

mod common;

use std::time::Duration;

use common::*;
use pve_client::{Params, Vmid, WaitOptions};
use pve_sim::{PveSim, SimConfig, VmSeed};
use pvesandbox_templates::{
    BuiltIn, CloneSpec, Error, NicController, NicSpec, NoCloudSeed, OsType, Phase, ProgressEvent,
    Templates, VmSource, clone_template,
};

fn wait() -> WaitOptions {
    WaitOptions::with_timeout(Duration::from_secs(30))
}

async fn setup(tag: &str) -> (pve_sim::PveSim, FileServer, Templates) {
    let sim = sim().await;
    let srv = FileServer::start().await;
    let t = Templates::new(client(&sim), config(&scratch(tag), catalog(&srv)));
    (sim, srv, t)
}

fn phases(ev: &Events) -> Vec<Phase> {
    ev.all()
        .into_iter()
        .filter_map(|p| match p.event {
            ProgressEvent::Phase(ph) => Some(ph),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_built_in_is_downloaded_by_pve_baked_with_the_agent_and_sealed() {
    let (sim, srv, t) = setup("debian").await;
    let ev = Events::default();
    let src = VmSource::BuiltIn(BuiltIn::Debian13);
    let tpl = t.ensure_template(&src, &ev.sink()).await.unwrap();
    let cfg = sim.vm_config(tpl.vmid.0).unwrap();
    assert_eq!(cfg.get("template").map(String::as_str), Some("1"));
    let tags = cfg["tags"].split(';').collect::<Vec<_>>();
    assert!(
        tags.contains(&"pvesandbox") && tags.contains(&tpl.key_tag().as_str()),
        "{tags:?}"
    );
    assert!(!tags.contains(&"building"), "{tags:?}");
    // Seed and bake NIC detached; the disk was imported and became a base image.
    assert!(
        !cfg.contains_key("ide2") && !cfg.contains_key("net0"),
        "{cfg:?}"
    );
    assert!(
        cfg["scsi0"].contains(&format!("base-{}-disk-0", tpl.vmid)),
        "{cfg:?}"
    );
    assert_eq!(
        srv.hits(t.config().images.get(BuiltIn::Debian13).remote_name()),
        1
    );
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/storage/{storage}/download-url"),
        1
    );
    // The template was sealed only after the agent answered and cloud-init was done.
    let log = sim.requests();
    let order: Vec<&str> = log
        .entries()
        .iter()
        .filter(|e| e.status == 200)
        .map(|e| e.route.as_str())
        .filter(|r| {
            r.ends_with("/agent/ping") || r.ends_with("/agent/exec") || r.ends_with("/template")
        })
        .collect();
    assert_eq!(
        order,
        [
            "/nodes/{node}/qemu/{vmid}/agent/ping",
            "/nodes/{node}/qemu/{vmid}/agent/exec",
            "/nodes/{node}/qemu/{vmid}/agent/exec",
            "/nodes/{node}/qemu/{vmid}/template"
        ]
    );
    let ph = phases(&ev);
    for want in [
        Phase::Claimed { vmid: tpl.vmid },
        Phase::ServerDownload {
            url: t.config().images.get(BuiltIn::Debian13).url.clone(),
        },
        Phase::Booting,
        Phase::WaitingForAgent,
        Phase::CloudInit,
        Phase::ShuttingDown,
        Phase::Sealing,
        Phase::Ready { vmid: tpl.vmid },
    ] {
        assert!(ph.contains(&want), "{want:?} not in {ph:?}");
    }
    eprintln!(
        "cold bake of a built-in: {} REST calls: {:?}",
        sim.requests().total(),
        sim.requests().counts()
    );
    // Idempotent: the second call is one listing and a look at the template's boot disk
    // (PVE marks a VM a template before its disks are converted).
    sim.reset_requests();
    let again = t.ensure_template(&src, &|_| {}).await.unwrap();
    assert_eq!(again.vmid, tpl.vmid);
    assert_eq!(sim.requests().total(), 2, "{:?}", sim.requests().counts());
}

#[tokio::test]
async fn a_wrong_pinned_checksum_fails_with_pves_wording_and_leaves_nothing() {
    let (sim, srv, _) = setup("badsum").await;
    let mut cat = catalog(&srv);
    let mut spec = cat.get(BuiltIn::Debian13).clone();
    spec.checksum = pvesandbox_templates::Checksum::sha512(&"ab".repeat(64)).unwrap();
    cat = cat.with_image(BuiltIn::Debian13, spec);
    let t = Templates::new(client(&sim), config(&scratch("badsum"), cat));
    let e = t
        .ensure_template(&VmSource::BuiltIn(BuiltIn::Debian13), &|_| {})
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("checksum mismatch: got '") && msg.contains(&"ab".repeat(64)),
        "{msg}"
    );
    assert!(
        sim.vmids().is_empty(),
        "the failed claim was removed: {:?}",
        sim.vmids()
    );
    let files = client(&sim)
        .node(NODE)
        .storage("local")
        .content(Some("import"))
        .await
        .unwrap();
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test]
async fn ubuntu_imports_the_disk_inside_the_ova_pve_downloaded() {
    let (sim, _srv, t) = setup("ubuntu").await;
    let tpl = t
        .ensure_template(&VmSource::BuiltIn(BuiltIn::Ubuntu2404), &|_| {})
        .await
        .unwrap();
    assert!(sim.vm_config(tpl.vmid.0).unwrap()["scsi0"].contains("base-"));
    assert_eq!(tpl.disk_bytes, Some(3000));
}

#[tokio::test]
async fn kali_is_downloaded_unpacked_and_uploaded_once() {
    let (sim, srv, t) = setup("kali").await;
    let ev = Events::default();
    let src = VmSource::BuiltIn(BuiltIn::Kali20254);
    let tpl = t.ensure_template(&src, &ev.sink()).await.unwrap();
    let name = t
        .config()
        .images
        .get(BuiltIn::Kali20254)
        .remote_name()
        .to_owned();
    assert_eq!(srv.hits(&name), 1);
    let files = client(&sim)
        .node(NODE)
        .storage("local")
        .content(Some("import"))
        .await
        .unwrap();
    let raw = files
        .iter()
        .find(|f| f.volid.ends_with(".raw"))
        .expect("raw image uploaded");
    assert_eq!(raw.size, Some(5000));
    assert!(ev.all().iter().any(
        |p| matches!(p.event, ProgressEvent::Bytes { what: "download", done, .. } if done > 0)
    ));
    // The template is gone (say, collected); a rebuild finds the raw image in storage and
    // neither downloads nor uploads again (the peer re-downloaded Kali every time).
    assert_eq!(t.gc(&[]).await.unwrap().templates, vec![tpl.vmid]);
    let raw_vol = raw.volid.clone();
    let pve = client(&sim);
    assert!(
        pve.node(NODE)
            .storage("local")
            .content(Some("import"))
            .await
            .unwrap()
            .is_empty()
    );
    // Put it back as a user would have it from an earlier run, then rebuild.
    let raw_path = t
        .config()
        .cache_dir
        .join(raw_vol.rsplit('/').next().unwrap());
    let upid = pve
        .node(NODE)
        .storage("local")
        .upload(&pve_client::Upload {
            file: raw_path,
            content: "import".into(),
            filename: raw_vol.rsplit('/').next().unwrap().into(),
            checksum: None,
        })
        .await
        .unwrap();
    pve.wait_task(&upid, wait()).await.unwrap();
    sim.reset_requests();
    let again = t.ensure_template(&src, &|_| {}).await.unwrap();
    assert_ne!(again.vmid.0, 0);
    assert_eq!(srv.hits(&name), 1, "not downloaded again");
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/storage/{storage}/upload"),
        0
    );
}

#[tokio::test]
async fn an_ova_is_cached_by_content_not_by_name_and_size() {
    let (sim, _srv, t) = setup("ova").await;
    let dir = scratch("ova-file");
    let path = dir.join("box.ova");
    std::fs::write(&path, ova(&[1u8; 4096])).unwrap();
    let src = VmSource::Ova(path.clone());
    let first = t.ensure_template(&src, &|_| {}).await.unwrap();
    assert!(first.key.starts_with("ova-"));
    sim.reset_requests();
    let same = t.ensure_template(&src, &|_| {}).await.unwrap();
    assert_eq!(same.vmid, first.vmid);
    assert_eq!(
        sim.requests().total(),
        2,
        "a listing and the template's config"
    );
    // Same name, same size, other bytes: another template.
    std::fs::write(&path, ova(&[2u8; 4096])).unwrap();
    let t2 = Templates::new(client(&sim), t.config().clone());
    let changed = t2.ensure_template(&src, &|_| {}).await.unwrap();
    assert_ne!(changed.vmid, first.vmid);
    assert_ne!(changed.key, first.key);
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/storage/{storage}/upload"),
        1,
        "the new OVA only; the seed ISO was already there"
    );
}

#[tokio::test]
async fn an_ova_without_agent_can_be_sealed_unbooted_on_ide_with_a_windows_os_type() {
    let (sim, _srv, t) = setup("ova-ide").await;
    let path = scratch("ova-ide-file").join("router.ova");
    std::fs::write(&path, ova(&[9u8; 1024])).unwrap();
    let opts = pvesandbox_templates::BakeOptions {
        disk_controller: pvesandbox_templates::DiskController::Ide,
        os_type: OsType::Win11,
        cpu: Some("x86-64-v2-AES".into()),
        verify_agent: false,
    };
    let tpl = t
        .ensure_template_with(&VmSource::Ova(path), &opts, &|_| {})
        .await
        .unwrap();
    assert_eq!(tpl.boot_disk, "ide0");
    let cfg = sim.vm_config(tpl.vmid.0).unwrap();
    assert_eq!(cfg["ostype"], "win11");
    assert_eq!(cfg["cpu"], "x86-64-v2-AES");
    assert!(cfg["ide0"].contains("base-"), "{cfg:?}");
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/qemu/{vmid}/status/start"),
        0
    );
}

#[tokio::test]
async fn an_existing_template_is_found_by_tag() {
    let (sim, _srv, t) = setup("existing").await;
    sim.add_vm(
        VmSeed::template(8100, "win-golden")
            .with("tags", "golden;win")
            .with("net0", "e1000=BC:24:11:00:00:01,bridge=vmbr0"),
    );
    let tpl = t
        .ensure_template(&VmSource::ExistingTag("golden".into()), &|_| {})
        .await
        .unwrap();
    assert_eq!(tpl.vmid, Vmid(8100));
    assert_eq!(tpl.nics, vec!["net0".to_owned()]);
    assert_eq!(tpl.boot_disk, "scsi0");
    let e = t
        .ensure_template(&VmSource::ExistingTag("nope".into()), &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TemplateNotFound { .. }), "{e}");
    assert!(e.to_string().contains("existing_vm_template_tag"), "{e}");
}

#[tokio::test]
async fn a_linked_clone_gets_its_shape_in_one_config_call_and_a_resize() {
    let (sim, _srv, t) = setup("clone").await;
    let tpl = t
        .ensure_template(&VmSource::BuiltIn(BuiltIn::Debian13), &|_| {})
        .await
        .unwrap();
    sim.reset_requests();
    let pve = client(&sim);
    let mut spec = CloneSpec::new(Vmid(301));
    spec.name = Some("box1".into());
    spec.memory_mb = 4096;
    spec.cores = 4;
    spec.cpu = Some("x86-64-v3".into());
    spec.os_type = Some(OsType::L26);
    spec.uefi = Some("local-lvm".into());
    spec.nics = Some(vec![
        NicSpec {
            bridge: "sbx1v0".into(),
            model: NicController::E1000,
            mac: Some("bc:24:11:aa:bb:cc".into()),
            firewall: true,
        },
        NicSpec {
            bridge: "sbx1v1".into(),
            model: NicController::Virtio,
            mac: None,
            firewall: false,
        },
    ]);
    spec.tags = vec!["pvesandbox".into(), "run-abc".into()];
    spec.disk_gib = Some(20);
    let out = clone_template(&pve, &tpl, &spec, wait()).await.unwrap();
    assert!(out.resized);
    let cfg = sim.vm_config(301).unwrap();
    assert_eq!(cfg["memory"], "4096");
    assert_eq!(cfg["cores"], "4");
    assert_eq!(cfg["cpu"], "x86-64-v3");
    assert_eq!(cfg["bios"], "ovmf");
    assert!(
        cfg["efidisk0"].starts_with("local-lvm:vm-301-disk-"),
        "{cfg:?}"
    );
    assert_eq!(
        cfg["net0"],
        "e1000=BC:24:11:AA:BB:CC,bridge=sbx1v0,firewall=1"
    );
    assert!(cfg["net1"].starts_with("virtio=BC:24:11:") && cfg["net1"].ends_with(",bridge=sbx1v1"));
    assert_eq!(cfg["tags"], "pvesandbox;run-abc");
    assert!(cfg["scsi0"].contains("size=20G"), "{cfg:?}");
    assert_eq!(cfg["name"], "box1");
    let counts = sim.requests().counts();
    eprintln!(
        "clone + UEFI config + resize: {} REST calls: {counts:?}",
        out.rest_calls
    );
    assert_eq!(out.rest_calls as usize, sim.requests().total());
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/qemu/{vmid}/clone"),
        1
    );
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/qemu/{vmid}/config")
            + sim.request_count("PUT", "/nodes/{node}/qemu/{vmid}/config"),
        1
    );
    // Plain linked clone, no UEFI, disk not bigger than the template's: two calls + polls.
    sim.reset_requests();
    let mut small = CloneSpec::new(Vmid(302));
    small.disk_gib = Some(0);
    let out = clone_template(&pve, &tpl, &small, wait()).await.unwrap();
    assert!(!out.resized);
    eprintln!("plain linked clone: {} REST calls", out.rest_calls);
    assert_eq!(
        sim.request_count("PUT", "/nodes/{node}/qemu/{vmid}/resize"),
        0
    );
    assert_eq!(out.rest_calls as usize, sim.requests().total());
    // Full clone on request.
    let mut full = CloneSpec::new(Vmid(303));
    full.full = true;
    full.storage = Some("local-lvm".into());
    clone_template(&pve, &tpl, &full, wait()).await.unwrap();
    // A template with linked clones cannot be destroyed: gc reports it in use.
    let r = t.gc(&[]).await.unwrap();
    assert_eq!(r.in_use, vec![tpl.vmid]);
    assert!(r.templates.is_empty());
}

#[tokio::test]
async fn gc_removes_what_no_source_needs_and_nothing_untagged() {
    let (sim, _srv, t) = setup("gc").await;
    let deb = t
        .ensure_template(&VmSource::BuiltIn(BuiltIn::Debian13), &|_| {})
        .await
        .unwrap();
    let path = scratch("gc-ova").join("x.ova");
    std::fs::write(&path, ova(&[5u8; 2048])).unwrap();
    let ova_src = VmSource::Ova(path);
    let o = t.ensure_template(&ova_src, &|_| {}).await.unwrap();
    sim.add_vm(VmSeed::template(8200, "users").with("tags", "tpl-foo"));
    let pve = client(&sim);
    // A file of the user's and a stale seed of ours.
    let other = scratch("gc-files").join("user.iso");
    std::fs::write(&other, b"iso").unwrap();
    for name in ["user.iso", "pvesandbox-seed-000000000000.iso"] {
        let upid = pve
            .node(NODE)
            .storage("local")
            .upload(&pve_client::Upload {
                file: other.clone(),
                content: "iso".into(),
                filename: name.into(),
                checksum: None,
            })
            .await
            .unwrap();
        pve.wait_task(&upid, wait()).await.unwrap();
    }
    let r = t.gc(&[VmSource::BuiltIn(BuiltIn::Debian13)]).await.unwrap();
    assert_eq!(r.templates, vec![o.vmid]);
    let mut vols = r.volumes.clone();
    vols.sort();
    assert_eq!(vols.len(), 2, "{vols:?}");
    assert!(
        vols.iter()
            .any(|v| v.starts_with("local:import/pvesandbox-ova-"))
    );
    assert!(vols.contains(&"local:iso/pvesandbox-seed-000000000000.iso".to_owned()));
    let ids = sim.vmids();
    assert!(ids.contains(&deb.vmid.0) && ids.contains(&8200) && !ids.contains(&o.vmid.0));
    let left: Vec<String> = pve
        .node(NODE)
        .storage("local")
        .content(None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.volid)
        .collect();
    assert!(left.contains(&"local:iso/user.iso".to_owned()));
    assert!(left.iter().any(|v| v.contains("pvesandbox-debian13-")));
    assert!(left.contains(&format!(
        "local:iso/{}",
        NoCloudSeed::bake(&t.config().packages).filename()
    )));
    // Again: nothing more to do.
    assert_eq!(
        t.gc(&[VmSource::BuiltIn(BuiltIn::Debian13)]).await.unwrap(),
        Default::default()
    );
}

/// A token without Datastore.Allocate on the file storage still collects templates; the
/// files it may not delete are reported, not an error.
#[tokio::test]
async fn gc_without_the_storage_grant_reports_the_files_it_kept() {
    let mut cfg = SimConfig::new();
    cfg.privileges = Some(
        pve_sim::access::ALL_PRIVILEGES
            .iter()
            .filter(|p| **p != "Datastore.Allocate")
            .map(|p| (*p).to_owned())
            .collect(),
    );
    let sim = PveSim::start(cfg).await.unwrap();
    let srv = FileServer::start().await;
    let t = Templates::new(client(&sim), config(&scratch("gc-perm"), catalog(&srv)));
    let path = scratch("gc-perm-ova").join("x.ova");
    std::fs::write(&path, ova(&[6u8; 2048])).unwrap();
    let o = t
        .ensure_template(&VmSource::Ova(path), &|_| {})
        .await
        .unwrap();
    let r = t.gc(&[]).await.unwrap();
    assert_eq!(r.templates, vec![o.vmid]);
    assert!(r.volumes.is_empty(), "{r:?}");
    assert!(
        r.not_permitted
            .iter()
            .any(|v| v.starts_with("local:import/pvesandbox-ova-")),
        "{r:?}"
    );
}

/// The simulator's cloud-image model: an imported disk has no agent until it boots with a
/// seed that installs one; a seed without the agent does not help.
#[tokio::test]
async fn the_agent_of_an_imported_disk_needs_a_seed_that_installs_it() {
    let (sim, srv, _) = setup("model").await;
    let pve = client(&sim);
    let node = pve.node(NODE);
    let st = node.storage("local");
    let url = srv.put("img.qcow2", b"image".to_vec());
    let upid = st
        .download_url(&pve_client::DownloadUrl {
            url,
            content: "import".into(),
            filename: "img.qcow2".into(),
            checksum: None,
            compression: None,
        })
        .await
        .unwrap();
    pve.wait_task(&upid, wait()).await.unwrap();
    let dir = scratch("model");
    let mut no_agent = NoCloudSeed::bake(&[]);
    no_agent.user_data = "#cloud-config\npackages:\n  - vim\n".into();
    for (name, seed) in [("good.iso", NoCloudSeed::bake(&[])), ("bad.iso", no_agent)] {
        let p = dir.join(name);
        std::fs::write(&p, seed.to_iso().unwrap()).unwrap();
        let upid = st
            .upload(&pve_client::Upload {
                file: p,
                content: "iso".into(),
                filename: name.into(),
                checksum: None,
            })
            .await
            .unwrap();
        pve.wait_task(&upid, wait()).await.unwrap();
    }
    let boot = |vmid: u32, seed: Option<&'static str>| {
        let pve = pve.clone();
        async move {
            let mut p = Params::new()
                .with("scsi0", "local-lvm:0,import-from=local:import/img.qcow2")
                .with("agent", "enabled=1");
            if let Some(s) = seed {
                p.push("ide2", format!("local:iso/{s},media=cdrom"));
            }
            let n = pve.node(NODE);
            pve.wait_task(&n.qemu_create(Vmid(vmid), &p).await.unwrap(), wait())
                .await
                .unwrap();
            pve.wait_task(&n.qemu(Vmid(vmid)).start().await.unwrap(), wait())
                .await
                .unwrap();
            pve.post(
                &format!("/nodes/{NODE}/qemu/{vmid}/agent/ping"),
                &Params::new(),
            )
            .await
        }
    };
    let e = boot(401, None).await.unwrap_err();
    assert!(
        e.to_string().contains("QEMU guest agent is not running"),
        "{e}"
    );
    assert!(boot(402, Some("bad.iso")).await.is_err());
    boot(403, Some("good.iso")).await.unwrap();
    // import-from a missing volume: PVE's wording.
    let e = node
        .qemu_create(
            Vmid(404),
            &Params::new().with("scsi0", "local-lvm:0,import-from=local:import/nope.qcow2"),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("can't find file 'local:import/nope.qcow2'"),
        "{e}"
    );
}

#[tokio::test]
async fn a_stale_claim_is_taken_over_and_a_fresh_one_waited_for() {
    let (sim, _srv, t) = setup("stale").await;
    let src = VmSource::BuiltIn(BuiltIn::Debian13);
    let key = t.key_of(&src, &Default::default()).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A claim from a process that died three hours ago.
    sim.add_vm(VmSeed::vm(9990, "dead-builder").with(
        "tags",
        &format!("pvesandbox;tpl-{key};building;bs-{}", now - 3 * 3600),
    ));
    let ev = Events::default();
    let tpl = t.ensure_template(&src, &ev.sink()).await.unwrap();
    assert!(
        phases(&ev).contains(&Phase::TakingOver { vmid: Vmid(9990) }),
        "{:?}",
        phases(&ev)
    );
    assert!(!sim.vmids().contains(&9990));
    assert_ne!(tpl.vmid, Vmid(9990));
    // A claim of another key that is alive: the waiter gives up at its deadline.
    let ubuntu = VmSource::BuiltIn(BuiltIn::Ubuntu2404);
    let ukey = t.key_of(&ubuntu, &Default::default()).await.unwrap();
    sim.add_vm(
        VmSeed::vm(9991, "busy-builder")
            .with("tags", &format!("pvesandbox;tpl-{ukey};building;bs-{now}")),
    );
    let mut cfg = t.config().clone();
    cfg.wait_timeout = Duration::from_millis(300);
    let impatient = Templates::new(client(&sim), cfg);
    let ev = Events::default();
    let e = impatient
        .ensure_template(&ubuntu, &ev.sink())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(phases(&ev).contains(&Phase::WaitingForOtherBuilder { vmid: Vmid(9991) }));
    assert!(sim.vmids().contains(&9991), "a live claim is left alone");
}

#[tokio::test]
async fn download_url_refuses_to_override_an_existing_file() {
    let (sim, srv, _) = setup("override").await;
    let pve = client(&sim);
    let st = pve.node(NODE).storage("local");
    let d = pve_client::DownloadUrl {
        url: srv.put("a.qcow2", b"one".to_vec()),
        content: "import".into(),
        filename: "a.qcow2".into(),
        checksum: Some(("sha256".into(), sha256(b"one"))),
        compression: None,
    };
    pve.wait_task(&st.download_url(&d).await.unwrap(), wait())
        .await
        .unwrap();
    let files = st.content(Some("import")).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].size, Some(3));
    let e = st.download_url(&d).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("refusing to override existing file '/var/lib/vz/import/a.qcow2'"),
        "{e}"
    );
    // A URL that is not loopback is refused by the simulator (it never leaves the host).
    let far = pve_client::DownloadUrl {
        url: "http://192.0.2.1/x.qcow2".into(),
        filename: "x.qcow2".into(),
        checksum: None,
        ..d
    };
    let e = pve
        .wait_task(&st.download_url(&far).await.unwrap(), wait())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("download failed"), "{e}");
}

#[tokio::test]
async fn an_id_taken_on_another_node_is_skipped_not_retried_forever() {
    let sim = pve_sim::PveSim::start(pve_sim::SimConfig::new().nodes(&[NODE, "pve2"]))
        .await
        .unwrap();
    let srv = FileServer::start().await;
    let mut cfg = config(&scratch("nodes"), catalog(&srv));
    cfg.vmid_range = 9000..=9001;
    let mut other = VmSeed::vm(9000, "elsewhere");
    other.node = Some("pve2".into());
    sim.add_vm(other);
    let mut other = VmSeed::vm(9001, "elsewhere-too");
    other.node = Some("pve2".into());
    let t = Templates::new(client(&sim), cfg.clone());
    let src = VmSource::BuiltIn(BuiltIn::Debian13);
    sim.add_vm(other);
    let e = tokio::time::timeout(Duration::from_secs(10), t.ensure_template(&src, &|_| {}))
        .await
        .expect("no endless retry")
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NoFreeVmid {
                start: 9000,
                end: 9001
            }
        ),
        "{e}"
    );
    cfg.vmid_range = 9000..=9002;
    let tpl = Templates::new(client(&sim), cfg)
        .ensure_template(&src, &|_| {})
        .await
        .unwrap();
    assert_eq!(tpl.vmid, Vmid(9002));
}
