//! Permissions as PVE enforces them: a principal other than root@pam gets 403 with PVE's
//! wording for what its privileges do not cover, sees only what it may audit in listings,
//! and root@pam passes everything.

mod common;

use common::Raw;
use pve_sim::{PveSim, SimConfig, VmSeed};

async fn sim_with(privileges: &[&str]) -> PveSim {
    let mut cfg = SimConfig::new().plain_http();
    cfg.users.push(("auditor@pve".into(), "pw".into()));
    cfg.privileges = Some(privileges.iter().map(|p| (*p).to_owned()).collect());
    let sim = PveSim::start(cfg).await.unwrap();
    sim.add_vm(VmSeed::template(9000, "tpl"));
    sim
}

#[tokio::test]
async fn a_restricted_user_is_refused_with_the_path_and_privilege() {
    let sim = sim_with(&["VM.Audit", "VM.Clone"]).await;
    let user = Raw::login_as(&sim, "auditor@pve", "pw").await;
    // Allowed: reading the config.
    let a = user.call("GET", "/nodes/pve1/qemu/9000/config", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    // VM.Clone alone is not enough: PVE's `or` (VM.Allocate on the new id or the pool)
    // fails bare.
    let a = user
        .call("POST", "/nodes/pve1/qemu/9000/clone", &[("newid", "120")])
        .await;
    assert_eq!(
        (a.status, a.message()),
        (403, "Permission check failed".into())
    );
    // A single-privilege check names path and privilege, before parameters are verified.
    let a = user
        .call(
            "POST",
            "/nodes/pve1/qemu/9000/status/start",
            &[("bogus", "1")],
        )
        .await;
    assert_eq!(
        (a.status, a.message()),
        (
            403,
            "Permission check failed (/vms/9000, VM.PowerMgmt)".into()
        )
    );
    let a = user
        .call(
            "POST",
            "/nodes/pve1/qemu/9000/agent/exec",
            &[("command", "true")],
        )
        .await;
    assert_eq!(
        a.message(),
        "Permission check failed (/vms/9000, VM.GuestAgent.Unrestricted)"
    );
    // Nothing was cloned.
    assert_eq!(sim.vmids(), vec![9000]);
    // root@pam is not bound by the list.
    let root = Raw::login(&sim).await;
    let a = root
        .call("POST", "/nodes/pve1/qemu/9000/clone", &[("newid", "120")])
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn listings_show_only_what_the_caller_may_audit() {
    let sim = sim_with(&["VM.Audit"]).await;
    let user = Raw::login_as(&sim, "auditor@pve", "pw").await;
    let types = |a: &common::Answer| {
        let mut t: Vec<String> = a
            .data()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        t.dedup();
        t
    };
    let a = user.call("GET", "/cluster/resources", &[]).await;
    assert!(types(&a).iter().all(|t| t != "storage"), "{a:?}");
    assert!(types(&a).iter().any(|t| t == "qemu"), "{a:?}");
    let a = user.call("GET", "/nodes/pve1/storage", &[]).await;
    assert_eq!(a.data().as_array().unwrap().len(), 0, "{a:?}");
    let root = Raw::login(&sim).await;
    let a = root.call("GET", "/cluster/resources", &[]).await;
    assert!(types(&a).iter().any(|t| t == "storage"), "{a:?}");
    // What the permissions route reports is what is enforced.
    let a = user
        .call("GET", "/access/permissions", &[("path", "/")])
        .await;
    assert_eq!(a.data()["/"].as_object().unwrap().len(), 1, "{a:?}");
}

#[tokio::test]
async fn a_deeper_grant_replaces_what_slash_gives_there_and_below_only() {
    let mut cfg = SimConfig::new().plain_http();
    cfg.users.push(("gc@pve".into(), "pw".into()));
    cfg.privileges = Some(vec!["Datastore.Audit".into()]);
    cfg.acl = vec![("/storage/local".into(), vec!["Datastore.Allocate".into()])];
    let sim = PveSim::start(cfg).await.unwrap();
    let user = Raw::login_as(&sim, "gc@pve", "pw").await;
    let perms = |path: &'static str| {
        let user = &user;
        async move {
            let a = user
                .call("GET", "/access/permissions", &[("path", path)])
                .await;
            a.data()[path]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        }
    };
    // PVE: the deeper entry replaces what `/` grants there (Audit is gone on local).
    assert_eq!(perms("/storage/local").await, ["Datastore.Allocate"]);
    assert_eq!(perms("/storage/local/sub").await, ["Datastore.Allocate"]);
    assert_eq!(perms("/storage/localx").await, ["Datastore.Audit"]);
    assert_eq!(perms("/storage/local-lvm").await, ["Datastore.Audit"]);
    assert_eq!(perms("/").await, ["Datastore.Audit"]);
    // Enforced the same way: deleting a volume on local-lvm is refused by path.
    let a = user
        .call(
            "DELETE",
            "/nodes/pve1/storage/local-lvm/content/local-lvm:vm-9-disk-0",
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.message()),
        (
            403,
            "Permission check failed (/storage/local-lvm, Datastore.Allocate)".into()
        )
    );
    let a = user
        .call(
            "DELETE",
            "/nodes/pve1/storage/local/content/local:iso/x.iso",
            &[],
        )
        .await;
    assert_ne!(a.status, 403, "{a:?}");
}

#[tokio::test]
async fn tasks_of_others_and_node_load_need_sys_audit() {
    let sim = sim_with(&["VM.Audit", "VM.PowerMgmt"]).await;
    let user = Raw::login_as(&sim, "auditor@pve", "pw").await;
    let root = Raw::login(&sim).await;
    // Starting a template fails in its task; that is still a task of the caller's.
    let mine = user
        .call("POST", "/nodes/pve1/qemu/9000/status/start", &[])
        .await;
    let mine = mine.data().as_str().unwrap().to_owned();
    assert!(mine.contains(":auditor@pve:"), "{mine}");
    let theirs = root
        .call("POST", "/nodes/pve1/qemu/9000/status/start", &[])
        .await;
    let theirs = theirs.data().as_str().unwrap().to_owned();
    let status = |upid: &str| {
        let path = format!("/nodes/pve1/tasks/{}/status", common::urlencode(upid));
        let user = &user;
        async move { user.call("GET", &path, &[]).await }
    };
    assert_eq!(status(&mine).await.status, 200);
    let a = status(&theirs).await;
    assert_eq!(
        (a.status, a.message()),
        (
            403,
            "Permission check failed (/nodes/pve1, Sys.Audit)".into()
        )
    );
    let listed = user.call("GET", "/cluster/tasks", &[]).await;
    let upids: Vec<&str> = listed
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["upid"].as_str().unwrap())
        .collect();
    assert_eq!(upids, [mine.as_str()]);
    // The node is listed, its load is not.
    let a = user
        .call("GET", "/cluster/resources", &[("type", "node")])
        .await;
    let node = &a.data()[0];
    assert_eq!(node["node"], "pve1");
    assert!(node.get("maxmem").is_none(), "{node}");
    let a = root
        .call("GET", "/cluster/resources", &[("type", "node")])
        .await;
    assert!(a.data()[0].get("maxmem").is_some());
}
