"""Sans-IO SMTP client: the forwarding side of the protocol as a state machine.

What it is for: everything the forwarder says to the next-hop server and how
it reads the answers -- greeting, EHLO (HELO fallback), STARTTLS, the SASL
exchange hooks, MAIL/RCPT (pipelined when offered and enabled), DATA (BDAT for
BINARYMIME content), RSET after a failure for connection reuse, QUIT -- with
no sockets, files, clocks or logging.  The service feeds received bytes in (:meth:`SmtpClient.receive_data`,
``b""`` for EOF), takes events out (:meth:`SmtpClient.next_event` until
``NEED_DATA``), calls the action methods, and writes
:meth:`SmtpClient.data_to_send` to the socket.  Timeouts belong to the
service: :attr:`SmtpClient.awaiting_reply` says whether one should run.

What it expects: the service reacts to events (``SessionReady`` ->
``send_envelope``/``starttls``/``start_auth``, ``ReadyForContent`` ->
``send_content`` ... ``end_content``, ``AuthChallenge`` -> ``auth_response``,
``MessageSent``/``MessageFailed`` -> next message or ``quit``).  Content has
been pre-scanned with :func:`~emailrelay.protocol.content_encoding.content_problems`
(a line over 998 octets must be refused before MAIL).  Calling an action in
the wrong state raises :class:`ClientUsageError` (a bug in the caller).

What it guarantees:
- Processing is eager and chunking-independent: the same server bytes give
  the same events and the same client bytes however they are split.
- A reply line ends at LF, with or without the CR before it (E-MailRelay
  2.6b waits for a CRLF and fails the message with a response timeout:
  docs/decisions.md, "Forwarding").  Every malformed
  input from the server -- a line without a 3-digit code in 100..599, a line
  over 65536 octets (upstream takes any length; lines over 4096 fail only
  their message, as upstream's), a multi-line reply switching codes, an
  over-long multi-line reply, a reply nobody asked for -- and every 421 or
  unexpected EOF is exactly one :class:`SessionFailed`, after which nothing
  more happens.  It never raises on server input.
- A reply that makes no sense where it comes is E-MailRelay 2.6b's
  "unexpected response", a :class:`SessionFailed` with that reply: a
  greeting other than 220, an EHLO reply other than 250 (500, 501 and 502
  mean HELO, unless ``esmtp_required``), a MAIL reply under 400 other than
  250, a DATA reply under 400 other than 354.  As upstream, any RCPT reply
  under 400 accepts the recipient and any final reply outside 2xx fails the
  message with that reply.
- :attr:`SmtpClient.long_line` keeps the size of the first reply line over
  1000 octets (traced or not), for the service's warning, as upstream's.
- DATA is never pipelined: all RCPT replies are in before DATA (or the first
  BDAT) goes out, so with forward-to-all a permanently rejected (5xx)
  recipient aborts the message before any content is sent.
- Recipients: by default (E-MailRelay 2.6b's way) every refusal, 4xx or
  5xx, is a rejection: with forward-to-all one rejection fails the message,
  with forward-to-some the message goes to the accepted ones and
  :class:`MessageSent` lists the rejected.  A message failed for its
  recipients is followed at once by ``RSET``, and :class:`MessageFailed`
  comes with that reply (``rset``) and the reason ``one or more recipients
  rejected`` (``all recipients rejected`` under forward-to-some when none was
  accepted).  With ``defer_transient`` (the service's back-off) recipients
  refused with a 4xx (RFC 5321 4.5.3.1.10: ``452`` too many recipients)
  while others were accepted do not stop the message: it goes to the
  accepted ones and :class:`MessageSent` lists them as ``deferred`` for the
  service to send in a further transaction (``send_envelope`` again, no RSET
  needed); without pipelining, RCPTs after a ``452`` are not sent at all;
  and a ``421`` ends the session whatever it answers.  Without it a ``421``
  to MAIL, RCPT, DATA, the content or the RSET after refused recipients is
  that command's reply.
- ``RSET`` is sent only where a transaction is left open: after a failure
  for the recipients (at once) and after a refused DATA or BDAT chunk (before
  the next command); never after a refused MAIL or a final reply.
- Bytes the server sends after its 220 to STARTTLS (in the same read, or
  before :meth:`SmtpClient.tls_established`) are discarded.
- Outgoing content has canonical CRLF line ends and is dot-stuffed (DATA) or
  framed (BDAT), see :mod:`emailrelay.protocol.content_encoding`.  Command
  arguments holding CR, LF or NUL are refused with ``ValueError``; a command is
  sent in UTF-8, its surrogate escapes (an envelope's octets that are not
  UTF-8) as the octets they stand for.
- Authentication responses are never put in the trace.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from emailrelay.protocol.addresses import xtext_encode
from emailrelay.protocol.content_encoding import BdatEncoder, DataEncoder

MAX_REPLY_LINE = 65536  # octets excluding the line end (bounded memory: upstream has no limit)
MAX_REPLY_LINES = 256  # lines in one multi-line reply
LONG_REPLY_LINE = 1000  # octets: E-MailRelay 2.6b warns of a longer reply line (see long_line)
BDAT_CHUNK = 1_000_000  # octets per BDAT command, E-MailRelay 2.6b's

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "NEED_DATA",
    "AuthChallenge",
    "AuthDone",
    "Capabilities",
    "ClientConfig",
    "ClientUsageError",
    "Closed",
    "Event",
    "Greeted",
    "MessageFailed",
    "MessageSent",
    "NeedData",
    "ReadyForContent",
    "RecipientsResult",
    "Reply",
    "SessionFailed",
    "SessionReady",
    "SmtpClient",
    "StartTlsReady",
    "State",
    "parse_ehlo",
    "xtext_encode",
]


class ClientUsageError(RuntimeError):
    """An action method was called in a state where it makes no sense."""


class NeedData:
    """Type of the :data:`NEED_DATA` sentinel."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Reply:
    """A complete (possibly multi-line) server reply; ``lines`` are the texts."""

    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return self.lines[-1] if self.lines else ""

    @property
    def message(self) -> str:
        return "; ".join(self.lines)

    def is_positive(self) -> bool:
        return 200 <= self.code <= 299

    def is_intermediate(self) -> bool:
        return 300 <= self.code <= 399

    def is_transient(self) -> bool:
        return 400 <= self.code <= 499

    def is_permanent(self) -> bool:
        return 500 <= self.code <= 599

    def __str__(self) -> str:
        message = self.message
        return f"{self.code} {message}" if message else str(self.code)


