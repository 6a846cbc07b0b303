"""docs/compatibility.md is complete and honest (issue 12).

What it checks: every option of the 2.6 reference guide and every example
command line of the three guides has a row (as quoted in
tests/support/guides.py; the quotation is compared with the guides when
``EMAILRELAY_GUIDES`` is set); every row has a known status; every test
a row cites exists (the file, and a ``def test_...`` of that name in it);
every example-command row cites at least one test. Every row also says what
E-MailRelay 2.6b itself does (issue 17), in its ``oracle`` cell: ``same:`` or
``differs:`` with the differential tests (tests/differential/) that ran the
row's behaviour on both programs, or ``not comparable:`` with the reason the
oracle cannot show it; a row graded ``works`` is never ``differs:`` there. It
does not judge whether a cited test proves the row — that is review work.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.guides import (
    EXAMPLE_COMMANDS,
    REFERENCE,
    REFERENCE_OPTION_LINES,
    example_commands,
    guide_text,
    option_lines,
)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "compatibility.md"
STATUSES = {"works", "differs", "missing", "n/a"}
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
ORACLE = re.compile(r"^(?:(same|differs): (.+)|not comparable: \S.*)$")
ITEM, STATUS, NOTES, ORACLE_CELL, TESTS = range(5)


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


def test_every_row_has_five_cells_and_a_known_status() -> None:
    rows = _rows()
    assert len(rows) > 300, len(rows)
    bad = [r for r in rows if len(r) != 5 or r[STATUS].strip("* ") not in STATUSES]
    assert bad == [], bad[:5]


def test_every_row_is_graded_against_the_oracle() -> None:
    """``same:``/``differs:`` cite differential tests only; ``works`` is never ``differs:``."""
    problems = []
    compared = 0
    for cells in _rows():
        match = ORACLE.match(cells[ORACLE_CELL])
        if not match:
            problems.append(f"oracle cell: {cells[ITEM]}: {cells[ORACLE_CELL]!r}")
            continue
        verdict, citations = match.groups()
        if verdict is None:
            continue
        compared += 1
        refs = TEST_REF.findall(citations)
        if not refs or any(not path.startswith("tests/differential/") for path, _ in refs):
            problems.append(f"{verdict}: without differential tests: {cells[ITEM]}")
        if verdict == "differs" and cells[STATUS].strip("* ") == "works":
            problems.append(f"works, but the oracle differs: {cells[ITEM]}")
    assert problems == [], problems
    assert compared > 500, compared


def test_every_cited_test_exists() -> None:
    missing = []
    cited = 0
    for cells in _rows():
        for path, name in TEST_REF.findall(cells[ORACLE_CELL] + " " + cells[TESTS]):
            cited += 1
            file = REPO / path
            if not file.is_file() or not re.search(rf"^(?:async )?def {name}\(", file.read_text(), re.M):
                missing.append(f"{path}::{name}")
    assert cited > 300
    assert missing == [], sorted(set(missing))


def test_rows_without_a_test_are_only_not_applicable_prose() -> None:
    untested = [c[0] for c in _rows() if not TEST_REF.search(c[-1]) and c[1].strip("* ") != "n/a"]
    assert untested == [], untested


def test_every_reference_option_has_a_row() -> None:
    options = re.findall(r"^\*   \\-\\-([a-z0-9-]+)", "\n".join(REFERENCE_OPTION_LINES), re.M)
    assert len(options) >= 74
    items = " ".join(c[0] for c in _rows())
    missing = [o for o in options if not re.search(rf"--{re.escape(o)}(?![a-z0-9-])", items)]
    assert missing == [], missing


@pytest.mark.parametrize("guide", list(EXAMPLE_COMMANDS))
def test_every_example_command_has_a_row_with_a_test(guide: str) -> None:
    rows = [(_norm(c[0]), c) for c in _rows()]
    examples = EXAMPLE_COMMANDS[guide]
    assert examples
    problems = []
    for command in examples:
        found = [cells for item, cells in rows if _norm(command) in item]
        if not found:
            problems.append(f"no row: {command}")
        elif not any(TEST_REF.search(cells[-1]) or cells[1].strip("* ") == "n/a" for cells in found):
            problems.append(f"no test: {command}")
    assert problems == [], problems


@pytest.mark.parametrize("guide", list(EXAMPLE_COMMANDS))
def test_quoted_examples_and_options_match_the_guides(guide: str) -> None:
    text = guide_text(guide)
    assert example_commands(text) == list(EXAMPLE_COMMANDS[guide])
    if guide == REFERENCE:
        assert option_lines(text) == list(REFERENCE_OPTION_LINES)
