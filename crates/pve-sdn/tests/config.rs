//! `sdn_config` as the peer writes it: its examples deserialize unchanged, and every invalid
//! config is refused before any API call with an error naming the field.

use proptest::prelude::*;
use pve_sdn::{SdnError, SdnSpec};
use serde_json::{Value, json};

/// The peer README's full example (`sdn_config=SdnConfig(...)`), as pydantic dumps it to JSON.
const README_EXAMPLE: &str = r#"{
    "vnet_configs": [
        {
            "subnets": [
                {
                    "cidr": "192.168.20.0/24",
                    "gateway": "192.168.20.1",
                    "snat": true,
                    "dhcp_ranges": [{"start": "192.168.20.50", "end": "192.168.20.100"}]
                }
            ],
            "alias": "my special vnet"
        }
    ],
    "use_pve_ipam_dnsnmasq": true
}"#;

#[test]
fn peer_examples_deserialize_unchanged() {
    let spec: SdnSpec = serde_json::from_str(README_EXAMPLE).unwrap();
    let SdnSpec::Topology(cfg) = &spec else {
        panic!("{spec:?}")
    };
    assert_eq!(
        cfg.vnet_configs[0].alias.as_deref(),
        Some("my special vnet")
    );
    assert_eq!(
        cfg.vnet_configs[0].subnets[0].dhcp_ranges[0].end,
        "192.168.20.100"
    );
    spec.validate().unwrap();
    // Serialising gives the same JSON back.
    let back: Value = serde_json::to_value(&spec).unwrap();
    assert_eq!(back, serde_json::from_str::<Value>(README_EXAMPLE).unwrap());

    assert_eq!(
        serde_json::from_str::<SdnSpec>(r#""auto""#).unwrap(),
        SdnSpec::Auto
    );
    assert_eq!(
        serde_json::from_str::<SdnSpec>("null").unwrap(),
        SdnSpec::Existing
    );
    assert_eq!(
        serde_json::to_value(SdnSpec::Existing).unwrap(),
        Value::Null
    );
    assert_eq!(serde_json::to_value(SdnSpec::Auto).unwrap(), json!("auto"));
    // TOML / env friendly spelling of null.
    assert_eq!(
        serde_json::from_str::<SdnSpec>(r#""none""#).unwrap(),
        SdnSpec::Existing
    );

    // "You can leave subnets blank if you are handling IPAM yourself" (pfSense), defaults
    // applied: alias and subnets optional, use_pve_ipam_dnsnmasq true unless given.
    let pf: SdnSpec = serde_json::from_str(
        r#"{"vnet_configs": [{"alias": "wan side"}, {}], "use_pve_ipam_dnsnmasq": false}"#,
    )
    .unwrap();
    pf.validate().unwrap();
    let SdnSpec::Topology(cfg) =
        serde_json::from_str::<SdnSpec>(r#"{"vnet_configs": [{"subnets": []}]}"#).unwrap()
    else {
        panic!()
    };
    assert!(cfg.use_pve_ipam_dnsnmasq);

    // Unknown fields are ignored, like pydantic's default.
    serde_json::from_str::<SdnSpec>(
        r#"{"vnet_configs": [{}], "use_pve_ipam_dnsnmasq": false, "extra": 1}"#,
    )
    .unwrap();

    // In a larger config, as the lead's figment config will embed it.
    #[derive(serde::Deserialize)]
    struct Env {
        #[serde(default)]
        sdn_config: SdnSpec,
    }
    assert_eq!(
        serde_json::from_str::<Env>("{}").unwrap().sdn_config,
        SdnSpec::Auto
    );
    assert_eq!(
        serde_json::from_str::<Env>(r#"{"sdn_config": null}"#)
            .unwrap()
            .sdn_config,
        SdnSpec::Existing
    );
}

#[test]
fn wrong_shapes_are_refused_by_serde_with_the_field() {
    let e = serde_json::from_str::<SdnSpec>(r#""manual""#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"auto\", null"), "{e}");
    let e = serde_json::from_str::<SdnSpec>(
        r#"{"vnet_configs": [{"subnets": [{"cidr": "10.0.0.0/24"}]}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing field `gateway`"), "{e}");
}

fn base() -> Value {
    serde_json::from_str(README_EXAMPLE).unwrap()
}

fn subnet(cidr: &str, gw: &str, ranges: &[(&str, &str)]) -> Value {
    json!({"cidr": cidr, "gateway": gw, "snat": false,
           "dhcp_ranges": ranges.iter().map(|(s, e)| json!({"start": s, "end": e})).collect::<Vec<_>>()})
}

fn refused(v: Value) -> (String, String) {
    let spec: SdnSpec = serde_json::from_value(v.clone()).unwrap();
    match spec.validate() {
        Err(SdnError::Invalid { field, fix, .. }) => (field, fix),
        other => panic!("{v} should be refused, got {other:?}"),
    }
}

#[test]
fn invalid_configs_name_the_field() {
    let s0 = "sdn_config.vnet_configs[0].subnets[0]";
    let mut cases: Vec<(Value, String, &str)> = Vec::new();
    let mut c = |f: &dyn Fn(&mut Value), field: String, fix_has: &'static str| {
        let mut v = base();
        f(&mut v);
        cases.push((v, field, fix_has));
    };
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["gateway"] = json!("192.168.21.1"),
        format!("{s0}.gateway"),
        "inside 192.168.20.0/24",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["gateway"] = json!("192.168.20.0"),
        format!("{s0}.gateway"),
        "host address",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["gateway"] = json!("192.168.20.255"),
        format!("{s0}.gateway"),
        "host address",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["gateway"] = json!("gw"),
        format!("{s0}.gateway"),
        "IPv4 address",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["cidr"] = json!("192.168.20.5/24"),
        format!("{s0}.cidr"),
        "did you mean 192.168.20.0/24",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["cidr"] = json!("fd00::/64"),
        format!("{s0}.cidr"),
        "only IPv4",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["cidr"] = json!("192.168.20.0/31"),
        format!("{s0}.cidr"),
        "/30",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["dhcp_ranges"][0]["start"] = json!("192.168.21.50"),
        format!("{s0}.dhcp_ranges[0].start"),
        "inside",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["dhcp_ranges"][0]["end"] = json!("192.168.20.255"),
        format!("{s0}.dhcp_ranges[0].end"),
        "inside",
    );
    c(
        &|v| {
            v["vnet_configs"][0]["subnets"][0]["dhcp_ranges"][0] =
                json!({"start": "192.168.20.100", "end": "192.168.20.50"})
        },
        format!("{s0}.dhcp_ranges[0]"),
        "after end",
    );
    c(
        &|v| {
            v["vnet_configs"][0]["subnets"][0]["dhcp_ranges"][0] =
                json!({"start": "192.168.20.1", "end": "192.168.20.50"})
        },
        format!("{s0}.dhcp_ranges[0]"),
        "gateway",
    );
    c(
        &|v| {
            v["vnet_configs"][0]["subnets"][0]["dhcp_ranges"]
                .as_array_mut()
                .unwrap()
                .push(json!({"start": "192.168.20.90", "end": "192.168.20.120"}))
        },
        format!("{s0}.dhcp_ranges[1]"),
        "overlaps dhcp_ranges[0]",
    );
    c(
        &|v| {
            v["vnet_configs"].as_array_mut().unwrap().push(
                json!({"alias": "b", "subnets": [subnet("192.168.0.0/16", "192.168.0.1", &[])]}),
            )
        },
        "sdn_config.vnet_configs[1].subnets[0].cidr".into(),
        "overlaps 192.168.20.0/24",
    );
    c(
        &|v| {
            v["vnet_configs"]
                .as_array_mut()
                .unwrap()
                .push(json!({"alias": "my special vnet"}))
        },
        "sdn_config.vnet_configs[1].alias".into(),
        "same alias",
    );
    c(
        &|v| v["vnet_configs"][0]["alias"] = json!("a|b"),
        "sdn_config.vnet_configs[0].alias".into(),
        "remove '|'",
    );
    c(
        &|v| v["vnet_configs"][0]["alias"] = json!("x".repeat(257)),
        "sdn_config.vnet_configs[0].alias".into(),
        "256",
    );
    c(
        &|v| v["vnet_configs"] = json!([]),
        "sdn_config.vnet_configs".into(),
        "1 to 10",
    );
    c(
        &|v| v["vnet_configs"] = json!((0..11).map(|_| json!({})).collect::<Vec<_>>()),
        "sdn_config.vnet_configs".into(),
        "1 to 10",
    );
    c(
        &|v| v["use_pve_ipam_dnsnmasq"] = json!(false),
        format!("{s0}.dhcp_ranges[0]"),
        "use_pve_ipam_dnsnmasq",
    );
    c(
        &|v| v["vnet_configs"][0]["subnets"][0]["dhcp_ranges"] = json!([]),
        "sdn_config.use_pve_ipam_dnsnmasq".into(),
        "at least one",
    );
    let n = cases.len();
    for (v, field, fix_has) in cases {
        let (got, fix) = refused(v);
        assert_eq!(got, field);
        assert!(fix.contains(fix_has), "{field}: {fix:?} lacks {fix_has:?}");
    }
    assert_eq!(n, 20);
}

proptest! {
    /// Random gateway and range placements: validation agrees with a direct model.
    #[test]
    fn gateway_and_range_checks_match_a_model(third in 0u8..=255, gw in 0u32..=255, a in 0u32..=255, b in 0u32..=255) {
        let ip = |h: u32| format!("10.1.{third}.{h}");
        let v = json!({"vnet_configs": [{"subnets": [subnet(&format!("10.1.{third}.0/24"), &ip(gw), &[(&ip(a), &ip(b))])]}]});
        let spec: SdnSpec = serde_json::from_value(v).unwrap();
        let usable = |h: u32| (1..=254).contains(&h);
        let ok = usable(gw) && usable(a) && usable(b) && a <= b && !(a..=b).contains(&gw);
        let got = spec.validate();
        prop_assert_eq!(got.is_ok(), ok, "{:?}", got);
        if let Err(e) = got {
            prop_assert!(e.field().unwrap().starts_with("sdn_config.vnet_configs[0].subnets[0]."), "{}", e);
        }
    }

    /// Two subnets: refused exactly when they overlap, naming the second.
    #[test]
    fn overlapping_subnets_are_refused(x in 0u8..=3, px in 22u8..=26, y in 0u8..=3, py in 22u8..=26) {
        let net = |o: u8, p: u8| -> (String, u32, u32) {
            let mask = u32::MAX << (32 - p);
            let start = (u32::from(std::net::Ipv4Addr::new(10, 2, o, 0))) & mask;
            (format!("{}/{p}", std::net::Ipv4Addr::from(start)), start, start | !mask)
        };
        let (c1, s1, e1) = net(x, px);
        let (c2, s2, e2) = net(y, py);
        let gw = |s: u32| std::net::Ipv4Addr::from(s + 1).to_string();
        let v = json!({"vnet_configs": [
            {"subnets": [subnet(&c1, &gw(s1), &[])]},
            {"subnets": [subnet(&c2, &gw(s2), &[])]}
        ], "use_pve_ipam_dnsnmasq": false});
        let got = serde_json::from_value::<SdnSpec>(v).unwrap().validate();
        let overlap = s1 <= e2 && s2 <= e1;
        prop_assert_eq!(got.is_err(), overlap);
        if let Err(e) = got {
            prop_assert_eq!(e.field(), Some("sdn_config.vnet_configs[1].subnets[0].cidr"));
        }
    }
}

proptest! {
    /// Valid topologies survive a JSON round trip unchanged and validate.
    #[test]
    fn valid_topologies_round_trip(
        subnets in proptest::collection::vec((any::<bool>(), 2u32..100, 0u32..100), 1..=10),
        alias in proptest::option::of("[a-z][a-z0-9 _-]{0,20}"),
    ) {
        let vnets: Vec<Value> = subnets
            .iter()
            .enumerate()
            .map(|(i, (snat, a, len))| {
                let ip = |h: u32| format!("10.9.{i}.{h}");
                let mut s = subnet(&format!("10.9.{i}.0/24"), &ip(1), &[(&ip(*a), &ip(a + len))]);
                s["snat"] = json!(snat);
                let mut v = json!({"subnets": [s]});
                if let Some(al) = &alias {
                    v["alias"] = json!(format!("{al}{i}"));
                }
                v
            })
            .collect();
        let v = json!({"vnet_configs": vnets, "use_pve_ipam_dnsnmasq": true});
        let spec: SdnSpec = serde_json::from_value(v.clone()).unwrap();
        prop_assert!(spec.validate().is_ok(), "{:?}", spec.validate());
        // Serialised like pydantic's dump (`"alias": null` when unset).
        let back = serde_json::to_value(&spec).unwrap();
        let again: SdnSpec = serde_json::from_value(back).unwrap();
        prop_assert_eq!(again, spec);
    }
}
