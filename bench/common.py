"""Shared helpers for the benchmarks: processes, peak-RSS sampling, smtp-source/smtp-sink, tables.

Every process is started here as a child of the benchmark and stopped by its
own pid (SIGTERM, then SIGKILL after a grace period) — never by name.
Everything binds 127.0.0.1 only and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

PYTHON = (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)
EMAILRELAY = str(Path(PYTHON).parent / "emailrelay")
HOST = "127.0.0.1"


def tool(name: str) -> str:
    """Path of a Postfix tool (smtp-source, smtp-sink, postfix, postconf)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/lib/postfix/sbin")
    if not found:
        raise SystemExit(f"bench: {name} not found (install postfix)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def oracle_program() -> str:
    """E-MailRelay 2.6b's ``emailrelay``: ``$EMAILRELAY_ORACLE_BIN`` names its directory (as for the
    tests and ``.ci/run``) or the program itself; empty when unset."""
    value = os.environ.get("EMAILRELAY_ORACLE_BIN", "")
    return str(Path(value) / "emailrelay") if value and Path(value).is_dir() else value


# ---- processes ----------------------------------------------------------------------------
class Child:
    """A process this benchmark started; stopped by pid only."""

    def __init__(self, args: Sequence[str], log_path: Path | None = None, *, stdout: int | None = None,
                 cwd: str | None = None) -> None:  # fmt: skip
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
        out = stdout if stdout is not None else (self._log if self._log is not None else subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=out,
            stderr=self._log if self._log is not None else subprocess.DEVNULL, cwd=cwd,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM (SIGKILL after ``grace``); then SIGKILL any descendant that outlived it."""
        descendants: list[psutil.Process] = []
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    descendants = psutil.Process(self.proc.pid).children(recursive=True)
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            return self.proc.returncode
        finally:
            for d in descendants:
                with contextlib.suppress(psutil.Error):
                    if d.is_running() and d.status() != psutil.STATUS_ZOMBIE:
                        d.kill()
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def child(args: Sequence[str], log_path: Path | None = None, **kw: object) -> Iterator[Child]:
    c = Child(args, log_path, **kw)  # type: ignore[arg-type]
    try:
        yield c
    finally:
        c.stop()


def compile_relay(tree: str = "") -> str:
    """Byte-compile the relay package a benchmark runs (``tree``'s copy, else the one the venv's
    interpreter imports), as an installed package is, and return the line to print.  The
    development environment sets ``PYTHONDONTWRITEBYTECODE``: without ``__pycache__`` every
    process of the relay would compile its modules from source at each start, which leaves
    1-4 MB more heap per process than an installed relay has (``__pycache__/`` is gitignored)."""
    if tree:
        package = str(Path(tree, "emailrelay"))
    else:
        where = [PYTHON, "-c", "import emailrelay; print(emailrelay.__path__[0])"]
        package = subprocess.run(where, check=True, capture_output=True, text=True, cwd="/").stdout.strip()
    subprocess.run([PYTHON, "-m", "compileall", "-q", package], check=True)
    return f"relay package byte-compiled first (python -m compileall -q {package}), as an installed one is"


def relay_args(port: int, spool: Path, *extra: str, user: str = "root") -> list[str]:
    return [
        EMAILRELAY, "--no-daemon", "--log", "--no-syslog", "--port", str(port),
        "--interface", HOST, "--spool-dir", str(spool), "--user", user, *extra,
    ]  # fmt: skip


def start_listening(args: Sequence[str], port: int, log_path: Path, timeout: float = 30.0) -> Child:
    """Start a server child and wait until it sends a 220 greeting (stopping it on failure).

    A greeting, not just an accepted connect: the supervised relay binds the port in
    its front end, long before the smtp role process is ready to answer.
    """
    c = Child(args, log_path)
    try:
        wait_for_greeting(port, c, timeout)
    except BaseException:
        c.stop()
        raise
    return c


def wait_for_greeting(port: int, c: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not c.alive():
            raise RuntimeError(f"{c.args[0]} exited with {c.proc.returncode}: {c.log_tail(3)}")
        try:
            with socket.create_connection((HOST, port), timeout=max(0.1, deadline - time.monotonic())) as s:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                if s.recv(512).startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"no SMTP greeting on {HOST}:{port} after {timeout}s ({last})")


# ---- measurements ---------------------------------------------------------------------------
def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` plus all its descendants (0 when gone)."""
    return tree_rss_count(pid)[0]


def tree_rss_count(pid: int) -> tuple[int, int]:
    """(RSS in bytes, number of processes) of ``pid`` plus all its descendants."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total, len(procs)


def tree_cpu(pid: int) -> float:
    """User+system CPU seconds of ``pid`` plus its live descendants."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for q in procs:
        with contextlib.suppress(psutil.Error):
            t = q.cpu_times()
            total += t.user + t.system
    return total


def tree_procs(pid: int) -> list[int]:
    """``pid`` and all its live descendants (empty when gone)."""
    try:
        p = psutil.Process(pid)
        return [pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime+stime of one process in seconds, from /proc/<pid>/stat (0.0 when gone)."""
    return sum(proc_user_system(pid))


def proc_user_system(pid: int) -> tuple[float, float]:
    """utime and stime of one process in seconds, from /proc/<pid>/stat ((0.0, 0.0) when gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is fields[0]
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def procs_cpu(pids: Sequence[int]) -> float:
    """Summed utime+stime of these processes (read before and after a run: CPU per message)."""
    return sum(proc_cpu(p) for p in pids)


def thread_sched(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting in the run queue) of one thread, from
    /proc/<pid>/task/<tid>/schedstat (default: the main thread, a role's event loop); (0, 0) when gone.
    Wall time minus both is the time it slept: waits on our own I/O, locks, the GIL, or no work."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()
    except OSError:
        return 0.0, 0.0
    return int(fields[0]) / 1e9, int(fields[1]) / 1e9


def proc_role(pid: int) -> str:
    """The process's name as ps shows it (``emailrelay-smtp``, ``master``, ...)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def tree_pss(pid: int) -> int:
    """Proportional set size of the tree (shared pages split between processes): costly, sample rarely."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        with contextlib.suppress(psutil.Error, AttributeError):
            total += q.memory_full_info().pss
    return total


class PeakRss:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread; keeps the peak.

    Summed RSS counts shared pages (interpreter, libraries) once per process, which
    flatters nobody with many processes; the PSS peak, sampled every ``pss_every``
    samples (reading smaps is costly), splits them fairly.
    """

    def __init__(self, pid: int, interval: float = 0.05, pss_every: int = 20) -> None:
        self.pid = pid
        self.interval = interval
        self.pss_every = pss_every
        self.peak = 0
        self.peak_pss = 0
        self.procs = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, procs = tree_rss_count(self.pid)
            self.samples += 1
            self.peak = max(self.peak, rss)
            self.procs = max(self.procs, procs)
            if self.pss_every and self.samples % self.pss_every == 1:
                self.peak_pss = max(self.peak_pss, tree_pss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def mb(n: float) -> str:
    return f"{n / (1024 * 1024):.1f}"


# ---- Postfix test tools -------------------------------------------------------------------
def run_smtp_source(port: int, *, sessions: int, messages: int, size: int, timeout: float,
                    extra: Sequence[str] = ()) -> tuple[float, int, str]:  # fmt: skip
    """Run smtp-source to completion: (wall seconds, exit status, stderr tail). Killed on timeout."""
    args = [
        tool("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size),
        "-f", "from@example.com", "-t", "to@example.net", *extra, f"{HOST}:{port}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
        return time.perf_counter() - start, -9, f"smtp-source timed out after {timeout:.0f}s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return time.perf_counter() - start, proc.returncode, err.decode(errors="replace").strip()[-500:]


class CountingSink:
    """Postfix ``smtp-sink -c``: discards mail; its running counters (``mesg=N``) are read live."""

    _MESG = re.compile(rb"mesg=(\d+)")

    def __init__(self, port: int, backlog: int = 256) -> None:
        self.port = port
        self.messages = 0
        self.child = Child([tool("smtp-sink"), "-u", "root", "-c", f"{HOST}:{port}", str(backlog)],
                           stdout=subprocess.PIPE)  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_for_greeting(port, self.child, 10.0)  # smtp-sink greets with 220 as soon as it listens
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        out = self.child.proc.stdout
        assert out is not None
        buf = b""
        while chunk := out.read1(65536):
            buf = (buf + chunk)[-256:]
            found = self._MESG.findall(buf)
            if found:
                self.messages = max(self.messages, int(found[-1]))

    def wait_for(self, count: int, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.messages >= count:
                return True
            if not self.child.alive():
                return False
            time.sleep(0.01)
        return self.messages >= count

    def stop(self) -> None:
        self.child.stop(5)
        self._reader.join(5)


def spool_backlog(spool: Path) -> int:
    """Messages still in an emailrelay spool (ready, busy or being stored)."""
    n = 0
    with os.scandir(spool) as it:
        for e in it:
            if ".envelope" in e.name and not e.name.endswith(".bad"):
                n += 1
    return n


# ---- misc ------------------------------------------------------------------------------------
def greeting_time(port: int, timeout: float = 10.0) -> tuple[float, float]:
    """Seconds to the 220 greeting and to the EHLO reply on a fresh connection."""
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        f = s.makefile("rb")
        line = f.readline()
        if not line.startswith(b"220"):
            raise RuntimeError(f"unexpected greeting {line!r}")
        greet = time.perf_counter() - start
        s.sendall(b"EHLO bench.example\r\n")
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("connection closed during EHLO")
            if line[3:4] != b"-":
                break
        if not line.startswith(b"250"):
            raise RuntimeError(f"unexpected EHLO reply {line!r}")
        ehlo = time.perf_counter() - start
        s.sendall(b"QUIT\r\n")
        with contextlib.suppress(OSError):
            f.readline()
    return greet, ehlo


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M:%S')}  cpus={os.cpu_count()}  "
            f"loadavg={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}  python={sys.version.split()[0]}")  # fmt: skip
