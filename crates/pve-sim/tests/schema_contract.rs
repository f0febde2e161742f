//! Contract test: the hand-written route table (`src/routes.rs`) against the official PVE
//! 9.2.3 API schema.
//!
//! The schema is AGPL data kept outside the repository (`shared/pve-api/`, next to the
//! checkout); it is read here at test time only. Every declared route must exist in it with
//! the same parameter names, and each parameter must agree on type, enum values,
//! optional-ness, limits, pattern, format and (for `NAME[n]`) index count. All differences
//! are collected and reported together, one per line.
//!
//! When the schema file is missing the test is skipped with a loud message on stderr, unless
//! `CI` is set, in which case it fails. `PVE_API_SCHEMA` overrides the file's location.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use pve_sim::spec::{self, ParamSpec, ParamType, Route};
use serde_json::{Value, json};

const SCHEMA_FILE: &str = "shared/pve-api/pve-api-schema.json";

/// Keys of a scalar parameter's schema that this checker compares, or that do not affect
/// validation. Any other key is reported, so a new kind of rule cannot slip by unnoticed.
const SCALAR_KEYS: &[&str] = &[
    "default",
    "description",
    "enum",
    "format",
    "format_description",
    "maxLength",
    "maximum",
    "minLength",
    "minimum",
    "optional",
    "pattern",
    "requires",
    "type",
    "typetext",
    "verbose_description",
];

/// The same for an array parameter (its string limits live in `items`).
const ARRAY_KEYS: &[&str] = &[
    "default",
    "description",
    "items",
    "optional",
    "requires",
    "type",
    "typetext",
    "verbose_description",
];

/// The same for an array's `items`.
const ITEM_KEYS: &[&str] = &[
    "description",
    "format",
    "maxLength",
    "minLength",
    "pattern",
    "type",
    "typetext",
];

/// Indexed parameters whose description states a range PVE does not enforce, with the
/// count we declare instead.
const COUNT_OVERRIDES: &[(&str, u32)] = &[
    // "n is 0 to 4, for machine version >= 7.1 ... n can be up to 14": qemu-server
    // registers usb0..usb13 ($MAX_USB_DEVICES = 14); the machine check comes later.
    ("usb[n]", 14),
];

fn schema_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("PVE_API_SCHEMA") {
        return vec![PathBuf::from(p)];
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // `shared/` sits at the workspace root or next to the checkout (`../shared`).
    vec![
        manifest.join("../..").join(SCHEMA_FILE),
        manifest.join("../../..").join(SCHEMA_FILE),
    ]
}

/// The parsed schema, or `None` (after a loud notice) when it is absent outside CI.
fn schema() -> Option<&'static Value> {
    static SCHEMA: OnceLock<Option<Value>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let candidates = schema_candidates();
            let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                let tried: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                let msg = format!("schema not found at {}", tried.join(" or "));
                if std::env::var_os("CI").is_some() {
                    panic!("{msg} (required when CI is set; set PVE_API_SCHEMA to its path)");
                }
                // Straight to the stream: the test harness swallows `eprintln!` of passing tests.
                let banner = format!("\n**********\nSKIPPED: {msg}\n**********\n\n");
                let _ = std::io::stderr().write_all(banner.as_bytes());
                return None;
            };
            let text = std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            Some(
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display())),
            )
        })
        .as_ref()
}

/// Every method in the schema tree, keyed by `(METHOD, path)`.
fn methods(schema: &Value) -> BTreeMap<(String, String), &Value> {
    fn walk<'a>(node: &'a Value, out: &mut BTreeMap<(String, String), &'a Value>) {
        let path = node["path"].as_str().unwrap_or_default();
        if let Some(info) = node.get("info").and_then(Value::as_object) {
            for (verb, method) in info {
                out.insert((verb.clone(), path.to_owned()), method);
            }
        }
        for child in node
            .get("children")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(child, out);
        }
    }
    let mut out = BTreeMap::new();
    for root in schema.as_array().expect("schema is an array of roots") {
        walk(root, &mut out);
    }
    out
}

