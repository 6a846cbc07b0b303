"""A counting SMTP sink and helpers for the supervised-relay system tests.

What it is for: ``tests/system/test_{supervisor,admin,bus}_*.py`` run a real
supervised ``emailrelay`` (circus arbiter plus role processes) and need

- a next hop that counts what it was really given, per Message-ID, and can
  stall its reply to the final dot (:class:`CountingSink`); a message whose
  client vanished while the reply was stalled is *abandoned*, not counted,
  because the client never saw a 250 for it;
- the role processes of one relay, found as children of the pid the test
  started (never by name): :func:`role_pids`, :func:`wait_for_roles`;
- a tiny SMTP client (:func:`send_mail`), an admin-protocol client
  (:class:`AdminClient`), ``circusctl``, ``emailrelay-submit`` and
  ``emailrelay events`` wrappers (:func:`topics_seen`), and
  :func:`supervised_relay`, a relay whose roles are all up.

Guarantees: nothing here signals a process; the sink runs on its own event
loop thread and stops cleanly; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import smtplib
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.support.relay import BIN, Relay, program, start_relay

PROMPT = b"E-MailRelay> "
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]*)>", re.IGNORECASE | re.MULTILINE)


@dataclass
class Received:
    mid: str  # the Message-ID without angle brackets ("" when none)
    at: float  # time.monotonic() when the final dot arrived
    connection: int


class CountingSink:
    """An SMTP next hop on 127.0.0.1 that counts accepted messages per Message-ID.

    ``final_delay`` (seconds, may be changed while running) stalls the reply to
    the final dot; if the client disconnects meanwhile the message is counted
    in ``abandoned`` instead of ``messages``.  ``dots`` counts final dots seen;
    ``peak_open`` is the most connections that were open at once.
    """

    def __init__(self, final_delay: float = 0.0) -> None:
        self.final_delay = final_delay
        self.port = 0
        self.messages: list[Received] = []
        self.abandoned: list[Received] = []
        self.dots = 0
        self.connections = 0
        self.open_now = 0
        self.peak_open = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> CountingSink:
        self._thread = threading.Thread(target=self._run, name="counting-sink", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("counting sink did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._session, "127.0.0.1", 0, backlog=512)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        finally:
            self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # ---- counting -----------------------------------------------------------------
    def ids(self) -> Counter[str]:
        with self._lock:
            return Counter(m.mid for m in self.messages)

    def count(self, mid: str) -> int:
        return self.ids()[mid]

    def arrival(self, mid: str) -> float | None:
        with self._lock:
            return next((m.at for m in self.messages if m.mid == mid), None)

    def wait_for(self, mids: list[str] | set[str], timeout: float) -> bool:
        want = set(mids)
        return poll(lambda: want <= set(self.ids()), timeout)

    # ---- the protocol ---------------------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.open_now += 1  # (the sink's own event loop: no lock needed)
        self.peak_open = max(self.peak_open, self.open_now)
        try:
            writer.write(b"220 sink.test ESMTP\r\n")
            while True:
                line = await reader.readuntil(b"\n")
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-sink.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = bytearray()
                    while (chunk := await reader.readuntil(b"\n")) != b".\r\n":
                        data += chunk
                    await self._final(reader, writer, bytes(data), number)
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    writer.write(b"250 ok\r\n")
                else:
                    writer.write(b"500 what\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_now -= 1
            writer.transport.abort()

    async def _final(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, number: int
    ) -> None:
        m = _MESSAGE_ID.search(data)
        msg = Received(m.group(1).decode() if m else "", time.monotonic(), number)
        with self._lock:
            self.dots += 1
        delay = self.final_delay
        if delay > 0:
            try:  # a well-behaved client sends nothing before our reply: any read result is EOF
                await asyncio.wait_for(reader.read(1), delay)
                with self._lock:
                    self.abandoned.append(msg)
                raise ConnectionResetError("client went away before the reply to the dot")
            except TimeoutError:
                pass
        writer.write(b"250 2.0.0 queued\r\n")
        await writer.drain()
        with self._lock:
            self.messages.append(msg)


# ---- waiting --------------------------------------------------------------------------
def poll(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ---- the relay's processes --------------------------------------------------------------
def role_of(proc: psutil.Process) -> str | None:
    """The role of one of our role processes (``python -m emailrelay.cli.role <role> ...``)."""
    with contextlib.suppress(psutil.Error):
        cmd = proc.cmdline()
        for i, word in enumerate(cmd[:-1]):
            if word == "emailrelay.cli.role":
                return cmd[i + 1]
    return None


def role_pids(relay_pid: int) -> dict[str, list[int]]:
    """Living role processes under the arbiter ``relay_pid``, by role.  Not their children: a filter
    a role forks shows the role's command line until it has exec'd (``subprocess`` with a preexec)."""
    out: dict[str, list[int]] = {}
    try:
        children = psutil.Process(relay_pid).children(recursive=True)
    except psutil.Error:
        return out
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        role = role_of(child)
        if role is not None and not _forked_by_a_role(child):
            out.setdefault(role, []).append(child.pid)
    return {k: sorted(v) for k, v in out.items()}


def _forked_by_a_role(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        parent = proc.parent()
        return parent is not None and role_of(parent) is not None
    return True  # gone already


def wait_for_roles(relay_pid: int, expected: dict[str, int], timeout: float = 20.0) -> dict[str, list[int]]:
    """Wait until exactly ``expected`` processes run per role; return the pids (or fail)."""
    got: dict[str, list[int]] = {}

    def ok() -> bool:
        nonlocal got
        got = role_pids(relay_pid)
        return all(len(got.get(role, [])) == n for role, n in expected.items())

    assert poll(ok, timeout, 0.1), f"roles: wanted {expected}, have {got}"
    return got


def run_dir(spool: Path) -> Path:
    """The default run directory of a relay on ``spool`` (as the product computes it)."""
    from emailrelay import rundir

    return rundir.default(spool)


def circusctl(rdir: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """circus's own client on the relay's control endpoint (root only: it is in a 0700 directory)."""
    from emailrelay import rundir

    return subprocess.run(
        [str(BIN / "circusctl"), "--endpoint", rundir.ipc(rdir, rundir.CIRCUS_CONTROL), "--timeout", "10", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def wait_for_bus(rdir: Path, timeout: float = 20.0) -> None:
    from emailrelay import rundir

    assert poll(lambda: all((rdir / name).exists() for name in (rundir.BUS_IN, rundir.BUS_OUT)), timeout)


# ---- clients ----------------------------------------------------------------------------
def content(mid: str, body: str = "hello") -> str:
    return (
        f"From: a@example.com\r\nTo: b@example.net\r\nSubject: {mid}\r\nMessage-ID: <{mid}>\r\n\r\n{body}\r\n"
    )


def send_mail(port: int, mid: str, timeout: float = 20.0) -> None:
    """One message over a new connection; raises on any failure (SMTPException/OSError)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
        s.sendmail("a@example.com", ["b@example.net"], content(mid))


