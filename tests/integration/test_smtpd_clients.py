"""Real SMTP clients (smtplib, swaks, smtp-source) against a real ``emailrelay --no-daemon``.

Each test checks the spool afterwards: the envelope bytes, and the content
bytes (the ``Received:`` line the relay adds, then the message exactly as
sent, with CRLF line ends and dot-unstuffing).
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fixtures import UPSTREAM
from tests.support.relay import Relay
from tests.support.smtpd import (
    LOG_LINE_RE,
    Relays,
    clear_spool,
    committed,
    expected_envelope,
    split_received,
    spool_entries,
)

SWAKS = "/usr/bin/swaks"
SMTP_SOURCE = "/usr/sbin/smtp-source"

pytestmark = pytest.mark.timeout(120)


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


def smtp(relay: Relay) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.example.com", timeout=30)


MESSAGE = (
    b"From: sender@example.com\r\n"
    b"To: one@example.net, two@example.org\r\n"
    b"Subject: dots and lines\r\n"
    b"Message-ID: <clients-1@example.com>\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two leading dots\r\n"
    b".\r\n"
    b"..\r\n"
    b" . \r\n"
    b"tab\there\r\n"
    b"\r\n"
    b"last line\r\n"
)


def test_smtplib_message_is_stored_byte_exact(relay: Relay) -> None:
    with smtp(relay) as client:
        refused = client.sendmail("sender@example.com", ["one@example.net", "two@example.org"], MESSAGE)
        assert refused == {}
    (msg,) = committed(relay.spool)
    mid, env, env_bytes, content = msg
    assert env_bytes == expected_envelope("sender@example.com", ["one@example.net", "two@example.org"])
    assert env.recipient_count == 2
    received, rest = split_received(content)
    assert received["helo"] == b"client.example.com" and received["ip"] == b"127.0.0.1"
    assert received["with"] == b"ESMTP"
    assert rest == MESSAGE
    assert re.fullmatch(r"emailrelay\.[0-9]+\.[0-9]+\.1", mid)
    assert spool_entries(relay.spool) == [f"{mid}.content", f"{mid}.envelope"]


def test_several_messages_on_one_connection_and_log_format(relay: Relay) -> None:
    with smtp(relay) as client:
        for i in range(5):
            body = f"Subject: m{i}\r\nMessage-ID: <m{i}@example.com>\r\n\r\nmessage {i}\r\n".encode()
            client.sendmail(f"s{i}@example.com", [f"r{i}@example.net"], body)
    stored = committed(relay.spool)
    assert len(stored) == 5
    by_from = {env.from_address: (env, content) for _, env, _, content in stored}
    for i in range(5):
        env, content = by_from[f"s{i}@example.com"]
        assert env.to_remote == (f"r{i}@example.net",)
        assert (
            split_received(content)[1]
            == f"Subject: m{i}\r\nMessage-ID: <m{i}@example.com>\r\n\r\nmessage {i}\r\n".encode()
        )
    assert len({mid for mid, *_ in stored}) == 5
    lines = relay.log().splitlines()
    assert lines and all(LOG_LINE_RE.match(line) for line in lines), [
        x for x in lines if not LOG_LINE_RE.match(x)
    ]
    assert any(line.endswith(f": info: smtp server on 127.0.0.1:{relay.port}") for line in lines)
    assert any(re.search(r': info: rx<<: "(?i:mail) FROM:<s0@example.com>"$', line) for line in lines)
    assert any(line.endswith(': info: tx>>: "221 OK"') or ': tx>>: "221 ' in line for line in lines)


def test_helo_gives_esmtp_in_received_line(relay: Relay) -> None:
    """E-MailRelay 2.6b writes ``with ESMTP`` after HELO as after EHLO."""
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="old.example.com", timeout=30) as client:
        client.helo("old.example.com")
        client.sendmail("a@example.com", ["b@example.net"], b"Subject: helo\r\n\r\nx\r\n")
    ((_, _, _, content),) = committed(relay.spool)
    received, rest = split_received(content)
    assert received["with"] == b"ESMTP" and received["helo"] == b"old.example.com"
    assert rest == b"Subject: helo\r\n\r\nx\r\n"


def test_null_sender(relay: Relay) -> None:
    with smtp(relay) as client:
        client.sendmail("<>", ["postmaster@example.net"], b"Subject: bounce\r\n\r\nbounced\r\n")
    ((_, env, env_bytes, _),) = committed(relay.spool)
    assert env.from_address == ""
    assert env_bytes == expected_envelope("", ["postmaster@example.net"])


def test_upstream_fixture_content_reproduced(relay: Relay) -> None:
    """The message behind auth-local-remote.content is stored exactly as upstream stored it."""
    fixture = (UPSTREAM / "auth-local-remote.content").read_bytes()
    _, body = split_received(fixture)
    assert b"\r\n.leading dot line\r\n" in body  # needs dot-stuffing on the wire
    with smtp(relay) as client:
        client.sendmail("alice@example.com", ["bob@example.net", "carol@example.org"], body)
    ((_, env, _, content),) = committed(relay.spool)
    assert split_received(content)[1] == body
    assert env.to_remote == ("bob@example.net", "carol@example.org")


def test_upstream_eightbit_fixture_reproduced(relay: Relay) -> None:
    fixture_content = (UPSTREAM / "eightbit.content").read_bytes()
    fixture_envelope = (UPSTREAM / "eightbit.envelope").read_bytes()
    _, body = split_received(fixture_content)
    assert any(b > 127 for b in body)
    with smtp(relay) as client:
        client.ehlo()
        client.sendmail("alice@example.com", ["bob@example.net"], body, mail_options=["BODY=8BITMIME"])
    ((_, _, env_bytes, content),) = committed(relay.spool)
    assert split_received(content)[1] == body
    # identical to upstream's apart from the AUTH identity (we did not authenticate)
    assert env_bytes == fixture_envelope.replace(
        b"X-MailRelay-Authentication: alice\r\n", b"X-MailRelay-Authentication: \r\n"
    )


@pytest.mark.skipif(not shutil.which(SWAKS), reason="swaks not installed")
def test_swaks(relay: Relay, tmp_path: Path) -> None:
    data = "From: swaks@example.com\nTo: r1@example.net\nSubject: via swaks\n\n.dot first\nmiddle\n..\nend"
    (tmp_path / "msg.txt").write_text(data)  # swaks ends the data with CRLF.CRLF itself
    result = subprocess.run(
        [
            SWAKS, "--server", f"127.0.0.1:{relay.port}", "--helo", "swaks.example.com",
            "--from", "swaks@example.com", "--to", "r1@example.net,r2@example.org",
            "--data", f"@{tmp_path / 'msg.txt'}", "--timeout", "30",
        ],
        capture_output=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert b"<-  250 message processed" in result.stdout or b"<-  250 " in result.stdout
    ((_, _env, env_bytes, content),) = committed(relay.spool)
    assert env_bytes == expected_envelope("swaks@example.com", ["r1@example.net", "r2@example.org"])
    received, rest = split_received(content)
    assert received["helo"] == b"swaks.example.com"
    assert rest == data.replace("\n", "\r\n").encode() + b"\r\n"


@pytest.mark.skipif(not shutil.which(SWAKS), reason="swaks not installed")
def test_swaks_pipelining(relay: Relay) -> None:
    result = subprocess.run(
        [
            SWAKS, "--server", f"127.0.0.1:{relay.port}", "--pipeline", "--from", "p@example.com",
            "--to", "a@example.net,b@example.net,c@example.net", "--body", "pipelined body", "--timeout", "30",
        ],
        capture_output=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    ((_, env, _, content),) = committed(relay.spool)
    assert env.to_remote == ("a@example.net", "b@example.net", "c@example.net")
    assert b"\r\npipelined body\r\n" in content


@pytest.mark.skipif(not shutil.which(SMTP_SOURCE), reason="smtp-source not installed")
def test_smtp_source_parallel_sessions(relay: Relay) -> None:
    result = subprocess.run(
        [
            SMTP_SOURCE, "-s", "5", "-m", "50", "-l", "2048", "-f", "src@example.com", "-t", "dst@example.net",
            f"127.0.0.1:{relay.port}",
        ],
        capture_output=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    stored = committed(relay.spool)
    assert len(stored) == 50
    message_ids = set()
    for _, _env, env_bytes, content in stored:
        assert env_bytes == expected_envelope("src@example.com", ["dst@example.net"])
        received, rest = split_received(content)
        assert received["with"] == b"ESMTP"  # (smtp-source says HELO: upstream's word all the same)
        head, sep, body = rest.partition(b"\r\n\r\n")
        assert sep and b"From: <src@example.com>\r\n" in head + b"\r\n"
        assert len(body) >= 2048 and body.endswith(b"\r\n")
        assert body.count(b"\n") == body.count(b"\r\n")
        m = re.search(rb"Message-Id: (<[^>]+>)", head)
        assert m
        message_ids.add(m.group(1))
    assert len(message_ids) == 50
    assert len(spool_entries(relay.spool)) == 100


@pytest.mark.skipif(not shutil.which(SMTP_SOURCE), reason="smtp-source not installed")
def test_smtp_source_several_recipients_and_ehlo(relay: Relay) -> None:
    result = subprocess.run(
        [SMTP_SOURCE, "-s", "3", "-m", "12", "-r", "4", "-l", "100", "-t", "rcpt@example.net",
         f"127.0.0.1:{relay.port}"],
        capture_output=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    stored = committed(relay.spool)
    assert len(stored) == 12
    for _, env, _, _ in stored:
        assert env.recipient_count == 4
        assert all(r.endswith("rcpt@example.net") for r in env.to_remote)
