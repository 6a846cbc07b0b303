"""Unit tests of :func:`emailrelay.transport_address.split_next_hop` (next hop addresses as
E-MailRelay 2.6b reads them; the forms were observed against it in
tests/differential/test_more_ifwd.py)."""

from __future__ import annotations

import pytest

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
