//! The simulator's own parameter table and PVE-style validation.
//!
//! Every route the simulator serves is declared in [`crate::routes::ROUTES`] with a small
//! line-based spec, one parameter per line:
//!
//! ```text
//! name[?] type [key=value ...]
//! ```
//!
//! - `?` marks an optional parameter (PVE: `optional: 1`); everything else is required.
//! - `type` is `string`, `integer`, `number`, `boolean`, `array` or `enum=a|b|c` (a string enum).
//! - keys: `min=`, `max=`, `minlen=`, `maxlen=`, `format=` (a named PVE format, or `propstring`
//!   for a `key=value,...` property string), `items=` (array item type), `count=` (how many
//!   wire names an indexed `NAME[n]` parameter has: `net[n] ... count=32` accepts `net0..net31`),
//!   and `pattern=` (must be last: the regex runs to the end of the line).
//! - for an `array`, `minlen=`, `maxlen=`, `format=` and `pattern=` apply to each item.
//! - blank lines and lines starting with `#` (comments) are skipped.
//!
//! The table is ours, written from what PVE accepts. A test (`tests/schema_contract.rs`) reads
//! the official schema from `../shared/pve-api` and fails on any difference in route, method,
//! parameter name, type, enum, optional-ness or limits, so the table cannot drift.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// One served route: method, templated path (`{node}`), and its parameter spec.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path below `/api2/json`, with `{placeholders}`.
    pub path: &'static str,
    /// The parameter lines (see the module docs).
    pub params: &'static str,
}

/// The type of a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    /// Free text (maybe constrained by format, pattern, lengths).
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `0/1`, `true/false`, `yes/no`, `on/off`.
    Boolean,
    /// Repeated values of an item type.
    Array(Box<ParamType>),
    /// A string from a fixed set.
    Enum(Vec<String>),
}

impl ParamType {
    /// The JSON-schema type name PVE uses.
    pub fn schema_name(&self) -> &'static str {
        match self {
            ParamType::String | ParamType::Enum(_) => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Array(_) => "array",
        }
    }
}

/// A parsed parameter declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Name as in the schema (`net[n]` for indexed ones).
    pub name: String,
    /// Whether it may be left out.
    pub optional: bool,
    /// Its type.
    pub ty: ParamType,
    /// Inclusive minimum (numbers).
    pub min: Option<f64>,
    /// Inclusive maximum (numbers).
    pub max: Option<f64>,
    /// Minimum length (strings).
    pub min_len: Option<usize>,
    /// Maximum length (strings).
    pub max_len: Option<usize>,
    /// Named PVE format, or `propstring`.
    pub format: Option<String>,
    /// Regex the whole value must match.
    pub pattern: Option<String>,
    /// For `NAME[n]`: how many indices exist.
    pub count: Option<u32>,
}

impl ParamSpec {
    /// True for `NAME[n]` parameters.
    pub fn is_indexed(&self) -> bool {
        self.name.ends_with("[n]")
    }
    /// The name without `[n]`.
    pub fn base_name(&self) -> &str {
        self.name.trim_end_matches("[n]")
    }
}

/// A route with its parameters parsed.
#[derive(Debug, Clone)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Templated path.
    pub path: &'static str,
    /// Path split into segments; placeholders keep their braces.
    pub segments: Vec<&'static str>,
    /// Parameters by name (indexed ones as `net[n]`).
    pub params: BTreeMap<String, ParamSpec>,
}

fn parse_type(t: &str) -> Result<ParamType, String> {
    Ok(match t {
        "string" => ParamType::String,
        "integer" => ParamType::Integer,
        "number" => ParamType::Number,
        "boolean" => ParamType::Boolean,
        "array" => ParamType::Array(Box::new(ParamType::String)),
        _ => match t.strip_prefix("enum=") {
            Some(list) => ParamType::Enum(list.split('|').map(str::to_owned).collect()),
            None => return Err(format!("unknown type {t:?}")),
        },
    })
}

