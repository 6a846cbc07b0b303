"""Hostile POP command lines against E-MailRelay 2.6b, a second follow-up of a probe (7 Dec 2026).

What it checks, side by side with the oracle (``needs_oracle``) and on ours alone (an in-process
PopService, ``tests/support/pop3.py``) so that a clone without the oracle tests it too:

- octets that are not UTF-8 in a command line (``USER \\xff\\xfe``, ``NOOP \\xe9``, ``APOP
  \\xff\\xfe ...``) are echoed (``+OK user: \\xff\\xfe``) and logged (``rx<<:``, ``tx>>:``, the
  failed-login warning) as they came; ours read them as latin-1 and wrote them as UTF-8;
- an empty command line is ``-ERR`` and traced as ``rx<<: ""`` (ours traced nothing);
- USER takes the first word: ``USER a b`` is ``a`` (``+OK user: a``, and PASS checks ``a``); a
  tab or a CR ends the word too (ours took the rest of the line, ``a b``);
- pipelined commands (one packet): the same replies, and each reply is logged before the next
  command's ``rx<<:`` (ours traced the command after a login before the login's ``+OK``);
- a NUL (``\\0``), lower-case verbs and blank lines, as upstream (these matched already).

Kept different (docs/decisions.md, "POP differences a probe found and we keep") and left out of
the comparison: a bare LF ends a command line (upstream waits for CR LF); a line is at most 255
octets (``-ERR line too long``; upstream takes any length); a tab between the verb and its
argument is ``-ERR`` (``USER\\tme``); PASS takes the rest of the line; failed logins are delayed.
A CR inside a line is traced ``\\r`` as upstream writes it (ours wrote ``\\x0d``).
Left: a name that is not UTF-8 and
logs in (secrets id ``+FF``) is named as the secrets file reads it (UTF-8, else latin-1) in the
``successful authentication`` line and the ``--pop-by-name`` directory, where upstream uses the
octets (ours checks here only that it logs in).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.differential.test_pop_followup import KEPT, PLAIN_SECRETS, POP_LOG, _connect, _message
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, start
from tests.support.pop3 import PopHarness, pop_harness
from tests.support.pop3 import read_reply as _read
from tests.support.relay import free_port, wait_until

pytestmark = pytest.mark.timeout(120)

_STAMP = re.compile(rb"<\d+\.\d+@[^>]+>")
# an APOP that fails (a name that is not UTF-8) and a USER that does: one failed login each
NOT_UTF8 = [
    b"USER \xff\xfe",
    b"NOOP \xe9",
    b"",
    b"   ",
    b"USER a\x00b",
    b"NO\x00OP",
    b"APOP \xff\xfe 0123",
    b"QUIT",
]
FIRST_WORD = [
    b"USER a b",
    b"PASS secret",
    b"USER a\rb",
    b"user me x",
    b"pass secret",
    b"USER \tme\tx",
    b"stat",
    b"QUIT",
]
# a decision (PASS) with commands behind it in the same packet; RETR 1 streams the content
PIPELINED = b"CAPA\r\nUSER me\r\nNOOP\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nLIST\r\nQUIT\r\n"
CONTENT = b"Subject: one\r\n\r\nhello\r\n"


def _dialogue(port: int, lines: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """One POP session, a line at a time: (line, reply) pairs, the greeting's timestamp normalised."""
    out = []
    with _connect(port) as sock:
        out.append((b"<greeting>", _read(sock, False)))
        for line in lines:
            sock.sendall(line + b"\r\n")
            out.append((line, _read(sock, False)))
    return [(line, _STAMP.sub(b"<STAMP>", reply)) for line, reply in out]


def _pipelined(port: int, packet: bytes) -> bytes:
    """All ``packet``'s commands sent at once; everything the server sends after the greeting."""
    data = b""
    with _connect(port) as sock:
        _read(sock, False)
        sock.sendall(packet)
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _run(side: str, base: Path) -> tuple[list[tuple[bytes, bytes]], bytes, list[str]]:
    """``side``'s replies to NOT_UTF8 and FIRST_WORD, its output for PIPELINED, and its POP log
    lines (read as octets: surrogate escapes for what is not UTF-8)."""
    secrets_file = base / f"{side}.auth"
    secrets_file.write_text(PLAIN_SECRETS)
    secrets_file.chmod(0o644)
    pop_port = free_port()
    _message(base / side / "spool", "emailrelay.1000.1700000000.1", CONTENT)
    with start(side, base, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets_file)) as d:
        replies = _dialogue(pop_port, NOT_UTF8) + _dialogue(pop_port, FIRST_WORD)
        pipelined = _pipelined(pop_port, PIPELINED)
        wait_until(lambda: d.log().count("pop connection closed") >= 3, 15)
        text = d.log_path.read_bytes().decode("utf-8", "surrogateescape")
        log = [
            line.replace(f"{side}.auth", "SECRETS")
            for line in normalise_log(text, d, ports=[pop_port])
            if POP_LOG.search(line) and not KEPT.search(line)
        ]
    return replies, pipelined, [re.sub(r"<\d+\.\d+@[^>]+>", "<STAMP>", line) for line in log]


