"""Run ``emailrelay-submit`` on both sides (ours and E-MailRelay 2.6b's) and compare what it wrote.

What it is for: the differential tests of ``emailrelay-submit`` (tests/differential/test_programs.py,
test_submit_followup.py) run one command line with each side's program in a directory of its own
and compare exit code, stdout, stderr and the spool's files.

Guarantees: message ids (``emailrelay.<time>.<pid>.<seq>``) are normalised to
``emailrelay.ID.<seq>`` wherever they appear (file names, file contents, stdout), so two runs
compare equal when they wrote the same messages in the same order; each side runs as
:func:`tests.support.oracle.run` runs it (as root, in a directory ``daemon`` can reach).
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.oracle import SIDES, daemon_base, run

_SUBMIT_ID = re.compile(r"emailrelay\.\d+\.\d+\.(\d+)")
_SUBMIT_ID_BYTES = re.compile(_SUBMIT_ID.pattern.encode())


def normalise_ids(text: str) -> str:
    """``text`` with every message id as ``emailrelay.ID.<seq>``."""
    return _SUBMIT_ID.sub(r"emailrelay.ID.\1", text)


def file_tree(top: Path) -> dict[str, bytes]:
    """Every file under ``top`` (relative path -> bytes), ids normalised but for their sequence number."""
    tree = {}
    for path in sorted(top.rglob("*")):
        if path.is_file():
            data = _SUBMIT_ID_BYTES.sub(rb"emailrelay.ID.\1", path.read_bytes())
            tree[normalise_ids(str(path.relative_to(top)))] = data
    return tree


def submit_both(
    tmp_path: Path, spool_arg: str, *args: str, input: bytes, mailboxes: tuple[str, ...] = ()
) -> dict[str, tuple[int, str, str, dict[str, bytes]]]:
    """side -> (exit code, stdout, stderr, spool tree) of ``emailrelay-submit --spool-dir SPOOL_ARG args``
    run in ``<base>/<side>`` (``spool_arg`` may be relative to it; ``{home}`` is that directory)."""
    base = daemon_base(tmp_path)
    out = {}
    for side in SIDES:
        home = base / side
        (home / "spool").mkdir(parents=True)
        for box in mailboxes:
            (home / "spool" / box).mkdir()
        spool_arg_here = spool_arg.format(home=home)
        r = run(side, "emailrelay-submit", "--spool-dir", spool_arg_here, *args, input=input, cwd=home)
        stdout = normalise_ids(r.stdout.decode()).replace(str(home), "HOME")
        stderr = r.stderr.decode(errors="surrogateescape")  # an address's bytes as given
        out[side] = (r.returncode, stdout, stderr, file_tree(home / "spool"))
    return out
