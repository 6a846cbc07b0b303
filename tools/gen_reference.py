"""Generate docs/reference.md from the option table.

    python tools/gen_reference.py           # rewrite docs/reference.md
    python tools/gen_reference.py --check   # exit 1 if docs/reference.md is stale

The text is :func:`emailrelay.cli.helptext.markdown_reference`, rendered from
``emailrelay/cli/options.py`` -- the same table that drives parsing and
``--help`` -- so the committed reference cannot drift from the program
(tests/unit/test_queue_docs.py runs the check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "reference.md"


def generate() -> str:
    sys.path.insert(0, str(REPO))
    from emailrelay.cli.helptext import markdown_reference

    return markdown_reference()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that the file is up to date")
    p.add_argument("--output", type=Path, default=TARGET)
    args = p.parse_args(argv)
    text = generate()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python tools/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
