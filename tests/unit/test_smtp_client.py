"""Tests for emailrelay.protocol.smtp_client: scripted server conversations."""

from __future__ import annotations

import re

import pytest

from emailrelay.protocol.smtp_client import (
    MAX_REPLY_LINE,
    NEED_DATA,
    AuthChallenge,
    AuthDone,
    Capabilities,
    ClientConfig,
    ClientUsageError,
    Closed,
    Event,
    Greeted,
    MessageFailed,
    MessageSent,
    ReadyForContent,
    RecipientsResult,
    Reply,
    SessionFailed,
    SessionReady,
    SmtpClient,
    StartTlsReady,
    State,
    parse_ehlo,
    xtext_encode,
)
from tests.support.fixtures import UPSTREAM
from tests.support.smtp_client_steps import (
    EHLO_FULL,
    EHLO_PIPE,
    EHLO_PLAIN,
    SPLITTERS,
    Result,
    Step,
    content,
    drain,
    envelope,
    quit_,
    reply,
    run,
    run_all_ways,
)

FIXTURE = UPSTREAM / "forward-verbose.log"


# --------------------------------------------------------------------------- replies


def test_reply_helpers() -> None:
    r = reply(250, "first", "second")
    assert r.text == "second"
    assert r.message == "first; second"
    assert str(r) == "250 first; second"
    assert r.is_positive() and not r.is_transient() and not r.is_permanent()
    assert reply(451, "x").is_transient()
    assert reply(554, "x").is_permanent()
    assert reply(354, "go").is_intermediate()
    assert str(Reply(250, [""])) == "250"


def test_parse_ehlo() -> None:
    caps = parse_ehlo(
        reply(250, "sink", "pipelining", "SIZE", "AUTH=LOGIN", "AUTH PLAIN login CRAM-MD5", "X-UNKNOWN", "")
    )
    assert caps.pipelining and not caps.chunking
    assert caps.size == 0
    assert caps.auth_mechanisms == ("LOGIN", "PLAIN", "CRAM-MD5")
    assert caps.auth
    assert caps.raw == ["pipelining", "SIZE", "AUTH=LOGIN", "AUTH PLAIN login CRAM-MD5", "X-UNKNOWN", ""]
    assert parse_ehlo(reply(250, "sink", "SIZE 12345")).size == 12345
    assert parse_ehlo(reply(250, "sink")) == Capabilities()


def test_xtext_encode() -> None:
    assert xtext_encode("alice") == "alice"
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("é") == "+C3+A9"


# --------------------------------------------------------------------------- basic conversations


