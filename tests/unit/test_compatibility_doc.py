"""docs/compatibility.md is complete and honest (issue 12).

What it checks: every option of the 2.6 reference guide and every example
command line of the three guides has a row; every row has a known status;
every test a row cites exists (the file, and a ``def test_...`` of that
name in it); every example-command row cites at least one test. It does
not judge whether a cited test proves the row — that is review work.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "compatibility.md"
GUIDES = next(
    (d for d in (REPO.parent / "shared" / "reference", Path("/work/shared/reference")) if d.is_dir()),
    Path("/work/shared/reference"),
)
REFERENCE = GUIDES / "reference-2.6.md"
USERGUIDE = GUIDES / "userguide-2.6.md"
SEED = GUIDES / "000_f2e06d030cad569a.txt"
STATUSES = {"works", "differs", "missing", "n/a"}
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
EXAMPLE = re.compile(r"^(?: {8}|\t)(?:\$ )?(?:exec )?((?:/usr/[\w/]*/)?emailrelay(?:-submit)?(?: .*)?)$")

needs_guides = pytest.mark.skipif(not REFERENCE.exists(), reason="the upstream guides are not beside the repository")


def _norm(text: str) -> str:
    return " ".join(text.replace("\\|", "|").split())


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|") or re.match(r"^\|\s*-", line) or line.startswith("| item "):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows


def _examples(path: Path) -> list[str]:
    return [m.group(1).strip() for line in path.read_text().splitlines() if (m := EXAMPLE.match(line))]


def test_every_row_has_four_cells_and_a_known_status() -> None:
    rows = _rows()
    assert len(rows) > 300, len(rows)
    bad = [r for r in rows if len(r) != 4 or r[1].strip("* ") not in STATUSES]
    assert bad == [], bad[:5]


def test_every_cited_test_exists() -> None:
    missing = []
    cited = 0
    for cells in _rows():
        for path, name in TEST_REF.findall(cells[-1]):
            cited += 1
            file = REPO / path
            if not file.is_file() or not re.search(rf"^(?:async )?def {name}\(", file.read_text(), re.M):
                missing.append(f"{path}::{name}")
    assert cited > 300
    assert missing == [], sorted(set(missing))


def test_rows_without_a_test_are_only_not_applicable_prose() -> None:
    untested = [c[0] for c in _rows() if not TEST_REF.search(c[-1]) and c[1].strip("* ") != "n/a"]
    assert untested == [], untested


@needs_guides
def test_every_reference_option_has_a_row() -> None:
    options = re.findall(r"^\*   \\-\\-([a-z0-9-]+)", REFERENCE.read_text(), re.M)
    assert len(options) >= 74
    items = " ".join(c[0] for c in _rows())
    missing = [o for o in options if not re.search(rf"--{re.escape(o)}(?![a-z0-9-])", items)]
    assert missing == [], missing


@needs_guides
@pytest.mark.parametrize("guide", [REFERENCE, USERGUIDE, SEED], ids=lambda p: p.name)
def test_every_example_command_has_a_row_with_a_test(guide: Path) -> None:
    rows = [(_norm(c[0]), c) for c in _rows()]
    examples = _examples(guide)
    assert examples
    problems = []
    for command in examples:
        found = [cells for item, cells in rows if _norm(command) in item]
        if not found:
            problems.append(f"no row: {command}")
        elif not any(TEST_REF.search(cells[-1]) or cells[1].strip("* ") == "n/a" for cells in found):
            problems.append(f"no test: {command}")
    assert problems == [], problems
