"""How the SMTP and POP servers log a client that goes away, against E-MailRelay 2.6b: a follow-up
of the TLS tour (8 Dec 2026).

What it checks, each case on both sides (``upstream`` needs the oracle, ``ours`` runs without
it, so a clone tests the fix too): a client leaves a session once TLS is up (SMTP's STARTTLS,
``--server-tls-connection``, POP's STLS) in one of three ways, and the closing line names it in
upstream's words:

- with its close_notify: ``... connection closed: peer disconnected: ssl read: <peer>``;
- with a bare end of file (no close_notify): first upstream's warning ``tls: tls error:
  SSL_read(): [error:0A000126:SSL routines::unexpected eof while reading]``, then the same line;
- with a reset: the same line, no warning.

Without TLS the lines stay as they were: ``peer disconnected`` for an end of file, ``peer
disconnected: connection reset by peer`` for a reset — for POP too (ours logged Python's
``[Errno 104] Connection reset by peer``).

Kept different: nothing.  The ``--server-tls-connection`` relay runs on the standard event loop
and the others on uvloop when it is installed: the two report a bare end of file differently,
so both are here.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.support.certs import Certs, no_verify_context
from tests.support.oracle import Daemon, daemon_base, needs_oracle, normalise_log, read_reply, start
from tests.support.relay import free_port, wait_for_port, wait_until
from tests.support.tls_prefaces import pop_stls, smtp_starttls

pytestmark = pytest.mark.timeout(120)

SIDES = [pytest.param("ours"), pytest.param("upstream", marks=needs_oracle)]
HOW = ("close_notify", "eof", "reset")
UNEXPECTED_EOF = "emailrelay: warning: tls: tls error: SSL_read(): [error:0A000126:SSL routines::unexpected eof while reading]"

Preface = Callable[[socket.socket], None]


# ------------------------------------------------------------------ helpers


def _smtp_ehlo(sock: socket.socket | ssl.SSLSocket, greeted: bool) -> None:
    reader = sock.makefile("rb")
    if not greeted:
        read_reply(reader)
    sock.sendall(b"EHLO x.example\r\n")
    read_reply(reader)


def _pop_capa(sock: socket.socket | ssl.SSLSocket, greeted: bool) -> None:
    reader = sock.makefile("rb")
    if not greeted:
        reader.readline()
    sock.sendall(b"CAPA\r\n")
    while reader.readline() not in (b".\r\n", b""):
        pass


def _leave(sock: socket.socket | ssl.SSLSocket, how: str) -> None:
    """End the client's side: with TLS's close_notify, with a bare end of file, or with a reset."""
    if how == "close_notify":
        assert isinstance(sock, ssl.SSLSocket)
        sock.unwrap().close()
        return
    raw = socket.socket(fileno=sock.detach())  # (the TCP socket, without TLS's goodbye)
    if how == "reset":
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def _session(
    port: int,
    how: str,
    *,
    tls: bool,
    preface: Preface | None = None,
    command: Callable[[socket.socket | ssl.SSLSocket, bool], None],
) -> None:
    """One session: ``preface`` (plain text up to the TLS upgrade), the handshake if ``tls``, one
    command and its reply, then the client leaves ``how``."""
    sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), timeout=10)
    if preface is not None:
        preface(sock)
    if tls:
        sock = no_verify_context().wrap_socket(sock, server_hostname="localhost")
    command(sock, preface is not None)
    _leave(sock, how)


def _closing_lines(relay: Daemon, kind: str, run: Callable[[], None]) -> list[str]:
    """The warnings and the ``<kind> connection closed`` line that ``run``'s one session logs."""
    offset = len(relay.log())
    run()
    assert wait_until(lambda: f"{kind} connection closed" in relay.log()[offset:], 10), relay.log()[offset:]
    shown = (f"{kind} connection closed", ": warning: ")
    return [line for line in normalise_log(relay.log()[offset:], relay) if any(s in line for s in shown)]


def _expected(kind: str, how: str, tls: bool) -> list[str]:
    if not tls:
        why = "peer disconnected: connection reset by peer" if how == "reset" else "peer disconnected"
        return [f"emailrelay: info: {kind} connection closed: {why}: 127.0.0.1:N"]
    closed = f"emailrelay: info: {kind} connection closed: peer disconnected: ssl read: 127.0.0.1:N"
    return [UNEXPECTED_EOF, closed] if how == "eof" else [closed]


def _pop_auth(base: Path) -> Path:
    auth = base / "pop.auth"
    auth.write_text("server plain me secret\n")
    auth.chmod(0o644)
    return auth


# ------------------------------------------------------------------ SMTP


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "server-tls-connection"])
def test_smtp_client_leaving_over_tls(tmp_path: Path, certs: Certs, side: str, implicit: bool) -> None:
    base = daemon_base(tmp_path)
    tls_option = "--server-tls-connection" if implicit else "--server-tls"
    with start(side, base, tls_option, "--server-tls-certificate", str(certs.server_pem), name=side) as relay:
        # (start()'s port probe: its lines come first)
        assert wait_until(
            lambda: "connection rejected" in relay.log() or "connection closed" in relay.log(), 10
        )
        preface = None if implicit else smtp_starttls
        for how in HOW:
            lines = _closing_lines(
                relay,
                "smtp",
                partial(_session, relay.port, how, tls=True, preface=preface, command=_smtp_ehlo),
            )
            assert lines == _expected("smtp", how, tls=True), how


@pytest.mark.parametrize("side", SIDES)
def test_smtp_client_leaving_without_tls(tmp_path: Path, side: str) -> None:
    with start(side, daemon_base(tmp_path), name=side) as relay:
        assert wait_until(lambda: "connection closed" in relay.log(), 10)
        for how in ("eof", "reset"):
            lines = _closing_lines(
                relay, "smtp", partial(_session, relay.port, how, tls=False, command=_smtp_ehlo)
            )
            assert lines == _expected("smtp", how, tls=False), how


# ------------------------------------------------------------------ POP


def _start_pop(side: str, base: Path, *args: str) -> tuple[Daemon, int]:
    pop_port = free_port()
    relay = start(side, base, *args, "--pop", "--pop-port", str(pop_port), "--pop-auth", str(_pop_auth(base)))
    try:
        wait_for_port(pop_port, proc=relay.proc, timeout=10)
        # (the port probes' lines: logged before the test's sessions)
        assert wait_until(lambda: all(f"{k} connection closed" in relay.log() for k in ("smtp", "pop")), 10)
    except BaseException:
        relay.stop()
        raise
    return relay, pop_port


@pytest.mark.parametrize("side", SIDES)
def test_pop_client_leaving_over_tls(tmp_path: Path, certs: Certs, side: str) -> None:
    relay, pop_port = _start_pop(
        side, daemon_base(tmp_path), "--server-tls", "--server-tls-certificate", str(certs.server_pem)
    )
    with relay:
        for how in HOW:
            lines = _closing_lines(
                relay, "pop", partial(_session, pop_port, how, tls=True, preface=pop_stls, command=_pop_capa)
            )
            assert lines == _expected("pop", how, tls=True), how


@pytest.mark.parametrize("side", SIDES)
def test_pop_client_leaving_without_tls(tmp_path: Path, side: str) -> None:
    relay, pop_port = _start_pop(side, daemon_base(tmp_path))
    with relay:
        for how in ("eof", "reset"):
            lines = _closing_lines(
                relay, "pop", partial(_session, pop_port, how, tls=False, command=_pop_capa)
            )
            assert lines == _expected("pop", how, tls=False), how
