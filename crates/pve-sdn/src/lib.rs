//! Per-sample Proxmox VE SDN networks: validate the eval's `sdn_config`, create a simple zone
//! with its vnets and subnets, apply once, isolate guests with the PVE firewall, and remove
//! everything again — also from PVE's state alone after a crash.
//!
//! A plain library over [`pve_client`]: no actors, no global state. The caller supplies an
//! [`Applier`] (the sandbox coalesces `PUT /cluster/sdn` per cluster through the pool) and
//! shares one [`SubnetReservations`] per PVE instance between its samples.
//!
//! ```no_run
//! # async fn f(client: pve_client::PveClient) -> Result<(), pve_sdn::SdnError> {
//! use pve_sdn::*;
//! let spec: SdnSpec = serde_json::from_str(r#""auto""#).unwrap();
//! let ids = NetworkIds::for_sample("k3f9", 7, 0)?;
//! let reservations = SubnetReservations::new();
//! let applier = DirectApplier(client.clone());
//! let net = create_network(&client, &spec, &ids, &NetworkOptions::default(), &reservations, &applier).await?;
//! let bridge = net.first_vnet().unwrap(); // net0: virtio,bridge=<bridge>,firewall=1
//! # let _ = bridge;
//! vm_firewall(&client, "pve1", pve_client::Vmid(101), &net).await?;
//! teardown(&client, &net, &reservations, &applier).await?;
//! # Ok(()) }
//! ```
//!
//! # Costs (REST calls)
//!
//! - warm `auto` network: 1 listing (`GET /cluster/sdn/ipams/pve/status`), 3 creates (zone,
//!   vnet, subnet), 1 apply (`PUT /cluster/sdn` + task polls), coalesced by the caller;
//! - teardown: 1 delete per subnet, vnet and zone (3 for `auto`) + 1 apply;
//! - isolation: 4 calls per VM (5 with egress), see [`firewall`].
//!
//! # Overlap and races
//!
//! Simple zones on one host must not overlap (the host routes between them), but PVE does not
//! refuse overlapping subnets in different zones (pve-network's `SubnetPlugin` checks only the
//! gateway and DHCP ranges). PVE also has no route listing the subnets of all zones; the one
//! call that comes closest, `GET /cluster/sdn/ipams/pve/status`, reports the subnets of
//! *applied* zones using PVE's IPAM and DHCP. What it cannot see is covered as follows:
//!
//! - samples of this process, pending or applied: [`SubnetReservations`];
//! - `auto` networks of other processes still pending: the auto vnet id names its `/24`
//!   (see [`ids`]); PVE accepts a vnet id once, so the process that loses the race gets
//!   `already defined` and picks another `/24` (bounded retries);
//! - not covered: pending *topologies* of other processes, zones without DHCP/IPAM (the
//!   peer's `use_pve_ipam_dnsnmasq = false`) and hand-made networks without PVE's IPAM. Keep
//!   those outside the auto range, or give `auto` its own [`NetworkOptions::supernet`].
//!   A topology's fixed ranges can only run once per host at a time anyway: a second one is
//!   refused with [`SdnError::SubnetInUse`] once the first is visible.
//!
//! # What the Proxmox host must provide
//!
//! - SDN with `dnsmasq` installed and its system unit disabled (PVE's SDN DHCP requirement),
//!   and the node's `/etc/network/interfaces` sourcing `interfaces.d/*` (default on PVE 8+);
//! - tear a network down only after its VMs are destroyed: PVE's IPAM refuses to delete a
//!   subnet that still holds guest addresses (destroying a VM releases them);
//! - the datacenter firewall enabled (`Datacenter → Firewall → Options → Firewall: Yes`, i.e.
//!   `PUT /cluster/firewall/options enable=1`; check with [`cluster_firewall_enabled`]) and
//!   the node firewall left enabled (default). This crate never enables it itself: doing so
//!   with the default input policy could lock the administrator out of the host;
//! - for [`Egress::Internet`], a route to the internet from the host (SNAT on the subnet).
//!
//! Only IPv4 is supported: IPv6 subnets are refused by validation.

mod apply;
mod config;
mod error;
pub mod firewall;
pub mod ids;
mod net;
mod network;
mod reservations;

pub use apply::{APPLY_TIMEOUT, Applier, DirectApplier, apply_now};
pub use config::{DhcpRange, MAX_VNETS, SdnConfig, SdnSpec, SubnetConfig, VnetConfig};
pub use error::SdnError;
pub use firewall::{
    EGRESS_GROUP, FirewallReport, cluster_firewall_enabled, ensure_firewall_base, vm_firewall,
};
pub use ids::{MAX_SAMPLE, NetworkIds, auto_vnet_id, parse_owned_zone};
pub use net::{Ipv4Net, NetParseError};
pub use network::{
    AutoPick, Egress, ExistingVnet, Network, NetworkOptions, SubnetInfo, TeardownReport, VnetInfo,
    create_network, delete_by_ids, list_owned_zones, teardown, teardown_by_ids,
};
pub use reservations::SubnetReservations;
