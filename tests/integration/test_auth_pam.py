"""``--server-auth=pam:`` and ``--pop-auth=pam:`` against real relay processes and real clients.

A PAM configuration directory in tmp holds the service file ``emailrelay``
(``pam_exec.so expose_authtok`` running a script that accepts user
``alice`` with password ``s3cret``, then ``pam_permit.so`` for the
account); the relay finds it through ``EMAILRELAY_PAM_CONFDIR`` (our
testing aid, ``pam_start_confdir``).  Both the supervised default mode
(the roles inherit the environment) and ``--single-process`` are run.
Clients: smtplib, swaks, poplib.  The guide's own example line
``auth requisite pam_unix.so nullok_secure`` needs real system accounts
and passwords, so it is not tested here.
"""

from __future__ import annotations

import base64
import ctypes.util
import poplib
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pam import PAM_EXEC, PASSWORD, USER, pam_confdir
from tests.support.relay import Relay, free_port, program, spool_files, start_relay, wait_until

pytestmark = [
    pytest.mark.skipif(ctypes.util.find_library("pam") is None, reason="needs libpam"),
    pytest.mark.skipif(PAM_EXEC is None, reason="needs pam_exec.so"),
    pytest.mark.timeout(120),
]

SWAKS = shutil.which("swaks")
BODY = b"Subject: pam test\r\n\r\nhello\r\n"


class PamRelay:
    def __init__(self, relay: Relay, pop_port: int) -> None:
        self.relay = relay
        self.pop_port = pop_port


@pytest.fixture(scope="module", params=["supervised", "single-process"])
def pam_relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PamRelay]:
    tmp = tmp_path_factory.mktemp(f"pam-{request.param}")
    confdir = pam_confdir(tmp)
    pop_port = free_port()
    mode = ["--single-process"] if request.param == "single-process" else []
    relay = start_relay(
        tmp, *mode, "--remote-clients", "--server-auth=pam:",
        "--pop", "--pop-port", str(pop_port), "--pop-auth=pam:",
        env={"EMAILRELAY_PAM_CONFDIR": str(confdir)},
    )  # fmt: skip
    try:
        wait_until(lambda: _listening(pop_port))
        yield PamRelay(relay, pop_port)
    finally:
        relay.stop()


def _listening(port: int) -> bool:
    try:
        poplib.POP3("127.0.0.1", port, timeout=2).quit()
    except OSError:
        return False
    return True


def smtp(relay: Relay) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", relay.port, timeout=20)
    c.ehlo("client.example.com")
    return c


