//! Guest-agent routes: PVE's translation of REST parameters into QEMU guest agent commands,
//! reproduced from qemu-server's `PVE::API2::Qemu::Agent` and `PVE::QemuServer::Agent`
//! (`agent_cmd`, `check_agent_error`, `qemu_exec`, `qemu_exec_status`) and `PVE::QMPClient`.
//!
//! The work is split in two: [`prepare`] checks the VM under the state lock and takes a handle
//! on its guest; [`run`] then talks to the guest without the lock, since a guest command may
//! take as long as the command it runs.
//!
//! Wire details PVE has and clients notice:
//! - data PVE decodes from base64 (exec-status `out-data`/`err-data`, file-read with
//!   `decode=1`) reaches Perl's JSON encoder as a *byte* string, so every byte becomes one
//!   character U+0000..U+00FF: UTF-8 `é` (C3 A9) arrives as `Ã©`;
//! - the other way, PVE hands parameter strings (already UTF-8-decoded) to `encode_base64`,
//!   which takes characters up to U+00FF as single bytes and dies on anything wider;
//! - QGA errors of exec/file commands become HTTP 500 `Agent error: <desc>`; the simple
//!   commands (ping, get-osinfo, ...) are not checked and answer 200 `{"result": {"error":
//!   {...}}}`;
//! - before each command PVE pings the agent; no answer is 500 `QEMU guest agent is not
//!   running`.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::Ctx;
use crate::error::ApiError;
use crate::guest::{Guest, QgaError};
use crate::propstring::PropString;
use crate::state::State;

/// PVE's `$MAX_READ_SIZE` for file-read (16 MiB).
const MAX_READ_SIZE: i64 = 16 * 1024 * 1024;
/// PVE's per-call `guest-file-read` count (1 MiB).
const READ_CHUNK: i64 = 1024 * 1024;

fn agent_enabled(cfg: &std::collections::BTreeMap<String, String>) -> bool {
    cfg.get("agent").is_some_and(|a| {
        let p = PropString::parse(a);
        p.file()
            .or_else(|| p.get("enabled"))
            .and_then(crate::spec::parse_bool)
            .unwrap_or(false)
    })
}

/// What an agent route needs once the state lock is gone.
pub(crate) struct AgentCall {
    guest: Arc<dyn Guest>,
    vmid: u32,
}

/// `assert_agent_available` up to the ping: config, power state, and a booted guest.
pub(crate) fn prepare(st: &State, ctx: &Ctx) -> Result<AgentCall, ApiError> {
    let vmid = ctx.vmid();
    let vm = st.vm(ctx.node(), vmid)?;
    if !vm.config.contains_key("agent") {
        return Err(ApiError::internal("No QEMU guest agent configured"));
    }
    if !vm.running {
        return Err(ApiError::internal(format!("VM {vmid} is not running")));
    }
    let not_running = || ApiError::internal("QEMU guest agent is not running");
    // `agent: 0` keeps the key but QEMU then has no agent socket: the ping fails.
    // A cloud image whose cloud-init never installed the agent has nothing listening.
    let no_agent_on_disk = vm.cloud_image.as_ref().is_some_and(|c| !c.agent_installed);
    if !agent_enabled(&vm.config)
        || no_agent_on_disk
        || vm.qmpstatus == "paused"
        || vm.agent_ready_at.is_none_or(|t| Instant::now() < t)
    {
        return Err(not_running());
    }
    let guest = st.guest(vmid).ok_or_else(not_running)?;
    Ok(AgentCall { guest, vmid })
}

/// A QGA error object as PVE's QMP client hands it back: `{class, desc}`.
type QgaObject = (String, String);

impl AgentCall {
    /// `mon_cmd`: the command's return value, or the agent's error object; a guest that does
    /// not answer makes PVE die with the QMP client's timeout.
    async fn mon(&self, cmd: &str, args: Value) -> Result<Result<Value, QgaObject>, ApiError> {
        match self.guest.execute(cmd, args).await {
            Ok(v) => Ok(Ok(v)),
            Err(QgaError::Command { class, desc }) => Ok(Err((class, desc))),
            Err(QgaError::Unavailable(_)) => Err(ApiError::internal(format!(
                "VM {} qmp command '{cmd}' failed - got timeout",
                self.vmid
            ))),
        }
    }

