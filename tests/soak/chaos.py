"""Chaos soak: N messages through the supervised relay while random roles are kill -9-ed.

The long form of tests/system/test_reliability_chaos.py (same engine, run_chaos): by
default 10,000 messages at 60/s with a kill of smtp, notify, bus or a forward worker
every 2-10 s, the last one hitting forward worker 2 mid-flight.  Prints the figures and
exits 1 when an acknowledged message was lost or duplicates exceed the bound.

    .venv/bin/python tests/soak/chaos.py --messages 10000 --rate 60 --kill-min 2 --kill-max 10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.system.test_reliability_chaos import WORKERS_PER_FORWARDER, run_chaos  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=60.0, help="messages per second offered")
    p.add_argument("--kill-min", type=float, default=2.0)
    p.add_argument("--kill-max", type=float, default=10.0)
    p.add_argument("--max-kills", type=int, default=1000)
    p.add_argument("--no-kills", action="store_true", help="the control run: expect 0 duplicates")
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-chaos-") as tmp:
        result = run_chaos(
            Path(tmp), messages=args.messages, rate=args.rate,
            kill_interval=None if args.no_kills else (args.kill_min, args.kill_max),
            max_kills=args.max_kills, seed=args.seed, last_kill=None if args.no_kills else "forward-2",
            drain_timeout=120.0,
        )  # fmt: skip
    print(result.summary())
    dups = sum(result.duplicates.values())
    bound = 0 if args.no_kills else len(result.forward_kills) * WORKERS_PER_FORWARDER
    ok = not result.lost and dups <= bound and not result.unattributed_duplicates
    print(f"verdict: {'PASS' if ok else 'FAIL'} lost={len(result.lost)} duplicates={dups} (bound {bound})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
