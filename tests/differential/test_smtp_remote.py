"""A remote SMTP client, ours against E-MailRelay 2.6b: the same silent refusal and warnings (issue 17).

Both relays run as root with the default ``--user daemon`` inside one private
network namespace (tests/support/netns.py) on ``--interface 192.0.2.2``. A
client connecting from 192.0.2.2 is remote: without ``--remote-clients`` both
programs close the connection without a byte and log the same two warnings
(and no "smtp connection from" line); with it both greet and answer QUIT.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import REMOTE_IP, Netns, private_netns
from tests.support.oracle import SIDES, daemon_base, needs_oracle, normalise_log, program
from tests.support.relay import stop_process

pytestmark = [needs_oracle, pytest.mark.timeout(120)]

PORTS = {"ours": 2525, "upstream": 2526}  # a fresh namespace: all free

# read the greeting (if any), answer it with QUIT, print everything received
CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
s.settimeout(5)
data = b""
try:
    while True:
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
        if data.startswith(b"220 ") and data.endswith(b"\\r\\n") and b"221" not in data:
            s.sendall(b"QUIT\\r\\n")
except OSError:
    pass
print(repr(data))
"""


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    with private_netns() as ns:
        yield ns


def _run(netns: Netns, side: str, base: Path, *extra: str) -> tuple[str, list[str]]:
    home = base / side
    spool = home / "spool"
    spool.mkdir(parents=True)
    home.chmod(0o755)
    spool.chmod(0o777)
    port = PORTS[side]
    argv = [
        program(side), "--no-daemon", "--log", "--log-time", "--no-syslog", "--verbose",
        "--port", str(port), "--interface", REMOTE_IP, "--spool-dir", str(spool),
        "--pid-file", str(home / "pid"), *extra,
    ]  # fmt: skip
    with open(home / "log", "ab") as log:
        proc = netns.popen(argv, log, home)
    try:
        netns.wait_for_port(port, proc)
        seen = netns.run(sys.executable, "-c", CLIENT, REMOTE_IP, str(port)).stdout.strip()
    finally:
        stop_process(proc)
    lines = normalise_log((home / "log").read_text(errors="replace"), drop=(r": supervisor: ",))
    return seen, [line.replace(" V2.6b -- ", " V2.6 -- ") for line in lines]


def test_remote_smtp_client_refused_like_upstream(netns: Netns, tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    got = {side: _run(netns, side, base) for side in SIDES}
    assert got["ours"] == got["upstream"]
    seen, log = got["ours"]
    assert seen == "b''"
    pair = [
        "emailrelay: warning: configured to reject non-local smtp connection: 192.0.2.2 is not in "
        "127.0.0.0/8, 169.254.0.0/16, 10.0.0.0/8, 172.16.0.0/12, or 192.168.0.0/16",
        "emailrelay: warning: connection rejected from 192.0.2.2:N",
    ]
    assert log == ["emailrelay: info: smtp server on 192.0.2.2:N", *pair * 2]  # the port probe, the client


def test_remote_smtp_client_served_with_remote_clients(netns: Netns, tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    got = {side: _run(netns, side, base, "--remote-clients") for side in SIDES}
    for side in SIDES:
        seen = got[side][0]
        assert seen.startswith("b'220 ") and seen.endswith("\\r\\n221 OK\\r\\n'"), (side, seen)
        assert "rejected" not in "\n".join(got[side][1])
