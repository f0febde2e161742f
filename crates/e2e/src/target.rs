//! What to run against (`--target`) and the rest of the command line, parsed by hand so the
//! suite needs no argument-parsing dependency and its errors name the flag and the fix.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where the suite's Proxmox comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The embedded simulator with process guests (commands really run); CI.
    Sim,
    /// fakepve, an independent fake PVE (Python, run as a separate process); CI.
    FakePve,
    /// Any Proxmox named by `PROXMOX_*`, `PROXMOX_CONFIG_FILE` or `pvesandbox.toml`.
    Env,
    /// The nested Proxmox `cargo xtask nested-pve` booted (its instances file).
    Nested,
}

impl Target {
    /// Every target, in the order `--help` lists them.
    pub const ALL: [Target; 4] = [Target::Sim, Target::FakePve, Target::Env, Target::Nested];

    /// The name `--target` takes.
    pub fn name(self) -> &'static str {
        match self {
            Target::Sim => "sim",
            Target::FakePve => "fakepve",
            Target::Env => "env",
            Target::Nested => "nested",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = ArgError;
    fn from_str(s: &str) -> Result<Target, ArgError> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| ArgError {
                flag: "--target".into(),
                value: s.into(),
                fix: "use one of sim, fakepve, env, nested".into(),
            })
    }
}

/// A command-line mistake: which flag, what was given, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The flag.
    pub flag: String,
    /// The value given (empty when missing).
    pub value: String,
    /// The fix.
    pub fix: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.flag, self.value, self.fix)
    }
}

