"""The SMTP conversation over a raw socket against a real relay: pipelining, extensions, limits, smuggling."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.relay import Relay, wait_until
from tests.support.smtpd import (
    Relays,
    Wire,
    clear_spool,
    committed,
    expected_envelope,
    parse_replies,
    split_received,
    spool_entries,
    wait_spool_empty,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def relay_with(tmp_path: Path) -> Iterator[Callable[..., Relay]]:
    relays = Relays(tmp_path)
    yield relays.start
    relays.close()


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    relays = Relays(tmp_path_factory.mktemp("shared"))
    yield relays.start()
    relays.close()


@pytest.fixture
def relay(shared_relay: Relay) -> Relay:
    """The module's relay with an empty spool (tests leave no session open behind them)."""
    assert shared_relay.proc.poll() is None, shared_relay.log()[-3000:]
    clear_spool(shared_relay.spool)
    return shared_relay


def ehlo_keywords(lines: list[str]) -> set[str]:
    return {line.split()[0].upper() for line in lines[1:]}


# ---------------------------------------------------------------- pipelining


def test_pipelined_conversation_in_one_write(relay: Relay) -> None:
    with Wire(relay.port) as w:
        assert w.reply()[0] == 220
        w.send(
            b"EHLO pipe.example.com\r\n"
            b"MAIL FROM:<p@example.com>\r\n"
            b"RCPT TO:<r1@example.net>\r\n"
            b"RCPT TO:<r2@example.org>\r\n"
            b"DATA\r\n"
        )
        code, ehlo = w.reply()
        assert code == 250 and "PIPELINING" in ehlo_keywords(ehlo)
        assert w.reply() == (250, ["sender <p@example.com> OK"])
        assert w.reply() == (250, ["recipient <r1@example.net> OK"])
        assert w.reply() == (250, ["recipient <r2@example.org> OK"])
        assert w.reply()[0] == 354
        w.send(b"Subject: pipelined\r\n\r\n..stuffed\r\nbody\r\n.\r\nQUIT\r\n")
        assert parse_replies(w.read_to_close()) == [(250, ["message processed"]), (221, ["OK"])]
    ((_, _, env_bytes, content),) = committed(relay.spool)
    assert env_bytes == expected_envelope("p@example.com", ["r1@example.net", "r2@example.org"])
    received, rest = split_received(content)
    assert received["helo"] == b"pipe.example.com" and received["with"] == b"ESMTP"
    assert rest == b"Subject: pipelined\r\n\r\n.stuffed\r\nbody\r\n"


def test_pipelined_errors_keep_their_place(relay: Relay) -> None:
    with Wire(relay.port) as w:
        w.greet()
        w.send(
            b"MAIL FROM:<a@example.com>\r\n"
            b"RCPT TO:<not an address>\r\n"
            b"RCPT TO:<ok@example.net>\r\n"
            b"NOOP\r\n"
            b"DATA\r\n"
            b"Subject: x\r\n\r\nx\r\n.\r\n"
            b"RSET\r\n"
            b"QUIT\r\n"
        )
        codes = [c for c, _ in parse_replies(w.read_to_close())]
    assert codes[0] == 250 and codes[1] >= 500 and codes[2:] == [250, 250, 354, 250, 250, 221]
    ((_, env, _, _),) = committed(relay.spool)
    assert env.to_remote == ("ok@example.net",)


def test_whole_session_in_one_packet(relay: Relay) -> None:
    """Everything, content included, in one write: the replies still come one per command, in order."""
    with Wire(relay.port) as w:
        w.send(
            b"EHLO one.example.com\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
            b"Subject: one\r\n\r\none\r\n.\r\n"
            b"MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n"
            b"Subject: two\r\n\r\ntwo\r\n.\r\nQUIT\r\n"
        )
        codes = [c for c, _ in parse_replies(w.read_to_close())]
    assert codes == [220, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]
    bodies = sorted(split_received(content)[1] for _, _, _, content in committed(relay.spool))
    assert bodies == [b"Subject: one\r\n\r\none\r\n", b"Subject: two\r\n\r\ntwo\r\n"]


