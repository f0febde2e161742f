//! POSIX `sh` words that carry any bytes while the script itself stays 7-bit ASCII.
//!
//! PVE bug 6609: a non-ASCII byte in an `agent/exec` argument can wedge PVE's agent bridge, so
//! no user byte may reach PVE unescaped. Printable ASCII is single-quoted; anything else
//! (UTF-8, control characters) becomes a `printf` octal escape evaluated *in the guest*. Command
//! substitution would eat trailing newlines, so each escaped word is assigned with a sentinel
//! `x` that is stripped afterwards.

use std::fmt::Write as _;

/// Builds a script from words, with the prelude of variable assignments that escaped words need.
#[derive(Debug, Default)]
pub(crate) struct Script {
    prelude: String,
    vars: usize,
}

impl Script {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A shell word that expands to exactly `bytes` (no field splitting, no globbing).
    pub(crate) fn word(&mut self, bytes: &[u8]) -> String {
        if bytes
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || *b == b'\n' || *b == b'\t')
        {
            return single_quote(bytes);
        }
        let name = format!("_w{}", self.vars);
        self.vars += 1;
        let mut fmt = String::with_capacity(bytes.len() * 4);
        for &b in bytes {
            // `-` is escaped too: a format starting with it would be read as an option.
            if b.is_ascii_alphanumeric() || b" _./,:=+@".contains(&b) {
                fmt.push(b as char);
            } else {
                // Octal escapes are the one byte-exact notation every POSIX printf accepts.
                let _ = write!(fmt, "\\{b:03o}");
            }
        }
        let _ = writeln!(
            self.prelude,
            "{name}=$(printf '{fmt}x'); {name}=${{{name}%x}}"
        );
        format!("\"${name}\"")
    }

    /// The assignments the words returned so far rely on; emit them before those words.
    pub(crate) fn take_prelude(&mut self) -> String {
        std::mem::take(&mut self.prelude)
    }
}

/// `'...'` with embedded quotes as `'\''`. Only for bytes the script may contain as they are.
pub(crate) fn single_quote(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('\'');
    for &b in bytes {
        if b == b'\'' {
            s.push_str("'\\''");
        } else {
            s.push(b as char);
        }
    }
    s.push('\'');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    /// Runs the words through the real `/bin/sh` and returns what each expanded to.
    fn round_trip(words: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut s = Script::new();
        let quoted: Vec<String> = words.iter().map(|w| s.word(w)).collect();
        let script = format!(
            "{}for a in {}; do printf '%s' \"$a\" | od -An -v -tx1 | tr -d ' \\n'; echo; done",
            s.take_prelude(),
            quoted.join(" ")
        );
        assert!(script.is_ascii(), "script must be ASCII: {script}");
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn tricky_words_survive() {
        let words: Vec<Vec<u8>> = vec![
            b"plain".to_vec(),
            b"it's \"quoted\" $HOME `id` \\ *".to_vec(),
            "h\u{e9}llo \u{1f600}".as_bytes().to_vec(),
            b"trailing newlines\n\n".to_vec(),
            vec![0xff, 0xfe, b'%', b'\\', 1, 0x7f],
            Vec::new(),
        ];
        assert_eq!(round_trip(&words), words);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_bytes_but_nul_round_trip(words in proptest::collection::vec(
            proptest::collection::vec(1u8..=255, 0..24), 1..6)) {
            prop_assert_eq!(round_trip(&words), words);
        }
    }
}
