"""`pvesandbox serve` on the embedded simulator (process guests), driven by the unmodified
OpenSandbox SDK and CLI 1.1.1 as published: what a user of either would do.

The server is the `pvesandbox` binary named by PVESANDBOX_BIN, started once for the module
with a random API key; every test talks to it over loopback only (the proxies CI sets stay
in place; NO_PROXY covers loopback).
"""

import os
import re
import secrets
import subprocess
import time
from datetime import timedelta

import pytest
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.execd_sync import ExecutionHandlersSync
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    DirectoryListEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)
from opensandbox.models.sandboxes import SandboxFilter
from opensandbox.sync import SandboxManagerSync, SandboxSync

# A VM (even a simulated one) takes longer than the SDK's 30 s container default on a loaded
# 2-core machine; users are told the same in the README.
READY = timedelta(minutes=3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    key = secrets.token_hex(16)
    env = {
        "PATH": os.environ["PATH"],
        "TMPDIR": str(tmp),
        "OPEN_SANDBOX_API_KEY": key,
        "PVESANDBOX_IMAGES__CACHE_DIR": str(tmp / "cache"),
    }
    proc = subprocess.Popen(
        [os.environ["PVESANDBOX_BIN"], "serve", "--listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    domain = None
    for line in proc.stdout:
        m = re.match(r"export OPEN_SANDBOX_DOMAIN=(\S+)", line)
        if m:
            domain = m.group(1)
            break
    assert domain, "serve printed no OPEN_SANDBOX_DOMAIN"
    yield {"domain": domain, "key": key}
    proc.terminate()
    assert proc.wait(timeout=300) == 0


def config(server, key=None):
    return ConnectionConfigSync(
        domain=server["domain"], api_key=key or server["key"], protocol="http"
    )


def osb(server, *args):
    env = dict(os.environ)
    env.update(
        OPEN_SANDBOX_DOMAIN=server["domain"],
        OPEN_SANDBOX_API_KEY=server["key"],
        OPEN_SANDBOX_PROTOCOL="http",
    )
    return subprocess.run(
        [os.path.join(os.path.dirname(os.environ["PYTHON"]), "osb"), "--no-color", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_sandbox_through_the_sdk(server):
    cfg = config(server)
    sb = SandboxSync.create(
        "debian:13",
        ready_timeout=READY,
        connection_config=cfg,
        env={"GREETING": "hello"},
        metadata={"suite": "sdk"},
        resource={"cpu": "1", "memory": "512Mi"},
    )
    # Commands: stdout, stderr, the environment, exit codes, cwd, timeouts.
    ex = sb.commands.run("echo $GREETING; echo oops >&2; exit 3")
    assert ex.exit_code == 3
    assert [m.text for m in ex.logs.stdout] == ["hello"]
    assert [m.text for m in ex.logs.stderr] == ["oops"]
    ex = sb.commands.run("pwd", opts=RunCommandOpts(working_directory="/tmp"))
    assert (ex.exit_code, [m.text for m in ex.logs.stdout]) == (0, ["/tmp"])
    ex = sb.commands.run("sleep 30", opts=RunCommandOpts(timeout=timedelta(seconds=1)))
    assert ex.exit_code == -1

    # Streaming: the handler sees the first line while the command still waits for a file
    # that the handler itself creates through a second connection.
    other = SandboxSync.connect(sb.id, connection_config=cfg)
    seen = []

    def on_stdout(msg):
        seen.append(msg.text)
        if msg.text == "first":
            other.commands.run("touch /tmp/go")

    ex = sb.commands.run(
        "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second",
        opts=RunCommandOpts(timeout=timedelta(seconds=60)),
        handlers=ExecutionHandlersSync(on_stdout=on_stdout),
    )
    assert (ex.exit_code, seen) == (0, ["first", "second"])

    # Background: no exit code at once; status and logs later.
    ex = sb.commands.run("echo bg; exit 5", opts=RunCommandOpts(background=True))
    assert ex.exit_code is None and ex.id
    deadline = time.time() + 60
    while sb.commands.get_command_status(ex.id).running:
        assert time.time() < deadline
        time.sleep(0.05)
    assert sb.commands.get_command_status(ex.id).exit_code == 5
    assert sb.commands.get_background_command_logs(ex.id).content == "bg\n"

    # A bash session keeps its directory, variables and functions between runs.
    sid = sb.commands.create_session(working_directory="/tmp")
    ex = sb.commands.run_in_session(sid, "cd /root && X=kept && f() { echo \"f $1\"; }")
    assert ex.exit_code == 0, ex.error
    ex = sb.commands.run_in_session(sid, 'echo "$X $(pwd) $GREETING"; f ok')
    assert [m.text for m in ex.logs.stdout] == ["kept /root hello", "f ok"]
    ex = sb.commands.run_in_session(sid, "exit 4")
    assert ex.exit_code == 4
    sb.commands.delete_session(sid)

    # The VM's own CPU and memory, as Proxmox reports them.
    m = sb.get_metrics()
    assert m.cpu_count >= 1 and m.memory_total_in_mib >= 512, m

    # Files both ways, binary, 5 MiB, into a directory that does not exist yet.
    blob = os.urandom(5 * 1024 * 1024)
    sb.files.write_file("/root/in/new/blob.bin", blob)
    assert sb.files.read_bytes("/root/in/new/blob.bin") == blob
    assert sb.files.read_bytes("/root/in/new/blob.bin", range_header="bytes=10-19") == blob[10:20]
    sb.files.write_file("/root/note.txt", "text\n")
    assert sb.files.read_file("/root/note.txt") == "text\n"

    # Listing and filters.
    mgr = SandboxManagerSync.create(connection_config=cfg)
    mine = mgr.list_sandbox_infos(SandboxFilter(states=["Running"], metadata={"suite": "sdk"}))
    assert [s.id for s in mine.sandbox_infos] == [sb.id]
    none = mgr.list_sandbox_infos(SandboxFilter(metadata={"suite": "other"}))
    assert none.sandbox_infos == []

    # Renew.
    renewed = sb.renew(timedelta(hours=2))
    assert renewed.expires_at.timestamp() > time.time() + 3600

    # Pause keeps the process (and its RAM); resume lets it go on.
    sb.commands.run("sleep 100000 >/dev/null 2>&1 & echo $! > /root/sleeper.pid")
    alive = "kill -0 $(cat /root/sleeper.pid) && cat /root/sleeper.pid"
    pid = sb.commands.run(alive).logs.stdout[0].text
    sb.pause()
    assert sb.get_info().status.state == "Paused"
    sb = SandboxSync.resume(sb.id, connection_config=cfg, resume_timeout=READY)
    assert sb.get_info().status.state == "Running"
    assert sb.commands.run(alive).logs.stdout[0].text == pid

    # Kill: then it is gone.
    sid = sb.id
    sb.kill()
    deadline = time.time() + 120
    while True:
        try:
            mgr.get_sandbox_info(sid)
        except SandboxApiException as e:
            assert e.status_code == 404
            break
        assert time.time() < deadline, "the sandbox was not removed"
        time.sleep(0.1)


def test_without_the_key_nothing_is_served(server):
    with pytest.raises(SandboxApiException) as e:
        SandboxSync.create(
            "debian:13", ready_timeout=READY, connection_config=config(server, key="wrong")
        )
    assert e.value.status_code == 401


def test_the_reaper_removes_an_expired_sandbox(server):
    cfg = config(server)
    sb = SandboxSync.create(
        "debian13", timeout=None, ready_timeout=READY, connection_config=cfg,
        resource={"memory": "512Mi"},
    )
    sb.renew(timedelta(seconds=2))
    mgr = SandboxManagerSync.create(connection_config=cfg)
    deadline = time.time() + 120
    while True:
        try:
            mgr.get_sandbox_info(sb.id)
        except SandboxApiException as e:
            assert e.status_code == 404
            break
        assert time.time() < deadline, "the reaper did not remove it"
        time.sleep(0.2)


def test_the_osb_cli(server):
    out = osb(server, "sandbox", "create", "--image", "debian:13", "--resource", "memory=512Mi",
              "--ready-timeout", "3m")
    assert out.returncode == 0, out.stderr
    sid = re.search(r"id:\s+(s\d+\.\w+)", out.stdout).group(1)
    listed = osb(server, "sandbox", "list")
    assert sid in listed.stdout, listed.stdout
    ran = osb(server, "command", "run", sid, "--", "sh", "-c", "echo from-osb")
    assert ran.returncode == 0 and "from-osb" in ran.stdout, ran
    failed = osb(server, "command", "run", sid, "--", "sh", "-c", "exit 4")
    assert failed.returncode != 0 and "CommandExecError: 4" in failed.stdout + failed.stderr, failed
    killed = osb(server, "sandbox", "kill", sid)
    assert killed.returncode == 0, killed.stderr


def test_the_files_api_through_the_sdk(server):
    sb = SandboxSync.create(
        "debian:13", ready_timeout=READY, connection_config=config(server),
        resource={"memory": "512Mi"},
    )
    try:
        sh = lambda cmd: [m.text for m in sb.commands.run(cmd).logs.stdout]
        sb.files.write_file("/root/t/a/one.txt", "hello", mode=644)
        sb.files.write_file("/root/t/a/b/two.txt", "x.y xzy x.y", mode=644)
        sb.files.write_file("/root/t/top.md", "z", mode=644)
        sh("mkdir -p /root/t/dir.txt && ln -s a /root/t/link")

        # Info: parsed into EntryInfo, the symlink itself; a missing path is 404.
        info = sb.files.get_file_info(["/root/t/a/one.txt", "/root/t/link"])
        one = info["/root/t/a/one.txt"]
        assert (one.path, one.entry_type, one.size, one.mode, one.owner) == (
            "/root/t/a/one.txt", "file", 5, 644, "root")
        assert abs(one.modified_at.timestamp() - time.time()) < 600
        assert info["/root/t/link"].entry_type == "symlink"
        with pytest.raises(SandboxApiException) as e:
            sb.files.get_file_info(["/root/t/nope"])
        assert e.value.status_code == 404

        # Search matches names, files only; listing depth 1 is the children only.
        hits = sb.files.search(SearchEntry(path="/root/t", pattern="*.txt"))
        assert [h.path for h in hits] == ["/root/t/a/b/two.txt", "/root/t/a/one.txt"]
        assert sb.files.search(SearchEntry(path="/root/t", pattern="a*")) == []
        listed = sb.files.list_directory(DirectoryListEntry(path="/root/t", depth=1))
        assert [(x.path, x.entry_type) for x in listed] == [
            ("/root/t/a", "directory"), ("/root/t/dir.txt", "directory"),
            ("/root/t/link", "symlink"), ("/root/t/top.md", "file")]
        deeper = sb.files.list_directory(DirectoryListEntry(path="/root/t", depth=2))
        assert "/root/t/a/one.txt" in [x.path for x in deeper]

        # Directories with a mode, permissions, moves.
        sb.files.create_directories([WriteEntry(path="/root/t/new/deep", mode=700)])
        assert sh("stat -c '%F %a' /root/t/new/deep") == ["directory 700"]
        sb.files.set_permissions(
            [SetPermissionEntry(path="/root/t/a/one.txt", mode=600, owner="nobody")])
        assert sh("stat -c '%a %U' /root/t/a/one.txt") == ["600 nobody"]
        sb.files.move_files([MoveEntry(src="/root/t/top.md", dest="/root/t/moved/top.md")])
        assert sb.files.read_file("/root/t/moved/top.md") == "z"
        assert sh("[ -e /root/t/top.md ] || echo gone") == ["gone"]

        # Replace: literal, counted; the mode stays.
        got = sb.files.replace_contents_detailed([
            ContentReplaceEntry(path="/root/t/a/b/two.txt", old_content="x.y", new_content="Z"),
            ContentReplaceEntry(path="/root/t/a/one.txt", old_content="l", new_content="L"),
        ])
        assert sorted((r.path, r.replaced_count) for r in got) == [
            ("/root/t/a/b/two.txt", 2), ("/root/t/a/one.txt", 2)]
        assert sb.files.read_file("/root/t/a/b/two.txt") == "Z xzy Z"
        sb.files.replace_contents(
            [ContentReplaceEntry(path="/root/t/a/one.txt", old_content="LL", new_content="l")])
        assert sb.files.read_file("/root/t/a/one.txt") == "helo"
        assert sh("stat -c %a /root/t/a/one.txt") == ["600"]

        # Deletes: files, then whole trees.
        sb.files.delete_files(["/root/t/a/b/two.txt", "/root/t/nope"])
        assert sh("[ -e /root/t/a/b/two.txt ] || echo gone") == ["gone"]
        sb.files.delete_directories(["/root/t/a", "/root/t/new"])
        left = sb.files.list_directory(DirectoryListEntry(path="/root/t"))
        assert [x.path for x in left] == ["/root/t/dir.txt", "/root/t/link", "/root/t/moved"]
    finally:
        sb.kill()
