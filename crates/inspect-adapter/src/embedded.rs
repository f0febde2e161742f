//! The embedded-simulator mode: `PVESANDBOX_EMBEDDED_SIM=process|qemu` runs every sample of
//! this process against pvesandbox's embedded PVE simulator instead of a configured Proxmox.
//!
//! It exists so that Inspect's own self-check and a real `inspect eval` run on a machine
//! without Proxmox (CI): `process` boots guests as Linux namespaces (root and user namespaces
//! needed), `qemu` boots real qemu-guest-agent guests from the image `cargo xtask guest-image`
//! caches. It is the CLI demo's world (a loopback image mirror with a stand-in for the
//! `debian13` built-in), with instant tasks. The simulator lives until [`shutdown`] (the
//! Python half calls it at exit), since dropping it is what powers its guests off.

use pvesandbox::Settings;
use pvesandbox::embedded::{DemoSim, SimOptions, start_demo_sim_qemu, start_demo_sim_with};
use tokio::sync::Mutex;

/// The variable that turns the mode on.
pub(crate) const VAR: &str = "PVESANDBOX_EMBEDDED_SIM";
/// Samples the embedded instance holds at once (default [`DEFAULT_SAMPLES`]).
pub(crate) const SAMPLES_VAR: &str = "PVESANDBOX_EMBEDDED_SIM_SAMPLES";
const DEFAULT_SAMPLES: u32 = 4;
/// The embedded instance's id in cleanup reports and errors.
const INSTANCE: &str = "embedded";

static SIM: Mutex<Option<DemoSim>> = Mutex::const_new(None);

/// Which guests the simulator boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guests {
    /// Linux namespaces on this host.
    Process,
    /// qemu-guest-agent in QEMU VMs.
    Qemu,
}

/// The mode the environment asks for; `Err` names the variable and the accepted values.
pub(crate) fn mode() -> Result<Option<Guests>, String> {
    match std::env::var(VAR).unwrap_or_default().as_str() {
        "" | "0" => Ok(None),
        "1" | "process" => Ok(Some(Guests::Process)),
        "qemu" => Ok(Some(Guests::Qemu)),
        other => Err(format!(
            "invalid configuration: {VAR} = {other:?}: use `process` (or 1) for namespace guests, `qemu` for qemu-guest-agent guests, or unset it"
        )),
    }
}

/// How many samples the embedded instance holds at once.
pub(crate) fn samples() -> Result<u32, String> {
    match std::env::var(SAMPLES_VAR) {
        Err(_) => Ok(DEFAULT_SAMPLES),
        Ok(v) => v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!(
                "invalid configuration: {SAMPLES_VAR} = {v:?}: use a positive number of samples"
            )
        }),
    }
}

/// Points `settings` at the embedded simulator (one instance in pool `pool`) and its image
/// mirror, starting both on first use. A no-op when the mode is off.
pub(crate) async fn point_at_sim(settings: Settings, pool: &str) -> Result<Settings, String> {
    let Some(guests) = mode()? else {
        return Ok(settings);
    };
    let max = samples()?;
    let mut sim = SIM.lock().await;
    if sim.is_none() {
        let opts = SimOptions {
            port: 0,
            realistic: None,
            process_guests: true,
            ..Default::default()
        };
        let started = match guests {
            Guests::Process => start_demo_sim_with(opts).await,
            Guests::Qemu => start_demo_sim_qemu(opts).await,
        };
        *sim = Some(started.map_err(|e| e.to_string())?);
    }
    let sim = sim.as_ref().expect("started above");
    let mut settings = sim.settings(settings).map_err(|e| e.to_string())?;
    settings.instances = vec![sim.embedded().instance(INSTANCE, pool, max)];
    Ok(settings)
}

/// The `PROXMOX_*` variables that point the `pvesandbox` CLI (or the peer) at the running
/// simulator; empty when it is not running.
pub(crate) async fn env() -> Vec<(String, String)> {
    SIM.lock()
        .await
        .as_ref()
        .map(|s| s.embedded().env())
        .unwrap_or_default()
}

/// Stops the simulator and its guests (idempotent).
pub(crate) fn shutdown() {
    // Called from Python at exit, outside any runtime; `try_lock` keeps an exit during a
    // start from hanging (the process is going away anyway).
    if let Ok(mut sim) = SIM.try_lock() {
        sim.take();
    }
}
