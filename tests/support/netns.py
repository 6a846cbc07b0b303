"""A private network namespace whose loopback also carries 192.0.2.2, for "remote client" tests.

What it is for: a relay refuses non-local clients unless ``--remote-clients``;
to test that without touching the host's network, a test makes a namespace
of its own (``ip netns add``), brings its ``lo`` up and adds 192.0.2.2/32
(TEST-NET-1: neither loopback nor private, so not local) to it, then runs
both the relay and the client inside it (``ip netns exec``). A client that
connects from 192.0.2.2 to 192.0.2.2 is a remote client; one that connects
to 127.0.0.1 in the same namespace is a local one. This is the only kind of
non-loopback address the tests use.

:func:`in_private_network` is the lighter kind for listening tests: ``unshare --net`` with only
``lo`` up, the relay and a probe (:data:`PROBE`, which connects to each ``host/port`` and prints the
first line it gets) run inside it.

Guarantees: the namespace is deleted when the context ends, whatever
happened; without root or ``ip netns`` the caller is told why (``pytest.skip``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.support.relay import program, stop_process

IP = shutil.which("ip") or "/usr/sbin/ip"
REMOTE_IP = "192.0.2.2"


@dataclass(frozen=True)
class Netns:
    name: str

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace (``ip`` execs it: the child's pid is the program's)."""
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=timeout, check=False)

    def popen(self, argv: Sequence[str], log: IO[bytes], cwd: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(*argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )

    def admin(self, host: str, port: int, *commands: str) -> dict[str, object]:
        """Send admin commands from inside the namespace: ``{"data": all replies, "eof": closed early}``."""
        result = self.run(sys.executable, "-c", _ADMIN_CLIENT, host, str(port), *commands)
        assert result.returncode == 0, result.stderr
        reply: dict[str, object] = json.loads(result.stdout)
        return reply

    def wait_for_port(self, port: int, proc: subprocess.Popen[bytes], host: str = REMOTE_IP) -> None:
        """Wait (from inside the namespace) until ``host:port`` accepts connections."""
        result = self.run(sys.executable, "-c", _WAIT, host, str(port), timeout=60)
        if result.returncode != 0:
            stop_process(proc)
            raise TimeoutError(f"nothing listening on {host}:{port} in {self.name}: {result.stderr}")


# send each argument as an admin command line, wait for each prompt, print what came back
_ADMIN_CLIENT = """
import json, socket, sys, time
host, port, commands = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.create_connection((host, port), 10)
s.settimeout(20)
data, eof = b"", False
try:
    for command in commands:
        s.sendall(command.encode() + b"\\r\\n")
        want = data.count(b"E-MailRelay> ") + 1
        while data.count(b"E-MailRelay> ") < want:
            chunk = s.recv(65536)
            if not chunk:
                eof = True
                break
            data += chunk
        if eof:
            break
except (BrokenPipeError, ConnectionResetError):
    eof = True
print(json.dumps({"data": data.decode("utf-8", "replace"), "eof": eof}))
"""

_WAIT = """
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
"""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)


@contextmanager
def private_netns() -> Iterator[Netns]:
    """A fresh namespace: ``lo`` up with 127.0.0.1 and 192.0.2.2/32; deleted afterwards."""
    if os.geteuid() != 0 or not os.path.exists(IP):
        pytest.skip("a private network namespace needs root and iproute2 (ip netns)")
    name = f"er-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    created = _ip("netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"ip netns add is not permitted here: {created.stderr.strip()}")
    try:
        for step in (("link", "set", "lo", "up"), ("addr", "add", f"{REMOTE_IP}/32", "dev", "lo")):
            result = _ip("-n", name, *step)
            if result.returncode != 0:
                pytest.skip(
                    f"cannot set up network namespace {name} ({' '.join(step)}): {result.stderr.strip()}"
                )
        yield Netns(name)
    finally:
        _ip("netns", "del", name)


# ---- a relay alone in an unshared network namespace (loopback only), probed from inside

PROBE = """
import socket, sys, time
for target in sys.argv[1:]:
    host, port = target.rsplit("/", 1)
    for _ in range(400):
        try:
            with socket.create_connection((host, int(port)), 2) as s:
                s.settimeout(1)
                try:
                    data = s.recv(200)
                except TimeoutError:  # the admin server says nothing until asked
                    s.settimeout(10)
                    s.sendall(b"help\\r\\n")
                    data = s.recv(200)
                print(target, data.decode().splitlines()[0], flush=True)
                break
        except OSError:
            time.sleep(0.05)
    else:
        print(target, "-", flush=True)
"""


def in_private_network(
    tmp_path: Path, relay_args: list[str], targets: list[str]
) -> tuple[str, dict[str, str]]:
    """Run ``emailrelay <relay_args>`` in a new network namespace that has only a loopback interface, connect to
    each ``host/port`` target from inside it, and return (the relay's log, target -> first line received)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private network namespace")
    log = tmp_path / "netns.log"
    quoted = " ".join(shlex.quote(a) for a in [program(), *relay_args])
    probe = " ".join(shlex.quote(a) for a in [sys.executable, "-c", PROBE, *targets])
    shell = f"ip link set lo up || exit 97; {quoted} 2>{shlex.quote(str(log))} & pid=$!; {probe}; kill $pid; wait $pid"
    r = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell], capture_output=True, text=True, timeout=60, check=False
    )
    if r.returncode == 97 or "unshare failed" in r.stderr:
        pytest.skip(f"cannot make a private network namespace here: {r.stderr.strip()}")
    seen = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    return (log.read_text() if log.exists() else ""), seen
