//! Sizing the nested VM from the host: 75 % of the CPUs (at least 2) and 75 % of the memory
//! (at least 4096 MiB), as the peer's `capacity.sh` does; both overridable on the command line.

use super::NestedError;
use super::qemu::Machine;

/// Fewest vCPUs: PVE plus one sandbox VM.
pub const MIN_CPUS: u32 = 2;
/// Least memory: PVE itself needs ≈ 2 GiB, plus room for sandbox VMs.
pub const MIN_MEMORY_MIB: u64 = 4096;

/// CPUs in `/proc/cpuinfo` text (one `processor` line each).
pub fn host_cpus(cpuinfo: &str) -> u32 {
    cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count() as u32
}

/// `MemTotal` in MiB from `/proc/meminfo` text.
pub fn host_memory_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// The machine for this host, with the user's overrides applied.
pub fn size(
    cpuinfo: &str,
    meminfo: &str,
    cpus: Option<u32>,
    memory_mib: Option<u64>,
) -> Result<Machine, NestedError> {
    let cpus = match cpus {
        Some(0) => {
            return Err(NestedError::Arg {
                flag: "cpus",
                message: "must be at least 1".into(),
            });
        }
        Some(n) => n,
        None => (host_cpus(cpuinfo) * 3 / 4).max(MIN_CPUS),
    };
    let memory_mib = match memory_mib {
        Some(m) if m < 2048 => {
            return Err(NestedError::Arg {
                flag: "memory-mib",
                message: format!("{m} MiB is too little for Proxmox VE; give at least 2048"),
            });
        }
        Some(m) => m,
        None => {
            let total = host_memory_mib(meminfo).ok_or_else(|| NestedError::Arg {
                flag: "memory-mib",
                message: "MemTotal is missing from /proc/meminfo; pass --memory-mib".into(),
            })?;
            (total * 3 / 4).max(MIN_MEMORY_MIB)
        }
    };
    Ok(Machine { cpus, memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpuinfo(n: usize) -> String {
        (0..n)
            .map(|i| format!("processor\t: {i}\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vmx\n\n"))
            .collect()
    }

    fn meminfo(kib: u64) -> String {
        format!("MemTotal:       {kib} kB\nMemFree:         1000 kB\n")
    }

    #[test]
    fn three_quarters_of_the_host() {
        let m = size(&cpuinfo(8), &meminfo(32 * 1024 * 1024), None, None).unwrap();
        assert_eq!(
            m,
            Machine {
                cpus: 6,
                memory_mib: 24576
            }
        );
    }

    #[test]
    fn small_hosts_get_the_floor() {
        let m = size(&cpuinfo(2), &meminfo(4 * 1024 * 1024), None, None).unwrap();
        assert_eq!(
            m,
            Machine {
                cpus: 2,
                memory_mib: 4096
            }
        );
        let m = size(&cpuinfo(1), &meminfo(24684084), None, None).unwrap();
        assert_eq!(
            m,
            Machine {
                cpus: 2,
                memory_mib: 18078
            }
        );
    }

    #[test]
    fn overrides_win_and_are_checked() {
        let m = size(&cpuinfo(64), &meminfo(1 << 30), Some(3), Some(6000)).unwrap();
        assert_eq!(
            m,
            Machine {
                cpus: 3,
                memory_mib: 6000
            }
        );
        let e = size("", "", Some(0), None).unwrap_err().to_string();
        assert!(e.contains("--cpus"), "{e}");
        let e = size("", "", Some(2), Some(512)).unwrap_err().to_string();
        assert!(e.contains("--memory-mib") && e.contains("2048"), "{e}");
        let e = size("", "garbage", Some(2), None).unwrap_err().to_string();
        assert!(e.contains("MemTotal"), "{e}");
    }
}
