"""Pure parts of the policy layer: option parsing, exit-code mapping, response parsing, text hygiene."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emailrelay.config import from_values
from emailrelay.policy.exe import (
    clean_text,
    is_clean_address,
    is_clean_mailbox,
    parse_response,
    peer_text,
    result_for_exit_code,
    verdict_for,
    verifier_args,
)
from emailrelay.policy.net import Endpoint, parse_endpoint
from emailrelay.policy.spec import (
    Spec,
    SpecError,
    SpecUsageError,
    parse_filters,
    parse_verifier,
)
from emailrelay.policy.split import group_by_domain
from emailrelay.policy.verdicts import FilterOutcome, RecipientKind


# ---- spec parsing ------------------------------------------------------------------------------------
def test_chain_forms() -> None:
    specs = parse_filters(
        ["/usr/bin/f1,exit:103", "net:127.0.0.1:10101", "spam-edit:127.0.0.1:783,copy:hardlink;nodelete"],
        base_dir="/base",
    )
    assert [(s.kind, s.value, s.params) for s in specs] == [
        ("exe", "/usr/bin/f1", ()),
        ("exit", "103", ()),
        ("net", "127.0.0.1:10101", ()),
        ("spam-edit", "127.0.0.1:783", ()),
        ("copy", "hardlink;nodelete", ("hardlink", "nodelete")),
    ]
    # the names in log lines are E-MailRelay 2.6b's (tests/differential/test_filters.py)
    assert [s.name for s in specs] == ["f1", "exit:103", "127.0.0.1/10101/ip", "127.0.0.1/783/ip", "copy:"]


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("file:/x/y.sh", "exe", "/x/y.sh"),
        ("exe:/x/y.sh", "exe", "/x/y.sh"),
        ("rel/filter.sh", "exe", "/base/rel/filter.sh"),
        ("file:rel.sh", "exe", "/base/rel.sh"),
        ("spam:127.0.0.1:783", "spam", "127.0.0.1:783"),
        ("net:/run/filter.sock", "net", "/run/filter.sock"),
        ("deliver:", "deliver", ""),
        ("split:raw", "split", "raw"),
        ("mx:nst=60;rt=60;127.0.0.1:53", "mx", "nst=60;rt=60;127.0.0.1:53"),
        ("mx:[::1]:5353", "mx", "[::1]:5353"),
        ("mx:", "mx", ""),
        ("msgid:", "msgid", ""),
        ("EXIT:7", "exit", "7"),
        ("c:/odd/path", "exe", "/base/c:/odd/path"),
        ("account:", "exe", "/base/account:"),  # the verifier is no filter: a program path, as upstream's
    ],
)
def test_single_forms(text: str, kind: str, value: str) -> None:
    (spec,) = parse_filters(text, base_dir="/base")
    assert (spec.kind, spec.value, spec.text) == (kind, value, text)


@pytest.mark.parametrize(
    "text",
    [
        "exit:",
        "exit:x",
        "exit: 5",
        "exit:-1",
        "exit:4294967296",
        "net:",
        "spam:",
        "file:",
        "deliver:pop",
    ],
)
def test_bad_filters(text: str) -> None:
    with pytest.raises(SpecError):
        parse_filters(text)


@pytest.mark.parametrize(
    ("text", "client", "error"),
    [
        ("deliver:hardlink;nodelete", False, "invalid format: expected unsigned integer: hardlink;nodelete"),
        ("deliver: 1", True, "invalid format: expected unsigned integer:  1"),
        ("deliver:-1", False, "invalid format: expected unsigned integer"),
        ("deliver:4294967296", False, "over/underflow: 4294967296"),
    ],
)
def test_deliver_takes_only_a_number(text: str, client: bool, error: str) -> None:
    """E-MailRelay 2.6b's start-up usage errors for a ``deliver:`` parameter that is not an unsigned
    32-bit number; ``copy:`` ignores words it does not know."""
    what = "invalid client filter specification" if client else "invalid filter specification"
    with pytest.raises(SpecUsageError) as caught:
        parse_filters(text, client=client)
    assert str(caught.value) == f"{what}: string conversion error: {error}"
    parsed = parse_filters("deliver:,deliver:4294967295,copy:bogus;pop")
    assert [s.params for s in parsed] == [(), ("4294967295",), ("bogus", "pop")]


def test_empty_items_are_ignored() -> None:
    assert parse_filters(["", " , ", "exit:0,"]) == [Spec("exit", "0", (), "exit:0")]
    assert parse_filters(None) == []


def test_verifier_forms() -> None:
    assert parse_verifier(None) is None and parse_verifier("  ") is None
    assert parse_verifier("/bin/v") == Spec("exe", "/bin/v", (), "/bin/v")
    assert parse_verifier("net:127.0.0.1:10101") == Spec("net", "127.0.0.1:10101", (), "net:127.0.0.1:10101")
    spec = parse_verifier("account:1000-1002;lowercase")
    assert spec is not None and spec.params == ("1000-1002", "lowercase")
    assert parse_verifier("account:check;remote;LOWERCASE;0-10") is not None
    for bad in ("exit:x", "copy:", "spam:1.2.3.4:783", "/a,/b", "account:10-1"):
        with pytest.raises(SpecError):
            parse_verifier(bad)
    # as E-MailRelay 2.6b: exit:<n> verifies nothing, account: ignores words it does not know
    # (tests/differential/test_filters_followup.py)
    assert parse_verifier("exit:1") == Spec("exit", "1", (), "exit:1")
    assert parse_verifier("account:x;1000") is not None


def test_the_policy_values_derived_from_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The policy layer reads the Config itself; what it derives is computed by the Config."""
    config = from_values({"spool-dir": "/var/spool/x", "domain": "example.com", "filter-timeout": "7"})
    assert (config.domain, config.filter_time_limit, config.connection_timeout) == ("example.com", 7.0, 40)
    assert str(config.mailbox_base) == "/var/spool/x"
    assert str(config.replaced(delivery_dir=Path("/srv/boxes")).mailbox_base) == "/srv/boxes"
    assert config.replaced(filter_timeout=0).filter_time_limit == 60.0  # 0: the default
    monkeypatch.chdir(tmp_path)  # a Config that did not go through the front end's prepare: relative
    relative = from_values({"spool-dir": "spool"})
    assert relative.mailbox_base == tmp_path / "spool"
    assert relative.replaced(delivery_dir=Path("boxes")).mailbox_base == tmp_path / "boxes"


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:783", Endpoint("127.0.0.1", 783)),
        ("localhost:10101", Endpoint("localhost", 10101)),
        ("[::1]:783", Endpoint("::1", 783)),
        ("::1.783", Endpoint("::1", 783)),
        ("/run/spamd.sock", Endpoint(path="/run/spamd.sock")),
    ],
)
def test_endpoints(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(text) == endpoint


@pytest.mark.parametrize("text", ["localhost", ":25", "host:99999", "host:x"])
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(SpecError):
        parse_endpoint(text)


# ---- exit codes and responses ------------------------------------------------------------------------
# E-MailRelay 2.6b's table, as observed (tests/differential/test_filters.py compares it with the oracle):
# (code, server side outcome, server rescan, client side outcome, client stop)
_EXIT_TABLE = [
    (0, "ok", False, "ok", False), (1, "reject", False, "reject", False), (99, "reject", False, "reject", False),
    (100, "abandon", False, "abandon", False), (101, "ok", False, "ok", False),
    (102, "abandon", True, "stop-scan", True), (103, "ok", True, "ok", False),
    (104, "reject", True, "abandon", True), (105, "reject", False, "reject", True),
    (115, "reject", False, "reject", False), (116, "reject", False, "reject", False),
    (127, "reject", False, "reject", False), (255, "reject", False, "reject", False),
]  # fmt: skip


@pytest.mark.parametrize(("code", "server", "rescan", "client", "stop"), _EXIT_TABLE)
def test_exit_code_mapping(code: int, server: str, rescan: bool, client: str, stop: bool) -> None:
    for side, outcome in ((False, server), (True, client)):
        result = result_for_exit_code(code, b"<<553 sorry>>\n", client=side)
        assert result.outcome is FilterOutcome(outcome)
        assert result.exit_code == code
        assert (result.rescan, result.stop) == ((rescan, False) if not side else (False, stop))
        if outcome == "reject":
            assert (result.reason, result.code, result.detail) == ("sorry", 553, "sorry")
        else:
            assert result.reason == ""


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (b"", ("rejected", None, "rejected")),
        (b"<<550 not today>>\n", ("not today", 550, "not today")),
        (b"<<550 not today>>\r\n", ("not today", 550, "not today")),
        (b"<<foo bar>> trailing\n", ("foo bar", None, "foo bar")),
        (b"<<a>>b>>\n", ("a", None, "a")),
        (b"<<a]]b>>\n", ("a]]b", None, "a]]b")),
        (b"<<mixed]]\n[[mixed>>\n", ("rejected", None, "rejected")),
        (b"junk\n[[451 later]]\n<<detail one>>\n<<detail two>>\n", ("later", 451, "detail one")),
        (b"<<399 low>>\n", ("399 low", None, "399 low")),
        (b"<<600 x>>\n", ("600 x", None, "600 x")),
        (b"<<550-x>>\n", ("550-x", None, "550-x")),
        (b"<<5501 long>>\n", ("5501 long", None, "5501 long")),
        (b"<<550>>\n", ("", 550, "")),
        (b"<<550 >>\n", ("", 550, "")),
        (b"x <<not at start>>\n", ("rejected", None, "rejected")),
        (b"  <<leading space>>\n", ("rejected", None, "rejected")),
        (b"<<>>\n", ("rejected", None, "rejected")),
        (b"<<a\tb\x01c>>\n", ("a\\tb\\x01c", None, "a\\tb\\x01c")),
        (b"<<\xff\xfe bytes>>\n", ("\udcff\udcfe bytes", None, "\udcff\udcfe bytes")),
    ],
)
def test_parse_response(output: bytes, expected: tuple[str, int | None, str]) -> None:
    assert parse_response(output) == expected


