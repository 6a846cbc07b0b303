"""``spam:`` and ``spam-edit:``: SpamAssassin's spamd as a filter (SPAMC/1.5 protocol).

What it is for (reference guide, "spam:"): ``spam:<address>`` sends each
message to spamd with ``CHECK`` and rejects it when spamd says
``Spam: True``; ``spam-edit:<address>`` sends it with ``PROCESS`` and
replaces the content file with what spamd returns (SpamAssassin's report,
the original as an attachment when it is spam), always accepting.

What it expects: spamd on ``host:port`` (usually 783) or a unix socket path.

What it guarantees: the message is streamed to spamd from the content file
and the edited message streamed back to a temporary file that replaces the
content only once complete (:meth:`SpoolStore.replace_content`), with CRLF
line ends; no whole message is held in memory; file I/O runs in threads; the
exchange is bounded by ``--filter-timeout``; spamd unreachable, slow or
answering with an error is an ERROR result (temporary failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from typing import Any

from .. import log as logmod
from ..spool.store import SpoolStore
from .exe import clean_text
from .net import Endpoint, parse_endpoint
from .spec import FilterContext, PolicyOptions, Spec, store_for
from .verdicts import FilterOutcome, FilterResult

CHUNK = 256 * 1024
_LINE_END = re.compile(rb"\r?\n")


class SpamdError(Exception):
    pass


class CrlfNormaliser:
    """Turns LF and CRLF line ends into CRLF across chunk boundaries."""

    def __init__(self) -> None:
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        return _LINE_END.sub(b"\r\n", chunk)

    def finish(self) -> bytes:
        return b"\r" if self._pending_cr else b""


class SpamFilter:
    def __init__(self, spec: Spec, options: PolicyOptions, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.edit = spec.kind == "spam-edit"
        self.endpoint: Endpoint = parse_endpoint(spec.value)
        self.options = options
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        command = "PROCESS" if self.edit else "CHECK"
        self.log.verbose(
            f"filter [{self.name}]: [{ctx.message_id}]: spamd {command} {self.endpoint}", ctx.log_address
        )
        try:
            async with asyncio.timeout(self.options.timeout):
                spam, score = await self._exchange(ctx, command)
        except TimeoutError:
            self.log.warning(f"filter [{self.name}] failed: timeout")
            return FilterResult(
                FilterOutcome.ERROR,
                "filter timeout",
                None,
                f"spamd timeout after {self.options.timeout:.0f}s",
            )
        except (OSError, SpamdError, asyncio.IncompleteReadError, ValueError) as exc:
            text = clean_text(str(exc) or type(exc).__name__)
            self.log.warning(f"filter [{self.name}] failed: spamd: {text}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"spamd: {text}")
        if spam and not self.edit:
            self.log.warning(f"filter [{self.name}] failed: spam: score {score}")
            return FilterResult(FilterOutcome.REJECT, "spam", None, f"score {score}")
        return FilterResult.accept()

    async def _exchange(self, ctx: FilterContext, command: str) -> tuple[bool, str]:
        ep = self.endpoint
        if ep.path:
            reader, writer = await asyncio.open_unix_connection(ep.path)
        else:
            reader, writer = await asyncio.open_connection(ep.host, ep.port)
        try:
            with open(ctx.content_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                writer.write(f"{command} SPAMC/1.5\r\nContent-length: {size}\r\n\r\n".encode("ascii"))
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
            status = (await reader.readline()).decode("latin-1").strip()
            parts = status.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith("SPAMD/"):
                raise SpamdError(f"unexpected response [{status}]")
            if parts[1] != "0":
                raise SpamdError(f"error response [{status}]")
            headers: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("latin-1").strip()
                if not line:
                    break
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            verdict = headers.get("spam", "")
            flag, _, score = verdict.partition(";")
            spam = flag.strip().lower() in ("true", "yes")
            if command == "PROCESS":
                length = headers.get("content-length")
                await self._rewrite(ctx, reader, int(length) if length is not None else None)
            return spam, score.strip()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _rewrite(self, ctx: FilterContext, reader: asyncio.StreamReader, length: int | None) -> None:
        store = store_for(self.store, ctx)
        cm = store.replace_content(ctx.mid)
        f: Any = await asyncio.to_thread(cm.__enter__)
        norm = CrlfNormaliser()
        try:
            remaining = length
            while remaining is None or remaining > 0:
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = await reader.read(want)
                if not chunk:
                    if remaining is not None:
                        raise SpamdError("spamd response shorter than its Content-length")
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                await asyncio.to_thread(f.write, norm.feed(chunk))
            await asyncio.to_thread(f.write, norm.finish())
        except BaseException as exc:
            await asyncio.to_thread(cm.__exit__, type(exc), exc, exc.__traceback__)
            raise
        await asyncio.to_thread(cm.__exit__, None, None, None)

    async def close(self) -> None:
        return None
