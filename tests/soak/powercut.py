"""Power-cut soak: the simulation of tests/system/test_reliability_powercut.py, bigger and with many seeds.

For each seed the store workload (messages stored, claimed, released, failed, removed)
is crashed at every one of its mutating system calls (or --crash-points random ones),
and each crash is turned into --images power-cut images of what was fsynced; recovery
must find every acknowledged message whole.  Prints the figures; exit 1 on a violation.

    .venv/bin/python tests/soak/powercut.py --messages 40 --seeds 20 --images 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.system.test_reliability_powercut import run_powercut  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=40)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=1)
    p.add_argument(
        "--crash-points", type=int, default=None, help="random crash points per seed (default: all)"
    )
    p.add_argument("--images", type=int, default=5, help="power-cut images per crash point (>= 2)")
    args = p.parse_args()
    total_points = total_images = total_checked = 0
    violations: list[str] = []
    began = time.monotonic()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = run_powercut(seed, args.messages, crash_points=args.crash_points, images=args.images)
        total_points += r.crash_points
        total_images += r.images
        total_checked += r.acked_checked
        violations += r.violations
        print(
            f"seed={seed} crash-points={r.crash_points} images={r.images} violations={len(r.violations)}",
            flush=True,
        )
    print(
        f"powercut soak: seeds={args.seeds} messages/seed={args.messages} crash-points={total_points} "
        f"images={total_images} acked-messages-checked={total_checked} violations={len(violations)} "
        f"time={time.monotonic() - began:.0f}s"
    )
    for v in violations[:20]:
        print("  " + v)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
