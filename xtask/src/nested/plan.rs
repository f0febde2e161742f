//! The plan: every command and file of a nested-PVE build or run, as data.
//!
//! `--dry-run` prints a [`Plan`]; a real run executes the same value step by step, so what the
//! dry run shows is exactly what runs. Two steps are not shell commands because their input
//! only exists once the VM has run: [`Step::CheckResults`] reads what the first-boot script
//! wrote onto its results disk, and [`Step::WriteInstances`] turns it into the instances file.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::NestedError;

/// One instance of the instances file, minus what only the first boot knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTemplate {
    /// `instance_id` of the entry.
    pub instance_id: String,
    /// `pool_id` of the entry.
    pub pool_id: String,
    /// Host the API is forwarded to (always loopback).
    pub host: String,
    /// Forwarded API port.
    pub port: u16,
    /// Storage for VM disks inside the nested PVE.
    pub image_storage: String,
    /// User the token belongs to, without realm.
    pub user: String,
    /// The user's realm.
    pub user_realm: String,
    /// `user@realm!name`; the first boot must report the same.
    pub token_id: String,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run a program; a non-zero exit stops the plan.
    Command {
        /// Why this step exists (printed above it).
        why: String,
        /// Program name or path.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// Write a file (parent directories are created), then set its mode.
    WriteFile {
        /// Why this step exists.
        why: String,
        /// Where.
        path: PathBuf,
        /// Full contents.
        contents: String,
        /// Unix permission bits.
        mode: u32,
        /// Substrings the dry run prints as `<redacted>` (passwords).
        secrets: Vec<String>,
    },
    /// Read the first boot's results disk; stop unless it reports `status=ok`.
    CheckResults {
        /// The raw results image (key=value lines, then zeroes).
        results: PathBuf,
        /// Console log to point at when the first boot failed.
        serial_log: PathBuf,
    },
    /// Write the instances file the e2e suite reads, with the token from the results disk.
    WriteInstances {
        /// Where.
        path: PathBuf,
        /// The results the token and fingerprint come from.
        results: PathBuf,
        /// Console log of the first boot that wrote them (named in errors).
        serial_log: PathBuf,
        /// Everything else.
        instance: InstanceTemplate,
    },
}

