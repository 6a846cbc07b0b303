"""The ``rx<<:`` traces of what a peer sends, against E-MailRelay 2.6b.

What it is for: upstream's trace of an SMTP client's command line, octet for octet: a backslash
doubled, the text up to its first tab (ours: the whole line, the tab as ``\\t``: kept, see
``UPSTREAM_CUT``), a NUL as ``\\0``, other control characters as ``\\xNN``
(the log's escape, which also keeps CR and LF out of a line), octets that are not UTF-8 written as
they came (valid UTF-8 beside them untouched) and an empty line as ``rx<<: ""``; of a next hop's
reply line (``--as-client``) the same but a tab as ``\\t``; of a POP command a NUL as ``\\0``.
The ours-only tests run everywhere; the comparisons with upstream skip without
``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from emailrelay.services.smtpd import traced_rx
from tests.support.diff_forwarding import B, write_messages
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import SIDES, Daemon, daemon_base, needs_oracle, program, spool_dir, start
from tests.support.relay import free_port, wait_until

pytestmark = pytest.mark.timeout(120)

#: command lines (without CRLF) and the ``rx<<:`` text ours writes for each (E-MailRelay 2.6b's but UPSTREAM_CUT)
CASES: tuple[tuple[bytes, bytes], ...] = (
    (b"NOOP a\\b", b'"NOOP a\\\\b"'),
    (b"NOOP a\tb\\c", b'"NOOP a\\tb\\\\c"'),
    (b"\tNOOP x", b'"\\tNOOP x"'),
    (b"", b'""'),
    (b"NOOP a\x01b", b'"NOOP a\\x01b"'),
    (b"NOOP a\x7fb", b'"NOOP a\\x7fb"'),
    (b"NOOP a\x1b[31mb", b'"NOOP a\\x1b[31mb"'),
    (b"NOOP a\x00b", b'"NOOP a\\0b"'),
    (b"NOOP \xc3\xa9 x \xff y", b'"NOOP \xc3\xa9 x \xff y"'),
    (b"NOOP \xc3\xa9", b'"NOOP \xc3\xa9"'),
    (b"NOOP \xed\xa0\x80z", b'"NOOP \xed\xa0\x80z"'),
    (b"NOOP \xff\x01\\z", b'"NOOP \xff\\x01\\\\z"'),
    (b"MAIL FROM:<j\xc3\xa9@example.com> SMTPUTF8", b'"MAIL FROM:<j\xc3\xa9@example.com> SMTPUTF8"'),
    (b"RSET", b'"RSET"'),
)


#: upstream's trace of the lines with a tab, where ours differs on purpose: it stops at the tab, so
#: a log reader does not see what followed (docs/decisions.md, "Logged command lines, as upstream")
UPSTREAM_CUT = {b"NOOP a\tb\\c": b'"NOOP a"', b"\tNOOP x": b'""'}


def _session(port: int) -> None:
    """One session: EHLO, each case's line (reading its reply), QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        replies = sock.makefile("rb")
        replies.readline()
        for line in (b"EHLO h", *(line for line, _ in CASES), b"QUIT"):
            sock.sendall(line + b"\r\n")
            while (reply := replies.readline())[3:4] == b"-":
                pass
            assert reply, line


def _rx(log: bytes) -> list[bytes]:
    """The ``rx<<:`` texts of a log (after ``rx<<: ``), as octets."""
    return [x.split(b"rx<<: ", 1)[1] for x in log.splitlines() if b"rx<<: " in x]


def _traces(daemon: Daemon) -> list[bytes]:
    """The ``rx<<:`` texts of the daemon's log, once QUIT's is there."""
    wait_until(lambda: b'rx<<: "QUIT"' in daemon.log_path.read_bytes(), 10)
    return _rx(daemon.log_path.read_bytes())


def _run(side: str, base: Path) -> list[bytes]:
    with start(side, base) as daemon:
        _session(daemon.port)
        return _traces(daemon)


def test_traced_rx_as_upstream() -> None:
    """The text of a trace, before the log's escapes (a latin-1 decoded line: its octets back)."""
    assert traced_rx("NOOP plain") == "NOOP plain"
    assert traced_rx("NOOP a\\b") == "NOOP a\\\\b"
    assert traced_rx("NOOP a\tb") == "NOOP a\\tb"  # (upstream: "NOOP a")
    assert traced_rx("NOOP a\0b") == "NOOP a\\0b"
    assert traced_rx("NOOP \xe9", latin1=False) == "NOOP \xe9"
    assert traced_rx("NOOP \xc3\xa9 \xff", latin1=True) == "NOOP \xe9 \udcff"


