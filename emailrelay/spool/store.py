"""The spool store: the only module that builds spool paths or renames spool files.

What it is for: every state change of a message (SPEC.md §3, the durability
protocol of ARCHITECTURE.md) — create, commit, claim, release, fail,
unfail, hold, remove, recover — for the SMTP role, the forwarders, the POP
server, ``emailrelay-submit`` and the queue tools alike, and the listings
that name spool files (the admin's ``list`` and ``failures``:
:meth:`SpoolStore.listed_ids`).  Style anchor: Postfix's mail_queue.c.  The
POP maildrop logic is ``spool/maildrop.py``, and delivery into mailboxes and
maildirs is ``spool/delivery.py``: both ask this module for every name,
open, rename and unlink (by directory fd).

What it expects: one flat spool directory on a local POSIX file system
(rename is atomic, flock works), shared by any number of processes,
including upstream E-MailRelay.

What it guarantees:
- A message becomes visible as ``.envelope`` only after its content file,
  its envelope file and the directory entry are on disk (fsync), so the
  caller may acknowledge it once :meth:`NewMessage.commit` returns.  Any
  error before that leaves no ``.envelope`` behind (:meth:`NewMessage.abandon`).
- A claim is a rename to ``.envelope.busy`` made while holding an ``flock``
  on the envelope inode, and the lock is held for the claim's lifetime, so
  exactly one process wins, and :meth:`SpoolStore.recover` can tell a
  claim of a dead process (lock free) from a live one.  Envelope rewrites go
  through a locked, fsynced temporary file renamed over the ``.busy`` name, so
  the ``.busy`` name never refers to an unlocked inode while its owner lives
  (``Claim.rewrite(..., sync_directory=True)`` also fsyncs the directory:
  the forwarder's record of a partial delivery survives a power cut).
- Upstream E-MailRelay claims without a lock, so a lock-free ``.busy`` may be
  its live claim: ours are marked as ours, by an extended attribute on the
  envelope's inode (:data:`CLAIM_MARK`, set on the locked descriptor once the
  claim's rename is done, or on a rewrite's new file before its rename; upstream
  ignores it and the envelope's bytes stay the same), and the mark is removed
  before the claim gives the envelope back (``.envelope``, ``.bad``).  Recovery
  returns a lock-free ``.busy`` at once only when it carries the mark (a claim
  of ours whose process died); an unmarked one (another program's claim, or one
  made by hand) only once its ctime, which its claim's rename set, is
  :data:`FOREIGN_CLAIM_AGE` old, logging why.  On a file system without user
  extended attributes every lock-free ``.busy`` is taken for ours (said once in
  the log).
- After a successful forward the envelope is deleted before the content, so
  a crash in between leaves a stray content file, never an envelope that
  points at nothing.
- Retry back-off is kept in the envelope's mtime ("not before"), which
  upstream ignores, so the spool stays byte-compatible.  Why the last try
  failed is kept beside it in a dot-file, ``.<id>.deferral`` (a JSON
  :class:`Deferral`), written only by the claim holder when it releases the
  message and removed with the message or when it fails to ``.bad`` (whose
  envelope carries the reason); upstream ignores and keeps such files, and
  :meth:`SpoolStore.recover` removes those whose message is gone.
- Root never follows what ``--user`` (filters, verifiers) may have planted in
  the spool or a mailbox directory: files are created with
  ``O_EXCL|O_NOFOLLOW``, existing envelopes are opened with ``O_NOFOLLOW``
  (and must be plain files with one link to be written), mailbox directories
  are opened one component at a time with ``O_NOFOLLOW`` and written through
  their descriptors, and owner and mode are set on descriptors, never paths.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import socket
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from .. import log as logmod
from .. import safe_files
from ..identity import as_root, group_for_files
from . import envelope as envelope_format
from .envelope import Envelope, EnvelopeError
from .names import (
    ENVELOPE_SUFFIX,
    IdAllocator,
    MessageId,
    State,
    content_name,
    envelope_name,
    is_valid_id,
    split_envelope_name,
)

TMP_SUFFIX = ".tmp"  # temporary envelope rewrites: "<id>.envelope.<state>.tmp"
DEFERRAL_SUFFIX = ".deferral"  # ".<id>.deferral": why the last forwarding attempt failed
_DEFERRAL_MAX = 65536  # bytes read from a deferral record (the file is in a directory --user may write)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Extended attribute on a claimed envelope's inode: "a claim of this relay" (its value means nothing).
CLAIM_MARK = "user.emailrelay.claim"
_CLAIM_MARK_VALUE = b"1"
#: A lock-free, unmarked ``.busy`` (another program's claim: E-MailRelay holds its claims without a lock)
#: unchanged for this long is taken for abandoned and returned to the queue.  A live claim lasts one
#: forwarding attempt, bounded by its program's timeouts (2.6b's defaults: 40 s to connect, 60 s for each
#: reply, 60 s for a client filter): minutes at most.  Not derived from our own options: they say
#: nothing of the other program's.  An hour keeps far from any live claim and still returns a dead one
#: the same hour (E-MailRelay itself never does).
FOREIGN_CLAIM_AGE = 3600.0
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP}
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _privileged(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a mutating spool operation with effective root when the relay switches ids."""

    @wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with as_root():
            return method(*args, **kwargs)

    return wrapper


class SpoolStoreError(OSError):
    """A store operation failed; ``errno`` tells disk-full from the rest."""


def forwarding_order(mid: MessageId) -> str:
    """The order messages are forwarded in: by envelope file name, as a plain string, as
    E-MailRelay 2.6b (observed: ``.1, .10, .11, .2``; ``abc-d`` before ``abc``)."""
    return envelope_name(mid, State.READY)


@dataclass
class SpoolEntry:
    id: MessageId
    state: State
    mtime: float


