"""Our deferral records (``.<id>.deferral``, why a message waits) in a spool E-MailRelay 2.6b works on.

What it checks: the record our forwarder leaves beside a deferred message is
harmless to upstream, which the spool must stay compatible with: E-MailRelay
2.6b ``--as-client`` forwards the message as if the record were not there,
reports nothing about it and leaves it alone (byte for byte); our recovery then
removes the record whose message is gone, and ``emailrelay queue list`` says the
spool is empty.  A record of a message upstream could not forward (next hop
down) is also left as it was, and our queue tool still reads it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from emailrelay.spool.envelope import Envelope
from emailrelay.spool.names import MessageId
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import daemon_base, needs_oracle, run
from tests.support.relay import free_port

pytestmark = [needs_oracle, pytest.mark.timeout(120)]

ENV = Envelope(from_address="a@example.com", to_remote=("b@example.net",), client="127.0.0.1")


def deferred_spool(spool: Path) -> tuple[SpoolStore, MessageId, bytes]:
    """One message our forwarder gave back (refused connection), with its record: (store, id, record)."""
    spool.mkdir(mode=0o755)
    store = SpoolStore(spool, fsync=False)
    mid = store.store_message(ENV, b"Subject: deferred\r\n\r\nhello\r\n")
    claim = store.claim(mid)
    assert claim is not None
    claim.release(not_before=time.time() + 600, reason="cannot connect to 192.0.2.1:25: Connection refused")
    record = spool / f".{mid}.deferral"
    assert record.is_file()
    return store, mid, record.read_bytes()


def test_upstream_forwards_past_the_record_and_leaves_it_alone(tmp_path: Path) -> None:
    spool = daemon_base(tmp_path) / "spool"
    store, mid, record = deferred_spool(spool)
    with FakeSmtp() as hop:
        done = run("upstream", "emailrelay", "--as-client", hop.address, "--spool-dir", str(spool))
        assert done.returncode == 0, done.stderr
        assert hop.wait_for_messages(1, timeout=20)
    assert b"deferral" not in done.stdout + done.stderr
    assert sorted(p.name for p in spool.iterdir()) == [f".{mid}.deferral"]  # forwarded; the record untouched
    assert (spool / f".{mid}.deferral").read_bytes() == record
    assert store.recover().removed_deferrals == 1
    assert list(spool.iterdir()) == []
    done = run("ours", "emailrelay", "queue", "list", "--spool-dir", str(spool))
    assert done.returncode == 0 and done.stdout == b"spool is empty\n"


def test_upstream_keeps_the_record_of_a_message_it_cannot_forward(tmp_path: Path) -> None:
    spool = daemon_base(tmp_path) / "spool"
    _, mid, record = deferred_spool(spool)
    done = run("upstream", "emailrelay", "--as-client", f"127.0.0.1:{free_port()}", "--spool-dir", str(spool))
    assert done.returncode != 0  # nothing listens there
    assert (spool / f".{mid}.deferral").read_bytes() == record
    assert (spool / f"{mid}.envelope").is_file()
    listing = run("ours", "emailrelay", "queue", "list", "--spool-dir", str(spool))
    assert b"(cannot connect to 192.0.2.1:25: Connection refused; 1 attempt" in listing.stdout
