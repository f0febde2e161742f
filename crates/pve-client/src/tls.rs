//! TLS modes for talking to Proxmox: verify, verify against a CA, pin a fingerprint, or (on
//! explicit request) accept anything.
//!
//! Pinning must happen *inside* the handshake (a custom rustls `ServerCertVerifier`), not by
//! inspecting the certificate afterwards: by then the API token header would already be sent.
//! Even when pinning or running insecure, the handshake signatures are still checked, so the
//! peer must hold the key of the certificate it shows.

use std::fmt;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::Error;

/// How the client checks the server's certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Verify against the system's roots (the default).
    Verify,
    /// Verify against the system's roots plus the CA certificates in a PEM file, e.g.
    /// `/etc/pve/pve-root-ca.pem` copied from the node.
    VerifyWithCa(std::path::PathBuf),
    /// Accept exactly the leaf certificate with this SHA-256 fingerprint (what the PVE GUI and
    /// `pvenode cert info` show), whatever its issuer, name or dates.
    Pinned(Fingerprint),
    /// Accept any certificate. Only for throw-away test setups; must be asked for explicitly.
    Insecure,
}

impl fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsMode::Verify => f.write_str("Verify"),
            TlsMode::VerifyWithCa(p) => write!(f, "VerifyWithCa({})", p.display()),
            TlsMode::Pinned(fp) => write!(f, "Pinned({fp})"),
            TlsMode::Insecure => f.write_str("Insecure"),
        }
    }
}

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;
    /// Accepts `AA:BB:...` as the GUI shows it, or 64 hex digits without colons; any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.trim().chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "expected a SHA-256 fingerprint (32 hex bytes, `AA:BB:..` or plain), got {} characters",
                s.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex above");
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The crypto provider for everything we build: `ring`, which needs no C toolchain beyond `cc`
/// and builds much faster than aws-lc (see rust-stack-notes).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls config that `reqwest` will use for every connection.
pub(crate) fn client_config(mode: &TlsMode) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config {
            field: "tls",
            message: e.to_string(),
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Verify => Arc::new(rustls_platform_verifier::Verifier::new(provider).map_err(
            |e| Error::Config {
                field: "tls",
                message: e.to_string(),
            },
        )?),
        TlsMode::VerifyWithCa(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Config {
                    field: "ca_file",
                    message: format!("{}: cannot read PEM certificates: {e}", path.display()),
                })?;
            if certs.is_empty() {
                return Err(Error::Config {
                    field: "ca_file",
                    message: format!("{}: no PEM certificate found", path.display()),
                });
            }
            Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(certs, provider).map_err(
                    |e| Error::Config {
                        field: "ca_file",
                        message: e.to_string(),
                    },
                )?,
            )
        }
        TlsMode::Pinned(fp) => Arc::new(PinnedVerifier {
            expected: Some(*fp),
            algorithms: provider.signature_verification_algorithms,
        }),
        TlsMode::Insecure => Arc::new(PinnedVerifier {
            expected: None,
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Accepts the leaf whose SHA-256 matches `expected` (or, when `None`, any leaf), and still
/// verifies the handshake signature with that leaf's key.
#[derive(Debug)]
struct PinnedVerifier {
    expected: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.expected {
            None => Ok(ServerCertVerified::assertion()),
            Some(expected) => {
                let got = Fingerprint::of_der(end_entity.as_ref());
                if got == expected {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "certificate fingerprint mismatch: server has {got}, pinned {expected}"
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let colons = "AB:".repeat(31) + "CD";
        let fp: Fingerprint = colons.parse().unwrap();
        assert_eq!(fp.to_string(), colons);
        let plain: Fingerprint = colons.replace(':', "").to_lowercase().parse().unwrap();
        assert_eq!(plain, fp);
        assert!("AB:CD".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }
}
