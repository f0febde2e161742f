//! Running commands: the request, the result, and the ASCII shim that runs in the guest.
//!
//! QGA's `guest-exec` has no cwd, user, env (through PVE) or timeout, reports nothing about why
//! a wrapper failed, and PVE cannot carry non-ASCII arguments (bug 6609). So every command runs
//! as `/bin/sh -c <shim>` where the shim is generated per call, 7-bit ASCII, and:
//! 1. takes stdin from `input-data` (base64, decoded in the guest) or from uploaded chunks,
//!    which it concatenates, opens and deletes before the command starts;
//! 2. resolves `user` (name or uid) and switches with `runuser` by absolute path;
//! 3. starts the command under `setsid`, so the command and everything it spawns share a
//!    session the shim can kill as a whole;
//! 4. enforces the timeout with a watchdog in the guest (no extra REST calls, no dependence on
//!    the client's clock) and says on stderr that it fired — a timeout is reported because the
//!    deadline passed, never inferred from exit code 124 or 137;
//! 5. exits with the command's status, where `sh` already gives 128+N for a signal death.
//!
//! Wrapper failures (no such user, missing cwd, program not executable, timeout) end with a
//! line `__pvesandbox_<nonce>:<reason>` on stderr and exit 255. The nonce is random per call, so
//! a command cannot fake one; the line is removed before the caller sees stderr.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use pve_client::Params;

use crate::error::{self, Error, Result};
use crate::shell::{Script, single_quote};
use crate::wire::{self, ExecStatus};
use crate::{GuestAgent, WRITE_CHUNK};

/// Largest form-encoded `agent/exec` body we send: pveproxy refuses POST bodies over 64 KiB.
const MAX_EXEC_BODY: usize = 60_000;
/// Longest inner script passed as an argument; longer ones go through a file.
const MAX_INLINE_INNER: usize = 100_000;
/// Cap on the gap between `exec-status` polls.
const MAX_POLL: Duration = Duration::from_millis(100);
/// How long past its own timeout the client waits for the guest's watchdog before giving up.
const WATCHDOG_GRACE: Duration = Duration::from_secs(10);

/// A command to run in the guest.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    argv: Vec<Vec<u8>>,
    stdin: Option<Vec<u8>>,
    env: Vec<(String, Vec<u8>)>,
    cwd: Option<String>,
    user: Option<String>,
    timeout: Option<Duration>,
    output_limit: Option<usize>,
}

impl ExecRequest {
    /// `argv[0]` is looked up on the guest's `PATH` unless it contains a `/`; no shell is
    /// involved, every argument arrives exactly as given.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        ExecRequest {
            argv: argv.into_iter().map(|a| a.as_ref().to_vec()).collect(),
            ..Default::default()
        }
    }

    /// The user it runs as, if one was set.
    pub fn get_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Bytes fed to the command's stdin (any size, binary-safe). Without it stdin is empty.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sets an environment variable (on top of the guest's defaults: `PATH`, `HOME`, ...).
    pub fn env(mut self, key: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.env.push((key.into(), value.as_ref().to_vec()));
        self
    }

    /// Working directory; relative paths resolve against the handle's workdir.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Run as this user (name or numeric uid) instead of the agent's user (root).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Kill the command and everything in its session after this long; the call then fails
    /// with [`Error::Timeout`] carrying the output so far.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Keep at most this many bytes of each stream: the *last* bytes, as Inspect prefers.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = Some(bytes);
        self
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; 128+N when a signal N ended it.
    pub status: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error, separate from stdout.
    pub stderr: Vec<u8>,
    /// Stdout was cut to the output limit (or QGA's 16 MiB capture).
    pub stdout_truncated: bool,
    /// Stderr was cut to the output limit (or QGA's 16 MiB capture).
    pub stderr_truncated: bool,
}

impl ExecOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// How the shim gets its stdin.
enum Stdin {
    None,
    /// base64 in `input-data`.
    Inline(String),
    /// Chunks uploaded as `<prefix>.NNNNNN`.
    Files(String),
}

fn nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn valid_env_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f == '_' || f.is_ascii_alphabetic())
        && c.all(|x| x == '_' || x.is_ascii_alphanumeric())
}