def test_upstream_fixture_conversation() -> None:
    """The client half of forward-verbose.log, line for line (upstream does not pipeline)."""
    log = FIXTURE.read_text().splitlines()
    start = next(i for i, line in enumerate(log) if "smtp connection to" in line)
    expected = []
    for line in log[start:]:
        m = re.search(r"info: (tx>>|rx<<): (.*)$", line)
        if m:
            text = m.group(2)
            expected.append(
                ("tx" if m.group(1) == "tx>>" else "rx", text[1:-1] if text.startswith('"') else text)
            )

    client = SmtpClient(ClientConfig(helo_name="127.0.0.1", pipelining=False))
    events: list[Event] = []

    def feed(data: bytes) -> None:
        client.receive_data(data)
        events.extend(drain(client))

    feed(b"220 sink ESMTP\r\n")
    assert client.data_to_send() == b"EHLO 127.0.0.1\r\n"
    feed(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    client.send_envelope("a@example.com", ["b@example.net"])
    assert client.data_to_send() == b"MAIL FROM:<a@example.com>\r\n"
    feed(b"250 ok\r\n")
    assert client.data_to_send() == b"RCPT TO:<b@example.net>\r\n"
    feed(b"250 ok\r\n")
    assert client.data_to_send() == b"DATA\r\n"
    feed(b"354 go\r\n")
    client.send_content(b"From: a\r\nTo: b\r\nSubject: test\r\n\r\nbody\r\n")
    client.end_content()
    assert client.data_to_send() == b"From: a\r\nTo: b\r\nSubject: test\r\n\r\nbody\r\n.\r\n"
    feed(b"550 5.7.1 rejected for testing\r\n")
    client.quit()
    assert client.data_to_send() == b"QUIT\r\n"
    # the log shows rx/tx up to QUIT; "[5 line(s) of content]" is unquoted there
    assert len(expected) == 15
    assert client.drain_trace() == expected
    assert isinstance(events[-1], MessageFailed)
    assert events[-1].stage == "content"
    assert events[-1].reply == reply(550, "5.7.1 rejected for testing")


def basic_script(*final: bytes) -> list[Step]:
    return [
        b"220 sink ESMTP ready\r\n",
        EHLO_PIPE,
        envelope(rcpts=("b@example.net", "c@example.net")),
        b"250 sender ok\r\n250 rcpt ok\r\n250 rcpt ok\r\n",
        b"354 go ahead\r\n",
        content(b"Subject: hi\r\n", b"\r\n.dot line\n", b"last"),
        *final,
    ]


def test_data_conversation_all_splits() -> None:
    res = run_all_ways([*basic_script(b"250 queued as X\r\n"), quit_, b"221 bye\r\n"])
    assert res.events == [
        Greeted(reply(220, "sink ESMTP ready")),
        SessionReady(parse_ehlo(reply(250, "sink.example", "PIPELINING", "8BITMIME"))),
        RecipientsResult(["b@example.net", "c@example.net"], []),
        ReadyForContent(),
        MessageSent(reply(250, "queued as X"), ["b@example.net", "c@example.net"], []),
        Closed(),
    ]
    assert res.writes == [
        b"EHLO client.example\r\n",
        b"",
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n",
        b"DATA\r\n",
        b"",
        b"Subject: hi\r\n\r\n..dot line\r\nlast\r\n.\r\n",
        b"",
        b"QUIT\r\n",
        b"",
    ]
    assert res.trace == [
        ("rx", "220 sink ESMTP ready"),
        ("tx", "EHLO client.example"),
        ("rx", "250-sink.example"),
        ("rx", "250-PIPELINING"),
        ("rx", "250 8BITMIME"),
        ("tx", "MAIL FROM:<a@example.com>"),
        ("tx", "RCPT TO:<b@example.net>"),
        ("tx", "RCPT TO:<c@example.net>"),
        ("rx", "250 sender ok"),
        ("rx", "250 rcpt ok"),
        ("rx", "250 rcpt ok"),
        ("tx", "DATA"),
        ("rx", "354 go ahead"),
        ("tx", "[4 line(s) of content]"),
        ("tx", "."),
        ("rx", "250 queued as X"),
        ("tx", "QUIT"),  # the 221 is not logged: upstream does not wait for it
    ]
    assert res.client.state is State.CLOSED


@pytest.mark.parametrize(
    ("final", "ok"),
    [(b"250 ok\r\n", True), (b"451 try later\r\n", False), (b"554 no thanks\r\n", False)],
)
def test_final_reply(final: bytes, ok: bool) -> None:
    res = run_all_ways(basic_script(final))
    last = res.events[-1]
    if ok:
        assert isinstance(last, MessageSent)
    else:
        assert isinstance(last, MessageFailed)
        assert last.stage == "content"
        assert last.reply is not None and last.reply.code == int(final[:3])
        assert last.rejected == []
    assert res.client.state is State.READY


def test_pipelined_burst_every_split_point() -> None:
    burst = b"250 sender ok\r\n250 r1\r\n550 no such user\r\n250 r3\r\n"
    script_head: list[Step] = [
        b"220 hi\r\n",
        EHLO_PIPE,
        envelope(rcpts=("r1@x", "r2@x", "r3@x")),
    ]
    reference = run([*script_head, burst], forward_to_some=True)
    assert reference.events[-1] == RecipientsResult(["r1@x", "r3@x"], [("r2@x", reply(550, "no such user"))])
    assert reference.writes[-1] == b"DATA\r\n"
    for i in range(len(burst) + 1):
        for j in range(i, len(burst) + 1):
            pieces = [burst[:i], burst[i:j], burst[j:]]
            res = run([*script_head, *[p for p in pieces if p]], forward_to_some=True)
            assert res.events == reference.events
            assert res.sent == reference.sent


# --------------------------------------------------------------------------- EHLO / HELO and parameters


def test_ehlo_rejected_falls_back_to_helo() -> None:
    res = run_all_ways(
        [
            b"220 old server\r\n",
            b"502 command not implemented\r\n",
            b"250 hello\r\n",
            envelope(size=100, body="8BITMIME", auth="alice"),
            b"250 ok\r\n",
            b"250 ok\r\n",
        ]
    )
    assert res.writes[0] == b"EHLO client.example\r\n"
    assert res.writes[1] == b"HELO client.example\r\n"
    assert isinstance(res.events[1], SessionReady)
    assert res.events[1].capabilities == Capabilities()
    # no PIPELINING: one command per round trip, and no parameters at all
    assert res.writes[3] == b"MAIL FROM:<a@example.com>\r\n"
    assert res.writes[4] == b"RCPT TO:<b@example.net>\r\n"
    assert res.writes[5] == b"DATA\r\n"


def test_ehlo_transient_failure_fails_session() -> None:
    res = run_all_ways([b"220 hi\r\n", b"450 busy\r\n"])
    assert res.events[-1] == SessionFailed(reply(450, "busy"), "ehlo", "EHLO rejected: 450 busy")


def test_helo_rejected_fails_session() -> None:
    res = run_all_ways([b"220 hi\r\n", b"500 what\r\n", b"501 no\r\n"])
    assert isinstance(res.events[-1], SessionFailed)
    assert res.events[-1].stage == "helo"


def test_greeting_rejected() -> None:
    res = run_all_ways([b"554-go away\r\n554 really\r\n", b"250 ignored\r\n"])
    assert res.events == [
        SessionFailed(reply(554, "go away", "really"), "greeting", "greeting rejected: 554 go away; really")
    ]
    assert res.sent == b""
    assert res.client.state is State.FAILED


@pytest.mark.parametrize(
    ("ehlo", "kwargs", "mail"),
    [
        (EHLO_FULL, {}, b"MAIL FROM:<a@example.com>"),
        (EHLO_FULL, {"size": 1234}, b"MAIL FROM:<a@example.com> SIZE=1234"),
        (EHLO_PIPE, {"size": 1234}, b"MAIL FROM:<a@example.com>"),
        (EHLO_FULL, {"body": "8BITMIME"}, b"MAIL FROM:<a@example.com> BODY=8BITMIME"),
        (EHLO_FULL, {"body": "7bit"}, b"MAIL FROM:<a@example.com> BODY=7BIT"),
        (EHLO_PLAIN, {"body": "7BIT"}, b"MAIL FROM:<a@example.com>"),
        (EHLO_PLAIN, {"body": "8BITMIME"}, b"MAIL FROM:<a@example.com>"),
        (EHLO_FULL, {"body": "BINARYMIME"}, b"MAIL FROM:<a@example.com> BODY=BINARYMIME"),
        (EHLO_FULL, {"smtputf8": True}, b"MAIL FROM:<a@example.com> SMTPUTF8"),
        (EHLO_FULL, {"auth": "alice+2B"}, b"MAIL FROM:<a@example.com> AUTH=alice+2B"),
        (EHLO_FULL, {"auth": "<>"}, b"MAIL FROM:<a@example.com> AUTH=<>"),
        (EHLO_PIPE, {"auth": "alice"}, b"MAIL FROM:<a@example.com>"),
        (
            EHLO_FULL,
            {"size": 9, "body": "8BITMIME", "smtputf8": True, "auth": "bob"},
            b"MAIL FROM:<a@example.com> SIZE=9 BODY=8BITMIME SMTPUTF8 AUTH=bob",
        ),
    ],
)
def test_mail_parameters_only_when_offered(ehlo: bytes, kwargs: dict, mail: bytes) -> None:
    res = run([b"220 hi\r\n", ehlo, envelope(**kwargs)])
    assert res.writes[-1].split(b"\r\n")[0] == mail


def test_auth_param_hidden_by_anonymous_client() -> None:
    """--anonymous=client: AUTH=<> instead of the name, as E-MailRelay 2.6b."""
    res = run([b"220 hi\r\n", EHLO_FULL, envelope(auth="alice")], send_auth_param=False)
    assert res.writes[-1].startswith(b"MAIL FROM:<a@example.com> AUTH=<>\r\n")


def test_empty_sender() -> None:
    res = run([b"220 hi\r\n", EHLO_PIPE, envelope(mail_from="")])
    assert res.writes[-1].startswith(b"MAIL FROM:<>\r\n")


@pytest.mark.parametrize(
    ("ehlo", "kwargs", "config", "reason"),
    [
        # E-MailRelay 2.6b's policy and words: SMTPUTF8 and BINARYMIME fail without the extension,
        # strict or not; 8-bit content only with eightbitstrict
        (EHLO_PIPE, {"smtputf8": True}, {}, "cannot send utf8 message to non-smtputf8 server"),
        (
            EHLO_PIPE,
            {"smtputf8": True},
            {"smtputf8_strict": True},
            "cannot send utf8 message to non-smtputf8 server",
        ),
        (
            EHLO_PLAIN,
            {"body": "8BITMIME"},
            {"eightbit_strict": True},
            "cannot send 8-bit message to 7-bit server",
        ),
        (EHLO_PIPE, {"body": "BINARYMIME"}, {}, "cannot send binarymime message to a non-chunking server"),
        (
            EHLO_PIPE,
            {"body": "BINARYMIME"},
            {"binarymime_strict": True},
            "cannot send binarymime message to a non-chunking server",
        ),
        (
            b"250-sink.example\r\n250-CHUNKING\r\n250 8BITMIME\r\n",  # CHUNKING without BINARYMIME
            {"body": "BINARYMIME"},
            {},
            "cannot send binarymime message to a non-chunking server",
        ),
        (
            EHLO_FULL,
            {"body": "BINARYMIME"},
            {"chunking": False},
            "cannot send binarymime message to a non-chunking server",
        ),
    ],
)
def test_strict_policy_failures(ehlo: bytes, kwargs: dict, config: dict, reason: str) -> None:
    res = run([b"220 hi\r\n", ehlo, envelope(**kwargs)], **config)
    assert res.events[-1] == MessageFailed(None, "policy", [], reason)
    assert res.writes[-1] == b""
    assert res.client.state is State.READY
    # nothing was sent, so no RSET either
    res.client.send_envelope("a@x", ["b@x"])
    assert res.client.data_to_send().startswith(b"MAIL FROM:<a@x>")


def test_eight_bit_content_without_8bitmime_goes_without_body() -> None:
    res = run([b"220 hi\r\n", EHLO_PLAIN, envelope(body="8BITMIME"), b"250 ok\r\n", b"250 ok\r\n"])
    assert res.writes[2:] == [b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.net>\r\n", b"DATA\r\n"]


@pytest.mark.parametrize("bad", ["a\r\n@x", "a\n", "a\x00"])
def test_command_injection_refused(bad: str) -> None:
    res = run([b"220 hi\r\n", EHLO_FULL])
    with pytest.raises(ValueError):
        res.client.send_envelope(bad, ["b@x"])
    with pytest.raises(ValueError):
        res.client.send_envelope("a@x", ["b@x", bad])
    with pytest.raises(ValueError):
        res.client.start_auth("PLAIN", bad)
    with pytest.raises(ValueError):
        SmtpClient(ClientConfig(helo_name=bad))
    assert res.client.data_to_send() == b""


@pytest.mark.parametrize("bad", ["has space", "a=b", "", "+zz"])
def test_auth_value_must_be_xtext(bad: str) -> None:
    res = run([b"220 hi\r\n", EHLO_FULL])
    with pytest.raises(ValueError):
        res.client.send_envelope("a@x", ["b@x"], auth=bad)


def test_bad_arguments() -> None:
    res = run([b"220 hi\r\n", EHLO_FULL])
    with pytest.raises(ValueError):
        res.client.send_envelope("a@x", [])
    with pytest.raises(ValueError):
        res.client.send_envelope("a@x", ["b@x"], body="QUANTUM")


# --------------------------------------------------------------------------- pipelining


def test_pipelined_envelope_is_one_write() -> None:
    res = run([b"220 hi\r\n", EHLO_PIPE, envelope(rcpts=("r1@x", "r2@x", "r3@x"))])
    assert (
        res.writes[-1]
        == b"MAIL FROM:<a@example.com>\r\nRCPT TO:<r1@x>\r\nRCPT TO:<r2@x>\r\nRCPT TO:<r3@x>\r\n"
    )
    assert res.client.awaiting_reply


def test_unpipelined_envelope_one_command_per_round_trip() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x")),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
        ],
        pipelining=False,
    )
    assert res.writes[2:] == [
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<r1@x>\r\n",
        b"RCPT TO:<r2@x>\r\n",
        b"DATA\r\n",
        b"",
    ]
    assert res.events[-1] == ReadyForContent()


