"""E-MailRelay 2.6b's start-up warning for a ``--forward-to`` host that does not resolve.

What it is for: the supervisor (``cli/main.py``) calls :func:`warn_if_forward_to_unresolvable`
before the listening lines, as upstream warns ``dns lookup of forward-to address failed: no such
host: "<name>" (<why>)`` first, with ``--poll``, ``--forward-on-disconnect``, ``--immediate`` or
none of them (not with ``--forward`` or ``--as-client``: their first connection says it).  A module
of its own so that the supervisor does not import the forwarder.

Guarantees: the look-up (of the SOCKS proxy's host when there is one: the address connected to)
waits at most :data:`FORWARD_TO_LOOKUP_TIMEOUT` seconds and never stops the start: only a name
the resolver says does not exist is warned about.  :func:`first_host` (the host a next hop's
connection goes to first) is shared with the forwarder's ``resolving:`` event, which this module
must not import.
"""

from __future__ import annotations

import asyncio
import socket
from typing import NamedTuple

from .. import log as logmod
from ..config import Config
from ..errors import UsageError
from ..transport_address import split_next_hop
from .socks import parse_forward_to

FORWARD_TO_LOOKUP_TIMEOUT = 2.0  # the start-up look-up of --forward-to's host waits no longer


class FirstHost(NamedTuple):
    """Where a connection to a next hop goes first: ``host`` (a name or an address) and ``port``."""

    host: str
    port: int
    proxy: bool  # True: the SOCKS proxy's (the target is named to the proxy, not looked up here)


def first_host(hop: str) -> FirstHost | None:
    """The host and port a connection to ``hop`` (a ``--forward-to`` or ForwardToAddress value,
    ``target[@proxy]``) goes to: the SOCKS proxy's when it has one, the target's (a next hop as
    :func:`~emailrelay.transport_address.split_next_hop` reads it) otherwise. None for a
    unix-domain address (``hop`` starts with ``/``, as the connection tells one) and for a value
    that does not parse."""
    if hop.startswith("/"):
        return None
    try:
        target, proxy = parse_forward_to(hop)
        if proxy is not None:
            return FirstHost(proxy.host, proxy.port, proxy=True)
        host, port = split_next_hop(target)
    except (ValueError, UsageError):
        return None
    return FirstHost(host, port, proxy=False)


async def forward_to_lookup_problem(
    forward_to: str, timeout: float = FORWARD_TO_LOOKUP_TIMEOUT
) -> str | None:
    """E-MailRelay 2.6b's start-up warning when ``--forward-to`` (its SOCKS proxy, if it has one: the
    address connected to, :func:`first_host`) names a host that does not resolve, or None: resolved,
    a unix-domain address, a lookup that took longer than ``timeout`` seconds, or one that failed
    otherwise."""
    # stripped: " /x" is a unix-domain address here, as the start-up check reads it
    first = first_host(forward_to.strip())
    if first is None:
        return None
    host, port = first.host, first.port
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
