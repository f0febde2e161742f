"""The error contract: a native failure becomes exactly the exception Inspect expects.

Inspect shows ``TimeoutError``, ``PermissionError``, ``FileNotFoundError``,
``IsADirectoryError``, ``OutputLimitExceededError`` and ``SandboxUnavailableError`` to the
model as tool errors; ``SandboxUserUnsupportedError`` marks a user the sandbox cannot run as;
anything else fails the sample, so it is a ``PveSandboxError`` carrying pvesandbox's message
(which names the field, the value and the fix for configuration errors).
"""

from __future__ import annotations

import errno

from inspect_ai.util import (
    OutputLimitExceededError,
    SandboxEnvironmentLimits,
    SandboxUnavailableError,
    SandboxUserUnsupportedError,
)

from ._native import NativeError


class PveSandboxError(RuntimeError):
    """A pvesandbox failure that is not the command's or the path's fault."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _decode(b: bytes | None) -> str:
    return (b or b"").decode("utf-8", errors="replace")


def translate(e: NativeError, path: str | None = None) -> BaseException:
    """The Inspect exception for a native failure; ``path`` is the caller's path, if any."""
    kind, message, native_path, stdout, stderr, _limit = e.args
    where = path if path is not None else native_path
    if kind == "not_found":
        return FileNotFoundError(errno.ENOENT, "No such file or directory", where)
    if kind == "is_a_directory":
        return IsADirectoryError(errno.EISDIR, "Is a directory", where)
    if kind == "permission_denied":
        return PermissionError(errno.EACCES, "Permission denied", where)
    if kind == "timeout":
        err = TimeoutError(message)
        # Inspect's proxy turns this into SandboxTimeoutError and shows the partial output.
        setattr(err, "truncated_output", _decode(stdout) + _decode(stderr))
        return err
    if kind == "output_limit":
        return OutputLimitExceededError(
            SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, truncated_output=None
        )
    if kind == "user_unsupported":
        return SandboxUserUnsupportedError(message)
    if kind == "unavailable":
        return SandboxUnavailableError(message)
    return PveSandboxError(kind, message)
