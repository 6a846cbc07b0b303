"""Long run: a poll-mode forwarder moves N messages while RSS and open fds of every role are sampled.

A supervised relay (``--forward-to SINK --poll 1``) receives N messages over SMTP from a few
client threads (at most --backlog messages ahead of the sink, so the spool stays small) and
forwards them to a counting sink.  Every second the RSS and the number of open file
descriptors of each role process are sampled (psutil, children of the arbiter we started).
After the warm-up (the first --warmup messages) memory must stay flat: the growth of the
peak RSS over the value at the end of the warm-up must be under --max-growth-mb (10 MB) for
the smtp and forward roles, and the fd counts must not creep.  Prints the figures; exit 1
when a message was lost or memory grew.

    .venv/bin/python tests/soak/longrun.py --messages 100000
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.relay import start_relay  # noqa: E402
from tests.support.sink import states  # noqa: E402
from tests.support.sink_counter import CountingSink, content, poll, role_pids, wait_for_roles  # noqa: E402
from tests.support.smtpd import short_run_dir  # noqa: E402

MB = 1024 * 1024


def sample(relay_pid: int) -> dict[str, tuple[int, int]]:
    """role -> (summed RSS, summed open fds)."""
    out: dict[str, tuple[int, int]] = {}
    for role, pids in role_pids(relay_pid).items():
        rss = fds = 0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                rss += p.memory_info().rss
                fds += p.num_fds()
        out[role] = (rss, fds)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=None, help="warm-up messages (default 10%%, at least 500)")
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--backlog", type=int, default=500, help="at most this many messages ahead of the sink")
    p.add_argument("--max-growth-mb", type=float, default=10.0)
    p.add_argument("--timeout-minutes", type=float, default=240.0)
    args = p.parse_args()
    n = args.messages
    warmup = args.warmup if args.warmup is not None else max(500, n // 10)
    deadline = time.monotonic() + 60 * args.timeout_minutes
    lock = threading.Lock()
    counter = iter(range(n))
    acked: set[str] = set()
    errors = [0]
    error_texts: list[str] = []
    series: list[tuple[float, int, dict[str, tuple[int, int]]]] = []
    with tempfile.TemporaryDirectory(prefix="soak-longrun-") as tmp, CountingSink() as sink:
        rd = short_run_dir()
        relay = start_relay(Path(tmp), "--run-dir", str(rd), "--forward-to", sink.address, "--poll", "1")
        try:
            wait_for_roles(relay.pid, {"smtp": 1, "forward": 1, "notify": 1, "bus": 1}, timeout=30)
            began = time.monotonic()
            stop = threading.Event()

            def sender() -> None:
                conn = None
                while time.monotonic() < deadline:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        break
                    while len(acked) - len(sink.messages) > args.backlog and time.monotonic() < deadline:
                        time.sleep(0.01)
                    mid = f"long-{i}@test"
                    try:
                        if conn is None:
                            conn = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
                        conn.sendmail(
                            "a@example.com", ["b@example.net"], content(mid, ("x" * 70 + "\r\n") * (i % 30))
                        )
                        with lock:
                            acked.add(mid)
                        if i % 100 == 0:
                            conn.quit()
                            conn = None
                    except (smtplib.SMTPException, OSError) as exc:
                        with lock:
                            errors[0] += 1
                            if len(error_texts) < 5:
                                error_texts.append(f"{type(exc).__name__}: {exc}")
                        conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.quit()

            def sampler() -> None:
                while not stop.wait(1.0):
                    series.append((time.monotonic() - began, len(sink.messages), sample(relay.pid)))

            threads = [threading.Thread(target=sender, daemon=True) for _ in range(args.senders)]
            st = threading.Thread(target=sampler, daemon=True)
            st.start()
            for t in threads:
                t.start()
            last_report = 0.0
            while any(t.is_alive() for t in threads):
                time.sleep(1.0)
                if time.monotonic() - last_report > 30:
                    last_report = time.monotonic()
                    s = series[-1] if series else None
                    rss = {k: f"{v[0] / MB:.1f}MB/{v[1]}fd" for k, v in s[2].items()} if s else {}
                    print(
                        f"  t={time.monotonic() - began:.0f}s acked={len(acked)} at-sink={len(sink.messages)} {rss}",
                        flush=True,
                    )
            poll(lambda: len(set(sink.ids())) >= len(acked), 120, 0.5)
            elapsed = time.monotonic() - began
            stop.set()
            st.join(5)
            series.append((elapsed, len(sink.messages), sample(relay.pid)))
            leftover = dict(states(relay.spool))
        finally:
            relay.stop(timeout=20)
            shutil.rmtree(rd, ignore_errors=True)
        ids = sink.ids()
    lost = len(acked - set(ids))
    dups = sum(v - 1 for v in ids.values() if v > 1)
    after = [s for s in series if s[1] >= warmup]
    ok = not lost and bool(after) and errors[0] <= n // 100
    for text in error_texts:
        print(f"  send error: {text}")
    print(
        f"longrun: messages={n} acked={len(acked)} at-sink={len(ids)} lost={lost} duplicates={dups} "
        f"send-errors={errors[0]} elapsed={elapsed:.0f}s throughput={len(ids) / elapsed:.0f}/s "
        f"warm-up={warmup} samples={len(series)} leftover={leftover}"
    )
    if after:
        base = after[0][2]
        for role in sorted(base):
            rss0, fd0 = base[role]
            peak = max(s[2].get(role, (0, 0))[0] for s in after)
            end = after[-1][2].get(role, (0, 0))[0]
            fdmax = max(s[2].get(role, (0, 0))[1] for s in after)
            fdend = after[-1][2].get(role, (0, 0))[1]
            growth = (peak - rss0) / MB
            print(
                f"  {role:8s} rss after warm-up={rss0 / MB:.1f}MB peak={peak / MB:.1f}MB end={end / MB:.1f}MB "
                f"growth={growth:.1f}MB  fds after warm-up={fd0} max={fdmax} end={fdend}"
            )
            if role in ("smtp", "forward") and (growth >= args.max_growth_mb or fdend > fd0 + 20):
                ok = False
    print(f"verdict: {'PASS' if ok else 'FAIL'} (growth limit {args.max_growth_mb} MB after warm-up)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
