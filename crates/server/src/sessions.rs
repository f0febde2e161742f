//! execd's bash sessions: one live `bash` per session in the guest, so a run's working
//! directory, variables (exported or not), functions and aliases are there for the next run,
//! as in execd.
//!
//! In the guest, a session is a directory `/run/pvesandbox-session/<id>` holding `in`, a FIFO
//! the session's shell reads its commands from (opened read-write by the shell itself, so it
//! never sees an end of file), and `pid`, the shell's process group (it runs under
//! `setsid`). A run is a command directory as [`crate::commands`] makes them: the run's text
//! in `cmd`, and one line written into the FIFO makes the shell source it with its output in
//! the run's `out` and `err` and its status in `rc`, which the server tails as it does any
//! command. The state is all in the guest, so a restarted server finds its sessions.
//!
//! What a container's execd does not face: a run that calls `exit` ends its session (its
//! status is still reported), and a run killed by its timeout, or abandoned by its client
//! before its end, takes its session with it (the process group is the session's). Later
//! runs of an ended session answer 404.

use std::time::Duration;

use guest_agent::{ExecRequest, GuestAgent};

use crate::commands::Started;

/// Where the session directories live in the guest (tmpfs, root's).
const DIR: &str = "/run/pvesandbox-session";

/// Starts the session's shell: `$1` its directory, `$2` its working directory (may be empty).
/// bash where the guest has it, else `sh` (which keeps the working directory and variables,
/// though not bash's own state).
const CREATE: &str = r#"d=$1; cwd=$2
sh=$(command -v bash || command -v sh) || exit 96
if [ -n "$cwd" ]; then cd -- "$cwd" || exit 95; fi
mkdir -p "$d" && mkfifo "$d/in" || exit 97
setsid "$sh" -c 'exec 3<>"$1/in"; exec "$0" <&3 >/dev/null 2>&1 3>&-' "$sh" "$d" </dev/null >/dev/null 2>&1 &
echo $! >"$d/pid"
"#;

/// Hands a run to the session's shell: `$1` the session directory, `$2` the run's directory,
/// `$3` the host's time (unix ms), `$4` a working directory for this run (may be empty), `$5`
/// the command. Exits 98 when there is no such session, 99 when its shell ended. The line
/// written into the FIFO names only the run's directory (our id, no quoting needed); the
/// caller's words stay in files.
const RUN: &str = r#"s=$1; r=$2; started=$3; cwd=$4
[ -p "$s/in" ] || exit 98
kill -0 "$(cat "$s/pid")" 2>/dev/null || exit 99
mkdir -p "$r" && : >"$r/out" && : >"$r/err" && echo "$started" >"$r/started" && cp "$s/pid" "$r/pid" || exit 97
printf '%s\n' "$5" >"$r/cmd" || exit 97
if [ -n "$cwd" ]; then printf '%s' "$cwd" >"$r/cwd" || exit 97; fi
printf '%s\n' "trap 'echo \$? >$r/rc.part; mv $r/rc.part $r/rc' EXIT; { { [ ! -f $r/cwd ] || cd -- \"\$(cat $r/cwd)\"; } && . $r/cmd; } >$r/out 2>$r/err </dev/null; echo \$? >$r/rc.part; trap - EXIT; mv $r/rc.part $r/rc" >"$s/in"
"#;

/// Ends the session's shell and everything it started, and removes its directory; exits 98
/// when there is no such session.
const DELETE: &str = r#"d=$1
[ -d "$d" ] || exit 98
p=$(cat "$d/pid" 2>/dev/null) && kill -s KILL -- "-$p" 2>/dev/null
rm -rf -- "$d"
"#;

/// What a session call found.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// No session by that id.
    NoSession,
    /// Its shell ended (a run called `exit`, or a timeout killed it).
    Ended,
}

/// Why a session call failed.
#[derive(Debug)]
pub enum Failure {
    /// See [`Missing`].
    Missing(Missing),
    /// The guest or its agent.
    Guest(pvesandbox::Error),
}

impl From<pvesandbox::Error> for Failure {
    fn from(e: pvesandbox::Error) -> Failure {
        Failure::Guest(e)
    }
}

fn valid(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn root(req: ExecRequest) -> ExecRequest {
    req.user("root").timeout(Duration::from_secs(60))
}

async fn script(
    agent: &GuestAgent,
    script: &str,
    args: Vec<String>,
    env: &[(String, String)],
) -> Result<i32, pvesandbox::Error> {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "session".to_owned(),
    ];
    argv.extend(args);
    let mut req = root(ExecRequest::new(argv));
    for (k, v) in env {
        req = req.env(k.clone(), v);
    }
    let out = agent.exec(&req).await?;
    match out.status {
        0 | 95..=99 => Ok(out.status),
        s => Err(pvesandbox::Error::Config {
            field: "session".into(),
            value: String::new(),
            fix: format!(
                "the guest could not run it (status {s}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
    }
}

/// Starts a session in `cwd` (default: the shell's) with `env`: its id.
pub async fn create(
    agent: &GuestAgent,
    cwd: Option<&str>,
    env: &[(String, String)],
) -> Result<String, pvesandbox::Error> {
    let id = format!("{:016x}", rand::random::<u64>());
    let args = vec![format!("{DIR}/{id}"), cwd.unwrap_or_default().to_owned()];
    match script(agent, CREATE, args, env).await? {
        0 => Ok(id),
        95 => Err(pvesandbox::Error::Config {
            field: "cwd".into(),
            value: cwd.unwrap_or_default().to_owned(),
            fix: "no such directory in the sandbox".into(),
        }),
        s => Err(pvesandbox::Error::Config {
            field: "session".into(),
            value: String::new(),
            fix: format!("the guest could not start a shell (status {s})"),
        }),
    }
}

/// Hands `command` to session `id`'s shell: the run, to follow as any command.
pub async fn run(
    agent: &GuestAgent,
    id: &str,
    command: &str,
    cwd: Option<&str>,
) -> Result<Started, Failure> {
    if !valid(id) {
        return Err(Failure::Missing(Missing::NoSession));
    }
    let started_at = crate::commands::now_ms();
    let run = crate::commands::fresh_id();
    let args = vec![
        format!("{DIR}/{id}"),
        crate::commands::dir_of(&run),
        crate::commands::unix_ms(started_at).to_string(),
        cwd.unwrap_or_default().to_owned(),
        command.to_owned(),
    ];
    match script(agent, RUN, args, &[]).await? {
        0 => Ok(Started::at(agent, run, started_at)),
        98 => Err(Failure::Missing(Missing::NoSession)),
        99 => Err(Failure::Missing(Missing::Ended)),
        s => Err(Failure::Guest(pvesandbox::Error::Config {
            field: "session".into(),
            value: id.to_owned(),
            fix: format!("the run could not be handed to the session (status {s})"),
        })),
    }
}

/// Ends session `id`: `false` when there is none.
pub async fn delete(agent: &GuestAgent, id: &str) -> Result<bool, pvesandbox::Error> {
    if !valid(id) {
        return Ok(false);
    }
    Ok(script(agent, DELETE, vec![format!("{DIR}/{id}")], &[]).await? == 0)
}
