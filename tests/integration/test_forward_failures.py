"""Forwarding failures as E-MailRelay 2.6b has them, and the client's dialogue and log lines.

The real ``emailrelay --as-client`` (and a single-process daemon for the
forwarding triggers) against a scripted next hop (tests/support/fake_smtp.py).
These are the ordinary tests of issue 17's forwarding side; the same scenarios
against the oracle itself are in tests/differential/test_forwarding.py.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp, auth_script
from tests.support.relay import free_port, program, running_relay, wait_for_port, wait_until
from tests.support.sink import envelope_text, run_client, simple_content, states, write_raw

NO_PIPELINING = ("8BITMIME",)


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


def _messages(spool: Path, *rcpts: str, forward_to_address: str = "") -> list[str]:
    return [
        write_raw(
            spool,
            envelope_text("a@example.com", [rcpt], forward_to_address=forward_to_address),
            simple_content(f"{i}-{rcpt}"),
        )
        for i, rcpt in enumerate(rcpts)
    ]


def _tail(envelope: Path) -> list[str]:
    return envelope.read_bytes().decode().split("X-MailRelay-End: 1\r\n")[1].split("\r\n")[:-1]


def test_a_failed_session_fails_the_message_in_hand_and_ends_the_run(spool: Path) -> None:
    first, second = _messages(spool, "b@example.net", "c@example.net")
    with FakeSmtp(replies={"data": "554 5.3.0 no data"}) as hop:
        r = run_client(spool, hop.address)
        assert hop.connections == 1 and hop.commands_named("QUIT") == []  # dropped, as upstream
    assert r.returncode == 1
    assert _tail(spool / f"{first}.envelope.bad") == [
        "X-MailRelay-Reason: smtp error: unexpected response: 5.3.0 no data",
        "X-MailRelay-ReasonCode:",
    ]
    assert (spool / f"{second}.envelope").exists()  # not tried: it waits for the next trigger
    assert "warning: client protocol: unexpected response [5.3.0 no data]" in r.stderr
    assert r.stderr.rstrip().endswith("error: smtp error: unexpected response: 5.3.0 no data")


def test_an_unreachable_forward_to_address_is_a_warning(spool: Path) -> None:
    """A message's own next hop that cannot be reached: as E-MailRelay 2.6b, a warning, the
    message kept, the others forwarded and exit 0 (tests/differential/test_more_ifwd.py)."""
    dead = f"127.0.0.1:{free_port()}"
    routed = _messages(spool, "x@example.net", forward_to_address=dead)
    with FakeSmtp() as hop:
        _messages(spool, "y@example.net", "z@example.net")
        r = run_client(spool, hop.address)
        assert sorted(r for m in hop.messages for r in m.rcpts) == ["y@example.net", "z@example.net"]
    assert r.returncode == 0
    assert states(spool) == {"envelope": 1, "content": 1} and (spool / f"{routed[0]}.envelope").exists()
    assert f"warning: smtp connection failed: connect failure: cannot connect to {dead}" in r.stderr
    assert "error: connect failure" not in r.stderr


def test_multi_line_and_odd_replies_are_escaped_in_the_reason(spool: Path) -> None:
    (mid,) = _messages(spool, "b@example.net")
    with FakeSmtp(replies={"final": "550-5.7.1 first\n550 5.7.1 back\\slash \x01 \u00e9"}) as hop:
        r = run_client(spool, hop.address)
        assert len(hop.refused) == 1
    assert r.returncode == 0
    assert _tail(spool / f"{mid}.envelope.bad") == [
        "X-MailRelay-Reason: 5.7.1 first\\n5.7.1 back\\\\slash \\x01 \\xc3\\xa9",
        "X-MailRelay-ReasonCode: 550",
    ]


def test_rejected_recipients_with_back_off_keep_ours(spool: Path) -> None:
    """--retry: a 4xx recipient is deferred (the message waits); without it, it is a rejection."""
    write_raw(spool, envelope_text("a@example.com", ["b@example.net"]), simple_content("later@test"))
    with FakeSmtp(replies={"rcpt": "450 4.2.0 later"}) as hop:
        r = run_client(spool, hop.address, "--retry", "60")
        assert hop.commands_named("DATA") == []
    assert r.returncode == 1 and states(spool) == {"envelope": 1, "content": 1}
    assert "deferred for 60s" in r.stderr


def test_give_up_needs_retry(spool: Path) -> None:
    r = run_client(spool, "127.0.0.1:9", "--give-up", "100")
    assert r.returncode == 1 and "--give-up needs --retry" in r.stderr


@pytest.mark.parametrize(
    ("args", "ehlo"),
    [
        ((), "EHLO 127.0.0.1"),
        (("--domain", "shortname"), "EHLO 127.0.0.1"),
        (("--domain", "relay.example.org"), "EHLO relay.example.org"),
        (("--client-interface", "127.0.0.2"), "EHLO 127.0.0.2"),
    ],
    ids=["default", "no-dot", "dotted", "client-interface"],
)
def test_ehlo_is_the_dotted_domain_or_the_local_address(
    spool: Path, args: tuple[str, ...], ehlo: str
) -> None:
    _messages(spool, "b@example.net")
    with FakeSmtp() as hop:
        r = run_client(spool, hop.address, *args)
        assert r.returncode == 0, r.stderr
        assert hop.commands_named("EHLO") == [ehlo]


def test_auth_login_sends_the_user_as_an_initial_response(spool: Path, tmp_path: Path) -> None:
    _messages(spool, "b@example.net")
    secrets = tmp_path / "client.auth"
    secrets.write_text("# accounts\nclient plain me secret\n")
    script = auth_script("334 UGFzc3dvcmQ6", "235 2.7.0 ok")
    with FakeSmtp(extensions=(*NO_PIPELINING, "AUTH LOGIN"), auth=script) as hop:
        r = run_client(spool, hop.address, "--client-auth", str(secrets), "--verbose")
        assert r.returncode == 0, r.stderr
        assert hop.auth_exchanges == [["LOGIN bWU=", "c2VjcmV0"]]
    assert 'tx>>: "AUTH LOGIN bWU="' in r.stderr and "tx>>: [response not logged]" in r.stderr
    assert "c2VjcmV0" not in r.stderr
    assert (
        "successful authentication with remote server using mechanism [login] "
        "and plaintext secret for [me] from line 2"
    ) in r.stderr


def test_refused_authentication_fails_only_the_message_in_hand(spool: Path, tmp_path: Path) -> None:
    first, second = _messages(spool, "b@example.net", "c@example.net")
    secrets = tmp_path / "client.auth"
    secrets.write_text("client plain me wrong\n")
    script = auth_script("334 UGFzc3dvcmQ6", "535 5.7.8 authentication failed")
    with FakeSmtp(extensions=(*NO_PIPELINING, "AUTH LOGIN"), auth=script) as hop:
        r = run_client(spool, hop.address, "--client-auth", str(secrets))
        assert hop.messages == []
    reason = (
        "smtp error: authentication failed using mechanism [login] and plaintext secret for [me] "
        "from line 1: [5.7.8 authentication failed]"
    )
    assert r.returncode == 1
    assert _tail(spool / f"{first}.envelope.bad") == [
        f"X-MailRelay-Reason: {reason}",
        "X-MailRelay-ReasonCode:",
    ]
    assert (spool / f"{second}.envelope").exists()


def test_empty_spool_says_so_and_nothing_else(spool: Path) -> None:
    r = run_client(spool, "127.0.0.1:9", "--verbose")
    assert r.returncode == 0 and r.stderr == "emailrelay: no messages to send\n"


def test_success_log_is_upstreams(spool: Path) -> None:
    (mid,) = _messages(spool, "b@example.net")
    with FakeSmtp(extensions=NO_PIPELINING) as hop:
        r = run_client(spool, hop.address, "--verbose")
        assert r.returncode == 0
    lines = r.stderr.splitlines()
    assert lines[:4] == [
        f"emailrelay: info: forwarding to {hop.address}",
        "emailrelay: info: forwarding: [startup]",
        f"emailrelay: info: forwarding [{mid}]",
        f"emailrelay: info: smtp connection to {hop.address}",
    ]
    assert lines[-4:] == [
        f"emailrelay: info: deleting envelope [{mid}.envelope.busy]",
        f"emailrelay: info: deleting content [{mid}.content]",
        "emailrelay: info: forwarding: no more messages to send",
        'emailrelay: info: tx>>: "QUIT"',  # its reply is not logged
    ]


def _store(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in (b"EHLO c.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.net>", b"DATA"):
            sock.sendall(line + b"\r\n")
            while reader.readline()[3:4] == b"-":
                pass
        sock.sendall(b"Subject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        reader.readline()
        reader.readline()


def test_forwarding_triggers_are_logged(tmp_path: Path) -> None:
    admin = free_port()
    with FakeSmtp() as hop, running_relay(
        tmp_path, "--single-process", "--verbose", "--forward-to", hop.address, "--forward-on-disconnect",
        "--admin", str(admin),
    ) as relay:  # fmt: skip
        wait_for_port(admin)
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5):
            pass  # a client that sends nothing: the disconnect finds nothing to send
        assert wait_until(lambda: "forwarding: no messages to send" in relay.log(), 10), relay.log()
        _store(relay.port)
        assert hop.wait_for_messages(1, timeout=10)
        with socket.create_connection(("127.0.0.1", admin), timeout=10) as sock:
            sock.sendall(b"forward\r\n")
            sock.recv(100)
        assert wait_until(lambda: "forwarding: [admin]" in relay.log(), 10)
    log = relay.log()
    assert log.count("info: forwarding: [client disconnect]") >= 2
    assert "info: forwarding: no more messages to send" in log


def test_as_client_startup_line_only_with_mail(spool: Path) -> None:
    done = subprocess.run(
        [program(), "--as-client", "127.0.0.1:9", "--spool-dir", str(spool), "--user", "root", "-v"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "forwarding: [startup]" not in done.stderr and done.returncode == 0
