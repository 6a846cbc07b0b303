"""ZeroMQ endpoints of the bus: the only module that imports zmq.

What it is for: the ``bus`` role runs :func:`run_forwarder` (an XSUB/XPUB
proxy on two ``ipc://`` files in the run directory); every other role uses
a :class:`BusClient` to publish (PUB connected to the proxy's XSUB side)
and to subscribe (SUB connected to the XPUB side) from asyncio or a plain
poll loop (the notify role): plain sockets, the subscriber read through
ZeroMQ's descriptor on the event loop, or polled.

Guarantees: publishing never blocks the caller (a full or absent bus drops
the message — it is only a doorbell); a restarted bus is reconnected to by
ZeroMQ automatically; sockets use ``linger=0`` so a role never hangs on exit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import zmq

if TYPE_CHECKING:
    import asyncio  # (imported by messages(): the bus role's proxy runs no event loop)

from . import schema

SUBSCRIBE_SETTLE = 1.0  # seconds for a new subscription to reach the bus (ZeroMQ's slow joiner)


def run_forwarder(
    run_dir: str, mode: int = 0o660, privileged: Callable[[], AbstractContextManager[object]] = nullcontext
) -> None:
    """Run the proxy until the process is terminated (blocking).

    The socket files get ``mode`` when they are created (the umask is set around the bind, never a
    chmod after it), and the effective group of the process; ``privileged`` is entered around each
    bind (the run directory is writable by root only)."""
    ctx = zmq.Context.instance()
    front = ctx.socket(zmq.XSUB)
    back = ctx.socket(zmq.XPUB)
    pub_endpoint, sub_endpoint = schema.endpoints(run_dir)
    for sock, endpoint in ((front, pub_endpoint), (back, sub_endpoint)):
        sock.setsockopt(zmq.LINGER, 0)
        with privileged():
            old_umask = os.umask(0o777 & ~mode)
            try:
                sock.bind(endpoint)  # replaces a socket file left by a previous bus
            finally:
                os.umask(old_umask)
    try:
        zmq.proxy(front, back)
    except zmq.ContextTerminated:
        pass
    finally:
        front.close(0)
        back.close(0)


class BusClient:
    """Publish and subscribe from one process: with asyncio (:meth:`messages`), or from a plain poll
    loop (:meth:`wait`, then :meth:`received`)."""

    def __init__(self, run_dir: str) -> None:
        self.ctx = zmq.Context()
        self.pub_endpoint, self.sub_endpoint = schema.endpoints(run_dir)
        self._pub: Any = None
        self._sub: Any = None
        self._reading: tuple[asyncio.AbstractEventLoop, int] | None = None  # messages()' reader
        self._poller: tuple[tuple[int, ...], Any] | None = None  # wait()'s
        # connect now, not at the first publish: a PUB socket drops what it sends before the
        # proxy's subscriptions have reached it, so a lazily connected one loses its first messages
        self._publisher()

    def _publisher(self) -> Any:
        if self._pub is None:
            # a plain socket: a PUB socket's NOBLOCK send never waits, and zmq.asyncio's send_multipart
            # (a future and an event-loop callback per message) cost more than the send itself
            sock = self.ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 10000)
            sock.connect(self.pub_endpoint)
            self._pub = sock
        return self._pub

    def publish(self, topic: str, **body: Any) -> None:
        try:
            self._publisher().send_multipart(schema.encode(topic, body), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # a doorbell that does not ring is not an error: the poll timer is the truth

    def subscribe(self, topics: Iterable[str]) -> None:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(self.sub_endpoint)
        self._sub = sock

    def wait(self, fds: Iterable[int], timeout: float | None) -> tuple[bool, set[int]]:
        """A plain poll loop's wait (no event loop): until a message is queued for the subscriber
        (after :meth:`subscribe`), one of ``fds`` is readable, or ``timeout`` seconds (None: no
        limit) have passed.  (Whether messages are queued, which of ``fds`` are readable.)"""
        if self._sub is None:
            raise RuntimeError("subscribe() first")
        fds = tuple(fds)
        if self._poller is None or self._poller[0] != fds:  # (one poller while the fds stay the same)
            poller = zmq.Poller()
            poller.register(self._sub, zmq.POLLIN)
            for fd in fds:
                poller.register(fd, zmq.POLLIN)
            self._poller = (fds, poller)
        ready = dict(self._poller[1].poll(None if timeout is None else max(0.0, timeout) * 1000))
        return self._sub in ready, {fd for fd in ready if isinstance(fd, int)}

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        """Every message queued now for the subscriber (none when none is), without waiting."""
        if self._sub is None:
            raise RuntimeError("subscribe() first")
        out = []
        while True:
            try:
                frames = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            decoded = schema.decode(frames)
            if decoded is not None:
                out.append(decoded)

    async def messages(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Every message, as they come.  A plain socket read on the event loop through ZeroMQ's
        (edge-triggered) descriptor: every queued message is taken with a NOBLOCK receive, and the
        loop waits only when ZeroMQ says none is left (no future per message, as zmq.asyncio has)."""
        import asyncio

        sock = self._sub
        if sock is None:
            raise RuntimeError("subscribe() first")
        loop = asyncio.get_running_loop()
        fd = sock.getsockopt(zmq.FD)
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        self._reading = (loop, fd)
        try:
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    readable.clear()
                    if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # this also re-arms the descriptor
                        await readable.wait()
                    continue
                decoded = schema.decode(frames)
                if decoded is not None:
                    yield decoded
        finally:
            self._stop_reading()

    def _stop_reading(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                reading[0].remove_reader(reading[1])

    def close(self) -> None:
        self._stop_reading()  # before the descriptor goes (a reader cancelled with it stops later)
        for sock in (self._pub, self._sub):
            if sock is not None:
                sock.close(0)
        self.ctx.term()
