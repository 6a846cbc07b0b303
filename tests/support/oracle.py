"""Run one scenario against our relay and against E-MailRelay 2.6b itself (the oracle).

What it is for: differential tests (``tests/differential/``) start both
programs the same way — as root, with the default ``--user daemon`` unless
a test says otherwise, supervised, ``--no-daemon --log --log-time
--no-syslog --verbose`` — drive them with the same client, and compare what
a user sees: replies, log lines, spool files, exit codes.  The oracle's
directory comes from ``EMAILRELAY_ORACLE_BIN``; without it every test marked
:data:`needs_oracle` skips, so a user's clone still passes ``make test``.

Guarantees: nothing here reads a file outside the repository unless the
variable names it; processes are stopped by pid (the child this module
started); the directories handed to the relays are reachable by ``daemon``
(pytest's own temporary directory is not) and are removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.relay import free_port, stop_process, wait_for_port, wait_until
from tests.support.relay import program as our_program

ORACLE_ENV = "EMAILRELAY_ORACLE_BIN"
SIDES = ("ours", "upstream")


def oracle_dir() -> Path | None:
    """The directory holding E-MailRelay 2.6b's programs, from ``EMAILRELAY_ORACLE_BIN``."""
    value = os.environ.get(ORACLE_ENV, "")
    return Path(value) if value and (Path(value) / "emailrelay").is_file() else None


needs_oracle = pytest.mark.skipif(
    oracle_dir() is None,
    reason=f"set {ORACLE_ENV} to the directory of E-MailRelay 2.6b's programs to compare with it",
)


def program(side: str, name: str = "emailrelay") -> str:
    """The path of program ``name`` of ``side`` ("ours" or "upstream")."""
    if side == "ours":
        return our_program(name)
    if side == "upstream":
        directory = oracle_dir()
        if directory is None:
            pytest.skip(f"{ORACLE_ENV} is not set")
        return str(directory / name)
    raise ValueError(f"unknown side {side!r}")


_BASES: list[Path] = []


@atexit.register
def _remove_bases() -> None:
    for base in _BASES:
        shutil.rmtree(base, ignore_errors=True)


def daemon_base(tmp_path: Path | None = None) -> Path:
    """A fresh directory under /tmp that ``--user daemon`` can search (mode 0755), removed at exit.

    ``tmp_path`` is only used to leave a symlink to it, so a failing test's files can be found.
    """
    base = Path(tempfile.mkdtemp(prefix="er-diff-", dir="/tmp"))
    base.chmod(0o755)
    _BASES.append(base)
    if tmp_path is not None:
        with contextlib.suppress(OSError):
            (tmp_path / "daemon-base").symlink_to(base)
    return base


def daemon_group(path: Path, mode: int) -> Path:
    """``path`` owned by root and group ``daemon`` (where that group exists and we may), mode ``mode``."""
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(path, 0, grp.getgrnam("daemon").gr_gid)
    path.chmod(mode)
    return path


def spool_dir(path: Path) -> Path:
    """A spool as a packaged install makes it: root-owned, group daemon, 0775."""
    path.mkdir(parents=True, exist_ok=True)
    return daemon_group(path, 0o775)


@dataclass
class Daemon:
    """One relay (ours or upstream's) started by :func:`start`."""

    side: str
    proc: subprocess.Popen[bytes]
    port: int
    base: Path
    spool: Path
    pid_file: Path
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        return stop_process(self.proc, timeout)

    def pid_from_file(self) -> int:
        wait_until(lambda: self.pid_file.exists() and self.pid_file.read_text().strip() != "", 10)
        return int(self.pid_file.read_text().strip())

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    side: str,
    base: Path,
    *args: str,
    user: str | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    name: str | None = None,
) -> Daemon:
    """Start ``side``'s relay in ``<base>/<name or side>/`` with the common logging options and ``args``.

    ``user=None`` keeps the default ``--user`` (``daemon`` when started as root), as an operator
    does; any other value adds ``--user USER``.
    """
    home = base / (name or side)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    spool = spool_dir(home / "spool")
    port = free_port() if port is None else port
    pid_file = home / "pid"
    log_path = home / "log"
    argv = [
        program(side), "--no-daemon", "--log", "--log-time", "--no-syslog", "--verbose",
        "--port", str(port), "--spool-dir", str(spool), "--pid-file", str(pid_file),
    ]  # fmt: skip
    if user is not None:
        argv += ["--user", user]
    argv += list(args)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=home,
        )  # fmt: skip
    daemon = Daemon(side, proc, port, base, spool, pid_file, log_path, argv)
    if wait:
        try:
            wait_for_port(port, proc=proc, timeout=20)
        except BaseException:
            daemon.stop()
            raise
    return daemon