impl std::error::Error for ArgError {}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--target` (default `sim`).
    pub target: Target,
    /// `--junit PATH` (default `target/e2e-<target>.xml`).
    pub junit: PathBuf,
    /// `--instances PATH`: the nested target's instances file.
    pub instances: Option<PathBuf>,
    /// `--pvesandbox PATH`: the CLI binary (default: next to this executable).
    pub pvesandbox: Option<PathBuf>,
    /// `--only SUBSTRING` (repeatable): run only checks whose name contains one of them.
    pub only: Vec<String>,
    /// `--vm-source JSON`: the `vm_source_config` every VM uses (env and nested targets).
    pub vm_source: Option<String>,
    /// `--help`.
    pub help: bool,
}

/// `--help` text.
pub const USAGE: &str = "\
usage: pvesandbox-e2e [--target sim|fakepve|env|nested] [--junit PATH] [--only NAME]...
                      [--instances PATH] [--vm-source JSON] [--pvesandbox PATH]

  --target      sim (default): embedded simulator, process guests;
                fakepve: .venv-fakepve (cargo xtask venv), the subset it keeps state for;
                env: PROXMOX_* / PROXMOX_CONFIG_FILE / pvesandbox.toml;
                nested: the instances file `cargo xtask nested-pve` wrote
  --junit       JUnit XML report (default target/e2e-<target>.xml)
  --only        run only checks whose name contains this (repeatable)
  --instances   nested target: instances file (default ~/.cache/pvesandbox/nested-pve/instances.json)
  --vm-source   vm_source_config for every VM, e.g. '{\"built_in\": \"debian13\"}' (env, nested)
  --pvesandbox  the pvesandbox CLI binary (default: next to this executable)

Exit status: 0 every check passed or was skipped, 1 a check failed, 2 bad arguments or setup.";

impl Args {
    /// Parses the arguments after the program name.
    pub fn parse<I, S>(args: I) -> Result<Args, ArgError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut target = None;
        let mut junit = None;
        let mut out = Args {
            target: Target::Sim,
            junit: PathBuf::new(),
            instances: None,
            pvesandbox: None,
            only: Vec::new(),
            vm_source: None,
            help: false,
        };
        let mut it = args.into_iter().map(Into::into);
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| ArgError {
                        flag: name.into(),
                        value: String::new(),
                        fix: "give a value".into(),
                    })
            };
            match flag.as_str() {
                "--target" => target = Some(value("--target")?.parse()?),
                "--junit" => junit = Some(PathBuf::from(value("--junit")?)),
                "--instances" => out.instances = Some(PathBuf::from(value("--instances")?)),
                "--pvesandbox" => out.pvesandbox = Some(PathBuf::from(value("--pvesandbox")?)),
                "--only" => out.only.push(value("--only")?),
                "--vm-source" => {
                    let v = value("--vm-source")?;
                    if serde_json::from_str::<serde_json::Value>(&v)
                        .map(|j| !j.is_object())
                        .unwrap_or(true)
                    {
                        return Err(ArgError {
                            flag: "--vm-source".into(),
                            value: v,
                            fix: "write a JSON object, e.g. {\"built_in\": \"debian13\"}".into(),
                        });
                    }
                    out.vm_source = Some(v);
                }
                "-h" | "--help" => out.help = true,
                other => {
                    return Err(ArgError {
                        flag: other.into(),
                        value: inline.unwrap_or_default(),
                        fix: "unknown flag; see --help".into(),
                    });
                }
            }
        }
        out.target = target.unwrap_or(Target::Sim);
        if let Some(path) = &out.instances
            && out.target != Target::Nested
        {
            return Err(ArgError {
                flag: "--instances".into(),
                value: path.display().to_string(),
                fix:
                    "only --target nested reads an instances file; for env use PROXMOX_CONFIG_FILE"
                        .into(),
            });
        }
        out.junit =
            junit.unwrap_or_else(|| PathBuf::from(format!("target/e2e-{}.xml", out.target)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_parses_from_its_name_and_nothing_else_does() {
        for t in Target::ALL {
            assert_eq!(t.name().parse::<Target>(), Ok(t));
            assert_eq!(t.to_string(), t.name());
        }
        for bad in ["", "Sim", "fake", "real", "sim ", "nested-pve"] {
            let e = bad.parse::<Target>().unwrap_err();
            assert_eq!(e.flag, "--target");
            assert!(e.fix.contains("sim, fakepve, env, nested"), "{e}");
        }
    }

    #[test]
    fn defaults_follow_the_target() {
        let a = Args::parse(Vec::<String>::new()).unwrap();
        assert_eq!(a.target, Target::Sim);
        assert_eq!(a.junit, PathBuf::from("target/e2e-sim.xml"));
        let a = Args::parse(["--target", "fakepve"]).unwrap();
        assert_eq!(a.junit, PathBuf::from("target/e2e-fakepve.xml"));
        let a = Args::parse([
            "--target=nested",
            "--instances=/x/i.json",
            "--junit",
            "o.xml",
        ])
        .unwrap();
        assert_eq!(a.target, Target::Nested);
        assert_eq!(a.instances, Some(PathBuf::from("/x/i.json")));
        assert_eq!(a.junit, PathBuf::from("o.xml"));
    }

    #[test]
    fn mistakes_name_the_flag() {
        let flag = |v: &[&str]| Args::parse(v.iter().copied()).unwrap_err().flag;
        assert_eq!(flag(&["--target"]), "--target");
        assert_eq!(flag(&["--target", "vmware"]), "--target");
        assert_eq!(flag(&["--junit="]), "--junit");
        assert_eq!(flag(&["--frobnicate"]), "--frobnicate");
        assert_eq!(flag(&["--instances", "/i.json"]), "--instances");
        assert_eq!(flag(&["--vm-source", "debian13"]), "--vm-source");
        let a = Args::parse([
            "--only",
            "cleanup",
            "--only",
            "exec",
            "--vm-source",
            "{\"built_in\": \"debian13\"}",
        ])
        .unwrap();
        assert_eq!(a.only, ["cleanup", "exec"]);
        assert!(Args::parse(["-h"]).unwrap().help);
    }
}
