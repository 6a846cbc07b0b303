"""The sans-IO POP3 server: whole conversations fed whole, line by line and byte by byte."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from emailrelay.protocol import pop3_server as pp
from emailrelay.protocol.pop3_server import (
    NEED_DATA,
    PAUSED,
    Apop,
    AuthResponse,
    AuthStart,
    ByteStuffer,
    ConnectionClosed,
    LocalProtocolError,
    Pass,
    Phase,
    Pop3Server,
    PopConfig,
    ProtocolError,
    Retrieve,
    Stls,
    Update,
)

STAMP = "<1234.1795611819@vm>"
MESSAGES = [(20, "emailrelay.1.100.1.content"), (7, "emailrelay.1.100.2.content")]
CONTENT = {1: b"Subject: a\r\n\r\nhello\r\n", 2: b".x\r\nyz\r\n"}
GREETING = f"+OK POP3 server ready {STAMP}\r\n".encode()
CAPA = b"+OK capability list follows\r\nUSER\r\nCAPA\r\nTOP\r\nUIDL\r\nSASL CRAM-MD5 PLAIN LOGIN\r\n.\r\n"


class Driver:
    """Feeds input in pieces and answers decisions with a simple policy."""

    def __init__(self, config: PopConfig | None = None, password: bytes = b"secret") -> None:
        self.pop = Pop3Server(config or PopConfig(timestamp=STAMP, mechanisms=("CRAM-MD5", "PLAIN", "LOGIN")))
        self.password = password
        self.events: list[Any] = []
        self.out = b""
        self.closed = False
        self.updates: list[tuple[int, ...]] = []
        self.pop.greeting()
        self.out += self.pop.data_to_send()

    def decide(self, ev: Any) -> None:
        p = self.pop
        if isinstance(ev, Pass):
            if ev.password == self.password:
                p.login(MESSAGES)
            else:
                p.login_failed()
        elif isinstance(ev, Apop):
            p.login(MESSAGES) if ev.digest == "0" * 32 else p.login_failed()
        elif isinstance(ev, AuthStart):
            p.challenge("Y2hhbGxlbmdl")
        elif isinstance(ev, AuthResponse):
            p.login(MESSAGES) if ev.response == "b2s=" else p.login_failed()
        elif isinstance(ev, Stls):
            p.accept_stls()
            self.out += p.data_to_send()
            p.tls_established()
        elif isinstance(ev, Retrieve):
            stuffer = p.accept_retrieve()
            self.out += p.data_to_send()
            self.out += stuffer.feed(CONTENT[ev.number]) + stuffer.finish()
            p.retrieve_done()
        elif isinstance(ev, Update):
            self.updates.append(ev.deleted)
            p.update_done()

    def feed(self, data: bytes) -> None:
        self.pop.receive_data(data)
        self.run()

    def run(self) -> None:
        while True:
            ev = self.pop.next_event()
            if ev is NEED_DATA:
                break
            assert ev is not PAUSED, "the driver resolves every decision at once"
            self.events.append(ev)
            if isinstance(ev, ConnectionClosed):
                self.closed = True
                break
            self.decide(ev)
        self.out += self.pop.data_to_send()


def split_whole(data: bytes) -> list[bytes]:
    return [data]


def split_lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


SPLITS = [split_whole, split_lines, split_bytes]


def converse(data: bytes, split: Callable[[bytes], list[bytes]], **kw: Any) -> Driver:
    d = Driver(**kw)
    for piece in split(data):
        d.feed(piece)
    return d


# (name, input, expected output after the greeting, whether closed)
CONVERSATIONS = [
    (
        "upstream fixture",
        b"CAPA\r\nUSER me\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nQUIT\r\n",
        CAPA
        + b"+OK user: me\r\n+OK\r\n+OK 2 27\r\n+OK 2 message(s)\r\n1 20\r\n2 7\r\n.\r\n"
        + b"+OK 2 message(s)\r\n1 emailrelay.1.100.1.content\r\n2 emailrelay.1.100.2.content\r\n.\r\n"
        + b"+OK 20 octets\r\nSubject: a\r\n\r\nhello\r\n.\r\n+OK signing off\r\n",
        True,
    ),
    (
        "list and uidl one, stuffing",
        b"USER me\r\nPASS secret\r\nLIST 2\r\nUIDL 1\r\nRETR 2\r\nLIST 3\r\nLIST x\r\nQUIT\r\n",
        b"+OK user: me\r\n+OK\r\n+OK 2 7\r\n+OK 1 emailrelay.1.100.1.content\r\n"
        b"+OK 7 octets\r\n..x\r\nyz\r\n.\r\n-ERR invalid id\r\n-ERR invalid id\r\n"
        b"+OK signing off\r\n",
        True,
    ),
    (
        "dele rset dele quit",
        b"USER me\r\nPASS secret\r\nDELE 1\r\nDELE 1\r\nSTAT\r\nLIST\r\nRETR 1\r\nRSET\r\nSTAT\r\nDELE 2\r\nQUIT\r\n",
        b"+OK user: me\r\n+OK\r\n+OK\r\n-ERR\r\n+OK 1 7\r\n"
        b"+OK 1 message(s)\r\n2 7\r\n.\r\n-ERR\r\n+OK\r\n+OK 2 27\r\n+OK\r\n"
        b"+OK signing off\r\n",
        True,
    ),
    (
        "top",
        b"USER me\r\nPASS secret\r\nTOP 1 0\r\nTOP 1\r\nTOP 1 x\r\nNOOP\r\n",
        b"+OK user: me\r\n+OK\r\n+OK\r\nSubject: a\r\n\r\n.\r\n-ERR\r\n-ERR\r\n+OK\r\n",
        False,
    ),
    (
        "wrong password then right",  # the USER still holds after a wrong PASS, as upstream's
        b"USER me\r\nPASS nope\r\nPASS secret\r\nSTAT\r\n",
        b"+OK user: me\r\n-ERR\r\n+OK\r\n+OK 2 27\r\n",
        False,
    ),
    (
        "wrong state",
        b"STAT\r\nRETR 1\r\nNOOP\r\nUSER me\r\nPASS secret\r\nUSER me\r\nAPOP me x\r\nSTLS\r\n",
        b"-ERR\r\n-ERR\r\n-ERR\r\n+OK user: me\r\n+OK\r\n-ERR\r\n-ERR\r\n-ERR\r\n",
        False,
    ),
    (
        "unknown commands and case",
        b"HELO x\r\n\r\nuser me\r\npass secret\r\nstat\r\n",
        b"-ERR\r\n-ERR\r\n+OK user: me\r\n+OK\r\n+OK 2 27\r\n",
        False,
    ),
    (
        "apop",
        b"APOP me 00000000000000000000000000000000\r\nSTAT\r\n",
        b"+OK\r\n+OK 2 27\r\n",
        False,
    ),
    (
        "apop bad",
        b"APOP me\r\nAPOP me abc\r\nQUIT\r\n",
        b"-ERR\r\n-ERR\r\n+OK signing off\r\n",
        True,
    ),
    (
        "auth",
        b"AUTH\r\nAUTH X\r\nAUTH CRAM-MD5\r\nbad\r\nAUTH PLAIN\r\nb2s=\r\nSTAT\r\n",
        b"+OK\r\nCRAM-MD5\r\nPLAIN\r\nLOGIN\r\n.\r\n-ERR invalid mechanism\r\n"
        b"+ Y2hhbGxlbmdl\r\n-ERR\r\n+ Y2hhbGxlbmdl\r\n+OK\r\n+OK 2 27\r\n",
        False,
    ),
    (
        "bare LF lines",
        b"USER me\nPASS secret\nSTAT\n",
        b"+OK user: me\r\n+OK\r\n+OK 2 27\r\n",
        False,
    ),
    (
        "quit before login deletes nothing",
        b"USER me\r\nQUIT\r\nNOOP\r\n",
        b"+OK user: me\r\n+OK signing off\r\n",
        True,
    ),
    (
        "long line",
        b"USER " + b"x" * 300 + b"\r\nUSER me\r\n" + b"NOOP" * 100 + b"\r\nPASS secret\r\nSTAT\r\n",
        b"-ERR line too long\r\n+OK user: me\r\n-ERR line too long\r\n+OK\r\n+OK 2 27\r\n",
        False,
    ),
]


@pytest.mark.parametrize("split", SPLITS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("name", "data", "expected", "closed"), CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS]
)
def test_conversation(
    name: str, data: bytes, expected: bytes, closed: bool, split: Callable[[bytes], list[bytes]]
) -> None:
    d = converse(data, split)
    assert d.out == GREETING + expected
    assert d.closed is closed


def test_line_limit_is_255_including_crlf() -> None:
    ok = b"USER " + b"u" * (255 - 7) + b"\r\n"
    assert len(ok) == 255
    d = converse(ok + b"USER " + b"u" * (256 - 7) + b"\r\n", split_whole)
    lines = d.out.split(b"\r\n")
    assert lines[1].startswith(b"+OK user: u")
    assert lines[2] == b"-ERR line too long"


def test_update_gets_marked_messages_only_at_quit() -> None:
    d = converse(b"USER me\r\nPASS secret\r\nDELE 2\r\nDELE 1\r\n", split_whole)
    assert d.updates == [] and d.pop.deleted == (1, 2)
    d.feed(b"QUIT\r\n")
    assert d.updates == [(1, 2)]
    assert d.closed


def test_eof_in_transaction_is_no_update() -> None:
    d = converse(b"USER me\r\nPASS secret\r\nDELE 1\r\n", split_whole)
    d.pop.receive_data(b"")
    d.run()
    assert d.closed and d.updates == []


def test_capa_lists_stls_before_sasl_also_after_tls() -> None:
    """E-MailRelay 2.6b's CAPA: STLS before SASL, still listed once TLS is up; a bare ``+OK`` to
    STLS and nothing more after the handshake."""
    cfg = PopConfig(
        timestamp=STAMP, stls=True, mechanisms=("CRAM-MD5",), mechanisms_tls=("CRAM-MD5", "PLAIN")
    )
    d = Driver(cfg)
    d.feed(b"CAPA\r\n")
    assert b"UIDL\r\nSTLS\r\nSASL CRAM-MD5\r\n.\r\n" in d.out
    d.out = b""
    d.feed(b"STLS\r\nCAPA\r\n")
    assert d.out == b"+OK\r\n"  # the pipelined CAPA was plaintext: dropped
    d.feed(b"CAPA\r\n")
    assert (
        d.out
        == b"+OK\r\n+OK capability list follows\r\nUSER\r\nCAPA\r\nTOP\r\nUIDL\r\nSTLS\r\nSASL CRAM-MD5 PLAIN\r\n.\r\n"
    )
    d.out = b""
    d.feed(b"STLS\r\n")
    assert d.out == b"-ERR\r\n"


def test_stls_discards_plaintext_sent_after_it() -> None:
    pop = Pop3Server(PopConfig(timestamp=STAMP, stls=True))
    pop.greeting()
    pop.receive_data(b"STLS\r\nUSER evil\r\n")
    ev = pop.next_event()
    assert isinstance(ev, Stls)
    pop.accept_stls()
    pop.receive_data(b"PASS injected\r\n")  # still plaintext: ignored
    assert pop.next_event() is PAUSED
    pop.tls_established()
    assert pop.next_event() is NEED_DATA
    pop.receive_data(b"USER me\r\n")
    ev = pop.next_event()
    assert isinstance(ev, pp.User) and ev.name == "me"


def test_stls_not_available_or_after_tls() -> None:
    d = converse(b"STLS\r\n", split_whole)
    assert d.out.endswith(b"-ERR\r\n")
    d = Driver(PopConfig(timestamp=STAMP, stls=True, secure=True))
    d.feed(b"STLS\r\nCAPA\r\n")
    assert b"-ERR\r\n" in d.out and b"STLS\r\n." not in d.out


def test_tls_required_blocks_authentication() -> None:
    d = Driver(PopConfig(timestamp=STAMP, stls=True, tls_required=True, mechanisms=("PLAIN",)))
    d.feed(b"USER me\r\nAPOP me x\r\nAUTH PLAIN\r\nCAPA\r\n")
    assert d.out.count(b"-ERR must use STLS first") == 3
    d.feed(b"STLS\r\n")
    d.feed(b"USER me\r\n")
    assert d.out.endswith(b"+OK\r\n+OK user: me\r\n")


def test_pass_keeps_raw_password_bytes_and_is_redacted() -> None:
    pop = Pop3Server(PopConfig())
    pop.receive_data(b"USER me\r\nPASS p\xe4ss word\r\n")
    assert isinstance(pop.next_event(), pp.User)
    ev = pop.next_event()
    assert isinstance(ev, Pass)
    assert ev.password == b"p\xe4ss word"
    assert ev.line == "PASS [password not logged]"


def test_auth_initial_response_is_redacted() -> None:
    pop = Pop3Server(PopConfig(mechanisms=("PLAIN",)))
    pop.receive_data(b"AUTH PLAIN AG1lAHNlY3JldA==\r\n")
    ev = pop.next_event()
    assert isinstance(ev, AuthStart)
    assert ev.initial == "AG1lAHNlY3JldA==" and "AG1l" not in ev.line
    pop.challenge("")
    pop.receive_data(b"c2VjcmV0\r\n")
    ev = pop.next_event()
    assert isinstance(ev, AuthResponse) and ev.response == "c2VjcmV0" and "c2Vj" not in ev.line


def test_auth_equals_is_no_initial_response() -> None:
    """As E-MailRelay 2.6b's POP server: ``AUTH PLAIN =`` is ``AUTH PLAIN`` (a differential probe)."""
    pop = Pop3Server(PopConfig(mechanisms=("PLAIN",)))
    pop.receive_data(b"AUTH plain =\r\n")
    ev = pop.next_event()
    assert isinstance(ev, AuthStart) and ev.mechanism == "PLAIN" and ev.initial is None


