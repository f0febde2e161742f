//! The eval-side SDN config, field for field the Python peer's (`sdn_config`), and its
//! validation. Everything is checked before any API call, and each error names its field.

use std::fmt;
use std::net::Ipv4Addr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SdnError;
use crate::net::{Ipv4Net, NetParseError};

/// The most vnets one sample may have (the peer's limit; our vnet ids carry one letter for it).
pub const MAX_VNETS: usize = 10;

/// `sdn_config`: `"auto"`, `null` (use existing vnets), or a topology.
///
/// Deserializes the peer's forms unchanged: the string `"auto"`, JSON `null`, or an object
/// `{vnet_configs, use_pve_ipam_dnsnmasq}`. For formats without a null (TOML, environment
/// variables through figment) the strings `"none"` and `"existing"` mean `null`. A missing
/// field should default to `auto` (the peer's default): use `#[serde(default)]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SdnSpec {
    /// One simple zone, one vnet, a free `/24` with gateway `.1`, DHCP and optional SNAT.
    #[default]
    Auto,
    /// Create nothing; NICs name existing vnets by alias.
    Existing,
    /// The user's vnets and subnets.
    Topology(SdnConfig),
}

/// A user topology (`SdnConfig` of the peer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdnConfig {
    /// 1 to 10 vnets.
    pub vnet_configs: Vec<VnetConfig>,
    /// PVE IPAM + dnsmasq DHCP for the zone (default true). When true at least one subnet
    /// needs a DHCP range; when false none may have one.
    #[serde(default = "yes")]
    pub use_pve_ipam_dnsnmasq: bool,
}

fn yes() -> bool {
    true
}

/// One vnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VnetConfig {
    /// The name NICs use (`vnet_alias`); PVE stores it as the vnet's `alias`.
    #[serde(default)]
    pub alias: Option<String>,
    /// Subnets; empty means no IPAM on this vnet (e.g. a router VM hands out addresses).
    #[serde(default)]
    pub subnets: Vec<SubnetConfig>,
}

/// One subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetConfig {
    /// The network, e.g. `10.10.0.0/24` (host bits must be zero).
    pub cidr: String,
    /// The gateway (the host's address on the vnet).
    pub gateway: String,
    /// Masquerade traffic leaving the subnet (outbound reachability also needs `Egress::Internet`).
    pub snat: bool,
    /// DHCP ranges handed out by dnsmasq.
    pub dhcp_ranges: Vec<DhcpRange>,
}

/// An inclusive DHCP range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpRange {
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