@dataclass(frozen=True)
class Deferral:
    """Why the last forwarding attempt of a message failed, and when it is tried again."""

    reason: str  # the next hop's reply, or the connection error
    code: int | None  # the reply's code, when there was a reply
    at: float  # unix time of that attempt
    next_try: float | None  # unix time it is due again (None: at once)
    attempts: int  # deferrals recorded since it was stored (or last failed to .bad)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.__dict__, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Deferral | None:
        """None for anything that is not a record of ours (a stray or planted file)."""
        try:
            raw = json.loads(data)
            code = raw.get("code")
            next_try = raw.get("next_try")
            return cls(
                reason=str(raw["reason"]),
                code=int(code) if code is not None else None,
                at=float(raw["at"]),
                next_try=float(next_try) if next_try is not None else None,
                attempts=int(raw.get("attempts", 1)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass
class RecoveryReport:
    released: list[MessageId] = field(default_factory=list)  # orphan .busy back to .envelope
    removed_new: list[MessageId] = field(default_factory=list)  # crashed stores deleted
    removed_tmp: int = 0
    removed_deferrals: int = 0  # records of messages that are gone


class _DirectorySync:
    """Group commit for directory fsyncs: one fsync covers every rename made before it."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._counter_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._renames = 0
        self._synced = 0

    def note_change(self) -> int:
        with self._counter_lock:
            self._renames += 1
            return self._renames

    def sync(self, ticket: int) -> None:
        with self._sync_lock:
            if self._synced >= ticket:
                return
            with self._counter_lock:
                target = self._renames
            fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._synced = target


class SpoolStore:
    """A spool directory.  Thread-safe; many processes may share one directory."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        group: int | None = None,
        file_mode: int = 0o660,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.fsync = fsync
        self.group = group
        self.file_mode = file_mode
        self._ids = IdAllocator()
        self._dirsync = _DirectorySync(self.directory)
        self._claim_marks = hasattr(os, "setxattr")  # False once the file system refused them
        self._said: set[str] = set()  # log lines said once
        self._left_foreign: set[MessageId] = set()  # unmarked lock-free claims already logged as left

    # ---- paths (private: nobody else builds spool paths) -----------------
    def _content(self, mid: MessageId | str) -> Path:
        return self.directory / content_name(mid)

    def _envelope(self, mid: MessageId | str, state: State) -> Path:
        return self.directory / envelope_name(mid, state)

    def content_path(self, mid: MessageId | str) -> Path:
        """Absolute content path, for filters, POP and forwarding (read access)."""
        return self._content(mid)

    def envelope_path(self, mid: MessageId | str, state: State) -> Path:
        """Absolute envelope path in a given state, for filters and tools."""
        return self._envelope(mid, state)

    def _deferral(self, mid: MessageId | str) -> Path:
        return self.directory / f".{mid}{DEFERRAL_SUFFIX}"

    # ---- storing ----------------------------------------------------------
    @_privileged
    def create(self) -> NewMessage:
        """Start a new message: allocates an id and creates its content file exclusively."""
        for _ in range(1000):
            mid = self._ids.next()
            path = self._content(mid)
            try:
                try:
                    fd = os.open(path, _WRITE_FLAGS, self.file_mode)
                except FileNotFoundError:
                    self.directory.mkdir(parents=True, exist_ok=True)  # a new spool: made on first use
                    fd = os.open(path, _WRITE_FLAGS, self.file_mode)
            except FileExistsError:
                continue  # pid reused within the same second by an earlier process
            except OSError as exc:
                raise _store_error(exc, f"cannot create content file {path.name}") from exc
            self._own(fd)
            return NewMessage(self, mid, fd)
        raise SpoolStoreError(errno.EEXIST, "cannot allocate a unique message id")

    def _own(self, fd: int) -> None:
        os.fchmod(fd, self.file_mode)
        if self.group is not None:
            with contextlib.suppress(OSError):
                os.fchown(fd, -1, self.group)

    @_privileged
    def _write_file(
        self, path: Path | str, data: bytes | Path, *, dir_fd: int | None = None, sync: bool = True
    ) -> int:
        """Write a new file exclusively (``data``, or a copy of the regular file ``data`` names, streamed;
        never through a symlink) and fsync it (unless ``sync`` is False); returns an open fd (caller
        closes).  ``path`` is relative to ``dir_fd`` when given."""
        fd = os.open(path, _WRITE_FLAGS | os.O_TRUNC, self.file_mode, dir_fd=dir_fd)
        try:
            self._own(fd)
            if isinstance(data, Path):
                with os.fdopen(safe_files.open_read_nofollow(data), "rb") as src:
                    while chunk := src.read(256 * 1024):
                        _write_all(fd, chunk)
            else:
                _write_all(fd, data)
            if self.fsync and sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path, dir_fd=dir_fd)
            raise
        return fd

    def sync_directory(self) -> None:
        if self.fsync:
            self._dirsync.sync(self._dirsync.note_change())

    def store_message(self, envelope: Envelope, content: bytes) -> MessageId:
        """Store a complete message in one call (submit, filters, tools)."""
        msg = self.create()
        try:
            msg.write(content)
            msg.write_envelope_and_commit(envelope)
        except BaseException:
            msg.abandon()
            raise
        return msg.id

    # ---- listing -------------------------------------------------------------
    def scan(self) -> Iterator[SpoolEntry]:
        """Every envelope in the spool directory, in any state (no order)."""
        try:
            it = os.scandir(self.directory)
        except FileNotFoundError:
            return
        with it:
            for entry in it:
                if ENVELOPE_SUFFIX not in entry.name:
                    continue
                parsed = split_envelope_name(entry.name)
                if parsed is None:
                    continue
                try:
                    mtime = entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                yield SpoolEntry(parsed[0], parsed[1], mtime)

    def listed_ids(self, state: State) -> list[str]:
        """Upstream's admin ``list`` (``state`` READY) and ``failures`` (BAD): the id of every entry of
        the spool directory named ``<id>.envelope<state>``, in the order of those names (bytes), as
        E-MailRelay 2.6b lists them: whatever the id (a tab, any length, bytes that are not UTF-8:
        given back as they are by ``surrogateescape``; not only ids :func:`is_valid_id` accepts),
        whether or not a content file goes with it, read with effective root (a spool ``--user``
        cannot read is listed). Ours leaves out an empty id (upstream prints its spool directory's
        name). Raises ``FileNotFoundError`` when there is no spool directory."""
        suffix = ENVELOPE_SUFFIX + state.value
        with as_root(), os.scandir(self.directory) as entries:
            names = [e.name for e in entries if e.name.endswith(suffix) and len(e.name) > len(suffix)]
        return [name[: -len(suffix)] for name in sorted(names, key=os.fsencode)]

    def ready(self, *, now: float | None = None, ignore_backoff: bool = False) -> list[MessageId]:
        """Committed messages due for forwarding, in forwarding order (:func:`forwarding_order`)."""
        limit = time.time() if now is None else now
        return sorted(
            (
                e.id
                for e in self.scan()
                if e.state is State.READY and (ignore_backoff or e.mtime <= limit + 0.001)
            ),
            key=forwarding_order,
        )

    def ready_and_next_due(
        self,
        *,
        ignore_backoff: bool = False,
        skip: set[MessageId] | frozenset[MessageId] = frozenset(),
        written_by: float | None = None,
    ) -> tuple[list[MessageId], float | None]:
        """One directory pass: the ready messages due now (in forwarding order, minus ``skip``), and the
        earliest not-before time of those still in back-off (None when there is none).
        ``written_by``: only envelopes whose mtime is not after this time."""
        limit = time.time() + 0.001
        due: list[MessageId] = []
        next_due: float | None = None
        ready_suffix = ENVELOPE_SUFFIX + State.READY.value
        try:
            it = os.scandir(self.directory)
        except FileNotFoundError:
            return due, next_due
        with it:
            for entry in it:  # the forwarders' hot loop: only ready envelopes not in hand are stat()ed
                name = entry.name
                if not name.endswith(ready_suffix):
                    continue
                parsed = split_envelope_name(name)
                if parsed is None or parsed[0] in skip:
                    continue
                try:
                    mtime = entry.stat().st_mtime
                except FileNotFoundError:
                    continue
                if written_by is not None and mtime > written_by:
                    continue
                if ignore_backoff or mtime <= limit:
                    due.append(parsed[0])
                elif next_due is None or mtime < next_due:
                    next_due = mtime
        due.sort(key=forwarding_order)
        return due, next_due

    def is_due(self, mid: MessageId, now: float | None = None) -> bool:
        """A ready message whose back-off has run out (False when it is not ready at all)."""
        try:
            mtime = self._envelope(mid, State.READY).stat().st_mtime
        except OSError:
            return False
        return mtime <= (time.time() if now is None else now) + 0.001

    def read_envelope(self, mid: MessageId | str, state: State = State.READY) -> Envelope:
        try:
            data = safe_files.read_nofollow(self._envelope(mid, state))
        except OSError as exc:
            raise _store_error(exc, f"cannot read envelope {mid}") from exc
        return envelope_format.parse(data)

    def find(self, text: str) -> tuple[MessageId, State] | None:
        """Look a message up by id in any state (queue tools, admin)."""
        if not is_valid_id(text):
            return None
        mid = MessageId.parse(text)
        for state in State:
            if self._envelope(mid, state).exists():
                return mid, state
        return None

    # ---- forwarding ------------------------------------------------------------
    @_privileged
    def claim(self, mid: MessageId) -> Claim | None:
        """Claim a ready message; None if another process got it first or it is gone.  A claim the
        spool does not allow (an unwritable directory or envelope: the rename fails otherwise than
        with ENOENT) raises SpoolStoreError ``cannot lock file: "<envelope>"``, upstream's words."""
        ready = self._envelope(mid, State.READY)
        try:
            fd = safe_files.open_read_nofollow(ready)
        except OSError:
            return None  # gone, or a symlink or FIFO planted as an envelope (never followed, never claimed)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = self._envelope(mid, State.BUSY)
            os.rename(ready, busy)  # fails with ENOENT if someone claimed and finished it meanwhile
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.ENOENT):
                return None
            raise SpoolStoreError(exc.errno, f'cannot lock file: "{ready.name}"') from exc
        marked = self._mark_claim(fd)  # after the rename: never on an inode that someone else claimed
        try:
            data = _read_fd(fd)
        except OSError:
            data = b""
        return Claim(self, mid, fd, data, marked=marked)

    @_privileged
    def claim_new(self, msg: NewMessage) -> UncommittedClaim:
        """``--immediate``'s forward-first claim of a message stored but not committed (its envelope
        still ``.envelope.new``, maybe not yet fsynced: see :class:`UncommittedClaim`)."""
        fd = safe_files.open_read_nofollow(msg.envelope_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the crashed-store sweep leaves it alone
            data = _read_fd(fd)
        except OSError:
            os.close(fd)
            raise
        return UncommittedClaim(self, msg.id, fd, data)

    def unfail(self, mid: MessageId) -> bool:
        """``.bad`` back to ``.envelope`` (the reason lines stay until the next failure)."""
        return self._rename_state(mid, State.BAD, State.READY)

    def unfail_all(self) -> int:
        return sum(1 for e in list(self.scan()) if e.state is State.BAD and self.unfail(e.id))

    def hold(self, mid: MessageId) -> bool:
        return self._rename_state(mid, State.READY, State.HELD)

    def release_held(self, mid: MessageId) -> bool:
        return self._rename_state(mid, State.HELD, State.READY)

    @_privileged
    def _rename_state(self, mid: MessageId, old: State, new: State) -> bool:
        try:
            os.rename(self._envelope(mid, old), self._envelope(mid, new))
        except FileNotFoundError:
            return False
        if new is State.READY:
            with contextlib.suppress(OSError, NotImplementedError):
                os.utime(self._envelope(mid, new), follow_symlinks=False)  # due now
        return True

    @_privileged
    def delete(self, mid: MessageId, state: State) -> bool:
        """Delete a message that nobody has claimed (POP DELE, queue delete)."""
        if state is State.BUSY:
            raise SpoolStoreError(errno.EBUSY, f"message {mid} is being forwarded")
        try:
            os.unlink(self._envelope(mid, state))
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._content(mid))
        self._forget_deferral(mid)
        return True

    # ---- mailboxes (sub-directories) -----------------------------------------------
    def mailboxes(self, *, every: bool = False) -> list[str]:
        """Sub-directories that take copies: not ``postmaster``, not dot-directories (guide, ``copy:``);
        ``every`` takes them all, as ``emailrelay-submit --copy`` does (E-MailRelay 2.6b). Symlinks never."""
        try:
            return sorted(
                e.name
                for e in os.scandir(self.directory)
                if e.is_dir(follow_symlinks=False)
                and (every or (not e.name.startswith(".") and e.name != "postmaster"))
            )
        except FileNotFoundError:
            return []

    # ---- recovery -----------------------------------------------------------------
    @_privileged
    def recover(
        self, *, new_age: float = 600.0, tmp_age: float = 60.0, foreign_age: float = FOREIGN_CLAIM_AGE
    ) -> RecoveryReport:
        """Return orphaned claims and delete crashed stores; safe while others run.  A lock-free
        ``.busy`` is returned at once when it is marked ours, otherwise once it is ``foreign_age``
        seconds old (:meth:`_recover_busy`)."""
        report = RecoveryReport()
        now = time.time()
        busy: set[MessageId] = set()
        for entry in list(self.scan()):
            if entry.state is State.BUSY:
                busy.add(entry.id)
                if self._recover_busy(entry.id, now, foreign_age):
                    report.released.append(entry.id)
            elif entry.state is State.NEW and self._remove_crashed_store(entry, new_age, now):
                report.removed_new.append(entry.id)
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as it:
            for e in it:
                if e.name.endswith(TMP_SUFFIX) and (ENVELOPE_SUFFIX in e.name or DEFERRAL_SUFFIX in e.name):
                    with contextlib.suppress(OSError):
                        if now - e.stat().st_mtime > tmp_age:
                            os.unlink(e.path)
                            report.removed_tmp += 1
                elif e.name.startswith(".") and e.name.endswith(DEFERRAL_SUFFIX):
                    # a record whose message was forwarded, deleted or failed by someone else (upstream)
                    name = e.name[1 : -len(DEFERRAL_SUFFIX)]
                    if is_valid_id(name) and self.find(name) is None:
                        with contextlib.suppress(OSError):
                            os.unlink(e.path)
                            report.removed_deferrals += 1
        self._left_foreign &= busy  # forget claims that ended
        return report

    @_privileged
    def remove_crashed_stores(self, max_age: float) -> list[MessageId]:
        """Delete every ``.envelope.new`` (and its content) that nothing has touched for ``max_age``
        seconds: a store that crashed before its ``250`` (the periodic sweep; :meth:`recover` does it too)."""
        now = time.time()
        return [
            e.id
            for e in list(self.scan())
            if e.state is State.NEW and self._remove_crashed_store(e, max_age, now)
        ]

    def _remove_crashed_store(self, entry: SpoolEntry, max_age: float, now: float) -> bool:
        """Remove one ``.new`` leftover (and its content) if it is older than ``max_age``; log it.

        A living session writes the ``.new`` last and then only runs the server filter (bounded by
        ``--filter-timeout``) before renaming it: so ``max_age`` well over the filter timeout never
        removes a message a living session may still commit.  Only the process whose unlink wins logs."""
        age = now - entry.mtime
        if age <= max_age:
            return False
        path = self._envelope(entry.id, State.NEW)
        try:
            fd = safe_files.open_read_nofollow(path)
        except OSError:
            return False  # committed, abandoned or removed by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except BlockingIOError:
            return False  # being forwarded by --immediate (UncommittedClaim): a living session
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
        removed = envelope_name(entry.id, State.NEW)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._content(entry.id))
            removed += f" and {content_name(entry.id)}"
        logmod.get().info(
            f"removed incomplete message [{entry.id}] left by a crash: {removed} ({int(age)}s old)"
        )
        return True

    def _recover_busy(self, mid: MessageId, now: float, foreign_age: float) -> bool:
        """Return one lock-free ``.busy`` to the queue: at once when it is a claim of ours whose process
        died (marked ours, :data:`CLAIM_MARK`); otherwise (another program's claim, which holds no lock,
        or one made by hand) only once it has not changed for ``foreign_age`` seconds, with a log line."""
        busy = self._envelope(mid, State.BUSY)
        try:
            fd = safe_files.open_read_nofollow(busy)
        except OSError:
            return False  # gone, or a symlink or FIFO (never followed)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # a live owner of ours holds it
        try:
            why = (
                None if self._is_marked_ours(fd) else self._abandoned_foreign_claim(mid, fd, now, foreign_age)
            )
            if why == "":
                return False  # maybe another program's live claim
            if self._envelope(mid, State.BAD).exists():
                os.unlink(busy)  # crashed between writing .bad and dropping .busy
            else:
                if why is None and self._claim_marks:
                    self._unmark_claim(fd)  # as a release does: the next claim may be another program's
                os.rename(busy, self._envelope(mid, State.READY))
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
        if why:
            logmod.get().info(f"returning [{busy.name}] to the queue: {why}")
        return True

    def _abandoned_foreign_claim(self, mid: MessageId, fd: int, now: float, foreign_age: float) -> str:
        """Why a lock-free ``.busy`` that is not marked ours is taken for abandoned, or "" (left alone)."""
        age = now - os.fstat(fd).st_ctime  # its claim's rename, or a later change, set the ctime
        if age > foreign_age:
            self._left_foreign.discard(mid)
            return (
                f"nobody holds a lock on it and it is not a claim of ours, but it has not changed for"
                f" {int(age)}s: a claim another program abandoned"
            )
        if mid not in self._left_foreign:
            self._left_foreign.add(mid)
            logmod.get().info(
                f"leaving [{envelope_name(mid, State.BUSY)}]: not a claim of ours and no lock on it: maybe"
                f" another program's (E-MailRelay's) live claim; returned to the queue if unchanged for"
                f" {int(foreign_age)}s"
            )
        return ""

    def _mark_claim(self, fd: int) -> bool:
        """Mark a claimed inode ours (one ``fsetxattr``); False when it could not be."""
        if not self._claim_marks:
            return False
        try:
            os.setxattr(fd, CLAIM_MARK, _CLAIM_MARK_VALUE)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._no_claim_marks()
            else:
                self._say_once(
                    "mark",
                    f"cannot mark a claim as ours ({exc.strerror or exc}): a claim this relay leaves"
                    f" behind when it dies is returned to the queue only after {int(FOREIGN_CLAIM_AGE)}s",
                )
            return False
        return True

    def _unmark_claim(self, fd: int) -> None:
        """Remove the mark before the envelope leaves ``.busy``: whoever claims it next (E-MailRelay)
        must not look like a claim of ours."""
        with contextlib.suppress(OSError):
            os.removexattr(fd, CLAIM_MARK)

    def _is_marked_ours(self, fd: int) -> bool:
        """A lock-free claim is one of ours whose process died: marked so, or the spool's file system
        keeps no marks (then none can be told from another program's, as before marks)."""
        if not self._claim_marks:
            return True
        try:
            os.getxattr(fd, CLAIM_MARK)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._no_claim_marks()
                return True
            return False  # ENODATA: not marked
        return True

    def _no_claim_marks(self) -> None:
        self._claim_marks = False
        self._say_once(
            "xattrs",
            f"the spool directory's file system keeps no extended attributes: a .busy envelope nobody"
            f" holds a lock on is taken for a claim of a dead process of ours, although it may be"
            f" another program's (E-MailRelay's) live claim: do not run both on {self.directory}",
        )

    def _say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            logmod.get().warning(text)

    # ---- policy support ------------------------------------------------------------
    # What the built-in filters need (emailrelay/policy: copy:, deliver:, split:,
    # msgid:, spam-edit:, mx:).  They act on the message a filter was given, whose
    # envelope is ``.envelope.new`` (--filter) or ``.envelope.busy`` (--client-filter).

    # Delivery into mailboxes and maildirs (copy:, deliver:, emailrelay-submit --copy) is
    # spool/delivery.py; these are its names, opens, writes and renames, by directory descriptor.

    def envelope_bytes_nofollow(self, mid: MessageId, state: State) -> bytes:
        """An envelope's bytes, never read through a symlink (the message a filter was given)."""
        return safe_files.read_nofollow(self._envelope(mid, state))

    def open_delivery_base(self, base_dir: Path, *, create: bool) -> int:
        """A descriptor on the delivery base (the spool, or the operator's ``--delivery-dir``,
        made when ``create``)."""
        if create:
            base_dir.mkdir(parents=True, exist_ok=True)
        return os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)

    @staticmethod
    def is_maildir_at(dir_fd: int) -> bool:
        return _is_maildir_at(dir_fd)

    def place_content_at(self, mid: MessageId, dir_fd: int, *, hardlink: bool) -> None:
        """``mid``'s content file into the directory ``dir_fd`` under its spool name."""
        self._place_content(self._content(mid), content_name(mid), hardlink, dir_fd=dir_fd)

    def commit_envelope_at(self, dir_fd: int, mid: MessageId, data: bytes) -> str:
        """Write ``data`` as ``mid``'s ``.envelope.new`` in ``dir_fd`` and rename it to ``.envelope``
        (fsynced with the directory when the store syncs); the committed name."""
        new_env, ready_env = envelope_name(mid, State.NEW), envelope_name(mid, State.READY)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new_env, dir_fd=dir_fd)
        os.close(self._write_file(new_env, data, dir_fd=dir_fd))
        os.rename(new_env, ready_env, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if self.fsync:
            os.fsync(dir_fd)
        return ready_env

    def remove_delivered_original(self, mid: MessageId, state: State, *, content: bool) -> None:
        """Delete the original envelope (and its content when ``content``) once every copy was made."""
        os.unlink(self._envelope(mid, state))
        if content:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._content(mid))
        self.sync_directory()

    def open_mailbox(self, base_fd: int, base_dir: Path, name: str, create: bool) -> int:
        """A mailbox directory's descriptor; made (mode 0770, the files' group, whatever the umask:
        upstream creates spool files and directories with umask 007) when ``create``."""
        try:
            return safe_files.open_directory(name, dir_fd=base_fd, create=create, mode=0o770, gid=self.group)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SpoolStoreError(
                    errno.ELOOP, f"mailbox {name!r} in {base_dir} is not a directory (a symlink?): refused"
                ) from exc
            raise _store_error(exc, f"cannot open mailbox {name!r} in {base_dir}") from exc

    def copy_into_maildir(self, mid: MessageId, box: int, maildir: Path, *, hardlink: bool) -> Path:
        """``mid``'s content into the maildir ``box`` as E-MailRelay 2.6b names it,
        ``new/<secs>.<usecs>.<pid>.<host>.<n>`` (:func:`maildir_name`), the content's bytes as they
        are: written (or linked) in ``tmp``, fsynced, renamed into ``new``, ``new`` fsynced."""
        content = self._content(mid)
        tmp_fd = os.open("tmp", safe_files.DIRECTORY_FLAGS, dir_fd=box)
        try:
            new_fd = os.open("new", safe_files.DIRECTORY_FLAGS, dir_fd=box)
            try:
                name = maildir_name()
                while _exists_at(tmp_fd, name) or _exists_at(new_fd, name):
                    name = maildir_name()
                self._place_content(content, name, hardlink, dir_fd=tmp_fd)
                os.rename(name, name, src_dir_fd=tmp_fd, dst_dir_fd=new_fd)
                if self.fsync:
                    os.fsync(new_fd)
            finally:
                os.close(new_fd)
        finally:
            os.close(tmp_fd)
        return maildir / "new" / name

    def _place_content(
        self, source: Path, target: Path | str, hardlink: bool, *, dir_fd: int | None = None
    ) -> None:
        """Hard-link or copy (streaming, fsynced) a content file; an existing target is kept.  A source
        that is not a regular file (a planted symlink) is never linked, and never read through."""
        if _exists_at(dir_fd, target):
            return
        if hardlink:
            try:
                if stat_module.S_ISREG(os.lstat(source).st_mode):
                    os.link(source, target, dst_dir_fd=dir_fd, follow_symlinks=False)
                    return
            except FileExistsError:
                return
            except OSError:
                pass  # other file system, no permission: copy instead
        os.close(self._write_file(target, source, dir_fd=dir_fd))

    @_privileged
    def new_linked_copy(self, mid: MessageId) -> NewMessage:
        """A new, uncommitted message whose content is a hard link to (or a copy of) ``mid``'s content
        (``split:``, which needs every new id before it writes the envelopes): the caller writes its
        envelope and commits it, or abandons it."""
        source = self._content(mid)
        msg = self.create()
        try:
            if msg._fd is not None:
                os.close(msg._fd)
                msg._fd = None
            os.unlink(msg.content_path)
            self._place_content(source, msg.content_path, True)
        except BaseException:
            msg.abandon()
            raise
        return msg

    @_privileged
    def rewrite_envelope_in_place(self, mid: MessageId, state: State, envelope: Envelope) -> None:
        """Overwrite a ``.new`` or ``.busy`` envelope in place, as a filter script would.

        The inode stays the same, so a forwarder's flock on a ``.busy`` claim is kept;
        the forwarder re-reads the file after its client filters ran.
        """
        if state not in (State.NEW, State.BUSY):
            raise SpoolStoreError(errno.EINVAL, f"cannot rewrite an envelope in state {state.label}")
        data = envelope.to_bytes()
        fd = safe_files.open_existing_for_write(self._envelope(mid, state), os.O_WRONLY)
        try:
            _write_all(fd, data)
            os.ftruncate(fd, len(data))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def replace_content(self, mid: MessageId) -> Iterator[BinaryIO]:
        """Write a new content for a not-yet-forwarded message (``msgid:``, ``spam-edit:``).

        Yields a file open on a temporary file beside the content; on a clean exit it
        is fsynced and renamed over the content (a hard-linked content is thereby
        un-shared); on an exception it is deleted and the content is unchanged.
        """
        content = self._content(mid)
        tmp = content.with_name(content.name + TMP_SUFFIX)
        with as_root():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, _WRITE_FLAGS, self.file_mode)
            self._own(fd)
        f = os.fdopen(fd, "wb")
        try:
            yield f
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        except BaseException:
            f.close()
            with as_root(), contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        f.close()
        with as_root():
            os.replace(tmp, content)
        self.sync_directory()

    # ---- queue tool support --------------------------------------------------------
    # What ``emailrelay queue``, the failed-mail helpers (``emailrelay-notify``,
    # ``-resubmit``, ``-bounce``) and the health check need.  Read-only helpers
    # never change a file; the writers refuse claimed (``.busy``) and unfinished
    # (``.new``) envelopes, so they are safe while the relay runs.

    def envelope_bytes(self, mid: MessageId | str, state: State) -> bytes:
        """The raw bytes of an envelope file (``queue show``, counting upstream's reason lines)."""
        try:
            return self._envelope(mid, state).read_bytes()
        except OSError as exc:
            raise _store_error(exc, f"cannot read envelope {mid}") from exc

    def created(self, mid: MessageId) -> float:
        """When the message was stored: the time in our ids; for a foreign id (``foo.envelope``, not
        of our form) the content file's modification time, else now (so back-off never takes such a
        message for one days old)."""
        if not mid.is_foreign:
            return float(mid.time)
        try:
            return self._content(mid).stat().st_mtime
        except OSError:
            return time.time()

    def content_size(self, mid: MessageId | str) -> int | None:
        """Size of the content file in bytes; None when there is none."""
        try:
            return self._content(mid).stat().st_size
        except OSError:
            return None

    def content_head(self, mid: MessageId | str, limit: int = 65536) -> bytes:
        """At most ``limit`` bytes from the start of the content (headers for tools); b"" if none."""
        try:
            with open(self._content(mid), "rb") as f:
                return f.read(limit)
        except OSError:
            return b""

    def content_chunks(self, mid: MessageId | str, size: int = 65536) -> Iterator[bytes]:
        """The whole content file in chunks (``queue show --body``); nothing if there is none.  Never
        through a symlink."""
        try:
            fd = safe_files.open_read_nofollow(self._content(mid))
        except OSError:
            return
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(size):
                yield chunk

    @_privileged
    def make_due(self, mid: MessageId) -> bool:
        """Clear the back-off of a ready message (its "not before" time becomes now)."""
        try:
            os.utime(self._envelope(mid, State.READY), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def deferral(self, mid: MessageId | str) -> Deferral | None:
        """Why the last forwarding attempt of a message failed (``queue list``), or None."""
        try:
            fd = safe_files.open_read_nofollow(self._deferral(mid))
        except OSError:
            return None
        try:
            return Deferral.from_bytes(os.read(fd, _DEFERRAL_MAX))
        except OSError:
            return None
        finally:
            os.close(fd)

    def _record_deferral(self, mid: MessageId, reason: str, code: int | None, next_try: float | None) -> None:
        """Replace the message's deferral record (not fsynced: it explains, it decides nothing)."""
        last = self.deferral(mid)
        record = Deferral(reason, code, time.time(), next_try, (last.attempts if last else 0) + 1)
        path = self._deferral(mid)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}{TMP_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover, or something planted: never written through
        fd = os.open(tmp, _WRITE_FLAGS, self.file_mode)
        try:
            self._own(fd)
            _write_all(fd, record.to_bytes())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _forget_deferral(self, mid: MessageId) -> None:
        path = self._deferral(mid)
        # most messages never had one: a lookup (no lock) rather than an unlink, which locks the spool
        # directory that every session is creating and renaming in; only the claim's holder writes one
        if os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.unlink(path)

    @_privileged
    def append_envelope_line(self, mid: MessageId, state: State, line: str) -> bool:
        """Append one ``X-MailRelay-...`` line after ``End`` of a ``.bad`` or ``.held`` envelope.

        The file is changed in place with one ``O_APPEND`` write (like upstream appends
        its reason lines), so a concurrent rename by another tool cannot resurrect an
        old copy; both readers keep such lines (upstream stops reading at ``End``, our
        parser keeps them as ``extra_tail``).  False when the envelope is not there.
        """
        if state not in (State.BAD, State.HELD):
            raise SpoolStoreError(errno.EINVAL, f"cannot annotate an envelope in state {state.label}")
        if not line.startswith("X-MailRelay-") or envelope_format._CONTROL.search(line):
            raise SpoolStoreError(errno.EINVAL, f"invalid envelope line: {line!r}")
        try:
            fd = safe_files.open_existing_for_write(self._envelope(mid, state), os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return False
        try:
            _write_all(fd, f"{line}\r\n".encode())
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return True

    @_privileged
    def probe_writable(self) -> None:
        """Create, write, fsync and delete a scratch file; SpoolStoreError when that fails (health check)."""
        path = self.directory / f".emailrelay-probe.{os.getpid()}.{threading.get_ident()}"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            fd = os.open(path, _WRITE_FLAGS, self.file_mode)
            try:
                _write_all(fd, b"probe\n")
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as exc:
            raise _store_error(exc, f"spool directory {self.directory} is not writable") from exc

    def free_bytes(self) -> int:
        """Bytes available to unprivileged users on the spool's file system."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def tool_file(self, name: str) -> Path:
        """The path of a tool's private dot-file in the spool directory (never a message file)."""
        _check_mailbox_name(name)
        if name.startswith(".") or name.startswith("emailrelay.") or ENVELOPE_SUFFIX in name:
            raise SpoolStoreError(errno.EINVAL, f"invalid tool file name: {name!r}")
        return self.directory / f".{name}"

    @_privileged
    def write_tool_file(self, name: str, data: bytes) -> None:
        """Atomically replace a tool's private dot-file (notify's state file)."""
        path = self.tool_file(name)
        tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(self._write_file(tmp, data))
        os.replace(tmp, path)

    def read_tool_file(self, name: str) -> bytes | None:
        try:
            return self.tool_file(name).read_bytes()
        except FileNotFoundError:
            return None

    @_privileged
    def remove_tool_file(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tool_file(name))

    # ---- pop support -----------------------------------------------------------------
    # The POP server (services/pop3d.py): a maildrop is the main directory or, with
    # --pop-by-name, one sub-directory named after the user, held open by descriptor
    # so that a rename or symlink swap after login cannot redirect it.

    # ---- POP maildrops ------------------------------------------------------------------
    # The POP logic (locking, listing, the --pop-by-name deletion rule) is spool/maildrop.py's;
    # every spool name it needs is made here, and every open and unlink done here, by directory fd.

    @_privileged
    def open_maildrop_dirs(self, user: str | None) -> tuple[int, int, bool]:
        """Descriptors of the spool directory and of the maildrop directory: the main directory
        itself (``user`` None, the same descriptor twice) or the ``--pop-by-name`` sub-directory,
        made when missing (as upstream makes it: mode 0770, here with the files' group); and
        whether it was made.

        SpoolStoreError: EINVAL for a name that is not one plain path component (empty,
        ``.``/``..``, a leading dot, ``/``, ``\\``, NUL or another control character);
        ENOTDIR or ELOOP when it is not a real directory directly inside the spool directory
        (a symlink is refused, even to a directory).
        """
        flags = os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC
        try:
            main_fd = os.open(self.directory, flags)
        except OSError as exc:
            raise _store_error(exc, "cannot open the spool directory") from exc
        if user is None:
            return main_fd, main_fd, False
        made = False
        try:
            if (
                not user
                or len(user) > 255
                or user.startswith(".")
                or "/" in user
                or "\\" in user
                or any(ord(c) < 32 or ord(c) == 127 for c in user)
            ):
                raise SpoolStoreError(errno.EINVAL, f"invalid maildrop name: {user!r}")
            try:
                fd = os.open(user, flags | os.O_NOFOLLOW, dir_fd=main_fd)
            except FileNotFoundError:
                fd, made = self._make_maildrop_dir(user, main_fd), True
            except OSError as exc:
                raise _store_error(exc, f"no maildrop directory {user!r}") from exc
        except BaseException:
            os.close(main_fd)
            raise
        return main_fd, fd, made

    @_privileged
    def _make_maildrop_dir(self, user: str, main_fd: int) -> int:
        return self.open_mailbox(main_fd, self.directory, user, create=True)  # as deliver: makes one

    @_privileged
    def open_maildrop_lock(self, dir_fd: int) -> int:
        """The maildrop's lock file (:data:`POP_LOCK_NAME`), created if need be; a symlink, FIFO or
        hard link planted under the name is replaced, never followed."""
        try:
            return safe_files.open_private_file(
                POP_LOCK_NAME, dir_fd=dir_fd, mode=self.file_mode, gid=self.group
            )
        except OSError as exc:
            raise _store_error(exc, "cannot create the maildrop lock file") from exc

    @staticmethod
    def ready_ids_at(dir_fd: int) -> list[MessageId]:
        """The ids of the committed (``.envelope``) messages in a directory, in id order."""
        with os.scandir(dir_fd) as it:
            ids = [p[0] for e in it if (p := split_envelope_name(e.name)) is not None and p[1] is State.READY]
        return sorted(ids)

    @staticmethod
    def content_size_at(dir_fd: int, mid: MessageId) -> int | None:
        """The size of ``mid``'s content file in a directory; None when it is missing or not a plain
        file (a symlink is not followed)."""
        try:
            st = os.stat(content_name(mid), dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        return st.st_size if stat_module.S_ISREG(st.st_mode) else None

    @staticmethod
    def content_exists_at(dir_fd: int, mid: MessageId) -> bool:
        return _exists_at(dir_fd, content_name(mid))

    @_privileged
    def open_content_at(self, dir_fd: int, mid: MessageId) -> BinaryIO | None:
        """``mid``'s content file in a directory, opened for reading; None when it is not there;
        FileNotFoundError when it is there but not a plain file (a FIFO or device: refused), and
        ELOOP when it is a symlink (never followed)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC  # a FIFO must not block the open
        try:
            cfd = os.open(content_name(mid), flags, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        if not stat_module.S_ISREG(os.fstat(cfd).st_mode):
            os.close(cfd)
            raise FileNotFoundError(errno.ENOENT, f"content of {mid} is not a plain file")
        os.set_blocking(cfd, True)
        return os.fdopen(cfd, "rb", buffering=0)

    @_privileged
    def remove_ready_envelope_at(self, dir_fd: int, mid: MessageId) -> bool:
        """Unlink ``mid``'s ``.envelope`` (only that name: a claimed ``.busy`` is never touched)."""
        try:
            os.unlink(envelope_name(mid, State.READY), dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        return True

    @_privileged
    def remove_content_at(self, dir_fd: int, mid: MessageId) -> bool:
        try:
            os.unlink(content_name(mid), dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def envelope_exists_at(dir_fd: int, mid: MessageId) -> bool:
        """Any envelope of ``mid``, in any state, in a directory."""
        return any(_exists_at(dir_fd, envelope_name(mid, state)) for state in State)

    @staticmethod
    def envelope_exists_anywhere(main_fd: int, mid: MessageId) -> bool:
        """Any envelope of ``mid``, in any state, in the main directory or any sub-directory."""
        names = [envelope_name(mid, state) for state in State]
        if any(_exists_at(main_fd, name) for name in names):
            return True
        with os.scandir(main_fd) as it:
            subdirs = [e.name for e in it if e.is_dir()]
        return any(_exists_at(main_fd, f"{sub}/{name}") for sub in subdirs for name in names)


def relay_store(spool_dir: Path) -> SpoolStore:
    """The relay's own spool, as its roles open it: new files group-owned by ``--user``'s group."""
    return SpoolStore(spool_dir, group=group_for_files())


class NewMessage:
    """A message being stored: content streamed to disk, then envelope, then commit."""

    def __init__(self, store: SpoolStore, mid: MessageId, fd: int) -> None:
        self.store = store
        self.id = mid
        self._fd: int | None = fd
        self.size = 0
        self._envelope_written = False
        self._committed = False

    @property
    def content_path(self) -> Path:
        return self.store._content(self.id)

    @property
    def envelope_path(self) -> Path:
        """The ``.envelope.new`` path (what a server-side filter is given)."""
        return self.store._envelope(self.id, State.NEW)

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise SpoolStoreError(errno.EBADF, "content file already closed")
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            raise _store_error(exc, "cannot write content file") from exc
        self.size += len(data)

    @_privileged
    def write_envelope(self, env: Envelope, *, durable: bool = True) -> None:
        """fsync the content, then write and fsync ``.envelope.new`` (steps 1-2).  Not ``durable``:
        both fsyncs are left out, for ``--immediate``'s forward-first path, where the message is
        either forwarded and removed without ever being committed, or made durable before it is
        (:class:`UncommittedClaim`)."""
        if self._fd is not None:
            try:
                if self.store.fsync and durable:
                    os.fsync(self._fd)
            except OSError as exc:
                raise _store_error(exc, "cannot sync content file") from exc
            finally:
                os.close(self._fd)
                self._fd = None
        try:
            os.close(self.store._write_file(self.envelope_path, env.to_bytes(), sync=durable))
        except OSError as exc:
            raise _store_error(exc, "cannot write envelope file") from exc
        self._envelope_written = True

    @_privileged
    def write_envelope_and_commit(self, env: Envelope) -> None:
        """:meth:`write_envelope` then :meth:`commit` in one call (one trip to a spool thread), for a
        message no filter sees in between (the smtp role's, and :meth:`SpoolStore.store_message`)."""
        self.write_envelope(env)
        self.commit()

    @_privileged
    def exists(self) -> bool:
        """False when a filter deleted the message (exit 100 style)."""
        return self.envelope_path.exists()

    @_privileged
    def commit(self) -> None:
        """Rename ``.new`` to ``.envelope`` and fsync the directory (step 4)."""
        try:
            os.rename(self.envelope_path, self.store._envelope(self.id, State.READY))
            self._committed = True
            self.store.sync_directory()
        except OSError as exc:
            raise _store_error(exc, "cannot commit message") from exc

    @_privileged
    def abandon(self) -> None:
        """Delete whatever was written; never leaves a half message."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        paths = [self.envelope_path, self.content_path]
        if self._committed:
            paths.insert(0, self.store._envelope(self.id, State.READY))
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class Claim:
    """A message claimed for forwarding: the ``.busy`` envelope, locked until closed."""

    def __init__(
        self, store: SpoolStore, mid: MessageId, fd: int, data: bytes, *, marked: bool = False
    ) -> None:
        self.store = store
        self.id = mid
        self._fd: int | None = fd
        self._raw = data
        self._envelope: Envelope | None = None
        self._marked = marked  # the claimed inode carries CLAIM_MARK

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.release()

    @property
    def active(self) -> bool:
        return self._fd is not None

    @property
    def content_path(self) -> Path:
        return self.store._content(self.id)

    @property
    def envelope_path(self) -> Path:
        return self.store._envelope(self.id, State.BUSY)

    @property
    def name_in_log(self) -> str:
        """The claimed envelope's name in log lines, as E-MailRelay 2.6b names it (it claims every
        message by renaming it to ``<id>.envelope.busy``)."""
        return envelope_name(self.id, State.BUSY)

    @_privileged
    def open_content(self) -> BinaryIO:
        """The content file for reading, with root's access (as upstream's FileReader): files that
        root put in the spool (``emailrelay-submit`` run as root, a cron job) stay readable."""
        return os.fdopen(safe_files.open_read_nofollow(self.content_path), "rb")

    @_privileged
    def envelope_bytes(self) -> bytes:
        """The ``.busy`` envelope's bytes as they are now (a client filter may have edited them)."""
        return safe_files.read_nofollow(self.envelope_path)

    def envelope(self, *, reread: bool = False) -> Envelope:
        """The envelope; ``reread`` after a client filter may have edited the file."""
        if reread or self._envelope is None:
            data = self.envelope_bytes() if reread else self._raw
            self._envelope = envelope_format.parse(data)
        return self._envelope

    @_privileged
    def rewrite(self, env: Envelope, *, sync_directory: bool = False) -> None:
        """Replace the ``.busy`` envelope's bytes; the claim (lock, and mark) moves to the new inode.
        The new file is fsynced before the rename; ``sync_directory`` also makes the rename
        itself durable before returning (a partial delivery: the old recipient list must
        not come back after a power cut)."""
        self._rewrite(env, mark=self._marked)
        if sync_directory:
            self.store.sync_directory()

    def _rewrite(self, env: Envelope, *, mark: bool) -> None:
        busy = self.envelope_path
        tmp = busy.with_name(busy.name + TMP_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = self.store._write_file(tmp, env.to_bytes())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            marked = mark and self.store._mark_claim(fd)  # before the rename: the name is never unmarked
            os.rename(tmp, busy)
        except OSError:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._swap_fd(fd)
        self._marked = marked
        self._envelope = env

    @_privileged
    def relock_if_replaced(self) -> bool:
        """A client filter that replaced the ``.busy`` file (``sed -i``, ``mv``) left the claim's lock on
        the old inode: take the lock on the new one.  True when it had to."""
        busy = self.envelope_path
        if self._fd is None:
            return False
        try:
            if os.stat(busy, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino:
                return False
            fd = safe_files.open_read_nofollow(busy)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._swap_fd(fd)
        if self._marked:  # the filter's new file is still our claim
            self._marked = self.store._mark_claim(fd)
        return True

    def _swap_fd(self, fd: int) -> None:
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _unmark(self) -> None:
        """Before the envelope leaves ``.busy``: a crash after this leaves an unmarked ``.busy`` (returned
        late), never a marked envelope that another program's claim would carry (sent twice)."""
        if self._marked and self._fd is not None:
            self.store._unmark_claim(self._fd)
            self._marked = False

    @_privileged
    def release(
        self, not_before: float | None = None, *, reason: str | None = None, code: int | None = None
    ) -> None:
        """Give the message back (4xx, connection trouble); due again at ``not_before``.  With ``reason``
        (the next hop's reply, or the connection error, and its ``code``) the deferral is recorded for
        ``emailrelay queue``; a record that cannot be written is not an error."""
        busy = self.envelope_path
        try:
            if reason is not None:
                with contextlib.suppress(OSError):
                    self.store._record_deferral(self.id, reason, code, not_before)
            if not_before is not None:
                os.utime(busy, (time.time(), not_before), follow_symlinks=False)
            self._unmark()
            os.rename(busy, self.store._envelope(self.id, State.READY))
        finally:
            self._close()

    @_privileged
    def fail(self, reason: str, code: int | None) -> Path:
        """Append the reason and rename to ``.bad`` (5xx, give-up)."""
        try:
            env = self.envelope(reread=True)
        except (OSError, EnvelopeError):
            env = None
        bad = self.store._envelope(self.id, State.BAD)
        try:
            self._unmark()  # a .bad keeps its inode: unfailed, it must not look like a claim of ours
            if env is not None:
                self._rewrite(env.with_failure(reason, code), mark=False)
            else:  # unreadable: still record why, in one append (SPEC.md §3 reason lines)
                failed = Envelope(from_address="").with_failure(reason, code)
                tail = b"".join(line + b"\r\n" for line in failed.to_bytes().split(b"\r\n")[-3:-1])
                fd = safe_files.open_existing_for_write(self.envelope_path, os.O_WRONLY | os.O_APPEND)
                try:
                    _write_all(fd, tail)
                finally:
                    os.close(fd)
            os.rename(self.envelope_path, bad)
        finally:
            self._close()
        self.store._forget_deferral(self.id)  # the .bad envelope carries the reason now
        return bad

    @_privileged
    def remove(self) -> None:
        """Forwarded: delete the envelope, then the content."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.envelope_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.content_path)
            self.store._forget_deferral(self.id)
        finally:
            self._close()

    def abandon_claim(self) -> None:
        """The message was taken care of elsewhere (a filter deleted it): just unlock."""
        self._close()


class UncommittedClaim(Claim):
    """``--immediate``'s forward-first claim: the message is still ``<id>.envelope.new``, which no
    forwarder scans and recovery never turns into mail, and its files may not be fsynced yet.

    Forwarded (:meth:`remove`): it is deleted, never having been committed; the client's ``250``
    follows the next hop's, so nothing acknowledged depended on our copy.  Otherwise, before it
    becomes ``.envelope`` (:meth:`release`) or ``.bad`` (:meth:`fail`), its content and envelope are
    fsynced: no power cut can leave a committed envelope whose content is partial.  If they cannot
    be made durable, the message is deleted (its client gets no ``250``) and the error raised.  The
    claim's lock keeps the crashed-store sweep off the ``.new`` while the claim lives."""

    @property
    def envelope_path(self) -> Path:
        return self.store._envelope(self.id, State.NEW)

    def _make_durable(self) -> None:
        if not self.store.fsync:
            return
        try:
            for path in (self.content_path, self.envelope_path):
                fd = safe_files.open_read_nofollow(path)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError:
            self.remove()
            raise

    @_privileged
    def release(
        self, not_before: float | None = None, *, reason: str | None = None, code: int | None = None
    ) -> None:
        """Commit it (made durable first) and give it back, as :meth:`Claim.release` does."""
        self._make_durable()
        super().release(not_before, reason=reason, code=code)
        self.store.sync_directory()

    @_privileged
    def fail(self, reason: str, code: int | None) -> Path:
        """Made durable first, then failed to ``.bad`` as :meth:`Claim.fail` does."""
        self._make_durable()
        bad = super().fail(reason, code)
        self.store.sync_directory()
        return bad


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_fd(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _store_error(exc: OSError, text: str) -> SpoolStoreError:
    return SpoolStoreError(exc.errno or errno.EIO, f"{text}: {exc.strerror or exc}")


_MAILDIR_SEQUENCE = itertools.count()


def maildir_name() -> str:
    """A maildir file name as E-MailRelay 2.6b makes it: ``<secs>.<usecs>.<pid>.<host>.<n>``, ``n``
    counting this process's maildir files from 0 (``/`` and ``:`` in the host name escaped, as
    the maildir convention asks)."""
    secs, usecs = divmod(time.time_ns() // 1000, 1_000_000)
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{secs}.{usecs}.{os.getpid()}.{host}.{next(_MAILDIR_SEQUENCE)}"


def _is_maildir_at(dir_fd: int) -> bool:
    """A maildir: real ``new``, ``tmp`` and ``cur`` sub-directories (symlinks do not count)."""
    for sub in ("new", "tmp", "cur"):
        try:
            if not stat_module.S_ISDIR(os.stat(sub, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return False
        except OSError:
            return False
    return True


def _check_mailbox_name(name: str) -> None:
    """A mailbox name is one path component: never empty, ``.``/``..``, a separator or a control character."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise SpoolStoreError(errno.EINVAL, f"invalid mailbox name: {name!r}")


# ---- pop support ------------------------------------------------------------------------

POP_LOCK_NAME = ".emailrelay-pop.lock"  # flock'ed by the session that holds a maildrop (spool/maildrop.py)


def _exists_at(dir_fd: int | None, name: str | Path) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True
