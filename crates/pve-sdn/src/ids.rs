//! Zone and vnet ids: at most 8 characters (`[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]`), unique per
//! (run, sample), recognisable as ours, and parseable back after a crash.
//!
//! The scheme (ids are case-sensitive in PVE and in Linux interface names):
//!
//! | object | id | example |
//! |---|---|---|
//! | zone of a sample | `Z` + run key (4 × `[0-9a-z]`) + sample (3 × base62) | `Zk3f90a7` |
//! | vnet `i` (0..=9) of a topology | letter `A`+`i` + the zone's last 7 characters | `Ak3f90a7` |
//! | vnet of an `auto` network | `N` + the `/24`'s first three octets in hex | `Nc0a805` |
//!
//! The sample number is the caller's sequence number within the run, `0..=238327` (62³ − 1).
//! An auto vnet is named after its `/24` so that PVE itself arbitrates between processes:
//! two processes that picked the same `/24` race for the same vnet id and the loser gets
//! `sdn vnet object ID '...' already defined` and picks again (PVE does not reject overlapping
//! subnets in different simple zones, so the subnet create cannot arbitrate).

use crate::config::MAX_VNETS;
use crate::error::SdnError;
use crate::net::Ipv4Net;

/// Samples per run the 3-character base62 field can number.
pub const MAX_SAMPLE: u32 = 62 * 62 * 62 - 1;

const B62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The PVE ids of one sample's network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkIds {
    /// The zone id (`Z` + run key + sample).
    pub zone: String,
    /// Vnet ids for a topology's vnets, in `vnet_configs` order.
    pub vnets: Vec<String>,
}

impl NetworkIds {
    /// The ids for `sample` of the run `run_key` (4 characters `[0-9a-z]`), with `vnets` vnet
    /// ids (at most 10; `auto` names its vnet after its subnet and needs none).
    pub fn for_sample(run_key: &str, sample: u32, vnets: usize) -> Result<NetworkIds, SdnError> {
        if run_key.len() != 4
            || !run_key
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            return Err(SdnError::invalid(
                "run_key",
                run_key,
                "use exactly 4 characters from [0-9a-z] (a base36 digest of the run id)",
            ));
        }
        if sample > MAX_SAMPLE {
            return Err(SdnError::invalid(
                "sample",
                sample.to_string(),
                format!(
                    "sample numbers run from 0 to {MAX_SAMPLE} per run key: start a new run key"
                ),
            ));
        }
        if vnets > MAX_VNETS {
            return Err(SdnError::invalid(
                "sdn_config.vnet_configs",
                format!("{vnets} vnets"),
                format!("give at most {MAX_VNETS} vnets"),
            ));
        }
        let s =
            [sample / (62 * 62), (sample / 62) % 62, sample % 62].map(|d| B62[d as usize] as char);
        let tail: String = run_key.chars().chain(s).collect();
        Ok(NetworkIds {
            zone: format!("Z{tail}"),
            vnets: (0..vnets)
                .map(|i| format!("{}{tail}", (b'A' + i as u8) as char))
                .collect(),
        })
    }
}

/// `Some((run_key, sample))` when `zone` is a zone id of this scheme.
///
/// The id alone decides, so an administrator's zone spelled exactly like ours (`Z`, four
/// `[0-9a-z]`, three alphanumerics) would be taken for ours: avoid such names on shared hosts.
pub fn parse_owned_zone(zone: &str) -> Option<(String, u32)> {
    let b = zone.as_bytes();
    if b.len() != 8 || b[0] != b'Z' {
        return None;
    }
    let run = &zone[1..5];
    if !run
        .bytes()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    {
        return None;
    }
    let mut sample = 0u32;
    for c in &b[5..8] {
        let d = B62.iter().position(|x| x == c)? as u32;
        sample = sample * 62 + d;
    }
    Some((run.to_owned(), sample))
}

/// The vnet id an `auto` network uses for `net` (`N` + first three octets in hex).
pub fn auto_vnet_id(net: &Ipv4Net) -> String {
    let o = net.network().octets();
    format!("N{:02x}{:02x}{:02x}", o[0], o[1], o[2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pve_id_ok(id: &str) -> bool {
        let b = id.as_bytes();
        (2..=8).contains(&b.len())
            && b[0].is_ascii_alphabetic()
            && b.iter().all(u8::is_ascii_alphanumeric)
    }

    #[test]
    fn examples() {
        let ids = NetworkIds::for_sample("k3f9", 0, 2).unwrap();
        assert_eq!(ids.zone, "Zk3f9000");
        assert_eq!(ids.vnets, ["Ak3f9000", "Bk3f9000"]);
        assert_eq!(parse_owned_zone("Zk3f9000"), Some(("k3f9".into(), 0)));
        assert_eq!(
            NetworkIds::for_sample("k3f9", MAX_SAMPLE, 0).unwrap().zone,
            "Zk3f9zzz"
        );
        assert!(NetworkIds::for_sample("K3F9", 1, 1).is_err());
        assert!(NetworkIds::for_sample("k3f9", MAX_SAMPLE + 1, 1).is_err());
        assert!(NetworkIds::for_sample("k3f9", 1, 11).is_err());
        assert_eq!(
            parse_owned_zone("tas333z"),
            None,
            "the peer's zones are not ours"
        );
        assert_eq!(parse_owned_zone("Zk3f9-00"), None);
        assert_eq!(auto_vnet_id(&"192.168.5.0/24".parse().unwrap()), "Nc0a805");
    }

    proptest! {
        #[test]
        fn ids_are_valid_distinct_and_parse_back(run in "[0-9a-z]{4}", s in 0..=MAX_SAMPLE, t in 0..=MAX_SAMPLE, n in 0usize..=10) {
            let a = NetworkIds::for_sample(&run, s, n).unwrap();
            prop_assert!(pve_id_ok(&a.zone));
            prop_assert!(a.vnets.iter().all(|v| pve_id_ok(v) && *v != a.zone));
            prop_assert_eq!(parse_owned_zone(&a.zone), Some((run.clone(), s)));
            let b = NetworkIds::for_sample(&run, t, n).unwrap();
            prop_assert_eq!(s == t, a.zone == b.zone);
            prop_assert!(a.vnets.iter().all(|v| parse_owned_zone(v).is_none()));
        }
    }
}
