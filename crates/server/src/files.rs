//! execd's files API beyond upload and download: metadata (`files/info`), search, directory
//! listings, directory creation and removal, permissions, moves, deletes and literal
//! replacement, all through the guest agent.
//!
//! Each request is one guest exec where it can be: a fixed `sh` script with the caller's
//! paths as positional parameters (never spliced into shell text), GNU `find -printf`,
//! `chmod`, `chown`, `mv` and `rm` doing the work, as root (the agent's user, as execd's own).
//! Listings come back as NUL-terminated fields (a file name may hold any byte but NUL and
//! `/`), parsed strictly and bounded: the guest belongs to whoever runs code in it, so its
//! output is anyone's.
//!
//! A script reports a failure the caller caused as `kind NUL index NUL` on stdout with exit
//! status 3, `index` counting the request's entries from 1, so the answer names the entry: a
//! missing path is 404, the rest 400. Anything else that fails in the guest is 500, as execd's
//! `RUNTIME_ERROR`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use guest_agent::{ExecOutput, ExecRequest};
use pvesandbox::{Sample, SandboxVm};

use crate::error::ApiError;
use crate::routes::App;
use crate::sandboxes::{Entry, sandbox_vm};
use crate::wire;

/// The most entries one listing or search returns: the answer is held in memory and sent as
/// one JSON array, and a guest can make a directory tree as large as its disk.
pub const MAX_ENTRIES: usize = 100_000;

/// The most entries (paths, moves) one request may name: each becomes arguments of one guest
/// exec, and `execve` takes about 2 MiB of them.
pub const MAX_BATCH: usize = 10_000;

/// The most bytes all paths of one request may take together, for the same reason.
const MAX_ARG_BYTES: usize = 256 * 1024;

/// `PATH_MAX`: no longer path names anything.
const MAX_PATH: usize = 4096;

/// The largest file `files/replace` edits: it is read whole into memory, edited and written
/// back through the agent.
pub const REPLACE_LIMIT: u64 = 64 * 1024 * 1024;

/// How long one filesystem exec may take (a large `rm -rf` or `find` over a big tree).
const TIMEOUT: Duration = Duration::from_secs(300);

/// The exit status with which a script reports a failure it recognised.
const REPORTED: i32 = 3;

/// How many alternatives a search pattern's braces may expand to (each is one `-name`).
const MAX_ALTERNATIVES: usize = 64;

/// How much of a tool's stderr an error message quotes.
const MAX_QUOTE: usize = 500;

/// Fields of one listing record, in the order of [`record_format`].
const FIELDS: usize = 8;

/// `find -printf`: type, mode, size, mtime, ctime, owner, group, path, each NUL-terminated,
/// so no byte of a name can shift a field.
macro_rules! record_format {
    () => {
        r"%y\0%m\0%s\0%T@\0%C@\0%u\0%g\0%p\0"
    };
}

/// Reports a recognised failure: `fail KIND INDEX`.
macro_rules! prelude {
    () => {
        "fail() { printf '%s\\0%s\\0' \"$1\" \"$2\"; exit 3; }\n"
    };
}

/// `"$@"`: paths. Each must exist (a dangling symlink does: it is reported, not followed).
const INFO: &str = concat!(
    prelude!(),
    r#"i=0
for p do
  i=$((i+1))
  [ -e "$p" ] || [ -L "$p" ] || fail missing "$i"
done
exec find "$@" -maxdepth 0 -printf '"#,
    record_format!(),
    "'\n"
);

/// `$1` root, `$2` how many NUL-terminated fields to pass at most, `$3...` name patterns.
/// A symlink given as the root is followed (`-H`), none below it.
const SEARCH: &str = concat!(
    prelude!(),
    r#"root=$1 max=$2; shift 2
[ -e "$root" ] || fail missing 1
for p do shift; set -- "$@" -o -name "$p"; done
shift
find -H "$root" ! -type d \( "$@" \) -printf '"#,
    record_format!(),
    r#"' | head -z -n "$max"
"#
);

/// `$1` root, `$2` depth, `$3` how many fields at most. Symlinks are listed, never followed,
/// and a symlink as the root is refused, as execd does.
const LIST: &str = concat!(
    prelude!(),
    r#"root=$1 depth=$2 max=$3
if [ -L "$root" ]; then fail symlink 1; fi
[ -e "$root" ] || fail missing 1
[ -d "$root" ] || fail notdir 1
[ "$depth" -gt 0 ] || exit 0
find "$root" -mindepth 1 -maxdepth "$depth" -printf '"#,
    record_format!(),
    r#"' | head -z -n "$max"
"#
);

