//! The native half of the Inspect AI `pve` sandbox: pvesandbox's lifecycle as Python
//! awaitables.
//!
//! Inspect needs a Python subclass of its `SandboxEnvironment` (a PyO3 class cannot extend a
//! Python class), so this module stays thin: a [`Task`] per eval config (`task_init`), a
//! [`SampleHandle`] per sample, a [`Sandbox`] per VM, each call a future on
//! pyo3-async-runtimes' tokio runtime, awaited by `pvesandbox_inspect/_sandbox.py`.
//!
//! Two rules shape the signatures:
//! - limits (exec output per stream, file read size) are **arguments of each call**, because
//!   Inspect overrides them per async context;
//! - every failure is a `NativeError` whose *kind* the Python half maps to the exact exception
//!   type Inspect expects (see [`errors`]).

mod embedded;
mod errors;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest_agent::{ExecRequest, GuestAgent};
use pvesandbox::{
    CleanupReport, CleanupTarget, EvalConfig, Fleet, Run, RunId, Sample, SandboxVm, Settings,
    TaskOptions,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::errors::{NativeError, plain};

/// Settings from the usual sources (config file, `PROXMOX_*`, `PVESANDBOX_*`), plus the
/// embedded simulator's instance in pool `pool` when that mode is on.
async fn settings(pool: &str) -> PyResult<Settings> {
    let s = load_settings()?;
    embedded::point_at_sim(s, pool)
        .await
        .map_err(|m| plain("config", m))
}

/// Settings from the process environment and the files it names (the loader reads only
/// `PVESANDBOX_<SECTION>__<FIELD>` variables, so the embedded-mode switches are not settings).
fn load_settings() -> PyResult<Settings> {
    Settings::load(None).map_err(errors::lifecycle)
}

/// Parses a run id as `inspect sandbox cleanup pve <id>` or `pvesandbox` print it.
fn run_id(s: &str) -> PyResult<RunId> {
    s.parse::<RunId>()
        .map_err(|m| plain("config", format!("invalid configuration: run id: {m}")))
}

/// Starts a task: loads settings, validates the eval config, joins the process's fleet (or
/// starts it) and makes sure
/// every template exists. The config is JSON text (a pydantic model's dump), or a path to a
/// JSON/YAML/TOML file, or neither (the defaults: one ubuntu24.04 VM on an auto network).
#[pyfunction]
#[pyo3(signature = (config_json=None, config_path=None, run=None))]
fn task_init(
    py: Python<'_>,
    config_json: Option<String>,
    config_path: Option<String>,
    run: Option<String>,
) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let eval = match (config_json, config_path) {
            (Some(json), _) => EvalConfig::from_json(&json),
            (None, Some(path)) => EvalConfig::from_file(Path::new(&path)),
            (None, None) => Ok(EvalConfig::default()),
        }
        .map_err(errors::lifecycle)?;
        let run = run.as_deref().map(run_id).transpose()?;
        let settings = settings(&eval.instance_pool_id).await?;
        let users = eval
            .sandbox_names()
            .into_iter()
            .zip(eval.vms_config.iter().map(|v| v.user.clone()))
            .collect();
        let opts = TaskOptions {
            run,
            ..TaskOptions::default()
        };
        // Tasks of one process (an eval set) share one fleet: one capacity count, one set of
        // clone gates per storage.
        let fleet = Fleet::shared(settings).await.map_err(errors::lifecycle)?;
        let sandboxes = fleet.run(eval, opts).await.map_err(errors::lifecycle)?;
        Ok(Task {
            sandboxes,
            users: Arc::new(users),
        })
    })
}

/// How many samples the configured instances hold at once (Inspect's `default_concurrency`,
/// asked before any task starts); `None` when no instance is configured.
#[pyfunction]
fn configured_capacity() -> PyResult<Option<usize>> {
    let mut total = 0usize;
    let settings = load_settings()?;
    for i in &settings.instances {
        total += i.max_samples.unwrap_or(1) as usize;
    }
    if embedded::mode().map_err(|m| plain("config", m))?.is_some() {
        // The embedded simulator replaces the configured instances.
        total = embedded::samples().map_err(|m| plain("config", m))? as usize;
    }
    Ok((total > 0).then_some(total))
}

/// Removes, from Proxmox state alone, everything one run made (`run` given) or everything
/// whose expiry passed. Returns the report as a dict of lists (`vms`, `zones`, `kept`,
/// `failed`); failures are in `failed`, not raised.
#[pyfunction]
#[pyo3(signature = (run=None))]
fn cleanup(py: Python<'_>, run: Option<String>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let target = match run.as_deref() {
            Some(r) => CleanupTarget::Run(run_id(r)?),
            None => CleanupTarget::Expired,
        };
        let settings = settings("default").await?;
        let report = pvesandbox::cleanup(&settings.instances, &target)
            .await
            .map_err(errors::lifecycle)?;
        Ok(report_dict(report))
    })
}

