"""Transport addresses as E-MailRelay writes them: one parser for every option that takes one.

``host:port``, ``[v6]:port``, upstream's ``v6.port`` (``::1.25``), or a bare
host with a default port; ports may be service names.  Pure: raises
ValueError with the reason, and each caller turns that into its own error type.
"""

from __future__ import annotations

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
