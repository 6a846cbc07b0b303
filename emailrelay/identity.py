"""Process identity: run as ``--user`` when idle, root only when needed (SPEC.md §1).

What it is for: upstream's user-id switching.  Started as root, the relay
binds its sockets, then sets the effective user and group to ``--user``
(default ``daemon``) while the real and saved user ids stay root
(:func:`drop`, once, at start-up); the spool layer takes root back for the
moment it creates or renames a file (:func:`as_root`), so files belong to
root with the group of ``--user``.  ``--user root``, or starting as any
other user, turns all switching off.

Guarantees:
- :func:`as_root` changes the effective uid of the calling thread only.  On
  Linux the kernel keeps credentials per thread; glibc's ``seteuid`` makes
  every thread switch (a signal to each: the "setxid broadcast"), but the
  raw ``setresuid`` system call does not.  So no lock is taken, privileged
  operations in different threads overlap (their fsyncs too), the other
  threads (the event loop, ZeroMQ's) stay ``--user`` meanwhile, and no
  thread is signalled.  Elsewhere (an unknown machine, another kernel) the
  process-wide switch is kept, serialised by a lock, as before.
- After :func:`drop` nothing calls glibc's set*id functions (``os.seteuid``
  and friends) in the relay process: that would reset every thread,
  including one inside :func:`as_root`.  A thread started inside
  :func:`as_root` would inherit root: start none there.
- :func:`in_root_thread` does a privileged step (the pid file's rename, a
  role's spawn) in another thread, so the main thread — the one
  ``/proc/PID/status`` and ``ps`` report for the process — stays ``--user``
  from :func:`drop` on.  Children are forked by a long-lived thread (a
  short-lived one's end would fire their ``PR_SET_PDEATHSIG``).
- Filters, verifiers and token commands are started with
  :func:`child_preexec`, which drops real, effective and saved ids to
  ``--user`` for good in the child, whatever the forking thread's ids were.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Executor

_T = TypeVar("_T")
_lock = threading.RLock()


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str


_target: Identity | None = None  # set once dropped


def lookup(name: str) -> Identity:
    """Resolve ``--user``; raises KeyError with upstream's message for unknown users."""
    try:
        if not name:
            raise KeyError(name)
        pw = pwd.getpwnam(name)
    except KeyError:
        raise KeyError(f"no such user: {name}" if name else "no such user") from None
    return Identity(uid=pw.pw_uid, gid=pw.pw_gid, name=name)


def switching_applies(user: str) -> bool:
    return os.getuid() == 0 and user != "root"


def drop(identity: Identity) -> None:
    """Become ``identity`` (effective ids only, every thread); real and saved ids stay root.
    Call once, at start-up: it goes through glibc, which switches every thread."""
    global _target
    import encodings.idna  # noqa: F401 - loaded before the switch to --user (host names need it)

    _thread_switch()  # (ctypes, loaded while the installation is still readable)
    with _lock:
        with contextlib.suppress(OSError):
            os.setgroups([identity.gid])
        os.setegid(identity.gid)
        os.seteuid(identity.uid)
        _target = identity


def drop_to(user: str) -> None:
    """Become ``--user`` ``user`` (:func:`drop`) when switching applies; nothing otherwise."""
    if switching_applies(user):
        drop(lookup(user))


def group_for_files() -> int | None:
    """The group new spool files get, when switching is on."""
    return _target.gid if _target is not None else None


_depth = 0  # nesting of process-wide as_root() sections (guarded by _lock)

# setresuid(2) numbers, for a switch of the calling thread alone (glibc's wrapper switches all)
_SETRESUID = {
    "x86_64": 117,
    "aarch64": 147,
    "arm64": 147,
    "riscv64": 147,
    "loongarch64": 147,
    "i386": 208,  # setresuid32
    "i686": 208,
    "armv7l": 208,  # setresuid32 (EABI)
    "armv6l": 208,
    "ppc64le": 164,
    "ppc64": 164,
    "s390x": 208,
}


