//! Isolation with the PVE firewall: per-VM options and rules, plus one cluster security group
//! for outbound internet.
//!
//! Per VM ([`vm_firewall`]): `enable=1`, `policy_in=DROP`, `policy_out=DROP`, `dhcp=1`,
//! `macfilter=1`, then in order:
//!
//! 1. `OUT ACCEPT macro=DNS dest <the sample's gateways>` — PVE's per-zone dnsmasq answers
//!    DNS on the gateway;
//! 2. `OUT ACCEPT dest <the sample's subnets without their gateways>` (address ranges; the
//!    gateway is the Proxmox host, which stays unreachable). When that list would exceed
//!    PVE's 512-character limit, an `OUT DROP dest <gateways>` rule plus `OUT ACCEPT dest
//!    <subnets>` are used instead (one rule more);
//! 3. `IN ACCEPT source <the sample's subnets>`;
//! 4. with [`Egress::Internet`] only: `GROUP pvesb-egress`, whose rules are `OUT DROP dest
//!    <private, loopback, link-local (cloud metadata), CGNAT, multicast, reserved ranges and
//!    the extra blocked ranges>` then `OUT ACCEPT`.
//!
//! Everything else is dropped by the policies: other samples' subnets and the host, in and
//! out. DHCP from PVE's dnsmasq passes through the VM option `dhcp=1` before rules apply.
//! A sample whose subnets are public addresses gets no protection from the egress group for
//! them: keep sandbox subnets in private ranges.
//!
//! Cost per VM: 4 calls (1 `PUT options` + 3 rule `POST`s), 5 with egress. The group costs
//! one `GET` per process once it exists ([`ensure_firewall_base`]). Rules die with the VM.

use pve_client::{Params, PveClient};
use serde_json::Value;

use crate::error::SdnError;
use crate::network::{Egress, Network};

/// The cluster security group granting outbound internet (name limit: 18 characters).
pub const EGRESS_GROUP: &str = "pvesb-egress";

/// Ranges a guest with egress must still not reach: RFC 1918, loopback, link-local (cloud
/// metadata), CGNAT, multicast and reserved space.
pub const NON_INTERNET: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// What one [`vm_firewall`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallReport {
    /// REST calls made.
    pub calls: u32,
    /// Rules created.
    pub rules: u32,
}

/// Creates the [`EGRESS_GROUP`] security group and its two rules unless it exists with
/// rules. `blocked` adds ranges a guest must never reach even with egress (put the Proxmox
/// host's public addresses here). Call once per PVE cluster per process; 1 call when it
/// exists, 4 when it is created.
pub async fn ensure_firewall_base(client: &PveClient, blocked: &[String]) -> Result<(), SdnError> {
    for b in blocked {
        if b.parse::<crate::net::Ipv4Net>().is_err() && b.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(SdnError::invalid(
                "firewall.blocked",
                b,
                "write an IPv4 address or network such as 203.0.113.7 or 203.0.113.0/24",
            ));
        }
    }
    let path = format!("/cluster/firewall/groups/{EGRESS_GROUP}");
    match client.get(&path, &Params::new()).await {
        Ok(Value::Array(rules)) if !rules.is_empty() => return Ok(()),
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            let p = Params::new().with("group", EGRESS_GROUP).with(
                "comment",
                "pvesandbox: outbound internet for sandboxes that ask for it",
            );
            if let Err(e) = client.post("/cluster/firewall/groups", &p).await {
                // Another process created it first: fine.
                if e.is_permission_denied() {
                    // Creating datacenter-wide firewall objects takes Sys.Modify on `/`, which
                    // the sandbox token should not hold for anything else: say who can fix it.
                    return Err(SdnError::api(
                        format!(
                            "POST /cluster/firewall/groups (egress needs the security group \
                             {EGRESS_GROUP}, created once with Sys.Modify on /: run the first \
                             egress task with an administrator's token, or grant Sys.Modify)"
                        ),
                        e,
                    ));
                }
                if !e.is_already_exists() {
                    return Err(SdnError::api("POST /cluster/firewall/groups", e));
                }
            }
        }
        Err(e) => return Err(SdnError::api(format!("GET {path}"), e)),
    }
    let dest: Vec<String> = NON_INTERNET
        .iter()
        .map(|s| (*s).to_owned())
        .chain(blocked.iter().cloned())
        .collect();
    let rules = [
        Params::new()
            .with("pos", 0u32)
            .with("type", "out")
            .with("action", "DROP")
            .with("dest", dest.join(","))
            .with("enable", 1u32)
            .with(
                "comment",
                "pvesandbox: no private ranges, other sandboxes or the host",
            ),
        Params::new()
            .with("pos", 1u32)
            .with("type", "out")
            .with("action", "ACCEPT")
            .with("enable", 1u32)
            .with("comment", "pvesandbox: internet"),
    ];
    for r in rules {
        client
            .post(&path, &r)
            .await
            .map_err(|e| SdnError::api(format!("POST {path}"), e))?;
    }
    Ok(())
}

