"""The adapter's contract beyond the self-check: registration, configs, default concurrency,
connection, the task/sample lifecycle, cleanup with and without an id, and the per-exec
overhead the Python layer adds to the Rust call."""

import json
import os
import shlex
import statistics
import subprocess
import time

import pytest
from inspect_ai.util import SandboxEnvironmentSpec
from inspect_ai.util._sandbox.registry import registry_find_sandboxenv
from inspect_ai.util._sandbox.self_check import __all__ as CHECKS

from pvesandbox_inspect import (
    PveSandboxEnvironmentConfig,
    ProxmoxSandboxEnvironmentConfig,
    VmConfig,
    VmSourceConfig,
)
from pvesandbox_inspect import _native
from pvesandbox_inspect._errors import PveSandboxError
from pvesandbox_inspect._sandbox import PveSandboxEnvironment

# What the peer's ProxmoxSandboxEnvironmentConfig.model_dump() gives, plus a field old peer
# versions had (ignored, so such logs still load).
PEER_DICT = {
    "instance_pool_id": "default",
    "sdn_config": {
        "vnet_configs": [
            {
                "alias": "lan",
                "subnets": [
                    {
                        "cidr": "10.40.0.0/24",
                        "gateway": "10.40.0.1",
                        "snat": False,
                        "dhcp_ranges": [{"start": "10.40.0.50", "end": "10.40.0.99"}],
                    }
                ],
            }
        ],
        "use_pve_ipam_dnsnmasq": True,
    },
    "vms_config": [
        {
            "vm_source_config": {
                "existing_vm_template_tag": None,
                "ova": None,
                "built_in": "ubuntu24.04",
            },
            "name": None,
            "ram_mb": 2048,
            "vcpus": 2,
            "nics": [{"vnet_alias": "lan", "mac": None, "ipv4": None}],
            "is_sandbox": True,
            "uefi_boot": False,
            "disk_controller": None,
            "nic_controller": None,
            "firewall": False,
            "os_type": "l26",
            "cpu": None,
            "await_before_next_vm": False,
        }
    ],
    "host": "old-peer-field",
}


def test_inspect_still_ships_44_checks() -> None:
    # The CI line "44 passed" for the self-check must change on purpose, not silently.
    assert len(CHECKS) == 44


def test_registered_as_pve_through_the_entry_point() -> None:
    assert registry_find_sandboxenv("pve") is PveSandboxEnvironment


def test_peer_config_dicts_load_unchanged_frozen_and_hashable() -> None:
    cfg = PveSandboxEnvironment.config_deserialize(PEER_DICT)
    assert isinstance(cfg, PveSandboxEnvironmentConfig)
    assert ProxmoxSandboxEnvironmentConfig is PveSandboxEnvironmentConfig
    assert isinstance(cfg.vms_config, tuple) and isinstance(cfg.vms_config[0].nics, tuple)
    hash(SandboxEnvironmentSpec("pve", cfg))
    # As Inspect does when it reads a log back.
    spec = SandboxEnvironmentSpec.model_validate({"type": "pve", "config": cfg.model_dump()})
    assert spec.config == cfg
    with pytest.raises(Exception):
        cfg.instance_pool_id = "other"  # type: ignore[misc]
    native = json.loads(cfg.to_native_json())
    assert "host" not in native
    assert native["vms_config"][0]["vm_source_config"] == {"built_in": "ubuntu24.04"}


def test_config_defaults_stay_pvesandboxs() -> None:
    assert json.loads(PveSandboxEnvironmentConfig().to_native_json()) == {}
    cfg = PveSandboxEnvironmentConfig(sdn_config=None)
    assert json.loads(cfg.to_native_json()) == {"sdn_config": None}


def test_vm_source_needs_exactly_one() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        VmSourceConfig(built_in="debian13", existing_vm_template_tag="t")


def test_default_concurrency_is_the_pool_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVESANDBOX_EMBEDDED_SIM_SAMPLES", "3")
    assert PveSandboxEnvironment.default_concurrency() == 3


async def test_invalid_config_fails_task_init_naming_field_and_fix() -> None:
    cfg = PveSandboxEnvironmentConfig(
        vms_config=(VmConfig(vm_source_config=VmSourceConfig(built_in="debian13"), ram_mb=-5),)
    )
    with pytest.raises(PveSandboxError) as e:
        await PveSandboxEnvironment.task_init("startup", cfg)
    assert e.value.kind == "config"
    assert "vms_config[0].ram_mb" in str(e.value) and "-5" in str(e.value)


def vm(name: str) -> PveSandboxEnvironmentConfig:
    """A distinct one-VM config (a distinct config is a distinct task, i.e. run)."""
    src = VmSourceConfig(built_in="debian13")
    return PveSandboxEnvironmentConfig(
        vms_config=(VmConfig(vm_source_config=src), VmConfig(vm_source_config=src, name=name))
    )


