"""Inspect's own conformance suite (44 checks) against the ``pve`` sandbox, with no xfail.

One shared VM for the module (the recipe's shared-sandbox variant: VMs are expensive), whose
default user is a non-root user, so the permission checks are real (root may read anything).
Run it against process guests (default) or real qemu-guest-agent guests
(``PVESANDBOX_EMBEDDED_SIM=qemu``).
"""

import time

import pytest
import pytest_asyncio
from inspect_ai.util._sandbox.self_check import *  # noqa: F401,F403

from pvesandbox_inspect import PveSandboxEnvironmentConfig, VmConfig, VmSourceConfig
from pvesandbox_inspect._sandbox import PveSandboxEnvironment

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER = "pvecheck"
CONFIG = PveSandboxEnvironmentConfig(
    vms_config=(VmConfig(vm_source_config=VmSourceConfig(built_in="debian13"), user=USER),)
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared():
    started = time.monotonic()
    await PveSandboxEnvironment.task_init("startup", CONFIG)
    envs = await PveSandboxEnvironment.sample_init(
        "self_check", CONFIG, {"__sample_id__": "1"}
    )
    default = envs["default"]
    # The image has no unprivileged user: make the configured one (cwd "/": its home, the
    # sandbox's working directory, does not exist until now).
    made = await default.exec(["useradd", "-m", USER], user="root", cwd="/")
    assert made.success, made.stderr
    assert (await default.exec(["whoami"])).stdout == f"{USER}\n"
    print(f"\nself-check sandbox ready in {time.monotonic() - started:.2f} s")
    yield envs
    await PveSandboxEnvironment.sample_cleanup("self_check", CONFIG, envs, False)
    await PveSandboxEnvironment.task_cleanup("shutdown", CONFIG, True)
    print(f"\nself-check wall time (setup, 44 checks, cleanup): {time.monotonic() - started:.2f} s")


@pytest.fixture
def sandbox_env(shared):
    return shared["default"]
