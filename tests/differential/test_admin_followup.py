"""The admin interface against E-MailRelay 2.6b, continued: what a second probe found (issue 17).

What it checks: ``--interface admin=<path>`` (a unix-domain admin socket: its
mode and group, upstream's ``/`` for the client in the log and ``status``,
the file removed at the stop); a session's line ending, taken from the
first line its client sends (a bare-LF client gets bare-LF replies and
events); over-long command lines (one reply each, whatever the length); and
the log lines of ``flush``.  The differential tests skip without
``EMAILRELAY_ORACLE_BIN``; the ``ours_`` tests check our side alone, so a
user's clone tests it too.  The ``client:`` events of ``notify`` are
tests/differential/test_admin_notify_followup.py's.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from emailrelay.services.admin import MAX_LINE, LineSplitter
from tests.support.diff_forwarding import write_messages
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import (
    SIDES,
    Daemon,
    daemon_base,
    needs_oracle,
    normalise_log,
    normalise_text,
    smtp_dialogue,
    start,
)
from tests.support.relay import free_port, wait_until
from tests.support.sink_counter import PROMPT, AdminClient

pytestmark = [pytest.mark.timeout(240)]

Exchange = list[tuple[bytes, bytes]]  # (what was sent, what came back)
# A chunk to send and the replies it is due: that many prompts, 0 (none: a short wait shows
# that nothing comes), or UNTIL_CLOSED (what comes until the relay closes the connection).
Chunk = tuple[bytes, int]
UNTIL_CLOSED = -1
REPLY_TIMEOUT = 15.0  # seconds for a reply that is due (ours serves its first prompt a second late)
QUIET = 0.2  # seconds to see that nothing comes where no reply is due


def _receive(sock: socket.socket, seconds: float, done: Callable[[bytes], bool] = lambda _: False) -> bytes:
    """What arrives until ``done(what came)``, or ``seconds`` pass, or the peer closes (then
    ``<EOF>`` is appended)."""
    got, deadline = b"", time.monotonic() + seconds
    while not done(got) and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return got + b"<EOF>"
        got += chunk
    return got


def _reply(sock: socket.socket, due: int) -> bytes:
    """The reply to one chunk: ``due`` prompts (or until the close, or a short quiet time)."""
    if due == 0:
        return _receive(sock, QUIET)
    if due == UNTIL_CLOSED:
        return _receive(sock, REPLY_TIMEOUT)
    return _receive(sock, REPLY_TIMEOUT, lambda got: got.count(PROMPT) >= due)


def _exchange(connect: socket.socket, chunks: list[Chunk]) -> Exchange:
    """Each chunk sent raw, then its reply (:func:`_reply`)."""
    out: Exchange = []
    with connect as sock:
        for chunk, due in chunks:
            sock.sendall(chunk)
            out.append((chunk[:40], _reply(sock, due)))
    return out


def _tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


# ---- a unix-domain admin socket ---------------------------------------------------------------


def _unix_admin(side: str, base: Path, *extra: str) -> dict[str, object]:
    """``--interface admin=<path>``: the socket file's mode, owner and group, a session over it, the
    log's admin lines, and whether the file is left after a SIGTERM."""
    home = base / f"{side}-unix"
    home.mkdir(parents=True)
    path = home / "admin.s"
    daemon = start(side, base, "--interface", "smtp=127.0.0.1", "--interface", f"admin={path}", "--admin", "0",
                   *extra, name=f"{side}-unix")  # fmt: skip
    try:
        assert wait_until(path.exists, 20), daemon.log()
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(15)
        client.connect(str(path))
        status = _exchange(client, [(b"list\r\n", 1), (b"status\r\n", 1)])
        st = path.stat()  # (once the relay answered: its set-up of the file is over)
        lines = status[1][1].removesuffix(b"\r\n" + PROMPT).split(b"\r\r\n")
        in_lines = [x for x in lines if x.startswith(b"IN: ")]
        wait_until(lambda: "admin connection closed" in daemon.log(), 20)
    finally:
        rc = daemon.stop()
    log = [x.replace(str(home), "HOME") for x in normalise_log(daemon.log()) if ": admin " in x]
    return {
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "socket": stat.S_ISSOCK(st.st_mode),
        "owner": st.st_uid,
        "group": grp.getgrgid(st.st_gid).gr_name,
        "list": status[0][1],
        "status IN": [x.replace(str(path).encode(), b"PATH") for x in in_lines],
        "log": log,
        "rc": rc,
        "left after the stop": path.exists(),
    }


