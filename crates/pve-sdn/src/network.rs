//! Creating a sample's network (plan, create, one apply) and removing it again.

use std::net::Ipv4Addr;

use pve_client::{Params, PveClient};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apply::Applier;
use crate::config::{DhcpRange, SdnSpec};
use crate::error::SdnError;
use crate::ids::{NetworkIds, auto_vnet_id};
use crate::net::Ipv4Net;
use crate::reservations::SubnetReservations;

/// Whether guests may reach the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// No traffic leaves the sample's subnets (the default).
    #[default]
    None,
    /// Public addresses are reachable (SNAT on for `auto`); private ranges, other sandboxes
    /// and the Proxmox host stay unreachable.
    Internet,
}

/// How `auto` picks its `/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoPick {
    /// A random free `/24` (fewer collisions between processes).
    #[default]
    Random,
    /// The lowest free `/24` (predictable addresses; used by tests to force collisions).
    Lowest,
}

/// Options for [`create_network`].
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// Outbound internet for the sample.
    pub egress: Egress,
    /// Where `auto` looks for a free `/24` (`None`: `192.168.2.0/24` to `192.168.252.0/24`,
    /// like the peer). A network of prefix `/24` or shorter, e.g. `10.77.0.0/16`.
    pub supernet: Option<String>,
    /// How `auto` picks among free ranges.
    pub pick: AutoPick,
}

/// One subnet as created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetInfo {
    /// PVE's subnet id (`<zone>-<network>-<prefix>`).
    pub id: String,
    /// The network, e.g. `192.168.5.0/24`.
    pub cidr: String,
    /// The gateway (the host's address on the vnet).
    pub gateway: String,
    /// SNAT on.
    pub snat: bool,
    /// DHCP ranges.
    pub dhcp_ranges: Vec<DhcpRange>,
}

/// One vnet of the sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VnetInfo {
    /// The vnet id (the Linux bridge NICs attach to: `bridge=<id>`).
    pub id: String,
    /// The user's alias.
    pub alias: Option<String>,
    /// Its subnets.
    pub subnets: Vec<SubnetInfo>,
}

/// An existing vnet (for `sdn_config = null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExistingVnet {
    /// The vnet id.
    pub id: String,
    /// Its alias, if any.
    pub alias: Option<String>,
    /// Its zone.
    pub zone: Option<String>,
}

/// A sample's network: what was created (or found), serialisable for the sample's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// The sample's zone (`None` when attached to existing vnets).
    pub zone: Option<String>,
    /// The sample's vnets, in `vnet_configs` order.
    pub vnets: Vec<VnetInfo>,
    /// Existing vnets NICs may name (only for `sdn_config = null`).
    pub existing: Vec<ExistingVnet>,
    /// Outbound internet.
    pub egress: Egress,
}

impl Network {
    /// The vnet id for a NIC's `vnet_alias`: the sample's own vnets first, then existing ones.
    pub fn resolve_alias(&self, alias: &str) -> Option<&str> {
        self.vnets
            .iter()
            .find(|v| v.alias.as_deref() == Some(alias))
            .map(|v| v.id.as_str())
            .or_else(|| {
                self.existing
                    .iter()
                    .find(|v| v.alias.as_deref() == Some(alias))
                    .map(|v| v.id.as_str())
            })
    }

    /// The first vnet of the sample (where NICs go when a VM names none).
    pub fn first_vnet(&self) -> Option<&str> {
        self.vnets.first().map(|v| v.id.as_str())
    }

    /// Every subnet of the sample.
    pub fn subnets(&self) -> impl Iterator<Item = &SubnetInfo> {
        self.vnets.iter().flat_map(|v| v.subnets.iter())
    }
}

/// Counts of what a teardown removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Objects deleted now.
    pub deleted: Vec<String>,
    /// Objects that were already gone.
    pub already_gone: Vec<String>,
}

fn api(what: impl Into<String>) -> impl FnOnce(pve_client::Error) -> SdnError {
    move |e| SdnError::api(what, e)
}

