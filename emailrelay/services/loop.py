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
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, int], *, implicit_tls: bool = False) -> int:
    if not implicit_tls:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
