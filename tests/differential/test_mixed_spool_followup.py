"""Ours started on a spool where E-MailRelay 2.6b is forwarding (8 Dec 2026 busy-claims follow-up).

What it checks: a migration, or an ``emailrelay --as-client`` run by hand, puts our relay on a spool
while an upstream forwarder is mid-message.  Upstream claims a message by renaming it to
``.envelope.busy`` and takes no lock on it; ours used to take every ``.busy`` nobody holds a lock on
for a claim of a dead forwarder of its own, returned it to the queue at start (and in each recovery
run) and sent it too: the next hop got the message twice.  Now ours marks its own claims (an extended
attribute on the envelope's inode, which upstream ignores: the spool's bytes are unchanged) and
returns a lock-free ``.busy`` at once only when it carries that mark; an unmarked one is left alone
until it has not changed for an hour (``emailrelay/spool/store.py``, ``FOREIGN_CLAIM_AGE``).

- Side by side (oracle): upstream ``--as-client`` forwards one message through a next hop that is
  slow to answer the final dot; meanwhile ours starts on the same spool (``--as-client``, and as a
  forwarding daemon); the next hop gets the message exactly once and the spool ends empty.
- Ours only: a ``.busy`` made by hand (unmarked, young) survives a relay's start and a recovery period
  while a claim of ours whose process died (marked, no lock) is returned and forwarded.

Kept different: upstream never returns a lock-free ``.busy`` at all (docs/decisions.md, "Crash
leftovers"); ours returns its own at once and another program's after an hour.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.diff_forwarding import B, write_messages
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import daemon_base, needs_oracle, program, spool_dir, start
from tests.support.relay import REPO, stop_process, wait_until

pytestmark = pytest.mark.timeout(60)

SLOW_FINAL = 4.0  # seconds the next hop keeps upstream's claim waiting for its reply to the final dot


def _upstream_mid_message(spool: Path, hop: FakeSmtp) -> tuple[subprocess.Popen[bytes], str]:
    """Upstream's ``--as-client`` holding its claim of one message: the next hop has the data and
    delays its reply (only this connection: later ones are answered at once)."""
    (name,) = write_messages(spool, [[B]], int(time.time()))
    hop.delays["final"] = SLOW_FINAL
    proc = subprocess.Popen(
        [program("upstream"), "--as-client", hop.address, "--spool-dir", str(spool), "--log-time", "--verbose"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_until(lambda: any(c[-1] == "." for c in hop.commands), 10), hop.commands
        assert (spool / f"{name}.envelope.busy").exists()
    except BaseException:
        stop_process(proc)
        raise
    hop.delays["final"] = 0.0
    return proc, name


def _sent_once(proc: subprocess.Popen[bytes], hop: FakeSmtp, spool: Path) -> None:
    """Upstream's run ends well, the next hop got the message once, and the spool is empty."""
    out, _ = proc.communicate(timeout=30)
    assert [m.rcpts for m in hop.messages] == [[B]], (hop.commands, out.decode(errors="replace"))
    assert proc.returncode == 0, out.decode(errors="replace")
    assert [p.name for p in spool.iterdir() if not p.name.startswith(".")] == []


@needs_oracle
def test_ours_as_client_leaves_upstreams_live_claim(tmp_path: Path) -> None:
    spool = spool_dir(daemon_base(tmp_path) / "spool")
    with FakeSmtp() as hop:
        proc, name = _upstream_mid_message(spool, hop)
        try:
            ours = subprocess.run(
                [program("ours"), "--as-client", hop.address, "--spool-dir", str(spool), "--log-time",
                 "--verbose"],
                capture_output=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            log = (ours.stdout + ours.stderr).decode(errors="replace")
            _sent_once(proc, hop, spool)
            assert ours.returncode == 0, log
            assert f"leaving [{name}.envelope.busy]: not a claim of ours" in log
            assert "recovered claim" not in log
        finally:
            stop_process(proc)


@needs_oracle
def test_ours_daemon_leaves_upstreams_live_claim(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    spool = spool_dir(base / "ours" / "spool")  # start()'s spool for ours: upstream runs on it first
    with FakeSmtp() as hop:
        proc, name = _upstream_mid_message(spool, hop)
        try:
            with start("ours", base, "--forward-to", hop.address, "--poll", "1") as relay:
                started = (f"leaving [{name}.envelope.busy]", f"recovered claim on [{name}]")
                assert wait_until(lambda: any(s in relay.log() for s in started), 30), relay.log()
                _sent_once(proc, hop, spool)
                assert started[0] in relay.log() and started[1] not in relay.log()
        finally:
            stop_process(proc)


# ---- ours only ---------------------------------------------------------------------------------

_DEAD_CLAIM = """
import sys
from emailrelay.spool.names import MessageId
from emailrelay.spool.store import SpoolStore
store = SpoolStore(sys.argv[1])
assert store.claim(MessageId.parse(sys.argv[2])) is not None
# exits holding the claim: the kernel drops the lock, the .busy stays, marked as ours
"""


def _dead_claim_of_ours(spool: Path, rcpt: str, stamp: int) -> str:
    """A claim of ours whose process died, moved into ``spool`` (made beside it, so that no forwarder
    running on ``spool`` takes the message first); its name."""
    side = spool_dir(spool.parent / f"side-{stamp}")
    (name,) = write_messages(side, [[rcpt]], stamp)
    subprocess.run([sys.executable, "-c", _DEAD_CLAIM, str(side), name], cwd=REPO, check=True, timeout=30)
    for suffix in (".content", ".envelope.busy"):  # renames keep the inode, and so the mark
        (side / f"{name}{suffix}").rename(spool / f"{name}{suffix}")
    return name


def test_hand_made_busy_survives_while_dead_claims_of_ours_are_returned(tmp_path: Path) -> None:
    """At start, and in a recovery run later (one of ours that died is moved in after the start: its
    return shows that a recovery run went by)."""
    base = daemon_base(tmp_path)
    spool = spool_dir(base / "ours" / "spool")
    stamp = int(time.time())
    (hand,) = write_messages(spool, [[B]], stamp)
    (spool / f"{hand}.envelope").rename(spool / f"{hand}.envelope.busy")  # unmarked, just now
    dead = _dead_claim_of_ours(spool, "c@example.net", stamp + 1)
    with FakeSmtp() as hop:
        with start("ours", base, "--forward-to", hop.address, "--poll", "1") as relay:
            assert wait_until(lambda: len(hop.messages) == 1, 10), relay.log()
            later = _dead_claim_of_ours(spool, "d@example.net", stamp + 2)
            assert wait_until(lambda: len(hop.messages) == 2, 10), relay.log()
            log = relay.log()
        assert [m.rcpts for m in hop.messages] == [["c@example.net"], ["d@example.net"]]
    for name in (dead, later):
        assert f"recovered claim on [{name}]: returned to the queue" in log
    assert f"leaving [{hand}.envelope.busy]: not a claim of ours" in log
    assert log.count(f"leaving [{hand}.envelope.busy]") == 1  # said once, not at every recovery run
    assert sorted(p.name for p in spool.iterdir()) == [f"{hand}.content", f"{hand}.envelope.busy"]