def test_data_never_pipelined_with_rcpts() -> None:
    res = run([b"220 hi\r\n", EHLO_PIPE, envelope(rcpts=("r1@x", "r2@x")), b"250 ok\r\n250 ok\r\n"])
    assert b"DATA" not in res.writes[2]
    assert res.writes[3] == b""  # still one RCPT reply owed
    assert res.client.state is State.ENVELOPE


# --------------------------------------------------------------------------- recipients


def partial_rejection(*rest: Step, **config: object) -> Result:
    return run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x", "r3@x")),
            b"250 ok\r\n250 r1 ok\r\n550 5.1.1 r2 unknown\r\n450 4.2.0 r3 later\r\n",
            *rest,
        ],
        **config,
    )


def test_forward_to_all_fails_on_any_rejection() -> None:
    """E-MailRelay 2.6b's way: RSET at once, no DATA, and the RSET's reply comes with the failure."""
    res = partial_rejection(b"250 2.0.0 reset\r\n")
    rejected = [("r2@x", reply(550, "5.1.1 r2 unknown")), ("r3@x", reply(450, "4.2.0 r3 later"))]
    assert res.events[2:] == [
        RecipientsResult(["r1@x"], rejected),
        MessageFailed(
            reply(550, "5.1.1 r2 unknown"),
            "rcpt",
            rejected,
            "one or more recipients rejected",
            rset=reply(250, "2.0.0 reset"),
        ),
    ]
    assert res.writes[3] == b"RSET\r\n"  # no DATA
    assert res.client.state is State.READY


