"""Detaching, pid files and signals for the long-running modes.

What it is for: upstream's process behaviour (SPEC.md §1): the relay binds
first, then detaches (unless ``--no-daemon``), then writes ``--pid-file``,
so a script that waits for the pid file can connect at once.

Guarantees: the pid file is written atomically (temp file + rename) and only
by the process that will serve; it is removed on a clean stop.  The
temporary file is made with ``O_EXCL|O_NOFOLLOW`` and gets its owner and
mode on the descriptor, so a symlink planted in the pid file's directory is
never followed.  A relay stopped by SIGTERM stops cleanly and exits, once the
pid file is gone, with exit status 143 as upstream's does (:func:`exit_status`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from .. import safe_files
from ..errors import UsageError
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
    """Write ``--pid-file``; one that cannot be written is upstream's start-up error
    (``invalid pid file: cannot create file: <path>: <reason>``), never a traceback."""
    if not path:
        return None
    try:
        return _write_pid_file(Path(path), gid)
    except OSError as exc:
        # (a parent that is a file: mkdir's "file exists" is upstream's "not a directory")
        reason = "not a directory" if isinstance(exc, FileExistsError) else (exc.strerror or str(exc)).lower()
        raise UsageError(f"invalid pid file: cannot create file: {path}: {reason}") from None


def _write_pid_file(target: Path, gid: int | None) -> Path:
    with as_root():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | safe_files.CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            gid = group_for_files() if gid is None else gid  # --user's group, as the spool files (SPEC §3)
            if gid is not None:
                with contextlib.suppress(OSError):
                    os.fchown(fd, -1, gid)
            os.fchmod(fd, 0o660 if gid is not None else 0o644)
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, target)
    return target


def remove_pid_file(path: Path | None) -> None:
    if path is None:
        return
    with as_root(), contextlib.suppress(OSError):
        if safe_files.read_nofollow(path).strip() == str(os.getpid()).encode():
            path.unlink()


#: The exit status of a relay stopped by SIGTERM, as E-MailRelay 2.6b's (128 + 15).
TERMINATED_STATUS = 128 + signal.SIGTERM

_terminated = False


def note_terminated() -> None:
    """SIGTERM arrived: the stop under way ends with :data:`TERMINATED_STATUS`."""
    global _terminated
    _terminated = True


def exit_status(code: int) -> int:
    """The status to exit with after a stop: upstream's 143 when SIGTERM caused it, else ``code``
    (a failure's own status wins)."""
    return TERMINATED_STATUS if _terminated and code == 0 else code
