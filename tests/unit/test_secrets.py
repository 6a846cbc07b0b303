"""Tests for emailrelay.auth.secrets: the secrets file, trust rules, --client-auth values."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.auth.md5state import hmac_md5_from_state, hmac_md5_state
from emailrelay.auth.secrets import (
    ClientAccount,
    Secrets,
    SecretsLineError,
    TokenError,
    fetch_oauth_token,
    is_pam,
    xoauth2_response,
)
from emailrelay.errors import ConfigError
from emailrelay.protocol.addresses import xtext_encode

# ------------------------------------------------- the guides' examples, verbatim

GUIDE_PLAIN = """\
        # emailrelay secrets file
        client plain bob password123
        server plain alice e+3Dmc2
        server plain carol my+20password
"""

GUIDE_BASE64 = """\
        # emailrelay secrets file
        client plain:b Ym9i cGFzc3dvcmQxMjM= # bob
        server plain:b YWxpY2U= ZT1tYzI= # alice
        server plain:b Y2Fyb2w= bXkgcGFzc3dvcmQ= # carol
"""

GUIDE_SELECTORS = """\
        # emailrelay secrets file
        client plain bob password123 # no selector, authenticate as bob
        client plain alice e+3Dmc2 use_alice # selector 'use_alice'
        client plain:b = = noauth # selector 'noauth', no authentication
"""

GUIDE_MD5 = """\
        # emailrelay secrets file
        client md5 bob 9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=
        server md5 alice v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow=
        server md5 carol x6UJKQF9f7HfhS1M+PW4s8rXIoT+L+WoqLz+rBwSKbw=
"""

GUIDE_TRUST = """\
        # emailrelay secrets file
        server none 192.168.0.* localipv4
        server none fe80::/64 localipv6
        server plain alice e+3Dmc2
        server plain carol my+20password
