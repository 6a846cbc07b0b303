"""The SMTP server's command lines against E-MailRelay 2.6b, a follow-up of a differential probe (7 Dec 2026).

What it checks, each side by side with the oracle (``needs_oracle``) and on ours alone (the
``test_ours_`` tests), so that a clone without the oracle tests it too:

- only CRLF ends a command line, as upstream: a bare LF or CR is part of the line and what follows
  it is never a command of its own (one reply per CRLF-ended line; ``NOOP\\n`` waits for its CRLF);
  a verb holding one is unrecognized (``500``), a MAIL or RCPT line with a NUL, CR or LF anywhere
  is ``553``/``550 ... invalid character in mailbox name``, an AUTH word holding one is no
  mechanism (``504``) or no initial response (``501 invalid argument``: ours authenticated
  ``AUTH PLAIN <response>\\nX``), and the trace shows them as ``\\n`` and ``\\r``;
- the HELO/EHLO name is the argument up to a tab, with spaces around it dropped and spaces in it
  made dashes (the ``Received:`` line's ``from x-y``);
- AUTH before STARTTLS, with ``--server-tls-required`` and mechanisms offered only once encrypted
  (``--server-auth-config m:;a:plain``): upstream's ``504 unsupported authentication mechanism:
  use starttls`` (ours answered ``530``);
- hostile odds and ends answered alike: ``HELO`` without a name, ``SIZE=garbage``, a NUL in a
  command, a command after QUIT in the same packet.

Kept different and checked as such (docs/decisions.md): a HELO/EHLO name with a control character
is refused (``501 invalid domain name``); a command line over 512 octets is ``500 line too long``
(now discarded up to its CRLF); upstream's trace stops at a tab; and DATA on a spool that cannot
be written is ``451 local error: cannot store message`` at DATA, where upstream answers ``354``
and, after the content, ``554 transaction failed`` (a permanent failure: the message bounces).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from emailrelay.protocol.smtp_server import NEED_DATA, ServerConfig, SmtpServer
from tests.differential.test_smtp_server_more import _contents
from tests.differential.test_unwritable_followup import immutable
from tests.support.certs import Certs
from tests.support.diff_smtp_server import b64, server_log, server_secrets, settle
from tests.support.oracle import SIDES, daemon_base, needs_oracle, read_reply, smtp_dialogue, start

pytestmark = pytest.mark.timeout(180)

PLAIN_ME = "AUTH PLAIN " + b64("\0me\0secret")
MESSAGE = ["MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA", "Subject: s\r\n\r\nbody\r\n.", "QUIT"]
INVALID_MAIL = "553 mailbox name not allowed: invalid character in mailbox name"
INVALID_RCPT = "550 invalid character in mailbox name"
UNRECOGNIZED = "500 command unrecognized"
HELLO = "250-vm says hello"  # (the first line of an EHLO reply, the host name normalised)
_HELLO = re.compile(r"^250-\S+ says hello$")

# (command line, our reply's first line): bare LF, CR and NUL inside command lines, compared with
# upstream's replies and log lines (no tab: upstream's trace stops at one, decisions.md)
LINES: list[tuple[str, str]] = [
    ("EHLO h", HELLO),
    ("MAIL FROM:<a@b>\nRCPT TO:<c@d>", INVALID_MAIL),
    ("NOOP\nfoo", UNRECOGNIZED),
    ("NOOP \rx", "250 noop"),
    ("QUIT\nRSET", UNRECOGNIZED),
    ("MAIL FROM:<a@b> X\0Y", INVALID_MAIL),
    ("MAIL FROM:<a@b> X=\r", INVALID_MAIL),
    ("MAIL FROM:<a@b> X\x01Y", "250 sender <a@b> OK"),  # (other control characters pass, as upstream)
    ("RCPT TO:<c@d>\nX", INVALID_RCPT),
    ("RCPT TO:<c@d> X\rY", INVALID_RCPT),
    ("RCPT TO:<c@d>\0", INVALID_RCPT),
    ("RCPT TO:<c@d>", "250 recipient <c@d> OK"),
    ("DATA\nX", UNRECOGNIZED),
    ("RSET", "250 state reset"),
    ("HELO", "501 parameter required"),
    ("EHLO x y", HELLO),
    ("MAIL FROM:<> SIZE=garbage", "250 sender <> OK"),
    ("RCPT TO:<c@d>", "250 recipient <c@d> OK"),
    ("DATA", "354 start mail input -- end with <CRLF>.<CRLF>"),
    ("Subject: s\r\n\r\nbody\r\n.", "250 message processed"),
    ("QUIT", "221 OK"),
]
# the trace of the lines above that hold a CR or LF, as upstream writes it
TRACED = [
    r'rx<<: "MAIL FROM:<a@b>\nRCPT TO:<c@d>"',
    r'rx<<: "NOOP \rx"',
    r'rx<<: "MAIL FROM:<a@b> X=\r"',
    r'rx<<: "MAIL FROM:<a@b> X\0Y"',
    r'rx<<: "RCPT TO:<c@d> X\rY"',
]
# (command line, first reply line) of a second session: tabs, AUTH words holding a CR or LF
AUTH_LINES: list[tuple[str, str]] = [
    ("EHLO x\t", HELLO),
    ("EHLO \tx", "501 parameter required"),
    ("AUTH PLAIN\nX", "504 unsupported authentication mechanism"),
    (PLAIN_ME + "\nX", "501 invalid argument"),
    ("AUTH PLAIN AAAA\rAAAA", "501 invalid argument"),
    ("AUTH LOGIN", "334 VXNlcm5hbWU6"),
    (b64("me") + "\nX", "535 authentication failed"),
    ("MAIL FROM:<a@b>", "530 authentication required"),
    ("QUIT", "221 OK"),
]


def _first_lines(replies: Sequence[str]) -> list[str]:
    """The first line of each reply, the host name in EHLO's as ``vm``."""
    return [_HELLO.sub(HELLO, r.split("\n", 1)[0]) for r in replies]


