//! The lifecycle on real QEMU guests (real qemu-guest-agent, TCG here), where what only real
//! hardware state shows is checked: a paused VM's clock stands still, and resume sets it.
//! Skipped, visibly, without the guest image `cargo xtask guest-image` builds; CI builds it.

use std::time::{Duration, SystemTime};

use guest_agent::ExecRequest;
use pvesandbox::embedded::{SimOptions, start_demo_sim_qemu};
use pvesandbox::{EvalConfig, Run, Settings, TaskOptions};

fn image_or_skip() -> bool {
    if pve_sim::guest::qemu::GuestImage::locate().is_some() {
        return true;
    }
    let msg = "no guest image: run `cargo xtask guest-image`";
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// The guest's clock minus the host's, in seconds.
async fn clock_offset(vm: &pvesandbox::SandboxVm) -> f64 {
    let host = SystemTime::now();
    let guest = vm.agent().time().await.unwrap();
    match guest.duration_since(host) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_sample_runs_on_with_its_clock_set_to_the_hosts() {
    if !image_or_skip() {
        return;
    }
    let sim = start_demo_sim_qemu(SimOptions::default()).await.unwrap();
    let mut settings = Settings::default();
    settings.images.cache_dir = Some(tempfile::tempdir().unwrap().keep());
    let settings = sim.settings(settings).unwrap();
    let eval = EvalConfig::from_json(
        r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1}]}"#,
    )
    .unwrap();
    let task = Run::task_init(settings, eval, TaskOptions::default())
        .await
        .unwrap();
    let sample = task.sample_init().await.unwrap();
    let vm = sample.get("default").unwrap();
    vm.exec(ExecRequest::new([
        "sh",
        "-c",
        "nohup sh -c 'while :; do sleep 0.05; done' >/dev/null 2>&1 & echo $! > /root/loop.pid",
    ]))
    .await
    .unwrap();
    let before = clock_offset(vm).await;

    sample.pause().await.unwrap();
    // Not a synchronisation: the time that passes while paused is what is being tested.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sample.resume().await.unwrap();

    let after = clock_offset(vm).await;
    assert!(
        after.abs() < 1.0,
        "the clock is {after:.3} s off after the resume (it was {before:.3} s before the pause)"
    );
    let alive = vm
        .exec(ExecRequest::new([
            "sh",
            "-c",
            "kill -0 $(cat /root/loop.pid) && echo alive",
        ]))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&alive.stdout), "alive\n");
    sample.cleanup(false).await.unwrap();
    task.task_cleanup().await.unwrap();
}