@given(st.binary(max_size=2000))
def test_parse_response_never_yields_controls(output: bytes) -> None:
    reason, code, detail = parse_response(output)
    for text in (reason, detail):
        assert not any(ord(c) < 32 or ord(c) == 127 for c in text)
    assert code is None or 400 <= code <= 599


@given(st.text(max_size=300), st.text(max_size=300), st.integers(min_value=-1, max_value=300))
def test_verdicts_never_carry_controls(line1: str, line2: str, code: int) -> None:
    verdict = verdict_for(code, line1, line2, "orig@example.com")
    for text in (verdict.address, verdict.mailbox, verdict.reason, verdict.detail, verdict.full_name):
        assert not any(ord(c) < 32 or ord(c) == 127 for c in text)
    if verdict.kind is RecipientKind.LOCAL:
        assert is_clean_mailbox(verdict.mailbox)
    assert is_clean_address(verdict.address) or verdict.address == "orig@example.com"


def test_verdict_mapping() -> None:
    """E-MailRelay 2.6b's meanings (tests/differential/test_verifiers.py); the texts are the verifier's."""
    assert verdict_for(0, "Full", "box", "r").kind is RecipientKind.LOCAL
    assert verdict_for(0, "why", "", "r").kind is RecipientKind.REJECT  # no mailbox: rejected
    assert verdict_for(1, "", "new@x", "r").address == "new@x"
    assert verdict_for(1, "", "", "r").kind is RecipientKind.REJECT  # no address: rejected
    two = verdict_for(2, "", "", "r")
    assert (two.kind, two.reason) == (RecipientKind.REJECT, "")
    assert verdict_for(3, "later", "", "r").reason == "later"
    assert verdict_for(100, "", "", "r").kind is RecipientKind.ABORT
    for other in (4, 99, 101, 255, None):
        assert verdict_for(other, "why", "", "r").kind is RecipientKind.REJECT


