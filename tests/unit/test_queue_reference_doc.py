"""docs/reference.md is generated from the option table and must not go stale.

If this fails after an option changed, run ``python tools/gen_reference.py``
and commit docs/reference.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from emailrelay.cli.helptext import markdown_reference
from emailrelay.cli.options import OPTIONS

REPO = Path(__file__).resolve().parents[2]


def test_committed_reference_equals_generated_text() -> None:
    committed = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == markdown_reference(), "docs/reference.md is stale: run python tools/gen_reference.py"


def test_reference_names_every_option() -> None:
    text = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    for option in OPTIONS:
        assert f"`--{option.name}" in text


def test_generator_check_mode(tmp_path: Path) -> None:
    tool = REPO / "tools" / "gen_reference.py"
    out = tmp_path / "reference.md"
    assert subprocess.run([sys.executable, str(tool), "--output", str(out)], check=False).returncode == 0
    assert out.read_text(encoding="utf-8") == markdown_reference()
    assert (
        subprocess.run([sys.executable, str(tool), "--check", "--output", str(out)], check=False).returncode
        == 0
    )
    out.write_text("stale\n", encoding="utf-8")
    stale = subprocess.run(
        [sys.executable, str(tool), "--check", "--output", str(out)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert stale.returncode == 1 and "gen_reference.py" in stale.stderr
