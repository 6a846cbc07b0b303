"""Idle memory of each role of the supervised relay: PSS, private memory, shared objects, modules.

``python bench/rolemem.py [--user daemon] [--full] [--modules] [-- more relay options]``

Starts the relay in the production start (as root, default ``--user daemon``,
``--forward-to`` an ``smtp-sink``, ``--poll 1``; ``--full`` adds
``--pop``, ``--admin`` and ``--metrics``), waits until every role is up and
the tree has been idle for ``--idle`` seconds, and prints for every process
of the tree its role, PSS, USS (private clean + dirty), anonymous memory
(the heap: what the process itself allocated, whatever else runs on the
machine; PSS and USS also depend on how many other processes map the same
libraries) and RSS from /proc/<pid>/smaps_rollup and the number of shared objects it maps
(/proc/<pid>/maps), then the sums; with ``--single-process`` the same for
that start, for the ratio issue 20 sets (idle supervised PSS <= 1.5x single
process).  ``--tree DIR`` runs the ``emailrelay`` package of another
checkout (``git archive REV emailrelay | tar -x -C DIR``: before and after a
change) with the venv's interpreter.  ``--modules`` starts it once more with a ``sitecustomize`` audit
hook that records every first import per process (``len(sys.modules)`` at
the end of the start, and how many of them came after the switch to
``--user``, which must be none).  The package it runs (the ``--tree`` copy,
else the checkout's) is byte-compiled first (``python -m compileall``), as an
installed package is: with ``PYTHONDONTWRITEBYTECODE`` set (as in the
development environment) and no ``__pycache__``, every process would compile
the relay's modules from source at each start, which leaves 1-4 MB more heap
per process than an installed package (whose ``.pyc`` files exist) has.
Every process is stopped by its pid.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as cm

# with --tree: the relay's package from another checkout (the venv's editable finder would win over PYTHONPATH)
_TREE = """
import sys

sys.meta_path[:] = [f for f in sys.meta_path if "_EditableFinder" not in repr(f)]
"""

# with --modules: one line per first import, per process: the module and whether root was effective
_RECORDER = """
import os, sys

_out = os.path.join({records!r}, str(os.getpid()))
with open(_out, "a") as _f:
    _f.write("start %d %s %s\\n" % (len(sys.modules), " ".join(sys.argv[1:2]), os.getcwd()))
os.chmod(_out, 0o666)  # --single-process writes on as --user

def _record(event, args):
    if event == "import" and args[0] not in sys.modules:
        with open(_out, "a") as f:
            f.write("import %s %d\\n" % (args[0], os.geteuid() == 0))

sys.addaudithook(_record)
"""


def smaps(pid: int) -> dict[str, int]:
    """Pss, Rss and private kB of one process from /proc/<pid>/smaps_rollup (empty when gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    values["Private"] = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values


def shared_objects(pid: int) -> int:
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return 0
    return len({line.split()[-1] for line in lines if ".so" in line.rsplit("/", 1)[-1]})


def wait_settled(pid: int, want: int, idle: float, timeout: float = 60.0) -> list[int]:
    """The tree's pids once it has ``want`` processes and their set stayed the same for ``idle`` s."""
    deadline = time.monotonic() + timeout
    last: list[int] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        procs = sorted(cm.tree_procs(pid))
        if procs != last:
            last, since = procs, time.monotonic()
        elif len(procs) >= want and time.monotonic() - since >= idle:
            return procs
        time.sleep(0.2)
    raise SystemExit(f"rolemem: the tree of {pid} did not settle: {last}")


def relay_options(opts: argparse.Namespace, tmp: Path, sink_port: int) -> tuple[list[str], int]:
    """The relay's options beyond bench's defaults, and the number of processes to expect."""
    extra = ["--forward-to", f"{cm.HOST}:{sink_port}", "--poll", "1", *opts.extra]
    if opts.single_process:
        return [*extra, "--single-process"], 1
    count = 5  # supervisor, bus, notify, forward, smtp
    if opts.full:
        auth = tmp / "pop.auth"
        auth.write_text("server plain me secret\n")
        extra += ["--pop", "--pop-port", str(cm.free_port()), "--pop-auth", str(auth),
                  "--admin", str(cm.free_port()), "--metrics", f"{cm.HOST}:{cm.free_port()}"]  # fmt: skip
        count += 3
    return extra, count


def measure(opts: argparse.Namespace, records: Path | None) -> list[tuple[str, int, dict[str, int], int]]:
    with tempfile.TemporaryDirectory(prefix="emailrelay-rolemem-", dir=opts.tmpdir) as tmpname:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        spool = tmp / "spool"
        spool.mkdir()
        sink = cm.CountingSink(cm.free_port())
        port = cm.free_port()
        extra, want = relay_options(opts, tmp, sink.port)
        old_path = os.environ.get("PYTHONPATH")
        hook = tmp / "hook"
        hook.mkdir()
        code = (_TREE if opts.tree else "") + (_RECORDER.format(records=str(records)) if records else "")
        (hook / "sitecustomize.py").write_text(code)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), opts.tree, old_path]))
        try:
            relay = cm.start_listening(
                cm.relay_args(port, spool, *extra, user=opts.user), port, tmp / "relay.log"
            )
            try:
                procs = wait_settled(relay.pid, want, opts.idle)
                return [(cm.proc_role(p), p, smaps(p), shared_objects(p)) for p in procs]
            finally:
                relay.stop()
        finally:
            sink.stop()
            if old_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old_path