@needs_oracle
@pytest.mark.parametrize("user", [[], ["--user", "root"]], ids=["default-user", "user-root"])
def test_unix_domain_admin_socket_as_upstream(tmp_path: Path, user: list[str]) -> None:
    """Mode 0770 and --user's group (0777 when the relay runs as root), whatever the umask; the
    client is "/" in the log and in status; the file is removed when the relay stops."""
    base = daemon_base(tmp_path)
    got = {side: _unix_admin(side, base, *user) for side in SIDES}
    assert got["ours"] == got["upstream"]
    assert got["ours"]["left after the stop"] is False
    assert "emailrelay: info: admin connection from /" in got["ours"]["log"]  # type: ignore[operator]


def test_ours_unix_domain_admin_socket(tmp_path: Path) -> None:
    """Ours alone: upstream's access for the socket file (the relay switches to --user daemon when
    started as root), upstream's name for the client, and no file left after the stop."""
    got = _unix_admin("ours", daemon_base(tmp_path))
    switching = os.geteuid() == 0
    assert got["mode"] == "0o770" and got["socket"], got
    if switching:
        assert got["group"] == "daemon" and got["owner"] == 0, got
    assert got["list"] == b"<none>\r\n" + PROMPT
    assert got["status IN"] == [b"IN: PATH <- /"], got
    assert "emailrelay: info: admin connection from /" in got["log"], got  # type: ignore[operator]
    assert got["left after the stop"] is False, got


# ---- line endings and over-long lines ---------------------------------------------------------

SESSIONS: dict[str, list[Chunk]] = {  # (the replies each chunk is due: upstream's)
    "lf": [(b"list\n", 1), (b"info credit\n", 1), (b"info warranty\n", 1), (b"bogus\r\n", 1), (b"\n", 1),
           (b"info\n", 1), (b"failures\n", 1)],
    "lf-then-crlf": [(b"\n", 1), (b"list\r\n", 1), (b"list\n", 1)],
    "crlf-then-lf": [(b"list\r\n", 1), (b"list\n", 0), (b"\r\n", 1), (b"list\nlist\r\n", 1),
                     (b"info credit\nfoo\r\n", 1)],
    "lf-with-crs": [(b"list\r\r\n", 1), (b"info\rcredit\n", 0), (b"list\r\rx\n", 0), (b"\r\n", 1)],
    "lf-pipelined": [(b"list\ninfo credit\nquit\n", UNTIL_CLOSED)],
    "lf-smtp": [(b"smtp disable\n", 1), (b"smtp enable\n", 1)],
    "long": [
        (b"x" * 1000 + b"\r\n", 1),
        (b"y" * 100_000 + b"\r\n", 1),
        (b"list " + b"z" * 200_000 + b"\r\n", 1),
        (b"list\r\n", 1),
    ],
    "long-lf": [(b"x" * 1_000_000 + b"\n", 1), (b"list\n", 1)],
    "long-in-parts": [(b"info credit " + b"x" * 300_000, 0), (b"y" * 300_000, 0), (b"\r", 0),
                      (b"\nlist\r\n", 2)],
    "long-first-line": [(b"list " + b"w" * 50_000, 0), (b"\r\n", 1), (b"list\n", 0), (b"\r\n", 1)],
}  # fmt: skip


def _sessions(side: str, base: Path) -> tuple[dict[str, Exchange], bytes]:
    """Every session of SESSIONS, then a bare-LF notify watcher's events around an SMTP session."""
    admin = free_port()
    with start(side, base, "--admin", str(admin), name=f"{side}-lines") as daemon:
        got = {name: _exchange(_tcp(admin), chunks) for name, chunks in SESSIONS.items()}
        with _tcp(admin) as watcher:
            watcher.sendall(b"notify\n")
            time.sleep(0.5)  # (no reply says when the watcher is on)
            smtp_dialogue(daemon.port, ["QUIT"])
            events = _receive(watcher, REPLY_TIMEOUT, lambda got: b"in: stop" in got)
            events += _receive(watcher, QUIET)  # (and nothing more)
    return got, events


@needs_oracle
def test_line_endings_and_long_lines_as_upstream(tmp_path: Path) -> None:
    """The first line ending a client sends is its session's: replies and events follow it; a
    command line of any length gets one reply."""
    base = daemon_base(tmp_path)
    got = {side: _sessions(side, base) for side in SIDES}
    (ours, ours_events), (upstream, up_events) = got["ours"], got["upstream"]
    for name, chunks in SESSIONS.items():
        assert ours[name] == upstream[name], name
        for (_, due), (_, reply) in zip(chunks, upstream[name], strict=True):  # as SESSIONS says
            assert reply.endswith(b"<EOF>") if due == UNTIL_CLOSED else reply.count(PROMPT) == due, name
    assert upstream["lf"][0] == (b"list\n", b"<none>\nE-MailRelay> ")
    assert ours_events == up_events == b"\nEVENT: network: in: start  \nEVENT: network: in: stop  "


