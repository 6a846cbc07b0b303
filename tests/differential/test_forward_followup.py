"""The forwarding client's odd replies and failure words, against E-MailRelay 2.6b (a follow-up of
the client probe of 7 Dec 2026).

What it checks, with tests/support/diff_forwarding.py's helpers (hand-written spools,
``--as-client``, a scripted next hop on loopback), on both programs where the oracle is set
(``EMAILRELAY_ORACLE_BIN``: log, exit code, spool and dialogue alike) and on ours alone otherwise
(the spool's reason lines, what is left, the log lines that matter):

- a reply that makes no sense where it comes is upstream's "unexpected response", a session
  error that fails the message in hand (reason ``smtp error: unexpected response[: <text>]``,
  no code; no text for a 2xx, ``error`` for a reply without one) and leaves the next message for
  later: a greeting of 250 or 150, an EHLO reply of 251, 251, 354 or 150 to MAIL, 250 or 150
  to DATA; a 354 or 150 to RCPT accepts the recipient, as upstream (and the next hop's 503
  to DATA is then the unexpected one); a final reply of 150 fails only its message;
- a reply without text fails its message with the reason ``error``; a reply line over 4096
  octets fails only its message, with upstream's warning ``very long line detected`` (once
  per process) and the traced line cut to 1000 octets, ending ``" ..."``;
- a reply ended by a bare LF: upstream waits for a CRLF (a response timeout fails the message),
  ours takes the LF as the line's end and forwards (docs/decisions.md, "Forwarding");
- ``--client-tls-required`` and a next hop that refuses EHLO: no HELO, ``tls is mandated but
  the server cannot do esmtp``;
- a next hop that resets the connection instead of answering the data: ``peer disconnected:
  connection reset by peer`` (the system's words after upstream's); a reset while the content
  streams stops it, and it is not traced (ours only);
- a connection failure names the address the next hop's name resolved to;
- an envelope without the ``X-MailRelay-ForwardTo*`` lines (an older format): upstream ignores
  it with a warning and leaves it for ever; ours forwards it (docs/decisions.md, "Forwarding").
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from emailrelay.protocol import smtp_client as sc
from tests.support.diff_forwarding import NO_PIPELINING, B, C, Run, as_client, both, reason_lines, same
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import daemon_base, needs_oracle
from tests.support.relay import free_port

pytestmark = pytest.mark.timeout(180)

UNEXPECTED = b"smtp error: unexpected response"


@dataclass(frozen=True)
class Case:
    """A next hop's script, the options, and what upstream leaves: each ``.bad``'s reason and code,
    and how many messages stay for later (a session error leaves the rest)."""

    hop: dict[str, Any]
    bad: list[tuple[bytes, bytes]]
    left: int = 0
    args: tuple[str, ...] = ()
    sent: int = 0
    log: list[str] = field(default_factory=list)  # lines our log must hold (normalised)


def _session_error(reason: bytes, **hop: Any) -> Case:
    return Case(hop, [(reason, b"")], left=1)


CASES = {
    "greeting-250": _session_error(UNEXPECTED, replies={"greeting": "250 hello"}),
    "greeting-150": _session_error(UNEXPECTED + b": hmm", replies={"greeting": "150 hmm"}),
    "ehlo-251": _session_error(UNEXPECTED, replies={"ehlo": "251 hmm"}),
    "mail-251": _session_error(UNEXPECTED, replies={"mail": "251 ok"}),
    "mail-354": _session_error(UNEXPECTED + b": what", replies={"mail": "354 what"}),
    "mail-150": _session_error(UNEXPECTED + b": what", replies={"mail": "150 what"}),
    "rcpt-354": _session_error(UNEXPECTED + b": 5.5.1 need RCPT first", replies={"rcpt": "354 what"}),
    "data-250": _session_error(UNEXPECTED, replies={"data": "250 ok"}),
    "data-150": _session_error(UNEXPECTED + b": hmm", replies={"data": "150 hmm"}),
    "data-550-no-text": _session_error(UNEXPECTED + b": error", replies={"data": "550"}),
    "tls-required-helo-only": Case(
        {"helo_only": True},
        [(b"smtp error: tls is mandated but the server cannot do esmtp", b"")],
        left=1,
        args=("--client-tls", "--client-tls-required"),
    ),
    "rcpt-150": _session_error(UNEXPECTED + b": 5.5.1 need RCPT first", replies={"rcpt": "150 what"}),
    "final-150": Case({"replies": {"final": "150 hmm"}}, [(b"hmm", b" 150")] * 2),
    "final-550-no-text": Case({"replies": {"final": "550"}}, [(b"error", b" 550")] * 2),
    "final-long-line": Case(
        {"replies": {"final": "550 5.7.1 " + "x" * 5000}},
        [(b"5.7.1 " + b"x" * 5000, b" 550")] * 2,
        log=["emailrelay: warning: very long line detected: 5010 > 1000"],
    ),
}


def _hop(case: Case) -> FakeSmtp:
    return FakeSmtp(**{"extensions": NO_PIPELINING, **case.hop})


def _check(run: Run, case: Case) -> None:
    """Our run left what upstream leaves (see :class:`Case`)."""
    bads = [reason_lines(v) for k, v in sorted(run.spool.items()) if k.endswith(".bad")]
    assert bads == [[b"X-MailRelay-Reason: " + r, b"X-MailRelay-ReasonCode:" + c] for r, c in case.bad]
    assert len([k for k in run.spool if k.endswith(".envelope")]) == case.left
    assert len(run.messages) == case.sent
    assert run.rc == (1 if case.left else 0)
    for line in case.log:
        assert run.log.count(line) == 1, run.log


@needs_oracle
@pytest.mark.parametrize("name", list(CASES))
def test_replies_as_upstream(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    _check(same(both(tmp_path, lambda: _hop(case), [[B], [C]], *case.args)), case)


@pytest.mark.parametrize("name", list(CASES))
def test_replies_ours(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    with _hop(case) as hop:
        run = as_client("ours", daemon_base(tmp_path), hop, [[B], [C]], *case.args, stamp=int(time.time()))
    _check(run, case)


def test_long_reply_line_is_measured_in_octets() -> None:
    """The warning's number is the line's octets (upstream's), however the text decodes."""
    client = sc.SmtpClient(sc.ClientConfig(helo_name="h.example"), trace=False)
    client.receive_data(b"220 " + "\u00e9".encode() * 600 + b"\xff\r\n")
    assert client.long_line == 4 + 1200 + 1
    client.receive_data(b"250 " + b"x" * 2000 + b"\r\n")
    assert client.long_line == 1205  # (the first one)


def test_long_reply_line_is_traced_cut(tmp_path: Path) -> None:
    """Upstream cuts a log line at 1000 octets (without its time stamp), ending it ``" ..."``."""
    case = CASES["final-long-line"]
    with _hop(case) as hop:
        run = as_client("ours", daemon_base(tmp_path), hop, [[B]], stamp=int(time.time()))
    traced = [line for line in run.log if line.startswith('emailrelay: info: rx<<: "550 5.7.1 xx')]
    assert [len(line) for line in traced] == [1000]
    assert traced[0].endswith("x ...")


def _bare_lf_hop() -> FakeSmtp:
    return FakeSmtp(extensions=NO_PIPELINING, replies={"mail": b"250 ok\n"})


@needs_oracle
def test_bare_lf_reply_upstream_times_out_ours_forwards(tmp_path: Path) -> None:
    runs = both(tmp_path, _bare_lf_hop, [[B], [C]], "--response-timeout", "2")
    up = [reason_lines(v) for k, v in sorted(runs["upstream"].spool.items()) if k.endswith(".bad")]
    assert up == [[b"X-MailRelay-Reason: smtp error: response timeout after 2s", b"X-MailRelay-ReasonCode:"]]
    assert runs["ours"].rc == 0 and len(runs["ours"].messages) == 2 and not runs["ours"].spool


def test_bare_lf_reply_ends_the_line(tmp_path: Path) -> None:
    with _bare_lf_hop() as hop:
        run = as_client("ours", daemon_base(tmp_path), hop, [[B], [C]], "--response-timeout", "2",
                        stamp=int(time.time()))  # fmt: skip
    assert run.rc == 0 and len(run.messages) == 2 and not run.spool


class _ResettingHop:
    """A next hop that takes the data (or, ``at_once``, none of it) and then resets the connection
    (RST) instead of answering."""

    def __init__(self, *, at_once: bool = False) -> None:
        self.at_once = at_once
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands: list[tuple[int, str]] = []
        self.messages: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"220 reset.test\r\n")
            for raw in reader:
                line = raw.decode().rstrip("\r\n")
                self.commands.append((1, line))
                verb = line.split(" ")[0].split(":")[0].upper()
                if verb == "DATA":
                    conn.sendall(b"354 go\r\n")
                    while not self.at_once and reader.readline() not in (b".\r\n", b""):
                        pass
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(b"250-reset.test\r\n250 8BITMIME\r\n" if verb == "EHLO" else b"250 ok\r\n")

    def __enter__(self) -> _ResettingHop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


