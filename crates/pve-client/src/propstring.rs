//! PVE property strings: `virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1`.
//!
//! Many config values (`net[n]`, `scsi[n]`, `agent`, `memory`, ...) are comma-separated
//! `key=value` lists. Some formats have a *default key* that may be written without `key=`
//! (`local-lvm:vm-100-disk-0,size=8G` is `file=local-lvm:vm-100-disk-0`). NICs are special:
//! the model is the key and the MAC its value (`virtio=BC:..`). We keep entries in order so a
//! value we did not change is written back byte for byte.

use std::fmt;

/// An ordered property string. Entries without `=` are kept with key `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyString {
    entries: Vec<(Option<String>, String)>,
}

impl PropertyString {
    /// An empty property string.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `a=b,c,d=e`. Splits on the first `=` of each entry only, so values may contain `=`
    /// but not `,` (PVE itself forbids unescaped commas in values).
    pub fn parse(s: &str) -> Self {
        let entries = s
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (Some(k.to_owned()), v.to_owned()),
                None => (None, e.to_owned()),
            })
            .collect();
        PropertyString { entries }
    }

    /// Value of `key`, or `None`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_deref() == Some(key))
            .map(|(_, v)| v.as_str())
    }

    /// The value written without a key (the format's default key), if any.
    pub fn default_value(&self) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.is_none())
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` in place, or appends it.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        match self
            .entries
            .iter_mut()
            .find(|(k, _)| k.as_deref() == Some(key))
        {
            Some(e) => e.1 = value,
            None => self.entries.push((Some(key.to_owned()), value)),
        }
        self
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.as_deref() == Some(key))?;
        Some(self.entries.remove(i).1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_deref(), v.as_str()))
    }
}

impl fmt::Display for PropertyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match k {
                Some(k) => write!(f, "{k}={v}")?,
                None => f.write_str(v)?,
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for PropertyString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nic_and_disk() {
        let nic = PropertyString::parse("virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1");
        assert_eq!(nic.get("virtio"), Some("BC:24:11:00:00:01"));
        assert_eq!(nic.get("bridge"), Some("vmbr0"));
        let disk = PropertyString::parse("local-lvm:vm-100-disk-0,size=8G");
        assert_eq!(disk.default_value(), Some("local-lvm:vm-100-disk-0"));
        assert_eq!(disk.get("size"), Some("8G"));
        let mut d = disk.clone();
        d.set("size", "16G").set("discard", "on");
        assert_eq!(d.to_string(), "local-lvm:vm-100-disk-0,size=16G,discard=on");
        assert_eq!(d.remove("discard").as_deref(), Some("on"));
        assert_eq!(d.get("discard"), None);
    }

    proptest! {
        #[test]
        fn round_trip(entries in proptest::collection::vec(
            (proptest::option::of("[a-z][a-z0-9_-]{0,10}"), "[A-Za-z0-9:./+_-]{1,20}"), 0..8)) {
            let text = entries.iter()
                .map(|(k, v)| match k { Some(k) => format!("{k}={v}"), None => v.clone() })
                .collect::<Vec<_>>().join(",");
            let p = PropertyString::parse(&text);
            prop_assert_eq!(p.to_string(), text.clone());
            prop_assert_eq!(PropertyString::parse(&p.to_string()), p);
        }
    }
}
