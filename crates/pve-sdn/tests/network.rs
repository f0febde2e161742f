//! Networks against the simulator: auto and topology create/apply/teardown, request budgets,
//! disjoint subnets under concurrency (one process and two), crash cleanup from PVE state,
//! undo on failure, existing vnets.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use pve_client::Params;
use pve_sdn::*;

fn auto() -> SdnSpec {
    SdnSpec::Auto
}

fn lowest() -> NetworkOptions {
    NetworkOptions {
        pick: AutoPick::Lowest,
        ..Default::default()
    }
}

fn topology(json: &str) -> SdnSpec {
    serde_json::from_str(json).unwrap()
}

/// An applier that fails, counting its calls.
struct FailingApplier(AtomicU32);

impl Applier for FailingApplier {
    async fn apply(&self) -> Result<(), SdnError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(SdnError::Apply {
            source: "reload failed on pve1".into(),
        })
    }
}

#[tokio::test]
async fn auto_plan_create_apply_teardown() {
    let env = common::env().await;
    let c = &env.client;
    let res = SubnetReservations::new();
    let applier = DirectApplier(c.clone());
    let ids = NetworkIds::for_sample("k3f9", 1, 0).unwrap();
    let net = create_network(c, &auto(), &ids, &lowest(), &res, &applier)
        .await
        .unwrap();
    assert_eq!(net.zone.as_deref(), Some("Zk3f9001"));
    assert_eq!(net.vnets.len(), 1);
    let v = &net.vnets[0];
    assert_eq!(v.id, "Nc0a802", "lowest free /24 of the default range");
    let s = &v.subnets[0];
    assert_eq!(s.cidr, "192.168.2.0/24");
    assert_eq!(s.gateway, "192.168.2.1");
    assert!(!s.snat, "no egress unless asked");
    assert_eq!(s.dhcp_ranges[0].start, "192.168.2.50");
    let (running, pending) = env.sim.sdn();
    assert_eq!(running, pending, "applied");
    assert_eq!(running.zones["Zk3f9001"]["ipam"], "pve");
    assert_eq!(running.zones["Zk3f9001"]["dhcp"], "dnsmasq");
    assert_eq!(running.vnets["Nc0a802"]["zone"], "Zk3f9001");
    assert_eq!(
        running.subnets["Zk3f9001-192.168.2.0-24"]["gateway"],
        "192.168.2.1"
    );
    assert_eq!(res.held().len(), 1);
    // The record round-trips.
    let json = serde_json::to_string(&net).unwrap();
    assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), net);

    let report = teardown(c, &net, &res, &applier).await.unwrap();
    assert_eq!(report.deleted.len(), 3);
    let (running, pending) = env.sim.sdn();
    assert!(running.zones.is_empty() && running.vnets.is_empty() && running.subnets.is_empty());
    assert_eq!(running, pending);
    assert!(res.held().is_empty(), "teardown releases the reservation");
}

#[tokio::test]
async fn egress_turns_snat_on() {
    let env = common::env().await;
    let opts = NetworkOptions {
        egress: Egress::Internet,
        ..lowest()
    };
    let ids = NetworkIds::for_sample("k3f9", 2, 0).unwrap();
    let net = create_network(
        &env.client,
        &auto(),
        &ids,
        &opts,
        &SubnetReservations::new(),
        &DirectApplier(env.client.clone()),
    )
    .await
    .unwrap();
    assert!(net.vnets[0].subnets[0].snat);
    assert_eq!(
        env.sim.sdn().0.subnets["Zk3f9002-192.168.2.0-24"]["snat"],
        "1"
    );
}

