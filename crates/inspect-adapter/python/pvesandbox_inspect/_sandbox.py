"""``PveSandboxEnvironment``: Inspect's provider contract over pvesandbox's native module.

One native *task* (a pvesandbox run: pool, templates, run id) per distinct sandbox config,
created by ``task_init`` (or by the first ``sample_init`` when a caller skips it) and swept by
``task_cleanup``. Each sample is a set of VMs; each VM with a guest agent is one environment,
``default`` first. Every call reads Inspect's limits at call time and passes them down.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shlex
import sys
from typing import Any, Literal, Union, overload

from inspect_ai.util import (
    ExecResult,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
)
from pydantic import BaseModel

from . import _native
from ._config import PveSandboxEnvironmentConfig
from ._errors import PveSandboxError, translate
from ._native import NativeError

logger = logging.getLogger(__name__)

SANDBOX_TYPE = "pve"

if os.environ.get(_native.EMBEDDED_SIM_VAR, "") not in ("", "0"):
    # Dropping the simulator powers its guests off; do it before the interpreter goes.
    atexit.register(_native.shutdown_embedded)


def _native_config(
    config: SandboxEnvironmentConfigType | None,
) -> tuple[str | None, str | None]:
    """``(json, path)`` for the native ``task_init``: a model as JSON, a string as a file."""
    if config is None:
        return None, None
    if isinstance(config, str):
        return None, config
    if not isinstance(config, PveSandboxEnvironmentConfig):
        # e.g. the peer's own model object: same fields.
        data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
        config = PveSandboxEnvironmentConfig(**data)
    return config.to_native_json(), None


def _cleanup_hint(run_id: str) -> str:
    return f"inspect sandbox cleanup {SANDBOX_TYPE} {run_id}"


class PveSandboxEnvironment(SandboxEnvironment):
    """One Proxmox VE VM of a sample, driven through its QEMU guest agent."""

    _tasks: dict[Any, Any] = {}
    _task_locks: dict[Any, asyncio.Lock] = {}

    def __init__(self, native: Any, sample: Any, task: Any) -> None:
        super().__init__()
        self._vm = native
        self._sample = sample
        self._task = task
        # Seconds per exec, smoothed: the basis of default_polling_interval().
        self._exec_seconds = 0.05
        self.last_exec_rust_us = 0.0
        """Wall time of the last exec inside Rust, µs (what the adapter's overhead is measured
        against)."""

    # ---- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def _task_for(cls, config: SandboxEnvironmentConfigType | None) -> Any:
        task = cls._tasks.get(config)
        if task is not None:
            return task
        lock = cls._task_locks.setdefault(config, asyncio.Lock())
        async with lock:
            task = cls._tasks.get(config)
            if task is None:
                config_json, config_path = _native_config(config)
                try:
                    task = await _native.task_init(config_json, config_path)
                except NativeError as e:
                    raise translate(e) from None
                cls._tasks[config] = task
                logger.info(
                    "pve: run %s started (capacity %d samples); leftovers: %s",
                    task.run_id,
                    task.capacity,
                    _cleanup_hint(task.run_id),
                )
            return task

    @classmethod
    def default_concurrency(cls) -> int | None:
        try:
            return _native.configured_capacity()
        except NativeError:
            # A broken configuration is reported, with its fix, by task_init.
            return None

    @classmethod
    def config_files(cls) -> list[str]:
        return []

    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        return PveSandboxEnvironmentConfig(**config)

    @classmethod
    async def task_init(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None
    ) -> None:
        await cls._task_for(config)

    @classmethod
    async def sample_init(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        metadata: dict[str, str],
    ) -> dict[str, SandboxEnvironment]:
        task = await cls._task_for(config)
        try:
            sample = await task.sample_init()
        except NativeError as e:
            raise translate(e) from None
        vms = sample.sandboxes()
        # Inspect takes the first environment as the default one.
        vms.sort(key=lambda vm: vm.name != "default")
        return {vm.name: cls(vm, sample, task) for vm in vms}

    @classmethod
    async def sample_cleanup(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        environments: dict[str, SandboxEnvironment],
        interrupted: bool,
    ) -> None:
        samples = {
            id(env._sample): env._sample
            for env in environments.values()
            if isinstance(env, PveSandboxEnvironment)
        }
        for sample in samples.values():
            try:
                await sample.cleanup(interrupted)
            except NativeError as e:
                # Raising here would error an already-scored sample; task_cleanup retries.
                logger.warning("pve: sample cleanup incomplete (task cleanup retries): %s", e.args[1])

    @classmethod
    async def task_cleanup(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool
    ) -> None:
        task = cls._tasks.pop(config, None)
        cls._task_locks.pop(config, None)
        if task is None:
            return
        if not cleanup:
            print(
                f"pve: run {task.run_id} left running (--no-sandbox-cleanup); "
                f"remove it with: {_cleanup_hint(task.run_id)}"
            )
            return
        try:
            report = await task.task_cleanup()
        except NativeError as e:
            logger.warning("pve: cleanup of run %s failed: %s", task.run_id, e.args[1])
            return
        for failed in report["failed"]:
            logger.warning(
                "pve: left behind: %s (retry: %s)", failed, _cleanup_hint(task.run_id)
            )

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        try:
            report = await _native.cleanup(id)
        except NativeError as e:
            print(f"pve: cleanup failed: {e.args[1]}", file=sys.stderr)
            sys.exit(1)
        what = f"run {id}" if id else "expired leftovers of every run"
        for vm in report["vms"]:
            print(f"removed VM {vm}")
        for zone in report["zones"]:
            print(f"removed network {zone}")
        for kept in report["kept"]:
            print(f"kept {kept}")
        for failed in report["failed"]:
            print(f"FAILED {failed}", file=sys.stderr)
        removed = len(report["vms"]) + len(report["zones"])
        print(f"pve cleanup of {what}: {removed} removed, {len(report['failed'])} failed")
        if not id:
            print("(a run that is not yet expired: inspect sandbox cleanup pve <run id>)")
        if report["failed"]:
            sys.exit(1)

    # ---- per environment ------------------------------------------------------------------

    async def exec(
        self,
        cmd: list[str],
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: int | None = None,
        timeout_retry: bool = True,
        concurrency: bool = True,
    ) -> ExecResult[str]:
        # timeout_retry: the timeout is enforced inside the guest, so there is no host-side
        # hang to retry. concurrency: nothing in the adapter queues, so nothing to bypass.
        stdin = input.encode("utf-8") if isinstance(input, str) else input
        try:
            status, stdout, stderr, _, _, rust_us = await self._vm.exec(
                cmd,
                stdin,
                list((env or {}).items()),
                cwd,
                user,
                None if timeout is None else float(timeout),
                SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE,
            )
        except NativeError as e:
            raise translate(e) from None
        self.last_exec_rust_us = rust_us
        self._exec_seconds += 0.2 * (rust_us / 1e6 - self._exec_seconds)
        return ExecResult(
            success=status == 0,
            returncode=status,
            stdout=stdout.decode("utf-8", errors="replace"),
            stderr=stderr.decode("utf-8", errors="replace"),
        )

    async def write_file(self, file: str, contents: str | bytes) -> None:
        data = contents.encode("utf-8") if isinstance(contents, str) else contents
        try:
            await self._vm.write_file(file, data)
        except NativeError as e:
            raise translate(e, path=file) from None

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> Union[str, bytes]:
        try:
            data = await self._vm.read_file(file, SandboxEnvironmentLimits.MAX_READ_FILE_SIZE)
        except NativeError as e:
            raise translate(e, path=file) from None
        # Strict UTF-8, newlines untouched (Inspect's contract: like open(newline="")).
        return data.decode("utf-8") if text else data

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        # `<name>.s<sample>` picks this sample's VM among the run's; --stdin feeds what the
        # human types (the agent has no terminal to attach to).
        command = [
            "pvesandbox", "exec", "--run", self._vm.run_id,
            "--vm", f"{self._vm.name}.s{self._vm.seq}",
        ]  # fmt: skip
        if user or self._vm.user:
            command += ["--user", user or self._vm.user]
        command += ["--stdin", "--", "bash", "-l"]
        return SandboxConnection(
            type=SANDBOX_TYPE,
            command=shlex.join(command),
            container=f"{self._vm.instance}/{self._vm.node}/{self._vm.vmid}",
        )

    def default_polling_interval(self) -> float:
        # Each poll is one exec; poll at ~10x its cost, between 0.1 s and Inspect's 2 s.
        return min(2.0, max(0.1, 10 * self._exec_seconds))

    @property
    def native(self) -> Any:
        """The native sandbox handle (VM id, node, instance, run id, workdir)."""
        return self._vm


__all__ = ["PveSandboxEnvironment", "PveSandboxError"]
