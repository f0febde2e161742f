//! Commands as execd runs them: started detached in the guest with their output in files, and
//! tailed from here with paged `file-read`, so a line reaches the client while the command
//! still runs (the guest agent's own exec reports output only at exit).
//!
//! In the guest, each command has a directory `/run/pvesandbox-cmd/<id>` holding `out`, `err`
//! (background commands: both streams in `out`, as execd's log), `pid` (its process group: it
//! runs under `setsid`), `started` (the host's clock, unix ms) and, once it ended, `rc`. The
//! directory is removed after a foreground command was reported; background ones keep it for
//! their logs, and a restarted server finds them there by id ([`Started::find`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use guest_agent::{ExecRequest, GuestAgent};

/// Where the per-command directories live in the guest (tmpfs, root's).
const DIR: &str = "/run/pvesandbox-cmd";

/// How often a running command's files are read: the latency a line can take to reach the
/// client, against two or three agent calls per round.
pub const TAIL_EVERY: Duration = Duration::from_millis(100);

/// The first pause of a quiet command, doubled each quiet round up to [`TAIL_EVERY`]: a short
/// command (most of what an agent runs) ends in a few ms, and is reported then rather than a
/// whole period later, at 5 extra rounds for a long one.
const TAIL_FIRST: Duration = Duration::from_millis(5);

/// The most one read of a stream takes (a chatty command is drained in rounds of this).
const READ_MAX: u64 = 256 * 1024;

/// The longest line held back waiting for its newline: the guest decides what it prints, so a
/// line without end is sent on in pieces of this size rather than kept in memory.
const LINE_MAX: usize = 64 * 1024;

/// How many output events may wait for a slow client before the guest's output is left in
/// its files until the client catches up (the files are the buffer, not this process).
pub const QUEUE: usize = 256;

/// Runs `"$@"` detached, in its own session, its output into the directory `$1`, and writes
/// its exit status to `rc` (through a rename, so a reader never sees half a number). The
/// wrapper traps (rather than ignores, which the command would inherit) the signals an
/// interrupt sends its process group, so it outlives the command to write `rc`.
const SPAWN: &str = r#"d=$1; both=$2; started=$3; shift 3
mkdir -p "$d" && : >"$d/out" && : >"$d/err" && echo "$started" >"$d/started" || exit 97
if [ "$both" = 1 ]; then e="$d/out"; else e="$d/err"; fi
setsid sh -c 'trap : TERM INT HUP; d=$1; e=$2; shift 2; "$@" >>"$d/out" 2>>"$e" </dev/null; echo $? >"$d/rc.part"; mv "$d/rc.part" "$d/rc"' run "$d" "$e" "$@" >/dev/null 2>&1 </dev/null &
echo $! >"$d/pid"
"#;

/// What was asked for.
pub struct Spec {
    /// The command.
    pub argv: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<String>,
    /// Both streams into one log (background commands).
    pub combined: bool,
}

/// A started command.
#[derive(Debug)]
pub struct Started {
    /// Its id (the `init` event's text).
    pub id: String,
    dir: String,
    agent: GuestAgent,
    /// When it started.
    pub started_at: SystemTime,
}

/// A piece of output, or the end.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// One line of stdout, without its newline.
    Stdout(String),
    /// One line of stderr.
    Stderr(String),
    /// The exit status (128+N for a signal), or `None` when the timeout killed it.
    Exit(Option<i32>),
}

