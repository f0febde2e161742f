//! The guest of a simulator without a guest backend: an agent that answers the informational
//! commands with fixed data and knows no exec or file commands, like a qemu-ga started with
//! `--block-rpcs` for them (PVE then reports `Agent error: The command guest-exec has not been
//! found`).

use serde_json::{Value, json};

use super::{BootSpec, BoxFuture, Guest, QgaError};

/// Canned answers for one VM.
pub(crate) struct CannedGuest {
    spec: BootSpec,
}

impl CannedGuest {
    pub(crate) fn new(spec: BootSpec) -> Self {
        CannedGuest { spec }
    }

    fn answer(&self, command: &str, arguments: &Value) -> Result<Value, QgaError> {
        Ok(match command {
            "guest-ping" | "guest-set-time" => json!({}),
            "guest-sync" | "guest-sync-delimited" => arguments["id"].clone(),
            "guest-info" => {
                let cmds: Vec<Value> = [
                    "guest-ping",
                    "guest-sync",
                    "guest-sync-delimited",
                    "guest-info",
                    "guest-get-osinfo",
                    "guest-get-host-name",
                    "guest-network-get-interfaces",
                    "guest-set-time",
                    "guest-get-time",
                ]
                .iter()
                .map(|n| json!({"name": n, "enabled": true, "success-response": true}))
                .collect();
                json!({"version": "10.0.2", "supported_commands": cmds})
            }
            "guest-get-osinfo" => json!({
                "id": "debian", "name": "Debian GNU/Linux",
                "pretty-name": "Debian GNU/Linux 13 (trixie)", "version-id": "13",
                "version": "13 (trixie)", "kernel-release": "6.12.0-1-amd64",
                "kernel-version": "#1 SMP", "machine": "x86_64",
            }),
            "guest-get-host-name" => json!({"host-name": self.spec.name}),
            "guest-get-time" => json!(super::host_time_ns()),
            "guest-network-get-interfaces" => {
                let mac = self
                    .spec
                    .config
                    .get("net0")
                    .and_then(|n| n.split(',').next()?.split_once('=').map(|(_, m)| m))
                    .unwrap_or_default()
                    .to_lowercase();
                let octet = (self.spec.vmid % 200) + 20;
                json!([
                    {"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [
                        {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
                    {"name": "eth0", "hardware-address": mac, "ip-addresses": [
                        {"ip-address": format!("10.0.0.{octet}"), "ip-address-type": "ipv4", "prefix": 24}]},
                ])
            }
            other => return Err(command_not_found(other)),
        })
    }
}

/// qemu-ga's answer to a command it does not know (QMP dispatcher wording).
pub(crate) fn command_not_found(command: &str) -> QgaError {
    QgaError::Command {
        class: "CommandNotFound".into(),
        desc: format!("The command {command} has not been found"),
    }
}

impl Guest for CannedGuest {
    fn execute<'a>(
        &'a self,
        command: &'a str,
        arguments: Value,
    ) -> BoxFuture<'a, Result<Value, QgaError>> {
        let r = self.answer(command, &arguments);
        Box::pin(async move { r })
    }

    fn power_off(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
