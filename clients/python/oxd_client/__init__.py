"""Client for the oxd daemon's control API (``oxd/docs/control-api.md``).

The daemon listens on a Unix stream socket (``/run/oxd/oxd.sock`` unless started with
``--socket``) and answers only peers with its own uid (root, normally). Each call is one
connection: one JSON request line, one JSON response line.

>>> from oxd_client import Client
>>> oxd = Client()
>>> oxd.confine("agent.toml", cgroup="/sys/fs/cgroup/agents/a1")
>>> oxd.freeze(cgroup="/sys/fs/cgroup/agents/a1")   # the kill switch
>>> oxd.resume(cgroup="/sys/fs/cgroup/agents/a1")
"""

from .client import (
    DEFAULT_SOCKET,
    Budget,
    Client,
    ConnectionLimit,
    DaemonError,
    Grant,
    Halt,
    Lagged,
    PolicyInfo,
    Status,
    Target,
)

__all__ = [
    "DEFAULT_SOCKET",
    "Budget",
    "Client",
    "ConnectionLimit",
    "DaemonError",
    "Grant",
    "Halt",
    "Lagged",
    "PolicyInfo",
    "Status",
    "Target",
]
