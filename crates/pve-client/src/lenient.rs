//! Serde helpers for PVE's loosely typed JSON.
//!
//! PVE's Perl backend emits numbers read from config files as strings (`"memory": "2048"`,
//! `GET /cluster/nextid` → `"101"`) and booleans as `0`/`1`. Every numeric or boolean field in
//! our response types goes through these helpers so both spellings are accepted.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

#[derive(Clone, Copy)]
struct NumVisitor;

impl Visitor<'_> for NumVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a numeric string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<f64, E> {
        Ok(if v { 1.0 } else { 0.0 })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        v.trim()
            .parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

#[derive(Clone, Copy)]
struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or an integer string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // PVE sometimes renders whole numbers as `2048.0`; anything fractional is a real error.
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Ok(v as i64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<i64, E> {
        Ok(v as i64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        let t = v.trim();
        t.parse::<i64>()
            .or_else(|_| {
                t.parse::<f64>()
                    .map_err(|_| ())
                    .and_then(|f| self.visit_f64::<E>(f).map_err(|_| ()))
            })
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// Deserializes an `i64` from a number or numeric string.
pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntVisitor)
}

/// Deserializes an `f64` from a number or numeric string.
pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(NumVisitor)
}

/// Deserializes a `u32` from a number or numeric string.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = int(d)?;
    u32::try_from(v).map_err(|_| de::Error::custom(format!("{v} out of range for u32")))
}

/// Deserializes a `u64` from a number or numeric string.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = int(d)?;
    u64::try_from(v).map_err(|_| de::Error::custom(format!("{v} is negative")))
}

/// Deserializes a `bool` from `true`/`false`, `0`/`1`, or their string forms.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct BoolVisitor;
    impl Visitor<'_> for BoolVisitor {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean, 0/1, or their string forms")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
            Ok(v != 0.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" | "" => Ok(false),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(BoolVisitor)
}

/// `Option` versions of the helpers, for fields PVE may leave out or send as `null`.
pub mod opt {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Null(()),
        Value(serde_json::Value),
    }

    fn with<'de, D, T, F>(d: D, f: F) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        F: FnOnce(serde_json::Value) -> Result<T, serde_json::Error>,
    {
        match Raw::deserialize(d)? {
            Raw::Null(()) => Ok(None),
            Raw::Value(serde_json::Value::Null) => Ok(None),
            Raw::Value(v) => f(v).map(Some).map_err(de::Error::custom),
        }
    }

    /// Optional lenient `i64`.
    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        with(d, super::int)
    }
    /// Optional lenient `u64`.
    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        with(d, super::u64)
    }
    /// Optional lenient `u32`.
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        with(d, super::u32)
    }
    /// Optional lenient `f64`.
    pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        with(d, super::float)
    }
    /// Optional lenient `bool`.
    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        with(d, super::bool)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct T {
        #[serde(deserialize_with = "super::u32")]
        a: u32,
        #[serde(default, deserialize_with = "super::opt::bool")]
        b: Option<bool>,
        #[serde(default, deserialize_with = "super::opt::float")]
        c: Option<f64>,
    }

    fn check(json: &str, expect: Option<T>) {
        let got = serde_json::from_str::<T>(json).ok();
        assert_eq!(got, expect, "{json}");
    }

    #[test]
    fn accepts_both_spellings() {
        check(
            r#"{"a":"101","b":"1","c":"0.5"}"#,
            Some(T {
                a: 101,
                b: Some(true),
                c: Some(0.5),
            }),
        );
        check(
            r#"{"a":101,"b":0}"#,
            Some(T {
                a: 101,
                b: Some(false),
                c: None,
            }),
        );
        check(
            r#"{"a":101.0,"b":true,"c":null}"#,
            Some(T {
                a: 101,
                b: Some(true),
                c: None,
            }),
        );
        check(r#"{"a":"x"}"#, None);
        check(r#"{"a":1.5}"#, None);
        check(r#"{"a":-1}"#, None);
        check(r#"{"a":1,"b":"maybe"}"#, None);
    }
}
