//! Ownership: who made a VM or network, until when it may live, and how to tell from Proxmox.
//!
//! Cleanup must work after `kill -9`, from Proxmox state alone, without touching anything
//! another run (or a human) made. So every VM carries, in PVE tags (indexed by
//! `/cluster/resources`, one call for the whole cluster):
//!
//! - `pvesandbox` — made by us, never by hand;
//! - `run-<run id>` — which run owns it (`cleanup --run`);
//! - `exp-<unix seconds>` — when it may be deleted by anyone (`cleanup --expired`),
//!
//! and, in its description, an [`OwnerRecord`] (host, pid, start time) so an expired VM whose
//! owner process is provably still alive on this host is left alone. Networks cannot carry tags,
//! so their ids embed the run's [`RunId::key`] (see `pve_sdn::NetworkIds`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The tag every VM we create carries (one constant, shared with the templates crate).
pub use pvesandbox_templates::TAG;
/// The tag prefix naming the owning run.
pub const RUN_PREFIX: &str = "run-";
/// The tag prefix carrying the expiry (unix seconds).
pub const EXPIRY_PREFIX: &str = "exp-";
/// The first line of an owner record in a VM description.
const RECORD_MARK: &str = "pvesandbox-owner:";
/// The longest VM description PVE takes (the schema's `maxLength` for `description`),
/// characters.
pub const DESCRIPTION_MAX: usize = 8192;

/// A run: one `task_init` (an eval, or one `pvesandbox up`).
///
/// Ten lowercase base36 characters; its first four are the [`key`](RunId::key) that network
/// ids embed (PVE limits those ids to 8 characters, so the whole id does not fit).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

impl RunId {
    /// A fresh random id.
    pub fn random() -> RunId {
        use rand::Rng;
        let mut rng = rand::rng();
        // The key must start with a letter: PVE ids match `[a-zA-Z][a-zA-Z0-9]*`.
        let first = ALPHABET[rng.random_range(10..36)] as char;
        let rest: String = (0..9)
            .map(|_| ALPHABET[rng.random_range(0..36)] as char)
            .collect();
        RunId(format!("{first}{rest}"))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The four characters network ids embed.
    pub fn key(&self) -> &str {
        &self.0[..4]
    }
    /// The `run-<id>` tag.
    pub fn tag(&self) -> String {
        format!("{RUN_PREFIX}{}", self.0)
    }
}

impl TryFrom<String> for RunId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}
impl From<RunId> for String {
    fn from(r: RunId) -> String {
        r.0
    }
}

impl std::str::FromStr for RunId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.strip_prefix(RUN_PREFIX).unwrap_or(s);
        let ok = s.len() == 10
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes().all(|b| ALPHABET.contains(&b));
        if ok {
            Ok(RunId(s.to_owned()))
        } else {
            Err(format!(
                "run id {s:?}: expected 10 lowercase letters/digits starting with a letter, as printed by `pvesandbox up` or `ls`"
            ))
        }
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({})", self.0)
    }
}

/// A sample's identity across processes: its run and its sequence number in the run. The
/// string form `s<seq>.<run>` (`s0.kx3f9q2mzt`) is URL-safe and is the tail of every VM name
/// of the sample (`default.s0.kx3f9q2mzt`), so it is read back from Proxmox state alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleId {
    /// The run.
    pub run: RunId,
    /// The sample's sequence number in the run.
    pub seq: u32,
}

impl fmt::Display for SampleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}", self.seq, self.run)
    }
}

impl std::str::FromStr for SampleId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("sample id {s:?}: expected s<sample>.<run>, e.g. s0.kx3f9q2mzt");
        let (seq, run) = s.split_once('.').ok_or_else(bad)?;
        let seq = seq
            .strip_prefix('s')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        Ok(SampleId {
            run: run.parse()?,
            seq,
        })
    }
}

