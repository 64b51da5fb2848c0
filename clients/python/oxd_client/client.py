"""The calls of the oxd daemon's control API, one method each."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Literal, Optional, Union

DEFAULT_SOCKET = "/run/oxd/oxd.sock"

#: How the kill switch stops a target: ``deny-all`` (every action denied from the next one),
#: ``freeze`` (and its processes frozen) or ``kill`` (and its processes killed).
Halt = Literal["deny-all", "freeze", "kill"]

PathLike = Union[str, "os.PathLike[str]"]


class Lagged(Exception):
    """A subscriber read too slowly: this many decisions were not sent to it."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} decisions were not sent (the subscriber fell behind)")
        self.count = count


class DaemonError(Exception):
    """The daemon refused a call; the message says why (a policy error names
    ``file:line:col``)."""


@dataclass(frozen=True)
class Budget:
    """One budget of a target's policy, as the kernel counts it for the target."""

    #: The rule that has it (``network.allow[0]``).
    rule: str
    #: Actions allowed per window.
    count: int
    #: The window (``1m``, ``1h 30m``).
    per: str
    #: Actions counted in the current window (0 when none is running).
    used: int
    #: Milliseconds until the window ends and the budget refills; None when none is running.
    refills_in_ms: Optional[int] = None

    @property
    def left(self) -> int:
        """Actions left in the current window."""
        return max(self.count - self.used, 0)


@dataclass(frozen=True)
class ConnectionLimit:
    """One connection limit of a target's policy: at most ``max`` sockets that reached the rule
    open at once, ``open`` of them now."""

    #: The rule that has it (``network.allow[0]``).
    rule: str
    max: int
    open: int

    @property
    def free(self) -> int:
        """Sockets that may still open."""
        return max(self.max - self.open, 0)


@dataclass(frozen=True)
class Grant:
    """A grant: one exact action a rule requiring a grant lets the target do, ``uses`` more
    times, for ``expires_in_ms`` more milliseconds (0: expired)."""

    #: Its number, named in the audit records of the actions it decides.
    id: int
    #: What it allows: ``connect 127.0.0.1:8080/tcp``.
    action: str
    #: Uses left.
    uses: int
    expires_in_ms: int


@dataclass(frozen=True)
class Target:
    """A confined target, as ``list`` reports it."""

    cgroup: str
    cgroup_id: int
    policy: str
    sha256: str
    generation: int
    #: How the kill switch stopped it, if it did.
    halted: Optional[str] = None
    #: Its policy's budgets and what is left of each.
    budgets: List[Budget] = field(default_factory=list)
    #: Its policy's connection limits and how many sockets hold a slot of each.
    connections: List[ConnectionLimit] = field(default_factory=list)
    #: Its grants (used-up and expired ones until the daemon removes them).
    grants: List[Grant] = field(default_factory=list)

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "Target":
        return cls(
            cgroup=value["cgroup"],
            cgroup_id=value["cgroup_id"],
            policy=value["policy"],
            sha256=value["sha256"],
            generation=value["generation"],
            halted=value.get("halted"),
            budgets=[Budget(**b) for b in value.get("budgets", [])],
            connections=[ConnectionLimit(**c) for c in value.get("connections", [])],
            grants=[Grant(**g) for g in value.get("grants", [])],
        )


@dataclass(frozen=True)
class PolicyInfo:
    """A loaded policy generation."""

    name: str
    sha256: str
    generation: int
    slot: int
    targets: int


@dataclass(frozen=True)
class Status:
    """The daemon's state and counters, as ``status`` reports them."""

    pid: int
    version: str
    adopted: bool
    lsm: bool
    bpffs: str
    audit_log: str
    targets: int
    generation: int
    policies: List[PolicyInfo]
    records: int
    denied: int
    ringbuf_lost: int

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "Status":
        fields = dict(value)
        fields["policies"] = [PolicyInfo(**p) for p in value.get("policies", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in fields.items() if k in known})


def _target(cgroup: Optional[PathLike], pid: Optional[int]) -> Dict[str, Any]:
    if (cgroup is None) == (pid is None):
        raise ValueError("name one target: cgroup= or pid=")
    if cgroup is not None:
        return {"cgroup": os.fspath(cgroup)}
    return {"pid": int(pid)}  # type: ignore[arg-type]


def _policy(path: PathLike) -> Dict[str, str]:
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {"path": path, "text": text}


def _stream(s: socket.socket, reader: Any) -> Iterator[Dict[str, Any]]:
    try:
        for raw in reader:
            value = json.loads(raw)
            if "lagged" in value:
                raise Lagged(int(value["lagged"]))
            yield value["record"]
    finally:
        s.close()