Run = tuple[list[list[str]], list[str], list[bytes]]


def _session(
    side: str, base: Path, args: Sequence[str], sessions: Sequence[Sequence[str]], name: str = ""
) -> Run:
    """``side``'s first reply lines of each session, its log and its content files."""
    with start(side, base, *args, name=f"{side}{name}") as d:
        replies = [_first_lines(smtp_dialogue(d.port, lines))[1:] for lines in sessions]
        settle(d, len(sessions))
        return replies, server_log(d), _contents(d.spool)


def _secrets_args(base: Path) -> list[str]:
    return ["--server-auth", str(server_secrets(base))]


# ---- 1: only CRLF ends a command line ----------------------------------------------------------


@needs_oracle
def test_command_lines_end_at_crlf_as_upstream(tmp_path: Path) -> None:
    """Replies, log lines and the stored message (its ``Received: from x-y``) the same on both sides."""
    base = daemon_base(tmp_path)
    sessions = [[line for line, _ in LINES]]
    got = {side: _session(side, base, [], sessions) for side in SIDES}
    assert got["ours"] == got["upstream"]
    auth = [[line for line, _ in AUTH_LINES]]
    got = {side: _session(side, base, _secrets_args(base), auth, "auth") for side in SIDES}
    assert got["ours"][0] == got["upstream"][0]  # (the logs: upstream's trace stops at a tab)