/// True when the datacenter firewall is enabled (`GET /cluster/firewall/options`); without it
/// no VM rule filters anything.
pub async fn cluster_firewall_enabled(client: &PveClient) -> Result<bool, SdnError> {
    let v = client
        .get("/cluster/firewall/options", &Params::new())
        .await
        .map_err(|e| SdnError::api("GET /cluster/firewall/options", e))?;
    Ok(match v.get("enable") {
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => s == "1",
        _ => false,
    })
}

/// Isolates VM `vmid` on `node` to `network` (see the module docs for the rules). Its NICs
/// must carry `firewall=1` (`net0: virtio,bridge=<vnet>,firewall=1`) or PVE filters nothing.
/// With [`Egress::Internet`], [`ensure_firewall_base`] must have run. For networks attached
/// to existing vnets (`sdn_config = null`) the administrator owns isolation: nothing is done.
/// A failure midway leaves the VM with its DROP policies and some rules: it fails closed.
pub async fn vm_firewall(
    client: &PveClient,
    node: &str,
    vmid: pve_client::Vmid,
    network: &Network,
) -> Result<FirewallReport, SdnError> {
    if network.zone.is_none() {
        return Ok(FirewallReport { calls: 0, rules: 0 });
    }
    let base = format!("/nodes/{node}/qemu/{vmid}/firewall");
    let opts = Params::new()
        .with("enable", true)
        .with("policy_in", "DROP")
        .with("policy_out", "DROP")
        .with("dhcp", true)
        .with("macfilter", true);
    client
        .put(&format!("{base}/options"), &opts)
        .await
        .map_err(|e| SdnError::api(format!("PUT {base}/options"), e))?;
    let cidrs: Vec<&str> = network.subnets().map(|s| s.cidr.as_str()).collect();
    let gws: Vec<&str> = network.subnets().map(|s| s.gateway.as_str()).collect();
    let mut rules = Vec::new();
    if !gws.is_empty() {
        let gws = gws.join(",");
        let cidrs = cidrs.join(",");
        rules.push(
            Params::new()
                .with("type", "out")
                .with("action", "ACCEPT")
                .with("macro", "DNS")
                .with("dest", &gws)
                .with("comment", "pvesandbox: DNS from the zone's dnsmasq"),
        );
        let peers = without_gateways(network);
        if peers.len() <= 512 {
            rules.push(
                Params::new()
                    .with("type", "out")
                    .with("action", "ACCEPT")
                    .with("dest", peers)
                    .with("comment", "pvesandbox: own sample, not the host"),
            );
        } else {
            rules.push(
                Params::new()
                    .with("type", "out")
                    .with("action", "DROP")
                    .with("dest", &gws)
                    .with("comment", "pvesandbox: not the Proxmox host"),
            );
            rules.push(
                Params::new()
                    .with("type", "out")
                    .with("action", "ACCEPT")
                    .with("dest", &cidrs)
                    .with("comment", "pvesandbox: own sample"),
            );
        }
        rules.push(
            Params::new()
                .with("type", "in")
                .with("action", "ACCEPT")
                .with("source", &cidrs)
                .with("comment", "pvesandbox: own sample"),
        );
    }
    if network.egress == Egress::Internet {
        rules.push(
            Params::new()
                .with("type", "group")
                .with("action", EGRESS_GROUP)
                .with("comment", "pvesandbox: egress"),
        );
    }
    let n = rules.len() as u32;
    let path = format!("{base}/rules");
    for (i, r) in rules.into_iter().enumerate() {
        // Without `pos` PVE inserts at the top; explicit positions keep our order.
        let r = r.with("pos", i as u32).with("enable", 1u32);
        client
            .post(&path, &r)
            .await
            .map_err(|e| SdnError::api(format!("POST {path}"), e))?;
    }
    Ok(FirewallReport {
        calls: 1 + n,
        rules: n,
    })
}

/// The sample's subnets minus their gateways, as a PVE address list of ranges.
fn without_gateways(network: &Network) -> String {
    let mut parts = Vec::new();
    for s in network.subnets() {
        let (Ok(net), Ok(gw)) = (
            s.cidr.parse::<crate::net::Ipv4Net>(),
            s.gateway.parse::<std::net::Ipv4Addr>(),
        ) else {
            continue;
        };
        let (lo, hi, g) = (
            u32::from(net.network()),
            u32::from(net.broadcast()),
            u32::from(gw),
        );
        for (a, b) in [(lo, g.wrapping_sub(1)), (g.wrapping_add(1), hi)] {
            if a <= b && net.contains(a.into()) && net.contains(b.into()) {
                let (a, b) = (std::net::Ipv4Addr::from(a), std::net::Ipv4Addr::from(b));
                parts.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
            }
        }
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{SubnetInfo, VnetInfo};

    #[test]
    fn peers_exclude_the_gateway() {
        let net = Network {
            zone: Some("Zabcd000".into()),
            vnets: vec![VnetInfo {
                id: "Nc0a805".into(),
                alias: None,
                subnets: vec![SubnetInfo {
                    id: "Zabcd000-192.168.5.0-24".into(),
                    cidr: "192.168.5.0/24".into(),
                    gateway: "192.168.5.1".into(),
                    snat: false,
                    dhcp_ranges: vec![],
                }],
            }],
            existing: vec![],
            egress: Egress::None,
        };
        assert_eq!(
            without_gateways(&net),
            "192.168.5.0,192.168.5.2-192.168.5.255"
        );
    }
}
