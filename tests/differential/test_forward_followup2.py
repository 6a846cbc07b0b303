"""The forwarding client against E-MailRelay 2.6b, second follow-up of the client probe of 7 Dec 2026.

What it checks, on both programs where the oracle is set (``EMAILRELAY_ORACLE_BIN``) and on ours
alone otherwise:

- octets that are not UTF-8 in an envelope (``X-MailRelay-From``, ``X-MailRelay-To-Remote``, any
  other field) go to the next hop as they are stored, and an envelope the client rewrites (a
  ``.bad`` with its reason, ``--forward-to-some``'s refused recipients) keeps them byte for byte;
  a valid UTF-8 envelope is handled as before;
- a message with only local recipients is failed (``no remote recipients``) before the
  ``forwarding [<id>]`` line, a client filter or a connection: upstream's lines and nothing more;
- an admin ``forward`` (or another trigger) during a forwarding run says ``forwarding:
  [admin]: still busy from last time[: connected to <peer>]`` and is asked again when the run
  ends (``forwarding: queued request [admin]``, then ``forwarding: [admin]``); two ``forward`` in a
  row on an empty spool are two rescans;
- the admin ``notify`` stream says ``resolving: <name>/<port>/<ip|ipv4>`` before connecting to a
  next hop given by name, and ``connecting:`` names the address it resolved to.

Kept different (docs/decisions.md, "Forwarding"): an idle onward connection lingers 2 s after a run,
so a run that follows at once may reuse it (no second ``connecting:``) where upstream connects again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from emailrelay.bus.endpoint import SUBSCRIBE_SETTLE
from emailrelay.protocol.smtp_client import ClientConfig, SmtpClient
from emailrelay.spool.envelope import parse
from tests.differential.test_admin_notify_followup import Watcher, client_events
from tests.support.diff_forwarding import NO_PIPELINING, B, C, Run, as_client, both, same, write_messages
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import SIDES, Daemon, daemon_base, needs_oracle, normalise_log, start
from tests.support.relay import free_port, wait_until
from tests.support.sink import wait_for_bus
from tests.support.sink_counter import AdminClient

pytestmark = pytest.mark.timeout(120)

LATIN = (b"a\xe9x@example.com", b"b\xe9y@example.net")  # a sender and a recipient, é in latin-1


def _latin1_octets(spool: Path) -> None:
    """Each envelope's sender and first recipient with an octet that is not UTF-8, and a Client with
    valid UTF-8 (an envelope written by hand or by another program)."""
    for path in spool.glob("*.envelope"):
        data = path.read_bytes().replace(b"From: a@example.com", b"From: " + LATIN[0])
        data = data.replace(b"To-Remote: " + B.encode(), b"To-Remote: " + LATIN[1])
        path.write_bytes(data.replace(b"Client: 127.0.0.1", b"Client: 127.0.0.1 \xc3\xa9"))


def _refusing_c() -> FakeSmtp:
    return FakeSmtp(extensions=NO_PIPELINING, rcpt_replies={C: "550 5.1.1 no c"})


NON_UTF8 = ([[B], [B, C]], "--forward-to-some")  # one sent, one sent to b and failed for c


def _check_non_utf8(run: Run) -> None:
    """The next hop got the octets (a replacement character where the octet is, not UTF-8 é); the
    rewritten ``.bad`` holds the stored octets and the valid UTF-8 alike."""
    mails = [c for c in run.commands if c.startswith("MAIL FROM")]
    assert mails == ["MAIL FROM:<a\ufffdx@example.com> BODY=7BIT"] * 2, run.commands
    assert run.commands.count("RCPT TO:<b\ufffdy@example.net>") == 2, run.commands
    (bad,) = [v for k, v in run.spool.items() if k.endswith(".bad")]
    assert b"X-MailRelay-From: " + LATIN[0] + b"\r\n" in bad
    assert b"X-MailRelay-To-Remote: " + C.encode() + b"\r\n" in bad and LATIN[1] not in bad
    assert b"X-MailRelay-Client: 127.0.0.1 \xc3\xa9\r\n" in bad


@needs_oracle
def test_non_utf8_octets_as_upstream(tmp_path: Path) -> None:
    messages, option = NON_UTF8
    _check_non_utf8(same(both(tmp_path, _refusing_c, messages, option, prep=_latin1_octets)))


def test_non_utf8_octets_go_as_stored(tmp_path: Path) -> None:
    messages, option = NON_UTF8
    with _refusing_c() as hop:
        run = as_client(
            "ours", daemon_base(tmp_path), hop, messages, option, stamp=int(time.time()), prep=_latin1_octets
        )
    _check_non_utf8(run)


def test_non_utf8_envelope_round_trips() -> None:
    """Parsing and writing back keeps every octet; a rewrite changes only what it rewrites; valid
    UTF-8 reads as text, as before."""
    data = (
        b"X-MailRelay-Format: #2821.8\r\nX-MailRelay-Content: 8bit\r\nX-MailRelay-From: " + LATIN[0] + b"\r\n"
        b"X-MailRelay-ToCount: 2\r\nX-MailRelay-To-Remote: " + LATIN[1] + b"\r\n"
        b"X-MailRelay-To-Remote: \xc3\xa9@example.net\r\nX-MailRelay-Authentication: \r\n"
        b"X-MailRelay-Client: 127.0.0.1\r\nX-MailRelay-ClientCertificate: \r\nX-MailRelay-MailFromAuthIn: \r\n"
        b"X-MailRelay-MailFromAuthOut: \r\nX-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\n"
        b"X-MailRelay-ClientAccountSelector: \r\nX-MailRelay-Utf8MailboxNames: 1\r\nX-MailRelay-End: 1\r\n"
    )
    env = parse(data)
    assert env.to_bytes() == data
    assert env.to_remote[1] == "\u00e9@example.net"
    rewritten = replace(env, to_remote=env.to_remote[1:]).with_failure("no", 550).to_bytes()
    assert rewritten.startswith(data.split(b"X-MailRelay-ToCount")[0])
    assert b"X-MailRelay-ToCount: 1\r\nX-MailRelay-To-Remote: \xc3\xa9@example.net\r\n" in rewritten


def test_client_sends_the_octets() -> None:
    """The client's MAIL and RCPT carry an envelope's octets as they are."""
    env = parse(
        b"X-MailRelay-Format: #2821.8\r\nX-MailRelay-From: " + LATIN[0] + b"\r\nX-MailRelay-ToCount: 1\r\n"
        b"X-MailRelay-To-Remote: " + LATIN[1] + b"\r\nX-MailRelay-End: 1\r\n"
    )
    client = SmtpClient(ClientConfig(helo_name="h.example"))
    client.receive_data(b"220 hop\r\n")
    client.data_to_send()
    client.receive_data(b"250 hop\r\n")
    client.send_envelope(env.from_address, list(env.to_remote))
    assert client.data_to_send() == b"MAIL FROM:<" + LATIN[0] + b">\r\n"
    client.receive_data(b"250 ok\r\n")
    assert client.data_to_send() == b"RCPT TO:<" + LATIN[1] + b">\r\n"


# ---- a message for local recipients only ------------------------------------------------------


def _first_local_only(spool: Path) -> None:
    for path in spool.glob("*.1.envelope"):
        path.write_bytes(path.read_bytes().replace(b"To-Remote: ", b"To-Local: "))


LOCAL_ONLY = [
    "emailrelay: info: forwarding: [startup]",
    "emailrelay: warning: forwarding [emailrelay.ID]: failing message with no remote recipients",
    "emailrelay: info: failing envelope [emailrelay.ID.envelope.busy] -> [emailrelay.ID.envelope.bad]",
    "emailrelay: info: forwarding [emailrelay.ID]",
    "emailrelay: info: smtp connection to 127.0.0.1:PORT",
]


def _check_local_only(run: Run) -> None:
    assert run.log[1:6] == LOCAL_ONLY, run.log
    assert len(run.messages) == 1 and run.rc == 0
    (bad,) = [v for k, v in run.spool.items() if k.endswith(".bad")]
    assert b"X-MailRelay-Reason: no remote recipients\r\n" in bad


@needs_oracle
def test_local_only_as_upstream(tmp_path: Path) -> None:
    hop = lambda: FakeSmtp(extensions=NO_PIPELINING)  # noqa: E731
    _check_local_only(same(both(tmp_path, hop, [[B], [C]], prep=_first_local_only)))


def test_local_only_fails_before_forwarding(tmp_path: Path) -> None:
    with FakeSmtp(extensions=NO_PIPELINING) as hop:
        run = as_client(
            "ours", daemon_base(tmp_path), hop, [[B], [C]], stamp=int(time.time()), prep=_first_local_only
        )
    _check_local_only(run)


# ---- triggers during a run, and the notify stream's "resolving" -------------------------------

NAMED_RUN = [  # one message to a next hop by name, a second forward while it is connected
    "client: forward: start: admin",
    "client: resolving: localhost/HOP/ip",
    "client: connecting: 127.0.0.1:HOP",
    "client: sending: ID1",
    "client: connected: 127.0.0.1:HOP",
    "client: sent: ID1",
    "client: forward: end",
    "client: forward: end: no messages",
]
BUSY_LINES = [
    "emailrelay: info: forwarding: [admin]",
    "emailrelay: info: forwarding [emailrelay.ID]",
    "emailrelay: info: forwarding: [admin]: still busy from last time: connected to 127.0.0.1:PORT",
    "emailrelay: info: forwarding: no more messages to send",
    "emailrelay: info: forwarding: queued request [admin]",
    "emailrelay: info: forwarding: [admin]",
    "emailrelay: info: forwarding: no messages to send",
]


@contextmanager
def _daemon(
    side: str, base: Path, hop_to: Callable[[int], str], **hop_kw: object
) -> Iterator[tuple[Daemon, FakeSmtp, AdminClient, Watcher]]:
    """``side``'s relay with ``--admin`` forwarding to a FakeSmtp (``hop_to``: the --forward-to for
    its port), an admin session and a notify watcher on it."""
    admin = free_port()
    with (
        FakeSmtp(extensions=NO_PIPELINING, **hop_kw) as hop,  # type: ignore[arg-type]
        start(side, base, "--admin", str(admin), "--forward-to", hop_to(hop.port), name=side) as daemon,
    ):
        if side == "ours":  # its bus up, and past its forward role's repeat of an early admin forward
            assert wait_for_bus(daemon.spool, publishers=3)
            time.sleep(SUBSCRIBE_SETTLE)
        watcher = Watcher(admin)
        try:
            with AdminClient(admin) as client:
                watcher.read_for(0.3)
                yield daemon, hop, client, watcher
        finally:
            watcher.close()


def _forwarding_lines(daemon: Daemon, hop: FakeSmtp) -> list[str]:
    return [x for x in normalise_log(daemon.log(), ports=[hop.port]) if "forwarding" in x]


def _busy_run(side: str, base: Path) -> tuple[list[str], list[str]]:
    """A forward of one message to ``localhost:<port>``, a second while its content waits for the
    reply: the notify events and the log's forwarding lines."""
    with _daemon(side, base, lambda port: f"localhost:{port}", delays={"final": 1.0}) as (d, hop, admin, w):
        write_messages(d.spool, [[B]], int(time.time()))
        admin.cmd("forward")
        assert wait_until(lambda: any(c[1] == "." for c in hop.commands), 10), d.log()
        admin.cmd("forward")
        w.wait_for("client: forward: end: no messages", 10)
        wait_until(lambda: "forwarding: no messages to send" in d.log(), 5)
        events = [e.replace(str(hop.port), "HOP") for e in client_events(w.got)]
        return events, _forwarding_lines(d, hop)[1:]  # (after "forwarding to")