/// The `PROXMOX_*` variables pointing at the running embedded simulator (so a `pvesandbox`
/// CLI in another process reaches the same VMs); empty when none runs.
#[pyfunction]
fn embedded_env(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move { Ok(embedded::env().await) })
}

/// Stops the embedded simulator and powers its guests off (the Python half calls it at exit).
#[pyfunction]
fn shutdown_embedded() {
    embedded::shutdown();
}

fn report_dict(r: CleanupReport) -> BTreeMap<&'static str, Vec<String>> {
    BTreeMap::from([
        ("vms", r.vms),
        ("zones", r.zones),
        ("kept", r.kept),
        ("failed", r.failed),
    ])
}

/// One started eval config: a run with its pool and templates.
#[pyclass(frozen, module = "pvesandbox_inspect._native")]
struct Task {
    sandboxes: Run,
    /// Sandbox name → the `user` its VM config names (commands and files run as that user).
    users: Arc<BTreeMap<String, Option<String>>>,
}

#[pymethods]
impl Task {
    /// The run id (`inspect sandbox cleanup pve <run id>`).
    #[getter]
    fn run_id(&self) -> String {
        self.sandboxes.run_id().to_string()
    }

    /// How many samples the pool holds at once.
    #[getter]
    fn capacity(&self) -> usize {
        self.sandboxes.capacity()
    }

    /// Creates a sample's VMs and network; on failure nothing is left (or the error says what
    /// is).
    fn sample_init<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sandboxes = self.sandboxes.clone();
        let users = self.users.clone();
        let run = self.run_id();
        future_into_py(py, async move {
            let sample = sandboxes.sample_init().await.map_err(errors::lifecycle)?;
            let sample = Arc::new(sample);
            let mut vms = Vec::new();
            for vm in sample.sandboxes() {
                let user = users.get(vm.name()).cloned().flatten();
                // The lifecycle already works in the user's home and does files as the user.
                let agent = vm.agent().clone();
                vms.push(Sandbox {
                    vm: vm.clone(),
                    agent,
                    user,
                    run: run.clone(),
                    seq: sample.seq(),
                });
            }
            Ok(SampleHandle { sample, vms })
        })
    }

    /// Cleans every sample not yet cleaned, then sweeps the run from Proxmox state. Returns
    /// the report (see `cleanup`); what could not be removed is in `failed`.
    fn task_cleanup<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sandboxes = self.sandboxes.clone();
        future_into_py(py, async move {
            match sandboxes.task_cleanup().await {
                Ok(r) => Ok(report_dict(r)),
                Err(pvesandbox::Error::Cleanup { leftover }) => Ok(report_dict(CleanupReport {
                    failed: leftover,
                    ..CleanupReport::default()
                })),
                Err(e) => Err(errors::lifecycle(e)),
            }
        })
    }
}

/// One sample's sandboxes, until `cleanup`.
#[pyclass(frozen, module = "pvesandbox_inspect._native")]
struct SampleHandle {
    sample: Arc<Sample>,
    vms: Vec<Sandbox>,
}

#[pymethods]
impl SampleHandle {
    /// Sequence number within the run.
    #[getter]
    fn seq(&self) -> u32 {
        self.sample.seq()
    }

    /// The sandboxes in config order (the first sandbox VM is named `default`).
    fn sandboxes(&self) -> Vec<Sandbox> {
        self.vms.clone()
    }

    /// Removes the sample's VMs and network (idempotent); with `interrupted`, leaves that to
    /// the task's cleanup, as Inspect's providers do.
    fn cleanup<'py>(&self, py: Python<'py>, interrupted: bool) -> PyResult<Bound<'py, PyAny>> {
        let sample = self.sample.clone();
        future_into_py(py, async move {
            sample.cleanup(interrupted).await.map_err(errors::lifecycle)
        })
    }
}

/// One VM of a sample: exec and files through its guest agent.
#[pyclass(frozen, module = "pvesandbox_inspect._native")]
#[derive(Clone)]
struct Sandbox {
    vm: SandboxVm,
    /// The VM's agent, working in the sandbox user's home when the config names a user.
    agent: GuestAgent,
    /// Who commands run as when the caller names nobody.
    user: Option<String>,
    run: String,
    seq: u32,
}

