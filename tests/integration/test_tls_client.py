"""TLS on the forwarding side: --client-tls, --client-tls-connection, --client-tls-required,
--client-tls-verify, --client-tls-verify-name, with --client-auth over the encrypted session.

The next hop is :class:`TlsSmtpServer` from tests/support/tls_server.py, a small
STARTTLS-capable SMTP server that records what it saw — commands, who
authenticated, whether the session was encrypted, the messages.  The
relay forwards with ``emailrelay --as-client`` (a real subprocess), except
one test that runs the supervised daemon (circus) with ``--forward-to``.
"""

from __future__ import annotations

import base64
import smtplib
from pathlib import Path

import pytest

from emailrelay.spool import envelope as envmod
from tests.support.certs import HAVE_OPENSSL, Certs, make_certs
from tests.support.relay import start_relay, wait_until
from tests.support.tls_server import (
    BODY,
    TlsSmtpServer,
    as_client,
    assert_not_delivered,
    queued,
    submit,
)

pytestmark = [
    pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command"),
    pytest.mark.timeout(60),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# ------------------------------------------------------------------ STARTTLS and AUTH


def test_starttls_then_auth_plain_to_test_server(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice alice-secret\n")
    with TlsSmtpServer(certs.server_pem, mechanisms=("PLAIN",)) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        assert run.rc == 0, run.log
        assert hop.verbs() == ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]
        assert [(a.mechanism, a.user, a.ok, a.tls) for a in hop.auths] == [("PLAIN", "alice", True, True)]
        (d,) = hop.deliveries
        assert (d.tls, d.user, d.mail_from, d.rcpts) == (
            True,
            "alice",
            "sender@example.com",
            ["rcpt@example.net"],
        )
        assert d.data.endswith(BODY)
        assert "AUTH=alice" in d.mail_params  # the name we authenticated as (reference guide)
        assert hop.protocol_errors == []  # nothing pipelined behind STARTTLS
    assert queued(spool) == []
    assert "tls protocol established with 127.0.0.1:" in run.log
    assert "alice-secret" not in run.log


def test_starttls_then_auth_login(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain:b " + base64.b64encode(b"alice").decode() + " "
                       + base64.b64encode(b"alice-secret").decode() + "\n")  # fmt: skip
    with TlsSmtpServer(certs.server_pem, mechanisms=("LOGIN",)) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        assert run.rc == 0, run.log
        assert [(a.mechanism, a.user, a.ok, a.tls) for a in hop.auths] == [("LOGIN", "alice", True, True)]
        assert len(hop.deliveries) == 1 and hop.deliveries[0].tls


def test_client_auth_plain_on_the_command_line(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    value = "plain:" + base64.b64encode(b"alice").decode() + ":" + base64.b64encode(b"alice-secret").decode()
    with TlsSmtpServer(certs.server_pem) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", value)
        assert run.rc == 0, run.log
        assert [(a.user, a.ok) for a in hop.auths] == [("alice", True)]
        assert hop.deliveries[0].user == "alice"


def test_wrong_client_password_is_not_delivered(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice wrong\n")
    with TlsSmtpServer(certs.server_pem) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        # the next mechanism both sides can do after a refusal, as E-MailRelay 2.6b tries it
        assert [(a.mechanism, a.user, a.ok) for a in hop.auths] == [
            ("PLAIN", "alice", False),
            ("LOGIN", "alice", False),
        ]
        assert "authentication failed" in run.log
        assert hop.deliveries == [] and run.rc != 0


def test_client_tls_required_without_starttls_keeps_the_message(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    with TlsSmtpServer(certs.server_pem, starttls=False, require_tls=False, require_auth=False) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-tls-required")
        assert_not_delivered(spool, hop, run)
        assert "STARTTLS" not in hop.verbs() and "MAIL" not in hop.verbs()
    assert "smtp error: tls is mandated but the server cannot do starttls" in run.log  # upstream's words


def test_client_tls_without_required_falls_back_to_plaintext(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    with TlsSmtpServer(certs.server_pem, starttls=False, require_tls=False, require_auth=False) as hop:
        run = as_client(spool, hop.port, "--client-tls")
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1 and not hop.deliveries[0].tls


def test_client_tls_connection_to_implicit_tls_server(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice alice-secret\n")
    with TlsSmtpServer(certs.server_pem, implicit=True) as hop:
        run = as_client(spool, hop.port, "--client-tls-connection", "--client-auth", str(secrets))
        assert run.rc == 0, run.log
        assert "STARTTLS" not in hop.verbs()
        (d,) = hop.deliveries
        assert d.tls and d.user == "alice"
    assert "tls protocol established" in run.log


# ------------------------------------------------------------------ verification


def test_verify_against_ca_accepts_the_server(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    with TlsSmtpServer(certs.server_pem, require_auth=False) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-tls-verify", str(certs.ca))
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1 and hop.deliveries[0].tls


@pytest.mark.parametrize("which", ["self_signed_pem", "expired_pem"])
def test_verify_refuses_untrusted_or_expired_server(tmp_path: Path, certs: Certs, which: str) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    with TlsSmtpServer(getattr(certs, which), require_auth=False) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-tls-verify", str(certs.ca))
        assert_not_delivered(spool, hop, run)
        assert "MAIL" not in hop.verbs()
    # upstream's words: OpenSSL's error, then the session's end
    assert (
        "tls: tls error: SSL_connect(): [error:0A000086:SSL routines::certificate verify failed]" in run.log
    )
    assert "peer disconnected: ssl connect" in run.log


def test_expired_server_certificate_is_fine_without_verify(tmp_path: Path, certs: Certs) -> None:
    """Upstream's default: encryption without authentication (the control for the test above)."""
    spool = tmp_path / "spool"
    submit(spool)
    with TlsSmtpServer(certs.expired_pem, require_auth=False) as hop:
        run = as_client(spool, hop.port, "--client-tls")
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1


def test_verify_name_wrong_then_right(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    with TlsSmtpServer(certs.server_pem, require_auth=False) as hop:
        verify = ("--client-tls", "--client-tls-verify", str(certs.ca), "--client-tls-verify-name")
        run = as_client(spool, hop.port, *verify, "mail.example.org", "--retry", "60")
        assert_not_delivered(spool, hop, run, kept=True)
        assert "tls error" in run.log and "certificate verify failed" in run.log
        # the message waits with a back-off; --as-client ignores it and tries again
        run = as_client(spool, hop.port, *verify, "localhost")
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1
    assert queued(spool) == []


def test_client_certificate_is_presented(tmp_path: Path, certs: Certs) -> None:
    """--client-tls-certificate: a next hop that demands a client certificate gets ours."""
    spool = tmp_path / "spool"
    submit(spool)
    with TlsSmtpServer(certs.server_pem, require_auth=False, client_ca=certs.ca) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--retry", "60")
        assert_not_delivered(spool, hop, run, kept=True)
        run = as_client(spool, hop.port, "--client-tls", "--client-tls-certificate", str(certs.client_pem))
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1


# ------------------------------------------------------------------ relay to relay, supervised


def test_relay_to_relay_with_tls_and_auth(tmp_path: Path, certs: Certs) -> None:
    """--client-tls --client-auth to another emailrelay with --server-tls --server-auth."""
    server_secrets = tmp_path / "server.auth"
    server_secrets.write_text("server plain carol carol+2Bpw\n")
    client_secrets = tmp_path / "client.auth"
    client_secrets.write_text("client plain carol carol+2Bpw\n")
    downstream = start_relay(
        tmp_path, "--single-process", "--server-auth", str(server_secrets), "--server-tls",
        "--server-tls-certificate", str(certs.server_pem), "--server-tls-required", name="downstream",
    )  # fmt: skip
    try:
        spool = tmp_path / "spool"
        submit(spool)
        run = as_client(
            spool, downstream.port, "--client-tls", "--client-auth", str(client_secrets),
            "--client-tls-verify", str(certs.ca), "--client-tls-verify-name", "localhost",
        )  # fmt: skip
        assert run.rc == 0, run.log
        assert wait_until(lambda: len(queued(downstream.spool)) == 1)
    finally:
        downstream.stop()
    env = envmod.parse(queued(downstream.spool)[0].read_bytes())
    assert env.authentication == "carol"
    assert env.mail_from_auth_in == "carol"
    log = downstream.log()
    assert "tls protocol established" in log
    assert (
        "successful authentication of remote client using mechanism [cram-sha512] and plaintext secret for [carol] from line 1"
        in log
    )
    assert queued(spool) == []


def test_supervised_daemon_forwards_over_starttls(tmp_path: Path, certs: Certs) -> None:
    """The circus-supervised relay (no --single-process): SMTP in, forward role out with STARTTLS + AUTH."""
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice alice-secret\n")
    with TlsSmtpServer(certs.server_pem) as hop:
        relay = start_relay(
            tmp_path, "--forward-to", f"127.0.0.1:{hop.port}", "--poll", "0", "--client-tls",
            "--client-tls-required", "--client-auth", str(secrets), name="supervised",
        )  # fmt: skip
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:
                c.sendmail("sender@example.com", ["rcpt@example.net"], BODY)
            assert hop.wait_for_deliveries(1, timeout=30), relay.log()
            assert wait_until(lambda: queued(relay.spool) == [], 10)
        finally:
            relay.stop()
        (d,) = hop.deliveries
        assert d.tls and d.user == "alice" and d.data.endswith(BODY)
    log = relay.log()
    assert "supervisor:" in log  # really under the supervisor
    assert "tls protocol established with 127.0.0.1:" in log
