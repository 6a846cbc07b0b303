"""Running a role's coroutine on the right event loop.

What it is for: uvloop when it is installed (the fast path), the standard
asyncio loop otherwise — and also when the process serves implicit TLS
(``--server-tls-connection``): uvloop's ``start_tls`` on a server-side
socket stalls handshakes under some clients (seen with ``openssl s_client``),
and the standard loop's does not, so those sessions can still log their
own ``tls error`` lines.  With ``EMAILRELAY_CPROFILE=DIR`` the loop's thread
is profiled by CPU time (for bench/roles.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from . import daemon, sd_notify

#: A directory: each event loop run under it is profiled (cProfile on thread CPU time) into
#: ``<process name>-<pid>.prof`` there when it ends (bench/roles.py --cprofile).
PROFILE_ENV = "EMAILRELAY_CPROFILE"


def run(main: Coroutine[Any, Any, int], *, implicit_tls: bool = False) -> int:
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:  # bench/: the CPU time of this loop's thread, by function
        import cProfile

        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        try:
            return _run(main, implicit_tls)
        finally:
            profiler.disable()
            with contextlib.suppress(OSError):
                profiler.dump_stats(os.path.join(profile_dir, f"{_process_name()}-{os.getpid()}.prof"))
    return _run(main, implicit_tls)


def _process_name() -> str:
    try:
        with open(f"/proc/{os.getpid()}/comm") as f:
            return f.read().strip()
    except OSError:
        return "emailrelay"


def _run(main: Coroutine[Any, Any, int], implicit_tls: bool) -> int:
    if not implicit_tls:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def stop_event(on_hup: Callable[[], None] | None = None) -> asyncio.Event:
    """An event that SIGTERM, SIGINT, SIGQUIT or the admin terminate signal sets; SIGHUP calls
    ``on_hup`` (or is ignored).  systemd hears of both (``STOPPING=1``; ``RELOADING=1`` then
    ``READY=1`` around ``on_hup``) when it started us."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping(signum: int) -> None:  # the status to leave with (upstream's: daemon.exit_status)
        daemon.note_stop(0 if signum == daemon.TERMINATE_SIGNAL else signum)
        sd_notify.relay_stopping()
        stop.set()

    def reload() -> None:
        if on_hup is None:
            return
        sd_notify.relay_reloading()
        try:
            on_hup()
        finally:
            sd_notify.relay_reloaded()

    sd_notify.watch_loop(loop)  # the watchdog's ping needs this loop to turn
    for sig in (*daemon.STOP_SIGNALS, daemon.TERMINATE_SIGNAL):
        loop.add_signal_handler(sig, stopping, sig)
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals outside the main thread
        loop.add_signal_handler(signal.SIGHUP, reload)
    return stop


async def until_stopped() -> None:
    """Wait for a stop signal (a role's life); SIGHUP is ignored (the supervisor restarts roles)."""
    await stop_event().wait()