#[tokio::test]
async fn warm_auto_costs_one_listing_three_creates_one_apply() {
    let env = common::env().await;
    let c = &env.client;
    let res = SubnetReservations::new();
    let applier = DirectApplier(c.clone());
    // Warm: the client is logged in (token auth) and another sample's network exists.
    let first = create_network(
        c,
        &auto(),
        &NetworkIds::for_sample("k3f9", 1, 0).unwrap(),
        &lowest(),
        &res,
        &applier,
    )
    .await
    .unwrap();
    env.sim.reset_requests();
    let net = create_network(
        c,
        &auto(),
        &NetworkIds::for_sample("k3f9", 2, 0).unwrap(),
        &lowest(),
        &res,
        &applier,
    )
    .await
    .unwrap();
    assert_eq!(
        common::requests(&env.sim),
        [
            "GET /cluster/sdn/ipams/{ipam}/status",
            "POST /cluster/sdn/zones",
            "POST /cluster/sdn/vnets",
            "POST /cluster/sdn/vnets/{vnet}/subnets",
            "PUT /cluster/sdn",
        ]
    );
    assert_eq!(
        env.sim
            .request_count("GET", "/nodes/{node}/tasks/{upid}/status"),
        1,
        "the apply's task is polled once on the instant simulator"
    );
    assert_ne!(net.vnets[0].subnets[0].cidr, first.vnets[0].subnets[0].cidr);
    env.sim.reset_requests();
    teardown(c, &net, &res, &applier).await.unwrap();
    assert_eq!(
        common::requests(&env.sim),
        [
            "DELETE /cluster/sdn/vnets/{vnet}/subnets/{subnet}",
            "DELETE /cluster/sdn/vnets/{vnet}",
            "DELETE /cluster/sdn/zones/{zone}",
            "PUT /cluster/sdn",
        ]
    );
}

#[tokio::test]
async fn concurrent_samples_of_one_process_get_disjoint_subnets() {
    let env = common::env().await;
    let res = SubnetReservations::new();
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let c = env.client.clone();
        let res = res.clone();
        tasks.push(tokio::spawn(async move {
            let ids = NetworkIds::for_sample("k3f9", i, 0).unwrap();
            create_network(
                &c,
                &SdnSpec::Auto,
                &ids,
                &lowest(),
                &res,
                &DirectApplier(c.clone()),
            )
            .await
            .unwrap()
        }));
    }
    let mut cidrs = BTreeSet::new();
    for t in tasks {
        cidrs.insert(t.await.unwrap().vnets[0].subnets[0].cidr.clone());
    }
    assert_eq!(cidrs.len(), 8, "{cidrs:?}");
    assert_eq!(
        env.sim.request_count("POST", "/cluster/sdn/vnets"),
        8,
        "in-process reservations avoid every collision"
    );
    assert_eq!(env.sim.sdn().0.subnets.len(), 8);
}

#[tokio::test]
async fn another_process_holding_the_same_range_forces_a_repick() {
    let env = common::env().await;
    // Another process picked 192.168.2.0/24 and created its vnet, but not yet its subnet:
    // the listing cannot show it, only the vnet id can.
    let other = common::client(&env.sim);
    other
        .post(
            "/cluster/sdn/zones",
            &Params::new()
                .with("zone", "Zothr000")
                .with("type", "simple")
                .with("ipam", "pve"),
        )
        .await
        .unwrap();
    other
        .post(
            "/cluster/sdn/vnets",
            &Params::new()
                .with("vnet", "Nc0a802")
                .with("zone", "Zothr000"),
        )
        .await
        .unwrap();
    env.sim.reset_requests();
    let res = SubnetReservations::new();
    let net = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 5, 0).unwrap(),
        &lowest(),
        &res,
        &DirectApplier(env.client.clone()),
    )
    .await
    .unwrap();
    assert_eq!(net.vnets[0].subnets[0].cidr, "192.168.3.0/24");
    assert_eq!(
        env.sim.request_count("POST", "/cluster/sdn/vnets"),
        2,
        "one collision, one retry"
    );
    // The range seen taken is skipped by later samples without another collision.
    env.sim.reset_requests();
    let net2 = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 6, 0).unwrap(),
        &lowest(),
        &res,
        &DirectApplier(env.client.clone()),
    )
    .await
    .unwrap();
    assert_eq!(net2.vnets[0].subnets[0].cidr, "192.168.4.0/24");
    assert_eq!(env.sim.request_count("POST", "/cluster/sdn/vnets"), 1);
}

