"""POP maildrops over the spool: what the POP server sees of it, and what its UPDATE deletes.

What it is for: the ``pop`` service opens the main spool directory, or with ``--pop-by-name`` the
sub-directory named after the user (:func:`open_maildrop`), takes the maildrop's lock across
processes, lists its messages, reads their content and deletes them at UPDATE.  The spool names,
opens and unlinks are :class:`~emailrelay.spool.store.SpoolStore`'s (by directory descriptor):
this module decides which, and when.

What it guarantees:
- only committed (``.envelope``) messages with a non-empty content file are listed, never
  ``.new``, ``.busy``, ``.bad`` or ``.held``, in name order (as E-MailRelay 2.6b); content is the maildrop's own file or else (for a sub-directory) the main
  directory's; symlinked or non-plain content is refused;
- a delete unlinks only the ``.envelope`` name, so a message a forwarder has claimed is kept;
  then the maildrop's own content file goes, and a main-directory content file only when no
  envelope with that id is left in the main directory or any sub-directory (the guide's
  ``--pop-by-name`` rule);
- one session at a time holds a maildrop (an ``flock`` on its lock file, released by
  :meth:`PopMaildrop.close`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass
from typing import BinaryIO

from .names import MessageId, content_name
from .store import POP_LOCK_NAME as POP_LOCK_NAME  # the lock file's name is the store's
from .store import SpoolStore, _privileged

POP_DELETED, POP_KEPT, POP_GONE = "deleted", "kept", "gone"


@dataclass(frozen=True)
class PopMessage:
    id: MessageId
    size: int  # octets of the content file
    uid: str  # the content file name: stable across sessions (upstream's UIDL)


def open_maildrop(store: SpoolStore, user: str | None = None) -> PopMaildrop:
    """Open the main directory (``user`` None) or the ``--pop-by-name`` sub-directory ``user``;
    see :meth:`SpoolStore.open_maildrop_dirs` for the errors."""
    main_fd, fd, made = store.open_maildrop_dirs(user)
    return PopMaildrop(store, user, fd, main_fd, created=made)


class PopMaildrop:
    """A POP maildrop, open by descriptor (see the module docstring)."""

    def __init__(
        self, store: SpoolStore, name: str | None, fd: int, main_fd: int, *, created: bool = False
    ) -> None:
        self.store = store
        self.name = name
        self._fd = fd
        self._main_fd = main_fd
        self._lock_fd: int | None = None
        self.created = created  # a --pop-by-name directory made for this login

    def __enter__(self) -> PopMaildrop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_privileged
    def lock(self) -> bool:
        """Take the maildrop's exclusive lock (across processes); False when another session holds it."""
        if self._lock_fd is not None:
            return True
        fd = self.store.open_maildrop_lock(self._fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    @_privileged
    def messages(self) -> list[PopMessage]:
        """The ready messages with content, ordered by name as E-MailRelay 2.6b numbers them
        (``emailrelay.1000.1700000000.10`` before ``...2``; not by time); an empty (0-byte)
        content file is left out, as upstream leaves it out."""
        found: list[PopMessage] = []
        for mid in sorted(self.store.ready_ids_at(self._fd), key=str):
            size = self._content_size(mid)
            if size:
                found.append(PopMessage(mid, size, content_name(mid)))
        return found

    def _content_size(self, mid: MessageId) -> int | None:
        for fd in self._content_dirs():
            if self.store.content_exists_at(fd, mid):
                return self.store.content_size_at(fd, mid)
        return None

    def _content_dirs(self) -> tuple[int, ...]:
        return (self._fd,) if self.name is None else (self._fd, self._main_fd)

    @_privileged
    def open_content(self, mid: MessageId) -> BinaryIO:
        """The content file, opened for reading (FileNotFoundError when it has gone, or is there
        but not a plain file)."""
        for fd in self._content_dirs():
            f = self.store.open_content_at(fd, mid)
            if f is not None:
                return f
        raise FileNotFoundError(errno.ENOENT, f"no content file for {mid}")

    @_privileged
    def delete(self, mid: MessageId) -> str:
        """Delete a message at POP UPDATE: POP_DELETED, POP_KEPT (no longer ready, e.g. claimed
        ``.busy`` by a forwarder: left alone) or POP_GONE (see the module docstring)."""
        store = self.store
        if not store.remove_ready_envelope_at(self._fd, mid):
            return POP_KEPT if store.envelope_exists_at(self._fd, mid) else POP_GONE
        if self.name is not None and store.remove_content_at(self._fd, mid):
            return POP_DELETED
        if not store.envelope_exists_anywhere(self._main_fd, mid):
            store.remove_content_at(self._main_fd, mid)
        return POP_DELETED

    def close(self) -> None:
        """Release the lock and the directory descriptors (idempotent)."""
        fds = {self._lock_fd, self._fd, self._main_fd}
        self._lock_fd = None
        self._fd = self._main_fd = -1
        for fd in fds:
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