# ------------------------------------------------------------------ side by side


@needs_oracle
def test_hostile_lines_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_run(side, base) for side in SIDES)
    replies, pipelined, log = ours
    assert replies == upstream[0]
    assert pipelined == upstream[1]
    assert log == upstream[2]
    assert (b"USER \xff\xfe", b"+OK user: \xff\xfe\r\n") in replies
    assert (b"USER a b", b"+OK user: a\r\n") in replies
    assert 'emailrelay: info: rx<<: "USER \udcff\udcfe"' in log
    assert 'emailrelay: info: rx<<: ""' in log


# ------------------------------------------------------------------ ours alone


def _ours(h: PopHarness, lines: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(_dialogue(h.port, lines))


def test_octets_not_utf8_are_echoed_and_logged_as_they_came(tmp_path: Path) -> None:
    # (the id "+FF" is the octet 0xff: such a name still logs in, as with upstream)
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS + "server plain +FF pw\n") as h:
        got = _ours(h, [b"USER \xff\xfe", b"NOOP \xe9", b"APOP \xff\xfe 0123", b"QUIT"])
        login = _ours(h, [b"USER \xff", b"PASS pw", b"STAT", b"QUIT"])
        assert wait_until(lambda: h.log_path.read_bytes().count(b"pop connection closed") == 2)  # (not UTF-8)
        log = h.log_path.read_bytes()
    assert got[b"USER \xff\xfe"] == b"+OK user: \xff\xfe\r\n"
    assert login[b"USER \xff"] == b"+OK user: \xff\r\n"
    assert login[b"PASS pw"] == b"+OK\r\n"
    assert login[b"STAT"] == b"+OK 0 0\r\n"
    assert got[b"NOOP \xe9"] == b"-ERR\r\n"
    assert b'rx<<: "USER \xff\xfe"\n' in log
    assert b'tx>>: "+OK user: \xff\xfe"\n' in log
    assert b'rx<<: "NOOP \xe9"\n' in log
    assert b"[apop] and missing secret for [\xff\xfe]\n" in log


def test_an_empty_line_is_traced(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS) as h:
        got = _ours(h, [b"", b"QUIT"])
        log = h.wait_log("pop connection closed")
    assert got[b""] == b"-ERR\r\n"
    assert 'rx<<: ""\nemailrelay: info: tx>>: "-ERR"\n' in log


def test_user_takes_the_first_word(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS) as h:
        h.put(CONTENT)
        wrong = _ours(h, [b"USER a b", b"PASS secret", b"USER a\rb", b"USER \tx\ty", b"QUIT"])
        right = _ours(h, [b"USER me x", b"PASS secret", b"STAT", b"QUIT"])
        log = h.wait_log("pop connection closed", 2)
    assert wrong[b"USER a b"] == b"+OK user: a\r\n"
    assert wrong[b"PASS secret"] == b"-ERR\r\n"
    assert wrong[b"USER a\rb"] == b"+OK user: a\r\n"
    assert wrong[b"USER \tx\ty"] == b"+OK user: x\r\n"
    assert right[b"USER me x"] == b"+OK user: me\r\n"
    assert right[b"PASS secret"] == b"+OK\r\n"
    assert right[b"STAT"] == b"+OK 1 23\r\n"
    assert "and missing secret for [a]\n" in log
    assert 'rx<<: "USER a\\rb"\n' in log  # (as upstream; ours wrote \x0d)


def test_pipelined_replies_are_logged_before_the_next_command(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS) as h:
        h.put(CONTENT)
        sent = _pipelined(h.port, PIPELINED)
        log = h.wait_log("pop connection closed")
    assert sent.endswith(
        b"+OK user: me\r\n-ERR\r\n+OK\r\n+OK 1 23\r\n+OK 23 octets\r\n" + CONTENT + b".\r\n"
        b"+OK 1 message(s)\r\n1 23\r\n.\r\n+OK signing off\r\n"
    )
    traced = re.findall(r'(?:rx<<|tx>>): "([^"]*)"', log)
    assert traced[traced.index("PASS [password not logged]") :][:5] == [
        "PASS [password not logged]",
        "+OK",
        "STAT",
        "+OK 1 23",
        "RETR 1",
    ]
