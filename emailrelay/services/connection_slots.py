"""A relay-wide connection limit shared by every smtp process (``--max-connections``).

What it is for: with ``--workers smtp=N`` each connection is accepted by one
of N processes, but the limit is for the relay.  The run directory holds
``limit`` slot files; a session holds an exclusive ``flock`` on one slot for
as long as it lives.  The kernel drops the lock when the session's file is
closed or its process dies, so a crash never leaks a slot.

Guarantees: never more than ``limit`` sessions hold a slot at once, across
processes; taking a slot costs at most ``limit`` non-blocking lock attempts,
starting at a random slot so concurrent processes rarely collide.  The
directory and the slot files are made as root without following anything
``--user`` may have planted (:mod:`emailrelay.safe_files`): the directory is
not writable by ``--user``, the files are readable and writable by its group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from pathlib import Path

from .. import safe_files


class ConnectionSlots:
    def __init__(self, directory: Path, limit: int, group: int | None = None) -> None:
        """Creates the slot files (call with the privileges needed; ``group`` may then use them)."""
        self.directory = directory
        self.limit = limit
        parent = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY | safe_files.CLOEXEC)
        try:
            dir_fd = safe_files.open_directory(
                directory.name,
                dir_fd=parent,
                create=True,
                replace=True,
                mode=0o750,
                gid=group,
                owner=os.geteuid(),
            )
        finally:
            os.close(parent)
        try:
            for i in range(limit):
                os.close(safe_files.open_private_file(f"slot.{i}", dir_fd=dir_fd, mode=0o660, gid=group))
        finally:
            os.close(dir_fd)

    def acquire(self) -> int | None:
        """A locked slot (an fd to pass to :meth:`release`), or None when all are taken."""
        start = random.randrange(self.limit)
        for i in range(self.limit):
            path = self.directory / f"slot.{(start + i) % self.limit}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | safe_files.CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            return fd
        return None

    @staticmethod
    def release(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)
