"""The forwarding client's differential harness: hand-written spools, ``--as-client`` per side.

What it is for: tests/differential/ modules that compare our ``emailrelay --as-client`` with
E-MailRelay 2.6b's (test_forwarding.py, test_forwarding_more.py, test_routing_connections.py,
test_guide_part1_client.py, test_guide_part2*.py, test_more_ifwd.py) write the same envelopes
and contents by hand into a spool for each side (:func:`write_messages`), run each side's client
against a fresh scripted next hop (:func:`as_client`, :func:`both`) and compare what a user sees
(:func:`same`: exit code, log lines, spool files, what the next hop received).  Also the daemon
helpers of the forwarding-trigger tests (:func:`store`, :func:`trigger_lines`) and a STARTTLS
next hop factory (:func:`tls_hop`).  The ``certs`` fixture is in tests/differential/conftest.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.oracle import (
    SIDES,
    daemon_base,
    daemon_group,
    normalise_log,
    program,
    smtp_dialogue,
    spool_dir,
)

B, C, D = "b@example.net", "c@example.net", "d@example.net"
ENVELOPE = (
    "X-MailRelay-Format: #2821.8\r\nX-MailRelay-Content: 7bit\r\nX-MailRelay-From: a@example.com\r\n"
    "X-MailRelay-ToCount: {count}\r\n{to}X-MailRelay-Authentication: \r\nX-MailRelay-Client: 127.0.0.1\r\n"
    "X-MailRelay-ClientCertificate: \r\nX-MailRelay-MailFromAuthIn: \r\nX-MailRelay-MailFromAuthOut: \r\n"
    "X-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\nX-MailRelay-ClientAccountSelector: \r\n"
    "X-MailRelay-Utf8MailboxNames: 0\r\nX-MailRelay-End: 1\r\n"
)
NO_PIPELINING = ("8BITMIME",)


def write_messages(spool: Path, messages: list[list[str]], stamp: int) -> list[str]:
    """The messages (their recipients) as upstream's files, group daemon 0660; their names."""
    names = []
    for i, rcpts in enumerate(messages, 1):
        name = f"emailrelay.4242.{stamp}.{i}"
        to = "".join(f"X-MailRelay-To-Remote: {r}\r\n" for r in rcpts)
        (spool / f"{name}.envelope").write_bytes(ENVELOPE.format(count=len(rcpts), to=to).encode())
        (spool / f"{name}.content").write_bytes(
            f"Subject: test {i}\r\nMessage-ID: <m{i}@example.com>\r\n\r\nhello {i}\r\n".encode()
        )
        names.append(name)
    for path in spool.iterdir():
        daemon_group(path, 0o660)
    return names


@dataclass
class Run:
    """What one side's ``--as-client`` run left: exit code, normalised log, spool, next hop's view."""

    rc: int
    log: list[str]
    spool: dict[str, bytes]  # file name -> bytes (our dot-file notes left out)
    commands: list[str]  # what the next hop received, a trailing QUIT left out (upstream may not wait)
    messages: list[bytes]
    auth: list[list[str]]


def _files(spool: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(spool.iterdir()) if not p.name.startswith(".")}


def _commands(hop: Any) -> list[str]:
    raw = [c[-1] for c in hop.commands if isinstance(c[-1], str) and c[-1].isprintable()]
    return raw[:-1] if raw and raw[-1] == "QUIT" else raw


def as_client(
    side: str,
    base: Path,
    hop: Any,
    messages: list[list[str]],
    *args: str,
    stamp: int,
    prep: Callable[[Path], None] | None = None,
) -> Run:
    """Write ``messages`` into ``<base>/<side>/spool``, run ``side``'s ``--as-client`` against ``hop``
    (a next hop object, or an address string for none) with ``args``, and collect the :class:`Run`."""
    home = base / side
    spool = spool_dir(home / "spool")
    write_messages(spool, messages, stamp)
    if prep is not None:
        prep(spool)
    address = hop if isinstance(hop, str) else f"127.0.0.1:{hop.port}"
    argv = [
        program(side),
        "--as-client",
        address,
        "--spool-dir",
        str(spool),
        "--log-time",
        "--verbose",
        *args,
    ]
    done = subprocess.run(
        argv, capture_output=True, timeout=90, cwd=home, stdin=subprocess.DEVNULL, check=False
    )
    ports = [] if isinstance(hop, str) else [hop.port]
    log = normalise_log((done.stdout + done.stderr).decode(errors="replace"), ports=ports)
    if isinstance(hop, str):
        return Run(done.returncode, log, _files(spool), [], [], [])
    messages_got = [m.data for m in getattr(hop, "messages", [])] or [
        d.data for d in getattr(hop, "deliveries", [])
    ]
    return Run(
        done.returncode, log, _files(spool), _commands(hop), messages_got, getattr(hop, "auth_exchanges", [])
    )


def both(
    tmp_path: Path,
    make_hop: Callable[[], Any],
    messages: list[list[str]],
    *args: str,
    prep: Callable[[Path], None] | None = None,
) -> dict[str, Run]:
    """The same scenario for both sides, each with a fresh next hop."""
    base = daemon_base(tmp_path)
    stamp = int(time.time())
    runs = {}
    for side in SIDES:
        hop = make_hop()
        if isinstance(hop, str):
            runs[side] = as_client(side, base, hop, messages, *args, stamp=stamp, prep=prep)
            continue
        with hop:
            runs[side] = as_client(side, base, hop, messages, *args, stamp=stamp, prep=prep)
    return runs


def same(runs: dict[str, Run]) -> Run:
    """Assert both runs alike in everything a user sees; our run."""
    ours, upstream = runs["ours"], runs["upstream"]
    assert ours.log == upstream.log, "\n".join(["ours:", *ours.log, "upstream:", *upstream.log])
    assert ours.rc == upstream.rc
    assert ours.spool == upstream.spool
    assert ours.commands == upstream.commands
    assert ours.messages == upstream.messages
    assert ours.auth == upstream.auth
    return ours


def reason_lines(envelope: bytes) -> list[bytes]:
    """The lines after an envelope's ``X-MailRelay-End``: its Reason and ReasonCode."""
    return envelope.split(b"X-MailRelay-End: 1\r\n")[1].split(b"\r\n")[:-1]


def tls_hop(**kw: Any) -> Callable[[], Any]:
    """A factory of STARTTLS/implicit-TLS next hops (tests/support/tls_server.py), no TLS or AUTH required."""
    from tests.support.tls_server import TlsSmtpServer

    return lambda: TlsSmtpServer(**{"require_tls": False, "require_auth": False, **kw})


def trigger_lines(log: str, ports: list[int]) -> list[str]:
    """The normalised log lines about forwarding triggers, connections and message files."""
    keep = ("forwarding", "smtp connection to", "deleting", "failing envelope")
    return [line for line in normalise_log(log, ports=ports) if any(k in line for k in keep)]


def store(port: int) -> None:
    """Store one message for :data:`B` in the relay at ``port`` over SMTP."""
    smtp_dialogue(
        port,
        [
            "EHLO c.example",
            "MAIL FROM:<a@example.com>",
            f"RCPT TO:<{B}>",
            "DATA",
            "Subject: s\r\n\r\nbody\r\n.",
            "QUIT",
        ],
    )
