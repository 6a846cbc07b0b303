"""A remote SMTP client, ours against E-MailRelay 2.6b: the same silent refusal and warnings (issue 17).

Both relays run as root with the default ``--user daemon`` inside one private
network namespace (tests/support/netns.py) on ``--interface 192.0.2.2``. A
client connecting from 192.0.2.2 is remote: without ``--remote-clients`` both
programs close the connection without a byte and log the same two warnings
(and no "smtp connection from" line); with it both greet and answer QUIT.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.diff_remote import remote_session
from tests.support.netns import Netns, private_netns
from tests.support.oracle import SIDES, daemon_base, needs_oracle

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    with private_netns() as ns:
        yield ns


def test_remote_smtp_client_refused_like_upstream(netns: Netns, tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    got = {side: remote_session(netns, side, base) for side in SIDES}
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
    got = {side: remote_session(netns, side, base, "--remote-clients") for side in SIDES}
    for side in SIDES:
        seen = got[side][0]
        assert seen.startswith("b'220 ") and seen.endswith("\\r\\n221 OK\\r\\n'"), (side, seen)
        assert "rejected" not in "\n".join(got[side][1])
