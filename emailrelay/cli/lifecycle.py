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
- a crash loop is a role process that dies right after starting, again and
  again: ``CRASH_LOOP_EXITS`` unplanned exits in a row of one process of a
  role (circus's ``wid``, the slot a restart takes over), each within
  ``START_SECONDS`` of its spawn (a failed start, as supervisord's
  ``startsecs``/``startretries``; 5 of them take 5-15 s, about systemd's
  default start limit of 5 starts in 10 s); then an error line, and the
  relay stops and exits 1 (``on_crash_loop``), so that systemd sees a failed
  service instead of a relay retrying forever.  A process that ran longer
  before it died (killed by an operator, the OOM killer or the chaos test)
  is no failed start, and it clears its slot's count: however often such
  processes die, the relay restarts them.

The lifetime is measured by the supervisor from the spawn to the reap
(circus reaps every ``check_delay``, 1 s), so it is never shorter than the
process's real one.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable
from typing import Any

from .. import log as logmod

CRASH_LOOP_EXITS = 5  # failed starts in a row of one process of a role
START_SECONDS = 3.0  # an unplanned exit this soon after the spawn is a failed start


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
        self.spawned: dict[int, tuple[int, float]] = {}  # pid -> (wid, spawn time) of living processes
        self.failed_starts: collections.Counter[tuple[str, int]] = collections.Counter()  # (role, wid)
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
        spawned = self.spawned.pop(process_pid, None)
        if process_pid in self.planned or watcher.is_stopping() or watcher.is_stopped():
            self.planned.discard(process_pid)
            log.verbose(f"supervisor: role {watcher.name} (pid {process_pid}) {what}")
            return True
        log.warning(f"supervisor: role {watcher.name} (pid {process_pid}) {what}")
        wid, started = spawned if spawned is not None else (0, None)
        self.exited(watcher.name, wid, None if started is None else self.clock() - started)
        return True

    def exited(self, role: str, wid: int = 0, lifetime: float | None = None) -> None:
        """Count one unplanned exit of process ``wid`` of ``role`` after ``lifetime`` seconds (None:
        unknown, no failed start); ``CRASH_LOOP_EXITS`` failed starts in a row are a crash loop."""
        slot = (role, wid)
        if lifetime is None or lifetime >= START_SECONDS:
            self.failed_starts[slot] = 0  # it had started: whatever killed it, no crash loop
        else:
            self.failed_starts[slot] += 1
        if self.failed_starts[slot] >= CRASH_LOOP_EXITS and self.crash_loop is None:
            self.crash_loop = role
            logmod.get().error(
                f"supervisor: role {role} exited {self.failed_starts[slot]} times in a row within "
                f"{START_SECONDS:g} seconds of starting: a crash loop: stopping"
            )
            self.on_crash_loop()
        elif self.crash_loop is None:
            self.respawns[role] += 1

    def after_spawn(self, watcher: Any, pid: int, **_: Any) -> bool:
        process = watcher.processes.get(pid)
        self.spawned[pid] = (getattr(process, "wid", 0), self.clock())
        if self.respawns[watcher.name] > 0:
            self.respawns[watcher.name] -= 1
            logmod.get().warning(f"supervisor: restarting role {watcher.name}: pid {pid}")
        return True
