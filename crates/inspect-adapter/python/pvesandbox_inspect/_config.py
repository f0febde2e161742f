"""The sample config: the peer's ``ProxmoxSandboxEnvironmentConfig``, field for field.

Frozen models with tuples, so Inspect can hash specs; unknown fields are ignored, so logs of
the peer (which carried ``host``, ``password``, ... in old versions) still load. Types are
checked here; everything else (ranges, DNS names, subnets, aliases) is validated by pvesandbox
at ``task_init``, with the field, the value and the fix in the message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, IPvAnyAddress, IPvAnyNetwork, model_validator

_FROZEN = ConfigDict(frozen=True, extra="ignore")

BuiltIn = Literal["ubuntu24.04", "debian13", "kali2025.4"]
OsType = Literal[
    "l24", "l26", "other", "solaris", "w2k", "w2k3", "w2k8",
    "win10", "win11", "win7", "win8", "wvista", "wxp",
]  # fmt: skip


class DhcpRange(BaseModel):
    """A DHCP range of a subnet."""

    model_config = _FROZEN
    start: IPvAnyAddress
    end: IPvAnyAddress


class SubnetConfig(BaseModel):
    """One subnet of a vnet."""

    model_config = _FROZEN
    cidr: IPvAnyNetwork
    gateway: IPvAnyAddress
    snat: bool
    dhcp_ranges: Tuple[DhcpRange, ...]


class VnetConfig(BaseModel):
    """One vnet; VMs attach to it by ``alias``."""

    model_config = _FROZEN
    alias: Optional[str] = None
    subnets: Tuple[SubnetConfig, ...] = ()


class SdnConfig(BaseModel):
    """A network topology for each sample."""

    model_config = _FROZEN
    vnet_configs: Tuple[VnetConfig, ...]
    use_pve_ipam_dnsnmasq: bool = True


class VmSourceConfig(BaseModel):
    """Where a VM comes from: exactly one of the three."""

    model_config = _FROZEN
    existing_vm_template_tag: Optional[str] = None
    ova: Optional[Path] = None
    built_in: Optional[BuiltIn] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "VmSourceConfig":
        given = [
            k
            for k in ("existing_vm_template_tag", "ova", "built_in")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "vm_source_config: set exactly one of built_in, ova, "
                f"existing_vm_template_tag (got {given or 'none'})"
            )
        return self


class VmNicConfig(BaseModel):
    """One NIC of a VM."""

    model_config = _FROZEN
    vnet_alias: str
    mac: Optional[str] = None
    ipv4: Optional[IPvAnyAddress] = None


class VmConfig(BaseModel):
    """One VM of a sample. ``disk_gb`` and ``user`` are pvesandbox's additions."""

    model_config = _FROZEN
    vm_source_config: VmSourceConfig
    name: Optional[str] = None
    ram_mb: Optional[int] = 2048
    vcpus: Optional[int] = 2
    nics: Optional[Tuple[VmNicConfig, ...]] = None
    is_sandbox: bool = True
    uefi_boot: bool = False
    disk_controller: Optional[Literal["scsi", "ide"]] = None
    nic_controller: Optional[Literal["virtio", "e1000"]] = None
    firewall: bool = False
    os_type: Optional[OsType] = "l26"
    cpu: Optional[str] = None
    await_before_next_vm: bool = False
    disk_gb: Optional[int] = None
    """Grow the system disk to this many GiB at clone (pvesandbox only)."""
    user: Optional[str] = None
    """Who ``exec`` and file operations run as by default; relative paths resolve in their
    home directory (pvesandbox only; default root)."""


def _default_vms() -> Tuple[VmConfig, ...]:
    return (VmConfig(vm_source_config=VmSourceConfig(built_in="ubuntu24.04")),)


class PveSandboxEnvironmentConfig(BaseModel):
    """The ``pve`` sandbox's config: which pool, which network, which VMs."""

    model_config = _FROZEN
    instance_pool_id: str = "default"
    sdn_config: Union[SdnConfig, Literal["auto"], None] = "auto"
    vms_config: Tuple[VmConfig, ...] = _default_vms()

    def to_native_json(self) -> str:
        """The JSON pvesandbox reads: the fields that were set (defaults stay pvesandbox's),
        without the unset alternatives of ``vm_source_config``."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_unset=True)
        for vm in data.get("vms_config", ()):
            src = vm.get("vm_source_config")
            if isinstance(src, dict):
                vm["vm_source_config"] = {k: v for k, v in src.items() if v is not None}
        return json.dumps(data)


ProxmoxSandboxEnvironmentConfig = PveSandboxEnvironmentConfig
"""The peer's name for the same model, so its evals only change the sandbox type."""
