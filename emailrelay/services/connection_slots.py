"""A relay-wide connection limit shared by every smtp process (``--max-connections``).

What it is for: with ``--workers smtp=N`` each connection is accepted by one
of N processes, but the limit is for the relay.  The run directory holds
``limit`` slot files; a session holds an exclusive ``flock`` on one slot for
as long as it lives.  The kernel drops the lock when the session's file is
closed or its process dies, so a crash never leaks a slot.

Guarantees: never more than ``limit`` sessions hold a slot at once, across
processes; taking a slot costs at most ``limit`` non-blocking lock attempts,
starting at a random slot so concurrent processes rarely collide.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from pathlib import Path


class ConnectionSlots:
    def __init__(self, directory: Path, limit: int, group: int | None = None) -> None:
        """Creates the slot files (call with the privileges needed; ``group`` may then use them)."""
        self.directory = directory
        self.limit = limit
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(limit):
            path = directory / f"slot.{i}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o660)
            with contextlib.suppress(OSError):
                if group is not None:
                    os.fchown(fd, -1, group)
                os.fchmod(fd, 0o660)
            os.close(fd)

    def acquire(self) -> int | None:
        """A locked slot (an fd to pass to :meth:`release`), or None when all are taken."""
        start = random.randrange(self.limit)
        for i in range(self.limit):
            path = self.directory / f"slot.{(start + i) % self.limit}"
            try:
                fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
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