/// The marker line prefix for `nonce`.
fn marker(nonce: &str) -> String {
    format!("\n__pvesandbox_{nonce}:")
}

/// Splits the wrapper's marker off stderr: `(stderr without it, reason)`.
fn split_marker(stderr: &mut Vec<u8>, nonce: &str) -> Option<String> {
    let m = marker(nonce);
    let pos = stderr.windows(m.len()).rposition(|w| w == m.as_bytes())?;
    let reason = String::from_utf8_lossy(&stderr[pos + m.len()..])
        .trim()
        .to_owned();
    stderr.truncate(pos);
    Some(reason)
}

/// Keeps the last `limit` bytes.
fn keep_tail(buf: &mut Vec<u8>, limit: Option<usize>) -> bool {
    match limit {
        Some(l) if buf.len() > l => {
            buf.drain(..buf.len() - l);
            true
        }
        _ => false,
    }
}

/// The script the shim runs as the target user: env, cwd, then `exec` of the command.
fn inner_script(req: &ExecRequest, nonce: &str, cwd: &str, cwd_explicit: bool) -> Result<String> {
    let mut s = Script::new();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "_f() {{ printf '\\n__pvesandbox_%s:%s\\n' '{nonce}' \"$1\" >&2; exit 255; }}"
    );
    // QGA children inherit the agent's service environment, which has no HOME.
    body.push_str(
        "[ -n \"${HOME-}\" ] || { HOME=$(getent passwd \"$(id -u)\" 2>/dev/null | cut -d: -f6); export HOME=\"${HOME:-/}\"; }\n",
    );
    for (k, v) in &req.env {
        if !valid_env_name(k) {
            return Err(Error::InvalidRequest {
                field: "env",
                message: format!(
                    "{k:?} is not a variable name a POSIX shell can export; use letters, digits and _ (not first a digit)"
                ),
            });
        }
        let w = s.word(v);
        let _ = writeln!(body, "{k}={w}; export {k}");
    }
    let d = s.word(cwd.as_bytes());
    if cwd_explicit {
        let _ = writeln!(
            body,
            "cd -- {d} 2>/dev/null || {{ if [ -e {d} ]; then _f cwd-denied; else _f cwd-missing; fi; }}"
        );
    } else {
        // The default workdir may not exist for this user; start from / rather than fail.
        let _ = writeln!(body, "cd -- {d} 2>/dev/null || cd /");
    }
    let Some(prog) = req.argv.first() else {
        return Err(Error::InvalidRequest {
            field: "argv",
            message: "the command is empty; give at least the program".into(),
        });
    };
    let c = s.word(prog);
    let _ = writeln!(
        body,
        "_c={c}\ncase $_c in */*) if [ -d \"$_c\" ] || {{ [ -e \"$_c\" ] && [ ! -x \"$_c\" ]; }}; then _f noexec; fi;; esac"
    );
    body.push_str("exec \"$_c\"");
    for a in &req.argv[1..] {
        body.push(' ');
        body.push_str(&s.word(a));
    }
    body.push('\n');
    Ok(format!("{}{body}", s.take_prelude()))
}

