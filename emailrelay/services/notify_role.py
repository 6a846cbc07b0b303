"""The notify role: the spool watcher and the bus in one plain poll loop, without asyncio.

What it is for: :mod:`.notify` watches the spool and :mod:`.doorbells` drops
the doorbells another process has rung; this module runs both in the role's
process: one poll (``BusClient.wait``) over the bus's subscriber, the
watcher's descriptor and a signal pipe, with the next held doorbell's time
as its timeout.  The role needs no event loop, and asyncio (with the ``ssl``
module it imports) and uvloop were about 5 MB of its heap (issue 20's
memory target), as the bus role, which has none either.

Guarantees: SIGTERM and SIGINT end it cleanly (the watcher stopped, the bus
closed) at the next turn of the poll; SIGHUP is ignored, as by the other
roles.  What it holds when it stops is at most one window (0.1 s) of
doorbells, which the forwarders' rescans cover, as any lost doorbell.
Under load it wakes at most 1/:data:`NAP` times a second: after a turn that
had work it waits :data:`NAP` before it polls again, and takes what came
meanwhile in one turn (a doorbell is at most that much later; idle, it
sleeps in the poll as before).
Everything it imports is imported before it becomes ``--user``
(``topology``'s preload names this module).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from .. import identity
from .. import log as logmod
from ..bus import schema
from ..bus.endpoint import BusClient
from ..config import Config
from .doorbells import Doorbells
from .notify import SpoolWatcher

NAP = 0.02  # seconds between two turns with work (issue 20: a wake-up a message cost 0.13 ms of CPU)


def run_notify(config: Config, run_dir: str, polling: bool) -> int:
    log = logmod.get()
    bus = BusClient(run_dir)
    identity.drop_to(config.user)
    # what the smtp role (or anyone) already announced is not rung again (services/doorbells.py)
    doorbells = Doorbells(lambda mid: bus.publish(schema.SPOOL_READY, id=mid))
    bus.subscribe([schema.SPOOL_READY])
    watcher = SpoolWatcher(str(config.spool_dir), polling=polling)
    mode = watcher.start()
    log.verbose(f"spool notifier watching {config.spool_dir} ({mode})")
    stop_read, stop_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(BlockingIOError):  # (full: it is readable already)
            os.write(stop_write, b"\0")  # the poll is woken, whichever system call the signal met

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watched = (watcher.fileno(), stop_read)
    bus.publish(schema.ROLE_STARTED, role="notify")
    me = os.getpid()
    try:
        while not stopping:
            due = doorbells.next_due()
            queued, readable = bus.wait(watched, None if due is None else due - time.monotonic())
            if watcher.fileno() in readable:
                for mid in watcher.ready_ids():
                    doorbells.found(mid)
            if queued:
                for _, body in bus.received():
                    if body.get("pid") != me and isinstance(body.get("id"), str):
                        doorbells.announced(body["id"])
            doorbells.ring_due()
            if readable or queued:
                time.sleep(NAP)  # (a stop signal lands in the pipe: the next poll sees it)
    finally:
        watcher.stop()
        bus.close()
        os.close(stop_read)
        os.close(stop_write)
    return 0
