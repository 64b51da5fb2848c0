"""The client, and the tool-wrapping example, against a real daemon with BPF-LSM.

    python3 guest_check.py SOCKET ALLOW_POLICY DENY_ID_POLICY CGROUP_ROOT

``tests/python.rs`` runs it in the guests (as root) and then checks the daemon's audit log.
ALLOW_POLICY lets the tools run; DENY_ID_POLICY denies executing ``/usr/bin/id``. Exits 0 when
every check passed; an assertion error names the one that failed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

from confined_tool import run_tool  # noqa: E402
from oxd_client import Client, DaemonError  # noqa: E402


def spawn_in(cgroup: str, argv: list, **popen) -> subprocess.Popen:
    procs = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY)

    def join() -> None:
        os.write(procs, b"0")

    popen.setdefault("stdin", subprocess.DEVNULL)
    try:
        return subprocess.Popen(argv, preexec_fn=join, **popen)
    finally:
        os.close(procs)


def cgroup_event(cgroup: str, key: str) -> str:
    with open(os.path.join(cgroup, "cgroup.events"), encoding="utf-8") as f:
        for line in f:
            name, _, value = line.partition(" ")
            if name == key:
                return value.strip()
    raise AssertionError(f"no {key} in {cgroup}/cgroup.events")


# An agent that connects to 127.0.0.1:PORT, retrying while it is denied (for at most a minute),
# then tries once more and says whether that repeat was allowed.
RETRYING_AGENT = '''
import socket, sys, time
port = int(sys.argv[1])
deadline = time.monotonic() + 60
attempts = 0
while True:
    attempts += 1
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        break
    except PermissionError:
        if time.monotonic() > deadline:
            sys.exit("gave up after %d attempts" % attempts)
        time.sleep(0.05)
    finally:
        s.close()
s = socket.socket()
try:
    s.connect(("127.0.0.1", port))
    print("connected after %d attempts; the repeat was allowed" % attempts)
except PermissionError:
    print("connected after %d attempts; the repeat was denied" % attempts)
'''


def approval_round_trip(client: Client, root: str) -> None:
    """A rule requiring a grant; an agent retrying a connect; a supervisor that subscribes to
    the requests for approval and approves the first: the agent's retry succeeds, once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    cgroup = os.path.join(root, f"oxd-python-grant-{os.getpid()}")
    os.mkdir(cgroup)
    agent = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            policy = os.path.join(tmp, "py-grant.toml")
            with open(policy, "w", encoding="utf-8") as f:
                f.write(
                    'name = "py-grant"\n[network]\ndefault = "deny"\n[[network.allow]]\n'
                    f'cidr = "127.0.0.1"\nports = {port}\nprotocol = "tcp"\n'
                    "requires_grant = true\n"
                )
            client.confine(policy, cgroup=cgroup)
        requests = client.subscribe(only="approvals")
        agent = spawn_in(
            cgroup, [sys.executable, "-c", RETRYING_AGENT, str(port)], stdout=subprocess.PIPE
        )
        request = next(requests)
        requests.close()
        assert request["target"] == f"127.0.0.1:{port}", request
        assert request["protocol"] == "tcp" and request["pid"] == agent.pid, request
        granted = client.approve(request)
        assert granted.action == f"connect 127.0.0.1:{port}/tcp" and granted.uses == 1, granted
        out, _ = agent.communicate(timeout=90)
        agent = None
        assert b"the repeat was denied" in out, out
        (target,) = client.list()
        assert [(g.id, g.uses) for g in target.grants] == [(granted.id, 0)], target
        client.release(cgroup=cgroup)
    finally:
        listener.close()
        if agent is not None:
            agent.kill()
            agent.wait()
        try:
            client.release(all=True)
        except DaemonError:
            pass
        os.rmdir(cgroup)


def main() -> None:
    socket_path, allow, deny_id, root = sys.argv[1:5]
    client = Client(socket_path)
    status = client.status()
    assert status.lsm, f"the daemon runs without BPF-LSM: {status}"
    before = status.generation

    # The example: a tool call runs confined, and its output comes back.
    result = run_tool(client, allow, ["/bin/echo", "from a confined tool"], cgroup_root=root)
    assert (result.returncode, result.stdout, result.killed) == (
        0,
        b"from a confined tool\n",
        False,
    ), result
    # A tool the policy does not let run is not run.
    try:
        run_tool(client, deny_id, ["/usr/bin/id"], cgroup_root=root)
        raise AssertionError("the policy denies /usr/bin/id, and it ran")
    except PermissionError:
        pass
    # A tool that overstays its time is killed by the kill switch.
    started = time.monotonic()
    result = run_tool(client, allow, ["/bin/sleep", "60"], timeout=1, cgroup_root=root)
    assert result.killed and result.returncode == -9, result
    assert time.monotonic() - started < 30, "the kill took too long"
    assert client.list() == [], f"run_tool left targets: {client.list()}"
    leftovers = [d for d in os.listdir(root) if d.startswith(f"oxd-tool-{os.getpid()}-")]
    assert not leftovers, f"run_tool left cgroups: {leftovers}"

    # The kill switch by hand, on a long-running agent.
    cgroup = os.path.join(root, f"oxd-python-{os.getpid()}")
    os.mkdir(cgroup)
    agent = None
    try:
        said = client.confine(allow, cgroup=cgroup)
        assert "confined" in said, said
        # An agent that needs nothing more once it said it is ready (a shell waiting on its
        # input): halted before its loader had mapped its libraries, it would die of that.
        agent = spawn_in(
            cgroup,
            ["/bin/sh", "-c", "echo ready; read line"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert agent.stdout is not None and agent.stdout.readline() == b"ready\n"
        client.deny_all(cgroup=cgroup)
        (target,) = client.list()
        assert (target.cgroup, target.halted) == (cgroup, "deny-all"), target
        try:
            spawn_in(cgroup, ["/bin/true"]).wait()
            raise AssertionError("a process started in a halted cgroup")
        except PermissionError:
            pass
        client.resume(cgroup=cgroup)
        assert spawn_in(cgroup, ["/bin/true"]).wait() == 0
        said = client.freeze(cgroup=cgroup)
        assert "frozen" in said, said
        assert cgroup_event(cgroup, "frozen") == "1"
        client.resume(cgroup=cgroup)
        assert cgroup_event(cgroup, "frozen") == "0"
        assert agent.poll() is None, "the agent died while frozen"
        # Refusals come back as DaemonError, with the daemon's reason.
        try:
            client.resume(cgroup=cgroup)
            raise AssertionError("resuming a target that is not halted was accepted")
        except DaemonError as e:
            assert "not halted" in str(e), e
        assert "unchanged" in client.replace(allow)
        client.kill(cgroup=cgroup)
        assert agent.wait(timeout=30) == -9
        agent = None
        client.release(cgroup=cgroup)
        assert client.list() == []
    finally:
        if agent is not None:
            agent.kill()
            agent.wait()
        try:
            client.release(all=True)
        finally:
            os.rmdir(cgroup)
    approval_round_trip(client, root)
    assert client.status().generation > before
    print("python client: every check passed")


if __name__ == "__main__":
    main()
