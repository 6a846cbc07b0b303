"""Command-line options against E-MailRelay 2.6b: how the relay ends, what it binds, what it says.

What it checks (issue 17): both programs, started as an operator does
(tests/support/oracle.py: as root, ``--user daemon``, ``--no-daemon
--pid-file``): stopped with SIGTERM, the status a shell or an init system
sees (upstream exits 143, 128 + SIGTERM) and that the pid file is gone;
the ``server on`` lines for each ``--interface`` form; with ``--domain``
and ``--anonymous``, the replies of a session and the spool files it leaves,
the ``Received:`` line byte for byte. Skipped without ``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.support.oracle import (
    SIDES,
    daemon_base,
    needs_oracle,
    normalise_log,
    normalise_spool,
    smtp_dialogue,
    start,
)
from tests.support.relay import free_port, wait_until

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


@pytest.mark.parametrize("mode", [(), ("--single-process",)], ids=["supervised", "single-process"])
def test_sigterm_ends_the_relay_as_upstreams_does(tmp_path: Path, mode: tuple[str, ...]) -> None:
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        daemon = start(side, base, *(mode if side == "ours" else ()))
        daemon.pid_from_file()  # serving: the pid file is written
        got[side] = (daemon.stop(), daemon.pid_file.exists())
    assert got["ours"] == got["upstream"] == (128 + signal.SIGTERM, False)


# ---- --interface and the "server on" lines ---------------------------------------------------------


@pytest.mark.parametrize(
    "interface",
    [(), ("127.0.0.1",), ("::1",), ("127.0.0.1,::1",), ("127.0.0.1", "::1"), ("smtp=127.0.0.1,admin=::1",)],
    ids=["any", "ipv4", "ipv6", "list", "twice", "per-service"],
)
def test_server_on_lines_as_upstream(tmp_path: Path, interface: tuple[str, ...]) -> None:
    """``--interface`` (none, an address, a list, repeated, per service) binds the same addresses and
    logs the same ``smtp server on``/``admin server on`` lines (IPv6 as ``::1.port``)."""
    base = daemon_base(tmp_path)
    got, logs = {}, {}
    for side in SIDES:
        admin = free_port()  # one for each side: the ports need not be free twice (seen once in CI)
        args = [x for a in interface for x in ("--interface", a)] + ["--admin", str(admin)]
        daemon = start(side, base, *args, wait=False)
        try:
            assert wait_until(lambda d=daemon: "admin server on" in d.log() or d.proc.poll() is not None, 30)
        finally:
            daemon.stop()
        logs[side] = daemon.log()
        got[side] = [x for x in normalise_log(logs[side], ports=[daemon.port, admin]) if " server on " in x]
    assert got["ours"] == got["upstream"], logs
    assert got["ours"] and all(x.startswith("emailrelay: info: ") for x in got["ours"])


# ---- --domain, --anonymous: the greeting, EHLO, VRFY and the Received line ---------------------------

_GREETING_VERSION = re.compile(r"-- E-MailRelay V2\.6b? --")


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--domain", "relay.example.com"),
        ("--anonymous",),
        ("--anonymous=server",),
        ("--anonymous=content",),
        ("--anonymous=vrfy",),
        ("--domain", "d.example", "--anonymous=server,content"),
    ],
    ids=["default", "domain", "anonymous", "server", "content", "vrfy", "domain-server-content"],
)
def test_domain_and_anonymous_as_upstream(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The replies of one session and the spool files it leaves, the ``Received:`` line byte for byte
    (its date aside); the greeting's version is ours (decisions.md, "--version")."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        daemon = start(side, base, "--interface", "127.0.0.1", *args)
        try:
            replies = smtp_dialogue(
                daemon.port,
                ["EHLO client.example", "MAIL FROM:<a@b.c>", "RCPT TO:<x@y.z>", "DATA",
                 "Subject: hi\r\n\r\nbody\r\n.", "VRFY x@y.z", "QUIT"],
            )  # fmt: skip
            assert wait_until(lambda d=daemon: any(p.suffix == ".envelope" for p in d.spool.iterdir()), 10)
        finally:
            daemon.stop()
        got[side] = (
            [_GREETING_VERSION.sub("-- VERSION --", r) for r in replies],
            normalise_spool(daemon.spool),
        )
    assert got["ours"] == got["upstream"]
    assert got["ours"][1]["emailrelay.ID.content"].endswith(b"Subject: hi\r\n\r\nbody\r\n")
