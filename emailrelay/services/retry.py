"""Retry back-off for messages that met a temporary failure.

What it is for: deciding when a released message is due again, and when to
give up.  Stateless on purpose: the delay follows from the message's age
(its id carries the creation time), so nothing but the envelope's mtime has
to be stored and the spool stays byte-compatible with upstream.

The schedule is a list of delays, default 1 min, 5 min, 15 min, 1 h, 4 h
(``--retry``).  A message ``age`` seconds old that failed now waits the
first delay whose cumulative end lies beyond its age, and the last delay
once it is past them all.  Past ``give_up`` seconds it is failed for good.
"""

from __future__ import annotations

import itertools


def next_delay(age: float, schedule: tuple[int, ...]) -> int:
    if not schedule:
        return 0
    for delay, boundary in zip(schedule, itertools.accumulate(schedule), strict=True):
        if age < boundary:
            return delay
    return schedule[-1]


def should_give_up(age: float, give_up: float) -> bool:
    return give_up > 0 and age >= give_up
