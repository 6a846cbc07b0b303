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

A third probe (8 Dec 2026) added:

- a name is its octets (USER/PASS, AUTH PLAIN and LOGIN, APOP): secrets id ``+FF`` is the octet
  0xff, so ``USER \\xff`` logs in, is logged as ``... for [\\xff]`` and with ``--pop-by-name``
  gets the directory named by that octet, while ``USER \\xc3\\xbf`` ("ÿ" in UTF-8) is
  ``missing secret``; ours read the id as latin-1 "ÿ", let both names in and named the directory
  in UTF-8;
- PASS is also checked as upstream reads it, its first word (space, tab or CR end it; leading
  ones skipped): ``PASS secret x``, ``PASS secret\\tx``, ``PASS  secret`` and ``PASS secret `` log
  in as there (ours refused them).

Kept different (docs/decisions.md, "POP differences a probe found and we keep") and left out of
the comparison: a bare LF ends a command line (upstream waits for CR LF); a line is at most 255
octets (``-ERR line too long``; upstream takes any length); a tab between the verb and its
argument is ``-ERR`` (``USER\\tme``); failed logins are delayed. PASS is checked as the rest of
the line first, so a password with a space, a tab or a leading space (``my+20password``, the
reference guide's own example) logs in with USER/PASS, which it never does upstream (asserted
below on both sides). A CR inside a line is traced ``\\r`` as upstream writes it (ours wrote
``\\x0d``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.differential.test_pop_followup import KEPT, PLAIN_SECRETS, POP_LOG, _connect, _message
from tests.support.oracle import SIDES, Daemon, daemon_base, needs_oracle, normalise_log, start
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
# a password with a space (the reference guide's "carol my+20password"), one with a tab
WORD_SECRETS = PLAIN_SECRETS + "server plain sp my+20password\nserver plain tb a+09b\n"
# PASS lines that log in as upstream reads them (the first word), and one that fails on both
PASS_WORDS = [b"secret x", b" secret", b"secret\tx", b"secret ", b"secret\rx", b"\tsecret"]
PASS_SPACE = [b"USER sp", b"PASS my password", b"STAT", b"QUIT"]  # kept: logs in with ours only
# ids that are octets: 0xff (not UTF-8) and "é" in UTF-8
OCTET_SECRETS = "server plain +FF pw\nserver plain +C3+A9 pw2\n"
YY = b"\xc3\xbf"  # "ÿ" in UTF-8: not the id +FF


def _plain(user: bytes, password: bytes) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + password)


# a failed login between two good ones each time: ours delays a second failure in a row
OCTET_SESSIONS = [
    [b"USER \xff", b"PASS pw", b"STAT", b"QUIT"],
    [b"USER " + YY, b"PASS pw", b"STAT", b"QUIT"],
    [_plain(b"\xff", b"pw"), b"STAT", b"QUIT"],
    [_plain(YY, b"pw"), b"QUIT"],
    [b"AUTH LOGIN", base64.b64encode(b"\xff"), base64.b64encode(b"pw"), b"STAT", b"QUIT"],
    [b"USER \xc3\xa9", b"PASS pw2", b"STAT", b"QUIT"],
]


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
        log = _pop_log(d, pop_port, 3)
    return replies, pipelined, log


def _pop_log(d: Daemon, pop_port: int, sessions: int) -> list[str]:
    """``d``'s POP log lines once ``sessions`` sessions have closed (read as octets: surrogate
    escapes for what is not UTF-8), normalised, the ones kept different left out."""
    wait_until(lambda: d.log().count("pop connection closed") >= sessions, 15)
    text = d.log_path.read_bytes().decode("utf-8", "surrogateescape")
    log = [
        line.replace(f"{d.side}.auth", "SECRETS")
        for line in normalise_log(text, d, ports=[pop_port])
        if (POP_LOG.search(line) or "pop-by-name" in line) and not KEPT.search(line)
    ]
    return [re.sub(r"<\d+\.\d+@[^>]+>", "<STAMP>", line) for line in log]


def _sessions_run(
    side: str, base: Path, secrets: str, sessions: Sequence[Sequence[bytes]], *args: str
) -> tuple[list[tuple[bytes, bytes]], list[str], list[bytes]]:
    """``side``'s replies to ``sessions`` (one connection each), its POP log lines, and the names
    (octets) of the directories in its spool."""
    secrets_file = base / f"{side}.auth"
    secrets_file.write_text(secrets)
    secrets_file.chmod(0o644)
    pop_port = free_port()
    _message(base / side / "spool", "emailrelay.1000.1700000000.1", CONTENT)
    with start(side, base, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets_file), *args) as d:
        replies = [pair for lines in sessions for pair in _dialogue(pop_port, lines)]
        log = _pop_log(d, pop_port, len(sessions))
        directories = sorted(e.name for e in os.scandir(bytes(d.spool)) if e.is_dir())
    return replies, log, directories


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