def _thread_setresuid() -> Callable[[int], None] | None:
    """A function setting the calling thread's effective uid only, or None where there is none."""
    number = _SETRESUID.get(os.uname().machine) if sys.platform == "linux" else None
    if number is None:
        return None
    import ctypes

    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL: setresuid never blocks, and a thread
        # that let go of the GIL around it would have to win it back, a hand-over each time (issue 20)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    keep = ctypes.c_long(-1)

    def set_euid(uid: int) -> None:
        if syscall(ctypes.c_long(number), keep, ctypes.c_long(uid), keep) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setresuid(-1, {uid}, -1): {os.strerror(err)}")

    return set_euid


_UNKNOWN: Any = object()
_set_thread_euid: Callable[[int], None] | None = _UNKNOWN  # found by drop(), before any as_root()
_local = threading.local()  # .depth: nesting of as_root() in this thread


def _thread_switch() -> Callable[[int], None] | None:
    """:func:`_thread_setresuid`'s function, found once (not at import: the front end imports this
    module before its pid file, and ctypes is needed only once switching)."""
    global _set_thread_euid
    if _set_thread_euid is _UNKNOWN:
        _set_thread_euid = _thread_setresuid()
    return _set_thread_euid


@contextlib.contextmanager
def as_root() -> Iterator[None]:
    """Take effective root back for a moment, in this thread only (no-op when not switching);
    nests safely.  Never ``await`` inside it: other coroutines of the loop would run as root."""
    target = _target
    if target is None:
        yield
        return
    set_euid = _thread_switch()
    if set_euid is None:
        with _process_wide_root(target):
            yield
        return
    depth: int = getattr(_local, "depth", 0)
    if depth == 0:
        set_euid(0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            set_euid(target.uid)


def in_root_thread(work: Callable[[], _T], executor: Executor | None = None) -> _T:
    """``work()`` as root (:func:`as_root`) in another thread, waited for: the calling thread (the
    main thread, whose ids ``/proc/PID/status`` and ``ps`` show for the process) stays ``--user``
    meanwhile.  The thread is a short-lived one of its own, or ``executor``'s: a child forked there
    gets its ``PR_SET_PDEATHSIG`` when that thread ends, so children are spawned from a long-lived
    one.  Without switching, ``work`` runs in the caller."""
    if _target is None:
        return work()
    if executor is not None:  # (its thread is started by submit, here: outside as_root)
        return executor.submit(_as_root_call, work).result()
    outcome: list[Any] = []

    def run() -> None:
        try:
            with as_root():
                outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="as-root")
    thread.start()  # outside as_root: it takes root itself, the caller never does
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _as_root_call(work: Callable[[], _T]) -> _T:
    with as_root():
        return work()


@contextlib.contextmanager
def _process_wide_root(target: Identity) -> Iterator[None]:
    """The fallback: every thread is root meanwhile, so the switch is serialised by a lock."""
    global _depth
    with _lock:
        if _depth == 0:
            os.seteuid(0)
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                os.seteuid(target.uid)


#: The umask of filters and verifiers, as upstream's (the relay "runs with a umask of 077").
CHILD_UMASK = 0o077


def child_preexec() -> Callable[[], None]:
    """A preexec_fn for filters and verifiers: umask 077, and fully ``--user`` when switching."""
    target = _target
    if target is None:
        return _umask_only

    def _drop() -> None:  # in the child, a single thread: glibc's set*id are fine here
        os.umask(CHILD_UMASK)
        os.seteuid(0)
        with contextlib.suppress(OSError):
            os.setgroups([target.gid])
        os.setresgid(target.gid, target.gid, target.gid)
        os.setresuid(target.uid, target.uid, target.uid)

    return _drop


def _umask_only() -> None:
    os.umask(CHILD_UMASK)


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
