//! SDN and firewall as PVE answers them: pending listings in PVE's shape, 8-character ids,
//! PVE's wording for in-use and missing objects, subnet checks, IPAM status including pending
//! subnets, apply as a task that takes its modelled time, security groups and VM rules.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, sim};
use pve_sim::{LatencyProfile, PveSim, SimConfig};
use serde_json::json;

async fn zone_vnet_subnet(raw: &Raw) {
    for (m, p, params) in [
        (
            "POST",
            "/cluster/sdn/zones",
            vec![
                ("zone", "zone1"),
                ("type", "simple"),
                ("ipam", "pve"),
                ("dhcp", "dnsmasq"),
            ],
        ),
        (
            "POST",
            "/cluster/sdn/vnets",
            vec![("vnet", "vnet1"), ("zone", "zone1"), ("alias", "lan side")],
        ),
        (
            "POST",
            "/cluster/sdn/vnets/vnet1/subnets",
            vec![
                ("subnet", "10.9.0.0/24"),
                ("type", "subnet"),
                ("gateway", "10.9.0.1"),
                (
                    "dhcp-range",
                    "start-address=10.9.0.50,end-address=10.9.0.60",
                ),
            ],
        ),
    ] {
        let a = raw.call(m, p, &params).await;
        assert_eq!(a.status, 200, "{p}: {a:?}");
    }
}

#[tokio::test]
async fn pending_listings_have_pves_shape() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    zone_vnet_subnet(&raw).await;
    let vnets = raw
        .call("GET", "/cluster/sdn/vnets", &[("pending", "1")])
        .await;
    assert_eq!(
        vnets.data(),
        &json!([{"vnet": "vnet1", "state": "new", "pending": {"zone": "zone1", "alias": "lan side"}}])
    );
    let subnets = raw
        .call(
            "GET",
            "/cluster/sdn/vnets/vnet1/subnets",
            &[("pending", "1")],
        )
        .await;
    let s = &subnets.data()[0];
    assert_eq!(s["subnet"], "zone1-10.9.0.0-24");
    assert_eq!(
        (&s["vnet"], &s["type"], &s["state"]),
        (&json!("vnet1"), &json!("subnet"), &json!("new"))
    );
    assert_eq!(
        (&s["zone"], &s["cidr"], &s["mask"]),
        (&json!("zone1"), &json!("10.9.0.0/24"), &json!("24"))
    );
    assert_eq!(s["pending"]["gateway"], "10.9.0.1");
    // pve-network's index handlers list the edited configuration unless asked otherwise:
    // a vnet nobody applied yet is listed, but not among the running ones.
    assert_eq!(
        raw.call("GET", "/cluster/sdn/vnets", &[]).await.data(),
        &json!([{"vnet": "vnet1", "zone": "zone1", "alias": "lan side"}])
    );
    assert_eq!(
        raw.call("GET", "/cluster/sdn/vnets", &[("running", "1")])
            .await
            .data(),
        &json!([])
    );

    let upid = raw.call("PUT", "/cluster/sdn", &[]).await;
    assert_eq!(raw.task_exit(upid.data().as_str().unwrap()).await, "OK");
    let a = raw
        .call("PUT", "/cluster/sdn/vnets/vnet1", &[("alias", "renamed")])
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let vnets = raw
        .call("GET", "/cluster/sdn/vnets", &[("pending", "1")])
        .await;
    assert_eq!(
        vnets.data(),
        &json!([{"vnet": "vnet1", "zone": "zone1", "alias": "lan side", "state": "changed", "pending": {"alias": "renamed"}}])
    );
    let a = raw
        .call(
            "DELETE",
            "/cluster/sdn/vnets/vnet1/subnets/zone1-10.9.0.0-24",
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let subnets = raw
        .call(
            "GET",
            "/cluster/sdn/vnets/vnet1/subnets",
            &[("pending", "1")],
        )
        .await;
    assert_eq!(subnets.data()[0]["state"], "deleted");
    assert!(subnets.data()[0].get("pending").is_none());
}

