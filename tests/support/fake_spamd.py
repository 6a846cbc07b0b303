"""A fake SpamAssassin spamd for tests: the SPAMC/1.5 ``CHECK`` and ``PROCESS`` commands.

What it is for: testing ``spam:`` and ``spam-edit:`` without SpamAssassin.
A message is spam when it holds the GTUBE string.  ``PROCESS`` returns the
message with ``X-Spam-Flag``/``X-Spam-Status`` headers added on top and its
line ends turned into bare LF, as a careless server might (the relay stores
that as it comes, as E-MailRelay 2.6b does).

Runs in a thread (socketserver) on 127.0.0.1 and a free port, or on a unix
socket; ``requests`` records (command, body) for assertions.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        srv = self.server
        if srv.delay:
            time.sleep(srv.delay)
        request = self.rfile.readline().decode("latin-1").strip()
        command = request.split(" ", 1)[0]
        headers: dict[str, str] = {}
        while True:
            line = self.rfile.readline().decode("latin-1").strip()
            if not line:
                break
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = self.rfile.read(length)
        srv.requests.append((command, body))
        if srv.broken:
            self.wfile.write(b"SPAMD/1.1 76 Bad header line\r\n\r\n")
            return
        spam = GTUBE in body
        score = "1000.0" if spam else "0.5"
        verdict = f"Spam: {'True' if spam else 'False'} ; {score} / 5.0\r\n".encode()
        if command == "CHECK":
            self.wfile.write(b"SPAMD/1.1 0 EX_OK\r\n" + verdict + b"\r\n")
        elif command == "PROCESS":
            flag = b"YES" if spam else b"NO"
            out = (
                b"X-Spam-Flag: " + flag + b"\r\nX-Spam-Status: score=" + score.encode() + b"\r\n" + body
            ).replace(b"\r\n", b"\n")
            self.wfile.write(
                b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\n" % len(out) + verdict + b"\r\n" + out
            )
        else:
            self.wfile.write(b"SPAMD/1.1 76 Bad header line: " + request.encode("latin-1") + b"\r\n\r\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    requests: list[tuple[str, bytes]]
    delay: float = 0.0
    broken: bool = False


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    requests: list[tuple[str, bytes]]
    delay: float = 0.0
    broken: bool = False


class FakeSpamd:
    def __init__(self, unix_path: str | None = None) -> None:
        if unix_path:
            self.server: socketserver.BaseServer = _UnixServer(unix_path, _Handler)
            self.address = unix_path
        else:
            self.server = _Server(("127.0.0.1", 0), _Handler)
            host, port = self.server.server_address[:2]  # type: ignore[misc]
            self.address = f"{host}:{port}"
        self.server.requests = []  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[str, bytes]]:
        return self.server.requests  # type: ignore[attr-defined,no-any-return]

    def set(self, *, delay: float | None = None, broken: bool | None = None) -> None:
        if delay is not None:
            self.server.delay = delay  # type: ignore[attr-defined]
        if broken is not None:
            self.server.broken = broken  # type: ignore[attr-defined]

    def start(self) -> FakeSpamd:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def fake_spamd(unix_path: str | None = None) -> Iterator[FakeSpamd]:
    server = FakeSpamd(unix_path).start()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    """A local port with nothing listening (for "spamd is down" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
