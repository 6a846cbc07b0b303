"""STARTTLS command/response injection (CVE-2011-0411 and friends), on all three sides.

Plaintext that arrives in the same packet as STARTTLS (or STLS), or right
behind the server's 220, was never protected by TLS: an attacker on the
path can add it.  It must be thrown away, never treated as if it had come
through the encrypted session:

- server side: ``STARTTLS\\r\\nMAIL FROM:<evil@x>\\r\\n`` in one packet must
  not give a MAIL transaction, nor a reply inside TLS;
- client side (forwarding): a next hop answering ``220 go\\r\\n250 injected\\r\\n``
  in one write must not shift the forwarder's replies by one;
- POP side: ``STLS`` likewise (skipped while ``--pop`` is not implemented).
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import pytest

from emailrelay.spool import envelope as envmod
from tests.support.certs import HAVE_OPENSSL, Certs, make_certs, no_verify_context
from tests.support.relay import Relay, free_port, spool_files, start_relay, wait_for_port, wait_until
from tests.support.tls_server import TlsSmtpServer, as_client, queued, submit

pytestmark = [
    pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command"),
    pytest.mark.timeout(60),
]

BODY = b"Subject: injection test\r\nMessage-ID: <injection@example.com>\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


class LineReader:
    """Reads CRLF lines from a socket, keeping whatever came after them in ``pending``."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.pending = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.pending:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed; partial {self.pending!r}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\r\n", 1)
        return line

    def reply(self) -> list[bytes]:
        """One (possibly multi-line) SMTP reply."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines


# ------------------------------------------------------------------ server side


@pytest.mark.parametrize("mode", ["single-process", "supervised"])
def test_server_ignores_mail_pipelined_with_starttls(tmp_path: Path, certs: Certs, mode: str) -> None:
    extra = ("--single-process",) if mode == "single-process" else ()
    relay = start_relay(tmp_path, *extra, "--server-tls", "--server-tls-certificate", str(certs.server_pem))
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=20) as raw:
            r = LineReader(raw)
            assert r.reply()[0].startswith(b"220 ")
            raw.sendall(b"EHLO attacker.example.com\r\n")
            assert any(b"STARTTLS" in line for line in r.reply())
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")  # one packet
            assert r.reply()[0].startswith(b"220 ")
            assert r.pending == b""  # no plaintext answer to the injected MAIL
            with no_verify_context().wrap_socket(raw, server_hostname="localhost") as tls:
                t = LineReader(tls)
                tls.sendall(b"EHLO client.example.com\r\n")
                ehlo = t.reply()
                assert ehlo[0].startswith(b"250-") and b"hello" in ehlo[0], ehlo  # not a reply to MAIL
                assert not any(b"STARTTLS" in line for line in ehlo)
                # a legitimate transaction works: MAIL is not "nested" inside an injected one
                tls.sendall(b"MAIL FROM:<good@example.com>\r\n")
                assert t.reply() == [b"250 sender <good@example.com> OK"]
                tls.sendall(b"RCPT TO:<bob@example.net>\r\n")
                assert t.reply()[0].startswith(b"250 ")
                tls.sendall(b"DATA\r\n")
                assert t.reply()[0].startswith(b"354 ")
                tls.sendall(BODY + b".\r\n")
                assert t.reply()[0].startswith(b"250 ")
                tls.sendall(b"QUIT\r\n")
                assert t.reply()[0].startswith(b"221")
        assert wait_until(lambda: len(spool_files(relay.spool, ".envelope")) == 1, 10)
    finally:
        relay.stop()
    (path,) = spool_files(relay.spool, ".envelope")
    assert envmod.parse(path.read_bytes()).from_address == "good@example.com"
    assert not any(b"evil@x" in p.read_bytes() for p in spool_files(relay.spool))
    assert "evil@x" not in relay.log()  # never even parsed as a command
    assert re.search(r"info: tls .*established", relay.log())


def test_server_ignores_auth_pipelined_with_starttls(tmp_path: Path, certs: Certs) -> None:
    """The same with credentials: an injected AUTH must not authenticate the TLS session."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice secret1\n")
    relay = start_relay(
        tmp_path, "--single-process", "--server-auth", str(secrets), "--server-tls",
        "--server-tls-certificate", str(certs.server_pem),
    )  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=20) as raw:
            r = LineReader(raw)
            r.reply()
            raw.sendall(b"EHLO attacker.example.com\r\n")
            r.reply()
            raw.sendall(b"STARTTLS\r\nAUTH PLAIN AGFsaWNlAHNlY3JldDE=\r\n")  # valid credentials, injected
            assert r.reply()[0].startswith(b"220 ") and r.pending == b""
            with no_verify_context().wrap_socket(raw, server_hostname="localhost") as tls:
                t = LineReader(tls)
                tls.sendall(b"EHLO client.example.com\r\n")
                assert b"hello" in t.reply()[0]
                tls.sendall(b"MAIL FROM:<evil@x>\r\n")
                assert t.reply()[0].startswith(b"530 ")  # not authenticated
    finally:
        relay.stop()
    assert "successful authentication" not in relay.log()
    assert spool_files(relay.spool, ".envelope") == []