def run(
    side: str,
    name: str,
    *args: str,
    input: bytes | None = None,
    timeout: float = 30,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run one of ``side``'s programs to completion, capturing stdout and stderr."""
    return subprocess.run(
        [program(side, name), *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def read_reply(stream: socket.SocketIO | object) -> str:
    """One SMTP reply from a buffered socket reader: its lines joined with "\\n", CRLF removed."""
    lines: list[str] = []
    while True:
        raw = stream.readline()  # type: ignore[attr-defined]
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            break
    return "\n".join(lines)


def smtp_dialogue(port: int, lines: Sequence[str], host: str = "127.0.0.1", timeout: float = 15) -> list[str]:
    """Send each command (CRLF added) and collect each reply, the greeting first.

    A line that contains CRLF is sent as one block (message content ending in ``\\r\\n.``).
    The connection is closed after the last reply (no QUIT is added).
    """
    replies: list[str] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        replies.append(read_reply(reader))
        for line in lines:
            sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
            replies.append(read_reply(reader))
    return replies


def session_then_quit(port: int, lines: Sequence[str], timeout: float = 30) -> tuple[list[str], float]:
    """Send each command (CRLF added) and collect each reply, the greeting first; then QUIT.

    Returns those replies (not QUIT's) and ``time.monotonic()`` as QUIT's reply came, before the
    client closes the connection (the ``--immediate`` tests time the onward connection's close).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        reader = client.makefile("rb")
        got = [read_reply(reader)]
        for line in lines:
            client.sendall(line.encode() + b"\r\n")
            got.append(read_reply(reader))
        client.sendall(b"QUIT\r\n")
        read_reply(reader)
        return got, time.monotonic()


_TIME = re.compile(r"^(emailrelay(?:-\w+)?: )\d{8}\.\d{6}\.\d{3}: ")
_ID = re.compile(r"emailrelay\.\d+\.\d+\.\d+")
_ID_BYTES = re.compile(_ID.pattern.encode())
_HOSTPORT = re.compile(r"(\d+\.\d+\.\d+\.\d+|::1|::)([:.])(\d+)\b")


def normalise_text(text: str, daemon: Daemon | None = None, *, ports: Iterable[int] = ()) -> str:
    """Ids -> ``emailrelay.ID``, the base directory -> ``BASE``, the daemon's pid -> ``PID``,
    its port and ``ports`` -> ``PORT``, any other port after an address -> ``N``."""
    text = _ID.sub("emailrelay.ID", text)
    known = {str(p) for p in ports}
    if daemon is not None:
        text = text.replace(str(daemon.base), "BASE")
        known.add(str(daemon.port))
        with contextlib.suppress(OSError, ValueError):
            # not a number that opens a traced reply (tx>>: "504 ..."): after pid_max wraps, a pid
            # can be any small number, a reply code too
            text = re.sub(rf'(?<!")\b{daemon.pid_from_file()}\b', "PID", text)
    return _HOSTPORT.sub(lambda m: f"{m[1]}{m[2]}{'PORT' if m[3] in known else 'N'}", text)


def normalise_log(
    text: str, daemon: Daemon | None = None, *, drop: Sequence[str] = (), ports: Iterable[int] = ()
) -> list[str]:
    """The log's lines without timestamps, normalised (:func:`normalise_text`), minus lines
    matching any regex of ``drop``."""
    patterns = [re.compile(d) for d in drop]
    out = []
    for line in text.splitlines():
        line = normalise_text(_TIME.sub(r"\1", line), daemon, ports=ports)
        if not any(p.search(line) for p in patterns):
            out.append(line)
    return out


_DATE = re.compile(rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}")


def normalise_spool(spool: Path) -> dict[str, bytes]:
    """Every file of the spool (not sub-directories): normalised name -> bytes with ids and
    RFC 5322 dates normalised."""
    files: dict[str, bytes] = {}
    for path in sorted(spool.iterdir()):
        if path.is_file():
            data = _ID_BYTES.sub(b"emailrelay.ID", path.read_bytes())
            files[_ID.sub("emailrelay.ID", path.name)] = _DATE.sub(b"DATE", data)
    return files
