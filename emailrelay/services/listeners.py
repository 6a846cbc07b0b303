"""Listening sockets: parse ``--interface``/``--port`` and bind, upstream style.

What it is for: the one place that turns the interface options into bound,
listening sockets — before the process detaches, so a port that cannot be
bound is reported (exit 2) by the process the user started.  The sockets are
plain ``socket.socket`` objects so they can be handed to asyncio, inherited
by circus roles, or passed as ``fd#N``.

Guarantees: addresses are logged exactly as upstream does
(``0.0.0.0:25``, ``::.25``); IPv6 sockets are v6-only so ``0.0.0.0`` and
``::`` can both be bound on one port; ``SO_REUSEADDR`` is set, never
``SO_REUSEPORT`` (two relays must not silently share a port).  A unix-domain
socket file gets upstream's access whatever the umask: mode 0770 with the
group of the user the relay runs as (``--user``), 0777 when it runs as
root; :func:`remove_unix_sockets` removes it when the relay stops, as
upstream does (only while it is still the socket we bound).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from .. import identity
from ..errors import BindError, ConfigError, UsageError
from ..transport_address import split_transport_address

SERVICES = ("smtp", "pop", "admin")


@dataclass(frozen=True)
class ListenSpec:
    service: str  # smtp | pop | admin
    host: str | None  # IP literal; None for fd# or unix paths
    port: int
    path: str | None = None  # unix-domain socket path
    fd: int | None = None  # inherited descriptor


def format_address(host: str, port: int) -> str:
    """Upstream's transport-address text: ``1.2.3.4:25`` and ``::1.25``."""
    return f"{host}.{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``v6.port`` (upstream) or a bare host with a default port."""
    try:
        return split_transport_address(text, default_port)
    except ValueError as exc:
        raise UsageError(f"invalid transport address: {exc}") from None


def plan(interfaces: list[str], ports: dict[str, int]) -> list[ListenSpec]:
    """Listening specs for every enabled service (``ports`` holds only enabled services)."""
    per_service: dict[str, list[str]] = {s: [] for s in ports}
    shared: list[str] = []
    for item in interfaces:
        prefix, eq, rest = item.partition("=")
        if eq and prefix in SERVICES:
            if prefix in per_service:
                per_service[prefix].append(rest)
        else:
            shared.append(item)
    specs: list[ListenSpec] = []
    for service, port in ports.items():
        items = per_service[service] or shared or ["0.0.0.0", "::"]
        for item in items:
            specs.extend(_specs_for(service, item, port))
    return specs


def _specs_for(service: str, item: str, port: int) -> list[ListenSpec]:
    if item.startswith("fd#"):
        try:
            return [ListenSpec(service, None, port, fd=int(item[3:]))]
        except ValueError:
            raise UsageError(f"invalid file descriptor in --interface: {item}") from None
    if item.startswith("/"):
        return [ListenSpec(service, None, port, path=item)]
    try:
        ipaddress.ip_address(item.split("%")[0])
        return [ListenSpec(service, item, port)]
    except ValueError:
        pass
    return [ListenSpec(service, host, port) for host in _interface_addresses(item)]


def _interface_addresses(name: str) -> list[str]:
    """Addresses of a network interface name (``eth0``, ``eth0-ipv4``, ``eth0-ipv6``)."""
    family_filter = None
    base = name
    for suffix, fam in (("-ipv4", socket.AF_INET), ("-ipv6", socket.AF_INET6)):
        if name.endswith(suffix):
            base, family_filter = name[: -len(suffix)], fam
    found: list[str] = []
    try:
        import fcntl
        import struct

        if family_filter in (None, socket.AF_INET):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
                raw = base.encode("utf-8", "surrogateescape")[:15]  # (bytes as given, never a crash)
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", raw))
                found.append(socket.inet_ntoa(packed[20:24]))
        if family_filter in (None, socket.AF_INET6):
            with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 6 and fields[5] == base:
                        addr = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
                        found.append(f"{addr}%{base}" if addr.startswith("fe80") else addr)
    except OSError:
        pass
    if not found:
        raise UsageError(f"invalid interface name or address: {name}")
    return found


@dataclass(frozen=True)
class UnixNode:
    """The file of a unix-domain listening socket we made: its directory (an open descriptor, so a
    directory renamed or replaced since does not matter), name and identity."""

    dir_fd: int
    name: str
    dev: int
    ino: int


@dataclass
class Bound:
    spec: ListenSpec
    sock: socket.socket
    node: UnixNode | None = None

    @property
    def display(self) -> str:
        if self.spec.path:
            return self.spec.path
        if self.spec.fd is not None:
            with contextlib.suppress(OSError):
                host, port = self.sock.getsockname()[:2]
                return format_address(host, port)
            return f"fd#{self.spec.fd}"
        host, port = self.sock.getsockname()[:2]
        return format_address(host, port)


