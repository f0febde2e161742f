"""A small offline eval: a scripted mockllm model drives the ``bash`` tool in a ``pve`` sandbox.

No network: every scripted output carries ``usage`` (mockllm would otherwise count tokens with
tiktoken, which downloads its encoding), and the tests export a loopback proxy guard.
"""

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.model import ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import includes
from inspect_ai.solver import generate, use_tools
from inspect_ai.tool import bash

from pvesandbox_inspect import PveSandboxEnvironmentConfig, VmConfig, VmSourceConfig

# One tool call per step; the final answer repeats the first tool output.
SCRIPT = [
    "cat greeting.txt; cat setup-ran",
    "echo to-stderr >&2; pwd; whoami",
    "sleep 5",
]


def scripted(input, tools, tool_choice, config) -> ModelOutput:  # type: ignore[no-untyped-def]
    n = sum(1 for m in input if m.role == "tool")
    if n < len(SCRIPT):
        out = ModelOutput.for_tool_call("mockllm/model", "bash", {"command": SCRIPT[n]})
    else:
        first = next(m for m in input if m.role == "tool")
        out = ModelOutput.from_content("mockllm/model", f"final: {first.text}")
    out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return out


@task
def pve_task() -> Task:
    return Task(
        dataset=[
            Sample(
                id=f"s{i}",
                input="Read greeting.txt",
                target="hello proxmox",
                files={"greeting.txt": "hello proxmox\n"},
                setup="echo setup-ran > setup-ran",
            )
            for i in range(2)
        ],
        solver=[use_tools(bash(timeout=2)), generate()],
        scorer=includes(),
        sandbox=(
            "pve",
            PveSandboxEnvironmentConfig(
                vms_config=(VmConfig(vm_source_config=VmSourceConfig(built_in="debian13")),)
            ),
        ),
        model=get_model("mockllm/model", custom_outputs=scripted),
    )