impl SampleId {
    /// The sample a VM named by [`vm_name`] belongs to, and its sandbox name.
    pub fn of_vm_name(vm: &str) -> Option<(SampleId, String)> {
        let (name, seq, run) = parse_vm_name(vm)?;
        Some((SampleId { run, seq }, name))
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a VM's description says about who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The run.
    pub run: RunId,
    /// Host name of the process that made it.
    pub host: String,
    /// Its pid.
    pub pid: u32,
    /// Its start time (unix seconds), telling a live owner from a recycled pid.
    pub started: u64,
    /// When the VM may be deleted by anyone (unix seconds).
    pub expires: u64,
    /// The sample (sequence number within the run).
    pub sample: u32,
    /// The sandbox name within the sample (`default`, `victim`, ...).
    pub name: String,
    /// What the front end that made the sample keeps with it ([`crate::TaskOptions::notes`],
    /// [`crate::Sample::annotate`]), so a later process can take it over: the server's image,
    /// metadata and readiness. Anyone who may read the VM's config reads these: never secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

impl OwnerRecord {
    /// A record for this process.
    pub fn here(run: &RunId, sample: u32, name: &str, ttl: Duration) -> OwnerRecord {
        let now = unix_now();
        OwnerRecord {
            run: run.clone(),
            host: host_name(),
            pid: std::process::id(),
            started: process_start(std::process::id()).unwrap_or(now),
            expires: now + ttl.as_secs(),
            sample,
            name: name.to_owned(),
            notes: BTreeMap::new(),
        }
    }
    /// This record moved to this process (host, pid, start time), as a process taking the
    /// sample over writes it, so `cleanup --expired` sees the new owner alive.
    pub fn taken_over(mut self) -> OwnerRecord {
        let now = unix_now();
        self.host = host_name();
        self.pid = std::process::id();
        self.started = process_start(self.pid).unwrap_or(now);
        self
    }
    /// The PVE tags for a VM with this record (sorted, as PVE stores them).
    pub fn tags(&self) -> Vec<String> {
        let mut t = vec![
            TAG.to_owned(),
            self.run.tag(),
            format!("{EXPIRY_PREFIX}{}", self.expires),
        ];
        t.sort();
        t
    }
    /// The VM description: a human line, then the machine-readable record.
    pub fn description(&self) -> String {
        format!(
            "Made by pvesandbox for run {} (sample {}, {}); delete with `pvesandbox cleanup --run {}`.\n{RECORD_MARK}{}",
            self.run,
            self.sample,
            self.name,
            self.run,
            serde_json::to_string(self).unwrap_or_default()
        )
    }
    /// `Err(length)` when [`description`](Self::description) is longer than PVE takes
    /// ([`DESCRIPTION_MAX`]): its notes are too long.
    pub fn fits(&self) -> Result<(), usize> {
        match self.description().chars().count() {
            n if n > DESCRIPTION_MAX => Err(n),
            _ => Ok(()),
        }
    }
    /// Reads a record back from a description, if it holds one.
    pub fn parse(description: &str) -> Option<OwnerRecord> {
        let at = description.find(RECORD_MARK)?;
        let json = description[at + RECORD_MARK.len()..].lines().next()?;
        serde_json::from_str(json).ok()
    }
    /// Whether the owning process is provably alive: same host, pid exists, same start time.
    ///
    /// Anything we cannot prove (another host, no /proc) counts as gone, so expired resources
    /// are never kept forever; the expiry is the owner's promise to be done by then.
    pub fn owner_alive(&self) -> bool {
        self.host == host_name() && process_start(self.pid) == Some(self.started)
    }
    /// Whether the owning process is provably gone: it ran on this host and is not running
    /// now. An owner on another host may be alive; only this says it is not.
    pub fn owner_gone_here(&self) -> bool {
        self.host == host_name() && process_start(self.pid) != Some(self.started)
    }
}

/// The PVE name of a sandbox VM: `<name>.s<sample>.<run>` — a valid DNS name that `exec`,
/// `cp` and `ls` read back. Characters PVE refuses in a name become `-`.
pub fn vm_name(name: &str, sample: u32, run: &RunId) -> String {
    let label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    let label = if label.is_empty() { "vm" } else { label };
    format!("{label}.s{sample}.{run}")
}

/// Reads `(name, sample, run)` back from a [`vm_name`].
pub fn parse_vm_name(vm: &str) -> Option<(String, u32, RunId)> {
    let mut parts = vm.rsplitn(3, '.');
    let run = parts.next()?.parse().ok()?;
    let sample = parts.next()?.strip_prefix('s')?.parse().ok()?;
    Some((parts.next()?.to_owned(), sample, run))
}

/// Tags of one VM, as PVE lists them (`;`- or `,`-separated).
pub fn split_tags(tags: &str) -> Vec<&str> {
    tags.split([';', ',', ' '])
        .filter(|t| !t.is_empty())
        .collect()
}

/// What the tags of a VM say, if it is ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// Owning run.
    pub run: Option<RunId>,
    /// Expiry (unix seconds).
    pub expires: Option<u64>,
}

/// Reads our tags; `None` when the VM is not tagged `pvesandbox`.
pub fn parse_tags(tags: &str) -> Option<Tagged> {
    let tags = split_tags(tags);
    if !tags.contains(&TAG) {
        return None;
    }
    let run = tags
        .iter()
        .find_map(|t| t.strip_prefix(RUN_PREFIX))
        .and_then(|r| r.parse().ok());
    let expires = tags
        .iter()
        .find_map(|t| t.strip_prefix(EXPIRY_PREFIX))
        .and_then(|e| e.parse().ok());
    Some(Tagged { run, expires })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// A process's start time in clock ticks since boot, turned into a stable number; `None` when
/// the process does not exist (or /proc is unavailable).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) counts from after the `)` closing the command name, which may
    // itself contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_valid_pve_id_stems() {
        for _ in 0..200 {
            let r = RunId::random();
            assert_eq!(r.as_str().len(), 10);
            assert!(r.key().as_bytes()[0].is_ascii_lowercase());
            assert_eq!(r.as_str().parse::<RunId>().unwrap(), r);
            assert_eq!(r.tag().parse::<RunId>().unwrap(), r);
        }
        for bad in [
            "",
            "0abcdefghi",
            "ABCDEFGHIJ",
            "abc",
            "abcdefghij1",
            "abcdefgh-j",
        ] {
            assert!(bad.parse::<RunId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn record_round_trips_through_description_and_tags() {
        let run = RunId::random();
        let r = OwnerRecord::here(&run, 3, "victim", Duration::from_secs(60));
        assert_eq!(OwnerRecord::parse(&r.description()), Some(r.clone()));
        assert!(r.owner_alive(), "this process is alive");
        let tags = r.tags().join(";");
        let t = parse_tags(&tags).unwrap();
        assert_eq!(t.run, Some(run));
        assert_eq!(t.expires, Some(r.expires));
        assert_eq!(
            parse_tags("run-abcdefghij;exp-1"),
            None,
            "no pvesandbox tag"
        );
        assert_eq!(OwnerRecord::parse("made by hand"), None);
        // Notes ride along; a record from before notes existed still reads, with none.
        let mut noted = r.clone();
        noted.notes.insert("image".into(), "debian13".into());
        assert_eq!(
            OwnerRecord::parse(&noted.description()),
            Some(noted.clone())
        );
        assert!(!r.description().contains("notes"), "no empty notes written");
        let mut stranger = noted.clone();
        stranger.pid = u32::MAX;
        assert!(!stranger.owner_alive() && stranger.owner_gone_here());
        let elsewhere = OwnerRecord {
            host: format!("not-{}", host_name()),
            ..stranger.clone()
        };
        assert!(!elsewhere.owner_alive() && !elsewhere.owner_gone_here());
        assert_eq!(noted.fits(), Ok(()));
        let mut long = noted.clone();
        long.notes
            .insert("metadata".into(), "\"".repeat(DESCRIPTION_MAX / 2));
        assert!(long.fits().is_err(), "quotes escaped twice count");
        let taken = stranger.taken_over();
        assert!(taken.owner_alive(), "taken over by this process");
        assert_eq!((taken.notes, taken.expires), (noted.notes, noted.expires));
    }

    #[test]
    fn vm_names_round_trip_and_are_dns_names() {
        let run = RunId::random();
        assert_eq!(
            parse_vm_name(&vm_name("victim", 7, &run)),
            Some(("victim".into(), 7, run.clone()))
        );
        assert_eq!(vm_name("vm_101", 0, &run), format!("vm-101.s0.{run}"));
        assert_eq!(vm_name("__", 0, &run), format!("vm.s0.{run}"));
        assert_eq!(parse_vm_name("hand-made"), None);
    }

    #[test]
    fn a_dead_or_recycled_owner_is_not_alive() {
        let run = RunId::random();
        let mut r = OwnerRecord::here(&run, 0, "default", Duration::from_secs(1));
        r.started += 1;
        assert!(!r.owner_alive(), "same pid, other start time: recycled");
        let mut r = OwnerRecord::here(&run, 0, "default", Duration::from_secs(1));
        r.host = "elsewhere".into();
        assert!(!r.owner_alive());
    }

    #[test]
    fn sample_ids_round_trip_through_strings_and_vm_names() {
        let run = RunId::random();
        let id = SampleId {
            run: run.clone(),
            seq: 12,
        };
        assert_eq!(id.to_string().parse::<SampleId>(), Ok(id.clone()));
        assert_eq!(
            SampleId::of_vm_name(&vm_name("victim", 12, &run)),
            Some((id, "victim".to_owned()))
        );
        for bad in [
            "",
            "s.x",
            "12.kx3f9q2mzt",
            "s1",
            "s-1.kx3f9q2mzt",
            "s1.NOTARUNID",
        ] {
            assert!(bad.parse::<SampleId>().is_err(), "{bad}");
        }
    }
}
