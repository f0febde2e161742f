//! `Params`: request parameters encoded the way PVE expects.
//!
//! PVE takes parameters as a query string (GET, DELETE) or as an
//! `application/x-www-form-urlencoded` body (POST, PUT). Booleans travel as `0`/`1`, arrays as
//! repeated keys (`command=bash&command=-c`), and every byte is percent-encoded: a literal `+`
//! (resize `size=+1G`) must become `%2B` or PVE reads a space.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::fmt;

/// Characters left as they are: RFC 3986 "unreserved".
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An ordered list of `key=value` parameters. Keys may repeat (arrays).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
    /// Keys whose values must not be printed (passwords, cloud-init secrets).
    sensitive: Vec<String>,
}

/// A value that can be sent as a PVE parameter.
pub trait ParamValue {
    /// The wire form.
    fn to_param(&self) -> String;
}

impl ParamValue for bool {
    fn to_param(&self) -> String {
        if *self { "1" } else { "0" }.to_owned()
    }
}

macro_rules! display_param {
    ($($t:ty),*) => {$(
        impl ParamValue for $t {
            fn to_param(&self) -> String { self.to_string() }
        }
    )*};
}
display_param!(
    u8,
    u16,
    u32,
    u64,
    i32,
    i64,
    usize,
    f64,
    String,
    str,
    crate::Vmid
);

impl<T: ParamValue + ?Sized> ParamValue for &T {
    fn to_param(&self) -> String {
        (**self).to_param()
    }
}

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key=value`.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl ParamValue) -> Self {
        self.push(key, value);
        self
    }

    /// Appends `key=value` if `value` is `Some`.
    #[must_use]
    pub fn with_opt<V: ParamValue>(mut self, key: &str, value: Option<V>) -> Self {
        if let Some(v) = value {
            self.push(key, v);
        }
        self
    }

    /// Appends `key=value` for a value that must never be logged.
    #[must_use]
    pub fn with_secret(mut self, key: &str, value: &crate::Secret) -> Self {
        self.pairs.push((key.to_owned(), value.expose().to_owned()));
        self.sensitive.push(key.to_owned());
        self
    }

    /// Appends one `key=item` per item: PVE's encoding of an array parameter.
    #[must_use]
    pub fn with_array<I, V>(mut self, key: &str, items: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: ParamValue,
    {
        for v in items {
            self.push(key, v);
        }
        self
    }

    /// Appends `key=value` in place.
    pub fn push(&mut self, key: &str, value: impl ParamValue) {
        self.pairs.push((key.to_owned(), value.to_param()));
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// URL-encoded `k=v&k=v` (used for both query strings and form bodies).
    ///
    /// Everything but RFC 3986 unreserved characters is percent-encoded, spaces as `%20`
    /// rather than `+`, so the same string is right in a query and in a form body.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.extend(utf8_percent_encode(k, COMPONENT));
            out.push('=');
            out.extend(utf8_percent_encode(v, COMPONENT));
        }
        out
    }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.pairs {
            if self.sensitive.contains(k) {
                m.entry(k, &"***");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl<K: AsRef<str>, V: ParamValue> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut p = Params::new();
        for (k, v) in iter {
            p.push(k.as_ref(), v);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_pve_expects() {
        let p = Params::new()
            .with("size", "+1G")
            .with("full", true)
            .with_array("command", ["sh", "-c", "echo a&b"])
            .with_opt("name", None::<&str>);
        assert_eq!(
            p.encode(),
            "size=%2B1G&full=1&command=sh&command=-c&command=echo%20a%26b"
        );
        let s = Params::new().with_secret("password", &crate::Secret::new("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
