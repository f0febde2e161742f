//! HTTPS with the operator's certificate: a client trusting that certificate is served, plain
//! HTTP on the same port is not, and unreadable or mismatched files are config errors that
//! name the field and never quote a key.

use std::sync::Arc;

use pve_client::Secret;
use pvesandbox::Fleet;
use pvesandbox::embedded::{SimOptions, start_demo_sim_with};
use pvesandbox_server::tls::TlsFiles;
use pvesandbox_server::{ServeOptions, Server};

const KEY: &str = "tls key, not a secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_given_certificate_and_refuses_bad_files() {
    // reqwest is built without a default crypto provider; install ring once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key_pair.serialize_pem()).unwrap();

    // No guests needed: nothing is created here.
    let sim = start_demo_sim_with(SimOptions::default()).await.unwrap();
    let settings = sim.settings(pvesandbox::Settings::default()).unwrap();
    let fleet = Fleet::start(settings).await.unwrap();
    let opts = |tls: TlsFiles| ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![Secret::new(KEY)],
        tls: Some(tls),
        ..Default::default()
    };

    // Bad files first: each names its field, and a key's contents never show.
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let other_key = dir.path().join("other.pem");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    for (tls, field) in [
        (
            TlsFiles {
                cert: dir.path().join("missing.pem"),
                key: files.key.clone(),
            },
            "tls_cert",
        ),
        (
            TlsFiles {
                cert: files.key.clone(),
                key: files.key.clone(),
            },
            "tls_cert",
        ),
        (
            TlsFiles {
                cert: files.cert.clone(),
                key: junk.clone(),
            },
            "tls_key",
        ),
        (
            TlsFiles {
                cert: files.cert.clone(),
                key: other_key.clone(),
            },
            "tls_key",
        ),
    ] {
        let err = Server::start(fleet.clone(), opts(tls.clone()))
            .await
            .expect_err(&format!("{tls:?} must be refused"));
        let text = format!("{err} {err:?}");
        assert!(text.contains(field), "{tls:?}: {text}");
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("PRIVATE KEY-----\n"),
            "{text}"
        );
    }

    let server = Server::start(fleet.clone(), opts(files.clone()))
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let port = server.local_addr().port();
    let res = https
        .get(format!("https://localhost:{port}/v1/sandboxes"))
        .header("OPEN-SANDBOX-API-KEY", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["items"].as_array().unwrap().is_empty(), "{body}");

    // Plain HTTP on the TLS port gets no answer from the API.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{port}/v1/sandboxes"))
        .header("OPEN-SANDBOX-API-KEY", KEY)
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status().as_u16() != 200),
        "{r:?}"
    );
    server.stop().await.unwrap();
}
