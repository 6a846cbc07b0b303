"""Refusal of non-local SMTP clients, from a real second network namespace.

A veth pair joins the test's namespace (100.64.X.1/30, where the relay
listens) and a namespace made for the test (100.64.X.2/30, the client).
100.64.0.0/10 is shared address space: neither loopback nor "private" for
Python's ipaddress, so the relay must treat the client as remote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.smtpd import Relays, committed, expected_envelope, spool_entries
from tests.support.veth_netns import Netns, netns  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(120)

SWAKS = "/usr/bin/swaks"

CONNECT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 20)
s.settimeout(20)
data = b""
try:
    while True:
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
        if data.startswith(b"220 ") and data.endswith(b"\\r\\n"):
            s.sendall(b"QUIT\\r\\n")
except ConnectionResetError:
    pass
sys.stdout.write(data.decode())
"""


def test_remote_client_is_refused(netns: Netns, tmp_path: Path) -> None:  # noqa: F811
    relays = Relays(tmp_path)
    try:
        relay = relays.start("--interface", netns.host_ip)
        result = netns.run(sys.executable, "-c", CONNECT, netns.host_ip, str(relay.port))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "", result.stdout  # closed without a byte, as E-MailRelay 2.6b
        log = relay.log()
        ip = re.escape(netns.client_ip)
        assert re.search(
            rf"^emailrelay: [0-9.]+: warning: configured to reject non-local smtp connection: {ip} is not in "
            rf"127\.0\.0\.0/8, 169\.254\.0\.0/16, 10\.0\.0\.0/8, 172\.16\.0\.0/12, or 192\.168\.0\.0/16\n"
            rf"emailrelay: [0-9.]+: warning: connection rejected from {ip}:[0-9]+$",
            log,
            re.MULTILINE,
        ), log[-3000:]
        assert f"smtp connection from {netns.client_ip}" not in log
        if os.path.exists(SWAKS):
            swaks = netns.run(
                SWAKS, "--server", f"{netns.host_ip}:{relay.port}", "--from", "r@example.com",
                "--to", "x@example.net", "--timeout", "20",
            )  # fmt: skip
            assert swaks.returncode != 0
        assert spool_entries(relay.spool) == []
        # a local client on the same relay is served
        local = subprocess.run(
            [sys.executable, "-c", CONNECT, "127.0.0.1", str(relay.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert local.stdout.startswith("220 "), local.stdout
    finally:
        relays.close()


def test_remote_client_accepted_with_remote_clients(netns: Netns, tmp_path: Path) -> None:  # noqa: F811
    if not os.path.exists(SWAKS):
        pytest.skip("swaks not installed")
    relays = Relays(tmp_path)
    try:
        relay = relays.start("--interface", netns.host_ip, "--remote-clients")
        result = netns.run(
            SWAKS, "--server", f"{netns.host_ip}:{relay.port}", "--helo", "remote.example.com",
            "--from", "far@example.com", "--to", "near@example.net", "--body", "from afar", "--timeout", "20",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:]
        ((_, _, env_bytes, content),) = committed(relay.spool)
        assert env_bytes == expected_envelope("far@example.com", ["near@example.net"], client=netns.client_ip)
        assert content.startswith(f"Received: from remote.example.com ([{netns.client_ip}])".encode())
        assert "rejected" not in relay.log()
    finally:
        relays.close()
