"""Reference guide, "Authentication options", "TLS options" and "Process options", as a user types them.

Every test runs the real ``emailrelay`` program with the options written as
in the guide (short letters included) and talks to it with real clients
(smtplib, poplib, swaks) or lets it forward to a real next hop over TCP.
Together with the existing integration tests cited in
docs/compat-parts/11-options-auth-tls-process-logging-config.md this proves
each option and each sub-form the guide describes (secrets-file forms,
``--*-auth-config`` keys, ``--tls-config`` keywords, pid file, user switching,
foreground/background, Windows-only no-ops).
"""

from __future__ import annotations

import base64
import contextlib
import os
import poplib
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import HAVE_OPENSSL, Certs, make_certs
from tests.support.fake_smtp import FakeSmtp
from tests.support.pam import pam_confdir
from tests.support.relay import (
    Relay,
    free_port,
    process_ids,
    program,
    running_relay,
    shell_status,
    spool_files,
    start_relay,
    wait_for_port,
    wait_until,
)
from tests.support.tls_server import TlsSmtpServer, as_client, queued, submit

pytestmark = [
    pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command"),
    pytest.mark.timeout(60),
]

BODY = b"Subject: compat\r\n\r\nhello\r\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spool holding one message submitted with the real emailrelay-submit (copied by each test)."""
    spool = tmp_path_factory.mktemp("template") / "spool"
    submit(spool)
    return spool