/// The outer shim (runs as the agent's user).
fn outer_script(
    req: &ExecRequest,
    nonce: &str,
    inner: &str,
    stdin: &Stdin,
    from_file: bool,
    prefix: &str,
) -> String {
    let mut s = Script::new();
    let mut o = String::new();
    o.push_str("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH\n");
    let _ = writeln!(
        o,
        "_f() {{ printf '\\n__pvesandbox_%s:%s\\n' '{nonce}' \"$1\" >&2; exit 255; }}"
    );
    if from_file {
        o.push_str("rm -f -- \"$0\"\n");
    }
    match stdin {
        Stdin::None => o.push_str("exec 3</dev/null\n"),
        Stdin::Inline(_) => o.push_str("exec 3<&0\n"),
        Stdin::Files(prefix) => {
            let p = single_quote(prefix.as_bytes());
            let _ = writeln!(
                o,
                "if cat -- {p}.* > {p} && rm -f -- {p}.* && exec 3<{p}; then rm -f -- {p}; else rm -f -- {p} {p}.*; _f upload; fi"
            );
        }
    }
    o.push_str("set --\n");
    if let Some(user) = &req.user {
        let u = s.word(user.as_bytes());
        o.insert_str(0, &s.take_prelude());
        let _ = writeln!(
            o,
            "_u=$(id -nu -- {u} 2>/dev/null) && [ -n \"$_u\" ] || _f user\n\
             if [ \"$(id -u)\" != \"$(id -u -- \"$_u\")\" ]; then\n\
             for _r in /usr/sbin/runuser /sbin/runuser /usr/bin/runuser /bin/runuser ''; do [ -x \"$_r\" ] && break; done\n\
             [ -n \"$_r\" ] || _f nouserswitch\n\
             set -- \"$_r\" -u \"$_u\" --\nfi"
        );
    }
    let launch = if inner.len() > MAX_INLINE_INNER {
        // One execve argument may not exceed 128 KiB (MAX_ARG_STRLEN), so a long inner script
        // goes through a file that the inner shell deletes first thing; it belongs to the
        // target user so that user may delete it from the sticky temp dir.
        let f = single_quote(format!("{prefix}.inner").as_bytes());
        let text = format!("rm -f -- \"$0\"\n{inner}");
        let _ = writeln!(
            o,
            "_i={}\nprintf '%s' \"$_i\" > {f} || _f upload\n[ $# -eq 0 ] || chown -- \"$_u\" {f}",
            single_quote(text.as_bytes())
        );
        format!("/bin/sh {f}")
    } else {
        let _ = writeln!(o, "_i={}", single_quote(inner.as_bytes()));
        "/bin/sh -c \"$_i\" sh".to_owned()
    };
    o.push_str("command -v setsid >/dev/null 2>&1 || _f nosetsid\n");
    if matches!(stdin, Stdin::Inline(_)) {
        let _ = writeln!(o, "base64 -d <&3 2>/dev/null | setsid \"$@\" {launch} &");
    } else {
        let _ = writeln!(o, "setsid \"$@\" {launch} <&3 &");
    }
    o.push_str("_p=$!\nexec 3<&-\n");
    if let Some(t) = req.timeout {
        // The watchdog kills the process group, the session and the tree below the leader, then
        // exits 9 so the shim knows it fired. Once it fires it ignores TERM: the shim's own
        // wait returns as soon as the leader dies and must not cut the rest of the kill short.
        // (dash's kill takes no `--`.)
        let _ = writeln!(
            o,
            "_k() {{ for _q in $(_kids \"$1\"); do _k \"$_q\"; done; kill -KILL \"$1\" 2>/dev/null; }}\n\
             _kids() {{ for _d in /proc/[0-9]*; do read -r _st < \"$_d/stat\" 2>/dev/null || continue; _x=${{_st##*) }}; _x=${{_x#* }}; [ \"${{_x%% *}}\" = \"$1\" ] && echo \"${{_d#/proc/}}\"; done; }}\n\
             ( trap 'kill $_s 2>/dev/null; exit 0' TERM; sleep {secs:.3} & _s=$!; wait $_s; trap '' TERM;\n\
               kill -KILL -$_p 2>/dev/null; pkill -KILL -s $_p 2>/dev/null; _k $_p; exit 9 ) </dev/null >/dev/null 2>&1 &\n\
             _w=$!",
            secs = t.as_secs_f64()
        );
    }
    o.push_str("wait $_p; _r=$?\n");
    if req.timeout.is_some() {
        // A TERM that reaches the watchdog before its trap is set kills it outright, and dash
        // then reports "Terminated" on its stderr (the command's) at some later command. So
        // from here on the shim's stderr is /dev/null, and only the marker goes to the
        // saved one.
        o.push_str("exec 4>&2 2>/dev/null; kill $_w; wait $_w; [ $? -eq 9 ] && _f timeout 2>&4\n");
    }
    o.push_str("exit $_r\n");
    o
}