/// Starts `spec` in the guest behind `agent`.
pub async fn start(agent: &GuestAgent, spec: Spec) -> Result<Started, pvesandbox::Error> {
    let id = fresh_id();
    let started_at = now_ms();
    let dir = dir_of(&id);
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        SPAWN.to_owned(),
        "spawn".to_owned(),
        dir,
        if spec.combined { "1" } else { "0" }.to_owned(),
        unix_ms(started_at).to_string(),
    ];
    argv.extend(spec.argv);
    let mut req = ExecRequest::new(argv).timeout(Duration::from_secs(60));
    for (k, v) in spec.env {
        req = req.env(k, v);
    }
    if let Some(c) = spec.cwd {
        req = req.cwd(c);
    }
    let out = agent.exec(&req).await?;
    if !out.success() {
        return Err(pvesandbox::Error::Config {
            field: "command".into(),
            value: String::new(),
            fix: format!(
                "could not be started (status {}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(Started::at(agent, id, started_at))
}

/// A fresh command id: 16 hex digits (it becomes a guest path, so nothing else is ever
/// looked up).
pub(crate) fn fresh_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The guest directory of command `id`.
pub(crate) fn dir_of(id: &str) -> String {
    format!("{DIR}/{id}")
}

/// Now, to the millisecond: what the guest keeps, so a restarted server reports the same.
pub(crate) fn now_ms() -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(unix_ms(SystemTime::now()))
}

/// Unix milliseconds.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Started {
    /// Command `id` in the guest behind `agent`, whose directory its starter made.
    pub(crate) fn at(agent: &GuestAgent, id: String, started_at: SystemTime) -> Started {
        Started {
            dir: dir_of(&id),
            id,
            agent: agent.clone(),
            started_at,
        }
    }

    /// The command `id` a server (this one before a restart, or another) started in the guest
    /// behind `agent`, from its directory there; `None` when there is none. Only ids of the
    /// form [`start`] draws are looked up: the id becomes a guest path.
    pub async fn find(agent: &GuestAgent, id: &str) -> Result<Option<Started>, pvesandbox::Error> {
        if id.len() != 16
            || !id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Ok(None);
        }
        let dir = dir_of(id);
        // The guest wrote it: read a few bytes, and take anything else as "unknown" (now).
        let started = match agent.read_at(&format!("{dir}/started"), 0, 32).await {
            Ok(b) => String::from_utf8_lossy(&b)
                .trim()
                .parse::<u64>()
                .ok()
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .unwrap_or_else(SystemTime::now),
            Err(guest_agent::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(Started {
            id: id.to_owned(),
            dir,
            agent: agent.clone(),
            started_at: started,
        }))
    }

    fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    /// Its exit status if it ended (the `rc` file; a guest writing nonsense there reads as
    /// "ended, status unknown" = 255).
    pub async fn exit(&self) -> Result<Option<i32>, pvesandbox::Error> {
        match self.agent.read_at(&self.file("rc"), 0, 16).await {
            Ok(b) => Ok(Some(
                String::from_utf8_lossy(&b).trim().parse().unwrap_or(255),
            )),
            Err(guest_agent::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops its whole process group (`signal`: `TERM` for an interrupt, `KILL` for a timeout).
    pub async fn kill(&self, signal: &str) -> Result<(), pvesandbox::Error> {
        let script = "p=$(cat \"$1/pid\") && kill -s \"$2\" -- \"-$p\" 2>/dev/null; true";
        let req = ExecRequest::new([
            "sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
            "kill".to_owned(),
            self.dir.clone(),
            signal.to_owned(),
        ])
        .user("root")
        .timeout(Duration::from_secs(30));
        self.agent.exec(&req).await?;
        Ok(())
    }

    /// Bytes of its stdout log from `offset` (at most [`READ_MAX`]).
    pub async fn log(&self, offset: u64) -> Result<Vec<u8>, pvesandbox::Error> {
        Ok(self
            .agent
            .read_at(&self.file("out"), offset, READ_MAX)
            .await?)
    }

    /// Removes its directory.
    pub async fn forget(&self) {
        let req = ExecRequest::new(["rm".to_owned(), "-rf".to_owned(), self.dir.clone()])
            .user("root")
            .timeout(Duration::from_secs(30));
        let _ = self.agent.exec(&req).await;
    }

    /// Sends its output line by line as it comes, then its end, to `out`; kills it at
    /// `deadline`. Stops early (leaving it running) when the receiver is gone.
    pub async fn follow(
        &self,
        deadline: Option<Instant>,
        out: tokio::sync::mpsc::Sender<Output>,
    ) -> Result<(), pvesandbox::Error> {
        let mut streams = [
            (self.file("out"), 0u64, Vec::new(), true),
            (self.file("err"), 0u64, Vec::new(), false),
        ];
        let mut ended: Option<Option<i32>> = None;
        let mut pause = TAIL_FIRST;
        loop {
            let mut got = false;
            for (path, offset, partial, is_out) in &mut streams {
                let bytes = self.agent.read_at(path, *offset, READ_MAX).await?;
                *offset += bytes.len() as u64;
                got |= !bytes.is_empty();
                partial.extend_from_slice(&bytes);
                loop {
                    let cut = match partial.iter().position(|b| *b == b'\n') {
                        Some(nl) => nl + 1,
                        None if partial.len() >= LINE_MAX => LINE_MAX,
                        None => break,
                    };
                    let line: Vec<u8> = partial.drain(..cut).collect();
                    let body = line.strip_suffix(b"\n").unwrap_or(&line);
                    let text = String::from_utf8_lossy(body).into_owned();
                    let msg = if *is_out {
                        Output::Stdout(text)
                    } else {
                        Output::Stderr(text)
                    };
                    if out.send(msg).await.is_err() {
                        return Ok(());
                    }
                }
            }
            if let Some(end) = ended {
                // Drained after the end: what is left is a last line without a newline.
                for (_, _, partial, is_out) in &mut streams {
                    if !partial.is_empty() {
                        let text = String::from_utf8_lossy(partial).into_owned();
                        let msg = if *is_out {
                            Output::Stdout(text)
                        } else {
                            Output::Stderr(text)
                        };
                        let _ = out.send(msg).await;
                    }
                }
                let _ = out.send(Output::Exit(end)).await;
                return Ok(());
            }
            if got {
                continue;
            }
            if let Some(rc) = self.exit().await? {
                ended = Some(Some(rc));
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.kill("KILL").await?;
                ended = Some(None);
                continue;
            }
            if out.is_closed() {
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(TAIL_EVERY);
        }
    }
}

/// Background commands by id, for status, logs and interrupt.
#[derive(Default)]
pub struct Background {
    by_id: Mutex<HashMap<String, (String, Arc<Started>)>>,
}

impl Background {
    /// Keeps `cmd` of sandbox `sandbox`.
    pub fn keep(&self, sandbox: &str, cmd: Arc<Started>) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cmd.id.clone(), (sandbox.to_owned(), cmd));
    }

    /// The command `id` of sandbox `sandbox`.
    pub fn get(&self, sandbox: &str, id: &str) -> Option<Arc<Started>> {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|(s, _)| s == sandbox)
            .map(|(_, c)| c.clone())
    }
}
