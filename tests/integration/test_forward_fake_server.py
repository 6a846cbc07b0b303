"""The fake next hop itself (tests/support/fake_smtp.py): strict DATA, BDAT, scripting.

The forwarding tests trust what the fake server reports, so its parsing is
checked here against smtplib and hand-written wire bytes.
"""

from __future__ import annotations

import smtplib
import socket

import pytest

from tests.support.fake_smtp import DROP, FakeSmtp, canonical, unstuff


def _raw_session(port: int, *chunks: bytes) -> bytes:
    """Send ``chunks`` one by one after the greeting, return everything the server said."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        out = f.readline()
        for chunk in chunks:
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        out += f.read()
    return out


def test_smtplib_message_is_dot_unstuffed_and_counted() -> None:
    body = b"Message-ID: <one@test>\r\n\r\n.leading dot\r\n.\r\n..two\r\nend\r\n"
    with FakeSmtp() as hop:
        with smtplib.SMTP("127.0.0.1", hop.port, timeout=5) as c:
            c.sendmail("a@example.com", ["b@example.net", "c@example.net"], body)
            c.sendmail("a@example.com", ["b@example.net"], body.replace(b"one@", b"two@"))
        assert hop.wait_for_messages(2)
        m = hop.messages[0]
        assert (m.mail_from, m.rcpts, m.via) == ("a@example.com", ["b@example.net", "c@example.net"], "DATA")
        assert m.data == body
        assert m.raw != body  # it was stuffed on the wire
        assert hop.message_ids() == {"<one@test>": 1, "<two@test>": 1}
        assert hop.connections == 1
        assert hop.protocol_errors == []


def test_only_crlf_dot_crlf_ends_data() -> None:
    with FakeSmtp() as hop:
        out = _raw_session(
            hop.port,
            b"HELO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n",
            b"one\n.\ntwo\r.\rthree\r\n.\n",
            b"four\r\n.\r\nQUIT\r\n",
        )
        assert hop.wait_for_messages(1)
        assert len(hop.messages) == 1
        # a CRLF-terminated line ".\nfour" starts with a dot: unstuffed like any other
        assert hop.messages[0].data == b"one\n.\ntwo\r.\rthree\r\n\nfour\r\n"
        assert "bare CR or LF in DATA" in hop.protocol_errors
        assert out.count(b"250 2.0.0 queued") == 1 and out.endswith(b"221 2.0.0 bye\r\n")


def test_empty_message_and_unstuff_helpers() -> None:
    assert unstuff(b"..a\r\n.\r\nb\r\n") == b".a\r\n\r\nb\r\n"
    assert canonical(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    with FakeSmtp() as hop:
        _raw_session(hop.port, b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n.\r\nQUIT\r\n")
        assert hop.wait_for_messages(1)
        assert hop.messages[0].data == b"" and hop.messages[0].mail_from == ""


def test_bdat_only_when_chunking_is_offered() -> None:
    frames = (
        b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 7\r\n.a\r\n.\r\nBDAT 3 LAST\r\nz\r\nQUIT\r\n"
    )
    with FakeSmtp(extensions=("PIPELINING", "CHUNKING")) as hop:
        out = _raw_session(hop.port, frames)
        assert hop.wait_for_messages(1)
        assert hop.messages[0].data == b".a\r\n.\r\nz\r\n" and hop.messages[0].via == "BDAT"
        assert b"250 2.0.0 7 octets received" in out
    with FakeSmtp(extensions=("PIPELINING",)) as hop:
        out = _raw_session(hop.port, b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 1 LAST\r\n")
        assert b"500 5.5.1" in out and hop.messages == []


def test_scripted_refusals_helo_only_and_drop() -> None:
    with FakeSmtp(
        helo_only=True, rcpt_replies={"bad@y": "550 5.1.1 no such user"}, replies={"final": "452 4.3.1 full"}
    ) as hop:
        with smtplib.SMTP("127.0.0.1", hop.port, timeout=5) as c:
            assert c.ehlo()[0] == 500
            assert c.helo()[0] == 250
            with pytest.raises(smtplib.SMTPDataError) as info:
                c.sendmail("a@x", ["good@y", "bad@y"], b"Subject: x\r\n\r\nx\r\n")
            assert info.value.smtp_code == 452
        assert hop.messages == [] and len(hop.refused) == 1 and hop.refused[0].rcpts == ["good@y"]
    with FakeSmtp(replies={"mail": DROP}) as hop:
        c = smtplib.SMTP("127.0.0.1", hop.port, timeout=5)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.sendmail("a@x", ["b@y"], b"x\r\n")
        c.close()
        assert hop.commands_named("MAIL") == ["mail FROM:<a@x>"]  # dropped without a reply
    with FakeSmtp(extensions=("8BITMIME",)) as hop:
        _raw_session(hop.port, b"EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n")
        assert any("pipelined without PIPELINING" in e for e in hop.protocol_errors)