@needs_oracle
def test_busy_and_resolving_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    got = {side: _busy_run(side, base) for side in SIDES}
    assert got["ours"] == got["upstream"]
    assert got["upstream"] == (NAMED_RUN, BUSY_LINES)


def test_busy_and_resolving(tmp_path: Path) -> None:
    assert _busy_run("ours", daemon_base(tmp_path)) == (NAMED_RUN, BUSY_LINES)


STILL_BUSY = re.compile(
    r"emailrelay: info: forwarding: \[admin\]: still busy from last time(: connected to .*)?$"
)


def test_two_forwards_at_once(tmp_path: Path) -> None:
    """A second forward before the first one's rescan: busy once that rescan finds a message."""
    with _daemon("ours", daemon_base(tmp_path), lambda port: f"127.0.0.1:{port}") as (d, hop, admin, w):
        write_messages(d.spool, [[B]], int(time.time()))
        admin.cmd("forward")
        admin.cmd("forward")
        w.wait_for("client: forward: end: no messages", 10)
        wait_until(lambda: "forwarding: no messages to send" in d.log(), 5)
        lines = _forwarding_lines(d, hop)[1:]
    assert len(hop.messages) == 1
    assert lines[:2] == BUSY_LINES[:2] and STILL_BUSY.match(lines[2]), lines
    assert lines[3:] == BUSY_LINES[3:], lines


def _empty_spool_forwards(side: str, base: Path) -> list[str]:
    with _daemon(side, base, lambda port: f"127.0.0.1:{port}") as (d, hop, admin, _):
        admin.cmd("forward")
        admin.cmd("forward")
        wait_until(lambda: d.log().count("forwarding: no messages to send") >= 2, 5)
        return _forwarding_lines(d, hop)[1:]


EMPTY = ["emailrelay: info: forwarding: [admin]", "emailrelay: info: forwarding: no messages to send"] * 2


@needs_oracle
def test_two_forwards_on_an_empty_spool_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    assert [_empty_spool_forwards(side, base) for side in SIDES] == [EMPTY, EMPTY]


def test_two_forwards_on_an_empty_spool(tmp_path: Path) -> None:
    assert _empty_spool_forwards("ours", daemon_base(tmp_path)) == EMPTY
