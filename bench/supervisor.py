"""Supervisor (issue 8): role restart, notify-path wake-up latency, and per-role process scaling.

``python bench/supervisor.py [--restarts 3] [--wakeups 50] [--messages 3000] [--quick]``

1. Restart: a client starts a new SMTP connection every ~10 ms (each in its own
   thread, so a slow greeting does not hold back the next attempt) and reads the
   220 greeting, while ``circusctl --endpoint ipc://RUN/circus/ctl.ipc restart smtp``
   runs.  Reported per restart: connections refused (connect error), dropped (closed
   or non-220 before/instead of the greeting), the longest greeting wait of any
   connection started within 2 s of the restart (the "gap"), the longest interval
   between consecutive greetings, and the time from issuing the restart to the first
   greeting served by a NEW smtp process (new pids = smtp-role children of the
   arbiter that were not there before; the serving process of a connection is found
   by matching its peer address in the candidates' sockets with psutil).
2. Wake-up latency (notify path): relay with ``--forward-to SINK --poll 60``; the bench
   itself commits messages with ``SpoolStore(spool).store_message()`` (as
   emailrelay-submit would, from another process) and measures commit -> arrival of
   the first byte of the MAIL command at a tiny asyncio sink in this script.
3. Scaling: ``smtp-source -s 20 -m 3000 -l 10240`` store-only with ``--workers smtp=1,2,4``;
   and store-and-forward to Postfix ``smtp-sink -c`` with ``--poll 0 --workers forward=1,2,4``
   (smtp=1), end-to-end msgs/s (until the sink counted every message and the spool is empty).

Every process is stopped by its pid in a ``finally``; all directories are temporary;
figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

import common as cm

from emailrelay import rundir
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore

CIRCUSCTL = str(Path(cm.PYTHON).parent / "circusctl")


def role_pids(arbiter: int, role: str) -> set[int]:
    """Pids of the arbiter's children running ``python -m emailrelay.cli.role ROLE``."""
    out: set[int] = set()
    try:
        kids = psutil.Process(arbiter).children(recursive=False)
    except psutil.Error:
        return out
    for k in kids:
        with contextlib.suppress(psutil.Error):
            cmd = k.cmdline()
            if "emailrelay.cli.role" in cmd:
                i = cmd.index("emailrelay.cli.role")
                if i + 1 < len(cmd) and cmd[i + 1] == role:
                    out.add(k.pid)
    return out


def serving_pid(candidates: set[int], client_addr: tuple[str, int]) -> int | None:
    """Which of ``candidates`` holds the server side of the connection from ``client_addr``."""
    for pid in candidates:
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.raddr and (c.raddr.ip, c.raddr.port) == client_addr:
                    return pid
    return None


# ---- 1. restart ---------------------------------------------------------------------------------
@dataclass
class Attempt:
    start: float
    greeted: float | None = None
    error: str = ""  # "refused: ..." | "dropped: ..."
    new_pid: int | None = None  # set when served by a post-restart smtp process


class Prober:
    """Starts a connection attempt every ``interval`` seconds, each in its own thread."""

    def __init__(self, port: int, arbiter: int, old: set[int], interval: float = 0.010) -> None:
        self.port = port
        self.arbiter = arbiter
        self.old = old
        self.restart_issued = False
        self.interval = interval
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._runner = threading.Thread(target=self._run, daemon=True)
        self.new_pids: set[int] = set()  # filled by the main thread after the restart
        self.found_new: Attempt | None = None

    def _one(self, a: Attempt) -> None:
        try:
            s = socket.create_connection((cm.HOST, self.port), timeout=10)
        except OSError as exc:
            a.error = f"refused: {exc!r}"
            return
        try:
            s.settimeout(10)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"220"):
                a.greeted = time.perf_counter()
                if self.restart_issued and self.found_new is None:
                    # the server side stays open until our QUIT, so its owner can be looked up now
                    new = role_pids(self.arbiter, "smtp") - self.old
                    pid = serving_pid(new, s.getsockname()[:2]) if new else None
                    if pid is not None:
                        a.new_pid = pid
                        with self._lock:
                            if self.found_new is None or a.greeted < (self.found_new.greeted or 1e99):
                                self.found_new = a
                with contextlib.suppress(OSError):
                    s.sendall(b"QUIT\r\n")
            else:
                a.error = f"dropped: {data[:60]!r}"
        except OSError as exc:
            a.error = f"dropped: {exc!r}"
        finally:
            s.close()

    def _run(self) -> None:
        nxt = time.perf_counter()
        while not self._stop.is_set():
            a = Attempt(time.perf_counter())
            t = threading.Thread(target=self._one, args=(a,), daemon=True)
            with self._lock:
                self.attempts.append(a)
                self._threads.append(t)
            t.start()
            nxt += self.interval
            self._stop.wait(max(0.0, nxt - time.perf_counter()))

    def __enter__(self) -> Prober:
        self._runner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._runner.join(5)
        for t in self._threads:
            t.join(12)


