"""An asyncio SOCKS client for ``--forward-to host:port@socks-host:socks-port``.

What it is for (reference guide, "SOCKS"): outgoing SMTP connections through
a SOCKS proxy such as a local Tor node; the proxy resolves the target's name
and connects to it.

Syntax: the proxy address follows the next hop's address after an ``@``:

- ``example.com:smtp@localhost:9050`` — SOCKS 4a, upstream's protocol and
  the default (an IPv4 literal target is sent as plain SOCKS 4);
- ``example.com:25@socks5://localhost:1080`` — SOCKS 5, "no authentication"
  method only; needed for IPv6 literal targets (SOCKS 4a cannot carry them);
  ``socks4a://`` may be written explicitly for the default.

A next hop that is a unix-domain path (``/run/smtp.s``) never has a proxy.

What it guarantees: :func:`open_via_socks` returns a connected, non-blocking
socket whose next byte is the target's first (ready for
``loop.create_connection(sock=...)``); every failure is a :class:`SocksError`
(an ``OSError``, so existing ``except OSError`` paths report it) whose text
says which of the proxy or the target failed and why; a timeout is a
:class:`SocksTimeout` (also a ``TimeoutError``) covering the connection to
the proxy and the whole handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from ..transport_address import split_transport_address

SOCKS4A = "4a"
SOCKS5 = "5"
_SCHEMES = {"socks4a": SOCKS4A, "socks4": SOCKS4A, "socks5": SOCKS5}

SOCKS4_REPLIES = {
    0x5A: "request granted",
    0x5B: "request rejected or failed",
    0x5C: "request rejected: the proxy cannot reach the client's identd",
    0x5D: "request rejected: identd user mismatch",
}
SOCKS5_REPLIES = {
    0x00: "succeeded",
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


class SocksError(OSError):
    """The proxy could not be reached or would not make the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class SocksTimeout(SocksError, TimeoutError):
    """No connection or no complete handshake within the timeout."""


@dataclass(frozen=True)
class SocksProxy:
    host: str
    port: int
    version: str = SOCKS4A  # SOCKS4A | SOCKS5

    @property
    def display(self) -> str:
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return address if self.version == SOCKS4A else f"socks5://{address}"


# ---- addresses ------------------------------------------------------------------------------


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """A transport address with a usable (non-zero) port."""
    host, port = split_transport_address(text, default_port)
    if port == 0:
        raise ValueError(f"invalid port in address [{text}]")
    return host, port


def parse_proxy(text: str) -> SocksProxy:
    """``host:port``, ``socks4a://host:port`` or ``socks5://host:port`` (port default 1080)."""
    version = SOCKS4A
    scheme, sep, rest = text.partition("://")
    if sep:
        try:
            version = _SCHEMES[scheme.lower()]
        except KeyError:
            raise ValueError(
                f"invalid SOCKS proxy [{text}]: unknown scheme {scheme}:// (use socks4a:// or socks5://)"
            ) from None
        text = rest
    host, port = split_host_port(text, 1080)
    return SocksProxy(host, port, version)


def parse_forward_to(text: str) -> tuple[str, SocksProxy | None]:
    """Split ``target@proxy``: the next hop's address (as written) and the proxy, if any.

    ValueError when the proxy part or the target's port is not valid."""
    text = text.strip()
    if text.startswith("/") or "@" not in text:
        return text, None
    target, _, proxy_text = text.rpartition("@")
    if not target:
        raise ValueError(f"invalid --forward-to [{text}]: no address before the @")
    if target.startswith("/"):
        raise ValueError(f"invalid --forward-to [{text}]: a unix-domain address cannot use a SOCKS proxy")
    if not proxy_text:
        raise ValueError(f"invalid --forward-to [{text}]: no SOCKS proxy address after the @")
    split_host_port(target, 25)  # a bad port is an error now, not at the first connection
    return target, parse_proxy(proxy_text)


# ---- wire format ----------------------------------------------------------------------------


def _name(host: str) -> bytes:
    try:
        name = host.encode("idna")
    except UnicodeError:
        raise SocksError(f"invalid host name for SOCKS (label too long?): {host[:80]}") from None
    if not name or len(name) > 255:
        raise SocksError(f"host name too long for SOCKS: {host[:80]}")
    return name


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def socks4a_request(host: str, port: int, user: bytes = b"") -> bytes:
    """CONNECT: plain SOCKS 4 for an IPv4 literal, 4a (0.0.0.1 + name) otherwise."""
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv6Address):
        raise SocksError(f"SOCKS 4a cannot connect to an IPv6 address [{host}]: use socks5://")
    head = struct.pack(">BBH", 4, 1, port)
    if ip is not None:
        return head + ip.packed + user + b"\0"
    return head + b"\0\0\0\1" + user + b"\0" + _name(host) + b"\0"


def socks4_reply(data: bytes) -> tuple[int, str]:
    """(code, text) of an 8-byte SOCKS 4 reply; SocksError if it is not one."""
    if len(data) != 8 or data[0] != 0:
        raise SocksError(f"invalid SOCKS 4 reply from the proxy: {data[:8]!r}")
    code = data[1]
    return code, SOCKS4_REPLIES.get(code, f"unknown reply code {code:#04x}")


def socks5_greeting() -> bytes:
    return b"\x05\x01\x00"  # version 5, one method: no authentication


def socks5_request(host: str, port: int) -> bytes:
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv4Address):
        address = b"\x01" + ip.packed
    elif isinstance(ip, ipaddress.IPv6Address):
        address = b"\x04" + ip.packed
    else:
        name = _name(host)
        address = b"\x03" + bytes([len(name)]) + name
    return b"\x05\x01\x00" + address + struct.pack(">H", port)