    /// `qga_check_running`: any answer to `guest-ping`, even an error, counts as running.
    async fn assert_available(&self) -> Result<(), ApiError> {
        match self.guest.execute("guest-ping", json!({})).await {
            Err(QgaError::Unavailable(_)) => {
                Err(ApiError::internal("QEMU guest agent is not running"))
            }
            _ => Ok(()),
        }
    }

    /// `agent_cmd`: availability check, command, `check_agent_error`.
    async fn agent_cmd(&self, cmd: &str, args: Value) -> Result<Value, ApiError> {
        self.assert_available().await?;
        check_agent_error(self.mon(cmd, args).await?)
    }
}

/// `check_agent_error`: an error object dies as `Agent error: <desc>`.
fn check_agent_error(r: Result<Value, QgaObject>) -> Result<Value, ApiError> {
    r.map_err(|(_, desc)| ApiError::internal(format!("Agent error: {desc}")))
}

/// Bytes as Perl hands them to its JSON encoder: one character per byte.
fn perl_bytes_to_string(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// A parameter string as `MIME::Base64::encode_base64` sees it: characters up to U+00FF are
/// bytes, anything wider dies (PVE appends the Perl source location to this message).
fn perl_string_to_bytes(s: &str) -> Result<Vec<u8>, ApiError> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| ApiError::internal("Wide character in subroutine entry"))
}

/// `encode_base64($data)` with its default end-of-line: 76-character lines, each ending in `\n`.
fn mime_base64(data: &[u8]) -> String {
    let flat = B64.encode(data);
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for chunk in flat.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Perl's `decode_base64`: ignores characters outside the alphabet, stops at the first `=`,
/// and drops a dangling sixth of a byte.
fn perl_decode_base64(s: &str) -> Vec<u8> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let mut clean: String = s
        .chars()
        .take_while(|c| *c != '=')
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/')
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    LENIENT.decode(clean).unwrap_or_default()
}

/// Runs the agent route `ctx` asks for against the guest `prepare` found.
pub(crate) async fn run(call: AgentCall, ctx: &Ctx) -> Result<Value, ApiError> {
    let cmd = ctx.route.path.rsplit('/').next().unwrap_or_default();
    match cmd {
        "exec" => exec(&call, ctx).await,
        "exec-status" => exec_status(&call, ctx).await,
        "file-read" => file_read(&call, ctx).await,
        "file-write" => file_write(&call, ctx).await,
        simple => {
            // register_command: no check_agent_error, whatever comes back is the result.
            call.assert_available().await?;
            let res = match call.mon(&format!("guest-{simple}"), json!({})).await? {
                Ok(v) => v,
                Err((class, desc)) => json!({"error": {"class": class, "desc": desc}}),
            };
            Ok(json!({ "result": res }))
        }
    }
}

async fn exec(call: &AgentCall, ctx: &Ctx) -> Result<Value, ApiError> {
    let command = ctx.params.get("command").cloned().unwrap_or_default();
    let mut args = json!({"capture-output": true});
    if let Some((path, rest)) = command.split_first() {
        args["path"] = json!(path);
        args["arg"] = json!(rest);
    }
    if let Some(input) = ctx.str("input-data") {
        args["input-data"] = json!(B64.encode(perl_string_to_bytes(input)?));
    }
    if args.get("path").is_none() && args.get("input-data").is_none() {
        return Err(ApiError::internal(
            "command or input-data (or both) required",
        ));
    }
    call.agent_cmd("guest-exec", args).await
}

async fn exec_status(call: &AgentCall, ctx: &Ctx) -> Result<Value, ApiError> {
    let pid = ctx.int("pid").unwrap_or_default();
    let mut res = call
        .agent_cmd("guest-exec-status", json!({ "pid": pid }))
        .await?;
    if let Value::Object(m) = &mut res {
        for key in ["out-data", "err-data"] {
            if let Some(Value::String(s)) = m.get(key)
                && !s.is_empty()
            {
                let decoded = perl_bytes_to_string(&perl_decode_base64(s));
                m.insert(key.into(), json!(decoded));
            }
        }
        // JSON::Boolean -> 1/0; absent fields stay absent.
        for v in m.values_mut() {
            if let Value::Bool(b) = v {
                *v = json!(u8::from(*b));
            }
        }
    }
    Ok(res)
}

