"""Inspect AI sandbox ``pve``: disposable Proxmox VE VMs through pvesandbox.

Use it like any Inspect sandbox::

    Task(..., sandbox=("pve", PveSandboxEnvironmentConfig(...)))   # or sandbox="pve"

Configs written for the Python peer (``inspect_proxmox_sandbox``) work unchanged: the config
model has the peer's field names (``ProxmoxSandboxEnvironmentConfig`` is an alias), plus
``disk_gb`` and ``user`` per VM.
"""

from ._config import (
    DhcpRange,
    PveSandboxEnvironmentConfig,
    ProxmoxSandboxEnvironmentConfig,
    SdnConfig,
    SubnetConfig,
    VmConfig,
    VmNicConfig,
    VmSourceConfig,
    VnetConfig,
)

__all__ = [
    "DhcpRange",
    "PveSandboxEnvironmentConfig",
    "ProxmoxSandboxEnvironmentConfig",
    "SdnConfig",
    "SubnetConfig",
    "VmConfig",
    "VmNicConfig",
    "VmSourceConfig",
    "VnetConfig",
]
