"""Tests for emailrelay.protocol.sasl: server and client conversations, choice, config, throttle."""

from __future__ import annotations

import base64
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.auth.md5state import hmac_md5_state
from emailrelay.auth.secrets import ClientAccount, Secrets
from emailrelay.protocol.sasl import (
    AuthConfig,
    BruteForceGuard,
    Challenge,
    Failure,
    SaslClient,
    SaslServer,
    Step,
    Success,
    b64decode_strict,
    choose_client_mechanism,
)

SECRETS = Secrets.from_text(
    "server plain alice s3cret\n"  # line 1, as in the fixture session
    "server md5 bob v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow=\n"  # e=mc2
    "server plain j+C3+B6rg p+C3+A4ss\n",
    "server.auth",
)
CRAMS = ["CRAM-MD5", "CRAM-SHA1", "CRAM-SHA256", "CRAM-SHA512"]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def server(mechanism: str, secrets: Secrets = SECRETS) -> SaslServer:
    return SaslServer(mechanism, secrets.server_lookup, "vm", lambda: 26514, lambda: 1795611775.5)


def account(kind: str, user: str, secret: bytes) -> ClientAccount:
    return ClientAccount(kind, user, user.encode(), secret, 1, "client.auth")


def converse(srv: SaslServer, client: SaslClient) -> Step:
    """Run a client against a server like the SMTP layers would."""
    step = srv.start(client.initial_response())
    for _ in range(5):
        if not isinstance(step, Challenge):
            return step
        step = srv.step(client.respond(step.text_b64))
    raise AssertionError("conversation did not finish")


# ------------------------------------------------------------------ server


def test_cram_challenge_matches_upstream_fixture() -> None:
    step = server("CRAM-MD5").start(None)
    assert step == Challenge("PDI2NTE0LjE3OTU2MTE3NzVAdm0+")
    assert base64.b64decode(step.text_b64) == b"<26514.1795611775@vm>"


def test_cram_md5_plain_secret_and_fixture_log_text() -> None:
    srv = server("CRAM-MD5")
    challenge = base64.b64decode(srv.start(None).text_b64)  # type: ignore[union-attr]
    digest = hmac.new(b"s3cret", challenge, "md5").hexdigest()
    step = srv.step(b64(b"alice " + digest.encode()))
    assert step == Success("alice", "CRAM-MD5", 1, "plain")
    assert isinstance(step, Success)
    assert (
        "successful authentication of remote client using "
        + step.describe()
        == "successful authentication of remote client using mechanism [cram-md5]"
        " and plaintext secret for [alice] from line 1"
    )
    assert srv.done


@pytest.mark.parametrize("mechanism", CRAMS)
def test_cram_all_hashes_with_plain_secret(mechanism: str) -> None:
    hash_name = mechanism.split("-")[1].lower()
    srv = server(mechanism)
    challenge = base64.b64decode(srv.start(None).text_b64)  # type: ignore[union-attr]
    digest = hmac.new(b"s3cret", challenge, hash_name).hexdigest().upper()  # case-insensitive hex
    assert srv.step(b64(b"alice " + digest.encode())) == Success("alice", mechanism, 1, "plain")


def test_cram_md5_with_md5_state_secret() -> None:
    srv = server("CRAM-MD5")
    challenge = base64.b64decode(srv.start(None).text_b64)  # type: ignore[union-attr]
    digest = hmac.new(b"e=mc2", challenge, "md5").hexdigest()
    step = srv.step(b64(b"bob " + digest.encode()))
    assert step == Success("bob", "CRAM-MD5", 2, "md5")
    assert isinstance(step, Success) and "md5 secret for [bob] from line 2" in step.describe()


@pytest.mark.parametrize("mechanism", ["CRAM-SHA1", "CRAM-SHA256", "PLAIN", "LOGIN"])
def test_md5_state_secret_only_for_cram_md5(mechanism: str) -> None:
    client = SaslClient(mechanism, account("plain", "bob", b"e=mc2"))
    step = converse(server(mechanism), client)
    assert isinstance(step, Failure) and "no secret for [bob]" in step.reason


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (b"alice 0123456789abcdef0123456789abcdef", "wrong CRAM-MD5 digest"),
        (b"mallory 0123456789abcdef0123456789abcdef", "no secret for [mallory]"),
        (b"nospace", "malformed"),
        (b"", "malformed"),
    ],
)
def test_cram_bad_responses(response: bytes, reason: str) -> None:
    srv = server("CRAM-MD5")
    srv.start(None)
    step = srv.step(b64(response))
    assert isinstance(step, Failure) and reason in step.reason
    assert srv.done


