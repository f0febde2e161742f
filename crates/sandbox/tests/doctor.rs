//! `doctor` against the simulator: what passes on a prepared host, and what it names when not.

use pve_sim::{PveSim, SimConfig};
use pvesandbox::preflight::{PRIVILEGES, Status, check_instance};
use pvesandbox_pool::InstanceConfig;

fn instance(sim: &PveSim, storage: &str) -> InstanceConfig {
    let (id, secret) = sim.config().tokens[0].clone();
    serde_json::from_value(serde_json::json!({
        "instance_id": "sim", "pool_id": "default", "host": "127.0.0.1",
        "port": sim.addr().port(), "node": "pve1", "token_id": id, "token_secret": secret,
        "fingerprint": sim.fingerprint(), "image_storage": storage,
    }))
    .unwrap()
}

fn status(checks: &[pvesandbox::preflight::Check], name: &str) -> (Status, String) {
    let c = checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {checks:?}"));
    (c.status, c.detail.clone())
}

#[tokio::test]
async fn a_prepared_host_passes_and_an_unprepared_one_is_told_what_to_fix() {
    let sim = PveSim::start(SimConfig::new()).await.unwrap();
    let checks = check_instance(&instance(&sim, "local-lvm")).await;
    for name in [
        "connect",
        "version",
        "privileges",
        "gc",
        "storage",
        "import",
        "sdn",
    ] {
        assert_eq!(status(&checks, name).0, Status::Pass, "{name}: {checks:#?}");
    }
    // PVE ships with the datacenter firewall off: samples would not be isolated.
    let (s, detail) = status(&checks, "firewall");
    assert_eq!(s, Status::Fail);
    assert!(detail.contains("NOT isolated"), "{detail}");
    let client = instance(&sim, "local-lvm").client().unwrap();
    client
        .put(
            "/cluster/firewall/options",
            &pve_client::Params::new().with("enable", 1),
        )
        .await
        .unwrap();
    let checks = check_instance(&instance(&sim, "local-lvm")).await;
    assert_eq!(status(&checks, "firewall").0, Status::Pass);

    // A storage that cannot hold disks is named, with the ones that exist.
    let checks = check_instance(&instance(&sim, "local")).await;
    let (s, detail) = status(&checks, "storage");
    assert_eq!(s, Status::Fail);
    assert!(
        detail.contains("\"local\"") && detail.contains("local-lvm"),
        "{detail}"
    );
}

#[tokio::test]
async fn missing_privileges_are_listed_with_the_role_that_grants_them() {
    let mut cfg = SimConfig::new();
    cfg.privileges = Some(
        PRIVILEGES
            .iter()
            .filter(|p| **p != "VM.GuestAgent.Unrestricted" && **p != "SDN.Use")
            .map(|p| p.to_string())
            .collect(),
    );
    let sim = PveSim::start(cfg).await.unwrap();
    let checks = check_instance(&instance(&sim, "local-lvm")).await;
    // No grant on the file storage either: gc is told, the rest still works.
    let (s, detail) = status(&checks, "gc");
    assert_eq!(s, Status::Warn, "{detail}");
    assert!(
        detail.contains("/storage/local") && detail.contains("PVESandboxGC"),
        "{detail}"
    );
    let (s, detail) = status(&checks, "privileges");
    assert_eq!(s, Status::Fail);
    assert!(
        detail.starts_with("missing on /: VM.GuestAgent.Unrestricted, SDN.Use")
            || detail.starts_with("missing on /: SDN.Use, VM.GuestAgent.Unrestricted"),
        "{detail}"
    );
    assert!(detail.contains("pveum role add PVESandbox"), "{detail}");
}

#[tokio::test]
async fn egress_readiness_follows_the_group_and_sys_modify() {
    let mut cfg = SimConfig::new();
    cfg.privileges = Some(PRIVILEGES.iter().map(|p| p.to_string()).collect());
    let sim = PveSim::start(cfg).await.unwrap();
    let inst = instance(&sim, "local-lvm");
    // The documented role lacks Sys.Modify: egress needs an administrator once.
    let (s, detail) = status(&check_instance(&inst).await, "egress");
    assert_eq!(s, Status::Warn, "{detail}");
    assert!(detail.contains("Sys.Modify"), "{detail}");
    // The same token cannot create the group itself (the simulator enforces PVE's rule)...
    let token = inst.client().unwrap();
    let err = pve_sdn::ensure_firewall_base(&token, &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("administrator"), "{err}");
    // ...an administrator can, and then the token is ready for egress.
    let admin: InstanceConfig = serde_json::from_value(serde_json::json!({
        "instance_id": "admin", "pool_id": "default", "host": "127.0.0.1",
        "port": sim.addr().port(), "node": "pve1", "user": "root", "user_realm": "pam",
        "password": sim.config().users[0].1, "fingerprint": sim.fingerprint(),
    }))
    .unwrap();
    let admin = admin.client().unwrap();
    pve_sdn::ensure_firewall_base(&admin, &[]).await.unwrap();
    let (s, detail) = status(&check_instance(&inst).await, "egress");
    assert_eq!(s, Status::Pass, "{detail}");
}

/// PVE's ACL entry on a storage replaces what `/` grants there: granting only gc's role on
/// it would break downloads to it. Doctor tells that apart from the right grant.
#[tokio::test]
async fn a_storage_grant_without_the_main_role_is_caught() {
    use pvesandbox::preflight::STORAGE_PRIVILEGES;
    let main: Vec<String> = PRIVILEGES.iter().map(|p| p.to_string()).collect();
    let gc: Vec<String> = STORAGE_PRIVILEGES.iter().map(|p| p.to_string()).collect();
    for (entry, want) in [
        (gc.clone(), Status::Fail),
        ([main.clone(), gc.clone()].concat(), Status::Pass),
    ] {
        let mut cfg = SimConfig::new();
        cfg.privileges = Some(main.clone());
        cfg.acl = vec![("/storage/local".into(), entry)];
        let sim = PveSim::start(cfg).await.unwrap();
        let checks = check_instance(&instance(&sim, "local-lvm")).await;
        let (s, detail) = status(&checks, "gc");
        assert_eq!(s, want, "{detail}");
        if want == Status::Fail {
            assert!(
                detail.contains("Datastore.AllocateTemplate") && detail.contains("replaces"),
                "{detail}"
            );
        }
        assert_eq!(status(&checks, "privileges").0, Status::Pass);
    }
}