#[tokio::test]
async fn two_processes_racing_get_disjoint_subnets() {
    let env = common::env().await;
    // Two processes: separate clients, separate reservations, the same deterministic pick.
    let mut tasks = Vec::new();
    for p in 0..2u32 {
        let c = common::client(&env.sim);
        tasks.push(tokio::spawn(async move {
            let res = SubnetReservations::new();
            let mut nets = Vec::new();
            for s in 0..3u32 {
                let ids =
                    NetworkIds::for_sample(if p == 0 { "aaaa" } else { "bbbb" }, s, 0).unwrap();
                let n = create_network(
                    &c,
                    &SdnSpec::Auto,
                    &ids,
                    &lowest(),
                    &res,
                    &DirectApplier(c.clone()),
                )
                .await
                .unwrap();
                nets.push(n.vnets[0].subnets[0].cidr.clone());
            }
            nets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 6, "{all:?}");
    let (running, _) = env.sim.sdn();
    assert_eq!(running.subnets.len(), 6);
}

#[tokio::test]
async fn crash_between_create_and_apply_is_cleaned_from_pve_state() {
    let env = common::env().await;
    let c = env.client.clone();
    let (called_tx, called_rx) = tokio::sync::oneshot::channel::<()>();

    /// Signals when apply is reached, then never finishes: the process dies there.
    struct Hang(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>);
    impl Applier for Hang {
        async fn apply(&self) -> Result<(), SdnError> {
            if let Some(tx) = self.0.lock().unwrap().take() {
                let _ = tx.send(());
            }
            std::future::pending().await
        }
    }
    let spec = topology(
        r#"{"vnet_configs": [
            {"alias": "a", "subnets": [{"cidr": "10.20.0.0/24", "gateway": "10.20.0.1", "snat": false, "dhcp_ranges": [{"start": "10.20.0.10", "end": "10.20.0.20"}]}]},
            {"alias": "b", "subnets": [{"cidr": "10.21.0.0/24", "gateway": "10.21.0.1", "snat": false, "dhcp_ranges": []}]}
        ]}"#,
    );
    let task = tokio::spawn(async move {
        let ids = NetworkIds::for_sample("dead", 42, 2).unwrap();
        let applier = Hang(std::sync::Mutex::new(Some(called_tx)));
        create_network(
            &c,
            &spec,
            &ids,
            &NetworkOptions::default(),
            &SubnetReservations::new(),
            &applier,
        )
        .await
    });
    called_rx.await.unwrap();
    task.abort();
    let (running, pending) = env.sim.sdn();
    assert!(running.zones.is_empty(), "never applied");
    assert_eq!(pending.subnets.len(), 2);

    // A later process, knowing nothing but PVE's state.
    let owned = list_owned_zones(&env.client).await.unwrap();
    assert_eq!(owned, [("Zdead00g".to_owned(), "dead".to_owned(), 42)]);
    env.sim.reset_requests();
    let report = teardown_by_ids(&env.client, &owned[0].0, &DirectApplier(env.client.clone()))
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 5, "{report:?}");
    let (running, pending) = env.sim.sdn();
    assert_eq!(running, pending);
    assert!(pending.zones.is_empty() && pending.vnets.is_empty() && pending.subnets.is_empty());
    assert!(list_owned_zones(&env.client).await.unwrap().is_empty());
}

#[tokio::test]
async fn teardown_by_ids_also_removes_applied_networks() {
    let env = common::env().await;
    let c = &env.client;
    let applier = DirectApplier(c.clone());
    let ids = NetworkIds::for_sample("k3f9", 9, 0).unwrap();
    create_network(
        c,
        &auto(),
        &ids,
        &lowest(),
        &SubnetReservations::new(),
        &applier,
    )
    .await
    .unwrap();
    let r = teardown_by_ids(c, &ids.zone, &applier).await.unwrap();
    assert_eq!(r.deleted.len(), 3);
    let r = teardown_by_ids(c, &ids.zone, &applier).await.unwrap();
    assert_eq!(r.deleted, Vec::<String>::new());
    assert_eq!(r.already_gone, ["zone Zk3f9009"]);
    assert!(env.sim.sdn().0.zones.is_empty());
}

