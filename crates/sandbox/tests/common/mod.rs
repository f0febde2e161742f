//! The embedded simulator (process guests, instant tasks) and a loopback image mirror.

#![allow(dead_code)]

use pvesandbox::embedded::{DemoSim, SimOptions, start_demo_sim_with};
use pvesandbox::{EvalConfig, Settings};

/// Process guests need namespaces (root here). Without them: skip, unless CI says they must work.
pub fn guests_available() -> bool {
    pve_sim::guest::ProcessGuestFactory::available_or_skip()
}

/// A simulator with instant tasks, and settings pointing at it.
pub async fn world() -> (DemoSim, Settings) {
    let sim = start_demo_sim_with(SimOptions {
        port: 0,
        realistic: None,
        process_guests: true,
        ..Default::default()
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let mut settings = Settings::default();
    settings.images.cache_dir = Some(dir);
    let mut settings = sim.settings(settings).expect("settings");
    settings.instances[0].max_samples = Some(4);
    (sim, settings)
}

/// An eval config from JSON.
pub fn eval(json: &str) -> EvalConfig {
    EvalConfig::from_json(json).expect("valid eval config")
}

/// Two debian13 VMs (`default` and `b`) on an auto network.
pub fn two_vms() -> EvalConfig {
    eval(
        r#"{"vms_config": [
            {"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1},
            {"vm_source_config": {"built_in": "debian13"}, "name": "b", "ram_mb": 512, "vcpus": 1}
        ]}"#,
    )
}

/// The environment a `pvesandbox` child process needs to reach the simulator and its
/// image mirror exactly as `settings` do.
pub fn child_env(sim: &DemoSim, settings: &Settings) -> Vec<(String, String)> {
    let mut env = sim.env();
    env.push((
        "PVESANDBOX_IMAGES__CACHE_DIR".into(),
        settings.images.cache_dir().display().to_string(),
    ));
    env
}

/// One debian13 VM on an auto network.
pub fn one_vm() -> EvalConfig {
    eval(
        r#"{"vms_config": [{"vm_source_config": {"built_in": "debian13"}, "ram_mb": 512, "vcpus": 1}]}"#,
    )
}
