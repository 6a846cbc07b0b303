"""A tour of proxy mode (``--immediate``, ``--as-proxy``) against E-MailRelay 2.6b: the gaps
tests/differential/test_proxy.py leaves (8 Dec 2026).

What it checks, for each scenario, what the sending client gets (the reply to each end of data,
and that it follows the next hop's), what the next hop receives (its commands per connection,
the messages it accepted), the message files left in the spool with their failure reasons, and
(side by side) the log lines about the forwarding:

- ``--immediate`` with a next hop that refuses the content with a 452, greets with 421, answers
  MAIL with 421 (two messages), drops the connection mid-DATA or instead of its reply to the
  dot, or is slower than ``--response-timeout``; two messages with different senders over one
  onward connection; a pipelined QUIT after the dot (the reply still waits for the next hop);
  ``--server-auth`` with ``--client-auth`` (the next hop gets ``AUTH=<client-auth name>``);
- ``--as-proxy`` with ``--server-auth``/``--client-auth``, with a client filter that rejects
  (the client has its ``250``; the message is a ``.bad`` with the filter's reason) and with a
  ``--filter`` that rewrites the content (the next hop gets the rewritten content).

Each scenario runs side by side with the oracle (``needs_oracle``) and on ours alone against
the replies upstream gave, so a clone without the oracle tests it too.

Kept different (docs/decisions.md, "Forwarding"), each shown side by side:

- ``--immediate --forward-to-some`` with one recipient refused: the message goes to the others
  on both; upstream answers the client ``452 one or more recipients rejected``, so the client
  sends it again, and the accepted recipients get it again at every retry; ours answers
  ``250 message processed`` (the refused recipient's copy is the ``.bad``, as after any
  forwarding under ``--forward-to-some``);
- a client that drops its connection right after the dot (no reply read): ours forwards the
  message as it would have; upstream leaves it in the spool, untried until a later trigger.

As upstream since this follow-up: after a client's RSET the onward connection is closed (no QUIT)
and the next message opens a new one (``test_client_rset_ends_the_onward_connection``; ours kept
using the old connection).
The 5xx/4xx refusal of a recipient without ``--forward-to-some`` (ours passes the next hop's
reply on) is test_proxy.py's.
"""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_smtp import DROP, FakeSmtp, auth_script
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, read_reply, start
from tests.support.relay import wait_until

pytestmark = pytest.mark.timeout(120)

IMMEDIATE = ("--immediate", "--forward-to", "{hop}")
PROXY = ("--as-proxy", "{hop}")
EHLO = "EHLO c.example"
PLAIN = "AUTH PLAIN " + base64.b64encode(b"\0me\0secret").decode()
CLIENT_FILTER = "#!/bin/sh\necho '<<no thanks>>'\nexit 1\n"
REWRITE = '#!/bin/sh\nsed -i "s/hello/REWRITTEN/" "$1"\nexit 0\n'
LOGGED = re.compile(r"failing envelope|deleting envelope|smtp client error|client protocol|forwarding \[")
BROKEN_PIPE = ": broken pipe"  # a next hop gone while the content is still being written: timing, either side
PAUSE = 1.0  # the next hop's delay where the client's reply must wait for it


def message(
    subject: str, sender: str = "a@b.example", rcpts: tuple[str, ...] = ("x@y.example",)
) -> list[str]:
    """One transaction's commands, the content (ending in ``\\r\\n.``) last."""
    return [
        f"MAIL FROM:<{sender}>", *[f"RCPT TO:<{r}>" for r in rcpts], "DATA",
        f"Subject: {subject}\r\n\r\nhello\r\n.",
    ]  # fmt: skip


def _script(name: str, body: str) -> Callable[[Path], list[str]]:
    def setup(home: Path) -> list[str]:
        path = home / name
        path.write_text(body)
        path.chmod(0o755)
        return [str(path)]

    return setup


