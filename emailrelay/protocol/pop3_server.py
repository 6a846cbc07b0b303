"""emailrelay.protocol.pop3_server -- sans-IO POP3 server state machine.

PURPOSE
    The server side of POP3 (RFC 1939) with CAPA (RFC 2449), STLS (RFC
    2595) and SASL AUTH (RFC 5034), as E-MailRelay 2.6 offers it: USER/PASS,
    APOP, AUTH, CAPA, STLS, STAT, LIST, RETR, TOP, UIDL, DELE, NOOP, RSET,
    QUIT.  It turns received bytes into events and the service's decisions
    into reply bytes.  No I/O, no clock, no files, no logging: the service
    checks secrets, locks and lists the maildrop, streams message content
    and deletes messages.

USAGE
        pop = Pop3Server(PopConfig(timestamp="<123.1700000000@host>", ...))
        pop.greeting(); send(pop.data_to_send())
        on bytes (b"" on EOF):
            pop.receive_data(data)
            while (ev := pop.next_event()) is not NEED_DATA:
                if ev is PAUSED: a decision (or TLS) is outstanding; stop reading
                elif isinstance(ev, ConnectionClosed): close; break
                else: handle it; decide if it is a decision event
            send(pop.data_to_send())

    Decision events (next_event() returns PAUSED until they are resolved):
      Pass, Apop, AuthStart, AuthResponse -> login(sizes_and_uids) |
          login_failed(text, close=) | challenge(b64) (AUTH only)
      Stls      -> accept_stls() then PAUSED until tls_established() | reject(text)
      Retrieve  -> accept_retrieve(size) -> ByteStuffer, stream the content,
                   then retrieve_done() | reject(text)
      Update    -> update_done(ok)   (QUIT in the TRANSACTION state: delete
                   the messages in Update.deleted now, and only now)
    Every other event is informational and its reply is already queued.
    Each event has ``line``: the command as it may be logged (PASS and AUTH
    responses are redacted).

EXPECTS
    * Decisions in event order; the service stops reading while PAUSED.
    * After accept_stls() only decrypted bytes, and only after
      tls_established().
    * accept_retrieve(): the service sends data_to_send() first, then the
      stuffer's output for the content, ending with ByteStuffer.finish().

GUARANTEES
    * Peer input never raises; every complete command line gets exactly one
      reply (single or multi-line).  LocalProtocolError only for misuse.
    * Command lines are limited to 255 octets including CRLF (RFC 2449),
      SASL responses to 12288; a longer line is discarded up to its LF
      without being buffered and answered "-ERR line too long".  LF alone
      also ends a line.  After ``max_errors`` consecutive errors the
      connection is closed.
    * Unknown command (an empty line too) -> "-ERR"; a command in the wrong
      state -> "-ERR".  Octets that are not UTF-8 are surrogate escapes in
      event lines and names, and go back out in a reply as they came.
    * As E-MailRelay 2.6b: USER/PASS needs the PLAIN mechanism (a plain
      secret to check against): without it (PopConfig.user_pass False) CAPA
      leaves USER out and USER is refused.  A failed PASS, APOP or AUTH keeps the USER name given.
      ``AUTH <mech> =`` is AUTH without an initial response; words after the
      initial response are ignored; USER takes the first word (space, tab or
      CR end it); PASS gives both the rest of the line and its first word (a
      password may hold a space; upstream reads the first word); a CRAM mechanism with an initial
      response is "-ERR invalid initial response".  Event lines keep the
      verb as typed; PASS and AUTH lines are logged without their arguments
      (``PASS [password not logged]``, ``AUTH PLAIN``).
    * replies_to_send() gives the queued replies one by one (a multi-line
      response is one item), for a log that abbreviates long ones.
    * STLS: bytes received after the STLS line are discarded (RFC 2595,
      CVE-2011-0411 style injection).  As E-MailRelay 2.6b: STLS is answered
      with a bare "+OK" and CAPA lists STLS (before SASL) whenever STLS is
      available, also once TLS is up (STLS itself is then refused).  Unlike
      it, nothing is sent after the handshake (docs/decisions.md, "POP").
    * The maildrop listing (sizes, unique ids) is the snapshot passed to
      login(); DELE only marks; RSET unmarks; deletion happens only in the
      Update decision after QUIT.  A dropped connection never gets there.
    * ByteStuffer: a "." at the start of any line (after any LF) is doubled;
      the output always ends with CRLF "." CRLF; chunk boundaries anywhere.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .line_buffer import LineBuffer, LocalProtocolError
from .wire_octets import encode_line

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Apop",
    "AuthResponse",
    "AuthStart",
    "ByteStuffer",
    "Capa",
    "ConnectionClosed",
    "Dele",
    "Event",
    "List",
    "LocalProtocolError",
    "Noop",
    "Pass",
    "Phase",
    "Pop3Server",
    "PopConfig",
    "ProtocolError",
    "Quit",
    "Retrieve",
    "Rset",
    "Stat",
    "Stls",
    "Uidl",
    "Update",
    "User",
]

COMMAND_LINE_LIMIT = 255  # octets including CRLF (RFC 2449 section 4)
AUTH_LINE_LIMIT = 12288  # SASL continuation lines (RFC 5034 allows longer than 255)
_MAX_NUMBER_DIGITS = 12


@dataclass(frozen=True)
class PopConfig:
    timestamp: str = "<0.0@localhost>"  # the APOP timestamp in the greeting, brackets included
    mechanisms: tuple[str, ...] = ()  # SASL mechanisms offered before TLS
    mechanisms_tls: tuple[str, ...] | None = None  # ... and once TLS is up (None: the same)
    stls: bool = False  # a TLS context is available for STLS
    tls_required: bool = False  # no authentication before STLS
    secure: bool = False  # the connection is TLS from the start (implicit TLS)
    apop: bool = True
    user_pass: bool = True  # USER/PASS offered: upstream's rule, a PLAIN mechanism (a plain secret)
    max_errors: int = 10


class Signal(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


class Phase(enum.Enum):
    AUTHORIZATION = "authorization"
    AUTH = "auth"  # a SASL challenge was sent; the next line is the response
    TRANSACTION = "transaction"
    TLS = "tls"  # STLS accepted; waiting for tls_established()
    UPDATE = "update"  # QUIT in TRANSACTION: waiting for update_done()
    CLOSED = "closed"


# --------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    line: str


@dataclass(frozen=True, slots=True)
class Capa(Event):
    pass


@dataclass(frozen=True, slots=True)
class User(Event):
    name: str


@dataclass(frozen=True, slots=True)
class Pass(Event):
    """Decision: check ``password`` (the rest of the line, so that a password may hold a space)
    or else ``word`` (its first word: E-MailRelay 2.6b's reading) for ``user``, open the
    maildrop, login() or login_failed()."""

    user: str
    password: bytes
    word: bytes


@dataclass(frozen=True, slots=True)
class Apop(Event):
    """Decision: ``digest`` should be MD5(timestamp + password) in lower-case hex (``user`` and
    ``digest`` are "" when missing: a failed login all the same, as upstream)."""

    user: str
    digest: str
    timestamp: str


@dataclass(frozen=True, slots=True)
class AuthStart(Event):
    """Decision: ``initial`` is None without an initial response (or with "=", as upstream)."""

    mechanism: str
    initial: str | None


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    response: str


@dataclass(frozen=True, slots=True)
class Stls(Event):
    pass


@dataclass(frozen=True, slots=True)
class Stat(Event):
    pass


@dataclass(frozen=True, slots=True)
class List(Event):
    number: int | None


@dataclass(frozen=True, slots=True)
class Uidl(Event):
    number: int | None


@dataclass(frozen=True, slots=True)
class Retrieve(Event):
    """Decision: RETR (``top_lines`` None) or TOP; ``number`` is 1-based and valid."""

    number: int
    top_lines: int | None


@dataclass(frozen=True, slots=True)
class Dele(Event):
    number: int


@dataclass(frozen=True, slots=True)
class Noop(Event):
    pass


@dataclass(frozen=True, slots=True)
class Rset(Event):
    pass


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT outside the TRANSACTION state: nothing to update, the connection closes."""


@dataclass(frozen=True, slots=True)
class Update(Event):
    """Decision: QUIT in TRANSACTION; delete ``deleted`` (1-based numbers) now."""

    deleted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ProtocolError(Event):
    """A line answered with -ERR by the machine itself (``reply`` is the text)."""

    reply: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    line: str = ""


_DECISIONS = (Pass, Apop, AuthStart, AuthResponse, Stls, Retrieve, Update)
_LOGIN_EVENTS = (Pass, Apop, AuthStart, AuthResponse)


# ----------------------------------------------------------------- tables

_AUTHZ = frozenset({Phase.AUTHORIZATION})
_TRANS = frozenset({Phase.TRANSACTION})
_BOTH = _AUTHZ | _TRANS

# verb -> (handler, phases where it is valid)
_COMMANDS: dict[str, tuple[str, frozenset[Phase]]] = {
    "CAPA": ("_cmd_capa", _BOTH),
    "QUIT": ("_cmd_quit", _BOTH),
    "USER": ("_cmd_user", _AUTHZ),
    "PASS": ("_cmd_pass", _AUTHZ),
    "APOP": ("_cmd_apop", _AUTHZ),
    "AUTH": ("_cmd_auth", _AUTHZ),
    "STLS": ("_cmd_stls", _AUTHZ),
    "STAT": ("_cmd_stat", _TRANS),
    "LIST": ("_cmd_list", _TRANS),
    "UIDL": ("_cmd_uidl", _TRANS),
    "RETR": ("_cmd_retr", _TRANS),
    "TOP": ("_cmd_top", _TRANS),
    "DELE": ("_cmd_dele", _TRANS),
    "NOOP": ("_cmd_noop", _TRANS),
    "RSET": ("_cmd_rset", _TRANS),
}

_WRONG_STATE = {
    Phase.AUTHORIZATION: "-ERR",  # (E-MailRelay 2.6b's terse replies)
    Phase.TRANSACTION: "-ERR",
}

# commands that need TLS first when tls_required
_NEED_TLS = frozenset({"USER", "PASS", "APOP", "AUTH"})

_WORD_BREAK = re.compile(r"([ \t]+)")
_FIRST_WORD = re.compile(r"[ \t\r]*([^ \t\r]*)")  # (upstream's separators: space, tab, CR)
_FIRST_WORD_OCTETS = re.compile(rb"[ \t\r]*([^ \t\r]*)")
_NO_USER_PASS = "-ERR no SASL PLAIN mechanism to do USER/PASS authentication"  # (upstream's words)


def _log_line(text: str) -> str:
    """The command line as it may be logged: as typed, but PASS without its argument and AUTH
    without its initial response (E-MailRelay 2.6b's ``pass [password not logged]``, ``auth plain``),
    whatever separates the words."""
    words = _WORD_BREAK.split(text.lstrip(" \t"), maxsplit=2)  # verb, gap, mechanism, gap, rest
    verb = words[0].upper()
    if verb == "PASS":
        return f"{words[0]} [password not logged]"
    if verb == "AUTH":
        return "".join(words[:3])
    return text


def _text(raw: bytes) -> str:
    """A line as text: octets that are not UTF-8 as surrogate escapes, so that they are echoed
    and logged as they came (E-MailRelay 2.6b's raw octets) and never read as latin-1."""
    return raw.decode("utf-8", "surrogateescape")


def _number(text: str) -> int | None:
    text = text.strip()
    if not text or len(text) > _MAX_NUMBER_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


# ------------------------------------------------------------- byte stuffer


class ByteStuffer:
    """Streams message content as a POP multi-line response body.

    ``feed(chunk)`` returns the bytes to send for the chunk: a "." at the
    start of a line is doubled, and a line that ends with a bare LF (content
    a filter or a person wrote) is sent with CRLF, so the response always
    ends with CRLF "." CRLF, as a client waits for it.  With ``top_lines`` (TOP) only the header
    lines, the blank line and that many body lines are passed on; ``done``
    becomes True when nothing more will be taken, so the caller can stop
    reading.  ``finish()`` returns the rest: a CRLF if the content did not
    end with a line end, then "." CRLF.  ``lines`` counts the lines sent.
    """

    __slots__ = (
        "_after_cr",
        "_at_line_start",
        "_in_body",
        "_line_head",
        "_remaining",
        "done",
        "lines",
        "top_lines",
    )

    def __init__(self, top_lines: int | None = None) -> None:
        self.top_lines = top_lines
        self._at_line_start = True
        self._after_cr = False  # the last byte sent was a CR (a CRLF may be split between chunks)
        self._in_body = False
        self._line_head = b""  # up to 2 first bytes of the current (header) line, for TOP
        self._remaining = 0
        self.done = False
        self.lines = 0

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        if self.top_lines is not None:
            chunk = self._select(chunk)
            if not chunk:
                return b""
        out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # (CR elsewhere is kept)
        if self._after_cr and chunk[:1] == b"\n":
            out = out[1:]  # its CR came with the last chunk
        out = out.replace(b"\n.", b"\n..")
        if self._at_line_start and out[:1] == b".":
            out = b"." + out
        self._at_line_start = chunk[-1:] == b"\n"
        self._after_cr = chunk[-1:] == b"\r"
        self.lines += chunk.count(b"\n")
        return out

    def finish(self) -> bytes:
        tail = b""
        if not self._at_line_start:
            tail = b"\r\n"
            self.lines += 1
            self._at_line_start = True
        self.done = True
        return tail + b".\r\n"

    def _select(self, chunk: bytes) -> bytes:
        """TOP: the part of ``chunk`` that is header, blank line or one of the first N body lines."""
        pos = 0
        size = len(chunk)
        while pos < size:
            if self._in_body:
                if self._remaining <= 0:
                    self.done = True
                    return chunk[:pos]
                nl = chunk.find(b"\n", pos)
                if nl < 0:
                    return chunk
                pos = nl + 1
                self._remaining -= 1
                continue
            nl = chunk.find(b"\n", pos)
            if nl < 0:
                self._line_head = (self._line_head + chunk[pos : pos + 2])[:2]
                return chunk
            head = (self._line_head + chunk[pos : nl + 1])[:3]
            self._line_head = b""
            pos = nl + 1
            if head in (b"\n", b"\r\n"):
                self._in_body = True
                self._remaining = self.top_lines or 0
        if self._in_body and self._remaining <= 0:
            self.done = True
        return chunk


# ---------------------------------------------------------------- the machine


class Pop3Server(LineBuffer):
    """One POP3 server session; see the module docstring."""

    def __init__(self, config: PopConfig) -> None:
        super().__init__()
        self._cfg = config
        self._phase = Phase.AUTHORIZATION
        self._tls = config.secure
        self._peer_ended = False
        self._closing = False
        self._errors = 0
        self._discarding = False
        self._user: str | None = None
        self._sizes: list[int] = []
        self._uids: list[str] = []
        self._deleted: set[int] = set()
        self._retrieving = False
        self._raw_arg = b""
        self._quit = False  # QUIT seen, or the service ended the session

    # ------------------------------------------------------------- properties

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def peer_ended(self) -> bool:
        """The peer closed its side (EOF) without ending the session with QUIT."""
        return self._peer_ended and not self._closing and not self._quit

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def deleted(self) -> tuple[int, ...]:
        return tuple(sorted(self._deleted))

    @property
    def mechanisms(self) -> tuple[str, ...]:
        c = self._cfg
        if self._tls and c.mechanisms_tls is not None:
            return c.mechanisms_tls
        return c.mechanisms

    # -------------------------------------------------------------------- I/O

    def greeting(self) -> None:
        # no APOP (pam:): no timestamp, so clients do not try it (RFC 1939 section 7)
        stamp = " " + self._cfg.timestamp if self._cfg.apop else ""
        self._send("+OK POP3 server ready" + stamp)

    def receive_data(self, data: bytes) -> None:
        if self._phase is Phase.CLOSED:
            return
        if not data:
            self._peer_ended = True
            return
        if self._peer_ended:
            raise LocalProtocolError("receive_data() after EOF")
        if self._phase is Phase.TLS:
            return  # plaintext after an accepted STLS is never interpreted
        self._append(data)

    def next_event(self) -> Event | Signal:
        while True:
            if self._pending is not None or (self._phase is Phase.TLS and not self._peer_ended):
                return PAUSED
            if (ev := self._queued_event(_DECISIONS)) is not None:
                return ev
            if self._phase is Phase.CLOSED:
                return ConnectionClosed()
            if self._closing:
                self._phase = Phase.CLOSED
                continue
            limit = AUTH_LINE_LIMIT if self._phase is Phase.AUTH else COMMAND_LINE_LIMIT
            raw = self._read_line(limit)
            if raw is None:
                if self._peer_ended:
                    self._phase = Phase.CLOSED
                    continue
                return NEED_DATA
            if raw is _TOO_LONG:
                if self._phase is Phase.AUTH:
                    self._phase = Phase.AUTHORIZATION  # the SASL exchange is over
                self._error(ProtocolError("[line too long]", "-ERR line too long"))
                continue
            assert isinstance(raw, bytes)
            if self._phase is Phase.AUTH:
                self._events.append(AuthResponse("[authentication response not logged]", _text(raw).strip()))
            else:
                self._command(raw)

    def _read_line(self, limit: int) -> bytes | object | None:
        buf, pos = self._buf, self._pos
        nl = buf.find(b"\n", pos)
        if self._discarding:
            if nl < 0:
                self._buf, self._pos = b"", 0
                return None
            self._pos = nl + 1
            self._discarding = False
            return _TOO_LONG
        if nl < 0:
            if len(buf) - pos >= limit:
                self._buf, self._pos = b"", 0
                self._discarding = True
            return None
        self._pos = nl + 1
        if nl + 1 - pos > limit:
            return _TOO_LONG
        end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
        return buf[pos:end]

    # -------------------------------------------------------------- decisions

    def login(self, messages: Sequence[tuple[int, str]], text: str = "") -> None:
        """Authenticated and the maildrop is locked: ``messages`` are (size, unique-id), numbered from 1."""
        self._pending_decision(*_LOGIN_EVENTS)
        self._pending = None
        self._sizes = [int(size) for size, _ in messages]
        self._uids = [str(uid) for _, uid in messages]
        self._deleted.clear()
        self._phase = Phase.TRANSACTION
        self._errors = 0
        self._send("+OK" + (" " + text if text else ""))

    def login_failed(self, text: str = "", close: bool = False) -> None:
        self._pending_decision(*_LOGIN_EVENTS)
        self._pending = None  # (as upstream, the USER given still holds)
        self._phase = Phase.AUTHORIZATION
        self._send("-ERR" + (" " + text if text else ""))
        if close:
            self._closing = True

    def challenge(self, text_b64: str) -> None:
        self._pending_decision(AuthStart, AuthResponse)
        self._pending = None
        self._phase = Phase.AUTH
        self._send("+ " + text_b64)

    def accept_stls(self) -> None:
        self._pending_decision(Stls)
        self._pending = None
        self._phase = Phase.TLS
        self._buf, self._pos = b"", 0
        self._discarding = False
        self._send("+OK")

    def tls_established(self) -> None:
        if self._phase is not Phase.TLS:
            raise LocalProtocolError("tls_established() without an accepted STLS")
        self._tls = True
        self._user = None
        self._phase = Phase.AUTHORIZATION

    def accept_retrieve(self, size: int | None = None) -> ByteStuffer:
        """Queue the +OK line; send it, then the content through the returned stuffer."""
        ev = self._pending_decision(Retrieve)
        assert isinstance(ev, Retrieve)
        if self._retrieving:
            raise LocalProtocolError("accept_retrieve() twice")
        self._retrieving = True
        if ev.top_lines is None:
            octets = self._sizes[ev.number - 1] if size is None else size
            self._send(f"+OK {octets} octets")
        else:
            self._send("+OK")
        return ByteStuffer(ev.top_lines)

    def retrieve_done(self) -> None:
        """The whole multi-line response (ByteStuffer.finish() included) has been sent."""
        self._pending_decision(Retrieve)
        if not self._retrieving:
            raise LocalProtocolError("retrieve_done() before accept_retrieve()")
        self._retrieving = False
        self._pending = None
        self._errors = 0

    def update_done(self, ok: bool = True) -> None:
        self._pending_decision(Update)
        self._pending = None
        self._send("+OK signing off" if ok else "-ERR some deleted messages not removed")
        self._phase = Phase.CLOSED

    def reject(self, text: str) -> None:
        """-ERR for a pending Stls or Retrieve (login events: use login_failed)."""
        ev = self._pending_decision(Stls, Retrieve, *_LOGIN_EVENTS)
        if isinstance(ev, _LOGIN_EVENTS):
            self.login_failed(text)
            return
        if self._retrieving:
            raise LocalProtocolError("reject() after accept_retrieve()")
        self._pending = None
        self._send("-ERR" + (" " + text if text else ""))

    def close(self) -> None:
        """The service ends the session (timeout, shutdown): no more events but ConnectionClosed."""
        self._pending = None
        self._events.clear()
        self._quit = True
        self._phase = Phase.CLOSED

    def replies_to_send(self) -> list[bytes]:
        """As data_to_send(), one item per reply (a multi-line response is one item)."""
        replies = list(self._out)
        self._out.clear()
        return replies

    # ------------------------------------------------------------- commands

    def _send(self, line: str) -> None:
        self._out.append(encode_line(line) + b"\r\n")

    def _send_lines(self, first: str, lines: Sequence[str]) -> None:
        self._out.append(encode_line("".join(f"{x}\r\n" for x in (first, *lines, "."))))

    def _ok(self, ev: Event, text: str = "") -> None:
        self._errors = 0
        self._send("+OK" + (" " + text if text else ""))
        self._events.append(ev)

    def _error(self, ev: ProtocolError) -> None:
        self._errors += 1
        self._send(ev.reply)
        self._events.append(ev)
        if self._cfg.max_errors and self._errors >= self._cfg.max_errors:
            self._send("-ERR too many errors")
            self._closing = True

    def _command(self, raw: bytes) -> None:
        text = _text(raw)
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        log_line = _log_line(text)
        entry = _COMMANDS.get(verb)
        if entry is None:
            self._error(ProtocolError(log_line, "-ERR"))
            return
        method, phases = entry
        if self._phase not in phases:
            self._error(ProtocolError(log_line, _WRONG_STATE.get(self._phase, "-ERR invalid state")))
            return
        if verb in _NEED_TLS and self._cfg.tls_required and not self._tls:
            self._error(ProtocolError(log_line, "-ERR must use STLS first"))
            return
        self._raw_arg = raw.partition(b" ")[2]
        handler: Callable[[str, str], None] = getattr(self, method)
        handler(log_line, arg)

    def _cmd_capa(self, line: str, arg: str) -> None:
        caps = ["USER"] if self._cfg.user_pass else []
        caps += ["CAPA", "TOP", "UIDL"]
        if self._cfg.stls and not self._cfg.secure:  # upstream's place and rule (even after STLS)
            caps.append("STLS")
        mechs = self.mechanisms
        if mechs:
            caps.append("SASL " + " ".join(mechs))
        self._errors = 0
        self._send_lines("+OK capability list follows", caps)
        self._events.append(Capa(line))

    def _cmd_quit(self, line: str, arg: str) -> None:
        self._errors = 0
        self._quit = True
        if self._phase is Phase.TRANSACTION:
            self._phase = Phase.UPDATE
            self._events.append(Update(line, self.deleted))
            return
        self._send("+OK signing off")
        self._events.append(Quit(line))
        self._closing = True

    def _cmd_user(self, line: str, arg: str) -> None:
        if not self._cfg.user_pass:
            self._error(ProtocolError(line, _NO_USER_PASS))
            return
        # the first word, as upstream ("USER a b" is "a"); an empty name is taken ("+OK user: ")
        first = _FIRST_WORD.match(arg)
        name = first[1] if first else ""
        self._user = name
        self._ok(User(line, name), f"user: {name}")

    def _cmd_pass(self, line: str, arg: str) -> None:
        user = self._user
        if user is None:
            self._error(ProtocolError(line, "-ERR"))
            return
        first = _FIRST_WORD_OCTETS.match(self._raw_arg)
        self._events.append(Pass(line, user, self._raw_arg, first[1] if first else b""))

    def _cmd_apop(self, line: str, arg: str) -> None:
        if not self._cfg.apop:
            self._error(ProtocolError(line, "-ERR"))
            return
        parts = arg.split()  # (a missing name or digest fails as a login, as upstream; extra words: ignored)
        user = parts[0] if parts else ""
        digest = parts[1].lower() if len(parts) > 1 else ""
        self._events.append(Apop(line, user, digest, self._cfg.timestamp))

    def _cmd_auth(self, line: str, arg: str) -> None:
        parts = arg.split()
        if not parts:
            self._errors = 0
            self._send_lines("+OK", list(self.mechanisms))
            self._events.append(Noop(line))
            return
        mechanism = parts[0].upper()
        if mechanism not in self.mechanisms:
            self._error(ProtocolError(line, "-ERR invalid mechanism"))
            return
        # as upstream: "=" is no initial response, and words after the initial response are ignored
        initial = parts[1] if len(parts) > 1 and parts[1] != "=" else None
        if initial is not None and mechanism.startswith("CRAM-"):
            self._error(ProtocolError(line, "-ERR invalid initial response"))
            return
        self._events.append(AuthStart(line, mechanism, initial))

    def _cmd_stls(self, line: str, arg: str) -> None:
        if not self._cfg.stls or self._tls:
            self._error(ProtocolError(line, "-ERR"))
            return
        self._events.append(Stls(line))

    def _message(self, line: str, text: str, invalid: str = "-ERR") -> int | None:
        """The live message numbered ``text``, else ``invalid`` is the reply (upstream's: ``-ERR
        invalid id`` for LIST and UIDL, a bare ``-ERR`` for the others)."""
        n = _number(text)
        if n is None or not 1 <= n <= len(self._sizes) or n in self._deleted:
            self._error(ProtocolError(line, invalid))
            return None
        return n

    def _live(self) -> list[int]:
        return [n for n in range(1, len(self._sizes) + 1) if n not in self._deleted]

    def _cmd_stat(self, line: str, arg: str) -> None:
        live = self._live()
        self._ok(Stat(line), f"{len(live)} {sum(self._sizes[n - 1] for n in live)}")

    def _cmd_list(self, line: str, arg: str) -> None:
        self._listing(line, arg, self._sizes, List)

    def _cmd_uidl(self, line: str, arg: str) -> None:
        self._listing(line, arg, self._uids, Uidl)

    def _listing(self, line: str, arg: str, values: Sequence[object], kind: type[List] | type[Uidl]) -> None:
        if arg.strip():
            n = self._message(line, arg, "-ERR invalid id")
            if n is not None:
                self._ok(kind(line, n), f"{n} {values[n - 1]}")
            return
        live = self._live()
        self._errors = 0
        self._send_lines(f"+OK {len(live)} message(s)", [f"{n} {values[n - 1]}" for n in live])
        self._events.append(kind(line, None))

    def _cmd_retr(self, line: str, arg: str) -> None:
        n = self._message(line, arg)
        if n is not None:
            self._events.append(Retrieve(line, n, None))

    def _cmd_top(self, line: str, arg: str) -> None:
        parts = arg.split()
        if len(parts) != 2:
            self._error(ProtocolError(line, "-ERR"))
            return
        count = _number(parts[1])
        if count is None:
            self._error(ProtocolError(line, "-ERR"))
            return
        n = self._message(line, parts[0])
        if n is not None:
            self._events.append(Retrieve(line, n, count))

    def _cmd_dele(self, line: str, arg: str) -> None:
        n = self._message(line, arg)
        if n is not None:
            self._deleted.add(n)
            self._ok(Dele(line, n))

    def _cmd_noop(self, line: str, arg: str) -> None:
        self._ok(Noop(line))

    def _cmd_rset(self, line: str, arg: str) -> None:
        self._deleted.clear()
        self._ok(Rset(line))


_TOO_LONG = object()
