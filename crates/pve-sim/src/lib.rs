//! pve-sim: a stateful Proxmox VE API simulator.
pub mod routes;
pub mod spec;