def restart_once(relay: cm.Child, port: int, endpoint: str) -> dict[str, object]:
    old = role_pids(relay.pid, "smtp")
    with Prober(port, relay.pid, old) as pr:
        time.sleep(1.0)
        t_issue = time.perf_counter()
        pr.restart_issued = True
        ctl = subprocess.run([CIRCUSCTL, "--endpoint", endpoint, "--timeout", "30", "restart", "smtp"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        t_ret = time.perf_counter()
        # new smtp pids: poll until they appear (bounded)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            new = role_pids(relay.pid, "smtp") - old
            if new:
                pr.new_pids = new
                break
            time.sleep(0.005)
        # keep probing until a new process served someone, at least 2 s after the restart returned
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (pr.found_new is None or time.perf_counter() - t_ret < 2.0):
            if pr.new_pids != (role_pids(relay.pid, "smtp") - old) and role_pids(relay.pid, "smtp") - old:
                pr.new_pids = role_pids(relay.pid, "smtp") - old
            time.sleep(0.02)
    atts = pr.attempts
    refused = [a for a in atts if a.error.startswith("refused")]
    dropped = [a for a in atts if a.error.startswith("dropped")]
    window = [a for a in atts if t_issue - 2.0 <= a.start <= t_ret + 2.0]
    waits = [(a.greeted - a.start) if a.greeted else float("inf") for a in window]
    greets = sorted(a.greeted for a in atts if a.greeted is not None)
    between = max((b - a for a, b in itertools.pairwise(greets)), default=float("nan"))
    baseline = sorted(a.greeted - a.start for a in atts if a.greeted and a.start < t_issue - 0.1)
    first_new = pr.found_new.greeted - t_issue if pr.found_new and pr.found_new.greeted else float("nan")
    return {
        "attempts": len(atts), "refused": len(refused), "dropped": len(dropped),
        "examples": [a.error for a in (refused + dropped)[:3]],
        "gap": max(waits, default=float("nan")), "between": between,
        "base_median": statistics.median(baseline) if baseline else float("nan"),
        "ctl_s": t_ret - t_issue, "ctl_rc": ctl.returncode, "ctl_out": (ctl.stdout + ctl.stderr).strip()[-200:],
        "first_new": first_new, "old": sorted(old), "new": sorted(pr.new_pids),
    }  # fmt: skip


def bench_restart(tmp: Path, restarts: int) -> list[dict[str, object]]:
    spool, run = tmp / "rs-spool", tmp / "rs-run"
    spool.mkdir()
    port = cm.free_port()
    relay = cm.start_listening(cm.relay_args(port, spool, "--run-dir", str(run)), port, tmp / "restart.log")
    out = []
    try:
        time.sleep(1.5)
        endpoint = rundir.ipc(run, rundir.CIRCUS_CONTROL)
        for n in range(restarts):
            r = restart_once(relay, port, endpoint)
            out.append(r)
            print(f"  restart {n + 1}: {r}", flush=True)
            time.sleep(1.0)
    finally:
        relay.stop()
    return out


# ---- 2. wake-up latency -------------------------------------------------------------------------
class TimestampSink:
    """A tiny SMTP sink on an asyncio loop in a thread; records perf_counter() at the first byte of MAIL."""

    _FROM = re.compile(rb"MAIL FROM:<wake-(\d+)@", re.I)

    def __init__(self) -> None:
        self.port = cm.free_port()
        self.arrivals: dict[int, float] = {}
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        ready = threading.Event()
        self._thread_ready = ready
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("sink did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._client, cm.HOST, self.port))
        self._thread_ready.set()
        self.loop.run_forever()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(b"220 sink ESMTP\r\n")
            while True:
                # readline returns when the whole line is in; the MAIL command is one small segment on
                # loopback, so the line's arrival is within microseconds of its first byte.
                line = await r.readline()
                t = time.perf_counter()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"MAIL":
                    m = self._FROM.match(line)
                    if m:
                        with self.cond:
                            self.arrivals.setdefault(int(m.group(1)), t)
                            self.cond.notify_all()
                    w.write(b"250 ok\r\n")
                elif verb in (b"EHLO", b"HELO"):
                    w.write(b"250-sink\r\n250 8BITMIME\r\n" if verb == b"EHLO" else b"250 sink\r\n")
                elif verb == b"DATA":
                    w.write(b"354 go\r\n")
                    await w.drain()
                    while (ln := await r.readline()) and ln not in (b".\r\n", b".\n"):
                        pass
                    w.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    w.write(b"221 bye\r\n")
                    await w.drain()
                    return
                else:  # RCPT, RSET, NOOP, ...
                    w.write(b"250 ok\r\n")
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    def wait(self, n: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while n not in self.arrivals:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.arrivals[n]

    def stop(self) -> None:
        def _close() -> None:
            if self._server is not None:
                self._server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(_close)
        self._thread.join(5)


def bench_wakeup(tmp: Path, count: int) -> tuple[list[float], int]:
    spool, run = tmp / "wk-spool", tmp / "wk-run"
    spool.mkdir()
    port = cm.free_port()
    sink = TimestampSink()
    missing = 0
    lat: list[float] = []
    try:
        args = cm.relay_args(port, spool, "--forward-to", f"{cm.HOST}:{sink.port}", "--poll", "60",
                             "--run-dir", str(run))  # fmt: skip
        relay = cm.start_listening(args, port, tmp / "wakeup.log")
        try:
            time.sleep(2.0)  # bus, notify, forward up
            store = SpoolStore(spool)
            content = (b"From: <a@example.com>\r\nTo: <b@example.net>\r\nSubject: wake\r\n\r\n"
                       + (b"0123456789" * 7 + b"\r\n") * 14)  # fmt: skip
            for n in range(count + 1):  # n = 0: warm-up, not counted
                env = Envelope(from_address=f"wake-{n}@example.com", to_remote=("b@example.net",),
                               client="127.0.0.1")  # fmt: skip
                store.store_message(env, content)
                t_commit = time.perf_counter()
                t_arr = sink.wait(n, 10.0)
                if t_arr is None:
                    missing += 1
                elif n > 0:
                    lat.append(t_arr - t_commit)
                time.sleep(random.uniform(0.05, 0.15))
            if missing:
                print(f"  relay log tail: {relay.log_tail(15)}")
                print(f"  spool: {sorted(p.name for p in spool.iterdir())[:6]}")
        finally:
            relay.stop()
    finally:
        sink.stop()
    return lat, missing


# ---- 3. scaling ---------------------------------------------------------------------------------
def store_cell(tmp: Path, n: int, opts: argparse.Namespace) -> tuple[float, str]:
    spool, run = tmp / f"st{n}-spool", tmp / f"st{n}-run"
    spool.mkdir()
    port = cm.free_port()
    args = cm.relay_args(port, spool, "--workers", f"smtp={n}", "--run-dir", str(run))
    relay = cm.start_listening(args, port, tmp / f"store{n}.log")
    try:
        time.sleep(1.5)
        procs = len(role_pids(relay.pid, "smtp"))
        secs, rc, err = cm.run_smtp_source(port, sessions=opts.sessions, messages=opts.messages,
                                           size=opts.size, timeout=opts.timeout)  # fmt: skip
    finally:
        relay.stop()
    stored = cm.spool_backlog(spool)
    shutil.rmtree(spool, ignore_errors=True)
    note = f"smtp procs={procs} stored={stored}" + ("" if rc == 0 else f" rc={rc} {err[-100:]}")
    return (opts.messages / secs if rc == 0 else float("nan")), note


def forward_cell(tmp: Path, n: int, opts: argparse.Namespace) -> tuple[float, str]:
    spool, run = tmp / f"fw{n}-spool", tmp / f"fw{n}-run"
    spool.mkdir()
    port, sink_port = cm.free_port(), cm.free_port()
    sink = cm.CountingSink(sink_port)
    note = ""
    rate = float("nan")
    try:
        args = cm.relay_args(port, spool, "--forward-to", f"{cm.HOST}:{sink_port}", "--poll", "0",
                             "--workers", f"smtp=1,forward={n}", "--run-dir", str(run))  # fmt: skip
        relay = cm.start_listening(args, port, tmp / f"forward{n}.log")
        try:
            time.sleep(2.0)
            procs = len(role_pids(relay.pid, "forward"))
            t0 = time.perf_counter()
            secs, rc, err = cm.run_smtp_source(port, sessions=opts.sessions, messages=opts.messages,
                                               size=opts.size, timeout=opts.timeout)  # fmt: skip
            deadline = time.monotonic() + opts.timeout
            done = False
            while time.monotonic() < deadline and relay.alive():
                if sink.messages >= opts.messages and cm.spool_backlog(spool) == 0:
                    done = True
                    break
                time.sleep(0.01)
            e2e = time.perf_counter() - t0
            note = (f"forward procs={procs} intake={opts.messages / secs:.0f}/s delivered={sink.messages} "
                    f"left={cm.spool_backlog(spool)}")  # fmt: skip
            if rc != 0:
                note += f" rc={rc} {err[-100:]}"
            if done and rc == 0:
                rate = opts.messages / e2e
        finally:
            relay.stop()
    finally:
        sink.stop()
        shutil.rmtree(spool, ignore_errors=True)
    return rate, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--wakeups", type=int, default=50)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--parts", default="restart,wakeup,scaling")
    ap.add_argument("--quick", action="store_true", help="1 restart, 10 wake-ups, 500 messages")
    opts = ap.parse_args()
    if opts.quick:
        opts.restarts, opts.wakeups, opts.messages = 1, 10, 500
    parts = set(opts.parts.split(","))
    print(f"supervisor bench: {cm.machine_line()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ersv-", dir="/tmp"))  # short: ipc paths live under it
    try:
        if "restart" in parts:
            print("\n1. circusctl restart smtp under a connection every ~10 ms", flush=True)
            rs = bench_restart(tmp, opts.restarts)
            rows = [[i + 1, r["attempts"], r["refused"], r["dropped"], f"{r['gap'] * 1000:.0f}",
                     f"{r['between'] * 1000:.0f}", f"{r['base_median'] * 1000:.1f}", f"{r['ctl_s'] * 1000:.0f}",
                     f"{r['first_new'] * 1000:.0f}"] for i, r in enumerate(rs)]  # fmt: skip
            print(cm.table(["restart", "attempts", "refused", "dropped", "gap ms (max greeting wait)",
                            "max between greetings ms", "normal greeting ms", "circusctl ms",
                            "restart->1st new-pid greeting ms"], rows))  # fmt: skip
        if "wakeup" in parts:
            print(f"\n2. wake-up latency, notify path (--poll 60), {opts.wakeups} commits", flush=True)
            lat, missing = bench_wakeup(tmp, opts.wakeups)
            s = sorted(lat)
            if s:
                print(f"  commit -> MAIL at sink: n={len(s)} median {statistics.median(s) * 1000:.1f} ms, "
                      f"p90 {cm.percentile(s, 90) * 1000:.1f} ms, min {s[0] * 1000:.1f}, max {s[-1] * 1000:.1f} ms; "
                      f"missing (>10 s) {missing}")  # fmt: skip
            else:
                print(f"  no message arrived (missing {missing})")
        if "scaling" in parts:
            print(
                f"\n3. scaling: smtp-source -s {opts.sessions} -m {opts.messages} -l {opts.size}", flush=True
            )
            rows = []
            base = None
            for n in (1, 2, 4):
                rate, note = store_cell(tmp, n, opts)
                base = rate if n == 1 else base
                rows.append(
                    [f"store-only smtp={n}", f"{rate:.0f}", f"{rate / base:.2f}" if base else "-", note]
                )
                print(f"  {rows[-1]}", flush=True)
            base = None
            for n in (1, 2, 4):
                rate, note = forward_cell(tmp, n, opts)
                base = rate if n == 1 else base
                rows.append([f"poll0 smtp=1 forward={n} (e2e)", f"{rate:.0f}", f"{rate / base:.2f}" if base else "-",
                             note])  # fmt: skip
                print(f"  {rows[-1]}", flush=True)
            print(cm.table(["cell", "msgs/s", "vs 1 proc", "notes"], rows))
        print(f"\ndone: {cm.machine_line()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
