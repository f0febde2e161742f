//! A simulator and a token-authenticated client on it.

#![allow(dead_code)]

use pve_client::PveClient;
use pve_sim::{PveSim, SimConfig};

pub const NODE: &str = "pve1";

pub struct Env {
    pub sim: PveSim,
    pub client: PveClient,
}

pub async fn env() -> Env {
    env_with(SimConfig::new()).await
}

pub async fn env_with(cfg: SimConfig) -> Env {
    let sim = PveSim::start(cfg).await.unwrap();
    let client = client(&sim);
    Env { sim, client }
}

/// Another client on the same simulator: "another process".
pub fn client(sim: &PveSim) -> PveClient {
    let (tid, secret) = sim.config().tokens[0].clone();
    PveClient::builder()
        .base_url(sim.url())
        .api_token(tid, secret)
        .fingerprint(sim.fingerprint().unwrap())
        .build()
        .unwrap()
}

/// Requests other than task-status polls, as `"METHOD route"`, in order.
pub fn requests(sim: &PveSim) -> Vec<String> {
    sim.requests()
        .entries()
        .iter()
        .filter(|e| !e.route.contains("/tasks/"))
        .map(|e| format!("{} {}", e.method, e.route))
        .collect()
}
