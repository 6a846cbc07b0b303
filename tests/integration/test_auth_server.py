"""Server-side SMTP AUTH (--server-auth, --server-auth-config) against a real relay.

Clients are smtplib and swaks, in plaintext and over STARTTLS.  Checked:
every mechanism of upstream's list (PLAIN, LOGIN, CRAM-MD5, CRAM-SHA1,
CRAM-SHA256), ``md5`` secrets made by ``emailrelay-passwd``, upstream's log
wording, the envelope's ``Authentication`` field (xtext), 530 without AUTH,
trusted ``server none`` address ranges, the brute-force throttle, and the
allow lists of ``--server-auth-config``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import shutil
import signal
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emailrelay.spool import envelope as envmod
from tests.support.certs import HAVE_OPENSSL, Certs, make_certs, no_verify_context
from tests.support.relay import Relay, program, spool_files, start_relay, wait_until

pytestmark = [
    pytest.mark.skipif(not HAVE_OPENSSL, reason="needs the openssl command"),
    pytest.mark.timeout(90),
]

SWAKS = shutil.which("swaks")
BODY = b"Subject: auth test\r\n\r\nhello\r\n"
ALICE_PW = "secret1"
CAROL = "carol=x"  # needs xtext: carol+3Dx
CAROL_PW = "c+pw w"  # xtext: c+2Bpw+20w
DAVE_PW = "dave's md5 pw"


@dataclass
class AuthRelay:
    relay: Relay
    secrets: Path
    tmp: Path


def passwd(password: str, *args: str) -> str:
    """The output of the real emailrelay-passwd for ``password``."""
    out = subprocess.run(
        [program("emailrelay-passwd"), *args], input=password.encode() + b"\n",
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout.decode().strip()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def auth_relay(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[AuthRelay]:
    """One relay for the tests that succeed (a success resets the brute-force throttle)."""
    tmp = tmp_path_factory.mktemp("auth")
    secrets = tmp / "server.auth"
    secrets.write_text(
        f"server plain alice {ALICE_PW}\n"
        "# comment line, then an xtext name and password\n"
        "server plain carol+3Dx c+2Bpw+20w\n"
        f"server md5 dave {passwd(DAVE_PW)}\n"
    )
    relay = start_relay(
        tmp, "--single-process", "--server-auth", str(secrets),
        "--server-tls", "--server-tls-certificate", str(certs.server_pem),
    )  # fmt: skip
    yield AuthRelay(relay, secrets, tmp)
    relay.stop()


def connect(relay: Relay, tls: bool = False) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
    c.ehlo("client.example.com")
    if tls:
        c.starttls(context=no_verify_context())
        c.ehlo("client.example.com")
    return c


def cram(hash_name: str, user: str, password: str) -> Callable[[bytes | None], str | None]:
    """An smtplib authobject for CRAM-<hash>."""

    def respond(challenge: bytes | None = None) -> str | None:
        if challenge is None:
            return None  # no initial response
        digest = hmac.new(password.encode(), challenge, getattr(hashlib, hash_name)).hexdigest()
        return f"{user} {digest}"

    return respond


def authenticate(c: smtplib.SMTP, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
    """AUTH with ``mechanism``; the final reply (smtplib raises on failure: caught here)."""
    c.user, c.password = user, password
    objects: dict[str, Callable[..., str | None]] = {
        "PLAIN": c.auth_plain,
        "LOGIN": c.auth_login,
        "CRAM-MD5": cram("md5", user, password),
        "CRAM-SHA1": cram("sha1", user, password),
        "CRAM-SHA256": cram("sha256", user, password),
    }
    try:
        return c.auth(mechanism, objects[mechanism])
    except smtplib.SMTPAuthenticationError as err:
        return err.smtp_code, err.smtp_error


def envelopes_from(spool: Path, sender: str) -> list[envmod.Envelope]:
    found = []
    for path in spool_files(spool, ".envelope"):
        env = envmod.parse(path.read_bytes())
        if env.from_address == sender:
            found.append(env)
    return found


def log_has(relay: Relay, pattern: str, timeout: float = 5.0) -> bool:
    return wait_until(lambda: re.search(pattern, relay.log(), re.MULTILINE) is not None, timeout)


def success_line(mechanism: str, user: str, kind: str, line: int) -> str:
    return (
        r"^emailrelay: [0-9.]+: info: successful authentication of remote client using "
        rf"mechanism \[{re.escape(mechanism)}\] and {kind} secret for \[{re.escape(user)}\] from line {line}$"
    )


MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256"]


# ------------------------------------------------------------------ mechanisms


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_smtplib_each_mechanism(auth_relay: AuthRelay, mechanism: str, tls: bool) -> None:
    relay = auth_relay.relay
    sender = f"smtplib-{mechanism.lower()}-{'tls' if tls else 'plain'}@example.com"
    with connect(relay, tls) as c:
        assert mechanism in c.esmtp_features["auth"].upper().split()
        assert authenticate(c, mechanism, "alice", ALICE_PW)[0] == 235
        c.sendmail(sender, ["bob@example.net"], BODY)
    (env,) = envelopes_from(relay.spool, sender)
    assert env.authentication == "alice"
    assert log_has(relay, success_line(mechanism.lower(), "alice", "plaintext", 1))


@pytest.mark.skipif(SWAKS is None, reason="needs swaks")
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5", "CRAM-SHA1"])  # swaks has no CRAM-SHA256
def test_swaks_each_mechanism(auth_relay: AuthRelay, mechanism: str, tls: bool) -> None:
    relay = auth_relay.relay
    sender = f"swaks-{mechanism.lower()}-{'tls' if tls else 'plain'}@example.com"
    cmd = [
        str(SWAKS), "-s", "127.0.0.1", "-p", str(relay.port), "--auth", mechanism, "--auth-user", "alice",
        "--auth-password", ALICE_PW, "-f", sender, "-t", "bob@example.net", "--timeout", "20",
        *(["-tls"] if tls else []),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, timeout=40, stdin=subprocess.DEVNULL)
    text = out.stdout.decode(errors="replace")
    assert out.returncode == 0, text + out.stderr.decode(errors="replace")
    assert re.search(r"^<[-~]  235 ", text, re.MULTILINE), text
    if tls:
        assert re.search(r"^<~  250 message processed", text, re.MULTILINE), text  # "~": inside TLS
    (env,) = envelopes_from(relay.spool, sender)
    assert env.authentication == "alice"


def test_success_log_line_has_upstream_wording(auth_relay: AuthRelay) -> None:
    """Exactly server-verbose.log's line: CRAM-MD5, plaintext secret, user alice, line 1."""
    relay = auth_relay.relay
    with connect(relay) as c:
        assert authenticate(c, "CRAM-MD5", "alice", ALICE_PW)[0] == 235
    upstream = "successful authentication of remote client using mechanism [cram-md5] and plaintext secret for [alice] from line 1"
    assert log_has(relay, r"^emailrelay: [0-9.]+: info: " + re.escape(upstream) + "$")