def test_forward_to_all_with_back_off_defers_only_4xx() -> None:
    res = partial_rejection(b"250 2.0.0 reset\r\n", defer_transient=True)
    failed = res.events[-1]
    assert isinstance(failed, MessageFailed) and failed.reply == reply(550, "5.1.1 r2 unknown")
    assert res.writes[3] == b"RSET\r\n"


def test_a_421_to_a_recipient_is_its_reply_without_back_off() -> None:
    res = run_all_ways(
        [b"220 hi\r\n", EHLO_PIPE, envelope(), b"250 ok\r\n421 4.3.2 bye\r\n", b"250 reset\r\n"]
    )
    failed = res.events[-1]
    assert isinstance(failed, MessageFailed) and failed.reply == reply(421, "4.3.2 bye")
    assert failed.rset == reply(250, "reset")


def test_forward_to_some_continues_with_accepted() -> None:
    res = partial_rejection(b"354 go\r\n", content(b"hello\r\n"), b"250 done\r\n", forward_to_some=True)
    assert res.writes[3] == b"DATA\r\n"
    assert res.events[-1] == MessageSent(
        reply(250, "done"),
        ["r1@x"],
        [("r2@x", reply(550, "5.1.1 r2 unknown")), ("r3@x", reply(450, "4.2.0 r3 later"))],  # rejected
        [],
    )


def test_forward_to_some_with_back_off_defers_the_4xx() -> None:
    res = partial_rejection(
        b"354 go\r\n", content(b"hello\r\n"), b"250 done\r\n", forward_to_some=True, defer_transient=True
    )
    assert res.events[-1] == MessageSent(
        reply(250, "done"),
        ["r1@x"],
        [("r2@x", reply(550, "5.1.1 r2 unknown"))],  # refused for good
        [("r3@x", reply(450, "4.2.0 r3 later"))],  # deferred: for a later transaction
    )


@pytest.mark.parametrize("forward_to_some", [False, True])
def test_all_recipients_rejected(forward_to_some: bool) -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x")),
            b"250 ok\r\n550 no r1\r\n551 no r2\r\n",
            b"250 reset\r\n",
        ],
        forward_to_some=forward_to_some,
    )
    failed = res.events[-1]
    assert isinstance(failed, MessageFailed)
    assert failed.stage == "rcpt"
    assert failed.reply == reply(550, "no r1") and failed.rset == reply(250, "reset")
    assert [r for r, _ in failed.rejected] == ["r1@x", "r2@x"]
    # upstream's words: "all" only where some could have gone (--forward-to-some)
    assert failed.reason == (
        "all recipients rejected" if forward_to_some else "one or more recipients rejected"
    )


