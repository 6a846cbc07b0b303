"""A network namespace joined to the test's own by a veth pair, for "remote client" tests.

What it is for: the :func:`netns` fixture (module scope) makes a namespace and a veth pair, the
host end 100.64.X.1/30 (where a relay listens: :attr:`Netns.host_ip`) and the namespace's end
100.64.X.2/30 (the client: :meth:`Netns.run` runs a program inside).  100.64.0.0/10 is shared
address space, neither loopback nor "private" for Python's ipaddress, so a relay must treat the
client as remote.  (``tests/support/netns.py`` is the other kind: one private namespace whose
loopback carries a TEST-NET address.)

Guarantees: the pair and the namespace are deleted afterwards, whatever happened; without root or
iproute2, or with no free 100.64.X.0/30, the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

IP = shutil.which("ip") or "/usr/sbin/ip"


@dataclass
class Netns:
    name: str
    host_ip: str
    client_ip: str

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [IP, "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout
        )


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or not os.path.exists(IP):
        pytest.skip("network namespaces need root and iproute2")
    used = _ip("-4", "addr").stdout
    octet = next(
        (x for x in random.sample(range(1, 255), 254) if f"100.64.{x}." not in used),
        None,
    )
    if octet is None:
        pytest.skip("no free 100.64.X.0/30 subnet")
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"ertest{tag}", f"erh{tag}", f"ern{tag}"
    host_ip, client_ip = f"100.64.{octet}.1", f"100.64.{octet}.2"
    try:
        steps = [
            ["netns", "add", ns],
            ["link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            ["link", "set", ns_if, "netns", ns],
            ["addr", "add", f"{host_ip}/30", "dev", host_if],
            ["link", "set", host_if, "up"],
            ["netns", "exec", ns, IP, "addr", "add", f"{client_ip}/30", "dev", ns_if],
            ["netns", "exec", ns, IP, "link", "set", ns_if, "up"],
            ["netns", "exec", ns, IP, "link", "set", "lo", "up"],
        ]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                reason = f"cannot set up a network namespace ({' '.join(step)}): {result.stderr.strip()}"
                print(reason)
                pytest.skip(reason)
        yield Netns(ns, host_ip, client_ip)
    finally:
        _ip("link", "del", host_if)
        _ip("netns", "del", ns)