def test_cram_rejects_initial_response_but_tolerates_empty() -> None:
    assert isinstance(server("CRAM-MD5").start("Zm9v"), Failure)
    assert isinstance(server("CRAM-MD5").start(""), Challenge)


def test_plain_initial_response() -> None:
    assert server("PLAIN").start(b64(b"\0alice\0s3cret")) == Success("alice", "PLAIN", 1, "plain")
    assert server("PLAIN").start(b64(b"alice\0alice\0s3cret")) == Success("alice", "PLAIN", 1, "plain")


def test_plain_utf8_identity() -> None:
    step = server("PLAIN").start(b64("\0jörg\0päss".encode()))
    assert step == Success("jörg", "PLAIN", 3, "plain")


def test_plain_without_initial_response() -> None:
    srv = server("PLAIN")
    assert srv.start(None) == Challenge("")
    assert srv.step(b64(b"\0alice\0s3cret")) == Success("alice", "PLAIN", 1, "plain")


def test_plain_authorization_identity_is_ignored() -> None:
    """As E-MailRelay 2.6b: the client is the authentication identity, whatever authzid it names."""
    assert server("PLAIN").start(b64(b"bob\0alice\0s3cret")) == Success("alice", "PLAIN", 1, "plain")
    step = server("PLAIN").start(b64(b"alice\0bob\0s3cret"))
    assert isinstance(step, Failure) and "no secret for [bob]" in step.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\0alice\0wrong", "wrong password for [alice]"),
        (b"\0nobody\0s3cret", "no secret for [nobody]"),
        (b"\0alice", "malformed"),
        (b"\0alice\0s3cret\0", "malformed"),
        (b"\0\0s3cret", "empty user name"),
    ],
)
def test_plain_failures(payload: bytes, reason: str) -> None:
    step = server("PLAIN").start(b64(payload))
    assert isinstance(step, Failure) and reason in step.reason


def test_login_conversation() -> None:
    srv = server("LOGIN")
    assert srv.start(None) == Challenge("VXNlcm5hbWU6")
    assert srv.step(b64(b"alice")) == Challenge("UGFzc3dvcmQ6")
    assert srv.step(b64(b"s3cret")) == Success("alice", "LOGIN", 1, "plain")


def test_login_with_initial_username_and_bad_password() -> None:
    srv = server("LOGIN")
    assert srv.start(b64(b"alice")) == Challenge("UGFzc3dvcmQ6")
    step = srv.step(b64(b"nope"))
    assert step == Failure(
        "wrong password for [alice]", "alice", "LOGIN", "plaintext secret for [alice] from line 1"
    )
    assert (
        step.describe() == "mechanism [login] and plaintext secret for [alice] from line 1"
    )  # upstream's words


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
@pytest.mark.parametrize("bad", ["!!!", "YQ=", "YWI==", "Y", "xx", "Y W J j", " YWJj", "YWJj ", "YW=Jj", "é"])
def test_malformed_base64_fails(mechanism: str, bad: str) -> None:
    srv = server(mechanism)
    srv.start(None)
    step = srv.step(bad)
    assert isinstance(step, Failure) and "base64" in step.reason


@pytest.mark.parametrize(
    ("text", "raw"),
    [("", b""), ("YQ", b"a"), ("YQ==", b"a"), ("YWI", b"ab"), ("YWI=", b"ab"), ("YWJj", b"abc")],
)
def test_base64_padding_may_be_left_out(text: str, raw: bytes) -> None:
    """As E-MailRelay 2.6b: unpadded base64 is taken, incomplete padding is not."""
    assert b64decode_strict(text) == raw


@pytest.mark.parametrize(("initial", "reply"), [("=", ""), ("", "")])
def test_login_with_an_empty_user_name_asks_for_a_password_then_fails(initial: str, reply: str) -> None:
    """Upstream: ``AUTH LOGIN =`` (or an empty line for the user) gets an empty prompt, so the
    password that follows is taken as the password, never as a command (which would be logged)."""
    srv = server("LOGIN")
    first = srv.start("" if initial == "=" else None)
    if initial == "":
        assert first == Challenge(b64(b"Username:"))
        first = srv.step("")
    assert first == Challenge(reply)
    step = srv.step(b64(b"secret"))
    assert isinstance(step, Failure) and step.identity == ""


