"""``net:`` filters and verifiers: a line protocol with a long-lived server.

What it is for (reference guide, "Network filters", "Address verifier servers"):

- filter: for each message send the absolute content path and a newline; the
  answer is one line, starting with ``ok`` (or empty) to accept, anything else is
  the rejection response as it came, white space included (a leading ``4xx ``/``5xx ``
  sets the SMTP code; text after a TAB is the log-only reason; a response that is
  empty, as in ``<TAB>reason``, stays empty: ``452 ``); no answer in time, or a server
  that closes, fails the message with the response ``failed`` (E-MailRelay
  2.6b's texts);
- verifier: send the verifier's six arguments joined with ``|``; the answer is
  ``0|mailbox|full name``, ``1|address``, ``2|reason``, ``3|reason`` or ``100``
  (an optional third field of 2 and 3 is log-only detail); its texts are
  escaped once in the SMTP reply (a program's twice), as upstream's;
- a server that closes before answering is ``peer disconnected``, one that
  resets the connection ``peer disconnected: connection reset by peer``.

What it expects: a server on ``host:port`` (``[v6]:port``, upstream's
``v6.port``) or an absolute unix-socket path, that keeps the connection open
between requests.

What it guarantees: each request goes over a connection of its own, closed
after the answer (E-MailRelay 2.6b connects for each message a filter sees,
and once per SMTP session for a verifier), so a request is never sent
twice; the pool (:class:`ConnectionPool`) can keep idle connections for
callers that want them; every exchange is bounded by ``--filter-timeout``;
a server that cannot be reached or answers too late fails the message
(filter: ``452 failed``) or is a temporary ``450 cannot verify``
(verifier), never an accept; an answer line of any length is an answer
(upstream's take them all), of which the first :data:`LINE_LIMIT` bytes count
(the rest is read and dropped); an answer's octets that are not UTF-8 are kept as
they came (decoded with ``surrogateescape``), as upstream passes them on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from .. import log as logmod
from ..config import Config
from ..transport_address import split_transport_address
from .exe import PeerLike, clean_text, peer_text, printable, seconds, split_code, verdict_for, verifier_args
from .spec import FilterContext, Spec, SpecError
from .verdicts import FilterOutcome, FilterResult, RecipientKind, RecipientVerdict

MAX_IDLE = 8
LINE_LIMIT = 64 * 1024  # bytes of an answer line kept


@dataclass(frozen=True)
class Endpoint:
    host: str = ""
    port: int = 0
    path: str = ""  # unix socket

    def __str__(self) -> str:
        if self.path:
            return self.path
        return f"{self.host}.{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str, default_port: int | None = None) -> Endpoint:
    """``host:port``, ``[v6]:port``, ``v6.port`` or ``/unix/path``."""
    text = text.strip()
    if text.startswith("/"):
        return Endpoint(path=text)
    try:
        host, port = split_transport_address(text, default_port)
    except ValueError as exc:
        raise SpecError(f"invalid network address: {exc}") from None
    if port == 0:
        raise SpecError(f"invalid port in network address: [{text}]")
    return Endpoint(host, port)


class ConnectFailure(OSError):
    """The server could not be reached (upstream's ``connect failure: cannot connect to ...``)."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class ConnectionPool:
    """Idle connections to one server; callers take one, use it for one exchange, give it back."""

    def __init__(self, endpoint: Endpoint, connect_timeout: float, max_idle: int = MAX_IDLE) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle  # 0: one connection per exchange
        self.idle: list[_Connection] = []

    async def connect(self, timeout: float | None = None) -> _Connection:
        ep = self.endpoint
        limit = min(self.connect_timeout, timeout) if timeout is not None else self.connect_timeout
        if ep.path:
            opening = asyncio.open_unix_connection(ep.path, limit=LINE_LIMIT)
        else:
            opening = asyncio.open_connection(ep.host, ep.port, limit=LINE_LIMIT)
        try:
            reader, writer = await asyncio.wait_for(opening, limit)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ConnectFailure(exc.errno, f"connect failure: cannot connect to {ep}") from exc
        return _Connection(reader, writer)

    def take(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def give(self, conn: _Connection) -> None:
        if len(self.idle) < self.max_idle and not conn.writer.is_closing():
            self.idle.append(conn)
        else:
            conn.close()

    async def exchange(self, request: bytes, timeout: float) -> str:
        """Send one request line, read one response line (without its line end).

        Raises OSError, TimeoutError or ConnectionError when no answer came.
        """
        deadline = time.monotonic() + timeout
        conn = self.take()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self.connect(max(0.001, deadline - time.monotonic()))
            try:
                conn.writer.write(request)
                await asyncio.wait_for(conn.writer.drain(), max(0.001, deadline - time.monotonic()))
                line = await asyncio.wait_for(
                    _read_line(conn.reader), max(0.001, deadline - time.monotonic())
                )
                if not line.endswith(b"\n"):
                    raise ConnectionError("connection closed by the server")
            except (
                OSError,
                ConnectionError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                conn.close()
                if reused:  # a pooled connection the server had dropped: one fresh try
                    conn, reused = None, False
                    continue
                cause = conn.reader.exception()  # a reset seen while drain() waited is its "Connection lost"
                if (
                    isinstance(cause, OSError)
                    and cause.errno
                    and not (isinstance(exc, OSError) and exc.errno)
                ):
                    raise cause from exc
                raise
            except BaseException:
                conn.close()
                raise
            self.give(conn)
            return line.decode("utf-8", "surrogateescape").rstrip("\r\n")

    async def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def _read_line(reader: asyncio.StreamReader, keep: int = LINE_LIMIT) -> bytes:
    """One line, its end included (none when the server closed first): its first ``keep`` bytes
    and the end; the rest is read and dropped, so an answer of any length is an answer, as upstream's."""
    kept = bytearray()
    while True:
        try:
            chunk = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:  # no line end within the reader's limit yet
            chunk = await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError as exc:  # closed before the line ended
            return bytes(kept) + exc.partial[: max(0, keep - len(kept))]
        if chunk.endswith(b"\n"):
            return bytes(kept) + chunk[: max(0, keep - len(kept))].rstrip(b"\n") + b"\n"
        kept += chunk[: max(0, keep - len(kept))]


class NetFilter:
    """``net:<address>`` as a --filter or --client-filter."""

    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = config
        # one connection per message, closed after the answer, as E-MailRelay 2.6b does: a request is
        # never sent twice, and the server sees upstream's pattern
        self.pool = ConnectionPool(parse_endpoint(spec.value), config.connection_timeout, max_idle=0)
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        request = (str(ctx.content_path) + "\n").encode("utf-8", "surrogateescape")
        try:
            line = await self.pool.exchange(request, self.config.filter_time_limit)
        except TimeoutError:
            why = (
                f"response timeout: no response after {seconds(self.config.filter_time_limit)}s"
                f" while connected to {self.pool.endpoint}"
            )
            return self._failed(why)
        except (
            OSError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as exc:
            if isinstance(exc, ConnectFailure):
                return self._failed(str(exc.strerror))
            return self._failed(_no_answer_reason(exc))
        return self.result_for(line, ctx)

    def _failed(self, why: str) -> FilterResult:
        """No answer: upstream's ``warning: error: <why>``, response ``failed``, reason ``<why>``."""
        self.log.warning(f"error: {why}")
        return FilterResult(FilterOutcome.REJECT, "failed", None, why)

    def result_for(self, line: str, ctx: FilterContext) -> FilterResult:
        """E-MailRelay 2.6b's reading of the answer: one that starts with ``ok`` (``ok then``,
        ``ok<tab>...`` too) or nothing accepts; otherwise the text before a tab is the response (a
        leading code sets the SMTP code) and the text after it, or else the whole text, the reason.
        Neither is trimmed nor replaced when empty: `` `` is a rejection ``452  ``, ``<tab>why`` one
        with an empty response (``452 ``), ``x<tab>`` one with an empty reason, as upstream's."""
        if line.startswith("ok") or not line:
            return FilterResult.accept()
        text, tab, after = line.partition("\t")
        response, code = split_code(printable(text))
        return FilterResult(FilterOutcome.REJECT, response, code, printable(after if tab else text))

    async def close(self) -> None:
        await self.pool.close()


class NetVerifier:
    """``--address-verifier=net:<address>``."""

    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec
        self.config = config
        # a connection per request (upstream keeps one per SMTP session): a request is never sent twice
        self.pool = ConnectionPool(parse_endpoint(spec.value), config.connection_timeout, max_idle=0)
        self.log = logmod.get()

    async def verify(
        self,
        recipient: str,
        mail_from: str | None,
        peer: PeerLike | str | None,
        auth_mechanism: str,
        auth_id: str,
    ) -> RecipientVerdict:
        args = verifier_args(recipient, mail_from, peer, self.config.domain, auth_mechanism, auth_id)
        request = "|".join(clean_text(a, 1024) for a in args) + "\n"
        self.log.verbose(f"verification request: [{recipient}] ({peer_text(peer)})")  # upstream's lines
        try:
            line = await self.pool.exchange(
                request.encode("utf-8", "surrogateescape"), self.config.filter_time_limit
            )
        except TimeoutError:
            why = (
                f"response timeout: no response after {seconds(self.config.filter_time_limit)}s"
                f" while connected to {self.pool.endpoint}"
            )
            return self._no_answer(recipient, why)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            if isinstance(exc, ConnectFailure):
                return self._no_answer(recipient, str(exc.strerror))
            return self._no_answer(recipient, _no_answer_reason(exc))
        line = line.rstrip("\r")
        self.log.verbose(f"verification response: [{printable(line)}]")
        # as E-MailRelay 2.6b reads it: "<code>|<mailbox>|<full name>" for 0, "<code>|<address>" for
        # 1, "<code>|<reason>[|<detail>]" for 2 and 3; a code with white space around it, a field
        # missing or another code is a bare 550 ("3" alone too), and fields after those are ignored
        fields = line.split("|")
        code = int(fields[0]) if fields[0].isascii() and fields[0].isdigit() else None
        if code == 100:  # the session logs upstream's net: form of the abort line
            return RecipientVerdict(RecipientKind.ABORT, recipient, detail="net")
        if code == 1 and len(fields) > 1:  # "1|" keeps the address as given
            return verdict_for(1, "", fields[1] or recipient, recipient)
        if code == 0 and len(fields) > 2:
            return verdict_for(0, fields[2], fields[1], recipient, escaped=False)
        if code in (2, 3) and len(fields) > 1:
            return verdict_for(code, fields[1], _field(fields, 2), recipient, escaped=False)
        return RecipientVerdict(RecipientKind.REJECT, recipient)  # anything else: a bare 550, as upstream

    def _no_answer(self, recipient: str, why: str) -> RecipientVerdict:
        """Upstream's ``warning: error: <why>`` and ``450 cannot verify``."""
        self.log.warning(f"error: {why}")
        return RecipientVerdict(
            RecipientKind.TEMPORARY,
            recipient,
            reason="cannot verify",
            detail="network verifier peer disconnected",
        )

    async def close(self) -> None:
        await self.pool.close()


def _no_answer_reason(exc: BaseException) -> str:
    """Upstream's words for an exchange that failed once connected: ``peer disconnected`` for a
    server that closed, ``peer disconnected: connection reset by peer`` for one that reset."""
    if isinstance(exc, ConnectionError | asyncio.IncompleteReadError):
        if isinstance(exc, OSError) and exc.errno and exc.strerror:
            return f"peer disconnected: {clean_text(exc.strerror).lower()}"
        return "peer disconnected"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return clean_text(text).lower()


def _field(fields: list[str], index: int) -> str:
    return fields[index] if index < len(fields) else ""
