"""CPU per message of each role of the supervised relay, and (optionally) a py-spy profile of each.

``python bench/roles.py [--messages 2000] [--user daemon] [--forward] [--py-spy DIR] [--perf DIR]``

Starts the relay in the production start (as root, default ``--user daemon``;
``--forward`` adds ``--forward-to`` a Postfix ``smtp-sink -c`` and ``--poll 1``),
sends ``--messages`` with ``smtp-source -s 20 -l 10240``, waits (with
``--forward``) until the sink has counted them all, and prints the CPU each
process of the relay's tree spent (utime+stime from /proc/<pid>/stat, before
and after), per role, in ms per message, and where each process's main thread
(a role's event loop) spent the run's wall time, from its schedstat: on a CPU,
runnable but waiting in the run queue (other processes had the cores: the
machine's load), or asleep (waiting for its own I/O, a lock, the GIL, or for
work).  With ``--py-spy DIR`` (the
``profile`` extra: ``pip install -e .[profile]``) each role is sampled with
``py-spy record --gil --format raw`` (samples of the thread holding the GIL:
Python CPU, not waits) for the run and the top functions by own time are
printed.  With ``--perf DIR`` each role is recorded with ``perf record`` (on-CPU samples,
kernel and user space: where the system share of a role's CPU goes) and the top symbols
are printed.  Everything binds 127.0.0.1; every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as cm


def top_frames(raw: Path, n: int) -> list[tuple[str, float]]:
    """From a py-spy raw (collapsed stacks) file: the ``n`` frames with the most own samples, as shares."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        own[frames[-1]] += int(count)
        total += int(count)
    return [(f, c / total) for f, c in own.most_common(n)] if total else []


def _record(
    command: list[str], directory: Path, suffix: str, procs: list[int], names: dict[int, str]
) -> list[tuple[str, int, subprocess.Popen[bytes], Path]]:
    """One recorder (``command`` with ``{pid}`` and ``{out}`` filled in) per process, each writing
    ``<directory>/<role>-<pid><suffix>``; stopped by SIGINT, which makes both py-spy and perf write."""
    directory.mkdir(parents=True, exist_ok=True)
    started = []
    for pid in procs:
        out = directory / f"{names[pid]}-{pid}{suffix}"
        argv = [a.format(pid=pid, out=out) for a in command]
        rec = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started.append((names[pid], pid, rec, out))
    return started