def test_text_helpers() -> None:
    assert clean_text("a\r\nb\tc\x00d") == "a  b c d"
    assert clean_text("x" * 1000) == "x" * 400
    assert is_clean_address("a@b") and not is_clean_address("a>@b") and not is_clean_address("")
    assert not is_clean_address("a@b\r\nRCPT TO:<evil>")
    assert is_clean_mailbox("alice") and not is_clean_mailbox("../x") and not is_clean_mailbox("..")


def test_verifier_arguments() -> None:
    class P:
        host, port = "192.168.0.1", 123

    assert verifier_args("bob@local.net", "alice@example.com", P(), "local.net", "LOGIN", "alice") == [
        "bob@local.net",
        "alice@example.com",
        "192.168.0.1:123",
        "local.net",
        "login",
        "alice",
    ]
    assert verifier_args("b", None, "1.2.3.4:5", "d", "", "")[1] == ""
    assert peer_text(None) == ""


# ---- small helpers ---------------------------------------------------------------------------------------
def test_group_by_domain() -> None:
    """Sorted by domain, as E-MailRelay 2.6b orders the split messages (tests/differential/test_split.py)."""
    rcpts = ["a@X.com", "b@x.COM", "c@y.org", "nodomain", "d@y.org"]
    assert group_by_domain(rcpts) == {
        "": ["nodomain"],
        "x.com": ["a@X.com", "b@x.COM"],
        "y.org": ["c@y.org", "d@y.org"],
    }
    assert list(group_by_domain(rcpts, raw=True)) == ["", "X.com", "x.COM", "y.org"]


def test_split_parameters_are_upstreams() -> None:
    """``raw`` and a port, ``;``-separated; anything else is ignored (no start-up error)."""
    assert [s.params for s in parse_filters("split:raw;25;what")] == [("raw", "25", "what")]