/// A property of a listing entry, pending value first (PVE puts a new or changed object's
/// values under `pending`).
fn prop<'a>(entry: &'a Value, key: &str) -> Option<&'a str> {
    entry
        .get("pending")
        .and_then(|p| p.get(key))
        .and_then(Value::as_str)
        .filter(|v| *v != "deleted")
        .or_else(|| entry.get(key).and_then(Value::as_str))
}

fn array(v: Value, path: &str) -> Result<Vec<Value>, SdnError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(vec![]),
        other => Err(SdnError::Decode {
            path: path.into(),
            message: format!("expected an array, got {other}"),
        }),
    }
}

/// The subnets PVE's IPAM reports, in one call for every zone: `ipamindex` lists the gateway
/// (and guest) entries of *applied* zones with `ipam=pve` and `dhcp` set. Blind to pending
/// networks and to zones without PVE's DHCP; see the crate docs for what covers those.
async fn ipam_subnets(client: &PveClient) -> Result<Vec<(Ipv4Net, String)>, SdnError> {
    let path = "/cluster/sdn/ipams/pve/status";
    let v = client
        .get(path, &Params::new())
        .await
        .map_err(api(format!("GET {path}")))?;
    let mut out: Vec<(Ipv4Net, String)> = Vec::new();
    for e in array(v, path)? {
        let Some(net) = e
            .get("subnet")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
        else {
            continue; // IPv6 subnets cannot overlap ours.
        };
        let zone = e
            .get("zone")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        if !out.iter().any(|(n, _)| *n == net) {
            out.push((net, zone));
        }
    }
    Ok(out)
}

/// What was created so far, for undo.
enum Made {
    Zone(String),
    Vnet(String),
    Subnet { vnet: String, id: String },
}

impl Made {
    fn label(&self) -> String {
        match self {
            Made::Zone(z) => format!("zone {z}"),
            Made::Vnet(v) => format!("vnet {v}"),
            Made::Subnet { id, .. } => format!("subnet {id}"),
        }
    }
    fn path(&self) -> String {
        match self {
            Made::Zone(z) => format!("/cluster/sdn/zones/{z}"),
            Made::Vnet(v) => format!("/cluster/sdn/vnets/{v}"),
            Made::Subnet { vnet, id } => format!("/cluster/sdn/vnets/{vnet}/subnets/{id}"),
        }
    }
}

/// Deletes `made` newest first. Pending-new objects vanish without an apply.
async fn undo(client: &PveClient, made: Vec<Made>, step: String, cause: SdnError) -> SdnError {
    let mut undone = Vec::new();
    let mut undo_failed = Vec::new();
    for m in made.into_iter().rev() {
        match client.delete(&m.path(), &Params::new()).await {
            Ok(_) => undone.push(m.label()),
            Err(e) if e.is_not_found() => undone.push(m.label()),
            Err(e) => undo_failed.push(format!("{} ({e})", m.label())),
        }
    }
    SdnError::Create {
        step,
        source: Box::new(cause),
        undone,
        undo_failed,
    }
}

fn subnet_params(s: &SubnetInfo) -> Params {
    Params::new()
        .with("subnet", &s.cidr)
        .with("type", "subnet")
        .with("gateway", &s.gateway)
        .with("snat", s.snat)
        .with_array(
            "dhcp-range",
            s.dhcp_ranges
                .iter()
                .map(|r| format!("start-address={},end-address={}", r.start, r.end)),
        )
}

/// The third octets `auto` tries in `192.168.x.0/24` without a configured supernet.
const DEFAULT_THIRD_OCTETS: std::ops::RangeInclusive<u8> = 2..=252;

/// The range `auto` searched, for [`SdnError::NoFreeSubnet`].
fn searched(opts: &NetworkOptions) -> String {
    opts.supernet.clone().unwrap_or_else(|| {
        let (a, b) = DEFAULT_THIRD_OCTETS.into_inner();
        format!("192.168.{a}.0-192.168.{b}.255")
    })
}

