//! Who may call: API keys for the lifecycle API (`OPEN-SANDBOX-API-KEY`), and per-sandbox
//! tokens for its execd and egress endpoints (`X-EXECD-ACCESS-TOKEN`), which the SDK only
//! learns from the endpoint response: in its default direct mode it never sends the API key
//! there.
//!
//! Keys are kept as SHA-256 digests and compared in constant time; a token is the HMAC-SHA256
//! of the sandbox id under a key derived from the API keys, so it needs no storage, opens one
//! sandbox only, and stays valid across a restart (and between replicas) with the same keys;
//! changing the keys changes every token. An unauthenticated server draws its token key at
//! random: every token is moot there.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use pve_client::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The lifecycle API's key header.
pub const API_KEY_HEADER: &str = "OPEN-SANDBOX-API-KEY";
/// The per-sandbox token header of execd and egress endpoints.
pub const TOKEN_HEADER: &str = "X-EXECD-ACCESS-TOKEN";

/// The server's credentials.
pub struct Auth {
    keys: Vec<[u8; 32]>,
    token_key: [u8; 32],
    open: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &self.keys.len())
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Accepts `keys`; with none and `open`, everyone (the caller made sure that is loopback).
    pub fn new(keys: &[Secret], open: bool) -> Auth {
        let keys: Vec<[u8; 32]> = keys
            .iter()
            .map(|k| Sha256::digest(k.expose().as_bytes()).into())
            .collect();
        let token_key = if keys.is_empty() {
            rand::random()
        } else {
            let mut sorted = keys.clone();
            sorted.sort();
            let mut h = Sha256::new();
            // Domain-separated, so a token key never equals a key's plain digest.
            h.update(b"pvesandbox-server execd token key v1\0");
            sorted.iter().for_each(|k| h.update(k));
            h.finalize().into()
        };
        Auth {
            keys,
            token_key,
            open,
        }
    }

    /// Whether the request carries a valid API key (or none is needed): in
    /// `OPEN-SANDBOX-API-KEY`, or as `Authorization: Bearer <key>`, which is what Prometheus
    /// scrapers send.
    pub fn key_ok(&self, headers: &HeaderMap) -> bool {
        if self.open {
            return true;
        }
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let Some(given) = headers.get(API_KEY_HEADER).map(|v| v.as_bytes()).or(bearer) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given).into();
        // Every key is compared, so the time says nothing about which one matched.
        self.keys
            .iter()
            .fold(0u8, |hit, k| hit | k.ct_eq(&given).unwrap_u8())
            == 1
    }

    /// The token that opens sandbox `id`'s endpoints.
    pub fn token(&self, id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.token_key).expect("any key length");
        mac.update(id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether the request may use sandbox `id`'s endpoints: its token, or an API key (the
    /// SDK's server-proxy mode sends the key).
    pub fn token_ok(&self, id: &str, headers: &HeaderMap) -> bool {
        if self.key_ok(headers) {
            return true;
        }
        headers
            .get(TOKEN_HEADER)
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(self.token(id).as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens_open_what_they_should_and_nothing_else() {
        let auth = Auth::new(&[Secret::new("k1"), Secret::new("k2")], false);
        let with = |name: &'static str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, v.parse().unwrap());
            h
        };
        assert!(auth.key_ok(&with(API_KEY_HEADER, "k2")));
        assert!(!auth.key_ok(&with(API_KEY_HEADER, "k3")));
        assert!(!auth.key_ok(&HeaderMap::new()));
        let t = auth.token("s0.abc");
        assert!(auth.token_ok("s0.abc", &with(TOKEN_HEADER, &t)));
        assert!(!auth.token_ok("s1.abc", &with(TOKEN_HEADER, &t)));
        assert!(!format!("{auth:?}").contains("k1"));
        assert!(Auth::new(&[], true).key_ok(&HeaderMap::new()));
        // A restarted server with the same keys hands out the same tokens; other keys do not.
        let again = Auth::new(&[Secret::new("k2"), Secret::new("k1")], false);
        assert_eq!(again.token("s0.abcdefghij"), auth.token("s0.abcdefghij"));
        let other = Auth::new(&[Secret::new("k1")], false);
        assert_ne!(other.token("s0.abcdefghij"), auth.token("s0.abcdefghij"));
    }
}
