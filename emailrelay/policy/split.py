"""``split:``: one message per recipient domain, with the domain in ``ForwardTo``.

What it is for (reference guide, "split:", "Routing"): routing without a
smarthost.  ``--filter=split: --client-filter=mx:`` splits each message by
the domain of its remote recipients and lets ``mx:`` resolve each
``ForwardTo`` domain when forwarding.

What it expects: the message's envelope (``.new`` or ``.busy``); the store.

What it guarantees: domains compare case-insensitively (the lower-case
domain goes into ``ForwardTo``) unless ``split:raw``; the original keeps the
first domain's recipients (and any ``To-Local`` ones), every other domain
gets a new committed message (content hard-linked where possible,
:meth:`SpoolStore.store_linked_copy`) whose other fields are the original's;
the new messages are written and committed before the original envelope is
rewritten, so a failure part-way can duplicate but never lose a recipient.
The result asks for a rescan when new messages were made (they are not run
through the other server-side filters, as upstream).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from .. import log as logmod
from ..spool import envelope as envelope_format
from ..spool.envelope import Envelope
from ..spool.names import MessageId
from ..spool.store import SpoolStore
from .deliver import _read
from .spec import FilterContext, PolicyOptions, Spec, store_for
from .verdicts import FilterOutcome, FilterResult


def domain_of(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def group_by_domain(recipients: tuple[str, ...] | list[str], raw: bool = False) -> dict[str, list[str]]:
    """Recipients grouped by domain, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for rcpt in recipients:
        domain = domain_of(rcpt)
        key = domain if raw else domain.lower()
        groups.setdefault(key, []).append(rcpt)
    return groups


class SplitFilter:
    def __init__(self, spec: Spec, options: PolicyOptions, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.raw = "raw" in {p.lower() for p in spec.params}
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        try:
            env = envelope_format.parse(await asyncio.to_thread(_read, ctx.envelope_path))
        except (OSError, envelope_format.EnvelopeError) as exc:
            self.log.warning(f"filter [{self.name}] failed: cannot read envelope: {exc}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"split: {exc}")
        groups = group_by_domain(env.to_remote, self.raw)
        if not groups:
            return FilterResult.accept()
        store = store_for(self.store, ctx)
        try:
            created = await asyncio.to_thread(self._split, store, ctx, env, groups)
        except (OSError, envelope_format.EnvelopeError) as exc:
            self.log.warning(f"filter [{self.name}] failed: {exc}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"split: {exc}")
        if created:
            self.log.info(
                f"filter [{self.name}]: [{ctx.message_id}]: split into {len(created) + 1} messages: "
                + " ".join(f"[{m}]" for m in created),
                ctx.log_address,
            )
            return FilterResult(FilterOutcome.OK, rescan=True)  # an internal rescan: upstream logs plain "ok"
        return FilterResult.accept()

    def _split(
        self, store: SpoolStore, ctx: FilterContext, env: Envelope, groups: dict[str, list[str]]
    ) -> list[MessageId]:
        items = list(groups.items())
        created: list[MessageId] = []
        for domain, rcpts in items[1:]:
            copy = replace(env, to_remote=tuple(rcpts), to_local=(), forward_to=domain).without_failure()
            created.append(store.store_linked_copy(ctx.mid, copy))
        first_domain, first_rcpts = items[0]
        updated = replace(env, to_remote=tuple(first_rcpts), forward_to=first_domain)
        if updated != env:
            store.rewrite_envelope_in_place(ctx.mid, ctx.state, updated)
        return created

    async def close(self) -> None:
        return None
