"""The POP3 server against E-MailRelay 2.6b, reply by reply (issue 17).

What it checks: the same POP sessions against both relays (root, default
``--user daemon``, ours supervised, ``--pop --pop-auth`` with a ``server
plain`` secret) over a spool of two submitted messages: CAPA, USER/PASS
(right, wrong, missing), APOP, AUTH (list, unknown mechanism, PLAIN
cancelled, LOGIN), STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP, STLS
without TLS, unknown commands and commands in the wrong state; the replies
are compared byte for byte (the greeting's timestamp and the ids
normalised), then what is left in the spool; and the log lines of successful
and failed USER/PASS, APOP and AUTH logins. Not exercised: more than ten
errors in a row, after which ours closes the session (docs/decisions.md,
"Authentication, TLS, POP").
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import re
import socket
from pathlib import Path

import pytest

from tests.support.diff_guide import readable_file
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, run, start
from tests.support.pop3 import read_reply as _read
from tests.support.relay import free_port, wait_until

pytestmark = [needs_oracle, pytest.mark.timeout(120)]

MULTI = ("CAPA", "LIST", "UIDL", "TOP", "RETR")
SESSIONS = [
    ["CAPA", "STAT", "USER", "USER me", "PASS wrong", "USER me", "PASS secret", "STAT", "LIST", "LIST 1",
     "LIST 9", "LIST x", "UIDL", "UIDL 2", "UIDL 9", "TOP 1 0", "TOP 9 0", "TOP 1", "RETR 1", "RETR 9",
     "DELE 1", "DELE 1", "DELE", "LIST", "RSET", "STAT", "NOOP", "bogus", "USER me", "APOP me x", "STLS",
     "CAPA", "DELE 2", "QUIT"],
    ["PASS secret", "PASS", "APOP me 0123", "AUTH FOO", "STLS", "LIST", "AUTH", "AUTH PLAIN", "*",
     "AUTH LOGIN", "bWU=", "c2VjcmV0", "STAT", "NOOP x", "QUIT x"],
    ["USER me", "PASS wrong", "PASS secret", "STAT", "QUIT"],  # the USER holds (ours forgot it: a probe)
]  # fmt: skip
_ID = re.compile(rb"emailrelay\.\d+\.\d+\.\d+")
_STAMP = re.compile(rb"<\d+\.\d+@[^>]+>")
POP_LOG = re.compile(r"pop |rx<<|tx>>|authentication")


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
    # (one file for both: the log names it)
    secrets = readable_file(base / "secrets", "server plain me secret\n")
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
    mechanism list with a "[2 lines]" in the middle, and the last session's close line may come
    after the log was read."""
    drop = re.compile(r"failed authentication .*(apop|authentication cancelled)|\[2 lines\]"
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
    assert "emailrelay: info: pop authentication of me connected from 127.0.0.1:N" in ours_log  # (AUTH LOGIN)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


AUTH_SESSIONS = [  # "APOP" is sent with the right digest for the greeting's timestamp
    ["AUTH PLAIN " + _b64("other\0me\0secret"), "STAT", "QUIT"],
    ["AUTH PLAIN " + _b64("\0me\0wrong"), "AUTH LOGIN", _b64("me"), _b64("secret"), "QUIT"],
    ["USER me", "PASS wrong", "USER me", "PASS secret", "QUIT"],
    ["APOP", "QUIT"],
]


def test_pop_authentication_log_as_upstream(tmp_path: Path) -> None:
    """The lines logged for a successful and a failed USER/PASS, APOP and AUTH (with an authzid,
    which is ignored): upstream's words, and "pop authentication of <user> connected from <peer>"
    after a successful AUTH only."""
    base = daemon_base(tmp_path)
    secrets = readable_file(base / "secrets", "server plain me secret\n")
    got = {}
    for side in SIDES:
        pop_port = free_port()
        with start(
            side, base, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets), name=side
        ) as d:
            replies = []
            for commands in AUTH_SESSIONS:
                with socket.create_connection(("127.0.0.1", pop_port), timeout=15) as sock:
                    greeting = _read(sock, False)
                    stamp = _STAMP.search(greeting)
                    assert stamp, greeting
                    for command in commands:
                        if command == "APOP":
                            command = "APOP me " + hashlib.md5(stamp[0] + b"secret").hexdigest()
                        sock.sendall(command.encode() + b"\r\n")
                        replies.append(_read(sock, False))
            wait_until(lambda d=d: d.log().count("pop connection closed") >= len(AUTH_SESSIONS), 10)
            log = [
                line
                for line in normalise_log(d.log(), d, ports=[pop_port])
                if "authentication" in line and not re.search(r"secrets from|rx<<|tx>>", line)
            ]
        got[side] = (replies, log)
    assert got["ours"] == got["upstream"]
    replies, log = got["ours"]
    assert replies.count(b"+OK\r\n") == 4 and replies.count(b"-ERR\r\n") == 2

    def line(level: str, outcome: str, mechanism: str) -> str:
        return (f"emailrelay: {level}: {outcome} authentication of remote client using mechanism [{mechanism}] "
                "and plaintext secret for [me] from line 1")  # fmt: skip

    connected = "emailrelay: info: pop authentication of me connected from 127.0.0.1:N"
    assert log == [
        line("info", "successful", "plain"), connected,  # AUTH PLAIN, authzid "other" ignored
        line("warning", "failed", "plain"), line("info", "successful", "login"), connected,
        line("warning", "failed", "plain"), line("info", "successful", "plain"),  # USER/PASS
        line("info", "successful", "apop"),
    ]  # fmt: skip
