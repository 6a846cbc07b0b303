"""Helpers shared by the smtpd/daemon/durability tests, and a regression test for disconnects.

``test_relay_keeps_serving_after_clients_disconnect`` guards the bug where
SmtpSession._pump() spun forever once a client connection closed (fixed in
777a8c8): every other relay test depends on it, so it fails first and clearly.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from emailrelay.spool import envelope as env_format
from emailrelay.spool.envelope import Envelope
from tests.support.relay import Relay, start_relay, wait_until

LOG_LINE_RE = re.compile(r"^emailrelay: [0-9]{8}\.[0-9]{6}\.[0-9]{3}: (info|warning|error): ")
RECEIVED_RE = re.compile(
    rb"^Received: from (?P<helo>\S+) \(\[(?P<ip>[0-9a-f.:]+)\]\) by (?P<domain>\S+) with (?P<with>E?SMTPA?) ; "
    rb"[A-Z][a-z]{2}, [ 0-9]?[0-9] [A-Z][a-z]{2} [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}\r\n"
)


def short_run_dir() -> Path:
    """A run directory whose ipc paths fit in sockaddr_un (the default one under a deep tmp_path does not)."""
    return Path(tempfile.mkdtemp(prefix="er", dir="/tmp"))


class Relays:
    """Starts relays for one test (each with a short --run-dir) and stops them all afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Relay] = []
        self.run_dirs: list[Path] = []

    def start(self, *args: str, name: str | None = None, **kwargs: object) -> Relay:
        run_dir = short_run_dir()
        self.run_dirs.append(run_dir)
        relay = start_relay(
            self.tmp_path,
            "--run-dir",
            str(run_dir),
            *args,
            name=name or f"relay{len(self.started)}",
            **kwargs,  # type: ignore[arg-type]
        )
        self.started.append(relay)
        return relay

    def close(self) -> None:
        for relay in self.started:
            relay.stop(timeout=20)  # SIGKILL after the timeout
        for run_dir in self.run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def relays(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = Relays(tmp_path)
    yield r
    r.close()


@pytest.mark.timeout(120)
def test_relay_keeps_serving_after_clients_disconnect(relays: Relays) -> None:
    relay = relays.start()
    try:
        # a client that says QUIT, one that just closes, one that resets the connection
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            s.settimeout(10)
            assert s.recv(100).startswith(b"220 ")
            s.sendall(b"QUIT\r\n")
            assert s.recv(100).startswith(b"221 ")
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            s.settimeout(10)
            s.recv(100)
        s = socket.create_connection(("127.0.0.1", relay.port), 10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            s.settimeout(10)
            assert s.recv(100).startswith(b"220 ")
        started = time.monotonic()
        assert relay.stop(timeout=15) == 0
        assert time.monotonic() - started < 15
    finally:
        relay.kill9()


# ---------------------------------------------------------------- raw SMTP


def parse_replies(data: bytes) -> list[tuple[int, list[str]]]:
    """Split a byte stream of SMTP replies into (code, text lines)."""
    out: list[tuple[int, list[str]]] = []
    lines: list[str] = []
    for raw in data.split(b"\r\n"):
        if not raw:
            continue
        text = raw.decode("utf-8", "replace")
        lines.append(text[4:])
        if len(text) < 4 or text[3] != "-":
            out.append((int(text[:3]), lines))
            lines = []
    return out


class Wire:
    """A raw SMTP client socket: send bytes exactly, read whole replies."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed; partial reply {self.buf!r} after {lines}")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\r\n", 1)
            text = raw.decode("utf-8", "replace")
            lines.append(text[4:])
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]), lines

    def replies(self, n: int) -> list[int]:
        return [self.reply()[0] for _ in range(n)]

    def command(self, line: bytes) -> tuple[int, list[str]]:
        self.send(line + b"\r\n")
        return self.reply()

    def read_to_close(self) -> bytes:
        data = self.buf
        self.buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data

    def greet(self, helo: bytes = b"EHLO client.example.com") -> list[str]:
        code, _ = self.reply()
        assert code == 220
        code, lines = self.command(helo)
        assert code == 250, lines
        return lines


# ---------------------------------------------------------------- the spool


def spool_entries(spool: Path) -> list[str]:
    """Message files in the spool (the supervisor's dot-directory is not one)."""
    return sorted(p.name for p in spool.iterdir() if not p.name.startswith("."))


def committed(spool: Path) -> list[tuple[str, Envelope, bytes, bytes]]:
    """(id, envelope, envelope bytes, content bytes) of every committed message, oldest first."""
    out = []
    for path in sorted(spool.glob("emailrelay.*.envelope")):
        mid = path.name[: -len(".envelope")]
        data = path.read_bytes()
        out.append((mid, env_format.parse(data), data, (spool / f"{mid}.content").read_bytes()))
    return out


def split_received(content: bytes) -> tuple[re.Match[bytes], bytes]:
    m = RECEIVED_RE.match(content)
    assert m, content[:200]
    return m, content[m.end() :]


def expected_envelope(
    from_: str, to: list[str], *, content: str = "unknown", client: str = "127.0.0.1", utf8: bool = False
) -> bytes:
    """The #2821.8 bytes for a plain message, written out by hand (not with the product's writer)."""
    lines = [
        "X-MailRelay-Format: #2821.8",
        f"X-MailRelay-Content: {content}",
        f"X-MailRelay-From: {from_}",
        f"X-MailRelay-ToCount: {len(to)}",
        *(f"X-MailRelay-To-Remote: {t}" for t in to),
        "X-MailRelay-Authentication: ",
        f"X-MailRelay-Client: {client}",
        "X-MailRelay-ClientCertificate: ",
        "X-MailRelay-MailFromAuthIn: ",
        "X-MailRelay-MailFromAuthOut: ",
        "X-MailRelay-ForwardTo: ",
        "X-MailRelay-ForwardToAddress: ",
        "X-MailRelay-ClientAccountSelector: ",
        f"X-MailRelay-Utf8MailboxNames: {1 if utf8 else 0}",
        "X-MailRelay-End: 1",
    ]
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def clear_spool(spool: Path) -> None:
    """Remove every message file (between tests that share one relay)."""
    for path in spool.glob("emailrelay.*"):
        path.unlink()


def spool_is_empty(spool: Path) -> bool:
    return not spool_entries(spool)


def wait_spool_empty(spool: Path, timeout: float = 20.0) -> bool:
    return wait_until(lambda: spool_is_empty(spool), timeout)
