//! Guest-agent routes. The simulated agent answers once the VM has booted; commands that run
//! inside the guest (exec, files) belong to the guest backends and are not served yet.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::Ctx;
use crate::error::ApiError;
use crate::propstring::PropString;
use crate::state::{Shared, State};

fn agent_enabled(cfg: &std::collections::BTreeMap<String, String>) -> bool {
    cfg.get("agent").is_some_and(|a| {
        let p = PropString::parse(a);
        p.file()
            .or_else(|| p.get("enabled"))
            .and_then(crate::spec::parse_bool)
            .unwrap_or(false)
    })
}

pub(super) fn handle(_shared: &Arc<Shared>, st: &mut State, ctx: &Ctx) -> Result<Value, ApiError> {
    let vmid = ctx.vmid();
    let vm = st.vm(ctx.node(), vmid)?;
    if !vm.running {
        return Err(ApiError::internal(format!("VM {vmid} is not running")));
    }
    if !agent_enabled(&vm.config) {
        return Err(ApiError::internal("No QEMU guest agent configured"));
    }
    if vm.agent_ready_at.is_none_or(|t| Instant::now() < t) {
        return Err(ApiError::internal("QEMU guest agent is not running"));
    }
    let name = vm.config.get("name").cloned().unwrap_or_default();
    let cmd = ctx.route.path.rsplit('/').next().unwrap_or_default();
    match cmd {
        "ping" => Ok(json!({"result": {}})),
        "info" => Ok(json!({"result": {"version": "9.2.0", "supported_commands": []}})),
        "get-osinfo" => Ok(
            json!({"result": {"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 13 (trixie)",
            "version-id": "13", "version": "13 (trixie)", "kernel-release": "6.12.0-1-amd64", "kernel-version": "#1 SMP", "machine": "x86_64"}}),
        ),
        "network-get-interfaces" => {
            let mac = vm
                .config
                .get("net0")
                .and_then(|n| {
                    n.split(',')
                        .next()
                        .and_then(|e| e.split_once('='))
                        .map(|(_, m)| m.to_lowercase())
                })
                .unwrap_or_default();
            let octet = (vmid % 200) + 20;
            Ok(json!({"result": [
                {"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
                {"name": "eth0", "hardware-address": mac, "ip-addresses": [{"ip-address": format!("10.0.0.{octet}"), "ip-address-type": "ipv4", "prefix": 24}]}
            ], "hostname": name}))
        }
        other => Err(ApiError::new(
            501,
            format!("guest agent command '{other}' is not simulated yet"),
        )),
    }
}
