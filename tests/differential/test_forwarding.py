"""Forwarding (the client side), ours against E-MailRelay 2.6b: the same spool, the same next hop.

Each scenario writes the same envelopes and contents by hand into a spool for
each side, runs ``emailrelay --as-client`` (as root, with the default ``--user
daemon``, ``--log-time --verbose``) against a scripted next hop on loopback
(tests/support/fake_smtp.py, or the STARTTLS server of
tests/support/tls_server.py), and compares what a user sees: the
exit code, the log lines, the spool files byte for byte (our ``.<id>.deferral``
notes aside, which upstream ignores), and what the next hop received.

The next hop offers no PIPELINING, so both clients go command by command
(pipelining is opt-in on both, ``--client-smtp-config=pipelining``:
tests/differential/test_forwarding_more.py).
Differences on purpose (docs/decisions.md) are checked on our side:
``--forward-to-all`` keeps every recipient in the ``.bad`` of a message whose
recipients were refused, where upstream keeps only the refused ones.

Daemon scenarios (``--forward``, ``--forward-on-disconnect``, admin
``forward``) compare the forwarding-trigger lines (``forwarding: [startup]``,
``[client disconnect]``, ``[admin]``, ``forwarding: no messages to send``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import Certs
from tests.support.diff_forwarding import (
    NO_PIPELINING,
    B,
    C,
    D,
    both,
    reason_lines,
    same,
    store,
    tls_hop,
    trigger_lines,
    write_messages,
)
from tests.support.diff_guide import readable_file
from tests.support.fake_smtp import DROP, FakeSmtp, auth_script
from tests.support.oracle import (
    SIDES,
    daemon_base,
    needs_oracle,
    program,
    spool_dir,
    start,
)
from tests.support.relay import free_port, wait_until
from tests.support.sink import wait_for_bus

pytestmark = [needs_oracle, pytest.mark.timeout(180)]


def _fake(**kw: Any) -> Callable[[], FakeSmtp]:
    return lambda: FakeSmtp(**{"extensions": NO_PIPELINING, **kw})


# ---- success -------------------------------------------------------------------------------------


def test_success_same_log_same_dialogue_empty_spool(tmp_path: Path) -> None:
    run = same(both(tmp_path, _fake(), [[B], [C, D]]))
    assert run.rc == 0 and run.spool == {}
    assert run.commands[0] == "EHLO 127.0.0.1"  # the local address, bare: no dotted host name here
    assert "emailrelay: info: forwarding: [startup]" in run.log
    assert "emailrelay: info: deleting envelope [emailrelay.ID.envelope.busy]" in run.log
    assert run.log[-2:] == [
        "emailrelay: info: forwarding: no more messages to send",
        'emailrelay: info: tx>>: "QUIT"',
    ]
    assert len(run.messages) == 2


def test_empty_spool(tmp_path: Path) -> None:
    run = same(both(tmp_path, _fake(), []))
    assert run.rc == 0 and run.log == ["emailrelay: no messages to send"]


@pytest.mark.parametrize(
    ("domain", "ehlo"),
    [
        ((), "EHLO 127.0.0.1"),
        (("--domain", "foo"), "EHLO 127.0.0.1"),
        (("--domain", "foo.example"), "EHLO foo.example"),
    ],
    ids=["default", "no-dot", "dotted"],
)
def test_ehlo_name(tmp_path: Path, domain: tuple[str, ...], ehlo: str) -> None:
    run = same(both(tmp_path, _fake(), [[B]], *domain))
    assert run.commands[0] == ehlo


# ---- refusals by the next hop: final at once ---------------------------------------------------


@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        ({"mail": "452 4.3.1 busy"}, [b"X-MailRelay-Reason: 4.3.1 busy", b"X-MailRelay-ReasonCode: 452"]),
        (
            {"mail": "553 5.1.8 bad sender"},
            [b"X-MailRelay-Reason: 5.1.8 bad sender", b"X-MailRelay-ReasonCode: 553"],
        ),
        (
            {"final": "451-4.3.0 try\n451 4.3.0 again later"},
            [b"X-MailRelay-Reason: 4.3.0 try\\n4.3.0 again later", b"X-MailRelay-ReasonCode: 451"],
        ),
        (
            {"final": "554 5.7.1 a\\b \x01"},
            [b"X-MailRelay-Reason: 5.7.1 a\\\\b \\x01", b"X-MailRelay-ReasonCode: 554"],
        ),
        (
            {"mail": "421 4.3.2 going down"},
            [b"X-MailRelay-Reason: 4.3.2 going down", b"X-MailRelay-ReasonCode: 421"],
        ),
        (
            {"rcpt": "451 4.3.0 later"},
            [b"X-MailRelay-Reason: one or more recipients rejected", b"X-MailRelay-ReasonCode: 250"],
        ),
    ],
    ids=["mail-4xx", "mail-5xx", "final-4xx-multiline", "final-escapes", "mail-421", "rcpt-4xx"],
)
def test_refusal_fails_the_message_and_the_next_goes_on(
    tmp_path: Path, replies: dict, reason: list[bytes]
) -> None:
    run = same(both(tmp_path, _fake(replies=replies), [[B], [C]]))
    assert run.rc == 0  # refusals are not errors of the run
    bads = [v for k, v in run.spool.items() if k.endswith(".envelope.bad")]
    assert len(bads) == 2 and all(reason_lines(b) == reason for b in bads)
    assert (
        run.log.count(
            "emailrelay: info: failing envelope [emailrelay.ID.envelope.busy] -> [emailrelay.ID.envelope.bad]"
        )
        == 2
    )
    assert run.commands[0] == "EHLO 127.0.0.1" and run.commands.count("EHLO 127.0.0.1") == 1  # one session


# ---- recipients -------------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["550 5.1.1 no such user", "452 4.5.3 too many recipients"])
def test_forward_to_some_sends_to_the_accepted_and_keeps_the_rejected(tmp_path: Path, refusal: str) -> None:
    hop = _fake(rcpt_replies={C: refusal, D: refusal})
    run = same(both(tmp_path, hop, [[B, C, D], [B]], "--forward-to-some"))
    assert run.rc == 0 and len(run.messages) == 2
    (bad,) = [v for k, v in run.spool.items() if k.endswith(".envelope.bad")]
    assert (
        b"X-MailRelay-ToCount: 2\r\nX-MailRelay-To-Remote: c@example.net\r\nX-MailRelay-To-Remote: d@example.net\r\n"
        in bad
    )
    assert reason_lines(bad) == [
        b"X-MailRelay-Reason: one or more recipients rejected",
        b"X-MailRelay-ReasonCode:",
    ]
    assert "emailrelay: warning: smtp client protocol: one or more recipients rejected" in run.log


def test_forward_to_some_with_none_accepted(tmp_path: Path) -> None:
    run = same(
        both(
            tmp_path,
            _fake(replies={"rcpt": "550-5.1.1 no\n550 5.1.1 such user"}),
            [[B, C]],
            "--forward-to-some",
        )
    )
    (bad,) = [v for k, v in run.spool.items() if k.endswith(".envelope.bad")]
    assert reason_lines(bad) == [
        b"X-MailRelay-Reason: all recipients rejected",
        b"X-MailRelay-ReasonCode: 250",
    ]
    assert "RSET" in run.commands and "DATA" not in run.commands


@pytest.mark.parametrize("refusal", ["550 5.1.1 no such user", "452 4.5.3 too many recipients"])
def test_forward_to_all_rsets_and_fails_the_message(tmp_path: Path, refusal: str) -> None:
    """The same dialogue and log; the ``.bad`` differs on purpose: ours keeps every recipient
    (nothing was sent to any), upstream only the refused one (docs/decisions.md)."""
    runs = both(tmp_path, _fake(rcpt_replies={C: refusal}), [[B, C, D]])
    ours, upstream = runs["ours"], runs["upstream"]
    assert ours.log == upstream.log and ours.rc == upstream.rc == 0
    assert ours.commands == upstream.commands
    assert ours.commands[-2:] == ["RCPT TO:<d@example.net>", "RSET"] and "DATA" not in ours.commands
    (name,) = ours.spool.keys() - {n for n in ours.spool if n.endswith(".content")}
    for run in (ours, upstream):
        assert reason_lines(run.spool[name]) == [
            b"X-MailRelay-Reason: one or more recipients rejected",
            b"X-MailRelay-ReasonCode: 250",
        ]
    assert b"X-MailRelay-ToCount: 1\r\nX-MailRelay-To-Remote: c@example.net\r\n" in upstream.spool[name]
    assert b"X-MailRelay-ToCount: 3\r\nX-MailRelay-To-Remote: b@example.net\r\n" in ours.spool[name]


# ---- a failed session: the message in hand fails, the run ends ---------------------------------------


@pytest.mark.parametrize(
    ("script", "args", "reason"),
    [
        (
            {"replies": {"data": "451 4.3.0 no data now"}},
            (),
            b"smtp error: unexpected response: 4.3.0 no data now",
        ),
        (
            {"replies": {"greeting": "421 4.3.2 go away"}},
            (),
            b"smtp error: unexpected response: 4.3.2 go away",
        ),
        (
            {"replies": {"ehlo": "502 5.5.1 no", "helo": "550 5.5.1 no helo"}},
            (),
            b"smtp error: unexpected response: 5.5.1 no helo",
        ),
        ({"replies": {"mail": DROP}}, (), b"peer disconnected"),
        ({"delays": {"final": 5}}, ("--response-timeout", "2"), b"smtp error: response timeout after 2s"),
    ],
    ids=["data-4xx", "greeting-421", "helo-5xx", "dropped", "timeout"],
)
def test_failed_session_fails_one_message_and_ends_the_run(
    tmp_path: Path, script: dict, args: tuple[str, ...], reason: bytes
) -> None:
    run = same(both(tmp_path, _fake(**script), [[B], [C]], *args))
    assert run.rc == 1
    bads = [v for k, v in run.spool.items() if k.endswith(".envelope.bad")]
    assert len(bads) == 1 and reason_lines(bads[0]) == [
        b"X-MailRelay-Reason: " + reason,
        b"X-MailRelay-ReasonCode:",
    ]
    assert len([k for k in run.spool if k.endswith(".envelope")]) == 1  # the other one is left as it was
    assert run.log[-2:] == [
        f"emailrelay: warning: smtp client error: {reason.decode()}",
        f"emailrelay: error: {reason.decode()}",
    ]


@pytest.mark.parametrize("target", ["refused", "dns"])
def test_connection_failure_leaves_the_messages(tmp_path: Path, target: str) -> None:
    address = f"127.0.0.1:{free_port()}" if target == "refused" else "no-such-host.invalid:25"
    runs = both(tmp_path, lambda: address, [[B], [C]], "--connection-timeout", "5")
    ours = same(runs)
    assert ours.rc == 1 and sorted(k.rsplit(".", 1)[-1] for k in ours.spool) == [
        "content",
        "content",
        "envelope",
        "envelope",
    ]
    assert ours.log[-1].startswith(
        "emailrelay: error: "
        + ("connect failure: cannot connect to" if target == "refused" else "dns error: no such host")
    )


# ---- authentication ---------------------------------------------------------------------------------


def _secrets(text: str) -> Callable[[Path], None]:
    def prep(spool: Path) -> None:
        readable_file(spool.parent / "client.auth", text)

    return prep


@pytest.mark.parametrize(
    ("offered", "script"),
    [
        ("AUTH LOGIN", auth_script("334 UGFzc3dvcmQ6", "235 2.7.0 ok")),
        ("AUTH PLAIN LOGIN", auth_script("235 2.7.0 ok")),
        ("AUTH LOGIN PLAIN CRAM-MD5", auth_script("334 PDEyMzQ1LjY3ODlAZmFrZS50ZXN0Pg==", "235 2.7.0 ok")),
    ],
    ids=["login", "plain", "cram-md5"],
)
def test_authentication_dialogue(tmp_path: Path, offered: str, script: Any) -> None:
    base = daemon_base(tmp_path)
    secrets = readable_file(base / "client.auth", "client plain me secret\n")
    run = same(
        both(
            tmp_path,
            _fake(extensions=(*NO_PIPELINING, offered), auth=script),
            [[B]],
            "--client-auth",
            str(secrets),
        )
    )
    assert run.rc == 0 and run.spool == {}
    mechanism = run.auth[0][0].split()[0]
    assert any(
        f"successful authentication with remote server using mechanism [{mechanism.lower()}] and plaintext secret for [me] from line 1"
        in line
        for line in run.log
    )
    if mechanism == "LOGIN":
        assert run.auth == [["LOGIN bWU=", "c2VjcmV0"]]  # the user name as an initial response
        assert 'emailrelay: info: tx>>: "AUTH LOGIN bWU="' in run.log


@pytest.mark.parametrize(
    ("offered", "reason"),
    [
        (
            "AUTH LOGIN",
            b"smtp error: authentication failed using mechanism [login] and plaintext secret for [me] from line 1: [5.7.8 no]",
        ),
        ("AUTH XOAUTH2", b"smtp error: cannot do authentication: check for a compatible client secret"),
        ("SIZE 1000000", b"smtp error: authentication is not supported by the remote smtp server"),
    ],
    ids=["refused", "no-compatible-mechanism", "no-auth"],
)
def test_authentication_problem_fails_only_the_message_in_hand(
    tmp_path: Path, offered: str, reason: bytes
) -> None:
    base = daemon_base(tmp_path)
    secrets = readable_file(base / "client.auth", "client plain me secret\n")
    hop = _fake(extensions=(*NO_PIPELINING, offered), auth=auth_script("334 UGFzc3dvcmQ6", "535 5.7.8 no"))
    run = same(both(tmp_path, hop, [[B], [C]], "--client-auth", str(secrets)))
    assert run.rc == 1
    bads = [v for k, v in run.spool.items() if k.endswith(".envelope.bad")]
    assert len(bads) == 1 and reason_lines(bads[0]) == [
        b"X-MailRelay-Reason: " + reason,
        b"X-MailRelay-ReasonCode:",
    ]
    assert run.log[-1] == f"emailrelay: error: {reason.decode()}"


# ---- TLS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "implicit-ok",
        "implicit-to-plain",
        "implicit-verify",
        "starttls-ok",
        "starttls-verify",
        "starttls-expired",
        "required-not-offered",
        "starttls-refused",
    ],
)
def test_tls(tmp_path: Path, certs: Certs, case: str) -> None:
    verify = ("--client-tls-verify", str(certs.ca))
    hop, args = {
        "implicit-ok": (tls_hop(certificate=certs.server_pem, implicit=True), ("--client-tls-connection",)),
        "implicit-to-plain": (tls_hop(starttls=False), ("--client-tls-connection",)),
        "implicit-verify": (
            tls_hop(certificate=certs.self_signed_pem, implicit=True),
            ("--client-tls-connection", *verify),
        ),
        "starttls-ok": (tls_hop(certificate=certs.server_pem), ("--client-tls",)),
        "starttls-verify": (tls_hop(certificate=certs.self_signed_pem), ("--client-tls", *verify)),
        "starttls-expired": (tls_hop(certificate=certs.expired_pem), ("--client-tls", *verify)),
        "required-not-offered": (tls_hop(starttls=False), ("--client-tls", "--client-tls-required")),
        "starttls-refused": (tls_hop(), ("--client-tls",)),
    }[case]
    runs = both(tmp_path, hop, [[B], [C]], *args)
    if case == "implicit-to-plain":  # a plain hop reads the ClientHello's random bytes as "commands"
        for side in SIDES:
            runs[side] = replace(runs[side], commands=[])
    run = same(runs)
    if case.endswith("-ok"):
        assert run.rc == 0 and run.spool == {}
        assert any(
            line.startswith("emailrelay: info: tls protocol established with 127.0.0.1:PORT protocol TLSv1")
            for line in run.log
        )
        return
    assert run.rc == 1
    bads = [v for k, v in run.spool.items() if k.endswith(".envelope.bad")]
    assert len(bads) == 1 and reason_lines(bads[0])[1] == b"X-MailRelay-ReasonCode:"
    if "verify" in case or "expired" in case:
        assert (
            "emailrelay: warning: tls: tls error: SSL_connect(): [error:0A000086:SSL routines::certificate verify failed]"
            in run.log
        )
        assert reason_lines(bads[0])[0] == b"X-MailRelay-Reason: peer disconnected: ssl connect"


# ---- forwarding triggers (daemons) ---------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["startup", "client disconnect", "admin", "rescan"])
def test_forwarding_triggers_are_logged_as_upstream(tmp_path: Path, trigger: str) -> None:
    base = daemon_base(tmp_path)
    rescan = base / "rescan.sh"  # a filter's 103: "rescan"
    rescan.write_text("#!/bin/sh\nexit 103\n")
    rescan.chmod(0o755)
    lines = {}
    for side in SIDES:
        with FakeSmtp(extensions=NO_PIPELINING) as hop:
            admin = free_port()
            args = {
                "startup": ("--forward",),
                "client disconnect": ("--forward-on-disconnect",),
                "admin": ("--admin", str(admin)),
                "rescan": ("--filter", str(rescan)),
            }[trigger]
            if trigger == "startup":
                write_messages(spool_dir(base / side / "spool"), [[B]], int(time.time()))
            with start(side, base, "--forward-to", hop.address, *args) as daemon:
                if side == "ours" and trigger != "startup":  # every role up: a supervised relay
                    assert wait_for_bus(daemon.spool)  # forwards whatever it finds as it starts
                if trigger != "startup":
                    store(daemon.port)
                if trigger == "admin":
                    with socket.create_connection(("127.0.0.1", admin), timeout=10) as sock:
                        sock.sendall(b"forward\r\n")
                        sock.recv(100)
                assert hop.wait_for_messages(1, timeout=20), daemon.log()
                wait_until(lambda: "no more messages to send" in daemon.log(), 10)
                found = trigger_lines(daemon.log(), [hop.port, daemon.port, admin])
        # from the trigger that forwarded the message on (before it, a start-up probe's disconnect
        # found nothing: "forwarding: no messages to send", when our smtp role was up for it)
        first = next(
            i for i, line in enumerate(found) if line.startswith("emailrelay: info: forwarding [emailrelay")
        )
        lines[side] = found[first - 1 :]
    assert lines["ours"] == lines["upstream"]
    assert lines["ours"][0] == f"emailrelay: info: forwarding: [{trigger}]"
    assert lines["ours"][-1] == "emailrelay: info: forwarding: no more messages to send"


@pytest.mark.parametrize(
    ("option", "text"),
    [
        (
            ("--client-tls-required",),
            "the --client-tls- options require --client-tls or --client-tls-connection",
        ),
        (
            ("--client-tls-verify", "/dev/null"),
            "the --client-tls- options require --client-tls or --client-tls-connection",
        ),
        (
            ("--client-tls-verify-name", "x"),
            "the --client-tls-verify-name options requires --client-tls-verify",
        ),
    ],
    ids=["required", "verify", "verify-name"],
)
def test_client_tls_options_need_client_tls(tmp_path: Path, option: tuple[str, ...], text: str) -> None:
    """The same usage error on both sides: exit 1, ``emailrelay: usage error: <text>`` alone."""
    base = daemon_base(tmp_path)
    for side in SIDES:
        spool = spool_dir(base / side / "spool")
        done = subprocess.run(
            [program(side), "--as-client", "127.0.0.1:9", "--spool-dir", str(spool), *option],
            capture_output=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert done.stderr.decode() == f"emailrelay: usage error: {text}\n", (side, done.stderr)