@dataclass(frozen=True)
class Capabilities:
    """What the server's EHLO reply offered (all off after HELO)."""

    pipelining: bool = False
    chunking: bool = False
    binarymime: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    starttls: bool = False
    size: int | None = None  # None: SIZE not offered; 0: offered without a limit
    auth_mechanisms: tuple[str, ...] = ()
    raw: list[str] = field(default_factory=list)

    @property
    def auth(self) -> bool:
        return bool(self.auth_mechanisms)


@dataclass(frozen=True)
class ClientConfig:
    helo_name: str  # EHLO argument (the service computes it)
    pipelining: bool = True  # use PIPELINING when the server offers it (the forwarder: opt-in)
    chunking: bool = True  # BINARYMIME content by BDAT when CHUNKING and BINARYMIME are offered
    smtputf8_strict: bool = False  # (no effect: a message needing SMTPUTF8 fails without it anyway)
    eightbit_strict: bool = False  # fail 8BITMIME content when the server lacks 8BITMIME
    binarymime_strict: bool = False  # (no effect: BINARYMIME content fails without BDAT anyway)
    forward_to_some: bool = False  # False = --forward-to-all
    send_auth_param: bool = True  # False with --anonymous=client: AUTH=<> instead of a name (as 2.6b)
    defer_transient: bool = False  # back-off: 4xx recipients are deferred, 421 ends the session
    esmtp_required: bool = False  # STARTTLS is a must (--client-tls-required): no HELO fallback


class Event:
    """Base class of the client events."""

    __slots__ = ()


@dataclass(frozen=True)
class Greeted(Event):
    reply: Reply


@dataclass(frozen=True)
class SessionReady(Event):
    capabilities: Capabilities


@dataclass(frozen=True)
class StartTlsReady(Event):
    pass


@dataclass(frozen=True)
class AuthChallenge(Event):
    reply: Reply

    @property
    def payload(self) -> str:
        return self.reply.text


@dataclass(frozen=True)
class AuthDone(Event):
    success: bool
    reply: Reply


@dataclass(frozen=True)
class RecipientsResult(Event):
    accepted: list[str]
    rejected: list[tuple[str, Reply]]


@dataclass(frozen=True)
class ReadyForContent(Event):
    pass


@dataclass(frozen=True)
class MessageSent(Event):
    reply: Reply
    accepted: list[str]
    rejected: list[tuple[str, Reply]]  # refused for good (5xx): only with forward-to-some
    deferred: list[tuple[str, Reply]] = field(default_factory=list)  # 4xx: for a later transaction


@dataclass(frozen=True)
class MessageFailed(Event):
    reply: Reply | None
    stage: str  # "mail" | "rcpt" | "data" | "content" | "policy"
    rejected: list[tuple[str, Reply]]
    reason: str
    rset: Reply | None = None  # stage "rcpt": the reply to the RSET that followed


@dataclass(frozen=True)
class SessionFailed(Event):
    reply: Reply | None
    stage: str
    reason: str


