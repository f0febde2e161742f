//! Places where the simulator once answered otherwise than PVE 9.2 does, each pinned to the
//! PVE source that shows the real behaviour: tags normalised on store, volume ids with `/`,
//! volume deletion as an `imgdel` task, subnet listings' `id` and `dhcp-range`, SDN listing
//! views, CD-ROM media changes on a running VM, gzip, and `qmtemplate`'s order of work.

mod common;

use std::io::Read;

use common::{Raw, sim, urlencode};
use pve_sim::{LatencyProfile, PveSim, Seed, SimConfig, TagStyle, VmSeed};
use serde_json::{Value, json};

async fn config(raw: &Raw, vmid: u32) -> Value {
    raw.call("GET", &format!("/nodes/pve1/qemu/{vmid}/config"), &[])
        .await
        .data()
        .clone()
}

#[tokio::test]
async fn tags_are_normalised_on_create_and_update() {
    // pve-guest-common `get_unique_tags`: split on `,;` and whitespace, lower-cased, sorted,
    // de-duplicated, joined with `;`.
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    let a = raw
        .call(
            "POST",
            "/nodes/pve1/qemu",
            &[("vmid", "200"), ("tags", "web,Prod;b  a;prod")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(config(&raw, 200).await["tags"], "a;b;prod;web");
    let a = raw
        .call(
            "PUT",
            "/nodes/pve1/qemu/200/config",
            &[("tags", "Zed alpha,zed")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(config(&raw, 200).await["tags"], "alpha;zed");

    // tag-style case-sensitive=1,ordering=config keeps case and order, still de-duplicated.
    let sim = PveSim::start(SimConfig {
        tag_style: TagStyle {
            case_sensitive: true,
            ordering_config: true,
        },
        ..SimConfig::new().plain_http()
    })
    .await
    .unwrap();
    let raw = Raw::login(&sim).await;
    raw.call(
        "POST",
        "/nodes/pve1/qemu",
        &[("vmid", "200"), ("tags", "Web,a;Web,web")],
    )
    .await;
    assert_eq!(config(&raw, 200).await["tags"], "Web;a;web");
}

#[tokio::test]
async fn volume_ids_with_slashes_address_one_volume() {
    // pve-storage mounts the content API with an empty fragment delimiter: everything after
    // `content/` is the volume id, for GET, PUT, POST and DELETE alike.
    let sim = sim().await;
    sim.seed(
        &Seed::from_json(
            r#"{"volumes": [{"storage": "local", "content": "iso", "filename": "x.iso", "size": 4096}]}"#,
        )
        .unwrap(),
    )
    .unwrap();
    let raw = Raw::login(&sim).await;
    let base = "/nodes/pve1/storage/local/content";
    let a = raw
        .call("GET", &format!("{base}/local:iso/x.iso"), &[])
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.data(),
        &json!({"path": "/var/lib/vz/template/iso/x.iso", "size": 4096, "used": 4096, "format": "iso"})
    );
    // The same volume with its `/` percent-encoded, and by name alone.
    for v in ["local%3Aiso%2Fx.iso", "iso/x.iso"] {
        let b = raw.call("GET", &format!("{base}/{v}"), &[]).await;
        assert_eq!(b.data(), a.data(), "{v}");
    }
    let a = raw
        .call(
            "PUT",
            &format!("{base}/local:iso/x.iso"),
            &[("notes", "installer"), ("protected", "1")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = raw
        .call("GET", &format!("{base}/local:iso/x.iso"), &[])
        .await;
    assert_eq!(
        (&a.data()["notes"], &a.data()["protected"]),
        (&json!("installer"), &json!(1))
    );
    let a = raw
        .call(
            "POST",
            &format!("{base}/local:iso/x.iso"),
            &[("target", "local:iso/y.iso")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(raw.task_end(a.data().as_str().unwrap()).await, "OK");
    let a = raw
        .call("DELETE", &format!("{base}/local:iso/x.iso"), &[])
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(raw.task_end(a.data().as_str().unwrap()).await, "OK");
    let listed: Vec<Value> = raw
        .call("GET", base, &[])
        .await
        .data()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["volid"].clone())
        .collect();
    assert_eq!(listed, vec![json!("local:iso/y.iso")]);
    // A volume id naming another storage than the path's is a parameter error.
    let a = raw
        .call("GET", &format!("{base}/local-lvm:vm-9000-disk-0"), &[])
        .await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(
        a.body["errors"]["volume"],
        "storage ID mismatch (local-lvm != local)"
    );
}

#[tokio::test]
async fn deleting_a_volume_is_an_imgdel_task_that_only_warns_when_it_is_gone() {
    // `API2/Storage/Content.pm` `delete` forks `imgdel`; `Plugin::free_image` only warns
    // about a file that is already gone, so the task ends `WARNINGS: 1`, not in an error.
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    let a = raw
        .call(
            "DELETE",
            "/nodes/pve1/storage/local/content/local:iso/never.iso",
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let upid = a.data().as_str().unwrap().to_owned();
    assert!(upid.contains(":imgdel:local:root@pam:"), "{upid}");
    assert_eq!(raw.task_end(&upid).await, "WARNINGS: 1");
    let log = raw.task_log(&upid).await;
    assert_eq!(
        log,
        vec![
            "WARN: disk image '/var/lib/vz/template/iso/never.iso' does not exist".to_owned(),
            "Removed volume 'local:iso/never.iso'".to_owned(),
            "TASK WARNINGS: 1".to_owned(),
        ]
    );
}

async fn zone_vnet_subnet(raw: &Raw, dhcp: &[&str]) {
    let mut subnet = vec![
        ("subnet", "10.9.0.0/24"),
        ("type", "subnet"),
        ("gateway", "10.9.0.1"),
    ];
    subnet.extend(dhcp.iter().map(|r| ("dhcp-range", *r)));
    for (p, params) in [
        (
            "/cluster/sdn/zones",
            vec![("zone", "zone1"), ("type", "simple"), ("ipam", "pve")],
        ),
        (
            "/cluster/sdn/vnets",
            vec![("vnet", "vnet1"), ("zone", "zone1")],
        ),
        ("/cluster/sdn/vnets/vnet1/subnets", subnet),
    ] {
        let a = raw.call("POST", p, &params).await;
        assert_eq!(a.status, 200, "{p}: {a:?}");
    }
}

#[tokio::test]
async fn subnet_listings_carry_id_and_dhcp_ranges_as_objects() {
    // `Subnets::sdn_subnets_config` adds `id` and decodes `dhcp-range` for the API.
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    zone_vnet_subnet(
        &raw,
        &[
            "start-address=10.9.0.50,end-address=10.9.0.60",
            "start-address=10.9.0.70,end-address=10.9.0.80",
        ],
    )
    .await;
    let s = raw
        .call("GET", "/cluster/sdn/vnets/vnet1/subnets", &[])
        .await
        .data()[0]
        .clone();
    assert_eq!(s["id"], "zone1-10.9.0.0-24");
    assert_eq!(
        s["dhcp-range"],
        json!([
            {"start-address": "10.9.0.50", "end-address": "10.9.0.60"},
            {"start-address": "10.9.0.70", "end-address": "10.9.0.80"},
        ])
    );
    let one = raw
        .call(
            "GET",
            "/cluster/sdn/vnets/vnet1/subnets/zone1-10.9.0.0-24",
            &[],
        )
        .await;
    assert_eq!(one.data()["dhcp-range"], s["dhcp-range"]);

    // No ranges: an empty array, not a missing key.
    let sim = common::sim().await;
    let raw = Raw::login(&sim).await;
    zone_vnet_subnet(&raw, &[]).await;
    let s = raw
        .call("GET", "/cluster/sdn/vnets/vnet1/subnets", &[])
        .await
        .data()[0]
        .clone();
    assert_eq!(s["dhcp-range"], json!([]));
}

/// `vnet:state` of each listed vnet (`-` without a state).
async fn vnets(raw: &Raw, params: &[(&str, &str)]) -> Vec<String> {
    let a = raw.call("GET", "/cluster/sdn/vnets", params).await;
    a.data()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["vnet"].as_str().unwrap(),
                e["state"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[tokio::test]
async fn sdn_listings_show_the_edited_config_unless_asked_for_running_or_pending() {
    // pve-network's index handlers: the `.cfg` (edited) view by default, `running=1` the
    // applied one, `pending=1` the diff.
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    zone_vnet_subnet(&raw, &[]).await;
    let upid = raw.call("PUT", "/cluster/sdn", &[]).await;
    assert_eq!(raw.task_end(upid.data().as_str().unwrap()).await, "OK");
    raw.call(
        "POST",
        "/cluster/sdn/vnets",
        &[("vnet", "vnet2"), ("zone", "zone1")],
    )
    .await;
    raw.call(
        "DELETE",
        "/cluster/sdn/vnets/vnet1/subnets/zone1-10.9.0.0-24",
        &[],
    )
    .await;
    raw.call("DELETE", "/cluster/sdn/vnets/vnet1", &[]).await;
    assert_eq!(vnets(&raw, &[]).await, ["vnet2:-"]);
    assert_eq!(vnets(&raw, &[("running", "1")]).await, ["vnet1:-"]);
    assert_eq!(
        vnets(&raw, &[("pending", "1")]).await,
        ["vnet1:deleted", "vnet2:new"]
    );
    // One object: edited by default, the applied one with `running=1`.
    let a = raw.call("GET", "/cluster/sdn/vnets/vnet2", &[]).await;
    assert_eq!(a.data()["zone"], "zone1", "{a:?}");
    let a = raw
        .call("GET", "/cluster/sdn/vnets/vnet2", &[("running", "1")])
        .await;
    assert_eq!(a.status, 500, "{a:?}");
}

#[tokio::test]
async fn a_running_vms_cdrom_medium_changes_at_once() {
    // qemu-server `vmconfig_update_disk` → `change_medium` for an existing CD-ROM drive; a
    // new ide/sata drive cannot be hot-plugged and stays pending.
    let sim = sim().await;
    sim.add_vm(
        VmSeed::vm(100, "cd")
            .with("ide2", "none,media=cdrom")
            .running(),
    );
    let raw = Raw::login(&sim).await;
    let a = raw
        .call(
            "POST",
            "/nodes/pve1/qemu/100/config",
            &[
                ("ide2", "local:iso/x.iso,media=cdrom"),
                ("ide3", "local:iso/y.iso,media=cdrom"),
            ],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    raw.task_end(a.data().as_str().unwrap()).await;
    let cfg = raw
        .call("GET", "/nodes/pve1/qemu/100/config", &[("current", "1")])
        .await
        .data()
        .clone();
    assert_eq!(cfg["ide2"], "local:iso/x.iso,media=cdrom");
    assert!(cfg.get("ide3").is_none(), "{cfg}");
    let pending = raw.call("GET", "/nodes/pve1/qemu/100/pending", &[]).await;
    let pending: Vec<&Value> = pending
        .data()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("pending").is_some())
        .collect();
    assert_eq!(
        pending,
        vec![&json!({"key": "ide3", "pending": "local:iso/y.iso,media=cdrom"})]
    );
}

/// A request with an explicit `Accept-Encoding` (reqwest is built without decompression, so
/// the body arrives as sent).
async fn get_encoded(raw: &Raw, path: &str, encoding: &str) -> (u16, Option<String>, Vec<u8>) {
    let r = raw
        .http
        .get(format!("{}{path}", raw.base))
        .header("Cookie", format!("PVEAuthCookie={}", raw.ticket))
        .header("Accept-Encoding", encoding)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let enc = r
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, enc, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn bodies_over_1_kib_are_gzipped_for_clients_that_accept_it() {
    // pve-http-server compresses a response over 1 KiB when `Accept-Encoding` has gzip.
    let sim = sim().await;
    for vmid in 100..120 {
        sim.add_vm(VmSeed::vm(vmid, &format!("vm{vmid}")));
    }
    let raw = Raw::login(&sim).await;
    let (status, enc, body) = get_encoded(&raw, "/cluster/resources", "gzip, deflate").await;
    assert_eq!((status, enc.as_deref()), (200, Some("gzip")));
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(text.len() > 1024 && v["data"].as_array().unwrap().len() > 20);
    let (_, enc, plain) = get_encoded(&raw, "/cluster/resources", "identity").await;
    assert_eq!((enc, plain.len()), (None, text.len()));
    // Small bodies go as they are.
    let (_, enc, _) = get_encoded(&raw, "/version", "gzip").await;
    assert_eq!(enc, None);
}

#[tokio::test]
async fn template_1_is_written_before_the_disks_are_converted() {
    // qemu-server's `template` handler sets `template: 1` and then forks the worker that
    // turns each disk into a base volume; while it runs, the VM is a template whose disk is
    // still a `vm-` volume.
    let sim = PveSim::start(
        SimConfig::new()
            .plain_http()
            .latency(LatencyProfile::Realistic { time_factor: 1.0 }),
    )
    .await
    .unwrap();
    sim.add_vm(VmSeed::vm(100, "golden"));
    let raw = Raw::login(&sim).await;
    let a = raw.call("POST", "/nodes/pve1/qemu/100/template", &[]).await;
    let upid = a.data().as_str().unwrap().to_owned();
    // The 2 s conversion is still running: this is the state a crash or a poller sees.
    let cfg = config(&raw, 100).await;
    let status = raw
        .call(
            "GET",
            &format!("/nodes/pve1/tasks/{}/status", urlencode(&upid)),
            &[],
        )
        .await;
    assert_eq!(status.data()["status"], "running");
    assert_eq!(cfg["template"], 1);
    assert!(
        cfg["scsi0"]
            .as_str()
            .unwrap()
            .starts_with("local-lvm:vm-100-disk-0"),
        "{cfg}"
    );
    assert_eq!(raw.task_end(&upid).await, "OK");
    let cfg = config(&raw, 100).await;
    assert!(
        cfg["scsi0"]
            .as_str()
            .unwrap()
            .starts_with("local-lvm:base-100-disk-0"),
        "{cfg}"
    );
}
