"""A graceful stop of the SMTP service (SIGTERM of the smtp role, ``restart smtp``) finishes every
session in flight, a connection the server accepted just before the stop included.

uvloop, as the roles run: a connection accepted in the loop's last poll reaches ``connection_made``
through a callback queued behind the stopping task, so a stop that counted its sessions at once
returned without waiting for it and the role exited with the session in progress (the client saw
"Connection unexpectedly closed").  The listening socket here is the test's own; in the relay the
supervisor holds it, and connections not yet accepted wait in its backlog for the new process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from emailrelay.config import Config
from emailrelay.services.smtpd import SmtpService
from emailrelay.spool.store import SpoolStore

uvloop = pytest.importorskip("uvloop")

pytestmark = pytest.mark.timeout(60)


def _quit_after_the_greeting(sock: socket.socket, replies: list[bytes]) -> None:
    with sock, sock.makefile("rb") as f:
        replies.append(f.readline())
        sock.sendall(b"QUIT\r\n")
        replies.append(f.readline())


def test_stop_waits_for_a_connection_accepted_just_before(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, int], list[bytes]]:
        service = SmtpService(Config(domain="vm").frozen(), SpoolStore(tmp_path, fsync=False))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        await service.start([listener])
        client = socket.create_connection(listener.getsockname()[:2], timeout=10)  # in the backlog now
        replies: list[bytes] = []
        thread = threading.Thread(target=_quit_after_the_greeting, args=(client, replies))
        thread.start()
        await asyncio.sleep(0)  # the loop's next poll accepts it; connection_made is queued behind us
        await service.stop(5.0)
        when_stopped = dict(service.stats)
        await asyncio.to_thread(thread.join, 10)
        return when_stopped, replies

    when_stopped, replies = uvloop.run(scenario())
    assert when_stopped == {"started": 1, "finished": 1}, "stop returned with the session in progress"
    assert [r[:4] for r in replies] == [b"220 ", b"221 "]
