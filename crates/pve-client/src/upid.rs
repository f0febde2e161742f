//! `Upid`: the identifier PVE gives every background task.
//!
//! The format comes from pve-common `PVE/UPID.pm`:
//! `UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:`
//! (note the trailing colon; `pstart` grows to 9 hex digits after ~497 days of uptime).
//! We keep the original text so `Display` reproduces exactly what PVE sent.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::time::Instant;

/// A parsed PVE task id (UPID). `Display` gives back the exact original string; equality and
/// hashing look at that string alone.
#[derive(Clone)]
pub struct Upid {
    raw: String,
    /// When this process parsed it: for a UPID from a response, about when the task started.
    /// Task waits pace their polls from here, so a wait that begins late does not wait again
    /// for time that has already passed.
    received: Instant,
    node: String,
    pid: u32,
    pstart: u64,
    starttime: u32,
    task_type: String,
    id: String,
    user: String,
}

/// Why a string is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UPID {input:?}: {reason}")]
pub struct UpidParseError {
    input: String,
    reason: &'static str,
}

impl Upid {
    /// Builds a UPID from its parts, formatting it the way PVE does.
    ///
    /// Returns an error when a part contains a character PVE never puts there
    /// (`:` in any text part, whitespace or `/`, an invalid node name).
    pub fn new(
        node: &str,
        pid: u32,
        pstart: u64,
        starttime: u32,
        task_type: &str,
        id: &str,
        user: &str,
    ) -> Result<Self, UpidParseError> {
        let raw =
            format!("UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{task_type}:{id}:{user}:");
        raw.parse()
    }

    /// Node that runs the task (where its status must be polled).
    pub fn node(&self) -> &str {
        &self.node
    }
    /// Worker process id on the node.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Process start time in clock ticks since boot.
    pub fn pstart(&self) -> u64 {
        self.pstart
    }
    /// Task start time (Unix seconds).
    pub fn starttime(&self) -> u32 {
        self.starttime
    }
    /// Worker type, e.g. `qmclone`, `qmstart`, `imgcopy`.
    pub fn task_type(&self) -> &str {
        &self.task_type
    }
    /// Object id the task works on (a vmid for VM tasks; may be empty).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// User (or token, `user@realm!token`) that started the task.
    pub fn user(&self) -> &str {
        &self.user
    }
    /// The UPID exactly as PVE sent it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
    /// When this process parsed it (see the field's note).
    pub fn received(&self) -> Instant {
        self.received
    }
}

impl PartialEq for Upid {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Upid {}

impl Hash for Upid {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}

fn is_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn valid_node(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

fn valid_field(s: &str, allow_empty: bool) -> bool {
    (allow_empty || !s.is_empty()) && !s.chars().any(|c| c == ':' || c == '/' || c.is_whitespace())
}

impl FromStr for Upid {
    type Err = UpidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| UpidParseError {
            input: s.to_owned(),
            reason,
        };
        let body = s
            .strip_prefix("UPID:")
            .ok_or_else(|| err("missing `UPID:` prefix"))?;
        let body = body
            .strip_suffix(':')
            .ok_or_else(|| err("missing trailing `:`"))?;
        let parts: Vec<&str> = body.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = parts[..] else {
            return Err(err("expected 7 `:`-separated fields"));
        };
        if !valid_node(node) {
            return Err(err("invalid node name"));
        }
        if !is_hex(pid, 8, 8) || !is_hex(pstart, 8, 9) || !is_hex(starttime, 8, 8) {
            return Err(err(
                "pid, pstart and starttime must be 8 (pstart: 8-9) hex digits",
            ));
        }
        if !valid_field(task_type, false) || !valid_field(id, true) || !valid_field(user, false) {
            return Err(err("type and user must be non-empty; no `/` or whitespace"));
        }
        Ok(Upid {
            received: Instant::now(),
            raw: s.to_owned(),
            node: node.to_owned(),
            pid: u32::from_str_radix(pid, 16).map_err(|_| err("pid out of range"))?,
            pstart: u64::from_str_radix(pstart, 16).map_err(|_| err("pstart out of range"))?,
            starttime: u32::from_str_radix(starttime, 16)
                .map_err(|_| err("starttime out of range"))?,
            task_type: task_type.to_owned(),
            id: id.to_owned(),
            user: user.to_owned(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upid({})", self.raw)
    }
}

impl serde::Serialize for Upid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for Upid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expect: Option<(&str, u32, &str, &str, &str)>) {
        match (input.parse::<Upid>(), expect) {
            (Ok(u), Some((node, pid, ty, id, user))) => {
                assert_eq!(
                    (u.node(), u.pid(), u.task_type(), u.id(), u.user()),
                    (node, pid, ty, id, user)
                );
                assert_eq!(u.to_string(), input);
            }
            (Err(_), None) => {}
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_real_shapes() {
        check(
            "UPID:pve1:000003E8:00001B58:6710A0B1:qmclone:9000:root@pam:",
            Some(("pve1", 1000, "qmclone", "9000", "root@pam")),
        );
        check(
            "UPID:pve1:000003E8:1000001B5:6710A0B1:imgcopy::root@pam!ci:",
            Some(("pve1", 1000, "imgcopy", "", "root@pam!ci")),
        );
        check(
            "UPID:pve-a1:00000001:00000002:00000003:srvreload:networking:root@pam:",
            Some(("pve-a1", 1, "srvreload", "networking", "root@pam")),
        );
        check(
            "UPID:pve1:000003E8:00001B58:6710A0B1:qmclone:9000:root@pam",
            None,
        );
        check(
            "UPID:-pve:000003E8:00001B58:6710A0B1:qmclone:9000:root@pam:",
            None,
        );
        check(
            "UPID:pve1:3E8:00001B58:6710A0B1:qmclone:9000:root@pam:",
            None,
        );
        check(
            "UPID:pve1:000003E8:00001B58:6710A0B1:qm clone:9000:root@pam:",
            None,
        );
        check("UPID:pve1:000003E8:00001B58:6710A0B1:qmclone:9000::", None);
        check("", None);
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(
            node in "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?",
            pid in any::<u32>(),
            pstart in 0u64..=0xF_FFFF_FFFF,
            starttime in any::<u32>(),
            ty in "[a-z]{1,12}",
            id in "[a-z0-9.-]{0,10}",
            user in "[a-z]{1,8}@(pam|pve)(![a-z0-9]{1,6})?",
        ) {
            let u = Upid::new(&node, pid, pstart, starttime, &ty, &id, &user).unwrap();
            let again: Upid = u.to_string().parse().unwrap();
            prop_assert_eq!(&again, &u);
            prop_assert_eq!((again.pid(), again.pstart(), again.starttime()), (pid, pstart, starttime));
            prop_assert_eq!(again.user(), user.as_str());
        }
    }
}
