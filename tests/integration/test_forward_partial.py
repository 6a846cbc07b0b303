"""Forwarding to a next hop with a recipient limit (``452 4.5.3`` too many recipients).

The real ``emailrelay --as-client`` forwards a stored many-recipient message
to a scripted next hop (tests/support/fake_smtp.py) that accepts at most
``LIMIT`` recipients per transaction.  The forwarder sends the message to the
accepted recipients, rewrites the claimed envelope to list only the ones
still to do, and goes on with them in further transactions; a run stopped in
between leaves exactly the remaining recipients in the spool.  This is ours,
with back-off (``--retry``); without it a ``452`` is a rejection like any
other, as in E-MailRelay 2.6b (tests/differential/test_forwarding.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_smtp import DROP, FakeSmtp, Session
from tests.support.sink import envelope_text, run_client, simple_content, states, write_raw

LIMIT = 100
RETRY = ("--retry", "60")  # back-off on: what defers recipients


def limited(session: Session, address: Any) -> str:
    return "452 4.5.3 too many recipients" if len(session.rcpts) >= LIMIT else "250 2.1.5 ok"


def to_remote(envelope: Path) -> list[str]:
    return re.findall(r"X-MailRelay-To-Remote: (.*)\r\n", envelope.read_bytes().decode())


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


def test_an_interrupted_run_leaves_only_the_remaining_recipients(spool: Path) -> None:
    rcpts = [f"r{i}@example.net" for i in range(250)]
    mid = write_raw(spool, envelope_text("a@example.com", rcpts, ["alice"]), simple_content("partial@test"))

    def one_message_per_connection(session: Session, address: Any) -> Any:
        return DROP if session.messages else "250 2.1.0 ok"  # gone after the first transaction

    with FakeSmtp(replies={"rcpt": limited, "mail": one_message_per_connection}) as hop:
        first = run_client(spool, hop.address, *RETRY)
        assert [m.rcpts for m in hop.messages] == [rcpts[:LIMIT]]
        assert first.returncode != 0
        assert (
            "to 100 of 250 recipients; 150 deferred by the server: 452 4.5.3 too many recipients"
            in first.stderr
        )
        assert states(spool) == {"envelope": 1, "content": 1}
        envelope = spool / f"{mid}.envelope"
        text = envelope.read_bytes().decode()
        assert to_remote(envelope) == rcpts[LIMIT:]
        assert "X-MailRelay-To-Local: alice\r\n" in text  # never forwarded, kept
        assert "X-MailRelay-ToCount: 151\r\n" in text
        assert not list(spool.glob("*.tmp"))

        hop.clear_messages()
        hop.replies["mail"] = "250 2.1.0 ok"
        second = run_client(spool, hop.address, *RETRY)
        assert second.returncode == 0, second.stderr
        assert [m.rcpts for m in hop.messages] == [rcpts[100:200], rcpts[200:]]
        assert all(m.connection == hop.messages[0].connection for m in hop.messages)
    assert not any(states(spool).values())


def test_forward_to_some_with_a_recipient_limit(spool: Path) -> None:
    rcpts = [f"r{i}@example.net" for i in range(150)]
    bad = ["r5@example.net", "r120@example.net"]
    mid = write_raw(spool, envelope_text("a@example.com", rcpts), simple_content("some@test"))
    with FakeSmtp(replies={"rcpt": limited}, rcpt_replies={b: "550 5.1.1 no such user" for b in bad}) as hop:
        r = run_client(spool, hop.address, "--forward-to-some", *RETRY)
        delivered = [rcpt for m in hop.messages for rcpt in m.rcpts]
        assert len(hop.messages) == 2 and hop.connections == 1
    assert sorted(delivered) == sorted(set(rcpts) - set(bad))  # each exactly once
    assert r.returncode != 0  # not everything went
    assert states(spool) == {"bad": 1, "content": 1}
    envelope = spool / f"{mid}.envelope.bad"
    assert sorted(to_remote(envelope)) == sorted(bad)
    assert (
        envelope.read_bytes()
        .decode()
        .endswith("X-MailRelay-Reason: one or more recipients rejected\r\nX-MailRelay-ReasonCode:\r\n")
    )  # upstream's words for the rejected ones, without a code


def test_forward_to_all_still_fails_on_a_permanent_rejection(spool: Path) -> None:
    rcpts = [f"r{i}@example.net" for i in range(150)]
    mid = write_raw(spool, envelope_text("a@example.com", rcpts), simple_content("all@test"))

    def unknown_within_the_limit(session: Session, address: Any) -> str:
        return "550 5.1.1 no such user" if len(session.rcpts) < LIMIT else limited(session, address)

    with FakeSmtp(
        replies={"rcpt": limited}, rcpt_replies={"r120@example.net": unknown_within_the_limit}
    ) as hop:
        r = run_client(spool, hop.address, *RETRY)
        assert [m.rcpts for m in hop.messages] == [rcpts[:LIMIT]]  # the 550 comes in the second transaction
    assert r.returncode != 0
    envelope = spool / f"{mid}.envelope.bad"
    assert to_remote(envelope) == rcpts[LIMIT:]  # the delivered ones are not in the failed message
    assert "X-MailRelay-Reason: one or more recipients rejected\r\n" in envelope.read_bytes().decode()
    assert "X-MailRelay-ReasonCode: 250\r\n" in envelope.read_bytes().decode()  # the RSET's, as upstream
