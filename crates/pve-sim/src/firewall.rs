//! The PVE firewall's configuration: datacenter options, security groups with their rules,
//! and per-VM options and rules. Only the configuration is modelled; no packet is filtered.

use std::collections::BTreeMap;

/// One rule as PVE stores it (`type`, `action`, `source`, `dest`, `enable`, ...).
pub type Rule = BTreeMap<String, String>;

/// A security group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// The group's comment.
    pub comment: Option<String>,
    /// Rules, position 0 first.
    pub rules: Vec<Rule>,
}

/// A VM's firewall configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmFirewall {
    /// Options set with `PUT .../firewall/options` (unset ones keep PVE's defaults).
    pub options: BTreeMap<String, String>,
    /// Rules, position 0 first.
    pub rules: Vec<Rule>,
}

/// Cluster-wide firewall configuration (`/etc/pve/firewall/cluster.fw` and `<vmid>.fw`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Firewall {
    /// Datacenter options.
    pub options: BTreeMap<String, String>,
    /// Security groups by name.
    pub groups: BTreeMap<String, Group>,
    /// Per-VM configuration by vmid (removed with the VM).
    pub vms: BTreeMap<u32, VmFirewall>,
}

/// Inserts `rule` where PVE's `Rules.pm` puts it: at `pos` when given (appended past the
/// end), otherwise at the top.
pub fn insert_rule(rules: &mut Vec<Rule>, rule: Rule, pos: Option<usize>) {
    match pos {
        Some(p) if p < rules.len() => rules.insert(p, rule),
        Some(_) => rules.push(rule),
        None => rules.insert(0, rule),
    }
}
