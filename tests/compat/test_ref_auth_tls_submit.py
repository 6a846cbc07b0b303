"""Reference guide 2.6, "Authentication", "TLS encryption", "PAM authentication" and "Submission":
every secrets file printed in the guide, the two command lines, ``emailrelay-passwd``, the openssl
certificate command, ``MailFromAuthOut`` and every ``emailrelay-submit`` example, run as typed.

Real processes and real clients only: ``emailrelay`` subprocesses (the one under test as the guide
types it, with only ports and paths adapted), ``swaks`` for SMTP AUTH, ``openssl`` for the
certificate, ``emailrelay-submit``/``emailrelay-passwd`` as the user would run them from a shell.
"""

from __future__ import annotations

import os
import poplib
import smtplib
import ssl
import subprocess
import textwrap
from pathlib import Path

import pytest

from emailrelay.spool import envelope as envmod
from tests.support.pam import pam_confdir
from tests.support.relay import Relay, free_port, program, spool_files, start_relay, wait_for_port, wait_until
from tests.support.sink import printed_envelope
from tests.unit import test_secrets as guide

pytestmark = pytest.mark.timeout(60)

BIN = str(Path(program()).parent)

# The guide's secrets files, verbatim (one copy, in the unit tests of the secrets reader).
GUIDE_PLAIN, GUIDE_BASE64, GUIDE_SELECTORS, GUIDE_MD5, GUIDE_TRUST = (
    textwrap.dedent(text) for text in (guide.GUIDE_PLAIN, guide.GUIDE_BASE64, guide.GUIDE_SELECTORS, guide.GUIDE_MD5,
                                       guide.GUIDE_TRUST)
)  # fmt: skip

BODY = b"Subject: guide\r\n\r\nhello\r\n"


