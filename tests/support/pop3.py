"""Helpers for the POP service tests: a real PopService on a free port, run in a thread.

What it is for: ``tests/integration/test_pop3_*.py`` start a :class:`PopHarness` (or
:func:`pop_harness`) over a spool in ``tmp_path``, put messages in it, talk to it with poplib or
raw sockets (:func:`recv_until`), with TLS contexts made from a fresh self-signed certificate.

Guarantees: :func:`pop_harness` stops the service and its thread afterwards; nothing listens
beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from emailrelay import log as logmod
from emailrelay.auth import tls
from emailrelay.auth.secrets import Secrets
from emailrelay.config import Config
from emailrelay.protocol.sasl import BruteForceGuard
from emailrelay.services.pop3d import CHUNK_SIZE, PopService
from emailrelay.services.security import ServerSecurity
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.names import MessageId
from emailrelay.spool.store import POP_LOCK_NAME, SpoolStore

ENV = Envelope("sender@example.com", to_remote=("rcpt@example.net",))
SECRETS = "server plain me secret\nserver plain alice pw\nserver plain bob pw2\n"


def no_delay_guard() -> BruteForceGuard:
    return BruteForceGuard(first_delay=0.0, max_delay=0.0)


class PopHarness:
    """A PopService on 127.0.0.1:<free port> with its own event loop thread and spool."""

    def __init__(
        self,
        tmp_path: Path,
        secrets: str = SECRETS,
        *,
        by_name: bool = False,
        no_delete: bool = False,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        tls_required: bool = False,
        idle_timeout: float = 60.0,
        guard: BruteForceGuard | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.spool = tmp_path / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.store = SpoolStore(self.spool, fsync=False)
        self.log_path = tmp_path / "pop.log"
        self.log = logmod.Log(
            logmod.LogConfig(verbose=True, syslog=False, stderr=False, log_file=str(self.log_path))
        )
        self.security = ServerSecurity(
            secrets=Secrets.from_text(secrets, str(tmp_path / "pop.auth")),
            auth_config=None,
            tls_context=tls_context,
            tls_implicit=implicit_tls,
            tls_required=tls_required,
            guard=guard or no_delay_guard(),
        )
        config = Config(
            spool_dir=self.spool,
            pop_by_name=by_name,
            pop_no_delete=no_delete,
            idle_timeout=idle_timeout,
            domain="vm",
        ).frozen()
        self.service = PopService(config, self.store, self.security, log=self.log, chunk_size=chunk_size)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.service.start([sock]))
            except BaseException as exc:  # pragma: no cover - reported by the test
                self.error = exc
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="pop-service", daemon=True)
        self.thread.start()
        started.wait(10)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(self.service.stop(1.0), self.loop)
        fut.result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.service.executor.shutdown(wait=True)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_text()
            if log.count(text) >= count:
                return log
            time.sleep(0.02)
        raise AssertionError(f"{text!r} x{count} not in log:\n{self.log_text()[-3000:]}")

    def sessions(self) -> int:
        return len(self.service.sessions)

    def wait_idle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.service.sessions and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.service.sessions

    def put(
        self, body: bytes = b"Subject: test\r\n\r\nhello\r\n", store: SpoolStore | None = None
    ) -> MessageId:
        return (store or self.store).store_message(ENV, body)

    def files(self, sub: str = "") -> set[str]:
        d = self.spool / sub if sub else self.spool
        return {p.name for p in d.iterdir() if p.name != POP_LOCK_NAME and not p.is_dir()}

    def client(self, timeout: float = 10.0) -> poplib.POP3:
        return poplib.POP3("127.0.0.1", self.port, timeout=timeout)

    def login(self, user: str = "me", password: str = "secret") -> poplib.POP3:
        p = self.client()
        p.user(user)
        p.pass_(password)
        return p


@contextlib.contextmanager
def pop_harness(tmp_path: Path, **kw: Any) -> Iterator[PopHarness]:
    h = PopHarness(tmp_path, **kw)
    try:
        yield h
    finally:
        h.stop()


def make_certificate(directory: Path, cn: str = "localhost") -> tuple[Path, Path]:
    """A self-signed key and certificate made with the openssl CLI."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def server_tls_context(directory: Path) -> ssl.SSLContext:
    key, cert = make_certificate(directory)
    return tls.server_context([str(key), str(cert)])


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_reply(sock: socket.socket, multi: bool) -> bytes:
    """One POP reply off ``sock``: a line, or (``multi`` and ``+OK``) up to the closing dot line;
    ``<EOF>`` appended when the server closes first."""
    data = b""
    while not (
        data.endswith(b"\r\n.\r\n") or (data.endswith(b"\r\n") and (not multi or not data.startswith(b"+OK")))
    ):
        chunk = sock.recv(65536)
        if not chunk:
            return data + b"<EOF>"
        data += chunk
    return data
