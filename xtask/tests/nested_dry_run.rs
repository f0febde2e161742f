//! `cargo xtask nested-pve --dry-run` end to end: the real binary, a fake ISO path, no KVM
//! needed. First the full plan (install, then overlay); then, with a base image faked into
//! the directory under the recipe the first plan printed, the overlay-only plan.

use std::path::Path;
use std::process::Command;

fn dry_run(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "nested-pve",
            "--dry-run",
            "--iso",
            "/nonexistent/proxmox-ve_9.2-1.iso",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("xtask runs");
    assert!(
        out.status.success(),
        "xtask nested-pve --dry-run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text between a file's begin and end markers in the dry run.
fn file_in(plan: &str, path: &Path) -> String {
    let begin = format!("----- begin {} -----\n", path.display());
    let end = format!("----- end {} -----", path.display());
    let start = plan.find(&begin).expect("file is in the plan") + begin.len();
    plan[start..start + plan[start..].find(&end).unwrap()].to_owned()
}

#[test]
fn dry_run_with_a_fake_iso_prints_the_whole_build_then_only_the_overlay() {
    let dir = std::env::temp_dir().join(format!("xtask-nested-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display();

    let plan = dry_run(
        &dir,
        &["--cpus", "4", "--memory-mib", "8192", "--api-port", "18555"],
    );
    for key in [
        "sha256sum --check --strict".to_string(),
        "4e88fe416df9b527624a175f24c9aa07c714d3332afb1ee3dbf3879573ef2c6c  /nonexistent/proxmox-ve_9.2-1.iso".into(),
        format!("write {d}/build/answer.toml (mode 600)"),
        "[first-boot]\nsource = \"from-iso\"".into(),
        "root-password = \"<redacted>\"".into(),
        format!("write {d}/build/first-boot.sh"),
        "systemctl disable --now dnsmasq".into(),
        "VM.GuestAgent.Unrestricted".into(),
        "prepare-iso".into(),
        format!("qemu-img create -f qcow2 {d}/build/base.qcow2 64G"),
        "-machine q35,accel=kvm -cpu host -smp 4 -m 8192".into(),
        "media=cdrom".into(),
        "check the first boot's results".into(),
        format!("mv {d}/build/base.qcow2 {d}/base.qcow2"),
        format!("qemu-img create -f qcow2 -b {d}/base.qcow2 -F qcow2 {d}/run/overlay.qcow2"),
        "hostfwd=tcp:127.0.0.1:18555-10.0.2.15:8006".into(),
        format!("write {d}/instances.json (mode 600)"),
        "\"token_id\": \"pvesandbox@pve!e2e\"".into(),
    ] {
        assert!(plan.contains(&key), "the plan lacks {key:?}:\n{plan}");
    }
    assert!(!dir.exists(), "a dry run writes nothing");

    // Fake a finished base built from this very recipe: the next plan only boots an overlay.
    let recipe = file_in(&plan, &dir.join("base.recipe"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("base.qcow2"), "").unwrap();
    std::fs::write(dir.join("base.results"), "").unwrap();
    std::fs::write(dir.join("base.recipe"), &recipe).unwrap();
    let run = dry_run(&dir, &["--cpus", "4", "--memory-mib", "8192"]);
    assert!(
        run.contains(&format!("qemu-img create -f qcow2 -b {d}/base.qcow2")),
        "{run}"
    );
    assert!(
        run.contains("-daemonize") && run.contains("hostfwd=tcp:127.0.0.1:18006-"),
        "{run}"
    );
    for absent in ["media=cdrom", "prepare-iso", "answer.toml", "sha256sum"] {
        assert!(
            !run.contains(absent),
            "an overlay run must not {absent:?}:\n{run}"
        );
    }

    // A changed recipe (another disk size) is refused with the fix in the message.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["nested-pve", "--dry-run", "--disk-gib", "32", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--rebuild"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