# ---------------------------------------------------------------- BODY, SMTPUTF8, BDAT


@pytest.mark.parametrize(
    ("param", "content_field"),
    [(b"", "unknown"), (b" BODY=8BITMIME", "8bit"), (b" BODY=7BIT", "7bit"), (b" body=8bitmime", "8bit")],
)
def test_body_parameter_sets_content_field(relay: Relay, param: bytes, content_field: str) -> None:
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve \u00fcber\r\n".encode()
    with Wire(relay.port) as w:
        w.greet()
        assert w.command(b"MAIL FROM:<a@example.com>" + param)[0] == 250
        assert w.command(b"RCPT TO:<b@example.net>")[0] == 250
        assert w.command(b"DATA")[0] == 354
        w.send(body + b".\r\n")
        assert w.reply()[0] == 250
    ((_, _, env_bytes, content),) = committed(relay.spool)
    assert env_bytes == expected_envelope("a@example.com", ["b@example.net"], content=content_field)
    assert split_received(content)[1] == body


def test_default_ehlo_has_no_chunking_or_smtputf8(relay: Relay) -> None:
    with Wire(relay.port) as w:
        keywords = ehlo_keywords(w.greet())
        assert {"PIPELINING", "8BITMIME"} <= keywords
        assert not {"CHUNKING", "SMTPUTF8", "BINARYMIME"} & keywords
        assert w.command(b"BDAT 5 LAST")[0] == 500
        # as E-MailRelay 2.6b: the parameters are accepted, BINARYMIME is refused at DATA
        assert w.command(b"MAIL FROM:<a@example.com> SMTPUTF8 BODY=BINARYMIME")[0] == 250
        assert w.command(b"RCPT TO:<b@example.net>")[0] == 250
        assert w.command(b"DATA") == (
            503,
            ["invalid data command with binarymime -- use RSET to resynchronise"],
        )
        assert w.command(b"RSET")[0] == 250
        assert w.command(b"NOOP")[0] == 250  # the session goes on
    assert spool_entries(relay.spool) == []


def test_chunking_and_smtputf8_when_configured(relay_with: Callable[..., Relay]) -> None:
    relay = relay_with("--server-smtp-config", "chunking,smtputf8")
    sender = "j\u00f6rg@b\u00fccher.example"
    rcpt = "\u00e5sa@example.net"
    chunk1 = b"Subject: bdat\r\n\r\nbinary \x00\x01 and a bare\nLF and\r\n.\r\n a dot line"
    chunk2 = b"\r\nlast\r\n"
    with Wire(relay.port) as w:
        keywords = ehlo_keywords(w.greet())
        assert {"CHUNKING", "SMTPUTF8", "BINARYMIME"} <= keywords
        assert w.command(f"MAIL FROM:<{sender}> SMTPUTF8 BODY=BINARYMIME".encode())[0] == 250
        assert w.command(f"RCPT TO:<{rcpt}>".encode())[0] == 250
        w.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        assert w.reply()[0] == 250
        w.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        assert w.reply()[0] == 250
        # and a plain DATA message still works on the same session
        assert w.command(b"MAIL FROM:<x@example.com>")[0] == 250
        assert w.command(b"RCPT TO:<y@example.net>")[0] == 250
        assert w.command(b"DATA")[0] == 354
        w.send(b"Subject: data\r\n\r\nd\r\n.\r\n")
        assert w.reply()[0] == 250
    stored = {env.from_address: (env_bytes, content) for _, env, env_bytes, content in committed(relay.spool)}
    stored_sender = "j\u00f6rg@xn--bcher-kva.example"  # domains are stored as A-labels, as upstream
    assert set(stored) == {stored_sender, "x@example.com"}
    env_bytes, content = stored[stored_sender]
    assert env_bytes == expected_envelope(stored_sender, [rcpt], content="binarymime", utf8=True)
    assert split_received(content)[1] == chunk1 + chunk2  # BDAT octets are stored raw
    env_bytes, content = stored["x@example.com"]
    assert env_bytes == expected_envelope("x@example.com", ["y@example.net"])


