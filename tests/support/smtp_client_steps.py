"""The step runner for the tests of emailrelay.protocol.smtp_client: a script of server bytes
and client calls, run with every way of splitting the bytes (whole, by line, by byte, between
CR and LF); events, bytes sent and trace must not depend on the split.

Used by tests/unit/test_smtp_client.py and tests/unit/test_smtp_client_partial.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from emailrelay.protocol.smtp_client import NEED_DATA, ClientConfig, Event, Reply, SmtpClient

EHLO_FULL = (
    b"250-sink.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
    b"250-BINARYMIME\r\n250-SIZE 1000000\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
)
EHLO_PIPE = b"250-sink.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250 sink.example\r\n"


# --------------------------------------------------------------------------- harness

Step = bytes | Callable[[SmtpClient], object]
Splitter = Callable[[bytes], Iterable[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def by_line(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def crlf_split(data: bytes) -> list[bytes]:
    """Split between every CR and LF."""
    parts = data.split(b"\r")
    return [p + b"\r" for p in parts[:-1]] + [parts[-1]]


SPLITTERS: list[Splitter] = [whole, by_line, by_byte, crlf_split]


@dataclass
class Result:
    events: list[Event]
    writes: list[bytes]  # the bytes the client wanted to send after each step
    trace: list[tuple[str, str]]
    client: SmtpClient

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


def drain(client: SmtpClient) -> list[Event]:
    events = []
    while (event := client.next_event()) is not NEED_DATA:
        assert isinstance(event, Event)
        events.append(event)
    return events


def run(script: list[Step], splitter: Splitter = whole, **config: object) -> Result:
    client = SmtpClient(ClientConfig(helo_name="client.example", **config))  # type: ignore[arg-type]
    events: list[Event] = []
    writes: list[bytes] = []
    for step in script:
        if isinstance(step, bytes):
            for piece in splitter(step):
                if piece:
                    client.receive_data(piece)
                events.extend(drain(client))
            if step == b"":
                client.receive_data(b"")
                events.extend(drain(client))
        else:
            step(client)
            events.extend(drain(client))
        writes.append(client.data_to_send())
    return Result(events, writes, client.drain_trace(), client)


def run_all_ways(script: list[Step], **config: object) -> Result:
    """Run with every splitter; events, bytes sent and trace must not depend on it."""
    results = [run(script, s, **config) for s in SPLITTERS]
    first = results[0]
    for other in results[1:]:
        assert other.events == first.events
        assert other.writes == first.writes
        assert other.trace == first.trace
    return first


def envelope(
    mail_from: str = "a@example.com", rcpts: tuple[str, ...] = ("b@example.net",), **kw: object
) -> Callable[[SmtpClient], None]:
    return lambda c: c.send_envelope(mail_from, list(rcpts), **kw)  # type: ignore[arg-type]


def content(*chunks: bytes) -> Callable[[SmtpClient], None]:
    def step(c: SmtpClient) -> None:
        for chunk in chunks:
            c.send_content(chunk)
        c.end_content()

    return step


def quit_(c: SmtpClient) -> None:
    c.quit()


def reply(code: int, *lines: str) -> Reply:
    return Reply(code, list(lines))
