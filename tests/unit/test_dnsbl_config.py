"""``--dnsbl`` configuration parsing and DNSBL query names (emailrelay.policy.dnsbl)."""

from __future__ import annotations

import pytest

from emailrelay.policy.dnsbl import (
    DEFAULT_TIMEOUT_MS,
    DnsblChecker,
    describe,
    never_checked,
    parse_config,
    parse_transport_address,
    query_name,
    reversed_name,
)


def test_full_new_order() -> None:
    c = parse_config("spam.example.com,block.example.com,1,500,1.1.1.1:53")
    assert c.servers == ("spam.example.com", "block.example.com")
    assert c.threshold == 1
    assert c.timeout_ms == 500 and c.timeout == 0.5 and not c.fail_closed
    assert c.dns_server == ("1.1.1.1", 53)


def test_legacy_reversed_order_gives_the_same() -> None:
    new = parse_config("spam.example.com,block.example.com,1,500,1.1.1.1:53")
    old = parse_config("1.1.1.1:53,500,1,spam.example.com,block.example.com")
    assert (old.servers, old.threshold, old.timeout_ms, old.dns_server) == (
        new.servers,
        new.threshold,
        new.timeout_ms,
        new.dns_server,
    )


def test_legacy_order_with_different_numbers_keeps_them_apart() -> None:
    c = parse_config("127.0.0.1:5353,2500,2,a.example,b.example,c.example")
    assert c.servers == ("a.example", "b.example", "c.example")
    assert (c.threshold, c.timeout_ms, c.dns_server) == (2, 2500, ("127.0.0.1", 5353))


def test_defaults_for_a_plain_list() -> None:
    c = parse_config("spam.example.com,block.example.com")
    assert c.servers == ("spam.example.com", "block.example.com")
    assert c.threshold == 1
    assert c.timeout_ms == DEFAULT_TIMEOUT_MS and c.timeout > 0
    assert c.dns_server is None
    one = parse_config("zen.spamhaus.org")
    assert one.servers == ("zen.spamhaus.org",) and one.threshold == 1


def test_partial_optional_fields() -> None:
    assert parse_config("a.example,0").threshold == 0
    c = parse_config("a.example,b.example,2,-5000")
    assert c.threshold == 2 and c.timeout_ms == -5000 and c.timeout == 5.0 and c.fail_closed
    assert c.dns_server is None


def test_whitespace_trailing_dot_and_case() -> None:
    c = parse_config(" Spam.Example.COM. , block.example.com , 1 ")
    assert c.servers == ("spam.example.com", "block.example.com")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.1.1.1", ("1.1.1.1", 53)),
        ("1.1.1.1:5353", ("1.1.1.1", 5353)),
        ("::1", ("::1", 53)),
        ("::1.5353", ("::1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::1]", ("2001:db8::1", 53)),
        ("dns.example.com:53", None),
        ("1.1.1.1:x", None),
        ("1.1.1.1:70000", None),
        ("[1.1.1.1]:53", None),
    ],
)
def test_transport_addresses(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_transport_address(text) == expected


def test_ipv6_dns_server_in_both_orders() -> None:
    assert parse_config("a.example,1,100,::1.5300").dns_server == ("::1", 5300)
    assert parse_config("[::1]:5300,100,1,a.example").dns_server == ("::1", 5300)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a.example,,1", "empty field"),
        ("a.example,2,x.example", "timeout [x.example]"),
        ("a.example,-1", "threshold [-1]"),
        ("a.example,1,0x10", "timeout [0x10]"),
        ("a.example,1,soon", "timeout [soon]"),
        ("a.example,1,500,dns.example.com", "DNS server [dns.example.com]"),
        ("a.example,1,500,1.1.1.1:99999", "DNS server"),
        ("a.example,1,500,1.1.1.1:0", "DNS server [1.1.1.1:0]"),
        ("a.example,1,500,1.1.1.1,extra", "unexpected field [extra]"),
        ("1,500", "list of DNSBL server"),
        ("1.1.1.1:53,500", "list of DNSBL server"),
        ("bad_domain!,1", "list of DNSBL server"),
    ],
)
def test_bad_values_are_value_errors_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_config(text)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_checker_accepts_text_and_describes_itself() -> None:
    checker = DnsblChecker("spam.example.com,block.example.com,0,-250,::1.5353")
    text = checker.describe()
    assert text == describe(checker.config)
    for part in (
        "spam.example.com,block.example.com",
        "threshold 0",
        "250ms",
        "block on timeout",
        "::1.5353",
    ):
        assert part in text
    assert "system default" in DnsblChecker("a.example").describe()
    checker.configure("b.example,2")
    assert checker.config.servers == ("b.example",) and "threshold 2" in checker.describe()
    with pytest.raises(ValueError):
        DnsblChecker("1,2")


def test_reversed_names_ipv4() -> None:
    assert reversed_name("203.0.113.7") == "7.113.0.203"
    assert query_name("203.0.113.7", "bl.example.com") == "7.113.0.203.bl.example.com"
    assert query_name("203.0.113.7", "bl.example.com.") == "7.113.0.203.bl.example.com"
    # an IPv4-mapped IPv6 peer (dual-stack socket) is looked up as IPv4
    assert reversed_name("::ffff:203.0.113.7") == "7.113.0.203"


def test_reversed_names_ipv6_nibbles() -> None:
    name = reversed_name("2001:db8::7")
    assert name == "7.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2"
    labels = name.split(".")
    assert len(labels) == 32 and all(len(x) == 1 for x in labels)
    assert query_name("2001:DB8::7", "bl.example") == name + ".bl.example"
    assert reversed_name("[2001:db8::7]") == name
    assert reversed_name("fe80::1%eth0").endswith("0.8.e.f")


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "127.1.2.3", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
     "169.254.1.1", "0.0.0.0", "::1", "::", "fd00::1", "fc12::1", "fe80::1", "fe80::1%eth0",
     "::ffff:192.168.1.1", "::ffff:127.0.0.1", "/run/smtp.s", "local", ""],
)  # fmt: skip
def test_local_and_private_addresses_are_never_checked(ip: str) -> None:
    assert never_checked(ip)


@pytest.mark.parametrize(
    "ip",
    ["203.0.113.7", "198.51.100.1", "192.0.2.1", "8.8.8.8", "172.32.0.1", "2001:db8::7", "::ffff:8.8.8.8"],
)
def test_public_and_documentation_addresses_are_checked(ip: str) -> None:
    assert not never_checked(ip)
