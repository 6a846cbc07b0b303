"""TLS on the server side: --server-tls (STARTTLS), --server-tls-connection (implicit TLS),
--server-tls-required and --server-tls-verify with client certificates.

Real peers only: smtplib, ``openssl s_client`` and swaks.  The client
certificate case runs under the circus supervisor (no --single-process).
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from emailrelay.spool import envelope as envmod
from tests.support.certs import HAVE_OPENSSL, Certs, make_certs
from tests.support.relay import Relay, program, spool_files, start_relay, wait_until

pytestmark = [
    pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command"),
    pytest.mark.timeout(90),
]

SWAKS = shutil.which("swaks")
BODY = b"Subject: tls server test\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def starttls_relay(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Relay]:
    tmp = tmp_path_factory.mktemp("starttls")
    relay = start_relay(
        tmp, "--single-process", "--server-tls", "--server-tls-certificate", str(certs.server_pem)
    )
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def implicit_relay(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Relay]:
    tmp = tmp_path_factory.mktemp("implicit")
    relay = start_relay(
        tmp, "--single-process", "--server-tls-connection", "--server-tls-certificate", str(certs.server_pem),
        wait=False,
    )  # fmt: skip
    # the port speaks TLS at once: wait for the listening line rather than probing in plaintext
    assert wait_until(lambda: "smtp server on" in relay.log() or relay.proc.poll() is not None, 15), (
        relay.log()
    )
    assert relay.proc.poll() is None, relay.log()
    yield relay
    relay.stop()


def verifying(certs: Certs, client_pem: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))  # verifies chain and host name
    if client_pem is not None:
        ctx.load_cert_chain(client_pem)
    return ctx


def envelope_of(spool: Path, sender: str) -> envmod.Envelope:
    envs = [envmod.parse(p.read_bytes()) for p in spool_files(spool, ".envelope")]
    matching = [e for e in envs if e.from_address == sender]
    assert len(matching) == 1, envs
    return matching[0]


def content_of(spool: Path, sender: str) -> bytes:
    for p in spool_files(spool, ".envelope"):
        if envmod.parse(p.read_bytes()).from_address == sender:
            return p.with_name(p.name.replace(".envelope", ".content")).read_bytes()
    raise AssertionError(f"no message from {sender}")


def s_client(port: int, commands: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` with ``commands`` (LF lines, sent as CRLF) on stdin; it ends when the server closes."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-crlf", "-brief", "-ign_eof", *args]
    return subprocess.run(cmd, input=commands, capture_output=True, text=True, timeout=timeout)


def log_has(relay: Relay, pattern: str, timeout: float = 5.0) -> bool:
    return wait_until(lambda: re.search(pattern, relay.log(), re.MULTILINE) is not None, timeout)


# ------------------------------------------------------------------ STARTTLS


def test_starttls_with_smtplib(starttls_relay: Relay, certs: Certs) -> None:
    relay = starttls_relay
    with smtplib.SMTP("localhost", relay.port, timeout=20) as c:
        c.ehlo("client.example.com")
        assert c.has_extn("starttls")
        assert c.starttls(context=verifying(certs))[0] == 220
        assert isinstance(c.sock, ssl.SSLSocket) and c.sock.version() in ("TLSv1.2", "TLSv1.3")
        c.ehlo("client.example.com")
        assert not c.has_extn("starttls")  # not offered twice
        c.sendmail("starttls@example.com", ["bob@example.net"], BODY)
    env = envelope_of(relay.spool, "starttls@example.com")
    assert env.client_certificate == ""  # none was asked for
    received = content_of(relay.spool, "starttls@example.com").split(b"\r\n", 1)[0]
    assert re.search(rb" with ESMTPS tls [A-Z0-9_]+ ; ", received), received  # the cipher, as upstream's
    assert log_has(relay, r"^emailrelay: [0-9.]+: info: tls .*established.*TLSv1\.[23]")


def test_starttls_with_openssl_s_client(starttls_relay: Relay, certs: Certs) -> None:
    relay = starttls_relay
    done = s_client(
        relay.port, "EHLO client.example.com\nNOOP\nQUIT\n", "-starttls", "smtp",
        "-CAfile", str(certs.ca), "-verify_return_error", "-verify_hostname", "localhost",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Verification: OK" in done.stderr and "Verified peername: localhost" in done.stderr
    assert re.search(r"^250-\S+ says hello", done.stdout, re.MULTILINE), done.stdout
    assert "STARTTLS" not in done.stdout  # the EHLO inside TLS
    assert done.stdout.rstrip().endswith("221 OK")
    assert log_has(relay, r'rx<<: "STARTTLS"')
    assert log_has(relay, r"info: tls .*established")


def test_second_starttls_is_refused(starttls_relay: Relay, certs: Certs) -> None:
    with smtplib.SMTP("localhost", starttls_relay.port, timeout=20) as c:
        c.ehlo("client.example.com")
        c.starttls(context=verifying(certs))
        c.ehlo("client.example.com")
        assert c.docmd("STARTTLS") == (
            503,
            b"command out of sequence -- use RSET to resynchronise",
        )  # upstream


@pytest.mark.skipif(SWAKS is None, reason="needs swaks")
def test_starttls_with_swaks(starttls_relay: Relay) -> None:
    out = subprocess.run(
        [str(SWAKS), "-s", "127.0.0.1", "-p", str(starttls_relay.port), "-tls", "-f", "swaks-tls@example.com",
         "-t", "bob@example.net", "--timeout", "20"],
        capture_output=True, timeout=40, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    text = out.stdout.decode(errors="replace")
    assert out.returncode == 0, text
    assert re.search(r"^<~  250 message processed", text, re.MULTILINE), text
    assert b" with ESMTPS " in content_of(starttls_relay.spool, "swaks-tls@example.com").split(b"\r\n", 1)[0]


# ------------------------------------------------------------------ implicit TLS


def test_implicit_tls_with_openssl_s_client(implicit_relay: Relay, certs: Certs) -> None:
    done = s_client(
        implicit_relay.port, "EHLO client.example.com\nQUIT\n",
        "-CAfile", str(certs.ca), "-verify_return_error", "-verify_hostname", "localhost",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Verification: OK" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("220 ") and "E-MailRelay" in lines[0]  # the greeting comes inside TLS
    assert "STARTTLS" not in done.stdout
    assert lines[-1] == "221 OK"
    assert log_has(implicit_relay, r"info: tls .*established")


def test_implicit_tls_with_smtplib_and_swaks(implicit_relay: Relay, certs: Certs) -> None:
    with smtplib.SMTP_SSL("localhost", implicit_relay.port, timeout=20, context=verifying(certs)) as c:
        c.ehlo("client.example.com")
        assert not c.has_extn("starttls")
        c.sendmail("smtps@example.com", ["bob@example.net"], BODY)
    assert b" with ESMTPS " in content_of(implicit_relay.spool, "smtps@example.com").split(b"\r\n", 1)[0]
    if SWAKS is None:
        pytest.skip("needs swaks")
    out = subprocess.run(
        [str(SWAKS), "-s", "127.0.0.1", "-p", str(implicit_relay.port), "--tls-on-connect",
         "-f", "swaks-smtps@example.com", "-t", "bob@example.net", "--timeout", "20"],
        capture_output=True, timeout=40, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    text = out.stdout.decode(errors="replace")
    assert out.returncode == 0, text
    assert re.search(r"^<~  220 ", text, re.MULTILINE), text
    envelope_of(implicit_relay.spool, "swaks-smtps@example.com")


def test_plaintext_client_gets_no_greeting_on_implicit_tls_port(implicit_relay: Relay) -> None:
    with socket.create_connection(("127.0.0.1", implicit_relay.port), timeout=10) as s:
        s.sendall(b"EHLO plain.example.com\r\n")  # not a TLS ClientHello
        s.settimeout(10)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"220 " not in data and b"250" not in data  # nothing readable in plaintext


# ------------------------------------------------------------------ --server-tls-required


def test_tls_required_refuses_mail_and_auth_before_starttls(tmp_path: Path, certs: Certs) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice secret1\n")
    relay = start_relay(
        tmp_path, "--single-process", "--server-tls", "--server-tls-certificate", str(certs.server_pem),
        "--server-tls-required", "--server-auth", str(secrets),
    )  # fmt: skip
    try:
        with smtplib.SMTP("localhost", relay.port, timeout=20) as c:
            c.ehlo("client.example.com")
            assert c.has_extn("starttls") and c.has_extn("auth")  # AUTH is offered, as upstream does
            assert c.mail("early@example.com") == (530, b"authentication required: use starttls")
            # ours refuses credentials in clear text (docs/decisions.md: AUTH before STARTTLS)
            assert c.docmd("AUTH", "LOGIN") == (530, b"encryption required: use starttls")
            c.rset()
            c.starttls(context=verifying(certs))
            c.ehlo("client.example.com")
            assert c.has_extn("auth")
            assert c.login("alice", "secret1")[0] == 235
            c.sendmail("late@example.com", ["bob@example.net"], BODY)
    finally:
        relay.stop()
    assert envelope_of(relay.spool, "late@example.com").authentication == "alice"
    assert not any(
        envmod.parse(p.read_bytes()).from_address == "early@example.com"
        for p in spool_files(relay.spool, ".envelope")
    )


def test_tls_required_without_server_tls_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [program(), "--no-daemon", "--no-syslog", "--single-process", "--port", "0", "--spool-dir", str(tmp_path),
         "--user", "root", "--server-tls-required"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        done.stderr
        == b"emailrelay: usage error: --server-tls-required requires --server-tls or --server-tls-connection\n"
    )


# ------------------------------------------------------------------ client certificates (supervised)


def test_client_certificates_verified_under_supervisor(tmp_path: Path, certs: Certs) -> None:
    relay = start_relay(
        tmp_path, "--server-tls", "--server-tls-certificate", str(certs.server_pem),
        "--server-tls-verify", str(certs.ca), name="supervised",
    )  # fmt: skip
    try:
        # a certificate signed by the CA: accepted, and recorded in the envelope
        with smtplib.SMTP("localhost", relay.port, timeout=30) as c:
            c.ehlo("client.example.com")
            c.starttls(context=verifying(certs, certs.client_pem))
            c.ehlo("client.example.com")
            c.sendmail("with-cert@example.com", ["bob@example.net"], BODY)
        # openssl s_client with the same certificate
        done = s_client(
            relay.port, "EHLO ossl.example.com\nQUIT\n", "-starttls", "smtp", "-CAfile", str(certs.ca),
            "-cert", str(certs.client_pem),
        )  # fmt: skip
        assert done.returncode == 0 and done.stdout.rstrip().endswith("221 OK"), done.stderr
        # no certificate, or one the CA did not sign: the handshake fails, nothing more is read
        for client_pem in (None, certs.rogue_client_pem):
            with smtplib.SMTP("localhost", relay.port, timeout=30) as c:
                c.ehlo("client.example.com")
                with pytest.raises((smtplib.SMTPServerDisconnected, ssl.SSLError, ConnectionError)):
                    c.starttls(context=verifying(certs, client_pem))
                    c.ehlo(
                        "client.example.com"
                    )  # TLS 1.3: the server's verdict comes after the client's Finished
                    c.sendmail("no-cert@example.com", ["bob@example.net"], BODY)
        done = s_client(relay.port, "EHLO ossl.example.com\nQUIT\n", "-starttls", "smtp")
        assert "221 OK" not in done.stdout
        assert wait_until(
            lambda: len(re.findall(r"warning: tls: tls error: SSL_accept\(\): \[error:", relay.log())) >= 3,
            10,
        ), relay.log()
    finally:
        relay.stop()
    log = relay.log()
    assert "supervisor:" in log
    assert re.search(r"tls error: .*(certificate|CERTIFICATE)", log)
    env = envelope_of(relay.spool, "with-cert@example.com")
    pem = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(certs.client_cert.read_text()))
    assert env.client_certificate.replace("\r\n", "\n").strip() == pem.strip()
    raw = next(p for p in spool_files(relay.spool, ".envelope")).read_bytes()
    folded = re.search(
        rb"X-MailRelay-ClientCertificate: (-----BEGIN CERTIFICATE-----\r\n(?: [^\r\n]+\r\n)+)", raw
    )
    assert folded is not None, raw  # continuation lines start with a space
    assert folded.group(1).rstrip().endswith(b" -----END CERTIFICATE-----")
    assert not any(
        envmod.parse(p.read_bytes()).from_address == "no-cert@example.com"
        for p in spool_files(relay.spool, ".envelope")
    )


def test_implicit_tls_handshake_failure_is_logged(tmp_path: Path, certs: Certs) -> None:
    relay = start_relay(
        tmp_path, "--single-process", "--server-tls-connection", "--server-tls-certificate", str(certs.server_pem),
        "--server-tls-verify", str(certs.ca), wait=False,
    )  # fmt: skip
    try:
        assert wait_until(lambda: "smtp server on" in relay.log(), 15), relay.log()
        done = s_client(relay.port, "EHLO x\nQUIT\n")  # no client certificate
        assert "221 OK" not in done.stdout
        assert log_has(relay, r"tls error", timeout=3), relay.log()
    finally:
        relay.stop()
