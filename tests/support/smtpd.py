"""Helpers for the tests that drive a real relay over raw SMTP and look at its spool.

What it is for: the smtpd, daemon, durability, compat and security tests start relays with a short
run directory (:func:`short_run_dir`, :class:`Relays`), talk SMTP byte for byte (:class:`Wire`,
:func:`parse_replies`) and check what was committed (:func:`committed`, :func:`expected_envelope`,
:func:`split_received`, :func:`spool_entries`).

Guarantees: every relay :class:`Relays` started is stopped (SIGKILL after a timeout) and its run
directory removed by :meth:`Relays.close`; expected envelopes are written out by hand, never with
the product's writer.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
from pathlib import Path

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
