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

All of it runs on the role's event loop (the watcher's callback and the bus
reader both do); nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WINDOW = 0.1  # seconds a doorbell of ours waits for another process's announcement of the same id
MEMORY = 10.0  # seconds an announcement (or a ring of ours) is remembered


class Doorbells:
    """``found(id)`` for each ready envelope the watcher sees, ``announced(id)`` for each
    ``spool.ready`` another process published; ``ring(id)`` is called for what is left."""

    def __init__(
        self,
        ring: Callable[[str], None],
        loop: asyncio.AbstractEventLoop,
        *,
        window: float = WINDOW,
        memory: float = MEMORY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ring = ring
        self._loop = loop
        self._window = window
        self._memory = memory
        self._clock = clock
        self._pending: dict[str, asyncio.TimerHandle] = {}  # ours, waiting out the window
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
        if mid not in self._pending:
            self._pending[mid] = self._loop.call_later(self._window, self._window_over, mid)

    def announced(self, mid: str) -> None:
        """Another process published ``spool.ready`` for ``mid``."""
        now = self._clock()
        handle = self._pending.pop(mid, None)
        if handle is not None:
            handle.cancel()  # ours was for the same event: theirs has rung
            return
        if self._rung.pop(mid, None) is not None:
            return  # theirs came after ours had rung: both were for one event
        self._announced[mid] = now
        _forget_older(self._announced, now - self._memory)

    def _window_over(self, mid: str) -> None:
        if self._pending.pop(mid, None) is None:
            return
        now = self._clock()
        self._rung[mid] = now
        _forget_older(self._rung, now - self._memory)
        self._ring(mid)

    def close(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()


def _forget_older(table: dict[str, float], cutoff: float) -> None:
    """Drop the entries remembered before ``cutoff`` (insertion order is time order)."""
    while table:
        mid = next(iter(table))
        if table[mid] >= cutoff:
            return
        del table[mid]