#[tokio::test]
async fn ids_in_use_and_missing_objects_answer_like_pve() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/zones",
            &[("zone", "zone12345"), ("type", "simple")],
        )
        .await;
    assert_eq!(a.status, 400, "9 characters: {a:?}");
    assert!(a.body["errors"]["zone"].is_string(), "{a:?}");
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/vnets",
            &[("vnet", "vnet1"), ("zone", "nozone")],
        )
        .await;
    assert_eq!(
        (a.status, a.message()),
        (500, "sdn zone 'nozone' does not exist".into())
    );
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/vnets/novnet/subnets",
            &[("subnet", "10.1.0.0/24"), ("type", "subnet")],
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["errors"]["vnet"], "novnet don't exist");
    zone_vnet_subnet(&raw).await;
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/zones",
            &[("zone", "zone1"), ("type", "simple")],
        )
        .await;
    assert_eq!(
        (a.status, a.message()),
        (500, "sdn zone object ID 'zone1' already defined".into())
    );
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/vnets",
            &[("vnet", "vnet1"), ("zone", "zone1")],
        )
        .await;
    assert_eq!(
        (a.status, a.message()),
        (500, "sdn vnet object ID 'vnet1' already defined".into())
    );
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/vnets/vnet1/subnets",
            &[("subnet", "10.9.0.0/24"), ("type", "subnet")],
        )
        .await;
    assert_eq!(
        (a.status, a.message()),
        (
            500,
            "sdn subnet object ID 'zone1-10.9.0.0-24' already defined".into()
        )
    );
    let a = raw.call("DELETE", "/cluster/sdn/zones/zone1", &[]).await;
    assert_eq!(
        (a.status, a.message()),
        (500, "zone zone1 is used by vnet vnet1".into())
    );
    let a = raw.call("DELETE", "/cluster/sdn/vnets/vnet1", &[]).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["errors"]["vnet"],
        "Can't delete vnet if subnets exists"
    );
    let a = raw
        .call(
            "DELETE",
            "/cluster/sdn/vnets/vnet1/subnets/zone1-10.8.0.0-24",
            &[],
        )
        .await;
    assert_eq!(
        (a.status, a.message()),
        (500, "sdn subnet 'zone1-10.8.0.0-24' does not exist".into())
    );
    let a = raw.call("GET", "/cluster/sdn/zones/zone9", &[]).await;
    assert_eq!(
        (a.status, a.message()),
        (500, "sdn zone 'zone9' does not exist".into())
    );
    // PVE does not refuse an overlapping subnet in another simple zone (the host routes both:
    // avoiding that is the caller's job).
    raw.call(
        "POST",
        "/cluster/sdn/zones",
        &[("zone", "zone2"), ("type", "simple")],
    )
    .await;
    raw.call(
        "POST",
        "/cluster/sdn/vnets",
        &[("vnet", "vnet2"), ("zone", "zone2")],
    )
    .await;
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/vnets/vnet2/subnets",
            &[("subnet", "10.9.0.0/16"), ("type", "subnet")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn subnet_gateway_and_dhcp_ranges_are_checked() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    raw.call(
        "POST",
        "/cluster/sdn/zones",
        &[("zone", "zone1"), ("type", "simple")],
    )
    .await;
    raw.call(
        "POST",
        "/cluster/sdn/vnets",
        &[("vnet", "vnet1"), ("zone", "zone1")],
    )
    .await;
    /// Extra parameters, the field PVE blames, its message.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        (
            &[("gateway", "10.2.0.1")],
            "gateway",
            "10.2.0.1 is not in subnet 10.9.0.0/24",
        ),
        (
            &[("dhcp-range", "start-address=10.9.0.9,end-address=10.9.0.5")],
            "dhcp-range",
            "start-address 10.9.0.9 must be smaller than end-address 10.9.0.5",
        ),
        (
            &[("dhcp-range", "start-address=10.8.0.9,end-address=10.9.0.5")],
            "dhcp-range",
            "start-address 10.8.0.9 is not in subnet 10.9.0.0/24",
        ),
        (
            &[("dhcp-range", "start-address=10.9.0.9,end-address=10.9.1.5")],
            "dhcp-range",
            "end-address 10.9.1.5 is not in subnet 10.9.0.0/24",
        ),
        (
            &[
                ("dhcp-range", "start-address=10.9.0.9,end-address=10.9.0.20"),
                (
                    "dhcp-range",
                    "start-address=10.9.0.20,end-address=10.9.0.30",
                ),
            ],
            "dhcp-range",
            "dhcp ranges must not overlap",
        ),
    ];
    for (extra, field, msg) in cases {
        let mut p = vec![("subnet", "10.9.0.0/24"), ("type", "subnet")];
        p.extend_from_slice(extra);
        let a = raw
            .call("POST", "/cluster/sdn/vnets/vnet1/subnets", &p)
            .await;
        assert_eq!(a.status, 400, "{extra:?}: {a:?}");
        assert_eq!(a.body["errors"][field], *msg);
    }
    assert!(sim.sdn().1.subnets.is_empty());
}