#[tokio::test]
async fn teardown_is_idempotent() {
    let env = common::env().await;
    let c = &env.client;
    let res = SubnetReservations::new();
    let applier = DirectApplier(c.clone());
    let net = create_network(
        c,
        &auto(),
        &NetworkIds::for_sample("k3f9", 3, 0).unwrap(),
        &lowest(),
        &res,
        &applier,
    )
    .await
    .unwrap();
    teardown(c, &net, &res, &applier).await.unwrap();
    let again = teardown(c, &net, &res, &applier).await.unwrap();
    assert!(again.deleted.is_empty());
    assert_eq!(again.already_gone.len(), 3);
    assert!(env.sim.sdn().0.zones.is_empty());
}

#[tokio::test]
async fn failed_apply_undoes_the_creates_and_says_so() {
    let env = common::env().await;
    let res = SubnetReservations::new();
    let applier = FailingApplier(AtomicU32::new(0));
    let e = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 4, 0).unwrap(),
        &lowest(),
        &res,
        &applier,
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("SDN apply failed"), "{msg}");
    assert!(
        msg.contains("undone: [subnet Zk3f9004-192.168.2.0-24, vnet Nc0a802, zone Zk3f9004]"),
        "{msg}"
    );
    let (running, pending) = env.sim.sdn();
    assert!(running.zones.is_empty() && pending.zones.is_empty() && pending.vnets.is_empty());
    assert!(res.held().is_empty());
}

#[tokio::test]
async fn failed_create_midway_undoes_what_was_created() {
    let env = common::env().await;
    env.sim.fail_next(
        "POST",
        "/cluster/sdn/vnets/{vnet}/subnets",
        1,
        pve_sim::FaultError::http(
            500,
            "cfs-lock 'file-sdn_cfg' error: got lock request timeout",
        ),
    );
    let e = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 5, 0).unwrap(),
        &lowest(),
        &SubnetReservations::new(),
        &DirectApplier(env.client.clone()),
    )
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("creating subnet 192.168.2.0/24 failed"),
        "{msg}"
    );
    assert!(
        msg.contains("undone: [vnet Nc0a802, zone Zk3f9005]"),
        "{msg}"
    );
    assert!(env.sim.sdn().1.zones.is_empty());
}

const TWO_VNETS: &str = r#"{
    "vnet_configs": [
        {"alias": "lan", "subnets": [{"cidr": "10.30.0.0/24", "gateway": "10.30.0.1", "snat": true,
            "dhcp_ranges": [{"start": "10.30.0.50", "end": "10.30.0.100"}]}]},
        {"alias": "dmz", "subnets": []}
    ],
    "use_pve_ipam_dnsnmasq": true
}"#;

#[tokio::test]
async fn topology_create_resolve_and_conflicts() {
    let env = common::env().await;
    let c = &env.client;
    let res = SubnetReservations::new();
    let applier = DirectApplier(c.clone());
    let spec = topology(TWO_VNETS);
    let ids = NetworkIds::for_sample("k3f9", 10, 2).unwrap();
    env.sim.reset_requests();
    let net = create_network(c, &spec, &ids, &NetworkOptions::default(), &res, &applier)
        .await
        .unwrap();
    assert_eq!(
        common::requests(&env.sim),
        [
            "GET /cluster/sdn/ipams/{ipam}/status",
            "POST /cluster/sdn/zones",
            "POST /cluster/sdn/vnets",
            "POST /cluster/sdn/vnets/{vnet}/subnets",
            "POST /cluster/sdn/vnets",
            "PUT /cluster/sdn",
        ]
    );
    assert_eq!(net.resolve_alias("lan"), Some("Ak3f900A"));
    assert_eq!(net.resolve_alias("dmz"), Some("Bk3f900A"));
    assert_eq!(net.resolve_alias("nope"), None);
    let (running, _) = env.sim.sdn();
    assert_eq!(running.vnets["Ak3f900A"]["alias"], "lan");
    assert_eq!(
        running.subnets["Zk3f900A-10.30.0.0-24"]["dhcp-range"],
        "start-address=10.30.0.50,end-address=10.30.0.100"
    );

    // The same topology again in this process: refused before any create.
    env.sim.reset_requests();
    let e = create_network(
        c,
        &spec,
        &NetworkIds::for_sample("k3f9", 11, 2).unwrap(),
        &NetworkOptions::default(),
        &res,
        &applier,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.field(),
        Some("sdn_config.vnet_configs[0].subnets[0].cidr"),
        "{e}"
    );
    assert_eq!(env.sim.request_count("POST", "/cluster/sdn/zones"), 0);
    // ... and from another process, which sees it in PVE's IPAM.
    let e = create_network(
        c,
        &spec,
        &NetworkIds::for_sample("k3f9", 11, 2).unwrap(),
        &NetworkOptions::default(),
        &SubnetReservations::new(),
        &applier,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, SdnError::SubnetInUse { ref owner, .. } if owner == "zone Zk3f900A"),
        "{e}"
    );

    // `null`: NICs attach to existing vnets by alias.
    let existing = create_network(
        c,
        &SdnSpec::Existing,
        &NetworkIds::for_sample("k3f9", 12, 0).unwrap(),
        &NetworkOptions::default(),
        &res,
        &applier,
    )
    .await
    .unwrap();
    assert_eq!(existing.zone, None);
    assert_eq!(existing.resolve_alias("dmz"), Some("Bk3f900A"));
    assert_eq!(
        teardown(c, &existing, &res, &applier).await.unwrap(),
        TeardownReport::default()
    );

    teardown(c, &net, &res, &applier).await.unwrap();
    assert!(env.sim.sdn().0.vnets.is_empty());
}

