"""The notify role's doorbells, less the ones another process has already rung.

What it is for: a message our smtp role commits was announced twice on the
bus: by the smtp role (``spool.ready`` right after its commit) and by the
notify role, which sees the rename.  Every forward process took both (a bus
message, a ring, and a recheck of an id it already had), and the bus carried
both: about 0.15-0.2 ms of CPU a message over the relay (issue 20).  So the
notify role holds each doorbell for :data:`WINDOW` seconds and drops it when
another process announces that id meanwhile, or did just before.

Guarantees:

- one announcement by another process cancels at most one of ours: the one
  for the event it announced.  A later event for the same id (the message
  released from ``.busy`` after a failure, or unfailed) rings again;
- a doorbell is only ever delayed (by :data:`WINDOW`), or dropped for an id
  that another process announced.  The forwarders' rescans stay the safety
  net, as for any doorbell the bus loses;
- bounded memory: what is remembered is forgotten after :data:`MEMORY` s.

Plain data and the clock: the notify role's loop calls :meth:`Doorbells.ring_due`
when :meth:`Doorbells.next_due` says, and nothing here does I/O or needs an
event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW = 0.1  # seconds a doorbell of ours waits for another process's announcement of the same id
MEMORY = 10.0  # seconds an announcement (or a ring of ours) is remembered


class Doorbells:
    """``found(id)`` for each ready envelope the watcher sees, ``announced(id)`` for each
    ``spool.ready`` another process published; :meth:`ring_due` calls ``ring(id)`` for what is
    left once its window is over."""

    def __init__(
        self,
        ring: Callable[[str], None],
        *,
        window: float = WINDOW,
        memory: float = MEMORY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ring = ring
        self._window = window
        self._memory = memory
        self._clock = clock
        self._pending: dict[str, list[float]] = {}  # ours, waiting out the window: [when it rings, events]
        self._rung: dict[str, float] = {}  # ours, rung after the window: a late announcement is theirs
        self._announced: dict[str, float] = {}  # theirs, before we saw the event: it answers for it

    @property
    def remembered(self) -> int:
        return len(self._pending) + len(self._rung) + len(self._announced)

    def found(self, mid: str) -> None:
        """The watcher saw a ready envelope ``mid``."""
        now = self._clock()
        when = self._announced.pop(mid, None)
        if when is not None and now - when < self._memory:
            return  # another process rang for this very event
        held = self._pending.get(mid)
        if held is None:
            self._pending[mid] = [now + self._window, 1]
        else:
            held[1] += 1  # a second event in the window (a quick release): one ring, unless answered

    def announced(self, mid: str) -> None:
        """Another process published ``spool.ready`` for ``mid``."""
        now = self._clock()
        held = self._pending.get(mid)
        if held is not None:  # ours was for the same event: theirs has rung
            held[1] -= 1
            if held[1] == 0:
                del self._pending[mid]
            return
        if self._rung.pop(mid, None) is not None:
            return  # theirs came after ours had rung: both were for one event
        self._announced[mid] = now
        _forget_older(self._announced, now - self._memory)

    def next_due(self) -> float | None:
        """When (on the clock) the first doorbell held now is to ring; None when none is held."""
        first = next(iter(self._pending.values()), None)
        return None if first is None else first[0]

    def ring_due(self) -> None:
        """Ring every held doorbell whose window is over (the pending ones ring in the order found:
        one window for all, so that is the order of their times)."""
        now = self._clock()
        while self._pending:
            mid, (when, _) = next(iter(self._pending.items()))
            if when > now:
                break
            del self._pending[mid]
            self._rung[mid] = now
            self._ring(mid)
        _forget_older(self._rung, now - self._memory)


def _forget_older(table: dict[str, float], cutoff: float) -> None:
    """Drop the entries remembered before ``cutoff`` (insertion order is time order)."""
    while table:
        mid = next(iter(table))
        if table[mid] >= cutoff:
            return
        del table[mid]
