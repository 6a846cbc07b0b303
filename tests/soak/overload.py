"""Overload soak: more idle and slowloris connections for longer, greeting latency at p50/p99.

The long form of tests/system/test_reliability_overload.py's first test (run_overload):

    .venv/bin/python tests/soak/overload.py --idle 5000 --slow 1000 --seconds 120 --greetings 200
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.relay import start_relay  # noqa: E402
from tests.support.sink_counter import wait_for_roles  # noqa: E402
from tests.support.smtpd import short_run_dir  # noqa: E402
from tests.system.test_reliability_overload import run_overload  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle", type=int, default=5000)
    p.add_argument("--slow", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--greetings", type=int, default=200)
    p.add_argument("--idle-timeout", type=int, default=300, help="the relay's --idle-timeout")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-overload-") as tmp:
        rd = short_run_dir()
        relay = start_relay(Path(tmp), "--run-dir", str(rd), "--idle-timeout", str(args.idle_timeout))
        try:
            wait_for_roles(relay.pid, {"smtp": 1}, timeout=30)
            f = run_overload(relay.port, args.idle, args.slow, args.seconds, args.greetings)
        finally:
            relay.stop(timeout=20)
            shutil.rmtree(rd, ignore_errors=True)
    print(
        f"overload soak: idle={args.idle} slowloris={args.slow} seconds={args.seconds:.0f} "
        f"greetings={args.greetings} p50={f['p50_ms']:.1f}ms p99={f['p99_ms']:.1f}ms max={f['max_ms']:.1f}ms "
        f"connect-all={f['connect_s']:.2f}s"
    )
    return 0 if f["p99_ms"] < 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