def _auth(home: Path) -> list[str]:
    (home / "server.auth").write_text("server plain me secret\n")
    (home / "client.auth").write_text("client plain them pw\n")
    return ["--server-auth", str(home / "server.auth"), "--client-auth", str(home / "client.auth")]


def _client_filter(home: Path) -> list[str]:
    return ["--client-filter", *_script("cf.sh", CLIENT_FILTER)(home)]


def _rewrite(home: Path) -> list[str]:
    return ["--filter", *_script("rewrite.sh", REWRITE)(home)]


AUTH_HOP: dict[str, Any] = {
    "extensions": ("PIPELINING", "8BITMIME", "AUTH PLAIN"),
    "auth": auth_script("235 ok"),
}


@dataclass
class Scenario:
    proxy: tuple[str, ...]
    lines: list[str]  # after the greeting; "<QUIT>" or "<DROP>" before a line: see _session
    hop: dict[str, Any] = field(default_factory=dict)  # FakeSmtp's arguments
    setup: Callable[[Path], list[str]] | None = None  # more options, given the relay's directory
    options: tuple[str, ...] = ()


@dataclass
class Seen:
    replies: list[str]  # to each end of data
    waited: list[float]  # seconds each of those took
    hop: list[str]  # "<connection>: <command>" (AUTH's argument dropped)
    received: list[tuple[str, list[str], str, bool]]  # sender, recipients, MAIL parameters, rewritten
    spool: list[str]  # message file names, ids normalised
    reasons: list[tuple[str, str]]  # each .bad's Reason and ReasonCode
    log: list[str] = field(default_factory=list)


def _session(port: int, lines: list[str]) -> tuple[list[str], list[float]]:
    """Each line and its reply; a content line ending in ``\\r\\n.`` is timed. ``<QUIT>`` before
    content sends it with QUIT in the same write (pipelined); ``<DROP>`` sends it and closes
    without reading the reply. QUIT at the end (unless dropped or already sent)."""
    replies: list[str] = []
    waited: list[float] = []
    mode = ""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        reader = client.makefile("rb")
        read_reply(reader)
        for line in lines:
            if line.startswith("<"):
                mode = line
                continue
            sent = time.monotonic()
            client.sendall(line.encode() + b"\r\n" + (b"QUIT\r\n" if mode == "<QUIT>" else b""))
            if mode == "<DROP>":
                reader.close()
                return replies, waited
            reply = read_reply(reader)
            if line.endswith("\r\n."):
                replies.append(reply)
                waited.append(time.monotonic() - sent)
        if mode != "<QUIT>":
            client.sendall(b"QUIT\r\n")
        read_reply(reader)
        reader.close()
    return replies, waited