def swaks(port: int, *args: str, host: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--from", "sender@example.com", "--to", "rcpt@example.net",
         "--timeout", "10", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def smtp_auth(port: int, mech: str, user: str, password: str) -> int:
    """Authenticate with ``mech`` through smtplib and, on success, send one message; the AUTH reply code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as c:
        c.ehlo()
        c.user, c.password = user, password
        method = {"PLAIN": c.auth_plain, "LOGIN": c.auth_login, "CRAM-MD5": c.auth_cram_md5}[mech]
        try:
            code = c.auth(mech, method, initial_response_ok=mech != "CRAM-MD5")[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
        c.sendmail("sender@example.com", ["rcpt@example.net"], BODY)
        return code


def submit(spool: Path, sender: str = "sender@example.com") -> Path:
    spool.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", sender, "--verbose", "rcpt@example.net"],
        input=BODY, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return printed_envelope(out.stdout)


def set_field(envelope_path: Path, name: str, value: str) -> None:
    """Edit one envelope field the way a filter would."""
    env = envmod.parse(envelope_path.read_bytes())
    envelope_path.write_bytes(envmod.Envelope(**{**env.__dict__, name: value}).to_bytes())


def as_client(spool: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``emailrelay --as-client=127.0.0.1:<port> ...`` (the guide's ``--as-client=example.com:smtp``)."""
    return subprocess.run(
        [program(), f"--as-client=127.0.0.1:{port}", *args, "--spool-dir", str(spool), "--log", "--verbose",
         "--no-syslog", "--user", "root", "--connection-timeout", "5", "--response-timeout", "10"],
        capture_output=True, text=True, timeout=45, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def received(relay: Relay, n: int) -> list[envmod.Envelope]:
    assert wait_until(lambda: len(spool_files(relay.spool, ".envelope")) >= n, 15), relay.log()
    return [envmod.parse(p.read_bytes()) for p in spool_files(relay.spool, ".envelope")]


def hop(tmp_path: Path, secrets: str, name: str = "hop") -> Relay:
    """A downstream emailrelay that demands AUTH with the given server lines."""
    path = tmp_path / f"{name}.auth"
    path.write_text(secrets)
    return start_relay(tmp_path, "--single-process", f"--server-auth={path}", name=name)


# ------------------------------------------------------------------ the guide's secrets files


@pytest.mark.parametrize("text", [GUIDE_PLAIN, GUIDE_BASE64], ids=["xtext", "base64"])
def test_guide_secrets_file_with_both_guide_command_lines(tmp_path: Path, text: str) -> None:
    """``emailrelay --as-server --server-auth=...`` and ``emailrelay --as-client=... --client-auth=...``
    with the guide's xtext file and its ``plain:b`` twin: alice is ``e=mc2``, carol ``my password``,
    bob ``password123``."""
    secrets = tmp_path / "emailrelay.auth"
    secrets.write_text(text)
    mode = [] if text == GUIDE_PLAIN else ["--single-process"]  # the guide's line as typed once, supervised
    server = start_relay(tmp_path, "--as-server", f"--server-auth={secrets}", *mode, name="server")
    try:
        ok = swaks(server.port, "--auth", "PLAIN", "--auth-user", "carol", "--auth-password", "my password")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        for user, password in (("alice", "e=mc2"), ("carol", "my password")):
            for mech in ("PLAIN", "LOGIN", "CRAM-MD5"):
                assert smtp_auth(server.port, mech, user, password) == 235
        assert smtp_auth(server.port, "PLAIN", "alice", "e+3Dmc2") == 535  # the xtext is not the password
        noauth = swaks(server.port)
        assert noauth.returncode != 0 and "530" in noauth.stdout
        envs = received(server, 7)
        assert sorted(e.authentication for e in envs) == ["alice"] * 3 + ["carol"] * 4
    finally:
        server.stop()
    # the client line of the same file: bob authenticates with the next hop
    downstream = hop(tmp_path, "server plain bob password123\n")
    try:
        spool = tmp_path / "out"
        submit(spool)
        run = as_client(spool, downstream.port, f"--client-auth={secrets}")
        assert run.returncode == 0, run.stdout + run.stderr
        (env,) = received(downstream, 1)
        assert env.authentication == "bob" and env.mail_from_auth_in == "bob"
        assert spool_files(spool, ".envelope") == []
    finally:
        downstream.stop()


def test_guide_client_account_selectors(tmp_path: Path) -> None:
    """The selector file: no selector -> bob, ``use_alice`` -> alice, ``noauth`` -> no AUTH at all."""
    secrets = tmp_path / "client.auth"
    secrets.write_text(GUIDE_SELECTORS)
    downstream = hop(
        tmp_path,
        "server none 127.0.0.1/32 trusted\nserver plain bob password123\nserver plain alice e+3Dmc2\n",
    )
    try:
        spool = tmp_path / "out"
        submit(spool, "default@example.com")
        set_field(submit(spool, "as-alice@example.com"), "client_account_selector", "use_alice")
        set_field(submit(spool, "anonymous@example.com"), "client_account_selector", "noauth")
        run = as_client(spool, downstream.port, f"--client-auth={secrets}")
        assert run.returncode == 0, run.stdout + run.stderr
        auth = {e.from_address: e.authentication for e in received(downstream, 3)}
        assert auth == {
            "default@example.com": "bob",
            "as-alice@example.com": "alice",
            "anonymous@example.com": "trusted",
        }
    finally:
        downstream.stop()


def test_guide_md5_secrets_file(tmp_path: Path) -> None:
    """The guide's md5 file: CRAM-MD5 only, server side (swaks) and client side (to another relay)."""
    secrets = tmp_path / "md5.auth"
    secrets.write_text(GUIDE_MD5)
    server = start_relay(
        tmp_path, "--as-server", f"--server-auth={secrets}", "--single-process", name="server"
    )
    try:
        ehlo = swaks(server.port, "--quit-after", "EHLO")
        assert "AUTH CRAM-MD5" in ehlo.stdout and "PLAIN" not in ehlo.stdout, ehlo.stdout
        ok = swaks(server.port, "--auth", "CRAM-MD5", "--auth-user", "alice", "--auth-password", "e=mc2")
        assert ok.returncode == 0, ok.stdout
        assert smtp_auth(server.port, "CRAM-MD5", "carol", "my password") == 235
        assert smtp_auth(server.port, "CRAM-MD5", "alice", "e=mc3") == 535
    finally:
        server.stop()
    downstream = hop(tmp_path, "server plain bob password123\n")
    try:
        spool = tmp_path / "out"
        submit(spool)
        run = as_client(spool, downstream.port, f"--client-auth={secrets}")
        assert run.returncode == 0, run.stdout + run.stderr
        (env,) = received(downstream, 1)
        assert env.authentication == "bob"
        assert "using mechanism [cram-md5]" in downstream.log()
    finally:
        downstream.stop()


def test_emailrelay_passwd_makes_the_guides_md5_lines(tmp_path: Path) -> None:
    """``emailrelay-passwd`` turns each plain password into the hash printed in the md5 file."""
    expected = {line.split()[2]: line.split()[3] for line in GUIDE_MD5.splitlines()[1:]}
    for user, password in (("bob", "password123"), ("alice", "e=mc2"), ("carol", "my password")):
        out = subprocess.run(
            [program("emailrelay-passwd")], input=password + "\n", capture_output=True, text=True, timeout=20
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected[user]


def test_guide_trusted_address_lines(tmp_path: Path) -> None:
    """``server none <range> <keyword>``: the guide's ranges do not cover 127.0.0.1 (AUTH needed);
    the same lines for the loopback ranges let IPv4 and IPv6 clients in, and the keyword reaches
    the ``--address-verifier`` and the envelope."""
    guide = tmp_path / "guide.auth"
    guide.write_text(GUIDE_TRUST)
    server = start_relay(tmp_path, f"--server-auth={guide}", "--single-process", name="guide")
    try:
        assert "530" in swaks(server.port).stdout
    finally:
        server.stop()
    local = tmp_path / "local.auth"
    local.write_text(GUIDE_TRUST.replace("192.168.0.*", "127.0.0.*").replace("fe80::/64", "::1/128"))
    args_file = tmp_path / "verifier-args"
    verifier = tmp_path / "verifier.sh"
    # exit 1: a remote address, printed on the second line (upstream refuses an exit 1 without one)
    verifier.write_text(f'#!/bin/sh\necho "$@" >> {args_file}\necho\necho "$1"\nexit 1\n')
    verifier.chmod(0o755)
    server = start_relay(
        tmp_path,
        f"--server-auth={local}",
        "--interface",
        "::1",
        f"--address-verifier={verifier}",
        "--single-process",
        name="local",
    )
    try:
        assert swaks(server.port).returncode == 0
        assert swaks(server.port, host="::1").returncode == 0
        auth = sorted(e.authentication for e in received(server, 2))
        assert auth == ["localipv4", "localipv6"]
        words = [line.split() for line in args_file.read_text().splitlines()]
        assert sorted(w[5] for w in words) == ["localipv4", "localipv6"]
    finally:
        server.stop()


@pytest.mark.parametrize("value", ["", "<>", "carol"], ids=["default", "none", "name"])
def test_mail_from_auth_out_policy(tmp_path: Path, value: str) -> None:
    """``MailFromAuthOut``: empty -> AUTH=<the client account>, ``<>`` -> AUTH=<>, xtext -> that name."""
    secrets = tmp_path / "client.auth"
    secrets.write_text(GUIDE_PLAIN)
    downstream = hop(tmp_path, "server plain bob password123\n")
    try:
        spool = tmp_path / "out"
        set_field(submit(spool), "mail_from_auth_out", value)
        run = as_client(spool, downstream.port, f"--client-auth={secrets}")
        assert run.returncode == 0, run.stdout + run.stderr
        (env,) = received(downstream, 1)
        assert env.mail_from_auth_in == (value or "bob")
    finally:
        downstream.stop()


def test_client_auth_fails_when_the_server_has_no_auth(tmp_path: Path) -> None:
    """Client auth required but the next hop offers no AUTH: forwarding fails, the message stays."""
    secrets = tmp_path / "client.auth"
    secrets.write_text(GUIDE_PLAIN)
    downstream = start_relay(tmp_path, "--single-process", name="hop")
    try:
        spool = tmp_path / "out"
        submit(spool)
        run = as_client(spool, downstream.port, f"--client-auth={secrets}")
        assert run.returncode != 0
        assert spool_files(downstream.spool, ".envelope") == []
        assert len(spool_files(spool, ".envelope")) + len(spool_files(spool, ".bad")) == 1
    finally:
        downstream.stop()


# ------------------------------------------------------------------ TLS and PAM


def test_guide_openssl_command_makes_a_usable_certificate(tmp_path: Path) -> None:
    """The guide's ``openssl req ...`` line run by a shell, then ``--server-tls`` with the file and
    a STARTTLS session from swaks."""
    cmd = 'openssl req -x509 -noenc -subj "/CN=$USER" -newkey rsa:2048 -keyout emailrelay.pem  -out emailrelay.pem'
    out = subprocess.run(
        ["sh", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "USER": "tester"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    pem = (tmp_path / "emailrelay.pem").read_text()
    assert "PRIVATE KEY" in pem and "CERTIFICATE" in pem
    server = start_relay(
        tmp_path,
        "--server-tls",
        "--server-tls-certificate",
        str(tmp_path / "emailrelay.pem"),
        "--single-process",
    )
    try:
        tls = swaks(server.port, "--tls")
        assert tls.returncode == 0, tls.stdout
        assert "STARTTLS" in tls.stdout and "TLS started" in tls.stdout
        assert len(received(server, 1)) == 1
    finally:
        server.stop()


def test_server_tls_needs_a_certificate(tmp_path: Path) -> None:
    """``--server-tls`` without ``--server-tls-certificate`` is a start-up error."""
    spool = tmp_path / "spool"
    spool.mkdir()
    out = subprocess.run(
        [program(), "--no-daemon", "--server-tls", "--spool-dir", str(spool), "--port", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert "certificate" in out.stderr


def test_tls_config_mbedtls_is_ignored_with_a_warning(tmp_path: Path) -> None:
    """``--tls-config=mbedtls``: this build has only OpenSSL; like E-MailRelay 2.6b it warns that the
    item is ignored and serves, STARTTLS working (with OpenSSL)."""
    pem = tmp_path / "emailrelay.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-noenc", "-subj", "/CN=tester", "-newkey", "rsa:2048", "-keyout", str(pem),
         "-out", str(pem)], capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    relay = start_relay(tmp_path, "--tls-config=mbedtls", "--server-tls", f"--server-tls-certificate={pem}")
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.starttls(context=ssl._create_unverified_context())
            assert client.sock.version() is not None  # type: ignore[union-attr]
    finally:
        relay.stop()
    assert "warning: tls-config: tls configuration items ignored: [mbedtls]\n" in relay.log()


def test_version_verbose(tmp_path: Path) -> None:
    """``emailrelay --version --verbose``: the version, then the build's features one per line as
    upstream prints them; the one TLS library is the OpenSSL Python's ssl module runs on
    (tests/differential/test_programs.py compares the whole text with E-MailRelay 2.6b's)."""
    out = subprocess.run([program(), "--version", "--verbose"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.startswith("E-MailRelay V2.6")
    assert f"\nPOP server: enabled\nAdmin server: enabled\nTLS library: {ssl.OPENSSL_VERSION}\n" in out.stdout
    assert "mbedtls" not in out.stdout.lower()


@pytest.mark.parametrize("option", ["--server-auth=pam:", "--pop-auth=pam:"])
def test_pam_authentication_as_the_guide_describes(tmp_path: Path, option: str) -> None:
    """``--server-auth=pam:`` advertises PLAIN and authenticates through PAM (service ``emailrelay``);
    ``--pop-auth=pam:`` the same for POP.  The PAM configuration is a tmp directory
    (``EMAILRELAY_PAM_CONFDIR``, our testing aid) with ``pam_exec.so``: the guide's ``pam_unix.so``
    line needs real system accounts."""
    confdir = pam_confdir(tmp_path)
    pop_port = free_port()
    server = start_relay(
        tmp_path, "--single-process", *(["--pop", "--pop-port", str(pop_port)] if "pop" in option else []), option,
        env={"EMAILRELAY_PAM_CONFDIR": str(confdir)},
    )  # fmt: skip
    try:
        if option.startswith("--server-auth"):
            ok = swaks(server.port, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret")
            assert ok.returncode == 0, ok.stdout
            assert "250-AUTH PLAIN" in ok.stdout and "CRAM" not in ok.stdout
            (envelope,) = spool_files(server.spool, ".envelope")
            assert "X-MailRelay-Authentication: alice" in envelope.read_text()
            bad = swaks(server.port, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "nope")
            assert bad.returncode != 0 and "535" in bad.stdout, bad.stdout
        else:
            wait_for_port(pop_port)
            p = poplib.POP3("127.0.0.1", pop_port, timeout=15)
            try:
                p.user("alice")
                assert p.pass_("s3cret").startswith(b"+OK")
            finally:
                p.quit()
            p = poplib.POP3("127.0.0.1", pop_port, timeout=15)
            try:
                p.user("alice")
                with pytest.raises(poplib.error_proto):
                    p.pass_("nope")
            finally:
                p.close()
    finally:
        server.stop()


def test_pam_cannot_supply_client_passwords(tmp_path: Path) -> None:
    """The guide: PAM "cannot be used by E-MailRelay to supply passwords when acting as an SMTP client"."""
    out = subprocess.run(
        [program(), "--as-client", "127.0.0.1:1", "--spool-dir", str(tmp_path), "--client-auth=pam:"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert "emailrelay: error: cannot read secrets file: pam:" in out.stderr  # as E-MailRelay 2.6b says it


# ------------------------------------------------------------------ emailrelay-submit, as typed


def run_shell(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A guide command line run by ``sh`` with the venv on PATH and ``--spool-dir`` appended."""
    return subprocess.run(
        ["sh", "-c", f"{line} --spool-dir spool"], cwd=cwd, capture_output=True, text=True, timeout=30,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def messages(spool: Path) -> list[tuple[envmod.Envelope, bytes]]:
    out = []
    for path in spool_files(spool, ".envelope"):
        out.append(
            (
                envmod.parse(path.read_bytes()),
                path.with_name(path.name[: -len(".envelope")] + ".content").read_bytes(),
            )
        )
    return out


def test_submit_from_command_line_content(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    line = 'emailrelay-submit -dtFN --to="user@localhost" --content U3ViamVjdDogaGVscA --content="" --content=ZXJyb3I'
    out = run_shell(line, tmp_path)
    assert out.returncode == 0, out.stderr
    ((env, content),) = messages(tmp_path / "spool")
    assert env.to_remote == ("user@localhost",)
    head, _, body = content.partition(b"\r\n\r\n")
    headers = head.split(b"\r\n")
    assert b"Subject: help" in headers
    assert any(h.startswith(b"Date: ") for h in headers)  # -d
    assert any(h.startswith(b"To: ") and b"user@localhost" in h for h in headers)  # -t
    assert body == b"error\r\n"


def test_submit_content_file_with_envelope_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "content.txt").write_bytes(b"Subject: from a file\nFrom: someone@example.com\n\nthe body\n")
    out = run_shell(
        'emailrelay-submit --to="user@localhost" --from="sender@localhost" --input-file=content.txt', tmp_path
    )
    assert out.returncode == 0, out.stderr
    ((env, content),) = messages(tmp_path / "spool")
    assert env.from_address == "sender@localhost" and env.to_remote == ("user@localhost",)
    assert content == b"Subject: from a file\r\nFrom: someone@example.com\r\n\r\nthe body\r\n"


def test_submit_mixture_of_content_options_and_body_file(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "body.txt").write_bytes(b"line one\nline two\n")
    line = 'emailrelay-submit -dtF --to="user@localhost" --content=U3ViamVjdDogaGVscA --content="" --body --input-file=body.txt'
    out = run_shell(line, tmp_path)
    assert out.returncode == 0, out.stderr
    ((env, content),) = messages(tmp_path / "spool")
    assert env.to_remote == ("user@localhost",)
    head, _, body = content.partition(b"\r\n\r\n")
    assert b"Subject: help" in head.split(b"\r\n") and b"\r\nDate: " in b"\r\n" + head
    assert body == b"line one\r\nline two\r\n"


def test_submit_bcc_split(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    (tmp_path / "message.eml").write_bytes(
        b"From: alice@example.com\r\nTo: bob@example.com\r\nBcc: carol@example.com, dave@example.com\r\n"
        b"Subject: split\r\n\r\nhello\r\n"
    )
    out = run_shell("emailrelay-submit --bcc-split --input-file message.eml", tmp_path)
    assert out.returncode == 0, out.stderr
    found = messages(tmp_path / "spool")
    assert sorted(e.to_remote for e, _ in found) == [
        ("bob@example.com",),
        ("carol@example.com",),
        ("dave@example.com",),
    ]
    assert all(e.from_address == "alice@example.com" for e, _ in found)
    # as E-MailRelay 2.6b: no Bcc line for the To recipient, each Bcc copy names only its recipient
    bcc_lines = {
        e.to_remote: [h for h in c.split(b"\r\n") if h.lower().startswith(b"bcc:")] for e, c in found
    }
    assert bcc_lines == {
        ("bob@example.com",): [],
        ("carol@example.com",): [b"bcc: carol@example.com"],
        ("dave@example.com",): [b"bcc: dave@example.com"],
    }


def test_submitted_message_is_forwarded_by_the_relay(tmp_path: Path) -> None:
    """A message made by ``emailrelay-submit`` in the spool is forwarded by ``--as-client`` like an SMTP one."""
    (tmp_path / "spool").mkdir()
    out = run_shell('emailrelay-submit -dtFN --to="user@localhost" --content U3ViamVjdDogaGVscA', tmp_path)
    assert out.returncode == 0, out.stderr
    downstream = start_relay(tmp_path, "--single-process", name="hop")
    try:
        run = as_client(tmp_path / "spool", downstream.port)
        assert run.returncode == 0, run.stdout + run.stderr
        (env,) = received(downstream, 1)
        assert env.to_remote == ("user@localhost",)
    finally:
        downstream.stop()
