"""Store-and-forward throughput: smtp-source -> relay -> Postfix smtp-sink, plus Postfix itself.

``python bench/forward.py [--messages 5000] [--sessions 20] [--size 10240] [--latency 500] [--quick]``

Each cell gets a fresh relay (or a private Postfix instance) forwarding to a fresh
Postfix ``smtp-sink -c``; deliveries are counted from smtp-sink's own running
counters (``mesg=N``).  End-to-end msgs/s = messages / (time from the start of
smtp-source until the sink has counted every message and the relay's queue is
empty).  "intake" is messages / wall time of smtp-source alone.

Cells:
  poll0 w=N     emailrelay --poll 0 --workers forward=N (N = 1, 2, 4; supervised: N forward processes)
  immediate     emailrelay --immediate (the client's 250 waits for the next hop's 250)
  1proc ...     reference: the same with --single-process (everything on one event loop)
  postfix       a private Postfix instance (temporary config and queue), relayhost = the sink

Latency: one smtplib connection sending ``--latency`` messages sequentially to the
relay (with its sink), timing each send_message round trip: median and p99.
Prints figures only; never asserts timings.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as cm


@dataclass
class Result:
    name: str
    messages: int
    intake_s: float = float("nan")
    e2e_s: float = float("nan")
    delivered: int = 0
    left: int = 0
    bad: int = 0
    peak_rss: int = 0
    peak_pss: int = 0
    procs: int = 0
    cpu: float = 0.0
    note: str = ""
    latency: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.delivered >= self.messages and self.left == 0 and not self.note

    def rate(self) -> float:
        return self.messages / self.e2e_s if self.complete and self.e2e_s > 0 else float("nan")

    def intake(self) -> float:
        return self.messages / self.intake_s if self.intake_s > 0 else float("nan")


# ---- a message for smtplib --------------------------------------------------------------------
def make_message(size: int, n: int) -> bytes:
    head = (
        f"From: <from@example.com>\r\nTo: <to@example.net>\r\nSubject: latency {n}\r\n"
        f"Message-ID: <bench.{n}.{os.getpid()}@example.com>\r\n\r\n"
    ).encode()
    line = b"0123456789" * 7 + b"\r\n"  # 72 octets
    return head + line * max(1, size // len(line))


def latency_run(port: int, count: int, size: int, timeout: float) -> tuple[list[float], str]:
    """Sequential messages over ONE connection; each sendmail() round trip in seconds."""
    times: list[float] = []
    deadline = time.monotonic() + timeout
    try:
        with smtplib.SMTP(cm.HOST, port, timeout=60) as s:
            s.ehlo("bench.example")
            for n in range(count):
                if time.monotonic() > deadline:
                    return times, f"latency run stopped after {timeout:.0f}s"
                msg = make_message(size, n)
                t = time.perf_counter()
                s.sendmail("from@example.com", ["to@example.net"], msg)
                times.append(time.perf_counter() - t)
    except (OSError, smtplib.SMTPException) as exc:
        return times, f"latency run failed after {len(times)}: {exc!r}"
    return times, ""


# ---- cells ---------------------------------------------------------------------------------------
def run_relay_cell(name: str, extra: list[str], tmp: Path, opts: argparse.Namespace, *,
                   latency: bool) -> Result:  # fmt: skip
    res = Result(name, opts.messages)
    cell = tmp / name.replace(" ", "_").replace("=", "")
    spool = cell / "spool"
    spool.mkdir(parents=True)
    sink_port, port = cm.free_port(), cm.free_port()
    print(f"  {name}: ...", flush=True)
    sink = cm.CountingSink(sink_port)
    try:
        args = cm.relay_args(port, spool, "--forward-to", f"{cm.HOST}:{sink_port}", *extra, user=opts.user)
        relay = cm.start_listening(args, port, cell / "relay.log")
        try:
            time.sleep(1.5)  # let every role (bus, notify, forward xN) come up
            cpu0 = cm.tree_cpu(relay.pid)
            with cm.PeakRss(relay.pid) as rss:
                t0 = time.perf_counter()
                secs, rc, err = cm.run_smtp_source(
                    port, sessions=opts.sessions, messages=opts.messages, size=opts.size, timeout=opts.timeout
                )
                res.intake_s = secs
                if rc != 0:
                    res.note = f"smtp-source rc={rc}: {err.splitlines()[-1] if err else ''}"
                deadline = time.monotonic() + opts.timeout
                while time.monotonic() < deadline:
                    if sink.messages >= opts.messages and cm.spool_backlog(spool) == 0:
                        break
                    if not relay.alive():
                        res.note += " relay died"
                        break
                    time.sleep(0.01)
                res.e2e_s = time.perf_counter() - t0
            res.cpu = cm.tree_cpu(relay.pid) - cpu0
            res.peak_rss, res.peak_pss, res.procs = rss.peak, rss.peak_pss, rss.procs
            res.delivered = sink.messages
            res.left = cm.spool_backlog(spool)
            res.bad = sum(1 for p in spool.iterdir() if p.name.endswith(".bad"))
            if res.delivered < opts.messages or res.left:
                res.note += f" incomplete after {opts.timeout:.0f}s"
            if latency and opts.latency > 0:
                before = sink.messages
                res.latency, note = latency_run(port, opts.latency, opts.size, opts.timeout)
                if note:
                    res.note += " " + note
                sink.wait_for(before + len(res.latency), time.monotonic() + 60)
        finally:
            relay.stop()
    finally:
        sink.stop()
    res.note = res.note.strip()
    return res


# ---- private Postfix -----------------------------------------------------------------------------
POSTFIX_MAIN = """\
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
command_directory = {command_directory}
daemon_directory = {daemon_directory}
meta_directory = {meta_directory}
shlib_directory = {shlib_directory}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
myhostname = bench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
default_process_limit = 100
"""


def postfix_master_cf(port: int) -> str:
    """The installed master.cf with chroot off, and the smtpd listener moved to 127.0.0.1:port."""
    src = Path("/etc/postfix/master.cf")
    if not src.exists():
        src = Path("/usr/share/postfix/master.cf.dist")
    out: list[str] = []
    skipping = False  # inside a dropped service entry (its "  -o ..." continuation lines go too)
    for line in src.read_text().splitlines():
        fields = line.split()
        if line.startswith(("#", " ", "\t")) or not fields:
            if not (skipping and line.startswith((" ", "\t"))):
                out.append(line)
            continue
        skipping = False
        if len(fields) < 8:
            out.append(line)
        elif fields[1] == "inet":  # listeners: only our smtpd, on 127.0.0.1:port
            if fields[0] == "smtp" and fields[7] == "smtpd":
                out.append(f"{cm.HOST}:{port} inet n - n - - smtpd")
            else:
                skipping = True
        else:
            fields[4] = "n"  # no chroot: the temporary queue has no chroot skeleton
            out.append(" ".join(fields))
    return "\n".join(out) + "\n"


def postfix_queue_count(queue: Path) -> int:
    n = 0
    for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
        for _, _, files in os.walk(queue / sub):
            n += len(files)
    return n


class PrivatePostfix:
    def __init__(self, base: Path, port: int, sink_port: int) -> None:
        self.base = base
        self.etc = base / "etc"
        self.queue = base / "queue"
        self.data = base / "data"
        self.port = port
        self.started = False
        self.master_pid: int | None = None
        self.postfix = cm.tool("postfix")
        postconf = cm.tool("postconf")
        for d in (self.etc, self.queue, self.data):
            d.mkdir(parents=True)
        defaults = {}
        for key in ("command_directory", "daemon_directory", "meta_directory", "shlib_directory"):
            out = subprocess.run([postconf, "-dh", key], capture_output=True, text=True, timeout=30)
            defaults[key] = out.stdout.strip()
        main_cf = POSTFIX_MAIN.format(
            etc=self.etc, queue=self.queue, data=self.data, base=base, sink_port=sink_port, **defaults
        )
        (self.etc / "main.cf").write_text(main_cf)
        (self.etc / "master.cf").write_text(postfix_master_cf(port))

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.postfix, "-c", str(self.etc), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip

    def start(self) -> None:
        for step in (("set-permissions",), ("check",), ("start",)):
            r = self._run(*step)
            if r.returncode != 0:
                raise RuntimeError(f"postfix -c {self.etc} {' '.join(step)} failed (rc={r.returncode}): "
                                   f"{(r.stderr or r.stdout).strip()[-600:]}")  # fmt: skip
            if step[0] == "start":
                self.started = True
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.master_pid is None:
            try:
                self.master_pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        if self.master_pid is None:
            raise RuntimeError(f"postfix master did not write {pid_file}: {self.log_tail()}")
        # wait for a greeting from smtpd (master spawns it on the first connection)
        deadline = time.monotonic() + 30
        while True:
            try:
                cm.greeting_time(self.port, timeout=10)
                return
            except (OSError, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"private postfix does not answer on port {self.port}: {exc}; "
                                       f"{self.log_tail()}") from None  # fmt: skip
                time.sleep(0.1)

    def stop(self) -> None:
        if not self.started:
            return
        try:
            self._run("stop", timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if self.master_pid is not None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and cm.tree_rss(self.master_pid):
                time.sleep(0.1)
            if cm.tree_rss(self.master_pid):  # the master we started did not stop: kill it by pid
                import psutil

                try:
                    master = psutil.Process(self.master_pid)
                    kids = master.children(recursive=True)
                    master.kill()
                    for k in kids:
                        k.kill()
                except psutil.Error:
                    pass
        self.started = False

    def log_tail(self, n: int = 8) -> str:
        p = self.base / "maillog"
        return " | ".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else "(no maillog)"


def run_postfix_cell(tmp: Path, opts: argparse.Namespace) -> Result:
    res = Result("postfix", opts.messages)
    print("  postfix: ...", flush=True)
    base = tmp / "postfix"
    sink_port, port = cm.free_port(), cm.free_port()
    sink = cm.CountingSink(sink_port)
    pf: PrivatePostfix | None = None
    try:
        try:
            pf = PrivatePostfix(base, port, sink_port)
            pf.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            res.note = f"private Postfix not run: {exc}"
            return res
        assert pf.master_pid is not None
        time.sleep(1.0)
        base_count = sink.messages  # the readiness probe sends no mail, but be exact
        cpu0 = cm.tree_cpu(pf.master_pid)
        with cm.PeakRss(pf.master_pid) as rss:
            t0 = time.perf_counter()
            secs, rc, err = cm.run_smtp_source(
                port, sessions=opts.sessions, messages=opts.messages, size=opts.size, timeout=opts.timeout
            )
            res.intake_s = secs
            if rc != 0:
                res.note = f"smtp-source rc={rc}: {err.splitlines()[-1] if err else ''}"
            deadline = time.monotonic() + opts.timeout
            while time.monotonic() < deadline:
                if sink.messages - base_count >= opts.messages and postfix_queue_count(pf.queue) == 0:
                    break
                time.sleep(0.01)
            res.e2e_s = time.perf_counter() - t0
        res.cpu = cm.tree_cpu(pf.master_pid) - cpu0
        res.peak_rss, res.peak_pss, res.procs = rss.peak, rss.peak_pss, rss.procs
        res.delivered = sink.messages - base_count
        res.left = postfix_queue_count(pf.queue)
        if res.delivered < opts.messages or res.left:
            res.note += f" incomplete after {opts.timeout:.0f}s: {pf.log_tail(3)}"
    finally:
        if pf is not None:
            pf.stop()
        sink.stop()
    res.note = res.note.strip()
    return res


# ---- main ---------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description="store-and-forward throughput: emailrelay vs Postfix")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10240, help="payload bytes per message (smtp-source -l)")
    ap.add_argument(
        "--latency", type=int, default=500, help="messages in the one-session latency runs (0: skip)"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="limit per phase of a cell, seconds")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument(
        "--no-single-process", action="store_true", help="skip the --single-process reference cells"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 500 messages, 100 latency messages")
    ap.add_argument("--user", default="root",
                    help="the relay's --user (started as root, any other user is the production start)")  # fmt: skip
    opts = ap.parse_args()
    if opts.quick:
        opts.messages, opts.latency = min(opts.messages, 500), min(opts.latency, 100)

    print(f"forward bench: {cm.machine_line()}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="emailrelay-bench-") as tmpname:
        tmp = Path(tmpname)
        os.chmod(tmp, 0o755)  # the private Postfix's unprivileged daemons must reach its queue
        cells: list[tuple[str, list[str], bool]] = [
            ("poll0 w=1", ["--poll", "0", "--workers", "forward=1"], True),
            ("poll0 w=2", ["--poll", "0", "--workers", "forward=2"], False),
            ("poll0 w=4", ["--poll", "0", "--workers", "forward=4"], False),
            ("immediate", ["--immediate"], True),
        ]
        if not opts.no_single_process:
            cells += [
                ("1proc poll0 w=4", ["--single-process", "--poll", "0", "--workers", "forward=4"], False),
                ("1proc immediate", ["--single-process", "--immediate"], True),
            ]
        for name, extra, lat in cells:
            try:
                results.append(run_relay_cell(name, extra, tmp, opts, latency=lat))
            except (OSError, RuntimeError, TimeoutError) as exc:
                results.append(Result(name, opts.messages, note=f"cell failed: {exc}"))
        if not opts.no_postfix:
            results.append(run_postfix_cell(tmp, opts))
        with_postfix = next((r for r in results if r.name == "postfix" and r.complete), None)

    print()
    print(f"{opts.messages} messages x {opts.size} bytes, {opts.sessions} sessions (one connection per message), "
          f"relay -> smtp-sink")  # fmt: skip
    rows = []
    for r in results:
        ratio = f"{r.rate() / with_postfix.rate():.2f}" if with_postfix and r.complete else "-"
        rows.append([
            r.name, f"{r.rate():.0f}", ratio, f"{r.intake():.0f}", f"{r.e2e_s:.1f}", r.delivered, r.left, r.bad,
            cm.mb(r.peak_rss), cm.mb(r.peak_pss), r.procs, f"{r.cpu:.1f}", r.note or "ok",
        ])  # fmt: skip
    print(cm.table(["cell", "e2e msgs/s", "vs postfix", "intake msgs/s", "e2e s", "delivered", "left", "bad",
                    "peak RSS MB", "peak PSS MB", "procs", "cpu s", "status"], rows))  # fmt: skip
    lat = [r for r in results if r.latency]
    if lat:
        print()
        print(f"one-session latency (smtplib, {opts.latency} messages sequentially over one connection, "
              f"{opts.size}-byte body): per send_message round trip")  # fmt: skip
        rows = []
        for r in lat:
            v = sorted(r.latency)
            rows.append([r.name, len(v), f"{statistics.median(v) * 1000:.2f}", f"{cm.percentile(v, 99) * 1000:.2f}",
                         f"{v[-1] * 1000:.2f}"])  # fmt: skip
        print(cm.table(["cell", "n", "median ms", "p99 ms", "max ms"], rows))
    return 0


if __name__ == "__main__":
    if shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists():
        sys.exit("bench: Postfix smtp-sink not found")
    sys.exit(main())
