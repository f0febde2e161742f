//! A deliberately tiny raw HTTP client for the simulator's own tests: they must not depend on
//! pve-client, so a bug shared by both cannot hide.

#![allow(dead_code)]

use std::time::Duration;

use pve_sim::{PveSim, SimConfig, VmSeed};
use serde_json::Value;

/// A logged-in raw client.
pub struct Raw {
    pub http: reqwest::Client,
    pub base: String,
    pub ticket: String,
    pub csrf: String,
}

/// What one request answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn message(&self) -> String {
        self.body["message"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
}

pub fn http() -> reqwest::Client {
    // reqwest is built without a default crypto provider; install ring once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

pub async fn sim() -> PveSim {
    let sim = PveSim::start(SimConfig::new().plain_http()).await.unwrap();
    sim.add_vm(VmSeed::template(9000, "tpl"));
    sim
}

impl Raw {
    pub async fn login(sim: &PveSim) -> Raw {
        Self::login_as(sim, "root@pam", "secret").await
    }

    pub async fn login_as(sim: &PveSim, user: &str, password: &str) -> Raw {
        let http = http();
        let base = format!("{}/api2/json", sim.url());
        let r: Value = http
            .post(format!("{base}/access/ticket"))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Raw {
            http,
            base,
            ticket: r["data"]["ticket"].as_str().unwrap().into(),
            csrf: r["data"]["CSRFPreventionToken"].as_str().unwrap().into(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, params: &[(&str, &str)]) -> Answer {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, &url)
            .header("Cookie", format!("PVEAuthCookie={}", self.ticket));
        if method != "GET" {
            req = req.header("CSRFPreventionToken", &self.csrf);
        }
        req = if method == "GET" || method == "DELETE" {
            req.query(params)
        } else {
            req.form(params)
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Answer { status, body }
    }

    /// Polls a task until it stops (realistic profiles), backing off (not a synchronisation sleep: the task's end is
    /// what is waited for); returns its exit status.
    pub async fn task_end(&self, upid: &str) -> String {
        let path = format!("/nodes/pve1/tasks/{}/status", urlencode(upid));
        let mut pause = Duration::from_millis(2);
        loop {
            let a = self.call("GET", &path, &[]).await;
            if a.data()["status"] == "stopped" {
                return a.data()["exitstatus"].as_str().unwrap().to_owned();
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub async fn task_log(&self, upid: &str) -> Vec<String> {
        let a = self
            .call(
                "GET",
                &format!("/nodes/pve1/tasks/{}/log", urlencode(upid)),
                &[],
            )
            .await;
        a.data()
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["t"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls a task to its end (the simulator's instant profile ends tasks before answering).
    pub async fn task_exit(&self, upid: &str) -> String {
        let node = upid.split(':').nth(1).unwrap();
        let a = self
            .call(
                "GET",
                &format!("/nodes/{node}/tasks/{}/status", urlencode(upid)),
                &[],
            )
            .await;
        assert_eq!(a.data()["status"], "stopped", "instant profile: {a:?}");
        a.data()["exitstatus"].as_str().unwrap().to_owned()
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
