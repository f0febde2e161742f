//! The routes the simulator serves, with their parameters (syntax: [`crate::spec`]).
//!
//! Declared by hand from what PVE 9.2.3 accepts; `tests/schema_contract.rs` compares every
//! line with the official schema, so a typo or a drifted name fails the build's tests.

use crate::spec::RouteSpec;

/// Every served route.
pub static ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "POST",
        path: "/access/ticket",
        params: "
        username string maxlen=64
        password string
        realm? string maxlen=32 format=pve-realm
        otp? string
        path? string maxlen=64
        privs? string format=pve-priv-list maxlen=64
        new-format? boolean
        tfa-challenge? string
    ",
    },
    RouteSpec {
        method: "GET",
        path: "/version",
        params: "",
    },
];
