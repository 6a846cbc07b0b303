"""Secrets-file errors stop ``emailrelay`` at start-up (SPEC.md §1, §5).

A malformed line: exit 1 and E-MailRelay 2.6b's three lines on stderr
(``warning: problems reading secrets file [<path>]...``, ``error: <file
name>(<line>): ...``, ``error: invalid secrets file``), never the password.  A file that cannot be read: exit 1
with the file named.  The relay must not be left listening in either case.
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.relay import free_port, program, start_relay

pytestmark = pytest.mark.timeout(60)

GOOD = "server plain alice secret1\n"


def run_relay(tmp_path: Path, *args: str, single: bool = True) -> tuple[int, str, int]:
    """Run emailrelay to completion (it must exit by itself): (exit code, stderr, port)."""
    port = free_port()
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    cmd = [
        program(), "--no-daemon", "--no-syslog", "--port", str(port), "--interface", "127.0.0.1",
        "--spool-dir", str(spool), "--user", "root", *(["--single-process"] if single else []), *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, cwd=tmp_path)
    return done.returncode, done.stderr.decode(errors="replace"), port


def assert_refused_line(err: str, secrets: Path, line: int) -> None:
    """``err`` is E-MailRelay 2.6b's report of a bad line ``line`` of ``secrets``, naming both."""
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert lines[0] == f"emailrelay: warning: problems reading secrets file [{secrets}]...", err
    assert re.fullmatch(rf"emailrelay: error: {re.escape(secrets.name)}\({line}\): \S.*", lines[1]), err
    assert lines[2] == "emailrelay: error: invalid secrets file", err


def not_listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("line", "password"),
    [
        ("bogus plain alice hunter2", "hunter2"),  # unknown side
        ("server plain alice", ""),  # too few fields
        ("server plain alice hunter2 sel extra", "hunter2"),  # too many fields
        ("server nonsense alice hunter2", "hunter2"),  # a hash function's secret that is not base64
        ("server plain alice hunt+ZZer2", "hunt"),  # bad xtext in the secret
        ("server plain:b YWxpY2U= !!!notbase64", "notbase64"),  # bad base64
        ("server md5 alice not-a-hashed-secret", "not-a-hashed-secret"),  # md5 that passwd never printed
        ("server none 300.1.2.3/8 kw", ""),  # bad address range
        ("server cram-md5 alice hunter2", "hunter2"),  # cram-md5 is md5, and this is not its form
    ],
)
def test_malformed_line_is_a_startup_error_naming_file_and_line(
    tmp_path: Path, line: str, password: str
) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text(f"# secrets\n{GOOD}\n{line}\n")
    rc, err, port = run_relay(tmp_path, "--server-auth", str(secrets))
    assert rc == 1, err
    assert_refused_line(err, secrets, 4)
    if password:
        assert password not in err  # a message never quotes a secret
    assert not_listening(port)


def test_malformed_client_secrets_are_a_startup_error(tmp_path: Path) -> None:
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain bob\n")
    rc, err, _ = run_relay(tmp_path, "--forward-to", "127.0.0.1:9", "--client-auth", str(secrets))
    assert rc == 1
    assert_refused_line(err, secrets, 1)


def test_malformed_secrets_under_the_supervisor(tmp_path: Path) -> None:
    """Without --single-process the check happens before anything is started."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice\n")
    rc, err, port = run_relay(tmp_path, "--server-auth", str(secrets), single=False)
    assert rc == 1
    assert_refused_line(err, secrets, 1)
    assert not_listening(port)


def test_bad_client_auth_command_line_value(tmp_path: Path) -> None:
    rc, err, _ = run_relay(tmp_path, "--forward-to", "127.0.0.1:9", "--client-auth", "plain:!!:??")
    assert rc == 1
    assert err.startswith("emailrelay: error: ") and "--client-auth" in err, err


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_secrets_file_is_named(tmp_path: Path, what: str) -> None:
    path = tmp_path / "no-such.auth"
    if what == "directory":
        path = tmp_path / "a-directory.auth"
        path.mkdir()
    rc, err, port = run_relay(tmp_path, "--server-auth", str(path))
    assert rc == 1
    assert err.startswith("emailrelay: error: ") and str(path) in err, err
    assert not_listening(port)


def test_error_is_logged_in_the_greppable_form_with_log_time(tmp_path: Path) -> None:
    """SPEC.md §2: scripts find start-up errors with ^emailrelay: [0-9.]*: error: ."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice\n")
    rc, err, _ = run_relay(tmp_path, "--log", "--log-time", "--server-auth", str(secrets))
    assert rc == 1
    assert re.search(r"^emailrelay: [0-9.]+: error: server\.auth\(1\): too few fields$", err, re.MULTILINE), (
        err
    )
    assert re.search(r"^emailrelay: [0-9.]+: error: invalid secrets file$", err, re.MULTILINE), err


def test_old_style_lines_are_accepted(tmp_path: Path) -> None:
    """The founding guide's older lines (SPEC.md §5) load, and their accounts work."""
    secrets = tmp_path / "server.auth"
    secrets.write_text("APOP server user1 password1\nlogin server user2 password2\nNONE server 10.*.*.* kw\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    try:
        for user, password in (("user1", "password1"), ("user2", "password2")):
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:
                c.ehlo("client.example.com")
                assert c.login(user, password)[0] == 235
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:  # 127.0.0.1 is not in 10.*.*.*
            c.ehlo("client.example.com")
            assert c.mail("a@example.com")[0] == 530
    finally:
        relay.stop()
