"""Detaching, pid files and signals for the long-running modes.

What it is for: upstream's process behaviour (SPEC.md §1): the relay binds
first, then detaches (unless ``--no-daemon``), then writes ``--pid-file``,
so a script that waits for the pid file can connect at once; the command
itself returns once the pid file is there, as upstream's does.

Guarantees: the pid file is written atomically (temp file + rename) and only
by the process that will serve, and it appears only once that process has
its final identity (started as root: effective ``--user``); it is removed on
a clean stop, and a temporary file never published with it.  The
temporary file is made with ``O_EXCL|O_NOFOLLOW`` and gets its owner and
mode on the descriptor, so a symlink planted in the pid file's directory is
never followed; ``--pid-file`` itself may be an operator's symlink (the
invoking user's, in a directory nobody else can write), followed as upstream
follows it.  A relay stopped by SIGTERM, SIGINT or SIGQUIT stops cleanly
and then, as E-MailRelay 2.6b's: with a pid file (once it is gone) exits with
status 128 + N (143, 130, 131); without one dies by that signal
(:func:`exit_status`, :func:`leave`).  A stop asked for (admin ``terminate``)
exits 0.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import safe_files
from ..errors import UsageError
from ..identity import as_root, group_for_files, in_root_thread
from ..log import trusted_symlink

#: The pid file's mode, as upstream's (``root:<--user's group>`` when switching, else the creator's).
PID_FILE_MODE = 0o644
PID_DIR_MODE = 0o775  # a directory made for the pid file


#: How long the command waits for the relay it detached to be started (its pid file written).
START_WAIT = 5.0
_started_fd: int | None = None  # the detached relay's end of the pipe its command waits on


def detach() -> None:
    """Fork into the background; the parent exits 0 once the relay has started (:func:`tell_started`)
    or has ended, or after :data:`START_WAIT` s, as E-MailRelay 2.6b's returns with its pid file
    already written: ``emailrelay ... && cat <pid file>`` works (sockets are already bound).

    Twice, as E-MailRelay 2.6b: the first child starts a new session and leaves, so the process
    that serves is in that session (its roles too, one scheduling autogroup) but not its leader,
    and can never acquire a controlling terminal."""
    global _started_fd
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()  # (not inherited by what the relay executes)
    pid = os.fork()
    if pid > 0:
        os.close(write_end)
        with contextlib.suppress(OSError):
            select.select([read_end], [], [], START_WAIT)  # a byte: started; end of file: it ended
        os._exit(0)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    _started_fd = write_end
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    os.chdir("/")


def tell_started() -> None:
    """The detached relay has started (its pid file is there): the command that started it returns."""
    global _started_fd
    fd, _started_fd = _started_fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, b"1")
        os.close(fd)


@dataclass
class PidFile:
    """``--pid-file`` in two steps: :func:`prepare_pid_file` makes a temporary file holding our pid
    next to it, :func:`publish_pid_file` renames it into place once the process it names has its
    final identity (upstream's pid file appears after the switch to ``--user``)."""

    target: Path
    tmp: Path
    published: bool = False
    link: Path | None = None  # --pid-file, when it is an operator's symlink to ``target``


def prepare_pid_file(path: str | None, gid: int | None = None) -> PidFile | None:
    """Make ``--pid-file``'s directory and its temporary file; one that cannot be made is upstream's
    start-up error (``invalid pid file: cannot create file: <path>: <reason>``), never a traceback."""
    global _has_pid_file
    if not path:
        return None
    _has_pid_file = True  # a stop signal's status is then 128 + N, not the death by it
    try:
        return _prepare(Path(path), gid)
    except OSError as exc:
        raise _pid_file_error(path, exc) from None


def publish_pid_file(pid_file: PidFile | None) -> None:
    """The pid file appears (an atomic rename, as root: its directory is normally root's)."""
    if pid_file is None or pid_file.published:
        return
    try:  # root's, in a thread of its own: the process the file names stays --user meanwhile
        in_root_thread(lambda: os.replace(pid_file.tmp, pid_file.target))
    except OSError as exc:
        raise _pid_file_error(str(pid_file.target), exc) from None
    pid_file.published = True


def _pid_file_error(path: str, exc: OSError) -> UsageError:
    # (a parent that is a file: mkdir's "file exists" is upstream's "not a directory")
    reason = "not a directory" if isinstance(exc, FileExistsError) else (exc.strerror or str(exc)).lower()
    return UsageError(f"invalid pid file: cannot create file: {path}: {reason}")


def _prepare(target: Path, gid: int | None) -> PidFile:
    with as_root():
        link = None
        if target.is_symlink() and trusted_symlink(str(target), os.getuid()):
            # an operator's symlink, dangling or not, is followed as E-MailRelay 2.6b follows it (a
            # target in a missing directory is its "no such file or directory"); one that somebody
            # else could have planted is replaced by the pid file, never followed
            link, target = target, Path(os.path.realpath(target))
        else:
            # as E-MailRelay 2.6b: only the last directory is made, 0775 whatever the umask (a missing
            # one above it is "no such file or directory"); an existing one keeps its mode
            with contextlib.suppress(FileExistsError):
                target.parent.mkdir()
                os.chmod(target.parent, PID_DIR_MODE)
        if target.is_dir():  # upstream's start-up error, before any server starts (not at the rename)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
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
            os.fchmod(fd, PID_FILE_MODE)
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
    return PidFile(target, tmp, link=link)


def remove_pid_file(pid_file: PidFile | None) -> None:
    """On a stop: the pid file when it still names us (an operator's symlink: the link, as upstream
    removes it, and not its target), or its temporary file when never published."""
    if pid_file is None:
        return
    with as_root():
        if not pid_file.published:
            with contextlib.suppress(OSError):
                os.unlink(pid_file.tmp)
        with contextlib.suppress(OSError):
            if safe_files.read_nofollow(pid_file.target).strip() == str(os.getpid()).encode():
                (pid_file.link or pid_file.target).unlink()


#: The signals that stop the relay cleanly (sessions in flight finished, the pid file removed). As
#: E-MailRelay 2.6b's: with ``--pid-file`` it then exits with status 128 + N; without one it dies by
#: the signal itself (a shell's ``$?`` is 128 + N either way). SIGHUP is ours: a reload.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

#: What the admin ``terminate`` command sends to the relay's process (ours: SIGINT would end it with
#: status 130, upstream's terminate ends it with 0): a clean stop, as the stop signals, that exits 0.
#: (Upstream dies by this signal; an operator has no reason to send it.)
TERMINATE_SIGNAL = signal.SIGUSR2

_stop_cause: int | None = None  # the signal that began the stop, 0 for a stop asked for (terminate)
_has_pid_file = False


class SignalStop(SystemExit):
    """A stop signal that arrived before the relay's own handlers took over (start-up): raised from
    the handler, it unwinds through every ``finally`` (the pid file, the run directories)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def raise_stop(signum: int, frame: object = None) -> None:
    """A handler for :data:`STOP_SIGNALS` while the relay starts: :class:`SignalStop`."""
    note_stop(signum)
    raise SignalStop(signum)


def note_stop(signum: int = 0) -> None:
    """A stop began: by signal ``signum``, or (0) one asked for, such as the admin ``terminate``
    command, which ends with status 0 as upstream's.  The first cause wins."""
    global _stop_cause
    if _stop_cause is None:
        _stop_cause = signum


def exit_status(code: int) -> int:
    """The status to leave with after a stop, as a Python returncode: ``code`` when the stop was not
    a signal's or failed (a failure's own status wins); after a stop signal N, 128 + N with a pid
    file and -N (death by the signal, :func:`leave`) without one, as E-MailRelay 2.6b."""
    if code != 0 or not _stop_cause:
        return code
    return 128 + _stop_cause if _has_pid_file else -_stop_cause


def leave(status: int) -> int:
    """``status`` to exit with; a negative one is the death by that signal, here and now (the caller
    has cleaned up: every line of the log is written and flushed already)."""
    if status >= 0:
        return status
    signum = -status
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    return 128 + signum  # (not reached: a stop signal's default action ends the process)
