//! `pvesandbox doctor`: pre-flight every configured instance and print what to fix.

use pvesandbox::Error;
use pvesandbox::preflight::{Status, check_instance_with};

use crate::commands::Ctx;

/// Runs the checks on every instance (in parallel); exit 1 when any fails.
pub async fn run(ctx: &Ctx) -> Result<i32, Error> {
    let settings = ctx.proxmox_settings()?;
    let file_storage = settings
        .images
        .import_storage
        .clone()
        .unwrap_or_else(|| pvesandbox_templates::DEFAULT_FILE_STORAGE.to_owned());
    let all: Vec<_> = futures_util::future::join_all(
        settings
            .instances
            .iter()
            .map(|i| check_instance_with(i, &file_storage)),
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    if ctx.json {
        println!("{}", serde_json::to_string(&all).unwrap_or_default());
    } else {
        for c in &all {
            let mark = match c.status {
                Status::Pass => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("[{mark}] {:<10} {:<11} {}", c.instance, c.name, c.detail);
        }
    }
    Ok(if all.iter().any(|c| c.status == Status::Fail) {
        1
    } else {
        0
    })
}