impl Sandbox {
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
        output_limit: Option<usize>,
    ) -> PyResult<ExecRequest> {
        let mut req = ExecRequest::new(argv);
        if let Some(s) = stdin {
            req = req.stdin(s);
        }
        for (k, v) in env {
            req = req.env(k, v);
        }
        if let Some(c) = cwd {
            req = req.cwd(c);
        }
        if let Some(u) = user.or_else(|| self.user.clone()) {
            req = req.user(u);
        }
        if let Some(t) = timeout {
            let t = Duration::try_from_secs_f64(t).map_err(|_| {
                plain(
                    "invalid_request",
                    format!("invalid timeout: {t} s: give a non-negative number of seconds"),
                )
            })?;
            req = req.timeout(t);
        }
        if let Some(l) = output_limit {
            req = req.output_limit(l);
        }
        Ok(req)
    }
}

#[pymethods]
impl Sandbox {
    /// Sandbox name (`default`, or the VM config's `name`).
    #[getter]
    fn name(&self) -> &str {
        self.vm.name()
    }
    /// PVE VM id.
    #[getter]
    fn vmid(&self) -> u32 {
        // Python sees the number.
        self.vm.vmid().0
    }
    /// PVE node.
    #[getter]
    fn node(&self) -> &str {
        self.vm.node()
    }
    /// Instance id (of the configured Proxmox instances).
    #[getter]
    fn instance(&self) -> &str {
        self.vm.instance()
    }
    /// The run it belongs to.
    #[getter]
    fn run_id(&self) -> &str {
        &self.run
    }
    /// Its sample's sequence number within the run.
    #[getter]
    fn seq(&self) -> u32 {
        self.seq
    }
    /// The user commands run as by default (`None`: the agent's, root).
    #[getter]
    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    /// Whether the VM runs commands (has a guest agent).
    #[getter]
    fn is_sandbox(&self) -> bool {
        self.vm.is_sandbox()
    }
    /// Where relative paths resolve.
    #[getter]
    fn workdir(&self) -> &str {
        self.agent.default_workdir()
    }

    /// Runs `argv`; resolves to `(status, stdout, stderr, stdout_truncated,
    /// stderr_truncated, rust_us)`, each stream cut to its last `output_limit` bytes;
    /// `rust_us` is the call's wall time inside Rust, so the caller can tell its own overhead
    /// (and Inspect's polling interval) from the guest's.
    #[pyo3(signature = (argv, stdin=None, env=Vec::new(), cwd=None, user=None, timeout=None, output_limit=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec<'py>(
        &self,
        py: Python<'py>,
        argv: Vec<String>,
        stdin: Option<Vec<u8>>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        user: Option<String>,
        timeout: Option<f64>,
        output_limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let req = self.request(argv, stdin, env, cwd, user, timeout, output_limit)?;
        let agent = self.agent.clone();
        future_into_py(py, async move {
            let t = Instant::now();
            let out = agent.exec(&req).await.map_err(errors::agent)?;
            Ok((
                out.status,
                out.stdout,
                out.stderr,
                out.stdout_truncated,
                out.stderr_truncated,
                t.elapsed().as_secs_f64() * 1e6,
            ))
        })
    }

    /// Reads a file; fails (kind `output_limit`) when it is larger than `limit` bytes.
    #[pyo3(signature = (path, limit=None))]
    fn read_file<'py>(
        &self,
        py: Python<'py>,
        path: String,
        limit: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let agent = self.agent.clone();
        future_into_py(py, async move {
            agent.read_file(&path, limit).await.map_err(errors::agent)
        })
    }

    /// Writes a file, creating parent directories and replacing an existing file.
    fn write_file<'py>(
        &self,
        py: Python<'py>,
        path: String,
        contents: &Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let agent = self.agent.clone();
        let contents = contents.as_bytes().to_vec();
        future_into_py(py, async move {
            agent
                .write_file(&path, &contents)
                .await
                .map_err(errors::agent)
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Sandbox(name={:?}, vmid={}, node={:?}, instance={:?}, run={:?})",
            self.vm.name(),
            self.vm.vmid(),
            self.vm.node(),
            self.vm.instance(),
            self.run
        )
    }
}

/// The module `pvesandbox_inspect._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add_function(wrap_pyfunction!(task_init, m)?)?;
    m.add_function(wrap_pyfunction!(configured_capacity, m)?)?;
    m.add_function(wrap_pyfunction!(cleanup, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown_embedded, m)?)?;
    m.add_function(wrap_pyfunction!(embedded_env, m)?)?;
    m.add_class::<Task>()?;
    m.add_class::<SampleHandle>()?;
    m.add_class::<Sandbox>()?;
    m.add("EMBEDDED_SIM_VAR", embedded::VAR)?;
    Ok(())
}
