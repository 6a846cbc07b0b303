"""Client-side SMTP AUTH when forwarding (--client-auth): account selectors, XOAUTH2 with an
``oauth:cmd`` token command, md5 secrets, the "no authentication" account.

The next hop is the STARTTLS test server of ``tests/support/tls_server.py`` (it records
which user authenticated with which mechanism and secret), or another real
emailrelay.
"""

from __future__ import annotations

import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.certs import HAVE_OPENSSL, Certs, make_certs
from tests.support.relay import program, start_relay, wait_until
from tests.support.tls_server import (
    TlsSmtpServer,
    as_client,
    assert_not_delivered,
    queued,
    set_envelope_field,
    submit,
)

pytestmark = [
    pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command"),
    pytest.mark.timeout(60),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def xtext(text: str) -> str:
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in text)


def test_account_selector_picks_the_matching_client_line(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    secrets = tmp_path / "client.auth"
    secrets.write_text(
        "client plain alice alice-secret\nclient plain bob bob-secret use_bob\nclient plain:b = = noauth\n"
    )
    submit(spool, sender="default@example.com")
    set_envelope_field(Path(submit(spool, sender="as-bob@example.com")), "client_account_selector", "use_bob")
    set_envelope_field(
        Path(submit(spool, sender="anonymous@example.com")), "client_account_selector", "noauth"
    )
    accounts = {"alice": "alice-secret", "bob": "bob-secret"}
    with TlsSmtpServer(certs.server_pem, accounts=accounts, require_auth=False) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        assert run.rc == 0, run.log
        users = {d.mail_from: d.user for d in hop.deliveries}
        assert users == {
            "default@example.com": "alice",
            "as-bob@example.com": "bob",
            "anonymous@example.com": None,
        }
        assert all(a.ok for a in hop.auths)
        assert sorted(a.user for a in hop.auths) == ["alice", "bob"]
        params = {d.mail_from: d.mail_params for d in hop.deliveries}
        assert "AUTH=bob" in params["as-bob@example.com"]
    assert queued(spool) == []
    assert "bob-secret" not in run.log and "alice-secret" not in run.log


def _token_command(tmp_path: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A token command that prints a fresh token and keeps a copy of what it printed."""
    issued = tmp_path / "issued-token"
    script = tmp_path / "get token.sh"  # a space: the command line needs xtext and quoting
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = "--scope" ] && [ "$2" = "smtp" ] || exit 3\n'
        'token="ya29.$$-$(date +%s%N)"\n'
        f'printf "%s" "$token" > "{issued}"\n'
        f"printf '\\n%s\\n' \"$token\"\n"  # a leading empty line: the first non-empty line counts
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, issued


def test_xoauth2_with_token_command(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    script, issued = _token_command(tmp_path)
    secrets = tmp_path / "client.auth"
    secrets.write_text(f"client oauth:cmd alice {xtext(shlex.join([str(script), '--scope', 'smtp']))}\n")
    # the token is only known once the command has run: the server compares with what it printed
    tokens = {"alice": lambda: issued.read_text() if issued.exists() else "(not issued)"}
    with TlsSmtpServer(certs.server_pem, mechanisms=("XOAUTH2",), tokens=tokens) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        assert run.rc == 0, run.log
        (attempt,) = hop.auths
        assert (attempt.mechanism, attempt.user, attempt.ok, attempt.tls) == ("XOAUTH2", "alice", True, True)
        assert attempt.secret == issued.read_text() and attempt.secret.startswith("ya29.")
        (d,) = hop.deliveries
        assert d.user == "alice" and d.mechanism == "XOAUTH2"
    assert attempt.secret not in run.log  # the bearer token is not logged


def test_xoauth2_rejected_token_is_not_delivered(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    script, _ = _token_command(tmp_path)
    secrets = tmp_path / "client.auth"
    secrets.write_text(f"client oauth:cmd alice {xtext(shlex.join([str(script), '--scope', 'smtp']))}\n")
    with TlsSmtpServer(
        certs.server_pem, mechanisms=("XOAUTH2",), tokens={"alice": "some-other-token"}
    ) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        assert_not_delivered(spool, hop, run)
        assert [(a.user, a.ok) for a in hop.auths] == [("alice", False)]
        assert "MAIL" not in hop.verbs()
    assert "authentication failed" in run.log


def test_xoauth2_failing_token_command(tmp_path: Path, certs: Certs) -> None:
    spool = tmp_path / "spool"
    submit(spool)
    script, _ = _token_command(tmp_path, exit_code=7)
    secrets = tmp_path / "client.auth"
    secrets.write_text(f"client oauth:cmd alice {xtext(shlex.join([str(script), '--scope', 'smtp']))}\n")
    with TlsSmtpServer(certs.server_pem, mechanisms=("XOAUTH2",)) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-auth", str(secrets))
        assert_not_delivered(spool, hop, run, kept=True)  # nothing was offered: left for the next try
        assert hop.auths == []  # nothing was sent without a token
    assert "oauth token command" in run.log and "exit 7" in run.log


def test_md5_client_secret_uses_cram_md5(tmp_path: Path) -> None:
    """A client md5 secret from emailrelay-passwd can only do CRAM-MD5; a real relay checks it."""
    hashed = (
        subprocess.run(
            [program("emailrelay-passwd")], input=b"pw for md5\n", capture_output=True, timeout=30, check=True
        )
        .stdout.decode()
        .strip()
    )
    (tmp_path / "server.auth").write_text("server plain frank pw+20for+20md5\n")
    (tmp_path / "client.auth").write_text(f"client md5 frank {hashed}\n")
    downstream = start_relay(
        tmp_path, "--single-process", "--server-auth", str(tmp_path / "server.auth"), name="down"
    )
    try:
        spool = tmp_path / "spool"
        submit(spool)
        run = as_client(spool, downstream.port, "--client-auth", str(tmp_path / "client.auth"))
        assert run.rc == 0, run.log
        assert wait_until(lambda: len(queued(downstream.spool)) == 1)
    finally:
        downstream.stop()
    assert "mechanism [cram-md5] and plaintext secret for [frank] from line 1" in downstream.log()


def test_auth_offered_only_after_tls_without_client_tls(tmp_path: Path, certs: Certs) -> None:
    """--client-auth without --client-tls to a server that offers AUTH only inside TLS: forwarding fails."""
    spool = tmp_path / "spool"
    submit(spool)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice alice-secret\n")
    with TlsSmtpServer(certs.server_pem) as hop:
        run = as_client(spool, hop.port, "--client-auth", str(secrets))
        assert_not_delivered(spool, hop, run)
        assert hop.auths == [] and "STARTTLS" not in hop.verbs() and "MAIL" not in hop.verbs()
    # upstream's words when the next hop offers no AUTH (here: not before STARTTLS)
    assert "smtp error: authentication is not supported by the remote smtp server" in run.log