@pytest.mark.parametrize("code", [451, 550])
def test_mail_rejected_pipelined(code: int) -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(rcpts=("r1@x", "r2@x")),
            b"%d sender no\r\n503 need mail\r\n503 need mail\r\n" % code,
            envelope(),
            b"250 ok\r\n250 ok\r\n",
        ]
    )
    failures = res.of(MessageFailed)
    assert failures == [
        MessageFailed(reply(code, "sender no"), "mail", [], f"sender rejected: {code} sender no")
    ]
    assert len(res.of(RecipientsResult)) == 1  # only the second message got that far
    # no transaction is open after a refused MAIL: no RSET (as upstream)
    assert res.writes[4] == b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
    assert res.writes[5] == b"DATA\r\n"


@pytest.mark.parametrize("code", [451, 550])
def test_mail_rejected_unpipelined_never_sends_rcpt(code: int) -> None:
    res = run_all_ways(
        [b"220 hi\r\n", EHLO_PLAIN, envelope(rcpts=("r1@x", "r2@x")), b"%d sender no\r\n" % code],
    )
    assert res.writes[2] == b"MAIL FROM:<a@example.com>\r\n"
    assert res.writes[3] == b""
    assert isinstance(res.events[-1], MessageFailed)
    assert res.events[-1].stage == "mail"
    assert not res.client.awaiting_reply


# --------------------------------------------------------------------------- DATA


def test_data_command_rejected() -> None:
    res = run_all_ways(
        [b"220 hi\r\n", EHLO_PIPE, envelope(), b"250 ok\r\n250 ok\r\n", b"554 no data for you\r\n"]
    )
    assert res.events[-1] == MessageFailed(
        reply(554, "no data for you"), "data", [], "DATA rejected: 554 no data for you"
    )
    with pytest.raises(ClientUsageError):
        res.client.tls_established()


def test_eof_mid_data() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(),
            b"250 ok\r\n250 ok\r\n",
            b"354 go\r\n",
            lambda c: c.send_content(b"part"),
            b"",
        ]
    )
    assert res.events[-1] == SessionFailed(None, "content", "connection closed by the server")
    assert res.client.state is State.FAILED
    # the service may still be pushing content: ignored, never raises
    res.client.send_content(b"more")
    res.client.end_content()
    res.client.quit()
    assert res.client.data_to_send() == b""
    assert res.client.next_event() is NEED_DATA


def test_eof_waiting_for_final_reply() -> None:
    res = run_all_ways(basic_script(b""))
    assert res.events[-1] == SessionFailed(None, "content", "connection closed by the server")


def test_content_before_ready_is_usage_error() -> None:
    res = run([b"220 hi\r\n", EHLO_PIPE])
    with pytest.raises(ClientUsageError):
        res.client.send_content(b"x")
    with pytest.raises(ClientUsageError):
        res.client.end_content()


# --------------------------------------------------------------------------- BDAT


def bdat_script(*replies: bytes, chunks: tuple[bytes, ...] = (b"Subject: x\n\n", b".body\r\n")) -> list[Step]:
    return [
        b"220 hi\r\n",
        EHLO_FULL,
        envelope(body="BINARYMIME"),
        b"250 ok\r\n250 ok\r\n",
        content(*chunks),
        *replies,
    ]


def test_bdat_conversation() -> None:
    """BINARYMIME content goes raw, in one ``BDAT <n> LAST`` up to BDAT_CHUNK octets, as upstream's."""
    res = run_all_ways(bdat_script(b"250 all done\r\n"))
    assert res.events[2:] == [
        RecipientsResult(["b@example.net"], []),
        ReadyForContent(),
        MessageSent(reply(250, "all done"), ["b@example.net"], []),
    ]
    assert res.writes[4] == b"BDAT 19 LAST\r\nSubject: x\n\n.body\r\n"
    assert ("tx", '"BDAT 19 LAST" [19 bytes]') in res.trace
    assert res.client.state is State.READY


def test_bdat_chunks_of_a_million_octets() -> None:
    big = bytes(range(256)) * 4000  # 1 024 000 octets
    res = run(bdat_script(b"250 c1\r\n250 all done\r\n", chunks=(big[:300_000], big[300_000:], b"tail")))
    assert res.sent.count(b"BDAT ") == 2
    assert (
        b"BDAT 1000000\r\n" + big[:1_000_000] + b"BDAT 24004 LAST\r\n" + big[1_000_000:] + b"tail" in res.sent
    )
    assert [t for d, t in res.trace if t.startswith('"BDAT')] == [
        '"BDAT 1000000" [1000000 bytes]',
        '"BDAT 24004 LAST" [24004 bytes]',
    ]
    assert isinstance(res.events[-1], MessageSent)


def test_seven_and_eight_bit_content_go_by_data_when_chunking_is_offered() -> None:
    for body in ("7BIT", "8BITMIME", None):
        res = run([b"220 hi\r\n", EHLO_FULL, envelope(body=body), b"250 ok\r\n250 ok\r\n"])
        assert res.writes[-1] == b"DATA\r\n", body