"""

SEED_POP = """\
\tAPOP server user1 password1
\tAPOP server user2 password2
"""


@pytest.mark.parametrize("text", [GUIDE_PLAIN, GUIDE_BASE64])
def test_guide_plain_and_base64_forms_are_equivalent(text: str) -> None:
    s = Secrets.from_text(text, "auth.txt")
    alice = s.server_lookup("PLAIN", "alice")
    carol = s.server_lookup("LOGIN", "carol")
    assert alice is not None and alice.kind == "plain" and alice.secret == b"e=mc2" and alice.line == 3
    assert carol is not None and carol.secret == b"my password" and carol.line == 4
    bob = s.client_account()
    assert bob is not None and bob.user == "bob" and bob.secret == b"password123" and bob.kind == "plain"
    assert s.server_lookup("PLAIN", "bob") is None
    assert s.has_server_accounts and s.has_client_accounts


def test_guide_selectors() -> None:
    s = Secrets.from_text(GUIDE_SELECTORS, "auth.txt")
    default = s.client_account()
    alice = s.client_account("use_alice")
    noauth = s.client_account("noauth")
    assert default is not None and default.user == "bob" and not default.is_empty
    assert alice is not None and alice.user == "alice" and alice.secret == b"e=mc2"
    assert alice.selector == "use_alice" and alice.line == 3
    assert noauth is not None and noauth.is_empty and noauth.secret == b""
    assert s.client_account("nobody") is None
    assert not s.has_server_accounts
    assert s.mechanisms_for_server() == []


def test_guide_md5() -> None:
    s = Secrets.from_text(GUIDE_MD5, "auth.txt")
    alice = s.server_lookup("CRAM-MD5", "alice")
    assert alice is not None and alice.kind == "md5" and alice.secret == hmac_md5_state(b"e=mc2")
    assert s.server_lookup("PLAIN", "alice") is None
    assert s.server_lookup("CRAM-SHA256", "alice") is None
    assert s.mechanisms_for_server() == ["CRAM-MD5"]
    bob = s.client_account()
    assert bob is not None and bob.kind == "md5"
    assert bob.hmac_digest("md5", b"<1.2@x>") == hmac_md5_from_state(
        hmac_md5_state(b"password123"), b"<1.2@x>"
    )
    assert bob.hmac_digest("sha256", b"<1.2@x>") is None


def test_guide_trust() -> None:
    s = Secrets.from_text(GUIDE_TRUST, "auth.txt")
    assert s.trusted("192.168.0.7") == "localipv4"
    assert s.trusted("192.168.1.7") is None
    assert s.trusted("fe80::1") == "localipv6"
    assert s.trusted("fe80::1%eth0") == "localipv6"
    assert s.trusted("fe80:0:0:1::1") is None
    assert s.trusted("::ffff:192.168.0.9") == "localipv4"
    assert s.trusted("[fe80::2]") == "localipv6"
    assert s.trusted("not an address") is None
    assert len(s.server) == 2 and len(s.trust) == 2


def test_mechanisms_for_plain_secrets_follow_upstream_order() -> None:
    s = Secrets.from_text(GUIDE_PLAIN)
    assert s.mechanisms_for_server() == [
        "CRAM-SHA512",
        "CRAM-SHA256",
        "CRAM-SHA1",
        "CRAM-MD5",
        "PLAIN",
        "LOGIN",
    ]


def test_cram_md5_lookup_takes_plain_or_md5_in_file_order() -> None:
    s = Secrets.from_text("server plain al pw\nserver md5 al v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow=\n")
    cram = s.server_lookup("cram-md5", "al")
    assert cram is not None and cram.kind == "plain"
    assert s.mechanisms_for_server()[-2:] == ["PLAIN", "LOGIN"]


# ------------------------------------------------------------- older forms


def test_seed_guide_apop_lines() -> None:
    s = Secrets.from_text(SEED_POP, "pop.auth")
    user2 = s.server_lookup("APOP", "user2")
    assert user2 is not None and user2.secret == b"password2" and user2.line == 2 and user2.kind == "plain"


def test_seed_login_and_none_lines() -> None:
    text = "login server carol my+20password\nLOGIN client bob password123\nNONE server *.*.*.* x\n"
    s = Secrets.from_text(text)
    carol = s.server_lookup("PLAIN", "carol")
    assert carol is not None and carol.secret == b"my password"
    bob = s.client_account()
    assert bob is not None and bob.user == "bob" and bob.secret == b"password123"
    assert s.trusted("10.1.2.3") == "x"
    assert s.trusted("::1") is None


def test_type_words_as_upstream_reads_them() -> None:
    """``login`` is ``plain``; ``cram-md5`` and ``apop`` are ``md5``; any other word names the hash
    function of a base64 secret (E-MailRelay 2.6b; tests/differential/test_programs.py)."""
    state = hmac_md5_state(b"secret")
    b64 = base64.b64encode(state).decode()
    s = Secrets.from_text(
        f"server login al my+20pw\nserver cram-md5 bo {b64}\nserver APOP cy {b64}\n"
        "server sha256 di eA==\nserver frob ed eA==\nserver oauth fa eA==\nclient sha1 me eA==\n"
    )
    al, bo, cy = (s.server_lookup("CRAM-MD5", u) for u in ("al", "bo", "cy"))
    assert al is not None and al.kind == "plain" and al.secret == b"my pw"
    assert bo is not None and bo.kind == "md5" and bo.secret == state
    assert cy is not None and cy.kind == "md5" and cy.secret == state
    assert [(x.id, x.kind, x.secret) for x in s.server[3:]] == [
        ("di", "sha256", b"x"), ("ed", "frob", b"x"), ("fa", "oauth", b"x"),
    ]  # fmt: skip
    client = s.client_account()
    assert client is not None and client.kind == "sha1" and client.secret == b"x"


@pytest.mark.parametrize(
    ("text", "mechanisms"),
    [
        ("server sha256 a eA==\nserver sha1 b eA==\nserver frob c eA==\n", ["CRAM-SHA256", "CRAM-SHA1"]),
        ("server frob a eA==\nserver sha512 b eA==\nserver oauth c eA==\n", []),
        (
            "server frob a eA==\nserver login b pw\n",
            ["CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN"],
        ),
    ],
)
def test_hashed_secrets_offer_what_upstream_offers(text: str, mechanisms: list[str]) -> None:
    """CRAM-SHA256 / CRAM-SHA1 for sha256 / sha1 lines, nothing for other hash names; a hashed
    secret other than MD5's cannot check a response, so its lookup gives no digest."""
    s = Secrets.from_text(text)
    assert s.mechanisms_for_server() == mechanisms
    hashed = s.server_lookup("CRAM-SHA256", "a")
    if "sha256" in text:
        assert hashed is not None and hashed.hmac_digest("sha256", b"challenge") is None
    assert s.server_lookup("PLAIN", "a") is None


def test_old_cram_md5_dotted_line_is_md5_state() -> None:
    from emailrelay.auth.md5state import encode_dotted

    dotted = encode_dotted(hmac_md5_state(b"secret"))
    s = Secrets.from_text(f"CRAM-MD5 server dave {dotted}\nCRAM-MD5 server erin plainpw\n")
    dave = s.server_lookup("CRAM-MD5", "dave")
    erin = s.server_lookup("CRAM-MD5", "erin")
    assert dave is not None and dave.kind == "md5" and dave.secret == hmac_md5_state(b"secret")
    assert erin is not None and erin.kind == "plain"


