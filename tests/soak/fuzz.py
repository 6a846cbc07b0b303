"""Fuzz soak: every hypothesis fuzzer of the project, with a big budget, until a time limit.

Runs the fuzz modules (tests/unit/test_fuzz_*.py: SASL, envelope reader, secrets file,
config file; and the older tests/unit/test_*_fuzz.py: SMTP server, SMTP client, POP3)
round after round with a fresh --hypothesis-seed each round.  Our own modules read
FUZZ_EXAMPLES (examples per test per round); the older ones keep their own max_examples,
so for them the budget is the number of rounds.  Prints rounds, examples and failures;
exit 1 on the first failing round (its output is printed).

    .venv/bin/python tests/soak/fuzz.py --minutes 30 --examples 20000
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--examples", type=int, default=20_000, help="FUZZ_EXAMPLES for test_fuzz_*.py")
    p.add_argument("--rounds", type=int, default=1000, help="at most this many rounds")
    args = p.parse_args()
    modules = sorted(str(m.relative_to(REPO)) for m in (REPO / "tests" / "unit").glob("test_*fuzz*.py"))
    deadline = time.monotonic() + 60 * args.minutes
    rounds = 0
    while rounds < args.rounds and time.monotonic() < deadline:
        rounds += 1
        seed = random.randrange(2**32)
        began = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--timeout=0",  # big budgets: no per-test limit
             f"--hypothesis-seed={seed}", *modules],
            cwd=REPO, env={**os.environ, "FUZZ_EXAMPLES": str(args.examples)},
            capture_output=True, text=True, timeout=max(60.0, deadline - time.monotonic() + 600), check=False,
        )  # fmt: skip
        tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        print(f"round {rounds}: seed={seed} {tail} ({time.monotonic() - began:.0f}s)", flush=True)
        if r.returncode != 0:
            print(r.stdout[-20000:])
            print(f"fuzz soak: FAILED in round {rounds} (seed {seed})")
            return 1
    print(f"fuzz soak: rounds={rounds} modules={len(modules)} examples/test/round={args.examples} failures=0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