fn candidates(opts: &NetworkOptions) -> Result<Vec<Ipv4Net>, SdnError> {
    match &opts.supernet {
        None => Ok(DEFAULT_THIRD_OCTETS
            .map(|x| Ipv4Net::new(Ipv4Addr::new(192, 168, x, 0), 24))
            .collect()),
        Some(s) => {
            let net: Ipv4Net = s.parse().map_err(|_| {
                SdnError::invalid("supernet", s, "write an IPv4 network such as 10.77.0.0/16")
            })?;
            if net.prefix() > 24 || net.prefix() < 8 {
                return Err(SdnError::invalid(
                    "supernet",
                    s,
                    "use a prefix from /8 to /24: auto networks are /24s",
                ));
            }
            Ok(net.subnets(24).collect())
        }
    }
}

/// How many `/24`s `auto` tries when other processes keep winning the race for them.
const AUTO_ATTEMPTS: usize = 16;

/// Creates the sample's network and applies it once.
///
/// - `auto`: one listing (`GET /cluster/sdn/ipams/pve/status`), three creates (zone, vnet,
///   subnet) and one apply through `applier`. A vnet-id collision with another process (it
///   picked the same `/24`) costs one more vnet create per collision.
/// - topology: one listing, `1 + vnets + subnets` creates, one apply.
/// - `Existing`: one `GET /cluster/sdn/vnets`, no apply.
///
/// On failure, objects created so far are deleted again and the error says which. When the
/// apply itself fails, the deletions are left pending (not applied): if PVE applied part of
/// the network, the next apply (any sample's) or [`teardown_by_ids`] finishes the removal.
/// `ids.vnets` must hold at least as many ids as the topology has vnets.
pub async fn create_network<A: Applier + ?Sized>(
    client: &PveClient,
    spec: &SdnSpec,
    ids: &NetworkIds,
    opts: &NetworkOptions,
    reservations: &SubnetReservations,
    applier: &A,
) -> Result<Network, SdnError> {
    spec.validate()?;
    match spec {
        SdnSpec::Existing => existing(client, opts).await,
        SdnSpec::Auto => {
            let cands = candidates(opts)?;
            let net = auto(client, ids, opts, reservations, &cands).await;
            finish(client, net, ids, reservations, applier).await
        }
        SdnSpec::Topology(cfg) => {
            let checked = cfg.validate()?;
            if ids.vnets.len() < cfg.vnet_configs.len() {
                return Err(SdnError::invalid(
                    "ids.vnets",
                    format!("{} ids", ids.vnets.len()),
                    format!(
                        "ask NetworkIds::for_sample for {} vnets",
                        cfg.vnet_configs.len()
                    ),
                ));
            }
            let existing = ipam_subnets(client).await?;
            for c in &checked {
                if let Some((o, z)) = existing.iter().find(|(n, _)| n.overlaps(&c.net)) {
                    return Err(SdnError::SubnetInUse {
                        field: c.field.clone(),
                        cidr: c.net.to_string(),
                        existing: o.to_string(),
                        owner: format!("zone {z}"),
                    });
                }
            }
            let nets: Vec<Ipv4Net> = checked.iter().map(|c| c.net).collect();
            if let Err((n, o, z)) = reservations.reserve_all(&nets, &ids.zone) {
                let field = checked
                    .iter()
                    .find(|c| c.net == n)
                    .map(|c| c.field.clone())
                    .unwrap_or_default();
                return Err(SdnError::SubnetInUse {
                    field,
                    cidr: n.to_string(),
                    existing: o.to_string(),
                    owner: format!("another sample of this process (zone {z})"),
                });
            }
            let net = topology(client, cfg, ids, opts).await;
            finish(client, net, ids, reservations, applier).await
        }
    }
}

async fn finish<A: Applier + ?Sized>(
    client: &PveClient,
    created: Result<(Network, Vec<Made>), SdnError>,
    ids: &NetworkIds,
    reservations: &SubnetReservations,
    applier: &A,
) -> Result<Network, SdnError> {
    let (net, made) = match created {
        Ok(x) => x,
        Err(e) => {
            reservations.release_zone(&ids.zone);
            return Err(e);
        }
    };
    if let Err(e) = applier.apply().await {
        let e = undo(client, made, "SDN apply".into(), e).await;
        reservations.release_zone(&ids.zone);
        return Err(e);
    }
    Ok(net)
}

