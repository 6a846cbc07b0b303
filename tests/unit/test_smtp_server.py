"""Conversation tests for the sans-IO SMTP server (emailrelay.protocol.smtp_server).

Every table case is run three ways -- whole input at once, line by line and
byte by byte -- and the three runs must give identical events and replies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from emailrelay.protocol.smtp_server import (
    NEED_DATA,
    PAUSED,
    AuthResponse,
    AuthStart,
    ConnectionClosed,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    Hello,
    Help,
    LocalProtocolError,
    MailFrom,
    Noop,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    ServerConfig,
    SmtpServer,
    StartTls,
    Vrfy,
    VrfyHidden,
)

# ------------------------------------------------------------------- driver

TLS_UP = object()  # marker in a packet list: the service calls tls_established() here
DECISIONS = (Hello, MailFrom, RcptTo, DataStart, DataEnd, Vrfy, AuthStart, AuthResponse, StartTls)

Action = tuple[Any, ...]
Policy = Callable[[Event], Action | None]


def default_action(ev: Event) -> Action:
    if isinstance(ev, (AuthStart, AuthResponse)):
        return ("auth_ok",)
    if isinstance(ev, Vrfy):
        return ("reply", 252, "2.1.5 cannot verify")
    return ("accept", None)


def apply(server: SmtpServer, action: Action) -> None:
    kind, *args = action
    if kind == "accept":
        server.accept(*args)
    elif kind == "reject":
        server.reject(*args)
    elif kind == "reply":
        server.reply(*args)
    elif kind == "challenge":
        server.challenge(*args)
    elif kind == "auth_ok":
        server.auth_succeeded()
    elif kind == "auth_fail":
        server.auth_failed()
    else:  # pragma: no cover
        raise AssertionError(kind)


@dataclass
class Result:
    events: list[Event] = field(default_factory=list)
    out: bytes = b""
    ended_with: object = None

    @property
    def replies(self) -> list[str]:
        """Final reply lines ("NNN text"), greeting excluded."""
        lines = self.out.decode("utf-8").split("\r\n")
        assert lines[-1] == ""
        return [x for x in lines[:-1] if x[3:4] == " "][1:]

    @property
    def messages(self) -> list[bytes]:
        done: list[bytes] = []
        current = b""
        for ev in self.events:
            if isinstance(ev, DataChunk):
                current += ev.data
            elif isinstance(ev, DataEnd):
                done.append(current)
                current = b""
            elif isinstance(ev, (DataAborted, Rset, Hello, MailFrom)):
                current = b""
        return done

    @property
    def aborted(self) -> list[DataAborted]:
        return [ev for ev in self.events if isinstance(ev, DataAborted)]

    def types(self) -> list[type]:
        return [type(ev) for ev in self.events]


def merge_chunks(events: list[Event]) -> list[Event]:
    """Coalesce adjacent DataChunks and drop chunks of a message that was then aborted.

    How much content of a failed message was delivered before the failure was
    noticed depends on how the input was split; the service deletes it anyway.
    """
    merged: list[Event] = []
    for ev in events:
        if isinstance(ev, DataAborted) and merged and isinstance(merged[-1], DataChunk):
            merged.pop()
        if isinstance(ev, DataChunk) and merged and isinstance(merged[-1], DataChunk):
            merged[-1] = DataChunk(merged[-1].data + ev.data)
        else:
            merged.append(ev)
    return merged


def run(
    config: ServerConfig,
    packets: Iterable[bytes | object],
    policy: Policy | None = None,
    eof: bool = True,
) -> Result:
    server = SmtpServer(config)
    server.greeting()
    result = Result()
    pending: list[Event] = []
    closed = False

    def pump() -> None:
        nonlocal closed
        while True:
            ev = server.next_event()
            if ev is NEED_DATA:
                result.ended_with = NEED_DATA
                return
            if ev is PAUSED:
                if not pending:
                    result.ended_with = PAUSED  # waiting for TLS
                    return
                decided = pending.pop()
                action = (policy(decided) if policy else None) or default_action(decided)
                apply(server, action)
                continue
            assert isinstance(ev, Event)
            result.events.append(ev)
            if isinstance(ev, ConnectionClosed):
                closed = True
                result.ended_with = ev
                return
            if isinstance(ev, DECISIONS):
                pending.append(ev)

    for packet in packets:
        if closed:
            break
        if packet is TLS_UP:
            server.tls_established()
        else:
            assert isinstance(packet, bytes)
            server.receive_data(packet)
        pump()
    if eof and not closed:
        server.receive_data(b"")
        pump()
    result.out = server.data_to_send()
    result.events = merge_chunks(result.events)
    return result


def split_lines(packets: Sequence[bytes | object]) -> list[bytes | object]:
    out: list[bytes | object] = []
    for p in packets:
        if isinstance(p, bytes):
            out.extend(p.splitlines(keepends=True))
        else:
            out.append(p)
    return out


def split_bytes(packets: Sequence[bytes | object]) -> list[bytes | object]:
    out: list[bytes | object] = []
    for p in packets:
        if isinstance(p, bytes):
            out.extend(p[i : i + 1] for i in range(len(p)))
        else:
            out.append(p)
    return out


def run3(config: ServerConfig, packets: Sequence[bytes | object], policy: Policy | None = None) -> Result:
    """Run whole / line-by-line / byte-by-byte; assert identical; return the whole run."""
    whole = run(config, packets, policy)
    for splitter in (split_lines, split_bytes):
        other = run(config, splitter(packets), policy)
        assert other.events == whole.events, splitter.__name__
        assert other.out == whole.out, splitter.__name__
    return whole


def reject(kind: type, code: int, text: str, match: str | None = None) -> Policy:
    def policy(ev: Event) -> Action | None:
        if isinstance(ev, kind) and (match is None or match in getattr(ev, "line", "")):
            return ("reject", code, text)
        return None

    return policy


def reference_data(data: bytes) -> tuple[bytes, bytes] | None:
    """Slow line-by-line model of the documented DATA policy: (content, rest) or None."""
    out = bytearray()
    i = 0
    crlf_start = True
    while True:
        j = data.find(b"\n", i)
        if j < 0:
            return None
        line = data[i : j + 1]
        if crlf_start and line == b".\r\n":
            return bytes(out), data[j + 1 :]
        body = line[1:] if crlf_start and line.startswith(b".") else line
        if not body.endswith(b"\r\n"):
            body = body[:-1] + b"\r\n"
        out += body
        crlf_start = line.endswith(b"\r\n")
        i = j + 1


# -------------------------------------------------------------- table cases

E = b"EHLO client.example.com\r\n"
M = b"MAIL FROM:<alice@example.com>\r\n"
R = b"RCPT TO:<bob@example.net>\r\n"
D = b"DATA\r\n"
Q = b"QUIT\r\n"
SIZE_TEXT = "message size exceeds fixed maximum message size"
OK_TXN = ["250 ", "250 sender <alice@example.com> OK", "250 recipient <bob@example.net> OK"]
SEQ = "503 command out of sequence -- use RSET to resynchronise"
DATA_OK = [*OK_TXN, "354 start mail input -- end with <CRLF>.<CRLF>", "250 message processed"]


@dataclass
class Case:
    name: str
    packets: list[bytes | object]
    replies: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    policy: Policy | None = None
    messages: list[bytes] | None = None
    check: Callable[[Result], None] | None = None


def _ehlo_first(replies: list[str]) -> list[str]:
    return replies


def no_event(kind: type) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        assert not any(isinstance(ev, kind) for ev in r.events), r.events

    return check


def has_event(ev: Event) -> Callable[[Result], None]:
    def check(r: Result) -> None:
        assert ev in r.events, r.events

    return check


SMUGGLE = [
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\n.\n\x00",
    b"\x00\r\n.\n",
    b"\r\n.\r\r\n",
]


def smuggle_case(sep: bytes) -> Case:
    evil = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n"
    body = b"hello" + sep + evil + b".\r\n"
    packets: list[bytes | object] = [E + M + R + D + body + Q]
    ref = reference_data(body)
    assert ref is not None and ref[1] == b""
    return Case(
        f"smuggle {sep!r}",
        packets,
        [*DATA_OK, "221 OK"],
        messages=[ref[0]],
        check=lambda r: (
            None
            if (
                b"MAIL FROM:<evil@x>" in r.messages[0]
                and not any(isinstance(ev, MailFrom) and ev.address == "evil@x" for ev in r.events)
            )
            else pytest.fail("smuggled")
        ),
    )


def _long(n: int) -> bytes:
    return b"x" * n


CASES: list[Case] = [
    # --- basics
    Case("helo", [b"HELO c\r\n", Q], ["250 hello", "221 OK"]),
    Case("greeting and ehlo texts", [E, Q], ["250 8BITMIME", "221 OK"], config={"domain": "vm"}),
    Case(
        "full transaction", [E + M + R + D + b"hi\r\n.\r\n" + Q], [*DATA_OK, "221 OK"], messages=[b"hi\r\n"]
    ),
    Case(
        "case insensitive",
        [
            b"ehlo c\r\nmail from:<alice@example.com>\r\nrcpt to:<bob@example.net>\r\ndata\r\nx\r\n.\r\nquit\r\n"
        ],
        [*DATA_OK, "221 OK"],
        messages=[b"x\r\n"],
    ),
    Case("noop", [b"NOOP\r\nnoop anything\r\n"], ["250 noop", "250 noop"], check=has_event(Noop("NOOP"))),
    Case("help", [b"HELP\r\n"], ["502 command not implemented"], check=has_event(Help("HELP"))),
    Case("rset before hello", [b"RSET\r\nMAIL FROM:<a@b>\r\n"], ["250 state reset", "503 "]),
    Case("unknown command", [b"FOO bar\r\n\r\n"], ["500 command unrecognized"] * 2),
    Case(
        "quit ends",
        [b"QUIT\r\nNOOP\r\n"],
        ["221 OK"],
        check=lambda r: r.types()[-2:] == [Quit, ConnectionClosed],
    ),
    Case("eof idle", [E], ["250 "], check=lambda r: r.types()[-1] is ConnectionClosed),
    Case(
        "quit in transaction aborts",
        [E + M + Q],
        ["250 ", "250 ", "221 OK"],
        check=lambda r: r.events[-2:] == [DataAborted(0, "connection closed"), ConnectionClosed()],
    ),
    # --- sequencing
    Case("mail before helo", [M], [SEQ]),
    Case("rcpt before mail", [E + R], ["250 ", SEQ]),
    Case("data before mail", [E + D], ["250 ", SEQ]),
    Case("data without rcpt", [E + M + D + R], ["250 ", "250 ", "554 no valid recipients", SEQ]),
    Case(
        "data with all rcpts rejected",
        [E + M + R + R + D],
        ["250 ", "250 ", "550 no", "550 no", "554 no valid recipients"],
        policy=reject(RcptTo, 550, "no"),
    ),
    Case("nested mail", [E + M + M], ["250 ", "250 ", SEQ]),
    Case("ehlo resets transaction", [E + M + R + E + D], ["250 ", "250 ", "250 ", "250 ", "503 "]),
    Case("rset resets transaction", [E + M + R + b"RSET\r\n" + D], [*OK_TXN, "250 state reset", "503 "]),
    Case(
        "rejected mail", [E + M + R], ["250 ", "550 go away", "503 "], policy=reject(MailFrom, 550, "go away")
    ),
    Case("rejected hello", [E + M], ["554 no", "503 "], policy=reject(Hello, 554, "no")),
    Case(
        "rejected data start stays in transaction",
        [E + M + R + D + R + b"RSET\r\n"],
        [*OK_TXN, "451 later", "250 recipient", "250 state reset"],
        policy=reject(DataStart, 451, "later"),
    ),
    Case(
        "rejected message ends transaction",
        [E + M + R + D + b"x\r\n.\r\n" + R],
        [*OK_TXN, "354 ", "452 filter says no", "503 "],
        policy=reject(DataEnd, 452, "filter says no"),
    ),
    Case(
        "upstream log rcpt reject text",
        [E + M + b"RCPT TO:<bad@example.net>\r\nRSET\r\n"],
        ["250 ", "250 ", "550 invalid mailbox: bad@example.net", "250 state reset"],
        policy=reject(RcptTo, 550, "invalid mailbox: bad@example.net"),
    ),
    # --- line limits and bare CR/LF
    Case("command 512 ok", [b"NOOP " + _long(505) + b"\r\n"], ["250 noop"]),
    Case(
        "command 513 too long",
        [b"NOOP " + _long(506) + b"\r\nNOOP\r\n"],
        ["500 line too long", "250 noop"],
    ),
    Case("command huge", [b"NOOP " + _long(100_000) + b"\r\nNOOP\r\n"], ["500 line too long", "250 noop"]),
    Case("huge bare", [_long(3000) + b"\nNOOP\r\nNOOP\r\n"], ["500 line too long", "250 noop"]),
    Case("bare lf", [b"NOOP\nNOOP\r\nNOOP\r\n"], ["500 command unrecognized", "250 noop"]),
    Case("bare cr", [b"NO\rOP\r\nNOOP\r\n"], ["500 command unrecognized", "250 noop"]),
    Case("double cr", [b"NOOP\r\r\n"], ["500 command unrecognized"]),
    Case(
        "bare lf client waits for crlf",
        [b"EHLO c\nMAIL FROM:<a@b>\n"],
        [],
        check=no_event(MailFrom),
    ),
    Case(
        "data line 1000 ok",
        [E + M + R + D + _long(998) + b"\r\n.\r\n"],
        DATA_OK,
        messages=[_long(998) + b"\r\n"],
    ),
    Case(
        "data line 1001 fails",
        [E + M + R + D + _long(999) + b"\r\nmore\r\n.\r\nNOOP\r\n"],
        [*OK_TXN, "354 ", "500 line too long", "250 noop"],
        messages=[],
        check=lambda r: r.aborted == [DataAborted(500, "line too long")] and DataChunk not in r.types(),
    ),
    Case(
        "data bare-lf line 999 normalised to 1001 fails",
        [E + M + R + D + _long(999) + b"\n\r\n.\r\n"],
        [*OK_TXN, "354 ", "500 line too long"],
    ),
    Case(
        "data huge line then end",
        [E + M + R + D + b"ok\r\n" + _long(200_000) + b"\r\n.\r\nNOOP\r\n"],
        [*OK_TXN, "354 ", "500 line too long", "250 noop"],
        check=lambda r: r.aborted == [DataAborted(500, "line too long")],
    ),
    # --- MAIL / RCPT syntax and parameters
    Case(
        "mail without from",
        [E + b"MAIL <a@b>\r\n"],
        ["250 ", "553 mailbox name not allowed: invalid mail-from command"],
    ),
    Case(
        "mail bad address",
        [E + b"MAIL FROM:<a@b\r\nMAIL FROM:a@b\r\n"],
        [
            "250 ",
            "553 mailbox name not allowed: invalid angle brackets in mailbox name",
            "553 mailbox name not allowed: missing angle brackets in mailbox name",
        ],
    ),
    Case(
        "mail nul in address",
        [E + b"MAIL FROM:<a\x00@b>\r\n"],
        ["250 ", "553 mailbox name not allowed: invalid character"],
    ),
    Case(
        "mail control in address",
        [E + b"MAIL FROM:<a\x01@b>\r\n"],
        ["250 ", "553 mailbox name not allowed: invalid character"],
    ),
    Case("mail unknown param ignored", [E + b"MAIL FROM:<a@b> FOO=1\r\n"], ["250 ", "250 sender <a@b> OK"]),
    Case(
        "mail duplicate param: the first counts",
        [E + b"MAIL FROM:<a@b> SIZE=1 SIZE=2\r\n"],
        ["250 ", "250 "],
        check=lambda r: any(isinstance(ev, MailFrom) and ev.size == 1 for ev in r.events),
    ),
    Case("mail size not number ignored", [E + b"MAIL FROM:<a@b> SIZE=abc\r\n"], ["250 ", "250 "]),
    Case(
        "mail body bad ignored",
        [E + b"MAIL FROM:<a@b> BODY=9BIT\r\n"],
        ["250 ", "250 "],
        check=lambda r: any(isinstance(ev, MailFrom) and ev.body is None for ev in r.events),
    ),
    Case(
        "mail binarymime without chunking: refused at DATA",
        [E + b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n" + R + D],
        ["250 ", "250 ", "250 ", "503 invalid data command with binarymime -- use RSET to resynchronise"],
    ),
    Case(
        "mail auth bad xtext: a NUL, as upstream",
        [E + b"MAIL FROM:<a@b> AUTH=a+zz\r\n"],
        ["250 ", "250 "],
        check=lambda r: any(isinstance(ev, MailFrom) and ev.auth == "a+00" for ev in r.events),
    ),
    Case(
        "mail params",
        [E + b"MAIL FROM:<a@b> BODY=8bitmime SIZE=123 AUTH=alice+40x\r\n"],
        ["250 ", "250 sender <a@b> OK"],
        check=has_event(
            MailFrom(
                "MAIL FROM:<a@b> BODY=8bitmime SIZE=123 AUTH=alice+40x",
                "a@b",
                "8BITMIME",
                123,
                False,
                "alice@x",
                {"BODY": "8bitmime", "SIZE": "123", "AUTH": "alice+40x"},
            )
        ),
    ),
    Case("mail null sender", [E + b"MAIL FROM:<>\r\n"], ["250 ", "250 sender <> OK"]),
    Case("mail source route stripped", [E + b"MAIL FROM:<@r1,@r2:a@b>\r\n"], ["250 ", "250 sender <a@b> OK"]),
    Case(
        "mail size over max",
        [E + b"MAIL FROM:<a@b> SIZE=1001\r\n"],
        ["250 ", "552 message size exceeds fixed maximum message size"],
        config={"max_size": 1000},
    ),
    Case(
        "mail size at max",
        [E + b"MAIL FROM:<a@b> SIZE=1000\r\n"],
        ["250 ", "250 "],
        config={"max_size": 1000},
    ),
    Case(
        "smtputf8 param not enabled: ignored",
        [E + b"MAIL FROM:<a@b> SMTPUTF8\r\n"],
        ["250 ", "250 "],
        check=lambda r: any(isinstance(ev, MailFrom) and not ev.smtputf8 for ev in r.events),
    ),
    Case(
        "smtputf8 strict rejects non-ascii",
        [E + "MAIL FROM:<j\u00f6rg@b>\r\n".encode()],
        ["250 ", "553 mailbox name not allowed: invalid character in mailbox name: not using smptutf8"],
        config={"smtputf8": True, "smtputf8_strict": True},
    ),
    Case(  # E-MailRelay 2.6b: smtputf8strict alone does not offer SMTPUTF8 but honours the parameter
        "smtputf8 strict alone",
        [E + "MAIL FROM:<j\u00f6rg@b> SMTPUTF8\r\n".encode()],
        ["250 ", "250 "],
        config={"smtputf8_strict": True},
        check=lambda r: (
            b"SMTPUTF8" not in r.out and any(isinstance(ev, MailFrom) and ev.smtputf8 for ev in r.events)
        ),
    ),
    Case(
        "smtputf8 strict rcpt",
        [E + M + "RCPT TO:<j\u00f6rg@b>\r\n".encode()],
        ["250 ", "250 ", "550 invalid character in mailbox name: not using smtputf8"],
        config={"smtputf8": True, "smtputf8_strict": True},
    ),
    Case(
        "smtputf8 with param",
        [E + "MAIL FROM:<j\u00f6rg@b> SMTPUTF8\r\nRCPT TO:<\u00fc@b>\r\n".encode()],
        ["250 ", "250 sender <j\u00f6rg@b> OK", "250 recipient <\u00fc@b> OK"],
        config={"smtputf8": True, "smtputf8_strict": True},
        check=lambda r: any(
            isinstance(ev, MailFrom) and ev.smtputf8 and ev.address == "j\u00f6rg@b" for ev in r.events
        ),
    ),
    Case(
        "non-ascii allowed when not strict",
        [E + "MAIL FROM:<j\u00f6rg@b>\r\n".encode()],
        ["250 ", "250 sender <j\u00f6rg@b> OK"],
    ),
    Case(
        "latin-1 address bytes (refused, as upstream)",
        [E + b"MAIL FROM:<j\xf6rg@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<j\xf6rg@b>\r\n"],
        [
            "250 ",
            "553 mailbox name not allowed: invalid character in mailbox name",
            "250 ",
            "550 invalid character in mailbox name",
        ],
    ),
    Case(
        "spaces and tabs around the verb (upstream)",
        [E + b" NOOP\r\n\tNOOP x\r\nMAIL\t FROM:<a@b>\r\n"],
        ["250 ", "250 noop", "250 noop", "250 sender <a@b> OK"],
    ),
    Case(
        "helo and vrfy take what follows the first space (upstream)",
        [b"EHLO\th\r\nHELO\th\r\nHELO  h\r\nVRFY\tx\r\nVRFY \t x\r\nMAIL FROM:<a@b> SMTPUTF8=x\r\n"],
        [
            "501 parameter required",
            "501 parameter required",
            "250 hello",
            "550 invalid mailbox",
            "550 invalid mailbox",
            "553 mailbox name not allowed: invalid mail-from parameter",
        ],
    ),
    Case(
        "smtp disable: MAIL gets 421, the session goes on (upstream)",
        [E + M + R + b"NOOP\r\n"],
        ["250 ", "421 service not available", SEQ, "250 noop"],
        config={"disabled": True},
    ),
    Case("strict allows space after colon", [E + b"MAIL FROM: <a@b>\r\n"], ["250 ", "250 sender <a@b> OK"]),
    Case("strict rejects space before colon", [E + b"MAIL FROM : <a@b>\r\n"], ["250 ", "553 "]),
    Case(
        "nostrict space",
        [E + b"MAIL FROM: <a@b>\r\n"],
        ["250 ", "250 sender <a@b> OK"],
        config={"strict_parsing": False},
    ),
    Case(
        "nostrict brackets",
        [E + b"MAIL  FROM:a@b\r\nRCPT TO: c@d\r\n"],
        ["250 ", "250 sender <a@b> OK", "250 recipient <c@d> OK"],
        config={"strict_parsing": False},
    ),
    Case("rcpt null", [E + M + b"RCPT TO:<>\r\n"], ["250 ", "250 ", "550 invalid empty mailbox"]),
    Case(
        "rcpt syntax",
        [E + M + b"RCPT TO:c@d\r\nRCPT <c@d>\r\nRCPT TO:<c@d\r\n"],
        [
            "250 ",
            "250 ",
            "550 missing angle brackets in mailbox name",
            "550 invalid rcpt-to command",
            "550 invalid angle brackets in mailbox name",
        ],
    ),
    Case(
        "rcpt postmaster",
        [E + M + b"RCPT TO:<postmaster>\r\n"],
        ["250 ", "250 ", "250 recipient <postmaster> OK"],
    ),
    Case("rcpt param ignored", [E + M + b"RCPT TO:<a@b> NOTIFY=NEVER\r\n"], ["250 ", "250 ", "250 "]),
    Case(
        "too many recipients",
        [E + M + b"RCPT TO:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n"],
        ["250 ", "250 ", "250 ", "250 ", "452 too many recipients"],
        config={"max_recipients": 2},
    ),
    Case(
        "too many errors: the connection closes after the limit's reply",
        [b"X\r\nY\r\nZ\r\nW\r\nNOOP\r\n"],
        ["500 ", "500 ", "500 "],
        config={"max_errors": 3},
        check=lambda r: r.types() == [ProtocolError] * 3 + [ConnectionClosed],
    ),
    Case(
        "errors not reset by success",
        [b"X\r\nY\r\nNOOP\r\nZ\r\nW\r\n"],
        ["500 ", "500 ", "250 noop", "500 "],
        config={"max_errors": 3},
    ),
    Case(
        "only 500 and 503 count as errors",
        [E + M + R + R + R + D + b"HELP\r\nX\r\n"],
        ["250 ", "250 ", "550 no", "550 no", "550 no", "554 no valid recipients", "502 ", "500 "],
        config={"max_errors": 1},
        policy=reject(RcptTo, 550, "no"),
    ),
    # --- DATA content policy
    Case(
        "dot unstuffing",
        [E + M + R + D + b"a\r\n..b\r\n...\r\n.\r\n"],
        DATA_OK,
        messages=[b"a\r\n.b\r\n..\r\n"],
    ),
    Case("first line stuffed", [E + M + R + D + b"..x\r\n.\r\n"], DATA_OK, messages=[b".x\r\n"]),
    Case("empty message", [E + M + R + D + b".\r\n"], DATA_OK, messages=[b""]),
    Case(
        "bare lf normalised",
        [E + M + R + D + b"a\nb\r\nc\n\r\n.\r\n"],
        DATA_OK,
        messages=[b"a\r\nb\r\nc\r\n\r\n"],
    ),
    Case("bare cr kept", [E + M + R + D + b"a\rb\r\r\n.\r\n"], DATA_OK, messages=[b"a\rb\r\r\n"]),
    Case("nul kept", [E + M + R + D + b"a\x00b\r\n\x00\r\n.\r\n"], DATA_OK, messages=[b"a\x00b\r\n\x00\r\n"]),
    Case(
        "dots after bare lf not unstuffed",
        [E + M + R + D + b"a\n..\r\n.\r\n"],
        DATA_OK,
        messages=[b"a\r\n..\r\n"],
    ),
    Case(
        "dot-lf after crlf is a stuffed line",
        [E + M + R + D + b"a\r\n.\nb\r\n.\r\n"],
        DATA_OK,
        messages=[b"a\r\n\r\nb\r\n"],
    ),
    Case("lf dot lf", [E + M + R + D + b"a\n.\nb\r\n.\r\n"], DATA_OK, messages=[b"a\r\n.\r\nb\r\n"]),
    Case(
        "pipelined after data",
        [E + M + R + D + b"m1\r\n.\r\n" + M + R + D + b"m2\r\n.\r\n" + Q],
        [*DATA_OK, "250 sender", "250 recipient", "354 ", "250 message processed", "221 OK"],
        messages=[b"m1\r\n", b"m2\r\n"],
    ),
    Case(
        "size limit",
        [E + M + R + D + b"0123456789\r\n.\r\nNOOP\r\n"],
        [*OK_TXN, "354 ", "552 message size exceeds fixed maximum message size", "250 noop"],
        config={"max_size": 11},
        check=lambda r: r.aborted == [DataAborted(552, "message size exceeds fixed maximum message size")],
    ),
    Case(  # E-MailRelay 2.6b's rule: a size equal to the limit is refused
        "size exactly",
        [E + M + R + D + b"012345678\r\n.\r\n"],
        ["250 ", "250 ", "250 ", "354 ", "552 message size exceeds fixed maximum message size"],
        config={"max_size": 11},
    ),
    Case(
        "size one below",
        [E + M + R + D + b"012345678\r\n.\r\n"],
        DATA_OK,
        config={"max_size": 12},
        messages=[b"012345678\r\n"],
    ),
    Case("size counts unstuffed", [E + M + R + D + b"..345678\r\n.\r\n"], DATA_OK, config={"max_size": 10}),
    Case(
        "eof in data",
        [E + M + R + D + b"partial\r\nline"],
        [*OK_TXN, "354 "],
        check=lambda r: r.events[-2:] == [DataAborted(0, "connection closed"), ConnectionClosed()],
    ),
    Case(
        "binarymime with data",
        [E + b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n" + R + D],
        ["250 ", "250 ", "250 ", "503 invalid data command with binarymime"],
        config={"chunking": True},
    ),
    Case("data argument ignored (upstream)", [E + M + R + b"DATA x\r\n"], [*OK_TXN, "354 "]),
    *[smuggle_case(sep) for sep in SMUGGLE],
    # --- BDAT
    Case(
        "bdat chunks",
        [E + M + R + b"BDAT 5\r\nhelloBDAT 6 LAST\r\n world" + Q],
        [*OK_TXN, "250 5 bytes received", "250 message processed", "221 OK"],
        config={"chunking": True},
        messages=[b"hello world"],
        check=has_event(DataEnd("BDAT 6 LAST", 11)),
    ),
    Case(
        "bdat raw content",
        [E + M + R + b"BDAT 13 LAST\r\n.\r\n\n.\nX\x00\r..\r\n" + b"NOOP\r\n"],
        [*OK_TXN, "250 message processed", "250 noop"],
        config={"chunking": True},
        messages=[b".\r\n\n.\nX\x00\r..\r\n"],
    ),
    Case(
        "bdat 0 last",
        [E + M + R + b"BDAT 0 LAST\r\n"],
        [*OK_TXN, "250 message processed"],
        config={"chunking": True},
        messages=[b""],
    ),
    Case(
        "bdat 0 must be the last (upstream)",
        [E + M + R + b"BDAT 0\r\nBDAT 1 last\r\nxNOOP\r\n"],
        [*OK_TXN, "501 invalid argument", SEQ, "250 noop"],
        config={"chunking": True},
        check=no_event(DataEnd),
    ),
    Case(
        "bdat 0 last",
        [E + M + R + b"BDAT 1\r\nxBDAT 0 LAST\r\n"],
        [*OK_TXN, "250 1 bytes received", "250 message processed"],
        config={"chunking": True},
        messages=[b"x"],
    ),
    Case(
        "bdat without mail",
        [E + b"BDAT 4\r\nabcdNOOP\r\n"],
        ["250 ", SEQ, "250 noop"],
        config={"chunking": True},
        check=no_event(DataChunk),
    ),
    Case(
        "bdat with no valid recipients",
        [E + M + R + b"BDAT 4 LAST\r\nabcdNOOP\r\n"],
        ["250 ", "250 ", "550 no", "554 no valid recipients", "250 noop"],
        config={"chunking": True},
        policy=reject(RcptTo, 550, "no"),
    ),
    Case(
        "bdat when chunking off",
        [E + M + R + b"BDAT 4\r\nabcdNOOP\r\n"],
        [*OK_TXN, "500 command unrecognized", "500 command unrecognized"],
    ),
    Case(
        "data after bdat",
        [E + M + R + b"BDAT 1\r\nx" + D + R],
        [*OK_TXN, "250 1 bytes received", SEQ, SEQ],
        config={"chunking": True},
    ),
    Case(
        "bdat bad syntax ends the transaction (upstream)",
        [E + M + R + b"BDAT x\r\nBDAT 0 LAST\r\n"],
        [*OK_TXN, "501 invalid argument", SEQ],
        config={"chunking": True},
        check=no_event(DataEnd),
    ),
    Case(
        "bdat bad syntax: the sequence is checked first (upstream)",
        [
            E
            + M
            + R
            + b"BDAT x\r\nBDAT 1 FIRST\r\nBDAT\r\n"
            + M
            + b"VRFY a\r\nNOOP\r\nRSET\r\n"
            + M
            + b"BDAT -1\r\n"
            + M
        ],
        [
            *OK_TXN,
            "501 ",
            SEQ,
            SEQ,
            SEQ,
            SEQ,
            "250 noop",
            "250 state reset",
            "250 ",
            "554 no valid recipients",
            "250 ",
        ],
        config={"chunking": True},
    ),
    Case(
        "bdat size limit",
        [E + M + R + b"BDAT 6\r\nabcdefBDAT 6 LAST\r\nghijklNOOP\r\n"],
        [*OK_TXN, "250 6 bytes received", "552 message size", "250 noop"],
        config={"chunking": True, "max_size": 5},
        check=lambda r: (
            r.aborted == [DataAborted(0, SIZE_TEXT), DataAborted(552, SIZE_TEXT)] and not r.messages
        ),
    ),
    Case(
        "bdat binarymime",
        [E + b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n" + R + b"BDAT 3 LAST\r\n\x00\xff\n"],
        ["250 ", "250 ", "250 ", "250 message processed"],
        config={"chunking": True},
        messages=[b"\x00\xff\n"],
    ),
    Case(
        "eof in bdat",
        [E + M + R + b"BDAT 10\r\nabc"],
        OK_TXN,
        config={"chunking": True},
        check=lambda r: r.events[-2:] == [DataAborted(0, "connection closed"), ConnectionClosed()],
    ),
    # --- VRFY
    Case(
        "vrfy",
        [b"VRFY <bob@x>\r\n"],
        ["252 2.1.5 cannot verify"],
        check=has_event(Vrfy("VRFY <bob@x>", "bob@x")),
    ),
    Case(
        "vrfy disabled",
        [b"VRFY bob\r\n"],
        ["252 cannot vrfy"],
        config={"vrfy": False},
        check=has_event(VrfyHidden("VRFY bob")),  # (not a Vrfy: the service only logs it)
    ),
    Case("vrfy missing", [b"VRFY\r\n"], ["550 invalid mailbox"]),
    # --- STARTTLS
    Case(
        "starttls injection",
        [E + b"STARTTLS\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n", TLS_UP, E + M],
        ["250 ", "220 ready to start tls", "250 ", "250 sender <alice@example.com> OK"],
        config={"starttls": True},
        check=lambda r: [ev.address for ev in r.events if isinstance(ev, MailFrom)] == ["alice@example.com"],
    ),
    Case(
        "after tls hello required again",
        [E + b"STARTTLS\r\n", TLS_UP, M],
        ["250 ", "220 ", "503 "],
        config={"starttls": True},
    ),
    Case("starttls not configured", [E + b"STARTTLS\r\n"], ["250 ", "500 command unrecognized"]),
    Case(
        "starttls twice",
        [E + b"STARTTLS\r\n", TLS_UP, E + b"STARTTLS\r\n"],
        ["250 ", "220 ", "250 ", SEQ],  # as upstream (with implicit TLS: 500, not offered)
        config={"starttls": True},
    ),
    Case(
        "starttls before hello",  # as upstream; after HELO it is taken
        [b"STARTTLS\r\nHELO c\r\nSTARTTLS\r\n"],
        [SEQ, "250 ", "220 "],
        config={"starttls": True},
    ),
    Case("starttls argument ignored", [E + b"STARTTLS x\r\n"], ["250 ", "220 "], config={"starttls": True}),
    Case(
        "starttls in transaction",
        [E + M + b"STARTTLS\r\n"],
        ["250 ", "250 ", "503 "],
        config={"starttls": True},
    ),
    Case(
        "starttls rejected",
        [E + b"STARTTLS\r\nNOOP\r\n"],
        ["250 ", "454 no tls", "250 noop"],
        config={"starttls": True},
        policy=reject(StartTls, 454, "no tls"),
    ),
    Case(
        "tls required",
        [E + M + b"AUTH PLAIN\r\nSTARTTLS\r\n", TLS_UP, E + M],
        [
            "250 ",
            "530 encryption required: use starttls",
            "530 encryption required: use starttls",
            "220 ",
            "250 ",
            "250 sender",
        ],
        config={"starttls": True, "tls_required": True, "auth_mechanisms": ("PLAIN",)},
    ),
    # --- AUTH
    Case(
        "auth plain initial response",
        [E + b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n" + M],
        ["250 ", "235 authentication successful", "250 sender"],
        config={"auth_mechanisms": ("PLAIN",), "auth_required": True},
        check=has_event(
            AuthStart("AUTH PLAIN [authentication response not logged]", "PLAIN", "AGFsaWNlAHNlY3JldA==")
        ),
    ),
    Case(
        "auth login challenges",
        [E + b"auth login\r\nYWxpY2U=\r\nc2VjcmV0\r\n" + M],
        ["250 ", "334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 authentication successful", "250 sender"],
        config={"auth_mechanisms": ("LOGIN",), "auth_required": True},
        policy=lambda ev: (
            ("challenge", "VXNlcm5hbWU6")
            if isinstance(ev, AuthStart)
            else ("challenge", "UGFzc3dvcmQ6")
            if isinstance(ev, AuthResponse) and ev.data == "YWxpY2U="
            else None
        ),
        check=has_event(AuthResponse("YWxpY2U=", "[authentication response not logged]")),
    ),
    Case(
        "auth cancelled",
        [E + b"AUTH LOGIN\r\n*\r\n" + M],
        ["250 ", "334 x", "501 authentication cancelled", "530 authentication required"],
        config={"auth_mechanisms": ("LOGIN",), "auth_required": True},
        policy=lambda ev: ("challenge", "x") if isinstance(ev, AuthStart) else None,
    ),
    Case(
        "auth failed",
        [E + b"AUTH PLAIN AAAA\r\n" + M],
        ["250 ", "535 authentication failed", "530 authentication required"],
        config={"auth_mechanisms": ("PLAIN",), "auth_required": True},
        policy=lambda ev: ("auth_fail",) if isinstance(ev, AuthStart) else None,
    ),
    Case(
        "auth twice",
        [E + b"AUTH PLAIN AAAA\r\nAUTH PLAIN AAAA\r\n"],
        ["250 ", "235 ", SEQ],
        config={"auth_mechanisms": ("PLAIN",)},
    ),
    Case(
        "auth in transaction",
        [E + M + b"AUTH PLAIN AAAA\r\n"],
        ["250 ", "250 ", "503 "],
        config={"auth_mechanisms": ("PLAIN",)},
    ),
    Case("auth before hello", [b"AUTH PLAIN AAAA\r\n"], ["503 "], config={"auth_mechanisms": ("PLAIN",)}),
    Case(
        "auth unknown mechanism",
        [E + b"AUTH CRAM-MD5\r\n"],
        ["250 ", "504 unsupported authentication mechanism"],
        config={"auth_mechanisms": ("PLAIN",)},
    ),
    Case("auth not configured", [E + b"AUTH PLAIN AAAA\r\n"], ["250 ", "502 "]),
    Case(
        "auth initial star",
        [E + b"AUTH PLAIN *\r\nAUTH PLAIN !!!\r\n"],
        ["250 ", "501 invalid argument", "501 invalid argument"],
        config={"auth_mechanisms": ("PLAIN",)},
    ),
    Case(
        "auth required",
        [E + M],
        ["250 ", "530 authentication required"],
        config={"auth_mechanisms": ("PLAIN",), "auth_required": True},
    ),
    Case(
        "auth ended by ehlo",  # as upstream: EHLO forgets the authentication, HELO and RSET do not
        [E + b"AUTH PLAIN AAAA\r\nRSET\r\nHELO c\r\n" + M + b"RSET\r\n" + E + M + b"AUTH PLAIN AAAA\r\n"],
        ["250 ", "235 ", "250 ", "250 ", "250 sender", "250 ", "250 ", "530 authentication required", "235 "],
        config={"auth_mechanisms": ("PLAIN",), "auth_required": True},
    ),
    Case(
        "auth initial response padding",  # upstream: padding may be left out, not half given
        [E + b"AUTH PLAIN AGFsaWNlAHNlY3JldA=\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA\r\n"],
        ["250 ", "501 invalid argument", "235 "],
        config={"auth_mechanisms": ("PLAIN",)},
        check=has_event(
            AuthStart("AUTH PLAIN [authentication response not logged]", "PLAIN", "AGFsaWNlAHNlY3JldA")
        ),
    ),
    Case(
        "auth words after the initial response",  # ignored, as upstream
        [E + b"AUTH PLAIN AGFs aWNlAHNlY3JldA==\r\n"],
        ["250 ", "235 "],
        config={"auth_mechanisms": ("PLAIN",)},
        check=has_event(AuthStart("AUTH PLAIN [authentication response not logged]", "PLAIN", "AGFs")),
    ),
    Case(
        "vrfy disabled before authentication",  # --anonymous=vrfy with --server-auth: as upstream
        [E + b"VRFY bob\r\n"],
        ["250 ", "252 cannot vrfy"],
        config={"vrfy": False, "auth_mechanisms": ("PLAIN",), "auth_required": True},
    ),
    Case(
        "over-long auth line not logged",
        [E + b"AUTH PLAIN " + b"A" * 600 + b"\r\nAUTH PLAIN AAAA\rAAAA\r\n"],
        ["250 ", "500 line too long", "501 invalid argument"],
        config={"auth_mechanisms": ("PLAIN",)},
        check=lambda r: (
            [ev.line for ev in r.events if isinstance(ev, ProtocolError)]
            == ["AUTH PLAIN [authentication response not logged]"] * 2
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conversation(case: Case) -> None:
    result = run3(ServerConfig(**case.config), case.packets, case.policy)
    replies = result.replies
    assert len(replies) == len(case.replies), replies
    for got, want in zip(replies, case.replies, strict=True):
        assert got.startswith(want), (got, want, replies)
    if case.messages is not None:
        assert result.messages == case.messages
    if case.check is not None:
        assert case.check(result) in (None, True)
    assert result.ended_with == ConnectionClosed() or isinstance(result.ended_with, ConnectionClosed)


# ------------------------------------------------------------ focused tests


def test_greeting() -> None:
    s = SmtpServer(ServerConfig(domain="vm"))
    s.greeting()
    assert s.data_to_send() == b"220 vm -- E-MailRelay V2.6 -- Service ready\r\n"
    s = SmtpServer(ServerConfig(domain="vm", anonymous=True))
    s.greeting()
    assert s.data_to_send() == b"220 greeting\r\n"


def ehlo_lines(config: ServerConfig, tls: bool = False) -> list[str]:
    packets: list[bytes | object] = [b"EHLO c\r\n"]
    if tls:
        packets = [b"EHLO c\r\nSTARTTLS\r\n", TLS_UP, b"EHLO c\r\n"]
    lines = run(config, packets, eof=False).out.decode().split("\r\n")[1:-1]
    return lines[lines.index("220 ready to start tls") + 1 :] if tls else lines


def test_ehlo_matches_upstream_log() -> None:
    config = ServerConfig(
        domain="vm", auth_mechanisms=("CRAM-SHA512", "CRAM-SHA256", "CRAM-SHA1", "CRAM-MD5", "PLAIN", "LOGIN")
    )
    assert ehlo_lines(config) == [
        "250-vm says hello",
        "250-AUTH CRAM-SHA512 CRAM-SHA256 CRAM-SHA1 CRAM-MD5 PLAIN LOGIN",
        "250-VRFY",
        "250-PIPELINING",
        "250 8BITMIME",
    ]


def test_ehlo_all_extensions() -> None:
    config = ServerConfig(
        domain="d", max_size=1000, chunking=True, smtputf8=True, starttls=True, auth_mechanisms=("PLAIN",)
    )
    assert ehlo_lines(config) == [
        "250-d says hello",
        "250-SIZE 1000",
        "250-AUTH PLAIN",
        "250-STARTTLS",
        "250-VRFY",
        "250-CHUNKING",
        "250-BINARYMIME",
        "250-PIPELINING",
        "250-SMTPUTF8",
        "250 8BITMIME",
    ]
    assert "250-STARTTLS" not in ehlo_lines(config, tls=True)


def test_ehlo_minimal_and_tls_required() -> None:
    config = ServerConfig(
        vrfy=False, pipelining=False, starttls=True, tls_required=True, auth_mechanisms=("PLAIN",)
    )
    assert ehlo_lines(config) == [
        "250-localhost says hello",
        "250-AUTH PLAIN",
        "250-STARTTLS",
        "250 8BITMIME",
    ]
    assert ehlo_lines(config, tls=True) == ["250-localhost says hello", "250-AUTH PLAIN", "250 8BITMIME"]


def test_pipelining_pauses_between_decisions() -> None:
    s = SmtpServer(ServerConfig())
    s.receive_data(E + M + R + D + b"body\r\n.\r\n" + Q)
    ev = s.next_event()
    assert isinstance(ev, Hello) and ev.name == "client.example.com" and ev.extended
    assert s.next_event() is PAUSED
    assert s.next_event() is PAUSED
    assert s.data_to_send() == b""
    s.accept()
    assert s.data_to_send().startswith(b"250-localhost says hello\r\n")
    ev = s.next_event()
    assert isinstance(ev, MailFrom) and ev.address == "alice@example.com"
    assert s.next_event() is PAUSED
    s.accept()
    assert s.in_transaction and s.recipient_count == 0
    assert isinstance(s.next_event(), RcptTo)
    s.accept("recipient <bob@example.net>  OK")
    assert s.recipient_count == 1
    assert isinstance(s.next_event(), DataStart)
    s.accept()
    assert s.next_event() == DataChunk(b"body\r\n")
    assert s.next_event() == DataEnd(".", 6)
    assert s.next_event() is PAUSED
    s.accept("2.0.0 OK id=1")
    assert not s.in_transaction
    assert s.next_event() == Quit("QUIT")
    assert s.next_event() == ConnectionClosed()
    assert s.next_event() == ConnectionClosed()
    assert s.data_to_send() == (
        b"250 sender <alice@example.com> OK\r\n"
        b"250 recipient <bob@example.net>  OK\r\n"
        b"354 start mail input -- end with <CRLF>.<CRLF>\r\n"
        b"250 2.0.0 OK id=1\r\n"
        b"221 OK\r\n"
    )
    s.receive_data(b"NOOP\r\n")  # ignored after close
    assert s.next_event() == ConnectionClosed()
    assert s.data_to_send() == b""


def test_one_chunk_event_per_receive() -> None:
    s = SmtpServer(ServerConfig())
    s.receive_data(E + M + R + D)
    for _ in range(4):
        assert s.next_event() is not PAUSED
        s.accept()
    body = b"".join(b"line %d of the message\r\n" % i for i in range(500))
    s.receive_data(body)
    ev = s.next_event()
    assert ev == DataChunk(body)
    assert s.next_event() is NEED_DATA
    s.receive_data(b"tail without end")
    assert s.next_event() is NEED_DATA
    s.receive_data(b"\r\n.")
    assert s.next_event() == DataChunk(b"tail without end\r\n")
    assert s.next_event() is NEED_DATA
    s.receive_data(b"\r\n")
    assert s.next_event() == DataEnd(".", len(body) + 18)


def test_buffer_is_bounded() -> None:
    s = SmtpServer(ServerConfig())
    for _ in range(200):
        s.receive_data(b"x" * 10_000)
        assert s.next_event() is NEED_DATA
        assert len(s._buf) - s._pos < 1_000
    s.receive_data(b"\r\nNOOP\r\n")
    ev = s.next_event()
    assert isinstance(ev, ProtocolError) and ev.code == 500 and ev.text == "line too long"
    assert s.next_event() == Noop("NOOP")
    # and in DATA
    s.receive_data(M + R + D)
    s.receive_data(b"")  # EOF arrives while the commands are still queued
    assert isinstance(s.next_event(), ProtocolError)  # MAIL before EHLO
    assert isinstance(s.next_event(), ProtocolError)
    assert isinstance(s.next_event(), ProtocolError)
    assert s.next_event() == ConnectionClosed()


def test_buffer_is_bounded_in_data() -> None:
    s = SmtpServer(ServerConfig())
    s.receive_data(E + M + R + D)
    for _ in range(4):
        s.next_event()
        s.accept()
    for _ in range(200):
        s.receive_data(b"\r.\n" * 3000)
        while s.next_event() is not NEED_DATA:
            pass
        assert len(s._buf) - s._pos < 1_000
    for _ in range(20):
        s.receive_data(b"y" * 50_000)
        assert s.next_event() is NEED_DATA
        assert len(s._buf) - s._pos < 1_000
    s.receive_data(b"\r\n.\r\nNOOP\r\n")
    assert s.next_event() == DataAborted(500, "line too long")
    assert s.next_event() == Noop("NOOP")


def test_starttls_discards_pipelined_bytes() -> None:
    s = SmtpServer(ServerConfig(starttls=True))
    s.receive_data(b"EHLO c\r\n")
    s.next_event()
    s.accept()
    s.data_to_send()
    s.receive_data(b"STARTTLS\r\nMAIL FROM:<x@y>\r\n")
    assert s.next_event() == StartTls("STARTTLS")
    s.accept()
    assert s.data_to_send() == b"220 ready to start tls\r\n"
    assert s.next_event() is PAUSED
    s.receive_data(b"\x16\x03\x01 handshake bytes fed by mistake\r\n")
    assert s.next_event() is PAUSED
    s.tls_established()
    assert s.next_event() is NEED_DATA
    assert not s.authenticated and not s.in_transaction
    s.receive_data(b"MAIL FROM:<a@b>\r\n")
    ev = s.next_event()
    assert isinstance(ev, ProtocolError) and ev.code == 503
    s.receive_data(b"EHLO c\r\n")
    s.next_event()
    s.accept()
    assert b"STARTTLS" not in s.data_to_send()


def test_eof_during_tls_wait() -> None:
    s = SmtpServer(ServerConfig(starttls=True))
    s.receive_data(b"EHLO c\r\n")
    s.next_event()
    s.accept()
    s.receive_data(b"STARTTLS\r\n")
    s.next_event()
    s.accept()
    assert s.next_event() is PAUSED
    s.receive_data(b"")
    assert s.peer_ended
    assert s.next_event() == ConnectionClosed()


def test_auth_state() -> None:
    s = SmtpServer(ServerConfig(auth_mechanisms=("PLAIN", "login")))
    s.receive_data(b"EHLO c\r\nAUTH login =\r\n")
    s.next_event()
    s.accept()
    ev = s.next_event()
    assert ev == AuthStart("AUTH login =", "LOGIN", "")  # "=" carries no credentials: logged as sent
    with pytest.raises(LocalProtocolError):
        s.accept()
    with pytest.raises(LocalProtocolError):
        s.reply(250, "x")
    s.challenge("VXNlcm5hbWU6")
    s.receive_data(b"dXNlcg==\r\n")
    assert s.next_event() == AuthResponse("dXNlcg==")
    assert s.next_event() is PAUSED
    s.auth_succeeded()
    assert s.authenticated
    out = s.data_to_send()
    assert out.endswith(b"334 VXNlcm5hbWU6\r\n235 authentication successful\r\n")


def test_auth_response_limits() -> None:
    s = SmtpServer(ServerConfig(auth_mechanisms=("XOAUTH2",)))
    s.receive_data(b"EHLO c\r\nAUTH XOAUTH2\r\n")
    s.next_event()
    s.accept()
    s.next_event()
    s.challenge("")
    token = b"A" * 5000
    s.receive_data(token + b"\r\n")
    assert s.next_event() == AuthResponse(token.decode())
    s.challenge("")
    s.receive_data(b"A" * 20000 + b"\r\nNOOP\r\n")
    ev = s.next_event()
    assert isinstance(ev, ProtocolError) and ev.text == "line too long"
    assert s.next_event() == Noop("NOOP")
    assert not s.authenticated


def test_misuse_raises() -> None:
    s = SmtpServer(ServerConfig())
    for call in (s.accept, lambda: s.reject(550, "x"), lambda: s.reply(250, "x"), lambda: s.challenge("x")):
        with pytest.raises(LocalProtocolError):
            call()
    with pytest.raises(LocalProtocolError):
        s.auth_succeeded()
    with pytest.raises(LocalProtocolError):
        s.tls_established()
    s.receive_data(b"HELO x\r\n")
    s.next_event()
    with pytest.raises(LocalProtocolError):
        s.reject(250, "not an error")
    with pytest.raises(LocalProtocolError):
        s.reply(250, "not a vrfy")
    s.accept()
    s.receive_data(b"")
    s.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError):
        s.receive_data(b"more")


def test_multiline_reject_and_properties() -> None:
    s = SmtpServer(ServerConfig())
    assert not s.peer_ended and not s.authenticated and not s.in_transaction and s.recipient_count == 0
    s.receive_data(b"HELO x\r\n")
    s.next_event()
    s.reject(550, "first\nsecond")
    assert s.data_to_send() == b"550-first\r\n550 second\r\n"


def test_rset_event_in_transaction() -> None:
    r = run(ServerConfig(), [E + M + R + b"RSET\r\n"])
    assert Rset("RSET") in r.events
    assert r.events[-1] == ConnectionClosed()
    assert DataAborted(0, "connection closed") not in r.events


def test_event_line_is_the_clients_text() -> None:
    """UTF-8 lines as sent (logged as upstream logs them), anything else byte for byte as latin-1."""
    r = run(ServerConfig(), [b"\xff\xfe bogus\r\n"])
    assert r.events[0] == ProtocolError("\xff\xfe bogus", 500, "command unrecognized")
    r = run(ServerConfig(), [b"EHLO c\r\n", "MAIL FROM:<\u00fc@x>\r\n".encode()])
    mail = next(ev for ev in r.events if isinstance(ev, MailFrom))
    assert mail.line == "MAIL FROM:<\u00fc@x>"
    assert mail.address == "\u00fc@x"


def test_dataclass_replace_works() -> None:
    # events are plain frozen dataclasses
    assert replace(Noop("NOOP"), line="noop") == Noop("noop")


def test_received_date_day_has_no_leading_zero() -> None:
    """As E-MailRelay 2.6b writes the ``Received:`` line's date: ``Mon, 7 Dec 2026 ...``."""
    from emailrelay.services.smtpd import received_date

    date = received_date(1796644800.0)  # 2026-12-07 12:00 UTC: the 7th or 8th in any zone
    assert re.fullmatch(r"(Mon|Tue), [78] Dec 2026 \d\d:\d\d:\d\d [+-]\d{4}", date), date


@pytest.mark.parametrize(
    "zone", ["UTC", "America/St_Johns", "Asia/Kolkata", "Pacific/Chatham", "America/Los_Angeles"]
)
def test_received_date_is_rfc5322_local_time_in_every_zone(
    zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smtp role writes the date itself (no email package): the same text as email.utils'
    local-time RFC 5322 date, less the day's leading zero, for whole and fractional times, in zones
    with half-hour, quarter-hour, negative and daylight-saving offsets."""
    import email.utils
    import random
    import time

    from emailrelay.services.smtpd import received_date

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        rng = random.Random(zone)
        edges = [1796644799.9999996, 1796644799.9999994, 1767225599.9999999]  # rounded as datetime rounds
        for i in range(3000):
            when = rng.uniform(0, 2.1e9) if i % 2 else float(rng.randint(0, 2_100_000_000))
            when = edges[i] if i < len(edges) else when
            expected = re.sub(r"^(\w{3}, )0", r"\1", email.utils.formatdate(when, localtime=True))
            assert received_date(when) == expected, when
    finally:
        monkeypatch.undo()
        time.tzset()
