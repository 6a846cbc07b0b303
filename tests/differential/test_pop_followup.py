"""The POP3 server against E-MailRelay 2.6b, a follow-up of a differential probe (7 Dec 2026).

What it checks, each side by side with the oracle (``needs_oracle``) and, where ours alone can
show it, on ours alone (an in-process PopService, ``tests/support/pop3.py``) so that a clone
without the oracle tests it too:

- USER/PASS needs a plain secret: with only hashed ``--pop-auth`` secrets CAPA leaves USER out
  and USER is refused (``-ERR no SASL PLAIN mechanism to do USER/PASS authentication``);
- ``AUTH PLAIN =`` and ``AUTH LOGIN =`` are AUTH without an initial response; a response that
  is not base64 is an empty one (``AUTH LOGIN`` then ``==`` gets an empty prompt); a CRAM
  mechanism with an initial response is ``-ERR invalid initial response``; words after an
  initial response are ignored; a failed AUTH, APOP or PASS keeps the USER name;
- an empty (0-byte) content file is not listed;
- messages are numbered in name order (not by the time in the id, nor by mtime), with
  ``--pop-by-name`` too;
- log texts: the command as typed (``pass [password not logged]``, ``auth plain`` without the
  initial response), a tab as ``\\t``, a backslash doubled, a long multi-line reply as its first
  four lines, ``[N lines]`` and its last two, failed logins in upstream's words
  (``... and missing secret for [x]``), and the idle timeout as ``pop connection closed: idle
  timeout: no activity after 1s``.

Kept different (docs/decisions.md, "Authentication, TLS, POP") and left out of the comparison:
ours warns about a cancelled AUTH and closes after five failed logins; ours logs the messages
it deletes at QUIT (``pop: deleted [...]``); CRAM challenges are random.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.oracle import SIDES, daemon_base, daemon_group, needs_oracle, normalise_log, start
from tests.support.pop3 import PopHarness, pop_harness
from tests.support.pop3 import read_reply as _read
from tests.support.relay import free_port, wait_until

pytestmark = pytest.mark.timeout(180)

ENVELOPE = (
    b"X-MailRelay-Format: #2821.8\r\nX-MailRelay-Content: 8bit\r\nX-MailRelay-From: a@b.example\r\n"
    b"X-MailRelay-ToCount: 1\r\nX-MailRelay-To-Remote: x@y.example\r\nX-MailRelay-Authentication: \r\n"
    b"X-MailRelay-Client: 127.0.0.1\r\nX-MailRelay-ClientCertificate: \r\nX-MailRelay-MailFromAuthIn: \r\n"
    b"X-MailRelay-MailFromAuthOut: \r\nX-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\n"
    b"X-MailRelay-ClientAccountSelector: \r\nX-MailRelay-Utf8MailboxNames: 0\r\nX-MailRelay-End: 1\r\n"
)
PLAIN_SECRETS = "server plain me secret\n"
MD5_SECRETS = "server md5 me qeD38fvADIqBu6rDlXMbVs07p96q1uXKI0SLpC43l0c=\n"  # "secret", emailrelay-passwd
NO_USER_PASS = b"-ERR no SASL PLAIN mechanism to do USER/PASS authentication\r\n"
# names whose order by name, by the time in the id and by mtime all differ (mtime: the number)
NAMES = [
    ("emailrelay.1000.1700000000.10", 5),
    ("emailrelay.1000.1700000000.2", 1),
    ("emailrelay.999.1800000000.1", 3),
    ("emailrelay.2000.1600000000.1", 2),
    ("zzz", 6),
    ("Abc", 7),
    ("emailrelay.10000.1500000000.1", 8),
]
BY_NAME = sorted(name for name, _ in NAMES)
MULTI = ("CAPA", "LIST", "UIDL", "TOP", "RETR")
_STAMP = re.compile(rb"<\d+\.\d+@[^>]+>")
_PROMPT = re.compile(r'^(\+ |.*tx>>: "\+ )([A-Za-z0-9+/]+=*)("|\r\n)$')
POP_LOG = re.compile(r"pop connection|rx<<|tx>>|authentication")
KEPT = re.compile(r"authentication cancelled|too many authentication failures|pop: deleted|Service ready")

Setup = Callable[[Path], None]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _message(directory: Path, name: str, content: bytes, mtime: int | None = None) -> None:
    """A committed message ``name`` (``.content`` and ``.envelope``) as the relay's group can read it."""
    directory.mkdir(parents=True, exist_ok=True)
    daemon_group(directory, 0o775)
    for suffix, data in ((".content", content), (".envelope", ENVELOPE)):
        path = directory / f"{name}{suffix}"
        path.write_bytes(data)
        daemon_group(path, 0o660)
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def _named_messages(directory: Path) -> None:
    for name, order in NAMES:
        _message(directory, name, f"Subject: {name}\r\n\r\nx\r\n".encode(), 1_700_000_000 + 100 * order)