def test_decisions_pause_pipelined_input() -> None:
    pop = Pop3Server(PopConfig())
    pop.receive_data(b"USER me\r\nPASS x\r\nSTAT\r\n")
    assert isinstance(pop.next_event(), pp.User)
    assert isinstance(pop.next_event(), Pass)
    assert pop.next_event() is PAUSED
    pop.login([(5, "u")])
    assert isinstance(pop.next_event(), pp.Stat)
    assert pop.data_to_send().endswith(b"+OK\r\n+OK 1 5\r\n")


def test_login_failed_close_ends_session() -> None:
    pop = Pop3Server(PopConfig())
    pop.receive_data(b"USER me\r\nPASS x\r\nUSER me\r\n")
    pop.next_event()
    pop.next_event()
    pop.login_failed(close=True)
    assert isinstance(pop.next_event(), ConnectionClosed)
    assert pop.data_to_send() == b"+OK user: me\r\n-ERR\r\n"


def test_too_many_errors_close() -> None:
    d = converse(b"X\r\n" * 20, split_whole)
    assert d.closed
    assert d.out.count(b"-ERR\r\n") == 10
    assert d.out.endswith(b"-ERR too many errors\r\n")


def test_retrieve_reject_and_size_override() -> None:
    pop = Pop3Server(PopConfig())
    pop.receive_data(b"USER me\r\nPASS x\r\nRETR 1\r\nRETR 1\r\n")
    pop.next_event()
    pop.next_event()
    pop.login([(5, "u")])
    assert isinstance(pop.next_event(), Retrieve)
    pop.reject("message no longer available")
    assert isinstance(pop.next_event(), Retrieve)
    pop.accept_retrieve(9)
    assert pop.data_to_send().endswith(b"-ERR message no longer available\r\n+OK 9 octets\r\n")
    assert pop.next_event() is PAUSED
    with pytest.raises(LocalProtocolError):
        pop.reject("too late")
    pop.retrieve_done()
    assert pop.next_event() is NEED_DATA


