"""A remote admin client, ours against E-MailRelay 2.6b: same refusal, same log lines (issue 19).

Both relays run as root with the default ``--user daemon``, supervised for
ours, inside one private network namespace (tests/support/netns.py), on
``--interface 192.0.2.2`` with ``--admin``. A client connecting from
192.0.2.2 is remote: without ``--remote-clients`` both programs close the
connection without a byte and log the same two warnings; with it both
answer ``help`` with a prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import REMOTE_IP, Netns, private_netns
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, program
from tests.support.relay import stop_process

pytestmark = [needs_oracle, pytest.mark.timeout(120)]

PORTS = {"ours": (2525, 10025), "upstream": (2526, 10026)}  # a fresh namespace: all free
REFUSAL = (r"non-local admin connection", r"connection rejected from")


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    with private_netns() as ns:
        yield ns


def _run(netns: Netns, side: str, base: Path, *extra: str) -> tuple[dict[str, object], str]:
    """Start ``side`` in the namespace, send ``help`` from the remote address, stop it: (reply, log)."""
    home = base / side
    spool = home / "spool"
    spool.mkdir(parents=True)
    home.chmod(0o755)
    spool.chmod(0o777)
    smtp, admin = PORTS[side]
    log_path = home / "log"
    argv = [
        program(side), "--no-daemon", "--log", "--log-time", "--no-syslog", "--verbose",
        "--port", str(smtp), "--admin", str(admin), "--interface", REMOTE_IP,
        "--spool-dir", str(spool), "--pid-file", str(home / "pid"), *extra,
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = netns.popen(argv, log, home)
    try:
        netns.wait_for_port(admin, proc)  # (a connection made before our admin role is up waits for it)
        reply = netns.admin(REMOTE_IP, admin, "help")
    finally:
        stop_process(proc)
    return reply, log_path.read_text(errors="replace")


@pytest.mark.parametrize("side", SIDES)
def test_remote_admin_client_refused_like_upstream(netns: Netns, tmp_path: Path, side: str) -> None:
    base = daemon_base(tmp_path)
    reply, log = _run(netns, side, base)
    assert reply == {"data": "", "eof": True}, (side, reply)
    refusal = [line for line in normalise_log(log) if any(p in line for p in REFUSAL)]
    pair = [
        "emailrelay: warning: configured to reject non-local admin connection: 192.0.2.2 is not in "
        "127.0.0.0/8, 169.254.0.0/16, 10.0.0.0/8, 172.16.0.0/12, or 192.168.0.0/16",
        "emailrelay: warning: connection rejected from 192.0.2.2:N",
    ]
    assert refusal == pair * 2, (side, log)  # the wait-for-port probe's connection, then the client's


@pytest.mark.parametrize("side", SIDES)
def test_remote_admin_client_served_with_remote_clients(netns: Netns, tmp_path: Path, side: str) -> None:
    base = daemon_base(tmp_path)
    reply, log = _run(netns, side, base, "--remote-clients")
    assert reply["eof"] is False, (side, reply, log)
    data = str(reply["data"])
    assert data.startswith("commands: ") and data.endswith("\r\nE-MailRelay> "), (side, data)
    assert "rejected" not in log