def _connect(port: int, timeout: float = 20.0) -> socket.socket:
    """A connection to the POP port, once it listens (no probe connection: it would be logged)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=15)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _dialogue(port: int, commands: Sequence[str]) -> list[tuple[str, bytes]]:
    """One POP session: (command, reply) pairs, the greeting's timestamp and CRAM challenges normalised."""
    out = []
    with _connect(port) as sock:
        out.append(("<greeting>", _read(sock, False)))
        for command in commands:
            words = command.split()
            verb = words[0].upper() if words else ""
            multi = (verb in MULTI and not (verb in ("LIST", "UIDL") and len(words) > 1)) or words == ["AUTH"]
            sock.sendall(command.encode() + b"\r\n")
            out.append((command, _read(sock, multi)))
    return [(c, _no_challenge(_STAMP.sub(b"<STAMP>", r).decode()).encode()) for c, r in out]


def _no_challenge(text: str) -> str:
    """A CRAM challenge (random: ``<random.time@host>`` in base64) in a reply or log line as ``CHALLENGE``."""
    m = _PROMPT.match(text)
    try:
        cram = m is not None and base64.b64decode(m[2]).startswith(b"<")
    except binascii.Error:
        cram = False
    return f"{m[1]}CHALLENGE{m[3]}" if m and cram else text


@dataclass
class Run:
    replies: list[tuple[str, bytes]]
    log: list[str]


def _run(
    side: str, base: Path, secrets: str, setup: Setup, sessions: Sequence[Sequence[str]], *args: str
) -> Run:
    secrets_file = base / f"{side}.auth"
    secrets_file.write_text(secrets)
    secrets_file.chmod(0o644)
    pop_port = free_port()
    setup(base / side / "spool")
    replies: list[tuple[str, bytes]] = []
    with start(side, base, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets_file), *args) as d:
        for commands in sessions:
            replies += _dialogue(pop_port, commands)
        wait_until(lambda: d.log().count("pop connection closed") >= len(sessions), 15)
        log = [
            line.replace(f"{side}.auth", "SECRETS")
            for line in normalise_log(d.log(), d, ports=[pop_port])
            if POP_LOG.search(line) and not KEPT.search(line)
        ]
    return Run(replies, [_no_challenge(re.sub(r"<\d+\.\d+@[^>]+>", "<STAMP>", line)) for line in log])


def _both(tmp_path: Path, secrets: str, setup: Setup, sessions: Sequence[Sequence[str]], *args: str) -> Run:
    """Both sides' runs, asserted equal (replies, then log lines); ours returned."""
    base = daemon_base(tmp_path)
    ours, upstream = (_run(side, base, secrets, setup, sessions, *args) for side in SIDES)
    for mine, theirs in zip(ours.replies, upstream.replies, strict=True):
        assert mine == theirs
    assert ours.log == upstream.log
    return ours


def _one(directory: Path) -> None:
    _message(directory, "emailrelay.1000.1700000000.1", b"Subject: one\r\n\r\nhello\r\n")


# ------------------------------------------------------------------ side by side


@needs_oracle
def test_user_pass_needs_a_plain_secret_as_upstream(tmp_path: Path) -> None:
    ours = _both(tmp_path, MD5_SECRETS, _one, [["CAPA", "USER me", "PASS secret", "AUTH", "QUIT"]])
    assert ("USER me", NO_USER_PASS) in ours.replies
    assert ours.replies[1][1].startswith(b"+OK capability list follows\r\nCAPA\r\n")