def test_bdat_binarymime_is_raw() -> None:
    res = run(
        [
            b"220 hi\r\n",
            EHLO_FULL,
            envelope(body="BINARYMIME"),
            b"250 ok\r\n250 ok\r\n",
            content(b"a\nb\r", b".\x00"),
        ]
    )
    assert res.writes[2].startswith(b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n")
    assert res.writes[-1] == b"BDAT 6 LAST\r\na\nb\r.\x00"


def test_bdat_without_pipelining_waits_for_mail_and_rcpt_replies() -> None:
    res = run(
        [b"220 hi\r\n", EHLO_FULL, envelope(body="BINARYMIME"), b"250 ok\r\n", b"250 ok\r\n", content(b"x")],
        pipelining=False,
    )
    assert [w for w in res.writes[2:] if w] == [
        b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n",
        b"RCPT TO:<b@example.net>\r\n",
        b"BDAT 1 LAST\r\nx",
    ]


@pytest.mark.parametrize("code", [452, 552])
def test_bdat_chunk_rejected(code: int) -> None:
    big = b"x" * 1_000_001
    res = run_all_ways(
        bdat_script(
            b"%d too big\r\n503 no\r\n" % code,
            envelope(body="BINARYMIME"),
            b"250 reset\r\n250 ok\r\n250 ok\r\n",
            chunks=(big,),
        )
    )
    failed = res.of(MessageFailed)
    assert failed == [MessageFailed(reply(code, "too big"), "content", [], f"BDAT rejected: {code} too big")]
    assert not res.of(MessageSent)
    assert res.writes[-2].startswith(b"RSET\r\nMAIL FROM:")
    assert res.client.state is State.CONTENT


def test_bdat_failure_while_content_still_streaming() -> None:
    res = run(
        [
            b"220 hi\r\n",
            EHLO_FULL,
            envelope(body="BINARYMIME"),
            b"250 ok\r\n250 ok\r\n",
            lambda c: c.send_content(b"a" * 1_000_001),
            b"552 full\r\n",
        ]
    )
    assert isinstance(res.events[-1], MessageFailed)
    client = res.client
    client.send_content(b"more\r\n")  # the service had not noticed yet: ignored
    client.end_content()
    assert client.data_to_send() == b""
    client.send_envelope("x@x", ["y@x"])
    assert client.data_to_send() == b"RSET\r\nMAIL FROM:<x@x>\r\nRCPT TO:<y@x>\r\n"


def test_bdat_last_rejected() -> None:
    res = run_all_ways(bdat_script(b"554 spam\r\n"))
    assert res.events[-1] == MessageFailed(reply(554, "spam"), "content", [], "message rejected: 554 spam")


# --------------------------------------------------------------------------- reuse, RSET, QUIT


def test_connection_reuse_without_rset_after_success() -> None:
    res = run_all_ways(
        [
            *basic_script(b"250 one\r\n"),
            envelope(mail_from="second@x", rcpts=("z@x",)),
            b"250 ok\r\n250 ok\r\n",
            b"354 go\r\n",
            content(b"two\r\n"),
            b"250 two\r\n",
            quit_,
            b"221 bye\r\n",
        ]
    )
    assert [type(e) for e in res.of(MessageSent)] == [MessageSent, MessageSent]
    assert res.writes[7] == b"MAIL FROM:<second@x>\r\nRCPT TO:<z@x>\r\n"
    assert isinstance(res.events[-1], Closed)


def test_rset_after_failure_unpipelined() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_PLAIN,
            envelope(),
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"554 no data\r\n",
            envelope(mail_from="again@x"),
            b"250 reset ok\r\n",
            b"250 ok\r\n",
        ],
        defer_transient=True,
    )
    assert res.writes[4] == b"DATA\r\n"
    assert res.writes[6] == b"RSET\r\n"  # the refused DATA left the transaction open
    assert res.writes[7] == b"MAIL FROM:<again@x>\r\n"
    assert res.writes[8] == b"RCPT TO:<b@example.net>\r\n"
    assert len(res.of(MessageFailed)) == 1


def test_refused_rset_after_refused_recipients_still_fails_only_the_message() -> None:
    """As E-MailRelay 2.6b: the session goes on (the refusal is the MessageFailed's ``rset``)."""
    res = run_all_ways([b"220 hi\r\n", EHLO_PIPE, envelope(), b"250 ok\r\n550 no\r\n", b"500 what rset\r\n"])
    failed = res.events[-1]
    assert isinstance(failed, MessageFailed) and failed.stage == "rcpt"
    assert failed.rset == reply(500, "what rset")
    assert res.client.state is State.READY and not res.of(SessionFailed)


@pytest.mark.parametrize("code", [500, 501, 502])
def test_ehlo_not_understood_falls_back_to_helo(code: int) -> None:
    res = run([b"220 hi\r\n", b"%d no\r\n" % code])
    assert res.writes[-1] == b"HELO client.example\r\n"


@pytest.mark.parametrize("code", [503, 504, 550, 554])
def test_other_ehlo_refusals_fail_the_session(code: int) -> None:
    res = run([b"220 hi\r\n", b"%d no\r\n" % code])
    assert res.events[-1] == SessionFailed(reply(code, "no"), "ehlo", f"EHLO rejected: {code} no")
    assert b"HELO" not in res.sent


