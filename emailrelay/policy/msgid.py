"""``msgid:``: add a ``Message-ID`` header to messages that have none.

What it is for (reference guide, "msgid:"): some clients submit messages
without a Message-ID, which many receivers frown upon.

What it guarantees: the header section is scanned line by line (folded
continuation lines are never mistaken for a header); when no
``Message-ID:`` header is there, ``Message-ID: <secs.usecs.pid.n@domain>``
is added as the first line of the content, as E-MailRelay 2.6b does
(before its ``Received:`` line), and the content is rewritten through a
temporary file (:meth:`SpoolStore.replace_content`), streamed; a message
that has one is left untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import time

from .. import log as logmod
from ..config import Config
from ..spool.store import SpoolStore
from .spec import FilterContext, Spec, store_for
from .verdicts import FilterOutcome, FilterResult

_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:", re.I)
_DOMAIN_OK = re.compile(r"^[A-Za-z0-9.-]+$")


_SEQUENCE = itertools.count()


def new_message_id(domain: str) -> str:
    """Upstream's form: seconds, microseconds, process id and a counter, ``@`` the domain."""
    host = domain if domain and _DOMAIN_OK.match(domain) else "localhost"
    now = time.time()
    return f"<{int(now)}.{int(now * 1_000_000) % 1_000_000}.{os.getpid()}.{next(_SEQUENCE)}@{host}>"  # no padding


def add_message_id(store: SpoolStore, ctx: FilterContext, domain: str) -> str | None:
    """Add the header when missing; returns the new id, or None when the message had one."""
    with open(ctx.content_path, "rb") as f:
        for line in f:
            if line in (b"\r\n", b"\n"):
                break
            if _MESSAGE_ID.match(line):
                return None
    msgid = new_message_id(domain)
    with store.replace_content(ctx.mid) as out:
        out.write(f"Message-ID: {msgid}\r\n".encode("ascii"))
        with open(ctx.content_path, "rb") as f:
            shutil.copyfileobj(f, out, 256 * 1024)
    return msgid


class MsgidFilter:
    def __init__(self, spec: Spec, config: Config, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.domain = config.domain
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        try:
            # upstream logs nothing but the filter's result line, whether or not it added one
            await asyncio.to_thread(add_message_id, store_for(self.store, ctx), ctx, self.domain)
        except OSError as exc:
            self.log.warning(f"filter [{self.name}] failed: {exc}")
            return FilterResult(
                FilterOutcome.ERROR, "filter error", None, f"msgid: {os.strerror(exc.errno or 5)}"
            )
        return FilterResult.accept()

    async def close(self) -> None:
        return None