async fn existing(client: &PveClient, opts: &NetworkOptions) -> Result<Network, SdnError> {
    let path = "/cluster/sdn/vnets";
    // Only applied vnets are bridges a VM can start on; PVE's default listing is the edited
    // configuration, which also holds vnets nobody applied yet.
    let v = client
        .get(path, &Params::new().with("running", true))
        .await
        .map_err(api(format!("GET {path}")))?;
    let existing = array(v, path)?
        .iter()
        .filter_map(|e| {
            Some(ExistingVnet {
                id: e.get("vnet")?.as_str()?.to_owned(),
                alias: prop(e, "alias").map(str::to_owned),
                zone: prop(e, "zone").map(str::to_owned),
            })
        })
        .collect();
    Ok(Network {
        zone: None,
        vnets: vec![],
        existing,
        egress: opts.egress,
    })
}

/// `ipam=pve` + `dhcp=dnsmasq` together, as the peer does (`use_pve_ipam_dnsnmasq`).
async fn create_zone(client: &PveClient, zone: &str, dhcp: bool) -> Result<(), SdnError> {
    let p = Params::new()
        .with("zone", zone)
        .with("type", "simple")
        .with_opt("ipam", dhcp.then_some("pve"))
        .with_opt("dhcp", dhcp.then_some("dnsmasq"));
    client
        .post("/cluster/sdn/zones", &p)
        .await
        .map(|_| ())
        .map_err(api(format!("POST /cluster/sdn/zones (zone {zone})")))
}

async fn auto(
    client: &PveClient,
    ids: &NetworkIds,
    opts: &NetworkOptions,
    reservations: &SubnetReservations,
    cands: &[Ipv4Net],
) -> Result<(Network, Vec<Made>), SdnError> {
    let taken: Vec<Ipv4Net> = ipam_subnets(client)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let zone = ids.zone.clone();
    let mut made = Vec::new();
    if let Err(e) = create_zone(client, &zone, true).await {
        return Err(undo(client, made, format!("creating zone {zone}"), e).await);
    }
    made.push(Made::Zone(zone.clone()));
    let mut chosen = None;
    for _ in 0..AUTO_ATTEMPTS {
        let Some(net) =
            reservations.reserve_first_free(cands, &taken, &zone, opts.pick == AutoPick::Random)
        else {
            let cause = SdnError::NoFreeSubnet {
                supernet: searched(opts),
            };
            return Err(undo(client, made, "choosing a subnet".into(), cause).await);
        };
        let vnet = auto_vnet_id(&net);
        let p = Params::new().with("vnet", &vnet).with("zone", &zone);
        match client.post("/cluster/sdn/vnets", &p).await {
            Ok(_) => {
                chosen = Some((net, vnet));
                break;
            }
            // Another process holds this /24 (its vnet carries the same id): pick again.
            Err(e)
                if e.pve_message()
                    .is_some_and(|m| m.contains("already defined")) =>
            {
                tracing::debug!(%net, "auto subnet taken by another process, picking again");
                reservations.mark_foreign(net);
            }
            Err(e) => {
                reservations.release_zone(&zone);
                let cause = SdnError::api(format!("POST /cluster/sdn/vnets (vnet {vnet})"), e);
                return Err(undo(client, made, format!("creating vnet {vnet}"), cause).await);
            }
        }
    }
    let Some((net, vnet)) = chosen else {
        let cause = SdnError::NoFreeSubnet {
            supernet: searched(opts),
        };
        let step = format!("choosing a subnet ({AUTO_ATTEMPTS} collisions)");
        return Err(undo(client, made, step, cause).await);
    };
    made.push(Made::Vnet(vnet.clone()));
    let subnet = SubnetInfo {
        id: subnet_id(&zone, &net),
        cidr: net.to_string(),
        gateway: net.host(1).to_string(),
        snat: opts.egress == Egress::Internet,
        dhcp_ranges: vec![DhcpRange {
            start: net.host(50).to_string(),
            end: net.host(100).to_string(),
        }],
    };
    if let Err(cause) = create_subnet(client, &vnet, &subnet).await {
        let step = format!("creating subnet {}", subnet.cidr);
        return Err(undo(client, made, step, cause).await);
    }
    made.push(Made::Subnet {
        vnet: vnet.clone(),
        id: subnet.id.clone(),
    });
    let network = Network {
        zone: Some(zone),
        vnets: vec![VnetInfo {
            id: vnet,
            alias: None,
            subnets: vec![subnet],
        }],
        existing: vec![],
        egress: opts.egress,
    };
    Ok((network, made))
}