@needs_oracle
def test_pass_first_word_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    sessions = [[b"USER me", b"PASS " + word, b"STAT", b"QUIT"] for word in PASS_WORDS]
    sessions += [[b"USER sp", b"PASS my", b"QUIT"], PASS_SPACE]
    ours, upstream = (_sessions_run(side, base, WORD_SECRETS, sessions) for side in SIDES)
    kept = len(PASS_SPACE) + 1  # (the last session, greeting included)
    assert ours[0][:-kept] == upstream[0][:-kept]
    assert ours[0].count((b"STAT", b"+OK 1 23\r\n")) == len(PASS_WORDS) + 1
    assert (b"PASS my", b"-ERR\r\n") in ours[0]
    # kept: the guide's "my+20password" logs in with USER/PASS on ours only
    assert ours[0][-kept:][2] == (b"PASS my password", b"+OK\r\n")
    assert upstream[0][-kept:][2] == (b"PASS my password", b"-ERR\r\n")
    last = [i for i, line in enumerate(ours[1]) if "pop connection from" in line][-1]
    assert ours[1][:last] == upstream[1][:last]


@needs_oracle
def test_names_are_octets_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (
        _sessions_run(side, base, OCTET_SECRETS, OCTET_SESSIONS, "--pop-by-name") for side in SIDES
    )
    assert ours == upstream
    replies, log, directories = ours
    assert (b"USER \xff", b"+OK user: \xff\r\n") in replies
    assert replies.count((b"STAT", b"+OK 0 0\r\n")) == 4
    assert (_plain(YY, b"pw"), b"-ERR\r\n") in replies
    assert directories == sorted([b"\xff", "é".encode()])
    secret = "plaintext secret for [\udcff] from line 1"
    assert (
        f"emailrelay: info: successful authentication of remote client using mechanism [plain] and {secret}"
        in log
    )
    assert "emailrelay: info: created pop-by-name sub-directory [\udcff]" in log
    assert "emailrelay: info: pop authentication of \udcff connected from 127.0.0.1:N" in log


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


def test_pass_takes_the_line_then_its_first_word(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=WORD_SECRETS) as h:
        h.put(CONTENT)
        words = [_ours(h, [b"USER me", b"PASS " + word, b"STAT", b"QUIT"]) for word in PASS_WORDS]
        space = _ours(h, PASS_SPACE)
        tab = _ours(h, [b"USER tb", b"PASS a\tb", b"QUIT"])
        wrong = _ours(h, [b"USER sp", b"PASS my", b"USER me", b"PASS secretx", b"PASS x secret", b"QUIT"])
        log = h.wait_log("pop connection closed", len(PASS_WORDS) + 3)
    assert all(got[b"STAT"] == b"+OK 1 23\r\n" for got in words)
    assert space[b"PASS my password"] == b"+OK\r\n" and space[b"STAT"] == b"+OK 1 23\r\n"
    assert tab[b"PASS a\tb"] == b"+OK\r\n"
    assert wrong[b"PASS my"] == wrong[b"PASS secretx"] == wrong[b"PASS x secret"] == b"-ERR\r\n"
    assert log.count("failed authentication") == 3
    assert log.count("plaintext secret for [me] from line 1") == len(PASS_WORDS) + 2


def _apop(port: int, user: bytes, password: bytes) -> bytes:
    """An APOP login's reply: the digest made from the greeting's timestamp."""
    with _connect(port) as sock:
        stamp = _STAMP.search(_read(sock, False))
        assert stamp is not None
        digest = hashlib.md5(stamp[0] + password).hexdigest().encode()
        sock.sendall(b"APOP " + user + b" " + digest + b"\r\n")
        reply = _read(sock, False)
        sock.sendall(b"QUIT\r\n")
        _read(sock, False)
    return reply


def _cram(port: int, user: bytes, password: bytes) -> bytes:
    """An AUTH CRAM-MD5 login's reply: the digest made from the server's challenge."""
    with _connect(port) as sock:
        _read(sock, False)
        sock.sendall(b"AUTH CRAM-MD5\r\n")
        challenge = base64.b64decode(_read(sock, False)[2:])
        digest = hmac.new(password, challenge, "md5").hexdigest().encode()
        sock.sendall(base64.b64encode(user + b" " + digest) + b"\r\n")
        reply = _read(sock, False)
        sock.sendall(b"QUIT\r\n")
        _read(sock, False)
    return reply


def test_names_are_octets(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=OCTET_SECRETS, by_name=True) as h:
        got = [_ours(h, lines) for lines in OCTET_SESSIONS]
        apop = _apop(h.port, b"\xff", b"pw"), _apop(h.port, YY, b"pw")
        cram = _cram(h.port, b"\xff", b"pw"), _cram(h.port, YY, b"pw")
        assert wait_until(lambda: h.log_path.read_bytes().count(b"pop connection closed") == 10)
        log = h.log_path.read_bytes()
        directories = sorted(e.name for e in os.scandir(bytes(h.spool)) if e.is_dir())
    assert [x[b"STAT"] for x in got if b"STAT" in x] == [b"+OK 0 0\r\n", b"-ERR\r\n"] + [b"+OK 0 0\r\n"] * 3
    assert got[3][_plain(YY, b"pw")] == b"-ERR\r\n"
    assert apop == cram == (b"+OK\r\n", b"-ERR\r\n")
    assert directories == sorted([b"\xff", "é".encode()])
    assert b"using mechanism [plain] and plaintext secret for [\xff] from line 1\n" in log
    assert b"using mechanism [login] and plaintext secret for [\xff] from line 1\n" in log
    assert b"using mechanism [apop] and plaintext secret for [\xff] from line 1\n" in log
    assert b"using mechanism [cram-md5] and plaintext secret for [\xff] from line 1\n" in log
    assert b"created pop-by-name sub-directory [\xff]\n" in log
    assert b"[plain] and missing secret for [" + YY + b"]\n" in log
    assert b"[apop] and missing secret for [" + YY + b"]\n" in log
