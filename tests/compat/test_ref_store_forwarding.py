"""Reference guide 2.6, "Message store" and "Forwarding", through the real ``emailrelay`` program.

What it proves: a message that goes through a relay is stored as an
``emailrelay.<pid>.<time>.<seq>.content`` / ``.envelope`` pair; a server
filter sees the envelope as ``.envelope.new``, a client filter as
``.envelope.busy``, and a message the next hop refuses ends as
``.envelope.bad`` with the reason written into it; and the forwarding
triggers of the guide can be mixed (admin ``forward`` while a client is
connected, then ``--forward-on-disconnect``).  Clients are smtplib and the
admin port; the next hop is ``FakeSmtp``.  The table is
docs/compat-parts/20-store-forwarding-filters-verifiers.md.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from emailrelay.spool import envelope as envelope_mod
from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import free_port, running_relay, wait_for_port, wait_until
from tests.support.sink import states
from tests.support.sink_counter import AdminClient

pytestmark = pytest.mark.timeout(60)

NAME = re.compile(r"^emailrelay\.([0-9]+)\.([0-9]+)\.([0-9]+)\.(content|envelope(\.new|\.busy|\.bad)?)$")
CONTENT = b"From: a@example.com\r\nSubject: store\r\nMessage-ID: <store@test>\r\n\r\nline one\r\nline two\r\n"


def _probe(path: Path, record: Path) -> Path:
    """A filter that appends the base name of its envelope argument to ``record``."""
    path.write_text(f'#!/bin/sh\nbasename "$2" >> {record}\nexit 0\n')
    path.chmod(0o755)
    return path


def test_message_store_names_and_suffixes(tmp_path: Path) -> None:
    server_seen, client_seen = tmp_path / "server-seen", tmp_path / "client-seen"
    server_filter = _probe(tmp_path / "server.sh", server_seen)
    client_filter = _probe(tmp_path / "client.sh", client_seen)
    options = (
        "--single-process",
        "--poll",
        "0",
        "--filter",
        str(server_filter),
        "--client-filter",
        str(client_filter),
    )
    with (
        FakeSmtp(replies={"final": "550 5.7.1 not wanted here"}) as hop,
        running_relay(tmp_path, "--forward-to", hop.address, *options) as relay,
    ):
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:
            c.sendmail("a@example.com", ["b@example.net"], CONTENT)
        assert wait_until(lambda: states(relay.spool).get("bad") == 1, 15), states(relay.spool)
        names = sorted(p.name for p in relay.spool.iterdir() if p.is_file())
    assert len(names) == 2 and all(NAME.match(n) for n in names), names
    content_name, envelope_name = names
    pid, stamp, seq, _, _ = NAME.match(content_name).groups()  # type: ignore[union-attr]
    assert envelope_name == f"emailrelay.{pid}.{stamp}.{seq}.envelope.bad"
    assert int(pid) == relay.pid
    assert server_seen.read_text().split() == [f"emailrelay.{pid}.{stamp}.{seq}.envelope.new"]
    assert client_seen.read_text().split()[0] == f"emailrelay.{pid}.{stamp}.{seq}.envelope.busy"
    stored = (relay.spool / content_name).read_bytes()
    assert stored.endswith(CONTENT)  # a Received line may be added on top; CR-LF kept
    env = envelope_mod.parse((relay.spool / envelope_name).read_bytes())
    assert env.reason is not None and "not wanted here" in env.reason
    assert env.reason_code == "550"
    assert (env.from_address, env.to_remote, env.client) == ("a@example.com", ("b@example.net",), "127.0.0.1")


def test_forwarding_triggers_can_be_mixed(tmp_path: Path) -> None:
    """The admin ``forward`` command while a client is still connected, then ``--forward-on-disconnect``."""
    admin_port = free_port()
    options = ("--single-process", "--forward-on-disconnect", "--admin", str(admin_port))
    with FakeSmtp() as hop, running_relay(tmp_path, "--forward-to", hop.address, *options) as relay:
        wait_for_port(admin_port)
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:
            c.sendmail("a@example.com", ["one@example.net"], CONTENT.replace(b"store@", b"one@"))
            assert not hop.wait_for_messages(1, timeout=1.0)  # connected: nothing goes yet
            with AdminClient(admin_port) as admin:  # no greeting: the prompt follows each command
                admin.sock.sendall(b"forward\r\n")
                assert admin.read_until(b"E-MailRelay> ") == b"OK\r\nE-MailRelay> "  # upstream's reply
            assert hop.wait_for_messages(1, timeout=10)  # the admin command, while still connected
            c.sendmail("a@example.com", ["two@example.net"], CONTENT.replace(b"store@", b"two@"))
            assert not hop.wait_for_messages(2, timeout=1.0)
        assert hop.wait_for_messages(2, timeout=10)  # the disconnect
        assert wait_until(lambda: states(relay.spool) == {}, 10)
    assert [m.rcpts for m in hop.messages] == [["one@example.net"], ["two@example.net"]]
