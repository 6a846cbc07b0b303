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
that a full spool can still be drained.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SpoolError

MIN_FREE_BYTES = 64 * 1024


def check_spool(spool: Path, space: bool = True) -> None:
    """Raise SpoolError when ``spool`` is read-only, not writable, or (``space``) full."""
    try:
        st = os.statvfs(spool)
    except OSError as exc:
        raise SpoolError(f"invalid spool directory: {spool}: {exc.strerror or exc}") from None
    if st.f_flag & os.ST_RDONLY:
        raise SpoolError(f"spool directory not writable: {spool}: read-only file system")
    if not os.access(spool, os.W_OK | os.X_OK):
        raise SpoolError(f"spool directory not writable: {spool}: permission denied")
    if not space:
        return
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        raise SpoolError(f"spool directory full: {spool}: {free} bytes free")
    if st.f_files and not st.f_favail:
        raise SpoolError(f"spool directory full: {spool}: no free inodes")