/// A whole plan: remarks for the reader, then the steps in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Facts and warnings about the host that shaped the plan (printed first).
    pub notes: Vec<String>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Quotes a word for a POSIX shell, only when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Step {
    /// The command line as a shell would read it (for `Command` steps).
    pub fn command_line(&self) -> Option<String> {
        match self {
            Step::Command { program, args, .. } => Some(
                std::iter::once(program.as_str())
                    .chain(args.iter().map(String::as_str))
                    .map(shell_quote)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        }
    }
}

impl Plan {
    /// The dry-run text: every command and every file in full (secrets redacted).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.notes {
            let _ = writeln!(out, "# note: {n}");
        }
        let _ = writeln!(out, "# {} steps", self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            match step {
                Step::Command { why, .. } => {
                    let _ = writeln!(out, "\n## {n}. {why}");
                    let _ = writeln!(out, "$ {}", step.command_line().unwrap_or_default());
                }
                Step::WriteFile {
                    why,
                    path,
                    contents,
                    mode,
                    secrets,
                } => {
                    let mut shown = contents.clone();
                    for s in secrets.iter().filter(|s| !s.is_empty()) {
                        shown = shown.replace(s.as_str(), "<redacted>");
                    }
                    let _ = writeln!(out, "\n## {n}. {why}");
                    let _ = writeln!(out, "write {} (mode {mode:o}):", path.display());
                    let _ = writeln!(out, "----- begin {} -----", path.display());
                    out.push_str(&shown);
                    if !shown.ends_with('\n') {
                        out.push('\n');
                    }
                    let _ = writeln!(out, "----- end {} -----", path.display());
                }
                Step::CheckResults {
                    results,
                    serial_log,
                } => {
                    let _ = writeln!(out, "\n## {n}. check the first boot's results");
                    let _ = writeln!(
                        out,
                        "read {} (key=value lines up to the first NUL); stop unless status=ok \
                         (console log: {})",
                        results.display(),
                        serial_log.display()
                    );
                }
                Step::WriteInstances {
                    path,
                    results,
                    instance,
                    ..
                } => {
                    let placeholder = Results {
                        token_id: format!("<token_id from {}>", results.display()),
                        token_secret: format!("<token_secret from {}>", results.display()),
                        fingerprint: format!("<fingerprint from {}>", results.display()),
                        node: format!("<node from {}>", results.display()),
                    };
                    let _ = writeln!(
                        out,
                        "\n## {n}. write the instances file the e2e suite reads"
                    );
                    let _ = writeln!(out, "write {} (mode 600):", path.display());
                    let _ = writeln!(out, "----- begin {} -----", path.display());
                    out.push_str(&instances_json(instance, &placeholder));
                    let _ = writeln!(out, "----- end {} -----", path.display());
                }
            }
        }
        out
    }

    /// Runs the steps in order; the first failure stops it.
    pub fn execute(&self) -> Result<(), NestedError> {
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            match step {
                Step::Command { program, args, .. } => {
                    eprintln!(
                        "xtask nested-pve [{n}/{}]: $ {}",
                        self.steps.len(),
                        step.command_line().unwrap_or_default()
                    );
                    let status = std::process::Command::new(program)
                        .args(args)
                        .status()
                        .map_err(|e| NestedError::Step {
                            step: n,
                            what: format!("{program}: {e}"),
                        })?;
                    if !status.success() {
                        return Err(NestedError::Step {
                            step: n,
                            what: format!(
                                "`{}` exited with {status}",
                                step.command_line().unwrap_or_default()
                            ),
                        });
                    }
                }
                Step::WriteFile {
                    path,
                    contents,
                    mode,
                    ..
                } => {
                    eprintln!(
                        "xtask nested-pve [{n}/{}]: write {}",
                        self.steps.len(),
                        path.display()
                    );
                    write_file(path, contents, *mode).map_err(|e| NestedError::Step {
                        step: n,
                        what: format!("writing {}: {e}", path.display()),
                    })?;
                }
                Step::CheckResults {
                    results,
                    serial_log,
                } => {
                    read_results(results, serial_log)?;
                }
                Step::WriteInstances {
                    path,
                    results,
                    serial_log,
                    instance,
                } => {
                    let r = read_results(results, serial_log)?;
                    if r.token_id != instance.token_id {
                        return Err(NestedError::Results {
                            path: results.clone(),
                            serial_log: serial_log.clone(),
                            message: format!(
                                "token_id is {:?}, expected {:?}: the base was built by another \
                                 version of this task; rebuild it with --rebuild",
                                r.token_id, instance.token_id
                            ),
                        });
                    }
                    write_file(path, &instances_json(instance, &r), 0o600).map_err(|e| {
                        NestedError::Step {
                            step: n,
                            what: format!("writing {}: {e}", path.display()),
                        }
                    })?;
                    eprintln!("xtask nested-pve: wrote {}", path.display());
                }
            }
        }
        Ok(())
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    // Create with the final mode so a secret is never readable by others, even briefly.
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new();
    f.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut f, mode);
    std::io::Write::write_all(&mut f.open(path)?, contents.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// What the first-boot script reports on its results disk.
#[derive(Clone, PartialEq, Eq)]
pub struct Results {
    /// `user@realm!name`.
    pub token_id: String,
    /// The token's secret (UUID).
    pub token_secret: String,
    /// SHA-256 fingerprint of the node's API certificate, `AA:BB:…`.
    pub fingerprint: String,
    /// The node name.
    pub node: String,
}

impl std::fmt::Debug for Results {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Results")
            .field("token_id", &self.token_id)
            .field("token_secret", &"***")
            .field("fingerprint", &self.fingerprint)
            .field("node", &self.node)
            .finish()
    }
}

/// Parses the results disk's text: `key=value` lines up to the first NUL byte.
pub fn parse_results(raw: &[u8], path: &Path, serial_log: &Path) -> Result<Results, NestedError> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let bad = |message: String| NestedError::Results {
        path: path.to_path_buf(),
        serial_log: serial_log.to_path_buf(),
        message,
    };
    match get("status").as_deref() {
        Some("ok") => {}
        Some(other) => {
            return Err(bad(format!(
                "the first-boot script reported status={other} (line {})",
                get("line").unwrap_or_else(|| "?".into())
            )));
        }
        None => {
            return Err(bad(
                "no status line: the first-boot script never finished (did the install power \
                 off before first boot, or did the first boot time out?)"
                    .into(),
            ));
        }
    }
    let need = |key: &str| {
        get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| bad(format!("{key} is missing")))
    };
    Ok(Results {
        token_id: need("token_id")?,
        token_secret: need("token_secret")?,
        fingerprint: need("fingerprint")?,
        node: need("node")?,
    })
}

