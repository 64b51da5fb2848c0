"""Wrapping an agent's tool call: the tool runs in a cgroup of its own, confined by a policy
through the oxd daemon, and the kill switch stops it when it runs too long.

    sudo python3 clients/python/examples/confined_tool.py policies/example.toml -- ls /tmp

An agent runtime calls :func:`run_tool` where it would have run the tool directly: the
policy's rules are enforced by the kernel for the tool and everything it starts, every
decision lands in the daemon's audit log, and a tool that overstays its ``timeout`` is killed
with ``oxd ctl kill`` semantics (recorded as a ``kill-switch`` record) rather than by a signal
it could catch.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from oxd_client import Client  # noqa: E402

_calls = itertools.count()


@dataclass
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    #: Whether the kill switch stopped the tool (it ran past its timeout).
    killed: bool


def run_tool(
    client: Client,
    policy: str,
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    cgroup_root: str = "/sys/fs/cgroup",
    cgroup: Optional[str] = None,
) -> ToolResult:
    """Runs ``argv`` in a new cgroup confined by ``policy``; kills it through the daemon's kill
    switch after ``timeout`` seconds. The cgroup is released and removed afterwards.

    Raises :class:`PermissionError` when the policy denies executing the tool itself, and
    :class:`oxd_client.DaemonError` when the daemon refuses the policy.
    """
    path = cgroup or os.path.join(cgroup_root, f"oxd-tool-{os.getpid()}-{next(_calls)}")
    os.mkdir(path)
    try:
        client.confine(policy, cgroup=path)
        try:
            return _run_in(client, path, argv, timeout)
        finally:
            client.release(cgroup=path)
    finally:
        _remove(path)


def _run_in(client: Client, path: str, argv: Sequence[str], timeout: float) -> ToolResult:
    procs = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)

    def join() -> None:
        # In the child, before it executes the tool: the tool's own exec is decided by the
        # policy. (`preexec_fn` is not for programs with threads that fork meanwhile.)
        os.write(procs, b"0")

    try:
        tool = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=join,
        )
    finally:
        os.close(procs)
    killed = False
    try:
        out, err = tool.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        client.kill(cgroup=path)
        killed = True
        out, err = tool.communicate()
    return ToolResult(tool.returncode, out, err, killed)


def _remove(path: str) -> None:
    # A cgroup can be removed once its last process has been reaped.
    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    os.rmdir(path)


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        print(f"usage: {sys.argv[0]} POLICY -- TOOL [ARG...]", file=sys.stderr)
        return 2
    socket_path = os.environ.get("OXD_SOCKET", "/run/oxd/oxd.sock")
    result = run_tool(Client(socket_path), args[0], args[2:])
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    if result.killed:
        print("the tool ran too long: killed by the kill switch", file=sys.stderr)
    return result.returncode if result.returncode >= 0 else 128 - result.returncode


if __name__ == "__main__":
    sys.exit(main())
