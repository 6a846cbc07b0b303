"""Transport addresses as E-MailRelay writes them: one parser for every option that takes one.

``host:port``, ``[v6]:port``, upstream's ``v6.port`` (``::1.25``), or a bare
host with a default port; ports may be service names.  Pure: raises
ValueError with the reason, and each caller turns that into its own error type.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket


def split_transport_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """(host, port) of a transport address; port 0 is allowed (callers that cannot use it check)."""
    text = text.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid address [{text}]")
        port_text = rest[1:]
    elif text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text.split("%")[0])
            host, port_text = text, ""
        except ValueError:
            host, _, port_text = text.rpartition(".")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"invalid address [{text}]: no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"invalid address [{text}]: no port")
        return host, default_port
    if port_text.isdigit():
        port = int(port_text)
    else:
        try:
            port = socket.getservbyname(port_text, "tcp")
        except OSError:
            raise ValueError(f"invalid port in address [{text}]") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid port in address [{text}]")
    return host, port


def split_next_hop(text: str, default_port: int | None = 25) -> tuple[str, int]:
    """(host, port) of a next hop (``--forward-to``, ``--as-client``, ``ForwardToAddress``), as
    E-MailRelay 2.6b reads one (observed): :func:`split_transport_address`'s forms, but an address
    with more than one colon and not ``[v6]:port`` or ``v6.port`` has its port after the last
    colon (``::1:25`` is ``::1`` port 25; ``::1`` alone is host ``:`` port 1).  Without a port,
    ``default_port`` (None: ValueError, as the start-up check wants)."""
    text = text.strip()
    if text.count(":") > 1 and not text.startswith("["):
        host, _, port_text = text.rpartition(".")
        if port_text.isdigit():
            with contextlib.suppress(ValueError):
                ipaddress.IPv6Address(host.split("%")[0])
                return split_transport_address(text, default_port)
        host, _, port_text = text.rpartition(":")
        if host and port_text:
            return split_transport_address(f"[{host}]:{port_text}")
    return split_transport_address(text, default_port)
