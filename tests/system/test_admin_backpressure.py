"""Clients that never read cost the relay bounded memory (issue 19).

A client pipelining hundreds of thousands of admin commands without reading
the replies, an admin ``events`` watcher that does not read, and an
``emailrelay events`` process whose output nobody reads: in each case the
process's resident memory (psutil, by pid) stays within a few megabytes of
what it was, and the admin port goes on serving other clients. Before the
fix, 400k pipelined ``help`` grew the admin role from 38 to 126 MB.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from emailrelay.bus import schema
from emailrelay.bus.endpoint import BusClient
from tests.support.relay import free_port, program, stop_process
from tests.support.sink_counter import PROMPT, AdminClient, role_pids, run_dir, supervised_relay

pytestmark = pytest.mark.timeout(180)

GROWTH_LIMIT = 20 * 1024 * 1024
COMMANDS = 600_000  # "help" replies are ~110 bytes: ~66 MB if they were all buffered
EVENTS, EVENT_SIZE = 20_000, 4000  # ~80 MB if they were all buffered


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _non_reading_client(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the kernel's share small
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def _unread_by_server(server_port: int, client: socket.socket) -> int:
    """Bytes the server side of ``client``'s connection has not read (its receive queue, /proc/net/tcp)."""
    client_port = client.getsockname()[1]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return int(queues.split(":")[1], 16)
    raise AssertionError(f"no connection 127.0.0.1:{server_port} <- :{client_port} in /proc/net/tcp")


def _send_until_stalled(sock: socket.socket, payload: bytes, stall: float = 2.0) -> int:
    """Send as much of ``payload`` as the peer takes; stop when it has taken nothing for ``stall`` s."""
    sent, last = 0, time.monotonic()
    while sent < len(payload) and time.monotonic() - last < stall:
        try:
            n = sock.send(payload[sent : sent + 65536])
        except BlockingIOError:
            time.sleep(0.02)
            continue
        sent += n
        last = time.monotonic()
    return sent


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[int, dict[str, list[int]], Path]]:
    """(admin port, role pids, run directory) of a supervised relay."""
    admin_port = free_port()
    with supervised_relay(tmp_path, "--admin", str(admin_port), roles={"bus": 1, "smtp": 1, "admin": 1}) as r:
        with AdminClient(admin_port) as warm:
            assert warm.cmd("help").startswith(b"commands: ")
        yield admin_port, role_pids(r.pid), run_dir(r.spool)


def test_pipelining_client_that_never_reads(relay: tuple[int, dict[str, list[int]], Path]) -> None:
    admin_port, pids, _ = relay
    (admin_pid,) = pids["admin"]
    before = _rss(admin_pid)
    hog = _non_reading_client(admin_port)
    try:
        _send_until_stalled(hog, b"help\r\n" * COMMANDS)
        time.sleep(1.0)
        # the role stopped reading: the kernel holds the rest of the commands, not the role
        assert _unread_by_server(admin_port, hog) > 100_000
        grown = _rss(admin_pid) - before
        assert grown < GROWTH_LIMIT, f"admin role grew by {grown // 1024} KiB"
        with AdminClient(admin_port) as other:  # the role still serves everybody else
            assert other.cmd("help").startswith(b"commands: ")
            assert other.cmd("pid").endswith(PROMPT)
    finally:
        hog.close()


def _publish_events(rdir: Path, count: int = EVENTS) -> None:
    """``count`` big events on the real bus, paced so that ZeroMQ's queues do not just drop them."""
    bus = BusClient(str(rdir))
    try:
        time.sleep(0.3)  # the publisher's connection reaches the proxy
        for i in range(count):
            bus.publish(schema.SMTP_REJECTED, reason="x" * EVENT_SIZE, n=i)
            if i % 200 == 199:
                time.sleep(0.01)
    finally:
        bus.close()


def test_events_watcher_that_never_reads(relay: tuple[int, dict[str, list[int]], Path]) -> None:
    admin_port, pids, rdir = relay
    (admin_pid,) = pids["admin"]
    before = _rss(admin_pid)
    watcher = _non_reading_client(admin_port)
    try:
        watcher.send(b"events\r\n")
        time.sleep(0.5)
        _publish_events(rdir)
        grown = _rss(admin_pid) - before
        assert grown < GROWTH_LIMIT, f"admin role grew by {grown // 1024} KiB"
        with AdminClient(admin_port) as other:
            assert other.cmd("help").startswith(b"commands: ")
        # the watcher reads at last: what it lost is said, and the stream goes on
        watcher.setblocking(True)
        watcher.settimeout(0.5)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := watcher.recv(1 << 20):
                received += chunk
        _publish_events(rdir, 5)
        watcher.settimeout(5)
        with contextlib.suppress(TimeoutError):
            while b'events.dropped {"count":' not in received:
                chunk = watcher.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
        # other events of the relay's own (a "network" event for a connection) may come first
        assert received.startswith(PROMPT)
        assert b"\r\nsmtp.rejected {" in received or received.startswith(PROMPT + b"smtp.rejected {")
        assert b'events.dropped {"count":' in received
    finally:
        watcher.close()


def test_events_tool_whose_output_nobody_reads(relay: tuple[int, dict[str, list[int]], Path]) -> None:
    """ZeroMQ's high-water marks bound it: the tool's receive queue and, in the bus role, the
    queue of this subscriber (1000 messages each by default); the rest is dropped."""
    _, pids, rdir = relay
    (bus_pid,) = pids["bus"]
    proc = subprocess.Popen(
        [program(), "events", "--run-dir", str(rdir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1.5)  # subscribed
        before, bus_before = _rss(proc.pid), _rss(bus_pid)
        _publish_events(rdir)
        grown, bus_grown = _rss(proc.pid) - before, _rss(bus_pid) - bus_before
        assert proc.poll() is None
        assert grown < GROWTH_LIMIT, f"emailrelay events grew by {grown // 1024} KiB"
        assert bus_grown < GROWTH_LIMIT, f"the bus role grew by {bus_grown // 1024} KiB"
        assert proc.stdout is not None
        assert b" smtp.rejected " in proc.stdout.read(65536)  # it was subscribed: its pipe is full
    finally:
        stop_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()