# ------------------------------------------------------------------ client side


def test_forwarder_ignores_reply_injected_after_220(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool, body=BODY)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice alice-secret\n")
    evil = TlsSmtpServer(certs.server_pem, starttls_reply=b"220 go\r\n250 injected\r\n")
    with evil:
        run = as_client(spool, evil.port, "--client-tls", "--client-auth", str(secrets))
        delivered = list(evil.deliveries)
        verbs = evil.verbs()
    if run.rc == 0:  # delivered: then exactly right, in the right order
        assert verbs == ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"], verbs
        (d,) = delivered
        assert (d.mail_from, d.rcpts, d.user, d.tls) == (
            "sender@example.com",
            ["rcpt@example.net"],
            "alice",
            True,
        )
        assert d.data.endswith(BODY)
        assert queued(spool) == []
    else:  # or failed cleanly: nothing half-delivered, the message waits for a retry
        assert delivered == [] and "DATA" not in verbs, (verbs, run.log)
        assert len(queued(spool)) == 1 and spool_files(spool, ".bad") == []
    # the injected line never counted as the answer to anything sent over TLS
    after_tls = run.log.split("tls protocol established", 1)[-1]
    assert "250 injected" not in after_tls, run.log
    assert "tls protocol established" in run.log


def test_forwarder_control_without_injection(tmp_path: Path, certs: Certs) -> None:
    """The control: the same next hop without the injection delivers normally."""
    spool = tmp_path / "spool"
    submit(spool, body=BODY)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice alice-secret\n")
    with TlsSmtpServer(certs.server_pem) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        assert run.rc == 0, run.log
        assert hop.verbs() == ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]


# ------------------------------------------------------------------ POP side


def test_pop_ignores_commands_pipelined_with_stls(tmp_path: Path, certs: Certs) -> None:
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain alice secret1\n")
    pop_port = free_port()
    relay: Relay = start_relay(
        tmp_path, "--single-process", "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets),
        "--server-tls", "--server-tls-certificate", str(certs.server_pem),
    )  # fmt: skip
    try:
        wait_for_port(pop_port, proc=relay.proc)
        with socket.create_connection(("127.0.0.1", pop_port), timeout=20) as raw:
            r = LineReader(raw)
            assert r.line().startswith(b"+OK")
            raw.sendall(b"STLS\r\nQUIT\r\n")  # one packet: the QUIT is the attacker's
            assert r.line().startswith(b"+OK") and r.pending == b""
            with no_verify_context().wrap_socket(raw, server_hostname="localhost") as tls:
                t = LineReader(tls)
                tls.sendall(b"CAPA\r\n")
                first = t.line()
                assert first.startswith(b"+OK") and b"signing off" not in first.lower(), first
                capabilities = []
                while (line := t.line()) != b".":
                    capabilities.append(line)
                assert b"USER" in capabilities  # the CAPA was answered, not taken as a session end
                # CAPA still lists STLS under TLS, as E-MailRelay 2.6b's does; a second STLS is refused
                tls.sendall(b"STLS\r\n")
                assert t.line().startswith(b"-ERR")
                tls.sendall(b"USER alice\r\n")
                assert t.line().startswith(b"+OK")
                tls.sendall(b"PASS secret1\r\n")
                assert t.line().startswith(b"+OK")
                tls.sendall(b"QUIT\r\n")
                assert t.line().startswith(b"+OK")
    finally:
        relay.stop()
