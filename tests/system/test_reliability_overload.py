"""Overload: idle and slowloris connections, connection limits, huge messages, clients that never read.

Promises (ARCHITECTURE.md "Protocol cores", SPEC.md §7):

- 1,000 idle connections plus 200 slowloris connections (one byte a second)
  do not keep a normal client from its greeting: p99 of 50 greetings < 1 s;
- ``--max-connections N`` answers ``421`` beyond N;
- a 100 MB message and a 1,000-recipient message go through (in and out)
  with bounded memory: the RSS growth of the smtp and forward roles is
  sampled with psutil;
- a client that pipelines thousands of NOOPs without reading the replies
  does not grow the server's memory without bound.

Run with ``-s`` for the figures.  ``tests/soak/overload.py`` runs bigger loads.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import smtplib
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import Relay, start_relay
from tests.support.sink import postfix_sink, run_client, states
from tests.support.sink_counter import poll, role_pids, wait_for_roles
from tests.support.smtpd import short_run_dir

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

MB = 1024 * 1024


@contextlib.contextmanager
def relay_with(tmp_path: Path, *args: str, roles: dict[str, int], name: str = "ov") -> Iterator[Relay]:
    rd = short_run_dir()
    relay = start_relay(tmp_path, "--run-dir", str(rd), *args, name=name)
    try:
        wait_for_roles(relay.pid, roles, timeout=30)
        yield relay
    finally:
        relay.stop(timeout=20)
        shutil.rmtree(rd, ignore_errors=True)


class RssSampler:
    """Samples the summed RSS of the relay's processes of one role every 20 ms in a thread."""

    def __init__(self, relay_pid: int, role: str) -> None:
        self.procs = [psutil.Process(p) for p in role_pids(relay_pid).get(role, [])]
        assert self.procs, f"no {role} process"
        self.baseline = self._rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for p in self.procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.baseline) / MB


def greeting_time(port: int) -> float:
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - began
        assert data.startswith(b"220"), data
        with contextlib.suppress(OSError):
            s.sendall(b"QUIT\r\n")
    return elapsed


def first_line(port: int) -> bytes:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.recv(1024)
    return b""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_overload(port: int, idle: int, slow: int, seconds: float, greetings: int) -> dict[str, float]:
    """Hold ``idle`` silent and ``slow`` slowloris connections for ``seconds``; time ``greetings``."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    figures: dict[str, float] = {}
    try:
        began = time.monotonic()
        for i in range(idle + slow):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
        figures["connect_s"] = time.monotonic() - began
        payload = b"EHLO slowloris.test\r\nMAIL FROM:<a@example.com>\r\n" * 4
        stop = threading.Event()
        sent = [0]

        def slowloris() -> None:
            n = 0
            deadline = time.monotonic() + seconds
            while not stop.is_set() and time.monotonic() < deadline:
                for s in socks[idle:]:
                    with contextlib.suppress(OSError):
                        s.send(payload[n % len(payload) : n % len(payload) + 1])
                        sent[0] += 1
                n += 1
                stop.wait(1.0)

        def drain() -> None:  # read (and drop) greetings so the server is never blocked on us
            deadline = time.monotonic() + seconds + 30
            while not stop.is_set() and time.monotonic() < deadline:
                for key, _ in sel.select(0.2):
                    with contextlib.suppress(OSError):
                        if not key.fileobj.recv(4096):  # type: ignore[union-attr]
                            sel.unregister(key.fileobj)

        threads = [
            threading.Thread(target=slowloris, daemon=True),
            threading.Thread(target=drain, daemon=True),
        ]
        for t in threads:
            t.start()
        time.sleep(min(3.0, seconds / 3))  # every connection is up and greeted by now
        times = []
        for _ in range(greetings):
            times.append(greeting_time(port))
            time.sleep(max(0.0, (seconds - 4) / greetings))
        stop.set()
        for t in threads:
            t.join(5)
        figures.update(
            p50_ms=1000 * statistics.median(times), p99_ms=1000 * percentile(times, 99),
            max_ms=1000 * max(times), slowloris_bytes=sent[0],
        )  # fmt: skip
    finally:
        for s in socks:
            s.close()
        sel.close()
    return figures


def test_idle_and_slowloris_connections_do_not_starve_a_normal_client(tmp_path: Path) -> None:
    with relay_with(tmp_path, roles={"smtp": 1, "bus": 1}) as relay:
        figures = run_overload(relay.port, idle=1000, slow=200, seconds=15.0, greetings=50)
        open_conns = len(psutil.Process(role_pids(relay.pid)["smtp"][0]).net_connections())
        assert relay.proc.poll() is None
    print(
        f"\noverload: idle=1000 slowloris=200 greetings=50 p50={figures['p50_ms']:.1f}ms "
        f"p99={figures['p99_ms']:.1f}ms max={figures['max_ms']:.1f}ms connect-all={figures['connect_s']:.2f}s "
        f"slowloris-bytes={int(figures['slowloris_bytes'])} smtp-role-sockets-after={open_conns}"
    )
    assert figures["p99_ms"] < 1000


def _hold(port: int, n: int) -> tuple[list[socket.socket], list[bytes]]:
    socks, firsts = [], []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
        firsts.append(s.recv(1024))
    return socks, firsts


def test_max_connections_answers_421_beyond_n(tmp_path: Path) -> None:
    n = 10
    with relay_with(tmp_path, "--max-connections", str(n), roles={"smtp": 1, "bus": 1}) as relay:
        socks, firsts = _hold(relay.port, 3 * n)
        try:
            greeted = sum(1 for f in firsts if f.startswith(b"220"))
            refused = sum(1 for f in firsts if f.startswith(b"421"))
        finally:
            for s in socks:
                s.close()
        assert poll(lambda: first_line(relay.port).startswith(b"220"), 10)  # room again once they have gone
    print(f"\nmax-connections: N={n} tried={3 * n} greeted={greeted} 421={refused}")
    assert greeted == n and refused == 2 * n, (greeted, refused)


def test_max_connections_is_for_the_relay_not_per_smtp_process(tmp_path: Path) -> None:
    n = 5
    with relay_with(
        tmp_path, "--max-connections", str(n), "--workers", "smtp=2", roles={"smtp": 2, "bus": 1}
    ) as relay:
        p1, p2 = role_pids(relay.pid)["smtp"]
        held: list[socket.socket] = []
        try:
            os.kill(p2, signal.SIGSTOP)  # the first n connections all go to p1 ...
            try:
                socks, firsts = _hold(relay.port, n)
                held += socks
            finally:
                os.kill(p2, signal.SIGCONT)
            assert all(f.startswith(b"220") for f in firsts)
            os.kill(p1, signal.SIGSTOP)  # ... and the next ones to p2
            try:
                more, extra = _hold(relay.port, n)
                held += more
            finally:
                os.kill(p1, signal.SIGCONT)
        finally:
            for s in held:
                s.close()
    let_in = sum(1 for f in extra if f.startswith(b"220"))
    print(f"\nmax-connections with 2 smtp processes: N={n} clients let in={n + let_in}")
    assert let_in == 0, f"{n + let_in} connections for --max-connections {n}"


def warm_up(port: int) -> None:
    """One small message first: lazily created threads and imports are not counted as growth."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("a@example.com", ["b@example.net"], b"Subject: warm-up\r\n\r\nhello\r\n")
    time.sleep(1.5)


