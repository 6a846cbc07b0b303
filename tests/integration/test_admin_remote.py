"""The admin port applies the SMTP port's local/remote rule (``--remote-clients``), issue 19.

A private network namespace (tests/support/netns.py) holds both the relay
and its clients: a client connecting from 192.0.2.2 to 192.0.2.2 is remote,
one connecting to 127.0.0.1 is local. Without ``--remote-clients`` the
remote admin client gets nothing at all (the connection is closed, as
upstream does) and its commands have no effect; with it, it is served.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.netns import REMOTE_IP, Netns, private_netns
from tests.support.relay import program, stop_process

pytestmark = pytest.mark.timeout(120)

SMTP_PORT, ADMIN_PORT = 2525, 10025  # a fresh namespace: nothing else listens there

GREETING = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
s.settimeout(20)
print(s.recv(1000).decode().strip())
s.sendall(b"QUIT\\r\\n")
"""


@dataclass
class NsRelay:
    netns: Netns
    log_path: Path

    def admin(self, host: str, *commands: str) -> dict[str, object]:
        return self.netns.admin(host, ADMIN_PORT, *commands)

    def smtp_greeting(self, host: str) -> str:
        result = self.netns.run(sys.executable, "-c", GREETING, host, str(SMTP_PORT))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def netns() -> Iterator[Netns]:
    with private_netns() as ns:
        yield ns


@pytest.fixture
def start(netns: Netns, tmp_path: Path) -> Iterator[object]:
    procs = []

    def _start(*extra: str) -> NsRelay:
        spool = tmp_path / "spool"
        spool.mkdir()
        argv = [
            program(), "--no-daemon", "--log", "--log-time", "--no-syslog", "--verbose", "--user", "root",
            "--port", str(SMTP_PORT), "--admin", str(ADMIN_PORT), "--interface", f"{REMOTE_IP},127.0.0.1",
            "--spool-dir", str(spool), "--pid-file", str(tmp_path / "pid"), *extra,
        ]  # fmt: skip
        log_path = tmp_path / "relay.log"
        with open(log_path, "ab") as log:
            proc = netns.popen(argv, log, tmp_path)
        procs.append(proc)
        netns.wait_for_port(ADMIN_PORT, proc)
        relay = NsRelay(netns, log_path)
        # the listening sockets exist before the roles do: wait until a local client is served
        assert relay.admin("127.0.0.1", "pid")["eof"] is False, relay.log()
        return relay

    yield _start
    for proc in procs:
        stop_process(proc)


def test_remote_admin_client_is_refused(start: object) -> None:
    relay: NsRelay = start()  # type: ignore[operator]
    refused = relay.admin(REMOTE_IP, "help")
    assert refused == {"data": "", "eof": True}
    # the finding: a remote "smtp disable" made SMTP answer 421 to everyone
    assert relay.admin(REMOTE_IP, "smtp disable") == {"data": "", "eof": True}
    assert relay.smtp_greeting("127.0.0.1").startswith("220 ")
    log = relay.log()
    assert (
        f"warning: configured to reject non-local admin connection: {REMOTE_IP} is not in "
        "127.0.0.0/8, 169.254.0.0/16, 10.0.0.0/8, 172.16.0.0/12, or 192.168.0.0/16"
    ) in log
    assert f"warning: connection rejected from {REMOTE_IP}:" in log
    assert f"admin connection from {REMOTE_IP}" not in log
    # a local admin client on the same relay is served
    local = relay.admin("127.0.0.1", "help")
    assert local["eof"] is False and str(local["data"]).startswith("commands: ")


def test_remote_admin_client_served_with_remote_clients(start: object) -> None:
    relay: NsRelay = start("--remote-clients", "--single-process")  # type: ignore[operator]
    served = relay.admin(REMOTE_IP, "help", "status")
    assert served["eof"] is False
    data = str(served["data"])
    assert data.startswith("commands: ") and data.endswith("E-MailRelay> ")
    assert f" <- {REMOTE_IP}:" in data  # upstream's status: "IN: <local> <- <peer>"
    assert "rejected" not in relay.log()
    assert f"admin connection from {REMOTE_IP}:" in relay.log()
