//! How bytes come back through PVE's agent routes.
//!
//! PVE base64-decodes what the agent returns (`out-data`, `err-data`, `file-read` content) and
//! hands the *bytes* to Perl's JSON encoder as a string, so each byte becomes one character
//! U+0000..U+00FF (UTF-8 `é` = C3 A9 arrives as `Ã©`). Mapping characters back to bytes undoes
//! that exactly. A fake that sends real text (a character above U+00FF) is taken as UTF-8.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// The bytes behind a PVE "binary string".
pub(crate) fn latin1_bytes(s: &str) -> Vec<u8> {
    if s.chars().all(|c| (c as u32) <= 0xff) {
        s.chars().map(|c| c as u8).collect()
    } else {
        s.as_bytes().to_vec()
    }
}

/// Decodes base64 that may be several padded base64 strings back to back (PVE's `decode=0`
/// concatenates one per agent read) and may contain line breaks.
pub(crate) fn decode_concatenated_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let mut start = 0;
    // Every padded quad ends one segment; base64 quads are independent, so decoding segment
    // by segment gives the concatenation.
    let mut i = 0;
    while i + 4 <= clean.len() {
        if clean[i + 3] == b'=' {
            STANDARD.decode_vec(&clean[start..i + 4], &mut out)?;
            start = i + 4;
        }
        i += 4;
    }
    if start < clean.len() {
        STANDARD.decode_vec(&clean[start..], &mut out)?;
    }
    Ok(out)
}

/// Standard base64.
pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// What `exec-status` said.
#[derive(Debug, Default)]
pub(crate) struct ExecStatus {
    pub exited: bool,
    pub exitcode: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub out_truncated: bool,
    pub err_truncated: bool,
}

fn flag(v: &Value, k: &str) -> bool {
    match v.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        Some(Value::String(s)) => s == "1" || s == "true",
        _ => false,
    }
}

fn int(v: &Value, k: &str) -> Option<i32> {
    match v.get(k)? {
        Value::Number(n) => n.as_i64().map(|x| x as i32),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl ExecStatus {
    pub(crate) fn parse(v: &Value) -> Self {
        let data = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(latin1_bytes)
                .unwrap_or_default()
        };
        ExecStatus {
            exited: flag(v, "exited"),
            exitcode: int(v, "exitcode"),
            signal: int(v, "signal"),
            stdout: data("out-data"),
            stderr: data("err-data"),
            out_truncated: flag(v, "out-truncated"),
            err_truncated: flag(v, "err-truncated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn latin1_undoes_perl_byte_strings() {
        assert_eq!(latin1_bytes("Ã©\u{ff}\0"), vec![0xc3, 0xa9, 0xff, 0]);
        assert_eq!(latin1_bytes("é😀"), "é😀".as_bytes());
    }

    proptest! {
        #[test]
        fn concatenated_padded_chunks_decode(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..40), 0..6)) {
            let joined: String = chunks.iter().map(|c| b64(c)).collect::<Vec<_>>().join("\n");
            let want: Vec<u8> = chunks.concat();
            prop_assert_eq!(decode_concatenated_b64(&joined).unwrap(), want);
        }
    }
}
