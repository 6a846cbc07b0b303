"""Role lifecycle in the log, and the crash-loop limit (emailrelay/cli/lifecycle.py).

- a killed role is a warning naming the role, the pid and the signal, and
  so is the process circus starts in its place; circus's own chatter
  (``Starting master``, ``Registering signals``, ``Arbiter now waiting``)
  stays out of a ``--verbose`` log;
- five unplanned exits in a row of one role process, each right after its
  start (a crash loop), stop the relay with an error line and exit status 1
  (what systemd sees as a failed service).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from emailrelay.cli.lifecycle import CRASH_LOOP_EXITS, START_SECONDS
from tests.support.sink_counter import poll, role_pids, supervised_relay

ROLES = {"bus": 1, "smtp": 1}


def _kill_role(relay_pid: int, role: str, timeout: float = 10.0) -> int:
    """SIGKILL the role's process and wait for circus to start another one; the killed pid."""
    pid = role_pids(relay_pid)[role][0]
    os.kill(pid, signal.SIGKILL)
    assert poll(lambda: role_pids(relay_pid).get(role, [pid]) not in ([pid], []), timeout), (
        f"{role} not restarted"
    )
    return pid


def test_a_killed_role_is_logged_with_its_signal_and_its_restart(tmp_path: Path) -> None:
    with supervised_relay(tmp_path, roles=ROLES) as relay:
        killed = _kill_role(relay.pid, "smtp")
        new = role_pids(relay.pid)["smtp"][0]
        assert poll(lambda: f"restarting role smtp: pid {new}" in relay.log(), 10), relay.log()[-2000:]
        log = relay.log()
        assert f"warning: supervisor: role smtp (pid {killed}) killed by signal 9 (SIGKILL)" in log
        assert f"warning: supervisor: restarting role smtp: pid {new}" in log
        assert relay.proc.poll() is None
    log = relay.log()
    for chatter in (
        "Starting master",
        "Registering signals",
        "Arbiter now waiting",
        "handle_callback_exception",
    ):
        assert chatter not in log
    assert "crash loop" not in log


def test_a_crash_loop_stops_the_relay_with_exit_1(tmp_path: Path) -> None:
    """Each bus process is killed as soon as it is seen: a role that dies right after starting."""
    with supervised_relay(tmp_path, roles=ROLES) as relay:
        first = psutil.Process(role_pids(relay.pid)["bus"][0])
        time.sleep(max(0.0, first.create_time() + START_SECONDS - time.time()))
        _kill_role(relay.pid, "bus")  # the first one had started: no failed start
        for _ in range(CRASH_LOOP_EXITS - 1):
            _kill_role(relay.pid, "bus")
        assert relay.proc.poll() is None  # one exit short of the limit: still running
        roles = [p for pids in role_pids(relay.pid).values() for p in pids]
        os.kill(role_pids(relay.pid)["bus"][0], signal.SIGKILL)
        assert relay.proc.wait(30) == 1
        assert poll(lambda: not any(psutil.pid_exists(p) for p in roles), 5)  # every role stopped
    log = relay.log()
    assert (
        f"error: supervisor: role bus exited {CRASH_LOOP_EXITS} times in a row within {START_SECONDS:g} "
        "seconds of starting: a crash loop: stopping"
    ) in log
    assert "Traceback" not in log