@dataclass(frozen=True)
class Closed(Event):
    pass


class State(StrEnum):
    GREETING = "greeting"  # waiting for the 220
    EHLO = "ehlo"  # EHLO or HELO sent
    READY = "ready"  # idle: send_envelope / starttls / start_auth / quit
    STARTTLS = "starttls"  # STARTTLS sent
    TLS_HANDSHAKE = "tls-handshake"  # 220 received; waiting for tls_established()
    AUTH = "auth"  # AUTH exchange in progress
    ENVELOPE = "envelope"  # MAIL/RCPT sent, replies outstanding
    DATA = "data"  # DATA sent, waiting for 354
    CONTENT = "content"  # ReadyForContent given: send_content / end_content
    FINAL = "final"  # content ended, waiting for the final reply
    QUIT = "quit"  # QUIT sent
    CLOSED = "closed"
    FAILED = "failed"


_TERMINAL = (State.CLOSED, State.FAILED)

# Which stage a failure is reported under, by the command whose reply it is.
_STAGE = {
    "greeting": "greeting",
    "ehlo": "ehlo",
    "helo": "helo",
    "starttls": "starttls",
    "auth": "auth",
    "rset": "rset",
    "rset_fail": "rset",
    "mail": "mail",
    "rcpt": "rcpt",
    "data": "data",
    "bdat": "content",
    "bdat_last": "content",
    "dot": "content",
    "quit": "quit",
}

# Replies that belong to a message: without defer_transient a 421 to one of these is its reply
# (to the RSET after refused recipients too: the message fails for them, the RSET's code its
# ReasonCode, as E-MailRelay 2.6b's).
_TRANSACTION = ("mail", "rcpt", "data", "bdat", "bdat_last", "dot", "rset_fail")

_FORBIDDEN_IN_COMMANDS = re.compile(r"[\r\n\x00]")
_EHLO_UNKNOWN = (500, 501, 502)  # EHLO refusals that mean "say HELO", as E-MailRelay 2.6b takes them
_INVALID = "invalid response"  # E-MailRelay 2.6b's words for a malformed reply line
_NO_ESMTP = "tls is mandated but the server cannot do esmtp"  # (upstream's words)
_XTEXT = re.compile(r"<>|(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")


def parse_ehlo(reply: Reply) -> Capabilities:
    """Capabilities from a positive EHLO reply (the first line is the greeting)."""
    flags: dict[str, bool] = {}
    size: int | None = None
    mechanisms: list[str] = []
    raw = reply.lines[1:]
    for line in raw:
        words = line.split()
        if not words:
            continue
        keyword = words[0].upper()
        if keyword in ("PIPELINING", "CHUNKING", "BINARYMIME", "8BITMIME", "SMTPUTF8", "STARTTLS"):
            flags[keyword] = True
        elif keyword == "SIZE":
            size = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        elif keyword == "AUTH" or keyword.startswith("AUTH="):
            names = ([keyword[5:]] if keyword.startswith("AUTH=") else []) + [w.upper() for w in words[1:]]
            for name in names:
                if name and name not in mechanisms:
                    mechanisms.append(name)
    return Capabilities(
        pipelining=flags.get("PIPELINING", False),
        chunking=flags.get("CHUNKING", False),
        binarymime=flags.get("BINARYMIME", False),
        eightbitmime=flags.get("8BITMIME", False),
        smtputf8=flags.get("SMTPUTF8", False),
        starttls=flags.get("STARTTLS", False),
        size=size,
        auth_mechanisms=tuple(mechanisms),
        raw=list(raw),
    )


# --------------------------------------------------------------------------- internals


class _Txn:
    """One message: the envelope and what the server said about it so far."""

    __slots__ = (
        "accepted", "awaiting", "binary", "done", "encoder", "fail_reply", "mail_reply", "pending", "rejected",
        "use_bdat",
    )  # fmt: skip

    def __init__(self, use_bdat: bool, binary: bool, awaiting: int) -> None:
        self.use_bdat = use_bdat
        self.binary = binary
        self.awaiting = awaiting  # MAIL + RCPT replies still to come
        self.mail_reply: Reply | None = None
        self.accepted: list[str] = []
        self.rejected: list[tuple[str, Reply]] = []
        self.done = False  # outcome reported: later replies for it are discarded
        self.encoder: DataEncoder | BdatEncoder | None = None
        self.fail_reply: Reply | None = None  # failed for its recipients: the first refusal
        self.pending = bytearray()  # BDAT: content not yet framed (chunks of BDAT_CHUNK octets)


class _Expect:
    """A command that has been (or will be) written and whose reply is owed."""

    __slots__ = ("arg", "kind", "txn")

    def __init__(self, kind: str, txn: _Txn | None = None, arg: str = "") -> None:
        self.kind = kind
        self.txn = txn
        self.arg = arg


