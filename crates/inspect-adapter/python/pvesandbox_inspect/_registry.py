"""Registers the ``pve`` sandbox with Inspect (loaded through the ``inspect_ai`` entry point).

The name is ``pve``, not ``proxmox``: Inspect resolves sandboxes by unqualified name, first
match wins, and maps ``proxmox`` to the Python peer in its install hint.
"""

from inspect_ai.util import sandboxenv


@sandboxenv(name="pve")
def pve():  # type: ignore[no-untyped-def]
    from ._sandbox import PveSandboxEnvironment

    return PveSandboxEnvironment
