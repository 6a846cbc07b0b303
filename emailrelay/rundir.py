"""The run directory of a supervised relay: where it is, and the name of everything in it (issue 18.3).

What it is for: the one owner of run-directory paths, as ``spool/store.py``
is of spool paths.  The supervisor, the roles, the bus, the supervisor's
channel and the tools that find a running relay (``emailrelay events``,
``emailrelay metrics``, bench) all ask this module, so they cannot disagree.

Where it is: ``--run-dir``; else, for root, ``/run/emailrelay/<hash of the
spool path>`` (not in the spool, where ``--user`` may write, so it can
neither rename nor replace it while root uses it); for another user,
``<spool>/.emailrelay-run``, or ``<tmp>/emailrelay-<uid>/<hash>`` when that
is too long for a unix-socket address.  The rule depends on who asks: a tool
run by root finds a relay root started.

What is in it (the names below, nothing else): circus's control and pub/sub
endpoints in the root-only ``circus/`` sub-directory, the supervisor's
channel, the bus's two endpoints, the connection slots of
``--max-connections`` and the rescan stamp.

Guarantees: pure path arithmetic (no file is touched; the supervisor makes
the directory); imports nothing of the relay, so every layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT_BASE = Path("/run/emailrelay")  # root's base for run directories
IN_SPOOL = ".emailrelay-run"  # a non-root relay's run directory, in its spool, when the path is short
IPC_PATH_LIMIT = 100  # sun_path is 108 bytes; the longest name we put there is CIRCUS_PUBSUB

CIRCUS_DIR = "circus"  # root-owned 0700: circus's endpoints
CIRCUS_CONTROL = f"{CIRCUS_DIR}/ctl.ipc"
CIRCUS_PUBSUB = f"{CIRCUS_DIR}/pubsub.ipc"
CHANNEL = "supervisor.sock"  # the supervisor's narrow channel for the roles
BUS_IN = "bus-in.ipc"  # where the roles publish
BUS_OUT = "bus-out.ipc"  # where they subscribe
CONNECTION_SLOTS = "connection-slots"  # --max-connections' slot files
RESCAN_STAMP = "rescan.stamp"  # the durable copy of the rescan doorbell
FORWARD_STAMP = "forward.stamp"  # the durable copy of the admin's forward command


def private_base() -> Path:
    """Where run directories go when not in the spool: a directory no other user can create first
    or write to — under /run for root, else ``<tmp>/emailrelay-<uid>``."""
    if os.geteuid() == 0 and os.access("/run", os.W_OK | os.X_OK):
        return ROOT_BASE
    import tempfile  # (here: a bus role process imports this module and needs neither)

    return Path(tempfile.gettempdir()) / f"emailrelay-{os.getuid()}"


def default(spool_dir: Path) -> Path:
    """The run directory of a relay on ``spool_dir`` started without ``--run-dir`` (module docs)."""
    import hashlib

    digest = hashlib.sha1(str(spool_dir.absolute()).encode()).hexdigest()[:16]
    base = private_base()
    if base == ROOT_BASE:
        return base / digest
    run_dir = spool_dir.absolute() / IN_SPOOL
    if fits(run_dir):
        return run_dir
    return base / digest


def of(config: Any) -> Path:
    """The run directory of a configuration (``config.run_dir``, else :func:`default` of its spool)."""
    if config.run_dir is not None:
        return Path(config.run_dir).absolute()
    return default(Path(config.spool_dir))


def fits(run_dir: Path | str) -> bool:
    """Whether every socket path in ``run_dir`` fits in a unix-socket address."""
    return len(str(Path(run_dir, CIRCUS_PUBSUB))) <= IPC_PATH_LIMIT


def path(run_dir: Path | str, name: str) -> str:
    """The file ``name`` (one of this module's names) in ``run_dir``."""
    return os.path.join(run_dir, name)


def ipc(run_dir: Path | str, name: str) -> str:
    """The ZeroMQ ``ipc://`` endpoint of the file ``name`` in ``run_dir``."""
    return f"ipc://{path(run_dir, name)}"
