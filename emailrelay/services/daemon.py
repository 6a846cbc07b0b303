"""Detaching, pid files and signals for the long-running modes.

What it is for: upstream's process behaviour (SPEC.md §1): the relay binds
first, then detaches (unless ``--no-daemon``), then writes ``--pid-file``,
so a script that waits for the pid file can connect at once.

Guarantees: the pid file is written atomically (temp file + rename) and only
by the process that will serve; it is removed on a clean stop.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ..identity import as_root, group_for_files


def detach() -> None:
    """Fork into the background; the parent exits 0 straight away (sockets are already bound)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    os.chdir("/")


def write_pid_file(path: str | None, gid: int | None = None) -> Path | None:
    if not path:
        return None
    target = Path(path)
    with as_root():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        gid = group_for_files() if gid is None else gid  # --user's group, as the spool files (SPEC §3)
        if gid is not None:
            with contextlib.suppress(OSError):
                os.chown(tmp, -1, gid)
        os.chmod(tmp, 0o660 if gid is not None else 0o644)
        os.replace(tmp, target)
    return target


def remove_pid_file(path: Path | None) -> None:
    if path is None:
        return
    with as_root(), contextlib.suppress(OSError):
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
