"""Start-up checks of the spool that a serving relay cannot run without (issue 18.8).

What it is for: a relay whose spool is read-only or full would bind, detach,
close stderr and spawn its roles, and then fail every message (or, with the
run directory in the spool, die with a traceback nobody sees).  The front end
calls :func:`check_spool` for each configuration before it binds anything, so
the problem is one ``emailrelay: error: ...`` line on stderr (and in the log)
and exit 1.

Guarantees: no file is created or changed; the checks are those of the
process that starts the relay (as root: the file system's, as upstream's
``directory not writable`` check; ``--user``'s own access is checked by
:func:`emailrelay.identity.directory_problem`).  A spool with less than
``MIN_FREE_BYTES`` free, or no free inode, is full: it could not take one
message.  ``--as-client`` and ``--dont-serve`` are not checked for space, so
that a full spool can still be drained.  ``--as-client`` (``warn_only``) only
warns about a read-only or unwritable spool, in E-MailRelay 2.6b's words
(``warning: directory not writable: "<spool>"``), and runs on: its forwarder
then warns ``cannot lock file`` for each message, sends nothing and deletes
nothing, and exits 0, as upstream's.

:func:`nothing_to_do` is E-MailRelay 2.6b's check that a relay would neither
serve nor forward (``--dont-serve`` or ``--no-smtp`` alone): it then prints
``emailrelay: nothing to do`` and exits 0, before any pid file.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import log as logmod
from ..config import Config
from ..errors import SpoolError

MIN_FREE_BYTES = 64 * 1024


def check_spool(spool: Path, space: bool = True, warn_only: bool = False) -> None:
    """Raise SpoolError when ``spool`` is read-only, not writable, or (``space``) full; with
    ``warn_only``, a read-only or unwritable spool is upstream's warning instead."""
    try:
        st = os.statvfs(spool)
    except OSError as exc:
        raise SpoolError(f"invalid spool directory: {spool}: {exc.strerror or exc}") from None
    problem = _write_problem(spool, st)
    if problem is not None and warn_only:
        logmod.get().warning(f'directory not writable: "{spool}"')
    elif problem is not None:
        raise SpoolError(f"spool directory not writable: {spool}: {problem}")
    if not space:
        return
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        raise SpoolError(f"spool directory full: {spool}: {free} bytes free")
    if st.f_files and not st.f_favail:
        raise SpoolError(f"spool directory full: {spool}: no free inodes")


def _write_problem(spool: Path, st: os.statvfs_result) -> str | None:
    """Why the starting process cannot write ``spool`` (statvfs'd as ``st``), or None."""
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if not os.access(spool, os.W_OK | os.X_OK):
        return "permission denied"
    return None


def nothing_to_do(config: Config) -> bool:
    """Whether ``config`` serves nothing (``--dont-serve``, or ``--no-smtp`` without ``--pop`` or
    ``--admin``, or our ``--metrics``) and forwards nothing (no ``--as-client``, ``--forward`` or ``--poll``), as
    E-MailRelay 2.6b decides it (probed: ``-X --forward-to h:p`` alone is nothing to do too)."""
    listening = not config.no_smtp or config.pop or config.admin_port is not None or bool(config.metrics)
    serving = not config.dont_serve and listening
    return not (serving or config.as_client or config.forward or config.poll is not None)