def test_misuse_raises_local_protocol_error() -> None:
    pop = Pop3Server(PopConfig())
    for call in (
        lambda: pop.login([]),
        pop.retrieve_done,
        pop.update_done,
        pop.accept_stls,
        pop.tls_established,
    ):
        with pytest.raises(LocalProtocolError):
            call()
    pop.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        pop.receive_data(b"x")


def test_update_failure_reply() -> None:
    pop = Pop3Server(PopConfig())
    pop.receive_data(b"USER me\r\nPASS x\r\nQUIT\r\n")
    pop.next_event()
    pop.next_event()
    pop.login([])
    ev = pop.next_event()
    assert isinstance(ev, Update) and ev.deleted == ()
    assert pop.phase is Phase.UPDATE
    pop.update_done(ok=False)
    assert pop.data_to_send().endswith(b"-ERR some deleted messages not removed\r\n")
    assert isinstance(pop.next_event(), ConnectionClosed)


def test_protocol_error_events_carry_the_reply() -> None:
    pop = Pop3Server(PopConfig())
    pop.receive_data(b"BOGUS 1\r\n")
    ev = pop.next_event()
    assert isinstance(ev, ProtocolError) and ev.reply == "-ERR" and ev.line == "BOGUS 1"


# ---------------------------------------------------------------- ByteStuffer


