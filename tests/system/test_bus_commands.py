"""Commands travel on the bus: an admin command must reach the role it is for.

The bus is a doorbell for ``spool.ready`` (a lost ring costs one ``--poll``
period), but ``cmd.smtp.disable`` and ``cmd.smtp.enable`` have no timer
behind them: the admin replies with its prompt, so the command must take
effect even when it is the first thing the admin role ever publishes.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.relay import free_port
from tests.support.sink_counter import (
    PROMPT,
    AdminClient,
    poll,
    role_pids,
    smtp_greeting,
    supervised_relay,
)


def test_the_first_admin_command_is_not_lost(tmp_path: Path) -> None:
    admin_port = free_port()
    with supervised_relay(
        tmp_path, "--admin", str(admin_port), roles={"bus": 1, "smtp": 1, "admin": 1}
    ) as relay:
        time.sleep(1.0)  # every role settled and subscribed
        assert smtp_greeting(relay.port).startswith(b"220 ")
        with AdminClient(admin_port) as admin:
            assert admin.cmd("smtp disable") == b"OK\r\n" + PROMPT
        assert poll(lambda: smtp_greeting(relay.port).startswith(b"421"), 3), "smtp disable never arrived"


def test_smtp_disable_holds_across_a_restart_of_the_smtp_role(tmp_path: Path) -> None:
    """An smtp role that crashes (or is restarted) comes back as the admin left it: disabled until
    ``smtp enable``, even though the command went by on the bus before the new process subscribed.
    A new relay on the same spool starts enabled, as E-MailRelay 2.6b does after a restart.
    The production start (--user daemon), whose roles reach the spool as daemon."""
    admin_port, metrics_port = free_port(), free_port()
    roles = {"bus": 1, "smtp": 1, "admin": 1, "metrics": 1}
    base = Path(tempfile.mkdtemp(prefix="er-disable-", dir="/tmp"))
    try:
        base.chmod(0o755)
        spool = base / "spool"
        spool.mkdir(mode=0o755)
        options = ("--admin", str(admin_port), "--metrics", f"127.0.0.1:{metrics_port}")
        with supervised_relay(tmp_path, *options, roles=roles, spool=spool, user=None) as relay:
            time.sleep(1.0)  # every role settled and subscribed
            with AdminClient(admin_port) as admin:
                assert admin.cmd("smtp disable") == b"OK\r\n" + PROMPT
            assert poll(lambda: smtp_greeting(relay.port).startswith(b"421"), 3), "smtp disable never arrived"
            for role in ("smtp", "metrics"):
                (old,) = role_pids(relay.pid)[role]
                os.kill(old, signal.SIGKILL)
                restarted = lambda role=role, old=old: role_pids(relay.pid).get(role, [old]) != [old]  # noqa: E731
                assert poll(restarted, 30), role_pids(relay.pid)
            time.sleep(2.0)  # the new processes are up and past their subscriptions' settling
            assert smtp_greeting(relay.port).startswith(b"421"), "the restarted smtp role forgot smtp disable"
            assert b"smtp disabled" in _healthz(metrics_port), "the restarted metrics role forgot it"
            with AdminClient(admin_port) as admin:
                assert admin.cmd("smtp enable") == b"OK\r\n" + PROMPT
            assert poll(lambda: smtp_greeting(relay.port).startswith(b"220 "), 3), "smtp enable never arrived"
            with AdminClient(admin_port) as admin:
                assert admin.cmd("smtp disable") == b"OK\r\n" + PROMPT
            assert poll(lambda: smtp_greeting(relay.port).startswith(b"421"), 3)
        metrics_port = free_port()
        options = ("--admin", str(free_port()), "--metrics", f"127.0.0.1:{metrics_port}")
        with supervised_relay(tmp_path, *options, roles=roles, spool=spool, name="again", user=None) as again:
            time.sleep(2.0)
            assert smtp_greeting(again.port).startswith(b"220 "), "a new relay must not inherit smtp disable"
            assert b"smtp disabled" not in _healthz(metrics_port)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _healthz(port: int) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            return bytes(reply.read())
    except urllib.error.HTTPError as exc:  # 503: unhealthy, with the reason
        return bytes(exc.read())