def submit(spool: Path, mid: str) -> None:
    """``emailrelay-submit`` a message into ``spool``; returns once it is committed."""
    subprocess.run(
        [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "a@example.com", "b@example.net"],
        input=content(mid).encode(), capture_output=True, timeout=30, check=True,
    )  # fmt: skip


def smtp_greeting(port: int, timeout: float = 5.0) -> bytes:
    """The first line a new SMTP connection gets."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        data = b""
        while b"\n" not in data:
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        with contextlib.suppress(OSError):
            s.sendall(b"QUIT\r\n")
        return data


class AdminClient:
    """A line client for the admin port: ``cmd()`` returns the reply bytes up to and with the prompt."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_until(self, marker: bytes, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} in {self.buffer!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; have {self.buffer!r}")
            self.buffer += chunk
        end = self.buffer.index(marker) + len(marker)
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        return out

    def cmd(self, line: str | bytes, timeout: float | None = None) -> bytes:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.read_until(PROMPT, timeout)

    def read_all(self, timeout: float) -> bytes:
        """Whatever arrives until the peer closes (b"" at once if closed); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"still open; have {self.buffer!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                out, self.buffer = self.buffer, b""
                return out
            self.buffer += chunk


def topics_seen(relay_port: int, spool: Path, mid: str) -> set[str]:
    """The topics ``emailrelay events --count 12`` prints while messages keep flowing.

    Twelve events hold at least one message's whole path (accepted, ready twice, done),
    however late the subscriber joins, with room for a few unrelated events."""
    proc = subprocess.Popen(
        [program(), "events", "--json", "--count", "12", "--spool-dir", str(spool)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        n = 0
        while proc.poll() is None and time.monotonic() < deadline:
            send_mail(relay_port, f"{mid}.{n}")
            n += 1
            time.sleep(0.3)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        return {json.loads(line)["topic"] for line in out.splitlines()}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ---- a supervised relay ----------------------------------------------------------------
@contextlib.contextmanager
def supervised_relay(
    tmp_path: Path, *extra: str, roles: dict[str, int], name: str = "relay", **kwargs: object
) -> Iterator[Relay]:
    """``start_relay`` (``--no-daemon``: the pid is the arbiter), waiting for ``roles`` and the bus.

    On exit the relay gets SIGTERM; any role process of it still alive afterwards
    (found as a child of the arbiter before the stop) gets SIGKILL, by pid.
    """
    relay = start_relay(tmp_path, *extra, name=name, **kwargs)  # type: ignore[arg-type]
    seen: set[int] = set()
    try:
        wait_for_roles(relay.pid, roles)
        wait_for_bus(run_dir(relay.spool))
        yield relay
    finally:
        if relay.proc.poll() is None:
            seen = {p for pids in role_pids(relay.pid).values() for p in pids}
        relay.stop()
        for pid in seen:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if role_of(proc) is not None:
                    proc.kill()


def print_log(relay: Relay, lines: int = 60) -> None:
    print(f"---- {relay.log_path.name} (last {lines} lines)")
    print("\n".join(relay.log().splitlines()[-lines:]))
