"""The admin ``notify`` command's ``client:`` events against E-MailRelay 2.6b (issue 17, follow-up).

What it checks: the forwarding runs a ``notify`` watcher sees, as a sequence
of ``client:`` events (``forward: start: <trigger>``, ``connecting``,
``sending``, ``connected``, ``sent: <id>[: <reason>]``, ``forward: end[:
<error>|: no messages]``), for an admin ``forward`` of two messages, a
refused recipient, a refused content, a 421 greeting, a next hop that is
down, an empty spool, ``--forward-on-disconnect`` and ``--poll``; and none
for the admin ``flush`` or ``--immediate``.  Our ``network:`` events
interleave differently (our roles are processes of their own, and an idle
onward connection lingers), so only the ``client:`` ones are compared.  The
differential tests skip without ``EMAILRELAY_ORACLE_BIN``; the ``ours_``
tests check our side alone (supervised, ``--single-process``, ``--workers
forward=2`` and the JSON ``events`` stream), so a user's clone tests it too.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.diff_forwarding import write_messages
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import SIDES, Daemon, daemon_base, needs_oracle, smtp_dialogue, start
from tests.support.relay import free_port
from tests.support.sink_counter import AdminClient

pytestmark = [pytest.mark.timeout(300)]

STAMP = 1765000000
B, C = ("b@example.net",), ("c@example.net",)
MESSAGE = [
    "EHLO c",
    "MAIL FROM:<a@b.example>",
    "RCPT TO:<x@y.example>",
    "DATA",
    "Subject: s\r\n\r\nhi\r\n.",
    "QUIT",
]
NO_MESSAGES = "client: forward: end: no messages"
TWO_SENT = [
    "client: forward: start: admin",
    "client: connecting: 127.0.0.1:HOP",
    "client: sending: ID1",
    "client: connected: 127.0.0.1:HOP",
    "client: sent: ID1",
    "client: sending: ID2",
    "client: sent: ID2",
    "client: forward: end",
]


@dataclass(frozen=True)
class Scenario:
    spool: tuple[tuple[str, ...], ...] = ()  # messages (their recipients) spooled once the watcher listens
    args: tuple[str, ...] = ()
    hop: dict[str, Any] = field(default_factory=dict)  # FakeSmtp's keywords
    hop_up: bool = True
    actions: tuple[str, ...] = ("forward",)  # admin commands, "smtp" (a message) or "sleep<seconds>"
    until: str = "client: forward: end"  # wait for an event starting so ("": a fixed wait)
    idle_polls: bool = False  # --poll: how many "no messages" a side sees is timing, not behaviour


SCENARIOS = {
    "two messages": Scenario(spool=(B, B)),
    "a refused recipient": Scenario(spool=(C, B), hop={"rcpt_replies": {C[0]: "550 5.1.1 no"}}),
    "a refused content": Scenario(spool=(B, B), hop={"replies": {"final": "451 4.3.0 later"}}),
    "a 421 greeting": Scenario(spool=(B, B), hop={"replies": {"greeting": "421 busy"}}),
    "the next hop down": Scenario(spool=(B, B), hop_up=False, actions=("forward", "sleep1", "forward")),
    "nothing to send": Scenario(),
    "forward on disconnect": Scenario(args=("--forward-on-disconnect",), actions=("smtp",)),
    "poll": Scenario(
        args=("--poll", "1"), actions=("sleep1.2", "smtp"), until="client: forward: end  ", idle_polls=True
    ),
    "flush": Scenario(spool=(B, B), actions=("flush",), until=""),
    "immediate": Scenario(args=("--immediate",), actions=("smtp",), until=""),
}


class Watcher:
    """An admin session that typed ``notify`` (or ``events``): what it was sent, read as it comes."""

    def __init__(self, port: int, command: bytes = b"notify") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.sendall(command + b"\r\n")
        self.got = b""

    def read_for(self, seconds: float) -> bytes:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            self.got += chunk
        return self.got

    def wait_for(self, marker: str, seconds: float = 20.0) -> bytes:
        """Read until ``marker`` is in what came (then a moment more, for what follows it)."""
        deadline = time.monotonic() + seconds
        while marker.encode() not in self.got and time.monotonic() < deadline:
            self.read_for(0.2)
        return self.read_for(1.0)

    def close(self) -> None:
        self.sock.close()


def client_events(raw: bytes) -> list[str]:
    """The ``client:`` events of a notify stream, with message ids as ID1, ID2... (in order of first
    mention)."""
    return _named_ids([m.decode() for m in re.findall(rb"EVENT: (client: .*?)  (?=\r\n|$)", raw)])


def _named_ids(texts: list[str]) -> list[str]:
    names: dict[str, str] = {}

    def name(m: re.Match[str]) -> str:
        return names.setdefault(m.group(0), f"ID{len(names) + 1}")

    return [re.sub(r"emailrelay\.\d+\.\d+\.\d+", name, t) for t in texts]


def _collapsed(events: list[str], idle_polls: bool) -> list[str]:
    return [e for e in events if e != NO_MESSAGES] if idle_polls else events


def _act(daemon: Daemon, admin: int, action: str) -> None:
    if action == "smtp":
        assert smtp_dialogue(daemon.port, MESSAGE)[-1].startswith("221")
    elif action == "spool":  # one more message
        write_messages(daemon.spool, [list(B)], STAMP + 1)
    elif action.startswith("sleep"):
        time.sleep(float(action[5:]))
    else:
        with AdminClient(admin) as client:
            client.cmd(action, 30)


def watch(
    side: str, base: Path, name: str, scenario: Scenario, *extra: str, command: bytes = b"notify"
) -> bytes:
    """Run ``scenario`` on ``side`` with a watcher attached: everything the watcher was sent, and the
    next hop's port in it as HOP."""
    admin, hop_port = free_port(), free_port()
    hop = FakeSmtp(port=hop_port, extensions=("8BITMIME",), **scenario.hop)
    if scenario.hop_up:
        hop.start()
    try:
        args = ("--admin", str(admin), "--forward-to", f"127.0.0.1:{hop_port}", *scenario.args, *extra)
        with start(side, base, *args, name=f"{side}-{name}") as daemon:
            time.sleep(2.5)  # (ours: the admin role serves once its bus has settled)
            watcher = Watcher(admin, command)
            try:
                watcher.read_for(0.5)
                if scenario.spool:  # after the start: ours (supervised) forwards what is there at start
                    write_messages(daemon.spool, [list(r) for r in scenario.spool], STAMP)
                for action in scenario.actions:
                    _act(daemon, admin, action)
                got = watcher.wait_for(scenario.until) if scenario.until else watcher.read_for(2.0)
            finally:
                watcher.close()
    finally:
        if scenario.hop_up:
            hop.stop()
    return got.replace(f":{hop_port}".encode(), b":HOP")


