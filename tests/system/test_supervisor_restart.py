"""Restarting the smtp role under load refuses no connection and loses no acknowledged mail.

Issue "Supervised multi-process relay": circus holds the listening socket,
so ``circusctl restart smtp`` (and the admin ``restart smtp``) only stop and
start the processes that accept on it; a client connecting meanwhile waits
in the backlog.  Client threads send continuously (a new connection per
message) through both kinds of restart: no connect error, no failed
session, and every message that got its 250 arrives at the next hop once.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

from tests.support.relay import free_port
from tests.support.sink_counter import (
    AdminClient,
    CountingSink,
    circusctl,
    poll,
    print_log,
    role_pids,
    run_dir,
    send_mail,
    supervised_relay,
)

ROLES = {"bus": 1, "notify": 1, "forward": 2, "smtp": 2, "admin": 1}


class Load:
    """``threads`` clients, each sending one message per connection until stopped."""

    def __init__(self, port: int, threads: int = 3) -> None:
        self.port = port
        self.stop_event = threading.Event()
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def _run(self, n: int) -> None:
        i = 0
        while not self.stop_event.is_set():
            mid = f"load{n}.{i}@test"
            i += 1
            try:
                send_mail(self.port, mid, timeout=30)
                self.acked.append(mid)
            except ConnectionRefusedError as exc:
                self.refused.append(f"{mid}: {exc!r}")
            except (OSError, smtplib.SMTPException) as exc:
                self.failed.append(f"{mid}: {exc!r}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(60)


def _smtp_renewed(relay_pid: int, old: list[int]) -> bool:
    now = role_pids(relay_pid).get("smtp", [])
    return len(now) == 2 and not set(now) & set(old)


def test_restart_smtp_under_load_refuses_nothing_and_loses_nothing(tmp_path: Path) -> None:
    admin_port = free_port()
    with (
        CountingSink() as sink,
        supervised_relay(
            tmp_path,
            "--workers", "smtp=2,forward=2", "--forward-to", sink.address, "--poll", "1",
            "--admin", str(admin_port),
            roles=ROLES,
        ) as relay,
    ):  # fmt: skip
        send_mail(relay.port, "warmup@test")
        with Load(relay.port) as load:
            time.sleep(1.0)
            before = role_pids(relay.pid)["smtp"]
            acked_before = len(load.acked)
            result = circusctl(run_dir(relay.spool), "restart", "smtp")
            assert result.returncode == 0, result.stderr
            assert "ok" in result.stdout.lower(), result.stdout
            assert poll(lambda: _smtp_renewed(relay.pid, before), 30, 0.1), role_pids(relay.pid)
            time.sleep(1.0)
            middle = role_pids(relay.pid)["smtp"]
            with AdminClient(admin_port) as admin:
                assert admin.cmd("restart smtp", timeout=30) == b"OK\r\nE-MailRelay> "
            assert poll(lambda: _smtp_renewed(relay.pid, middle), 30, 0.1), role_pids(relay.pid)
            time.sleep(1.0)
            acked_during = len(load.acked) - acked_before
        print(
            f"acked {len(load.acked)} ({acked_during} across the restarts), "
            f"refused {len(load.refused)}, failed {len(load.failed)}"
        )
        assert load.refused == []
        assert load.failed == []
        assert acked_during >= 10  # the load really ran through both restarts
        arrived = sink.wait_for(load.acked, 60)
        if not arrived:
            print_log(relay)
        assert arrived, f"acknowledged but never forwarded: {sorted(set(load.acked) - set(sink.ids()))[:10]}"
        duplicates = {k: n for k, n in sink.ids().items() if n > 1}
        assert duplicates == {}
        assert Counter(load.acked).most_common(1)[0][1] == 1
