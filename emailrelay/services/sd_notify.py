"""systemd service notifications and socket activation, without libsystemd.

What it is for: ``Type=notify`` units (deploy/emailrelay.service).  The
front end tells systemd, through the ``relay_*`` hooks:

- :func:`relay_started` — ``READY=1`` (with ``MAINPID`` and a ``STATUS=`` line
  naming the queue size) once every listening socket is bound and the pid
  file is written; it also starts the heartbeat thread, which sends
  ``WATCHDOG=1`` every half ``WatchdogSec`` when the unit sets one
  (``WATCHDOG_USEC``) and refreshes ``STATUS=`` every ``STATUS_PERIOD``
  seconds;
- :func:`relay_reloading` / :func:`relay_reloaded` — ``RELOADING=1`` (with
  ``MONOTONIC_USEC``, as ``Type=notify-reload`` wants) when SIGHUP starts a
  reload, ``READY=1`` when it is done;
- :func:`relay_stopping` — ``STOPPING=1`` when the relay begins to stop; the
  heartbeat ends.

Socket activation (deploy/emailrelay.socket) needs nothing here: the relay
takes the passed socket with ``--interface fd#3``.

What it expects: ``NOTIFY_SOCKET`` names a unix datagram socket, a path or an
abstract name (``@...``).  Outside systemd it is unset and every call here is
a no-op returning False.

Guarantees: never raises (a lost notification must not stop the relay:
systemd's timeouts report it).  The first call takes ``NOTIFY_SOCKET``,
``WATCHDOG_USEC`` and ``WATCHDOG_PID`` out of the environment and keeps them
here, so every later notification still reaches systemd while the supervised
roles, which inherit the environment, never notify in the relay's name.  The
watchdog vouches for the process's event loop once it is named with
:func:`watch_loop` (a callback must run on it within 5 s), and for an
``alive`` check when one is passed; a failing one withholds ``WATCHDOG=1`` and
systemd restarts the unit after ``WatchdogSec``.  Without either it only
proves that the process lives.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (imported when used: the front end imports this module before its pid file)
    import asyncio

STATUS_PERIOD = 30.0  # seconds between STATUS= refreshes of the queue size

_lock = threading.Lock()
_taken = False
_address: str | None = None
_watchdog_usec: int | None = None
_heartbeat: Heartbeat | None = None
_spools: list[Path | str] = []  # what relay_started was told, for the STATUS= lines that follow
_loop: asyncio.AbstractEventLoop | None = None  # the event loop whose liveness the watchdog vouches for


def _take_environment() -> None:
    """Move systemd's variables from the environment into this module (once)."""
    global _taken, _address, _watchdog_usec
    with _lock:
        if _taken:
            return
        _taken = True
        _address = os.environ.pop("NOTIFY_SOCKET", None) or None
        usec = os.environ.pop("WATCHDOG_USEC", "")
        pid = os.environ.pop("WATCHDOG_PID", "")
        try:
            value = int(usec)
            meant_for_us = not pid or int(pid) == os.getpid()
        except ValueError:
            return
        if value > 0 and meant_for_us:
            _watchdog_usec = value


def _reset_for_tests() -> None:
    """Forget what was taken from the environment (tests that set it again)."""
    global _taken, _address, _watchdog_usec
    stop_heartbeat()
    with _lock:
        _taken, _address, _watchdog_usec = False, None, None


def notify(state: str) -> bool:
    """Send ``state`` (eg. ``"READY=1\\nSTATUS=..."``) to systemd's notify socket; True when sent."""
    _take_environment()
    address = _address
    if not address or not state:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock: and other forms are not used for services like this one
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False


def _lines(*lines: str | None) -> str:
    return "\n".join(line for line in lines if line)


def ready(status: str | None = None) -> bool:
    """``READY=1`` (with ``MAINPID`` and an optional ``STATUS``)."""
    return notify(_lines("READY=1", f"MAINPID={os.getpid()}", status and f"STATUS={status}"))


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd 253's ``Type=notify-reload`` needs it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(_lines("RELOADING=1", f"MONOTONIC_USEC={usec}", status and f"STATUS={status}"))