@needs_oracle
def test_auth_equals_and_base64_as_upstream(tmp_path: Path) -> None:
    sessions = [
        ["AUTH PLAIN =", _b64("\0me\0secret"), "STAT", "QUIT"],
        ["AUTH LOGIN =", _b64("me"), _b64("secret"), "STAT", "QUIT"],
        ["AUTH LOGIN", "==", "x", "AUTH LOGIN ==", "QUIT", "AUTH PLAIN =", "!!!!", "QUIT"],
        [
            "AUTH CRAM-MD5 abcd",
            "AUTH CRAM-MD5 = x",
            "*",
            "AUTH PLAIN " + _b64("\0me\0secret") + " extra",
            "QUIT",
        ],
        ["USER me", "APOP me 0123", "AUTH PLAIN " + _b64("\0me\0wrong"), "PASS secret", "QUIT"],
    ]
    ours = _both(tmp_path, PLAIN_SECRETS, _one, sessions)
    assert ("AUTH PLAIN =", b"+ \r\n") in ours.replies
    assert ("AUTH LOGIN =", b"+ VXNlcm5hbWU6\r\n") in ours.replies
    assert ("AUTH CRAM-MD5 abcd", b"-ERR invalid initial response\r\n") in ours.replies
    assert ours.replies.count(("STAT", b"+OK 1 23\r\n")) == 2


@needs_oracle
def test_empty_content_is_not_listed_as_upstream(tmp_path: Path) -> None:
    def setup(spool: Path) -> None:
        _message(spool, "emailrelay.1000.1700000000.1", b"")
        _message(spool, "emailrelay.1000.1700000000.2", b"Subject: x\r\n\r\nhi\r\n")

    commands = ["USER me", "PASS secret", "STAT", "LIST", "UIDL", "RETR 1", "RETR 2", "LIST 2", "QUIT"]
    ours = _both(tmp_path, PLAIN_SECRETS, setup, [commands])
    assert ("STAT", b"+OK 1 18\r\n") in ours.replies


@needs_oracle
@pytest.mark.parametrize("by_name", [False, True], ids=["main", "pop-by-name"])
def test_numbered_by_name_as_upstream(tmp_path: Path, by_name: bool) -> None:
    def setup(spool: Path) -> None:
        _named_messages(spool / "me" if by_name else spool)

    args = ["--pop-by-name"] if by_name else []
    ours = _both(tmp_path, PLAIN_SECRETS, setup, [["USER me", "PASS secret", "UIDL", "QUIT"]], *args)
    uidl = dict(ours.replies)["UIDL"].decode().splitlines()[1:-1]
    assert uidl == [f"{n} {name}.content" for n, name in enumerate(BY_NAME, 1)]


@needs_oracle
def test_log_texts_as_upstream(tmp_path: Path) -> None:
    def setup(spool: Path) -> None:
        _named_messages(spool)

    sessions = [
        ["APOP", "apop me 0123456789abcdef0123456789abcdef", "APOP nobody x", "USER nobody", "QUIT"],
        ["Pass x", "user me", "pass secret", "list", "Uidl", "BOGUS\tx", "USER a\\b", "capa", "quit"],
        ["USER me", "PASS wrong", "AUTH", "auth plain " + _b64("\0me\0x"), "QUIT"],
    ]
    ours = _both(tmp_path, PLAIN_SECRETS, setup, sessions)
    assert 'emailrelay: info: rx<<: "pass [password not logged]"' in ours.log
    assert 'emailrelay: info: rx<<: "auth plain"' in ours.log
    assert 'emailrelay: info: rx<<: "BOGUS\\tx"' in ours.log
    assert "emailrelay: info: tx>>: [3 lines]" in ours.log  # (LIST of seven messages)
    assert (
        "emailrelay: warning: failed authentication of remote client using mechanism [apop] and "
        "plaintext secret for [me] from line 1" in ours.log
    )


@needs_oracle
def test_idle_timeout_log_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    logs = {side: _idle_run(side, base) for side in SIDES}
    assert logs["ours"] == logs["upstream"]
    assert (
        "emailrelay: info: pop connection closed: idle timeout: no activity after 1s: 127.0.0.1:N"
        in logs["ours"]
    )


def _idle_run(side: str, base: Path) -> list[str]:
    secrets_file = base / "idle.auth"
    secrets_file.write_text(PLAIN_SECRETS)
    secrets_file.chmod(0o644)
    pop_port = free_port()
    _one(base / side / "spool")
    with start(side, base, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets_file),
               "--idle-timeout", "1") as d:  # fmt: skip
        with _connect(pop_port) as sock:
            _read(sock, False)
            sock.sendall(b"USER me\r\n")
            _read(sock, False)
            assert _read(sock, False) == b"<EOF>"  # closed, nothing said
        wait_until(lambda: "pop connection closed" in d.log(), 10)
        return [x for x in normalise_log(d.log(), d, ports=[pop_port]) if "pop connection" in x]


# ------------------------------------------------------------------ ours alone


def _ours(h: PopHarness, commands: Sequence[str]) -> dict[str, bytes]:
    return dict(_dialogue(h.port, commands))