/// PVE's id of a subnet: `<zone>-<network>-<prefix>`.
fn subnet_id(zone: &str, net: &Ipv4Net) -> String {
    format!("{zone}-{}-{}", net.network(), net.prefix())
}

/// `POST /cluster/sdn/vnets/{vnet}/subnets` for `subnet`.
async fn create_subnet(
    client: &PveClient,
    vnet: &str,
    subnet: &SubnetInfo,
) -> Result<(), SdnError> {
    let path = format!("/cluster/sdn/vnets/{vnet}/subnets");
    client
        .post(&path, &subnet_params(subnet))
        .await
        .map(drop)
        .map_err(|e| SdnError::api(format!("POST {path} ({})", subnet.cidr), e))
}

async fn topology(
    client: &PveClient,
    cfg: &crate::config::SdnConfig,
    ids: &NetworkIds,
    opts: &NetworkOptions,
) -> Result<(Network, Vec<Made>), SdnError> {
    let zone = ids.zone.clone();
    let mut made = Vec::new();
    if let Err(e) = create_zone(client, &zone, cfg.use_pve_ipam_dnsnmasq).await {
        return Err(undo(client, made, format!("creating zone {zone}"), e).await);
    }
    made.push(Made::Zone(zone.clone()));
    let mut vnets = Vec::new();
    for (vc, vnet) in cfg.vnet_configs.iter().zip(&ids.vnets) {
        let p = Params::new()
            .with("vnet", vnet)
            .with("zone", &zone)
            .with_opt("alias", vc.alias.as_deref());
        if let Err(e) = client.post("/cluster/sdn/vnets", &p).await {
            let cause = SdnError::api(format!("POST /cluster/sdn/vnets (vnet {vnet})"), e);
            return Err(undo(client, made, format!("creating vnet {vnet}"), cause).await);
        }
        made.push(Made::Vnet(vnet.clone()));
        let mut subnets = Vec::new();
        for s in &vc.subnets {
            let net: Ipv4Net = s.cidr.parse().expect("validated");
            let info = SubnetInfo {
                id: subnet_id(&zone, &net),
                cidr: net.to_string(),
                gateway: s.gateway.trim().to_owned(),
                snat: s.snat,
                dhcp_ranges: s.dhcp_ranges.clone(),
            };
            if let Err(cause) = create_subnet(client, vnet, &info).await {
                let step = format!("creating subnet {}", info.cidr);
                return Err(undo(client, made, step, cause).await);
            }
            made.push(Made::Subnet {
                vnet: vnet.clone(),
                id: info.id.clone(),
            });
            subnets.push(info);
        }
        vnets.push(VnetInfo {
            id: vnet.clone(),
            alias: vc.alias.clone(),
            subnets,
        });
    }
    Ok((
        Network {
            zone: Some(zone),
            vnets,
            existing: vec![],
            egress: opts.egress,
        },
        made,
    ))
}