async def test_lifecycle_connection_and_cleanup_by_id(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = vm("aux")
    await PveSandboxEnvironment.task_init("startup", cfg)
    envs = await PveSandboxEnvironment.sample_init("t", cfg, {"__sample_id__": "1"})
    assert list(envs) == ["default", "aux"]
    default = envs["default"]
    run = default.native.run_id
    seq = default.native.seq
    conn = await default.connection()
    assert conn.type == "pve"
    assert conn.command == f"pvesandbox exec --run {run} --vm default.s{seq} --stdin -- bash -l"
    assert (await envs["aux"].connection(user="bob")).command.endswith(
        f"--vm aux.s{seq} --user bob --stdin -- bash -l"
    )
    assert (await envs["aux"].exec(["hostname"])).success

    # No id: only expired leftovers go; this live run is not one of them.
    await PveSandboxEnvironment.cli_cleanup(None)
    assert "0 removed" in capsys.readouterr().out
    assert (await default.exec(["true"])).success

    # With the id, from Proxmox state alone: both VMs of the run go.
    await PveSandboxEnvironment.cli_cleanup(run)
    out = capsys.readouterr().out
    assert out.count("removed VM") == 2, out
    with pytest.raises(Exception):
        await default.exec(["true"])

    # The sample's own cleanup afterwards is idempotent and does not raise.
    await PveSandboxEnvironment.sample_cleanup("t", cfg, envs, False)
    await PveSandboxEnvironment.sample_cleanup("t", cfg, envs, False)
    await PveSandboxEnvironment.task_cleanup("shutdown", cfg, True)


async def test_the_connection_command_reaches_this_samples_vm() -> None:
    """The command the running-samples panel shows, pasted into a shell, with the `pvesandbox`
    CLI (``PVE_INSPECT_TEST_CLI``, set by ``cargo xtask test-inspect``) pointed at the simulator."""
    cli = os.environ.get("PVE_INSPECT_TEST_CLI")
    if not cli:
        assert not os.environ.get("CI"), "CI must set PVE_INSPECT_TEST_CLI"
        pytest.skip("PVE_INSPECT_TEST_CLI not set")
    cfg = vm("conn")
    # Two samples of one run: the command must reach the right one.
    first = await PveSandboxEnvironment.sample_init("t", cfg, {"__sample_id__": "1"})
    second = await PveSandboxEnvironment.sample_init("t", cfg, {"__sample_id__": "2"})
    for i, envs in enumerate((first, second)):
        await envs["default"].write_file("/tmp/which", f"sample {i}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVESANDBOX_")}
    env.update(dict(await _native.embedded_env()))
    argv = shlex.split((await second["default"].connection()).command)
    r = subprocess.run(
        [cli, *argv[1:]], input=b"cat /tmp/which; whoami\n", env=env, capture_output=True
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"sample 1\nroot\n"
    for envs in (first, second):
        await PveSandboxEnvironment.sample_cleanup("t", cfg, envs, False)
    await PveSandboxEnvironment.task_cleanup("shutdown", cfg, True)


async def test_no_cleanup_prints_the_command_that_removes_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = vm("left")
    envs = await PveSandboxEnvironment.sample_init("t", cfg, {"__sample_id__": "1"})
    run = envs["default"].native.run_id
    await PveSandboxEnvironment.task_cleanup("shutdown", cfg, False)
    out = capsys.readouterr().out
    assert f"inspect sandbox cleanup pve {run}" in out
    await PveSandboxEnvironment.cli_cleanup(run)
    assert capsys.readouterr().out.count("removed VM") == 2


async def test_interrupted_sample_is_swept_by_task_cleanup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = vm("intr")
    envs = await PveSandboxEnvironment.sample_init("t", cfg, {"__sample_id__": "1"})
    run = envs["default"].native.run_id
    await PveSandboxEnvironment.sample_cleanup("t", cfg, envs, True)
    assert (await envs["default"].exec(["true"])).success, "interrupted: left for task cleanup"
    await PveSandboxEnvironment.task_cleanup("shutdown", cfg, True)
    await PveSandboxEnvironment.cli_cleanup(run)
    assert "removed VM" not in capsys.readouterr().out, "task cleanup left nothing"


async def test_per_exec_overhead_of_the_adapter() -> None:
    """What the Python layer and the asyncio/tokio bridge add to each exec, paired per call:
    wall time of ``await env.exec(...)`` minus the same call's time inside Rust."""
    cfg = vm("bench")
    envs = await PveSandboxEnvironment.sample_init("t", cfg, {"__sample_id__": "1"})
    env = envs["default"]
    assert isinstance(env, PveSandboxEnvironment)
    await env.exec(["true"])
    total: list[float] = []
    overhead: list[float] = []
    for _ in range(300):
        t = time.perf_counter()
        await env.exec(["true"])
        wall = (time.perf_counter() - t) * 1e6
        total.append(wall)
        overhead.append(wall - env.last_exec_rust_us)
    await PveSandboxEnvironment.sample_cleanup("t", cfg, envs, False)
    await PveSandboxEnvironment.task_cleanup("shutdown", cfg, True)
    p50 = statistics.median(overhead)
    p90 = statistics.quantiles(overhead, n=10)[-1]
    print(
        f"\nexec through the adapter: p50 {statistics.median(total):.0f} µs; adapter overhead "
        f"over the Rust call: p50 {p50:.0f} µs, p90 {p90:.0f} µs (n={len(overhead)})"
    )
    assert 0 < p50 < 1000, "the Python layer should add well under 1 ms per exec"