def bind(spec: ListenSpec, backlog: int = 1024, group: int | None = None) -> Bound:
    """Bind and listen; BindError (exit 2) when the address is taken or not ours.  ``group``: the
    group of ``--user`` when the relay will switch to it (a unix-domain socket file's group)."""
    node = None
    try:
        if spec.fd is not None:
            sock = _inherited(spec.fd)
        elif spec.path is not None:
            sock, node = _bind_unix(spec.path, backlog, group)
        else:
            assert spec.host is not None
            family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                info = socket.getaddrinfo(spec.host, spec.port, family, socket.SOCK_STREAM)
                sock.bind(info[0][4])
            else:
                sock.bind((spec.host, spec.port))
            sock.listen(backlog)
    except OSError as exc:  # E-MailRelay 2.6b's words: neither the service nor the address is named
        raise BindError(f"socket bind error: {(exc.strerror or str(exc)).lower()}") from exc
    sock.setblocking(False)
    os.set_inheritable(sock.fileno(), False)
    return Bound(spec, sock, node)


def _bind_unix(path: str, backlog: int, group: int | None) -> tuple[socket.socket, UnixNode]:
    """A stale socket file is replaced; the new one gets upstream's mode (the umask set for the
    bind, so it is never wider meanwhile) and, switching, ``--user``'s group."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = -1
    try:
        as_root = group is None and os.geteuid() == 0  # the relay will run as root: 0777, as upstream
        old_umask = os.umask(0o000 if as_root else 0o007)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        name = os.path.basename(path)
        if group is not None:
            os.chown(name, -1, group, dir_fd=dir_fd, follow_symlinks=False)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        if dir_fd >= 0:
            os.close(dir_fd)
        raise
    return sock, UnixNode(dir_fd, name, st.st_dev, st.st_ino)


def remove_unix_sockets(bound: Iterable[Bound]) -> None:
    """The relay stops: the unix-domain socket files it made are removed (as root: the directory may
    be root's), each only while it is still the socket bound (a file put there since is left)."""
    with identity.as_root():
        for b in bound:
            node = b.node
            if node is None:
                continue
            with contextlib.suppress(OSError):
                st = os.stat(node.name, dir_fd=node.dir_fd, follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (node.dev, node.ino):
                    os.unlink(node.name, dir_fd=node.dir_fd)


def _inherited(fd: int) -> socket.socket:
    """The listening socket passed as ``fd#N``: a descriptor that is closed or not a socket is
    E-MailRelay 2.6b's start-up error (exit 1), ``socket error: no bound address on fd N``."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        raise ConfigError(f"socket error: no bound address on fd {fd}") from None
    try:
        sock.getsockname()
    except OSError:
        sock.detach()
        raise ConfigError(f"socket error: no bound address on fd {fd}") from None
    return sock


def bind_all(specs: list[ListenSpec], group: int | None = None) -> list[Bound]:
    """Every spec bound (``group``: see :func:`bind`); none when one cannot be."""
    bound: list[Bound] = []
    try:
        for spec in specs:
            if spec.host == "::" and not socket.has_ipv6:
                continue
            try:
                bound.append(bind(spec, group=group))
            except BindError as exc:
                # the "any" IPv6 address is optional when the host has no IPv6 at all
                cause = exc.__cause__
                if spec.host == "::" and isinstance(cause, OSError) and cause.errno in (97, 99):
                    continue
                raise
    except BaseException:
        for b in bound:
            b.sock.close()
        remove_unix_sockets(bound)
        raise
    return bound


_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (  # in the order upstream's log names them
        "127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 3927, 1918
        "::1/128", "fe80::/10", "fc00::/7",  # loopback, link-local, RFC 4193 unique local
    )
)  # fmt: skip


def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_local_address(host: str) -> bool:
    """Loopback, private (RFC 1918, RFC 4193), link-local, or a unix-domain peer ("" or a path).

    An explicit list on purpose: Python's ``is_private`` also counts documentation and
    benchmarking ranges (192.0.2/24, 198.18/15, 2001:db8::/32 ...), which are not local clients."""
    if not host or host.startswith("/"):
        return True
    ip = _ip_of(host)
    return ip is not None and any(ip in net for net in _LOCAL_NETWORKS if net.version == ip.version)


def not_local_reason(host: str) -> str:
    """Why :func:`is_local_address` said no, in upstream's words:
    ``192.0.2.2 is not in 127.0.0.0/8, 169.254.0.0/16, 10.0.0.0/8, 172.16.0.0/12, or 192.168.0.0/16``
    (IPv6: ``... is not in ::1/128 or fe80::/10 or fc00::/7``)."""
    ip = _ip_of(host)
    if ip is None:
        return f"{host} is not an address"
    nets = [str(net) for net in _LOCAL_NETWORKS if net.version == ip.version]
    listed = ", ".join(nets[:-1]) + ", or " + nets[-1] if ip.version == 4 else " or ".join(nets)
    return f"{ip} is not in {listed}"
