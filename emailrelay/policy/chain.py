"""Filter chains: ``--filter`` (server side) and ``--client-filter`` (forwarding side).

What it is for: one object per side that runs the comma-separated filters of
the option, in order, on one message, and sums their verdicts up into one
:class:`FilterResult` for the caller (the SMTP session, the forwarder).

What it expects: parsed :class:`Spec` items; the spool store; the message's
id, absolute content path and envelope path (``.envelope.new`` on the
server side, ``.envelope.busy`` on the client side).

What it guarantees:
- filters run one after the other; the first result that is not ok (REJECT,
  ERROR, ABANDON) ends the chain and is returned;
- a rescan request (server side: 102, 103, 104) anywhere is remembered: the
  final result has ``rescan`` set and, when otherwise ok, the RESCAN outcome;
  a client side stop (102, 104, 105) sets ``stop`` and makes an ok final
  result STOP_SCAN;
- a filter that deleted the envelope but said ok ends the chain: the result
  is ABANDON on the client side (the forwarder just drops its claim) and OK on
  the server side, where committing then fails as in E-MailRelay 2.6b (the
  SMTP session replies ``452 rejected``);
- a bug in a filter is an ERROR result, never an exception into the caller;
- log lines, as E-MailRelay 2.6b writes them, one per chain (verbose):
  ``<side> [<names>]: [<id>]: ok|ok(abandon)|failed[ +rescan| +break]
  response=[<response>][ reason=[<reason>]]``, where ``<side>`` is
  ``filter``, ``client-filter`` or ``routing-filter`` (a client filter run
  early for a ``ForwardTo``), ``<names>`` the filters' names joined by
  commas, the outcome that of the last filter run, ``+rescan`` (``+break``)
  shown when any filter run asked for it; the response and the reason are
  the filter's own (each filter words a rejection without a text itself:
  ``rejected``), empty ones too, and the reason is shown when it differs
  from the response; a chain of ``exit:0`` alone logs nothing, as upstream's;
- many messages may be filtered at once (no lock is shared between calls).

Client-filter contract for the forwarder: filters edit the ``.busy``
envelope file in place (built-ins via
:meth:`SpoolStore.rewrite_envelope_in_place`; scripts as they like), so after
a client filter the forwarder must re-read the envelope
(``claim.envelope(reread=True)``) before using ``ForwardToAddress`` etc.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from .. import log as logmod
from ..config import Config
from ..spool.names import MessageId
from ..spool.store import SpoolStore
from .spec import Filter, FilterContext, Spec, parse_filters, warnings_for
from .verdicts import FilterOutcome, FilterResult


def make_filter(spec: Spec, config: Config, store: SpoolStore) -> Filter:
    """One filter object for a spec (network and DNS set-up is lazy; nothing connects here)."""
    kind = spec.kind
    if kind == "exe":
        from .exe import ExeFilter

        return ExeFilter(spec, config)
    if kind == "exit":
        from .builtin_exit import ExitFilter

        return ExitFilter(spec, config)
    if kind == "net":
        from .net import NetFilter

        return NetFilter(spec, config)
    if kind in ("spam", "spam-edit"):
        from .spam import SpamFilter

        return SpamFilter(spec, config, store)
    if kind == "copy":
        from .copy import CopyFilter

        return CopyFilter(spec, config, store)
    if kind == "deliver":
        from .deliver import DeliverFilter

        return DeliverFilter(spec, config, store)
    if kind == "split":
        from .split import SplitFilter

        return SplitFilter(spec, config, store)
    if kind == "mx":
        from .mx import MxFilter

        return MxFilter(spec, config, store)
    if kind == "msgid":
        from .msgid import MsgidFilter

        return MsgidFilter(spec, config, store)
    raise ValueError(f"not a filter: {spec.text}")


class FilterChain:
    client = False

    def __init__(self, specs: list[Spec], store: SpoolStore, config: Config) -> None:
        self.specs = list(specs)
        self.store = store
        self.config = config
        self.filters: list[Filter] = [make_filter(s, config, store) for s in self.specs]
        self.log = logmod.get()

    def __bool__(self) -> bool:
        return bool(self.filters)

    async def filter(
        self,
        message_id: MessageId | str,
        content_path: str,
        envelope_path: str,
        *,
        log_address: str | None = None,
        routing: bool = False,
    ) -> FilterResult:
        ctx = FilterContext(
            message_id,
            os.path.abspath(content_path),
            os.path.abspath(envelope_path),
            client=self.client,
            log_address=log_address,
            routing=routing,
        )
        rescan = stop = shown_rescan = shown_stop = False
        last = FilterResult.accept()

        def logged(result: FilterResult) -> FilterResult:
            self._log_result(ctx, result, shown_rescan, shown_stop)
            return result

        for f in self.filters:
            try:
                result = await f.run(ctx)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in a filter must not break the session
                self.log.error(
                    f"{ctx.log_prefix} [{f.name}]: [{message_id}]: internal error: {exc!r}", log_address
                )
                result = FilterResult(FilterOutcome.ERROR, "filter error", None, f"internal error: {exc}")
            rescan = rescan or result.rescan or result.outcome is FilterOutcome.RESCAN
            stop = stop or result.stop or result.outcome is FilterOutcome.STOP_SCAN
            shown_rescan = shown_rescan or result.outcome is FilterOutcome.RESCAN or self._own_rescan(result)
            shown_stop = (
                shown_stop or result.stop or (self.client and result.outcome is FilterOutcome.STOP_SCAN)
            )
            if not result.ok:
                return self._final(logged(result), rescan, stop)
            if not await asyncio.to_thread(os.path.exists, ctx.envelope_path):
                # the filter took the message away but said ok: the client side drops its claim;
                # the server side carries on, and its commit fails, as upstream's does
                logged(result)
                gone = FilterOutcome.ABANDON if self.client else FilterOutcome.OK
                return self._final(FilterResult(gone, exit_code=result.exit_code), rescan, stop)
            last = result
        return self._final(logged(last), rescan, stop)

    @staticmethod
    def _final(result: FilterResult, rescan: bool, stop: bool) -> FilterResult:
        if result.outcome is FilterOutcome.OK or result.ok:
            if stop:
                result = replace(result, outcome=FilterOutcome.STOP_SCAN)
            elif rescan:
                result = replace(result, outcome=FilterOutcome.RESCAN)
        if rescan and not result.rescan:
            result = replace(result, rescan=True)
        if stop and not result.stop:
            result = replace(result, stop=True)
        return result

    def _log_result(self, ctx: FilterContext, result: FilterResult, rescan: bool, stop: bool) -> None:
        """Upstream's one line per chain: ``filter [x,y]: [id]: failed +rescan response=[..] reason=[..]``
        (``result`` the last filter's, ``rescan`` and ``stop`` whether any filter asked to be shown so)."""
        if all(s.kind == "exit" and s.value == "0" for s in self.specs):
            return  # upstream's exit:0 is quiet
        if result.ok:
            word, response, reason = "ok", "", ""
        elif result.outcome is FilterOutcome.ABANDON:
            word, response, reason = "ok(abandon)", "", ""
        else:
            word = "failed"
            # each filter's own texts, as it gave them: empty ones too (a net: answer "<tab>why")
            response, reason = result.reason, result.detail
        if stop:
            word += " +break"
        elif not ctx.client and rescan:
            word += " +rescan"
        tail = f" reason=[{reason}]" if reason != response else ""
        name = ",".join(f.name for f in self.filters)
        # no address on this line: upstream's filter-and-pop-verbose.log has none
        self.log.verbose(f"{ctx.log_prefix} [{name}]: [{ctx.message_id}]: {word} response=[{response}]{tail}")

    @staticmethod
    def _own_rescan(result: FilterResult) -> bool:
        """A rescan the filter asked for by its exit code (split:'s internal one is not shown)."""
        return result.rescan and result.exit_code is not None

    async def close(self) -> None:
        for f in self.filters:
            try:
                await f.close()
            except Exception as exc:  # closing is best effort
                self.log.warning(f"filter [{f.name}]: close: {exc!r}")


class ServerFilterChain(FilterChain):
    """``--filter``: runs on ``.envelope.new`` before the message is committed."""

    client = False


class ClientFilterChain(FilterChain):
    """``--client-filter``: runs on the claimed ``.envelope.busy`` before forwarding."""

    client = True


def build_client_filter(config: Config, store: SpoolStore) -> ClientFilterChain | None:
    """The forwarder's client-filter chain for a configuration, or None when there is none."""
    specs = parse_filters(config.client_filters, client=True)
    if not specs:
        return None
    for text in warnings_for(specs):
        logmod.get().warning(text)
    return ClientFilterChain(specs, store, config)
