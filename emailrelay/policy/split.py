"""``split:``: one message per recipient domain, with the domain in ``ForwardTo``.

What it is for (reference guide, "split:", "Routing"): routing without a
smarthost.  ``--filter=split: --client-filter=mx:`` splits each message by
the domain of its remote recipients and lets ``mx:`` resolve each
``ForwardTo`` domain when forwarding.

What it expects: the message's envelope (``.new`` or ``.busy``), read as ``deliver:`` and
``copy:`` read it (:func:`~emailrelay.spool.delivery.read_envelope`: as root, never through a
symlink); the store;
``;``-separated parameters: ``raw`` (exact domain comparison) and a port
number (``split:25``), anything else ignored, as E-MailRelay 2.6b.

What it guarantees, as E-MailRelay 2.6b does it: the groups are ordered by
domain (lower-cased unless ``raw``; recipients without a domain form the
group ``""``); the original keeps the first group and every other group
gets a new message, in that order (content hard-linked where possible);
``ForwardTo`` is the first recipient's domain as written, plus ``:<port>``
when a port was given; when the message was split, every envelope of the
group ends with ``X-MailRelay-SplitGroupCount: <n>`` and one
``X-MailRelay-SplitGroup: <id>`` line per message (the original first);
log lines ``filter [split:] creating [<id>]: forward-to=[<domain>]`` and
``... updating [<id>]: ...``.  The new messages are written and committed
before the original envelope is rewritten, so a failure part-way can
duplicate but never lose a recipient.  The result is ok (the new messages
ask for a rescan internally; they are not run through the other
server-side filters, as upstream).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from .. import log as logmod
from ..config import Config
from ..spool import envelope as envelope_format
from ..spool.delivery import read_envelope
from ..spool.envelope import Envelope
from ..spool.names import MessageId
from ..spool.store import SpoolStore
from .spec import FilterContext, Spec, store_for
from .verdicts import FilterOutcome, FilterResult


def domain_of(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def group_by_domain(recipients: tuple[str, ...] | list[str], raw: bool = False) -> dict[str, list[str]]:
    """Recipients grouped by domain (lower-cased unless ``raw``), the groups in sorted order."""
    groups: dict[str, list[str]] = {}
    for rcpt in recipients:
        domain = domain_of(rcpt)
        groups.setdefault(domain if raw else domain.lower(), []).append(rcpt)
    return dict(sorted(groups.items()))


class SplitFilter:
    def __init__(self, spec: Spec, config: Config, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.raw = "raw" in spec.params  # exactly "raw", as upstream
        ports = [p for p in spec.params if p.isdigit()]
        self.port = f":{ports[-1]}" if ports else ""
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        store = store_for(self.store, ctx)
        try:
            env = await asyncio.to_thread(read_envelope, store, ctx.mid, ctx.state)
        except OSError as exc:  # DeliveryError: "cannot read envelope file: <path>: <reason>"
            self.log.warning(f"filter [{self.name}] failed: {exc}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"split: {exc}")
        groups = group_by_domain(env.to_remote, self.raw)
        if not groups:
            return FilterResult.accept()
        try:
            created = await asyncio.to_thread(self._split, store, ctx, env, groups)
        except (OSError, envelope_format.EnvelopeError) as exc:
            self.log.warning(f"filter [{self.name}] failed: {exc}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"split: {exc}")
        return FilterResult(FilterOutcome.OK, rescan=bool(created))  # an internal rescan: upstream logs "ok"

    def _split(
        self, store: SpoolStore, ctx: FilterContext, env: Envelope, groups: dict[str, list[str]]
    ) -> list[MessageId]:
        items = list(groups.items())
        copies = []
        try:
            for _ in items[1:]:
                copies.append(store.new_linked_copy(ctx.mid))
            ids = [str(ctx.mid), *(str(m.id) for m in copies)]
            tail = (
                f"X-MailRelay-SplitGroupCount: {len(ids)}",
                *(f"X-MailRelay-SplitGroup: {i}" for i in ids),
            )
            tail = tail if copies else ()
            for msg, (key, rcpts) in zip(copies, items[1:], strict=True):
                copy = replace(
                    env, to_remote=tuple(rcpts), to_local=(), forward_to=domain_of(rcpts[0]) + self.port
                ).without_failure()
                msg.write_envelope(replace(copy, extra_tail=(*copy.extra_tail, *tail)))
                self.log.verbose(
                    f"filter [{self.name}] creating [{msg.id}]: forward-to=[{key}]", ctx.log_address
                )
            for msg in copies:
                msg.commit()
        except BaseException:
            for msg in copies:
                msg.abandon()
            raise
        key, rcpts = items[0]
        updated = replace(env, to_remote=tuple(rcpts), forward_to=domain_of(rcpts[0]) + self.port)
        updated = replace(updated, extra_tail=(*updated.extra_tail, *tail))
        self.log.verbose(
            f"filter [{self.name}] updating [{ctx.message_id}]: forward-to=[{key}]", ctx.log_address
        )
        if updated.to_bytes() != env.to_bytes():
            store.rewrite_envelope_in_place(ctx.mid, ctx.state, updated)
        return [m.id for m in copies]

    async def close(self) -> None:
        return None
