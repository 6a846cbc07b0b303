"""Store-only throughput: Postfix smtp-source into three servers, plus an idle-connection test.

``python bench/store.py [--messages 20000] [--sessions 20] [--size 10240] [--idle 1000] [--quick]``

Cells (one run, same machine, one after another):
  emailrelay  -- our relay, storing with fsync (its default), no forwarding;
  aiosmtpd    -- bench/aiosmtpd_store.py: minimal aiosmtpd server writing two files per
                 message WITHOUT fsync;
  smtp-sink   -- Postfix smtp-sink, which discards everything: the ceiling.

For each: msgs/s = messages / wall time of smtp-source (one connection per message,
``-s`` parallel sessions), peak RSS of the server process tree (psutil, sampled every
50 ms, children included), server CPU seconds.  Then ``--idle`` connections are held
open to a fresh relay: RSS after 2 s, and the time a fresh client waits for the
greeting and the EHLO reply.  Prints figures only; never asserts timings.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as cm


@dataclass
class Result:
    name: str
    seconds: float
    rc: int
    peak_rss: int
    peak_pss: int
    procs: int
    cpu: float
    stored: int | None
    note: str = ""

    def rate(self, messages: int) -> float:
        return messages / self.seconds if self.seconds > 0 and self.rc == 0 else float("nan")


def count_envelopes(spool: Path) -> int:
    return sum(1 for p in spool.iterdir() if p.name.endswith(".envelope"))


def run_cell(
    name: str, args: list[str], port: int, spool: Path | None, tmp: Path, opts: argparse.Namespace
) -> Result:
    log = tmp / f"{name}.log"
    print(f"  {name}: smtp-source -s {opts.sessions} -m {opts.messages} -l {opts.size} ...", flush=True)
    server = cm.start_listening(args, port, log)
    try:
        time.sleep(1.0)  # let every role settle after the first greeting
        cpu0 = cm.tree_cpu(server.pid)
        with cm.PeakRss(server.pid) as rss:
            secs, rc, err = cm.run_smtp_source(
                port, sessions=opts.sessions, messages=opts.messages, size=opts.size, timeout=opts.timeout
            )
        cpu = cm.tree_cpu(server.pid) - cpu0
        alive = server.alive()
    finally:
        server.stop()
    stored = count_envelopes(spool) if spool is not None else None
    note = "" if rc == 0 else f"smtp-source rc={rc}: {err.splitlines()[-1] if err else ''}"
    if not alive:
        note += " server died: " + server.log_tail(3)
    return Result(name, secs, rc, rss.peak, rss.peak_pss, rss.procs, cpu, stored, note.strip())


def idle_test(name: str, args: list[str], port: int, tmp: Path, count: int) -> str:
    """Hold ``count`` idle connections; RSS after 2 s; time for a fresh client to be served."""
    server = cm.start_listening(args, port, tmp / f"idle-{name}.log")
    socks: list[socket.socket] = []
    try:
        time.sleep(1.0)
        base, base_pss = cm.tree_rss(server.pid), cm.tree_pss(server.pid)
        t0 = time.perf_counter()
        failed = 0
        for _ in range(count):
            try:
                socks.append(socket.create_connection((cm.HOST, port), timeout=10))
            except OSError:
                failed += 1
        opened = time.perf_counter() - t0
        time.sleep(2.0)
        rss, pss = cm.tree_rss(server.pid), cm.tree_pss(server.pid)
        greeted = 0
        for s in socks:
            s.setblocking(False)
            with contextlib.suppress(OSError):
                if s.recv(64, socket.MSG_PEEK).startswith(b"220"):
                    greeted += 1
        try:
            greet, ehlo = cm.greeting_time(port)
            fresh = f"fresh client: greeting {greet * 1000:.1f} ms, EHLO reply {ehlo * 1000:.1f} ms"
        except (OSError, RuntimeError) as exc:
            fresh = f"fresh client FAILED: {exc}"
        per = (rss - base) / max(1, len(socks)) / 1024
        return (
            f"  {name}: {len(socks)} idle connections open ({failed} failed, opened in {opened:.2f}s, "
            f"{greeted} greeted); RSS {cm.mb(base)} MB -> {cm.mb(rss)} MB "
            f"(+{per:.1f} KB/connection), PSS {cm.mb(base_pss)} MB -> {cm.mb(pss)} MB; {fresh}"
        )
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description="store-only throughput: emailrelay vs aiosmtpd vs smtp-sink")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10240, help="payload bytes per message (smtp-source -l)")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections for the idle test (0: skip)")
    ap.add_argument("--timeout", type=float, default=600.0, help="limit per smtp-source run, seconds")
    ap.add_argument("--cells", default="relay,relay1,aiosmtpd,sink",
                    help="which servers, in this order: relay (supervised, the default mode), "
                         "relay1 (--single-process), aiosmtpd, sink")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke run: 2000 messages, 200 idle connections")
    ap.add_argument("--user", default="root",
                    help="the relay's --user (started as root, any other user switches ids: the production start)")  # fmt: skip
    opts = ap.parse_args()
    if opts.quick:
        opts.messages, opts.idle = min(opts.messages, 2000), min(opts.idle, 200)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = opts.idle + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    print(f"store bench: {cm.machine_line()}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="emailrelay-bench-") as tmpname:
        tmp = Path(tmpname)
        if opts.user != "root":
            tmp.chmod(0o755)  # the spools below must be reachable by --user
        aiosmtpd_script = str(Path(__file__).with_name("aiosmtpd_store.py"))
        for cell in opts.cells.split(","):
            port = cm.free_port()
            spool: Path | None = tmp / f"{cell}-spool"
            assert spool is not None
            spool.mkdir()
            if cell == "relay":
                name, args = "emailrelay (fsync)", cm.relay_args(port, spool, user=opts.user)
            elif cell == "relay1":
                name, args = (
                    "emailrelay --single-process",
                    cm.relay_args(port, spool, "--single-process", user=opts.user),
                )
            elif cell == "aiosmtpd":
                name = "aiosmtpd (no fsync)"
                args = [cm.PYTHON, aiosmtpd_script, "--port", str(port), "--spool-dir", str(spool)]
            elif cell == "sink":
                name, spool = "smtp-sink (ceiling)", None
                args = [cm.tool("smtp-sink"), "-u", "root", f"{cm.HOST}:{port}", "256"]
            else:
                raise SystemExit(f"bench: unknown cell {cell!r} (relay, relay1, aiosmtpd, sink)")
            results.append(run_cell(name, args, port, spool, tmp, opts))
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)  # free the disk before the next cell

        print()
        print(
            f"{opts.messages} messages x {opts.size} bytes, {opts.sessions} sessions, one connection per message"
        )
        rows = [
            [r.name, f"{r.rate(opts.messages):.0f}", f"{r.seconds:.1f}", cm.mb(r.peak_rss), cm.mb(r.peak_pss), r.procs, f"{r.cpu:.1f}",
             "-" if r.stored is None else r.stored, r.note or "ok"]
            for r in results
        ]  # fmt: skip
        print(
            cm.table(
                [
                    "server",
                    "msgs/s",
                    "wall s",
                    "peak RSS MB",
                    "peak PSS MB",
                    "procs",
                    "cpu s",
                    "stored",
                    "status",
                ],
                rows,
            )
        )
        aio = next((r for r in results if r.name.startswith("aiosmtpd")), None)
        for ours in (r for r in results if r.name.startswith("emailrelay")):
            if aio is not None and ours.rc == 0 and aio.rc == 0:
                print(f"ratio {ours.name} / aiosmtpd: throughput "
                      f"{ours.rate(opts.messages) / aio.rate(opts.messages):.2f}, "
                      f"peak RSS {ours.peak_rss / max(1, aio.peak_rss):.2f}, "
                      f"cpu {ours.cpu / max(1e-9, aio.cpu):.2f}")  # fmt: skip

        if opts.idle > 0:
            print()
            print(f"idle connections ({opts.idle}, held 2 s):")
            ispool = tmp / "idle-spool"
            ispool.mkdir()
            cells = opts.cells.split(",")
            if "relay" in cells:
                port = cm.free_port()
                print(idle_test("emailrelay", cm.relay_args(port, ispool), port, tmp, opts.idle), flush=True)
            if "relay1" in cells:
                port = cm.free_port()
                args1 = cm.relay_args(port, ispool, "--single-process")
                print(idle_test("emailrelay --single-process", args1, port, tmp, opts.idle), flush=True)
            if "aiosmtpd" in cells:
                port = cm.free_port()
                aargs = [cm.PYTHON, aiosmtpd_script, "--port", str(port), "--spool-dir", str(ispool)]
                print(idle_test("aiosmtpd", aargs, port, tmp, opts.idle), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