def test_cancel_and_out_of_order_calls() -> None:
    srv = server("LOGIN")
    assert isinstance(srv.step("Zm9v"), Failure)  # before start
    srv = server("LOGIN")
    srv.start(None)
    assert srv.step("*") == Failure("authentication cancelled", "", "LOGIN")
    assert Failure("x", "", "PLAIN").describe() == "mechanism [plain] and missing secret"
    assert Failure("x", "bob", "PLAIN").describe() == "mechanism [plain] and missing secret for [bob]"
    assert isinstance(srv.step(b64(b"alice")), Failure)  # after the end
    assert isinstance(srv.start(None), Failure)


def test_unknown_server_mechanism() -> None:
    with pytest.raises(ValueError):
        SaslServer("XOAUTH2", SECRETS.server_lookup)


def test_default_challenge_is_random() -> None:
    a = SaslServer("CRAM-MD5", SECRETS.server_lookup, "host").start(None)
    b = SaslServer("CRAM-MD5", SECRETS.server_lookup, "host").start(None)
    assert isinstance(a, Challenge) and isinstance(b, Challenge) and a != b
    assert base64.b64decode(a.text_b64).endswith(b"@host>")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["PLAIN", "LOGIN", *CRAMS]),
    st.one_of(st.none(), st.text(max_size=40)),
    st.lists(st.one_of(st.text(max_size=60), st.binary(max_size=60).map(b64)), max_size=4),
)
def test_random_responses_never_raise(mechanism: str, initial: str | None, lines: list[str]) -> None:
    srv = server(mechanism)
    step = srv.start(initial)
    for line in lines:
        step = srv.step(line)
    assert isinstance(step, Challenge | Success | Failure)


# ------------------------------------------------------------------ client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", *CRAMS])
def test_client_against_server_plain_account(mechanism: str) -> None:
    client = SaslClient(mechanism, account("plain", "alice", b"s3cret"))
    assert converse(server(mechanism), client) == Success("alice", mechanism, 1, "plain")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", *CRAMS])
def test_client_wrong_password_fails(mechanism: str) -> None:
    client = SaslClient(mechanism, account("plain", "alice", b"wrong"))
    assert isinstance(converse(server(mechanism), client), Failure)


def test_client_md5_state_account_against_both_secret_kinds() -> None:
    bob = account("md5", "bob", hmac_md5_state(b"e=mc2"))
    assert converse(server("CRAM-MD5"), SaslClient("CRAM-MD5", bob)) == Success("bob", "CRAM-MD5", 2, "md5")
    alice = account("md5", "alice", hmac_md5_state(b"s3cret"))
    assert converse(server("CRAM-MD5"), SaslClient("CRAM-MD5", alice)) == Success(
        "alice", "CRAM-MD5", 1, "plain"
    )


def test_client_from_secrets_file() -> None:
    acct = Secrets.from_text("client plain:b Ym9i cGFzc3dvcmQxMjM=\n").client_account()
    assert acct is not None
    srv_secrets = Secrets.from_text("server plain bob password123\n")
    step = converse(server("CRAM-SHA256", srv_secrets), SaslClient("CRAM-SHA256", acct))
    assert step == Success("bob", "CRAM-SHA256", 1, "plain")


def test_client_plain_initial_response_bytes() -> None:
    client = SaslClient("PLAIN", account("plain", "bob", b"pw"))
    assert client.initial_response() == b64(b"\0bob\0pw")
    assert SaslClient("LOGIN", account("plain", "bob", b"pw")).initial_response() == b64(b"bob")  # upstream's
    assert SaslClient("CRAM-MD5", account("plain", "bob", b"pw")).initial_response() is None


def test_client_plain_answers_empty_challenge() -> None:
    client = SaslClient("PLAIN", account("plain", "alice", b"s3cret"))
    srv = server("PLAIN")
    assert srv.start(None) == Challenge("")
    assert srv.step(client.respond("")) == Success("alice", "PLAIN", 1, "plain")


def test_client_xoauth2() -> None:
    """The account's secret is the whole XOAUTH2 response; it goes base64-encoded with AUTH."""
    response = b"user=me@example.com\x01auth=Bearer ya29.tok\x01\x01"
    client = SaslClient("XOAUTH2", account("oauth", "me@example.com", response))
    assert base64.b64decode(client.initial_response() or "") == response
    error = b64(b'{"status":"401","schemes":"bearer"}')
    assert client.respond(error) == ""
    assert client.error == '{"status":"401","schemes":"bearer"}'


