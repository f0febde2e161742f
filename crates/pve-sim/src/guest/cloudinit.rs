//! The `cloud-init` program of a VM booted from a cloud image (see [`crate::image`]): a guest
//! wrapper that answers `guest-exec` of `cloud-init status [--wait]` with the output of a
//! finished run, `status: done`, and of `cloud-init clean ...` with success, and hands every
//! other command to the guest it wraps.
//!
//! By the time the wrapped agent answers, the model's cloud-init has finished (the agent is
//! what it installed), so `--wait` returns at once, as it does on a real guest whose
//! cloud-init is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{BoxFuture, Guest, QgaError};

/// Pids of the modelled `cloud-init` runs start here, above any the wrapped guest hands out.
const FIRST_PID: i64 = 4_000_000;

pub(crate) struct CloudInitGuest {
    inner: Arc<dyn Guest>,
    /// Finished runs by pid: (exit code, stdout).
    runs: Mutex<HashMap<i64, (i64, String)>>,
}

impl CloudInitGuest {
    pub(crate) fn wrap(inner: Arc<dyn Guest>) -> Arc<dyn Guest> {
        Arc::new(CloudInitGuest {
            inner,
            runs: Mutex::new(HashMap::new()),
        })
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (i64, String)>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Guest for CloudInitGuest {
    fn execute<'a>(
        &'a self,
        command: &'a str,
        arguments: Value,
    ) -> BoxFuture<'a, Result<Value, QgaError>> {
        Box::pin(async move {
            match command {
                "guest-exec" if arguments["path"] == "cloud-init" => {
                    let args: Vec<&str> = arguments["arg"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let run = match args.first() {
                        Some(&"status") => (0, "status: done\n".to_owned()),
                        // Forgetting the instance (before sealing a template) always works.
                        Some(&"clean") => (0, String::new()),
                        _ => (
                            2,
                            "the simulator's cloud-init knows only `status`\n".to_owned(),
                        ),
                    };
                    let mut runs = self.runs();
                    let pid = FIRST_PID + runs.len() as i64;
                    runs.insert(pid, run);
                    Ok(json!({ "pid": pid }))
                }
                "guest-exec-status" => {
                    let pid = arguments["pid"].as_i64().unwrap_or_default();
                    let run = self.runs().get(&pid).cloned();
                    match run {
                        Some((code, out)) => Ok(json!({
                            "exited": true, "exitcode": code, "out-data": B64.encode(out),
                        })),
                        None => self.inner.execute(command, arguments).await,
                    }
                }
                _ => self.inner.execute(command, arguments).await,
            }
        })
    }

    fn power_off(&self) -> BoxFuture<'_, ()> {
        self.inner.power_off()
    }

    fn pause(&self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.pause()
    }

    fn resume(&self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.resume()
    }
}