#[tokio::test]
async fn ipam_status_reports_applied_dhcp_zones_only() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    zone_vnet_subnet(&raw).await;
    // A zone with IPAM but no DHCP is never reported.
    raw.call(
        "POST",
        "/cluster/sdn/zones",
        &[("zone", "nodhcp"), ("type", "simple"), ("ipam", "pve")],
    )
    .await;
    raw.call(
        "POST",
        "/cluster/sdn/vnets",
        &[("vnet", "vnet2"), ("zone", "nodhcp")],
    )
    .await;
    raw.call(
        "POST",
        "/cluster/sdn/vnets/vnet2/subnets",
        &[
            ("subnet", "10.7.0.0/24"),
            ("type", "subnet"),
            ("gateway", "10.7.0.1"),
        ],
    )
    .await;
    let status = || raw.call("GET", "/cluster/sdn/ipams/pve/status", &[]);
    assert_eq!(
        status().await.data(),
        &json!([]),
        "pending zones are not reported"
    );
    let upid = raw.call("PUT", "/cluster/sdn", &[]).await;
    assert_eq!(raw.task_exit(upid.data().as_str().unwrap()).await, "OK");
    let entry = json!({"zone": "zone1", "vnet": "vnet1", "subnet": "10.9.0.0/24", "ip": "10.9.0.1", "hostname": "vnet1-gw", "gateway": 1});
    assert_eq!(status().await.data(), &json!([entry.clone()]));
    // The IPAM forgets a subnet when it is deleted, before any apply.
    raw.call(
        "POST",
        "/cluster/sdn/vnets/vnet1/subnets",
        &[
            ("subnet", "10.9.1.0/24"),
            ("type", "subnet"),
            ("gateway", "10.9.1.1"),
        ],
    )
    .await;
    assert_eq!(
        status().await.data().as_array().unwrap().len(),
        2,
        "a new subnet of an applied vnet shows at once"
    );
    raw.call(
        "DELETE",
        "/cluster/sdn/vnets/vnet1/subnets/zone1-10.9.1.0-24",
        &[],
    )
    .await;
    assert_eq!(status().await.data(), &json!([entry]));
    let a = raw
        .call("GET", "/cluster/sdn/ipams/netbox/status", &[])
        .await;
    assert_eq!(
        (a.status, a.message()),
        (500, "Currently only PVE IPAM is supported!".into())
    );
}

