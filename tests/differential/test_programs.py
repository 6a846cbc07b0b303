"""The one-shot faces of the programs against E-MailRelay 2.6b: --version, --help, submit, secrets, start-up errors, spool ids.

What it checks (issue 17): each test runs the same command line with our
program and with the oracle's (``EMAILRELAY_ORACLE_BIN``; skipped without
it) and compares what a user or a script sees: stdout and stderr texts,
exit codes, the files written, what a next hop receives and the log lines.
Where we differ on purpose the test asserts our side and names the
docs/decisions.md entry.
"""

from __future__ import annotations

import ssl

import pytest

from emailrelay import COPYRIGHT, VERSION_LINE
from tests.support.oracle import SIDES, needs_oracle, run

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


def _both(name: str, *args: str, input: bytes | None = None) -> dict[str, tuple[int, str, str]]:
    """side -> (exit code, stdout, stderr) of ``name args`` run by each side."""
    out = {}
    for side in SIDES:
        r = run(side, name, *args, input=input)
        out[side] = (r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"))
    return out


# ---- --version, --help ------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("--version",), ("--version", "--verbose"), ("-V", "-v")])
def test_version_is_upstreams_line_for_line(args: tuple[str, ...]) -> None:
    """Byte for byte but for three lines: the version, the copyright (decisions.md, "--version")
    and the TLS library, which names the OpenSSL Python's ssl module runs on."""
    got = _both("emailrelay", *args)
    (ours_rc, ours, ours_err), (up_rc, up, up_err) = got["ours"], got["upstream"]
    assert ours_rc == up_rc == 0 and ours_err == up_err == ""
    ours_lines, up_lines = ours.splitlines(keepends=True), up.splitlines(keepends=True)
    assert ours_lines[0] == VERSION_LINE + "\n" and up_lines[0].startswith("E-MailRelay V2.6")
    assert ours_lines[2] == COPYRIGHT + "\n" and up_lines[2].startswith("Copyright (C) ")
    tls = [i for i, line in enumerate(up_lines) if line.startswith("TLS library: ")]
    assert len(tls) == (1 if "--verbose" in args or "-v" in args else 0)
    for i in tls:
        assert ours_lines[i] == f"TLS library: {ssl.OPENSSL_VERSION}\n"
    masked = {0, 2, *tls}
    assert [x for i, x in enumerate(ours_lines) if i not in masked] == [
        x for i, x in enumerate(up_lines) if i not in masked
    ]


@pytest.mark.parametrize("args", [("--help",), ("--help", "--verbose")])
def test_help_begins_like_upstreams(args: tuple[str, ...]) -> None:
    """The version line and a blank line, then the usage (whose synopsis is ours)."""
    got = _both("emailrelay", *args)
    (ours_rc, ours, _), (up_rc, up, _) = got["ours"], got["upstream"]
    assert ours_rc == up_rc == 0
    ours_lines, up_lines = ours.splitlines(), up.splitlines()
    assert ours_lines[0] == VERSION_LINE and up_lines[0].startswith("E-MailRelay V2.6")
    assert ours_lines[1] == up_lines[1] == ""
    assert ours_lines[2].startswith("usage: emailrelay ") and "usage: emailrelay " in up_lines[2]
