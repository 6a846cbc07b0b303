"""Open-relay battery: who may hand the relay mail, and what an address trick can turn into.

The policy (docs/reliability.md, "Relaying policy"), as the reference guide
defines it — E-MailRelay relays for whoever may connect, so the question is
who may connect and who must authenticate:

- default: only local clients (loopback and the host's own addresses) may
  connect at all; anyone else is disconnected without a byte, as E-MailRelay
  2.6b does, so there is nothing to relay through;
- ``--remote-clients --server-auth FILE``: anyone may connect, but a client
  that has not authenticated (and is not in a trusted ``none`` range of the
  file) gets ``530`` for ``MAIL``, whatever the addresses;
- ``--remote-clients`` without ``--server-auth`` is an open relay by the
  operator's choice (the guide says so); not tested as a failure.

Whoever is allowed, an address trick never becomes more, fewer or other
recipients: each accepted ``RCPT`` is exactly one ``To-Remote`` line holding
the mailbox as given (a source route ``@a,@b:`` is dropped, as RFC 5321
says), and tricks that try to smuggle a second address (comma lists, a
closing bracket inside the path) are refused.  The percent hack and ``!``
paths are stored verbatim: the relay never interprets them, it forwards to
its ``--forward-to`` host only, so they cannot redirect mail.

The non-local client runs in a network namespace with a 100.64.x.x veth
address, as ``tests/integration/test_smtpd_remote.py`` does.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest

from emailrelay.spool import envelope as env_format
from tests.support.relay import start_relay
from tests.support.smtpd import short_run_dir
from tests.support.veth_netns import Netns, netns  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(180)

# (RCPT argument, the one recipient it may be stored as, or None when it must be refused)
TRICKS: list[tuple[str, str | None]] = [
    ("<user%remote.example@local.example>", "user%remote.example@local.example"),
    ("<remote.example!user@local.example>", "remote.example!user@local.example"),
    ("<remote.example!user>", "remote.example!user"),
    ("<@hop1.example,@hop2.example:user@remote.example>", "user@remote.example"),
    ('<"user@remote.example"@local.example>', '"user@remote.example"@local.example'),
    ('<"user%remote"@local.example>', '"user%remote"@local.example'),
    ('<"a>b"@local.example>', '"a>b"@local.example'),
    ("<user@[127.0.0.1]>", "user@[127.0.0.1]"),
    ("<user@local.example.>", "user@local.example."),
    ("<postmaster>", "postmaster"),
    ("<user@remote.example,other@remote.example>", None),
    ("<user@remote.example>,<other@remote.example>", None),
    ("<user@remote.example> <other@remote.example>", None),
    ("<user@remote.example@local.example>", None),
    ("<<user@remote.example>>", None),
    ("<user(comment)@remote.example>", None),
    ("<user @remote.example>", None),
    ("user@remote.example", None),
    ("<@hop1.example:>", None),
    ("<>", None),
]
# accepted and refused ones alternate: ten refusals in a row would end the session ("421 too many errors")
_OK = [t for t in TRICKS if t[1] is not None]
_BAD = [t for t in TRICKS if t[1] is None]
TRICKS = [t for pair in zip(_OK, _BAD, strict=True) for t in pair]

BATTERY = r"""
import json, socket, sys, base64
host, port, auth = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tricks = json.loads(sys.argv[4])
s = socket.create_connection((host, port), 20)
f = s.makefile("rb")
def reply():
    out = b""
    while True:
        line = f.readline()
        out += line
        if len(line) < 4 or line[3:4] != b"-":
            return out.decode("utf-8", "replace")
def cmd(line):
    try:
        s.sendall(line.encode() + b"\r\n")
        return reply() or "closed"
    except OSError:
        return "closed"
out = {"greeting": reply()}
if out["greeting"].startswith("220"):
    out["ehlo"] = cmd("EHLO client.test")
    if auth:
        out["auth"] = cmd("AUTH PLAIN " + auth)
    out["mail"] = cmd("MAIL FROM:<sender@remote.example>")
    out["rcpt"] = [cmd("RCPT TO:" + t) for t in tricks]
    out["data"] = cmd("DATA")
    if out["data"].startswith("354"):
        s.sendall(b"Subject: relay test\r\n\r\nhello\r\n.\r\n")
        out["final"] = reply()
    cmd("QUIT")