def spool_with_message(tmp_path: Path, template: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir()
    for path in template.iterdir():
        shutil.copy2(path, spool / path.name)
    return spool


@contextlib.contextmanager
def relay(tmp_path: Path, *options: str, name: str = "relay") -> Iterator[Relay]:
    """``emailrelay --no-daemon --log ... <options>`` (tests/support/relay.py), stopped by pid afterwards."""
    r = start_relay(tmp_path, *options, name=name)
    try:
        yield r
    finally:
        r.stop()


def run_emailrelay(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program(), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def trusting(
    certs: Certs, *, maximum: ssl.TLSVersion | None = None, client_pem: Path | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if maximum is not None:
        ctx.maximum_version = maximum
    if client_pem is not None:
        ctx.load_cert_chain(client_pem)
    return ctx


def auth_list(client: smtplib.SMTP) -> list[str]:
    return client.esmtp_features.get("auth", "").upper().split()


# ====================================================================== Authentication options


def test_client_auth_short_form_with_xtext_secrets(tmp_path: Path, certs: Certs, template: Path) -> None:
    """``-j -C <file>``: a ``client plain`` line whose password is xtext-encoded (``+2D`` is ``-``)."""
    spool = spool_with_message(tmp_path, template)
    secrets = tmp_path / "client.auth"
    secrets.write_text("# client account\nclient plain alice alice+2Dsecret\n")
    with TlsSmtpServer(certs.server_pem) as hop:
        run = as_client(spool, hop.port, "-j", "-C", str(secrets))
        assert run.rc == 0, run.log
        assert [(a.user, a.secret, a.ok, a.tls) for a in hop.auths] == [("alice", "alice-secret", True, True)]
        assert len(hop.deliveries) == 1
    assert queued(spool) == []


def test_client_auth_plain_value_in_a_config_file(tmp_path: Path, certs: Certs, template: Path) -> None:
    """``client-auth plain:<base64-user-id>:<base64-password>`` given in the configuration file."""
    spool = spool_with_message(tmp_path, template)
    with TlsSmtpServer(certs.server_pem) as hop:
        conf = tmp_path / "emailrelay.conf"
        conf.write_text(
            f"as-client 127.0.0.1:{hop.port}\nspool-dir {spool}\nuser root\nclient-tls\n"
            f"client-auth plain:{b64('alice')}:{b64('alice-secret')}\n"
        )
        done = run_emailrelay(str(conf))
        assert done.returncode == 0, done.stderr
        assert [(a.user, a.ok) for a in hop.auths] == [("alice", True)]
        assert len(hop.deliveries) == 1


@pytest.mark.parametrize(
    ("config", "tls", "expected"),
    [
        (None, False, "PLAIN"),  # the control: PLAIN is preferred to LOGIN
        ("m:login", False, "LOGIN"),  # 'm': preferred, in plaintext
        ("x:plain;a:plain", False, "LOGIN"),  # 'x': avoided in plaintext; 'a' does not apply yet
        # over TLS too E-MailRelay 2.6b's client follows 'm'/'x' and ignores 'a'/'d' (the guide says otherwise)
        ("a:login;x:login", True, "PLAIN"),  # 'x' still avoids LOGIN; 'a' does not prefer it
        ("d:login;m:login", True, "LOGIN"),  # 'm' still prefers LOGIN; 'd' does not avoid it
    ],
)
def test_client_auth_config_lists(
    tmp_path: Path, certs: Certs, template: Path, config: str | None, tls: bool, expected: str
) -> None:
    """``--client-auth-config``: 'm' prefers, 'x' avoids, with or without TLS; 'a'/'d' are ignored."""
    spool = spool_with_message(tmp_path, template)
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain alice alice-secret\n")
    server = TlsSmtpServer(certs.server_pem, starttls=tls, require_tls=tls, mechanisms=("PLAIN", "LOGIN"))
    with server as hop:
        options = ["--client-auth", str(secrets)] + (["--client-tls"] if tls else [])
        if config is not None:
            options += ["--client-auth-config", config]
        run = as_client(spool, hop.port, *options)
        assert run.rc == 0, run.log
        assert [(a.mechanism, a.ok, a.tls) for a in hop.auths] == [(expected, True, tls)]


def test_server_auth_short_form_xtext_and_plain_b(tmp_path: Path) -> None:
    """``-S <file>``: ``server plain`` with an xtext password, ``server plain:b`` with base64 fields."""
    secrets = tmp_path / "server.auth"
    secrets.write_text(f"server plain bob b+2Bpw\nserver plain:b {b64('carol')} {b64('c p=w')}\n")
    with relay(tmp_path, "--single-process", "-S", str(secrets)) as r:
        for user, password in (("bob", "b+pw"), ("carol", "c p=w")):
            with smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
                c.ehlo("client.example.com")
                assert c.login(user, password)[0] == 235
                c.sendmail(f"{user}@example.com", ["x@example.net"], BODY)
        with smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
            c.ehlo("client.example.com")
            assert c.mail("anon@example.com")[0] == 530  # authentication is required
        assert wait_until(lambda: len(spool_files(r.spool, ".envelope")) == 2)
    texts = [p.read_text() for p in spool_files(r.spool, ".envelope")]
    assert any("X-MailRelay-Authentication: bob" in t for t in texts)
    assert any("X-MailRelay-Authentication: carol" in t for t in texts)


@pytest.mark.parametrize("option", ["--server-auth", "--pop-auth"])
def test_pam_value_authenticates_through_pam(tmp_path: Path, option: str) -> None:
    """``pam:`` (separate-word form): PLAIN/LOGIN (SMTP) or USER/PASS (POP) checked by PAM, service
    ``emailrelay``; the PAM configuration is a tmp directory (``EMAILRELAY_PAM_CONFDIR``, docs/decisions.md)."""
    pop_port = free_port()
    extra = ["--pop", "--pop-port", str(pop_port)] if option == "--pop-auth" else []
    env = {"EMAILRELAY_PAM_CONFDIR": str(pam_confdir(tmp_path))}
    with running_relay(tmp_path, "--single-process", *extra, option, "pam:", env=env) as r:
        if option == "--server-auth":
            with smtplib.SMTP("127.0.0.1", r.port, timeout=15) as c:
                c.ehlo()
                assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
                assert c.login("alice", "s3cret")[0] == 235
        else:
            wait_for_port(pop_port)
            p = poplib.POP3("127.0.0.1", pop_port, timeout=15)
            p.user("alice")
            assert p.pass_("s3cret").startswith(b"+OK")
            p.quit()


def test_client_auth_pam_is_refused_clearly(tmp_path: Path) -> None:
    """``--client-auth pam:``: PAM cannot supply passwords; a one-line error (E-MailRelay 2.6b's), exit 1."""
    done = run_emailrelay("--as-client", "127.0.0.1:1", "--spool-dir", str(tmp_path), "--client-auth", "pam:")
    assert done.returncode == 1
    assert done.stderr == "emailrelay: error: cannot read secrets file: pam:\n", done.stderr


def test_server_auth_config_all_four_keys(tmp_path: Path, certs: Certs) -> None:
    """``--server-auth-config m:..;x:..;a:..;d:..``: allow/deny lists before and after STARTTLS."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice pw1\n")
    options = (
        "--single-process", "--server-auth", str(secrets), "--server-tls", "--server-tls-certificate",
        str(certs.server_pem), "--server-auth-config", "m:cram-md5,login;x:login;a:plain,login;d:login",
    )  # fmt: skip
    with relay(tmp_path, *options) as r, smtplib.SMTP("localhost", r.port, timeout=20) as c:
        c.ehlo("client.example.com")
        assert auth_list(c) == ["CRAM-MD5"]
        c.starttls(context=trusting(certs))
        c.ehlo("client.example.com")
        assert auth_list(c) == ["PLAIN"]
        assert c.login("alice", "pw1")[0] == 235


def test_pop_auth_short_form_with_tls_required(tmp_path: Path, certs: Certs) -> None:
    """``-B -F <file> -K --server-tls-required``: POP USER is refused before STLS, then the account works."""
    secrets = tmp_path / "pop.auth"
    secrets.write_text("server plain me my+20secret\n")
    pop_port = free_port()
    with relay(
        tmp_path, "--single-process", "-B", "-E", str(pop_port), "-F", str(secrets), "-K",
        "--server-tls-certificate", str(certs.server_pem), "--server-tls-required",
    ) as r:  # fmt: skip
        with smtplib.SMTP("localhost", r.port, timeout=20) as c:
            c.starttls(context=trusting(certs))
            c.sendmail("a@example.com", ["b@example.net"], BODY)
        wait_for_port(pop_port)
        p = poplib.POP3("localhost", pop_port, timeout=20)
        try:
            with pytest.raises(poplib.error_proto):
                p.user("me")
            p.stls(context=trusting(certs))
            p.user("me")
            assert p.pass_("my secret").startswith(b"+OK")
            assert p.stat()[0] == 1
        finally:
            p.quit()


# ====================================================================== TLS options


def test_client_tls_certificate_given_twice_key_then_certificate(
    tmp_path: Path, certs: Certs, template: Path
) -> None:
    """``--client-tls-certificate <key> --client-tls-certificate <cert>`` to a hop that demands a certificate."""
    spool = spool_with_message(tmp_path, template)
    key, crt = certs.dir / "client.key", certs.dir / "client.crt"
    with TlsSmtpServer(certs.server_pem, require_auth=False, client_ca=certs.ca) as hop:
        run = as_client(
            spool, hop.port, "-j", "--client-tls-certificate", str(key), "--client-tls-certificate", str(crt)
        )
        assert run.rc == 0, run.log
        assert len(hop.deliveries) == 1


def test_client_tls_server_name_is_sent_as_sni(tmp_path: Path, certs: Certs, template: Path) -> None:
    """``-b --client-tls-server-name <hostname>``: TLS from the first byte, with the hostname as SNI."""
    seen: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.server_pem)
    ctx.sni_callback = lambda _sock, name, _ctx: seen.append(name)  # type: ignore[assignment,misc,func-returns-value]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"421 closing for the test\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    spool = spool_with_message(tmp_path, template)
    try:
        run = as_client(spool, port, "-b", "--client-tls-server-name", "mail.example.org")
    finally:
        listener.close()
        thread.join(10)
    assert seen == ["mail.example.org"], run.log
    # the 421 greeting is an unexpected response: the message is failed, as E-MailRelay 2.6b fails it
    assert queued(spool) == [] and "smtp error: unexpected response: closing for the test" in run.log


def test_client_tls_verify_default_uses_the_system_cas(tmp_path: Path, certs: Certs, template: Path) -> None:
    """``--client-tls-verify '<default>'``: the library's CA set, which does not trust our test CA."""
    spool = spool_with_message(tmp_path, template)
    with TlsSmtpServer(certs.server_pem, require_auth=False) as hop:
        run = as_client(spool, hop.port, "--client-tls", "--client-tls-verify", "<default>")
        assert run.rc != 0 and hop.deliveries == []
        assert "certificate verify failed" in run.log
        assert queued(spool) == []  # failed (.bad), as E-MailRelay 2.6b fails it after a TLS error


def test_server_tls_short_form_with_key_and_certificate_files(tmp_path: Path, certs: Certs) -> None:
    """``-K --server-tls-certificate <key> --server-tls-certificate <cert>``: STARTTLS with that certificate."""
    key, crt = certs.dir / "server.key", certs.dir / "server.crt"
    with relay(
        tmp_path,
        "--single-process",
        "-K",
        "--server-tls-certificate",
        str(key),
        "--server-tls-certificate",
        str(crt),
    ) as r:
        with smtplib.SMTP("localhost", r.port, timeout=20) as c:
            c.ehlo("client.example.com")
            assert c.has_extn("starttls")
            c.starttls(context=trusting(certs))  # verifies the chain and the name localhost
            peer = c.sock.getpeercert()  # type: ignore[union-attr]
            assert ((("commonName", "localhost"),)) in peer["subject"]
            c.sendmail("a@example.com", ["b@example.net"], BODY)
        assert wait_until(lambda: len(spool_files(r.spool, ".envelope")) == 1)
        assert "tls protocol established" in r.log()


def test_server_tls_verify_default_refuses_a_private_ca_client(tmp_path: Path, certs: Certs) -> None:
    """``--server-tls-verify '<default>'``: a client certificate from our test CA is not trusted."""
    with relay(
        tmp_path, "--single-process", "--server-tls", "--server-tls-certificate", str(certs.server_pem),
        "--server-tls-verify", "<default>",
    ) as r:  # fmt: skip
        with smtplib.SMTP("localhost", r.port, timeout=20) as c:
            c.ehlo("client.example.com")
            with pytest.raises((smtplib.SMTPServerDisconnected, ssl.SSLError, ConnectionError)):
                c.starttls(context=trusting(certs, client_pem=certs.client_pem))
                c.ehlo("client.example.com")  # TLS 1.3: the verdict arrives after the client's Finished
                c.mail("a@example.com")
        assert wait_until(lambda: "tls error" in r.log(), 10), r.log()


def test_tls_config_minimum_version(tmp_path: Path, certs: Certs) -> None:
    """``-9 tlsv1.3``: a client limited to TLS 1.2 cannot connect; a TLS 1.3 client can."""
    with relay(
        tmp_path, "--single-process", "-K", "--server-tls-certificate", str(certs.server_pem), "-9", "tlsv1.3"
    ) as r:
        with smtplib.SMTP("localhost", r.port, timeout=20) as c:
            c.ehlo("client.example.com")
            with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
                c.starttls(context=trusting(certs, maximum=ssl.TLSVersion.TLSv1_2))
        with smtplib.SMTP("localhost", r.port, timeout=20) as c:
            c.starttls(context=trusting(certs))
            assert c.sock.version() == "TLSv1.3"  # type: ignore[union-attr]


def test_tls_config_maximum_version_and_openssl_keyword(tmp_path: Path, certs: Certs) -> None:
    """``--tls-config=openssl,-tlsv1.2``: the OpenSSL library, at most TLS 1.2; as E-MailRelay 2.6b
    (an OpenSSL build) the ``openssl`` item is ignored with a start-up warning."""
    options = ("--single-process", "--server-tls", "--server-tls-certificate", str(certs.server_pem))
    with (
        relay(tmp_path, *options, "--tls-config=openssl,-tlsv1.2") as r,
        smtplib.SMTP("localhost", r.port) as c,
    ):
        c.starttls(context=trusting(certs))
        assert c.sock.version() == "TLSv1.2"  # type: ignore[union-attr]
    assert "warning: tls-config: tls configuration items ignored: [openssl]\n" in r.log()


def test_tls_config_mbedtls_warns_and_uses_openssl(tmp_path: Path, certs: Certs) -> None:
    """``--tls-config mbedtls,-tlsv1.2``: only OpenSSL is built in; as E-MailRelay 2.6b, a start-up
    warning that the item is ignored, then the relay serves and the other keyword still counts."""
    options = ("--server-tls", "--server-tls-certificate", str(certs.server_pem), "--single-process")
    with (
        relay(tmp_path, *options, "--tls-config", "mbedtls,-tlsv1.2") as r,
        smtplib.SMTP("localhost", r.port) as c,
    ):
        c.starttls(context=trusting(certs))
        assert c.sock.version() == "TLSv1.2"  # type: ignore[union-attr]
    assert "warning: tls-config: tls configuration items ignored: [mbedtls]\n" in r.log()


# ====================================================================== Process options


def test_dont_serve_forwards_then_exits(tmp_path: Path, template: Path) -> None:
    """``-x --forward --forward-to``: no SMTP server at all; forwards the spool and exits 0."""
    spool = spool_with_message(tmp_path, template)
    with FakeSmtp() as hop:
        done = run_emailrelay(
            "-x", "-t", "--forward", "--forward-to", hop.address, "--interface", "127.0.0.1",
            "--spool-dir", str(spool), "--user", "root", "--log", "--no-syslog",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert len(hop.messages) == 1
    assert "smtp server on" not in done.stderr and "smtp connection to" in done.stderr
    assert queued(spool) == []


def test_no_daemon_short_form_stays_in_the_foreground(tmp_path: Path) -> None:
    """``-t``: the process we started is the one serving (no fork); it stops with exit 0 on SIGTERM."""
    with relay(tmp_path, "-t") as r:
        assert r.proc.poll() is None
        with smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
            assert c.noop()[0] == 250
        assert r.proc.poll() is None
        r.proc.send_signal(signal.SIGTERM)
        assert shell_status(r.proc.wait(20)) == 128 + signal.SIGTERM


def test_pid_file_short_form_creates_the_parent_directory(tmp_path: Path) -> None:
    """``-i <path>``: the parent directory is created (0775, as upstream's) and the file holds the
    serving process's id."""
    pid_file = tmp_path / "new-dir" / "emailrelay.pid"
    with relay(tmp_path, "--single-process", "-i", str(pid_file)) as r:
        assert wait_until(pid_file.exists, 10), r.log()
        assert pid_file.parent.stat().st_mode & 0o7777 == 0o775
        assert int(pid_file.read_text()) == r.pid
        with smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:  # serving: past start-up
            assert c.noop()[0] == 250
        assert r.stop() == 128 + signal.SIGTERM
    assert not pid_file.exists()  # removed on a clean stop


def _effective_uid(pid: int) -> int:
    return process_ids(pid)[0][1]


@pytest.mark.skipif(os.geteuid() != 0, reason="user switching needs root")
def test_user_short_form_switches_and_sets_the_group(tmp_path: Path) -> None:
    """``-u daemon``: idle under daemon's effective uid; new spool files get daemon's group; ``root`` disables it."""
    daemon = pwd.getpwnam("daemon")
    spool = Path(tempfile.mkdtemp(prefix="compat-user-"))  # pytest's tmp_path is private to root
    spool.chmod(0o755)
    port = free_port()
    args = [program(), "-t", "--single-process", "-u", "daemon", "--port", str(port), "--interface", "127.0.0.1",
            "--spool-dir", str(spool), "--log", "--no-syslog"]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc=proc)  # type: ignore[arg-type]
        assert wait_until(lambda: _effective_uid(proc.pid) == daemon.pw_uid, 10)
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
            c.sendmail("a@example.com", ["b@example.net"], BODY)
        assert wait_until(lambda: len(spool_files(spool, ".envelope")) == 1)
        for path in spool_files(spool):
            st = path.stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, daemon.pw_gid, 0o660), path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        shutil.rmtree(spool, ignore_errors=True)
    with relay(tmp_path, "--single-process") as r:  # start_relay passes --user root
        assert _effective_uid(r.pid) == 0


def test_no_smtp_short_form(tmp_path: Path) -> None:
    """``-X --admin <port>``: the admin port listens, no SMTP port (``--port`` with it is refused, as
    upstream refuses it: tests/differential/test_command_line.py)."""
    admin = free_port()
    args = [program(), "-X", "-t", "--single-process", "--admin", str(admin),
            "--interface", "127.0.0.1", "--spool-dir", str(tmp_path), "--user", "root", "--log", "--no-syslog"]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(admin, proc=proc)  # type: ignore[arg-type]
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert "admin server on" in out and "smtp server on" not in out


def test_localedir_is_accepted(tmp_path: Path) -> None:
    """``--localedir <dir>`` (English only): accepted, no effect. (``-H`` and ``--show``, Windows only,
    are invalid options, as in E-MailRelay 2.6b's unix build: tests/unit/test_parse.py.)"""
    with relay(tmp_path, "--single-process", "--localedir", str(tmp_path)) as r:
        with smtplib.SMTP("127.0.0.1", r.port, timeout=20) as c:
            assert c.ehlo("x.example.com")[0] == 250
            c.sendmail("a@example.com", ["b@example.net"], BODY)
        assert wait_until(lambda: len(spool_files(r.spool, ".envelope")) == 1)
        assert r.proc.poll() is None
    log = r.log()
    assert "smtp server on" in log and "error" not in log and "warning" not in log
