"""Small server differences of issue 17 against E-MailRelay 2.6b, each compared on both sides.

What it checks: source routes in ``MAIL FROM``/``RCPT TO`` (``<@a,@b:x@y>``
taken as ``x@y``, the route unchecked; ``<@example.com>`` and ``<@a:>``
refused as ``invalid source route in mailbox name``); ``--interface fd#N``
with a descriptor that is closed or not a socket (exit 1, ``socket error:
no bound address on fd N``); ``--interface`` naming an interface that does
not exist (a deliberate difference: upstream serves on every address, ours
refuses to start).  Each scenario runs
our relay and the oracle (``EMAILRELAY_ORACLE_BIN``; skipped without it)
with the same client and compares the replies, the stored envelopes and
the log; where we differ on purpose the test asserts both sides and names
the docs/decisions.md entry.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.diff_smtp_server import assert_same_replies, both_dialogues
from tests.support.oracle import (
    SIDES,
    daemon_base,
    needs_oracle,
    normalise_log,
    program,
    smtp_dialogue,
    spool_dir,
    start,
)

pytestmark = [needs_oracle, pytest.mark.timeout(180)]

SOURCE_ROUTES = [
    ["EHLO h", "MAIL FROM:<@example.com>", "MAIL FROM:<@a:>", "MAIL FROM:<@a,b:s@t>",
     "RCPT TO:<@example.com>", "RCPT TO:<@a,@b:x@y>", "RCPT TO:<@a,@b:>", "RCPT TO:<@>",
     "RCPT TO:<@a,@b>", "RCPT TO:<@:u@v>", "RCPT TO:<@a b;c:w@z> SIZE=1", "RCPT TO:<@a:@b:x@y>",
     "RCPT TO:<@a,@b:x@y", "DATA", "x\r\n.", "QUIT"],
]  # fmt: skip


def test_source_routes_as_upstream(tmp_path: Path) -> None:
    """A route is whatever comes before the first ":" and is dropped; none, or nothing after it,
    is ``553 mailbox name not allowed: invalid source route in mailbox name`` for MAIL and
    ``550 invalid source route in mailbox name`` for RCPT; a second route after the first is an
    invalid character.  Replies, stored envelope and log are compared."""
    got = both_dialogues([], SOURCE_ROUTES, daemon_base(tmp_path))
    assert_same_replies(got, SOURCE_ROUTES)
    assert got["ours"][1] == got["upstream"][1] and len(got["ours"][1]) == 1
    assert got["ours"][2] == got["upstream"][2]
    replies = got["ours"][0][0]
    assert replies[2:5] == ["553 mailbox name not allowed: invalid source route in mailbox name"] * 2 + [
        "250 sender <s@t> OK"
    ]
    assert replies[5] == replies[7] == replies[8] == replies[9] == "550 invalid source route in mailbox name"
    assert replies[12] == "550 invalid character in mailbox name"
    envelope = got["ours"][1][0]
    for address in (b"x@y", b"u@v", b"w@z"):
        assert b"X-MailRelay-To-Remote: " + address + b"\r\n" in envelope
    assert b"X-MailRelay-From: s@t\r\n" in envelope


@pytest.mark.parametrize("kind", ["closed", "file", "pipe"])
def test_interface_fd_without_a_socket_as_upstream(tmp_path: Path, kind: str) -> None:
    """``--interface fd#N`` where descriptor N is closed (not passed), a directory opened for
    reading or a pipe: both exit 1 with ``emailrelay: error: socket error: no bound address on fd
    N`` on stderr and nothing else."""
    base = daemon_base(tmp_path)
    results = {}
    for side in SIDES:
        spool = spool_dir(base / side)
        opened = (
            [os.open(spool, os.O_RDONLY)] if kind == "file" else list(os.pipe()) if kind == "pipe" else []
        )
        fd = opened[0] if opened else 9  # (the child gets no descriptor but those passed)
        try:
            got = subprocess.run(
                [program(side), "--no-daemon", "--log", "--no-syslog", "--spool-dir", str(spool),
                 "--interface", f"fd#{fd}", "--port", "25"],
                pass_fds=opened[:1], capture_output=True, timeout=30, check=False,
            )  # fmt: skip
        finally:
            for each in opened:
                os.close(each)
        results[side] = (got.returncode, got.stdout, got.stderr.replace(f"fd {fd}\n".encode(), b"fd N\n"))
    assert results["ours"] == results["upstream"]
    assert results["ours"] == (1, b"", b"emailrelay: error: socket error: no bound address on fd N\n")


def test_unknown_interface_name_refused_where_upstream_serves_everywhere(tmp_path: Path) -> None:
    """``--interface nosuchif0``: upstream warns ``no addresses bound to named network interface
    "nosuchif0"`` and serves on the "any" addresses (0.0.0.0 and ::), so an operator who meant to
    listen on one interface exposes the port on all of them; ours exits 1 with one line and
    listens nowhere (docs/decisions.md, "Networking": an unknown interface name)."""
    base = daemon_base(tmp_path)
    with start("upstream", base, "--interface", "nosuchif0") as theirs:
        assert smtp_dialogue(theirs.port, ["QUIT"])[-1] == "221 OK"
        log = normalise_log(theirs.log(), ports=[theirs.port])
    assert log[:3] == [
        'emailrelay: warning: no addresses bound to named network interface "nosuchif0"',
        "emailrelay: info: smtp server on 0.0.0.0:PORT",
        "emailrelay: info: smtp server on ::.PORT",
    ]
    ours = start("ours", base, "--interface", "nosuchif0", wait=False)
    with ours:
        assert ours.proc.wait(timeout=30) == 1
    assert normalise_log(ours.log()) == ["emailrelay: error: invalid interface name or address: nosuchif0"]
