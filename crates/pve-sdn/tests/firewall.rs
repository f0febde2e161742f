//! VM isolation rules after `vm_firewall`, the egress group, and their REST cost.

mod common;

use pve_sdn::*;
use pve_sim::VmSeed;

#[tokio::test]
async fn vm_firewall_isolates_and_egress_adds_the_group() {
    let env = common::env().await;
    let c = &env.client;
    env.sim.add_vm(
        VmSeed::vm(101, "a").with("net0", "virtio=BC:24:11:00:00:01,bridge=Nc0a802,firewall=1"),
    );
    env.sim.add_vm(VmSeed::vm(102, "b"));
    let res = SubnetReservations::new();
    let applier = DirectApplier(c.clone());
    let opts = NetworkOptions {
        pick: AutoPick::Lowest,
        ..Default::default()
    };
    let net = create_network(
        c,
        &SdnSpec::Auto,
        &NetworkIds::for_sample("k3f9", 1, 0).unwrap(),
        &opts,
        &res,
        &applier,
    )
    .await
    .unwrap();

    assert!(
        !cluster_firewall_enabled(c).await.unwrap(),
        "the simulator starts with it off, like PVE"
    );
    env.sim.reset_requests();
    let r = vm_firewall(c, common::NODE, pve_client::Vmid(101), &net)
        .await
        .unwrap();
    assert_eq!(r, FirewallReport { calls: 4, rules: 3 });
    assert_eq!(
        common::requests(&env.sim).len(),
        4,
        "{:?}",
        common::requests(&env.sim)
    );
    let fw = env.sim.firewall();
    let vm = &fw.vms[&101];
    assert_eq!(vm.options["enable"], "1");
    assert_eq!(vm.options["policy_in"], "DROP");
    assert_eq!(vm.options["policy_out"], "DROP");
    let rules: Vec<(&str, &str, &str, &str)> = vm
        .rules
        .iter()
        .map(|r| {
            let g = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
            (g("type"), g("action"), g("dest"), g("source"))
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("out", "ACCEPT", "192.168.2.1", ""),
            ("out", "ACCEPT", "192.168.2.0,192.168.2.2-192.168.2.255", ""),
            ("in", "ACCEPT", "", "192.168.2.0/24"),
        ]
    );
    assert_eq!(vm.rules[0]["macro"], "DNS");

    // Egress: the cluster group once, then one more rule per VM.
    let net = Network {
        egress: Egress::Internet,
        ..net
    };
    let e = vm_firewall(c, common::NODE, pve_client::Vmid(102), &net)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("security group 'pvesb-egress' does not exist"),
        "{e}"
    );
    ensure_firewall_base(c, &["203.0.113.7".to_owned()])
        .await
        .unwrap();
    env.sim.reset_requests();
    ensure_firewall_base(c, &[]).await.unwrap();
    assert_eq!(
        common::requests(&env.sim),
        ["GET /cluster/firewall/groups/{group}"],
        "warm: one call"
    );
    let group = &env.sim.firewall().groups[EGRESS_GROUP];
    assert_eq!(group.rules.len(), 2);
    assert_eq!(group.rules[0]["action"], "DROP");
    assert!(
        group.rules[0]["dest"].contains("169.254.0.0/16")
            && group.rules[0]["dest"].ends_with("203.0.113.7")
    );
    assert_eq!(group.rules[1]["action"], "ACCEPT");

    // 102 got its options and three rules before the failure; a VM is set up once, so use a fresh one.
    env.sim.add_vm(VmSeed::vm(103, "c"));
    let r = vm_firewall(c, common::NODE, pve_client::Vmid(103), &net)
        .await
        .unwrap();
    assert_eq!(r, FirewallReport { calls: 5, rules: 4 });
    let vm = &env.sim.firewall().vms[&103];
    assert_eq!(vm.rules[3]["type"], "group");
    assert_eq!(vm.rules[3]["action"], EGRESS_GROUP);

    // Existing vnets: the administrator owns isolation.
    let existing = Network {
        zone: None,
        vnets: vec![],
        existing: vec![],
        egress: Egress::None,
    };
    assert_eq!(
        vm_firewall(c, common::NODE, pve_client::Vmid(101), &existing)
            .await
            .unwrap()
            .calls,
        0
    );

    assert!(
        ensure_firewall_base(c, &["not-an-ip".into()])
            .await
            .is_err()
    );
}
