"""Injection: CR, LF and NUL never reach an envelope line or an outgoing SMTP command raw.

Three doors are tried against the real ``emailrelay`` binary:

1. the SMTP client: CR, LF and NUL inside EHLO, MAIL, RCPT (plain, quoted
   local parts, ESMTP parameters) and AUTH arguments (SASL PLAIN/LOGIN
   payloads that decode to CR/LF/NUL, and an account whose xtext name
   decodes to CRLF);
2. a ``--filter`` script that writes raw CR, LF or NUL into envelope values
   (``ForwardTo``, ``ForwardToAddress``, ``To-Remote``, ``MailFromAuthOut``,
   ``ClientAccountSelector``);
3. ``--pop-by-name`` user names that walk out of the spool ("..", "../x",
   a symlink).

Checked: the stored envelope bytes (every line is one ``X-MailRelay-`` field
ending in CRLF, no other CR, LF or NUL anywhere), the ``Received:`` line the
relay adds, and the command lines the next hop receives (no CR, NUL or
smuggled command; nothing for the attacker's recipient).
"""

from __future__ import annotations

import base64
import poplib
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import SpoolStore
from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import free_port, start_relay
from tests.support.sink import run_client, states
from tests.support.smtpd import short_run_dir

pytestmark = pytest.mark.timeout(180)

FIELD_LINE = re.compile(rb"\AX-MailRelay-[A-Za-z0-9-]+: [^\x00-\x08\x0a-\x1f\x7f]*\Z")


def envelope_problems(data: bytes) -> list[str]:
    """Anything in envelope bytes that is not a clean CRLF-terminated field line."""
    problems = []
    if not data.endswith(b"\r\n"):
        problems.append("no final CRLF")
    for line in data[:-2].split(b"\r\n"):
        if line.startswith(b" "):  # a folded ClientCertificate line
            continue
        if not FIELD_LINE.match(line):
            problems.append(f"bad line {line!r}")
    return problems


