"""Opening files and directories as root where ``--user`` may have planted something.

What it is for: the relay takes root back (:func:`emailrelay.identity.as_root`)
to create files in directories that ``--user`` can write (the spool, mailbox
directories, a run directory, a pid-file directory).  Whatever is found there
under a name root is about to use may be a symlink, a hard link, a FIFO or a
directory planted by ``--user``.  These helpers never follow a symlink at the
last component (``O_NOFOLLOW``), never block on a FIFO (``O_NONBLOCK``), and
set owner and mode on the descriptor, never on a path.

Guarantees:
- :func:`open_directory` returns a descriptor on a real directory (never a
  symlink); one it made itself, or (``owner`` given) one owned by ``owner``,
  gets ``mode`` and ``gid`` through the descriptor.
- :func:`open_private_file` returns a descriptor on a regular file with one
  link, owned by the caller's effective uid; anything else under that name
  (another user's file, a hard link to a file elsewhere) is unlinked and
  replaced by a new file made with ``O_EXCL``.
- :func:`read_nofollow` reads a regular file, refusing a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NOFOLLOW = os.O_NOFOLLOW
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW | CLOEXEC


def open_directory(
    name: str | os.PathLike[str],
    *,
    dir_fd: int | None = None,
    create: bool = False,
    mode: int | None = None,
    gid: int | None = None,
    owner: int | None = None,
    replace: bool = False,
) -> int:
    """Open a directory without following a symlink at its last component (ELOOP or ENOTDIR when
    it is none); ``create`` makes it first, and with ``replace`` a symlink or file found under
    that name is unlinked and the directory made instead.  ``mode`` and ``gid`` are set (on the
    descriptor) when this call made the directory, or when ``owner`` is given and owns it; with
    ``owner`` given, a directory owned by anyone else is refused (EPERM)."""
    for _ in range(10):
        made = False
        if create:
            try:
                os.mkdir(name, 0o700 if mode is None else mode, dir_fd=dir_fd)
                made = True
            except FileExistsError:
                pass
        try:
            fd = os.open(name, DIRECTORY_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if create and replace and exc.errno in (errno.ELOOP, errno.ENOTDIR):
                _unlink_planted(name, dir_fd)
                continue
            raise
        break
    else:
        raise PermissionError(errno.EPERM, f"cannot create {os.fsdecode(name)}: something keeps replacing it")
    try:
        st = os.fstat(fd)
        if owner is not None and st.st_uid != owner:
            raise PermissionError(
                errno.EPERM,
                f"directory {os.fsdecode(name)} is owned by uid {st.st_uid}, not {owner}: refused",
            )
        if made and st.st_uid != os.geteuid():  # swapped for someone else's between mkdir and open
            raise PermissionError(errno.EPERM, f"directory {os.fsdecode(name)} was replaced: refused")
        if made or owner is not None:
            if gid is not None and st.st_gid != gid:
                os.fchown(fd, -1, gid)
            if mode is not None and stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private_file(
    name: str | os.PathLike[str],
    *,
    dir_fd: int | None = None,
    mode: int = 0o600,
    gid: int | None = None,
    flags: int = os.O_RDWR,
) -> int:
    """Open or create a file of our own (a lock, a slot, a stamp): see the module's guarantees."""
    base = flags | NOFOLLOW | os.O_NONBLOCK | CLOEXEC
    for _ in range(10):
        try:
            fd = os.open(name, base | os.O_CREAT, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EACCES, errno.EPERM):
                raise
            _unlink_planted(name, dir_fd)  # a symlink, a FIFO without reader, a directory, ...
            continue
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid():
            try:
                os.set_blocking(fd, True)
                if gid is not None and st.st_gid != gid:
                    os.fchown(fd, -1, gid)
                if stat.S_IMODE(st.st_mode) != mode:
                    os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                raise
            return fd
        os.close(fd)
        _unlink_planted(name, dir_fd)
    raise PermissionError(errno.EPERM, f"cannot create {os.fsdecode(name)}: something keeps replacing it")


def _unlink_planted(name: str | os.PathLike[str], dir_fd: int | None) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{os.fsdecode(name)} is a directory: refused")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _open_regular(path: str | os.PathLike[str], flags: int, dir_fd: int | None, *, one_link: bool) -> int:
    """Open ``path`` with ``flags`` without following a symlink (ELOOP) or blocking on a FIFO; refuse
    (EPERM) anything but a regular file and, with ``one_link``, a hard link.  The descriptor blocks."""
    fd = os.open(path, flags | NOFOLLOW | os.O_NONBLOCK | CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (one_link and st.st_nlink != 1):
            kind = "plain" if one_link else "regular"
            raise PermissionError(errno.EPERM, f"{os.fsdecode(path)} is not a {kind} file: refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_existing_for_write(path: str | os.PathLike[str], flags: int, *, dir_fd: int | None = None) -> int:
    """Open an existing regular file with one link for writing (``flags``: O_WRONLY, O_APPEND, ...),
    refusing a symlink (ELOOP), a FIFO or any other kind of file, and a hard link (EPERM)."""
    return _open_regular(path, flags, dir_fd, one_link=True)


def open_read_nofollow(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open a regular file for reading, refusing a symlink (ELOOP) and anything but a regular file."""
    return _open_regular(path, os.O_RDONLY, dir_fd, one_link=False)


def read_nofollow(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file, refusing a symlink."""
    fd = open_read_nofollow(path, dir_fd=dir_fd)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def touch(name: str, *, dir_fd: int, mode: int = 0o644, gid: int | None = None) -> None:
    """Create ``name`` if needed (:func:`open_private_file`) and set its times to now, by descriptor."""
    fd = open_private_file(name, dir_fd=dir_fd, mode=mode, gid=gid, flags=os.O_WRONLY)
    try:
        os.utime(fd)
    finally:
        os.close(fd)
