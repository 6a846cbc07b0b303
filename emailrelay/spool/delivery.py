"""Delivery into mailboxes and maildirs: the ``deliver:`` and ``copy:`` filters and
``emailrelay-submit --copy``.

What it is for: copying a message a filter was given (or one just submitted) into ``base/<name>``
for each mailbox name, and deleting the original when asked.  The spool names, opens, writes and
renames are :class:`~emailrelay.spool.store.SpoolStore`'s (by directory descriptor): this module
decides which, in what order, and for which mailboxes.

What it guarantees:
- every step runs with effective root (:func:`~emailrelay.identity.as_root`), as E-MailRelay 2.6b
  delivers: a delivery directory only root may write (mode 0700) takes mailboxes; what is made
  belongs to root with the files' group (mailboxes 0770, files the store's mode);
- every mailbox name is checked (one path component, no control characters) before anything is
  made or copied; with ``create`` every missing mailbox is made (``on_create`` told first) before
  anything is copied; the delivery base itself is never made (E-MailRelay 2.6b's "no such file or
  directory" for a missing ``--delivery-dir``);
- mailbox directories (and a maildir's ``tmp`` and ``new``) are opened one component at a time
  with ``O_NOFOLLOW`` and written through their descriptors: a symlink planted under ``base`` is
  refused, never followed (told from a file in the way by an ``lstat``);
- the original is deleted only after every copy was made;
- a failure is a :class:`DeliveryError` whose text is E-MailRelay 2.6b's for that step
  (``delivery: cannot write content file: copy: <path>: operation not permitted``), never a
  Python representation.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .envelope import Envelope, EnvelopeError, parse
from .names import MessageId, State, content_name, envelope_name
from .store import SpoolStore, SpoolStoreError, _check_mailbox_name, _privileged


class DeliveryError(SpoolStoreError):
    """A delivery step failed; ``str()`` is E-MailRelay 2.6b's text for it."""

    def __init__(self, code: int | None, text: str) -> None:
        super().__init__(code or errno.EIO, text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class OriginalNotRemoved(DeliveryError):
    """Every copy was made but the original could not be deleted (``cannot delete file: <path>: ...``)."""

    def __init__(self, code: int | None, path: Path, reason: str) -> None:
        super().__init__(code, f"cannot delete file: {path}: {reason}")
        self.path = path
        self.reason = reason


def _cause(exc: OSError) -> OSError:
    """The system's error behind the store's own wrapping of it (SpoolStoreError ``from`` it)."""
    return exc.__cause__ if isinstance(exc.__cause__, OSError) else exc


def _reason(exc: OSError) -> str:
    """The system's words for a failure, lower case as upstream prints them."""
    cause = _cause(exc)
    return (cause.strerror or str(cause)).lower()


def _errno_of(exc: OSError) -> int | None:
    return _cause(exc).errno


def _failed(step: str, kind: str, path: Path | str, exc: OSError) -> DeliveryError:
    return DeliveryError(exc.errno, f"delivery: {step}: {kind}: {path}: {_reason(exc)}")


def _cannot_create(path: Path, reason: str, code: int | None) -> DeliveryError:
    return DeliveryError(code, f"delivery: cannot create delivery directory: {path}: {reason}")


@_privileged
def read_envelope(store: SpoolStore, mid: MessageId, state: State) -> Envelope:
    """The envelope of the message a filter was given, read as root (never through a symlink)."""
    try:
        return parse(_envelope_bytes(store, mid, state))
    except EnvelopeError as exc:
        raise DeliveryError(
            errno.EINVAL, f"invalid envelope file: {store.envelope_path(mid, state)}: {exc}"
        ) from None


def _envelope_bytes(store: SpoolStore, mid: MessageId, state: State) -> bytes:
    try:
        return store.envelope_bytes_nofollow(mid, state)
    except OSError as exc:
        path = store.envelope_path(mid, state)
        raise DeliveryError(exc.errno, f"cannot read envelope file: {path}: {_reason(exc)}") from None


@_privileged
def copy_to_directories(
    store: SpoolStore,
    mid: MessageId,
    state: State,
    base: str | os.PathLike[str],
    names: list[str],
    *,
    hardlink: bool = False,
    envelope_only: bool = False,
    create: bool = False,
    delete_original: bool = False,
    kind: str = "copy",
    on_create: Callable[[str], None] | None = None,
) -> list[Path]:
    """Copy a message into ``base/<name>`` for each mailbox name; returns the files written.

    A directory with ``new``, ``tmp`` and ``cur`` sub-directories is a maildir: the content alone
    goes to ``tmp`` and is renamed into ``new`` under a maildir name, as E-MailRelay 2.6b names it
    (``<secs>.<usecs>.<pid>.<host>.<n>``).  Any other directory gets the content (hard-linked
    when ``hardlink`` and possible; not at all when ``envelope_only``, ``copy:pop``) and then a
    committed envelope.  ``create`` makes missing mailbox directories (``deliver:``), calling
    ``on_create(name)`` before each.  With ``delete_original`` the original envelope (and content,
    unless ``envelope_only``) is deleted after every copy was made (:func:`remove_original`).
    ``kind`` is the word E-MailRelay 2.6b's failure texts name the filter by (``copy``,
    ``deliver``).  Raises :class:`DeliveryError`.
    """
    base_dir = Path(base).absolute()
    for name in names:
        try:
            _check_mailbox_name(name)
        except SpoolStoreError:
            raise DeliveryError(
                errno.EINVAL, f"delivery: cannot create delivery directory: invalid mailbox name: {name}"
            ) from None
    env_data = _envelope_bytes(store, mid, state)
    out: list[Path] = []
    if names:
        base_fd, base_error = _open_base(store, base_dir)
        try:
            if create:
                for name in names:
                    _make_mailbox(store, base_fd, base_error, base_dir, name, on_create)
            if base_fd is None:
                assert base_error is not None
                raise _cannot_create(base_dir / names[0], _reason(base_error), base_error.errno)
            job = _Copy(store, mid, env_data, kind, hardlink, envelope_only)
            out = [job.into(base_fd, base_dir, name) for name in names]
        finally:
            if base_fd is not None:
                os.close(base_fd)
    if delete_original:
        remove_original(store, mid, state, content=not envelope_only)
    return out


@_privileged
def remove_original(store: SpoolStore, mid: MessageId, state: State, *, content: bool) -> None:
    """Delete the original envelope (and its content when ``content``) once every copy was made;
    raises :class:`OriginalNotRemoved` (upstream's ``cannot delete file: <path>: <reason>``)."""
    try:
        store.remove_delivered_original(mid, state, content=content)
    except OSError as exc:
        path = Path(os.fsdecode(exc.filename)) if exc.filename else store.envelope_path(mid, state)
        raise OriginalNotRemoved(exc.errno, path, _reason(exc)) from None


def _open_base(store: SpoolStore, base_dir: Path) -> tuple[int | None, OSError | None]:
    """A descriptor on the delivery base, or the error opening it (reported against a mailbox)."""
    try:
        return store.open_delivery_base(base_dir, create=False), None
    except OSError as exc:
        return None, exc


def _open_box(store: SpoolStore, base_fd: int, base_dir: Path, name: str, create: bool) -> int:
    """A mailbox's descriptor; a symlink (or other non-directory) in its place is refused."""
    try:
        return store.open_mailbox(base_fd, base_dir, name, create)
    except OSError as exc:
        path = base_dir / name
        if _errno_of(exc) in (errno.ELOOP, errno.ENOTDIR):
            raise _cannot_create(path, "not a directory (a symlink?): refused", errno.ELOOP) from None
        raise _cannot_create(path, _reason(exc), exc.errno) from None


def _make_mailbox(
    store: SpoolStore,
    base_fd: int | None,
    base_error: OSError | None,
    base_dir: Path,
    name: str,
    on_create: Callable[[str], None] | None,
) -> None:
    """Make ``name`` when it is missing (E-MailRelay 2.6b's order: its ``creating mailbox`` line,
    then the attempt); a plain file in its place is its "file exists"."""
    path = base_dir / name
    found: int | None = None
    if base_fd is not None:
        try:
            os.close(store.open_mailbox(base_fd, base_dir, name, False))
            return
        except OSError as exc:
            found = _errno_of(exc)
            if found in (errno.ELOOP, errno.ENOTDIR) and _is_symlink_at(base_fd, name):  # never followed
                raise _cannot_create(path, "not a directory (a symlink?): refused", errno.ELOOP) from None
            if found not in (errno.ENOENT, errno.ENOTDIR):
                raise _cannot_create(path, _reason(exc), exc.errno) from None
    if on_create is not None:
        on_create(name)
    if base_fd is None:
        assert base_error is not None
        raise _cannot_create(path, _reason(base_error), base_error.errno)
    if found == errno.ENOTDIR:
        raise _cannot_create(path, os.strerror(errno.EEXIST).lower(), errno.EEXIST)
    os.close(_open_box(store, base_fd, base_dir, name, True))


def _is_symlink_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class _Copy:
    """One message's copy into mailboxes, as :func:`copy_to_directories` was asked for it."""

    store: SpoolStore
    mid: MessageId
    env_data: bytes
    kind: str
    hardlink: bool
    envelope_only: bool

    def into(self, base_fd: int, base_dir: Path, name: str) -> Path:
        """One mailbox's copy: a maildir file, or the content (unless ``envelope_only``) and an envelope."""
        store, mid, kind = self.store, self.mid, self.kind
        box_dir = base_dir / name
        box = _open_box(store, base_fd, base_dir, name, False)
        try:
            if store.is_maildir_at(box):
                try:
                    return store.copy_into_maildir(mid, box, box_dir, hardlink=self.hardlink)
                except OSError as exc:
                    raise _maildir_failed(kind, box_dir, exc) from None
            if not self.envelope_only:
                try:
                    store.place_content_at(mid, box, hardlink=self.hardlink)
                except OSError as exc:
                    raise _failed(
                        "cannot write content file", kind, box_dir / content_name(mid), exc
                    ) from None
            committed = envelope_name(mid, State.READY)
            try:
                committed = store.commit_envelope_at(box, mid, self.env_data)
            except OSError as exc:
                raise _failed("cannot write envelope file", kind, box_dir / committed, exc) from None
            return box_dir / committed
        finally:
            os.close(box)


def _maildir_failed(kind: str, maildir: Path, exc: OSError) -> DeliveryError:
    """A maildir step's failure in upstream's words: the rename into ``new`` ("cannot move maildir
    file"), else writing in ``tmp`` ("cannot write maildir tmp file"), named by the file."""
    if exc.filename2 is not None:
        return _failed("cannot move maildir file", kind, maildir / "new" / os.fsdecode(exc.filename2), exc)
    name = os.fsdecode(exc.filename) if exc.filename is not None else ""
    path = maildir / name if name in ("tmp", "new") else maildir / "tmp" / name
    return _failed("cannot write maildir tmp file", kind, path, exc)
