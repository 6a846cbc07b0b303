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
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ..spool.names import State, split_envelope_name

#: Only creations and renames can make a ``.envelope``; asking inotify for just these (not the
#: open/modify/close events of every content write) saves about a quarter of this role's CPU.
_EVENTS = [FileCreatedEvent, FileMovedEvent]


class _Handler(FileSystemEventHandler):
    def __init__(self, on_ready: Callable[[str], None]) -> None:
        self.on_ready = on_ready

    def _check(self, path: str | bytes) -> None:
        name = (path.decode() if isinstance(path, bytes) else path).rsplit("/", 1)[-1]
        parsed = split_envelope_name(name)
        if parsed is not None and parsed[1] is State.READY:
            self.on_ready(str(parsed[0]))

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._check(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._check(event.dest_path)


class SpoolWatcher:
    """Watches one spool directory; calls ``on_ready(id)`` from the event loop thread."""

    def __init__(
        self,
        directory: str,
        on_ready: Callable[[str], None],
        *,
        polling: bool = False,
        poll_interval: float = 1.0,
    ) -> None:
        self.directory = directory
        self.on_ready = on_ready
        self.polling = polling
        self.poll_interval = poll_interval
        self._observer: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> str:
        """Start watching; returns "inotify" or "poll" (what is in use)."""

        def ready(mid: str) -> None:
            loop.call_soon_threadsafe(self.on_ready, mid)

        handler = _Handler(ready)
        if not self.polling:
            try:
                observer = Observer()
                observer.schedule(handler, self.directory, recursive=False, event_filter=_EVENTS)
                observer.start()
                self._observer = observer
                return "inotify"
            except OSError:
                pass  # no inotify here (limits, some container mounts): fall back to polling
        observer = PollingObserver(timeout=self.poll_interval)
        observer.schedule(handler, self.directory, recursive=False, event_filter=_EVENTS)
        observer.start()
        self._observer = observer
        return "poll"

    def stop(self) -> None:
        observer = self._observer
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(5)