def test_ours_line_ending_follows_the_client(tmp_path: Path) -> None:
    """Ours alone, over a socket: a bare-LF client gets bare-LF replies; a CR LF client's bare LF
    does not end a line; a long line gets one reply."""
    admin = free_port()
    with start("ours", daemon_base(tmp_path), "--admin", str(admin)):
        lf = _exchange(_tcp(admin), [(b"list\n", 1), (b"info credit\r\n", 1)])
        crlf = _exchange(
            _tcp(admin), [(b"list\r\n", 1), (b"list\nlist\r\n", 1), (b"x" * 100_000 + b"\r\n", 1)]
        )
    assert [reply for _, reply in lf] == [
        b"<none>\n" + PROMPT,
        b"This product includes software developed by the OpenSSL Project\n"
        b"for use in the OpenSSL Toolkit (http://www.openssl.org/)\n\n" + PROMPT,
    ]
    assert [reply for _, reply in crlf] == [
        b"<none>\r\n" + PROMPT, b"<none>\r\n" + PROMPT, b"error: unrecognised command\r\n" + PROMPT,
    ]  # fmt: skip


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_ours_line_splitter(step: int) -> None:
    """The splitter alone, fed in pieces of ``step`` bytes: the session's line ending is the first
    one seen; a long line is cut to MAX_LINE bytes and its end still found (a CR LF split too)."""
    data = b"a\r\nb\nc\r\n" + b"x" * (3 * MAX_LINE) + b"\r\nd\r\n"
    splitter = LineSplitter()
    lines = [line for i in range(0, len(data), step) for line in splitter.feed(data[i : i + step])]
    assert lines == [b"a", b"b\nc", b"x" * MAX_LINE, b"d"]
    assert splitter.output(b"one\r\r\ntwo\r\n") == b"one\r\r\ntwo\r\n"
    lf = LineSplitter()
    assert lf.feed(b"a\nb\r\n" + b"y" * (2 * MAX_LINE)) == [b"a", b"b\r"]
    assert lf.feed(b"\n") == [b"y" * MAX_LINE]
    assert lf.output(b"one\r\r\ntwo\r\n" + PROMPT) == b"one\ntwo\n" + PROMPT


# ---- flush: its log lines ----------------------------------------------------------------------


def _flush_log(side: str, base: Path) -> tuple[list[bytes], list[str]]:
    """A message written after the start; ``flush`` while the next hop is down, then once it is up:
    the replies and the log lines from the first flush on."""
    admin, hop_port = free_port(), free_port()
    with start(side, base, "--admin", str(admin), "--forward-to", f"127.0.0.1:{hop_port}",
               name=f"{side}-flush") as daemon:  # fmt: skip
        if side == "ours":
            time.sleep(2.0)  # (the roles' bus subscriptions settle: nothing logs when)
        write_messages(daemon.spool, [["b@example.net"]], 1765000000)
        time.sleep(0.5)
        mark = len(daemon.log().splitlines())
        with AdminClient(admin) as client:
            replies = [client.cmd("flush", 30)]
            with FakeSmtp(port=hop_port, extensions=("8BITMIME",)):
                replies.append(client.cmd("flush", 30))
                time.sleep(0.5)
        log = _log_since(daemon, mark, [admin, hop_port])
    return [normalise_text(r.decode(), ports=[hop_port]).encode() for r in replies], log


def _log_since(daemon: Daemon, mark: int, ports: list[int]) -> list[str]:
    text = "\n".join(daemon.log().splitlines()[mark:])
    return normalise_log(text, ports=ports, drop=["admin connection", r"rx<<:", r"tx>>:"])


@needs_oracle
def test_flush_log_as_upstream(tmp_path: Path) -> None:
    """flush logs the messages' lines only: no ``forwarding to``, no ``forwarding: [startup]``,
    and a failed session is only its warning (the reply gives the error)."""
    base = daemon_base(tmp_path)
    got = {side: _flush_log(side, base) for side in SIDES}
    assert got["ours"] == got["upstream"]
    replies, log = got["ours"]
    assert replies == [
        b"error: connect failure: cannot connect to 127.0.0.1:PORT\r\n" + PROMPT,
        b"OK\r\n" + PROMPT,
    ]
    assert log[:2] == [
        "emailrelay: info: forwarding [emailrelay.ID]",
        "emailrelay: warning: smtp client error: connect failure: cannot connect to 127.0.0.1:PORT",
    ]


def test_ours_flush_log(tmp_path: Path) -> None:
    """Ours alone: the same lines."""
    replies, log = _flush_log("ours", daemon_base(tmp_path))
    assert replies == [
        b"error: connect failure: cannot connect to 127.0.0.1:PORT\r\n" + PROMPT,
        b"OK\r\n" + PROMPT,
    ]
    assert not [x for x in log if "forwarding to" in x or "[startup]" in x or ": error: " in x], log
    assert log[-1] == "emailrelay: info: forwarding: no more messages to send", log
