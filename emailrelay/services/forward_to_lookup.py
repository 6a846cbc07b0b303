"""E-MailRelay 2.6b's start-up warning for a ``--forward-to`` host that does not resolve.

What it is for: the supervisor (``cli/main.py``) calls :func:`warn_if_forward_to_unresolvable`
before the listening lines, as upstream warns ``dns lookup of forward-to address failed: no such
host: "<name>" (<why>)`` first, with ``--poll``, ``--forward-on-disconnect``, ``--immediate`` or
none of them (not with ``--forward`` or ``--as-client``: their first connection says it).  A module
of its own so that the supervisor does not import the forwarder.

Guarantees: the look-up (of the SOCKS proxy's host when there is one: the address connected to)
waits at most :data:`FORWARD_TO_LOOKUP_TIMEOUT` seconds and never stops the start: only a name
the resolver says does not exist is warned about.
"""

from __future__ import annotations

import asyncio
import socket

from .. import log as logmod
from ..config import Config
from ..errors import UsageError
from ..transport_address import split_next_hop
from .socks import parse_forward_to

FORWARD_TO_LOOKUP_TIMEOUT = 2.0  # the start-up look-up of --forward-to's host waits no longer


async def forward_to_lookup_problem(
    forward_to: str, timeout: float = FORWARD_TO_LOOKUP_TIMEOUT
) -> str | None:
    """E-MailRelay 2.6b's start-up warning when ``--forward-to`` (its SOCKS proxy, if it has one: the
    address connected to) names a host that does not resolve, or None: resolved, a unix-domain
    address, a lookup that took longer than ``timeout`` seconds, or one that failed otherwise."""
    try:
        target, proxy = parse_forward_to(forward_to)
        if target.startswith("/"):
            return None
        host, port = (proxy.host, proxy.port) if proxy is not None else split_next_hop(target)
    except (ValueError, UsageError):
        return None
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except socket.gaierror as exc:
        text = (exc.strerror or str(exc)).lower()
        return f'dns lookup of forward-to address failed: no such host: "{host}" ({text})'
    except (TimeoutError, OSError, UnicodeError):
        return None
    return None


def warn_if_forward_to_unresolvable(config: Config) -> None:
    """Say :func:`forward_to_lookup_problem`'s warning as E-MailRelay 2.6b does: at start, before the
    listening lines, when the relay serves and does not forward at once (``--forward``,
    ``--as-client``: their first connection says it). Never longer than the lookup's bound: a lookup
    still running then is left to finish in its thread."""
    if not config.forward_to or config.forward or config.as_client or config.dont_serve:
        return
    loop = asyncio.new_event_loop()
    try:
        problem = loop.run_until_complete(forward_to_lookup_problem(config.forward_to))
    except (RuntimeError, OSError):  # never in the way of the start
        problem = None
    finally:
        loop.close()  # (its executor is shut down without waiting)
    if problem is not None:
        logmod.get().warning(problem)