def test_client_cancels_on_bad_challenge() -> None:
    client = SaslClient("CRAM-MD5", account("plain", "a", b"b"))
    assert client.respond("!!notbase64") == "*"
    assert client.error is not None
    login = SaslClient("LOGIN", account("plain", "a", b"b"))
    login.respond(b64(b"Username:"))
    login.respond(b64(b"Password:"))
    assert login.respond(b64(b"What?")) == "*"


@pytest.mark.parametrize(
    ("mechanism", "acct"),
    [
        ("CRAM-SHA256", account("md5", "bob", b"\0" * 32)),
        ("PLAIN", account("md5", "bob", b"\0" * 32)),
        ("XOAUTH2", account("plain", "bob", b"pw")),
        ("PLAIN", account("oauth", "bob", b"tok")),
        ("XOAUTH2", ClientAccount("oauth", "bob", b"bob", b"", 1, "f", "", ("cmd",))),
        ("NTLM", account("plain", "bob", b"pw")),
    ],
)
def test_client_refuses_mechanisms_the_account_cannot_do(mechanism: str, acct: ClientAccount) -> None:
    with pytest.raises(ValueError):
        SaslClient(mechanism, acct)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["PLAIN", "LOGIN", *CRAMS]), st.lists(st.text(max_size=40), max_size=4))
def test_client_random_challenges_never_raise(mechanism: str, challenges: list[str]) -> None:
    client = SaslClient(mechanism, account("plain", "alice", b"s3cret"))
    client.initial_response()
    for c in challenges:
        assert isinstance(client.respond(c), str)


# ------------------------------------------------------------------ choice

ALL_OFFERED = ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN", "XOAUTH2"]


@pytest.mark.parametrize(
    ("offered", "acct", "expected"),
    [
        (ALL_OFFERED, account("plain", "a", b"p"), "CRAM-SHA512"),
        (["LOGIN", "PLAIN", "CRAM-SHA1"], account("plain", "a", b"p"), "CRAM-SHA1"),
        (["login", "plain"], account("plain", "a", b"p"), "PLAIN"),
        (["LOGIN"], account("plain", "a", b"p"), "LOGIN"),
        (["XOAUTH2"], account("plain", "a", b"p"), None),
        (ALL_OFFERED, account("md5", "a", b"\0" * 32), "CRAM-MD5"),
        (["PLAIN", "CRAM-SHA256"], account("md5", "a", b"\0" * 32), None),
        (ALL_OFFERED, account("oauth", "a", b"t"), "XOAUTH2"),
        (["PLAIN"], account("oauth", "a", b"t"), None),
        (ALL_OFFERED, account("plain", "", b""), None),  # client plain:b = = noauth
        ([], account("plain", "a", b"p"), None),
    ],
)
def test_choose_strongest(offered: list[str], acct: ClientAccount, expected: str | None) -> None:
    assert choose_client_mechanism(offered, acct) == expected


def test_choose_no_account() -> None:
    assert choose_client_mechanism(ALL_OFFERED, None) is None


def test_choose_with_client_config() -> None:
    """As E-MailRelay 2.6b's client: ``m`` allows (in the client's own order), ``x`` forbids."""
    plain = account("plain", "a", b"p")
    config = AuthConfig.parse("m:login,plain;x:cram-md5;d:plain", "client")
    assert choose_client_mechanism(ALL_OFFERED, plain, config) == "PLAIN"  # not LOGIN: m is no order
    assert choose_client_mechanism(["LOGIN", "CRAM-MD5"], plain, config) == "LOGIN"
    assert choose_client_mechanism(["CRAM-MD5", "CRAM-SHA1"], plain, config) is None  # m allows neither
    assert choose_client_mechanism(["PLAIN"], plain, AuthConfig.parse("m:login", "client")) is None
    assert choose_client_mechanism(["PLAIN"], plain, AuthConfig.parse("m:", "client")) == "PLAIN"
    # encrypted: m/x no longer apply, d forbids PLAIN (the forwarder never asks: upstream's client
    # keeps to m/x over TLS too)
    assert choose_client_mechanism(ALL_OFFERED, plain, config, encrypted=True) == "CRAM-SHA512"
    assert choose_client_mechanism(["PLAIN", "CRAM-MD5"], plain, config, encrypted=True) == "CRAM-MD5"
    assert choose_client_mechanism(["PLAIN"], plain, config, encrypted=True) is None