def test_quit_drops_pending_rset() -> None:
    res = run_all_ways([b"220 hi\r\n", EHLO_PIPE, envelope(), b"550 no\r\n503 no\r\n", quit_, b"221 bye\r\n"])
    assert res.writes[4] == b"QUIT\r\n"
    assert res.events[-1] == Closed()


def test_eof_after_quit_is_closed() -> None:
    res = run_all_ways([b"220 hi\r\n", EHLO_PIPE, quit_, b""])
    assert res.events[-1] == Closed()
    assert res.client.state is State.CLOSED


def test_quit_abandons_envelope_in_progress() -> None:
    res = run_all_ways([b"220 hi\r\n", EHLO_PIPE, envelope(), quit_, b"250 ok\r\n250 ok\r\n221 bye\r\n"])
    assert res.writes[3] == b"QUIT\r\n"
    assert res.events[-1] == Closed()
    assert not res.of(RecipientsResult)


def test_quit_not_allowed_mid_content() -> None:
    res = run([b"220 hi\r\n", EHLO_PIPE, envelope(), b"250 ok\r\n250 ok\r\n", b"354 go\r\n"])
    with pytest.raises(ClientUsageError):
        res.client.quit()
    res.client.end_content()
    with pytest.raises(ClientUsageError):
        res.client.quit()


def test_quit_twice_is_harmless() -> None:
    res = run([b"220 hi\r\n", EHLO_PIPE, quit_, quit_])
    assert res.writes[-2:] == [b"QUIT\r\n", b""]


def test_quit_before_greeting() -> None:
    res = run_all_ways([quit_, b"220 hi\r\n221 bye\r\n"])
    assert res.events == [Closed()]


# --------------------------------------------------------------------------- 421 and garbage


def test_421_mid_session() -> None:
    res = run_all_ways(
        [b"220 hi\r\n", EHLO_PIPE, envelope(), b"250 ok\r\n421 4.3.2 shutting down\r\n", b"250 too late\r\n"],
        defer_transient=True,  # with back-off a 421 ends the session; without it it is the RCPT's reply
    )
    assert res.events[-1] == SessionFailed(reply(421, "4.3.2 shutting down"), "rcpt", "service not available")
    assert res.client.state is State.FAILED


def test_421_unsolicited_when_idle() -> None:
    res = run_all_ways([b"220 hi\r\n", EHLO_PIPE, b"421 idle timeout\r\n"])
    assert res.events[-1] == SessionFailed(reply(421, "idle timeout"), "ready", "service not available")


def test_421_greeting() -> None:
    res = run_all_ways([b"421 busy\r\n"])
    assert res.events == [SessionFailed(reply(421, "busy"), "greeting", "service not available")]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"hello world\r\n", "invalid response"),  # (E-MailRelay 2.6b's words for all these)
        (b"25\r\n", "invalid response"),
        (b"\r\n", "invalid response"),
        (b"2500 x\r\n", "invalid response"),
        (b"250x\r\n", "invalid response"),
        (b"25a ok\r\n", "invalid response"),
        (b"600 x\r\n", "invalid response"),
        (b"099 x\r\n", "invalid response"),
        (b"250-a\r\n251 b\r\n", "invalid response"),
        (b"250 " + b"x" * (MAX_REPLY_LINE - 3) + b"\r\n", "reply line too long"),
        (b"250 " + b"x" * (MAX_REPLY_LINE + 10), "reply line too long"),
        (b"250-x\r\n" * 300, "multi-line reply too long"),
    ],
)
def test_garbage_fails_session(data: bytes, reason: str) -> None:
    res = run_all_ways([b"220 hi\r\n", EHLO_PIPE, data, b"250 more\r\n", b""])
    failures = res.of(SessionFailed)
    assert failures == [SessionFailed(None, "ready", reason)]
    assert res.events[-1] == failures[0]
    assert res.client.state is State.FAILED


def test_unexpected_reply_fails_session() -> None:
    res = run_all_ways([b"220 hi\r\n", EHLO_PIPE, b"250 unexpected\r\n"])
    assert res.events[-1] == SessionFailed(reply(250, "unexpected"), "ready", "unexpected reply")


def test_reply_line_at_limit_is_fine() -> None:
    res = run_all_ways([b"220 " + b"x" * 4092 + b"\r\n"])
    assert isinstance(res.events[0], Greeted)


def test_lf_only_and_code_only_replies_tolerated() -> None:
    res = run_all_ways([b"220\n", b"250-sink\n250 PIPELINING\n", envelope(), b"250\r\n250\r\n"])
    assert res.events[0] == Greeted(Reply(220, [""]))
    assert res.client.capabilities.pipelining
    assert res.writes[-1] == b"DATA\r\n"


def test_events_after_failure_stop() -> None:
    res = run([b"garbage\r\n220 hi\r\n"])
    assert res.events == [SessionFailed(None, "greeting", "invalid response")]
    res.client.receive_data(b"220 hi\r\n")
    res.client.receive_data(b"")
    assert res.client.next_event() is NEED_DATA
    assert res.client.data_to_send() == b""


def test_utf8_and_invalid_bytes_in_reply_text() -> None:
    res = run([b"220 h\xc3\xa9llo \xff\r\n"])
    assert res.events[0] == Greeted(reply(220, "héllo \ufffd"))


# --------------------------------------------------------------------------- STARTTLS