def test_ours_traces_command_lines_as_upstream(tmp_path: Path) -> None:
    """Each line's trace, octet for octet, as measured on E-MailRelay 2.6b."""
    assert _run("ours", daemon_base(tmp_path)) == [b'"EHLO h"', *(t for _, t in CASES), b'"QUIT"']


@needs_oracle
def test_trace_as_upstream(tmp_path: Path) -> None:
    """Both sides' ``rx<<:`` lines for the same session are the same octets."""
    base = daemon_base(tmp_path)
    ours, upstream = (_run(side, base) for side in SIDES)
    expected = [b'"EHLO h"', *(UPSTREAM_CUT.get(line, t) for line, t in CASES), b'"QUIT"']
    assert upstream == expected
    assert ours == [b'"EHLO h"', *(t for _, t in CASES), b'"QUIT"']


# ---- a next hop's replies (--as-client) -------------------------------------------------------

#: a next hop's replies, and the ``rx<<:`` texts E-MailRelay 2.6b writes for them
HOP_REPLIES = {
    "greeting": b"220 hi a\\b c\td\r\n",
    "ehlo": b"250-x a\tb\r\n250-y \xc3\xa9 \xff\r\n250-n \x01\x00q\x1b\x7f\r\n250 8BITMIME\r\n",
    "mail": b"250 ok \xff\xc3\xa9\r\n",
    "rcpt": b"250 r\tx\r\n",
    "data": b"354 go\r\n",
    "final": b"250 \xc3\x80 done\x00z\r\n",
}
HOP_TRACES = [
    b'"220 hi a\\\\b c\\td"',
    b'"250-x a\\tb"',
    b'"250-y \xc3\xa9 \xff"',
    b'"250-n \\x01\\0q\\x1b\\x7f"',
    b'"250 8BITMIME"',
    b'"250 ok \xff\xc3\xa9"',
    b'"250 r\\tx"',
    b'"354 go"',
    b'"250 \xc3\x80 done\\0z"',
]


def _as_client(side: str, base: Path) -> list[bytes]:
    """``side``'s ``--as-client`` run of one message to a next hop with :data:`HOP_REPLIES`."""
    home = base / side
    spool = spool_dir(home / "spool")
    write_messages(spool, [[B]], int(time.time()))
    with FakeSmtp(replies=HOP_REPLIES, extensions=("8BITMIME",)) as hop:
        argv = [program(side), "--as-client", f"127.0.0.1:{hop.port}", "--spool-dir", str(spool), "--verbose"]
        done = subprocess.run(argv, capture_output=True, cwd=home, timeout=60, check=False)
    assert done.returncode == 0, done
    return _rx(done.stdout + done.stderr)


def test_ours_traces_a_next_hops_replies_as_upstream(tmp_path: Path) -> None:
    assert _as_client("ours", daemon_base(tmp_path)) == HOP_TRACES


@needs_oracle
def test_next_hop_trace_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_as_client(side, base) for side in SIDES)
    assert ours == upstream


# ---- the POP server -----------------------------------------------------------------------------

#: POP command lines and the ``rx<<:`` texts E-MailRelay 2.6b writes for them
POP_CASES = ((b"NOOP a\x00b", b'"NOOP a\\0b"'), (b"NOOP a\tb\\c", b'"NOOP a\\tb\\\\c"'), (b"QUIT", b'"QUIT"'))


def _pop(side: str, base: Path) -> list[bytes]:
    """``side``'s POP server's traces of :data:`POP_CASES`."""
    secrets = base / f"{side}.auth"
    secrets.write_text("server plain me secret\n")
    secrets.chmod(0o644)
    pop_port = free_port()
    with start(side, base, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets)) as daemon:
        wait_until(lambda: _listening(pop_port), 10)
        with socket.create_connection(("127.0.0.1", pop_port), timeout=20) as sock:
            replies = sock.makefile("rb")
            replies.readline()
            for line, _ in POP_CASES:
                sock.sendall(line + b"\r\n")
                assert replies.readline(), line
        return _traces(daemon)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_ours_traces_pop_commands_as_upstream(tmp_path: Path) -> None:
    assert _pop("ours", daemon_base(tmp_path)) == [t for _, t in POP_CASES]


@needs_oracle
def test_pop_trace_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_pop(side, base) for side in SIDES)
    assert ours == upstream
