"""Every cell of issue 20 in ONE run: throughput ratios, CPU ms per message, PSS, one-session latency.

``python bench/cells.py [--messages 2000] [--latency 300] [--user daemon]``

All cells run one after another on the same machine state, each against a
fresh server and (for store and forward) a fresh Postfix ``smtp-sink -c``;
before each, untimed, ``sync`` writes back what earlier cells left dirty and
the run waits ``--settle`` seconds (below, "Cells are independent"):

store only (``smtp-source -s 20 -m N -l 10240``, one connection per message):
  ours          the supervised relay in the production start (started as root, ``--user daemon``)
  ours 1proc    the same with ``--single-process``
  upstream      E-MailRelay (``$EMAILRELAY_ORACLE_BIN``, when set), no fsync
  postfix       a private Postfix (bench/forward.py's), ``defer_transports = smtp``: stores, never delivers
  aiosmtpd      bench/aiosmtpd_store.py, no fsync
store and forward (to the sink, end to end: until the sink counted every message and the queue is empty):
  ours          ``--forward-to SINK --poll 1`` (one forward worker)
  ours w=2      the same with ``--workers forward=2``
  ours 1proc    the same with ``--single-process``
  upstream      ``--forward-to SINK --poll 1`` (when ``$EMAILRELAY_ORACLE_BIN`` is set)
  postfix       relayhost = the sink
one session (smtplib, ``--latency`` messages over one connection): ours ``--immediate`` (supervised),
ours ``--poll 1`` and Postfix (their 250 after storing).

CPU ms/msg = CPU of the server's whole process tree during the run / messages:
utime+stime+cutime+cstime of every live process of the tree (from
/proc/<pid>/stat) after the run minus before (cutime: processes that exited
and were reaped inside the tree, as Postfix's smtpd and cleanup do).  This is
the steadier figure on a shared machine; msgs/s ratios are taken within the
run.  Peak PSS is sampled every second during the run; idle PSS just before
it.  Prints figures only; never asserts timings.

The spools and Postfix's queue go under ``$TMPDIR`` (tempfile's default):
on the development VM a file creation in /tmp cost 0.6-0.9 ms of kernel CPU
(ext4 skipping the inodes test runs there freed in the last minutes, see
below) against 0.02 ms in /var/tmp, which our two files a message pay twice
and Postfix's one once; run with ``TMPDIR=/var/tmp`` there.

Cells are independent: on ext4 without a journal (the development VM's root
file system; ``/proc/fs/jbd2`` is empty there) a new inode skips every inode
of its group freed in the last 60 s, 360 s while that inode's table block is
dirty (``recently_deleted()`` in fs/ext4/ialloc.c, kernel 6.x), one buffer
lookup each.  Every cell before deletes thousands of files (its spool, or
what it forwarded), so a cell that started at once paid for them in kernel
CPU on each file it created: ``--immediate``'s one-session median was
2.66 ms as the ninth cell of a run and 1.65 ms on its own, its cell 388
against 483 msgs/s.  So each cell starts ``--settle`` seconds (default 61)
after the ``sync``; what a cell deletes itself still costs it, as for
Postfix (one file a message against our two).

The relay's package is byte-compiled first (``python -m compileall``, see
``common.compile_relay``): the roles then start from ``.pyc`` files, as an
installed relay does, not from source compiled at each start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as cm
import forward as fw


@dataclass
class Cell:
    kind: str  # "store" or "e2e"
    name: str
    messages: int
    seconds: float = float("nan")
    cpu: float = float("nan")
    idle_pss: int = 0
    peak_pss: int = 0
    procs: int = 0
    note: str = ""
    latency: list[float] = field(default_factory=list)

    def rate(self) -> float:
        return self.messages / self.seconds if not self.note and self.seconds > 0 else float("nan")

    def cpu_ms(self) -> float:
        return self.cpu * 1000 / self.messages


def tree_cpu_reaped(pid: int) -> float:
    """CPU seconds of the tree, children already reaped inside it included (cutime+cstime)."""
    total = 0.0
    for p in cm.tree_procs(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def load(cell: Cell, pid: int, port: int, opts: argparse.Namespace, done: Callable[[], bool] | None) -> None:
    """smtp-source into ``port`` (then wait for ``done``), measuring the tree of ``pid``."""
    time.sleep(1.5)  # every role up
    cell.idle_pss = cm.tree_pss(pid)
    cpu0 = tree_cpu_reaped(pid)
    with cm.PeakRss(pid, interval=0.05, pss_every=20) as rss:
        t0 = time.perf_counter()
        _, rc, err = cm.run_smtp_source(
            port, sessions=opts.sessions, messages=opts.messages, size=opts.size, timeout=opts.timeout
        )
        if rc != 0:
            cell.note = f"smtp-source rc={rc}: {err.splitlines()[-1] if err else ''}"
        deadline = time.monotonic() + opts.timeout
        while done is not None and not done():
            if time.monotonic() > deadline:
                cell.note += " incomplete"
                break
            time.sleep(0.01)
        cell.seconds = time.perf_counter() - t0
    cell.cpu = tree_cpu_reaped(pid) - cpu0
    cell.peak_pss, cell.procs = rss.peak_pss, rss.procs


def latency(cell: Cell, port: int, opts: argparse.Namespace) -> None:
    times, note = fw.latency_run(port, opts.latency, opts.size, opts.timeout)
    cell.latency = times
    if note:
        cell.note = (cell.note + " " + note).strip()


def settle(opts: argparse.Namespace) -> None:
    """Before each cell, untimed: write back what earlier cells left dirty, then wait until no inode
    they freed is still "recently deleted" for ext4 (see the module docstring)."""
    os.sync()
    time.sleep(opts.settle)


def server_cell(kind: str, name: str, args: list[str], tmp: Path, opts: argparse.Namespace, *,
                sink: cm.CountingSink | None = None, spool: Path | None = None,
                lat: bool = False) -> Cell:  # fmt: skip
    cell = Cell(kind, name, opts.messages)
    print(f"  {kind} {name}: ...", flush=True)
    settle(opts)
    port = int(args[args.index("--port") + 1]) if "--port" in args else int(args[-1])
    try:
        server = cm.start_listening(args, port, tmp / f"{kind}-{name.replace(' ', '_')}.log")
    except (OSError, RuntimeError, TimeoutError) as exc:
        cell.note = f"not run: {exc}"
        return cell
    try:
        done = None
        if sink is not None and spool is not None:
            base = sink.messages

            def done() -> bool:
                return sink.messages - base >= opts.messages and cm.spool_backlog(spool) == 0

        load(cell, server.pid, port, opts, done)
        if lat:
            latency(cell, port, opts)
    finally:
        server.stop()
    return cell


def relay(port: int, spool: Path, opts: argparse.Namespace, *extra: str) -> list[str]:
    return cm.relay_args(port, spool, *extra, user=opts.user)


def upstream(port: int, spool: Path, *extra: str) -> list[str]:
    return [cm.oracle_program(), "--no-daemon", "--log", "--no-syslog", "--port", str(port), "--interface", cm.HOST,
            "--spool-dir", str(spool), *extra]  # fmt: skip


def postfix_cell(kind: str, tmp: Path, opts: argparse.Namespace, *, lat: bool) -> Cell:
    cell = Cell(kind, "postfix", opts.messages)
    print(f"  {kind} postfix: ...", flush=True)
    settle(opts)
    base = tmp / f"postfix-{kind}"
    port = cm.free_port()
    sink = cm.CountingSink(cm.free_port())
    pf: fw.PrivatePostfix | None = None
    try:
        try:
            pf = fw.PrivatePostfix(base, port, sink.port)
            if kind == "store":  # queued and kept: qmgr defers every message to the smtp transport
                with open(pf.etc / "main.cf", "a") as f:
                    f.write("defer_transports = smtp\n")
            pf.start()
        except (OSError, RuntimeError) as exc:
            cell.note = f"private Postfix not run: {exc}"
            return cell
        assert pf.master_pid is not None
        queue = pf.queue
        start_count = sink.messages

        def done() -> bool:
            if kind == "store":
                return fw.postfix_queue_count(queue) - sum(1 for _ in (queue / "deferred").rglob("*")
                                                           if _.is_file()) == 0  # fmt: skip
            return sink.messages - start_count >= opts.messages and fw.postfix_queue_count(queue) == 0

        load(cell, pf.master_pid, port, opts, done)
        if lat:
            latency(cell, port, opts)
    finally:
        if pf is not None:
            pf.stop()
        sink.stop()
    return cell


def main() -> int:
    ap = argparse.ArgumentParser(description="issue 20: every cell in one run")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--latency", type=int, default=300, help="messages in the one-session runs (0: skip)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--user", default="daemon", help="our relay's --user (the production start: daemon)")
    ap.add_argument("--settle", type=float, default=61.0,
                    help="seconds between cells, after a sync (ext4 without a journal; 0: none)")  # fmt: skip
    ap.add_argument("--only", default="", help="comma-separated cell names to run (default: all)")
    opts = ap.parse_args()
    oracle = cm.oracle_program()
    aiosmtpd_script = str(Path(__file__).with_name("aiosmtpd_store.py"))
    only = set(filter(None, opts.only.split(",")))

    print(f"cells bench: {cm.machine_line()}")
    print(cm.compile_relay())
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="emailrelay-bench-") as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)  # --user and Postfix's unprivileged daemons reach their directories

        def spool(name: str) -> Path:
            d = tmp / f"spool-{name.replace(' ', '_').replace('=', '')}-{len(cells)}"
            d.mkdir()
            return d

        def wanted(name: str) -> bool:
            return not only or name in only

        # store only
        store = [("ours", []), ("ours 1proc", ["--single-process"])]
        for name, extra in store:
            if wanted(f"store {name}"):
                port = cm.free_port()
                cells.append(server_cell("store", name, relay(port, spool(name), opts, *extra), tmp, opts))
        if oracle and wanted("store upstream"):
            port = cm.free_port()
            cells.append(server_cell("store", "upstream", upstream(port, spool("upstream")), tmp, opts))
        if wanted("store postfix"):
            cells.append(postfix_cell("store", tmp, opts, lat=False))
        if wanted("store aiosmtpd"):
            port = cm.free_port()
            args = [cm.PYTHON, aiosmtpd_script, "--port", str(port), "--spool-dir", str(spool("aiosmtpd"))]
            cells.append(server_cell("store", "aiosmtpd", args, tmp, opts))
        # store and forward
        e2e: list[tuple[str, list[str], bool]] = [
            ("ours", ["--poll", "1"], True),
            ("ours w=2", ["--poll", "1", "--workers", "forward=2"], False),
            ("ours 1proc", ["--single-process", "--poll", "1"], False),
            ("ours immediate", ["--immediate"], True),
        ]
        for name, extra, lat in e2e:
            if not wanted(f"e2e {name}"):
                continue
            sink = cm.CountingSink(cm.free_port())
            try:
                port, d = cm.free_port(), spool(name)
                args = relay(port, d, opts, "--forward-to", f"{cm.HOST}:{sink.port}", *extra)
                cells.append(server_cell("e2e", name, args, tmp, opts, sink=sink, spool=d,
                                         lat=lat and opts.latency > 0))  # fmt: skip
            finally:
                sink.stop()
        if oracle and wanted("e2e upstream"):
            sink = cm.CountingSink(cm.free_port())
            try:
                port, d = cm.free_port(), spool("upstream")
                args = upstream(port, d, "--forward-to", f"{cm.HOST}:{sink.port}", "--poll", "1")
                cells.append(server_cell("e2e", "upstream", args, tmp, opts, sink=sink, spool=d))
            finally:
                sink.stop()
        if wanted("e2e postfix"):
            cells.append(postfix_cell("e2e", tmp, opts, lat=opts.latency > 0))

    print()
    print(f"{opts.messages} messages x {opts.size} bytes, {opts.sessions} sessions, one connection per message; "
          f"ours: --user {opts.user}")  # fmt: skip
    for kind, refs in (("store", ("postfix", "aiosmtpd", "upstream")), ("e2e", ("postfix", "upstream"))):
        group = [c for c in cells if c.kind == kind]
        if not group:
            continue
        ref = {c.name: c for c in group}
        rows = []
        for c in group:
            ratios = [
                f"{c.rate() / ref[r].rate():.2f}" if r in ref and ref[r].rate() > 0 else "-" for r in refs
            ]
            cpu_ratio = (
                f"{c.cpu / ref['postfix'].cpu:.2f}" if "postfix" in ref and ref["postfix"].cpu > 0 else "-"
            )
            rows.append([c.name, f"{c.rate():.0f}", *ratios, f"{c.cpu_ms():.2f}", cpu_ratio, cm.mb(c.idle_pss),
                         cm.mb(c.peak_pss), c.procs, c.note or "ok"])  # fmt: skip
        print(f"\n{kind}:")
        print(cm.table(["cell", "msgs/s", *(f"vs {r}" for r in refs), "cpu ms/msg", "cpu vs postfix",
                        "idle PSS MB", "peak PSS MB", "procs", "status"], rows))  # fmt: skip
    lat = [c for c in cells if c.latency]
    if lat:
        print(
            f"\none session ({opts.latency} messages over one connection, smtplib send_message round trip):"
        )
        rows = []
        for c in lat:
            v = sorted(c.latency)
            rows.append([f"{c.kind} {c.name}", len(v), f"{statistics.median(v) * 1000:.2f}",
                         f"{cm.percentile(v, 99) * 1000:.2f}"])  # fmt: skip
        print(cm.table(["cell", "n", "median ms", "p99 ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
