"""Crash leftovers (issue 18 item 7): a smtp role killed while it commits leaves ``<id>.envelope.new``;
the supervised relay removes it once it is old enough, periodically (not only at start), with one log
line naming it, whether its content file is still there or not, and never a fresh one.

Real role kills: a server filter that sleeps holds each message between its ``.envelope.new`` and
the rename, and the test ``kill -9``-s the smtp role's pid in that window (circus restarts it).  The
leftovers are then aged by setting their mtime back (the production age, 10 minutes, is kept); only
the sweep period is shortened, with ``EMAILRELAY_SWEEP_PERIOD``.
"""

from __future__ import annotations

import os
import signal
import smtplib
import threading
import time
from pathlib import Path

import pytest

from tests.support.relay import start_relay, wait_until
from tests.support.sink_counter import role_pids

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

KILLS = 3
MESSAGE = b"Subject: leftover\r\n\r\nbody\r\n"


def leftovers(spool: Path) -> set[str]:
    return {p.name[: -len(".envelope.new")] for p in spool.iterdir() if p.name.endswith(".envelope.new")}


def send_in_background(port: int, errors: list[str]) -> threading.Thread:
    def send() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.sendmail("a@example.com", ["b@example.net"], MESSAGE)
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(repr(exc))  # expected: the role is killed before its reply

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def smtp_pids(relay_pid: int) -> list[int]:
    return role_pids(relay_pid).get("smtp", [])


def kill_smtp_role_while_it_commits(relay_pid: int, port: int, spool: Path, errors: list[str]) -> None:
    """Send one message; once its ``.envelope.new`` exists (the filter sleeps), ``kill -9`` the smtp
    role; wait for circus to start a new one."""
    before = leftovers(spool)
    (smtp_pid,) = smtp_pids(relay_pid)
    client = send_in_background(port, errors)
    assert wait_until(lambda: leftovers(spool) - before, 15), sorted(os.listdir(spool))
    os.kill(smtp_pid, signal.SIGKILL)
    client.join(40)
    assert wait_until(lambda: len(smtp_pids(relay_pid)) == 1 and smtp_pids(relay_pid) != [smtp_pid], 20)


def test_leftovers_of_killed_smtp_roles_are_swept_periodically_and_logged(tmp_path: Path) -> None:
    slow_filter = tmp_path / "slow-filter.sh"
    slow_filter.write_text("#!/bin/sh\nsleep 3\nexit 0\n")
    slow_filter.chmod(0o755)
    spool = tmp_path / "spool"
    relay = start_relay(
        tmp_path, "--filter", str(slow_filter), "--filter-timeout", "60", spool=spool,
        env={"EMAILRELAY_SWEEP_PERIOD": "0.5"},
    )  # fmt: skip
    try:
        assert wait_until(lambda: len(role_pids(relay.proc.pid).get("smtp", [])) == 1, 20), role_pids(
            relay.proc.pid
        )
        # one message that commits normally: it must survive every sweep
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as s:
            s.sendmail("a@example.com", ["b@example.net"], MESSAGE)
        committed = [p.name for p in spool.iterdir() if p.name.endswith(".envelope")]
        assert len(committed) == 1
        errors: list[str] = []
        for _ in range(KILLS):
            kill_smtp_role_while_it_commits(relay.proc.pid, relay.port, spool, errors)
        assert len(errors) == KILLS, errors
        left = leftovers(spool)
        assert len(left) == KILLS, sorted(os.listdir(spool))
        # fresh leftovers stay through several sweeps (a living session might still commit them)
        time.sleep(2.0)
        assert leftovers(spool) == left
        (smtp_pid,) = role_pids(relay.proc.pid)["smtp"]
        # age them past 10 minutes; one of them has lost its content file
        old = time.time() - 700
        ids = sorted(left)
        (spool / f"{ids[0]}.content").unlink()
        for mid in ids:
            os.utime(spool / f"{mid}.envelope.new", (old, old))
        assert wait_until(lambda: not leftovers(spool), 15), sorted(os.listdir(spool))
        assert role_pids(relay.proc.pid)["smtp"] == [smtp_pid], "removed by a restart, not the periodic sweep"
        assert not [p for p in spool.iterdir() if p.name.startswith(tuple(ids))], sorted(os.listdir(spool))
        assert [p.name for p in spool.iterdir() if p.name.endswith(".envelope")] == committed
        log = relay.log()
        prefix = "info: removed incomplete message [{0}] left by a crash: {0}.envelope.new"
        assert log.count(prefix.format(ids[0]) + " (") == 1, log[-3000:]
        for mid in ids[1:]:
            assert log.count(prefix.format(mid) + f" and {mid}.content (") == 1, log[-3000:]
    finally:
        relay.stop(20)
