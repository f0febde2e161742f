"""Start fakepve for pve-client's integration tests (crates/pve-client/tests/fakepve.rs).

Our own launcher, written against fakepve's public Python API (fakepve is AGPL-3.0: we only run
it as a separate process, never vendor or copy it). It listens on 127.0.0.1, on a port the OS
picks, with tasks that finish at once (time_scale 0), and sets up:

- the password user root@pam (password from FAKEPVE_PASSWORD);
- the API token FAKEPVE_TOKEN_ID with secret FAKEPVE_TOKEN_SECRET;
- template VM 9000 on node pve1 with a scsi0 disk and a net0 NIC;
- a certificate for 127.0.0.1 made with fakepve.certs.make_cert, to trust as its own CA;
- a guest agent (default answers) for every VM created later (clone/create), which fakepve
  0.5.0 leaves without one.

Then it prints exactly one line and serves until killed or until its stdin closes, so a crashed
test harness never leaves it running:

    READY url=https://127.0.0.1:PORT ca=/path/fakepve.crt fingerprint=AA:BB:...

The fingerprint is the SHA-256 of the certificate's DER, as the PVE GUI shows it.

Commands, one per line on stdin:

    revoke    every login ticket becomes invalid (next request gets 401); prints
              REVOKED <number of tickets that were valid>
    tickets   prints TICKETS <number of valid tickets>, so a test can count logins

If fakepve (with its [crypto] extra) cannot be imported it prints `MISSING fakepve: <reason>`
and exits with status 3, so the harness can tell "not installed" from "broken".

Usage: python launch.py [--workdir DIR]   (DIR receives the certificate; default: a temp dir,
removed on exit)
"""

import argparse
import asyncio
import hashlib
import os
import shutil
import sys
import tempfile

try:
    from fakepve import FakePve
    from fakepve.certs import make_cert
    from fakepve.model import FakeVm

    import cryptography  # noqa: F401  (the [crypto] extra; make_cert needs it)
except ImportError as exc:  # not installed: let the harness skip (or fail in CI)
    print("MISSING fakepve: %s" % exc, flush=True)
    sys.exit(3)

TEMPLATE_VMID = 9000
NODE = "pve1"


def give_new_vms_an_agent():
    """Every FakeVm constructed from now on gets a running agent with default answers.

    fakepve 0.5.0 gives a VM an agent only when the guests file or the Python API says so, so
    clones would answer every agent call with 500 "QEMU guest agent is not running". Setting it
    at construction (rather than polling pve.vms, as fakepve's docs suggest) leaves no window in
    which a fresh clone has no agent. The template itself is built before this runs and keeps
    agent = None. FakeVm is fakepve 0.5.0's VM class; the `clones_get_a_guest_agent` test fails
    if a later fakepve builds VMs some other way.
    """
    original_init = FakeVm.__init__

    def init_with_agent(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if getattr(self, "agent", None) is None:
            self.agent = {}

    FakeVm.__init__ = init_with_agent


def ticket_count(pve):
    """Login tickets fakepve would accept (its `tickets` map: one entry per login)."""
    return len(pve.tickets)


async def serve_commands(pve):
    """Reads commands from stdin until EOF, which means the harness is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return  # EOF: the harness dropped its handle or died
        command = line.decode().strip()
        if command == "revoke":
            valid = ticket_count(pve)
            pve.revoke_tickets()
            print("REVOKED %d" % valid, flush=True)
        elif command == "tickets":
            print("TICKETS %d" % ticket_count(pve), flush=True)
        elif command:
            print("ERROR unknown command %r" % command, flush=True)


async def run(workdir):
    certfile, keyfile, der = make_cert(workdir, hosts=("127.0.0.1",))
    fingerprint = ":".join("%02X" % b for b in hashlib.sha256(der).digest())

    pve = FakePve(
        user="root@pam",
        password=os.environ.get("FAKEPVE_PASSWORD", "test-only"),
        host="127.0.0.1",
        port=0,
    )
    pve.time_scale = 0  # tasks finish at once
    pve.apitokens[os.environ.get("FAKEPVE_TOKEN_ID", "root@pam!ci")] = os.environ.get(
        "FAKEPVE_TOKEN_SECRET", "00000000-0000-0000-0000-000000000001"
    )
    pve.add_vm(
        TEMPLATE_VMID,
        "tmpl-ubuntu",
        node=NODE,
        template=True,
        config={
            "memory": "2048",
            "cores": 2,
            "agent": "1",
            "ostype": "l26",
            "scsi0": "local-lvm:base-%d-disk-0,size=8G" % TEMPLATE_VMID,
            "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0",
        },
    )
    give_new_vms_an_agent()
    await pve.start(certfile, keyfile)  # port 0: pve.url carries the real port afterwards

    print("READY url=%s ca=%s fingerprint=%s" % (pve.url, certfile, fingerprint), flush=True)
    try:
        await serve_commands(pve)
    finally:
        await pve.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="directory for the certificate (kept on exit)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="fakepve-")
    try:
        asyncio.run(run(workdir))
    except KeyboardInterrupt:
        pass
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
