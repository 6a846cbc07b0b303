"""emailrelay.auth.md5state -- the "intermediate HMAC-MD5 state" of ``md5`` secrets.

PURPOSE
    Upstream's ``emailrelay-passwd`` does not store a password hash that can
    only be compared: it stores the two MD5 chaining states that HMAC-MD5
    reaches after absorbing the key's inner and outer pad blocks.  From those
    32 bytes alone CRAM-MD5 responses can be computed and checked, without the
    plain password.  ``hashlib`` does not expose MD5's chaining state, so this
    module carries a small pure-Python MD5 compression function.

EXPECTS
    Passwords and messages as ``bytes``.  Stored states as 32 ``bytes`` (the
    decoded form) or as text in either of upstream's spellings:
    base64 of the 32 bytes (2.x, e.g. ``9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=``
    for "password123") or the older "dotted" form, eight unsigned 32-bit
    decimal numbers joined by ``.``.

GUARANTEES
    * Layout: inner state A,B,C,D then outer state A,B,C,D, each word a
      little-endian uint32 -- byte-identical to upstream (checked against the
      reference guide's examples).  The dotted form lists the same eight
      words, in the same order, as numbers.
    * Keys longer than 64 bytes are MD5-hashed first (RFC 2104).
    * ``hmac_md5_from_state(hmac_md5_state(k), m) == hmac.new(k, m, "md5").digest()``.
    * ``decode_state`` raises ``ValueError`` on anything that is not exactly
      one of the two spellings of 32 bytes.  No I/O, no global state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct

__all__ = [
    "STATE_SIZE",
    "decode_state",
    "encode_dotted",
    "encode_state",
    "hmac_md5_from_state",
    "hmac_md5_state",
    "md5_compress",
]

STATE_SIZE = 32
_BLOCK = 64
_MASK = 0xFFFFFFFF
_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_SHIFTS = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_K = tuple(int(abs(math.sin(i + 1)) * 2**32) & _MASK for i in range(64))
_DOTTED_RE = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,10}){7}")

Words = tuple[int, int, int, int]


def _rotl(x: int, c: int) -> int:
    return ((x << c) | (x >> (32 - c))) & _MASK


def md5_compress(state: Words, block: bytes) -> Words:
    """One MD5 compression: the chaining state after absorbing a 64-byte block."""
    if len(block) != _BLOCK:
        raise ValueError("md5_compress needs a 64-byte block")
    m = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & _MASK)), (7 * i) % 16
        f = (f + a + _K[i] + m[g]) & _MASK
        a, d, c = d, c, b
        b = (b + _rotl(f, _SHIFTS[i])) & _MASK
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def _pack(words: Words) -> bytes:
    return struct.pack("<4I", *words)


def _unpack(data: bytes) -> Words:
    a, b, c, d = struct.unpack("<4I", data)
    return (a, b, c, d)


def hmac_md5_state(password: bytes) -> bytes:
    """The 32-byte stored form of ``password``: inner then outer MD5 state."""
    key = hashlib.md5(password).digest() if len(password) > _BLOCK else password
    key = key.ljust(_BLOCK, b"\0")
    inner = md5_compress(_IV, bytes(k ^ 0x36 for k in key))
    outer = md5_compress(_IV, bytes(k ^ 0x5C for k in key))
    return _pack(inner) + _pack(outer)


def _continue(state: Words, data: bytes, prefix_length: int) -> bytes:
    """Finish an MD5 hash that has already absorbed ``prefix_length`` bytes into ``state``."""
    total_bits = ((prefix_length + len(data)) * 8) & 0xFFFFFFFFFFFFFFFF
    padded = data + b"\x80" + b"\0" * ((55 - len(data)) % _BLOCK) + struct.pack("<Q", total_bits)
    for offset in range(0, len(padded), _BLOCK):
        state = md5_compress(state, padded[offset : offset + _BLOCK])
    return _pack(state)


def hmac_md5_from_state(state: bytes, message: bytes) -> bytes:
    """HMAC-MD5(key, message) computed from the key's stored state alone."""
    if len(state) != STATE_SIZE:
        raise ValueError("an HMAC-MD5 state is 32 bytes")
    inner_digest = _continue(_unpack(state[:16]), message, _BLOCK)
    return _continue(_unpack(state[16:]), inner_digest, _BLOCK)


def encode_state(state: bytes) -> str:
    """Upstream 2.x spelling: base64 of the 32 bytes."""
    if len(state) != STATE_SIZE:
        raise ValueError("an HMAC-MD5 state is 32 bytes")
    return base64.b64encode(state).decode("ascii")


def encode_dotted(state: bytes) -> str:
    """Older spelling: the eight little-endian words as decimal numbers joined by '.'."""
    if len(state) != STATE_SIZE:
        raise ValueError("an HMAC-MD5 state is 32 bytes")
    return ".".join(str(w) for w in struct.unpack("<8I", state))


def decode_state(text: str) -> bytes:
    """Parse either spelling into 32 bytes; ``ValueError`` if it is neither."""
    if _DOTTED_RE.fullmatch(text):
        words = [int(w) for w in text.split(".")]
        if any(w > _MASK for w in words):
            raise ValueError("dotted md5 state: number out of range")
        return struct.pack("<8I", *words)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("md5 state is neither base64 nor dotted") from None
    if len(raw) != STATE_SIZE:
        raise ValueError(f"md5 state has {len(raw)} bytes, not {STATE_SIZE}")
    return raw