def test_envelope_holds_xtext_identity(auth_relay: AuthRelay) -> None:
    relay = auth_relay.relay
    sender = "xtext-identity@example.com"
    with connect(relay, tls=True) as c:
        assert authenticate(c, "LOGIN", CAROL, CAROL_PW)[0] == 235
        c.sendmail(sender, ["bob@example.net"], BODY)
    (env,) = envelopes_from(relay.spool, sender)
    assert env.authentication == "carol+3Dx"
    raw = next(p for p in spool_files(relay.spool, ".envelope") if b"xtext-identity" in p.read_bytes())
    assert b"\r\nX-MailRelay-Authentication: carol+3Dx\r\n" in raw.read_bytes()
    assert log_has(relay, success_line("login", CAROL, "plaintext", 3))
    content = raw.with_name(raw.name.replace(".envelope", ".content")).read_bytes()
    assert content.startswith(b"Received: ") and b" with ESMTPSA " in content.split(b"\r\n", 1)[0]


def test_md5_secret_from_emailrelay_passwd(auth_relay: AuthRelay) -> None:
    relay = auth_relay.relay
    hashed = passwd(DAVE_PW)
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", hashed)  # 32 bytes of HMAC-MD5 state
    assert DAVE_PW not in auth_relay.secrets.read_text()
    sender = "md5-dave@example.com"
    with connect(relay) as c:
        assert authenticate(c, "CRAM-MD5", "dave", DAVE_PW)[0] == 235
        c.sendmail(sender, ["bob@example.net"], BODY)
    (env,) = envelopes_from(relay.spool, sender)
    assert env.authentication == "dave"
    assert log_has(
        relay,
        r"successful authentication of remote client using mechanism \[cram-md5\] .*\[dave\] from line 4",
    )
    # a hashed secret can only do the HMAC-MD5 mechanism: PLAIN and CRAM-SHA256 fail
    with connect(relay) as c:
        assert authenticate(c, "PLAIN", "dave", DAVE_PW)[0] == 535
        assert authenticate(c, "CRAM-MD5", "alice", ALICE_PW)[0] == 235  # resets the throttle
    with connect(relay) as c:
        assert authenticate(c, "CRAM-SHA256", "dave", DAVE_PW)[0] == 535
        assert authenticate(c, "PLAIN", "alice", ALICE_PW)[0] == 235


