"""A remote SMTP client against one relay per side, in a private network namespace.

What it is for: tests/differential/test_smtp_remote.py and test_guide_part2_network.py start our
relay or E-MailRelay 2.6b's (as root, default ``--user daemon``) on ``--interface 192.0.2.2``
inside a namespace of tests/support/netns.py, connect from 192.0.2.2 (a remote address), and
compare what the client received and the normalised log (:func:`remote_session`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.netns import REMOTE_IP, Netns
from tests.support.oracle import normalise_log, program
from tests.support.relay import stop_process

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


def remote_session(netns: Netns, side: str, base: Path, *extra: str) -> tuple[str, list[str]]:
    """Start ``side`` in ``netns`` with ``extra``, run :data:`CLIENT` from the remote address:
    (what the client received, as a repr; the normalised log, our greeting's version as upstream's)."""
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
