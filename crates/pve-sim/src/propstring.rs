//! The simulator's own property-string handling (it shares no types with pve-client, so the
//! two cannot be wrong the same way).

use std::fmt;

/// An ordered `key=value,...` list; keyless entries have key `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropString(Vec<(Option<String>, String)>);

impl PropString {
    /// Parses a property string.
    pub fn parse(s: &str) -> Self {
        PropString(
            s.split(',')
                .filter(|e| !e.is_empty())
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (Some(k.to_owned()), v.to_owned()),
                    None => (None, e.to_owned()),
                })
                .collect(),
        )
    }
    /// Value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.as_deref() == Some(key))
            .map(|(_, v)| v.as_str())
    }
    /// The volume of a drive: the keyless entry or `file=`.
    pub fn file(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.is_none())
            .map(|(_, v)| v.as_str())
            .or_else(|| self.get("file"))
    }
    /// Removes and returns the keyless entry.
    pub fn take_default(&mut self) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k.is_none())?;
        Some(self.0.remove(i).1)
    }
    /// Replaces the drive volume, keeping its position.
    pub fn set_file(&mut self, volid: &str) {
        match self
            .0
            .iter_mut()
            .find(|(k, _)| k.is_none() || k.as_deref() == Some("file"))
        {
            Some(e) => *e = (None, volid.to_owned()),
            None => self.0.insert(0, (None, volid.to_owned())),
        }
    }
    /// Sets `key` in place or appends it.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k.as_deref() == Some(key)) {
            Some(e) => e.1 = value.to_owned(),
            None => self.0.push((Some(key.to_owned()), value.to_owned())),
        }
    }
    /// Puts `key=value` first.
    pub fn insert_first(&mut self, key: &str, value: &str) {
        self.0.insert(0, (Some(key.to_owned()), value.to_owned()));
    }
    /// Removes `key`.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k.as_deref() == Some(key))?;
        Some(self.0.remove(i).1)
    }
}

impl fmt::Display for PropString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
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
