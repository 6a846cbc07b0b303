"""TLS alerts of failed handshakes against E-MailRelay 2.6b, a follow-up probe (7 Dec 2026).

What it checks: each test runs on ours alone (so a clone without the oracle tests it) and, with
``EMAILRELAY_ORACLE_BIN`` set, on E-MailRelay 2.6b too, asserting on both sides what 2.6b does:
a handshake that fails sends OpenSSL's alert before the connection closes, so the peer learns
why instead of seeing an EOF (``openssl s_client`` prints ``SSL alert number N``):

- server side, with ``--server-tls-verify <ca>``: a client certificate from another CA is
  ``unknown ca`` (48, TLS 1.2 and 1.3); no certificate is ``handshake failure`` (40) in TLS 1.2
  and ``certificate required`` (116) in TLS 1.3; a client offering only TLS 1.0/1.1 is
  ``internal error`` (80: OpenSSL's ``no suitable signature algorithm``); a client offering
  only ciphers we refuse is ``handshake failure`` (40) -- for SMTP STARTTLS (the uvloop event
  loop), ``--server-tls-connection`` (the standard loop) and POP STLS;
- client side: a next hop whose certificate fails ``--client-tls-verify`` gets ``unknown ca``,
  after STARTTLS and with ``--client-tls-connection``;
- ours alone: ``--client-tls-connection`` (now a handshake by ``start_tls`` on the connected
  socket) still delivers, TLS 1.2 and 1.3, on uvloop and on the standard event loop (which hands
  over the first data as the handshake ends).

Nothing is kept different.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from emailrelay.auth import tls
from emailrelay.protocol import smtp_client as sc
from emailrelay.services.security import ClientSecurity
from emailrelay.services.smtp_connection import SmtpConnection
from tests.support.certs import Certs, no_verify_context
from tests.support.diff_forwarding import B, as_client, tls_hop
from tests.support.oracle import daemon_base, needs_oracle, read_reply, start
from tests.support.relay import free_port, wait_until
from tests.support.tls_prefaces import pop_stls, smtp_starttls

pytestmark = pytest.mark.timeout(120)

SIDES = [pytest.param("ours"), pytest.param("upstream", marks=needs_oracle)]

UNKNOWN_CA = "TLSV1_ALERT_UNKNOWN_CA"  # 48
CERTIFICATE_REQUIRED = "TLSV13_ALERT_CERTIFICATE_REQUIRED"  # 116
HANDSHAKE_FAILURE = "SSLV3_ALERT_HANDSHAKE_FAILURE"  # 40
INTERNAL_ERROR = "TLSV1_ALERT_INTERNAL_ERROR"  # 80


# ------------------------------------------------------------------ helpers


def _client(
    certificate: Path | None = None,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    old: bool = False,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A client context: optionally a certificate, a maximum version, only TLS 1.0/1.1 (``old``),
    only ``ciphers``."""
    context = no_verify_context()
    if certificate is not None:
        context.load_cert_chain(str(certificate))
    with warnings.catch_warnings():  # (TLS 1.0/1.1 are deprecated: that is the point)
        warnings.simplefilter("ignore", DeprecationWarning)
        if old:
            context.minimum_version, maximum = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
            context.set_ciphers("DEFAULT@SECLEVEL=0")
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def _alert(port: int, context: ssl.SSLContext, preface: Callable[[socket.socket], None] | None) -> str:
    """What the client's TLS layer hears when the server refuses the handshake: the alert's name
    (OpenSSL's reason, ``TLSV1_ALERT_UNKNOWN_CA``), or ``eof`` when the server just closed.  It
    reads after the handshake: a TLS 1.3 server refuses a client certificate after the client's
    side of the handshake is done."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if preface is not None:
            preface(sock)
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                data = tls.recv(100)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            return "eof"
        except ssl.SSLError as exc:
            return str(exc.reason)
        return "eof" if not data else "accepted"


def _verifying(certs: Certs, tls: str = "--server-tls") -> list[str]:
    return [tls, "--server-tls-certificate", str(certs.server_pem), "--server-tls-verify", str(certs.ca)]


def _cases(certs: Certs) -> dict[str, ssl.SSLContext]:
    tls12 = ssl.TLSVersion.TLSv1_2
    return {
        "other-ca-1.3": _client(certs.rogue_client_pem),
        "other-ca-1.2": _client(certs.rogue_client_pem, tls12),
        "no-certificate-1.3": _client(),
        "no-certificate-1.2": _client(maximum=tls12),
        "tls-1.0-1.1": _client(certs.client_pem, old=True),
        "refused-ciphers": _client(certs.client_pem, tls12, ciphers="NULL-SHA256:@SECLEVEL=0"),
    }


EXPECTED = {
    "other-ca-1.3": UNKNOWN_CA,
    "other-ca-1.2": UNKNOWN_CA,
    "no-certificate-1.3": CERTIFICATE_REQUIRED,
    "no-certificate-1.2": HANDSHAKE_FAILURE,
    "tls-1.0-1.1": INTERNAL_ERROR,
    "refused-ciphers": HANDSHAKE_FAILURE,
}


# ------------------------------------------------------------------ server side


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "server-tls-connection"])
def test_smtp_server_sends_the_alert(tmp_path: Path, certs: Certs, side: str, implicit: bool) -> None:
    base = daemon_base(tmp_path)
    args = _verifying(certs, "--server-tls-connection" if implicit else "--server-tls")
    with start(side, base, *args, name=side) as relay:
        heard = {
            name: _alert(relay.port, context, None if implicit else smtp_starttls)
            for name, context in _cases(certs).items()
        }
        assert heard == EXPECTED
        # the session itself still fails as before: logged, then closed
        assert wait_until(lambda: relay.log().count("tls error: SSL_accept()") >= len(EXPECTED), 10)


@pytest.mark.parametrize("side", SIDES)
def test_pop_server_sends_the_alert(tmp_path: Path, certs: Certs, side: str) -> None:
    base = daemon_base(tmp_path)
    secrets = base / "pop.auth"
    secrets.write_text("server plain me secret\n")
    secrets.chmod(0o644)
    pop_port = free_port()
    args = [*_verifying(certs), "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets)]
    with start(side, base, *args, name=side) as relay:
        assert wait_until(lambda: "pop server on" in relay.log(), 10)
        cases = _cases(certs)
        names = ("other-ca-1.3", "other-ca-1.2", "tls-1.0-1.1")
        heard = {name: _alert(pop_port, cases[name], pop_stls) for name in names}
        assert heard == {name: EXPECTED[name] for name in names}
        assert wait_until(
            lambda: relay.log().count("pop connection closed: peer disconnected: ssl accept") == 3, 10
        )


def test_a_good_client_still_gets_in(tmp_path: Path, certs: Certs) -> None:
    """Ours: the same relay still takes a client certificate from its CA (STARTTLS, uvloop)."""
    base = daemon_base(tmp_path)
    with (
        start("ours", base, *_verifying(certs), name="ours") as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock,
    ):
        smtp_starttls(sock)
        with _client(certs.client_pem).wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"NOOP\r\n")
            assert read_reply(tls.makefile("rb")).startswith("250")


# ------------------------------------------------------------------ client side


@pytest.mark.parametrize("side", SIDES)
def test_forwarding_client_sends_the_alert(tmp_path: Path, certs: Certs, side: str) -> None:
    """A next hop whose certificate the CA of ``--client-tls-verify`` did not sign: the hop hears
    ``unknown ca`` after STARTTLS, and nothing is delivered."""
    base = daemon_base(tmp_path)
    with tls_hop(certificate=certs.self_signed_pem)() as hop:
        run = as_client(
            side,
            base,
            hop,
            [[B]],
            "--client-tls",
            "--client-tls-verify",
            str(certs.ca),
            stamp=int(time.time()),
        )
        assert run.rc != 0 and not hop.deliveries
        assert wait_until(lambda: hop.tls_errors, 10)
        assert UNKNOWN_CA in hop.tls_errors[0], hop.tls_errors


@contextmanager
def _implicit_tls_hop(certificate: Path) -> Iterator[tuple[int, list[str]]]:
    """A next hop for ``--client-tls-connection`` that only does the handshake: its port, and what
    its TLS layer heard (the alert's name, as :func:`_alert`)."""
    heard: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate))
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(20)

        def serve() -> None:
            try:
                conn, _ = server.accept()
                with context.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(100)
                heard.append("accepted")
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
                heard.append("eof")
            except ssl.SSLError as exc:
                heard.append(str(exc.reason))
            except OSError as exc:  # (nobody came)
                heard.append(repr(exc))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        yield server.getsockname()[1], heard
        thread.join(15)