/// Groups of four: path, mode, owner, group (empty: unchanged). As execd, a directory that
/// already exists is left as it is, mode and owner included.
const MKDIR: &str = concat!(
    prelude!(),
    r#"i=0
while [ $# -ge 4 ]; do
  i=$((i+1)); p=$1 m=$2 o=$3 g=$4; shift 4
  if [ -e "$p" ] || [ -L "$p" ]; then
    [ -d "$p" ] || fail notdir "$i"
    continue
  fi
  mkdir -p -- "$p" || fail failed "$i"
  chmod -- "$m" "$p" || fail failed "$i"
  if [ -n "$o$g" ]; then chown -- "$o${g:+:$g}" "$p" || fail failed "$i"; fi
done
"#
);

/// Groups of four: path, mode (empty: unchanged), owner, group. Every path is checked before
/// any is changed, so a typo changes nothing.
const CHMOD: &str = concat!(
    prelude!(),
    r#"i=0
for p do
  if [ $((i % 4)) -eq 0 ]; then
    [ -e "$p" ] || [ -L "$p" ] || fail missing "$((i / 4 + 1))"
  fi
  i=$((i+1))
done
i=0
while [ $# -ge 4 ]; do
  i=$((i+1)); p=$1 m=$2 o=$3 g=$4; shift 4
  if [ -n "$m" ]; then chmod -- "$m" "$p" || fail failed "$i"; fi
  if [ -n "$o$g" ]; then chown -- "$o${g:+:$g}" "$p" || fail failed "$i"; fi
done
"#
);

/// Pairs: source, destination, in order (so `a→b, b→c` works). The destination must not
/// exist; its parent is created, as execd does.
const MOVE: &str = concat!(
    prelude!(),
    r#"i=0
while [ $# -ge 2 ]; do
  i=$((i+1)); s=$1 d=$2; shift 2
  [ -e "$s" ] || [ -L "$s" ] || fail missing "$i"
  if [ -e "$d" ] || [ -L "$d" ]; then fail exists "$i"; fi
  dir=${d%/*}
  if [ -n "$dir" ]; then mkdir -p -- "$dir" || fail failed "$i"; fi
  mv -T -- "$s" "$d" || fail failed "$i"
done
"#
);

/// `"$@"`: files to remove; a missing one is no error (as execd), a directory is, and nothing
/// is removed then.
const REMOVE_FILES: &str = concat!(
    prelude!(),
    r#"i=0
for p do
  i=$((i+1))
  if [ -d "$p" ] && [ ! -L "$p" ]; then fail isdir "$i"; fi
done
exec rm -f -- "$@"
"#
);

/// `"$@"`: trees to remove, recursively; missing ones are no error.
const REMOVE_DIRS: &str = "exec rm -rf -- \"$@\"\n";

/// What a script reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The path does not exist.
    Missing,
    /// The destination exists.
    Exists,
    /// Not a directory where one is needed.
    NotDir,
    /// A directory where a file is needed.
    IsDir,
    /// A symlink where a real directory is needed.
    Symlink,
    /// A tool failed on the entry (its stderr says why).
    Failed,
}

/// A failure a script reported on purpose.
#[derive(Debug)]
struct Reported {
    kind: Kind,
    /// 0-based entry.
    index: usize,
    /// The tool's stderr, quoted and bounded.
    why: String,
}

fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn runtime(what: &str, out: &ExecOutput) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "RUNTIME_ERROR",
        message: format!(
            "{what} failed in the guest (status {}): {}",
            out.status,
            quote(&out.stderr)
        ),
    }
}

fn malformed(what: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: StatusCode::BAD_GATEWAY,
        code: "GUEST_AGENT_ERROR",
        message: format!("{what}: the guest's answer is malformed ({why})"),
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: format!("{path}: no such file or directory"),
    }
}

/// `Ok(None)` when the script succeeded, the failure it reported, or an error for anything
/// else (a guest that answers with what no script prints is not believed).
fn outcome(out: &ExecOutput, entries: usize, what: &str) -> Result<Option<Reported>, ApiError> {
    if out.status == 0 {
        return Ok(None);
    }
    if out.status != REPORTED {
        return Err(runtime(what, out));
    }
    let mut parts = out.stdout.split(|b| *b == 0);
    let (Some(kind), Some(index), Some(b""), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(runtime(what, out));
    };
    let kind = match kind {
        b"missing" => Kind::Missing,
        b"exists" => Kind::Exists,
        b"notdir" => Kind::NotDir,
        b"isdir" => Kind::IsDir,
        b"symlink" => Kind::Symlink,
        b"failed" => Kind::Failed,
        _ => return Err(malformed(what, "an unknown failure")),
    };
    let index: usize = decimal(index)
        .filter(|i| (1..=entries as u64).contains(i))
        .ok_or_else(|| malformed(what, "a failure of no entry"))? as usize;
    Ok(Some(Reported {
        kind,
        index: index - 1,
        why: quote(&out.stderr),
    }))
}

/// ASCII digits only (no sign, no spaces), at most 20 of them.
fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `%m`: one to four octal digits, kept as the digits (`644` is 644).
fn mode_of(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 4 || !b.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    decimal(b).map(|m| m as u32)
}

/// `%T@`: seconds since the epoch with an optional fraction (`-` before 1970), as RFC 3339.
fn stamp(b: &[u8]) -> Option<String> {
    let (neg, b) = match b.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, b),
    };
    let (whole, frac) = match b.iter().position(|c| *c == b'.') {
        Some(dot) => (&b[..dot], &b[dot + 1..]),
        None => (b, &b""[..]),
    };
    if whole.len() > 19 || frac.len() > 12 || (frac.is_empty() && b.ends_with(b".")) {
        return None;
    }
    let secs = i64::try_from(decimal(whole)?).ok()?;
    let mut nanos: i32 = 0;
    for i in 0..9 {
        let d = match frac.get(i) {
            Some(c) if c.is_ascii_digit() => i32::from(c - b'0'),
            Some(_) => return None,
            None => 0,
        };
        nanos = nanos * 10 + d;
    }
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let (secs, nanos) = if neg { (-secs, -nanos) } else { (secs, nanos) };
    let t = jiff::Timestamp::new(secs, nanos).ok()?;
    Some(t.to_string())
}

/// A user or group name as `find` printed it.
fn name_of(b: &[u8]) -> Option<String> {
    (!b.is_empty() && b.len() <= 256).then(|| String::from_utf8_lossy(b).into_owned())
}

/// One listing entry: the path's raw bytes (for ordering) and its `FileInfo`.
#[derive(Debug)]
struct Record {
    raw: Vec<u8>,
    info: wire::FileInfo,
}

fn record(f: &[&[u8]]) -> Option<Record> {
    let kind = match f[0] {
        b"f" => "file",
        b"d" => "directory",
        b"l" => "symlink",
        [c] if c.is_ascii_alphabetic() => "other",
        _ => return None,
    };
    let path = f[7];
    if path.is_empty() || path.len() > MAX_PATH * 4 {
        return None;
    }
    Some(Record {
        raw: path.to_vec(),
        info: wire::FileInfo {
            path: String::from_utf8_lossy(path).into_owned(),
            kind,
            size: decimal(f[2])?,
            modified_at: stamp(f[3])?,
            created_at: stamp(f[4])?,
            owner: name_of(f[5])?,
            group: name_of(f[6])?,
            mode: mode_of(f[1])?,
        },
    })
}

/// The records of a listing, at most `max`: more is an error naming `field`, the request
/// parameter that would narrow it.
fn records(out: &ExecOutput, max: usize, field: &str, what: &str) -> Result<Vec<Record>, ApiError> {
    let too_many = || {
        ApiError::invalid(
            field,
            format!(
                "more than {max} entries (the most one answer holds); narrow the path, depth or pattern"
            ),
        )
    };
    if out.stdout_truncated {
        // QGA keeps 16 MiB of output; a cut listing would be a wrong one.
        return Err(too_many());
    }
    if out.stdout.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = out.stdout.strip_suffix(b"\0") else {
        return Err(malformed(what, "the last record is cut short"));
    };
    let fields: Vec<&[u8]> = body.split(|b| *b == 0).collect();
    if !fields.len().is_multiple_of(FIELDS) {
        return Err(malformed(what, "a record with missing fields"));
    }
    if fields.len() / FIELDS > max {
        return Err(too_many());
    }
    fields
        .chunks_exact(FIELDS)
        .enumerate()
        .map(|(i, f)| record(f).ok_or_else(|| malformed(what, format!("record {}", i + 1))))
        .collect()
}

/// Component by component, so a directory's entries follow it before its next sibling
/// (`a`, `a/x`, `a-b`): execd's walk order, lexical within each directory.
fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// The caller's `path` as the guest will see it: absolute (relative to the agent's working
/// directory), without trailing slashes, so every argument a script gets starts with `/` and
/// no tool can read it as an option.
fn guest_path(vm: &SandboxVm, field: &str, path: &str) -> Result<String, ApiError> {
    if path.is_empty() {
        return Err(ApiError::invalid(field, "empty: give a path"));
    }
    if path.contains('\0') {
        return Err(ApiError::invalid(
            field,
            "contains a NUL byte, which no path can",
        ));
    }
    if path.len() > MAX_PATH {
        return Err(ApiError::invalid(
            field,
            format!("longer than {MAX_PATH} bytes (PATH_MAX)"),
        ));
    }
    let abs = vm.agent().resolve(path);
    if !abs.starts_with('/') {
        return Err(ApiError::invalid(field, "give an absolute path"));
    }
    let trimmed = abs.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// Refuses a request whose entries would not fit one exec's arguments.
fn bounded(field: &str, entries: usize, args: &[String]) -> Result<(), ApiError> {
    if entries > MAX_BATCH {
        return Err(ApiError::invalid(
            field,
            format!("{entries} entries; at most {MAX_BATCH} per request"),
        ));
    }
    let bytes: usize = args.iter().map(String::len).sum();
    if bytes > MAX_ARG_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("the paths total {bytes} bytes; at most {MAX_ARG_BYTES} per request"),
        ));
    }
    Ok(())
}

/// Octal digits written in decimal, at most four (`755`, `1777`), as `chmod` takes them.
fn mode_arg(field: &str, mode: u32) -> Result<String, ApiError> {
    let text = mode.to_string();
    if text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ApiError::invalid(
            field,
            format!("{mode}: octal digits written as a number, e.g. 755"),
        ));
    }
    Ok(text)
}

/// A user or group for `chown`; empty when not given (`null` and `""` mean unchanged, as in
/// execd). A `:` would make `chown` read a group out of a user name.
fn owner_arg(field: &str, name: Option<&str>) -> Result<String, ApiError> {
    let name = name.unwrap_or("");
    if name.contains([':', '\0', '\n']) || name.len() > 256 {
        return Err(ApiError::invalid(
            field,
            format!("{name:?}: a user or group name or id (no ':', at most 256 bytes)"),
        ));
    }
    Ok(name.to_owned())
}

fn query(q: &Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid("query", e))
}

fn all_of(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn one_of(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", e))
}

/// The sandbox's sample, while it runs.
fn sample_of(entry: &Entry) -> Result<Arc<Sample>, ApiError> {
    entry
        .sample()
        .ok_or_else(|| ApiError::conflict(format!("sandbox {} is {}", entry.id, entry.state())))
}

/// Runs `script` with `args` as `"$@"`, as the agent's user (root) in `/`.
async fn run(vm: &SandboxVm, script: &str, args: Vec<String>) -> Result<ExecOutput, ApiError> {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "pvesandbox-files".to_owned(),
    ];
    argv.extend(args);
    let req = ExecRequest::new(argv).cwd("/").timeout(TIMEOUT);
    Ok(vm.agent().exec(&req).await?)
}

/// How many NUL-terminated fields `head -z -n` lets through: one record past the cap, so
/// "too many" is told from "exactly the cap".
fn field_budget() -> String {
    ((MAX_ENTRIES + 1) * FIELDS).to_string()
}

/// `GET files/info?path=a&path=b`: a map from each path as given to its `FileInfo` (of a
/// symlink itself, not its target); 404 naming the first missing one.
pub async fn info(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<BTreeMap<String, wire::FileInfo>>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let given = all_of(&query(&q)?, "path");
    if given.is_empty() {
        // As execd: no paths, no entries.
        return Ok(Json(BTreeMap::new()));
    }
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let paths = given
        .iter()
        .map(|p| guest_path(vm, "path", p))
        .collect::<Result<Vec<_>, _>>()?;
    bounded("path", paths.len(), &paths)?;
    let n = paths.len();
    let out = run(vm, INFO, paths).await?;
    if let Some(r) = outcome(&out, n, "files/info")? {
        return Err(match r.kind {
            Kind::Missing => not_found(&given[r.index]),
            _ => ApiError::invalid("path", format!("{}: {}", given[r.index], r.why)),
        });
    }
    // One record per path: any other count is the guest's doing, not the caller's.
    let found = records(&out, MAX_BATCH, "path", "files/info")?;
    if found.len() != n {
        return Err(malformed(
            "files/info",
            format!("{} records for {n} paths", found.len()),
        ));
    }
    Ok(Json(
        given
            .into_iter()
            .zip(found)
            .map(|(p, r)| (p, r.info))
            .collect(),
    ))
}

/// A search pattern as `find -name` alternatives: braces expanded (`*.{rs,md}`), leading
/// `**/` dropped (it may match no directory, and the pattern is matched against names).
fn alternatives(pattern: &str) -> Result<Vec<String>, String> {
    if pattern.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if pattern.len() > MAX_PATH {
        return Err(format!("longer than {MAX_PATH} bytes"));
    }
    let mut p = pattern;
    while let Some(rest) = p.strip_prefix("**/") {
        p = rest;
    }
    let mut out = Vec::new();
    expand(p, &mut out)?;
    if out.iter().any(|a| a.contains('/')) {
        return Err(format!(
            "{pattern:?} is matched against each file's name, so it cannot hold '/' (but for a leading **/)"
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Expands the first top-level `{a,b}` of `p` (outside `[...]`, not escaped) and recurses;
/// an unmatched `{` is literal, as in `sh`.
fn expand(p: &str, out: &mut Vec<String>) -> Result<(), String> {
    let b = p.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'{' if !in_class => {
                if let Some((end, commas)) = closing(b, i) {
                    let (head, tail) = (&p[..i], &p[end + 1..]);
                    let mut start = i + 1;
                    for cut in commas.into_iter().chain([end]) {
                        expand(&format!("{head}{}{tail}", &p[start..cut]), out)?;
                        start = cut + 1;
                    }
                    return Ok(());
                }
            }
            _ => {}
        }
        i += 1;
    }
    if out.len() >= MAX_ALTERNATIVES {
        return Err(format!(
            "its braces expand to more than {MAX_ALTERNATIVES} patterns"
        ));
    }
    out.push(p.to_owned());
    Ok(())
}

/// The `}` matching the `{` at `open`, and the top-level commas between them.
fn closing(b: &[u8], open: usize) -> Option<(usize, Vec<usize>)> {
    let mut depth = 0usize;
    let mut commas = Vec::new();
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' if depth == 0 => return Some((i, commas)),
            b'}' => depth -= 1,
            b',' if depth == 0 => commas.push(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `GET files/search?path=&pattern=`: every non-directory below `path` (recursively, symlinks
/// not followed) whose name matches the glob `pattern` (default `**`, everything), in walk
/// order.
pub async fn search(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<wire::FileInfo>>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let pairs = query(&q)?;
    let given = one_of(&pairs, "path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::invalid("path", "required: the directory to search"))?;
    let pattern = one_of(&pairs, "pattern")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "**".to_owned());
    let names = alternatives(&pattern).map_err(|why| ApiError::invalid("pattern", why))?;
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let root = guest_path(vm, "path", &given)?;
    let mut args = vec![root, field_budget()];
    args.extend(names);
    let out = run(vm, SEARCH, args).await?;
    if let Some(r) = outcome(&out, 1, "files/search")? {
        return Err(match r.kind {
            Kind::Missing => not_found(&given),
            _ => ApiError::invalid("path", format!("{given}: {}", r.why)),
        });
    }
    let mut found = records(&out, MAX_ENTRIES, "pattern", "files/search")?;
    found.sort_by(|a, b| walk_order(&a.raw, &b.raw));
    Ok(Json(found.into_iter().map(|r| r.info).collect()))
}

/// `GET directories/list?path=&depth=`: the entries below `path` down to `depth` levels
/// (default 1, the children; 0 lists nothing), each directory's entries in lexical order and
/// followed by their own. Symlinks are listed, not followed; a symlink or a file as `path`
/// is 400.
pub async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<wire::FileInfo>>, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let pairs = query(&q)?;
    let given = one_of(&pairs, "path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::invalid("path", "required: the directory to list"))?;
    let depth: u32 = match one_of(&pairs, "depth") {
        None => 1,
        Some(d) => d
            .parse()
            .ok()
            .filter(|d| *d <= i32::MAX as u32)
            .ok_or_else(|| ApiError::invalid("depth", format!("{d:?}: an integer ≥ 0")))?,
    };
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let root = guest_path(vm, "path", &given)?;
    let out = run(vm, LIST, vec![root, depth.to_string(), field_budget()]).await?;
    if let Some(r) = outcome(&out, 1, "directories/list")? {
        return Err(match r.kind {
            Kind::Missing => not_found(&given),
            Kind::Symlink => ApiError::invalid(
                "path",
                format!("{given} is a symbolic link; list the directory it points to"),
            ),
            Kind::NotDir => ApiError::invalid("path", format!("{given} is not a directory")),
            _ => ApiError::invalid("path", format!("{given}: {}", r.why)),
        });
    }
    let mut found = records(&out, MAX_ENTRIES, "depth", "directories/list")?;
    found.sort_by(|a, b| walk_order(&a.raw, &b.raw));
    Ok(Json(found.into_iter().map(|r| r.info).collect()))
}

/// `POST directories {"<path>": {"mode": 755, "owner": .., "group": ..}}`: each created with
/// its parents (`mkdir -p`), then given its mode (default 755) and owner. One that exists is
/// left as it is; a file in the way is 400.
pub async fn make_dirs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    // Sorted: a parent comes before its children.
    let req: BTreeMap<String, wire::Permission> = json_body(&body)?;
    if req.is_empty() {
        return Ok(StatusCode::OK);
    }
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let given: Vec<&String> = req.keys().collect();
    let mut args = Vec::with_capacity(req.len() * 4);
    for (path, perm) in &req {
        args.push(guest_path(vm, &format!("{path:?}"), path)?);
        args.push(mode_arg(
            &format!("{path:?}.mode"),
            perm.mode.unwrap_or(755),
        )?);
        args.push(owner_arg(
            &format!("{path:?}.owner"),
            perm.owner.as_deref(),
        )?);
        args.push(owner_arg(
            &format!("{path:?}.group"),
            perm.group.as_deref(),
        )?);
    }
    bounded("body", req.len(), &args)?;
    let out = run(vm, MKDIR, args).await?;
    if let Some(r) = outcome(&out, req.len(), "directories")? {
        let p = given[r.index];
        return Err(match r.kind {
            Kind::NotDir => ApiError::invalid(&format!("{p:?}"), "exists and is not a directory"),
            _ => ApiError::invalid(&format!("{p:?}"), r.why),
        });
    }
    Ok(StatusCode::OK)
}

/// `DELETE directories?path=..` (repeated): each removed with everything in it (`rm -rf`);
/// one that does not exist is no error.
pub async fn remove_dirs(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let given = all_of(&query(&q)?, "path");
    if given.is_empty() {
        return Ok(StatusCode::OK);
    }
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let paths = given
        .iter()
        .map(|p| guest_path(vm, "path", p))
        .collect::<Result<Vec<_>, _>>()?;
    bounded("path", paths.len(), &paths)?;
    let out = run(vm, REMOVE_DIRS, paths).await?;
    if !out.success() {
        return Err(runtime("removing directories", &out));
    }
    Ok(StatusCode::OK)
}

/// `POST files/permissions {"<path>": {"mode": 600, "owner": .., "group": ..}}`: `chmod`
/// when a mode is given, `chown` when an owner or group is. Every path must exist (404 names
/// the first that does not), and none is changed then.
pub async fn permissions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let req: BTreeMap<String, wire::Permission> = json_body(&body)?;
    if req.is_empty() {
        return Ok(StatusCode::OK);
    }
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let given: Vec<&String> = req.keys().collect();
    let mut args = Vec::with_capacity(req.len() * 4);
    for (path, perm) in &req {
        args.push(guest_path(vm, &format!("{path:?}"), path)?);
        args.push(match perm.mode {
            Some(m) => mode_arg(&format!("{path:?}.mode"), m)?,
            None => String::new(),
        });
        args.push(owner_arg(
            &format!("{path:?}.owner"),
            perm.owner.as_deref(),
        )?);
        args.push(owner_arg(
            &format!("{path:?}.group"),
            perm.group.as_deref(),
        )?);
    }
    bounded("body", req.len(), &args)?;
    let out = run(vm, CHMOD, args).await?;
    if let Some(r) = outcome(&out, req.len(), "files/permissions")? {
        let p = given[r.index];
        return Err(match r.kind {
            Kind::Missing => not_found(p),
            _ => ApiError::invalid(&format!("{p:?}"), r.why),
        });
    }
    Ok(StatusCode::OK)
}

/// `POST files/mv [{"src", "dest"}]`: each moved in order (across filesystems too), the
/// destination's parent created; a missing source is 404, an existing destination 400.
pub async fn move_files(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let req: Vec<wire::RenameItem> = json_body(&body)?;
    if req.is_empty() {
        return Ok(StatusCode::OK);
    }
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let mut args = Vec::with_capacity(req.len() * 2);
    for (i, item) in req.iter().enumerate() {
        args.push(guest_path(vm, &format!("[{i}].src"), &item.src)?);
        args.push(guest_path(vm, &format!("[{i}].dest"), &item.dest)?);
    }
    bounded("body", req.len(), &args)?;
    let out = run(vm, MOVE, args).await?;
    if let Some(r) = outcome(&out, req.len(), "files/mv")? {
        let item = &req[r.index];
        return Err(match r.kind {
            Kind::Missing => not_found(&item.src),
            Kind::Exists => ApiError::invalid(
                &format!("[{}].dest", r.index),
                format!("{} already exists", item.dest),
            ),
            _ => ApiError::invalid(&format!("[{}]", r.index), r.why),
        });
    }
    Ok(StatusCode::OK)
}

/// `DELETE files?path=..` (repeated): each file (or symlink) removed; a missing one is no
/// error; a directory is 400 and then nothing is removed.
pub async fn remove_files(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let given = all_of(&query(&q)?, "path");
    if given.is_empty() {
        return Ok(StatusCode::OK);
    }
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    let paths = given
        .iter()
        .map(|p| guest_path(vm, "path", p))
        .collect::<Result<Vec<_>, _>>()?;
    bounded("path", paths.len(), &paths)?;
    let n = paths.len();
    let out = run(vm, REMOVE_FILES, paths).await?;
    if let Some(r) = outcome(&out, n, "deleting files")? {
        return Err(match r.kind {
            Kind::IsDir => ApiError::invalid(
                "path",
                format!(
                    "{} is a directory; DELETE directories removes directories",
                    given[r.index]
                ),
            ),
            _ => ApiError::invalid("path", format!("{}: {}", given[r.index], r.why)),
        });
    }
    Ok(StatusCode::OK)
}

/// `data` with every non-overlapping occurrence of `old` (not empty) replaced by `new`, left
/// to right as Go's `strings.ReplaceAll`, and the count; `None` when there is none. Linear
/// time (Knuth–Morris–Pratt): the file is the guest's, and a naive search could be made
/// quadratic. Fails when the result would exceed `limit` bytes.
fn replace_all(
    data: &[u8],
    old: &[u8],
    new: &[u8],
    limit: u64,
) -> Result<Option<(Vec<u8>, u64)>, u64> {
    let m = old.len();
    let mut fail = vec![0usize; m];
    let mut k = 0;
    for i in 1..m {
        while k > 0 && old[i] != old[k] {
            k = fail[k - 1];
        }
        if old[i] == old[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut out: Option<Vec<u8>> = None;
    let (mut count, mut last, mut k) = (0u64, 0usize, 0usize);
    for (i, &b) in data.iter().enumerate() {
        while k > 0 && b != old[k] {
            k = fail[k - 1];
        }
        if b == old[k] {
            k += 1;
        }
        if k == m {
            let start = i + 1 - m;
            let buf = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            buf.extend_from_slice(&data[last..start]);
            buf.extend_from_slice(new);
            if buf.len() as u64 > limit {
                return Err(limit);
            }
            count += 1;
            last = i + 1;
            k = 0;
        }
    }
    match out {
        None => Ok(None),
        Some(mut buf) => {
            buf.extend_from_slice(&data[last..]);
            if buf.len() as u64 > limit {
                return Err(limit);
            }
            Ok(Some((buf, count)))
        }
    }
}

/// `POST files/replace[?verbose=true] {"<path>": {"old", "new"}}`: every occurrence of the
/// literal text `old` replaced by `new` in each file (read, edited here, written back in
/// place, so mode and owner stay; untouched when there is none). With `verbose`, a map from
/// each path to `{replacedCount}`; without, an empty body.
pub async fn replace(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let entry = app.endpoint_of(&id, &headers)?;
    let verbose = match one_of(&query(&q)?, "verbose").as_deref() {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(v) => {
            return Err(ApiError::invalid(
                "verbose",
                format!("{v:?}: true or false"),
            ));
        }
    };
    let req: BTreeMap<String, wire::ReplaceItem> = json_body(&body)?;
    if req.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "body",
            format!("{} files; at most {MAX_BATCH} per request", req.len()),
        ));
    }
    let sample = sample_of(&entry)?;
    let vm = sandbox_vm(&sample)?;
    // Checked before any file changes.
    let mut todo = Vec::with_capacity(req.len());
    for (path, item) in &req {
        if item.old.is_empty() {
            return Err(ApiError::invalid(
                &format!("{path:?}.old"),
                "empty: give the text to replace",
            ));
        }
        todo.push((path, guest_path(vm, &format!("{path:?}"), path)?, item));
    }
    let mut counts = BTreeMap::new();
    for (path, abs, item) in todo {
        let data = match vm.agent().read_file(&abs, Some(REPLACE_LIMIT)).await {
            Ok(d) => d,
            Err(guest_agent::Error::NotFound { .. }) => return Err(not_found(path)),
            Err(guest_agent::Error::IsADirectory { .. }) => {
                return Err(ApiError::invalid(&format!("{path:?}"), "is a directory"));
            }
            Err(guest_agent::Error::OutputLimit { .. }) => {
                return Err(ApiError::invalid(
                    &format!("{path:?}"),
                    format!("larger than {REPLACE_LIMIT} bytes, the most replace edits"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let edited = replace_all(
            &data,
            item.old.as_bytes(),
            item.new.as_bytes(),
            REPLACE_LIMIT,
        )
        .map_err(|limit| {
            ApiError::invalid(
                &format!("{path:?}.new"),
                format!("the file would grow past {limit} bytes"),
            )
        })?;
        let count = match edited {
            Some((bytes, n)) => {
                vm.agent().write_file(&abs, &bytes).await?;
                n
            }
            None => 0,
        };
        counts.insert(
            path.clone(),
            wire::ReplaceResult {
                replaced_count: count,
            },
        );
    }
    Ok(if verbose {
        Json(counts).into_response()
    } else {
        StatusCode::OK.into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(status: i32, stdout: &[u8]) -> ExecOutput {
        ExecOutput {
            status,
            stdout: stdout.to_vec(),
            stderr: b"chown: invalid user: 'x'\n".to_vec(),
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    /// NUL-terminated fields, as `find -printf` writes them.
    fn nul(fields: &[&str]) -> Vec<u8> {
        fields.iter().flat_map(|f| f.bytes().chain([0])).collect()
    }

    fn one() -> Vec<u8> {
        let mut v = nul(&[
            "f",
            "644",
            "12",
            "1700000000.5",
            "-1.25",
            "root",
            "root",
            "/tmp/a b\nc",
        ]);
        v.extend(nul(&[
            "d",
            "1777",
            "4096",
            "1700000000",
            "1700000000.0000000001",
            "nobody",
            "1000",
            "/tmp",
        ]));
        v
    }

    #[test]
    fn records_are_parsed_strictly() {
        let r = records(&out(0, &one()), 10, "path", "t").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].info,
            wire::FileInfo {
                path: "/tmp/a b\nc".into(),
                kind: "file",
                size: 12,
                modified_at: "2023-11-14T22:13:20.5Z".into(),
                created_at: "1969-12-31T23:59:58.75Z".into(),
                owner: "root".into(),
                group: "root".into(),
                mode: 644,
            }
        );
        assert_eq!((r[1].info.kind, r[1].info.mode), ("directory", 1777));
        assert_eq!(r[1].info.group, "1000");
        assert!(records(&out(0, b""), 10, "path", "t").unwrap().is_empty());
        // Cut short, a field missing, garbage in any field: errors, never panics.
        let full = one();
        assert!(records(&out(0, &full[..full.len() - 1]), 10, "p", "t").is_err());
        assert!(records(&out(0, &nul(&["f", "644"])), 10, "p", "t").is_err());
        let good = ["f", "644", "1", "1", "1", "u", "g", "/x"];
        assert_eq!(
            records(&out(0, &nul(&good)), 10, "p", "t").unwrap().len(),
            1
        );
        for (i, bad) in [
            (1, "648"),
            (1, "64444"),
            (2, "-1"),
            (2, " 1"),
            (3, "1."),
            (3, "x"),
            (3, "99999999999999999999"),
            (4, "1.5e3"),
            (5, ""),
            (7, ""),
            (0, "ff"),
        ] {
            let mut f = good;
            f[i] = bad;
            let e = records(&out(0, &nul(&f)), 10, "p", "t").unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_GATEWAY, "{f:?}");
        }
        let e = records(&out(0, &one()), 1, "depth", "t").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.starts_with("depth: more than 1 entries"),
            "{}",
            e.message
        );
        let mut cut = out(0, &one());
        cut.stdout_truncated = true;
        assert_eq!(
            records(&cut, 10, "p", "t").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn reported_failures_name_their_entry() {
        let r = outcome(&out(3, &nul(&["missing", "2"])), 2, "t")
            .unwrap()
            .unwrap();
        assert_eq!((r.kind, r.index), (Kind::Missing, 1));
        assert_eq!(r.why, "chown: invalid user: 'x'");
        assert!(outcome(&out(0, b"anything"), 2, "t").unwrap().is_none());
        for bad in [
            nul(&["missing", "3"]),
            nul(&["missing", "0"]),
            nul(&["gone", "1"]),
            b"missing\x001".to_vec(),
        ] {
            assert!(outcome(&out(3, &bad), 2, "t").is_err());
        }
        assert_eq!(
            outcome(&out(1, b""), 2, "t").unwrap_err().status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn walk_order_puts_children_after_their_parent() {
        let mut v: Vec<&[u8]> = vec![b"/r/a-b", b"/r/a/x", b"/r/b", b"/r/a", b"/r/a/x/y", b"/r/A"];
        v.sort_by(|a, b| walk_order(a, b));
        assert_eq!(
            v,
            [
                &b"/r/A"[..],
                b"/r/a",
                b"/r/a/x",
                b"/r/a/x/y",
                b"/r/a-b",
                b"/r/b"
            ]
        );
    }

    #[test]
    fn patterns_become_name_alternatives() {
        assert_eq!(alternatives("**").unwrap(), ["**"]);
        assert_eq!(alternatives("**/*.txt").unwrap(), ["*.txt"]);
        assert_eq!(alternatives("*.{rs,md}").unwrap(), ["*.md", "*.rs"]);
        assert_eq!(alternatives("{a,b{c,d}}x").unwrap(), ["ax", "bcx", "bdx"]);
        assert_eq!(alternatives(r"\{a,b}").unwrap(), [r"\{a,b}"]);
        assert_eq!(alternatives("[{]x").unwrap(), ["[{]x"]);
        assert_eq!(alternatives("{open").unwrap(), ["{open"]);
        assert!(alternatives("src/*.rs").is_err());
        assert!(alternatives("{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}{m,n}").is_err());
        assert!(alternatives("a\0").is_err());
    }

    #[test]
    fn replacement_is_literal_and_counted() {
        let r = |d: &str, o: &str, n: &str| {
            replace_all(d.as_bytes(), o.as_bytes(), n.as_bytes(), 100)
                .map(|x| x.map(|(b, c)| (String::from_utf8(b).unwrap(), c)))
        };
        assert_eq!(r("a.b.a.b", "a.b", "X"), Ok(Some(("X.X".into(), 2))));
        assert_eq!(r("aaaa", "aa", "b"), Ok(Some(("bb".into(), 2))));
        assert_eq!(r("aaa", "aa", "b"), Ok(Some(("ba".into(), 1))));
        assert_eq!(r("abababc", "ababc", "!"), Ok(Some(("ab!".into(), 1))));
        assert_eq!(r("x.*y", ".*", ""), Ok(Some(("xy".into(), 1))));
        assert_eq!(r("abc", "d", "e"), Ok(None));
        assert_eq!(r("aaaa", "a", &"z".repeat(30)), Err(100));
    }

    #[test]
    fn modes_and_owners_are_checked() {
        assert_eq!(mode_arg("m", 755).unwrap(), "755");
        assert_eq!(mode_arg("m", 1777).unwrap(), "1777");
        assert_eq!(mode_arg("m", 0).unwrap(), "0");
        assert!(mode_arg("m", 789).is_err());
        assert!(mode_arg("m", 17777).is_err());
        assert_eq!(owner_arg("o", None).unwrap(), "");
        assert_eq!(owner_arg("o", Some("1000")).unwrap(), "1000");
        assert!(owner_arg("o", Some("a:b")).is_err());
    }
}