/// A schema number, which Perl may have emitted as a string (`"minimum" : "0"`).
fn num(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `optional: 1` (or `"1"`/`true`); `0` and absence mean required.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !matches!(s.as_str(), "" | "0"),
        _ => false,
    }
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// The range an indexed parameter's description states ("n is 0 to 30" gives 31).
fn described_count(schema_param: &Value) -> Option<u32> {
    let text = schema_param["description"].as_str()?;
    let rest = &text[text.find("n is 0 to ")? + "n is 0 to ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u32>().ok().map(|n| n + 1)
}

/// Records `what ours vs schema theirs` when the two differ.
fn differ(out: &mut Vec<String>, what: &str, ours: String, theirs: String) {
    if ours != theirs {
        out.push(format!("{what} {ours} vs schema {theirs}"));
    }
}

/// Reports keys of a schema object that this checker does not compare.
fn unmodelled(out: &mut Vec<String>, prefix: &str, schema: &Value, known: &[&str]) {
    if let Some(obj) = schema.as_object() {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            out.push(format!("schema key `{prefix}{key}` is not modelled"));
        }
    }
}

/// Compares one declared parameter with its schema entry.
fn diff_param(ours: &ParamSpec, theirs: &Value, out: &mut Vec<String>) {
    let ty = ours.ty.schema_name().to_owned();
    differ(out, "type", ty, show(theirs["type"].as_str()));

    // `enum: null` (download-url's `compression`) validates like no enum at all.
    let their_enum: Option<Vec<String>> = theirs["enum"].as_array().map(|a| {
        a.iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect()
    });
    let our_enum = match &ours.ty {
        ParamType::Enum(values) => Some(values.clone()),
        _ => None,
    };
    match (&our_enum, &their_enum) {
        (Some(o), Some(t)) => {
            let (os, ts): (BTreeSet<_>, BTreeSet<_>) = (o.iter().collect(), t.iter().collect());
            // Same set in another order still counts: error messages list them in PVE's order.
            let what = if os == ts { "enum order" } else { "enum" };
            differ(out, what, o.join("|"), t.join("|"));
        }
        (o, t) => differ(
            out,
            "enum",
            show(o.as_ref().map(|v| v.join("|"))),
            show(t.as_ref().map(|v| v.join("|"))),
        ),
    }

    let optional = truthy(theirs.get("optional")).to_string();
    differ(out, "optional", ours.optional.to_string(), optional);
    differ(out, "min", show(ours.min), show(num(theirs.get("minimum"))));
    differ(out, "max", show(ours.max), show(num(theirs.get("maximum"))));

    // Our string limits, format and pattern apply to each item of an array, so compare them
    // with `items`; PVE's arrays carry none of their own.
    let limits = match &ours.ty {
        ParamType::Array(item) => {
            let items = &theirs["items"];
            let item_type = item.schema_name().to_owned();
            differ(out, "item type", item_type, show(items["type"].as_str()));
            if let ParamType::Enum(_) = **item {
                out.push("item enums are not compared by this checker".to_owned());
            }
            unmodelled(out, "items.", items, ITEM_KEYS);
            unmodelled(out, "", theirs, ARRAY_KEYS);
            items
        }
        _ => {
            unmodelled(out, "", theirs, SCALAR_KEYS);
            theirs
        }
    };
    let min_len = num(limits.get("minLength"));
    differ(out, "minlen", show(ours.min_len), show(min_len));
    let max_len = num(limits.get("maxLength"));
    differ(out, "maxlen", show(ours.max_len), show(max_len));
    let pattern = limits["pattern"].as_str();
    differ(out, "pattern", show(ours.pattern.as_deref()), show(pattern));
    let their_format = match limits.get("format") {
        None | Some(Value::Null) => None,
        Some(Value::Object(_)) => Some("propstring".to_owned()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(format!("unexpected {other}")),
    };
    differ(
        out,
        "format",
        show(ours.format.as_deref()),
        show(their_format),
    );

    if ours.is_indexed() {
        let name = ours.name.as_str();
        match COUNT_OVERRIDES.iter().find(|(n, _)| *n == name) {
            Some((_, c)) if ours.count != Some(*c) => {
                out.push(format!(
                    "count {} vs {c} in COUNT_OVERRIDES",
                    show(ours.count)
                ));
            }
            Some(_) => {}
            None => {
                if let Some(c) = described_count(theirs) {
                    differ(out, "count", show(ours.count), c.to_string());
                }
            }
        }
    } else if ours.count.is_some() {
        out.push(format!(
            "count {} on a parameter that is not indexed",
            show(ours.count)
        ));
    }
}

/// Every difference between one route and its schema method, one line each.
fn diff_route(schema_method: &Value, route: &Route) -> Vec<String> {
    let at = format!("{} {}", route.method, route.path);
    let empty = serde_json::Map::new();
    let props = schema_method["parameters"]["properties"]
        .as_object()
        .unwrap_or(&empty);
    let mut out = Vec::new();
    for name in props.keys().filter(|n| !route.params.contains_key(*n)) {
        out.push(format!(
            "{at}: param `{name}` is in the schema but not declared"
        ));
    }
    for (name, ours) in &route.params {
        let Some(theirs) = props.get(name) else {
            out.push(format!(
                "{at}: param `{name}` is declared but not in the schema"
            ));
            continue;
        };
        let mut diffs = Vec::new();
        diff_param(ours, theirs, &mut diffs);
        out.extend(
            diffs
                .into_iter()
                .map(|d| format!("{at}: param `{name}`: {d}")),
        );
    }
    out
}

#[test]
fn routes_match_schema() {
    let Some(schema) = schema() else { return };
    let methods = methods(schema);
    let mut diffs = Vec::new();
    let mut seen = BTreeSet::new();
    for route in spec::routes() {
        if !seen.insert((route.method, route.path)) {
            diffs.push(format!("{} {}: declared twice", route.method, route.path));
        }
        match methods.get(&(route.method.to_owned(), route.path.to_owned())) {
            Some(method) => diffs.extend(diff_route(method, route)),
            None => diffs.push(format!(
                "{} {}: not in the schema",
                route.method, route.path
            )),
        }
    }
    assert!(
        diffs.is_empty(),
        "{} difference(s) between src/routes.rs and the PVE schema:\n{}\n",
        diffs.len(),
        diffs.join("\n")
    );
}

/// A copy of `route` with its parameters parsed from `params` instead.
fn with_params(route: &Route, params: &str) -> Route {
    Route {
        params: spec::parse_params(params).expect("modified spec parses"),
        ..route.clone()
    }
}

#[test]
fn checker_reports_a_renamed_param() {
    let Some(schema) = schema() else { return };
    let (method, path) = ("POST", "/nodes/{node}/qemu/{vmid}/clone");
    let route = spec::routes()
        .iter()
        .find(|r| r.method == method && r.path == path)
        .expect("clone route declared");
    let raw = pve_sim::routes::ROUTES
        .iter()
        .find(|r| r.method == method && r.path == path)
        .expect("clone route declared")
        .params;
    let schema_method = methods(schema)[&(method.to_owned(), path.to_owned())];
    assert_eq!(diff_route(schema_method, route), Vec::<String>::new());

    let renamed = raw.replacen("newid ", "newvmid ", 1);
    assert_ne!(renamed, raw, "the spec has a `newid` line to rename");
    let diffs = diff_route(schema_method, &with_params(route, &renamed));
    assert_eq!(
        diffs,
        [
            format!("{method} {path}: param `newid` is in the schema but not declared"),
            format!("{method} {path}: param `newvmid` is declared but not in the schema"),
        ]
    );
}

#[test]
fn checker_reports_each_kind_of_difference() {
    // A made-up method, not taken from the schema, with one drift per parameter.
    let schema_method = json!({"parameters": {"properties": {
        "a": {"type": "string"},
        "b": {"type": "string", "enum": ["x", "y"], "optional": 1},
        "c": {"type": "integer", "minimum": "1", "maximum": 9},
        "d": {"type": "string", "maxLength": 8, "minLength": 2, "pattern": "[a-z]+"},
        "e": {"type": "string", "format": {"key": {"type": "string"}}},
        "f": {"type": "string", "format": "pve-node", "optional": 0},
        "g": {"type": "array", "items": {"type": "string", "format": "ip"}},
        "h[n]": {"type": "string", "description": "Disk (n is 0 to 3).", "optional": 1},
        "i": {"type": "string", "oneOf": []},
        "j": {"type": "string", "enum": null},
        "k": {"type": "string", "enum": ["x", "y"]},
        "missing": {"type": "string"},
    }}});
    let route = Route {
        method: "POST",
        path: "/x",
        segments: vec!["x"],
        params: spec::parse_params(
            "a integer
             b enum=x|z
             c integer min=0 max=9
             d string maxlen=9 minlen=2 pattern=[a-z]*
             e string format=pve-configid
             f? string
             g array items=integer format=ip
             h[n]? string count=3
             i string
             j string
             k enum=y|x
             extra boolean",
        )
        .unwrap(),
    };
    let diffs = diff_route(&schema_method, &route);
    let expected = [
        "POST /x: param `missing` is in the schema but not declared",
        "POST /x: param `a`: type integer vs schema string",
        "POST /x: param `b`: enum x|z vs schema x|y",
        "POST /x: param `b`: optional false vs schema true",
        "POST /x: param `c`: min 0 vs schema 1",
        "POST /x: param `d`: maxlen 9 vs schema 8",
        "POST /x: param `d`: pattern [a-z]* vs schema [a-z]+",
        "POST /x: param `e`: format pve-configid vs schema propstring",
        "POST /x: param `extra` is declared but not in the schema",
        "POST /x: param `f`: optional true vs schema false",
        "POST /x: param `f`: format none vs schema pve-node",
        "POST /x: param `g`: item type integer vs schema string",
        "POST /x: param `h[n]`: count 3 vs schema 4",
        "POST /x: param `i`: schema key `oneOf` is not modelled",
        "POST /x: param `k`: enum order y|x vs schema x|y",
    ];
    assert_eq!(diffs, expected, "\n{}", diffs.join("\n"));
}

/// A permission rule in one comparable shape: the schema's `check` arrays with their
/// trailing options (`"any", 1`, `"require_param", "pool"`) turned into a sorted map.
fn norm_check(c: &Value) -> Value {
    let Some(items) = c.as_array() else {
        return json!({"unknown": c});
    };
    match items.first().and_then(Value::as_str) {
        Some("perm") => {
            let opts: BTreeMap<String, Value> = items[3..]
                .chunks(2)
                .map(|kv| (kv[0].as_str().unwrap_or("?").to_owned(), kv[1].clone()))
                .collect();
            json!(["perm", items[1], items[2], opts])
        }
        Some(op @ ("and" | "or")) => {
            let mut out = vec![json!(op)];
            out.extend(items[1..].iter().map(norm_check));
            Value::Array(out)
        }
        _ => json!({"unknown": c}),
    }
}

fn theirs_permission(method: &Value) -> Value {
    match method.get("permissions") {
        None => json!("root@pam only"),
        Some(p) => match (p.get("check"), p.get("user")) {
            (Some(c), _) => norm_check(c),
            (None, Some(u)) => json!({"user": u}),
            _ => json!({"unknown": p}),
        },
    }
}

fn ours_permission(c: &pve_sim::access::Check) -> Value {
    use pve_sim::access::Check;
    match c {
        Check::RootOnly => json!("root@pam only"),
        Check::World => json!({"user": "world"}),
        Check::All => json!({"user": "all"}),
        Check::Perm {
            path,
            privs,
            any,
            require_param,
        } => {
            let mut opts = BTreeMap::new();
            if *any {
                opts.insert("any".to_owned(), json!(1));
            }
            if let Some(p) = require_param {
                opts.insert("require_param".to_owned(), json!(p));
            }
            json!(["perm", path, privs, opts])
        }
        Check::And(cs) | Check::Or(cs) => {
            let op = if matches!(c, Check::And(_)) {
                "and"
            } else {
                "or"
            };
            let mut out = vec![json!(op)];
            out.extend(cs.iter().map(ours_permission));
            Value::Array(out)
        }
    }
}

#[test]
fn permission_rules_match_schema() {
    let Some(schema) = schema() else { return };
    let methods = methods(schema);
    let mut diffs = Vec::new();
    for route in spec::routes() {
        let Some(method) = methods.get(&(route.method.to_owned(), route.path.to_owned())) else {
            continue; // routes_match_schema reports it
        };
        let ours = ours_permission(&pve_sim::access::required(route.method, route.path));
        let theirs = theirs_permission(method);
        if ours != theirs {
            diffs.push(format!(
                "{} {}: ours {ours}, schema {theirs}",
                route.method, route.path
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} permission difference(s) between src/access.rs and the PVE schema:\n{}\n",
        diffs.len(),
        diffs.join("\n")
    );
}
