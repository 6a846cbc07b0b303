"""emailrelay.protocol.smtp_server -- sans-IO SMTP server state machine.

PURPOSE
    The server side of SMTP (RFC 5321) with the ESMTP extensions E-MailRelay
    2.6 offers: PIPELINING, SIZE, 8BITMIME, AUTH, STARTTLS, CHUNKING/BDAT,
    BINARYMIME, SMTPUTF8, VRFY.  It turns received bytes into events and the
    service's decisions into reply bytes.  It does no I/O, keeps no clock,
    touches no file and logs nothing; the asyncio layer moves the bytes,
    the service decides (verifiers, AUTH secrets, spool).

USAGE
        server = SmtpServer(ServerConfig(domain="mx.example.com"))
        server.greeting()
        send(server.data_to_send())
        on bytes (b"" on EOF):
            server.receive_data(data)
            while (event := server.next_event()) is not NEED_DATA:
                if event is PAUSED: wait for TLS, or stop reading; continue later
                elif isinstance(event, ConnectionClosed): close; break
                else: handle; if it needs a decision call accept()/reject()/...
            send(server.data_to_send())

    Events needing a decision (the machine returns PAUSED until it is made):
    Hello, MailFrom, RcptTo, DataStart, DataEnd, Vrfy (accept/reject/reply),
    StartTls (accept/reject, then PAUSED until tls_established()),
    AuthStart/AuthResponse (challenge/auth_succeeded/auth_failed, or reject).
    Every other event is informational; its reply (if any) is already queued.

EXPECTS
    * Decisions are made in event order: a decision for event k before
      next_event() can return event k+1 (PAUSED in between).
    * The service stops reading from the socket while PAUSED: input is only
      parsed (and bounded) when next_event() runs.
    * After accepting StartTls the service feeds only decrypted bytes, and
      only after tls_established().

GUARANTEES
    * Peer input never raises; every complete command line gets exactly one
      reply until the session's max_errors-th protocol error (a 500 or 503
      reply; others neither count nor reset the count): after its reply the
      connection is closed (too_many_errors), as E-MailRelay 2.6b does after 8.
      LocalProtocolError is raised only for service misuse.
    * Replies are queued in command order; pipelined commands are handled
      one at a time.
    * A command line ends only at CRLF, as E-MailRelay 2.6b's: a bare LF or
      CR is part of the line, so what follows it is never a command of its
      own (one reply per CRLF-ended line).  Such a line's verb or argument
      holds the control character: a verb is then unrecognized (500), a MAIL
      or RCPT line with a NUL, CR or LF anywhere is refused (553/550 "invalid
      character in mailbox name"), a HELO/EHLO name or VRFY address with a
      control character too (501/550).  A TLS ClientHello record where a
      command line belongs is answered (500) once it is complete, not kept
      waiting for a CRLF.
    * Command lines are limited to 512 octets including CRLF (AUTH responses
      to 12288); longer lines are discarded up to the next CRLF without being
      buffered and answered "500 line too long".
    * Only CRLF "." CRLF ends DATA (the "." line must follow a CRLF, or be
      the very first line of the content); LF.LF, CR.CR, CRLF.LF, LF.CRLF and
      CR.CRLF never do, so nothing after them is ever read as a command.
    * STARTTLS: bytes received after the STARTTLS line are discarded when it
      is accepted (CVE-2011-0411); tls_established() resets the session.
    * Before ConnectionClosed, DataAborted(0, "connection closed") is emitted
      if a mail transaction (accepted MAIL) is open, so the service can delete
      what it stored.  After ConnectionClosed further input is ignored and
      next_event() keeps returning ConnectionClosed.

DATA CONTENT POLICY (DataChunk bytes)
    * A line is any run of bytes ending in LF.  A line ending in CRLF is
      stored as is; a line ending in a bare LF is stored with CRLF (the CR is
      added: "normalised").  A bare CR not followed by LF is content.  NUL and
      all other bytes are content.
    * Dot-unstuffing applies only to a line that begins after a CRLF (or is
      the first line): its first "." is removed.  A line that begins after a
      bare LF is stored untouched (apart from its own line ending), so
      "\\n.\\n" stores "\\r\\n.\\r\\n" and "\\n..\\r\\n" keeps both dots.
    * A line that begins after a CRLF and is exactly ".\\r\\n" ends the data;
      ".\\n" in that position is an ordinary dot-stuffed line and stores as
      "\\r\\n" (unstuffed "" plus normalised line end).
    * A line longer than 1000 octets including its CRLF (counted as received,
      a bare-LF line counting the CR it gets) fails the message (500 line too long); reaching max_size (counted on the
      stored, unstuffed and normalised bytes plus what the service adds, see count_added(), as E-MailRelay
      2.6b: a total equal to the limit fails too) fails it with 552.  A failed
      message is consumed to its end without further DataChunk events and
      then reported as DataAborted with the reply already queued.
    * BDAT chunks are delivered raw (no unstuffing, normalising or line
      limits); max_size applies to their total.  A message that goes over it
      is DataAborted(0, ...) at once (the service drops what it stored) and
      gets no further DataChunk; its later chunks are read, dropped and
      answered "250 N bytes received" as before, and the last one (BDAT ...
      LAST) gets the 552 (DataAborted(552, ...)), as E-MailRelay 2.6b
      answers them: no 503 for each chunk a pipelining client still sends.

PERFORMANCE
    DATA content is handled a receive_data() call at a time with a few C-level
    passes (one regex scan for CRLF ".", memrchr hops for the line limit, two
    counts for bare LFs, replace() only when needed); no Python loop runs per
    byte or per line.  A DataChunk is one event per call, not per line.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from emailrelay.protocol.addresses import (
    PathSyntaxError,
    parse_mail_from,
    parse_rcpt_to,
    xtext_normalise,
)
from emailrelay.protocol.line_buffer import LineBuffer, LocalProtocolError
from emailrelay.protocol.sasl import b64decode_strict
from emailrelay.protocol.wire_octets import encode_line

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthResponse",
    "AuthStart",
    "Bdat",
    "ChunkReceived",
    "ConnectionClosed",
    "DataAborted",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Event",
    "Hello",
    "Help",
    "LocalProtocolError",
    "MailFrom",
    "Noop",
    "Phase",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "Rset",
    "ServerConfig",
    "Signal",
    "SmtpServer",
    "StartTls",
    "Vrfy",
]

COMMAND_LINE_LIMIT = 512  # octets including CRLF (RFC 5321 4.5.3.1.4)
AUTH_LINE_LIMIT = 12288  # RFC 4954 section 4
TEXT_LINE_LIMIT = 1000  # octets including CRLF (RFC 5321 4.5.3.1.6)
_LOG_HEAD = 100  # how much of a discarded over-long line is kept for logging


@dataclass(frozen=True)
class ServerConfig:
    domain: str = "localhost"
    anonymous: bool = False
    max_size: int = 0
    max_recipients: int = 100
    max_errors: int = 8
    pipelining: bool = True
    chunking: bool = False
    smtputf8: bool = False  # offered in the EHLO reply (and the MAIL parameter honoured)
    smtputf8_strict: bool = False  # non-ASCII addresses need MAIL's SMTPUTF8, honoured though not offered
    strict_parsing: bool = True
    vrfy: bool = True
    auth_mechanisms: tuple[str, ...] = ()
    # offered only once encrypted (before that: AUTH gets 504, ": use starttls" when STARTTLS is offered)
    auth_mechanisms_tls: tuple[str, ...] = ()
    auth_required: bool = False
    starttls: bool = False
    tls_required: bool = False
    product: str = "E-MailRelay V2.6"
    disabled: bool = False  # the admin's "smtp disable" at connection: 421 greeting, 421 to MAIL


class Signal(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


# --------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of everything next_event() returns apart from the signals."""


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """HELO/EHLO. Accepting it ends any open transaction (check in_transaction first)."""

    line: str
    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    line: str
    address: str
    body: str | None = None
    size: int | None = None
    smtputf8: bool = False
    auth: str | None = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    line: str
    address: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DataStart(Event):
    line: str


