"""Start a real ``emailrelay`` process for a test, and stop it by pid.

What it is for: integration and system tests talk to the relay over real
sockets; this starts ``emailrelay`` as a subprocess with the given options,
waits until its SMTP port accepts connections (or until it exits), and
stops it with SIGTERM (SIGKILL after a grace period) — only the process it
started, never by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range (and above the fixed ones tests and ``make run`` use):
    none of them is ever the source port of a connection the run makes."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (max(11000, low - 12000), low - 1) if low > 12000 else (49152, 65535)


def _worker_slice(span: tuple[int, int]) -> tuple[int, int]:
    """This pytest-xdist worker's own part of ``span`` (all of it without xdist): two workers of
    one run never pick the same port, whatever the timing of their relays' binds."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return span
    index, parts = int(worker[2:]), int(count)
    width = (span[1] - span[0] + 1) // parts
    start = span[0] + (index % parts) * width
    return (start, start + width - 1)


_PORT_RANGE = _worker_slice(_port_range())
_PORTS_GIVEN: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a relay a test starts next.

    Picked at random outside the ephemeral range, so that no outgoing connection of the test run
    (which the kernel gives an ephemeral source port) can take it before the relay binds it, in
    this xdist worker's own slice of that range (``_worker_slice``), so the run's workers never pick
    the same one; never the same port twice in one process.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(500):
        port = random.randint(*_PORT_RANGE)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    with socket.socket(family, socket.SOCK_STREAM) as s:  # the range is exhausted: the kernel's pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, host: str = "127.0.0.1", timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def program(name: str = "emailrelay") -> str:
    return str(BIN / name)


@dataclass
class Relay:
    """A running relay subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    spool: Path
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process(self.proc, timeout)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int | None:
    """SIGTERM a child this test started, SIGKILL if it is still there after ``timeout``; its exit status
    as a shell's ``$?`` shows it: a death by signal N is 128 + N (a relay without ``--pid-file`` dies by
    SIGTERM, as E-MailRelay 2.6b's; with one it exits 143: both are 143 here)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return shell_status(proc.returncode)


def shell_status(code: int | None) -> int | None:
    """A returncode as a shell's ``$?`` shows it: a death by signal N (``-N``) is 128 + N."""
    return 128 - code if code is not None and code < 0 else code


def start_relay(
    tmp_path: Path,
    *extra: str,
    port: int | None = None,
    spool: Path | None = None,
    wait: bool = True,
    name: str = "relay",
    env: dict[str, str] | None = None,
    user: str | None = "root",
) -> Relay:
    """``emailrelay --no-daemon --log --verbose --no-syslog --port P --interface 127.0.0.1 --spool-dir S ...``
    with ``--user root`` (``user=None``: the default ``--user``, as in production)."""
    port = free_port() if port is None else port
    spool = spool or (tmp_path / f"{name}-spool")
    spool.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / f"{name}.log"
    args = [
        program(), "--no-daemon", "--log", "--verbose", "--no-syslog", "--log-time",
        "--port", str(port), "--interface", "127.0.0.1", "--spool-dir", str(spool),
        *(["--user", user] if user else []), *extra,
    ]  # fmt: skip
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=tmp_path,
        )  # fmt: skip
    relay = Relay(proc, port, spool, log_path, args)
    if wait:
        try:
            wait_for_port(port, proc=proc)
        except BaseException:
            relay.stop()
            raise
    return relay


@contextlib.contextmanager
def running_relay(tmp_path: Path, *extra: str, **kwargs: object) -> Iterator[Relay]:
    relay = start_relay(tmp_path, *extra, **kwargs)  # type: ignore[arg-type]
    try:
        yield relay
    finally:
        relay.stop()


@contextlib.contextmanager
def reachable_dir(prefix: str, mode: int = 0o755) -> Iterator[Path]:
    """A fresh directory under /tmp with ``mode``, so ``--user daemon`` can reach it (pytest's own
    directories are 0700); removed with everything in it afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(mode)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def spool_files(spool: Path, suffix: str = "") -> list[Path]:
    return sorted(p for p in spool.iterdir() if p.is_file() and p.name.endswith(suffix))


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def process_ids(pid: int) -> tuple[list[int], list[int]]:
    """A process's (real, effective, saved, file-system) uids and gids, from /proc/PID/status."""
    ids: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            ids[key] = [int(v) for v in value.split()]
    return ids["Uid"], ids["Gid"]


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM a process a test started (a daemon, by the pid in its pid file); SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(pid), timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 5)
