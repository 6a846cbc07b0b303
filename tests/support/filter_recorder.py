"""A recording filter and the comparisons the differential filter and verifier tests share.

What it is for: ``tests/differential/test_{filters,verifiers,split}.py`` run our relay and the oracle
with one filter (or verifier) script, :func:`recorder`, that records its argv, identity, working
directory and environment and then behaves as the case named by the message's Subject (or the
recipient's local part) says; they compare log lines (:func:`filter_lines`) and spools
(:func:`spool_summary`) with the two sides' paths and message ids made the same
(:func:`side_neutral`).

Guarantees: the script and its cases live under the given base directory only, readable by the
default ``--user daemon``; its ``rec/`` directory is writable by it.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.oracle import Daemon, normalise_log

#: The recording filter: argv, identity, working directory and environment go to rec/<case>.txt; then
#: cases/<case>.sh is sourced (if any), cases/<case>.out printed and cases/<case>.code is the exit code.
#: A case is the message's Subject (a filter), or the recipient's local part (a verifier).
SCRIPT = r"""#!/bin/sh
D=`dirname "$0"`
if [ -f "$1" ]; then c=`sed -n 's/^Subject: //p' "$1" | head -1 | tr -d '\r'`; else c=`echo "$1" | sed 's/@.*//'`; fi
{ printf 'argv:'; for a in "$0" "$@"; do printf ' [%s]' "$a"; done; echo
  echo "id: `id -u`:`id -g`"; echo "cwd: `pwd`"; env | sort | sed 's/^/env: /'; } > "$D/rec/$c.txt"
[ -f "$D/cases/$c.sh" ] && . "$D/cases/$c.sh"
cat "$D/cases/$c.out" 2>/dev/null
exit `cat "$D/cases/$c.code" 2>/dev/null || echo 0`
"""

#: case -> (output, exit code, shell command run first)
Case = tuple[str, int, str]


def recorder(base: Path, cases: dict[str, Case]) -> Path:
    """The recording filter and its cases under ``base/f`` (readable by daemon; rec/ writable)."""
    d = base / "f"
    (d / "rec").mkdir(parents=True)
    (d / "cases").mkdir()
    (d / "rec").chmod(0o777)
    (d / "filter.sh").write_text(SCRIPT)
    for name, (out, code, pre) in cases.items():
        (d / "cases" / f"{name}.out").write_text(out)
        (d / "cases" / f"{name}.code").write_text(str(code))
        if pre:
            (d / "cases" / f"{name}.sh").write_text(pre)
    for p in [d, *d.rglob("*")]:
        if p.name != "rec":
            p.chmod(0o755)
    return d / "filter.sh"


def side_neutral(text: str) -> str:
    """Paths under ``<base>/ours`` and ``<base>/upstream``, and message ids, made the same."""
    text = re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", text)
    return re.sub(r"/(ours|upstream)\b", "/SIDE", text)


_FILTER_LINE = re.compile(r"filter|rejected by|exception|failing envelope|error: ")


def filter_lines(
    text: str, daemon: Daemon | None = None, *, base: Path | None = None, ports: tuple[int, ...] = ()
) -> list[str]:
    lines = normalise_log(text, daemon, drop=(r"supervisor: ", r"tx>>|rx<<"), ports=ports)
    if base is not None:
        lines = [x.replace(str(base), "BASE") for x in lines]
    return [side_neutral(x) for x in lines if _FILTER_LINE.search(x)]


def spool_summary(spool: Path) -> list[str]:
    """Sorted ``name-with-normalised-id: file bytes`` of the spool (sub-directories by relative path)."""
    out = []
    for p in sorted(spool.rglob("*")):
        if p.is_file() and ".emailrelay-run" not in p.parts and not p.name.startswith("."):
            name = re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", str(p.relative_to(spool)))
            data = re.sub(rb"emailrelay\.\d+\.\d+\.\d+", b"ID", p.read_bytes())
            data = re.sub(rb"(?m)^Received: .*\r\n(?:[ \t].*\r\n)*", b"", data)
            data = re.sub(rb"Message-ID: <\d+\.\d+\.\d+\.\d+@", b"Message-ID: <N@", data)  # msgid:'s
            out.append(f"{name}: {data!r}")
    return sorted(out)