def stopping(status: str | None = None) -> bool:
    return notify(_lines("STOPPING=1", status and f"STATUS={status}"))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_period() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the unit's ``WatchdogSec``), or None when not watched."""
    _take_environment()
    return None if _watchdog_usec is None else _watchdog_usec / 2e6


def queue_status(spool_dirs: Iterable[Path | str]) -> str:
    """``STATUS=`` text: the messages in the spool(s) by state, eg. ``queue: 3 messages (2 ready, 1 failed)``."""
    from ..spool.names import State
    from ..spool.store import SpoolStore

    counts: dict[str, int] = {}
    try:
        for spool in spool_dirs:
            for entry in SpoolStore(spool, fsync=False).scan():
                if entry.state is not State.NEW:  # not mail yet
                    label = "failed" if entry.state is State.BAD else entry.state.label
                    counts[label] = counts.get(label, 0) + 1
    except OSError as exc:
        return f"queue: unreadable ({exc.strerror or exc})"
    total = sum(counts.values())
    detail = ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))
    return f"queue: {total} message{'s' if total != 1 else ''}" + (f" ({detail})" if detail else "")


class Heartbeat:
    """A daemon thread: ``WATCHDOG=1`` every :func:`watchdog_period` (while ``alive()`` holds) and
    ``STATUS=<status()>`` every ``status_period`` seconds."""

    def __init__(
        self,
        status: Callable[[], str] | None,
        *,
        alive: Callable[[], bool] | None = None,
        status_period: float = STATUS_PERIOD,
    ) -> None:
        self._status = status
        self._alive = alive
        self._status_period = status_period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd-notify", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to end; not waited for (it may be waiting for the very loop that calls this)."""
        self._stop.set()

    def _run(self) -> None:
        period = watchdog_period()
        next_status = time.monotonic() + self._status_period
        while True:
            now = time.monotonic()
            if period is not None and _holds(self._alive or (lambda: True)):
                watchdog()
            if self._status is not None and now >= next_status:
                next_status = now + self._status_period
                status(self._status())
            wait = next_status - time.monotonic() if self._status is not None else None
            if period is not None:
                wait = period if wait is None else min(wait, period)
            if self._stop.wait(max(0.01, wait) if wait is not None else None):
                return


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return bool(check()) and _loop_turns()
    except Exception:
        return False


def watch_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """From now on ``WATCHDOG=1`` also needs ``loop`` to run a callback within 5 seconds (a wedged
    event loop then gets the unit restarted).  None: stop watching."""
    global _loop
    _loop = loop


def _loop_turns(timeout: float = 5.0) -> bool:
    loop = _loop
    if loop is None:
        return True
    if loop.is_closed():
        return False
    ran = threading.Event()
    try:
        loop.call_soon_threadsafe(ran.set)
    except RuntimeError:  # closed meanwhile
        return False
    return ran.wait(timeout)


def stop_heartbeat() -> None:
    global _heartbeat
    beat, _heartbeat = _heartbeat, None
    if beat is not None:
        beat.stop()


# ---- the hooks the front end and the supervisor call -------------------------------------------


def relay_started(spool_dirs: Iterable[Path | str], *, alive: Callable[[], bool] | None = None) -> bool:
    """Every socket is bound and the pid file written: ``READY=1`` with the queue size, and the
    heartbeat starts (watchdog pings, ``STATUS=`` refreshes).  False outside systemd."""
    global _heartbeat, _spools
    _spools = list(spool_dirs)
    sent = ready(queue_status(_spools)) if _notifying() else False
    if sent and _heartbeat is None:
        _heartbeat = Heartbeat(lambda: queue_status(_spools), alive=alive).start()
    return sent


def relay_reloading() -> bool:
    """SIGHUP: a reload (roles restarted, secrets re-read) begins."""
    return reloading("reloading")


def relay_reloaded() -> bool:
    """The reload is done: ``READY=1`` again, with the queue size."""
    return ready(queue_status(_spools)) if _notifying() else False


def relay_stopping() -> bool:
    """The relay begins to stop (SIGTERM, admin ``terminate``): ``STOPPING=1``; the heartbeat ends."""
    stop_heartbeat()
    return stopping("stopping")


def _notifying() -> bool:
    _take_environment()
    return bool(_address)
