"""ZeroMQ endpoints of the bus: the only module that imports zmq.

What it is for: the ``bus`` role runs :func:`run_forwarder` (an XSUB/XPUB
proxy on two ``ipc://`` files in the run directory); every other role uses
a :class:`BusClient` to publish (PUB connected to the proxy's XSUB side)
and to subscribe (SUB connected to the XPUB side) from asyncio.

Guarantees: publishing never blocks the caller (a full or absent bus drops
the message — it is only a doorbell); a restarted bus is reconnected to by
ZeroMQ automatically; sockets use ``linger=0`` so a role never hangs on exit.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import zmq
import zmq.asyncio

from . import schema


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
    """Publish and subscribe from one asyncio process."""

    def __init__(self, run_dir: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.pub_endpoint, self.sub_endpoint = schema.endpoints(run_dir)
        self._pub: Any = None
        self._sub: Any = None
        # connect now, not at the first publish: a PUB socket drops what it sends before the
        # proxy's subscriptions have reached it, so a lazily connected one loses its first messages
        self._publisher()

    def _publisher(self) -> Any:
        if self._pub is None:
            # a plain socket on the same context: a PUB socket's NOBLOCK send never waits, and the
            # asyncio socket's send_multipart (a future and an event-loop callback per message) cost
            # about a fifth of the smtp role's event-loop CPU (four messages per mail)
            sock = zmq.Context.shadow(self.ctx.underlying).socket(zmq.PUB)
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

    async def messages(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        if self._sub is None:
            raise RuntimeError("subscribe() first")
        while True:
            frames = await self._sub.recv_multipart()
            decoded = schema.decode(frames)
            if decoded is not None:
                yield decoded

    def close(self) -> None:
        for sock in (self._pub, self._sub):
            if sock is not None:
                sock.close(0)
        self.ctx.term()
