"""SMTP smuggling end to end: through the relay to a strict next hop (ARCHITECTURE.md "Protocol cores").

The protocol-level tests feed the server state machine; here the whole path
is exercised.  Every end-of-data variant of the published SMTP smuggling
research (bare LF/CR dots, mixed line ends, NUL bytes next to the dot) is
sent inbound through a supervised relay (``--server-smtp-config chunking``,
``--forward-to`` a strict sink that ends DATA only at CRLF.CRLF), each
followed by a complete second transaction (``MAIL FROM:<smuggler>``,
``RCPT TO:<victim>``, ``DATA``...).  Also inside BDAT chunks.  Outbound,
stored messages whose content holds each sequence raw (written into the
spool directly, as a filter or another writer might) are forwarded by
``--as-client`` to strict sinks with and without CHUNKING.

The figure: smuggled messages at the sink (a message for the victim, or
more messages than sent, or one with other recipients) must be 0.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import Relay, start_relay
from tests.support.sink import envelope_text, run_client, states, write_raw
from tests.support.smtpd import short_run_dir

pytestmark = pytest.mark.timeout(180)

VARIANTS: dict[str, bytes] = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "CRLF.LF": b"\r\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "CRLF.CRCRLF": b"\r\n.\r\r\n",
    "CRLF-NUL.CRLF": b"\r\n\x00.\r\n",
    "CRLF.NUL-CRLF": b"\r\n.\x00\r\n",
    "LF.NUL-LF": b"\n.\x00\n",
    "NUL-LF.LF": b"\x00\n.\n",
    "CRLF.LF-NUL": b"\r\n.\n\x00",
}

SMUGGLED = (
    b"MAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"From: smuggler@evil.test\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
)


def head(tag: str) -> bytes:
    return f"From: a@example.com\r\nTo: rcpt@example.net\r\nMessage-ID: <{tag}@test>\r\nSubject: {tag}\r\n\r\nbody".encode()


def converse(port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send everything at once (as the attack does), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        greeting = s.recv(1024)
        assert greeting.startswith(b"220 ")
        s.sendall(payload)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
        return out


def check_sink(sink: FakeSmtp, expected: set[str]) -> dict[str, int]:
    msgs = list(sink.messages)
    smuggled = [m for m in msgs if "victim@example.org" in m.rcpts or m.mail_from == "smuggler@evil.test"]
    others = [m for m in msgs if m.rcpts != ["rcpt@example.net"]]
    ids = [m.message_id for m in msgs]
    figures = {
        "messages": len(msgs),
        "smuggled": len(smuggled),
        "wrong-recipients": len(others),
        "protocol-errors": len(sink.protocol_errors),
    }
    assert not smuggled, [(m.mail_from, m.rcpts, m.data[:200]) for m in smuggled]
    assert not others
    assert sorted(ids) == sorted(f"<{t}@test>" for t in expected), ids
    assert not sink.protocol_errors, sink.protocol_errors
    return figures


@pytest.fixture(scope="module")
def inbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Relay, FakeSmtp]]:
    tmp = tmp_path_factory.mktemp("smuggle")
    rd = short_run_dir()
    with FakeSmtp(extensions=("PIPELINING", "8BITMIME")) as sink:
        relay = start_relay(
            tmp, "--run-dir", str(rd), "--forward-to", sink.address, "--poll", "1",
            "--server-smtp-config", "chunking", name="smuggle",
        )  # fmt: skip
        try:
            yield relay, sink
        finally:
            relay.stop()
            import shutil

            shutil.rmtree(rd, ignore_errors=True)


def test_inbound_data_variants_smuggle_nothing(inbound: tuple[Relay, FakeSmtp]) -> None:
    relay, sink = inbound
    sent: set[str] = set()
    for name, variant in VARIANTS.items():
        tag = f"in-data-{name}"
        payload = (
            b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n"
            + head(tag) + variant + SMUGGLED + b"\r\n.\r\n" + b"QUIT\r\n"
        )  # fmt: skip
        replies = converse(relay.port, payload)
        assert replies.count(b"\r\n250 ") + replies.startswith(b"250 ") >= 1, replies
        sent.add(tag)
    assert sink.wait_for(lambda: len(sink.messages) >= len(sent), 30), (len(sink.messages), len(sent))
    time.sleep(1.5)  # a poll period more: anything extra would show now
    figures = check_sink(sink, sent | _bdat_tags_done)
    print(f"\nsmuggling inbound DATA: variants={len(VARIANTS)} {figures}")


_bdat_tags_done: set[str] = set()


def test_inbound_bdat_variants_smuggle_nothing(inbound: tuple[Relay, FakeSmtp]) -> None:
    relay, sink = inbound
    before = len(sink.messages)
    tags: set[str] = set()
    for name, variant in VARIANTS.items():
        tag = f"in-bdat-{name}"
        chunk = head(tag) + variant + SMUGGLED + b"\r\n.\r\n"
        payload = (
            b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<rcpt@example.net>\r\n"
            + f"BDAT {len(chunk)}\r\n".encode() + chunk + b"BDAT 2 LAST\r\n\r\n" + b"QUIT\r\n"
        )  # fmt: skip
        replies = converse(relay.port, payload)
        assert b"500" not in replies, replies  # chunking is on
        tags.add(tag)
    _bdat_tags_done.update(tags)
    assert sink.wait_for(lambda: len(sink.messages) >= before + len(tags), 30)
    time.sleep(1.5)
    msgs = list(sink.messages)[before:]
    assert not [m for m in msgs if "victim@example.org" in m.rcpts]
    assert sorted(m.message_id for m in msgs) == sorted(f"<{t}@test>" for t in tags)
    assert all(m.rcpts == ["rcpt@example.net"] for m in msgs)
    assert not sink.protocol_errors, sink.protocol_errors
    print(f"\nsmuggling inbound BDAT: variants={len(VARIANTS)} messages={len(msgs)} smuggled=0")


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_outbound_stored_sequences_reach_a_strict_sink_as_one_message_each(
    tmp_path: Path, chunking: bool
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    tags = set()
    for name, variant in VARIANTS.items():
        tag = f"out-{name}-{chunking}"
        content = head(tag) + variant + SMUGGLED + b"\r\n.\r\n" + b"trailer\r\n"
        write_raw(spool, envelope_text("a@example.com", ["rcpt@example.net"]), content)
        tags.add(tag)
    extensions = ("PIPELINING", "8BITMIME", "CHUNKING") if chunking else ("PIPELINING", "8BITMIME")
    with FakeSmtp(extensions=extensions) as sink:
        result = run_client(spool, sink.address)
        assert result.returncode == 0, result.stderr[-3000:]
        figures = check_sink(sink, tags)
        via = {m.via for m in sink.messages}
        bare = [m.message_id for m in sink.messages if re.search(rb"(?<!\r)\n|\r(?!\n)", m.data)]
        assert not bare, f"bare CR or LF sent in {bare}"  # outgoing content is canonical CRLF, BDAT too
    assert not states(spool), states(spool)
    print(f"\nsmuggling outbound ({'BDAT' if chunking else 'DATA'}): stored={len(tags)} via={via} {figures}")