def test_bdat_with_8bitmime(relay_with: Callable[..., Relay]) -> None:
    relay = relay_with("--server-smtp-config", "chunking")
    data = b"Subject: b\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
    with Wire(relay.port) as w:
        keywords = ehlo_keywords(w.greet())
        assert "CHUNKING" in keywords and "SMTPUTF8" not in keywords
        w.send(
            b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\n"
            b"BDAT %d LAST\r\n" % len(data) + data + b"QUIT\r\n"
        )
        codes = [c for c, _ in parse_replies(w.read_to_close())]
    assert codes == [250, 250, 250, 221]
    ((_, _, env_bytes, content),) = committed(relay.spool)
    assert env_bytes == expected_envelope("a@example.com", ["b@example.net"], content="8bit")
    assert split_received(content)[1] == data


# ---------------------------------------------------------------- size limit


def test_oversize_message_is_refused_and_nothing_stored(relay_with: Callable[..., Relay]) -> None:
    relay = relay_with("--size", "1000", "--server-smtp-config", "chunking")
    with Wire(relay.port) as w:
        lines = w.greet()
        assert "SIZE 1000" in lines[1:]
        # declared too big
        assert w.command(b"MAIL FROM:<a@example.com> SIZE=2000")[0] == 552
        # not declared, but too big
        assert w.command(b"MAIL FROM:<a@example.com>")[0] == 250
        assert w.command(b"RCPT TO:<b@example.net>")[0] == 250
        assert w.command(b"DATA")[0] == 354
        w.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" + (b"y" * 98 + b"\r\n") * 20 + b".\r\n")
        assert w.reply()[0] == 552
        assert wait_spool_empty(relay.spool), spool_entries(relay.spool)
        # BDAT too big
        assert w.command(b"MAIL FROM:<a@example.com>")[0] == 250
        assert w.command(b"RCPT TO:<b@example.net>")[0] == 250
        w.send(b"BDAT 1500 LAST\r\n" + b"z" * 1500)
        assert w.reply()[0] == 552
        assert wait_spool_empty(relay.spool), spool_entries(relay.spool)
        # the session goes on, and a small message is accepted
        assert w.command(b"MAIL FROM:<a@example.com> SIZE=100")[0] == 250
        assert w.command(b"RCPT TO:<b@example.net>")[0] == 250
        assert w.command(b"DATA")[0] == 354
        w.send(b"Subject: small\r\n\r\nsmall\r\n.\r\n")
        assert w.reply()[0] == 250
    ((_, _, _, content),) = committed(relay.spool)
    assert split_received(content)[1] == b"Subject: small\r\n\r\nsmall\r\n"


# ---------------------------------------------------------------- smuggling and bare line ends

SMUGGLING_ENDS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\n.",
    b"\r\n\x00.\r\n",
]