def test_md5_dotted_form_in_new_lines() -> None:
    from emailrelay.auth.md5state import encode_dotted

    s = Secrets.from_text(f"server md5 al {encode_dotted(hmac_md5_state(b'e=mc2'))}\n")
    al = s.server_lookup("CRAM-MD5", "al")
    assert al is not None and al.secret == hmac_md5_state(b"e=mc2")


# ------------------------------------------------------------- details


def test_keywords_are_case_insensitive_and_whitespace_is_flexible() -> None:
    s = Secrets.from_text("  SERVER\tPLAIN:B  YWxpY2U=\tZT1tYzI=  \r\nClient Plain bob pw\r\n")
    assert s.server_lookup("PLAIN", "alice") is not None
    assert s.client_account() is not None


def test_xtext_ids_and_utf8() -> None:
    s = Secrets.from_text("server plain j+C3+B6rg p+2Bw+3D\nserver plain raw+E9 x\n")
    jorg = s.server_lookup("PLAIN", "jörg")
    assert jorg is not None and jorg.id_bytes == "jörg".encode() and jorg.secret == b"p+w="
    raw = s.server_lookup("PLAIN", "raw\xe9")  # not UTF-8: latin-1 text, exact octets kept
    assert raw is not None and raw.id_bytes == b"raw\xe9"


def test_secret_octets_are_exact_when_not_utf8() -> None:
    s = Secrets.from_text("server plain u +E9+E8\n")
    u = s.server_lookup("PLAIN", "u")
    assert u is not None and u.secret == b"\xe9\xe8"


def test_server_line_fifth_field_ignored() -> None:
    s = Secrets.from_text("server plain alice pw extra\n")
    assert s.server_lookup("PLAIN", "alice") is not None


def test_oauth_client_token() -> None:
    """As E-MailRelay 2.6b: the secret is the base64 XOAUTH2 response (padding optional)."""
    response = b"user=me@example.com\x01auth=Bearer ya29.tok\x01\x01"
    field = base64.b64encode(response).decode().rstrip("=")
    s = Secrets.from_text(f"client oauth me@example.com {field} gmail\nclient oauth you YWJj\n")
    acct = s.client_account("gmail")
    assert acct is not None and acct.kind == "oauth" and acct.secret == response
    assert not acct.needs_token
    assert fetch_oauth_token(acct) is acct
    other = s.client_account()
    assert other is not None and other.secret == b"abc"


@pytest.mark.parametrize(
    "field", ["x", "a+2Bb", "a=b", "YQ=", "YR==", "ab==", "abcd=", "abcd====", "=abc", "a-bc"]
)
def test_oauth_client_token_must_be_strict_base64(field: str) -> None:
    """E-MailRelay 2.6b refuses these as "invalid xtext encoding of secret": not strict base64."""
    with pytest.raises(ConfigError, match=r"invalid xtext in the secret for \[bob\]"):
        Secrets.from_text(f"client oauth bob {field}\n")


def test_oauth_cmd_runs_command_for_a_fresh_token() -> None:
    command = f"{sys.executable} -c \"print(); print('fresh-token'); print('ignored')\""
    s = Secrets.from_text(f"client oauth:cmd me@example.com {xtext_encode(command)}\n")
    acct = s.client_account()
    assert acct is not None and acct.needs_token and acct.token_command is not None
    assert acct.token_command[0] == sys.executable
    fresh = fetch_oauth_token(acct)
    assert (
        fresh.secret == xoauth2_response(b"me@example.com", b"fresh-token")
        and not fresh.needs_token
        and fresh.user == "me@example.com"
    )


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import sys; sys.exit(3)", "exit 3"),
        ("pass", "printed no token"),
        ("import time; time.sleep(10)", "timed out"),
    ],
)
def test_oauth_cmd_failures(code: str, message: str) -> None:
    acct = ClientAccount("oauth", "me", b"me", b"", 1, "f", "", (sys.executable, "-c", code))
    with pytest.raises(TokenError, match=message):
        fetch_oauth_token(acct, timeout=1.0)


def test_oauth_cmd_missing_program() -> None:
    acct = ClientAccount("oauth", "me", b"me", b"", 1, "f", "", ("/nonexistent/token-helper",))
    with pytest.raises(TokenError, match="could not run"):
        fetch_oauth_token(acct)