#[tokio::test]
async fn apply_is_a_task_that_takes_its_modelled_time() {
    // SDN reload is modelled at 2 s; a factor of 0.25 makes it 500 ms.
    let sim = PveSim::start(
        SimConfig::new()
            .plain_http()
            .latency(LatencyProfile::Realistic { time_factor: 0.25 }),
    )
    .await
    .unwrap();
    let raw = Raw::login(&sim).await;
    zone_vnet_subnet(&raw).await;
    let started = Instant::now();
    let upid = raw
        .call("PUT", "/cluster/sdn", &[])
        .await
        .data()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(upid.contains(":reloadnetworkall:"), "{upid}");
    let path = format!("/nodes/pve1/tasks/{}/status", common::urlencode(&upid));
    let first = raw.call("GET", &path, &[]).await;
    assert_eq!(first.data()["status"], "running");
    assert!(
        sim.sdn().0.zones.is_empty(),
        "not applied while the task runs"
    );
    let mut interval = Duration::from_millis(2);
    loop {
        let a = raw.call("GET", &path, &[]).await;
        if a.data()["status"] == "stopped" {
            assert_eq!(a.data()["exitstatus"], "OK");
            break;
        }
        tokio::time::sleep(interval).await; // polling backoff, not synchronisation
        interval = (interval * 2).min(Duration::from_millis(50));
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(sim.sdn().0.zones.contains_key("zone1"));
}

#[tokio::test]
async fn security_groups_and_vm_rules() {
    let sim = sim().await;
    sim.add_vm(pve_sim::VmSeed::vm(101, "a"));
    let raw = Raw::login(&sim).await;
    let ok = |a: common::Answer| assert_eq!(a.status, 200, "{a:?}");
    ok(raw
        .call(
            "POST",
            "/cluster/firewall/groups",
            &[("group", "sbx"), ("comment", "c")],
        )
        .await);
    let a = raw
        .call("POST", "/cluster/firewall/groups", &[("group", "sbx")])
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["errors"]["group"],
        "Security group 'sbx' already exists"
    );
    // Without `pos` a rule goes to the top; with it, to that position.
    ok(raw
        .call(
            "POST",
            "/cluster/firewall/groups/sbx",
            &[("type", "out"), ("action", "ACCEPT")],
        )
        .await);
    ok(raw
        .call(
            "POST",
            "/cluster/firewall/groups/sbx",
            &[("type", "out"), ("action", "DROP"), ("dest", "10.0.0.0/8")],
        )
        .await);
    let rules = raw.call("GET", "/cluster/firewall/groups/sbx", &[]).await;
    assert_eq!(rules.data()[0]["action"], "DROP");
    assert_eq!(rules.data()[1]["pos"], 1);
    let a = raw
        .call("DELETE", "/cluster/firewall/groups/sbx", &[])
        .await;
    assert_eq!(
        (a.status, a.message()),
        (500, "Security group 'sbx' is not empty".into())
    );

    let a = raw
        .call(
            "POST",
            "/nodes/pve1/qemu/101/firewall/rules",
            &[("type", "group"), ("action", "nosuch")],
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["errors"]["action"],
        "security group 'nosuch' does not exist"
    );
    ok(raw
        .call(
            "POST",
            "/nodes/pve1/qemu/101/firewall/rules",
            &[("type", "in"), ("action", "ACCEPT"), ("pos", "0")],
        )
        .await);
    ok(raw
        .call(
            "POST",
            "/nodes/pve1/qemu/101/firewall/rules",
            &[("type", "group"), ("action", "sbx"), ("pos", "5")],
        )
        .await);
    let rules = raw
        .call("GET", "/nodes/pve1/qemu/101/firewall/rules", &[])
        .await;
    assert_eq!(
        rules.data()[1]["action"],
        "sbx",
        "a position past the end appends"
    );
    ok(raw
        .call(
            "PUT",
            "/nodes/pve1/qemu/101/firewall/options",
            &[("enable", "1"), ("policy_out", "DROP")],
        )
        .await);
    let o = raw
        .call("GET", "/nodes/pve1/qemu/101/firewall/options", &[])
        .await;
    assert_eq!(
        (
            &o.data()["enable"],
            &o.data()["policy_out"],
            &o.data()["dhcp"]
        ),
        (&json!(1), &json!("DROP"), &json!(1))
    );
    let a = raw
        .call(
            "PUT",
            "/nodes/pve1/qemu/101/firewall/options",
            &[("delete", "nosuch")],
        )
        .await;
    assert_eq!(a.body["errors"]["delete"], "no such option 'nosuch'");
    ok(raw
        .call("PUT", "/cluster/firewall/options", &[("enable", "1")])
        .await);
    assert_eq!(
        raw.call("GET", "/cluster/firewall/options", &[])
            .await
            .data()["enable"],
        1
    );

    // Destroying the VM drops its firewall config.
    let upid = raw.call("DELETE", "/nodes/pve1/qemu/101", &[]).await;
    assert_eq!(raw.task_exit(upid.data().as_str().unwrap()).await, "OK");
    assert!(sim.firewall().vms.is_empty());
}