impl Serialize for SdnSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SdnSpec::Auto => s.serialize_str("auto"),
            SdnSpec::Existing => s.serialize_none(),
            SdnSpec::Topology(c) => c.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SdnSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SdnSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""auto", null (or "none") or an object with vnet_configs"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SdnSpec, E> {
                match v {
                    "auto" => Ok(SdnSpec::Auto),
                    "none" | "existing" => Ok(SdnSpec::Existing),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<SdnSpec, E> {
                Ok(SdnSpec::Existing)
            }
            fn visit_none<E: de::Error>(self) -> Result<SdnSpec, E> {
                Ok(SdnSpec::Existing)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<SdnSpec, D2::Error> {
                d.deserialize_any(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SdnSpec, A::Error> {
                SdnConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(SdnSpec::Topology)
            }
        }
        d.deserialize_any(V)
    }
}

/// A subnet after validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckedSubnet {
    pub net: Ipv4Net,
    pub field: String,
}

impl SdnSpec {
    /// Checks everything that can be checked without PVE. Fields are named from `sdn_config`.
    pub fn validate(&self) -> Result<(), SdnError> {
        match self {
            SdnSpec::Topology(c) => c.validate().map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// PVE's vnet `alias` pattern `(?^i:[\(\)-_.\w\d\s]{0,256})`: note that `\)-_` is a range
/// (`)` to `_`, which takes in digits, upper case, `*+,-./:;<=>?@[\]^`).
fn alias_char_ok(c: char) -> bool {
    c == '('
        || (')'..='_').contains(&c)
        || c == '.'
        || c.is_alphanumeric()
        || c == '_'
        || c.is_whitespace()
}

fn ip(field: &str, v: &str) -> Result<Ipv4Addr, SdnError> {
    v.trim().parse::<Ipv4Addr>().map_err(|_| {
        let fix = if v.parse::<std::net::Ipv6Addr>().is_ok() {
            "only IPv4 is supported: use an IPv4 address"
        } else {
            "write an IPv4 address such as 10.0.0.1"
        };
        SdnError::invalid(field, v, fix)
    })
}

impl SdnConfig {
    /// Checks the topology; returns every subnet parsed, with its `cidr` field name.
    pub(crate) fn validate(&self) -> Result<Vec<CheckedSubnet>, SdnError> {
        let root = "sdn_config";
        let n = self.vnet_configs.len();
        if n == 0 || n > MAX_VNETS {
            return Err(SdnError::invalid(
                format!("{root}.vnet_configs"),
                format!("{n} vnets"),
                format!(
                    "give 1 to {MAX_VNETS} vnets (PVE's 8-character ids leave room for {MAX_VNETS} per sample)"
                ),
            ));
        }
        let mut all: Vec<CheckedSubnet> = Vec::new();
        let mut aliases: Vec<(&str, usize)> = Vec::new();
        let mut any_range = false;
        for (vi, v) in self.vnet_configs.iter().enumerate() {
            let vf = format!("{root}.vnet_configs[{vi}]");
            if let Some(a) = &v.alias {
                let f = format!("{vf}.alias");
                if a.chars().count() > 256 {
                    return Err(SdnError::invalid(f, a, "use at most 256 characters"));
                }
                if let Some(bad) = a.chars().find(|c| !alias_char_ok(*c)) {
                    return Err(SdnError::invalid(
                        f,
                        a,
                        format!(
                            "remove {bad:?}: PVE allows letters, digits, white space and ()*+,-./:;<=>?@[\\]^_"
                        ),
                    ));
                }
                if let Some((_, first)) = aliases.iter().find(|(x, _)| *x == a.as_str()) {
                    return Err(SdnError::invalid(
                        f,
                        a,
                        format!(
                            "vnet_configs[{first}] has the same alias: NICs could not tell them apart"
                        ),
                    ));
                }
                aliases.push((a, vi));
            }
            for (si, s) in v.subnets.iter().enumerate() {
                let sf = format!("{vf}.subnets[{si}]");
                let cf = format!("{sf}.cidr");
                let net: Ipv4Net = s.cidr.parse().map_err(|e| {
                    let fix = match e {
                        NetParseError::Ipv6 => "only IPv4 subnets are supported".to_owned(),
                        NetParseError::HostBits(n) => {
                            format!("host bits are set: did you mean {n}?")
                        }
                        NetParseError::Prefix => "the prefix length must be 0 to 32".to_owned(),
                        NetParseError::Syntax => "write a network such as 10.0.0.0/24".to_owned(),
                    };
                    SdnError::invalid(&cf, &s.cidr, fix)
                })?;
                if net.prefix() > 30 || net.prefix() < 8 {
                    return Err(SdnError::invalid(
                        &cf,
                        &s.cidr,
                        "use a prefix from /8 to /30 (room for a gateway and guests, and no more than a /8)",
                    ));
                }
                if let Some(o) = all.iter().find(|o| o.net.overlaps(&net)) {
                    return Err(SdnError::invalid(
                        &cf,
                        &s.cidr,
                        format!(
                            "overlaps {} ({}): subnets of one sample must be disjoint",
                            o.net, o.field
                        ),
                    ));
                }
                let usable =
                    |a: Ipv4Addr| net.contains(a) && a != net.network() && a != net.broadcast();
                let gf = format!("{sf}.gateway");
                let gw = ip(&gf, &s.gateway)?;
                if !usable(gw) {
                    return Err(SdnError::invalid(
                        gf,
                        &s.gateway,
                        format!(
                            "use a host address inside {net} ({} to {})",
                            net.host(1),
                            Ipv4Addr::from(u32::from(net.broadcast()) - 1)
                        ),
                    ));
                }
                let mut ranges: Vec<(u32, u32, usize)> = Vec::new();
                for (ri, r) in s.dhcp_ranges.iter().enumerate() {
                    let rf = format!("{sf}.dhcp_ranges[{ri}]");
                    if !self.use_pve_ipam_dnsnmasq {
                        return Err(SdnError::invalid(
                            &rf,
                            format!("{}-{}", r.start, r.end),
                            "remove the DHCP ranges or set use_pve_ipam_dnsnmasq = true (without PVE's dnsmasq nobody serves them)",
                        ));
                    }
                    let start = ip(&format!("{rf}.start"), &r.start)?;
                    let end = ip(&format!("{rf}.end"), &r.end)?;
                    for (which, a, raw) in [("start", start, &r.start), ("end", end, &r.end)] {
                        if !usable(a) {
                            return Err(SdnError::invalid(
                                format!("{rf}.{which}"),
                                raw,
                                format!("use a host address inside {net}"),
                            ));
                        }
                    }
                    let (a, b) = (u32::from(start), u32::from(end));
                    if a > b {
                        return Err(SdnError::invalid(
                            &rf,
                            format!("{}-{}", r.start, r.end),
                            "start must not be after end",
                        ));
                    }
                    if (a..=b).contains(&u32::from(gw)) {
                        return Err(SdnError::invalid(
                            &rf,
                            format!("{}-{}", r.start, r.end),
                            format!("exclude the gateway {gw} from the range"),
                        ));
                    }
                    if let Some((_, _, o)) = ranges.iter().find(|(x, y, _)| a <= *y && *x <= b) {
                        return Err(SdnError::invalid(
                            &rf,
                            format!("{}-{}", r.start, r.end),
                            format!("overlaps dhcp_ranges[{o}]: DHCP ranges must be disjoint"),
                        ));
                    }
                    ranges.push((a, b, ri));
                    any_range = true;
                }
                all.push(CheckedSubnet { net, field: cf });
            }
        }
        if self.use_pve_ipam_dnsnmasq && !any_range {
            return Err(SdnError::invalid(
                format!("{root}.use_pve_ipam_dnsnmasq"),
                "true",
                "give at least one subnet a dhcp_ranges entry, or set use_pve_ipam_dnsnmasq = false",
            ));
        }
        Ok(all)
    }
}