RESET = [(b"peer disconnected: connection reset by peer", b"")]
RESET_WORDS = (b"connection reset by peer", b"broken pipe")  # (a write or a read notices it first)


@needs_oracle
def test_reset_after_data_as_upstream(tmp_path: Path) -> None:
    run = same(both(tmp_path, _ResettingHop, [[B], [C]]))
    _check(run, Case({}, RESET, left=1))


def test_reset_after_data(tmp_path: Path) -> None:
    with _ResettingHop() as hop:
        run = as_client("ours", daemon_base(tmp_path), hop, [[B], [C]], stamp=int(time.time()))
    _check(run, Case({}, RESET, left=1))


def _big_content(spool: Path) -> None:
    for path in spool.glob("*.content"):
        path.write_bytes(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100_000)


def test_reset_during_the_content_stops_it(tmp_path: Path) -> None:
    """A reset while the content streams: no more of it is sent or traced (upstream traces the
    content once all is written), and the reason gives the system's words."""
    with _ResettingHop(at_once=True) as hop:
        run = as_client(
            "ours", daemon_base(tmp_path), hop, [[B], [C]], stamp=int(time.time()), prep=_big_content
        )
    (bad,) = [reason_lines(v) for k, v in run.spool.items() if k.endswith(".bad")]
    assert bad[0] in (b"X-MailRelay-Reason: peer disconnected: " + x for x in RESET_WORDS), bad
    assert not [line for line in run.log if "line(s) of content" in line], run.log


