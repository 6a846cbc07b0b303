"""SOCKS 4a/5 request encoding, reply decoding and the ``--forward-to ...@proxy`` syntax."""

from __future__ import annotations

import pytest

from emailrelay.services.socks import (
    SOCKS4A,
    SOCKS5,
    SocksError,
    SocksProxy,
    SocksTimeout,
    parse_forward_to,
    parse_proxy,
    socks4_reply,
    socks4a_request,
    socks5_greeting,
    socks5_reply,
    socks5_reply_length,
    socks5_request,
    split_host_port,
)


def test_socks4a_request_with_a_name() -> None:
    assert socks4a_request("example.com", 25) == b"\x04\x01\x00\x19\x00\x00\x00\x01\x00example.com\x00"


def test_socks4_request_with_an_ipv4_literal_is_plain_socks4() -> None:
    assert socks4a_request("192.0.2.1", 587) == b"\x04\x01\x02\x4b\xc0\x00\x02\x01\x00"


def test_socks4a_cannot_carry_ipv6() -> None:
    with pytest.raises(SocksError, match="socks5://"):
        socks4a_request("2001:db8::1", 25)


def test_socks4_replies() -> None:
    assert socks4_reply(b"\x00\x5a\x00\x00\x00\x00\x00\x00") == (0x5A, "request granted")
    code, text = socks4_reply(b"\x00\x5b" + b"\0" * 6)
    assert code == 0x5B and "rejected" in text
    with pytest.raises(SocksError, match="invalid SOCKS 4 reply"):
        socks4_reply(b"HTTP/1.")
    with pytest.raises(SocksError):
        socks4_reply(b"\x05\x5a\0\0\0\0\0\0")


def test_socks5_requests() -> None:
    assert socks5_greeting() == b"\x05\x01\x00"
    assert socks5_request("example.com", 25) == b"\x05\x01\x00\x03\x0bexample.com\x00\x19"
    assert socks5_request("192.0.2.1", 25) == b"\x05\x01\x00\x01\xc0\x00\x02\x01\x00\x19"
    v6 = socks5_request("2001:db8::1", 25)
    assert v6[:4] == b"\x05\x01\x00\x04" and len(v6) == 4 + 16 + 2 and v6[-2:] == b"\x00\x19"
    assert socks5_request("[::1]", 2525)[-18:-2] == b"\0" * 15 + b"\1"
    with pytest.raises(SocksError, match=r"too long|invalid host name"):
        socks5_request("a" * 300, 25)


def test_socks5_replies() -> None:
    ok4 = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x00"
    assert socks5_reply_length(ok4[:5]) == len(ok4)
    assert socks5_reply(ok4) == (0, "succeeded", ("127.0.0.1", 1024))
    ok6 = b"\x05\x00\x00\x04" + b"\0" * 15 + b"\1" + b"\x00\x19"
    assert socks5_reply(ok6)[2] == ("::1", 25)
    named = b"\x05\x00\x00\x03\x04host\x00\x19"
    assert socks5_reply_length(named[:5]) == len(named)
    assert socks5_reply(named)[2] == ("host", 25)
    refused = b"\x05\x05\x00\x01" + b"\0" * 6
    assert socks5_reply(refused)[:2] == (5, "connection refused")
    assert socks5_reply(b"\x05\x63\x00\x01" + b"\0" * 6)[1].startswith("unknown reply code")
    with pytest.raises(SocksError):
        socks5_reply_length(b"\x04\x00\x00\x01\x00")
    with pytest.raises(SocksError, match="address type"):
        socks5_reply_length(b"\x05\x00\x00\x09\x00")
    with pytest.raises(SocksError):
        socks5_reply(ok4[:-1])


def test_socks_errors_are_os_errors_and_timeouts_are_timeouts() -> None:
    exc = SocksError("SOCKS proxy x refused")
    assert isinstance(exc, OSError) and str(exc) == "SOCKS proxy x refused" and exc.reason == str(exc)
    t = SocksTimeout("timeout: no SOCKS handshake")
    assert isinstance(t, TimeoutError) and isinstance(t, SocksError) and str(t).startswith("timeout")


@pytest.mark.parametrize(
    ("text", "target", "proxy"),
    [
        ("example.com:smtp@localhost:9050", "example.com:smtp", SocksProxy("localhost", 9050, SOCKS4A)),
        ("example.com:25@127.0.0.1:9050", "example.com:25", SocksProxy("127.0.0.1", 9050, SOCKS4A)),
        ("example.com:25@socks4a://127.0.0.1:9050", "example.com:25", SocksProxy("127.0.0.1", 9050, SOCKS4A)),
        ("example.com:25@socks5://127.0.0.1:1080", "example.com:25", SocksProxy("127.0.0.1", 1080, SOCKS5)),
        ("example.com:25@SOCKS5://[::1]:1080", "example.com:25", SocksProxy("::1", 1080, SOCKS5)),
        ("[2001:db8::1]:25@socks5://::1.1080", "[2001:db8::1]:25", SocksProxy("::1", 1080, SOCKS5)),
        ("example.com:25@proxy.example", "example.com:25", SocksProxy("proxy.example", 1080, SOCKS4A)),
        ("example.com:25", "example.com:25", None),
        ("::1.25", "::1.25", None),
        ("/run/smtp.s", "/run/smtp.s", None),
        ("/run/odd@name.s", "/run/odd@name.s", None),
    ],
)
def test_parse_forward_to(text: str, target: str, proxy: SocksProxy | None) -> None:
    assert parse_forward_to(text) == (target, proxy)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("example.com:25@", "no SOCKS proxy address"),
        ("@127.0.0.1:9050", "no address before"),
        ("example.com:25@http://127.0.0.1:8080", "unknown scheme http://"),
        ("example.com:25@127.0.0.1:notaport", "invalid port"),
        ("example.com:99999@127.0.0.1:9050", "invalid port"),
    ],
)
def test_parse_forward_to_errors(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        parse_forward_to(text)


def test_proxy_display_and_host_ports() -> None:
    assert parse_proxy("localhost:9050").display == "localhost:9050"
    assert parse_proxy("socks5://::1.1080").display == "socks5://[::1]:1080"
    assert split_host_port("example.com:smtp") == ("example.com", 25)
    assert split_host_port("[::1]:25") == ("::1", 25)
    assert split_host_port("::1.25") == ("::1", 25)
    assert split_host_port("::1", 25) == ("::1", 25)
    with pytest.raises(ValueError, match="no port"):
        split_host_port("example.com")
