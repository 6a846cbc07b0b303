"""``msgid:``: add a ``Message-ID`` header to messages that have none.

What it is for (reference guide, "msgid:"): some clients submit messages
without a Message-ID, which many receivers frown upon.

What it guarantees: the header section is scanned line by line (folded
continuation lines are never mistaken for a header); when no
``Message-ID:`` header is there, ``Message-ID: <unique@domain>`` is added as
the last header line and the content is rewritten through a temporary file
(:meth:`SpoolStore.replace_content`), streaming the body, with CRLF line
ends; a message that has one is left untouched.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
import uuid

from .. import log as logmod
from ..spool.store import SpoolStore
from .spec import FilterContext, PolicyOptions, Spec, store_for
from .verdicts import FilterOutcome, FilterResult

_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:", re.I)
_DOMAIN_OK = re.compile(r"^[A-Za-z0-9.-]+$")


def new_message_id(domain: str) -> str:
    host = domain if domain and _DOMAIN_OK.match(domain) else "localhost"
    return f"<{int(time.time())}.{uuid.uuid4().hex}@{host}>"


def add_message_id(store: SpoolStore, ctx: FilterContext, domain: str) -> str | None:
    """Add the header when missing; returns the new id, or None when the message had one."""
    with open(ctx.content_path, "rb") as f:
        headers: list[bytes] = []
        end_found = False
        for line in f:
            if line in (b"\r\n", b"\n"):
                end_found = True
                break
            if _MESSAGE_ID.match(line):
                return None
            headers.append(line)
        body_start = f.tell() if end_found else None
    msgid = new_message_id(domain)
    with store.replace_content(ctx.mid) as out:
        for line in headers:
            out.write(line)
        if headers and not headers[-1].endswith(b"\n"):
            out.write(b"\r\n")
        out.write(f"Message-ID: {msgid}\r\n".encode("ascii"))
        if body_start is not None:
            out.write(b"\r\n")
            with open(ctx.content_path, "rb") as f:
                f.seek(body_start)
                shutil.copyfileobj(f, out, 256 * 1024)
    return msgid


class MsgidFilter:
    def __init__(self, spec: Spec, options: PolicyOptions, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.domain = options.domain
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        try:
            msgid = await asyncio.to_thread(add_message_id, store_for(self.store, ctx), ctx, self.domain)
        except OSError as exc:
            self.log.warning(f"filter [{self.name}] failed: {exc}")
            return FilterResult(
                FilterOutcome.ERROR, "filter error", None, f"msgid: {os.strerror(exc.errno or 5)}"
            )
        if msgid is not None:
            self.log.verbose(
                f"filter [{self.name}]: [{ctx.message_id}]: added Message-ID {msgid}", ctx.log_address
            )
        return FilterResult.accept()

    async def close(self) -> None:
        return None