def auth(c: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    c.user, c.password = user, password
    method = c.auth_plain if mechanism == "PLAIN" else c.auth_login
    try:
        return c.auth(mechanism, method, initial_response_ok=mechanism == "PLAIN")
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def envelope_with(spool: Path, sender: str) -> str:
    assert wait_until(lambda: any(sender in p.read_text() for p in spool_files(spool, ".envelope")))
    return next(t for t in (p.read_text() for p in spool_files(spool, ".envelope")) if sender in t)


def test_ehlo_advertises_plain_not_cram(pam_relay: PamRelay) -> None:
    with smtp(pam_relay.relay) as c:
        mechanisms = c.esmtp_features["auth"].split()
    assert "PLAIN" in mechanisms and "LOGIN" in mechanisms
    assert not any(m.startswith("CRAM") for m in mechanisms), mechanisms


def test_mail_without_auth_gets_530(pam_relay: PamRelay) -> None:
    with smtp(pam_relay.relay) as c:
        assert c.mail("anon@example.com")[0] == 530


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_right_password_235_and_envelope(pam_relay: PamRelay, mechanism: str) -> None:
    relay = pam_relay.relay
    sender = f"smtplib-{mechanism.lower()}@example.com"
    with smtp(relay) as c:
        assert auth(c, mechanism, USER, PASSWORD)[0] == 235
        c.sendmail(sender, ["bob@example.net"], BODY)
    assert re.search(r"^X-MailRelay-Authentication: alice\r?$", envelope_with(relay.spool, sender), re.M)
    assert f"mechanism [{mechanism.lower()}] and pam for [alice]" in relay.log()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize(("user", "password"), [(USER, "wrong"), ("mallory", PASSWORD)])
def test_smtplib_wrong_password_535(pam_relay: PamRelay, mechanism: str, user: str, password: str) -> None:
    with smtp(pam_relay.relay) as c:
        assert auth(c, mechanism, user, password)[0] == 535
        assert c.mail("x@example.com")[0] == 530
    with smtp(pam_relay.relay) as c:  # a success resets the brute-force throttle
        assert auth(c, "PLAIN", USER, PASSWORD)[0] == 235


def test_cram_md5_is_refused(pam_relay: PamRelay) -> None:
    with smtp(pam_relay.relay) as c:
        assert c.docmd("AUTH", "CRAM-MD5")[0] == 504


@pytest.mark.skipif(SWAKS is None, reason="needs swaks")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("good", [True, False], ids=["right", "wrong"])
def test_swaks(pam_relay: PamRelay, mechanism: str, good: bool) -> None:
    relay = pam_relay.relay
    sender = f"swaks-{mechanism.lower()}-{good}@example.com"
    cmd = [
        str(SWAKS), "-s", "127.0.0.1", "-p", str(relay.port), "--auth", mechanism, "--auth-user", USER,
        "--auth-password", PASSWORD if good else "nope", "-f", sender, "-t", "bob@example.net",
        "--timeout", "20",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    text = out.stdout.decode(errors="replace")
    if good:
        assert out.returncode == 0, text
        assert re.search(r"^<-  235 ", text, re.M), text
        assert "X-MailRelay-Authentication: alice" in envelope_with(relay.spool, sender)
    else:
        assert out.returncode != 0, text
        assert re.search(r"^<\*\* 535 ", text, re.M), text
        with smtp(relay) as c:
            assert auth(c, "PLAIN", USER, PASSWORD)[0] == 235


def pop(pam_relay: PamRelay) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", pam_relay.pop_port, timeout=20)


def test_pop_user_pass_right(pam_relay: PamRelay) -> None:
    sender = "for-pop@example.com"
    with smtp(pam_relay.relay) as c:
        assert auth(c, "PLAIN", USER, PASSWORD)[0] == 235
        c.sendmail(sender, ["bob@example.net"], BODY)
    envelope_with(pam_relay.relay.spool, sender)
    p = pop(pam_relay)
    try:
        assert "<" not in p.getwelcome().decode()  # no APOP timestamp: PAM needs the password
        p.user(USER)
        assert p.pass_(PASSWORD).startswith(b"+OK")
        count, _ = p.stat()
        assert count >= 1
        assert any(b"Subject: pam test" in b"\r\n".join(p.retr(i + 1)[1]) for i in range(count))
    finally:
        p.quit()  # nothing marked deleted


def test_pop_user_pass_wrong(pam_relay: PamRelay) -> None:
    p = pop(pam_relay)
    try:
        p.user(USER)
        with pytest.raises(poplib.error_proto, match="-ERR"):
            p.pass_("wrong")
    finally:
        p.close()
    p = pop(pam_relay)  # a success resets the throttle
    try:
        p.user(USER)
        assert p.pass_(PASSWORD).startswith(b"+OK")
    finally:
        p.quit()


def test_pop_capa_and_auth_plain(pam_relay: PamRelay) -> None:
    p = pop(pam_relay)
    try:
        sasl = p.capa().get("SASL", [])
        assert "PLAIN" in sasl and not any(m.startswith("CRAM") for m in sasl), sasl
        with pytest.raises(poplib.error_proto, match=r"^b'-ERR"):  # upstream's bare -ERR
            p._shortcmd("APOP alice 0123456789abcdef0123456789abcdef")
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert p._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    finally:
        p.quit()


@pytest.mark.parametrize("option", ["--client-auth=pam:", "--client-auth=PAM:"])
def test_client_auth_pam_is_an_error(tmp_path: Path, option: str) -> None:
    out = subprocess.run(
        [program(), "--as-client", "127.0.0.1:1", "--spool-dir", str(tmp_path), option],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 1
    # E-MailRelay 2.6b's words: PAM cannot supply passwords for the SMTP client
    expected = f"emailrelay: error: cannot read secrets file: {option.partition('=')[2]}"
    assert expected in out.stderr, out.stderr