def test_user_pass_needs_a_plain_secret(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=MD5_SECRETS) as h:
        got = _ours(h, ["CAPA", "USER me", "PASS secret", "QUIT"])
    assert got["CAPA"] == b"+OK capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nSASL CRAM-MD5\r\n.\r\n"
    assert got["USER me"] == NO_USER_PASS
    assert got["PASS secret"] == b"-ERR\r\n"


def test_auth_equals_and_base64(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS) as h:
        h.put()
        plain = _ours(h, ["AUTH PLAIN =", _b64("\0me\0secret"), "STAT", "QUIT"])
        login = _ours(h, ["AUTH LOGIN =", "*", "AUTH LOGIN", "==", "x", "AUTH CRAM-MD5 abcd", "QUIT"])
        extra = _ours(h, ["USER me", "AUTH PLAIN " + _b64("\0me\0secret") + " extra", "QUIT"])
        kept = _ours(h, ["USER me", "APOP me 0123", "AUTH PLAIN !!", "PASS secret", "STAT", "QUIT"])
    assert plain["AUTH PLAIN ="] == b"+ \r\n" and plain["STAT"].startswith(b"+OK 1 ")
    assert login["AUTH LOGIN ="] == b"+ VXNlcm5hbWU6\r\n"
    assert login["=="] == b"+ \r\n" and login["x"] == b"-ERR\r\n"
    assert login["AUTH CRAM-MD5 abcd"] == b"-ERR invalid initial response\r\n"
    assert extra["AUTH PLAIN " + _b64("\0me\0secret") + " extra"] == b"+OK\r\n"
    assert kept["PASS secret"] == b"+OK\r\n" and kept["STAT"].startswith(b"+OK 1 ")


def test_empty_content_is_not_listed(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS) as h:
        h.put(b"")
        h.put(b"Subject: x\r\n\r\nhi\r\n")
        got = _ours(h, ["USER me", "PASS secret", "STAT", "LIST", "RETR 2", "QUIT"])
    assert got["STAT"] == b"+OK 1 18\r\n"
    assert got["LIST"] == b"+OK 1 message(s)\r\n1 18\r\n.\r\n"
    assert got["RETR 2"] == b"-ERR\r\n"


def _rename_into(h: PopHarness, directory: Path) -> None:
    """The NAMES messages in ``directory``, made by the store and renamed (their mtimes set)."""
    directory.mkdir(exist_ok=True)
    for name, order in NAMES:
        mid = h.put(f"Subject: {name}\r\n\r\nx\r\n".encode())
        for suffix in (".content", ".envelope"):
            target = directory / f"{name}{suffix}"
            (h.spool / f"{mid}{suffix}").rename(target)
            os.utime(target, (1_700_000_000 + 100 * order,) * 2)


@pytest.mark.parametrize("by_name", [False, True], ids=["main", "pop-by-name"])
def test_numbered_by_name(tmp_path: Path, by_name: bool) -> None:
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS, by_name=by_name) as h:
        _rename_into(h, h.spool / "me" if by_name else h.spool)
        got = _ours(h, ["USER me", "PASS secret", "UIDL", "QUIT"])
    uidl = got["UIDL"].decode().splitlines()[1:-1]
    assert uidl == [f"{n} {name}.content" for n, name in enumerate(BY_NAME, 1)]


def test_log_texts(tmp_path: Path) -> None:
    with pop_harness(tmp_path, secrets=PLAIN_SECRETS, idle_timeout=2.0) as h:
        _rename_into(h, h.spool)
        _ours(
            h,
            ["APOP", "apop me 0123", "user nobody", "pass x", "user me", "pass secret", "uidl", "NOOP\ta\\b"],
        )
        with socket.create_connection(("127.0.0.1", h.port), timeout=15) as sock:
            _read(sock, False)
            assert _read(sock, False) == b"<EOF>"
        log = h.wait_log("idle timeout", 1)
    warning = "emailrelay: warning: failed authentication of remote client using mechanism"
    assert f"{warning} [apop] and missing secret\n" in log
    assert f"{warning} [apop] and plaintext secret for [me] from line 1\n" in log
    assert f"{warning} [plain] and missing secret for [nobody]\n" in log
    assert 'rx<<: "pass [password not logged]"' in log
    assert 'rx<<: "NOOP\\ta\\\\b"' in log
    assert 'tx>>: "3 emailrelay.1000.1700000000.2.content"\nemailrelay: info: tx>>: [3 lines]\n' in log
    assert "pop connection closed: idle timeout: no activity after 2s: 127.0.0.1:" in log
    assert "timed out" not in log