def socks5_reply_length(head: bytes) -> int:
    """Total length of a SOCKS 5 reply given its first 5 bytes."""
    if len(head) < 5 or head[0] != 5:
        raise SocksError(f"invalid SOCKS 5 reply from the proxy: {head!r}")
    atyp = head[3]
    if atyp == 1:
        return 4 + 4 + 2
    if atyp == 4:
        return 4 + 16 + 2
    if atyp == 3:
        return 4 + 1 + head[4] + 2
    raise SocksError(f"invalid SOCKS 5 reply from the proxy: address type {atyp}")


def socks5_reply(data: bytes) -> tuple[int, str, tuple[str, int]]:
    """(code, text, bound address) of a complete SOCKS 5 reply."""
    if len(data) != socks5_reply_length(data[:5]):
        raise SocksError(f"invalid SOCKS 5 reply from the proxy: {data!r}")
    code, atyp = data[1], data[3]
    if atyp == 1:
        bound = str(ipaddress.IPv4Address(data[4:8]))
    elif atyp == 4:
        bound = str(ipaddress.IPv6Address(data[4:20]))
    else:
        bound = data[5 : 5 + data[4]].decode("ascii", "replace")
    (port,) = struct.unpack(">H", data[-2:])
    return code, SOCKS5_REPLIES.get(code, f"unknown reply code {code:#04x}"), (bound, port)


def _os_reason(exc: OSError) -> str:
    """ "Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 1080)"."""
    if exc.errno:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


# ---- the client -------------------------------------------------------------------------------


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise SocksError(f"the SOCKS proxy closed the connection during the {what}")
        data += chunk
    return data


async def _connect_proxy(
    loop: asyncio.AbstractEventLoop, host: str, port: int, local_address: str | None
) -> socket.socket:
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise SocksError(f"cannot resolve SOCKS proxy address {host}: {exc.strerror or exc}") from None
    if local_address:
        family = socket.AF_INET6 if ":" in local_address else socket.AF_INET
        infos = [i for i in infos if i[0] == family] or infos
    last: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            if local_address and family in (socket.AF_INET, socket.AF_INET6):
                sock.bind((local_address, 0))
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = _os_reason(last) if last is not None else "no address"
    raise SocksError(f"cannot connect to SOCKS proxy {where}: {reason}")


async def _handshake(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, proxy: str, host: str, port: int, version: str
) -> None:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if version == SOCKS4A:
        await loop.sock_sendall(sock, socks4a_request(host, port))
        code, text = socks4_reply(await _recv_exactly(loop, sock, 8, "SOCKS 4a handshake"))
        if code != 0x5A:
            raise SocksError(f"SOCKS proxy {proxy} refused the connection to {target}: {text}")
        return
    await loop.sock_sendall(sock, socks5_greeting())
    choice = await _recv_exactly(loop, sock, 2, "SOCKS 5 handshake")
    if choice[0] != 5:
        raise SocksError(f"SOCKS proxy {proxy} does not speak SOCKS 5: {choice!r}")
    if choice[1] != 0:
        raise SocksError(
            f"SOCKS proxy {proxy} refused the connection to {target}: "
            "it requires authentication, which is not supported"
        )
    await loop.sock_sendall(sock, socks5_request(host, port))
    head = await _recv_exactly(loop, sock, 5, "SOCKS 5 handshake")
    rest = await _recv_exactly(loop, sock, socks5_reply_length(head) - 5, "SOCKS 5 handshake")
    code, text, _ = socks5_reply(head + rest)
    if code != 0:
        raise SocksError(f"SOCKS proxy {proxy} refused the connection to {target}: {text}")


async def open_via_socks(
    proxy_host: str,
    proxy_port: int,
    target_host: str,
    target_port: int,
    *,
    version: str = SOCKS4A,
    timeout: float = 40.0,
    local_address: str | None = None,
) -> socket.socket:
    """A non-blocking socket connected through the proxy to the target (see the module doc)."""
    if version not in (SOCKS4A, SOCKS5):
        raise ValueError(f"unknown SOCKS version {version!r}")
    proxy_host = proxy_host.strip("[]")
    target_host = target_host.strip("[]")
    proxy = f"[{proxy_host}]:{proxy_port}" if ":" in proxy_host else f"{proxy_host}:{proxy_port}"
    loop = asyncio.get_running_loop()
    sock: socket.socket | None = None

    async def run() -> socket.socket:
        nonlocal sock
        sock = await _connect_proxy(loop, proxy_host, proxy_port, local_address)
        await _handshake(loop, sock, proxy, target_host, target_port, version)
        return sock

    try:
        return await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        if sock is not None:
            sock.close()
        stage = "handshake with" if sock is not None else "connection to"
        raise SocksTimeout(f"timeout: no SOCKS {stage} proxy {proxy} after {timeout:g}s") from None
    except SocksError:
        if sock is not None:
            sock.close()
        raise
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise SocksError(f"SOCKS proxy {proxy}: {_os_reason(exc)}") from None
    except BaseException:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        raise


async def open_forward_to(
    text: str, *, timeout: float, local_address: str | None = None
) -> tuple[str, socket.socket | None]:
    """For a ``--forward-to`` value: (target, connected socket through the proxy) or (target, None)."""
    target, proxy = parse_forward_to(text)
    if proxy is None:
        return target, None
    host, port = split_host_port(target, 25)
    sock = await open_via_socks(
        proxy.host,
        proxy.port,
        host,
        port,
        version=proxy.version,
        timeout=timeout,
        local_address=local_address,
    )
    return target, sock