print(json.dumps(out))
"""


def run_battery(argv_prefix: list[str], host: str, port: int, auth: str = "") -> dict[str, object]:
    import subprocess

    auth = base64.b64encode(auth.encode()).decode() if auth else ""
    r = subprocess.run(
        [*argv_prefix, sys.executable, "-c", BATTERY, host, str(port), auth, json.dumps([t for t, _ in TRICKS])],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check_recipients(result: dict[str, object], spool: Path) -> dict[str, int]:
    """Every accepted trick is exactly its expected single recipient; every refused one was refusable."""
    replies = result["rcpt"]
    assert isinstance(replies, list)
    accepted, wrongly_accepted = [], []
    for (trick, expected), reply in zip(TRICKS, replies, strict=True):
        if reply.startswith("250"):
            if expected is None:
                wrongly_accepted.append(trick)
            else:
                accepted.append(expected)
        else:
            assert reply[:1] in ("5", "4"), (trick, reply)
    assert not wrongly_accepted, wrongly_accepted
    assert str(result.get("final", "")).startswith("250"), result
    envelopes = list(spool.glob("*.envelope"))
    assert len(envelopes) == 1
    env = env_format.parse(envelopes[0].read_bytes())
    assert list(env.to_remote) == accepted, (env.to_remote, accepted)
    assert env.recipient_count == len(accepted) and not env.to_local
    return {"tricks": len(TRICKS), "accepted": len(accepted), "refused": len(TRICKS) - len(accepted)}


def test_address_tricks_from_a_local_client_default_configuration(tmp_path: Path) -> None:
    rd = short_run_dir()
    relay = start_relay(tmp_path, "--run-dir", str(rd), name="local")
    try:
        result = run_battery([], "127.0.0.1", relay.port)
    finally:
        relay.stop()
        shutil.rmtree(rd, ignore_errors=True)
    figures = check_recipients(result, relay.spool)
    print(f"\nopen-relay local default: {figures}")


def test_non_local_client_default_configuration_is_disconnected(netns: Netns, tmp_path: Path) -> None:  # noqa: F811
    rd = short_run_dir()
    relay = start_relay(
        tmp_path, "--run-dir", str(rd), "--interface", netns.host_ip, name="remote", wait=False
    )
    try:
        from tests.support.relay import wait_for_port

        wait_for_port(relay.port, host=netns.host_ip, proc=relay.proc)
        result = run_battery(["ip", "netns", "exec", netns.name], netns.host_ip, relay.port)
    finally:
        relay.stop()
        shutil.rmtree(rd, ignore_errors=True)
    print(f"\nopen-relay non-local default: greeting={result['greeting'].strip()!r}")
    assert result["greeting"] == "", result  # closed without a byte, as upstream
    assert "rcpt" not in result
    assert not list(relay.spool.glob("*.envelope*"))


def test_non_local_client_remote_clients_with_server_auth(netns: Netns, tmp_path: Path) -> None:  # noqa: F811
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice secret\n")
    rd = short_run_dir()
    relay = start_relay(
        tmp_path, "--run-dir", str(rd), "--interface", netns.host_ip, "--remote-clients",
        "--server-auth", str(secrets), name="remoteauth", wait=False,
    )  # fmt: skip
    try:
        from tests.support.relay import wait_for_port

        wait_for_port(relay.port, host=netns.host_ip, proc=relay.proc)
        ns = ["ip", "netns", "exec", netns.name]
        anonymous = run_battery(ns, netns.host_ip, relay.port)
        wrong = run_battery(ns, netns.host_ip, relay.port, "\0alice\0wrong")
        stored_before_auth = list(relay.spool.glob("*.envelope*"))
        authenticated = run_battery(ns, netns.host_ip, relay.port, "\0alice\0secret")
    finally:
        relay.stop()
        shutil.rmtree(rd, ignore_errors=True)
    assert str(anonymous["greeting"]).startswith("220")
    assert str(anonymous["mail"]).startswith("530"), anonymous["mail"]
    assert all(not r.startswith("250") for r in anonymous["rcpt"])  # type: ignore[union-attr]
    assert str(wrong["auth"]).startswith("535") and str(wrong["mail"]).startswith("530")
    assert not stored_before_auth
    assert str(authenticated["auth"]).startswith("235")
    figures = check_recipients(authenticated, relay.spool)
    print(
        f"\nopen-relay non-local --remote-clients --server-auth: unauthenticated MAIL="
        f"{str(anonymous['mail'])[:3]} wrong-password MAIL={str(wrong['mail'])[:3]} authenticated {figures}"
    )


def test_local_client_must_authenticate_too_when_server_auth_is_given(tmp_path: Path) -> None:
    secrets = tmp_path / "server.auth"
    secrets.write_text("server plain alice secret\n")
    rd = short_run_dir()
    relay = start_relay(tmp_path, "--run-dir", str(rd), "--server-auth", str(secrets), name="localauth")
    try:
        with socket.create_connection(("127.0.0.1", relay.port), 10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO c.test\r\n")
            while f.readline()[3:4] == b"-":
                pass
            s.sendall(b"MAIL FROM:<a@example.com>\r\n")
            mail = f.readline()
    finally:
        relay.stop()
        shutil.rmtree(rd, ignore_errors=True)
    assert mail.startswith(b"530"), mail