def _settled(spool: Path) -> list[str]:
    """The spool's message files once nothing is claimed, being written or half deleted (every
    content has its envelope), ids normalised."""

    def settled() -> bool:
        names = [p.name for p in spool.glob("emailrelay.*")]
        ids = {n.split(".envelope")[0] for n in names if ".envelope" in n}
        contents = {n.removesuffix(".content") for n in names if n.endswith(".content")}
        return contents <= ids and not [n for n in names if n.endswith((".busy", ".new"))]

    wait_until(settled, 10)
    return sorted(re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", p.name) for p in spool.glob("emailrelay.*"))


def _reasons(spool: Path) -> list[tuple[str, str]]:
    found = []
    for path in sorted(spool.glob("*.envelope.bad")):
        text = path.read_text()
        reason = re.search(r"^X-MailRelay-Reason: ?(.*?)\r?$", text, re.M)
        code = re.search(r"^X-MailRelay-ReasonCode: ?(.*?)\r?$", text, re.M)
        found.append((reason[1].replace(BROKEN_PIPE, "") if reason else "", code[1] if code else ""))
    return found


def _tour(side: str, base: Path, name: str, scenario: Scenario) -> Seen:
    with FakeSmtp(**scenario.hop) as hop:
        home = base / f"{side}-{name}"
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        args = [a.format(hop=hop.address) for a in scenario.proxy] + list(scenario.options)
        if scenario.setup is not None:
            args += scenario.setup(home)
        with start(side, base, *args, name=f"{side}-{name}") as daemon:
            replies, waited = _session(daemon.port, scenario.lines)
            if "--as-proxy" in scenario.proxy:  # the forwarding starts when the client has gone
                hop.wait_for(lambda: hop.connections > 0, 15)
            hop.wait_for(lambda: hop.open_connections == 0, 15)
            spool = _settled(daemon.spool)
            log = [
                x.replace(BROKEN_PIPE, "") for x in normalise_log(daemon.log(), daemon) if LOGGED.search(x)
            ]
            reasons = _reasons(daemon.spool)
    commands = [f"{n}: {'AUTH PLAIN' if c.startswith('AUTH ') else c}" for n, c in hop.commands]
    received = [(m.mail_from, m.rcpts, m.mail_params, b"REWRITTEN" in m.data) for m in hop.messages]
    return Seen(replies, waited, commands, received, spool, reasons, log)


def _hop(*commands: str, conn: int = 1) -> list[str]:
    return [f"{conn}: {c}" for c in commands]


ONE = ("MAIL FROM:<a@b.example>", "RCPT TO:<x@y.example>")
SENT = (*ONE, "DATA", ".")
BAD = ["ID.content", "ID.envelope.bad"]

# scenario -> (replies to each end of data, the next hop's commands, spool, .bad reasons, received)
SCENARIOS: dict[str, tuple[Scenario, dict[str, Any]]] = {
    "content-452": (
        Scenario(IMMEDIATE, [EHLO, *message("one")], {"replies": {"final": "452 4.3.1 full"}}),
        {"replies": ["452 4.3.1 full"], "hop": _hop("EHLO 127.0.0.1", *SENT), "spool": BAD,
         "reasons": [("4.3.1 full", "452")]},
    ),
    "greeting-421": (
        Scenario(IMMEDIATE, [EHLO, *message("one")], {"replies": {"greeting": "421 4.3.2 go away"}}),
        {"replies": ["452 forwarding failed"], "hop": [], "spool": BAD,
         "reasons": [("smtp error: unexpected response: 4.3.2 go away", "")]},
    ),
    "mail-421": (
        Scenario(IMMEDIATE, [EHLO, *message("one"), *message("two")], {"replies": {"mail": "421 4.3.2 closing"}}),
        {"replies": ["421 4.3.2 closing"] * 2,
         "hop": _hop("EHLO 127.0.0.1", ONE[0], ONE[0]), "spool": ["ID.content"] * 2 + ["ID.envelope.bad"] * 2,
         "reasons": [("4.3.2 closing", "421")] * 2},
    ),
    "drop-in-data": (
        Scenario(IMMEDIATE, [EHLO, *message("one")], {"drop_in_data": True}),
        {"replies": ["452 forwarding failed"], "hop": _hop("EHLO 127.0.0.1", *ONE, "DATA"), "spool": BAD,
         "reasons": [("peer disconnected", "")]},
    ),
    "drop-at-dot": (
        Scenario(IMMEDIATE, [EHLO, *message("one"), *message("two")], {"replies": {"final": DROP}}),
        {"replies": ["452 forwarding failed"] * 2,
         "hop": [*_hop("EHLO 127.0.0.1", *SENT), *_hop("EHLO 127.0.0.1", *SENT, conn=2)],
         "spool": ["ID.content"] * 2 + ["ID.envelope.bad"] * 2, "reasons": [("peer disconnected", "")] * 2},
    ),
    "slow": (
        Scenario(IMMEDIATE, [EHLO, *message("one")], {"delays": {"final": 2 * PAUSE}},
                 options=("--response-timeout", "1")),
        {"replies": ["452 forwarding failed"], "hop": _hop("EHLO 127.0.0.1", *SENT), "spool": BAD,
         "reasons": [("smtp error: response timeout after 1s", "")], "waited": PAUSE,
         "received": [("a@b.example", ["x@y.example"], "", False)]},  # (its late 250 counted it)
    ),
    "two-senders": (
        Scenario(IMMEDIATE, [EHLO, *message("one"), *message("two", "other@b.example")]),
        {"replies": ["250 message processed"] * 2,
         "hop": _hop("EHLO 127.0.0.1", *SENT, "MAIL FROM:<other@b.example>", *SENT[1:]), "spool": [],
         "received": [("a@b.example", ["x@y.example"], "", False), ("other@b.example", ["x@y.example"], "", False)]},
    ),
    "quit-pipelined": (
        Scenario(IMMEDIATE, [EHLO, *message("one")[:-1], "<QUIT>", message("one")[-1]], {"delays": {"final": PAUSE}}),
        {"replies": ["250 message processed"], "hop": _hop("EHLO 127.0.0.1", *SENT), "spool": [],
         "received": [("a@b.example", ["x@y.example"], "", False)], "waited": PAUSE},
    ),
    "auth": (
        Scenario(IMMEDIATE, [EHLO, PLAIN, *message("one")], AUTH_HOP, _auth),
        {"replies": ["250 message processed"],
         "hop": _hop("EHLO 127.0.0.1", "AUTH PLAIN", f"{ONE[0]} AUTH=them", *SENT[1:]), "spool": [],
         "received": [("a@b.example", ["x@y.example"], "AUTH=them", False)]},
    ),
    "proxy-auth": (
        Scenario(PROXY, [EHLO, PLAIN, *message("one")], AUTH_HOP, _auth),
        {"replies": ["250 message processed"],
         "hop": _hop("EHLO 127.0.0.1", "AUTH PLAIN", f"{ONE[0]} AUTH=them", *SENT[1:], "QUIT"), "spool": [],
         "received": [("a@b.example", ["x@y.example"], "AUTH=them", False)]},
    ),
    "proxy-client-filter": (
        Scenario(PROXY, [EHLO, *message("one")], setup=_client_filter),
        {"replies": ["250 message processed"], "hop": _hop("EHLO 127.0.0.1", "QUIT"), "spool": BAD,
         "reasons": [("no thanks", "550")]},
    ),
    "proxy-filter-rewrites": (
        Scenario(PROXY, [EHLO, *message("one")], setup=_rewrite),
        {"replies": ["250 message processed"], "hop": _hop("EHLO 127.0.0.1", *SENT, "QUIT"), "spool": [],
         "received": [("a@b.example", ["x@y.example"], "", True)]},
    ),
}  # fmt: skip


def _check(seen: Seen, expected: dict[str, Any]) -> None:
    assert seen.replies == expected["replies"], seen
    assert seen.hop == expected["hop"], seen
    assert seen.spool == expected["spool"], seen
    assert seen.reasons == expected.get("reasons", []), seen
    assert seen.received == expected.get("received", []), seen
    if "waited" in expected:  # the client's reply followed the next hop's (or its timeout)
        assert min(seen.waited) >= expected["waited"] * 0.9, seen


@needs_oracle
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_proxy_as_upstream(tmp_path: Path, name: str) -> None:
    scenario, expected = SCENARIOS[name]
    base = daemon_base(tmp_path)
    seen = {side: _tour(side, base, name, scenario) for side in SIDES}
    _check(seen["upstream"], expected)
    _check(seen["ours"], expected)
    assert seen["ours"].log == seen["upstream"].log, (seen["ours"].log, seen["upstream"].log)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_proxy_ours(tmp_path: Path, name: str) -> None:
    """Ours alone, against what E-MailRelay 2.6b did (runs without the oracle)."""
    scenario, expected = SCENARIOS[name]
    _check(_tour("ours", daemon_base(tmp_path), name, scenario), expected)


# ---- kept different -------------------------------------------------------------------------------

SOME = Scenario(
    IMMEDIATE, [EHLO, *message("one", rcpts=("x@y.example", "bad@y.example"))],
    {"rcpt_replies": {"bad@y.example": "550 5.1.1 nope"}}, options=("--forward-to-some",),
)  # fmt: skip


def _some_as_expected(seen: Seen) -> None:
    assert seen.received == [("a@b.example", ["x@y.example"], "", False)], seen
    assert seen.spool == BAD and seen.reasons == [("one or more recipients rejected", "")], seen


@needs_oracle
def test_forward_to_some_refusal_differs_on_purpose(tmp_path: Path) -> None:
    """``--immediate --forward-to-some``, one recipient refused: the message goes to the other and
    the refused one is the ``.bad``, on both; upstream tells the client ``452 one or more recipients
    rejected`` (it sends again, and the accepted recipient gets it again each time), ours ``250``."""
    base = daemon_base(tmp_path)
    seen = {side: _tour(side, base, "some", SOME) for side in SIDES}
    for side in SIDES:
        _some_as_expected(seen[side])
    assert seen["upstream"].replies == ["452 one or more recipients rejected"]
    assert seen["ours"].replies == ["250 message processed"]
    assert seen["ours"].log == seen["upstream"].log, (seen["ours"].log, seen["upstream"].log)


def test_forward_to_some_refusal_ours(tmp_path: Path) -> None:
    seen = _tour("ours", daemon_base(tmp_path), "some", SOME)
    _some_as_expected(seen)
    assert seen.replies == ["250 message processed"], seen


DROPPED = Scenario(
    IMMEDIATE, [EHLO, *message("one")[:-1], "<DROP>", message("one")[-1]], {"delays": {"final": PAUSE}}
)


@needs_oracle
def test_client_gone_after_the_dot_differs_on_purpose(tmp_path: Path) -> None:
    """The client closes its connection right after the dot: ours forwards the message as it would
    have (it was stored); upstream leaves it in the spool, untried until a later trigger."""
    base = daemon_base(tmp_path)
    seen = {side: _tour(side, base, "dropped", DROPPED) for side in SIDES}
    assert seen["upstream"].hop == [] and seen["upstream"].spool == ["ID.content", "ID.envelope"]
    assert seen["ours"].hop == _hop("EHLO 127.0.0.1", *SENT) and seen["ours"].spool == []


def test_client_gone_after_the_dot_ours(tmp_path: Path) -> None:
    seen = _tour("ours", daemon_base(tmp_path), "dropped", DROPPED)
    assert seen.received == [("a@b.example", ["x@y.example"], "", False)] and seen.spool == [], seen


# ---- a client's RSET ends the onward connection ----------------------------------------------------


RSET = Scenario(IMMEDIATE, [EHLO, *message("one"), "RSET", *message("two")])
TWO_CONNECTIONS = [*_hop("EHLO 127.0.0.1", *SENT), *_hop("EHLO 127.0.0.1", *SENT, conn=2)]


@needs_oracle
def test_client_rset_ends_the_onward_connection(tmp_path: Path) -> None:
    """After a client's RSET upstream closes the onward connection at once (no QUIT) and the next
    message opens a new one (EHLO again)."""
    base = daemon_base(tmp_path)
    seen = {side: _tour(side, base, "rset", RSET) for side in SIDES}
    assert seen["upstream"].hop == TWO_CONNECTIONS, seen["upstream"]
    assert seen["ours"].hop == TWO_CONNECTIONS, seen["ours"]


def test_client_rset_ends_the_onward_connection_ours(tmp_path: Path) -> None:
    """Ours alone: what upstream does after a client's RSET (above)."""
    seen = _tour("ours", daemon_base(tmp_path), "rset", RSET)
    assert seen.hop == TWO_CONNECTIONS, seen