def test_oauth_cmd_uses_injected_runner() -> None:
    calls: list[list[str]] = []

    def runner(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"tok\n", b"")

    s = Secrets.from_text("client oauth:cmd me get-token+20--account+20me\n")
    acct = s.client_account()
    assert acct is not None
    assert fetch_oauth_token(acct, run=runner).secret == b"user=me\x01auth=Bearer tok\x01\x01"
    assert calls == [["get-token", "--account", "me"]]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("server plain a one\nserver plain a two\n", "f(2): duplicate server secret"),
        ("client plain b x\nclient plain c y\n", "f(2): duplicate client secret"),
        ("client plain b x s1\nclient plain c y s1\n", "f(2): duplicate client secret"),
        ("server none 10.0.0.0/8 a\nserver none 10.0.0.0/8 b\n", "f(2): duplicate server trust address"),
    ],
)
def test_duplicates_refuse_the_file_as_upstream(text: str, error: str) -> None:
    with pytest.raises(SecretsLineError) as caught:
        Secrets.from_text(text, "f")
    assert str(caught.value) == error


def test_same_id_of_another_kind_or_side_is_no_duplicate() -> None:
    md5 = "v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow="
    s = Secrets.from_text(f"server plain a one\nserver md5 a {md5}\nclient plain a x\nclient plain a y s1\n")
    assert len(s.server) == 2 and len(s.clients) == 2


def test_secrets_not_in_repr() -> None:
    s = Secrets.from_text("server plain alice topsecret\n")
    assert "topsecret" not in repr(s.server[0])


def test_trust_forms() -> None:
    text = """
        server none 10.0.0.0/8 ten
        server none 172.16.5.1 one
        server none 192.*.0.1 odd
        server none fc00::/7 ula
        server none ::1 loop6
        server none 127.0.0.1/32 loop4
    """
    s = Secrets.from_text(text)
    assert s.trusted("10.200.1.1") == "ten"
    assert s.trusted("11.0.0.1") is None
    assert s.trusted("172.16.5.1") == "one"
    assert s.trusted("172.16.5.2") is None
    assert s.trusted("192.77.0.1") == "odd"
    assert s.trusted("192.77.1.1") is None
    assert s.trusted("fd12::5") == "ula"
    assert s.trusted("::1") == "loop6"
    assert s.trusted("127.0.0.1") == "loop4"
    assert s.trusted("::ffff:127.0.0.1") == "loop4"
    assert s.trusted("2001:db8::1") is None


def test_first_matching_trust_rule_wins() -> None:
    s = Secrets.from_text("server none 10.1.0.0/16 narrow\nserver none 10.0.0.0/8 wide\n")
    assert s.trusted("10.1.2.3") == "narrow"
    assert s.trusted("10.2.2.3") == "wide"


# ------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("cilent plain bob pw", "invalid value in first field: [cilent]"),
        ("server plian bob pw", "invalid plian secret for [bob]: expected base64"),
        ("server plain bob", "too few fields"),
        ("server plain bob pw sel extra", "too many fields"),
        ("server plain bob pass+zzword", "invalid xtext in the secret for [bob]"),
        ("server plain b+ob pw", "invalid xtext in id [b+ob]"),
        ("server plain:b Ym9i not-base64", "invalid base64 in the secret for [bob]"),
        ("server plain:b Ym9 cGFzcw==", "invalid base64 in id [Ym9]"),
        ("server md5 bob cGFzcw==", "invalid md5 secret for [bob]"),
        ("server md5 bob 1.2.3.4.5.6.7", "invalid md5 secret for [bob]"),
        ("server md5 bob 1.2.3.4.5.6.7.99999999999", "invalid md5 secret for [bob]"),
        ("server none 192.168.0.300 kw", "invalid ip address range [192.168.0.300]"),
        ("server none 192.168.* kw", "invalid ip address range [192.168.*]"),
        ("server none 10.0.0.0/33 kw", "invalid ip address range [10.0.0.0/33]"),
        ("server none fe80::/129 kw", "invalid ip address range [fe80::/129]"),
        ("server none localhost kw", "invalid ip address range [localhost]"),
        ("server none 10.0.0.0/8 kw extra", "none lines take the form"),
        ("client none 10.0.0.0/8 kw", "none lines take the form"),
        ("server oauth bob tok", "invalid oauth secret for [bob]: expected base64"),
        ("server oauth:cmd bob tok", "invalid oauth:cmd secret for [bob]: expected base64"),
        ("server sha256 bob hunter2", "invalid sha256 secret for [bob]: expected base64"),
        ("server cram-md5 bob secret", "invalid md5 secret for [bob]"),
        ("server apop bob secret", "invalid md5 secret for [bob]"),
        ("client oauth:cmd bob 'unbalanced", "invalid oauth:cmd command line for [bob]"),
        ("APOP server user1", "APOP lines take the form"),
        ("NONE client 1.2.3.4 x", "NONE lines take the form"),
        ("server", "too few fields"),
    ],
)
def test_malformed_line_names_file_and_line(line: str, message: str) -> None:
    text = "# header\n\nserver plain ok ok\n" + line + "\n"
    with pytest.raises(ConfigError) as exc:
        Secrets.from_text(text, "/etc/emailrelay.auth")
    assert exc.value.path == "/etc/emailrelay.auth"
    assert exc.value.line == 4
    assert message in exc.value.text
    assert str(exc.value).startswith("emailrelay.auth(4): ")  # E-MailRelay 2.6b's form


