"""Tests for emailrelay.protocol.smtp_client: recipients a server defers (452 too many recipients).

RFC 5321 4.5.3.1.10: a server may refuse recipients beyond its limit with
452; the client sends the message to the accepted ones and the rest in a
later transaction.  The client reports them as ``MessageSent.deferred`` and
accepts a new ``send_envelope`` on the same session without RSET.  This is
ours, with back-off (``--retry``, ``ClientConfig.defer_transient``); without
it a 4xx recipient is rejected as E-MailRelay 2.6b rejects it (see
test_smtp_client.py).
"""

from __future__ import annotations

import pytest

from emailrelay.protocol.smtp_client import MessageFailed, MessageSent, RecipientsResult, State
from tests.support.smtp_client_steps import EHLO_PIPE, EHLO_PLAIN, Result, Step, content, envelope, reply
from tests.support.smtp_client_steps import run_all_ways as _run_all_ways


def run_all_ways(script: list[Step], **config: object) -> Result:
    """As test_smtp_client's, with back-off's deferral of 4xx recipients."""
    return _run_all_ways(script, **{"defer_transient": True, **config})


EHLO_CHUNKING = b"250-sink.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250 8BITMIME\r\n"
TOO_MANY = b"452 4.5.3 too many recipients\r\n"
R452 = reply(452, "4.5.3 too many recipients")


def rcpt_lines(*rcpts: str) -> bytes:
    return b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)


def test_pipelined_452_sends_to_the_accepted_and_reports_the_deferred() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x", "r3@x", "r4@x")),
            b"250 ok\r\n250 r1\r\n250 r2\r\n" + TOO_MANY + TOO_MANY,
            b"354 go\r\n",
            content(b"hello\r\n"),
            b"250 queued\r\n",
        ]
    )
    assert res.writes[2] == b"MAIL FROM:<a@example.com>\r\n" + rcpt_lines("r1@x", "r2@x", "r3@x", "r4@x")
    assert res.writes[3] == b"DATA\r\n"
    assert res.of(RecipientsResult) == [RecipientsResult(["r1@x", "r2@x"], [("r3@x", R452), ("r4@x", R452)])]
    assert res.events[-1] == MessageSent(
        reply(250, "queued"), ["r1@x", "r2@x"], [], [("r3@x", R452), ("r4@x", R452)]
    )
    assert res.client.state is State.READY


def test_the_deferred_go_in_a_new_transaction_without_rset() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x", "r3@x")),
            b"250 ok\r\n250 r1\r\n" + TOO_MANY + TOO_MANY,
            b"354 go\r\n",
            content(b"hello\r\n"),
            b"250 first\r\n",
            envelope(rcpts=("r2@x", "r3@x")),
            b"250 ok\r\n250 r2\r\n250 r3\r\n",
            b"354 go\r\n",
            content(b"hello\r\n"),
            b"250 second\r\n",
        ]
    )
    assert res.writes[7] == b"MAIL FROM:<a@example.com>\r\n" + rcpt_lines("r2@x", "r3@x")
    assert b"RSET" not in res.sent
    sent = res.of(MessageSent)
    assert [m.accepted for m in sent] == [["r1@x"], ["r2@x", "r3@x"]]
    assert sent[1].deferred == [] and sent[1].rejected == []
    assert res.sent.count(b"hello\r\n.\r\n") == 2


def test_without_pipelining_no_rcpt_follows_a_452() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PLAIN,
            envelope(rcpts=("r1@x", "r2@x", "r3@x", "r4@x")),
            b"250 ok\r\n",
            b"250 r1\r\n",
            TOO_MANY,
            b"354 go\r\n",
            content(b"hello\r\n"),
            b"250 queued\r\n",
        ]
    )
    assert res.writes[2:6] == [
        b"MAIL FROM:<a@example.com>\r\n",
        rcpt_lines("r1@x"),
        rcpt_lines("r2@x"),
        b"DATA\r\n",
    ]
    assert res.sent.count(b"RCPT TO:") == 2
    assert res.events[-1] == MessageSent(
        reply(250, "queued"), ["r1@x"], [], [("r2@x", R452), ("r3@x", R452), ("r4@x", R452)]
    )


def test_without_pipelining_other_4xx_do_not_stop_the_rcpts() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PLAIN,
            envelope(rcpts=("r1@x", "r2@x", "r3@x")),
            b"250 ok\r\n",
            b"450 4.2.1 r1 busy\r\n",
            b"250 r2\r\n",
            b"250 r3\r\n",
            b"354 go\r\n",
            content(b"hello\r\n"),
            b"250 queued\r\n",
        ]
    )
    assert res.sent.count(b"RCPT TO:") == 3
    assert res.events[-1] == MessageSent(
        reply(250, "queued"), ["r2@x", "r3@x"], [], [("r1@x", reply(450, "4.2.1 r1 busy"))]
    )


def test_bdat_goes_to_the_accepted_ones() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_CHUNKING,
            envelope(rcpts=("r1@x", "r2@x"), body="BINARYMIME"),
            b"250 ok\r\n250 r1\r\n" + TOO_MANY,
            content(b"hello\r\n"),
            b"250 queued\r\n",
        ]
    )
    assert res.writes[4] == b"BDAT 7 LAST\r\nhello\r\n"
    assert res.events[-1] == MessageSent(reply(250, "queued"), ["r1@x"], [], [("r2@x", R452)])


def test_all_deferred_is_a_temporary_failure_of_the_message() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x")),
            b"250 ok\r\n" + TOO_MANY + TOO_MANY,
            b"250 reset\r\n",
        ]
    )
    failed = res.events[-1]
    assert isinstance(failed, MessageFailed)
    assert failed.stage == "rcpt" and failed.reply == R452 and failed.reply.is_transient()
    assert failed.rset == reply(250, "reset")
    assert b"DATA" not in res.sent and res.writes[3] == b"RSET\r\n"


@pytest.mark.parametrize("order", ["4xx-first", "5xx-first"])
def test_forward_to_all_fails_on_a_permanent_rejection_even_with_deferrals(order: str) -> None:
    replies = [TOO_MANY, b"550 5.1.1 unknown\r\n"]
    if order == "5xx-first":
        replies.reverse()
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x", "r3@x")),
            b"250 ok\r\n250 r1\r\n" + b"".join(replies),
            b"250 reset\r\n",
        ]
    )
    failed = res.events[-1]
    assert isinstance(failed, MessageFailed)
    assert failed.reply == reply(550, "5.1.1 unknown")
    assert failed.reason == "one or more recipients rejected"
    assert len(failed.rejected) == 2
    assert b"DATA" not in res.sent and res.writes[3] == b"RSET\r\n"
    assert res.client.state is State.READY


def test_forward_to_some_separates_refused_and_deferred() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x", "r3@x")),
            b"250 ok\r\n" + TOO_MANY + b"550 5.1.1 unknown\r\n250 r3\r\n",
            b"354 go\r\n",
            content(b"hello\r\n"),
            b"250 queued\r\n",
        ],
        forward_to_some=True,
    )
    assert res.events[-1] == MessageSent(
        reply(250, "queued"), ["r3@x"], [("r2@x", reply(550, "5.1.1 unknown"))], [("r1@x", R452)]
    )