def main() -> int:
    ap = argparse.ArgumentParser(description="CPU per message of each role of the supervised relay")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10240)
    ap.add_argument("--user", default="daemon")
    ap.add_argument("--forward", action="store_true", help="store and forward (--forward-to sink --poll 1)")
    ap.add_argument("--py-spy", metavar="DIR", help="record each role with py-spy into DIR")
    ap.add_argument("--cprofile", metavar="DIR",
                    help="profile each role's event loop thread by CPU time (cProfile) into DIR")  # fmt: skip
    ap.add_argument("--perf", metavar="DIR",
                    help="record each role with perf (kernel and user stacks) into DIR")  # fmt: skip
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("extra", nargs="*", help="more relay options (after --)")
    opts = ap.parse_args()

    print(f"roles bench: {cm.machine_line()}")
    if opts.cprofile:
        Path(opts.cprofile).mkdir(parents=True, exist_ok=True)
        Path(opts.cprofile).chmod(0o1777)  # the roles write their profiles as --user
        os.environ["EMAILRELAY_CPROFILE"] = str(Path(opts.cprofile).resolve())
    with tempfile.TemporaryDirectory(prefix="emailrelay-bench-") as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        spool = tmp / "spool"
        spool.mkdir()
        port = cm.free_port()
        sink = cm.CountingSink(cm.free_port()) if opts.forward else None
        extra = list(opts.extra)
        if sink is not None:
            extra += ["--forward-to", f"{cm.HOST}:{sink.port}", "--poll", "1"]
        spies: list[tuple[str, int, subprocess.Popen[bytes], Path]] = []
        try:
            relay = cm.start_listening(
                cm.relay_args(port, spool, *extra, user=opts.user), port, tmp / "relay.log"
            )
            try:
                time.sleep(1.5)
                procs = cm.tree_procs(relay.pid)
                names = {p: cm.proc_role(p) for p in procs}
                before = {p: cm.proc_user_system(p) for p in procs}
                sched0 = {p: cm.thread_sched(p) for p in procs}
                if opts.py_spy:
                    spy = [str(Path(cm.PYTHON).parent / "py-spy"), "record", "--format", "raw", "--rate", "200",
                           "--gil", "--nonblocking", "--pid", "{pid}", "--output", "{out}"]  # fmt: skip
                    spies += _record(spy, Path(opts.py_spy), ".txt", procs, names)
                if opts.perf:
                    perf = ["perf", "record", "-q", "-F", "999", "-p", "{pid}", "-o", "{out}"]
                    spies += _record(perf, Path(opts.perf), ".perf", procs, names)
                if spies:
                    time.sleep(1.0)
                t0 = time.perf_counter()
                secs, rc, err = cm.run_smtp_source(
                    port, sessions=opts.sessions, messages=opts.messages, size=opts.size, timeout=opts.timeout
                )
                if sink is not None:
                    deadline = time.monotonic() + opts.timeout
                    while time.monotonic() < deadline and not (
                        sink.messages >= opts.messages and cm.spool_backlog(spool) == 0
                    ):
                        time.sleep(0.01)
                wall = time.perf_counter() - t0
                after = {p: cm.proc_user_system(p) for p in procs}
                sched1 = {p: cm.thread_sched(p) for p in procs}
            finally:
                for _, _, spy, _ in spies:
                    spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                for _, _, spy, _ in spies:
                    try:
                        spy.wait(30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                relay.stop()
        finally:
            if sink is not None:
                sink.stop()
        print(f"{opts.messages} messages, smtp-source rc={rc} {err[-200:] if rc else ''} in {secs:.1f}s, "
              f"total {wall:.1f}s ({opts.messages / wall:.0f} msgs/s)"
              + (f", delivered {sink.messages}" if sink is not None else ""))  # fmt: skip
        rows = []
        total = total_system = 0.0
        for pid in procs:
            user, system = (
                (b - a) * 1000 / opts.messages for a, b in zip(before[pid], after[pid], strict=True)
            )
            ms = user + system
            total += ms
            total_system += system
            oncpu, runq = (b - a for a, b in zip(sched0[pid], sched1[pid], strict=True))
            rows.append([names[pid], pid, f"{ms:.2f}", f"{system:.2f}", f"{oncpu / wall:.0%}", f"{runq / wall:.0%}",
                         f"{max(0.0, wall - oncpu - runq) / wall:.0%}"])  # fmt: skip
        rows.append(["total", "", f"{total:.2f}", f"{total_system:.2f}", "", "", ""])
        headers = [
            "process",
            "pid",
            "cpu ms/msg",
            "of it system",
            "loop on cpu",
            "loop in run queue",
            "loop asleep",
        ]
        print(cm.table(headers, rows))
        for role, pid, _, raw in spies:
            if raw.suffix == ".perf" and raw.exists():
                print(f"\n{role} ({pid}): top own samples (perf, kernel and user)")
                report = subprocess.run(
                    ["perf", "report", "-i", str(raw), "--no-children", "--sort", "dso,sym", "--stdio",
                     "--percent-limit", "1"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                lines = [ln for ln in report.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
                for line in lines[: opts.top]:
                    print(f"  {line.strip()}")
            elif raw.exists():
                print(f"\n{role} ({pid}): top own time")
                for frame, share in top_frames(raw, opts.top):
                    print(f"  {share * 100:5.1f}%  {frame}")
    if opts.cprofile:
        for prof in sorted(Path(opts.cprofile).glob("*.prof")):
            print(f"\n{prof.name}: top own CPU time of the event loop thread")
            stats = pstats.Stats(str(prof))
            total = stats.total_tt or 1.0  # type: ignore[attr-defined]
            rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
            for (file, line, func), (_, calls, tt, _, _) in rows[: opts.top]:
                print(f"  {tt * 1000 / opts.messages:6.3f} ms/msg {tt / total * 100:5.1f}%  {calls:8d}  "
                      f"{Path(file).name}:{line}({func})")  # fmt: skip
    return 0


if __name__ == "__main__":
    if shutil.which("smtp-source") is None and not Path("/usr/sbin/smtp-source").exists():
        sys.exit("bench: Postfix smtp-source not found")
    sys.exit(main())