class SmtpClient:
    """The client protocol state machine; see the module docstring."""

    def __init__(self, config: ClientConfig, *, trace: bool = True) -> None:
        _check_arg(config.helo_name, "helo name")
        self._config = config
        self._helo_name = config.helo_name
        self._tracing = trace
        self._trace: list[tuple[str, str]] = []
        self._state = State.GREETING
        self._caps = Capabilities()
        self._inbuf = bytearray()
        self._scan_from = 0
        self._reply_code: int | None = None
        self._reply_lines: list[str] = []
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self._pending: deque[tuple[bytes, str, _Expect]] = deque()  # queued, not yet written
        self._expect: deque[_Expect] = deque([_Expect("greeting")])  # written, reply owed
        self._rset_needed = False
        self._txn: _Txn | None = None
        self._discard_input = False
        self._content_aborted = False
        self._quit_sent = False
        self._auth_challenged = False
        self._late_greeting = False  # skip_greeting(): a 220 that comes later is not the EHLO reply
        self.long_line: int | None = None  # octets of the first reply line over LONG_REPLY_LINE
        self._handlers = {
            "greeting": self._on_greeting,
            "ehlo": self._on_ehlo,
            "helo": self._on_helo,
            "starttls": self._on_starttls,
            "auth": self._on_auth,
            "rset": self._on_rset,
            "rset_fail": self._on_rset_fail,
            "mail": self._on_mail,
            "rcpt": self._on_rcpt,
            "data": self._on_data,
            "bdat": self._on_bdat,
            "bdat_last": self._on_final,
            "dot": self._on_final,
        }

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> State:
        return self._state

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def pipelining_active(self) -> bool:
        return self._config.pipelining and self._caps.pipelining

    @property
    def chunking_active(self) -> bool:
        """BINARYMIME content can go (by BDAT): CHUNKING and BINARYMIME offered, chunking enabled.
        Other content goes by DATA, as E-MailRelay 2.6b sends it."""
        return self._config.chunking and self._caps.chunking and self._caps.binarymime

    @property
    def awaiting_reply(self) -> bool:
        """A reply is owed by the server: the service should run its response timer."""
        return bool(self._expect) and self._state not in _TERMINAL and not self._discard_input

    # ------------------------------------------------------------------ I/O side

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means EOF."""
        if self._state in _TERMINAL:
            return
        if not data:
            self._on_eof()
            return
        if self._discard_input:
            return
        self._inbuf += data
        self._parse()

    def set_helo_name(self, name: str) -> None:
        """The EHLO/HELO argument, when it is only known once connected (the local address)."""
        _check_arg(name, "helo name")
        self._helo_name = name

    def skip_greeting(self) -> None:
        """``--prompt-timeout``: no greeting came in time; go ahead with EHLO without it."""
        if self._state is not State.GREETING or not self._expect or self._expect[0].kind != "greeting":
            return
        self._expect.popleft()
        self._late_greeting = True
        self._state = State.EHLO
        self._queue(f"EHLO {self._helo_name}", _Expect("ehlo"))

    def next_event(self) -> Event | NeedData:
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def drain_trace(self) -> list[tuple[str, str]]:
        """``[("tx", "MAIL FROM:<a>"), ("rx", "250 ok"), ...]`` since the last call."""
        trace = self._trace
        self._trace = []
        return trace

    # ------------------------------------------------------------------ actions

    def starttls(self) -> None:
        self._require(State.READY, "starttls")
        self._state = State.STARTTLS
        self._queue("STARTTLS", _Expect("starttls"))

    def tls_established(self) -> None:
        self._require(State.TLS_HANDSHAKE, "tls_established")
        self._discard_input = False
        self._inbuf.clear()
        self._scan_from = 0
        self._caps = Capabilities()
        self._state = State.EHLO
        self._queue(f"EHLO {self._helo_name}", _Expect("ehlo"))

    def start_auth(self, mechanism: str, initial_response: str | None = None, *, show: bool = False) -> None:
        """``AUTH <mechanism> [<initial response>]``; the response is traced only with ``show``
        (LOGIN's user name, as E-MailRelay 2.6b logs it), else as ``[not logged]``."""
        self._require(State.READY, "start_auth")
        _check_arg(mechanism, "mechanism")
        line = f"AUTH {mechanism}"
        trace = line
        if initial_response is not None:
            _check_arg(initial_response, "initial response")
            line += " " + (initial_response or "=")
            trace = line if show else trace + " [not logged]"
        self._state = State.AUTH
        self._auth_challenged = False
        self._queue(line, _Expect("auth"), trace)

    def auth_response(self, text: str) -> None:
        if self._state is not State.AUTH or not self._auth_challenged:
            raise ClientUsageError(f"auth_response() without a challenge (state {self._state})")
        _check_arg(text, "authentication response")
        self._auth_challenged = False
        self._queue(text, _Expect("auth"), "[response not logged]")

    def send_envelope(
        self,
        mail_from: str,
        recipients: list[str],
        *,
        size: int | None = None,
        body: str | None = None,
        smtputf8: bool = False,
        auth: str | None = None,
    ) -> None:
        """Start a message.  ``body`` is "7BIT", "8BITMIME", "BINARYMIME" or None;
        ``auth`` is the xtext AUTH= value ("<>" allowed), sent only when the
        server offered AUTH; with ``send_auth_param`` off it is sent as "<>"."""
        self._require(State.READY, "send_envelope")
        if not recipients:
            raise ValueError("send_envelope: no recipients")
        for address in (mail_from, *recipients):
            _check_arg(address, "address")
        if auth is not None and not _XTEXT.fullmatch(auth):
            raise ValueError(f"send_envelope: AUTH value is not xtext: {auth!r}")
        body_type = body.upper() if body else None
        if body_type not in (None, "7BIT", "8BITMIME", "BINARYMIME"):
            raise ValueError(f"send_envelope: bad body type {body!r}")
        self._content_aborted = False

        caps = self._caps
        config = self._config
        # E-MailRelay 2.6b's policy and words: a message that needs SMTPUTF8 or BINARYMIME fails
        # when the server lacks it (strict or not); 8-bit content fails only with eightbitstrict;
        # the content is looked at first (a UTF-8 BINARYMIME message to a server with neither
        # fails as binarymime), as upstream's
        body_param: str | None = None
        if body_type == "BINARYMIME":
            if not self.chunking_active:
                self._policy_failure("cannot send binarymime message to a non-chunking server")
                return
            body_param = "BINARYMIME"
        elif body_type == "8BITMIME":
            if caps.eightbitmime:
                body_param = "8BITMIME"
            elif config.eightbit_strict:
                self._policy_failure("cannot send 8-bit message to 7-bit server")
                return
        elif body_type == "7BIT" and caps.eightbitmime:
            body_param = "7BIT"
        if smtputf8 and not caps.smtputf8:
            self._policy_failure("cannot send utf8 message to non-smtputf8 server")
            return
        chunking = body_param == "BINARYMIME"  # BDAT only for BINARYMIME content, as upstream

        command = f"MAIL FROM:<{mail_from}>"
        if size is not None and caps.size is not None:
            command += f" SIZE={int(size)}"
        if body_param:
            command += f" BODY={body_param}"
        if smtputf8 and caps.smtputf8:
            command += " SMTPUTF8"
        if auth is not None and caps.auth:
            command += f" AUTH={auth if config.send_auth_param else '<>'}"

        txn = _Txn(use_bdat=chunking, binary=chunking, awaiting=1 + len(recipients))
        self._txn = txn
        self._state = State.ENVELOPE
        self._queue_rset()
        self._pending.append(_command(command, _Expect("mail", txn)))
        for rcpt in recipients:
            self._pending.append(_command(f"RCPT TO:<{rcpt}>", _Expect("rcpt", txn, rcpt)))
        self._flush()

    def send_content(self, chunk: bytes) -> None:
        if not self._content_ok("send_content"):
            return
        txn = self._txn
        assert txn is not None and txn.encoder is not None
        encoder = txn.encoder
        if isinstance(encoder, BdatEncoder):
            pending = txn.pending
            pending += chunk
            while len(pending) > BDAT_CHUNK:  # (the last chunk, even a full one, carries LAST)
                self._bdat(encoder.feed(bytes(pending[:BDAT_CHUNK])), txn, last=False)
                del pending[:BDAT_CHUNK]
        else:
            data = encoder.feed(chunk)
            if data:
                self._out.append(data)

    def end_content(self) -> None:
        if not self._content_ok("end_content"):
            return
        txn = self._txn
        assert txn is not None and txn.encoder is not None
        encoder = txn.encoder
        self._state = State.FINAL
        if isinstance(encoder, BdatEncoder):
            self._bdat(encoder.feed(bytes(txn.pending), last=True), txn, last=True)
            txn.pending.clear()
        else:
            self._out.append(encoder.finish())
            self._expect.append(_Expect("dot", txn))
            self._tx(f"[{encoder.lines} line(s) of content]")
            self._tx(".")

    def _bdat(self, frame: bytes, txn: _Txn, *, last: bool) -> None:
        """One BDAT command and its chunk, in one write; traced as E-MailRelay 2.6b does:
        ``"BDAT 58 LAST" [58 bytes]``."""
        self._out.append(frame)
        self._expect.append(_Expect("bdat_last" if last else "bdat", txn))
        size = txn.encoder.last_size if txn.encoder is not None else 0
        self._tx(f'"BDAT {size}{" LAST" if last else ""}" [{size} bytes]')

    def quit(self) -> None:
        """Send QUIT, dropping a pending RSET and abandoning a message whose
        content has not started; the 221, any other reply, or EOF then gives
        ``Closed``.  Not allowed during the TLS handshake, content, or while
        the final reply is owed."""
        if self._state in _TERMINAL or self._quit_sent:
            return
        if self._state in (State.TLS_HANDSHAKE, State.CONTENT, State.FINAL):
            # Mid-content QUIT would be message data, and after the end of
            # the content the outcome must be waited for (or the message
            # might be delivered twice).
            raise ClientUsageError(f"cannot QUIT in state {self._state}")
        if self._txn is not None:
            self._txn.done = True
            self._txn = None
        self._pending.clear()
        self._rset_needed = False
        self._quit_sent = True
        self._state = State.QUIT
        self._queue("QUIT", _Expect("quit"))

    # ------------------------------------------------------------------ helpers

    def _require(self, state: State, action: str) -> None:
        if self._state is not state:
            raise ClientUsageError(f"{action}() in state {self._state}")

    def _content_ok(self, action: str) -> bool:
        if self._state is State.CONTENT:
            return True
        if self._content_aborted or self._state in _TERMINAL or self._quit_sent:
            return False  # the message already failed: ignore the rest of it
        raise ClientUsageError(f"{action}() in state {self._state}")

    def _tx(self, text: str) -> None:
        if self._tracing:
            self._trace.append(("tx", text))

    def _queue(self, line: str, expect: _Expect, trace: str | None = None) -> None:
        self._queue_rset()
        self._pending.append(_command(line, expect, trace))
        self._flush()

    def _queue_rset(self) -> None:
        if self._rset_needed:
            self._rset_needed = False
            self._pending.append(_command("RSET", _Expect("rset")))

    def _flush(self) -> None:
        pending = self._pending
        pipelining = self.pipelining_active
        while pending:
            if self._expect and not pipelining:
                return
            data, trace, expect = pending.popleft()
            self._out.append(data)
            self._expect.append(expect)
            self._tx(trace)

    def _policy_failure(self, reason: str) -> None:
        self._events.append(MessageFailed(None, "policy", [], reason))

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> None:
        buf = self._inbuf
        pos = 0
        while self._state not in _TERMINAL and not self._discard_input:
            i = buf.find(b"\n", self._scan_from)
            if i < 0:
                if len(buf) - pos > MAX_REPLY_LINE + 1:
                    self._garbage("reply line too long")
                    break
                self._scan_from = len(buf)
                break
            line = bytes(buf[pos:i])
            pos = i + 1
            self._scan_from = pos
            if line.endswith(b"\r"):
                line = line[:-1]
            self._on_line(line)
        if self._state in _TERMINAL or self._discard_input:
            buf.clear()
            self._scan_from = 0
        elif pos:
            del buf[:pos]
            self._scan_from -= pos

    def _on_line(self, line: bytes) -> None:
        if len(line) > MAX_REPLY_LINE:
            self._garbage("reply line too long")
            return
        if len(line) > LONG_REPLY_LINE and self.long_line is None:
            self.long_line = len(line)
        if self._tracing and not self._quit_sent:  # nothing is read after QUIT: the reply is not logged
            self._trace.append(("rx", line.decode("utf-8", "surrogateescape")))  # (not UTF-8: logged raw)
        head = line[:3]
        if len(head) < 3 or not head.isdigit() or (len(line) > 3 and line[3:4] not in (b" ", b"-")):
            self._garbage(_INVALID)
            return
        code = int(head)
        if not 100 <= code <= 599:
            self._garbage(_INVALID)
            return
        if self._reply_code is not None and code != self._reply_code:
            self._garbage(_INVALID)  # (the code changed within a multi-line reply)
            return
        self._reply_lines.append(line[4:].decode("utf-8", "replace"))
        if line[3:4] == b"-":
            self._reply_code = code
            if len(self._reply_lines) >= MAX_REPLY_LINES:
                self._garbage("multi-line reply too long")
            return
        reply = Reply(code, self._reply_lines)
        self._reply_code = None
        self._reply_lines = []
        self._on_reply(reply)

    def _on_reply(self, reply: Reply) -> None:
        if not self._expect:
            reason = "service not available" if reply.code == 421 else "unexpected reply"
            self._session_failed(reply, self._stage(), reason)
            return
        if self._late_greeting and reply.code == 220 and self._expect[0].kind == "ehlo":
            self._late_greeting = False
            return  # the greeting after all, late: not the EHLO reply
        expect = self._expect.popleft()
        if expect.kind == "quit":
            self._closed()
            return
        if self._quit_sent:
            self._flush()  # replies to commands before QUIT no longer matter
            return
        if reply.code == 421 and (self._config.defer_transient or expect.kind not in _TRANSACTION):
            self._session_failed(reply, _STAGE[expect.kind], "service not available")
            return
        if expect.txn is not None and expect.txn.done:
            return  # a reply for a message whose outcome is already reported
        self._handlers[expect.kind](expect, reply)
        if self._state not in _TERMINAL:
            self._flush()

    def _on_eof(self) -> None:
        if self._quit_sent:
            self._closed()
        else:
            self._session_failed(None, self._stage(), "connection closed by the server")

    def _stage(self) -> str:
        if self._expect:
            return _STAGE[self._expect[0].kind]
        if self._state in (State.CONTENT, State.FINAL):
            return "content"
        return str(self._state)

    def _unexpected(self, reply: Reply, stage: str) -> None:
        """A reply that makes no sense here: E-MailRelay 2.6b's "unexpected response" (a session error)."""
        self._session_failed(reply, stage, f"unexpected response: {reply}")

    def _garbage(self, reason: str) -> None:
        self._session_failed(None, self._stage(), reason)

    def _session_failed(self, reply: Reply | None, stage: str, reason: str) -> None:
        self._events.append(SessionFailed(reply, stage, reason))
        self._end(State.FAILED)

    def _closed(self) -> None:
        self._events.append(Closed())
        self._end(State.CLOSED)

    def _end(self, state: State) -> None:
        self._state = state
        self._pending.clear()
        self._expect.clear()
        self._out.clear()
        self._inbuf.clear()
        self._scan_from = 0
        self._txn = None
        self._discard_input = False

    # ------------------------------------------------------------------ reply handlers

    def _on_greeting(self, expect: _Expect, reply: Reply) -> None:
        if reply.code != 220:
            self._session_failed(reply, "greeting", f"greeting rejected: {reply}")
            return
        self._events.append(Greeted(reply))
        self._state = State.EHLO
        self._queue(f"EHLO {self._helo_name}", _Expect("ehlo"))

    def _on_ehlo(self, expect: _Expect, reply: Reply) -> None:
        if reply.code == 250:
            self._caps = parse_ehlo(reply)
            self._ready()
        elif reply.code in _EHLO_UNKNOWN and self._config.esmtp_required:
            self._session_failed(None, "ehlo", _NO_ESMTP)
        elif reply.code in _EHLO_UNKNOWN:  # EHLO not understood: HELO (any other reply ends it)
            self._queue(f"HELO {self._helo_name}", _Expect("helo"))
        else:
            self._session_failed(reply, "ehlo", f"EHLO rejected: {reply}")

    def _on_helo(self, expect: _Expect, reply: Reply) -> None:
        if reply.is_positive():
            self._caps = Capabilities()
            self._ready()
        else:
            self._session_failed(reply, "helo", f"HELO rejected: {reply}")

    def _ready(self) -> None:
        self._state = State.READY
        self._events.append(SessionReady(self._caps))

    def _on_starttls(self, expect: _Expect, reply: Reply) -> None:
        if reply.is_positive():
            self._state = State.TLS_HANDSHAKE
            self._discard_input = True  # anything after the 220 is an injection
            self._events.append(StartTlsReady())
        else:
            self._session_failed(reply, "starttls", f"STARTTLS rejected: {reply}")

    def _on_auth(self, expect: _Expect, reply: Reply) -> None:
        if reply.code == 334:
            self._auth_challenged = True
            self._events.append(AuthChallenge(reply))
            return
        self._state = State.READY
        self._events.append(AuthDone(reply.is_positive(), reply))

    def _on_rset(self, expect: _Expect, reply: Reply) -> None:
        if not reply.is_positive():
            self._session_failed(reply, "rset", f"RSET rejected: {reply}")

    def _on_rset_fail(self, expect: _Expect, reply: Reply) -> None:
        """The RSET after a failure for the recipients: now the message's outcome is known (also
        when the RSET is refused: E-MailRelay 2.6b goes on with the next message)."""
        txn = expect.txn
        assert txn is not None and txn.fail_reply is not None
        txn.done = True
        self._txn = None
        self._state = State.READY
        self._events.append(MessageFailed(txn.fail_reply, "rcpt", list(txn.rejected), expect.arg, rset=reply))

    def _on_mail(self, expect: _Expect, reply: Reply) -> None:
        txn = expect.txn
        assert txn is not None
        if reply.code < 400 and reply.code != 250:
            self._unexpected(reply, "mail")
            return
        txn.mail_reply = reply
        txn.awaiting -= 1
        if not reply.is_positive():
            # Without pipelining the RCPTs are still queued: never send them.
            before = len(self._pending)
            self._pending = deque(c for c in self._pending if c[2].txn is not txn)
            txn.awaiting -= before - len(self._pending)
        self._envelope_progress(txn)

    def _on_rcpt(self, expect: _Expect, reply: Reply) -> None:
        txn = expect.txn
        assert txn is not None
        txn.awaiting -= 1
        if txn.mail_reply is not None and txn.mail_reply.is_positive():
            if reply.code < 400:  # (any such reply accepts it, as upstream takes them)
                txn.accepted.append(expect.arg)
            else:
                txn.rejected.append((expect.arg, reply))
                if reply.code == 452 and self._config.defer_transient:
                    self._defer_unsent(txn, reply)
        self._envelope_progress(txn)

    def _defer_unsent(self, txn: _Txn, reply: Reply) -> None:
        """``452`` (too many recipients): RCPTs of this message not yet written
        (no pipelining) are not sent; they count as refused with that reply."""
        keep: deque[tuple[bytes, str, _Expect]] = deque()
        for command in self._pending:
            expect = command[2]
            if expect.txn is txn and expect.kind == "rcpt":
                txn.awaiting -= 1
                txn.rejected.append((expect.arg, reply))
            else:
                keep.append(command)
        self._pending = keep

    def _envelope_progress(self, txn: _Txn) -> None:
        if txn.awaiting:
            return
        mail_reply = txn.mail_reply
        assert mail_reply is not None
        if not mail_reply.is_positive():
            self._message_failed(txn, mail_reply, "mail", f"sender rejected: {mail_reply}", rset=False)
            return
        self._events.append(RecipientsResult(list(txn.accepted), list(txn.rejected)))
        some = self._config.forward_to_some
        if not txn.accepted:
            reason = "all recipients rejected" if some else "one or more recipients rejected"
            self._fail_with_rset(txn, txn.rejected[0][1], reason)
            return
        refused = [
            (rcpt, r) for rcpt, r in txn.rejected if not (self._config.defer_transient and r.is_transient())
        ]
        if refused and not some:
            self._fail_with_rset(txn, refused[0][1], "one or more recipients rejected")
            return
        if txn.use_bdat:
            self._start_content(txn)
        else:
            self._state = State.DATA
            self._queue("DATA", _Expect("data", txn))

    def _fail_with_rset(self, txn: _Txn, first: Reply, reason: str) -> None:
        """Failed for its recipients: RSET now; its reply gives the MessageFailed."""
        txn.fail_reply = first
        self._queue("RSET", _Expect("rset_fail", txn, reason))

    def _start_content(self, txn: _Txn) -> None:
        txn.encoder = BdatEncoder(binary=txn.binary) if txn.use_bdat else DataEncoder()
        self._state = State.CONTENT
        self._events.append(ReadyForContent())

    def _on_data(self, expect: _Expect, reply: Reply) -> None:
        txn = expect.txn
        assert txn is not None
        if reply.code == 354:
            self._start_content(txn)
        elif reply.code < 400:
            self._unexpected(reply, "data")
        else:
            self._message_failed(txn, reply, "data", f"DATA rejected: {reply}")

    def _on_bdat(self, expect: _Expect, reply: Reply) -> None:
        txn = expect.txn
        assert txn is not None
        if not reply.is_positive():
            self._message_failed(txn, reply, "content", f"BDAT rejected: {reply}")

    def _on_final(self, expect: _Expect, reply: Reply) -> None:
        txn = expect.txn
        assert txn is not None
        if reply.is_positive():
            txn.done = True
            self._txn = None
            self._state = State.READY
            defer = self._config.defer_transient
            refused = [(rcpt, r) for rcpt, r in txn.rejected if not (defer and r.is_transient())]
            deferred = [(rcpt, r) for rcpt, r in txn.rejected if defer and r.is_transient()]
            self._events.append(MessageSent(reply, list(txn.accepted), refused, deferred))
        else:
            self._message_failed(txn, reply, "content", f"message rejected: {reply}", rset=False)

    def _message_failed(self, txn: _Txn, reply: Reply, stage: str, reason: str, *, rset: bool = True) -> None:
        """The message failed; ``rset``: the transaction is still open on the server (a refused
        DATA or BDAT chunk), so RSET goes before the next command."""
        if self._state is State.CONTENT:
            self._content_aborted = True  # ignore the rest of this message's content
        txn.done = True
        self._txn = None
        self._rset_needed = rset
        self._state = State.READY
        self._events.append(MessageFailed(reply, stage, list(txn.rejected), reason))


def _check_arg(text: str, what: str) -> None:
    if _FORBIDDEN_IN_COMMANDS.search(text):
        raise ValueError(f"{what} holds CR, LF or NUL: {text!r}")


def _command(line: str, expect: _Expect, trace: str | None = None) -> tuple[bytes, str, _Expect]:
    return (line.encode("utf-8", "surrogateescape") + b"\r\n", line if trace is None else trace, expect)
