"""Tests for emailrelay.auth.md5state: upstream's stored HMAC-MD5 state."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.auth.md5state import (
    decode_state,
    encode_dotted,
    encode_state,
    hmac_md5_from_state,
    hmac_md5_state,
    md5_compress,
)

# the reference guide's "Using MD5 hashes" example secrets file
GUIDE_VECTORS = [
    (b"password123", "9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E="),
    (b"e=mc2", "v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow="),
    (b"my password", "x6UJKQF9f7HfhS1M+PW4s8rXIoT+L+WoqLz+rBwSKbw="),
]


@pytest.mark.parametrize(("password", "expected"), GUIDE_VECTORS)
def test_guide_vectors(password: bytes, expected: str) -> None:
    assert encode_state(hmac_md5_state(password)) == expected


@pytest.mark.parametrize(("password", "expected"), GUIDE_VECTORS)
def test_decode_base64_state(password: bytes, expected: str) -> None:
    assert decode_state(expected) == hmac_md5_state(password)


def test_compression_matches_hashlib_for_one_block() -> None:
    # MD5 of a 55-byte message is exactly one compression of the padded block
    message = b"x" * 55
    block = message + b"\x80" + (55 * 8).to_bytes(8, "little")
    state = md5_compress((0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476), block)
    assert b"".join(w.to_bytes(4, "little") for w in state) == hashlib.md5(message).digest()


def test_compress_rejects_short_block() -> None:
    with pytest.raises(ValueError):
        md5_compress((0, 0, 0, 0), b"short")


@pytest.mark.parametrize("key_size", [0, 1, 63, 64, 65, 200])
@pytest.mark.parametrize("message_size", [0, 1, 55, 56, 63, 64, 119, 120, 1000])
def test_hmac_from_state_boundaries(key_size: int, message_size: int) -> None:
    key = bytes(range(key_size % 256)) * (key_size // 256 + 1)
    key = key[:key_size]
    message = b"m" * message_size
    assert hmac_md5_from_state(hmac_md5_state(key), message) == hmac.new(key, message, "md5").digest()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=150), st.binary(max_size=300))
def test_hmac_from_state_equals_hmac_module(key: bytes, message: bytes) -> None:
    assert hmac_md5_from_state(hmac_md5_state(key), message) == hmac.new(key, message, "md5").digest()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100))
def test_dotted_round_trip(key: bytes) -> None:
    state = hmac_md5_state(key)
    dotted = encode_dotted(state)
    assert len(dotted.split(".")) == 8
    assert all(0 <= int(w) < 2**32 for w in dotted.split("."))
    assert decode_state(dotted) == state
    assert decode_state(encode_state(state)) == state


def test_dotted_words_are_little_endian_state_words() -> None:
    state = hmac_md5_state(b"password123")
    first = int(encode_dotted(state).split(".")[0])
    assert first == int.from_bytes(state[:4], "little")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        "9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E",  # padding missing
        "cGFzc3dvcmQ=",  # base64 but not 32 bytes
        "1.2.3.4.5.6.7",  # seven words
        "1.2.3.4.5.6.7.4294967296",  # out of range
        "1.2.3.4.5.6.7.8.9",
        "é",
    ],
)
def test_decode_state_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        decode_state(text)


def test_wrong_state_size_rejected() -> None:
    with pytest.raises(ValueError):
        hmac_md5_from_state(b"\0" * 16, b"msg")
    with pytest.raises(ValueError):
        encode_state(b"\0" * 31)
    with pytest.raises(ValueError):
        encode_dotted(b"\0" * 33)
