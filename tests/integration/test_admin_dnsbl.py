"""The admin ``dnsbl stop [<timeout>]`` / ``dnsbl start`` commands reach every smtp process (issue 17.12).

A supervised relay runs in a private network namespace (tests/support/netns.py)
with ``--remote-clients`` and a DNSBL whose DNS server does not answer and
whose negative timeout blocks on a time-out (``-300``), so a client from
192.0.2.2 (a documentation address: checked) is closed without a byte (as
E-MailRelay 2.6b).
``dnsbl stop 60`` turns checking off (the client gets the greeting), and
``dnsbl start`` turns it on again; both answer ``OK`` and log upstream's
``dnsbl disabled for 60s`` / ``dnsbl enabled``.  A ``dnsbl stop`` holds for an
smtp role restarted after it (``restart smtp``), which was not subscribed when
the command went by on the bus; a ``dnsbl start`` holds for it as well.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import REMOTE_IP, Netns, private_netns
from tests.support.relay import program, stop_process, wait_until
from tests.support.sink_counter import role_pids

pytestmark = pytest.mark.timeout(120)

SMTP, ADMIN = 2525, 10026  # a fresh namespace: all free
PROMPT = "E-MailRelay> "
GREETING = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), 10) as s:
    s.settimeout(10)
    print(s.recv(200).decode().strip())
"""


@pytest.fixture
def netns() -> Iterator[Netns]:
    with private_netns() as ns:
        yield ns


def _greeting(netns: Netns) -> str:
    result = netns.run(sys.executable, "-c", GREETING, REMOTE_IP, str(SMTP))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _start(netns: Netns, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    log_path = tmp_path / "log"
    argv = [
        program(), "--no-daemon", "--log", "--no-syslog", "--user", "root", "--remote-clients",
        "--port", str(SMTP), "--admin", str(ADMIN), "--interface", REMOTE_IP, "--spool-dir", str(spool),
        "--pid-file", str(tmp_path / "pid"), "--dnsbl", "bl.example,1,-300,127.0.0.1:53",
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = netns.popen(argv, log, tmp_path)
    netns.wait_for_port(ADMIN, proc)
    return proc, log_path


def test_dnsbl_stop_and_start_reach_the_smtp_role(netns: Netns, tmp_path: Path) -> None:
    proc, log_path = _start(netns, tmp_path)
    try:
        assert wait_until(lambda: _greeting(netns) == "", 20), log_path.read_text()
        # (the admin role's first message on the bus may be lost while it joins: a harmless one first)
        netns.admin(REMOTE_IP, ADMIN, "smtp enable")
        reply = netns.admin(REMOTE_IP, ADMIN, "dnsbl stop 60")
        assert reply == {"data": f"OK\r\n{PROMPT}", "eof": False}
        assert wait_until(lambda: _greeting(netns).startswith("220 "), 10), log_path.read_text()
        reply = netns.admin(REMOTE_IP, ADMIN, "dnsbl start")
        assert reply == {"data": f"OK\r\n{PROMPT}", "eof": False}
        assert wait_until(lambda: _greeting(netns) == "", 10), log_path.read_text()
        log = log_path.read_text()
        assert "info: dnsbl disabled for 60s" in log and "info: dnsbl enabled" in log
        assert "dnsbl: client address [192.0.2.2] blocked: timeout: no answer from [bl.example]" in log
    finally:
        stop_process(proc)


def _restart_smtp(netns: Netns, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """``restart smtp``, then wait until a new smtp role process has taken the old one's place."""
    old = set(role_pids(proc.pid).get("smtp", []))
    assert old, log_path.read_text()
    reply = netns.admin(REMOTE_IP, ADMIN, "restart smtp")
    assert reply == {"data": f"OK\r\n{PROMPT}", "eof": False}

    def renewed() -> bool:
        now = set(role_pids(proc.pid).get("smtp", []))
        return bool(now) and not now & old

    assert wait_until(renewed, 30), log_path.read_text()


def test_dnsbl_stop_and_start_hold_for_a_restarted_smtp_role(netns: Netns, tmp_path: Path) -> None:
    proc, log_path = _start(netns, tmp_path)
    try:
        assert wait_until(lambda: _greeting(netns) == "", 20), log_path.read_text()
        netns.admin(REMOTE_IP, ADMIN, "smtp enable")  # (the admin role's first bus message: harmless)
        assert netns.admin(REMOTE_IP, ADMIN, "dnsbl stop 600")["data"] == f"OK\r\n{PROMPT}"
        assert wait_until(lambda: _greeting(netns).startswith("220 "), 10), log_path.read_text()
        _restart_smtp(netns, proc, log_path)
        # the new smtp role never saw the command on the bus: it still does not check
        assert wait_until(lambda: _greeting(netns).startswith("220 "), 20), log_path.read_text()
        for _ in range(3):
            assert _greeting(netns).startswith("220 "), log_path.read_text()
        assert netns.admin(REMOTE_IP, ADMIN, "dnsbl start")["data"] == f"OK\r\n{PROMPT}"
        assert wait_until(lambda: _greeting(netns) == "", 10), log_path.read_text()
        _restart_smtp(netns, proc, log_path)
        assert wait_until(lambda: _greeting(netns) == "", 20), log_path.read_text()
    finally:
        stop_process(proc)
