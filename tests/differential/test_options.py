"""Process options against E-MailRelay 2.6b: how a relay started with ``--no-daemon`` ends.

What it checks (issue 17): both programs, started as an operator does
(tests/support/oracle.py: as root, ``--user daemon``, ``--no-daemon
--pid-file``), stopped with SIGTERM: the status a shell or an init system
sees (upstream exits 143, 128 + SIGTERM) and that the
pid file is gone. Skipped without ``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.oracle import SIDES, daemon_base, needs_oracle, start

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


@pytest.mark.parametrize("mode", [(), ("--single-process",)], ids=["supervised", "single-process"])
def test_sigterm_ends_the_relay_as_upstreams_does(tmp_path: Path, mode: tuple[str, ...]) -> None:
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        daemon = start(side, base, *(mode if side == "ours" else ()))
        daemon.pid_from_file()  # serving: the pid file is written
        got[side] = (daemon.stop(), daemon.pid_file.exists())
    assert got["ours"] == got["upstream"] == (128 + signal.SIGTERM, False)
