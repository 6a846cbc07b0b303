"""Tests for emailrelay.protocol.content_encoding (outgoing content)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.protocol.content_encoding import (
    MAX_LINE_LENGTH,
    BdatEncoder,
    Canonicaliser,
    ContentInfo,
    ContentScanner,
    DataEncoder,
    content_problems,
    needs_eightbit,
)

# --------------------------------------------------------------------------- reference helpers


def ref_canonical(data: bytes) -> bytes:
    """Every CRLF, bare CR and bare LF becomes CRLF; non-empty content ends with CRLF."""
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def strict_parse(wire: bytes) -> tuple[bytes, bytes]:
    """A strict DATA receiver: lines end only at CRLF, only CRLF.CRLF ends the
    message, a leading dot is removed.  Returns (content, what follows)."""
    pos = 0
    lines = []
    while True:
        i = wire.find(b"\r\n", pos)
        assert i >= 0, "no end of data"
        line = wire[pos:i]
        pos = i + 2
        if line == b".":
            return b"".join(lines), wire[pos:]
        if line.startswith(b"."):
            line = line[1:]
        lines.append(line + b"\r\n")


def lenient_messages(wire: bytes) -> int:
    """A lenient receiver that takes CR, LF or CRLF as a line end: how many
    end-of-data lines does it see?"""
    lines = re.split(rb"\r\n|\r|\n", wire)
    return sum(1 for line in lines if line == b".")


def has_bare_line_end(data: bytes) -> bool:
    return re.search(rb"\r(?!\n)|(?<!\r)\n", data) is not None


def encode(chunks: list[bytes]) -> tuple[bytes, DataEncoder]:
    enc = DataEncoder()
    out = b"".join(enc.feed(c) for c in chunks) + enc.finish()
    return out, enc


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --------------------------------------------------------------------------- helpers


def test_needs_eightbit() -> None:
    assert not needs_eightbit(b"plain ascii\r\n\x00\x7f")
    assert needs_eightbit(b"caf\xc3\xa9")
    assert needs_eightbit(b"\x80")
    assert not needs_eightbit(b"")


# --------------------------------------------------------------------------- canonicalisation


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n"),
        (b"a\r\n\nb", b"a\r\n\r\nb\r\n"),
        (b"no end", b"no end\r\n"),
        (b"", b""),
        (b"\r", b"\r\n"),
        (b"\n", b"\r\n"),
        (b"\x00\r\n", b"\x00\r\n"),
    ],
)
def test_canonicaliser(raw: bytes, canonical: bytes) -> None:
    canon = Canonicaliser()
    out = canon.feed(raw) + canon.finish()
    assert out == canonical == ref_canonical(raw)
    assert canon.size == len(canonical)
    assert canon.lines == canonical.count(b"\r\n")
    assert canon.bare_line_ends == (re.sub(rb"\r\n|\r|\n", b"\r\n", raw) != raw)


def test_canonicaliser_fast_path_returns_same_object() -> None:
    data = b"line one\r\nline two\r\n" * 100
    canon = Canonicaliser()
    assert canon.feed(data) is data
    assert not canon.bare_line_ends


def test_cr_lf_split_across_chunks_is_one_line_end() -> None:
    canon = Canonicaliser()
    out = canon.feed(b"abc\r") + canon.feed(b"\ndef\r") + canon.feed(b"\n") + canon.finish()
    assert out == b"abc\r\ndef\r\n"
    assert canon.lines == 2
    assert not canon.bare_line_ends


def test_held_cr_then_empty_chunks() -> None:
    canon = Canonicaliser()
    assert canon.feed(b"x\r") == b"x"
    assert canon.feed(b"") == b""
    assert canon.feed(b"") == b""
    assert canon.finish() == b"\r\n"
    assert canon.bare_line_ends


def test_accepts_bytearray_and_memoryview() -> None:
    enc = DataEncoder()
    out = enc.feed(bytearray(b".a\n")) + enc.feed(memoryview(b".b\r\n")) + enc.finish()
    assert out == b"..a\r\n..b\r\n.\r\n"


# --------------------------------------------------------------------------- DATA encoder


@pytest.mark.parametrize(
    ("raw", "wire"),
    [
        (b"", b".\r\n"),
        (b"hello\r\n", b"hello\r\n.\r\n"),
        (b"hello", b"hello\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"x\r\n.", b"x\r\n..\r\n.\r\n"),
    ],
)
def test_dot_stuffing(raw: bytes, wire: bytes) -> None:
    out, _ = encode([raw])
    assert out == wire
    content, rest = strict_parse(out)
    assert content == ref_canonical(raw)
    assert rest == b""


SMUGGLING = [
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\n\x00.\n",
    b"\r\n.\x00\r\n",
    b"\r\r\n.\r\r\n",
    b"\n\n.\n\n",
]


@pytest.mark.parametrize("sequence", SMUGGLING, ids=repr)
def test_smuggling_sequences_give_exactly_one_message(sequence: bytes) -> None:
    raw = (
        b"From: a@example.com\r\n\r\nfirst part"
        + sequence
        + b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n"
    )
    for points in ([], *([p] for p in range(len(raw) + 1))):
        out, _ = encode(split_at(raw, points))
        assert not has_bare_line_end(out)
        content, rest = strict_parse(out)
        assert rest == b"", "the end of data came early"
        assert content == ref_canonical(raw)
        assert lenient_messages(out) == 1


def test_every_chunk_boundary_gives_identical_output() -> None:
    raw = b".start\r\nmid\rline\n.\n..dots\r\n\r.\r\r\n\n.end\r"
    whole, _ = encode([raw])
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            out, _ = encode(split_at(raw, [i, j]))
            assert out == whole, (i, j)


def test_dot_at_chunk_start_after_line_end_is_stuffed() -> None:
    out, _ = encode([b"a\r\n", b".b\r\n", b"\r", b"\n.c"])
    assert out == b"a\r\n..b\r\n\r\n..c\r\n.\r\n"


def test_one_byte_chunks() -> None:
    raw = b"x\r\n.\r\n.y\n\r.\rz"
    out, enc = encode([raw[i : i + 1] for i in range(len(raw))])
    assert out == encode([raw])[0]
    assert enc.lines == ref_canonical(raw).count(b"\r\n")


def test_data_encoder_misuse() -> None:
    enc = DataEncoder()
    enc.finish()
    with pytest.raises(ValueError):
        enc.feed(b"x")
    with pytest.raises(ValueError):
        enc.finish()


# --------------------------------------------------------------------------- long lines


@pytest.mark.parametrize(
    ("content", "long"),
    [
        (b"a" * 998 + b"\r\n", False),
        (b"a" * 999 + b"\r\n", True),
        (b"a" * 998, False),
        (b"a" * 999, True),
        (b"short\r\n" + b"b" * 998 + b"\r\n" + b"c" * 10, False),
        (b"short\r\n" + b"b" * 999 + b"\r\nshort\r\n", True),
        (b"a" * 998 + b"\n" + b"b" * 998 + b"\r" + b"c" * 998, False),
        (b"a" * 998 + b"\n" + b"b" * 999 + b"\r" + b"c" * 998, True),
        ((b"x" * 997 + b"\r\n") * 50, False),
        ((b"x" * 997 + b"\r\n") * 50 + b"y" * 1000, True),
        (b"a" * 5000, True),
        (b"", False),
    ],
)
def test_long_line_detection(content: bytes, long: bool) -> None:
    lengths = [len(x) for x in ref_canonical(content).split(b"\r\n")]
    assert (max(lengths) > MAX_LINE_LENGTH) == long
    for size in (1, 7, 997, 998, 999, 1000, 1001, 4096, len(content) + 1):
        chunks = [content[i : i + size] for i in range(0, len(content), size)]
        _, enc = encode(chunks)
        assert enc.long_line == long, size
        assert content_problems(chunks).long_line == long, size


def test_long_line_exact_boundaries_every_split() -> None:
    for body, long in ((b"q" * 998 + b"\r\n", False), (b"q" * 999 + b"\r\n", True)):
        raw = b"head\r\n" + body + b"tail\r\n"
        for p in range(len(raw) + 1):
            _, enc = encode(split_at(raw, [p]))
            assert enc.long_line == long, p


# --------------------------------------------------------------------------- BDAT


def parse_bdat(wire: bytes) -> tuple[bytes, int]:
    """Reassemble BDAT frames; returns (content, number of frames); must end with LAST."""
    pos = 0
    content = []
    frames = 0
    while True:
        i = wire.index(b"\r\n", pos)
        words = wire[pos:i].split()
        assert words[0] == b"BDAT"
        n = int(words[1])
        content.append(wire[i + 2 : i + 2 + n])
        pos = i + 2 + n
        frames += 1
        if words[2:] == [b"LAST"]:
            assert pos == len(wire)
            return b"".join(content), frames
        assert len(words) == 2


def test_bdat_frames_and_canonicalises() -> None:
    enc = BdatEncoder()
    wire = enc.feed(b"a\nb\r") + enc.feed(b"\n.c\r") + enc.finish()
    assert wire == b"BDAT 4\r\na\r\nb" + b"BDAT 4\r\n\r\n.c" + b"BDAT 2 LAST\r\n\r\n"
    content, frames = parse_bdat(wire)
    assert content == b"a\r\nb\r\n.c\r\n"
    assert frames == enc.frames == 3
    assert enc.size == len(content)


def test_bdat_empty_finish_is_bdat_0_last() -> None:
    enc = BdatEncoder()
    assert enc.feed(b"abc\r\n") == b"BDAT 5\r\nabc\r\n"
    assert enc.feed(b"") == b""
    assert enc.finish() == b"BDAT 0 LAST\r\n"
    assert enc.last_size == 0


def test_bdat_last_on_feed() -> None:
    enc = BdatEncoder()
    assert enc.feed(b"x\r") == b"BDAT 1\r\nx"
    assert enc.feed(b"end", last=True) == b"BDAT 7 LAST\r\n\r\nend\r\n"
    assert enc.finish() == b""
    with pytest.raises(ValueError):
        enc.feed(b"more")


def test_bdat_binary_is_raw() -> None:
    raw = b"\x00\xff\r.\n\r\n.\r\nno end"
    enc = BdatEncoder(binary=True)
    wire = enc.feed(raw[:5]) + enc.feed(raw[5:]) + enc.finish()
    content, _ = parse_bdat(wire)
    assert content == raw
    assert enc.size == len(raw)


# --------------------------------------------------------------------------- pre-scan


def test_content_problems() -> None:
    info = content_problems([b"Subject: x\r\n", b"\r\ncaf\xc3\xa9\n", b"end"])
    assert info == ContentInfo(
        long_line=False,
        eightbit=True,
        bare_line_ends=True,
        size_after_canonicalisation=len(b"Subject: x\r\n\r\ncaf\xc3\xa9\r\nend\r\n"),
        lines=4,
    )
    clean = content_problems([b"a\r\n", b"b\r\n"])
    assert not clean.eightbit and not clean.bare_line_ends and not clean.long_line
    assert clean.size_after_canonicalisation == 6
    empty = content_problems([])
    assert empty.size_after_canonicalisation == 0 and empty.lines == 0


def test_scanner_matches_encoder_size() -> None:
    raw = b"a\rb\n.c\r\n" + b"z" * 2000
    scanner = ContentScanner()
    for i in range(0, len(raw), 333):
        scanner.feed(raw[i : i + 333])
    info = scanner.finish()
    assert info.size_after_canonicalisation == len(ref_canonical(raw))
    assert info.long_line


# --------------------------------------------------------------------------- properties

content_bytes = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\x00", b"a", b"\xff", b"\r\n", b"\r\n.\r\n", b"xyz"]),
    max_size=60,
).map(b"".join) | st.binary(max_size=300)


@st.composite
def content_and_splits(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = draw(content_bytes)
    points = draw(st.lists(st.integers(0, len(data)), max_size=8))
    return data, points


@settings(max_examples=400, deadline=None)
@given(content_and_splits())
def test_round_trip_property(case: tuple[bytes, list[int]]) -> None:
    data, points = case
    out, enc = encode(split_at(data, points))
    assert not has_bare_line_end(out)
    content, rest = strict_parse(out)
    assert rest == b""
    assert content == ref_canonical(data)
    assert enc.size == len(content)
    assert enc.lines == content.count(b"\r\n")
    assert out == encode([data])[0]


@settings(max_examples=200, deadline=None)
@given(content_and_splits(), st.booleans())
def test_bdat_round_trip_property(case: tuple[bytes, list[int]], binary: bool) -> None:
    data, points = case
    enc = BdatEncoder(binary=binary)
    wire = b"".join(enc.feed(c) for c in split_at(data, points)) + enc.finish()
    content, frames = parse_bdat(wire)
    assert content == (data if binary else ref_canonical(data))
    assert frames == enc.frames


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 1100), min_size=1, max_size=6),
    st.lists(st.sampled_from([b"\r\n", b"\n", b"\r"]), min_size=6, max_size=6),
    st.integers(1, 1200),
)
def test_long_line_property(lengths: list[int], ends: list[bytes], size: int) -> None:
    raw = b"".join(b"x" * n + end for n, end in zip(lengths, ends, strict=False))
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    expected = max(lengths) > MAX_LINE_LENGTH
    _, enc = encode(chunks)
    assert enc.long_line == expected
    assert content_problems(chunks).long_line == expected
