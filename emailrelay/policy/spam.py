"""``spam:`` and ``spam-edit:``: SpamAssassin's spamd as a filter (SPAMC/1.5 protocol).

What it is for (reference guide, "spam:"): ``spam:<address>`` passes each
message to spamd and rejects it when spamd says ``Spam: True``;
``spam-edit:<address>`` replaces the content file with what spamd returns
(SpamAssassin's report, the original as an attachment when it is spam),
always accepting.

What it expects: spamd on ``host:port`` (usually 783) or a unix socket path.

What it guarantees (as E-MailRelay 2.6b, observed against a SPAMC/1.5
server): both ask spamd ``PROCESS``; a spam message is failed with the
response ``rejected`` and the reason ``spam: <spamd's Spam header value>``
(``452 rejected``), with no warning of its own; ``spam-edit:`` stores spamd's
message byte for byte (spamd's own line ends, as upstream; forwarding and
POP read LF-only content too); with ``--verbose`` the exchange is logged as
upstream does (``spam connection to [..]``, ``spam request for [<content
file>]``, ``spam request done``, each ``spam response line: [..]`` of the
status (once it is valid) and the headers, and ``spam response size: <n>``).
The message is streamed to spamd from the content file and the edited message
streamed back to a temporary file that replaces the content only once complete
(:meth:`SpoolStore.replace_content`); no whole message is held in memory; file
I/O runs in threads; the exchange is bounded by ``--filter-timeout``.

A spamd that cannot be reached, closes early, answers too late or answers
what cannot be used fails the message as upstream's does, whichever of
``spam:``/``spam-edit:``: the warning ``spamd interaction failed: <reason>``,
the response ``rejected`` (``452 rejected``; a client filter's message goes
to ``.bad``), the reason in upstream's words: ``connect failure: cannot
connect to <address>`` (a unix socket's with ``: <error>``), ``peer
disconnected``, ``response timeout: no response after <n>s while connected
to <address>``, ``spam client error: invalid response: <status line>`` (not
``SPAMD/<v> 0 ...``), ``spam client error: invalid response headers`` (no
``Content-length``) and ``string conversion error: invalid format: expected
unsigned integer: <value>``. A body longer than its ``Content-length`` (the
last line running past it) is logged ``incorrect content length in spam
response`` and accepted (``spam-edit:`` stores it to the end of that line).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Any

from .. import log as logmod
from ..config import Config
from ..spool.store import SpoolStore
from .exe import printable, seconds
from .net import ConnectFailure, ConnectionPool, Endpoint, parse_endpoint
from .spec import FilterContext, Spec, store_for
from .verdicts import FilterOutcome, FilterResult

CHUNK = 256 * 1024
_DISCONNECTED = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED)


class SpamdError(Exception):
    """spamd's exchange failed: the reason, in E-MailRelay 2.6b's words."""


class SpamFilter:
    def __init__(self, spec: Spec, config: Config, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.edit = spec.kind == "spam-edit"
        self.endpoint: Endpoint = parse_endpoint(spec.value)
        self.config = config
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        limit = self.config.filter_time_limit
        try:
            async with asyncio.timeout(limit):
                spam, verdict = await self._exchange(ctx)
        except TimeoutError:
            why = f"response timeout: no response after {seconds(limit)}s while connected to {self.endpoint}"
            return self._failed(why)
        except (SpamdError, OSError, asyncio.IncompleteReadError) as exc:
            return self._failed(_reason(exc, self.endpoint))
        if spam and not self.edit:
            return FilterResult(FilterOutcome.REJECT, "rejected", None, f"spam: {verdict}")
        return FilterResult.accept()

    def _failed(self, why: str) -> FilterResult:
        """Upstream's failure: ``warning: spamd interaction failed: <why>``, ``452 rejected``."""
        self.log.warning(f"spamd interaction failed: {why}")
        return FilterResult(FilterOutcome.REJECT, "rejected", None, why)

    def _verbose(self, ctx: FilterContext, text: str) -> None:
        self.log.verbose(f"spam {text}", ctx.log_address)

    async def _exchange(self, ctx: FilterContext) -> tuple[bool, str]:
        """PROCESS the content: (spam?, the Spam header's value); the edit stored for ``spam-edit:``."""
        self._verbose(ctx, f"connection to [{self.name}]")
        conn = await ConnectionPool(self.endpoint, self.config.connection_timeout, max_idle=0).connect()
        reader, writer = conn.reader, conn.writer
        try:
            self._verbose(ctx, f"request for [{ctx.content_path}]")
            await _send(writer, ctx.content_path)
            self._verbose(ctx, "request done")
            length, verdict = await self._headers(ctx, reader)
            received = await self._body(ctx, reader, length)
            self._verbose(ctx, f"response size: {received}")
            return verdict.partition(";")[0].strip().lower() in ("true", "yes"), verdict
        finally:
            conn.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _headers(self, ctx: FilterContext, reader: asyncio.StreamReader) -> tuple[int, str]:
        """The status line and the headers: (Content-length, the Spam header's value)."""
        status = await _line(reader)
        words = status.split()
        if len(words) < 2 or not words[0].startswith("SPAMD/") or words[1] != "0":
            raise SpamdError(f"spam client error: invalid response: {printable(status.strip(), None)}")
        self._verbose(ctx, f"response line: [{printable(status, None)}]")
        length: int | None = None
        verdict = ""
        while True:
            line = await _line(reader)
            self._verbose(ctx, f"response line: [{printable(line, None)}]")
            if not line.strip():
                break
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.strip()
            if key == "content-length":
                if not (value.isascii() and value.isdigit()):
                    raise SpamdError(
                        f"string conversion error: invalid format: expected unsigned integer: {value}"
                    )
                length = int(value)
            elif key == "spam":
                verdict = value
        if length is None:
            raise SpamdError("spam client error: invalid response headers")
        return length, verdict

    async def _body(self, ctx: FilterContext, reader: asyncio.StreamReader, length: int) -> int:
        """Read spamd's message in chunks: into the content file (as it comes) for ``spam-edit:``,
        else discarded; its size."""
        if not self.edit:
            return await self._read_body(reader, length, None)
        cm = store_for(self.store, ctx).replace_content(ctx.mid)
        f: Any = await asyncio.to_thread(cm.__enter__)
        try:
            received = await self._read_body(reader, length, f)
        except BaseException as exc:
            await asyncio.to_thread(cm.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await asyncio.to_thread(cm.__exit__, None, None, None)
        return received

    async def _read_body(self, reader: asyncio.StreamReader, length: int, sink: Any) -> int:
        """Read ``length`` bytes, writing them to ``sink`` unless None; as upstream reads spamd's
        message by lines, one whose last line runs past ``length`` is read to its end (logged)."""
        received = 0
        last = b"\n"
        while received < length:
            chunk = await reader.read(min(CHUNK, length - received))
            if not chunk:
                raise SpamdError("peer disconnected")
            received += len(chunk)
            last = chunk[-1:]
            if sink is not None:
                await asyncio.to_thread(sink.write, chunk)
        if last != b"\n":
            rest = await _raw_line(reader)
            if sink is not None:
                await asyncio.to_thread(sink.write, rest)
            self.log.warning("incorrect content length in spam response")
        return received

    async def close(self) -> None:
        return None


async def _send(writer: asyncio.StreamWriter, content_path: str) -> None:
    """The PROCESS request, the content file streamed after its headers."""
    with open(content_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        writer.write(f"PROCESS SPAMC/1.5\r\nContent-length: {size}\r\n\r\n".encode("ascii"))
        sent = 0
        while sent < size:
            chunk = await asyncio.to_thread(f.read, min(CHUNK, size - sent))
            if not chunk:
                raise SpamdError("content file shrank while being sent")
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def _raw_line(reader: asyncio.StreamReader) -> bytes:
    """One whole line with its line end; a server that closes first has disconnected."""
    try:
        line = await reader.readline()
    except ValueError:  # a line longer than the reader's limit
        raise SpamdError("spam client error: invalid response") from None
    if not line.endswith(b"\n"):
        raise SpamdError("peer disconnected")
    return line


async def _line(reader: asyncio.StreamReader) -> str:
    """One whole line without its line end."""
    return (await _raw_line(reader)).decode("utf-8", "replace").rstrip("\r\n")


def _reason(exc: BaseException, endpoint: Endpoint) -> str:
    """Upstream's words for a failed exchange."""
    if isinstance(exc, SpamdError):
        return str(exc)
    if isinstance(exc, ConnectFailure):
        if endpoint.path and exc.errno:
            return f"{exc.strerror}: {os.strerror(exc.errno).lower()}"
        return str(exc.strerror)
    if (
        isinstance(exc, asyncio.IncompleteReadError | ConnectionError)
        or getattr(exc, "errno", None) in _DISCONNECTED
    ):
        return "peer disconnected"
    assert isinstance(exc, OSError)
    return (exc.strerror or str(exc) or type(exc).__name__).lower()