def test_starttls_discards_injected_bytes() -> None:
    def after_tls(c: SmtpClient) -> None:
        c.tls_established()

    for splitter in SPLITTERS:
        res = run(
            [
                b"220 hi\r\n",
                EHLO_FULL,
                lambda c: c.starttls(),
                b"220 go\r\n250 injected\r\n",
                b"250 also injected before the handshake finished\r\n",
                after_tls,
                b"250-secure.example\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n",
                envelope(),
            ],
            splitter,
        )
        assert res.writes[2] == b"STARTTLS\r\n"
        assert res.writes[5] == b"EHLO client.example\r\n"
        assert res.events[2:] == [
            StartTlsReady(),
            SessionReady(parse_ehlo(reply(250, "secure.example", "PIPELINING", "AUTH PLAIN"))),
        ]
        assert not res.client.capabilities.starttls
        assert res.writes[-1] == b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
        assert not any("injected" in text for _, text in res.trace)


def test_starttls_rejected() -> None:
    res = run_all_ways([b"220 hi\r\n", EHLO_FULL, lambda c: c.starttls(), b"454 tls not available\r\n"])
    assert res.events[-1] == SessionFailed(
        reply(454, "tls not available"), "starttls", "STARTTLS rejected: 454 tls not available"
    )


def test_starttls_usage_errors() -> None:
    client = SmtpClient(ClientConfig(helo_name="c"))
    with pytest.raises(ClientUsageError):
        client.starttls()
    with pytest.raises(ClientUsageError):
        client.tls_established()


def test_eof_during_tls_handshake() -> None:
    res = run([b"220 hi\r\n", EHLO_FULL, lambda c: c.starttls(), b"220 go\r\n", b""])
    assert isinstance(res.events[-1], SessionFailed)


# --------------------------------------------------------------------------- AUTH


def test_auth_exchange_success() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_FULL,
            lambda c: c.start_auth("LOGIN"),
            b"334 VXNlcm5hbWU6\r\n",
            lambda c: c.auth_response("YWxpY2U="),
            b"334 UGFzc3dvcmQ6\r\n",
            lambda c: c.auth_response("c2VjcmV0"),
            b"235 2.7.0 ok\r\n",
            envelope(auth="alice"),
        ]
    )
    assert res.events[2:] == [
        AuthChallenge(reply(334, "VXNlcm5hbWU6")),
        AuthChallenge(reply(334, "UGFzc3dvcmQ6")),
        AuthDone(True, reply(235, "2.7.0 ok")),
    ]
    assert res.events[2].payload == "VXNlcm5hbWU6"  # type: ignore[attr-defined]
    assert res.writes[2:5] == [b"AUTH LOGIN\r\n", b"", b"YWxpY2U=\r\n"]
    assert res.writes[6] == b"c2VjcmV0\r\n"
    assert res.writes[-1].startswith(b"MAIL FROM:<a@example.com> AUTH=alice\r\n")
    texts = [t for _, t in res.trace]
    assert "YWxpY2U=" not in texts and "c2VjcmV0" not in texts
    assert texts.count("[response not logged]") == 2


def test_auth_initial_response_and_failure() -> None:
    res = run_all_ways(
        [
            b"220 hi\r\n",
            EHLO_FULL,
            lambda c: c.start_auth("PLAIN", "AGFsaWNlAHNlY3JldA=="),
            b"535 5.7.8 bad credentials\r\n",
        ]
    )
    assert res.writes[2] == b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"
    assert ("tx", "AUTH PLAIN [not logged]") in res.trace
    assert not any("AGFsaWNl" in t for _, t in res.trace)
    assert res.events[-1] == AuthDone(False, reply(535, "5.7.8 bad credentials"))
    assert res.client.state is State.READY


def test_auth_empty_initial_response_is_equals_sign() -> None:
    res = run([b"220 hi\r\n", EHLO_FULL, lambda c: c.start_auth("EXTERNAL", "")])
    assert res.writes[-1] == b"AUTH EXTERNAL =\r\n"


def test_auth_response_without_challenge() -> None:
    res = run([b"220 hi\r\n", EHLO_FULL, lambda c: c.start_auth("LOGIN")])
    with pytest.raises(ClientUsageError):
        res.client.auth_response("x")


# --------------------------------------------------------------------------- misc


def test_usage_errors_before_ready() -> None:
    client = SmtpClient(ClientConfig(helo_name="c"))
    assert client.state is State.GREETING
    assert client.awaiting_reply
    with pytest.raises(ClientUsageError):
        client.send_envelope("a@x", ["b@x"])
    with pytest.raises(ClientUsageError):
        client.start_auth("PLAIN")


def test_trace_can_be_disabled() -> None:
    client = SmtpClient(ClientConfig(helo_name="c"), trace=False)
    client.receive_data(b"220 hi\r\n")
    assert client.data_to_send() == b"EHLO c\r\n"
    assert client.drain_trace() == []


def test_dot_stuffing_and_canonicalisation_through_client() -> None:
    res = run(
        [
            b"220 hi\r\n",
            EHLO_PIPE,
            envelope(),
            b"250 ok\r\n250 ok\r\n",
            b"354 go\r\n",
            content(b"a\n.", b"\r\n.\r", b".\n"),
        ]
    )
    assert res.writes[-1] == b"a\r\n..\r\n..\r\n..\r\n.\r\n"
