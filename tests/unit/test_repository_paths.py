"""The tests, the product and the benchmarks need nothing outside the repository (issue 16).

What it checks: no file of ``tests/``, ``emailrelay/``, ``bench/``, the
``Makefile`` or ``pyproject.toml`` (tracked, or new and not ignored) names a
file of the development machine: the shared folder beside the clone
(``../shared``, ``parents[N] / "shared"``, ``shared/fixtures`` ...), the
``/work`` tree, or a home directory (``/root/...``, ``/home/<user>/...``).
The relay's own default paths (``/etc/emailrelay.conf``,
``/var/spool/emailrelay``, ``/usr/sbin/...``) are fine: they are what it
runs with, not files a test reads. Optional data from outside comes only
through environment variables (``EMAILRELAY_GUIDES``,
``EMAILRELAY_ORACLE_BIN``), set by ``.ci/run``.

It also checks that the recorded upstream fixtures kept their CRLF line
ends (``tests/fixtures/.gitattributes`` is ``* -text``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.fixtures import REPO, UPSTREAM

SCANNED = ("tests", "emailrelay", "bench", "Makefile", "pyproject.toml")
SKIPPED_DIRS = {".venv", "__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".hypothesis", "results"}
THIS_FILE = Path(__file__).resolve()

# (what it is, pattern); each names a place outside the repository.
OUTSIDE = [
    ("the /work tree", re.compile(r"(?<![\w.-])/work(?:/|\b)")),
    ("the shared folder beside the clone", re.compile(r"\.\./shared\b")),
    ("the shared folder beside the clone", re.compile(r"(?<![\w-])shared/(?:fixtures|reference|oracle)\b")),
    # "shared" as a path component beside the repository: parents[3] / "shared", REPO.parent / "shared",
    # "shared" / "fixtures", a continuation line "/ 'shared'", join(..., "shared")
    (
        "a path built into the shared folder",
        re.compile(r"""(?:parents?\b[\[\]\d]*|\.parent|REPO)\s*/\s*["']shared["']"""),
    ),
    (
        "a path built into the shared folder",
        re.compile(r"""["']shared["']\s*/\s*["'](?:fixtures|reference|oracle)"""),
    ),
    ("a path built into the shared folder", re.compile(r"""^\s*/\s*["']shared["']\s*$""")),
    ("a path built into the shared folder", re.compile(r"""join\(.*["']shared["']""")),
    ("a home directory", re.compile(r"""(?<![\w.~$-])/(?:root|home/[\w.-]+)/[\w.-]""")),
]


def _candidates() -> list[Path]:
    """Tracked (and new, not ignored) files under SCANNED; a walk when git is not there."""
    git = shutil.which("git")
    if git and (REPO / ".git").exists():
        out = subprocess.run(
            [
                git,
                "-C",
                str(REPO),
                "ls-files",
                "--cached",
                "--others",
                "--exclude-standard",
                "-z",
                "--",
                *SCANNED,
            ],
            capture_output=True,
            check=True,
        ).stdout.decode()
        return sorted({REPO / name for name in out.split("\0") if name and (REPO / name).is_file()})
    files = []
    for top in SCANNED:
        path = REPO / top
        if path.is_file():
            files.append(path)
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
            files.extend(Path(root) / n for n in names)
    return sorted(files)


def outside_references(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, line) for every line of ``text`` naming a path outside the repository."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in OUTSIDE:
            if pattern.search(line):
                found.append((number, what, line.strip()))
                break
    return found


def test_no_file_names_a_path_outside_the_repository() -> None:
    files = [f for f in _candidates() if f.resolve() != THIS_FILE]
    assert len(files) > 100, files  # the scan saw the tree
    problems = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data:  # binary
            continue
        for number, what, line in outside_references(data.decode("utf-8", "replace")):
            problems.append(f"{path.relative_to(REPO)}:{number}: {what}: {line}")
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        'FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "upstream-2.6"',
        'FIXTURES = REPO.parent / "shared" / "fixtures"',
        "    / 'shared'",
        'os.path.join(REPO, "..", "shared", "reference")',
        'SEED = Path("/work/shared/reference/000_f2e06d030cad569a.txt")',
        'ORACLE = "../shared/oracle/upstream-2.6b"',
        "see shared/fixtures/upstream-2.6/README.md",
        'GUIDES = Path("/root/guides")',
        "cp /home/alice/notes.txt .",
        'wheel = "/work"',
    ],
)
def test_the_scan_catches(line: str) -> None:
    assert outside_references(line), line


@pytest.mark.parametrize(
    "line",
    [
        'CONF = Path("/etc/emailrelay.conf")',
        'default="/var/spool/emailrelay"',
        "/usr/sbin/emailrelay --as-client=smtp.example.com:smtp",
        'relays = Relays(tmp_path_factory.mktemp("shared"))',
        "shared = SpoolStore(spool)  # shared by the workers",
        "spool = shared / 'spool'",
        'shared = tmp_path / "shared"',
        'relays = Relays(tmp_path_factory.mktemp("shared"))',
        "(one under /root is not readable by daemon)",
        'os.environ["HOME"] + "/tmp"',
        "emailrelay --as-proxy smarthost:smtp --filter $HOME/bin/addsig --spool-dir $HOME/tmp",
        "--pid-file /run/emailrelay/emailrelay.pid --spool-dir /var/spool/emailrelay/homework",
    ],
)
def test_the_scan_lets_through(line: str) -> None:
    assert outside_references(line) == []


def test_recorded_fixtures_keep_their_crlf_line_ends() -> None:
    assert (REPO / "tests" / "fixtures" / ".gitattributes").read_text().split() == ["*", "-text"]
    spool_files = [p for p in UPSTREAM.iterdir() if ".envelope" in p.name or p.suffix == ".content"]
    assert len(spool_files) == 7
    for path in spool_files:
        data = path.read_bytes()
        assert data.count(b"\n") == data.count(b"\r\n") > 0, path.name
