"""The spool notifier: rings the bus when an ``.envelope`` appears, whoever wrote it.

What it is for: the ``notify`` role.  A watchdog observer on the spool
directory (inotify where it works, watchdog's polling observer with
``--notify=poll`` or when inotify cannot be set up) turns every new
``<id>.envelope`` — committed by our smtp role, written by
``emailrelay-submit``, a filter, or upstream E-MailRelay sharing the spool,
or released back from ``.busy`` — into a ``spool.ready`` message.

Guarantees: it only reads directory events; it never touches spool files.
A missed event costs at most one ``--poll`` period, because forwarders
rescan on their own timer.

Cost: with inotify the events are read straight from the inotify file
descriptor when it is readable (no watchdog threads, queues or event
objects: they cost about 0.7 ms of CPU a message, as much as a third of the
smtp role), asking the kernel only for creations and renames into the
directory; one read takes every event queued since the last, and the
names are filtered as bytes before anything is parsed.  An overflow of the
kernel's queue rings every ``.envelope`` in the directory.

Privileges: started as root, the role calls :func:`prepare` before it becomes
``--user`` (services/preload.py): inotify is set up then, as root, and kept
for :meth:`SpoolWatcher.start`, so watchdog (about 1 MB of heap) is imported,
as root, only when the polling observer will be used: ``--notify=poll``, or
no inotify here.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import struct
import threading

from ..spool.names import State, split_envelope_name

# <sys/inotify.h>: only creations and renames into the directory can make a ``.envelope``
IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READY_SUFFIX = b".envelope"


def ready_id(name: str) -> str | None:
    """The message id when ``name`` is a ready envelope's file name, else None."""
    parsed = split_envelope_name(name)
    return str(parsed[0]) if parsed is not None and parsed[1] is State.READY else None


def parse_events(buf: bytes) -> tuple[list[str], bool]:
    """The names of ready envelopes in a buffer of inotify events (in order, once each), and whether
    the kernel's queue overflowed."""
    names: dict[str, None] = {}
    overflow = False
    pos, end, size = 0, len(buf), _EVENT.size
    while pos + size <= end:
        _, mask, _, length = _EVENT.unpack_from(buf, pos)
        name = buf[pos + size : pos + size + length].rstrip(b"\0")
        pos += size + length
        if mask & IN_Q_OVERFLOW:
            overflow = True
        elif name.endswith(_READY_SUFFIX) and not mask & IN_ISDIR:  # cheap test first: most are not
            mid = ready_id(name.decode("utf-8", "surrogateescape"))
            if mid is not None:
                names[mid] = None
    return list(names), overflow


class _Inotify:
    """One inotify descriptor watching one directory (non-blocking: read when it is readable)."""

    def __init__(self, directory: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if libc.inotify_add_watch(fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
        self.fd = fd

    def read(self) -> bytes:
        try:
            return os.read(self.fd, 65536)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.fd)


def _open_inotify(directory: str) -> _Inotify | None:
    try:
        return _Inotify(directory)
    except (OSError, AttributeError):
        return None  # no inotify here (limits, some container mounts): the caller polls


_PREPARED: dict[str, _Inotify] = {}  # set up by prepare() as root, taken by SpoolWatcher.start()


def prepare(directory: str, polling: bool) -> bool:
    """Before the notify role becomes ``--user``: set up inotify on ``directory`` now, as
    :meth:`SpoolWatcher.start` would, and keep it for that; True when the watcher will poll instead
    (``polling``, or inotify cannot be set up), so the polling observer must be imported now."""
    if polling:
        return True
    if directory not in _PREPARED:
        inotify = _open_inotify(directory)
        if inotify is None:
            return True
        _PREPARED[directory] = inotify
    return False


class SpoolWatcher:
    """Watches one spool directory.  :meth:`fileno` becomes readable when there is news; then
    :meth:`ready_ids` says which ready envelopes appeared (no event loop: the notify role polls it
    beside its bus socket)."""

    def __init__(self, directory: str, *, polling: bool = False, poll_interval: float = 1.0) -> None:
        self.directory = directory
        self.polling = polling
        self.poll_interval = poll_interval
        self._observer: threading.Thread | None = None
        self._inotify: _Inotify | None = None
        self._found: collections.deque[str] = collections.deque()  # the polling observer's, for ready_ids
        self._wake: tuple[int, int] | None = None  # (read, write): the polling observer's doorbell

    def start(self) -> str:
        """Start watching; returns "inotify" or "poll" (what is in use)."""
        prepared = _PREPARED.pop(self.directory, None)
        if not self.polling:
            self._inotify = prepared or _open_inotify(self.directory)
            if self._inotify is not None:
                return "inotify"
        elif prepared is not None:
            prepared.close()
        self._start_polling()
        return "poll"

    def fileno(self) -> int:
        if self._inotify is not None:
            return self._inotify.fd
        if self._wake is None:
            raise RuntimeError("start() first")
        return self._wake[0]

    def ready_ids(self) -> list[str]:
        """The ids of the ready envelopes that appeared since the last call (each once)."""
        if self._inotify is None:
            return self._polled()
        names, overflow = parse_events(self._inotify.read())
        if overflow:  # events were lost: every ready envelope now in the directory
            try:
                with os.scandir(self.directory) as it:
                    names = [mid for e in it if (mid := ready_id(e.name)) is not None]
            except OSError:
                names = []
        return names

    def _polled(self) -> list[str]:
        if self._wake is not None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake[0], 4096):
                    pass
        found: dict[str, None] = {}
        while self._found:
            found[self._found.popleft()] = None
        return list(found)

    def _start_polling(self) -> None:
        from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler
        from watchdog.observers.polling import PollingObserver

        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = (read, write)
        found = self._found

        class Handler(FileSystemEventHandler):
            def _check(self, path: str | bytes) -> None:
                mid = ready_id((path.decode() if isinstance(path, bytes) else path).rsplit("/", 1)[-1])
                if mid is not None:
                    found.append(mid)  # (a deque: safe across threads)
                    with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                        os.write(write, b"\0")

            def on_created(self, event: FileSystemEvent) -> None:
                if not event.is_directory:
                    self._check(event.src_path)

            def on_moved(self, event: FileSystemEvent) -> None:
                if not event.is_directory:
                    self._check(event.dest_path)

        observer = PollingObserver(timeout=self.poll_interval)
        observer.schedule(
            Handler(), self.directory, recursive=False, event_filter=[FileCreatedEvent, FileMovedEvent]
        )
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        observer = self._observer
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(5)
        wake, self._wake = self._wake, None
        if wake is not None:
            for fd in wake:
                os.close(fd)