# ------------------------------------------------------------- auth config

SUPPORTED = ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN"]


def test_server_config_guide_example() -> None:
    config = AuthConfig.parse("m:;a:plain", "server")
    assert config.select(SUPPORTED, encrypted=False) == []
    assert config.select(SUPPORTED, encrypted=True) == ["PLAIN"]


def test_server_config_allow_order_and_deny() -> None:
    config = AuthConfig.parse("m:login,cram-md5,ntlm;x:LOGIN;d:plain,login", "server")
    assert config.select(SUPPORTED, encrypted=False) == ["CRAM-MD5"]
    assert config.select(SUPPORTED, encrypted=True) == ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5"]


def test_server_config_without_tls_lists_keeps_m_and_x_over_tls() -> None:
    """E-MailRelay 2.6b: with neither ``a`` nor ``d``, ``m``/``x`` apply once encrypted too."""
    config = AuthConfig.parse("x:plain,login", "server")
    assert config.select(SUPPORTED, False) == ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5"]
    assert config.select(SUPPORTED, True) == ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5"]
    assert AuthConfig.parse("m:plain", "server").select(SUPPORTED, True) == ["PLAIN"]
    only_d = AuthConfig.parse("m:plain,login;d:login", "server")
    assert only_d.select(SUPPORTED, True) == ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN"]


@pytest.mark.parametrize(
    ("text", "before_tls"),
    [
        ("m:plain, login", ["PLAIN"]),  # " LOGIN" is no mechanism: nothing is trimmed
        ("m:plain ;a:login", []),
        ("m:plain;m:login", ["PLAIN"]),  # the first one counts
        ("M:Login", ["LOGIN"]),
        ("m:plain,,login", ["PLAIN", "LOGIN"]),
        ("m:login:plain", []),
        ("foo;m=plain;mm:plain;:plain;m", SUPPORTED),  # malformed items are ignored
    ],
)
def test_server_config_is_read_as_upstream_reads_it(text: str, before_tls: list[str]) -> None:
    assert AuthConfig.parse(text, "server").select(SUPPORTED, False) == before_tls


def test_empty_config_changes_nothing() -> None:
    for role in ("server", "client"):
        config = AuthConfig.parse("", role)  # type: ignore[arg-type]
        assert config.select(SUPPORTED, False) == SUPPORTED
        assert config.select(SUPPORTED, True) == SUPPORTED


def test_client_config_allows_in_its_own_order() -> None:
    config = AuthConfig.parse("m:plain;a:login,plain", "client")
    assert config.select(SUPPORTED, False) == ["PLAIN"]
    assert config.select(SUPPORTED, True) == ["PLAIN", "LOGIN"]


def test_config_ignores_unknown_keys() -> None:
    assert AuthConfig.parse("z:whatever;m:plain", "server").select(SUPPORTED, False) == ["PLAIN"]


# ------------------------------------------------------------- throttle


def test_guard_delays_double_up_to_the_cap() -> None:
    guard = BruteForceGuard()
    delays = [guard.failure("192.0.2.1", now=100.0 + i, session_failures=i + 1).delay for i in range(7)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert guard.delay("192.0.2.2", 110.0) == 0.0  # another client is not affected


def test_guard_disconnects_after_five_session_failures() -> None:
    guard = BruteForceGuard()
    decisions = [guard.failure("192.0.2.1", 0.0, n).disconnect for n in range(1, 7)]
    assert decisions == [False, False, False, False, True, True]


def test_guard_counts_across_sessions_and_forgets() -> None:
    guard = BruteForceGuard(window=60.0)
    guard.failure("ip", 0.0, 1)
    guard.failure("ip", 10.0, 1)  # a new session, same client
    assert guard.failures("ip", 20.0) == 2
    assert guard.delay("ip", 20.0) == 1.0
    assert guard.failures("ip", 100.0) == 0  # a quiet minute later
    assert guard.failure("ip", 100.0, 1).delay == 0.0
    guard.failure("ip", 101.0, 2)
    guard.success("ip")
    assert guard.failures("ip", 102.0) == 0


def test_guard_memory_is_bounded() -> None:
    guard = BruteForceGuard(max_clients=3, window=10.0)
    for i in range(10):
        guard.failure(f"10.0.0.{i}", float(i), 1)
    assert guard.failures("10.0.0.9", 9.0) == 1
    assert guard.failures("10.0.0.0", 9.0) == 0
    assert len(guard._clients) <= 3