class Client:
    """A client of one daemon, by its control socket.

    Every method makes one call; a refusal raises :class:`DaemonError`, and a daemon that
    cannot be reached raises :class:`ConnectionError` (or another :class:`OSError`).
    """

    def __init__(self, socket_path: PathLike = DEFAULT_SOCKET, timeout: float = 30.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.socket_path)
        except OSError as e:
            s.close()
            raise ConnectionError(
                f"cannot connect to the oxd daemon at {self.socket_path} (is `oxd daemon` "
                f"running, and are you its user?): {e}"
            ) from e
        return s

    def call(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Sends one request (a JSON object with ``op``) and returns the response object if it
        says ``ok``."""
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        with self._connect() as s:
            s.sendall(line)
            with s.makefile("rb") as reader:
                answer = reader.readline()
        if not answer:
            raise ConnectionError("the oxd daemon closed the connection without an answer")
        response = json.loads(answer)
        if not response.get("ok"):
            raise DaemonError(response.get("error") or "the daemon refused")
        return response

    def _message(self, request: Dict[str, Any]) -> str:
        return str(self.call(request).get("message", ""))

    def confine(
        self, policy: PathLike, *, cgroup: Optional[PathLike] = None, pid: Optional[int] = None
    ) -> str:
        """Confines a cgroup (and every cgroup below it), or the cgroup process ``pid`` is in,
        under the policy file ``policy``; returns the daemon's message."""
        return self._message(
            {"op": "confine", "target": _target(cgroup, pid), "policy": _policy(policy)}
        )

    def release(
        self,
        *,
        cgroup: Optional[PathLike] = None,
        pid: Optional[int] = None,
        all: bool = False,
    ) -> str:
        """Stops confining a target, or every target with ``all=True``."""
        if all:
            if cgroup is not None or pid is not None:
                raise ValueError("all=True names no target")
            return self._message({"op": "release", "target": None, "all": True})
        return self._message({"op": "release", "target": _target(cgroup, pid)})

    def replace(self, policy: PathLike) -> str:
        """Replaces the loaded policy of the same name, atomically for every target under
        it."""
        return self._message({"op": "replace", "policy": _policy(policy)})

    def halt(
        self, how: Halt, *, cgroup: Optional[PathLike] = None, pid: Optional[int] = None
    ) -> str:
        """The kill switch: every action of the target is denied from its next one on, and
        with ``freeze`` or ``kill`` its processes are frozen or killed. Recorded in the audit
        log before the answer; :meth:`resume` lifts it."""
        if how not in ("deny-all", "freeze", "kill"):
            raise ValueError(f"how must be deny-all, freeze or kill, not {how!r}")
        return self._message({"op": "halt", "target": _target(cgroup, pid), "how": how})

    def deny_all(self, *, cgroup: Optional[PathLike] = None, pid: Optional[int] = None) -> str:
        """``halt("deny-all", ...)``."""
        return self.halt("deny-all", cgroup=cgroup, pid=pid)

    def freeze(self, *, cgroup: Optional[PathLike] = None, pid: Optional[int] = None) -> str:
        """``halt("freeze", ...)``."""
        return self.halt("freeze", cgroup=cgroup, pid=pid)

    def kill(self, *, cgroup: Optional[PathLike] = None, pid: Optional[int] = None) -> str:
        """``halt("kill", ...)``."""
        return self.halt("kill", cgroup=cgroup, pid=pid)

    def resume(self, *, cgroup: Optional[PathLike] = None, pid: Optional[int] = None) -> str:
        """Lifts the kill switch: the target's policy decides again, frozen processes thaw."""
        return self._message({"op": "resume", "target": _target(cgroup, pid)})

    def grant(
        self,
        connect: str,
        *,
        protocol: Literal["tcp", "udp"] = "tcp",
        uses: int = 1,
        expires_in_ms: int = 600_000,
        cgroup: Optional[PathLike] = None,
        pid: Optional[int] = None,
    ) -> Grant:
        """Allows the target one exact action that a rule requiring a grant governs: a
        connect to (or datagram sent to) ``connect`` (``"ADDR:PORT"``, ``"[IPV6]:PORT"``),
        ``uses`` times, for ``expires_in_ms``. The kernel takes one use per action, so a repeat
        beyond them is denied. Recorded in the audit log before the answer."""
        response = self.call(
            {
                "op": "grant",
                "target": _target(cgroup, pid),
                "connect": connect,
                "protocol": protocol,
                "uses": uses,
                "expires_in_ms": expires_in_ms,
            }
        )
        return Grant(**response["grant"])

    def revoke(self, grant_id: int) -> str:
        """Withdraws a grant (its unused uses go)."""
        return self._message({"op": "revoke", "id": grant_id})

    def subscribe(
        self, only: Literal["all", "denied", "approvals"] = "all"
    ) -> Iterator[Dict[str, Any]]:
        """The decisions the daemon records, as it writes them: each an audit record (a dict,
        as in the audit log without ``seq`` and ``prev``). ``only="approvals"`` gives just the
        requests for approval: actions a rule requiring a grant denied for want of one, which
        :meth:`approve` answers. The iterator blocks until the next decision (the client's
        ``timeout`` does not apply) and ends when the daemon closes the stream. Raises
        :class:`Lagged` if this subscriber fell behind (the audit log has every record)."""
        line = json.dumps({"op": "subscribe", "only": only}, separators=(",", ":")).encode()
        s = self._connect()
        try:
            s.sendall(line + b"\n")
            reader = s.makefile("rb")
            answer = json.loads(reader.readline() or b"{}")
            if not answer.get("ok"):
                raise DaemonError(answer.get("error") or "the daemon refused")
            s.settimeout(None)
        except BaseException:
            s.close()
            raise
        # Subscribed before this returns: nothing recorded from now on is missed.
        return _stream(s, reader)

    def approve(self, request: Dict[str, Any], *, uses: int = 1, expires_in_ms: int = 600_000) -> Grant:
        """Answers a request for approval (a record from ``subscribe(only="approvals")``) with
        a grant for exactly its action, for the confined target it came from."""
        if request.get("op") not in ("connect", "sendmsg"):
            raise ValueError(f"not a request for approval: {request!r}")
        response = self.call(
            {
                "op": "grant",
                "target": {"cgroup_id": int(request["cgroup_id"])},
                "connect": request["target"],
                "protocol": request.get("protocol") or "tcp",
                "uses": uses,
                "expires_in_ms": expires_in_ms,
            }
        )
        return Grant(**response["grant"])

    def list(self) -> List[Target]:
        """The confined targets."""
        return [Target.from_json(t) for t in self.call({"op": "list"}).get("targets") or []]

    def status(self) -> Status:
        """The daemon's state and counters."""
        return Status.from_json(self.call({"op": "status"})["status"])
