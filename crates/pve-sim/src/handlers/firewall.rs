//! Firewall routes: datacenter options, security groups and their rules, VM options and rules.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Ctx;
use crate::error::ApiError;
use crate::firewall::{Rule, insert_rule};
use crate::state::State;

/// Rule fields that are addressing or control, not stored in the rule.
const NOT_RULE: &[&str] = &["node", "vmid", "group", "pos", "digest", "delete", "moveto"];

/// The VM firewall's defaults (`pve-firewall`'s `$default_vm_options` as GET shows them).
const VM_DEFAULTS: &[(&str, &str)] = &[
    ("enable", "0"),
    ("policy_in", "DROP"),
    ("policy_out", "ACCEPT"),
    ("dhcp", "1"),
    ("ipfilter", "0"),
    ("macfilter", "1"),
    ("ndp", "1"),
    ("radv", "0"),
];

fn rule_from(ctx: &Ctx) -> Rule {
    ctx.params
        .iter()
        .filter(|(k, _)| !NOT_RULE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.join(",")))
        .collect()
}

fn rules_json(rules: &[Rule]) -> Value {
    Value::Array(
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut v = json!({ "pos": i });
                for (k, val) in r {
                    v[k] = match k.as_str() {
                        "enable" => json!(val.parse::<i64>().unwrap_or(0)),
                        _ => json!(val),
                    };
                }
                v
            })
            .collect(),
    )
}

/// `pve-firewall`'s `verify_rule`: a `group` rule must name an existing security group.
fn verify_rule(st: &State, rule: &Rule) -> Result<(), ApiError> {
    if rule.get("type").is_some_and(|t| t == "group") {
        let action = rule.get("action").map(String::as_str).unwrap_or_default();
        if !st.firewall.groups.contains_key(action) {
            return Err(ApiError::param(
                "action",
                format!("security group '{action}' does not exist"),
            ));
        }
    }
    Ok(())
}

fn pos(ctx: &Ctx) -> Option<usize> {
    ctx.int("pos").map(|p| p.max(0) as usize)
}

fn set_options(
    opts: &mut BTreeMap<String, String>,
    ctx: &Ctx,
    known: &[&str],
) -> Result<(), ApiError> {
    for d in ctx.str("delete").into_iter().flat_map(|d| d.split(',')) {
        let d = d.trim();
        if d.is_empty() {
            continue;
        }
        if !known.contains(&d) {
            return Err(ApiError::param("delete", format!("no such option '{d}'")));
        }
        opts.remove(d);
    }
    for k in known {
        if let Some(v) = ctx.str(k) {
            opts.insert((*k).to_owned(), v.to_owned());
        }
    }
    Ok(())
}

