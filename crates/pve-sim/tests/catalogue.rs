//! The simulator's error wording checked against PVE's error catalogue
//! (`../shared/pve-api/pve-errors.json.gz`, mined from the PVE sources; read at test time only).
//!
//! Each scenario provokes one error through HTTP and checks that the message matches a template
//! the catalogue lists *for that route*, with the same status and the same "inside a task or
//! not" placement.

mod common;

use std::io::Read;

use common::{Raw, sim};
use serde_json::Value;

fn catalogue() -> Option<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/pve-api/pve-errors.json.gz");
    let Ok(f) = std::fs::File::open(&path) else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "error catalogue missing at {}: CI must run beside ../shared",
                path.display()
            );
        }
        eprintln!("SKIPPED: error catalogue not found at {}", path.display());
        return None;
    };
    let mut s = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut s)
        .unwrap();
    Some(serde_json::from_str(&s).unwrap())
}

fn template_matches(template: &str, msg: &str) -> bool {
    let mut re = String::from("^");
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..i]));
        let j = rest[i..].find('}').map_or(rest.len(), |j| i + j + 1);
        re.push_str(".+?");
        rest = &rest[j..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    regex::Regex::new(&re).unwrap().is_match(msg)
}

/// One provoked error: where, what, and whether it surfaced inside a task.
struct Seen {
    key: &'static str,
    status: u16,
    message: String,
    in_task: bool,
}

async fn http_err(raw: &Raw, key: &'static str, path: &str, params: &[(&str, &str)]) -> Seen {
    let method = key.split(' ').next().unwrap();
    let a = raw.call(method, path, params).await;
    assert_ne!(a.status, 200, "{key} {path} should fail: {a:?}");
    Seen {
        key,
        status: a.status,
        message: a.message(),
        in_task: false,
    }
}

async fn task_err(raw: &Raw, key: &'static str, path: &str, params: &[(&str, &str)]) -> Seen {
    let method = key.split(' ').next().unwrap();
    let a = raw.call(method, path, params).await;
    assert_eq!(a.status, 200, "{key} {path} should start a task: {a:?}");
    let exit = raw.task_exit(a.data().as_str().unwrap()).await;
    assert_ne!(exit, "OK", "{key} {path} should fail inside its task");
    Seen {
        key,
        status: 500,
        message: exit,
        in_task: true,
    }
}

