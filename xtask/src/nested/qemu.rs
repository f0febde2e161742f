//! QEMU command lines for the three boots of a nested PVE: install, first boot, run.
//!
//! All three share one machine: q35 with KVM and `-cpu host` (the nested PVE needs VT-x/AMD-V
//! itself), SeaBIOS (the installer supports legacy boot, so no OVMF files are needed and an
//! overlay needs no copy of UEFI variables), one virtio disk (`vda`, which the answer file
//! names), one virtio NIC with a fixed MAC on QEMU's user-mode network (the answer file's
//! static address matches the slirp defaults written out here), and the console on a serial
//! log file. Only the run boot forwards a port, and only on 127.0.0.1.

use std::path::Path;

/// The slirp network, written out explicitly because the answer file depends on it.
pub const SLIRP_NET: &str = "10.0.2.0/24";
/// slirp's gateway (and the host, seen from the guest).
pub const SLIRP_GATEWAY: &str = "10.0.2.2";
/// slirp's DNS forwarder.
pub const SLIRP_DNS: &str = "10.0.2.3";
/// The guest's static address, in CIDR form for the answer file.
pub const GUEST_CIDR: &str = "10.0.2.15/24";
/// The guest's address alone (the forward's target).
pub const GUEST_ADDR: &str = "10.0.2.15";
/// The NIC's MAC; the answer file's NIC filter matches it.
pub const GUEST_MAC: &str = "52:54:00:5a:0b:01";
/// The PVE API port inside the guest.
pub const PVE_API_PORT: u16 = 8006;

/// CPUs and memory of the nested VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// QEMU's `-drive`/`-serial` option syntax uses `,` as separator; a literal comma is `,,`.
pub fn escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn common(name: &str, m: Machine, disk: &Path, serial_log: &Path) -> Vec<String> {
    [
        "-name",
        name,
        "-machine",
        "q35,accel=kvm",
        "-cpu",
        "host",
        "-smp",
        &m.cpus.to_string(),
        "-m",
        &m.memory_mib.to_string(),
        "-nodefaults",
        "-no-user-config",
        // The installer wants a framebuffer; nobody looks at it.
        "-vga",
        "std",
        "-display",
        "none",
        "-rtc",
        "base=utc",
        "-serial",
        &format!("file:{}", escape(serial_log)),
        "-drive",
        &format!("file={},if=virtio,format=qcow2,discard=unmap", escape(disk)),
    ]
    .map(String::from)
    .to_vec()
}

fn nic(forward_port: Option<u16>) -> Vec<String> {
    let mut netdev = format!("user,id=net0,net={SLIRP_NET},host={SLIRP_GATEWAY},dns={SLIRP_DNS}");
    if let Some(p) = forward_port {
        netdev.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{p}-{GUEST_ADDR}:{PVE_API_PORT}"
        ));
    }
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={GUEST_MAC}"),
    ]
}

/// Boots the prepared ISO onto the empty base disk; the installer powers the VM off
/// (`reboot-mode = "power-off"`), and `-no-reboot` makes a crash-reboot end QEMU too.
pub fn install_args(m: Machine, disk: &Path, iso: &Path, serial_log: &Path) -> Vec<String> {
    let mut a = common("pvesandbox-nested-install", m, disk, serial_log);
    a.extend(
        [
            "-drive",
            &format!("file={},media=cdrom,readonly=on", escape(iso)),
            "-boot",
            "order=d",
            "-no-reboot",
        ]
        .map(String::from),
    );
    a.extend(nic(None));
    a
}

/// Boots the installed disk once, with the small raw results disk as `vdb`; the first-boot
/// script writes the token there and powers off.
pub fn first_boot_args(m: Machine, disk: &Path, results: &Path, serial_log: &Path) -> Vec<String> {
    let mut a = common("pvesandbox-nested-first-boot", m, disk, serial_log);
    a.extend(
        [
            "-drive",
            &format!("file={},if=virtio,format=raw", escape(results)),
            "-boot",
            "order=c",
            "-no-reboot",
        ]
        .map(String::from),
    );
    a.extend(nic(None));
    a
}

/// Boots an overlay in the background with the API on `127.0.0.1:<port>`.
pub fn run_args(
    m: Machine,
    overlay: &Path,
    port: u16,
    serial_log: &Path,
    pidfile: &Path,
) -> Vec<String> {
    let mut a = common(&format!("pvesandbox-nested-{port}"), m, overlay, serial_log);
    a.extend(
        [
            "-boot",
            "order=c",
            "-daemonize",
            "-pidfile",
            &pidfile.display().to_string(),
        ]
        .map(String::from),
    );
    a.extend(nic(Some(port)));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::plan::shell_quote;

    const M: Machine = Machine {
        cpus: 6,
        memory_mib: 12288,
    };

    fn line(args: &[String]) -> String {
        args.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn install_command_line() {
        let a = install_args(
            M,
            Path::new("/n/build/base.qcow2"),
            Path::new("/n/build/prepared.iso"),
            Path::new("/n/build/install.log"),
        );
        assert_eq!(
            line(&a),
            "-name pvesandbox-nested-install -machine q35,accel=kvm -cpu host -smp 6 -m 12288 \
             -nodefaults -no-user-config -vga std -display none -rtc base=utc \
             -serial file:/n/build/install.log \
             -drive file=/n/build/base.qcow2,if=virtio,format=qcow2,discard=unmap \
             -drive file=/n/build/prepared.iso,media=cdrom,readonly=on -boot order=d -no-reboot \
             -netdev user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3 \
             -device virtio-net-pci,netdev=net0,mac=52:54:00:5a:0b:01"
        );
    }

    #[test]
    fn first_boot_command_line_adds_the_results_disk_and_boots_the_disk() {
        let a = first_boot_args(
            M,
            Path::new("/n/build/base.qcow2"),
            Path::new("/n/build/results.img"),
            Path::new("/n/build/first-boot.log"),
        );
        let l = line(&a);
        assert!(
            l.contains(
                "-drive file=/n/build/results.img,if=virtio,format=raw -boot order=c -no-reboot"
            ),
            "{l}"
        );
        assert!(!l.contains("cdrom") && !l.contains("hostfwd"), "{l}");
    }

    #[test]
    fn run_command_line_forwards_only_loopback_and_daemonizes() {
        let a = run_args(
            M,
            Path::new("/n/run/overlay.qcow2"),
            18006,
            Path::new("/n/run/serial.log"),
            Path::new("/n/run/qemu.pid"),
        );
        assert_eq!(
            line(&a),
            "-name pvesandbox-nested-18006 -machine q35,accel=kvm -cpu host -smp 6 -m 12288 \
             -nodefaults -no-user-config -vga std -display none -rtc base=utc \
             -serial file:/n/run/serial.log \
             -drive file=/n/run/overlay.qcow2,if=virtio,format=qcow2,discard=unmap \
             -boot order=c -daemonize -pidfile /n/run/qemu.pid \
             -netdev user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,hostfwd=tcp:127.0.0.1:18006-10.0.2.15:8006 \
             -device virtio-net-pci,netdev=net0,mac=52:54:00:5a:0b:01"
        );
    }

    #[test]
    fn commas_in_paths_are_doubled_for_qemu() {
        let a = install_args(
            M,
            Path::new("/a,b/base.qcow2"),
            Path::new("/i.iso"),
            Path::new("/l"),
        );
        assert!(
            a.contains(&"file=/a,,b/base.qcow2,if=virtio,format=qcow2,discard=unmap".to_string())
        );
    }
}
