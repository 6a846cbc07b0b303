"""A tiny SOCKS 4/4a/5 proxy and a TCP echo server for tests (threads, real sockets).

What it is for: testing :mod:`emailrelay.services.socks` against a proxy that
really connects on: ``SocksServer`` accepts SOCKS 4, 4a and 5 (no-auth)
CONNECT requests, connects to the target and relays bytes both ways.

Modes: ``"normal"``; ``"reject"`` (answers every request with a failure:
SOCKS 4 code 91, SOCKS 5 "connection not allowed by ruleset"); ``"auth"``
(SOCKS 5 only offers username/password: the client must give up);
``"silent"`` (accepts the TCP connection, never answers).  ``requests``
records (version, host, port) of every CONNECT it parsed.  Binds 127.0.0.1
(or ``host``) on a free port; ``stop()`` closes everything it opened.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _recv_until_nul(conn: socket.socket, limit: int = 512) -> bytes:
    data = b""
    while not data.endswith(b"\0"):
        data += _recv_exactly(conn, 1)
        if len(data) > limit:
            raise ConnectionError("too long")
    return data[:-1]


class _Threaded:
    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._open.add(s)

    def start(self):  # type: ignore[no-untyped-def]
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._track(conn)
            threading.Thread(target=self._serve_safely, args=(conn,), daemon=True).start()

    def _serve_safely(self, conn: socket.socket) -> None:
        try:
            self.serve(conn)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class EchoServer(_Threaded):
    """Sends a banner line, then echoes every byte back."""

    def __init__(self, host: str = "127.0.0.1", banner: bytes = b"hello from echo\r\n") -> None:
        super().__init__(host)
        self.banner = banner

    def serve(self, conn: socket.socket) -> None:
        conn.sendall(self.banner)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


class SocksServer(_Threaded):
    def __init__(self, host: str = "127.0.0.1", mode: str = "normal") -> None:
        super().__init__(host)
        self.mode = mode
        self.requests: list[tuple[str, str, int]] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        if self.mode == "silent":
            self._stop.wait(60)
            return
        version = _recv_exactly(conn, 1)[0]
        if version == 4:
            self._serve4(conn)
        elif version == 5:
            self._serve5(conn)

    def _serve4(self, conn: socket.socket) -> None:
        cmd, port = struct.unpack(">BH", _recv_exactly(conn, 3))
        ip = _recv_exactly(conn, 4)
        _recv_until_nul(conn)  # user id
        if ip[:3] == b"\0\0\0" and ip[3] != 0:
            host = _recv_until_nul(conn).decode("idna")
            version = "4a"
        else:
            host = str(ipaddress.IPv4Address(ip))
            version = "4"
        self.requests.append((version, host, port))
        target = None
        if cmd == 1 and self.mode == "normal":
            with contextlib.suppress(OSError):
                target = socket.create_connection((host, port), timeout=5)
        if target is None:
            conn.sendall(b"\x00\x5b" + b"\0" * 6)
            return
        conn.sendall(b"\x00\x5a" + b"\0" * 6)
        self._relay(conn, target)

    def _serve5(self, conn: socket.socket) -> None:
        (count,) = _recv_exactly(conn, 1)
        methods = _recv_exactly(conn, count)
        if self.mode == "auth" or 0 not in methods:
            conn.sendall(b"\x05\xff")
            return
        conn.sendall(b"\x05\x00")
        _, cmd, _, atyp = _recv_exactly(conn, 4)
        if atyp == 1:
            host = str(ipaddress.IPv4Address(_recv_exactly(conn, 4)))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(_recv_exactly(conn, 16)))
        else:
            host = _recv_exactly(conn, _recv_exactly(conn, 1)[0]).decode("idna")
        (port,) = struct.unpack(">H", _recv_exactly(conn, 2))
        self.requests.append(("5", host, port))
        if cmd != 1:
            conn.sendall(b"\x05\x07\x00\x01" + b"\0" * 6)
            return
        if self.mode == "reject":
            conn.sendall(b"\x05\x02\x00\x01" + b"\0" * 6)
            return
        try:
            target = socket.create_connection((host, port), timeout=5)
        except ConnectionRefusedError:
            conn.sendall(b"\x05\x05\x00\x01" + b"\0" * 6)
            return
        except OSError:
            conn.sendall(b"\x05\x04\x00\x01" + b"\0" * 6)
            return
        bound_host, bound_port = target.getsockname()[:2]
        bound = ipaddress.ip_address(bound_host)
        atyp_out = b"\x01" if bound.version == 4 else b"\x04"
        conn.sendall(b"\x05\x00\x00" + atyp_out + bound.packed + struct.pack(">H", bound_port))
        self._relay(conn, target)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        self._track(b)
        b.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        other = threading.Thread(target=pump, args=(b, a), daemon=True)
        other.start()
        pump(a, b)
        other.join(30)
        with contextlib.suppress(OSError):
            b.close()


@contextlib.contextmanager
def socks_server(host: str = "127.0.0.1", mode: str = "normal") -> Iterator[SocksServer]:
    server = SocksServer(host, mode).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def echo_server(host: str = "127.0.0.1") -> Iterator[EchoServer]:
    server = EchoServer(host).start()
    try:
        yield server
    finally:
        server.stop()