/// file-read as of PVE 9.2 (`offset`, `count`, `decode`): open, seek when an offset is given,
/// then 1 MiB `guest-file-read`s until `count` (default and cap 16 MiB) or EOF. With
/// `decode=0` the content is the per-chunk base64 strings concatenated as the agent sent them.
async fn file_read(call: &AgentCall, ctx: &Ctx) -> Result<Value, ApiError> {
    let file = ctx.req("file");
    let decode = ctx
        .str("decode")
        .and_then(crate::spec::parse_bool)
        .unwrap_or(true);
    let handle = call
        .agent_cmd("guest-file-open", json!({ "path": file }))
        .await?;
    let offset = ctx.int("offset").unwrap_or(0);
    if offset > 0 {
        call.agent_cmd(
            "guest-file-seek",
            json!({"handle": handle, "offset": offset, "whence": "set"}),
        )
        .await?;
    }
    let wanted = ctx.int("count").unwrap_or(MAX_READ_SIZE).min(MAX_READ_SIZE);
    let mut bytes_left = wanted;
    let mut eof = false;
    let mut raw: Vec<u8> = Vec::new();
    let mut b64 = String::new();
    while bytes_left > 0 && !eof {
        let read = check_agent_error(
            call.mon(
                "guest-file-read",
                json!({"handle": handle, "count": bytes_left.min(READ_CHUNK)}),
            )
            .await?,
        )?;
        let chunk = read["buf-b64"].as_str().unwrap_or_default();
        if decode {
            raw.extend(perl_decode_base64(chunk));
        } else {
            b64.push_str(chunk);
        }
        bytes_left -= read["count"].as_i64().unwrap_or(0);
        eof = read["eof"].as_bool().unwrap_or(false);
        if read["count"].as_i64().unwrap_or(0) == 0 && !eof {
            // A guest that neither reads nor reports EOF would spin PVE forever; stop instead.
            break;
        }
    }
    // `check_agent_error(..., 1)`: a failed close is only a warning.
    let _ = call
        .mon("guest-file-close", json!({ "handle": handle }))
        .await?;
    let content = if decode {
        perl_bytes_to_string(&raw)
    } else {
        b64
    };
    let mut result = json!({"content": content, "bytes-read": wanted - bytes_left});
    if !eof {
        result["truncated"] = json!(1);
    }
    Ok(result)
}

async fn file_write(call: &AgentCall, ctx: &Ctx) -> Result<Value, ApiError> {
    let content = ctx.req("content");
    let encode = ctx
        .str("encode")
        .and_then(crate::spec::parse_bool)
        .unwrap_or(true);
    let buf = if encode {
        mime_base64(&perl_string_to_bytes(content)?)
    } else {
        content.to_owned()
    };
    let handle = call
        .agent_cmd(
            "guest-file-open",
            json!({"path": ctx.req("file"), "mode": "wb"}),
        )
        .await?;
    call.agent_cmd(
        "guest-file-write",
        json!({"handle": handle, "buf-b64": buf}),
    )
    .await?;
    call.agent_cmd("guest-file-close", json!({ "handle": handle }))
        .await?;
    Ok(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_lines_are_76_wide_and_end_in_newline() {
        let s = mime_base64(&[0u8; 100]);
        let lines: Vec<&str> = s.split_terminator('\n').collect();
        assert_eq!(lines[0].len(), 76);
        assert!(s.ends_with('\n'));
        assert_eq!(mime_base64(b""), "");
    }

    #[test]
    fn perl_base64_is_lenient() {
        assert_eq!(perl_decode_base64("aGk=\n"), b"hi");
        assert_eq!(perl_decode_base64("aGk=aGk="), b"hi");
        assert_eq!(perl_decode_base64("aG\nk"), b"hi");
    }

    #[test]
    fn bytes_map_to_latin1_chars() {
        assert_eq!(perl_bytes_to_string("é".as_bytes()), "Ã©");
        assert_eq!(perl_string_to_bytes("é").unwrap(), vec![0xe9]);
        assert!(perl_string_to_bytes("😀").is_err());
    }
}