#[tokio::test]
async fn simulator_errors_use_catalogue_wording() {
    let Some(cat) = catalogue() else { return };
    let sim = sim().await;
    let raw = Raw::login(&sim).await;
    let ok = |a: common::Answer| assert_eq!(a.status, 200, "{a:?}");
    ok(raw
        .call("POST", "/nodes/pve1/qemu/9000/clone", &[("newid", "101")])
        .await);
    ok(raw
        .call("POST", "/nodes/pve1/qemu/101/status/start", &[])
        .await);
    ok(raw
        .call("POST", "/nodes/pve1/qemu/9000/clone", &[("newid", "102")])
        .await);
    ok(raw
        .call(
            "POST",
            "/nodes/pve1/qemu/102/snapshot",
            &[("snapname", "s1")],
        )
        .await);
    ok(raw.call("POST", "/pools", &[("poolid", "p1")]).await);
    ok(raw
        .call("PUT", "/pools", &[("poolid", "p1"), ("vms", "102")])
        .await);
    sim.add_vm(pve_sim::VmSeed::vm(103, "locked").with("lock", "backup"));

    let mut seen = vec![
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/clone",
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "110"), ("storage", "local-lvm")],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/clone",
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "101")],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/clone",
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "110"), ("snapname", "nope")],
        )
        .await,
        http_err(
            &raw,
            "GET /nodes/{node}/qemu/{vmid}/config",
            "/nodes/pve1/qemu/999/config",
            &[],
        )
        .await,
        http_err(
            &raw,
            "DELETE /nodes/{node}/qemu/{vmid}",
            "/nodes/pve1/qemu/101",
            &[],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/template",
            "/nodes/pve1/qemu/101/template",
            &[],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/template",
            "/nodes/pve1/qemu/9000/template",
            &[],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/template",
            "/nodes/pve1/qemu/102/template",
            &[],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/snapshot",
            "/nodes/pve1/qemu/102/snapshot",
            &[("snapname", "current")],
        )
        .await,
        http_err(
            &raw,
            "DELETE /nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
            "/nodes/pve1/qemu/102/snapshot/nope",
            &[],
        )
        .await,
        http_err(
            &raw,
            "DELETE /nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
            "/nodes/pve1/qemu/9000/snapshot/nope",
            &[],
        )
        .await,
        http_err(
            &raw,
            "PUT /nodes/{node}/qemu/{vmid}/resize",
            "/nodes/pve1/qemu/102/resize",
            &[("disk", "scsi0"), ("size", "1G")],
        )
        .await,
        http_err(
            &raw,
            "PUT /nodes/{node}/qemu/{vmid}/resize",
            "/nodes/pve1/qemu/102/resize",
            &[("disk", "scsi5"), ("size", "+1G")],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/status/suspend",
            "/nodes/pve1/qemu/102/status/suspend",
            &[],
        )
        .await,
        http_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/config",
            "/nodes/pve1/qemu/102/config",
            &[
                ("name", "x"),
                ("digest", "0000000000000000000000000000000000000000"),
            ],
        )
        .await,
        http_err(&raw, "POST /pools", "/pools", &[("poolid", "p1")]).await,
        http_err(&raw, "DELETE /pools", "/pools", &[("poolid", "p1")]).await,
        http_err(&raw, "DELETE /pools", "/pools", &[("poolid", "p2")]).await,
        task_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/status/start",
            "/nodes/pve1/qemu/9000/status/start",
            &[],
        )
        .await,
        task_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/status/start",
            "/nodes/pve1/qemu/101/status/start",
            &[],
        )
        .await,
        task_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/status/start",
            "/nodes/pve1/qemu/103/status/start",
            &[],
        )
        .await,
        task_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/snapshot",
            "/nodes/pve1/qemu/102/snapshot",
            &[("snapname", "s1")],
        )
        .await,
        task_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/snapshot",
            "/nodes/pve1/qemu/9000/snapshot",
            &[("snapname", "s2")],
        )
        .await,
        task_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
            "/nodes/pve1/qemu/102/snapshot/nope/rollback",
            &[],
        )
        .await,
        task_err(
            &raw,
            "POST /nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
            "/nodes/pve1/qemu/9000/snapshot/s1/rollback",
            &[],
        )
        .await,
    ];
    let bad_login = common::http()
        .post(format!("{}/access/ticket", raw.base))
        .form(&[("username", "root@pam"), ("password", "x")])
        .send()
        .await
        .unwrap();
    seen.push(Seen {
        key: "POST /access/ticket",
        status: bad_login.status().as_u16(),
        message: bad_login.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .trim()
            .into(),
        in_task: false,
    });

    let mut problems = Vec::new();
    for s in &seen {
        let entries = cat["errors"][s.key].as_array().cloned().unwrap_or_default();
        let hit = entries
            .iter()
            .find(|e| template_matches(e["message"].as_str().unwrap_or_default(), &s.message));
        match hit {
            None => problems.push(format!(
                "{}: {:?} matches no catalogue template for this route",
                s.key, s.message
            )),
            Some(e) => {
                let want_status = e["status"].as_u64().unwrap_or(500) as u16;
                let want_task = e["in_task"].as_bool().unwrap_or(false);
                if want_status != s.status || want_task != s.in_task {
                    problems.push(format!(
                        "{}: {:?}: got status {} in_task {}, catalogue says {} / {}",
                        s.key, s.message, s.status, s.in_task, want_status, want_task
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} errors differ from PVE:\n{}",
        problems.len(),
        seen.len(),
        problems.join("\n")
    );
}

#[test]
fn template_matching_can_fail() {
    assert!(template_matches(
        "VM {vmid} is running - destroy failed",
        "VM 101 is running - destroy failed"
    ));
    assert!(!template_matches(
        "VM {vmid} is running - destroy failed",
        "VM 101 is running"
    ));
    assert!(!template_matches(
        "snapshot '{snapname}' does not exist",
        "snapshot nope does not exist"
    ));
}
