"""Test setup: the embedded simulator, nothing else.

Every test runs against pvesandbox's embedded PVE simulator (``PVESANDBOX_EMBEDDED_SIM``,
``process`` by default, ``qemu`` for real qemu-guest-agent guests), never a configured Proxmox,
and nothing may leave the machine: a loopback proxy guard catches any download.
"""

import os

os.environ.setdefault("PVESANDBOX_EMBEDDED_SIM", "process")
for var in ("PVESANDBOX_CONFIG", "PROXMOX_HOST", "PROXMOX_CONFIG_FILE"):
    os.environ.pop(var, None)
os.environ["HTTPS_PROXY"] = os.environ["HTTP_PROXY"] = "http://127.0.0.1:9"
os.environ["NO_PROXY"] = "127.0.0.1,localhost"
