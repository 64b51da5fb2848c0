"""The client against a stand-in daemon: what it sends, and how it reads the answers.

Run with ``python3 -m unittest discover -s clients/python/tests`` (stdlib only). The guest
tests (``tests/python.rs``) run ``guest_check.py`` against a real daemon.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import tempfile
import threading
import unittest
from typing import Any, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from oxd_client import Client, DaemonError, Grant, Lagged, Status, Target  # noqa: E402


class FakeDaemon:
    """A Unix socket answering each request line with the next canned response."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "oxd.sock")
        self.requests: List[Dict[str, Any]] = []
        self.responses: List[bytes] = []
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                daemon.requests.append(json.loads(line))
                self.wfile.write(daemon.responses.pop(0))

        self.server = socketserver.UnixStreamServer(self.path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, response: Any) -> None:
        raw = response if isinstance(response, bytes) else json.dumps(response).encode() + b"\n"
        self.responses.append(raw)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.daemon = FakeDaemon(self.dir.name)
        self.client = Client(self.daemon.path, timeout=5)
        self.policy = os.path.join(self.dir.name, "agent.toml")
        with open(self.policy, "w", encoding="utf-8") as f:
            f.write('name = "agent"\n[exec]\ndefault = "deny"\n')

    def tearDown(self) -> None:
        self.daemon.close()
        self.dir.cleanup()

    def test_confine_sends_the_policy_text_and_the_target(self) -> None:
        self.daemon.answer({"ok": True, "message": "confined /sys/fs/cgroup/a1"})
        said = self.client.confine(self.policy, cgroup="/sys/fs/cgroup/a1")
        self.assertEqual(said, "confined /sys/fs/cgroup/a1")
        self.assertEqual(
            self.daemon.requests,
            [
                {
                    "op": "confine",
                    "target": {"cgroup": "/sys/fs/cgroup/a1"},
                    "policy": {
                        "path": self.policy,
                        "text": 'name = "agent"\n[exec]\ndefault = "deny"\n',
                    },
                }
            ],
        )

    def test_the_kill_switch_and_resume_name_the_target(self) -> None:
        for _ in range(5):
            self.daemon.answer({"ok": True, "message": "done"})
        self.client.deny_all(cgroup="/sys/fs/cgroup/a1")
        self.client.freeze(pid=42)
        self.client.kill(cgroup="/sys/fs/cgroup/a1")
        self.client.halt("freeze", cgroup="/sys/fs/cgroup/a1")
        self.client.resume(pid=42)
        self.assertEqual(
            self.daemon.requests,
            [
                {"op": "halt", "target": {"cgroup": "/sys/fs/cgroup/a1"}, "how": "deny-all"},
                {"op": "halt", "target": {"pid": 42}, "how": "freeze"},
                {"op": "halt", "target": {"cgroup": "/sys/fs/cgroup/a1"}, "how": "kill"},
                {"op": "halt", "target": {"cgroup": "/sys/fs/cgroup/a1"}, "how": "freeze"},
                {"op": "resume", "target": {"pid": 42}},
            ],
        )

    def test_grant_and_revoke(self) -> None:
        self.daemon.answer(
            {
                "ok": True,
                "message": "grant 7: connect 127.0.0.1:8080/tcp ...",
                "grant": {"id": 7, "action": "connect 127.0.0.1:8080/tcp", "uses": 1,
                          "expires_in_ms": 600000},
            }
        )
        self.daemon.answer({"ok": True, "message": "grant 7 withdrawn"})
        granted = self.client.grant("127.0.0.1:8080", cgroup="/sys/fs/cgroup/a1")
        self.assertEqual(granted, Grant(7, "connect 127.0.0.1:8080/tcp", 1, 600000))
        self.client.revoke(granted.id)
        self.assertEqual(
            self.daemon.requests,
            [
                {
                    "op": "grant",
                    "target": {"cgroup": "/sys/fs/cgroup/a1"},
                    "connect": "127.0.0.1:8080",
                    "protocol": "tcp",
                    "uses": 1,
                    "expires_in_ms": 600000,
                },
                {"op": "revoke", "id": 7},
            ],
        )

    def test_subscribe_streams_records_and_approve_grants_exactly_the_request(self) -> None:
        request = {
            "op": "connect", "target": "127.0.0.1:8080", "protocol": "tcp", "decision": "deny",
            "reason": "the rule requires a grant, and none was given for this action",
            "cgroup_id": 7262, "pid": 90,
        }
        stream = [{"ok": True, "message": "subscribed"}, {"record": request}, {"lagged": 3}]
        self.daemon.answer(b"".join(json.dumps(v).encode() + b"\n" for v in stream))
        self.daemon.answer(
            {"ok": True, "message": "grant 4: ...",
             "grant": {"id": 4, "action": "connect 127.0.0.1:8080/tcp", "uses": 1,
                       "expires_in_ms": 600000}}
        )
        records = self.client.subscribe(only="approvals")
        first = next(records)
        self.assertEqual(first, request)
        with self.assertRaises(Lagged) as lagged:
            next(records)
        self.assertEqual(lagged.exception.count, 3)
        granted = self.client.approve(first)
        self.assertEqual(granted.id, 4)
        self.assertEqual(self.daemon.requests[0], {"op": "subscribe", "only": "approvals"})
        self.assertEqual(
            self.daemon.requests[1],
            {"op": "grant", "target": {"cgroup_id": 7262}, "connect": "127.0.0.1:8080",
             "protocol": "tcp", "uses": 1, "expires_in_ms": 600000},
        )
        with self.assertRaises(ValueError):
            self.client.approve({"op": "exec"})

    def test_a_call_names_exactly_one_target(self) -> None:
        with self.assertRaises(ValueError):
            self.client.freeze()
        with self.assertRaises(ValueError):
            self.client.freeze(cgroup="/sys/fs/cgroup/a1", pid=1)
        with self.assertRaises(ValueError):
            self.client.halt("pause", cgroup="/sys/fs/cgroup/a1")  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            self.client.release(all=True, pid=3)
        self.assertEqual(self.daemon.requests, [], "nothing was sent")

    def test_release_all_and_replace(self) -> None:
        self.daemon.answer({"ok": True, "message": "released a"})
        self.daemon.answer({"ok": True, "message": "replaced policy agent: generation 1 -> 2"})
        self.client.release(all=True)
        self.assertIn("generation 1 -> 2", self.client.replace(self.policy))
        self.assertEqual(self.daemon.requests[0], {"op": "release", "target": None, "all": True})
        self.assertEqual(self.daemon.requests[1]["op"], "replace")

    def test_a_refusal_raises_with_the_daemons_reason(self) -> None:
        self.daemon.answer({"ok": False, "error": "agent.toml:3:11: unknown action"})
        with self.assertRaises(DaemonError) as raised:
            self.client.replace(self.policy)
        self.assertEqual(str(raised.exception), "agent.toml:3:11: unknown action")

    def test_list_and_status_are_typed(self) -> None:
        self.daemon.answer(
            {
                "ok": True,
                "targets": [
                    {
                        "cgroup": "/sys/fs/cgroup/a1",
                        "cgroup_id": 7261,
                        "policy": "agent",
                        "sha256": "9f86",
                        "generation": 4,
                        "halted": "freeze",
                    },
                    {
                        "cgroup": "/sys/fs/cgroup/a2",
                        "cgroup_id": 7262,
                        "policy": "agent",
                        "sha256": "9f86",
                        "generation": 4,
                        "budgets": [
                            {"rule": "network.allow[0]", "count": 100, "per": "1m",
                             "used": 97, "refills_in_ms": 2500},
                            {"rule": "network.allow[1]", "count": 5, "per": "1h", "used": 0},
                        ],
                        "connections": [{"rule": "network.allow[1]", "max": 4, "open": 3}],
                    },
                ],
            }
        )
        self.daemon.answer(
            {
                "ok": True,
                "status": {
                    "pid": 811,
                    "version": "0.1.0",
                    "adopted": False,
                    "lsm": True,
                    "bpffs": "/sys/fs/bpf/oxd/v7",
                    "audit_log": "/var/log/oxd/audit.jsonl",
                    "targets": 2,
                    "generation": 4,
                    "policies": [
                        {"name": "agent", "sha256": "9f86", "generation": 4, "slot": 1,
                         "targets": 2}
                    ],
                    "records": 1520,
                    "denied": 12,
                    "ringbuf_lost": 0,
                    "a_field_of_a_newer_daemon": 1,
                },
            }
        )
        targets = self.client.list()
        self.assertEqual(
            targets[0],
            Target("/sys/fs/cgroup/a1", 7261, "agent", "9f86", 4, halted="freeze"),
        )
        self.assertIsNone(targets[1].halted)
        self.assertEqual(targets[0].budgets, [])
        spent, idle = targets[1].budgets
        self.assertEqual((spent.rule, spent.left, spent.refills_in_ms), ("network.allow[0]", 3, 2500))
        self.assertEqual((idle.left, idle.refills_in_ms), (5, None))
        self.assertEqual(targets[0].connections, [])
        (limit,) = targets[1].connections
        self.assertEqual((limit.rule, limit.max, limit.open, limit.free), ("network.allow[1]", 4, 3, 1))
        status = self.client.status()
        self.assertIsInstance(status, Status)
        self.assertEqual(status.policies[0].slot, 1)
        self.assertEqual(status.denied, 12)

    def test_no_daemon_is_a_connection_error(self) -> None:
        client = Client(os.path.join(self.dir.name, "none.sock"), timeout=1)
        with self.assertRaises(ConnectionError):
            client.status()

    def test_a_daemon_that_closes_without_answering_is_a_connection_error(self) -> None:
        self.daemon.answer(b"")
        with self.assertRaises(ConnectionError):
            self.client.status()


if __name__ == "__main__":
    unittest.main()
