"""fakepve for the e2e suite: pve-client's launcher plus one command to hold guest agents back.

fakepve (AGPL-3.0) runs only as a separate process; this file is ours. It reuses
crates/pve-client/tests/fakepve/launch.py unchanged (token, template 9000, agents for new VMs,
READY line, stdin commands) and adds:

    agents off   VMs created from now on get no guest agent; prints AGENTS off
    agents on    every VM without an agent gets one (so does every later VM); prints AGENTS on

With agents held back, `pvesandbox up` stops in its wait for the guest agent, with its VMs
cloned and started: a point where the suite can interrupt or kill it deterministically, since
fakepve finishes every task at once (time scale 0) and offers no other place to pause.
"""

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "..", "pve-client", "tests", "fakepve", "launch.py")

spec = importlib.util.spec_from_file_location("pve_client_fakepve_launch", BASE)
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)  # prints MISSING and exits 3 when fakepve is not installed

AGENTS_ON = [True]
original_give = base.give_new_vms_an_agent


def give_new_vms_an_agent_unless_held():
    """Like the base launcher's, but only while agents are on."""
    init = base.FakeVm.__init__

    def init_maybe_with_agent(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if AGENTS_ON[0] and getattr(self, "agent", None) is None:
            self.agent = {}
        elif not AGENTS_ON[0]:
            self.agent = None

    base.FakeVm.__init__ = init_maybe_with_agent


original_serve = base.serve_commands


async def serve_commands(pve):
    """The base launcher's commands plus `agents on|off`."""
    import asyncio

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        command = line.decode().strip()
        if command == "agents off":
            AGENTS_ON[0] = False
            print("AGENTS off", flush=True)
        elif command == "agents on":
            AGENTS_ON[0] = True
            for vm in pve.vms:
                if not getattr(vm, "template", False) and getattr(vm, "agent", None) is None:
                    vm.agent = {}
            print("AGENTS on", flush=True)
        elif command == "tickets":
            print("TICKETS %d" % base.ticket_count(pve), flush=True)
        elif command:
            print("ERROR unknown command %r" % command, flush=True)


base.give_new_vms_an_agent = give_new_vms_an_agent_unless_held
base.serve_commands = serve_commands

if __name__ == "__main__":
    base.main()
