"""``copy:``: copy each message into every sub-directory of the spool (POP by name).

What it is for (reference guide, "copy:", "POP"): with ``--pop-by-name``
every sub-directory is a user's mailbox; ``copy:`` puts a copy of each
message into all of them, then deletes the original.  Parameters
(semicolon-separated): ``hardlink`` (link the content instead of copying it),
``pop`` (copy only the envelope; the content stays in the main spool, where
the POP server finds it), ``nodelete`` (keep the original for forwarding).

What it expects: the spool store; sub-directories made by the operator.

What it guarantees: no copy into ``postmaster`` or a dot-directory; a
directory with ``new``, ``tmp`` and ``cur`` gets a maildir copy of the
content in ``new``; every copy is complete before the original is deleted;
when there is no sub-directory at all the original is kept (never deleted
with nowhere to go).  The copies are made, and the original deleted, as root
(spool/delivery.py), as E-MailRelay 2.6b does.  Result: ABANDON when the
original was deleted (the filter took care of it; with ``pop`` the content
stays), OK otherwise, as E-MailRelay 2.6b's ``ok(abandon)``.  Log lines are
upstream's: ``filter [copy:]: <id> copied to [<mailbox>,...]`` (verbose, before
the original is deleted), the warning ``copy filter: no sub-directories of
[<spool>] to copy in to``, and a failure's (``delivery: cannot write content
file: copy: <path>: <reason>``, ...: policy/deliver.py's :func:`delivery_failed`).
"""

from __future__ import annotations

import asyncio

from .. import log as logmod
from ..config import Config
from ..spool.delivery import DeliveryError, copy_to_directories, remove_original
from ..spool.store import SpoolStore
from .deliver import delivery_failed
from .spec import FilterContext, Spec, store_for
from .verdicts import FilterOutcome, FilterResult


class CopyFilter:
    def __init__(self, spec: Spec, config: Config, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        params = {p.lower() for p in spec.params}
        self.hardlink = "hardlink" in params
        self.pop = "pop" in params
        self.delete = "nodelete" not in params
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        store = store_for(self.store, ctx)
        names = await asyncio.to_thread(store.mailboxes)
        if not names:
            self.log.warning(f"copy filter: no sub-directories of [{store.directory}] to copy in to")
            return FilterResult.accept()
        try:
            await asyncio.to_thread(
                copy_to_directories,
                store,
                ctx.mid,
                ctx.state,
                store.directory,
                names,
                hardlink=self.hardlink,
                envelope_only=self.pop,
            )
            self.log.verbose(
                f"{ctx.log_prefix} [{self.name}]: {ctx.message_id} copied to [{','.join(names)}]",
                ctx.log_address,
            )
            if self.delete:
                await asyncio.to_thread(remove_original, store, ctx.mid, ctx.state, content=not self.pop)
        except DeliveryError as exc:
            return delivery_failed(self.log, ctx, exc)
        if self.delete:  # the original is gone (copy:pop keeps its content): upstream's ok(abandon)
            return FilterResult(FilterOutcome.ABANDON, exit_code=100)
        return FilterResult.accept()

    async def close(self) -> None:
        return None