@pytest.mark.parametrize("side", SIDES)
def test_forwarding_client_sends_the_alert_with_tls_at_connect(
    tmp_path: Path, certs: Certs, side: str
) -> None:
    base = daemon_base(tmp_path)
    with _implicit_tls_hop(certs.self_signed_pem) as (port, heard):
        run = as_client(
            side, base, f"127.0.0.1:{port}", [[B]], "--client-tls-connection", "--client-tls-verify", str(certs.ca),
            stamp=int(time.time()),
        )  # fmt: skip
        assert run.rc != 0
        assert wait_until(lambda: heard, 15)
    assert heard == [UNKNOWN_CA]
    assert (
        "emailrelay: warning: tls: tls error: SSL_connect(): [error:0A000086:SSL routines::certificate verify failed]"
        in run.log
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("tls_config", ["-tlsv1.2", None], ids=["tls1.2", "tls1.3"])
def test_tls_at_connect_still_delivers(certs: Certs, loop: str, tls_config: str | None) -> None:
    """Ours, in process: an ``SmtpConnection`` with TLS at connect to an implicit-TLS next hop
    reads the greeting and the EHLO reply over TLS, and quits."""
    security = ClientSecurity(None, None, tls.client_context(tls_config=tls_config), True, False)

    async def session(port: int) -> tuple[bool, str | None]:
        conn = SmtpConnection(
            f"127.0.0.1:{port}", sc.ClientConfig(helo_name="c.example"), response_timeout=10, trace=False
        )
        await asyncio.wait_for(conn.open(10, None, security), 15)
        assert conn.transport is not None
        version = conn.transport.get_extra_info("ssl_object").version()
        await asyncio.wait_for(conn.quit(), 10)
        return conn.encrypted, version

    with tls_hop(certificate=certs.server_pem, implicit=True)() as hop:
        if loop == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            result = uvloop.run(session(hop.port))
        else:
            result = asyncio.run(session(hop.port))
        assert result == (True, "TLSv1.2" if tls_config else "TLSv1.3")
        assert wait_until(lambda: hop.verbs() == ["EHLO", "QUIT"], 5), hop.commands
        assert all(over_tls for _, over_tls, _ in hop.commands)
