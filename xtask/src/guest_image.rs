//! `cargo xtask guest-image`: the Debian guest that pve-sim's real-agent backend boots.
//!
//! The recipe (`guest-image.sh`) runs as root: debootstrap, a small initramfs, `mkfs.ext4 -d`
//! (no loop devices or mounts of the image), `qemu-img convert`. The output lands in a cache
//! directory named after the recipe's hash, outside the clone, so CI machines and worktrees share
//! it and a recipe change is the only thing that rebuilds it.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use xshell::{Shell, cmd};

/// The build script; hashed, so editing it invalidates every cached image.
const RECIPE: &str = include_str!("guest-image.sh");
/// The files a finished image directory holds (what pve-sim's `GuestImage` looks for).
const OUTPUTS: [&str; 3] = ["vmlinuz", "initrd.img", "disk.qcow2"];
/// Written last: its presence with the right hash is what "cached" means.
const STAMP: &str = "recipe.sha256";
const BACKPORTS: &str = "deb http://deb.debian.org/debian bookworm-backports main";

/// Builds the image unless the cache already holds one for this recipe, then prints its paths.
pub fn build(sh: &Shell) -> Result<()> {
    host_packages(sh)?;
    let hash = format!("{:x}", Sha256::digest(RECIPE.as_bytes()));
    let (dir, current) = match std::env::var_os("PVESANDBOX_GUEST_IMAGE") {
        Some(d) => (PathBuf::from(d), None),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            let base = Path::new(&home).join(".cache/pvesandbox/guest-image");
            (base.join(&hash[..16]), Some(base.join("current")))
        }
    };
    let cached = fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s.trim() == hash)
        && OUTPUTS.iter().all(|f| dir.join(f).is_file());
    if cached {
        eprintln!("xtask: guest image is cached (recipe {})", &hash[..16]);
    } else {
        let started = std::time::Instant::now();
        make(sh, &dir, &hash)?;
        eprintln!(
            "xtask: built the guest image in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(current) = current {
        // Builds of older recipes are dead weight (≈ 250 MiB each).
        for e in fs::read_dir(dir.parent().context("cache dir")?)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_build = name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if is_build && name != hash[..16] {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        // pve-sim finds the image through this link (it cannot know the recipe hash).
        let _ = fs::remove_file(&current);
        std::os::unix::fs::symlink(&hash[..16], &current)
            .with_context(|| format!("linking {}", current.display()))?;
    }
    println!("dir={}", dir.display());
    for f in OUTPUTS {
        println!("{}={}", f, dir.join(f).display());
    }
    Ok(())
}

fn make(sh: &Shell, dir: &Path, hash: &str) -> Result<()> {
    if cmd!(sh, "id -u").read()? != "0" {
        bail!("building the guest image needs root (debootstrap, chroot)");
    }
    let parent = dir.parent().context("image dir has no parent")?;
    fs::create_dir_all(parent)?;
    let work = parent.join(format!(
        ".build-{}-{}",
        dir.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&work);
    let (root, out) = (work.join("root"), work.join("out"));
    fs::create_dir_all(&root)?;
    fs::create_dir_all(&out)?;
    eprintln!("xtask: building the guest image in {}", work.display());
    let result = cmd!(sh, "bash -c {RECIPE}")
        .env("ROOT", &root)
        .env("OUT", &out)
        // debootstrap must reach the Debian mirror: lift the blackhole proxy CI sets.
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .run();
    if result.is_ok() {
        fs::write(out.join(STAMP), format!("{hash}\n"))?;
        let _ = fs::remove_dir_all(dir);
        fs::rename(&out, dir).with_context(|| format!("moving the image to {}", dir.display()))?;
    }
    // The tree is root-owned and large; never leave it behind, even on failure.
    let _ = cmd!(sh, "umount {root}/proc").quiet().ignore_stderr().run();
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    result.context("the guest image recipe failed")?;
    Ok(())
}

/// QEMU 10 and qemu-utils come from bookworm-backports (the machine image already has
/// qemu-utils from there, so bookworm's own qemu-system-x86 cannot be installed next to it).
pub(crate) fn host_packages(sh: &Shell) -> Result<()> {
    let needed = ["qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4"];
    let missing: Vec<_> = needed.into_iter().filter(|c| !on_path(c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing host packages (missing: {missing:?})");
    let has_backports = cmd!(
        sh,
        "grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d"
    )
    .quiet()
    .run()
    .is_ok();
    if !has_backports {
        fs::write(
            "/etc/apt/sources.list.d/bookworm-backports.list",
            format!("{BACKPORTS}\n"),
        )
        .context("adding the bookworm-backports apt source (needs root)")?;
    }
    let _env =
        ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"].map(|v| sh.push_env(v, ""));
    let _frontend = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update -qq").run()?;
    cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils debootstrap e2fsprogs"
    )
    .run()?;
    Ok(())
}

pub(crate) fn on_path(program: &str) -> bool {
    // Debian keeps mkfs.ext4 in /usr/sbin, which a non-login shell's PATH may lack.
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(program).is_file())
}