/// Parses one route's spec lines.
pub fn parse_params(spec: &str) -> Result<BTreeMap<String, ParamSpec>, String> {
    let mut out = BTreeMap::new();
    for line in spec
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (head, pattern) = match line.split_once(" pattern=") {
            Some((h, p)) => (h, Some(p.to_owned())),
            None => (line, None),
        };
        let mut toks = head.split_whitespace();
        let raw_name = toks.next().ok_or("empty line")?;
        let (name, optional) = match raw_name.strip_suffix('?') {
            Some(n) => (n.to_owned(), true),
            None => (raw_name.to_owned(), false),
        };
        let ty = parse_type(toks.next().ok_or_else(|| format!("{name}: missing type"))?)?;
        let mut p = ParamSpec {
            name: name.clone(),
            optional,
            ty,
            min: None,
            max: None,
            min_len: None,
            max_len: None,
            format: None,
            pattern,
            count: None,
        };
        for kv in toks {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{name}: bad token {kv:?}"))?;
            let num = || {
                v.parse::<f64>()
                    .map_err(|_| format!("{name}: {k}={v} is not a number"))
            };
            match k {
                "min" => p.min = Some(num()?),
                "max" => p.max = Some(num()?),
                "minlen" => p.min_len = Some(num()? as usize),
                "maxlen" => p.max_len = Some(num()? as usize),
                "count" => p.count = Some(num()? as u32),
                "format" => p.format = Some(v.to_owned()),
                "items" => p.ty = ParamType::Array(Box::new(parse_type(v)?)),
                _ => return Err(format!("{name}: unknown key {k:?}")),
            }
        }
        if p.is_indexed() && p.count.is_none() {
            return Err(format!("{name}: indexed parameter needs count="));
        }
        if out.insert(name.clone(), p).is_some() {
            return Err(format!("{name}: declared twice"));
        }
    }
    Ok(out)
}

/// All routes, parsed once. Panics on a malformed table (a bug caught by any test).
pub fn routes() -> &'static [Route] {
    static ROUTES: OnceLock<Vec<Route>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        crate::routes::ROUTES
            .iter()
            .map(|r| Route {
                method: r.method,
                path: r.path,
                segments: r.path.trim_start_matches('/').split('/').collect(),
                params: parse_params(r.params)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", r.method, r.path)),
            })
            .collect()
    })
}

/// Values of a path's `{placeholders}`, in order.
pub type PathVars = Vec<(String, String)>;

/// Finds the route for `method` and concrete `path`; returns it with the path placeholders'
/// values. `Err(true)` when the path exists with another method (PVE: 501), `Err(false)` when
/// no such path exists.
pub fn find_route(method: &str, path: &str) -> Result<(&'static Route, PathVars), bool> {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let mut path_known = false;
    for r in routes() {
        let greedy = r.segments.last() == Some(&GREEDY);
        if r.segments.len() != segs.len() && !(greedy && segs.len() > r.segments.len()) {
            continue;
        }
        let mut vars = Vec::new();
        let last = r.segments.len() - 1;
        let ok = r
            .segments
            .iter()
            .zip(&segs)
            .enumerate()
            .all(|(i, (pat, seg))| {
                if pat.starts_with('{') {
                    let value = if i == last && greedy {
                        segs[i..].join("/")
                    } else {
                        seg.clone()
                    };
                    vars.push((pat.trim_matches(['{', '}']).to_owned(), value));
                    !seg.is_empty()
                } else {
                    pat == seg
                }
            });
        if ok {
            if r.method == method {
                return Ok((r, vars));
            }
            path_known = true;
        }
    }
    Err(path_known)
}

/// A trailing placeholder that takes the rest of the path, slashes included: pve-storage
/// mounts its content API with `fragmentDelimiter => ''` (`API2/Storage/Status.pm`), so
/// everything after `content/` is one volume id (`local:iso/x.iso`), sent as it is or with
/// its `/` percent-encoded.
const GREEDY: &str = "{volume}";

/// Parameters as received: name to values (several for repeated keys).
pub type RawParams = BTreeMap<String, Vec<String>>;