def test_ours_command_lines_end_at_crlf(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    replies, log, contents = _session("ours", base, [], [[line for line, _ in LINES]])
    assert replies == [[reply for _, reply in LINES]]
    for line in TRACED:
        assert f"emailrelay: info: {line}" in log, log
    assert len(contents) == 1 and contents[0].startswith(b"Received: from x-y ([127.0.0.1]) by ")
    replies, _, _ = _session("ours", base, _secrets_args(base), [[line for line, _ in AUTH_LINES]], "auth")
    assert replies == [[reply for _, reply in AUTH_LINES]]


def test_ours_bare_lf_waits_for_crlf(tmp_path: Path) -> None:
    """``NOOP\\n`` and ``RSET\\r\\n`` sent apart are one line, one reply (not RSET's); an over-long
    line is discarded up to its CRLF, bare LFs and all, and the session goes on."""
    with (
        start("ours", daemon_base(tmp_path)) as d,
        socket.create_connection(("127.0.0.1", d.port), 15) as sock,
    ):
        reader = sock.makefile("rb")
        assert read_reply(reader).startswith("220 ")
        sock.sendall(b"NOOP\n")
        sock.sendall(b"RSET\r\nNOOP\r\n")
        assert [read_reply(reader), read_reply(reader)] == [UNRECOGNIZED, "250 noop"]
        sock.sendall(b"NOOP " + b"x" * 600 + b"\nNOOP\r")
        sock.sendall(b"\nQUIT\r\n")
        assert [read_reply(reader), read_reply(reader)] == ["500 line too long", "221 OK"]


@pytest.mark.parametrize("cut", range(1, 9))
def test_ours_crlf_split_between_reads(cut: int) -> None:
    """A CRLF split between two reads still ends the line, a discarded over-long one too; a
    bare LF never does (the state machine fed the bytes in two parts)."""
    data = b"NOOP " + b"x" * 600 + b"\r\nNOOP\nX\r\nNOOP\r\n"
    for at in (len(b"NOOP ") + 600 + cut % 2, data.index(b"\nX") + cut - 4):
        server = SmtpServer(ServerConfig())
        server.greeting()
        for part in (data[:at], data[at:]):
            server.receive_data(part)
            while server.next_event() is not NEED_DATA:
                pass
        replies = server.data_to_send().decode().splitlines()
        assert replies[1:] == ["500 line too long", UNRECOGNIZED, "250 noop"], (at, replies)


# ---- 2: AUTH before STARTTLS when the mechanisms come with TLS only -----------------------------


def _tls_only_args(base: Path, certs: Certs) -> list[str]:
    return [
        "--server-tls", "--server-tls-certificate", str(certs.server_pem), "--server-tls-required",
        *_secrets_args(base), "--server-auth-config", "m:;a:plain",
    ]  # fmt: skip


TLS_ONLY = [
    ("EHLO h", HELLO),
    ("AUTH PLAIN", "504 unsupported authentication mechanism: use starttls"),
    (PLAIN_ME, "504 unsupported authentication mechanism: use starttls"),
    ("AUTH FOO", "504 unsupported authentication mechanism: use starttls"),
    ("MAIL FROM:<a@b>", "530 authentication required: use starttls"),
    ("QUIT", "221 OK"),
]
WITHOUT_ENCRYPTION = "emailrelay: warning: rejecting authentication attempt without encryption"


@needs_oracle
def test_auth_offered_only_with_tls_as_upstream(certs: Certs) -> None:
    base = daemon_base()
    got = {
        side: _session(side, base, _tls_only_args(base, certs), [[x for x, _ in TLS_ONLY]]) for side in SIDES
    }
    assert got["ours"][0] == got["upstream"][0]
    # (the initial response: logged by upstream, never by ours; decisions.md)
    ours, upstream = ([x for x in got[side][1] if "AUTH PLAIN " not in x] for side in SIDES)
    assert ours == upstream


def test_ours_auth_offered_only_with_tls(certs: Certs) -> None:
    base = daemon_base()
    replies, log, _ = _session("ours", base, _tls_only_args(base, certs), [[x for x, _ in TLS_ONLY]])
    assert replies == [[reply for _, reply in TLS_ONLY]]
    assert log.count(WITHOUT_ENCRYPTION) == 3


# ---- 3: DATA on a spool that cannot be written (kept different) ---------------------------------

needs_chattr = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chattr") is None, reason="needs root and chattr"
)


def _unwritable_session(side: str, base: Path) -> tuple[list[str], list[str], list[str]]:
    """A message (its content sent only after a 354), then RSET and another MAIL, with the spool
    immutable: the first reply lines, the log lines after DATA's, and the spool's files."""
    with start(side, base, name=side) as d:
        with immutable(d.spool), socket.create_connection(("127.0.0.1", d.port), 15) as sock:
            reader = sock.makefile("rb")
            replies = [read_reply(reader)]
            for line in ["EHLO h", *MESSAGE[:3], MESSAGE[3], "RSET", "MAIL FROM:<a@b>", "QUIT"]:
                if line == MESSAGE[3] and not replies[-1].startswith("354"):
                    continue
                sock.sendall(line.encode() + b"\r\n")
                replies.append(read_reply(reader))
            settle(d, 1)
        log = server_log(d)
        files = sorted(p.name for p in d.spool.iterdir())
    return _first_lines(replies)[2:], log[log.index('emailrelay: info: rx<<: "DATA"') + 1 :], files


@needs_oracle
@needs_chattr
def test_unwritable_spool_at_data_kept_different(tmp_path: Path) -> None:
    """Upstream takes the content and then fails the message for good (``554 transaction failed``:
    the client bounces it); ours says at DATA that it cannot store it now (``451``: the client
    keeps it and tries again). Neither acknowledges it, neither stores anything."""
    base = daemon_base(tmp_path)
    got = {side: _unwritable_session(side, base) for side in SIDES}
    ours, upstream = got["ours"], got["upstream"]
    assert upstream[0][2:4] == ["354 start mail input -- end with <CRLF>.<CRLF>", "554 transaction failed"]
    assert "emailrelay: warning: failed to save message content" in upstream[1]
    assert ours[0][2] == "451 local error: cannot store message"
    assert ours[0][:2] == upstream[0][:2] and ours[0][-3:] == upstream[0][-3:]  # then RSET, MAIL, QUIT alike
    assert ours[2] == upstream[2] == []


@needs_chattr
def test_ours_unwritable_spool_at_data(tmp_path: Path) -> None:
    replies, log, files = _unwritable_session("ours", daemon_base(tmp_path))
    assert replies == [
        "250 sender <a@b> OK", "250 recipient <c@d> OK", "451 local error: cannot store message",
        "250 state reset", "250 sender <a@b> OK", "221 OK",
    ]  # fmt: skip
    assert any("cannot store message" in line and line.startswith("emailrelay: error: ") for line in log), log
    assert files == []