def module_counts(records: Path, pids: dict[int, str], keep: str) -> dict[str, tuple[int, int]]:
    """Per role: (modules at the end of the start, first imports made without root); with ``keep``
    each role's record (its imports in order) is copied to ``keep/<role>.txt``."""
    counts: dict[str, tuple[int, int]] = {}
    for path in records.iterdir():
        start, after = 0, 0
        imported = 0
        for line in path.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "start":
                start = int(rest.split()[0])
            elif kind == "import":
                imported += 1
                after += rest.endswith(" 0")
        role = pids.get(int(path.name))
        if role is not None:
            counts[role] = (start + imported, after)
        if keep and role is not None:
            Path(keep, f"{role}.txt").write_text(path.read_text())
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description="idle memory of each role of the supervised relay")
    ap.add_argument("--user", default="daemon")
    ap.add_argument("--full", action="store_true", help="also --pop, --admin and --metrics")
    ap.add_argument("--single-process", action="store_true", help="measure --single-process instead")
    ap.add_argument("--modules", action="store_true", help="a second start counting each role's imports")
    ap.add_argument("--keep", default="", help="with --modules: copy each role's imports into this directory")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds the tree must be settled")
    ap.add_argument(
        "--tree", default="", help="a checkout (readable by --user) whose emailrelay package to run"
    )
    ap.add_argument("--tmpdir", default=os.environ.get("TMPDIR", "/var/tmp"))
    ap.add_argument("extra", nargs="*", help="more relay options (after --)")
    opts = ap.parse_args()

    print(f"rolemem bench: {cm.machine_line()}")
    print(cm.compile_relay(opts.tree))
    if opts.tree:
        subprocess.run(["chmod", "-R", "a+rX", opts.tree], check=True)
    if opts.tree:
        os.chdir(opts.tmpdir)  # python -m puts the working directory first on sys.path
    rows = measure(opts, None)
    modules: dict[str, tuple[int, int]] = {}
    if opts.modules:
        with tempfile.TemporaryDirectory(prefix="emailrelay-imports-", dir=opts.tmpdir) as recname:
            Path(recname).chmod(0o1777)  # the roles record as --user too
            rows2 = measure(opts, Path(recname))
            modules = module_counts(Path(recname), {p: role for role, p, _, _ in rows2}, opts.keep)
    keys = ("Pss", "Private", "Anonymous", "Rss")
    per_role: dict[str, list[int]] = collections.defaultdict(lambda: [0] * (len(keys) + 2))
    for role, _, values, sos in rows:
        acc = per_role[role]
        acc[0] += 1
        for i, key in enumerate(keys, 1):
            acc[i] += values.get(key, 0)
        acc[-1] = max(acc[-1], sos)
    table: list[tuple[object, ...]] = []
    for role, (n, *kbs, sos) in per_role.items():
        count, late = modules.get(role, (0, 0))
        table.append(
            (role, n, *(f"{kb / 1024:.1f}" for kb in kbs), sos, count or "-", late if modules else "-")
        )
    totals = [sum(v[i] for v in per_role.values()) for i in range(len(keys) + 1)]
    table.append(("total", totals[0], *(f"{kb / 1024:.1f}" for kb in totals[1:]), "", "", ""))
    headers = ["process", "n", "PSS MB", "USS MB", "anon MB", "RSS MB", ".so", "modules", "after --user"]
    print(cm.table(headers, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
