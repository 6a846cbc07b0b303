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
file>]``, ``spam request done``, each ``spam response line: [..]`` and
``spam response size: <n>``). The message is streamed to spamd from the
content file and the edited message streamed back to a temporary file that
replaces the content only once complete (:meth:`SpoolStore.replace_content`);
no whole message is held in memory; file I/O runs in threads; the exchange
is bounded by ``--filter-timeout``; spamd unreachable, slow or answering with
an error is an ERROR result (temporary failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from .. import log as logmod
from ..config import Config
from ..spool.store import SpoolStore
from .exe import clean_text
from .net import Endpoint, parse_endpoint
from .spec import FilterContext, Spec, store_for
from .verdicts import FilterOutcome, FilterResult

CHUNK = 256 * 1024


class SpamdError(Exception):
    pass


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
        try:
            async with asyncio.timeout(self.config.filter_time_limit):
                spam, verdict = await self._exchange(ctx)
        except TimeoutError:
            self.log.warning(f"filter [{self.name}] failed: timeout")
            return FilterResult(
                FilterOutcome.ERROR,
                "filter timeout",
                None,
                f"spamd timeout after {self.config.filter_time_limit:.0f}s",
            )
        except (OSError, SpamdError, asyncio.IncompleteReadError, ValueError) as exc:
            text = clean_text(str(exc) or type(exc).__name__)
            self.log.warning(f"filter [{self.name}] failed: spamd: {text}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"spamd: {text}")
        if spam and not self.edit:
            return FilterResult(FilterOutcome.REJECT, "rejected", None, f"spam: {verdict}")
        return FilterResult.accept()

    def _verbose(self, ctx: FilterContext, text: str) -> None:
        self.log.verbose(f"spam {text}", ctx.log_address)

    async def _exchange(self, ctx: FilterContext) -> tuple[bool, str]:
        """PROCESS the content: (spam?, the Spam header's value); the edit stored for ``spam-edit:``."""
        ep = self.endpoint
        self._verbose(ctx, f"connection to [{self.name}]")
        if ep.path:
            reader, writer = await asyncio.open_unix_connection(ep.path)
        else:
            reader, writer = await asyncio.open_connection(ep.host, ep.port)
        try:
            self._verbose(ctx, f"request for [{ctx.content_path}]")
            with open(ctx.content_path, "rb") as f:
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
            self._verbose(ctx, "request done")
            status = await self._response_line(ctx, reader)
            parts = status.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith("SPAMD/"):
                raise SpamdError(f"unexpected response [{status}]")
            if parts[1] != "0":
                raise SpamdError(f"error response [{status}]")
            headers: dict[str, str] = {}
            while line := await self._response_line(ctx, reader):
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            verdict = headers.get("spam", "")
            spam = verdict.partition(";")[0].strip().lower() in ("true", "yes")
            length = headers.get("content-length")
            received = await self._body(ctx, reader, int(length) if length is not None else None)
            self._verbose(ctx, f"response size: {received}")
            return spam, verdict
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _response_line(self, ctx: FilterContext, reader: asyncio.StreamReader) -> str:
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        self._verbose(ctx, f"response line: [{clean_text(line)}]")
        return line.strip()

    async def _body(self, ctx: FilterContext, reader: asyncio.StreamReader, length: int | None) -> int:
        """Read spamd's message in chunks: into the content file (as it comes) for ``spam-edit:``,
        else discarded; its size."""
        if not self.edit:
            return await _read_body(reader, length, None)
        cm = store_for(self.store, ctx).replace_content(ctx.mid)
        f: Any = await asyncio.to_thread(cm.__enter__)
        try:
            received = await _read_body(reader, length, f)
        except BaseException as exc:
            await asyncio.to_thread(cm.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await asyncio.to_thread(cm.__exit__, None, None, None)
        return received

    async def close(self) -> None:
        return None


async def _read_body(reader: asyncio.StreamReader, length: int | None, sink: Any) -> int:
    """Read ``length`` bytes (or to the end), writing them to ``sink`` unless None; the count."""
    received = 0
    while length is None or received < length:
        chunk = await reader.read(CHUNK if length is None else min(CHUNK, length - received))
        if not chunk:
            if length is not None:
                raise SpamdError("spamd response shorter than its Content-length")
            break
        received += len(chunk)
        if sink is not None:
            await asyncio.to_thread(sink.write, chunk)
    return received
