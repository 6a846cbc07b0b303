"""``deliver:``: deliver messages with local recipients into their mailboxes.

What it is for (reference guide, "deliver:", "Delivery"): an address verifier
marks recipients as local and names their mailbox (``To-Local`` lines); this
filter copies the message into ``<delivery-dir>/<mailbox>/`` for each of
them (``--delivery-dir``, default the spool directory).  It takes no
parameter but an unsigned number, which it ignores (E-MailRelay 2.6b refuses
the guide's ``deliver:hardlink;nodelete`` at start-up, and so do we:
policy/spec.py).

What it guarantees: the envelope is read, and mailboxes are made and
written, as root (spool/delivery.py), as E-MailRelay 2.6b does: a delivery
directory only root may write takes mail, whatever ``--user``.  Mailbox
directories are created as needed (the delivery directory itself is not);
one that has ``new``, ``tmp`` and ``cur`` is a maildir and gets the content
alone, in ``new`` (named as E-MailRelay 2.6b names it); each mailbox gets
one copy however many recipients name it; a mailbox name that is empty,
``.``/``..``, or holds a ``/``, a backslash or a control character is
refused (nothing delivered).  With no local recipient nothing happens (OK);
with only local recipients the original is deleted after delivery
(ABANDON); with remote ones too the original stays for forwarding, which
ignores ``To-Local`` (OK).  Log lines and failures are upstream's (verbose):
``delivery: delivering <id> to [<dir>/<mbox>]`` (with a ``--delivery-dir``
other than the spool), ``delivery: recipient [<mbox>]: delivery to mailbox
[<mbox>]`` for each local recipient, then ``delivery: creating mailbox
[<mbox>]`` for each one made; a failure is the warning ``message processing
exception: <upstream's text>`` (server side: ``452 failed``; client side:
``smtp client error: <text>``, the message failed with that reason), see
:func:`delivery_failed`.
"""

from __future__ import annotations

import asyncio

from .. import log as logmod
from ..config import Config
from ..spool.delivery import (
    DeliveryError,
    OriginalNotRemoved,
    copy_to_directories,
    read_envelope,
    remove_original,
)
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
        store = store_for(self.store, ctx)
        try:
            env = await asyncio.to_thread(read_envelope, store, ctx.mid, ctx.state)
            if not env.to_local:
                return FilterResult.accept()
            await self._deliver(store, ctx, env.to_local)
            if env.to_remote:  # the original stays, for forwarding
                return FilterResult.accept()
            await asyncio.to_thread(remove_original, store, ctx.mid, ctx.state, content=True)
        except DeliveryError as exc:
            return delivery_failed(self.log, ctx, exc)
        return FilterResult(FilterOutcome.ABANDON, exit_code=100)

    async def _deliver(self, store: SpoolStore, ctx: FilterContext, to_local: tuple[str, ...]) -> None:
        """Upstream's lines, then a copy into each mailbox named (made as needed)."""
        base = self.config.mailbox_base
        if base != self.config.spool_dir.absolute():
            self.log.verbose(f"delivery: delivering {ctx.message_id} to [{base}/<mbox>]")
        for mailbox in to_local:  # one per local recipient, a mailbox named twice too
            self.log.verbose(f"delivery: recipient [{mailbox}]: delivery to mailbox [{mailbox}]")
        await asyncio.to_thread(
            copy_to_directories,
            store,
            ctx.mid,
            ctx.state,
            base,
            list(dict.fromkeys(to_local)),
            create=True,
            kind="deliver",
            on_create=lambda mailbox: self.log.verbose(f"delivery: creating mailbox [{mailbox}]"),
        )

    async def close(self) -> None:
        return None


def delivery_failed(log: logmod.Log, ctx: FilterContext, exc: DeliveryError) -> FilterResult:
    """A ``deliver:`` or ``copy:`` failure as E-MailRelay 2.6b reports it: its warning (server side
    ``message processing exception: <text>``, client side ``smtp client error: <text>``; a failed
    deletion of the original ``cannot delete file [<path>]: <reason>``), the client told ``452
    failed``, a client filter's message failed with the text as its reason."""
    if isinstance(exc, OriginalNotRemoved):
        log.warning(f"cannot delete file [{exc.path}]: {exc.reason}")
    elif ctx.client:
        log.warning(f"smtp client error: {exc}")
    else:
        log.warning(f"message processing exception: {exc}")
    return FilterResult(FilterOutcome.REJECT, "failed", None, str(exc))