def test_100mb_message_in_and_out_with_bounded_memory(tmp_path: Path) -> None:
    size = 100 * MB
    line = b"y" * 98 + b"\r\n"
    with postfix_sink() as sink, relay_with(
        tmp_path, "--forward-to", sink.address, "--poll", "1", roles={"smtp": 1, "forward": 1},
    ) as relay:  # fmt: skip
        warm_up(relay.port)
        forwarder = RssSampler(relay.pid, "forward")
        with RssSampler(relay.pid, "smtp") as smtp_rss, forwarder:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=120) as s:
                s.ehlo("big.test")
                s.mail("a@example.com")
                s.rcpt("b@example.net")
                code, _ = s.docmd("DATA")
                assert code == 354
                s.send(b"Message-ID: <big@test>\r\nSubject: 100 MB\r\n\r\n")
                chunk = line * 10_000  # 1 MB
                for _ in range(size // len(chunk)):
                    s.send(chunk)
                s.send(b".\r\n")
                code, _ = s.getreply()
                assert code == 250
            assert poll(lambda: not states(relay.spool)["content"], 120, 0.2), states(relay.spool)
    print(
        f"\n100MB message: smtp-role peak RSS growth={smtp_rss.growth_mb:.1f} MB "
        f"forward-role peak RSS growth={forwarder.growth_mb:.1f} MB"
    )
    assert smtp_rss.growth_mb < 40
    assert forwarder.growth_mb < 40


def send_to_many(port: int, rcpts: list[str], per_transaction: int) -> int:
    """Send one message to ``rcpts``, at most ``per_transaction`` RCPTs a transaction, resending the
    recipients refused with 452 in a new transaction (RFC 5321 4.5.3.1.10); returns the transactions."""
    todo = list(rcpts)
    transactions = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        while todo and transactions < 30:
            transactions += 1
            batch, todo = todo[:per_transaction], todo[per_transaction:]
            refused = s.sendmail("a@example.com", batch, b"Subject: many\r\n\r\nhello\r\n")
            assert all(code == 452 for code, _ in refused.values()), refused
            todo = [r for r in batch if r in refused] + todo
    assert not todo
    return transactions


def test_1000_recipients_in_and_out_with_bounded_memory(tmp_path: Path) -> None:
    """The client sends 100 RCPTs a transaction (the relay's limit); the forwarder sends them on."""
    rcpts = [f"r{i}@example.net" for i in range(1000)]
    with FakeSmtp() as sink, relay_with(
        tmp_path, "--forward-to", sink.address, "--poll", "1", roles={"smtp": 1, "forward": 1},
    ) as relay:  # fmt: skip
        warm_up(relay.port)
        forwarder = RssSampler(relay.pid, "forward")
        with RssSampler(relay.pid, "smtp") as smtp_rss, forwarder:
            transactions = send_to_many(relay.port, rcpts, 100)
            assert sink.wait_for(lambda: sum(len(m.rcpts) for m in sink.messages) >= 1001, 60)
        delivered = sorted(r for m in sink.messages for r in m.rcpts if r != "b@example.net")
    print(
        f"\n1000 recipients: client transactions={transactions} next-hop messages={len(sink.messages)} "
        f"recipients={len(delivered)} smtp-role growth={smtp_rss.growth_mb:.1f} MB "
        f"forward-role growth={forwarder.growth_mb:.1f} MB"
    )
    assert delivered == sorted(rcpts)
    assert smtp_rss.growth_mb < 20 and forwarder.growth_mb < 20


def test_1000_recipients_in_one_transaction(tmp_path: Path) -> None:
    rcpts = [f"r{i}@example.net" for i in range(1000)]
    with relay_with(tmp_path, roles={"smtp": 1}) as relay:
        transactions = send_to_many(relay.port, rcpts, 1000)
        stored = sum(
            len(SpoolStore(relay.spool).read_envelope(e.id).to_remote) for e in SpoolStore(relay.spool).scan()
        )
    print(f"\n1000 recipients in one go: transactions={transactions} stored-recipients={stored}")
    assert stored == 1000


def test_stored_1000_recipient_message_to_a_next_hop_with_a_recipient_limit(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    rcpts = tuple(f"r{i}@example.net" for i in range(1000))
    SpoolStore(spool, fsync=False).store_message(
        Envelope("a@example.com", to_remote=rcpts), b"Subject: many\r\n\r\nhello\r\n"
    )

    def limited(session, address):  # type: ignore[no-untyped-def]
        return "452 4.5.3 too many recipients" if len(session.rcpts) >= 100 else "250 2.1.5 ok"

    with FakeSmtp(replies={"rcpt": limited}) as sink:
        started = time.monotonic()
        r = run_client(spool, sink.address, "--retry", "60", timeout=60)  # back-off: 452s are deferrals
        took = time.monotonic() - started
        delivered = sorted(r for m in sink.messages for r in m.rcpts)
        transactions, connections = len(sink.messages), sink.connections
        rcpt_commands = len(sink.commands_named("RCPT"))
    print(
        f"\n1000 stored recipients to a 100-limit hop: delivered={len(delivered)} transactions={transactions} "
        f"connections={connections} RCPT commands={rcpt_commands} time={took:.2f}s spool={dict(states(spool))}"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert delivered == sorted(rcpts)  # each exactly once
    assert transactions == 10 and connections == 1  # one session: no retry, no back-off
    assert "to 100 of 1000 recipients; 900 deferred by the server: 452 4.5.3" in r.stderr
    assert not any(states(spool).values())


def test_client_that_never_reads_its_replies_does_not_grow_memory(tmp_path: Path) -> None:
    with relay_with(tmp_path, roles={"smtp": 1}) as relay:
        warm_up(relay.port)
        with RssSampler(relay.pid, "smtp") as rss:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
            s.settimeout(10)
            s.connect(("127.0.0.1", relay.port))
            s.setblocking(False)
            block = b"EHLO flood.test\r\n" + b"NOOP\r\n" * 10_000
            sent = 0
            deadline = time.monotonic() + 20
            stalled_since = None
            stalled = False
            while time.monotonic() < deadline and sent < 200 * MB:
                try:
                    sent += s.send(block)
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 3.0:
                        stalled = True
                        break  # the server stopped reading: back-pressure works
                    time.sleep(0.01)
            time.sleep(0.5)
            s.close()
        other = greeting_time(relay.port)
    print(
        f"\nnever-reading client: NOOP bytes accepted by the kernel={sent / MB:.1f} MB "
        f"(about {sent // 6} commands) smtp-role peak growth={rss.growth_mb:.1f} MB "
        f"other client's greeting={1000 * other:.0f} ms"
    )
    assert stalled, "the server kept reading commands whose replies nobody reads"
    assert sent < 50 * MB
    assert rss.growth_mb < 64  # transient: replies and events for what was read before the pause
