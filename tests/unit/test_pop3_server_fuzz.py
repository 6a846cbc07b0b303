"""Property tests for the sans-IO POP3 server and the byte stuffer: random input never breaks them."""

from __future__ import annotations

import itertools
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.protocol.pop3_server import (
    NEED_DATA,
    PAUSED,
    Apop,
    AuthResponse,
    AuthStart,
    ByteStuffer,
    ConnectionClosed,
    Pass,
    Pop3Server,
    PopConfig,
    Retrieve,
    Stls,
    Update,
)

WORDS = [
    b"USER me",
    b"PASS secret",
    b"APOP me 0123",
    b"AUTH PLAIN",
    b"AUTH CRAM-MD5",
    b"AUTH",
    b"CAPA",
    b"STLS",
    b"STAT",
    b"LIST",
    b"LIST 1",
    b"LIST 99999999999999999999",
    b"UIDL",
    b"UIDL 2",
    b"RETR 1",
    b"RETR 3",
    b"TOP 1 2",
    b"TOP 2 0",
    b"DELE 1",
    b"DELE 2",
    b"NOOP",
    b"RSET",
    b"QUIT",
    b"*",
    b"",
    b"x" * 300,
]
REPLY_LINE = re.compile(rb"\A(\+OK|-ERR|\+ )")

commands = st.lists(st.one_of(st.sampled_from(WORDS), st.binary(max_size=40)), max_size=30).map(
    lambda items: b"".join(w + b"\r\n" for w in items)
)


def drive(config: PopConfig, data: bytes, cuts: list[int], seed: int) -> dict[str, Any]:
    pop = Pop3Server(config)
    pop.greeting()
    out = pop.data_to_send()
    n = seed
    closed = False
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(positions)] + [b""]
    for chunk in chunks:
        if closed:
            break
        pop.receive_data(chunk)
        while True:
            ev = pop.next_event()
            if ev is NEED_DATA:
                break
            if ev is PAUSED:
                # only TLS can leave the machine paused here (a decision is always made below)
                n = (n * 1103515245 + 12345) & 0x7FFFFFFF
                pop.tls_established() if n % 2 else pop.close()
                continue
            if isinstance(ev, ConnectionClosed):
                closed = True
                assert isinstance(pop.next_event(), ConnectionClosed)
                break
            n = (n * 1103515245 + 12345) & 0x7FFFFFFF
            pick = n % 4
            if isinstance(ev, (Pass, Apop, AuthStart, AuthResponse)):
                if isinstance(ev, (AuthStart, AuthResponse)) and pick == 2:
                    pop.challenge("eA==")
                elif pick == 0:
                    pop.login([(10, "a"), (0, "b"), (3, "c")])
                else:
                    pop.login_failed(close=pick == 3)
            elif isinstance(ev, Stls):
                pop.accept_stls() if pick else pop.reject("no")
            elif isinstance(ev, Retrieve):
                if pick == 0:
                    pop.reject("gone")
                else:
                    stuffer = pop.accept_retrieve()
                    out += pop.data_to_send()
                    out += stuffer.feed(b"a\r\n.b\r\n") + stuffer.finish()
                    pop.retrieve_done()
            elif isinstance(ev, Update):
                assert all(1 <= k <= 3 for k in ev.deleted)
                pop.update_done(pick != 0)
            out += pop.data_to_send()
        out += pop.data_to_send()
    return {"out": out, "closed": closed}


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(commands, st.binary(max_size=600)),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=12),
    seed=st.integers(min_value=0, max_value=2**31),
    stls=st.booleans(),
    required=st.booleans(),
)
def test_random_input_never_raises(
    data: bytes, cuts: list[int], seed: int, stls: bool, required: bool
) -> None:
    cfg = PopConfig(stls=stls, tls_required=required, mechanisms=("PLAIN", "CRAM-MD5"))
    result = drive(cfg, data, cuts, seed)
    assert result["out"].startswith(b"+OK POP3 server ready")
    assert result["out"].endswith(b"\r\n")
    if b"\n." not in data and not data.startswith(b"."):  # no message content, only replies
        for line in result["out"].split(b"\r\n")[:-1]:
            assert REPLY_LINE.match(line) or line in (b".", b"a", b"..b") or not line.startswith((b"+", b"-"))


@settings(max_examples=200, deadline=None)
@given(
    data=commands,
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=12),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_chunking_does_not_change_the_conversation(data: bytes, cuts: list[int], seed: int) -> None:
    cfg = PopConfig(mechanisms=("PLAIN",))
    whole = drive(cfg, data, [], seed)
    pieces = drive(cfg, data, cuts, seed)
    assert whole == pieces


def unstuff(body: bytes) -> bytes:
    """What an LF-splitting POP client reconstructs: undo stuffing, stop at the '.' line."""
    lines = body.split(b"\n")
    out: list[bytes] = []
    for i, line in enumerate(lines):
        if line in (b".\r", b"."):
            assert i == len(lines) - 2 and lines[-1] == b"", "terminator must be last"
            return b"\n".join(out) + (b"\n" if out else b"")
        out.append(line[1:] if line.startswith(b".") else line)
    raise AssertionError("no terminator")


def crlf_lines(data: bytes) -> bytes:
    """``data`` with a line ended by a bare LF ended by CRLF, as the stuffer sends it."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


content = st.lists(
    st.sampled_from([b"a", b".", b"\r\n", b"\n", b"\r", b"..", b"x y", b"\r\n.\r\n", b"\r\n\r\n"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(data=content, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_stuffer_round_trips_at_any_chunking(data: bytes, cuts: list[int]) -> None:
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    s = ByteStuffer()
    out = b"".join(s.feed(data[a:b]) for a, b in itertools.pairwise(positions)) + s.finish()
    whole = ByteStuffer()
    assert out == whole.feed(data) + whole.finish()
    assert out.endswith(b".\r\n")
    assert b"\n.\r\n" not in out[:-3] and not out[:-3].startswith(b".\r\n")
    assert out == b".\r\n" or out.endswith(b"\r\n.\r\n")  # what a strict client waits for
    sent = crlf_lines(data)
    expected = sent if sent.endswith(b"\n") or not sent else sent + b"\r\n"
    assert unstuff(out) == expected


@settings(max_examples=300, deadline=None)
@given(
    data=content,
    lines=st.integers(min_value=0, max_value=5),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_top_is_independent_of_chunking(data: bytes, lines: int, cuts: list[int]) -> None:
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    s = ByteStuffer(lines)
    out = b"".join(s.feed(data[a:b]) for a, b in itertools.pairwise(positions)) + s.finish()
    whole = ByteStuffer(lines)
    assert out == whole.feed(data) + whole.finish()
    got = unstuff(out)
    assert (crlf_lines(data) + b"\r\n").startswith(got) or crlf_lines(data).startswith(got)
