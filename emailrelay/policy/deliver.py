"""``deliver:``: deliver messages with local recipients into their mailboxes.

What it is for (reference guide, "deliver:", "Delivery"): an address verifier
marks recipients as local and names their mailbox (``To-Local`` lines); this
filter copies the message into ``<delivery-dir>/<mailbox>/`` for each of
them (``--delivery-dir``, default the spool directory).  It takes no
parameter but an unsigned number, which it ignores (E-MailRelay 2.6b refuses
the guide's ``deliver:hardlink;nodelete`` at start-up, and so do we:
policy/spec.py).

What it guarantees: mailbox directories are created as needed; one that has
``new``, ``tmp`` and ``cur`` is a maildir and gets the content alone, in
``new`` (named as E-MailRelay 2.6b names it); each mailbox gets one copy
however many recipients name it; a
mailbox name that is empty, ``.``/``..``, or holds a ``/``, a backslash or a
control character is refused (REJECT, nothing delivered).  With no local
recipient nothing happens (OK); with only local recipients the original is
deleted after delivery (ABANDON); with remote ones too the original stays for
forwarding, which ignores ``To-Local`` (OK).
"""

from __future__ import annotations

import asyncio
import errno

from .. import log as logmod
from ..config import Config
from ..spool import envelope as envelope_format
from ..spool.delivery import copy_to_directories
from ..spool.store import SpoolStore
from .spec import FilterContext, Spec, store_for
from .verdicts import FilterOutcome, FilterResult


class DeliverFilter:
    def __init__(self, spec: Spec, config: Config, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = config
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        try:
            data = await asyncio.to_thread(_read, ctx.envelope_path)
            env = envelope_format.parse(data)
        except (OSError, envelope_format.EnvelopeError) as exc:
            self.log.warning(f"filter [{self.name}] failed: cannot read envelope: {exc}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"deliver: {exc}")
        if not env.to_local:
            return FilterResult.accept()
        mailboxes = list(dict.fromkeys(env.to_local))
        delete = not env.to_remote
        store = store_for(self.store, ctx)
        base = self.config.mailbox_base
        existing = await asyncio.to_thread(lambda: {m for m in mailboxes if (base / m).is_dir()})
        for mailbox in mailboxes:  # upstream's (verbose) lines
            self.log.verbose(f"delivery: recipient [{mailbox}]: delivery to mailbox [{mailbox}]")
            if mailbox not in existing:
                self.log.verbose(f"delivery: creating mailbox [{mailbox}]")
        try:
            await asyncio.to_thread(
                copy_to_directories,
                store,
                ctx.mid,
                ctx.state,
                self.config.mailbox_base,
                mailboxes,
                create=True,
                delete_original=delete,
            )
        except OSError as exc:
            self.log.warning(f"filter [{self.name}] failed: {exc}")
            if exc.errno == errno.EINVAL:
                return FilterResult(FilterOutcome.REJECT, "invalid mailbox", None, str(exc))
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"deliver: {exc}")
        if delete:
            return FilterResult(FilterOutcome.ABANDON, exit_code=100)
        return FilterResult.accept()

    async def close(self) -> None:
        return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
