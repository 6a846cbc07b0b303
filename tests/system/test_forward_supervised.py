"""Forwarding in the supervised relay when a doorbell is missed.

ARCHITECTURE.md: "the spool is the only source of truth; the bus is only a
doorbell ... a lost, late or duplicated bus message never loses or
duplicates mail".  Here the ``notify`` role is killed (kill -9 of that one
role process, found as a child of the relay this test started) and comes
back slowly (a sitecustomize on PYTHONPATH makes the restarted role sleep
before it starts watching), and a message is put into the spool meanwhile
by ``emailrelay-submit``: nothing ever rings for it.  The reference guide's
``--forward-on-disconnect`` forwards the *spooled messages* whenever a client
disconnects, so the next client session must sweep it out.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import textwrap
from pathlib import Path

import psutil

from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import program, start_relay
from tests.support.sink import _notify_running, bus_connections, simple_content, states, wait_for_bus

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys, time
    marker = os.environ.get("FWDTEST_SLOW_ROLE_MARKER")
    if marker and os.path.exists(marker) and sys.argv[1:2] == [open(marker).read().strip()]:
        time.sleep(4)
    """
)


def _role_pid(relay_pid: int, role: str) -> int:
    for child in psutil.Process(relay_pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "emailrelay.cli.role" in cmd and cmd[cmd.index("emailrelay.cli.role") + 1 :][:1] == [role]:
            return child.pid
    raise LookupError(f"no {role} role under {relay_pid}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _send(port: int, message_id: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as c:
        c.sendmail("a@example.com", ["b@example.net"], simple_content(message_id))


def test_disconnect_forwards_messages_nobody_rang_for(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "slow-role"
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "FWDTEST_SLOW_ROLE_MARKER": str(marker),
    }
    spool = tmp_path / "relay-spool"
    spool.mkdir()
    # found by the forward role's start-up rescan: once it arrives, the forwarder is up
    before = Envelope("a@example.com", to_remote=("w@example.net",))
    SpoolStore(spool).store_message(before, simple_content("before@test"))
    with FakeSmtp() as hop:
        log_file = str(tmp_path / "proxy.log")
        relay = start_relay(tmp_path, "--as-proxy", hop.address, "--log-file", log_file, env=env, spool=spool)
        try:
            assert hop.wait_for_messages(1, timeout=20), "the relay does not forward at all"
            assert wait_for_bus(spool), f"bus connections (publishers, subscribers): {bus_connections(spool)}"
            # without --poll there is no notify role: only a disconnect rings (upstream's proxy mode)
            assert not _notify_running(relay.spool)
            submitted = subprocess.run(
                [program("emailrelay-submit"), "--spool-dir", str(relay.spool), "--from", "a@example.com",
                 "b@example.net"],
                input=simple_content("submitted@test"), capture_output=True, timeout=30, check=True,
            )  # fmt: skip
            assert submitted.returncode == 0
            assert states(relay.spool) == {"envelope": 1, "content": 1}
            _send(relay.port, "after@test")  # a client session ends: spooled messages are forwarded
            assert hop.wait_for(lambda: "<after@test>" in hop.message_ids(), timeout=10)
            assert relay.proc.poll() is None
            assert hop.wait_for(lambda: "<submitted@test>" in hop.message_ids(), timeout=5), (
                f"stranded in the spool: {sorted(p.name for p in relay.spool.iterdir() if p.is_file())}"
            )
        finally:
            relay.stop()
