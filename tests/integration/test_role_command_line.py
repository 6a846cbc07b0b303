"""``python -m emailrelay.cli.role``'s own arguments (parsed by hand, not argparse: issue 20).

Proves: a malformed role command line is exit 2 with the usage and one error
line on stderr, as argparse's was; the well-formed ones (both ``--name value``
and ``--name=value``) are covered by the roles the supervised tests start and
by tests/integration/test_metrics.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BAD = {
    "unknown role": (["bogus", "--run-dir", "x"], "the first argument must be one of bus,"),
    "no run dir": (["bus"], "the following arguments are required: --run-dir"),
    "value missing": (["bus", "--run-dir"], "--run-dir: expected one argument"),
    "not a number": (["forward", "--run-dir", "x", "--index=one"], "--index: invalid int value: 'one'"),
    "unknown option": (["bus", "--run-dir", "x", "--nope", "1"], "unrecognized argument: --nope"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_malformed_role_command_line_is_a_usage_error(case: str) -> None:
    argv, error = BAD[case]
    done = subprocess.run(
        [sys.executable, "-m", "emailrelay.cli.role", *argv, "--", "--port", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    usage, message = done.stderr.splitlines()
    assert usage.startswith("usage: emailrelay-role {bus,notify,forward,") and "--run-dir DIR" in usage
    assert message.startswith(f"emailrelay-role: error: {error}")
