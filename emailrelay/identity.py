"""Process identity: run as ``--user`` when idle, root only when needed (SPEC.md §1).

What it is for: upstream's user-id switching.  Started as root, the relay
binds its sockets, then sets the effective user and group to ``--user``
(default ``daemon``) while the real ids stay root; the spool layer takes
root back for the moment it creates or renames a file (:func:`as_root`),
so files belong to root with the group of ``--user``.  ``--user root``, or
starting as any other user, turns all switching off.

Guarantees: switches are serialised by one lock, so threads doing spool I/O
never see each other's half-switched identity; filters and verifiers are
started with :func:`child_preexec`, which drops real and effective ids to
``--user`` for good in the child.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 - loaded before the switch to --user (host names need it)
import grp
import os
import pwd
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

_lock = threading.RLock()


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0


_target: Identity | None = None  # set once dropped


def lookup(name: str) -> Identity:
    """Resolve ``--user``; raises KeyError with a clear message for unknown users."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise KeyError(f"unknown user: {name!r}") from None
    return Identity(uid=pw.pw_uid, gid=pw.pw_gid, name=name)


def switching_applies(user: str) -> bool:
    return os.getuid() == 0 and user != "root"


def drop(identity: Identity) -> None:
    """Become ``identity`` (effective ids only); real ids stay root."""
    global _target
    with _lock:
        with contextlib.suppress(OSError):
            os.setgroups([identity.gid])
        os.setegid(identity.gid)
        os.seteuid(identity.uid)
        _target = identity


def group_for_files() -> int | None:
    """The group new spool files get, when switching is on."""
    return _target.gid if _target is not None else None


_depth = 0  # nesting of as_root() sections (guarded by _lock)


@contextlib.contextmanager
def as_root() -> Iterator[None]:
    """Take effective root back for a moment (no-op when not switching); nests safely."""
    global _depth
    if _target is None:
        yield
        return
    with _lock:
        if _depth == 0:
            os.seteuid(0)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                os.seteuid(_target.uid)


#: The umask of filters and verifiers, as upstream's (the relay "runs with a umask of 077").
CHILD_UMASK = 0o077


def child_preexec() -> Callable[[], None]:
    """A preexec_fn for filters and verifiers: umask 077, and fully ``--user`` when switching."""
    target = _target
    if target is None:
        return _umask_only

    def _drop() -> None:
        os.umask(CHILD_UMASK)
        os.seteuid(0)
        with contextlib.suppress(OSError):
            os.setgroups([target.gid])
        os.setgid(target.gid)
        os.setuid(target.uid)

    return _drop


def _umask_only() -> None:
    os.umask(CHILD_UMASK)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _allowed(st: os.stat_result, who: Identity, user_bits: int, group_bits: int, other_bits: int) -> bool:
    if st.st_uid == who.uid:
        return st.st_mode & user_bits == user_bits
    if st.st_gid == who.gid or st.st_gid in os.getgrouplist(who.name, who.gid):
        return st.st_mode & group_bits == group_bits
    return st.st_mode & other_bits == other_bits


def directory_problem(path: str, who: Identity) -> str | None:
    """Why ``who`` may not list and enter ``path`` (judged from mode bits), or None when it may.

    Every parent must be searchable too: a spool below a root-only directory cannot be
    reached by the forwarders, which scan it with the effective ids of ``--user``.
    """
    import stat

    target = os.path.abspath(path)
    try:
        st = os.stat(target)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not _allowed(
        st, who, stat.S_IRUSR | stat.S_IXUSR, stat.S_IRGRP | stat.S_IXGRP, stat.S_IROTH | stat.S_IXOTH
    ):
        return "it is not readable and searchable by that user"
    parent = os.path.dirname(target)
    while True:
        try:
            pst = os.stat(parent)
        except OSError as exc:
            return f"{parent}: {exc.strerror or exc}"
        if not _allowed(pst, who, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return f"its parent directory {parent} is not searchable by that user"
        if parent == os.path.dirname(parent):
            return None
        parent = os.path.dirname(parent)