@pytest.mark.parametrize("fake_end", SMUGGLING_ENDS, ids=[repr(e) for e in SMUGGLING_ENDS])
def test_data_is_never_split_by_a_fake_end(relay: Relay, fake_end: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n"
    with Wire(relay.port) as w:
        w.greet()
        w.send(b"MAIL FROM:<good@example.com>\r\nRCPT TO:<rcpt@example.net>\r\nDATA\r\n")
        assert w.replies(3) == [250, 250, 354]
        w.send(b"Subject: s\r\n\r\nbody" + fake_end + smuggled + b"\r\n.\r\nQUIT\r\n")
        codes = [c for c, _ in parse_replies(w.read_to_close())]
    assert codes == [250, 221]  # one message, then QUIT: nothing after the fake end ran as a command
    ((_, env, _, content),) = committed(relay.spool)
    assert env.from_address == "good@example.com" and env.to_remote == ("rcpt@example.net",)
    rest = split_received(content)[1]
    assert b"MAIL FROM:<evil@example.com>" in rest and b"smuggled" in rest
    assert rest.startswith(b"Subject: s\r\n\r\nbody")


def test_bare_lf_and_cr_in_commands_are_refused(relay: Relay) -> None:
    with Wire(relay.port) as w:
        w.greet()
        w.send(b"MAIL FROM:<a@example.com>\nRCPT TO:<b@example.net>\r\n")
        assert w.replies(1) == [553]  # one line (only CRLF ends one, as upstream), refused, never executed
        assert w.command(b"MAIL FROM:<a@exa\rmple.com>")[0] == 553
        assert w.command(b"NOOP")[0] == 250
    assert spool_entries(relay.spool) == []


def test_a_tls_client_on_the_plain_port_is_told_off_in_the_log(relay: Relay) -> None:
    """A TLS ClientHello where a command belongs: upstream's warning, and the connection ends
    without a reply (ours answered each binary fragment with 500 and logged it)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with Wire(relay.port) as w:
        w.greet()
        w.command(b"EHLO c")
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(w.sock).do_handshake()
    warning = (
        "warning: received unexpected tls handshake packet from remote client: try enabling implicit tls"
    )
    assert wait_until(lambda: warning in relay.log(), 10), relay.log()[-2000:]
    after = relay.log().split(warning, 1)[1]
    assert "rx<<" not in after.split("smtp connection closed", 1)[0]


def test_long_command_line(relay: Relay) -> None:
    with Wire(relay.port) as w:
        w.greet()
        exact = b"NOOP " + b"x" * (512 - 7)  # 512 octets with the CRLF
        assert len(exact + b"\r\n") == 512
        assert w.command(exact)[0] == 250
        assert w.command(exact + b"x")[0] == 500
        code, text = w.command(b"NOOP " + b"y" * 5000)
        assert code == 500 and "too long" in " ".join(text)
        assert w.command(b"MAIL FROM:<a@example.com>")[0] == 250  # the session goes on
        assert w.command(b"RCPT TO:<b@example.net>")[0] == 250
        assert w.command(b"DATA")[0] == 354
        w.send(b"Subject: after long line\r\n\r\nok\r\n.\r\n")
        assert w.reply()[0] == 250
    assert len(committed(relay.spool)) == 1


def test_too_many_recipients(relay: Relay) -> None:
    rcpts = [f"r{i}@example.net" for i in range(101)]
    with Wire(relay.port) as w:
        w.greet()
        w.send(b"MAIL FROM:<a@example.com>\r\n" + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
        codes = w.replies(102)
        assert codes[:101] == [250] * 101
        assert codes[101] == 452
        assert w.command(b"DATA")[0] == 354
        w.send(b"Subject: many\r\n\r\nmany\r\n.\r\n")
        assert w.reply()[0] == 250
    ((_, env, _, _),) = committed(relay.spool)
    assert env.to_remote == tuple(rcpts[:100]) and env.recipient_count == 100


def test_too_many_errors_closes_the_connection(relay: Relay) -> None:
    with Wire(relay.port) as w:
        w.greet()
        w.send(b"BOGUS\r\n" * 10 + b"NOOP\r\n")
        replies = parse_replies(w.read_to_close())
    codes = [c for c, _ in replies]
    assert codes == [500] * 8  # as E-MailRelay 2.6b: the ninth gets no reply, the connection closes
    # and the relay serves the next client
    with Wire(relay.port) as w:
        w.greet()
        assert w.command(b"QUIT")[0] == 221


def test_dropped_connection_mid_data_leaves_nothing(relay: Relay) -> None:
    with Wire(relay.port) as w:
        w.greet()
        w.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        assert w.replies(3) == [250, 250, 354]
        w.send(b"Subject: cut\r\n\r\n" + b"partial line\r\n" * 100)
        assert wait_until(lambda: any(n.endswith(".content") for n in spool_entries(relay.spool)))
    assert wait_spool_empty(relay.spool), spool_entries(relay.spool)
    with Wire(relay.port) as w:
        w.greet()
        assert w.command(b"QUIT")[0] == 221
