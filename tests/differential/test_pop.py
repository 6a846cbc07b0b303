"""The POP3 server against E-MailRelay 2.6b, reply by reply (issue 17).

What it checks: the same POP sessions against both relays (root, default
``--user daemon``, ours supervised, ``--pop --pop-auth`` with a ``server
plain`` secret) over a spool of two submitted messages: CAPA, USER/PASS
(right, wrong, missing), APOP, AUTH (list, unknown mechanism, PLAIN
cancelled, LOGIN), STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP, STLS
without TLS, unknown commands and commands in the wrong state; the replies
are compared byte for byte (the greeting's timestamp and the ids
normalised), then what is left in the spool. Not exercised: more than ten
errors in a row, after which ours closes the session (docs/decisions.md,
"Authentication, TLS, POP").
"""

from __future__ import annotations

import grp
import os
import re
import socket
from pathlib import Path

import pytest

from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, run, start
from tests.support.relay import free_port

pytestmark = [needs_oracle, pytest.mark.timeout(120)]

MULTI = ("CAPA", "LIST", "UIDL", "TOP", "RETR")
SESSIONS = [
    ["CAPA", "STAT", "USER", "USER me", "PASS wrong", "USER me", "PASS secret", "STAT", "LIST", "LIST 1",
     "LIST 9", "LIST x", "UIDL", "UIDL 2", "UIDL 9", "TOP 1 0", "TOP 9 0", "TOP 1", "RETR 1", "RETR 9",
     "DELE 1", "DELE 1", "DELE", "LIST", "RSET", "STAT", "NOOP", "bogus", "USER me", "APOP me x", "STLS",
     "CAPA", "DELE 2", "QUIT"],
    ["PASS secret", "PASS", "APOP me 0123", "AUTH FOO", "STLS", "LIST", "AUTH", "AUTH PLAIN", "*",
     "AUTH LOGIN", "bWU=", "c2VjcmV0", "STAT", "NOOP x", "QUIT x"],
]  # fmt: skip
_ID = re.compile(rb"emailrelay\.\d+\.\d+\.\d+")
_STAMP = re.compile(rb"<\d+\.\d+@[^>]+>")
POP_LOG = re.compile(r"pop |rx<<|tx>>|authentication")


def _read(sock: socket.socket, multi: bool) -> bytes:
    data = b""
    while not (
        data.endswith(b"\r\n.\r\n") or (data.endswith(b"\r\n") and (not multi or not data.startswith(b"+OK")))
    ):
        chunk = sock.recv(65536)
        if not chunk:
            return data + b"<EOF>"
        data += chunk
    return data


def _session(port: int, commands: list[str]) -> list[tuple[str, bytes]]:
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        out.append(("<greeting>", _read(sock, False)))
        for command in commands:
            verb = command.split()[0].upper()
            multi = verb in MULTI and not (verb in ("LIST", "UIDL") and len(command.split()) > 1)
            multi = multi or command.upper() == "AUTH"
            sock.sendall(command.encode() + b"\r\n")
            out.append((command, _STAMP.sub(b"<STAMP>", _ID.sub(b"ID", _read(sock, multi)))))
    return [(c, _STAMP.sub(b"<STAMP>", r)) for c, r in out]


def _pop(side: str, base: Path) -> tuple[list[tuple[str, bytes]], list[str], list[str]]:
    pop_port = free_port()
    secrets = base / "secrets"  # (one file for both: the log names it)
    secrets.write_text("server plain me secret\n")
    secrets.chmod(0o644)
    spool = base / side / "spool"
    spool.mkdir(parents=True)
    for subject in ("one", "two"):
        r = run(side, "emailrelay-submit", "--spool-dir", str(spool), "--from", "a@b.example", "x@y.example",
                input=f"Subject: {subject}\r\n\r\nhello\r\n".encode())  # fmt: skip
        assert r.returncode == 0, r.stderr
    for path in spool.iterdir():  # (upstream's submit is not set-group-id here: as a packaged one gives)
        os.chown(path, 0, grp.getgrnam("daemon").gr_gid)
        path.chmod(0o660)
    replies = []
    with start(side, base, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets)) as daemon:
        for commands in SESSIONS:
            replies += _session(pop_port, commands)
        left = sorted(_ID.sub(b"ID", p.name.encode()).decode() for p in daemon.spool.glob("emailrelay.*"))
        log = [
            re.sub(r"<\d+\.\d+@[^>]+>", "<STAMP>", line)
            for line in normalise_log(daemon.log(), daemon, ports=[pop_port])
            if POP_LOG.search(line) and "Service ready" not in line  # (not the smtp probe's greeting)
        ]
    return replies, left, log


def _comparable(log: list[str], side: str) -> list[str]:
    """The log lines both give alike. Known differences left (issue 17): upstream logs no warning for
    a failed APOP or a cancelled AUTH (ours does: failed logins stay visible), traces the AUTH
    mechanism list with a "[2 lines]" in the middle, logs "pop authentication of <user> connected
    from <peer>" after AUTH, and the last session's close line may come after the log was read."""
    drop = re.compile(r"failed authentication .*(apop|authentication cancelled)|\[2 lines\]|pop authentication of "
                      r"|pop connection closed|tx>>: \"(CRAM-MD5|PLAIN)\"")  # fmt: skip
    return [line for line in log if not drop.search(line)]


def test_pop_replies_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    got = {side: _pop(side, base) for side in SIDES}
    (ours, ours_left, ours_log), (upstream, up_left, up_log) = got["ours"], got["upstream"]
    for mine, theirs in zip(ours, upstream, strict=True):
        assert mine == theirs
    assert ours_left == up_left == ["ID.content", "ID.envelope"]  # the first session deleted two, RSET one
    assert _comparable(ours_log, "ours") == _comparable(up_log, "upstream")