def stuff(content: bytes, pieces: int | None = None, top: int | None = None) -> bytes:
    s = ByteStuffer(top)
    out = b""
    if pieces is None:
        out += s.feed(content)
    else:
        step = max(1, pieces)
        for i in range(0, len(content), step):
            out += s.feed(content[i : i + step])
    return out + s.finish()


STUFFING = [
    (b"", b".\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"..x\r\n", b"...x\r\n.\r\n"),
    (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),  # a bare LF is sent as CRLF: the end is always CRLF . CRLF
    (b"a\r.b\r\n", b"a\r.b\r\n.\r\n"),
    (b"x.y\r\n.", b"x.y\r\n..\r\n.\r\n"),
]


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7])
@pytest.mark.parametrize(("content", "expected"), STUFFING)
def test_byte_stuffing(content: bytes, expected: bytes, step: int | None) -> None:
    assert stuff(content, step) == expected


TOPS = [
    (b"H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\nb3\r\n", 0, b"H: 1\r\nH: 2\r\n\r\n.\r\n"),
    (b"H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\nb3\r\n", 2, b"H: 1\r\nH: 2\r\n\r\nb1\r\nb2\r\n.\r\n"),
    (b"H: 1\r\n\r\n.b1\r\nb2\r\n", 5, b"H: 1\r\n\r\n..b1\r\nb2\r\n.\r\n"),
    (b"H: 1\r\nH: 2\r\n", 3, b"H: 1\r\nH: 2\r\n.\r\n"),
    (b"\r\nbody\r\nmore\r\n", 1, b"\r\nbody\r\n.\r\n"),
    (b"H: 1\n\nb1\nb2\n", 1, b"H: 1\r\n\r\nb1\r\n.\r\n"),
    (b"H: \r\r\n\r\nb\r\n", 0, b"H: \r\r\n\r\n.\r\n"),
    (b"H: 1\r\n\r\nb1", 4, b"H: 1\r\n\r\nb1\r\n.\r\n"),
]


@pytest.mark.parametrize("step", [None, 1, 2, 5])
@pytest.mark.parametrize(("content", "lines", "expected"), TOPS)
def test_top_selection(content: bytes, lines: int, expected: bytes, step: int | None) -> None:
    assert stuff(content, step, top=lines) == expected


def test_top_done_lets_the_reader_stop() -> None:
    s = ByteStuffer(1)
    s.feed(b"H: 1\r\n\r\nline1\r\nline2\r\n")
    assert s.done
    assert s.feed(b"more\r\n") == b""


def test_line_count_for_the_log() -> None:
    s = ByteStuffer()
    s.feed(b"Subject: x\r\n\r\nhello")
    s.finish()
    assert s.lines == 3