@needs_oracle
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_client_events_as_upstream(tmp_path: Path, name: str) -> None:
    """The ``client:`` events a notify watcher sees are upstream's, in upstream's order."""
    base, scenario = daemon_base(tmp_path), SCENARIOS[name]
    got = {side: client_events(watch(side, base, name, scenario)) for side in SIDES}
    assert _collapsed(got["ours"], scenario.idle_polls) == _collapsed(got["upstream"], scenario.idle_polls)
    if scenario.idle_polls:  # an empty poll says so, on both sides
        assert all(NO_MESSAGES in events for events in got.values()), got
    if name == "two messages":
        assert got["upstream"] == TWO_SENT


@pytest.mark.parametrize("mode", [(), ("--single-process",)], ids=["supervised", "single-process"])
def test_ours_notify_reports_a_forwarding_run_and_not_a_flush(tmp_path: Path, mode: tuple[str, ...]) -> None:
    """Ours alone: an admin forward of two messages is one run, reported as upstream reports it;
    a flush reports nothing."""
    scenario = Scenario(spool=(B, B), actions=("forward", "sleep2.5", "spool", "flush"), until="")
    raw = watch("ours", daemon_base(tmp_path), "run", scenario, *mode)
    assert client_events(raw) == TWO_SENT
    assert raw.count(b"EVENT: network: out: start  ") == 2  # the flush did forward (a connection of its own)


@pytest.mark.parametrize("mode", [(), ("--single-process",)], ids=["supervised", "single-process"])
def test_ours_two_senders_report_well_formed_runs(tmp_path: Path, mode: tuple[str, ...]) -> None:
    """Ours alone, ``--workers forward=2``: on the JSON ``events`` stream (which has every bus event),
    each forwarding process's ``client`` events are whole runs, and each message is sent once."""
    scenario = Scenario(spool=(B, B, B), until='"forward: end"')
    raw = watch(
        "ours", daemon_base(tmp_path), "two", scenario, "--workers", "forward=2", *mode, command=b"events"
    )
    bodies = [
        json.loads(line[len("client ") :])
        for line in raw.decode().splitlines()
        if line.startswith("client {")
    ]
    runs: dict[int, list[str]] = defaultdict(list)
    for body, text in zip(bodies, _named_ids([b["text"] for b in bodies]), strict=True):
        runs[body.get("pid", 0)].append(text)  # (--single-process: no bus, no pid)
    sent = Counter(t for texts in runs.values() for t in texts if t.startswith("sent: "))
    assert len(sent) == 3 and set(sent.values()) == {1}, runs
    for texts in runs.values():
        if texts == ["forward: end: no messages"]:
            continue  # a process whose scan came after the other had sent everything
        assert texts[0] == "forward: start: admin" and texts[-1] == "forward: end", runs
        assert texts.count("forward: start: admin") == 1, runs
