"""Tests for emailrelay.protocol.addresses: MAIL/RCPT paths, ESMTP params, xtext."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emailrelay.protocol.addresses import (
    PathSyntaxError,
    parse_mail_from,
    parse_path,
    parse_rcpt_to,
    to_alabels,
    xtext_decode,
    xtext_encode,
    xtext_normalise,
)

GOOD_MAIL = [
    ("FROM:<a@b.com>", "a@b.com", {}),
    ("from:<a@b.com>", "a@b.com", {}),
    ("FROM:<>", "", {}),
    ("FROM:<> SIZE=10", "", {"SIZE": "10"}),
    ("FROM:<postmaster>", "postmaster", {}),
    ("FROM:<@a.com,@b.com:u@c.com>", "u@c.com", {}),
    ("FROM:<@a.com:u@c.com>", "u@c.com", {}),
    ('FROM:<"a b"@c.com>', '"a b"@c.com', {}),
    ('FROM:<"a>b"@c.com>', '"a>b"@c.com', {}),
    ('FROM:<"a\\"b"@c.com>', '"a\\"b"@c.com', {}),
    ("FROM:<u@[192.0.2.1]>", "u@[192.0.2.1]", {}),
    ("FROM:<first.last+tag@example.com>", "first.last+tag@example.com", {}),
    ("FROM:<a@b> BODY=8BITMIME", "a@b", {"BODY": "8BITMIME"}),
    ("FROM:<a@b> body=8bitmime size=5", "a@b", {"BODY": "8bitmime", "SIZE": "5"}),
    ("FROM:<a@b> SMTPUTF8", "a@b", {"SMTPUTF8": ""}),
    ("FROM:<a@b>  SIZE=1   AUTH=<>", "a@b", {"SIZE": "1", "AUTH": "<>"}),
    ("FROM:<a@b> AUTH=alice+40example.com", "a@b", {"AUTH": "alice+40example.com"}),
    ("FROM:<a@b> ", "a@b", {}),
    ("FROM:<j\u00f6rg@b\u00fccher.de>", "j\u00f6rg@b\u00fccher.de", {}),
    # E-MailRelay 2.6b's lax parameters: any word, its keyword before the first "="
    ("FROM:<a@b> =1", "a@b", {}),
    ("FROM:<a@b> SIZE=", "a@b", {"SIZE": ""}),
    ("FROM:<a@b> SIZE=1=2", "a@b", {"SIZE": "1=2"}),
    ("FROM:<a@b> -X=1", "a@b", {"-X": "1"}),
    ("FROM:<a@b> x=\x01 c@d", "a@b", {"X": "\x01", "C@D": ""}),
]


@pytest.mark.parametrize(("arg", "address", "params"), GOOD_MAIL)
def test_mail_from_good(arg: str, address: str, params: dict[str, str]) -> None:
    assert parse_mail_from(arg, strict=True) == (address, params)
    assert parse_mail_from(arg, strict=False) == (address, params)


BAD_MAIL = [
    "",
    "FROM",
    "FROM:",
    "TO:<a@b>",
    "FROM <a@b>",
    "FROM:<a@b",
    "FROM:a@b>",
    "FROM:<<a@b>>",
    "FROM:<a@b>>",
    "FROM:<a b@c>",
    "FROM:<a\x00b@c>",
    "FROM:<a\x01b@c>",
    "FROM:<a\x7fb@c>",
    "FROM:<a@b\tc>",
    'FROM:<"a\x00"@c>',
    'FROM:<"unterminated@c>',
    "FROM:<@a.com:>",
    "FROM:<@a.com>",
    "FROM:<a@>",
    "FROM:<@>",
    "FROM:<a@b>SIZE=1",
    "FROM:<a@b>\tSIZE=1",
]


@pytest.mark.parametrize("arg", BAD_MAIL)
def test_mail_from_bad(arg: str) -> None:
    with pytest.raises(PathSyntaxError) as info:
        parse_mail_from(arg, strict=True)
    # E-MailRelay 2.6b's replies: 553 for the path, 501 for a parameter's syntax
    if info.value.code == 553:
        assert info.value.text.startswith("mailbox name not allowed: "), info.value.text
    else:
        assert info.value.code == 501 and "parameter" in info.value.text, info.value.text


def test_repeated_parameter_first_counts() -> None:
    assert parse_mail_from("FROM:<a@b> SIZE=1 size=2") == ("a@b", {"SIZE": "1"})


def test_space_after_colon_allowed_when_strict() -> None:
    assert parse_mail_from("FROM: <a@b>") == ("a@b", {})
    assert parse_rcpt_to("TO:  <c@d>") == ("c@d", {})


@pytest.mark.parametrize(
    ("arg", "address", "params"),
    [
        ("FROM : <a@b> SIZE=3", "a@b", {"SIZE": "3"}),
        ("FROM:a@b", "a@b", {}),
        ("FROM: a@b BODY=7BIT", "a@b", {"BODY": "7BIT"}),
        ("  from:<a@b>", "a@b", {}),
    ],
)
def test_mail_from_not_strict(arg: str, address: str, params: dict[str, str]) -> None:
    assert parse_mail_from(arg, strict=False) == (address, params)
    with pytest.raises(PathSyntaxError):
        parse_mail_from(arg, strict=True)


@pytest.mark.parametrize("arg", ["FROM: ", "FROM: a@b>", "FROM: <a@b", "FROM a@b"])
def test_mail_from_not_strict_still_rejects(arg: str) -> None:
    with pytest.raises(PathSyntaxError):
        parse_mail_from(arg, strict=False)


def test_words_after_the_path_are_parameters() -> None:
    """A word after the path is an (ignored) parameter, but not a second path (upstream takes
    ``<a> <b@c>`` as ``a``; docs/decisions.md, "Addresses with spaces")."""
    assert parse_mail_from("FROM: a b@c", strict=False) == ("a", {"B@C": ""})
    assert parse_mail_from("FROM:<a@b> AUTH=<>") == ("a@b", {"AUTH": "<>"})
    with pytest.raises(PathSyntaxError) as info:
        parse_rcpt_to("TO:<a> <b@c>")
    assert (info.value.code, info.value.text) == (550, "invalid angle brackets")


def test_rcpt_to() -> None:
    assert parse_rcpt_to("TO:<bob@example.net>") == ("bob@example.net", {})
    assert parse_rcpt_to("to:<Postmaster>") == ("Postmaster", {})
    assert parse_rcpt_to("TO:<@x:bob@y> NOTIFY=NEVER") == ("bob@y", {"NOTIFY": "NEVER"})
    assert parse_rcpt_to("TO: bob@y", strict=False) == ("bob@y", {})
    for bad in ["TO:<>", "FROM:<a@b>", "TO:<a@b", "TO:", "TO:<a\x00@b>"]:
        with pytest.raises(PathSyntaxError) as info:
            parse_rcpt_to(bad)
        assert info.value.code == 550, info.value.text


def test_parse_path_rest() -> None:
    assert parse_path("<a@b> X=1") == ("a@b", " X=1")
    assert parse_path("a@b rest", strict=False) == ("a@b", " rest")
    with pytest.raises(PathSyntaxError):
        parse_path("a@b")


def test_path_syntax_error_is_value_error() -> None:
    e = PathSyntaxError(501, "5.1.7 x")
    assert isinstance(e, ValueError)
    assert str(e) == "501 5.1.7 x"


@pytest.mark.parametrize(
    ("plain", "xtext"),
    [
        ("alice", "alice"),
        ("a+b", "a+2Bb"),
        ("a=b", "a+3Db"),
        ("a b", "a+20b"),
        ("", ""),
        ("\x00\x7f~!", "+00+7F~!"),
        ("\u00e9", "+C3+A9"),
    ],
)
def test_xtext(plain: str, xtext: str) -> None:
    assert xtext_encode(plain) == xtext
    assert xtext_decode(xtext) == plain


def test_xtext_decode_lowercase_and_errors() -> None:
    assert xtext_decode("a+2bb") == "a+b"
    assert xtext_decode("+e9") == "\u00e9"  # not valid UTF-8: latin-1
    for bad in ["a b", "a=b", "+", "+4", "+GG", "a\x00", "\u00e9"]:
        with pytest.raises(ValueError):
            xtext_decode(bad)


@given(st.text())
def test_xtext_roundtrip(s: str) -> None:
    encoded = xtext_encode(s)
    assert all("!" <= c <= "~" and c != "=" for c in encoded)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert xtext_decode(encoded) == s


@given(st.text(max_size=80), st.booleans())
def test_parsers_only_raise_path_syntax_error(arg: str, strict: bool) -> None:
    for parse in (parse_mail_from, parse_rcpt_to):
        try:
            address, params = parse(arg, strict)
        except PathSyntaxError as e:
            assert e.code in (501, 550, 553)
        else:
            assert not any(c in address for c in "\x00\r\n")
            assert all(k == k.upper() for k in params)


@pytest.mark.parametrize(
    ("address", "stored"),
    [  # as E-MailRelay 2.6b stores them (tests/differential/test_smtp_server.py compares)
        ("c@b\u00fccher.example.com", "c@xn--bcher-kva.example.com"),
        ("\u00e9@B\u00fccher.Example.com", "\u00e9@xn--Bcher-kva.Example.com"),  # case kept, local part kept
        ("c@B\u00dcCHER.example.com", "c@xn--BCHER-2pa.example.com"),
        ("a@stra\u00dfe.de", "a@xn--strae-oqa.de"),  # no IDNA mapping (ß stays)
        ("c@e\u0301.de", "c@xn--e-xbb.de"),  # no normalisation
        ("c@xn--.de", "c@xn--.de"),
        ("c@[1.2.3.4]", "c@[1.2.3.4]"),
        ("postmaster", "postmaster"),
        ('"a@\u00fc"@d', '"a@\u00fc"@d'),
        ("c@\u00e9\u00e9.\u4e2d\u6587", "c@xn--9caa.xn--fiq228c"),  # each label on its own (upstream errs)
        ("c@b\u00fccher.example.", "c@xn--bcher-kva.example"),  # an international domain's empty labels go
        ("c@b\u00fc..x", "c@xn--b-eha.x"),
        ("c@example.com.", "c@example.com."),  # an ASCII domain is kept as it is
    ],
)
def test_to_alabels(address: str, stored: str) -> None:
    assert to_alabels(address) == stored


def test_xtext_normalise() -> None:
    assert xtext_normalise("xx+41") == "xxA"
    assert xtext_normalise("+zz") == "+00"
    assert xtext_normalise("alice+40x") == "alice@x"
    assert xtext_normalise("a+2Bb") == "a+2Bb"


@pytest.mark.parametrize("path", ["<@example.com>", "<@a.com:>", "<@>", "<@a,@b>"])
def test_bad_source_route_in_upstreams_words(path: str) -> None:
    with pytest.raises(PathSyntaxError) as mail:
        parse_mail_from("FROM:" + path)
    assert (mail.value.code, mail.value.text) == (
        553,
        "mailbox name not allowed: invalid source route in mailbox name",
    )
    with pytest.raises(PathSyntaxError) as rcpt:
        parse_rcpt_to("TO:" + path)
    assert (rcpt.value.code, rcpt.value.text) == (550, "invalid source route in mailbox name")


def test_source_route_is_what_comes_before_the_first_colon() -> None:
    assert parse_rcpt_to("TO:<@a,b;c d:x@y>") == ("x@y", {})
    with pytest.raises(PathSyntaxError, match="invalid character"):
        parse_rcpt_to("TO:<@a:@b:x@y>")
