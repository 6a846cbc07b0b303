"""Running a role's coroutine on the right event loop.

What it is for: uvloop when it is installed (the fast path), the standard
asyncio loop otherwise — and also when the process serves implicit TLS
(``--server-tls-connection``): uvloop's ``start_tls`` on a server-side
socket stalls handshakes under some clients (seen with ``openssl s_client``),
and the standard loop's does not, so those sessions can still log their
own ``tls error`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from . import sd_notify


def run(main: Coroutine[Any, Any, int], *, implicit_tls: bool = False) -> int:
    if not implicit_tls:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def stop_event(on_hup: Callable[[], None] | None = None) -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets; SIGHUP calls ``on_hup`` (or is ignored).  systemd hears of
    both (``STOPPING=1``; ``RELOADING=1`` then ``READY=1`` around ``on_hup``) when it started us."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopping() -> None:
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
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals outside the main thread
        loop.add_signal_handler(signal.SIGHUP, reload)
    return stop


async def until_stopped() -> None:
    """Wait for SIGTERM or SIGINT (a role's life); SIGHUP is ignored (the supervisor restarts roles)."""
    await stop_event().wait()