impl GuestAgent {
    /// Runs a command and waits for it. See the [module docs](self) for how.
    ///
    /// Errors: [`Error::Timeout`] (with partial output), [`Error::PermissionDenied`] (program
    /// not executable), [`Error::NotFound`] / [`Error::PermissionDenied`] (explicit cwd),
    /// [`Error::UserUnsupported`], [`Error::AgentUnavailable`], [`Error::Api`]. A missing
    /// program is an ordinary result (status 127), as in a shell.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecOutput> {
        let nonce = nonce();
        let (cwd, explicit) = match &req.cwd {
            Some(c) => (self.resolve(c), true),
            None => (self.default_workdir().to_owned(), false),
        };
        let inner = inner_script(req, &nonce, &cwd, explicit)?;
        let prefix = format!("{}/.pvesandbox-{nonce}", self.inner.tmpdir);
        let mut uploaded = false;
        let result = async {
            let mut stdin = match &req.stdin {
                None => Stdin::None,
                Some(b) if b.is_empty() => Stdin::None,
                Some(b) if b.len() <= WRITE_CHUNK => Stdin::Inline(wire::b64(b)),
                Some(b) => {
                    uploaded = true;
                    self.upload_chunks(&format!("{prefix}.in"), b).await?;
                    Stdin::Files(format!("{prefix}.in"))
                }
            };
            let mut script = outer_script(req, &nonce, &inner, &stdin, false, &prefix);
            let mut params = exec_params(&["/bin/sh", "-c", &script], &stdin);
            if params.encode().len() > MAX_EXEC_BODY
                && let (Stdin::Inline(_), Some(b)) = (&stdin, &req.stdin)
            {
                uploaded = true;
                self.upload_chunks(&format!("{prefix}.in"), b).await?;
                stdin = Stdin::Files(format!("{prefix}.in"));
                script = outer_script(req, &nonce, &inner, &stdin, false, &prefix);
                params = exec_params(&["/bin/sh", "-c", &script], &stdin);
            }
            if params.encode().len() > MAX_EXEC_BODY {
                // Long argv: the shim itself travels as a file and deletes itself when it starts.
                uploaded = true;
                let file = outer_script(req, &nonce, &inner, &stdin, true, &prefix);
                let sp = format!("{prefix}.sh");
                self.upload_chunks(&sp, file.as_bytes()).await?;
                let q = single_quote(sp.as_bytes());
                let launcher = format!(
                    "cat -- {q}.* > {q} && rm -f -- {q}.* && exec /bin/sh {q}; rm -f -- {q} {q}.*; exit 255"
                );
                params = exec_params(&["/bin/sh", "-c", &launcher], &stdin);
            }
            self.run(&params, req.timeout).await
        }
        .await;
        let (status, mut out) = match result {
            Ok(r) => r,
            Err(e) => {
                if uploaded {
                    self.remove_transfer_files(&nonce).await;
                }
                return Err(e);
            }
        };
        let reason = split_marker(&mut out.stderr, &nonce);
        let limit = req.output_limit;
        out.out_truncated |= keep_tail(&mut out.stdout, limit);
        out.err_truncated |= keep_tail(&mut out.stderr, limit);
        if let Some(reason) = reason {
            return Err(match reason.as_str() {
                "timeout" => Error::Timeout {
                    timeout: req.timeout.unwrap_or_default(),
                    stdout: out.stdout,
                    stderr: out.stderr,
                },
                "user" => Error::UserUnsupported {
                    user: req.user.clone().unwrap_or_default(),
                    reason: "no such user in the guest".into(),
                },
                "nouserswitch" => Error::UserUnsupported {
                    user: req.user.clone().unwrap_or_default(),
                    reason: "the guest has no runuser to switch users with".into(),
                },
                "cwd-missing" => Error::NotFound {
                    path: req.cwd.clone().unwrap_or_default(),
                },
                "cwd-denied" => Error::PermissionDenied {
                    path: req.cwd.clone().unwrap_or_default(),
                },
                "noexec" => Error::PermissionDenied {
                    path: String::from_utf8_lossy(&req.argv[0]).into_owned(),
                },
                other => Error::Wrapper {
                    stage: other.to_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                },
            });
        }
        Ok(ExecOutput {
            status,
            stdout: out.stdout,
            stderr: out.stderr,
            stdout_truncated: out.out_truncated,
            stderr_truncated: out.err_truncated,
        })
    }

    /// Starts `params` with `agent/exec` and polls `exec-status` until it exits.
    /// Returns the status (128+N for a signal) and the raw output.
    pub(crate) async fn run(
        &self,
        params: &Params,
        timeout: Option<Duration>,
    ) -> Result<(i32, ExecStatus)> {
        let pid = self.start(params).await?;
        let started = Instant::now();
        let first = Duration::from_micros(self.inner.first_poll_us.load(Ordering::Relaxed));
        let mut pause = first;
        let mut polls = 0u32;
        let path = self.path_of("exec-status");
        let q = Params::new().with("pid", pid);
        loop {
            tokio::time::sleep(pause).await;
            polls += 1;
            let v = self
                .inner
                .client
                .get(&path, &q)
                .await
                .map_err(|e| error::classify(e, self.inner.vmid))?;
            let st = ExecStatus::parse(&v);
            if st.exited {
                self.learn_first_poll(first, polls, started.elapsed());
                let status = match (st.exitcode, st.signal) {
                    (_, Some(sig)) => 128 + sig,
                    (Some(code), None) => code,
                    (None, None) => 0,
                };
                return Ok((status, st));
            }
            if let Some(t) = timeout
                && started.elapsed() > t + WATCHDOG_GRACE
            {
                // The guest's watchdog should have fired long ago; don't hang the caller.
                return Err(Error::Timeout {
                    timeout: t,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                });
            }
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// Learns when to send the first poll: commands that keep finishing before it lets it
    /// drift earlier; short commands that needed more polls move it to where they finished.
    /// This is what makes a trivial exec cost two REST calls once the handle is warm.
    fn learn_first_poll(&self, first: Duration, polls: u32, elapsed: Duration) {
        let next = if polls == 1 {
            first.mul_f64(0.875)
        } else if elapsed <= Duration::from_millis(20) {
            elapsed
        } else {
            return;
        };
        let us = next.as_micros().clamp(500, 20_000) as u64;
        self.inner.first_poll_us.store(us, Ordering::Relaxed);
    }

    /// `agent/exec`; retried only when no agent answered, which means nothing ran.
    async fn start(&self, params: &Params) -> Result<i64> {
        let path = self.path_of("exec");
        let mut attempt = 0;
        loop {
            match self.inner.client.post(&path, params).await {
                Ok(v) => {
                    return v
                        .get("pid")
                        .and_then(serde_json::Value::as_i64)
                        .ok_or_else(|| {
                            Error::Api(pve_client::Error::Decode {
                                method: "POST",
                                path: path.clone(),
                                message: format!("no pid in {v}"),
                            })
                        });
                }
                Err(e) => match error::classify(e, self.inner.vmid) {
                    Error::AgentUnavailable { .. } if attempt < 3 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    other => return Err(other),
                },
            }
        }
    }

    pub(crate) fn path_of(&self, cmd: &str) -> String {
        format!("{}/{cmd}", self.inner.base)
    }

    /// Writes `bytes` as `<prefix>.000000`, `<prefix>.000001`, ... concurrently.
    pub(crate) async fn upload_chunks(&self, prefix: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path_of("file-write");
        let n = self.inner.upload_concurrency;
        // Encoding through a fn item (not a closure over `&[u8]`) keeps the future `Send` for
        // callers that spawn it (the Inspect adapter): rustc cannot prove a closure taking a
        // borrowed chunk general over that borrow's lifetime.
        let contents = bytes.chunks(WRITE_CHUNK).map(wire::b64).enumerate();
        let mut writes =
            futures_util::stream::iter(contents.map(|(i, content): (usize, String)| {
                let file = format!("{prefix}.{i:06}");
                let params = Params::new()
                    .with("file", file.as_str())
                    .with("content", content)
                    .with("encode", false);
                let path = &path;
                async move {
                    self.inner
                        .client
                        .post(path, &params)
                        .await
                        .map_err(|e| error::classify_file(e, &file, self.inner.vmid))
                }
            }))
            .buffer_unordered(n);
        while let Some(r) = writes.next().await {
            r?;
        }
        Ok(())
    }

    /// Best effort: deletes every transfer file of call `nonce`, waiting for the `rm` so its
    /// status does not linger in the agent.
    pub(crate) async fn remove_transfer_files(&self, nonce: &str) {
        let p = single_quote(format!("{}/.pvesandbox-{nonce}", self.inner.tmpdir).as_bytes());
        let script = format!("rm -f -- {p}.* {p}.*.*");
        let params = exec_params(&["/bin/sh", "-c", &script], &Stdin::None);
        if let Err(e) = self.run(&params, None).await {
            tracing::warn!(vmid = %self.inner.vmid, error = %e, "could not remove transfer files");
        }
    }

    /// Runs a small internal script (ASCII, no stdin) as the agent's user; returns status,
    /// stdout, stderr.
    pub(crate) async fn run_script(&self, script: &str) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let params = exec_params(&["/bin/sh", "-c", script], &Stdin::None);
        let (status, st) = self.run(&params, None).await?;
        Ok((status, st.stdout, st.stderr))
    }
}

