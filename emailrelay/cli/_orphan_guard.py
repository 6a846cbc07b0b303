"""Make a role process die with its supervisor, before anything else happens in it.

What it is for: ``python -m emailrelay.cli.role`` imports this first.  It asks
the kernel to SIGKILL the process when its parent dies (PR_SET_PDEATHSIG),
then checks that the parent is still the supervisor that started it
(``EMAILRELAY_SUPERVISOR_PID``): if the supervisor died in between, the
role exits at once instead of serving on an inherited socket as an orphan.

The kernel clears PR_SET_PDEATHSIG whenever the effective user or group
changes, which every role does (``--user``, and the moments it takes root
back), so a small daemon thread also checks the parent twice a second and
ends the process when the supervisor is gone.

``set_process_name`` shows the role's name in ``ps -o comm`` (here, not in
the services layer, so that naming the process imports nothing heavy).

``started_by_supervisor`` tells a role whether that supervisor started it:
under a plain ``circusd circus.ini`` nothing answers on the supervisor's
channel, so the admin role says so for ``roles``, ``restart`` and ``workers``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

PARENT_CHECK_PERIOD = 0.5  # seconds

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
ENV_SUPERVISOR_PID = "EMAILRELAY_SUPERVISOR_PID"


def guard_against_orphaning() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    expected = os.environ.get(ENV_SUPERVISOR_PID)
    if expected and expected.isdigit():
        if os.getppid() != int(expected):
            os._exit(0)
        threading.Thread(
            target=_watch_parent, args=(int(expected),), name="orphan-guard", daemon=True
        ).start()


def set_process_name(role: str) -> None:
    """``emailrelay-<role>`` (at most 15 bytes, the kernel's limit) in ``ps -o comm``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, f"emailrelay-{role}"[:15].encode(), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def started_by_supervisor() -> bool:
    """Whether emailrelay's supervisor started this process (not a plain ``circusd circus.ini``,
    whose roles have no ``EMAILRELAY_SUPERVISOR_PID``, or a parent other than the one it names)."""
    return os.environ.get(ENV_SUPERVISOR_PID) == str(os.getppid())


def _watch_parent(supervisor: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_PERIOD)
        if os.getppid() != supervisor:  # reparented: the supervisor is gone
            os._exit(0)