def test_error_messages_do_not_quote_passwords() -> None:
    with pytest.raises(ConfigError) as exc:
        Secrets.from_text("server plain bob sup3r+zzsecret\n")
    assert "sup3r" not in str(exc.value)


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "emailrelay.auth"
    path.write_bytes(GUIDE_TRUST.encode())
    s = Secrets.load(path)
    assert s.path == str(path)
    assert s.trusted("192.168.0.1") == "localipv4"


def test_load_latin1_file(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_bytes(b"# caf\xe9\nserver plain alice pw\n")
    assert Secrets.load(path).server_lookup("PLAIN", "alice") is not None


def test_load_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text("server plain a b\nbogus\n")
    with pytest.raises(ConfigError, match=r"^auth\(2\): invalid value in first field: \[bogus\]$"):
        Secrets.load(path)


@pytest.mark.parametrize("name", ["missing", "dir", "nul\0name"])
def test_unreadable_file_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / "dir" if name == "dir" else f"{tmp_path}/{name}"
    if name == "dir":
        Path(path).mkdir()
    with pytest.raises(ConfigError) as exc:
        Secrets.load(path)
    assert exc.value.path == str(path)
    assert "cannot read secrets file" in str(exc.value)


# ------------------------------------------------------------- option values


def test_from_option_inline_plain() -> None:
    s = Secrets.from_option("plain:Ym9i:cGFzc3dvcmQxMjM=")
    acct = s.client_account()
    assert acct is not None and acct.user == "bob" and acct.secret == b"password123"
    assert not s.has_server_accounts


@pytest.mark.parametrize("value", ["plain:", "plain:Ym9i", "plain:Ym9i:!!", "plain:a:b:c", "plain::cHc="])
def test_from_option_inline_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="--client-auth"):
        Secrets.from_option(value)


def test_from_option_file(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_text(GUIDE_PLAIN)
    assert Secrets.from_option(str(path)).server_lookup("PLAIN", "alice") is not None


@pytest.mark.parametrize("value", ["pam:", "PAM:", "pam:emailrelay"])
def test_pam_is_recognised_and_refused(value: str) -> None:
    """``pam:`` is not a secrets file (services/security.py turns it into PamSecrets)."""
    assert is_pam(value)
    with pytest.raises(ConfigError, match=r"pam: is not a secrets file"):
        Secrets.from_option(value)
    with pytest.raises(ConfigError, match="PAM"):
        Secrets.load(value)


def test_not_pam() -> None:
    assert not is_pam("/etc/pam.auth")


# ------------------------------------------------------------- properties

LINE_WORDS = st.sampled_from(
    [
        "client",
        "server",
        "plain",
        "plain:b",
        "md5",
        "oauth",
        "oauth:cmd",
        "none",
        "APOP",
        "login",
        "NONE",
        "cram-md5",
        "=",
        "Ym9i",
        "e+3Dmc2",
        "+",
        "+zz",
        "*.*.*.*",
        "fe80::/64",
        "10.0.0.0/8",
        "1.2.3.4.5.6.7.8",
        "9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=",
        "#",
        "'",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.one_of(LINE_WORDS, st.text(min_size=1, max_size=12)), max_size=6), max_size=8))
def test_random_text_raises_only_config_error(lines: list[list[str]]) -> None:
    text = "\n".join(" ".join(words) for words in lines)
    try:
        s = Secrets.from_text(text, "fuzz")
    except ConfigError as err:
        assert err.path == "fuzz" or err.path is None
        return
    s.trusted("10.0.0.1")
    s.trusted("fe80::1")
    s.mechanisms_for_server()
    s.client_account()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_raw_text_raises_only_config_error(text: str) -> None:
    try:
        Secrets.from_text(text, "fuzz")
    except ConfigError:
        pass
