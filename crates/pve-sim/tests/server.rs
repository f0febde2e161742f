//! The simulator's HTTP surface: auth and CSRF like PVE, validation, envelope, SDN pending
//! state, faults and the request log. Raw HTTP only (see `common.rs`).

mod common;

use std::time::Duration;

use common::{Raw, http, sim};
use pve_sim::{PveSim, SimConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn auth_like_pve() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    assert!(raw.ticket.starts_with("PVE:root@pam:"), "{}", raw.ticket);
    let c = http();
    let base = &raw.base;
    let r = c.get(format!("{base}/version")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.status().canonical_reason(), Some("Unauthorized"));
    let r = c
        .get(format!("{base}/version"))
        .header("Cookie", "PVEAuthCookie=PVE:root@pam:00000000::forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Writes need the CSRF token with a ticket...
    let r = c
        .post(format!("{base}/pools"))
        .header("Cookie", format!("PVEAuthCookie={}", raw.ticket))
        .form(&[("poolid", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Permission denied - invalid csrf token\n"
    );
    // ...but not with an API token.
    let (id, secret) = sim.config().tokens[0].clone();
    let r = c
        .post(format!("{base}/pools"))
        .header("Authorization", format!("PVEAPIToken={id}={secret}"))
        .form(&[("poolid", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .get(format!("{base}/version"))
        .header("Authorization", format!("PVEAPIToken={id}=wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A ticket renews itself when sent as the password.
    let r: Value = c
        .post(format!("{base}/access/ticket"))
        .form(&[("username", "root@pam"), ("password", raw.ticket.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(r["data"]["ticket"], json!(raw.ticket));
}

#[tokio::test]
async fn tickets_expire() {
    let sim = PveSim::start(
        SimConfig::new()
            .plain_http()
            .ticket_lifetime(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    let raw = Raw::login(&sim).await;
    // A 1 ms lifetime has passed by the time the next request is parsed.
    let mut status = 200;
    for _ in 0..1000 {
        status = raw.call("GET", "/version", &[]).await.status;
        if status == 401 {
            break;
        }
    }
    assert_eq!(status, 401);
    let raw2 = Raw::login(&sim).await;
    sim.expire_all_tickets();
    assert_eq!(raw2.call("GET", "/version", &[]).await.status, 401);
}

#[tokio::test]
async fn validation_and_unknown_routes() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    let a = raw
        .call(
            "POST",
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "42"), ("bogus", "1")],
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.message(), "Parameter verification failed.");
    assert_eq!(
        a.body["errors"],
        json!({"newid": "value must have a minimum value of 100", "bogus": "property is not defined in schema and the schema does not allow additional properties"})
    );
    let a = raw
        .call("GET", "/nodes/pve1/qemu/9000/frobnicate", &[])
        .await;
    assert_eq!(a.status, 501);
    let a = raw.call("PATCH", "/version", &[]).await;
    assert_eq!(a.status, 501);
    let a = raw.call("GET", "/nodes/nosuchnode/qemu", &[]).await;
    assert_eq!(a.status, 500);
    assert!(
        a.message().contains("hostname lookup 'nosuchnode' failed"),
        "{a:?}"
    );
}

#[tokio::test]
async fn json_bodies_and_array_parameters() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    let r = raw
        .http
        .post(format!("{}/nodes/pve1/qemu", raw.base))
        .header("Cookie", format!("PVEAuthCookie={}", raw.ticket))
        .header("CSRFPreventionToken", &raw.csrf)
        .json(&json!({"vmid": 120, "name": "viajson", "memory": "1024", "scsi0": "local-lvm:1", "agent": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cfg = raw.call("GET", "/nodes/pve1/qemu/120/config", &[]).await;
    assert_eq!(cfg.data()["agent"], "1");
    assert_eq!(cfg.data()["scsi0"], "local-lvm:vm-120-disk-0,size=1G");
    // A scalar parameter given twice is an error, as in PVE.
    let a = raw
        .call(
            "PUT",
            "/nodes/pve1/qemu/120/config",
            &[("name", "a"), ("name", "b")],
        )
        .await;
    assert_eq!(a.status, 400, "{a:?}");
}

#[tokio::test]
async fn sdn_changes_pend_until_applied() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    assert_eq!(
        raw.call(
            "POST",
            "/cluster/sdn/zones",
            &[("zone", "z1"), ("type", "simple"), ("dhcp", "dnsmasq")]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        raw.call(
            "POST",
            "/cluster/sdn/vnets",
            &[("vnet", "v1"), ("zone", "z1")]
        )
        .await
        .status,
        200
    );
    let a = raw
        .call(
            "POST",
            "/cluster/sdn/vnets/v1/subnets",
            &[
                ("subnet", "10.9.0.0/24"),
                ("type", "subnet"),
                ("gateway", "10.9.0.1"),
                ("snat", "1"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        raw.call("GET", "/cluster/sdn/zones", &[("running", "1")])
            .await
            .data(),
        &json!([]),
        "running view is empty before apply"
    );
    let pending = raw
        .call("GET", "/cluster/sdn/zones", &[("pending", "1")])
        .await;
    assert_eq!(pending.data()[0]["state"], "new");
    let upid = raw.call("PUT", "/cluster/sdn", &[]).await;
    assert_eq!(raw.task_exit(upid.data().as_str().unwrap()).await, "OK");
    let zones = raw.call("GET", "/cluster/sdn/zones", &[]).await;
    assert_eq!(zones.data()[0]["zone"], "z1");
    let subnets = raw.call("GET", "/cluster/sdn/vnets/v1/subnets", &[]).await;
    assert_eq!(subnets.data()[0]["subnet"], "z1-10.9.0.0-24");
    let a = raw.call("DELETE", "/cluster/sdn/zones/z1", &[]).await;
    assert_eq!(a.status, 500, "zone still has a vnet: {a:?}");
    let (running, pending) = sim.sdn();
    assert_eq!(running, pending);
}

#[tokio::test]
async fn request_log_and_faults() {
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    sim.reset_requests();
    raw.call("GET", "/version", &[]).await;
    raw.call("GET", "/nodes/pve1/qemu", &[]).await;
    raw.call("GET", "/nodes/pve1/qemu", &[]).await;
    assert_eq!(sim.request_count("GET", "/nodes/{node}/qemu"), 2);
    assert_eq!(sim.requests().counts().get("GET /version"), Some(&1));
    sim.fail_next(
        "GET",
        "/version",
        1,
        pve_sim::FaultError::http(503, "Service Unavailable"),
    );
    assert_eq!(raw.call("GET", "/version", &[]).await.status, 503);
    assert_eq!(raw.call("GET", "/version", &[]).await.status, 200);
    sim.drop_connections(1);
    let r = raw
        .http
        .get(format!("{}/version", raw.base))
        .header("Cookie", format!("PVEAuthCookie={}", raw.ticket))
        .send()
        .await;
    assert!(r.is_err(), "connection dropped");
}
