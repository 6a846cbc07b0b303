"""Unit tests of :func:`emailrelay.transport_address.split_next_hop` (next hop addresses as
E-MailRelay 2.6b reads them; the forms were observed against it in
tests/differential/test_more_ifwd.py)."""

from __future__ import annotations

import pytest

from emailrelay.services.forward_to_lookup import FirstHost, first_host
from emailrelay.transport_address import split_next_hop


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("::1:2525", ("::1", 2525)),
        ("::1:40001", ("::1", 40001)),
        ("::1.2525", ("::1", 2525)),
        ("[::1]:2525", ("::1", 2525)),
        ("::1", (":", 1)),
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("smtp.example.com", ("smtp.example.com", 25)),
        ("fe80::1%lo:26", ("fe80::1%lo", 26)),
    ],
)
def test_split_next_hop(text: str, expected: tuple[str, int]) -> None:
    assert split_next_hop(text) == expected


def test_a_bad_port_is_an_error() -> None:
    with pytest.raises(ValueError, match="invalid port"):
        split_next_hop("::1:99999")


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        ("mail.example:587", FirstHost("mail.example", 587, proxy=False)),
        ("mail.example", FirstHost("mail.example", 25, proxy=False)),
        ("::1:25", FirstHost("::1", 25, proxy=False)),
        ("mail.example:25@proxy.example:1080", FirstHost("proxy.example", 1080, proxy=True)),
        ("/run/mail.sock", None),  # a unix-domain address: nothing to look up
        ("mail.example:x", None),  # does not parse: the connection says so, not the look-up
        ("@proxy.example:1080", None),
    ],
)
def test_first_host_is_where_a_connection_goes_first(hop: str, expected: FirstHost | None) -> None:
    assert first_host(hop) == expected