pub(super) fn handle(st: &mut State, ctx: &Ctx) -> Result<Value, ApiError> {
    let m = ctx.method.as_str();
    let route = ctx.route.path;
    match (m, route) {
        ("GET", "/cluster/firewall/options") => {
            let mut v = json!({});
            for (k, val) in &st.firewall.options {
                v[k] = match k.as_str() {
                    "enable" | "ebtables" => json!(val.parse::<i64>().unwrap_or(0)),
                    _ => json!(val),
                };
            }
            Ok(v)
        }
        ("PUT", "/cluster/firewall/options") => {
            let known = [
                "ebtables",
                "enable",
                "log_ratelimit",
                "policy_forward",
                "policy_in",
                "policy_out",
            ];
            let mut opts = st.firewall.options.clone();
            set_options(&mut opts, ctx, &known)?;
            st.firewall.options = opts;
            Ok(Value::Null)
        }
        ("GET", "/cluster/firewall/groups") => Ok(Value::Array(
            st.firewall
                .groups
                .iter()
                .map(|(name, g)| {
                    let mut v = json!({"group": name, "digest": digest(&g.rules)});
                    if let Some(c) = &g.comment {
                        v["comment"] = json!(c);
                    }
                    v
                })
                .collect(),
        )),
        ("POST", "/cluster/firewall/groups") => {
            let name = ctx.req("group").to_owned();
            if ctx.str("rename").is_some() {
                return Err(ApiError::new(
                    501,
                    "renaming security groups is not simulated",
                ));
            }
            if st.firewall.groups.contains_key(&name) {
                return Err(ApiError::param(
                    "group",
                    format!("Security group '{name}' already exists"),
                ));
            }
            st.firewall.groups.insert(
                name,
                crate::firewall::Group {
                    comment: ctx.str("comment").map(str::to_owned),
                    rules: vec![],
                },
            );
            Ok(Value::Null)
        }
        ("GET", "/cluster/firewall/groups/{group}") => {
            let g = group(st, ctx)?;
            Ok(rules_json(&g.rules))
        }
        ("POST", "/cluster/firewall/groups/{group}") => {
            let rule = rule_from(ctx);
            verify_rule(st, &rule)?;
            let p = pos(ctx);
            let name = ctx.req("group").to_owned();
            let g = st
                .firewall
                .groups
                .get_mut(&name)
                .ok_or_else(|| no_group(&name))?;
            insert_rule(&mut g.rules, rule, p);
            Ok(Value::Null)
        }
        ("DELETE", "/cluster/firewall/groups/{group}") => {
            let name = ctx.req("group").to_owned();
            let g = group(st, ctx)?;
            if !g.rules.is_empty() {
                return Err(ApiError::internal(format!(
                    "Security group '{name}' is not empty"
                )));
            }
            st.firewall.groups.remove(&name);
            Ok(Value::Null)
        }
        ("DELETE", "/cluster/firewall/groups/{group}/{pos}") => {
            let name = ctx.req("group").to_owned();
            let p = pos(ctx).unwrap_or(0);
            let g = st
                .firewall
                .groups
                .get_mut(&name)
                .ok_or_else(|| no_group(&name))?;
            if p >= g.rules.len() {
                return Err(ApiError::internal(format!("no rule at position {p}")));
            }
            g.rules.remove(p);
            Ok(Value::Null)
        }
        ("GET", "/nodes/{node}/qemu/{vmid}/firewall/options") => {
            let vmid = ctx.vmid();
            st.vm(ctx.node(), vmid)?;
            let mut v = json!({});
            for (k, d) in VM_DEFAULTS {
                v[*k] = json!(d.parse::<i64>().ok().map_or(json!(d), |n| json!(n)));
            }
            if let Some(fw) = st.firewall.vms.get(&vmid) {
                for (k, val) in &fw.options {
                    v[k] = val.parse::<i64>().map_or(json!(val), |n| json!(n));
                }
            }
            Ok(v)
        }
        ("PUT", "/nodes/{node}/qemu/{vmid}/firewall/options") => {
            let vmid = ctx.vmid();
            st.vm(ctx.node(), vmid)?;
            let known = [
                "dhcp",
                "enable",
                "ipfilter",
                "log_level_in",
                "log_level_out",
                "macfilter",
                "ndp",
                "policy_in",
                "policy_out",
                "radv",
            ];
            let fw = st.firewall.vms.entry(vmid).or_default();
            let mut opts = fw.options.clone();
            set_options(&mut opts, ctx, &known)?;
            fw.options = opts;
            Ok(Value::Null)
        }
        ("GET", "/nodes/{node}/qemu/{vmid}/firewall/rules") => {
            let vmid = ctx.vmid();
            st.vm(ctx.node(), vmid)?;
            let rules = vm_rules(st, vmid);
            Ok(rules_json(&rules))
        }
        ("POST", "/nodes/{node}/qemu/{vmid}/firewall/rules") => {
            let vmid = ctx.vmid();
            st.vm(ctx.node(), vmid)?;
            let rule = rule_from(ctx);
            verify_rule(st, &rule)?;
            let p = pos(ctx);
            insert_rule(&mut st.firewall.vms.entry(vmid).or_default().rules, rule, p);
            Ok(Value::Null)
        }
        ("GET", "/nodes/{node}/qemu/{vmid}/firewall/rules/{pos}") => {
            let vmid = ctx.vmid();
            st.vm(ctx.node(), vmid)?;
            let p = pos(ctx).unwrap_or(0);
            let rules = vm_rules(st, vmid);
            let all = rules_json(&rules);
            all.get(p)
                .cloned()
                .ok_or_else(|| ApiError::internal(format!("no rule at position {p}")))
        }
        ("DELETE", "/nodes/{node}/qemu/{vmid}/firewall/rules/{pos}") => {
            let vmid = ctx.vmid();
            st.vm(ctx.node(), vmid)?;
            let p = pos(ctx).unwrap_or(0);
            let rules = &mut st.firewall.vms.entry(vmid).or_default().rules;
            if p >= rules.len() {
                return Err(ApiError::internal(format!("no rule at position {p}")));
            }
            rules.remove(p);
            Ok(Value::Null)
        }
        _ => Err(ApiError::new(
            501,
            format!("Method '{m} {route}' not implemented"),
        )),
    }
}

fn no_group(name: &str) -> ApiError {
    ApiError::internal(format!("no such security group '{name}'"))
}

fn group<'a>(st: &'a State, ctx: &Ctx) -> Result<&'a crate::firewall::Group, ApiError> {
    let name = ctx.req("group");
    st.firewall.groups.get(name).ok_or_else(|| no_group(name))
}

/// A stand-in for PVE's config digest: changes whenever the rules change.
fn digest(rules: &[Rule]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("{rules:?}"));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A VM's firewall rules (none until a rule or option was set).
fn vm_rules(st: &State, vmid: u32) -> Vec<Rule> {
    st.firewall
        .vms
        .get(&vmid)
        .map(|f| f.rules.clone())
        .unwrap_or_default()
}