def talk(port: int, lines: list[bytes], timeout: float = 10.0) -> list[bytes]:
    """Send each line after the previous reply; returns the reply to each."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")

        def reply() -> bytes:
            out = b""
            while True:
                line = f.readline()
                out += line
                if len(line) < 4 or line[3:4] != b"-":
                    return out

        replies = []
        for line in lines:
            s.sendall(line)
            replies.append(reply())
            if line.startswith(b"DATA") and replies[-1].startswith(b"354"):
                s.sendall(b"Subject: inj\r\n\r\nbody\r\n.\r\n")
                replies.append(reply())
        s.sendall(b"QUIT\r\n")
        return replies


ATTACKS: dict[str, list[bytes]] = {
    "ehlo-cr": [b"EHLO a\rb.test\r\n"],
    "ehlo-nul": [b"EHLO a\x00b.test\r\n"],
    "ehlo-lf": [b"EHLO a\nMAIL FROM:<x@evil.test>\r\n"],
    "mail-nul": [b"EHLO c.test\r\n", b"MAIL FROM:<a\x00b@example.com>\r\n"],
    "mail-cr": [b"EHLO c.test\r\n", b"MAIL FROM:<a\rb@example.com>\r\n"],
    "mail-quoted-cr": [b"EHLO c.test\r\n", b'MAIL FROM:<"a\rb"@example.com>\r\n'],
    "mail-param-nul": [b"EHLO c.test\r\n", b"MAIL FROM:<a@example.com> AUTH=x\x00y\r\n"],
    "mail-auth-xtext-crlf": [b"EHLO c.test\r\n", b"MAIL FROM:<a@example.com> AUTH=a+0D+0ARCPT\r\n"],
    "rcpt-nul": [
        b"EHLO c.test\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<v\x00ictim@example.org>\r\n",
    ],
    "rcpt-cr": [b"EHLO c.test\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<v\rictim@example.org>\r\n"],
    "rcpt-quoted-lf": [
        b"EHLO c.test\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b'RCPT TO:<"v\nictim"@example.org>\r\n',
    ],
    "rcpt-quoted-escaped-nul": [
        b"EHLO c.test\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b'RCPT TO:<"v\\\x00x"@example.org>\r\n',
    ],
    "rcpt-param-cr": [
        b"EHLO c.test\r\n",
        b"MAIL FROM:<a@example.com>\r\n",
        b"RCPT TO:<b@example.net> ORCPT=rfc822;a\rb\r\n",
    ],
}


def test_smtp_arguments_never_reach_the_envelope_raw(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    # "us+0D+0Aer" is the xtext of "us\r\ner": a legal account name that decodes to CRLF
    secrets.write_text("server plain alice pw\nserver plain us+0D+0Aer pw2\n")
    rd = short_run_dir()
    relay = start_relay(tmp_path, "--run-dir", str(rd), "--server-auth", str(secrets), name="inj")
    figures: dict[str, str] = {}
    try:
        for name, lines in ATTACKS.items():
            rest = [b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.net>\r\n", b"DATA\r\n"]
            if name.startswith("mail"):
                rest = rest[1:]
            elif name.startswith("rcpt"):
                rest = rest[2:]
            auth = [b"AUTH PLAIN " + base64.b64encode(b"\x00alice\x00pw") + b"\r\n"]
            hello = [] if lines[0].startswith(b"EHLO c.") else [b"EHLO c.test\r\n"]
            replies = talk(relay.port, [*lines[:1], *hello, *auth, *lines[1:], *rest])
            figures[name] = b" ".join(r[:3] for r in replies).decode()
        # AUTH payloads: PLAIN with CR/LF/NUL in the names, LOGIN with CRLF, the CRLF account
        for name, payload in {
            "auth-plain-crlf-authzid": b"evil\r\nRCPT TO:<victim@example.org>\x00alice\x00pw",
            "auth-plain-crlf-user": b"\x00ali\r\nce\x00pw",
            "auth-plain-crlf-account": b"\x00us\r\ner\x00pw2",
        }.items():
            replies = talk(relay.port, [
                b"EHLO c.test\r\n", b"AUTH PLAIN " + base64.b64encode(payload) + b"\r\n",
                b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.net>\r\n", b"DATA\r\n",
            ])  # fmt: skip
            figures[name] = b" ".join(r[:3] for r in replies).decode()
        replies = talk(relay.port, [
            b"EHLO c.test\r\n", b"AUTH LOGIN\r\n", base64.b64encode(b"ali\r\nce") + b"\r\n",
            base64.b64encode(b"p\x00w") + b"\r\n",
        ])  # fmt: skip
        figures["auth-login-crlf"] = b" ".join(r[:3] for r in replies).decode()
        time.sleep(0.3)
    finally:
        relay.stop()
        shutil.rmtree(rd, ignore_errors=True)
    envelopes = sorted(relay.spool.glob("*.envelope"))
    problems = {p.name: envelope_problems(p.read_bytes()) for p in envelopes}
    received = {}
    for p in relay.spool.glob("*.content"):
        first = p.read_bytes().split(b"\r\n", 1)[0]
        received[p.name] = first
    print(f"\ninjection smtp: attempts={len(figures)} stored={len(envelopes)}")
    for name, codes in figures.items():
        print(f"  {name}: {codes}")
    assert envelopes, "nothing was stored at all: the test did not reach DATA"
    assert not any(problems.values()), problems
    for name, line in received.items():
        assert not re.search(rb"[\x00-\x1f\x7f]", line), f"{name}: Received line {line!r}"
    # the account whose name is CRLF authenticates, but is stored as xtext
    auth_values = {
        line
        for p in envelopes
        for line in p.read_bytes().split(b"\r\n")
        if line.startswith(b"X-MailRelay-Auth")
    }
    assert b"X-MailRelay-Authentication: us+0D+0Aer" in auth_values, auth_values
    assert not any(b"victim" in p.read_bytes() for p in envelopes)


FILTER = """#!{python}
import sys
content, envelope = sys.argv[1], sys.argv[2]
data = open(content, "rb").read()
kind = data.split(b"Subject: ", 1)[1].split(b"\\r\\n", 1)[0].decode()
victim = b"RCPT TO:<victim@example.org>"
edits = {{
    "forwardto-cr": (b"X-MailRelay-ForwardTo: ", b"X-MailRelay-ForwardTo: a\\rb"),
    "forwardtoaddress-cr": (b"X-MailRelay-ForwardToAddress: ", b"X-MailRelay-ForwardToAddress: {hop}\\r" + victim),
    "to-remote-nul": (b"X-MailRelay-To-Remote: ", b"X-MailRelay-To-Remote: x\\x00y@example.net"),
    "to-remote-cr": (b"X-MailRelay-To-Remote: ", b"X-MailRelay-To-Remote: b@example.net>\\r" + victim + b"\\r<"),
    "to-remote-lf": (b"X-MailRelay-To-Remote: ", b"X-MailRelay-To-Remote: b@example.net>\\n" + victim),
    "authout-cr": (b"X-MailRelay-MailFromAuthOut: ", b"X-MailRelay-MailFromAuthOut: a\\r" + victim),
    "from-nul": (b"X-MailRelay-From: ", b"X-MailRelay-From: a\\x00@example.com"),
    "selector-cr": (b"X-MailRelay-ClientAccountSelector: ", b"X-MailRelay-ClientAccountSelector: s\\rt"),
}}
old, new = edits[kind]
lines = open(envelope, "rb").read().split(b"\\r\\n")
lines = [new if line.startswith(old) else line for line in lines]
open(envelope, "wb").write(b"\\r\\n".join(lines))
sys.exit(0)
"""
FILTER_KINDS = [
    "forwardto-cr", "forwardtoaddress-cr", "to-remote-nul", "to-remote-cr", "to-remote-lf",
    "authout-cr", "from-nul", "selector-cr",
]  # fmt: skip


def test_filter_written_control_characters_never_reach_the_next_hop(tmp_path: Path) -> None:
    with FakeSmtp(extensions=("PIPELINING", "8BITMIME", "AUTH PLAIN")) as sink:
        script = tmp_path / "inject.py"
        script.write_text(FILTER.format(python=sys.executable, hop=sink.address))
        script.chmod(0o755)
        rd = short_run_dir()
        relay = start_relay(tmp_path, "--run-dir", str(rd), "--filter", str(script), name="filt")
        try:
            for kind in FILTER_KINDS:
                replies = talk(relay.port, [
                    b"EHLO c.test\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.net>\r\n",
                ])  # fmt: skip
                assert all(r.startswith(b"250") for r in replies), replies
                with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
                    f = s.makefile("rb")
                    f.readline()
                    s.sendall(
                        b"EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
                    )
                    while not f.readline().startswith(b"354"):
                        pass
                    s.sendall(f"Subject: {kind}\r\n\r\nbody\r\n.\r\nQUIT\r\n".encode())
                    assert f.readline().startswith(b"250")
        finally:
            relay.stop()
            shutil.rmtree(rd, ignore_errors=True)
        stored = len(list(relay.spool.glob("*.envelope")))
        assert stored == len(FILTER_KINDS), states(relay.spool)
        result = run_client(relay.spool, sink.address)
        commands = [c for _, c in sink.commands]
        spool_after = dict(states(relay.spool))
    raw = [c for c in commands if re.search(r"[\x00-\x1f\x7f]", c)]
    smuggled = [c for c in commands if "victim" in c]
    print(
        f"\ninjection filter: stored={stored} forwarded={len(sink.messages)} commands={len(commands)} "
        f"raw-control={len(raw)} smuggled={len(smuggled)} spool-after={spool_after}"
    )
    assert not raw, raw
    assert not smuggled, smuggled
    assert not [m for m in sink.messages if any("victim" in r for r in m.rcpts)]
    assert not sink.protocol_errors, sink.protocol_errors
    assert spool_after.get("bad", 0) + len(sink.messages) == len(FILTER_KINDS), (
        spool_after,
        result.stderr[-2000:],
    )
    assert spool_after.get("bad", 0) >= 6  # the envelopes with control characters are failed, not sent
    for bad in relay.spool.glob("*.envelope.bad"):
        tail = bad.read_bytes().split(b"X-MailRelay-End: 1\r\n", 1)[-1]
        assert not re.search(rb"[\x00\x0b-\x0c\x0e-\x1f]|\r(?!\n)|(?<!\r)\n", tail), tail


def test_pop_by_name_refuses_traversal(tmp_path: Path) -> None:
    pop_port = free_port()
    secrets = tmp_path / "pop.auth"
    names = ["..", "../x", "../../etc", "link", "alice/..", "."]
    secrets.write_text("".join(f"server plain {n} pw\n" for n in names) + "server plain alice pw\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    SpoolStore(outside, fsync=False).store_message(
        Envelope("a@example.com", to_remote=("b@example.net",)), b"Subject: secret\r\n\r\nsecret\r\n"
    )
    spool = tmp_path / "relay-spool"
    (spool / "alice").mkdir(parents=True)
    (spool / "x").mkdir()
    (spool / "link").symlink_to(outside)
    SpoolStore(spool / "alice", fsync=False).store_message(
        Envelope("a@example.com", to_remote=("alice@example.net",)), b"Subject: for alice\r\n\r\nhi\r\n"
    )
    rd = short_run_dir()
    relay = start_relay(
        tmp_path, "--run-dir", str(rd), "--pop", "--pop-port", str(pop_port), "--pop-auth", str(secrets),
        "--pop-by-name", spool=spool, name="pop",
    )  # fmt: skip
    outcomes: dict[str, str] = {}
    try:
        from tests.support.relay import wait_for_port

        wait_for_port(pop_port)
        for name in names:
            p = poplib.POP3("127.0.0.1", pop_port, timeout=10)
            try:
                p.user(name)
                try:
                    p.pass_("pw")
                    outcomes[name] = f"LOGGED IN: {p.stat()}"
                except poplib.error_proto as exc:
                    outcomes[name] = exc.args[0].decode()
            finally:
                try:
                    p.quit()
                except (poplib.error_proto, OSError):
                    pass
        p = poplib.POP3("127.0.0.1", pop_port, timeout=10)
        p.user("alice")
        p.pass_("pw")
        alice = p.stat()
        p.quit()
    finally:
        relay.stop()
        shutil.rmtree(rd, ignore_errors=True)
    print(f"\npop traversal: {outcomes} alice={alice}")
    assert alice[0] == 1  # the harness works: a proper user sees her own maildrop
    assert all(o.startswith("-ERR") for o in outcomes.values()), outcomes
    assert [p.name for p in outside.iterdir() if p.name.endswith(".envelope")]  # untouched


def test_an_unreadable_envelope_is_failed_with_a_reason(tmp_path: Path) -> None:
    from tests.support.sink import envelope_text, write_raw

    spool = tmp_path / "spool"
    spool.mkdir()
    env = envelope_text("a@example.com", ["b@example.net"]).replace(
        b"X-MailRelay-ForwardTo: ", b"X-MailRelay-ForwardTo: a\rb"
    )
    write_raw(spool, env, b"Subject: x\r\n\r\nbody\r\n")
    with FakeSmtp() as sink:
        run_client(spool, sink.address)
        assert not sink.messages
    bad = list(spool.glob("*.envelope.bad"))
    assert len(bad) == 1
    assert b"\r\nX-MailRelay-Reason: " in bad[0].read_bytes(), bad[0].read_bytes()[-200:]