fn exec_params(command: &[&str], stdin: &Stdin) -> Params {
    let p = Params::new().with_array("command", command.iter().copied());
    match stdin {
        Stdin::Inline(b) => p.with("input-data", b.as_str()),
        _ => p,
    }
}

#[cfg(test)]
mod tests {
    //! The shim is plain `sh`: run it on this machine to check its logic without any PVE.
    use super::*;
    use std::process::{Command, Stdio};

    fn run_local(req: &ExecRequest) -> (Option<i32>, Vec<u8>, Vec<u8>, String) {
        let nonce = nonce();
        let cwd = req.cwd.clone().unwrap_or_else(|| "/".into());
        let inner = inner_script(req, &nonce, &cwd, req.cwd.is_some()).unwrap();
        let stdin = match &req.stdin {
            Some(b) if !b.is_empty() => Stdin::Inline(wire::b64(b)),
            _ => Stdin::None,
        };
        let prefix = format!("/tmp/.pvesandbox-{nonce}");
        let script = outer_script(req, &nonce, &inner, &stdin, true, &prefix);
        assert!(script.is_ascii());
        // As in the guest when the shim is long: run from a file that deletes itself.
        let file = format!("{prefix}.sh");
        std::fs::write(&file, &script).unwrap();
        let mut child = Command::new("/bin/sh")
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut si = child.stdin.take().unwrap();
            if let Stdin::Inline(b) = &stdin {
                si.write_all(b.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            !std::path::Path::new(&file).exists(),
            "the shim file deletes itself"
        );
        let mut stderr = out.stderr;
        let reason = split_marker(&mut stderr, &nonce).unwrap_or_default();
        (out.status.code(), out.stdout, stderr, reason)
    }

    #[test]
    fn output_status_and_streams() {
        let (code, out, err, reason) = run_local(&ExecRequest::new([
            "sh",
            "-c",
            "printf 'foo\\nbar\\n'; echo oops >&2; exit 70",
        ]));
        assert_eq!(
            (code, &out[..], &err[..], reason.as_str()),
            (Some(70), &b"foo\nbar\n"[..], &b"oops\n"[..], "")
        );
    }

    /// The watchdog is killed as soon as a fast command ends, often before it set its trap;
    /// the shell must not report that on the command's stderr ("Terminated").
    #[test]
    fn a_fast_command_with_a_timeout_has_clean_stderr() {
        for _ in 0..200 {
            let (code, out, err, reason) = run_local(
                &ExecRequest::new(["sh", "-c", "echo boof >&2"]).timeout(Duration::from_secs(30)),
            );
            assert_eq!(
                (code, &out[..], &err[..], reason.as_str()),
                (Some(0), &b""[..], &b"boof\n"[..], "")
            );
        }
    }

    #[test]
    fn signal_death_is_128_plus_n() {
        let (code, ..) = run_local(
            &ExecRequest::new(["sh", "-c", "kill -TERM $$"]).timeout(Duration::from_secs(30)),
        );
        assert_eq!(code, Some(143));
    }

    #[test]
    fn stdin_env_cwd_and_odd_argv_arrive_exactly() {
        let stdin: Vec<u8> = (0..=255u8).chain([0, 0]).collect();
        let (code, out, _, _) = run_local(
            &ExecRequest::new(["sh", "-c", "od -An -v -tx1 | tr -d ' \\n'"]).stdin(stdin.clone()),
        );
        assert_eq!(code, Some(0));
        let hex: String = stdin.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), hex);

