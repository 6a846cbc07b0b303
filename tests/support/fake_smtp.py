"""A scriptable SMTP server for tests: the next hop the relay forwards to.

What it is for: integration tests that need a next hop which accepts,
refuses, stalls or misbehaves on cue, and that can tell exactly what it
received.  It is a real TCP server (asyncio, on its own event loop in a
background thread), so sync tests drive the relay as a subprocess and then
look at ``server.messages``.

What it expects: to be used as a context manager (or ``start()``/``stop()``)::

    with FakeSmtp(replies={"final": "550 5.7.1 no"}) as hop:
        run relay --as-client 127.0.0.1:{hop.port}
        assert hop.messages == []

Scripting (all of it may be changed while the server runs):

- ``extensions``: EHLO keywords offered, e.g. ``("PIPELINING", "CHUNKING",
  "8BITMIME", "SMTPUTF8", "SIZE 1000000")``; ``helo_only=True`` answers EHLO
  with 500 so the client must fall back to HELO.
- ``replies``: reply per stage: ``greeting``, ``ehlo``, ``helo``, ``mail``,
  ``rcpt``, ``data`` (the reply to the DATA command), ``bdat`` (a non-LAST
  chunk), ``final`` (after the final dot or ``BDAT LAST``), ``rset``,
  ``quit``.  A value is a ``str`` (a reply; ``\\n`` separates lines of a
  multi-line reply), ``bytes`` (sent raw: garbage), :data:`DROP` (close
  the connection without replying), or a callable ``(Session, arg)``
  returning one of those (``arg`` is the command argument, or the
  :class:`Message` for ``final``).
- ``rcpt_replies``: reply per recipient address (overrides ``replies["rcpt"]``).
- ``delays``: seconds to wait before replying, per stage.
- ``drop_in_data``: close the connection after the first chunk of DATA.
- ``idle_timeout``: send ``421`` and close a connection that sends no
  command for that many seconds.
- ``auth``: answers ``AUTH``: a callable ``(Session, lines)`` given the
  exchange so far (the command's argument, then each line the client
  sent) and returning the next reply; the exchange goes on while it
  returns ``334 ...`` (:func:`auth_script` makes one from fixed replies).
  Every exchange is kept in ``auth_exchanges``; ``Session.authenticated``
  is set by a ``235``.  Offer the mechanisms in ``extensions``
  (``"AUTH LOGIN PLAIN"``).  Without ``auth``, AUTH is an unknown command.

What it guarantees:
- DATA ends only at ``CRLF.CRLF``; bare CR or LF never end it; lines are
  dot-unstuffed (a leading ``.`` is removed from a line that starts with
  one); ``Message.data`` is what a strict receiver would store, and
  ``Message.raw`` is the wire bytes before unstuffing.
- ``BDAT n [LAST]`` is understood when ``CHUNKING`` is offered (exactly
  ``n`` octets are read, no unstuffing); otherwise it is a 500.
- ``messages`` holds every message answered with a 2xx final reply (a
  counting sink: :meth:`message_ids`), ``refused`` the ones answered
  otherwise; ``connections`` counts accepted TCP connections, ``commands``
  logs ``(connection number, command line)``, ``batches`` the same lines
  grouped as they came: a group ends with a line that nothing followed in
  the same read (so a client that waits for each reply gives groups of one,
  and one that pipelines MAIL and its RCPTs in one write gives one group of
  them); ``protocol_errors`` records
  what a strict server would object to (commands pipelined without
  PIPELINING, bare LF in command lines, bare CR/LF in DATA, unknown
  commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()

Reply = str | bytes | _Drop
Script = Reply | Callable[["Session", Any], Reply]

DEFAULT_REPLIES: dict[str, Script] = {
    "greeting": "220 fake.test ESMTP ready",
    "ehlo": "",  # built from .extensions
    "helo": "250 fake.test",
    "mail": "250 2.1.0 sender ok",
    "rcpt": "250 2.1.5 recipient ok",
    "data": "354 go ahead",
    "bdat": "",  # "250 2.0.0 <n> octets received"
    "final": "250 2.0.0 queued",
    "rset": "250 2.0.0 reset",
    "noop": "250 2.0.0 ok",
    "quit": "221 2.0.0 bye",
}

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


@dataclass
class Message:
    """One message as the server received it."""

    mail_from: str
    rcpts: list[str]
    data: bytes  # after dot-unstuffing, without the terminating ".CRLF"
    raw: bytes  # as on the wire (stuffed; BDAT chunks concatenated)
    connection: int
    via: str  # "DATA" | "BDAT"
    mail_params: str = ""
    reply: str = ""
    received_at: float = 0.0

    @property
    def message_id(self) -> str | None:
        head = self.data.split(b"\r\n\r\n", 1)[0]
        m = _MESSAGE_ID.search(head.replace(b"\r\n", b"\n"))
        return m.group(1).decode("ascii", "replace") if m else None


@dataclass
class Session:
    """State of one connection, handed to reply callables."""

    number: int
    mail_from: str | None = None
    mail_params: str = ""
    rcpts: list[str] = field(default_factory=list)
    messages: int = 0
    bdat: bytearray | None = None
    authenticated: bool = False
    batch: list[str] | None = None  # the group of commands being read (FakeSmtp.batches)


class _Closed(Exception):
    pass


class _Reader:
    """A buffered reader that can return lines, exact counts and DATA blocks."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    async def more(self) -> None:
        chunk = await self.reader.read(65536)
        if not chunk:
            raise _Closed
        self.buf += chunk

    async def line(self) -> bytes:
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                out = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return out
            start = len(self.buf)
            if start > 65536:
                raise _Closed
            await self.more()

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self.more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def data_block(self) -> bytes:
        """Everything up to CRLF.CRLF (the CRLF before the dot belongs to the data)."""
        start = 0
        while True:
            # The CRLF ending the DATA command counts as the one before a dot
            # on the very first line: an empty message is just ".CRLF".
            if self.buf[:3] == b".\r\n":
                del self.buf[:3]
                return b""
            i = self.buf.find(b"\r\n.\r\n", start)
            if i >= 0:
                out = bytes(self.buf[: i + 2])
                del self.buf[: i + 5]
                return out
            start = max(0, len(self.buf) - 4)
            await self.more()


