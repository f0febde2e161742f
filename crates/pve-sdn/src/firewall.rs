//! Isolation with the PVE firewall: per-VM options and rules, plus one cluster security group
//! for outbound internet.
//!
//! Per VM ([`vm_firewall`]): `enable=1`, `policy_in=DROP`, `policy_out=DROP`, `dhcp=1`,
//! `macfilter=1`, then in order:
//!
//! 1. `OUT DROP dest <the sample's gateways>` — the gateway is the Proxmox host itself;
//! 2. `OUT ACCEPT dest <the sample's subnets>`;
//! 3. `IN ACCEPT source <the sample's subnets>`;
//! 4. with [`Egress::Internet`] only: `GROUP pvesb-egress`, whose rules are `OUT DROP dest
//!    <private, link-local, CGNAT, multicast ranges and the extra blocked ranges>` then
//!    `OUT ACCEPT`.
//!
//! Everything else is dropped by the policies: other samples' subnets and the host, in and
//! out. DHCP from PVE's dnsmasq passes through the VM option `dhcp=1` before rules apply.
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
pub async fn vm_firewall(
    client: &PveClient,
    node: &str,
    vmid: u32,
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
        rules.push(
            Params::new()
                .with("type", "out")
                .with("action", "DROP")
                .with("dest", gws.join(","))
                .with("comment", "pvesandbox: not the Proxmox host"),
        );
        rules.push(
            Params::new()
                .with("type", "out")
                .with("action", "ACCEPT")
                .with("dest", cidrs.join(","))
                .with("comment", "pvesandbox: own sample"),
        );
        rules.push(
            Params::new()
                .with("type", "in")
                .with("action", "ACCEPT")
                .with("source", cidrs.join(","))
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
