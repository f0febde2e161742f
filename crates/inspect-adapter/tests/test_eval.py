"""A real, offline ``inspect eval`` of tasks/pve_task.py in the ``pve`` sandbox.

The scripted mockllm model calls ``bash`` three times per sample; the tool outputs in the log
show the sample files, the setup script, separate stderr, the working directory, the user and
a timeout reported to the model as a tool error.
"""

import os
import subprocess
import sys
from pathlib import Path

from inspect_ai.log import read_eval_log

TASK = Path(__file__).parent / "tasks" / "pve_task.py"
INSPECT = Path(sys.executable).parent / "inspect"


def run_inspect(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
    )
    return subprocess.run(
        [str(INSPECT), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_offline_eval_runs_bash_in_the_pve_sandbox(tmp_path: Path) -> None:
    r = run_inspect(
        "eval", TASK.name, "--display", "plain", "--log-dir", str(tmp_path), cwd=TASK.parent
    )
    assert r.returncode == 0, r.stdout + r.stderr
    [log_file] = list(tmp_path.glob("*.eval"))
    log = read_eval_log(str(log_file))
    assert log.status == "success", log.error
    assert log.eval.sandbox is not None and log.eval.sandbox.type == "pve"
    assert log.samples is not None and len(log.samples) == 2
    for sample in log.samples:
        assert sample.error is None, sample.error
        tools = [m for m in sample.messages if m.role == "tool"]
        assert [t.text for t in tools[:1]] == ["hello proxmox\nsetup-ran\n"]
        # Inspect's bash tool shows stderr, then stdout: separate streams came back.
        assert tools[1].text == "to-stderr\n\n/root\nroot\n", tools[1].text
        assert tools[2].error is not None and tools[2].error.type == "timeout"
        assert sample.scores is not None
        assert [s.value for s in sample.scores.values()] == ["C"]


def test_no_sandbox_cleanup_prints_the_cleanup_command(tmp_path: Path) -> None:
    r = run_inspect(
        "eval", TASK.name, "--display", "plain", "--log-dir", str(tmp_path),
        "--limit", "1", "--no-sandbox-cleanup",
        cwd=TASK.parent,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "inspect sandbox cleanup pve " in r.stdout + r.stderr, r.stdout + r.stderr