def unstuff(raw: bytes) -> bytes:
    """Remove the leading dot of every line that has one (lines end in CRLF only)."""
    if not raw:
        return raw
    lines = raw.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def canonical(content: bytes) -> bytes:
    """What a relay must put on the wire for ``content``: every CR, LF or CRLF as CRLF, CRLF-terminated."""
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


class FakeSmtp:
    """The server; see the module docstring."""

    def __init__(
        self,
        *,
        extensions: tuple[str, ...] | list[str] = ("PIPELINING", "8BITMIME"),
        helo_only: bool = False,
        replies: dict[str, Script] | None = None,
        rcpt_replies: dict[str, Script] | None = None,
        delays: dict[str, float] | None = None,
        drop_in_data: bool = False,
        idle_timeout: float | None = None,
        auth: Callable[[Session, list[str]], Reply] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "fake.test",
    ) -> None:
        self.extensions = list(extensions)
        self.helo_only = helo_only
        self.replies: dict[str, Script] = {**DEFAULT_REPLIES, **(replies or {})}
        self.rcpt_replies: dict[str, Script] = dict(rcpt_replies or {})
        self.delays: dict[str, float] = dict(delays or {})
        self.drop_in_data = drop_in_data
        self.idle_timeout = idle_timeout
        self.auth = auth
        self.auth_exchanges: list[list[str]] = []
        self.host = host
        self.name = name
        self._want_port = port
        self.port = 0
        self.messages: list[Message] = []
        self.refused: list[Message] = []
        self.connections = 0
        self.open_connections = 0
        self.commands: list[tuple[int, str]] = []
        self.batches: list[tuple[int, list[str]]] = []
        self.protocol_errors: list[str] = []
        self.dropped = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._error: BaseException | None = None

    # ---- life cycle ---------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> FakeSmtp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"fake-smtp-{id(self)}", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fake smtp server did not start")
        if self._error is not None:
            raise RuntimeError(f"fake smtp server failed: {self._error!r}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._session, self.host, self._want_port, backlog=512)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            return

        async def _shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(_shutdown(), loop)
        self._thread.join(10)

    # ---- queries from the test thread ------------------------------------------------
    def message_ids(self) -> Counter[str | None]:
        """How many times each Message-ID was accepted."""
        with self._cond:
            return Counter(m.message_id for m in self.messages)

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def clear_messages(self) -> None:
        """Forget what was received so far (a warm-up), keeping the connection count."""
        with self._cond:
            self.messages.clear()
            self.refused.clear()

    def commands_named(self, verb: str) -> list[str]:
        verb = verb.upper()
        return [c for _, c in list(self.commands) if c.split(" ", 1)[0].split(":", 1)[0].upper() == verb]

    # ---- the session --------------------------------------------------------------------
    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _value(self, stage: str, session: Session, arg: Any = None) -> Reply:
        """The scripted reply for ``stage`` (callables evaluated, defaults filled in)."""
        script: Script
        if stage == "rcpt" and arg in self.rcpt_replies:
            script = self.rcpt_replies[arg]
        else:
            script = self.replies[stage]
        value = script(session, arg) if callable(script) else script
        if value == "" and stage == "ehlo":
            value = "\n".join(f"250 {x}" for x in [f"{self.name} says hello", *self.extensions])
        if value == "" and stage == "bdat":
            value = f"250 2.0.0 {arg} octets received"
        return value

    async def _send(self, writer: asyncio.StreamWriter, stage: str, value: Reply) -> bool:
        """Send ``value`` after the stage's delay; False when the connection is to be dropped."""
        delay = self.delays.get(stage, 0.0)
        if delay:
            await asyncio.sleep(delay)
        if isinstance(value, _Drop):
            return False
        if isinstance(value, bytes):
            writer.write(value)
        else:
            lines = value.split("\n")
            out = [
                text[:3] + "-" + text[4:] if i < len(lines) - 1 and text[3:4] in (" ", "") else text
                for i, text in enumerate(lines)
            ]
            writer.write(("\r\n".join(out) + "\r\n").encode("utf-8"))
        await writer.drain()
        return True

    async def _reply(
        self, writer: asyncio.StreamWriter, session: Session, stage: str, arg: Any = None
    ) -> bool:
        return await self._send(writer, stage, self._value(stage, session, arg))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        session = Session(self.connections)
        self._writers.add(writer)
        r = _Reader(reader)
        try:
            await self._converse(r, writer, session)
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # (a cancelled session just ends: asyncio 3.11 logs cancelled stream callbacks)
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
            self._notify()

    def _log(self, session: Session, line: str) -> None:
        self.commands.append((session.number, line))

    def _batch(self, session: Session, line: str, *, followed: bool) -> None:
        if session.batch is None:
            session.batch = []
            self.batches.append((session.number, session.batch))
        session.batch.append(line)
        if not followed:
            session.batch = None

    async def _converse(self, r: _Reader, writer: asyncio.StreamWriter, session: Session) -> None:
        if not await self._reply(writer, session, "greeting"):
            return
        while True:
            try:
                raw = await asyncio.wait_for(r.line(), self.idle_timeout)
            except TimeoutError:
                writer.write(b"421 4.4.2 idle timeout: closing connection\r\n")
                return
            if not raw.endswith(b"\r\n"):
                self.protocol_errors.append(f"command line without CRLF: {raw!r}")
            if r.buf and not self._offers("PIPELINING"):
                self.protocol_errors.append(f"pipelined without PIPELINING after {raw!r}")
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            self._log(session, line)
            self._batch(session, line, followed=bool(r.buf))
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO" and self.helo_only:
                writer.write(b"500 5.5.1 command unrecognised\r\n")
                continue
            if verb in ("EHLO", "HELO", "RSET"):
                session.mail_from, session.rcpts, session.bdat = None, [], None
                ok = await self._reply(writer, session, verb.lower(), arg)
            elif verb == "MAIL" and arg.upper().startswith("FROM:"):
                address, params = _path(arg[5:])
                value = self._value("mail", session, address)
                if _code(value) // 100 == 2:
                    session.mail_from, session.mail_params, session.rcpts = address, params, []
                ok = await self._send(writer, "mail", value)
            elif verb == "RCPT" and arg.upper().startswith("TO:"):
                address, _ = _path(arg[3:])
                value = self._value("rcpt", session, address)
                if session.mail_from is None:
                    value = "503 5.5.1 need MAIL first"
                elif _code(value) // 100 == 2:
                    session.rcpts.append(address)
                ok = await self._send(writer, "rcpt", value)
            elif verb == "DATA":
                ok = await self._data(r, writer, session)
            elif verb == "BDAT":
                ok = await self._bdat(r, writer, session, arg)
            elif verb == "AUTH" and self.auth is not None:
                ok = await self._auth(r, writer, session, arg)
            elif verb == "NOOP":
                ok = await self._reply(writer, session, "noop")
            elif verb == "QUIT":
                await self._reply(writer, session, "quit")
                return
            else:
                self.protocol_errors.append(f"unknown command: {line!r}")
                writer.write(b"500 5.5.1 command unrecognised\r\n")
                ok = True
            if not ok:
                return

    async def _auth(self, r: _Reader, writer: asyncio.StreamWriter, session: Session, arg: str) -> bool:
        assert self.auth is not None
        lines = [arg]
        self.auth_exchanges.append(lines)
        while True:
            value = self.auth(session, lines)
            if not await self._send(writer, "auth", value):
                return False
            if _code(value) == 235:
                session.authenticated = True
            if _code(value) != 334:
                return True
            line = (await r.line()).rstrip(b"\r\n").decode("utf-8", "replace")
            self._log(session, line)
            lines.append(line)

    def _offers(self, keyword: str) -> bool:
        return any(e.split()[0].upper() == keyword for e in self.extensions if e.strip())

    async def _data(self, r: _Reader, writer: asyncio.StreamWriter, session: Session) -> bool:
        if session.mail_from is None or not session.rcpts:
            writer.write(b"503 5.5.1 need RCPT first\r\n")
            return True
        value = self._value("data", session)
        if not await self._send(writer, "data", value):
            return False
        if _code(value) != 354:
            return True
        if self.drop_in_data:
            if not r.buf:
                await r.more()
            self.dropped += 1
            return False
        raw_data = await r.data_block()
        if re.search(rb"(?<!\r)\n|\r(?!\n)", raw_data):
            self.protocol_errors.append("bare CR or LF in DATA")
        self._log(session, ".")
        msg = Message(
            session.mail_from, list(session.rcpts), unstuff(raw_data), raw_data,
            session.number, "DATA", session.mail_params,
        )  # fmt: skip
        return await self._final(writer, session, msg)

    async def _bdat(self, r: _Reader, writer: asyncio.StreamWriter, session: Session, arg: str) -> bool:
        if not self._offers("CHUNKING"):
            writer.write(b"500 5.5.1 command unrecognised\r\n")
            return True
        words = arg.split()
        if not words or not words[0].isdigit() or (len(words) > 1 and words[1].upper() != "LAST"):
            writer.write(b"501 5.5.4 syntax: BDAT <size> [LAST]\r\n")
            return True
        size = int(words[0])
        last = len(words) > 1
        chunk = await r.exactly(size)
        if session.mail_from is None or not session.rcpts:
            writer.write(b"503 5.5.1 need RCPT first\r\n")
            return True
        if session.bdat is None:
            session.bdat = bytearray()
        session.bdat += chunk
        if not last:
            return await self._reply(writer, session, "bdat", size)
        data = bytes(session.bdat)
        session.bdat = None
        msg = Message(
            session.mail_from, list(session.rcpts), data, data, session.number, "BDAT", session.mail_params
        )
        return await self._final(writer, session, msg)

    async def _final(self, writer: asyncio.StreamWriter, session: Session, msg: Message) -> bool:
        value = self._value("final", session, msg)
        msg.reply = value if isinstance(value, str) else repr(value)
        msg.received_at = time.monotonic()
        session.mail_from, session.rcpts = None, []
        # recorded before the reply goes out: once the client has its 250 the message is counted
        # (a test that sees the relay's spool empty must find the message here)
        with self._cond:
            accepted = _code(value) // 100 == 2
            (self.messages if accepted else self.refused).append(msg)
            if accepted:
                session.messages += 1
            self._cond.notify_all()
        return await self._send(writer, "final", value)


def auth_script(*replies: str) -> Callable[[Session, list[str]], Reply]:
    """An ``auth`` answer giving ``replies`` in turn, eg. ``auth_script("334 UGFzc3dvcmQ6", "235 ok")``."""
    return lambda session, lines: replies[min(len(lines), len(replies)) - 1]


def _code(value: Reply) -> int:
    """A reply's code (a raw ``bytes`` reply's too, so a scripted ``b"250 ok\\n"`` takes MAIL)."""
    if isinstance(value, str):
        return int(value[:3]) if value[:3].isdigit() else 0
    if isinstance(value, bytes) and value[:3].isdigit() and value[3:4] in (b" ", b"-", b"\r", b"\n", b""):
        return int(value[:3])  # (not "2500 ...": garbage)
    return 0


def _path(text: str) -> tuple[str, str]:
    """``<a@b> PARAMS`` -> ("a@b", "PARAMS")."""
    text = text.strip()
    if text.startswith("<"):
        end = text.find(">")
        if end >= 0:
            return text[1:end], text[end + 1 :].strip()
    address, _, params = text.partition(" ")
    return address, params.strip()