/// Checks `params` against `route` the way PVE does; returns the per-field error map of a 400
/// (`Parameter verification failed.`) or nothing.
pub fn validate(route: &Route, params: &RawParams) -> BTreeMap<String, String> {
    let mut errors = BTreeMap::new();
    for (name, values) in params {
        let Some(spec) = lookup(route, name) else {
            errors.insert(name.clone(), "property is not defined in schema and the schema does not allow additional properties".into());
            continue;
        };
        match &spec.ty {
            ParamType::Array(item) => {
                for v in values {
                    if let Err(e) = check_value(spec, item, v) {
                        errors.insert(name.clone(), e);
                        break;
                    }
                }
            }
            ty => {
                if values.len() > 1 {
                    errors.insert(
                        name.clone(),
                        format!("type check ('{}') failed - got ARRAY", ty.schema_name()),
                    );
                } else if let Err(e) = check_value(spec, ty, &values[0]) {
                    errors.insert(name.clone(), e);
                }
            }
        }
    }
    for spec in route.params.values() {
        if !spec.optional && !spec.is_indexed() && !params.contains_key(&spec.name) {
            errors.insert(
                spec.name.clone(),
                "property is missing and it is not optional".into(),
            );
        }
    }
    errors
}

/// The spec for a wire name, resolving `net0` to `net[n]`.
pub fn lookup<'r>(route: &'r Route, name: &str) -> Option<&'r ParamSpec> {
    if let Some(p) = route.params.get(name) {
        return Some(p);
    }
    let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
    let base = &name[..name.len() - digits.len()];
    if digits.is_empty() || base.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    let idx: u32 = digits.parse().ok()?;
    let p = route.params.get(&format!("{base}[n]"))?;
    (idx < p.count.unwrap_or(0)).then_some(p)
}

/// Parses a PVE boolean: `1|on|yes|true` or `0|off|no|false`, any case.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn check_value(spec: &ParamSpec, ty: &ParamType, v: &str) -> Result<(), String> {
    match ty {
        ParamType::Boolean => {
            parse_bool(v).ok_or_else(|| format!("type check ('boolean') failed - got '{v}'"))?;
        }
        ParamType::Integer | ParamType::Number => {
            let n: f64 = if *ty == ParamType::Integer {
                if !is_integer(v) {
                    return Err(format!("type check ('integer') failed - got '{v}'"));
                }
                v.parse()
                    .map_err(|_| format!("type check ('integer') failed - got '{v}'"))?
            } else {
                v.trim()
                    .parse()
                    .map_err(|_| format!("type check ('number') failed - got '{v}'"))?
            };
            if let Some(min) = spec.min
                && n < min
            {
                return Err(format!(
                    "value must have a minimum value of {}",
                    fmt_num(min)
                ));
            }
            if let Some(max) = spec.max
                && n > max
            {
                return Err(format!(
                    "value must have a maximum value of {}",
                    fmt_num(max)
                ));
            }
        }
        ParamType::Enum(allowed) => {
            if !allowed.iter().any(|a| a == v) {
                return Err(format!(
                    "value '{v}' does not have a value in the enumeration '{}'",
                    allowed.join(", ")
                ));
            }
        }
        ParamType::String | ParamType::Array(_) => {
            let len = v.chars().count();
            if let Some(max) = spec.max_len
                && len > max
            {
                return Err(format!("value may only be {max} characters long"));
            }
            if let Some(min) = spec.min_len
                && len < min
            {
                return Err(format!("value must be at least {min} characters long"));
            }
            if let Some(pat) = &spec.pattern
                && !full_match(pat, v)
            {
                return Err("value does not match the regex pattern".into());
            }
            if let Some(f) = &spec.format {
                check_format(f, v)?;
            }
        }
    }
    Ok(())
}

fn is_integer(v: &str) -> bool {
    let d = v.strip_prefix(['+', '-']).unwrap_or(v);
    !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
}

