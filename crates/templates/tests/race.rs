//! Two processes asking for the same template at once build it exactly once.
//!
//! The parent test starts a simulator (with modelled task times, so the builds overlap) and a
//! loopback image server, then runs this test binary twice as children (`child_ensure`, with
//! the addresses in the environment). Each child calls `ensure_template` for the same
//! built-in and prints the template id it got.

mod common;

use std::process::Command;

use common::*;
use pve_sim::{LatencyProfile, PveSim, SimConfig};
use pvesandbox_templates::{
    BuiltIn, Checksum, ImageCatalog, ImageFormat, ImageSpec, Phase, ProgressEvent, Templates,
    VmSource,
};

const IMAGE: &[u8] = b"QFI\xfb the race image";

#[tokio::test]
async fn child_ensure() {
    let Ok(url) = std::env::var("TPL_CHILD_SIM_URL") else {
        return;
    };
    let fp = std::env::var("TPL_CHILD_SIM_FP").unwrap();
    let image_url = std::env::var("TPL_CHILD_IMAGE_URL").unwrap();
    let cat = ImageCatalog::pinned().with_image(
        BuiltIn::Debian13,
        ImageSpec {
            url: image_url,
            checksum: Checksum::sha512(&sha512(IMAGE)).unwrap(),
            format: ImageFormat::Qcow2,
        },
    );
    let t = Templates::new(client_for(&url, &fp), config(&scratch("race"), cat));
    let ev = Events::default();
    let tpl = t
        .ensure_template(&VmSource::BuiltIn(BuiltIn::Debian13), &ev.sink())
        .await
        .unwrap();
    let waited = ev.all().iter().any(|p| {
        matches!(
            p.event,
            ProgressEvent::Phase(Phase::WaitingForOtherBuilder { .. })
        )
    });
    let built = ev
        .all()
        .iter()
        .any(|p| matches!(p.event, ProgressEvent::Phase(Phase::Claimed { .. })));
    println!("TEMPLATE {} built={built} waited={waited}", tpl.vmid);
}

#[tokio::test]
async fn two_processes_build_one_template() {
    if std::env::var_os("TPL_CHILD_SIM_URL").is_some() {
        return;
    }
    let sim =
        PveSim::start(SimConfig::new().latency(LatencyProfile::Realistic { time_factor: 0.05 }))
            .await
            .unwrap();
    let srv = FileServer::start().await;
    let image_url = srv.put("debian.qcow2", IMAGE.to_vec());
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args(["--exact", "child_ensure", "--nocapture", "--test-threads=1"])
            .env("TPL_CHILD_SIM_URL", sim.url())
            .env("TPL_CHILD_SIM_FP", sim.fingerprint().unwrap())
            .env("TPL_CHILD_IMAGE_URL", &image_url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = tokio::task::spawn_blocking(move || {
        [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()]
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    for out in &outs {
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.split_once("TEMPLATE ").map(|(_, r)| r.to_owned()))
            .expect("child printed its template");
        got.push(line);
    }
    eprintln!("two processes: {got:?}");
    let ids: Vec<&str> = got.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(ids[0], ids[1], "both got the same template");
    assert_eq!(
        got.iter().filter(|l| l.contains("built=true")).count(),
        1,
        "exactly one process built it: {got:?}"
    );
    // Exactly one template and no leftover claim in the simulator; one download, one seal.
    let ours: Vec<u32> = sim
        .vmids()
        .into_iter()
        .filter(|id| {
            sim.vm_config(*id)
                .and_then(|c| c.get("tags").cloned())
                .is_some_and(|t| t.contains("tpl-debian13-"))
        })
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].to_string(), ids[0]);
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/qemu/{vmid}/template"),
        1
    );
    assert_eq!(
        sim.request_count("POST", "/nodes/{node}/storage/{storage}/download-url"),
        1
    );
    assert_eq!(srv.hits("debian.qcow2"), 1);
}
