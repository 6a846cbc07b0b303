"""Start-up (issue 17 item 2): time from spawning the relay to its pid file's appearance.

``python bench/startup.py [--runs 15] [--user daemon]``

Each cell starts a fresh relay ``--runs`` times (``--no-daemon --port P --interface
127.0.0.1 --spool-dir S --pid-file F --no-syslog --user U``, started as root: the production
start), polls for the pid file every half millisecond from just before the spawn, and stops
the relay by its pid once the file is there (so each run also pays nothing for the one
before).  Cells: ours supervised, ours ``--single-process``, and upstream E-MailRelay
(``$EMAILRELAY_ORACLE_BIN``, its directory or its program, when set).  Printed: median, min
and max in ms, and each median's ratio to upstream's.  The pid file appears only once the
process it names has its final identity (tests/differential/test_identity.py), so this is
also the time to a relay that a script may use.  Prints figures only; never asserts timings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as cm


def time_to_pid_file(program: str, extra: list[str], user: str, tmp: Path) -> float:
    """Seconds from spawn to the pid file holding a pid; the relay is stopped afterwards."""
    spool = tmp / "spool"
    spool.mkdir()
    spool.chmod(0o755)  # --user scans it
    pid_file = tmp / "run" / "emailrelay.pid"
    args = [program, "--no-daemon", "--port", str(cm.free_port()), "--interface", cm.HOST,
            "--spool-dir", str(spool), "--pid-file", str(pid_file), "--no-syslog", "--user", user,
            *extra]  # fmt: skip
    start = time.perf_counter()
    relay = cm.Child(args, tmp / "log")
    try:
        deadline = start + 60.0
        while time.perf_counter() < deadline:
            try:
                if pid_file.read_text().endswith("\n"):
                    return time.perf_counter() - start
            except FileNotFoundError:
                pass
            if not relay.alive():
                raise RuntimeError(f"{program} exited with {relay.proc.returncode}: {relay.log_tail(3)}")
            time.sleep(0.0005)
        raise TimeoutError(f"no pid file from {program} after 60 s")
    finally:
        relay.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description="issue 17 item 2: spawn to pid file")
    ap.add_argument("--runs", type=int, default=15, help="starts per cell (default 15)")
    ap.add_argument("--user", default="daemon" if os.geteuid() == 0 else "root",
                    help="--user for every relay (default: daemon when run as root)")  # fmt: skip
    opts = ap.parse_args()
    cells = {"ours": (cm.EMAILRELAY, []), "ours 1proc": (cm.EMAILRELAY, ["--single-process"])}
    if cm.oracle_program():
        cells["upstream"] = (cm.oracle_program(), [])
    times: dict[str, list[float]] = {name: [] for name in cells}
    with tempfile.TemporaryDirectory(prefix="emailrelay-bench-startup-") as top:
        base = Path(top)
        base.chmod(0o755)
        for run in range(opts.runs):  # the cells interleaved, so a burst of load hits all of them
            for name, (program, extra) in cells.items():
                tmp = base / f"{name.replace(' ', '-')}-{run}"
                tmp.mkdir()
                tmp.chmod(0o755)
                times[name].append(time_to_pid_file(program, extra, opts.user, tmp))
    reference = statistics.median(times["upstream"]) if "upstream" in times else None
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"{median / reference:.1f}" if reference else "-"
        rows.append([name, len(values), f"{median * 1000:.1f}", f"{min(values) * 1000:.1f}",
                     f"{max(values) * 1000:.1f}", ratio])  # fmt: skip
    print(f"spawn -> pid file, --user {opts.user}, load average {os.getloadavg()[0]:.1f} at the end")
    print(cm.table(["cell", "runs", "median ms", "min ms", "max ms", "x upstream"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
