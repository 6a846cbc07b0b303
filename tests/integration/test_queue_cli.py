"""``emailrelay queue`` as a program, on the spool of a running store-and-forward relay."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from emailrelay.spool.names import MessageId, State
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import free_port, program, running_relay, wait_until


def queue(spool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [program(), "queue", args[0], "--spool-dir", str(spool), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )


def send(port: int, rcpt: str) -> None:
    subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--from", "sender@example.com", "--to", rcpt,
         "--header", f"Subject: to {rcpt}"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip


def test_queue_tool_while_the_relay_forwards(tmp_path: Path) -> None:
    with (
        FakeSmtp(rcpt_replies={"bad@example.net": "550 5.1.1 no such user"}) as hop,
        running_relay(tmp_path, "--forward-to", hop.address, "--poll", "1") as relay,
    ):
        store = SpoolStore(relay.spool, fsync=False)
        send(relay.port, "bad@example.net")
        assert wait_until(lambda: any(e.state is State.BAD for e in store.scan()), timeout=30)
        listing = queue(relay.spool, "list")
        assert listing.returncode == 0
        assert " bad " in listing.stdout and "sender@example.com" in listing.stdout
        # upstream's reason for refused recipients, with the code of the RSET that followed
        assert "250 one or more recipients rejected" in listing.stdout
        (item,) = json.loads(queue(relay.spool, "list", "--json").stdout)
        show = queue(relay.spool, "show", item["id"])
        assert "to-remote:                bad@example.net" in show.stdout
        assert "  Subject: to bad@example.net" in show.stdout

        # the next hop changes its mind: retry, and the running relay forwards it
        hop.rcpt_replies.clear()
        retried = queue(relay.spool, "retry", "--all-failed")
        assert retried.returncode == 0 and retried.stdout == "retried 1 message\n"
        assert hop.wait_for_messages(1, timeout=30)
        assert wait_until(lambda: list(store.scan()) == [], timeout=30)


def test_hold_keeps_a_message_from_the_forwarder(tmp_path: Path) -> None:
    with FakeSmtp() as hop, running_relay(tmp_path) as relay:  # store only; forwarding by --as-client
        store = SpoolStore(relay.spool, fsync=False)
        send(relay.port, "one@example.net")
        send(relay.port, "two@example.net")
        first, second = store.ready()
        held = queue(relay.spool, "hold", str(first))
        assert held.returncode == 0 and held.stdout == "held 1 message\n"
        forward = [program(), "--as-client", hop.address, "--spool-dir", str(relay.spool), "--user", "root"]
        subprocess.run(forward, capture_output=True, timeout=60, check=False)
        assert [m.rcpts for m in hop.messages] == [["two@example.net"]]
        assert store.find(str(first)) == (first, State.HELD)
        assert "held" in queue(relay.spool, "list").stdout
        assert queue(relay.spool, "release", str(first)).returncode == 0
        subprocess.run(forward, capture_output=True, timeout=60, check=False)
        assert [m.rcpts for m in hop.messages] == [["two@example.net"], ["one@example.net"]]
        assert list(store.scan()) == [] and second not in store.ready()


def test_delete_refuses_a_claimed_message_of_a_running_relay(tmp_path: Path) -> None:
    with running_relay(tmp_path) as relay:  # store only: nothing forwards
        store = SpoolStore(relay.spool, fsync=False)
        send(relay.port, "one@example.net")
        send(relay.port, "two@example.net")
        first, second = store.ready()
        claim = store.claim(first)  # as a forwarder (or client filter) holds it
        assert claim is not None
        try:
            done = queue(relay.spool, "delete", str(first), str(second))
            assert done.returncode == 1
            assert f"{first}: busy: being forwarded, not deleted" in done.stderr
            assert done.stdout == "deleted 1 message\n"
            assert store.find(str(first)) == (first, State.BUSY)
            assert store.find(str(second)) is None and not store.content_path(second).exists()
        finally:
            claim.release()
        listing = json.loads(queue(relay.spool, "list", "--json").stdout)
        assert [i["id"] for i in listing] == [str(first)] and listing[0]["state"] == "ready"
        assert MessageId.parse(listing[0]["id"]) == first


def test_queue_list_says_why_a_message_waits(tmp_path: Path) -> None:
    """A running relay whose next hop refuses connections: ``queue list`` shows the error, as mailq does."""
    closed = free_port()  # nothing listens there
    with running_relay(tmp_path, "--forward-to", f"127.0.0.1:{closed}", "--poll", "1") as relay:
        store = SpoolStore(relay.spool, fsync=False)
        send(relay.port, "later@example.net")
        assert wait_until(lambda: any(store.deferral(e.id) for e in store.scan()), timeout=30)
        listing = queue(relay.spool, "list")
        assert listing.returncode == 0, listing.stderr
        lines = listing.stdout.splitlines()
        assert re.search(r"\((retry in \S+|due now)\)$", lines[1])  # due now: without back-off
        # the connection error, in whichever words the forwarder has for it, and the attempts
        assert re.match(
            rf"    \((.*: )?cannot connect to 127\.0\.0\.1:{closed}\b.*; [0-9]+ attempts?", lines[2]
        )
        assert lines[3] == "    later@example.net"
        (item,) = json.loads(queue(relay.spool, "list", "--json").stdout)
        assert (
            f"cannot connect to 127.0.0.1:{closed}" in item["reason"]
            and item["deferred"]
            and item["attempts"]
        )
        shown = queue(relay.spool, "show", item["id"], "--body")
        assert "deferred-reason:" in shown.stdout and "Subject: to later@example.net" in shown.stdout
        deleted = queue(relay.spool, "delete", "--state", "deferred")
        assert deleted.returncode == 0 and deleted.stdout == "deleted 1 message\n"
        assert not [p for p in relay.spool.iterdir() if p.is_file()]  # the record went with it
