"""emailrelay.auth.pam (the ctypes binding, against the real libpam) and SaslServer's external check."""

from __future__ import annotations

import base64
import ctypes.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emailrelay.auth import pam
from emailrelay.config import Config
from emailrelay.errors import ConfigError
from emailrelay.protocol.pop3_server import Pop3Server, PopConfig
from emailrelay.protocol.sasl import Challenge, CheckPassword, Failure, SaslServer, Success
from emailrelay.services.security import client_security, server_security
from tests.support.pam import PAM_EXEC, pam_confdir

needs_pam = pytest.mark.skipif(
    ctypes.util.find_library("pam") is None or PAM_EXEC is None, reason="needs libpam and pam_exec.so"
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@needs_pam
def test_check_right_wrong_unknown(tmp_path: Path) -> None:
    confdir = str(pam_confdir(tmp_path))
    assert pam.check("alice", b"s3cret", confdir=confdir) == pam.PamResult(True)
    wrong = pam.check("alice", b"nope", confdir=confdir)
    assert not wrong.ok and wrong.reason.startswith("pam: authenticate:") and "nope" not in wrong.reason
    assert not pam.authenticate("bob", b"s3cret", confdir=confdir)
    assert not pam.authenticate("alice", b"", confdir=confdir)


@needs_pam
def test_nul_and_empty_names_never_reach_pam(tmp_path: Path) -> None:
    confdir = str(pam_confdir(tmp_path))
    assert pam.check("alice", b"s3\0cret", confdir=confdir).reason == "pam: user name or password unusable"
    assert not pam.authenticate("ali\0ce", b"s3cret", confdir=confdir)
    assert not pam.authenticate("", b"s3cret", confdir=confdir)


@needs_pam
def test_missing_confdir_or_service_is_false(tmp_path: Path) -> None:
    assert not pam.authenticate("alice", b"s3cret", confdir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert not pam.authenticate("alice", b"s3cret", confdir=str(tmp_path / "empty"))


@needs_pam
def test_threads(tmp_path: Path) -> None:
    confdir = str(pam_confdir(tmp_path))
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: pam.authenticate("alice", b"s3cret" if i % 2 else b"x", confdir=confdir), range(32)
            )
        )
    assert results == [bool(i % 2) for i in range(32)]


@needs_pam
def test_pam_secrets_environment_and_mechanisms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    confdir = str(pam_confdir(tmp_path))
    monkeypatch.setenv(pam.CONFDIR_ENV, confdir)
    secrets = pam.PamSecrets()
    assert secrets.confdir == confdir and secrets.has_server_accounts and not secrets.has_client_accounts
    assert secrets.mechanisms_for_server() == ["PLAIN", "LOGIN"]
    assert secrets.server_lookup("APOP", "alice") is None and secrets.trusted("127.0.0.1") is None
    assert secrets.check_password("alice", b"s3cret", "192.0.2.1").ok
    monkeypatch.delenv(pam.CONFDIR_ENV)
    assert pam.PamSecrets().confdir is None


@needs_pam
def test_security_objects(tmp_path: Path) -> None:
    config = Config(spool_dir=tmp_path, server_auth="pam:", client_auth="PAM:")
    sec = server_security(config)
    assert isinstance(sec.secrets, pam.PamSecrets)
    assert sec.mechanisms(False) == ("PLAIN", "LOGIN")
    with pytest.raises(ConfigError, match=r"^cannot read secrets file: PAM:$"):  # E-MailRelay 2.6b's words
        client_security(config)


def test_missing_libpam_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pam, "_library", None)

    def fail(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pam.ctypes, "CDLL", fail)
    with pytest.raises(ConfigError, match="needs libpam"):
        pam.PamSecrets()


# ------------------------------------------------------------ SaslServer(external_check=True)


def never(mechanism: str, user: str) -> None:
    raise AssertionError("no look-up with an external check")


def test_sasl_plain_external() -> None:
    s = SaslServer("PLAIN", never, external_check=True)
    step = s.start(b64(b"\0alice\0s3cret"))
    assert step == CheckPassword("alice", b"s3cret") and "s3cret" not in repr(step)
    assert isinstance(s.step("x"), Failure)  # no response expected while checking
    s = SaslServer("PLAIN", never, external_check=True)
    s.start(b64(b"\0alice\0s3cret"))
    assert s.checked(True) == Success("alice", "PLAIN", 0, "pam")
    assert s.done
    assert Success("alice", "PLAIN", 0, "pam").describe() == "mechanism [plain] and pam for [alice]"


def test_sasl_login_external_failure() -> None:
    s = SaslServer("LOGIN", never, external_check=True)
    assert isinstance(s.start(), Challenge)
    assert isinstance(s.step(b64(b"alice")), Challenge)
    assert s.step(b64(b"bad")) == CheckPassword("alice", b"bad")
    failure = s.checked(False, "pam: authenticate: Authentication failure")
    assert failure == Failure(
        "pam: authenticate: Authentication failure", "alice", mechanism="LOGIN", secret="pam for [alice]"
    )


def test_sasl_cram_external_fails_and_unexpected_checked() -> None:
    s = SaslServer("CRAM-MD5", never, external_check=True)
    assert isinstance(s.start(), Failure)
    assert isinstance(SaslServer("PLAIN", never, external_check=True).checked(True), Failure)


def test_pop_greeting_without_apop_has_no_timestamp() -> None:
    pop = Pop3Server(PopConfig(timestamp="<1.2@host>", apop=False, mechanisms=("PLAIN", "LOGIN")))
    pop.greeting()
    assert pop.data_to_send() == b"+OK POP3 server ready\r\n"
    pop = Pop3Server(PopConfig(timestamp="<1.2@host>"))
    pop.greeting()
    assert pop.data_to_send() == b"+OK POP3 server ready <1.2@host>\r\n"