def _refused_port() -> int:
    return free_port()  # (nothing listens there)


@needs_oracle
def test_connect_failure_names_the_address_as_upstream(tmp_path: Path) -> None:
    hop = f"localhost:{_refused_port()}"
    run = same(both(tmp_path, lambda: hop, [[B]]))
    assert any("cannot connect to " in line and "localhost" not in line for line in run.log)


def test_connect_failure_names_the_address(tmp_path: Path) -> None:
    port = _refused_port()
    run = as_client("ours", daemon_base(tmp_path), f"localhost:{port}", [[B]], stamp=int(time.time()))
    failed = [line for line in run.log if "connect failure: cannot connect to " in line]
    assert failed and all("localhost" not in line for line in failed), run.log


def _older_envelope(spool: Path) -> None:
    """The first message's envelope without the ForwardTo lines (an older format)."""
    for path in spool.glob("*.1.envelope"):
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(x for x in lines if not x.startswith(b"X-MailRelay-ForwardTo")))


@needs_oracle
def test_older_envelope_ignored_by_upstream_forwarded_by_ours(tmp_path: Path) -> None:
    runs = both(tmp_path, lambda: FakeSmtp(extensions=NO_PIPELINING), [[B], [C]], prep=_older_envelope)
    upstream = runs["upstream"]
    assert len(upstream.messages) == 1 and sum(k.endswith(".1.envelope") for k in upstream.spool) == 1
    assert any('cannot read envelope file: expected "X-MailRelay-ForwardTo:"' in x for x in upstream.log)
    assert len(runs["ours"].messages) == 2 and runs["ours"].spool == {}


def test_older_envelope_is_forwarded(tmp_path: Path) -> None:
    with FakeSmtp(extensions=NO_PIPELINING) as hop:
        run = as_client(
            "ours", daemon_base(tmp_path), hop, [[B], [C]], stamp=int(time.time()), prep=_older_envelope
        )
    assert len(run.messages) == 2 and run.spool == {} and run.rc == 0
