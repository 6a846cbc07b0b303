"""Role lifecycle in the log, and the crash-loop limit (docs/decisions.md, supervisor).

What it is for: circus restarts a role that exits (the supervisor's watchers
have no retry limit) and says nothing about it above debug level.  This
module is given to every watcher as its ``after_reap`` and ``after_spawn``
hooks (circus's documented hooks) and to its ``kill_process`` (so that the
exits the supervisor itself asked for are known).

Guarantees:

- every exit of a role process that nobody asked for is a warning with the
  role, the pid and its exit status or the signal that killed it, and the
  process circus starts in its place is a warning too (``restarting role
  smtp: pid N``); exits the supervisor asked for (a stop, ``restart ROLE``,
  fewer ``workers``) are verbose lines;
- ``CRASH_LOOP_EXITS`` unplanned exits of one role within
  ``CRASH_LOOP_SECONDS`` (systemd's own default start limit, 5 in 10 s), per
  process the role runs (``--workers forward=2``: 10), is a crash loop: an error line, then the relay stops and exits 1 (``on_crash_loop``),
  so that systemd sees a failed service instead of a relay retrying forever.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable
from typing import Any

from .. import log as logmod

CRASH_LOOP_EXITS = 5
CRASH_LOOP_SECONDS = 10.0


def describe_exit(code: int) -> str:
    """circus's exit code (``-N`` for signal N) in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by signal {-code} ({name})"
    return f"exited with status {code}"


class Lifecycle:
    """The exits and restarts of every role of one supervisor."""

    def __init__(
        self, on_crash_loop: Callable[[], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.on_crash_loop = on_crash_loop
        self.clock = clock
        self.planned: set[int] = set()  # pids the supervisor is stopping
        self.exits: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.respawns: collections.Counter[str] = collections.Counter()
        self.crash_loop: str | None = None  # the role that looped, once it has

    def hooks(self) -> dict[str, tuple[Callable[..., bool], bool]]:
        """The watcher's ``hooks`` argument (failures ignored: the log must never stop a role)."""
        return {"after_reap": (self.after_reap, True), "after_spawn": (self.after_spawn, True)}

    def stopping(self, pid: int) -> None:
        """The supervisor is about to stop ``pid`` (a stop, a restart, scaling down)."""
        self.planned.add(pid)

    def after_reap(self, watcher: Any, process_pid: int, exit_code: int | None = None, **_: Any) -> bool:
        log = logmod.get()
        what = describe_exit(exit_code) if exit_code is not None else "exited"
        if process_pid in self.planned or watcher.is_stopping() or watcher.is_stopped():
            self.planned.discard(process_pid)
            log.verbose(f"supervisor: role {watcher.name} (pid {process_pid}) {what}")
            return True
        log.warning(f"supervisor: role {watcher.name} (pid {process_pid}) {what}")
        self.exited(watcher.name, watcher.numprocesses)
        return True

    def exited(self, role: str, processes: int = 1) -> None:
        """Count one unplanned exit of ``role`` (which runs ``processes`` processes); the limit
        reached is a crash loop."""
        now = self.clock()
        times = self.exits[role]
        times.append(now)
        while times and times[0] < now - CRASH_LOOP_SECONDS:
            times.popleft()
        if len(times) >= CRASH_LOOP_EXITS * max(1, processes) and self.crash_loop is None:
            self.crash_loop = role
            logmod.get().error(
                f"supervisor: role {role} exited {len(times)} times in {CRASH_LOOP_SECONDS:g} seconds: "
                "a crash loop: stopping"
            )
            self.on_crash_loop()
        elif self.crash_loop is None:
            self.respawns[role] += 1

    def after_spawn(self, watcher: Any, pid: int, **_: Any) -> bool:
        if self.respawns[watcher.name] > 0:
            self.respawns[watcher.name] -= 1
            logmod.get().warning(f"supervisor: restarting role {watcher.name}: pid {pid}")
        return True