@dataclass(frozen=True, slots=True)
class Bdat(Event):
    """A BDAT command in a transaction (informational: its octets follow as DataChunk events)."""

    line: str


@dataclass(frozen=True, slots=True)
class ChunkReceived(Event):
    """A BDAT chunk that is not the last one, all read (informational: its ``250 N bytes received``
    is queued, so the service logs that reply before the next chunk's command line)."""

    size: int


@dataclass(frozen=True, slots=True)
class DataChunk(Event):
    data: bytes


@dataclass(frozen=True, slots=True)
class DataEnd(Event):
    line: str
    size: int


@dataclass(frozen=True, slots=True)
class DataAborted(Event):
    """The message failed (its reply is queued) or, with code 0, will fail (over max_size in BDAT:
    the 552 comes with the last chunk) or the connection closed: what was stored goes."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Vrfy(Event):
    line: str
    address: str


@dataclass(frozen=True, slots=True)
class AuthStart(Event):
    """AUTH; mechanism upper-cased; initial_response raw base64, "" for "=", None if absent."""

    line: str
    mechanism: str
    initial_response: str | None


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    data: str
    line: str = "[authentication response not logged]"


@dataclass(frozen=True, slots=True)
class StartTls(Event):
    line: str


@dataclass(frozen=True, slots=True)
class Quit(Event):
    line: str


@dataclass(frozen=True, slots=True)
class Rset(Event):
    line: str


@dataclass(frozen=True, slots=True)
class Noop(Event):
    line: str


@dataclass(frozen=True, slots=True)
class Help(Event):
    line: str


@dataclass(frozen=True, slots=True)
class VrfyHidden(Event):
    """A VRFY answered ``252 cannot vrfy`` under ``--anonymous=vrfy`` (informational: still logged)."""

    line: str


@dataclass(frozen=True, slots=True)
class ProtocolError(Event):
    line: str
    code: int
    text: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    pass


_DECISIONS = (Hello, MailFrom, RcptTo, DataStart, DataEnd, Vrfy, AuthStart, AuthResponse, StartTls)


# ------------------------------------------------------------------ the tables


class Phase(enum.Enum):
    NO_HELLO = "no-hello"  # connected (or just after TLS), no HELO/EHLO yet
    IDLE = "idle"  # greeted, no transaction
    MAIL = "mail"  # MAIL accepted: RCPT, DATA, BDAT
    DATA = "data"  # reading DATA content
    BDAT = "bdat"  # reading BDAT octets
    AUTH = "auth"  # a 334 challenge was sent; the next line is the response
    TLS = "tls"  # STARTTLS accepted; waiting for tls_established()
    STUCK = "stuck"  # after a BDAT with a bad argument, as upstream: until RSET, HELO or EHLO
    CLOSED = "closed"


_ANY = frozenset({Phase.NO_HELLO, Phase.IDLE, Phase.MAIL, Phase.STUCK})

# verb -> (handler method, phases in which the verb is in sequence)
_COMMANDS: dict[str, tuple[str, frozenset[Phase]]] = {
    "HELO": ("_cmd_helo", _ANY),
    "EHLO": ("_cmd_ehlo", _ANY),
    "MAIL": ("_cmd_mail", frozenset({Phase.IDLE})),
    "RCPT": ("_cmd_rcpt", frozenset({Phase.MAIL})),
    "DATA": ("_cmd_data", frozenset({Phase.MAIL})),
    "BDAT": ("_cmd_bdat", _ANY),  # sequence checked after its octets are consumed
    "RSET": ("_cmd_rset", _ANY),
    "NOOP": ("_cmd_noop", _ANY),
    "HELP": ("_cmd_help", _ANY),
    "QUIT": ("_cmd_quit", _ANY),
    "VRFY": ("_cmd_vrfy", frozenset({Phase.NO_HELLO, Phase.IDLE, Phase.MAIL})),
    "AUTH": ("_cmd_auth", frozenset({Phase.IDLE})),
    "STARTTLS": ("_cmd_starttls", frozenset({Phase.IDLE})),  # (after HELO or EHLO, as upstream)
    "EXPN": ("_cmd_not_implemented", _ANY),
}

# E-MailRelay 2.6b's reply texts (no enhanced status codes), one text for every command out of sequence
_OUT_OF_SEQUENCE = "command out of sequence -- use RSET to resynchronise"
_UNRECOGNIZED = "command unrecognized"
_NOT_AVAILABLE = "service not available"  # the admin's "smtp disable"
_VERB_RE = re.compile(r"[ \t]*([^ \t]*)[ \t]*(.*)", re.DOTALL)
_NOT_IMPLEMENTED = "command not implemented"
_BAD_MECHANISM = "unsupported authentication mechanism"
_NO_RECIPIENTS = (554, "no valid recipients")
_PROTOCOL_ERRORS = frozenset({500, 503})  # the replies upstream counts towards its limit

# verb -> (config predicate, code, text) for extensions that are switched off
_GATES: dict[str, tuple[Callable[[SmtpServer], bool], int, str]] = {
    "BDAT": (lambda s: s._cfg.chunking, 500, _UNRECOGNIZED),
    "STARTTLS": (lambda s: s._cfg.starttls or s._tls, 500, _UNRECOGNIZED),
    # as upstream: AUTH gets 502 ("command not implemented") when no mechanism is offered, now or after STARTTLS
    "AUTH": (
        lambda s: bool(s._cfg.auth_mechanisms) or (not s._tls and bool(s._cfg.auth_mechanisms_tls)),
        502,
        _NOT_IMPLEMENTED,
    ),
}

# pending decision type -> (method run by accept(), phase after reject() or None = unchanged)
_ACCEPT: dict[type[Event], str] = {
    Hello: "_accept_hello",
    MailFrom: "_accept_mail",
    RcptTo: "_accept_rcpt",
    DataStart: "_accept_data",
    DataEnd: "_accept_data_end",
    Vrfy: "_accept_vrfy",
    StartTls: "_accept_starttls",
}

_MAIL_BODY = {"7BIT": "7BIT", "8BITMIME": "8BITMIME", "BINARYMIME": "BINARYMIME"}
_DATA_REPLY = "start mail input -- end with <CRLF>.<CRLF>"
_SIZE_TEXT = "message size exceeds fixed maximum message size"
_LONG_TEXT = "line too long"
_BAD_CHARACTER = "invalid character in mailbox name"
# a TLS record of type handshake, TLS 1.x, up to 16 KiB long, holding a ClientHello
_TLS_HELLO = re.compile(rb"\x16\x03[\x00-\x04]([\x00-\x40].)\x01", re.DOTALL)
_LINE_BREAKS = frozenset("\0\r\n")  # upstream refuses a MAIL or RCPT line holding one of these
_VERB_SPLIT = re.compile(r"[ \t]+")
_CRLF_DOT = re.compile(rb"\r\n\.")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _loggable(line: str, *, cut: bool = False) -> str:
    """``line`` as it may be logged: an AUTH command's initial response carries credentials and
    never reaches a log (upstream logs it).  ``=``, ``*`` and what is not base64 carry none and
    are logged as upstream does; of a ``cut`` line (too long, or with a bare CR or LF) nothing
    after the mechanism is logged."""
    words = line.split()
    if len(words) < 3 or words[0].upper() != "AUTH":
        return line
    if cut or len(words) > 3 or _BASE64.fullmatch(words[2]):
        return f"{words[0]} {words[1]} [authentication response not logged]"
    return line


def _words(text: str) -> list[str]:
    """The words of ``text`` split at spaces and tabs only (a CR or LF inside a command line is no separator)."""
    return [w for w in _VERB_SPLIT.split(text) if w]


def _has_controls(s: str) -> bool:
    return any(c < " " or c == "\x7f" for c in s)


# ---------------------------------------------------------------- the machine


class SmtpServer(LineBuffer):
    """One SMTP server session; see the module docstring."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__()
        self._cfg = config
        self._phase = Phase.NO_HELLO
        self._tls = False
        self._authenticated = False
        self._extended = False
        self._peer_ended = False
        self._closing = False
        self._errors = 0
        self._too_many_errors = False
        self._discarding = False
        self._discard_head = ""
        self._latin1 = False  # the command line in hand was 8-bit but not UTF-8
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self._mail: MailFrom | None = None
        self._rcpt_ok = 0
        self._rcpt_failed = 0
        self._bdat_used = False
        self._data_size = 0
        self._added = 0  # octets the service adds to the stored content (count_added)
        self._data_fail: tuple[int, str] | None = None
        self._crlf_start = True
        self._bdat_remaining = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_line = ""
        self._bdat_error: tuple[int, str] | None = None
        self._bdat_return = Phase.IDLE

    # ------------------------------------------------------------- properties

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def auth_offered(self) -> tuple[str, ...]:
        """The AUTH mechanisms offered now (empty: AUTH is refused, see ServerConfig.auth_mechanisms_tls)."""
        return self._cfg.auth_mechanisms

    @property
    def in_transaction(self) -> bool:
        return self._mail is not None

    @property
    def recipient_count(self) -> int:
        return self._rcpt_ok

    @property
    def too_many_errors(self) -> bool:
        return self._too_many_errors

    @property
    def peer_ended(self) -> bool:
        return self._peer_ended

    @property
    def latin1(self) -> bool:
        """Whether the command line in hand was 8-bit but not UTF-8 (its text: decoded as latin-1)."""
        return self._latin1

    @property
    def phase(self) -> Phase:
        return self._phase

    # -------------------------------------------------------------------- I/O

    def greeting(self) -> None:
        c = self._cfg
        if c.disabled:
            self._send(421, _NOT_AVAILABLE)
        elif c.anonymous:
            self._send(220, "greeting")
        else:
            self._send(220, f"{c.domain} -- {c.product} -- Service ready")

    def receive_data(self, data: bytes) -> None:
        if self._phase is Phase.CLOSED:
            return
        if self._peer_ended:
            if data:
                raise LocalProtocolError("receive_data() after EOF")
            return
        if not data:
            self._peer_ended = True
            if self._phase is Phase.TLS:
                self._closing = True
            return
        if self._phase is Phase.TLS:
            return  # plaintext after an accepted STARTTLS is never interpreted
        self._append(data)

    def next_event(self) -> Event | Signal:
        while True:
            if self._pending is not None or (self._phase is Phase.TLS and not self._closing):
                return PAUSED
            if (ev := self._queued_event(_DECISIONS)) is not None:
                return ev
            if self._phase is Phase.CLOSED:
                return ConnectionClosed()
            if self._closing:
                self._close()
                continue
            phase = self._phase
            if phase is Phase.DATA:
                r = self._read_data()
            elif phase is Phase.BDAT:
                r = self._read_bdat()
            elif phase is Phase.AUTH:
                r = self._read_auth()
            else:
                r = self._read_command()
            if r is None:
                continue
            if isinstance(r, _DECISIONS):
                self._pending = r
            return r

    # -------------------------------------------------------------- decisions

    def _take_pending(self, *allowed: type[Event]) -> Event:
        ev = self._pending_decision(*allowed)
        self._pending = None
        return ev

    def count_added(self, octets: int) -> None:
        """The transaction's content gets ``octets`` more than the client sends (the service's
        ``Received`` line): E-MailRelay 2.6b counts them against max_size. Call it before accepting
        DATA, or on the Bdat event; it holds until the transaction ends."""
        self._added = octets

    def _too_big(self, size: int) -> bool:
        """Whether ``size`` octets of content, with the added ones, reach max_size (upstream's rule,
        found by probing: a total equal to the limit is refused)."""
        return self._cfg.max_size > 0 and self._added + size >= self._cfg.max_size

    def accept(self, text: str | None = None) -> None:
        ev = self._pending
        if ev is None:
            raise LocalProtocolError("no decision is pending")
        method = _ACCEPT.get(type(ev))
        if method is None:
            raise LocalProtocolError(
                f"{type(ev).__name__} is resolved with challenge()/auth_succeeded()/auth_failed()"
            )
        self._pending = None
        getattr(self, method)(ev, text)

    def reject(self, code: int, text: str) -> None:
        if not 400 <= code <= 599:
            raise LocalProtocolError(f"reject() needs a 4xx/5xx code, not {code}")
        ev = self._take_pending()
        if isinstance(ev, RcptTo):
            self._rcpt_failed += 1
        elif isinstance(ev, DataEnd):
            self._reset_transaction()
            self._phase = Phase.IDLE
        elif isinstance(ev, (AuthStart, AuthResponse)):
            self._phase = Phase.IDLE
        self._send(code, text)

    def reply(self, code: int, text: str) -> None:
        if not 200 <= code <= 599:
            raise LocalProtocolError(f"bad reply code {code}")
        self._take_pending(Vrfy)
        self._send(code, text)

    def challenge(self, text: str) -> None:
        self._take_pending(AuthStart, AuthResponse)
        self._phase = Phase.AUTH
        self._send(334, text)

    def auth_succeeded(self) -> None:
        self._take_pending(AuthStart, AuthResponse)
        self._phase = Phase.IDLE
        self._authenticated = True
        self._send(235, "authentication successful")

    def auth_failed(self) -> None:
        self._take_pending(AuthStart, AuthResponse)
        self._phase = Phase.IDLE
        self._send(535, "authentication failed")

    def tls_established(self, config: ServerConfig | None = None) -> None:
        """The handshake is done; ``config`` may replace the configuration (eg. mechanisms allowed with TLS)."""
        if self._phase is not Phase.TLS:
            raise LocalProtocolError("tls_established() without an accepted STARTTLS")
        if config is not None:
            self._cfg = config
        self._tls = True
        self._authenticated = False
        self._extended = False
        self._reset_transaction()
        self._buf = b""
        self._pos = 0
        self._phase = Phase.NO_HELLO
        if self._peer_ended:
            self._closing = True

    def _accept_hello(self, ev: Hello, text: str | None) -> None:
        self._reset_transaction()
        self._phase = Phase.IDLE
        self._extended = ev.extended
        if ev.extended:
            self._authenticated = False  # as upstream: EHLO ends an authentication (HELO, RSET do not)
            name = "smtp" if self._cfg.anonymous else self._cfg.domain
            first = text if text is not None else f"{name} says hello"
            self._send(250, "\n".join([first, *self._extensions()]))
        else:
            self._send(250, text if text is not None else "hello")

    def _extensions(self) -> list[str]:
        """The EHLO keywords in E-MailRelay 2.6b's order (8BITMIME always last)."""
        c = self._cfg
        ext: list[str] = []
        if c.max_size > 0:
            ext.append(f"SIZE {c.max_size}")
        if c.auth_mechanisms:
            ext.append("AUTH " + " ".join(c.auth_mechanisms))
        if c.starttls and not self._tls:
            ext.append("STARTTLS")
        if c.vrfy:
            ext.append("VRFY")
        if c.chunking:
            ext.append("CHUNKING")
            ext.append("BINARYMIME")
        if c.pipelining:
            ext.append("PIPELINING")
        if c.smtputf8:
            ext.append("SMTPUTF8")
        ext.append("8BITMIME")
        return ext

    def _accept_mail(self, ev: MailFrom, text: str | None) -> None:
        self._reset_transaction()
        self._mail = ev
        self._phase = Phase.MAIL
        self._send(250, text if text is not None else f"sender <{ev.address}> OK")

    def _accept_rcpt(self, ev: RcptTo, text: str | None) -> None:
        self._rcpt_ok += 1
        self._send(250, text if text is not None else f"recipient <{ev.address}> OK")

    def _accept_data(self, ev: DataStart, text: str | None) -> None:
        self._phase = Phase.DATA
        self._crlf_start = True
        self._data_size = 0
        self._data_fail = None
        self._send(354, text if text is not None else _DATA_REPLY)

    def _accept_data_end(self, ev: DataEnd, text: str | None) -> None:
        self._reset_transaction()
        self._phase = Phase.IDLE
        self._send(250, text if text is not None else "message processed")

    def _accept_vrfy(self, ev: Vrfy, text: str | None) -> None:
        self._send(250, text if text is not None else f"<{ev.address}>")

    def _accept_starttls(self, ev: StartTls, text: str | None) -> None:
        self._send(220, text if text is not None else "ready to start tls")
        self._buf = b""  # CVE-2011-0411: nothing pipelined after STARTTLS survives
        self._pos = 0
        self._discarding = False
        self._phase = Phase.TLS

    # ---------------------------------------------------------------- replies

    def _send(self, code: int, text: str, *, counts_as_error: bool = True) -> None:
        lines = text.replace("\r", "").split("\n")
        last = len(lines) - 1
        self._out.append(
            encode_line("".join(f"{code}{' ' if i == last else '-'}{s}\r\n" for i, s in enumerate(lines)))
        )
        if code not in _PROTOCOL_ERRORS or not counts_as_error:
            return
        self._errors += 1
        limit = self._cfg.max_errors
        if limit > 0 and self._errors >= limit and not self._closing:
            self._closing = True
            self._too_many_errors = True

    def _error(self, line: str, code: int, text: str) -> ProtocolError:
        self._send(code, text)
        return ProtocolError(line, code, text)

    def _close(self) -> None:
        if self._mail is not None:
            self._events.append(DataAborted(0, "connection closed"))
        self._reset_transaction()
        self._phase = Phase.CLOSED
        self._buf = b""
        self._pos = 0

    def _need(self) -> Signal | None:
        if self._peer_ended:
            self._closing = True
            return None
        return NEED_DATA

    def _consume_to(self, pos: int) -> None:
        if pos >= len(self._buf):
            self._buf = b""
            self._pos = 0
        else:
            self._pos = pos

    # ----------------------------------------------------------- line reading

    def _read_line(self, limit: int) -> tuple[bytes | None, str | None]:
        """Return (raw line without its CRLF, None) or (None, error text) or (None, None) = need data.

        Only CRLF ends a line (a bare CR or LF is part of it, as upstream)."""
        buf, pos = self._buf, self._pos
        i = buf.find(b"\r\n", pos)
        if self._discarding:
            if i < 0:
                self._keep_cr(buf)
                return None, None
            self._discarding = False
            self._consume_to(i + 2)
            return None, _LONG_TEXT
        if i < 0:
            if len(buf) - pos >= limit:
                self._discarding = True
                self._discard_head = buf[pos : pos + _LOG_HEAD].decode("latin-1") + "..."
                self._keep_cr(buf)
            return None, None
        self._consume_to(i + 2)
        raw = buf[pos:i]
        if len(raw) + 2 > limit:
            self._discard_head = raw[:_LOG_HEAD].decode("latin-1") + "..."
            return None, _LONG_TEXT
        return raw, None

    def _keep_cr(self, buf: bytes) -> None:
        """Drop the buffered part of a line being discarded, but a last CR: the next byte may be its LF."""
        self._buf = b"\r" if buf.endswith(b"\r") else b""
        self._pos = 0

    def _read_command(self) -> Event | Signal | None:
        hello = None if self._discarding else _TLS_HELLO.match(self._buf, self._pos)
        if hello is not None:
            # a TLS client where a command belongs sends no CRLF to wait for: its whole first
            # record (at most 16 KiB) is refused at once
            if len(self._buf) - self._pos < 5 + int.from_bytes(hello[1], "big"):
                return self._need()
            head = self._buf[self._pos : self._pos + _LOG_HEAD].decode("latin-1")
            self._buf, self._pos = b"", 0
            return self._error(head, 500, _UNRECOGNIZED)
        raw, err = self._read_line(COMMAND_LINE_LIMIT)
        if raw is None:
            if err is None:
                return self._need()
            return self._error(_loggable(self._discard_head, cut=True), 500, err)
        line = raw.decode("latin-1")
        self._latin1 = False
        if not raw.isascii():
            try:
                line = raw.decode("utf-8")  # logged and echoed as the client sent it
            except UnicodeDecodeError:
                self._latin1 = True  # (an address in it is refused, as upstream does)
        text = line
        if self._cfg.strict_parsing:
            # as E-MailRelay 2.6b: spaces and tabs before the verb, and between it and its argument
            # (but HELO, EHLO and VRFY take what follows the first space: "EHLO<tab>h" names nobody)
            m = _VERB_RE.match(text)
            assert m is not None  # (it matches any text)
            verb, arg = m.groups()
            if verb.upper() in ("HELO", "EHLO", "VRFY"):
                arg = text.lstrip(" \t").partition(" ")[2]
        else:
            # (white space, but never a CR or LF in the line: they are not separators, as upstream)
            split = _VERB_SPLIT if "\r" in text or "\n" in text else None
            parts = split.split(text.strip(" \t"), 1) if split else text.strip().split(None, 1)
            verb = parts[0] if parts else ""
            arg = parts[1] if len(parts) > 1 else ""
        verb = verb.upper()
        entry = _COMMANDS.get(verb)
        if entry is None:
            return self._error(line, 500, _UNRECOGNIZED)
        method, phases = entry
        if verb == "AUTH" and self._phase is Phase.MAIL:  # upstream checks AUTH's sequence first
            return self._error(line, 503, _OUT_OF_SEQUENCE)
        gate = _GATES.get(verb)
        if gate is not None and not gate[0](self):
            return self._error(line, gate[1], gate[2])
        if self._phase not in phases:
            return self._error(line, 503, _OUT_OF_SEQUENCE)
        handler: Callable[[str, str], Event | None] = getattr(self, method)
        return handler(line, arg)

    # --------------------------------------------------------------- commands

    def _hello(self, line: str, arg: str, extended: bool) -> Event:
        if self._cfg.strict_parsing:
            # as E-MailRelay 2.6b: the name is the argument up to a tab, spaces around it dropped
            # and spaces inside it made dashes ("EHLO x y" is "x-y", "EHLO x<tab>y" is "x")
            name = arg.partition("\t")[0].strip(" ").replace(" ", "-")
        else:
            words = _words(arg)
            name = words[0] if words else ""
        if not name:
            return self._error(line, 501, "parameter required")
        if _has_controls(name):  # (upstream takes it; kept out of the Received line: docs/decisions.md)
            return self._error(line, 501, "invalid domain name")
        return Hello(line, name, extended)

    def _cmd_helo(self, line: str, arg: str) -> Event:
        return self._hello(line, arg, False)

    def _cmd_ehlo(self, line: str, arg: str) -> Event:
        return self._hello(line, arg, True)

    def _cmd_mail(self, line: str, arg: str) -> Event:
        c = self._cfg
        if c.disabled:
            return self._error(line, 421, _NOT_AVAILABLE)
        refusal = self._refusal()
        if refusal is not None:
            return self._error(line, 530, refusal)
        if not _LINE_BREAKS.isdisjoint(arg):  # as upstream, in the address or a parameter
            return self._error(line, 553, f"mailbox name not allowed: {_BAD_CHARACTER}")
        try:
            address, params = parse_mail_from(arg, c.strict_parsing)
        except PathSyntaxError as e:
            return self._error(line, e.code, e.text)
        if self._latin1 and not address.isascii():  # 8-bit but not UTF-8
            return self._error(line, 553, f"mailbox name not allowed: {_BAD_CHARACTER}")
        body: str | None = None
        size: int | None = None
        auth: str | None = None
        smtputf8 = False
        # as E-MailRelay 2.6b: unknown parameters, and SIZE and BODY values it cannot use, are ignored
        for key, value in params.items():
            if key == "SIZE":
                if not (value.isdigit() and value.isascii() and len(value) <= 20):
                    continue
                size = int(value)
                if c.max_size > 0 and size > c.max_size:
                    return self._error(line, 552, _SIZE_TEXT)
            elif key == "BODY":
                body = _MAIL_BODY.get(value.upper())
            elif key == "AUTH":
                if not value:  # as upstream: "AUTH=" stores nothing
                    continue
                auth = value if value == "<>" else xtext_normalise(value)
            elif key == "SMTPUTF8":  # accepted (and ignored unless offered), as upstream
                if value:
                    return self._error(line, 553, "mailbox name not allowed: invalid mail-from parameter")
                smtputf8 = c.smtputf8 or c.smtputf8_strict
        if c.smtputf8_strict and not smtputf8 and not address.isascii():  # (upstream's words, its typo too)
            return self._error(
                line, 553, "mailbox name not allowed: invalid character in mailbox name: not using smptutf8"
            )
        return MailFrom(line, address, body, size, smtputf8, auth, params)

    def _cmd_rcpt(self, line: str, arg: str) -> Event:
        ev = self._check_rcpt(line, arg)
        if isinstance(ev, ProtocolError):
            self._rcpt_failed += 1
        return ev

    def _check_rcpt(self, line: str, arg: str) -> Event:
        c = self._cfg
        if self._bdat_used:
            return self._error(line, 503, _OUT_OF_SEQUENCE)
        if self._rcpt_ok >= c.max_recipients:
            # RFC 5321 4.5.3.1.10: the client is meant to send the rest in another transaction,
            # so this 452 is no sign of a misbehaving client and never counts towards max_errors
            self._send(452, "too many recipients", counts_as_error=False)
            return ProtocolError(line, 452, "too many recipients")
        if not _LINE_BREAKS.isdisjoint(arg):  # as upstream, in the address or a parameter
            return self._error(line, 550, _BAD_CHARACTER)
        try:
            address, params = parse_rcpt_to(arg, c.strict_parsing)
        except PathSyntaxError as e:
            return self._error(line, e.code, e.text)
        if self._latin1 and not address.isascii():  # 8-bit but not UTF-8
            return self._error(line, 550, _BAD_CHARACTER)
        mail = self._mail  # (RCPT parameters are ignored, as upstream)
        if c.smtputf8_strict and not address.isascii() and not (mail is not None and mail.smtputf8):
            return self._error(line, 550, "invalid character in mailbox name: not using smtputf8")
        return RcptTo(line, address, params)

    def _refusal(self) -> str | None:
        """Why MAIL and VRFY are refused before TLS or authentication (530), or None."""
        c = self._cfg
        need_tls = c.tls_required and not self._tls
        if c.auth_required and not self._authenticated:
            return "authentication required" + (": use starttls" if need_tls else "")
        if need_tls:
            return "encryption required: use starttls"
        return None

    def _end_without_recipients(self, line: str) -> ProtocolError:
        """DATA (or the end of a BDAT) with no accepted recipient: upstream's 554 ends the transaction."""
        self._reset_transaction()
        self._phase = Phase.IDLE
        return self._error(line, *_NO_RECIPIENTS)

    def _cmd_data(self, line: str, arg: str) -> Event:
        # (an argument is ignored, as upstream)
        if self._bdat_used:
            return self._error(line, 503, _OUT_OF_SEQUENCE)
        if self._rcpt_ok == 0:
            return self._end_without_recipients(line)
        if self._mail is not None and self._mail.body == "BINARYMIME":
            return self._error(line, 503, "invalid data command with binarymime -- use RSET to resynchronise")
        return DataStart(line)

    def _cmd_bdat(self, line: str, arg: str) -> Event | None:
        words = _words(arg)
        valid = (
            1 <= len(words) <= 2
            and words[0].isascii()
            and words[0].isdigit()
            and len(words[0]) <= 15
            and (len(words) == 1 or words[1].upper() == "LAST")
            and (len(words) == 2 or int(words[0]) > 0)  # (an empty chunk must be the last, as upstream)
        )
        if not valid:
            # as upstream: the sequence is checked first, then the recipients, then the argument;
            # a bad argument ends any transaction and leaves MAIL, VRFY and AUTH out of sequence
            # until RSET, HELO or EHLO
            if self._phase is not Phase.MAIL:
                if self._phase is Phase.IDLE:
                    self._phase = Phase.STUCK
                return self._error(line, 503, _OUT_OF_SEQUENCE)
            if self._rcpt_ok == 0:
                return self._end_without_recipients(line)
            self._reset_transaction()
            self._phase = Phase.STUCK
            return self._error(line, 501, "invalid argument")
        self._bdat_remaining = self._bdat_size = int(words[0])
        self._bdat_last = len(words) == 2
        self._bdat_line = line
        self._bdat_return = self._phase
        if self._phase is not Phase.MAIL:
            self._bdat_error = (503, _OUT_OF_SEQUENCE)
        elif self._rcpt_ok == 0:
            self._bdat_error = _NO_RECIPIENTS
        else:
            self._bdat_error = None
            if not self._bdat_used:
                self._bdat_used = True
                self._data_size = 0
                self._data_fail = None
        self._phase = Phase.BDAT
        return Bdat(line) if self._bdat_error is None else None

    def _cmd_rset(self, line: str, arg: str) -> Event:
        self._reset_transaction()
        if self._phase is not Phase.NO_HELLO:
            self._phase = Phase.IDLE
        self._send(250, "state reset")
        return Rset(line)

    def _cmd_noop(self, line: str, arg: str) -> Event:
        self._send(250, "noop")
        return Noop(line)

    def _cmd_help(self, line: str, arg: str) -> Event:
        self._send(502, _NOT_IMPLEMENTED)  # as E-MailRelay 2.6b
        return Help(line)

    def _cmd_not_implemented(self, line: str, arg: str) -> Event:
        return self._error(line, 502, _NOT_IMPLEMENTED)

    def _cmd_quit(self, line: str, arg: str) -> Event:
        self._send(221, "OK")
        self._closing = True
        return Quit(line)

    def _cmd_vrfy(self, line: str, arg: str) -> Event:
        if not self._cfg.vrfy:  # (before authentication and TLS are asked for, as upstream)
            self._send(252, "cannot vrfy")
            return VrfyHidden(line)
        refusal = self._refusal()
        if refusal is not None:
            return self._error(line, 530, refusal)
        address = arg.strip(" ") if self._cfg.strict_parsing else arg.strip()
        if address.startswith("<") and address.endswith(">") and address != "<>":  # ("<>" as it is: upstream)
            address = address[1:-1].strip()
        if not address or _has_controls(address):
            return self._error(line, 550, "invalid mailbox")
        return Vrfy(line, address)

    def _cmd_auth(self, line: str, arg: str) -> Event:
        c = self._cfg
        words = _words(arg)  # (a CR or LF is in a word: "AUTH PLAIN\nX" names no mechanism, as upstream)
        line = _loggable(line)
        if self._authenticated:
            return self._error(line, 503, _OUT_OF_SEQUENCE)
        if not c.auth_mechanisms:  # offered once encrypted only (the gate saw to that): upstream's reply
            return self._error(line, 504, _BAD_MECHANISM + (": use starttls" if c.starttls else ""))
        if c.tls_required and not self._tls:  # no credentials in clear text (docs/decisions.md)
            return self._error(line, 530, "encryption required: use starttls")
        mechanism = words[0].upper() if words else ""
        if mechanism not in (m.upper() for m in c.auth_mechanisms):
            return self._error(line, 504, _BAD_MECHANISM)
        initial: str | None = None
        if len(words) >= 2:  # as upstream, words after the initial response are ignored
            initial = "" if words[1] == "=" else words[1]
            if initial and b64decode_strict(initial) is None:  # "*" included: no cancel here
                return self._error(line, 501, "invalid argument")
        return AuthStart(line, mechanism, initial)

    def _cmd_starttls(self, line: str, arg: str) -> Event:
        if self._tls:  # a second STARTTLS: out of sequence, as upstream
            return self._error(line, 503, _OUT_OF_SEQUENCE)
        return StartTls(line)  # arguments are ignored, as upstream

    # ----------------------------------------------------------- AUTH / BDAT

    def _read_auth(self) -> Event | Signal | None:
        raw, err = self._read_line(AUTH_LINE_LIMIT)
        if raw is None:
            if err is None:
                return self._need()
            self._phase = Phase.IDLE
            return self._error("[authentication response not logged]", 500, err)
        data = raw.decode("latin-1")  # as it came: upstream refuses base64 with white space in it
        if data.strip() == "*":
            self._phase = Phase.IDLE
            return self._error("[authentication response not logged]", 501, "authentication cancelled")
        return AuthResponse(data)

    def _read_bdat(self) -> Event | Signal | None:
        if self._bdat_remaining > 0:
            buf, pos = self._buf, self._pos
            avail = len(buf) - pos
            if avail <= 0:
                return self._need()
            take = min(avail, self._bdat_remaining)
            chunk = buf[pos : pos + take]
            self._consume_to(pos + take)
            self._bdat_remaining -= take
            if self._bdat_error is not None or self._data_fail is not None:
                return None
            if self._too_big(self._data_size + take):
                self._data_fail = (552, _SIZE_TEXT)
                return DataAborted(0, _SIZE_TEXT)  # (the 552 waits for the last chunk)
            self._data_size += take
            return DataChunk(chunk)
        # all octets of this chunk consumed
        if self._bdat_error is not None:
            code, text = self._bdat_error
            self._bdat_error = None
            if (code, text) == _NO_RECIPIENTS:
                return self._end_without_recipients(self._bdat_line)
            self._phase = self._bdat_return
            return self._error(self._bdat_line, code, text)
        if self._data_fail is not None and self._bdat_last:
            return self._abort_message()
        # (a message already over max_size takes its further chunks, dropped, until the last one
        # gets the 552: upstream's replies, and no 503 for each chunk still on its way)
        self._phase = Phase.MAIL
        if self._bdat_last:
            return DataEnd(self._bdat_line, self._data_size)
        self._send(250, f"{self._bdat_size} bytes received")  # upstream's words
        return ChunkReceived(self._bdat_size)

    def _abort_message(self) -> Event:
        assert self._data_fail is not None
        code, text = self._data_fail
        self._reset_transaction()
        self._phase = Phase.IDLE
        self._send(code, text)
        return DataAborted(code, text)

    # ------------------------------------------------------------------- DATA

    def _read_data(self) -> Event | Signal | None:
        buf, pos = self._buf, self._pos
        n = len(buf)
        if pos >= n:
            return self._need()
        # One scan finds every CRLF "." line start: either the end marker or a
        # dot-stuffed line.  A "." first line after a CRLF is checked on its own.
        stuffed = False
        ended = False
        region_end = resume = pos
        if self._crlf_start and buf[pos] == 0x2E:  # "."
            if buf.startswith(b".\r\n", pos):
                ended = True
                region_end, resume = pos, pos + 3
            stuffed = True
        if not ended:
            m = _CRLF_DOT.search(buf, pos)
            while m is not None:  # normally no iteration: CRLF "." lines are rare
                k = m.start()
                if buf.startswith(b"\r\n", k + 3):
                    ended = True
                    region_end, resume = k + 2, k + 5
                    break
                stuffed = True
                m = _CRLF_DOT.search(buf, k + 3)
            else:
                region_end = resume = buf.rfind(b"\n", pos) + 1
                if region_end == 0:
                    region_end = resume = pos
        chunk: bytes | None = None
        if region_end > pos:
            region = buf[pos:region_end]
            if self._data_fail is None:
                chunk = self._content(region, stuffed)
            self._crlf_start = region.endswith(b"\r\n")
        self._consume_to(resume)
        if not ended:
            tail = n - resume
            if tail >= (3 if self._data_fail is not None else TEXT_LINE_LIMIT):
                # the unfinished line is too long (or is being discarded): keep only
                # its last byte, which may be the CR of the CRLF before a "."
                if self._data_fail is None:
                    self._data_fail = (500, _LONG_TEXT)
                self._buf = buf[-1:]
                self._pos = 0
                self._crlf_start = False
            if chunk:
                return DataChunk(chunk)
            if region_end > pos:
                return None
            return self._need()
        # end of data
        self._phase = Phase.MAIL
        if self._data_fail is not None:
            return self._abort_message()
        end = DataEnd(".", self._data_size)
        if chunk:
            self._events.append(end)
            return DataChunk(chunk)
        return end

    def _content(self, region: bytes, stuffed: bool) -> bytes | None:
        """Unstuff and normalise complete lines; None if the message has failed."""
        # line length: every line inside a 1000-octet window is short enough, so
        # hop from window to window (a few memrchr calls instead of a split)
        i = 0
        n = len(region)
        while n - i >= TEXT_LINE_LIMIT:
            r = region.rfind(b"\n", i, i + TEXT_LINE_LIMIT)
            if r < 0:
                self._data_fail = (500, _LONG_TEXT)
                return None
            i = r + 1
        if stuffed:
            if self._crlf_start and region[0] == 0x2E:  # "."
                region = region[1:]
            region = region.replace(b"\r\n.", b"\r\n")
        if region.count(b"\n") != region.count(b"\r\n"):  # some line ends in a bare LF
            if n >= TEXT_LINE_LIMIT - 1 and any(
                len(p) >= TEXT_LINE_LIMIT - 1 and not p.endswith(b"\r") for p in region.split(b"\n")
            ):  # a 999-octet bare-LF line would be stored as 1001 octets
                self._data_fail = (500, _LONG_TEXT)
                return None
            region = region.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._data_size += len(region)
        if self._too_big(self._data_size):
            self._data_fail = (552, _SIZE_TEXT)
            return None
        return region
