"""The periodic sweep of crash leftovers in the spool (issue 18 item 7).

What it is for: a session killed while it commits (its ``.envelope.new`` written, not yet renamed)
leaves ``<id>.envelope.new`` and maybe ``<id>.content``.  They were never acknowledged, so they are
not mail.  As Postfix ages out its incoming queue, every process that stores messages (the ``smtp``
role, the single-process relay) removes such leftovers once they are older than
:func:`leftover_age`: at start, then every :data:`SWEEP_PERIOD` seconds.  The store does the unlink
and writes one log line per leftover it removed, naming its files.

What it guarantees: a ``.new`` that a living session may still commit is never removed (the age is
far over ``--filter-timeout``, the only step between writing a ``.new`` and renaming it); the scan
runs in a worker thread, never on the event loop; a failed sweep is one warning and the next one
is tried.  Testing aid: the environment variable ``EMAILRELAY_SWEEP_PERIOD`` (seconds) shortens the
period (tests age a real leftover by setting its mtime back, not by shortening the age).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from .. import log as logmod
from ..config import Config

if TYPE_CHECKING:  # a type only: the notify role, which imports this, has no store
    from ..spool.store import SpoolStore

SWEEP_PERIOD = 60.0
SWEEP_PERIOD_ENV = "EMAILRELAY_SWEEP_PERIOD"
MIN_LEFTOVER_AGE = 600.0


def leftover_age(config: Config) -> float:
    """Seconds after which a ``.new`` is a crashed store: 10 minutes, or twice the filter time limit."""
    return max(MIN_LEFTOVER_AGE, 2 * config.filter_time_limit)


def sweep_period() -> float:
    try:
        return max(0.1, float(os.environ.get(SWEEP_PERIOD_ENV, "") or SWEEP_PERIOD))
    except ValueError:
        return SWEEP_PERIOD


async def sweep_forever(store: SpoolStore, config: Config) -> None:
    """Remove crash leftovers now and every period until cancelled."""
    age, period = leftover_age(config), sweep_period()
    while True:
        try:
            await asyncio.to_thread(store.remove_crashed_stores, age)
        except OSError as exc:
            logmod.get().warning(f"spool sweep failed: {exc}")
        await asyncio.sleep(period)