fn full_match(pattern: &str, v: &str) -> bool {
    // PVE anchors patterns (`^(?:pattern)$`); Perl's `(?^i:...)` is `(?i:...)` in Rust.
    let rust = pattern.replace("(?^i:", "(?i:").replace("(?^:", "(?:");
    // Compiled once per pattern: some are large (the vnet alias pattern repeats a Unicode,
    // case-insensitive class 256 times, beyond the default size limit).
    static CACHE: OnceLock<std::sync::Mutex<BTreeMap<String, Option<regex::Regex>>>> =
        OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry(rust.clone())
        .or_insert_with(|| {
            regex::RegexBuilder::new(&format!("^(?:{rust})$"))
                .size_limit(1 << 28)
                .build()
                .ok()
        })
        .as_ref()
        .is_some_and(|re| re.is_match(v))
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Named formats the simulator checks, with PVE's wording. Formats we do not model pass.
fn check_format(format: &str, v: &str) -> Result<(), String> {
    let ok = match format {
        "pve-node" => is_dns_label(v),
        "dns-name" => v.split('.').all(is_dns_label),
        "pve-configid" => {
            v.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }
        "pve-storage-id" => {
            v.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        }
        "pve-poolid" => v.split('/').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        }),
        "pve-tag-list" => v.split([';', ',', ' ']).filter(|t| !t.is_empty()).all(|t| {
            t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c))
        }),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(match format {
        "pve-node" => format!("value does not look like a valid node name ({v})"),
        "pve-configid" => format!("invalid configuration ID '{v}'"),
        "pve-storage-id" => format!("storage ID '{v}' contains illegal characters"),
        "pve-poolid" => format!("pool name '{v}' contains illegal characters"),
        "pve-tag-list" => format!("invalid tag list '{v}'"),
        _ => format!("value does not look like a valid {format} ({v})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(spec: &'static str) -> Route {
        Route {
            method: "POST",
            path: "/x",
            segments: vec!["x"],
            params: parse_params(spec).unwrap(),
        }
    }

    fn check(route: &Route, params: &[(&str, &str)], expect: &[(&str, &str)]) {
        let mut raw = RawParams::new();
        for (k, v) in params {
            raw.entry((*k).to_owned())
                .or_default()
                .push((*v).to_owned());
        }
        let got = validate(route, &raw);
        let want: BTreeMap<String, String> = expect
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want, "{params:?}");
    }

    #[test]
    fn validates_like_pve() {
        let r = route(
            "vmid integer min=100 max=999999999 format=pve-vmid
             full? boolean
             format? enum=raw|qcow2|vmdk
             name? string format=dns-name
             snapname? string maxlen=40 format=pve-configid
             net[n]? string format=propstring count=32
             command? array items=string
             size? string pattern=\\+?\\d+(\\.\\d+)?[KMGT]?",
        );
        check(&r, &[("vmid", "101")], &[]);
        check(
            &r,
            &[("vmid", "abc")],
            &[("vmid", "type check ('integer') failed - got 'abc'")],
        );
        check(
            &r,
            &[("vmid", "99")],
            &[("vmid", "value must have a minimum value of 100")],
        );
        check(
            &r,
            &[],
            &[("vmid", "property is missing and it is not optional")],
        );
        check(
            &r,
            &[("vmid", "101"), ("full", "maybe")],
            &[("full", "type check ('boolean') failed - got 'maybe'")],
        );
        check(
            &r,
            &[("vmid", "101"), ("format", "vdi")],
            &[(
                "format",
                "value 'vdi' does not have a value in the enumeration 'raw, qcow2, vmdk'",
            )],
        );
        check(
            &r,
            &[("vmid", "101"), ("net0", "virtio"), ("net31", "e1000")],
            &[],
        );
        check(
            &r,
            &[("vmid", "101"), ("net32", "virtio")],
            &[(
                "net32",
                "property is not defined in schema and the schema does not allow additional properties",
            )],
        );
        check(
            &r,
            &[("vmid", "101"), ("bogus", "1")],
            &[(
                "bogus",
                "property is not defined in schema and the schema does not allow additional properties",
            )],
        );
        check(
            &r,
            &[("vmid", "101"), ("command", "sh"), ("command", "-c")],
            &[],
        );
        check(&r, &[("vmid", "101"), ("size", "+1G")], &[]);
        check(
            &r,
            &[("vmid", "101"), ("size", " 1G")],
            &[("size", "value does not match the regex pattern")],
        );
        check(
            &r,
            &[("vmid", "101"), ("snapname", "1st")],
            &[("snapname", "invalid configuration ID '1st'")],
        );
        check(
            &r,
            &[("vmid", "101"), ("name", "a_b")],
            &[("name", "value does not look like a valid dns-name (a_b)")],
        );
    }

    #[test]
    fn table_parses() {
        assert!(!routes().is_empty());
    }
}

#[cfg(test)]
mod alias_pattern_tests {
    #[test]
    fn vnet_alias_pattern_accepts_ordinary_aliases() {
        let p = r"(?^i:[\(\)-_.\w\d\s]{0,256})";
        for ok in ["lan", "my special vnet", "a(b)-c_d.e", ""] {
            assert!(super::full_match(p, ok), "{ok:?}");
        }
        assert!(!super::full_match(p, "a|b"));
    }
}