def test_md5_dotted_form_works_too(tmp_path: Path) -> None:
    dotted = passwd("pw-dotted", "--dotted")
    assert re.fullmatch(r"[0-9]+(\.[0-9]+){7}", dotted)
    secrets = tmp_path / "s.auth"
    secrets.write_text(f"server md5 erin {dotted}\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    try:
        with connect(relay) as c:
            assert "CRAM-MD5" in c.esmtp_features["auth"].split()
            assert authenticate(c, "CRAM-MD5", "erin", "pw-dotted")[0] == 235
    finally:
        relay.stop()


def test_bad_password_gets_535_and_a_warning(auth_relay: AuthRelay) -> None:
    relay = auth_relay.relay
    with connect(relay) as c:
        start = time.monotonic()
        code, text = authenticate(c, "CRAM-SHA1", "alice", "not-the-password")
        assert code == 535, text
        assert time.monotonic() - start < 0.9  # the first failure is not delayed
        assert authenticate(c, "PLAIN", "nobody", "x")[0] == 535
        assert authenticate(c, "PLAIN", "alice", ALICE_PW)[0] == 235  # the session goes on
    assert log_has(relay, r"^emailrelay: [0-9.]+: warning: failed authentication of remote client.*\[alice\]")
    assert log_has(
        relay, r"^emailrelay: [0-9.]+: warning: failed authentication of remote client.*\[nobody\]"
    )


def test_mail_without_auth_gets_530(auth_relay: AuthRelay) -> None:
    relay = auth_relay.relay
    for tls in (False, True):
        with connect(relay, tls) as c:
            code, text = c.mail("noauth@example.com")
            assert code == 530, text
            with pytest.raises(smtplib.SMTPSenderRefused) as err:
                c.sendmail("noauth@example.com", ["bob@example.net"], BODY)
            assert err.value.smtp_code == 530
    assert envelopes_from(relay.spool, "noauth@example.com") == []


# ------------------------------------------------------------------ trusted addresses


def test_trusted_address_needs_no_auth(tmp_path: Path) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text(f"server none 127.0.0.0/8 trustedkw\nserver plain alice {ALICE_PW}\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    try:
        with connect(relay) as c:
            assert "auth" in c.esmtp_features  # AUTH is still offered
            c.sendmail("trusted@example.com", ["bob@example.net"], BODY)
        with connect(relay) as c:  # a trusted client that does authenticate is recorded as itself
            assert authenticate(c, "PLAIN", "alice", ALICE_PW)[0] == 235
            c.sendmail("trusted-auth@example.com", ["bob@example.net"], BODY)
    finally:
        relay.stop()
    (env,) = envelopes_from(relay.spool, "trusted@example.com")
    # SPEC.md §5: the keyword of the "none" line becomes the Authentication field
    assert env.authentication == "trustedkw"
    assert env.client == "127.0.0.1"
    (env2,) = envelopes_from(relay.spool, "trusted-auth@example.com")
    assert env2.authentication == "alice"
    # the Received lines: no SMTP AUTH ("ESMTPA") is claimed for the trusted client that did not AUTH
    received = {}
    for path in spool_files(relay.spool, ".content"):
        sender = envmod.parse(
            path.with_name(path.name.replace(".content", ".envelope")).read_bytes()
        ).from_address
        received[sender] = path.read_bytes().split(b"\r\n", 1)[0]
    assert b" with ESMTP ;" in received["trusted@example.com"], received
    assert b" with ESMTPA ;" in received["trusted-auth@example.com"], received


def test_untrusted_range_still_needs_auth(tmp_path: Path) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text(f"server none 10.0.0.0/8 elsewhere\nserver plain alice {ALICE_PW}\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    try:
        with connect(relay) as c:
            assert c.mail("untrusted@example.com")[0] == 530
    finally:
        relay.stop()


# ------------------------------------------------------------------ brute force


def test_repeated_failures_are_delayed_then_disconnected(tmp_path: Path) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text(f"server plain alice {ALICE_PW}\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    wrong = base64.b64encode(b"\0alice\0guess").decode()
    try:
        c = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
        c.ehlo("attacker.example.com")
        took: list[float] = []
        for _ in range(5):
            start = time.monotonic()
            code, _text = c.docmd("AUTH", f"PLAIN {wrong}")
            took.append(time.monotonic() - start)
            assert code == 535
        assert took[0] < 0.9, took
        assert took[2] >= 0.9 and took[3] >= 0.9, took  # 3rd and 4th failures are throttled
        with pytest.raises(smtplib.SMTPServerDisconnected):  # the 5th failure ended the session
            c.docmd("NOOP")
        c.close()
        assert log_has(relay, r"warning: too many authentication failures: disconnecting")
        # the real user is not locked out
        with connect(relay) as c2:
            assert authenticate(c2, "PLAIN", "alice", ALICE_PW)[0] == 235
    finally:
        relay.stop()


# ------------------------------------------------------------------ --server-auth-config


def test_server_auth_config_plain_only_after_starttls(tmp_path: Path, certs: Certs) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text(f"server plain alice {ALICE_PW}\n")
    relay = start_relay(
        tmp_path, "--single-process", "--server-auth", str(secrets), "--server-auth-config", "m:;a:plain",
        "--server-tls", "--server-tls-certificate", str(certs.server_pem),
    )  # fmt: skip
    try:
        with connect(relay) as c:
            assert "auth" not in c.esmtp_features and "starttls" in c.esmtp_features
            code, _ = c.docmd("AUTH", "LOGIN")
            assert code >= 500  # not offered: refused without a challenge
            assert c.mail("early@example.com")[0] == 530
            c.rset()
            c.starttls(context=no_verify_context())
            c.ehlo("client.example.com")
            assert c.esmtp_features["auth"].split() == ["PLAIN"]
            assert c.docmd("AUTH", "LOGIN")[0] == 504
            assert authenticate(c, "CRAM-MD5", "alice", ALICE_PW)[0] == 504
            assert authenticate(c, "PLAIN", "alice", ALICE_PW)[0] == 235
            c.sendmail("after-tls@example.com", ["bob@example.net"], BODY)
    finally:
        relay.stop()
    (env,) = envelopes_from(relay.spool, "after-tls@example.com")
    assert env.authentication == "alice"


# ------------------------------------------------------------------ what the log must not show


def test_auth_initial_response_is_not_logged(auth_relay: AuthRelay) -> None:
    relay = auth_relay.relay
    password = "initial-response-pw"
    with connect(relay) as c:
        assert authenticate(c, "PLAIN", "alice", password)[0] == 535  # AUTH PLAIN <initial response>
        assert authenticate(c, "PLAIN", "alice", ALICE_PW)[0] == 235
    leaked = base64.b64encode(f"\0alice\0{password}".encode()).decode()
    assert log_has(relay, r'rx<<: "AUTH PLAIN')
    assert leaked not in relay.log() and password not in relay.log()


def test_auth_response_placeholder_matches_upstream(auth_relay: AuthRelay) -> None:
    relay = auth_relay.relay
    with connect(relay) as c:
        assert authenticate(c, "CRAM-MD5", "alice", ALICE_PW)[0] == 235
    assert log_has(relay, r"info: rx<<: \[authentication response not logged\]$", timeout=2)


# ------------------------------------------------------------------ SIGHUP


def test_secrets_are_reread_on_sighup(tmp_path: Path) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice old-pw\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    try:
        with connect(relay) as c:
            assert authenticate(c, "PLAIN", "alice", "old-pw")[0] == 235
        secrets.write_text("server plain alice new-pw\n")
        relay.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "sighup" in relay.log().lower(), 3)
        assert relay.proc.poll() is None
        with connect(relay) as c:
            assert authenticate(c, "PLAIN", "alice", "new-pw")[0] == 235
    finally:
        relay.stop()


# ------------------------------------------------------------------ what STARTTLS and trust must not keep


def test_authentication_before_starttls_is_forgotten(tmp_path: Path, certs: Certs) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text(f"server none 127.0.0.0/8 trustedkw\nserver plain alice {ALICE_PW}\n")
    relay = start_relay(
        tmp_path, "--single-process", "--server-auth", str(secrets),
        "--server-tls", "--server-tls-certificate", str(certs.server_pem),
    )  # fmt: skip
    try:
        with connect(relay) as c:
            assert authenticate(c, "PLAIN", "alice", ALICE_PW)[0] == 235
            c.starttls(context=no_verify_context())
            c.ehlo("client.example.com")
            c.sendmail(
                "auth-then-tls@example.com", ["bob@example.net"], BODY
            )  # trusted: allowed without AUTH
    finally:
        relay.stop()
    (env,) = envelopes_from(relay.spool, "auth-then-tls@example.com")
    assert env.authentication == "trustedkw"  # what a trusted, unauthenticated client gets


def test_only_trusted_lines_still_require_auth_outside_the_range(tmp_path: Path) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text("server none 10.0.0.0/8 lan\n")
    relay = start_relay(tmp_path, "--single-process", "--server-auth", str(secrets))
    try:
        with connect(relay) as c:
            assert c.mail("outsider@example.com")[0] == 530
    finally:
        relay.stop()