async fn delete_all(
    client: &PveClient,
    zone: &str,
    objs: Vec<Made>,
) -> Result<TeardownReport, SdnError> {
    let mut report = TeardownReport::default();
    let mut failures = Vec::new();
    for m in objs {
        match client.delete(&m.path(), &Params::new()).await {
            Ok(_) => report.deleted.push(m.label()),
            Err(e) if e.is_not_found() => report.already_gone.push(m.label()),
            Err(e) => failures.push(format!("{}: {e}", m.label())),
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(SdnError::Teardown {
            zone: zone.into(),
            failures,
        })
    }
}

fn ordered(zone: &str, vnets: Vec<(String, Vec<String>)>) -> Vec<Made> {
    let mut objs = Vec::new();
    for (v, subs) in &vnets {
        for s in subs {
            objs.push(Made::Subnet {
                vnet: v.clone(),
                id: s.clone(),
            });
        }
    }
    objs.extend(vnets.into_iter().map(|(v, _)| Made::Vnet(v)));
    objs.push(Made::Zone(zone.to_owned()));
    objs
}

/// Removes the sample's network (subnets, vnets, zone; then one apply) and releases its
/// reservations. Idempotent: objects already gone are skipped, and the apply always runs,
/// so a teardown whose apply failed can simply be repeated. `Existing` networks own nothing.
pub async fn teardown<A: Applier + ?Sized>(
    client: &PveClient,
    network: &Network,
    reservations: &SubnetReservations,
    applier: &A,
) -> Result<TeardownReport, SdnError> {
    let Some(zone) = &network.zone else {
        return Ok(TeardownReport::default());
    };
    let vnets = network
        .vnets
        .iter()
        .map(|v| {
            (
                v.id.clone(),
                v.subnets.iter().map(|s| s.id.clone()).collect(),
            )
        })
        .collect();
    let deleted = delete_all(client, zone, ordered(zone, vnets)).await;
    applier.apply().await?;
    let report = deleted?;
    reservations.release_zone(zone);
    Ok(report)
}

/// Deletes zone `zone` with its vnets and subnets, pending ones included, found from PVE's
/// state alone (for crash cleanup); does not apply. Costs one vnet listing, one subnet
/// listing per vnet, and one delete per object.
pub async fn delete_by_ids(client: &PveClient, zone: &str) -> Result<TeardownReport, SdnError> {
    let pending = Params::new().with("pending", true);
    let path = "/cluster/sdn/vnets";
    let v = client
        .get(path, &pending)
        .await
        .map_err(api(format!("GET {path}")))?;
    let mut vnets = Vec::new();
    for e in array(v, path)? {
        if prop(&e, "zone") != Some(zone)
            || e.get("state").and_then(Value::as_str) == Some("deleted")
        {
            continue;
        }
        let Some(id) = e.get("vnet").and_then(Value::as_str) else {
            continue;
        };
        let spath = format!("/cluster/sdn/vnets/{id}/subnets");
        let subs = match client.get(&spath, &pending).await {
            Ok(s) => array(s, &spath)?,
            Err(e) if e.is_not_found() => vec![],
            Err(e) => return Err(SdnError::api(format!("GET {spath}"), e)),
        };
        let ids = subs
            .iter()
            .filter(|s| s.get("state").and_then(Value::as_str) != Some("deleted"))
            .filter_map(|s| s.get("subnet").and_then(Value::as_str).map(str::to_owned))
            .collect();
        vnets.push((id.to_owned(), ids));
    }
    delete_all(client, zone, ordered(zone, vnets)).await
}

/// [`delete_by_ids`], then one apply.
pub async fn teardown_by_ids<A: Applier + ?Sized>(
    client: &PveClient,
    zone: &str,
    applier: &A,
) -> Result<TeardownReport, SdnError> {
    let deleted = delete_by_ids(client, zone).await;
    applier.apply().await?;
    deleted
}

/// Zones (applied or pending) whose id follows this crate's scheme: `(zone, run_key, sample)`.
/// One call (`GET /cluster/sdn/zones?pending=1`).
pub async fn list_owned_zones(client: &PveClient) -> Result<Vec<(String, String, u32)>, SdnError> {
    let path = "/cluster/sdn/zones";
    let v = client
        .get(path, &Params::new().with("pending", true))
        .await
        .map_err(api(format!("GET {path}")))?;
    Ok(array(v, path)?
        .iter()
        .filter_map(|e| {
            let z = e.get("zone")?.as_str()?;
            let (run, sample) = crate::ids::parse_owned_zone(z)?;
            Some((z.to_owned(), run, sample))
        })
        .collect())
}