fn read_results(path: &Path, serial_log: &Path) -> Result<Results, NestedError> {
    let raw = fs::read(path).map_err(|e| NestedError::Results {
        path: path.to_path_buf(),
        serial_log: serial_log.to_path_buf(),
        message: e.to_string(),
    })?;
    parse_results(&raw, path, serial_log)
}

/// One entry of the instances file, in the field names (and order) `InstanceConfig` reads.
#[derive(serde::Serialize)]
struct InstanceJson<'a> {
    instance_id: &'a str,
    pool_id: &'a str,
    host: &'a str,
    port: u16,
    user: &'a str,
    user_realm: &'a str,
    node: &'a str,
    verify_tls: bool,
    image_storage: &'a str,
    token_id: &'a str,
    token_secret: &'a str,
    fingerprint: &'a str,
}

/// The instances file (`{"instances": [...]}`): the peer's format plus our token and
/// fingerprint fields. TLS is verified by pinning the node's certificate fingerprint.
pub fn instances_json(i: &InstanceTemplate, r: &Results) -> String {
    let entry = InstanceJson {
        instance_id: &i.instance_id,
        pool_id: &i.pool_id,
        host: &i.host,
        port: i.port,
        user: &i.user,
        user_realm: &i.user_realm,
        node: &r.node,
        verify_tls: true,
        image_storage: &i.image_storage,
        token_id: &i.token_id,
        token_secret: &r.token_secret,
        fingerprint: &r.fingerprint,
    };
    #[derive(serde::Serialize)]
    struct File<'a> {
        instances: [InstanceJson<'a>; 1],
    }
    let file = File { instances: [entry] };
    let mut s = serde_json::to_string_pretty(&file).expect("plain strings always serialise");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_alone_and_quotes_the_rest() {
        assert_eq!(shell_quote("-drive"), "-drive");
        assert_eq!(shell_quote("file=/a b"), "'file=/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn results_parse_up_to_the_first_nul() {
        let mut raw = b"status=ok\ntoken_id=pvesandbox@pve!e2e\ntoken_secret=abc\nfingerprint=AA:BB\nnode=pve\n".to_vec();
        raw.extend([0u8; 64]);
        raw.extend(b"status=failed");
        let r = parse_results(&raw, Path::new("r"), Path::new("s")).unwrap();
        assert_eq!(
            (
                r.token_id.as_str(),
                r.token_secret.as_str(),
                r.node.as_str()
            ),
            ("pvesandbox@pve!e2e", "abc", "pve")
        );
        assert!(!format!("{r:?}").contains("abc"));
    }

    #[test]
    fn a_failed_or_silent_first_boot_names_the_console_log() {
        let e = parse_results(
            b"status=failed\nline=42\n",
            Path::new("r.img"),
            Path::new("fb.log"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 42") && e.contains("fb.log"), "{e}");
        let e = parse_results(&[0u8; 16], Path::new("r.img"), Path::new("fb.log"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("never finished"), "{e}");
        let e = parse_results(
            b"status=ok\ntoken_id=x\n",
            Path::new("r.img"),
            Path::new("fb.log"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("token_secret is missing"), "{e}");
    }

    #[test]
    fn files_are_written_with_their_mode_and_secrets_redacted_in_the_dry_run() {
        let dir = std::env::temp_dir().join(format!("xtask-plan-{}", std::process::id()));
        let path = dir.join("sub/secret.txt");
        let plan = Plan {
            notes: vec![],
            steps: vec![Step::WriteFile {
                why: "a secret".into(),
                path: path.clone(),
                contents: "password = \"hunter2\"\n".into(),
                mode: 0o600,
                secrets: vec!["hunter2".into()],
            }],
        };
        let shown = plan.render();
        assert!(shown.contains("password = \"<redacted>\"") && !shown.contains("hunter2"));
        plan.execute().unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "password = \"hunter2\"\n"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_command_stops_the_plan_and_names_the_step() {
        let dir = std::env::temp_dir().join(format!("xtask-plan-stop-{}", std::process::id()));
        let after = dir.join("never");
        let plan = Plan {
            notes: vec![],
            steps: vec![
                Step::Command {
                    why: "fails".into(),
                    program: "false".into(),
                    args: vec![],
                },
                Step::WriteFile {
                    why: "after".into(),
                    path: after.clone(),
                    contents: String::new(),
                    mode: 0o644,
                    secrets: vec![],
                },
            ],
        };
        let e = plan.execute().unwrap_err().to_string();
        assert!(e.contains("step 1") && e.contains("`false`"), "{e}");
        assert!(!after.exists());
    }
}
