"""A regression test for disconnects (the shared helpers are in ``tests/support/smtpd.py``).

``test_relay_keeps_serving_after_clients_disconnect`` guards the bug where
SmtpSession._pump() spun forever once a client connection closed (fixed in
777a8c8): every other relay test depends on it, so it fails first and clearly.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.smtpd import Relays


@pytest.fixture
def relays(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = Relays(tmp_path)
    yield r
    r.close()


@pytest.mark.timeout(120)
def test_relay_keeps_serving_after_clients_disconnect(relays: Relays) -> None:
    relay = relays.start()
    try:
        # a client that says QUIT, one that just closes, one that resets the connection
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            s.settimeout(10)
            assert s.recv(100).startswith(b"220 ")
            s.sendall(b"QUIT\r\n")
            assert s.recv(100).startswith(b"221 ")
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            s.settimeout(10)
            s.recv(100)
        s = socket.create_connection(("127.0.0.1", relay.port), 10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            s.settimeout(10)
            assert s.recv(100).startswith(b"220 ")
        started = time.monotonic()
        assert relay.stop(timeout=15) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 15
    finally:
        relay.kill9()