#[tokio::test]
async fn auto_avoids_applied_subnets_of_other_processes_from_the_listing() {
    let env = common::env().await;
    let applier = DirectApplier(env.client.clone());
    // Another process's applied topology holds 192.168.2.0/23.
    let other = common::client(&env.sim);
    let spec = topology(
        r#"{"vnet_configs": [{"subnets": [{"cidr": "192.168.2.0/23", "gateway": "192.168.2.1", "snat": false,
            "dhcp_ranges": [{"start": "192.168.2.10", "end": "192.168.2.20"}]}]}]}"#,
    );
    create_network(
        &other,
        &spec,
        &NetworkIds::for_sample("othr", 0, 1).unwrap(),
        &NetworkOptions::default(),
        &SubnetReservations::new(),
        &DirectApplier(other.clone()),
    )
    .await
    .unwrap();
    env.sim.reset_requests();
    let net = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 0, 0).unwrap(),
        &lowest(),
        &SubnetReservations::new(),
        &applier,
    )
    .await
    .unwrap();
    assert_eq!(
        net.vnets[0].subnets[0].cidr, "192.168.4.0/24",
        "both /24s of the /23 skipped"
    );
    assert_eq!(
        env.sim.request_count("POST", "/cluster/sdn/vnets"),
        1,
        "no collision needed"
    );

    // A configured supernet.
    let opts = NetworkOptions {
        supernet: Some("10.77.0.0/16".into()),
        ..lowest()
    };
    let net = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 1, 0).unwrap(),
        &opts,
        &SubnetReservations::new(),
        &applier,
    )
    .await
    .unwrap();
    assert_eq!(net.vnets[0].subnets[0].cidr, "10.77.0.0/24");
    assert_eq!(net.vnets[0].id, "N0a4d00");
    let bad = NetworkOptions {
        supernet: Some("10.77.0.0/25".into()),
        ..lowest()
    };
    let e = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 2, 0).unwrap(),
        &bad,
        &SubnetReservations::new(),
        &applier,
    )
    .await
    .unwrap_err();
    assert_eq!(e.field(), Some("supernet"));
    // A full supernet.
    let tiny = NetworkOptions {
        supernet: Some("10.77.0.0/24".into()),
        ..lowest()
    };
    let e = create_network(
        &env.client,
        &auto(),
        &NetworkIds::for_sample("k3f9", 3, 0).unwrap(),
        &tiny,
        &SubnetReservations::new(),
        &applier,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("no free /24 left in 10.77.0.0/24"),
        "{e}"
    );
    assert!(e.to_string().contains("undone: [zone Zk3f9003]"), "{e}");
}