        let (_, out, _, _) = run_local(
            &ExecRequest::new([
                "sh",
                "-c",
                "printf '%s|%s|' \"$GREETING\" \"$(pwd)\"; printf '%s|' \"$@\"",
                "x",
                "h\u{e9} $HOME",
                "it's\n",
            ])
            .env("GREETING", "sal\u{fc}t \"`x`\"")
            .cwd("/usr/bin"),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "sal\u{fc}t \"`x`\"|/usr/bin|h\u{e9} $HOME|it's\n|"
        );
    }

    #[test]
    fn timeout_kills_the_tree_and_says_so() {
        let marker = format!("pvesandbox-test-{}", nonce());
        let started = Instant::now();
        let (code, out, _, reason) = run_local(
            &ExecRequest::new([
                "sh".to_string(),
                "-c".into(),
                format!("echo started; (sleep 30; : {marker}) & sleep 30 ; : {marker}"),
            ])
            .timeout(Duration::from_millis(300)),
        );
        assert_eq!((code, reason.as_str()), (Some(255), "timeout"));
        assert_eq!(out, b"started\n");
        assert!(started.elapsed() < Duration::from_secs(10));
        let ps = Command::new("sh")
            .args(["-c", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&ps.stdout).contains(&marker),
            "a process of the timed-out command survived"
        );
    }

    #[test]
    fn argv_past_the_execve_string_limit_goes_through_a_file() {
        let big = "\u{e9}".repeat(30 * 1024);
        let (code, out, err, r) =
            run_local(&ExecRequest::new(["printf", "%s", &big, &big]).user("nobody"));
        assert_eq!(
            (code, r.as_str()),
            (Some(0), ""),
            "{}",
            String::from_utf8_lossy(&err)
        );
        assert_eq!(out, format!("{big}{big}").into_bytes());
    }

    #[test]
    fn a_fast_self_kill_is_not_a_timeout() {
        let (code, _, _, reason) = run_local(
            &ExecRequest::new(["sh", "-c", "kill -KILL $$"]).timeout(Duration::from_secs(30)),
        );
        assert_eq!((code, reason.as_str()), (Some(137), ""));
    }

    #[test]
    fn wrapper_failures_are_classified() {
        let (_, _, _, r) = run_local(&ExecRequest::new(["/etc/passwd"]));
        assert_eq!(r, "noexec");
        let (_, _, _, r) = run_local(&ExecRequest::new(["true"]).user("no-such-user-pvesandbox"));
        assert_eq!(r, "user");
        let (_, _, _, r) = run_local(&ExecRequest::new(["true"]).cwd("/no/such/dir"));
        assert_eq!(r, "cwd-missing");
        let (code, _, err, r) = run_local(&ExecRequest::new(["no-such-program-pvesandbox"]));
        assert_eq!(
            (code, r.as_str()),
            (Some(127), ""),
            "{}",
            String::from_utf8_lossy(&err)
        );
    }

    #[test]
    fn users_switch_by_name_and_uid() {
        let (code, out, err, r) = run_local(&ExecRequest::new(["id", "-un"]).user("nobody"));
        assert_eq!(
            (code, r.as_str()),
            (Some(0), ""),
            "{}",
            String::from_utf8_lossy(&err)
        );
        assert_eq!(out, b"nobody\n");
        let (_, out, _, _) = run_local(&ExecRequest::new(["id", "-un"]).user("0"));
        assert_eq!(out, b"root\n");
    }

    #[test]
    fn bad_env_names_are_refused_before_anything_runs() {
        let e =
            inner_script(&ExecRequest::new(["true"]).env("A-B", "x"), "n", "/", false).unwrap_err();
        assert!(matches!(e, Error::InvalidRequest { field: "env", .. }));
    }

    #[test]
    fn output_limits_keep_the_tail() {
        let mut b = b"0123456789".to_vec();
        assert!(keep_tail(&mut b, Some(4)));
        assert_eq!(b, b"6789");
        assert!(!keep_tail(&mut b, Some(4)));
    }
}
