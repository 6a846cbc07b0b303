"""The reference guide's store, authentication, verifier, POP and network rows against E-MailRelay 2.6b.

What it is for (issue 17): docs/compatibility.md's "Reference guide" rows (message store,
forwarding, authentication, TLS, PAM, built-in verifiers, routing, POP, networking, run-time
environment) that no other differential test compares.  Each scenario starts our relay and the
oracle (``EMAILRELAY_ORACLE_BIN``; skipped without it) the same way (tests/support/oracle.py: as
root, default ``--user daemon``, ours supervised) with a guide option or file, drives both with the
same client, and compares what a user sees: the SMTP or POP replies, the log lines about the
feature, the spool (ids normalised, byte for byte), file modes, what a next hop received and the
exit code.  Differences that are not upstream's are asserted on our side and named in the test.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from pprint import pformat

import pytest

from tests.differential.test_filters import serve_cases
from tests.differential.test_forwarding import NO_PIPELINING, _write
from tests.support.certs import HAVE_OPENSSL, make_certs
from tests.support.fake_smtp import FakeSmtp, auth_script
from tests.support.fake_spamd import GTUBE, fake_spamd
from tests.support.filter_recorder import Case, recorder, spool_summary
from tests.support.line_server import line_server
from tests.support.oracle import (
    SIDES,
    daemon_base,
    needs_oracle,
    normalise_log,
    normalise_spool,
    program,
    read_reply,
    smtp_dialogue,
    spool_dir,
    start,
)
from tests.support.relay import free_port, wait_until
from tests.support.socks_server import socks_server

pytestmark = [needs_oracle, pytest.mark.timeout(120)]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _greeting(reply: str) -> str:
    """Our greeting names version 2.6, upstream's 2.6b (docs/decisions.md, "--version")."""
    return reply.replace("E-MailRelay V2.6b --", "E-MailRelay V2.6 --")


def _assert_same(got: dict[str, object]) -> None:
    """Both sides alike, both shown in full when not."""
    assert got["ours"] == got["upstream"], (
        "\nours:\n" + pformat(got["ours"]) + "\nupstream:\n" + pformat(got["upstream"])
    )


def _readable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


MESSAGE = ["MAIL FROM:<a@example.com>", "RCPT TO:<b@example.net>", "DATA", "Subject: s\r\n\r\nbody\r\n."]


# ---- message store: names, suffixes, CR-LF, modes and group ----------------------------------------


def test_stored_message_files_names_modes_and_group(tmp_path: Path) -> None:
    """An SMTP message gives ``emailrelay.<pid>.<time>.<seq>.envelope`` and ``.content`` (CR-LF lines),
    mode 0660, group daemon, on both sides; the files are the same bytes (ids and dates aside)."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        with start(side, base) as relay:
            replies = smtp_dialogue(relay.port, ["EHLO c.example", *MESSAGE, "QUIT"])
            names = sorted(p.name for p in relay.spool.iterdir() if p.is_file())
            modes = sorted((oct(p.stat().st_mode & 0o7777), grp.getgrgid(p.stat().st_gid).gr_name)
                           for p in relay.spool.iterdir() if p.is_file())  # fmt: skip
            files = normalise_spool(relay.spool)
        shape = [re.sub(r"^emailrelay\.\d+\.\d+\.1\.", "emailrelay.PID.TIME.1.", n) for n in names]
        content = files["emailrelay.ID.content"]
        content = re.sub(rb"(?m)^Received: .*\r\n(?:[ \t].*\r\n)*", b"", content)
        got[side] = (replies[-2][:3], shape, modes, files["emailrelay.ID.envelope"], content)
    _assert_same(got)
    assert got["ours"][1] == ["emailrelay.PID.TIME.1.content", "emailrelay.PID.TIME.1.envelope"]
    assert got["ours"][2] == [("0o660", "daemon"), ("0o660", "daemon")]
    assert got["ours"][4] == b"Subject: s\r\n\r\nbody\r\n"


# ---- authentication: the guide's secrets files ------------------------------------------------------

XTEXT = "client plain bob password123\nserver plain alice e+3Dmc2\nserver plain carol my+20password\n"
BASE64 = (
    "client plain:b Ym9i cGFzc3dvcmQxMjM= # bob\nserver plain:b YWxpY2U= ZT1tYzI= # alice\n"
    "server plain:b Y2Fyb2w= bXkgcGFzc3dvcmQ= # carol\n"
)
MD5 = (
    "client md5 bob 9N2IRYVXqu7SkOW1Xat+wpR9NbA2R6fb61XlmqW+46E=\n"
    "server md5 alice v1HOpuLIbbvgoJjhueeoqwfvtIp2C+gMA285ke+xxow=\n"
    "server md5 carol x6UJKQF9f7HfhS1M+PW4s8rXIoT+L+WoqLz+rBwSKbw=\n"
)
TRUSTED_AS_PRINTED = XTEXT + "server none 192.168.0.* localipv4\nserver none fe80::/64 localipv6\n"
TRUSTED_LOOPBACK = XTEXT + "server none 127.0.0.0/8 localipv4\n"
UTF8 = XTEXT + "server plain j+C3+BCrgen p+C3+A4sswort\n"

#: (mechanism, user, password) attempts, each in a session of its own followed by a message
ATTEMPTS = [
    ("PLAIN", "alice", "e=mc2"),
    ("LOGIN", "carol", "my password"),
    ("CRAM-MD5", "alice", "e=mc2"),
    ("CRAM-MD5", "carol", "my password"),
    ("PLAIN", "alice", "e+3Dmc2"),  # the xtext form itself is not the password
    ("CRAM-MD5", "alice", "e=mc3"),
    ("PLAIN", "bob", "password123"),  # a client line is not a server account
    ("PLAIN", "jürgen", "pässwort"),  # UTF-8, compared octet for octet
    ("", "", ""),  # no AUTH at all
]


def _auth_session(port: int, mechanism: str, user: str, password: str) -> list[str]:
    """EHLO, one AUTH exchange (the CRAM challenge answered and masked), then a message, QUIT."""
    replies: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")

        def say(line: str) -> str:
            sock.sendall(line.encode() + b"\r\n")
            reply = read_reply(reader)
            replies.append(re.sub(r"^334 \S+$", "334 CHALLENGE", reply) if mechanism == "CRAM-MD5" else reply)
            return reply

        replies.append(_greeting(read_reply(reader)))
        say("EHLO c.example")
        if mechanism == "PLAIN":
            say("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
        elif mechanism == "LOGIN":
            say("AUTH LOGIN")
            say(b64(user))
            say(b64(password))
        elif mechanism == "CRAM-MD5":
            challenge = base64.b64decode(say("AUTH CRAM-MD5")[4:])
            digest = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
            say(b64(f"{user} {digest}"))
        for line in [*MESSAGE, "QUIT"]:
            say(line)
    return replies


@pytest.mark.parametrize(
    "secrets",
    [XTEXT, BASE64, MD5, TRUSTED_AS_PRINTED, TRUSTED_LOOPBACK, UTF8],
    ids=["xtext", "base64", "md5", "trusted-as-printed", "trusted-loopback", "utf8"],
)
def test_guide_secrets_files_for_the_server(tmp_path: Path, secrets: str) -> None:
    """``--server-auth`` with the guide's secrets files: the EHLO AUTH keyword, every AUTH reply, the
    530 without AUTH (or 250 from a trusted address), the envelopes' Authentication fields, and the
    log lines about authentication."""
    base = daemon_base(tmp_path)
    path = _readable(base / "emailrelay.auth", secrets)
    got = {}
    for side in SIDES:
        with start(side, base, "--server-auth", str(path)) as relay:
            replies = [_auth_session(relay.port, *attempt) for attempt in ATTEMPTS]
            time.sleep(0.3)
            envelopes = sorted(
                re.search(rb"X-MailRelay-Authentication: [^\r]*", p.read_bytes())[0]  # type: ignore[index]
                for p in relay.spool.glob("*.envelope")
            )
            log = [x for x in normalise_log(relay.log(), relay) if "authentication" in x and "rx<<" not in x]
        got[side] = (replies, envelopes, log)
    for attempt, ours, upstream in zip(ATTEMPTS, got["ours"][0], got["upstream"][0], strict=True):
        assert ours == upstream, attempt
    assert got["ours"][1:] == got["upstream"][1:]


@pytest.mark.parametrize(
    ("secrets", "selector"),
    [
        ("client plain bob password123\n", ""),
        ("client plain bob password123\nclient plain alice e+3Dmc2 use_alice\nclient plain:b = = noauth\n", ""),
        ("client plain bob password123\nclient plain alice e+3Dmc2 use_alice\nclient plain:b = = noauth\n",
         "use_alice"),
        ("client plain bob password123\nclient plain alice e+3Dmc2 use_alice\nclient plain:b = = noauth\n",
         "noauth"),
        (BASE64, ""),
        (MD5, ""),
        ("plain:Ym9i:cGFzc3dvcmQxMjM=", ""),
    ],
    ids=["xtext", "no-selector", "use_alice", "noauth", "base64", "md5", "command-line"],
)  # fmt: skip
def test_guide_client_secrets_and_account_selectors(tmp_path: Path, secrets: str, selector: str) -> None:
    """``--client-auth`` with the guide's client lines and ``ClientAccountSelector`` in the envelope:
    what the next hop receives (AUTH exchange, MAIL FROM) and the relay's exit code and spool."""
    got = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        auth = secrets if secrets.startswith("plain:") else str(_readable(base / "client.auth", secrets))
        script = auth_script("334 PDEyMzQ1LjY3ODlAZmFrZS50ZXN0Pg==", "235 2.7.0 ok")
        with FakeSmtp(extensions=(*NO_PIPELINING, "AUTH PLAIN LOGIN CRAM-MD5"), auth=script) as hop:
            spool = spool_dir(base / side / "spool")
            _write(spool, [["b@example.net"]], int(time.time()))
            for p in spool.glob("*.envelope"):
                p.write_bytes(p.read_bytes().replace(
                    b"ClientAccountSelector: \r\n", f"ClientAccountSelector: {selector}\r\n".encode()))  # fmt: skip
            done = subprocess.run(
                [program(side), "--as-client", hop.address, "--spool-dir", str(spool), "--client-auth", auth],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            commands = [
                c[-1] for c in hop.commands if isinstance(c[-1], str) and c[-1].startswith(("AUTH", "MAIL"))
            ]
            got[side] = (done.returncode, hop.auth_exchanges, commands, len(hop.messages), sorted(
                p.name for p in spool.iterdir()))  # fmt: skip
    _assert_same(got)


def _mail_from_auth_out(tmp_path: Path, out: str, auth: bool) -> dict[str, object]:
    """What each side's ``--as-client`` sends as MAIL FROM for an envelope with ``MailFromAuthOut: out``."""
    got: dict[str, object] = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        path = _readable(base / "client.auth", "client plain bob password123\n")
        with FakeSmtp(extensions=(*NO_PIPELINING, "AUTH PLAIN"), auth=auth_script("235 2.7.0 ok")) as hop:
            spool = spool_dir(base / side / "spool")
            _write(spool, [["b@example.net"]], int(time.time()))
            for p in spool.glob("*.envelope"):
                p.write_bytes(p.read_bytes().replace(
                    b"MailFromAuthOut: \r\n", f"MailFromAuthOut: {out}\r\n".encode()))  # fmt: skip
            args = ["--client-auth", str(path)] if auth else []
            done = subprocess.run(
                [program(side), "--as-client", hop.address, "--spool-dir", str(spool), *args],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            mail = [c[-1] for c in hop.commands if isinstance(c[-1], str) and c[-1].startswith("MAIL")]
            got[side] = (done.returncode, mail)
    return got


@pytest.mark.parametrize("out", ["", "<>", "x+2By@example.com"], ids=["empty", "angle-brackets", "xtext"])
def test_mail_from_auth_out(tmp_path: Path, out: str) -> None:
    """With ``--client-auth``, the envelope's ``MailFromAuthOut`` gives the next hop's ``AUTH=``."""
    _assert_same(_mail_from_auth_out(tmp_path, out, True))


def test_mail_from_auth_out_without_client_auth_differs(tmp_path: Path) -> None:
    """Without ``--client-auth`` upstream sends no ``AUTH=`` at all; ours still sends the envelope's
    ``MailFromAuthOut`` (a difference found by this regrade, not a recorded decision)."""
    got = _mail_from_auth_out(tmp_path, "z@example.com", False)
    assert got["upstream"] == (0, ["MAIL FROM:<a@example.com> BODY=7BIT"])
    assert got["ours"] == (0, ["MAIL FROM:<a@example.com> BODY=7BIT AUTH=z@example.com"])


# ---- start-up errors and exit codes --------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate() -> Path:
    if not HAVE_OPENSSL:
        pytest.skip("needs openssl")
    base = daemon_base()
    certs = make_certs(base)
    for path in base.iterdir():
        path.chmod(0o644)
    return certs.server_pem


#: case -> (arguments, words both error lines contain, or what differs: ours and upstream's
#: outcome as (exit code or None for "still serving", a word of its error line))
STARTUP: dict[str, tuple[tuple[str, ...], object]] = {
    "server-tls-without-certificate": (("--server-tls",), "--server-tls-certificate"),
    "client-auth-pam": (("--client-auth", "pam:", "--forward-to", "127.0.0.1:9"), "pam"),
    "port-in-use": ((), "address already in use"),
    "tls-config-mbedtls": (
        ("--server-tls", "--server-tls-certificate", "CERT", "--tls-config", "mbedtls"),
        ((1, "only OpenSSL is available"), (None, "")),
    ),
    "deliver-hardlink-nodelete": (
        ("--filter", "deliver:hardlink;nodelete"),
        ((None, ""), (1, "expected unsigned integer: hardlink;nodelete")),
    ),
    "dont-serve-with-port": (
        ("--dont-serve", "--forward-to", "127.0.0.1:9", "--forward"),
        "the --port option cannot be used with --as-client or --dont-serve",
    ),
}


@pytest.mark.parametrize("case", list(STARTUP))
def test_startup_outcomes(tmp_path: Path, certificate: Path, case: str) -> None:
    """Options the guide says cannot work together, and a busy port: does the relay start, and what
    exit code and error line when it does not.  The error lines' wording is compared by the words
    both use (upstream says ``usage error:`` where ours says ``error:``, a start-up error); cases
    that differ assert each side's outcome."""
    args, expect = STARTUP[case]
    base = daemon_base(tmp_path)
    got: dict[str, tuple[int | None, list[str]]] = {}
    with socket.create_server(("127.0.0.1", 0)) as busy:
        argv = [{"CERT": str(certificate), "BUSY": str(busy.getsockname()[1])}.get(a, a) for a in args]
        for side in SIDES:
            port = busy.getsockname()[1] if case == "port-in-use" else None
            relay = start(side, base, "--interface", "127.0.0.1", *argv, port=port, wait=False)
            try:
                wait_until(lambda r=relay: r.proc.poll() is not None or " server on " in r.log(), 20)
                rc = relay.proc.poll()
            finally:
                relay.stop()
            got[side] = (rc, [x for x in normalise_log(relay.log(), ports=[relay.port]) if "error" in x])
    if isinstance(expect, str):
        assert got["ours"][0] == got["upstream"][0] and got["ours"][0] in (1, 2), got
        for side in SIDES:
            assert got[side][1] and expect in got[side][1][-1].lower(), got
        return
    for side, (rc, word) in zip(SIDES, expect, strict=True):  # type: ignore[arg-type]
        assert got[side][0] == rc, got
        assert word in "\n".join(got[side][1]), got


# ---- built-in address verifiers ------------------------------------------------------------------


def _account(spec: str, rcpts: list[str]) -> dict[str, object]:
    """Per side, with ``--address-verifier=<spec> --domain=example.com``: per recipient the RCPT and
    VRFY replies, the envelopes' recipient lines and the verifier's log lines."""
    base = daemon_base()
    got: dict[str, object] = {}
    for side in SIDES:
        with start(side, base, "--address-verifier", spec, "--domain", "example.com") as relay:
            replies = []
            for rcpt in rcpts:
                r = smtp_dialogue(relay.port, ["EHLO c", f"VRFY {rcpt}", "MAIL FROM:<a@b.example>", f"RCPT TO:<{rcpt}>",
                                               "DATA", "Subject: s\r\n\r\nx\r\n.", "QUIT"])  # fmt: skip
                replies.append((r[4], r[2]))
            time.sleep(0.3)
            envelopes = sorted(
                b"".join(re.findall(rb"X-MailRelay-To-\w+: [^\r]*", p.read_bytes()))
                for p in relay.spool.glob("*.envelope")
            )
            log = [x for x in normalise_log(relay.log(), relay) if "rejecting" in x]
        got[side] = (replies, envelopes, log)
    return got


@pytest.mark.parametrize("spec", ["account:", "account:0-0;lowercase", "account:check", "account:0-0;remote"])
def test_account_verifier_accepts_and_refuses_as_upstream(spec: str) -> None:
    """Which recipients the built-in ``account:`` verifier accepts, as local or remote, and what the
    envelopes hold: an account (root, uid 0, outside the default range 1000-32767 and inside
    ``0-0``), another domain, a name that is no account.  The reply codes are compared (the texts
    differ, see the next test)."""
    got = _account(spec, ["root@example.com", "root@other.example", "no-such-user-x@example.com"])
    codes = {side: ([(r[:3], v[:3]) for r, v in got[side][0]], got[side][1]) for side in SIDES}  # type: ignore[index]
    _assert_same(codes)


def test_account_verifier_differs_from_upstream() -> None:
    """Differences found by this regrade (not recorded decisions), each side asserted: upstream
    refuses with ``550 rejected`` and logs why (``uid 0 is not in the range ...``, ``[x] does not
    match [example.com]``, ``[x] is not a valid account name``), ours ``550 invalid mailbox`` with
    ``no such account``; upstream finds ``ROOT@Example.COM`` without ``lowercase`` (To-Local: root),
    ours refuses it; upstream's VRFY of a local account is ``250 `` (no full name), ours ``250 root``."""
    got = _account("account:0-0", ["root@example.com", "ROOT@Example.COM", "root@other.example"])
    ours, upstream = got["ours"], got["upstream"]
    assert upstream[0] == [  # type: ignore[index]
        ("250 recipient <root@example.com>  OK", "250 "),
        ("250 recipient <ROOT@Example.COM>  OK", "250 "),
        ("550 rejected", "550 rejected"),
    ]
    assert upstream[1] == [b"X-MailRelay-To-Local: root", b"X-MailRelay-To-Local: root"]  # type: ignore[index]
    assert upstream[2] == [  # type: ignore[index]
        'emailrelay: warning: rejecting recipient "root@other.example": rejected: [other.example] does not '
        "match [example.com]"
    ]
    assert ours[0] == [  # type: ignore[index]
        ("250 recipient <root@example.com>  OK", "250 root"),
        ("550 invalid mailbox", "550 invalid mailbox"),
        ("550 invalid mailbox", "550 invalid mailbox"),
    ]
    assert ours[1] == [b"X-MailRelay-To-Local: root"]  # type: ignore[index]
    assert (
        'emailrelay: warning: rejecting recipient "root@other.example": invalid mailbox: no such account'
        in ours[2]
    )  # type: ignore[index,operator]


# ---- POP: mailboxes made by copy: and deliver:, --pop-by-name, --pop-no-delete ----------------------

POP_CASES: dict[str, tuple[str, ...]] = {
    "copy": ("--filter", "copy:", "--pop-by-name"),
    "copy-nodelete": ("--filter", "copy:nodelete", "--pop-by-name"),
    "copy-pop": ("--filter", "copy:pop", "--pop-by-name"),
    "copy-hardlink": ("--filter", "copy:hardlink", "--pop-by-name"),
    "copy-pop-no-delete": ("--filter", "copy:pop", "--pop-by-name", "--pop-no-delete"),
    "pop-no-delete": ("--pop-no-delete",),
    "deliver": ("--filter", "deliver:", "--address-verifier", "LOCAL", "--pop-by-name"),
    "delivery": ("--filter", "delivery:", "--address-verifier", "LOCAL", "--pop-by-name"),
    "deliver-no-local": ("--filter", "deliver:", "--pop-by-name"),
    "deliver-delivery-dir": (
        "--filter",
        "deliver:",
        "--address-verifier",
        "LOCAL",
        "--delivery-dir",
        "SPOOL/in",
    ),
    "deliver-maildir": ("--filter", "deliver:", "--address-verifier", "LOCAL", "--delivery-dir", "SPOOL/md"),
    "copy-maildir": ("--filter", "copy:", "--pop-by-name"),
}


def _pop_session(port: int, user: str) -> list[bytes]:
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        reader = sock.makefile("rb")
        out.append(re.sub(rb"<[^>]*>", b"<STAMP>", reader.readline()))
        for command in ["USER " + user, "PASS pw", "STAT", "LIST", "RETR 1", "DELE 1", "QUIT"]:
            sock.sendall(command.encode() + b"\r\n")
            reply = reader.readline()
            if command in ("LIST", "RETR 1") and reply.startswith(b"+OK"):
                while not reply.endswith(b"\r\n.\r\n"):
                    reply += reader.readline()
            out.append(
                re.sub(rb"emailrelay\.\d+\.\d+\.\d+|Received: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*", b"X", reply)
            )
    return out


@pytest.mark.parametrize("case", list(POP_CASES))
def test_pop_mailboxes(tmp_path: Path, case: str) -> None:
    """A message to two users through the filter, then POP as ``alice`` (USER/PASS, STAT, LIST, RETR,
    DELE, QUIT): the replies and what is left in the spool and its sub-directories (among them
    ``postmaster`` and ``.hidden``, which ``copy:`` leaves alone, and maildirs with ``new``, ``tmp``
    and ``cur``)."""
    base = daemon_base(tmp_path)
    secrets = _readable(base / "pop.auth", "server plain alice pw\nserver plain bob pw\n")
    verifier = base / "local.sh"
    verifier.write_text('#!/bin/sh\necho "Alice"\necho alice\nexit 0\n')
    verifier.chmod(0o755)
    got = {}
    for side in SIDES:
        spool = spool_dir(base / side / "spool")
        args = [str(verifier) if a == "LOCAL" else a.replace("SPOOL", str(spool)) for a in POP_CASES[case]]
        for box in ("alice", "bob", "postmaster", ".hidden", "in", "md/alice"):
            spool_dir(spool / box)
        if case.endswith("maildir"):  # maildir mailboxes: new, tmp and cur
            for box in ("bob", "md/alice"):
                for sub in ("new", "tmp", "cur"):
                    spool_dir(spool / box / sub)
        pop = free_port()
        with start(side, base, "--pop", "--pop-port", str(pop), "--pop-auth", str(secrets), *args) as relay:
            replies = smtp_dialogue(relay.port, ["EHLO c", "MAIL FROM:<a@b.example>", "RCPT TO:<alice@x.example>",
                                                 "RCPT TO:<bob@x.example>", "DATA", "Subject: s\r\n\r\nx\r\n.", "QUIT"])  # fmt: skip
            time.sleep(0.3)
            pop_replies = _pop_session(pop, "alice")
            time.sleep(0.3)
            left = spool_summary(relay.spool)
        got[side] = (list(map(_greeting, replies)), pop_replies, left)
    if case == "delivery":  # the POP section's spelling: upstream runs it as a program that is not there
        assert got["upstream"][0][-2] == "452 rejected" and got["ours"][0][-2] == "250 message processed"
        return
    if case.endswith(
        "maildir"
    ):  # upstream's maildir file is new/<secs>.<usecs>.<pid>.<host>.<n>, ours cur/<id>:2,
        for side, form in (("upstream", r"/new/\d+\.\d+\.\d+\.[^/:]+\.\d+:"), ("ours", r"/cur/ID:2,:")):
            maildir = [x for x in got[side][2] if re.search(form, x)]
            assert maildir, got[side][2]
            got[side][2][:] = [re.sub(form, "/MAILDIR:", x) for x in got[side][2]]
    _assert_same(got)


# ---- forwarding at start-up, --dont-serve ------------------------------------------------------------


def test_dont_serve_with_forward_ends_once_all_is_sent(tmp_path: Path) -> None:
    """``--dont-serve --forward`` (no ``--port``: upstream refuses one with ``--dont-serve``): the
    spooled messages are sent and the program ends; the exit code, what the next hop got, the spool."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        with FakeSmtp(extensions=NO_PIPELINING) as hop:
            spool = spool_dir(base / side / "spool")
            _write(spool, [["b@example.net"], ["c@example.net"]], int(time.time()))
            done = subprocess.run(
                [program(side), "--no-daemon", "--dont-serve", "--forward", "--forward-to", hop.address,
                 "--spool-dir", str(spool), "--log", "--no-syslog"],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            got[side] = (
                done.returncode,
                len(hop.messages),
                sorted(p.name for p in spool.glob("emailrelay.*")),
            )
    _assert_same(got)
    assert got["ours"] == (0, 2, [])


def test_no_startup_forwarding_without_forward(tmp_path: Path) -> None:
    """Upstream forwards a spooled message at start-up only with ``--forward`` (or ``--as-client``);
    our supervised relay forwards it whenever ``--forward-to`` is given (its forward role scans the
    spool as it starts).  Shown on both sides: upstream keeps the message, ours sends it."""
    base = daemon_base(tmp_path)
    got = {}
    for side in ("ours", "upstream"):
        with FakeSmtp(extensions=NO_PIPELINING) as hop:
            spool = spool_dir(base / side / "spool")
            _write(spool, [["b@example.net"]], int(time.time()))
            with start(side, base, "--forward-to", hop.address) as relay:
                smtp_dialogue(relay.port, ["EHLO c", "QUIT"])
                hop.wait_for_messages(1, timeout=5 if side == "ours" else 2)
                forwarded = len(hop.messages)
                left = len(list(spool.glob("emailrelay.*.envelope")))
            got[side] = (forwarded, left)
    assert got["upstream"] == (0, 1)
    assert got["ours"] == (1, 0)


# ---- routing: ForwardToAddress, local recipients, --client-interface ----------------------------------


def _local_only(spool: Path, hop: FakeSmtp) -> None:
    for p in spool.glob("*.envelope"):
        p.write_bytes(p.read_bytes().replace(b"To-Remote: b@example.net", b"To-Local: postmaster"))


def _forward_to_address(value: str) -> Callable[[Path, FakeSmtp], None]:
    def prep(spool: Path, hop: FakeSmtp) -> None:
        text = f"ForwardToAddress: {value.replace('PORT', str(hop.port))}\r\n"
        for p in spool.glob("*.envelope"):
            p.write_bytes(p.read_bytes().replace(b"ForwardToAddress: \r\n", text.encode()))

    return prep


ROUTES: dict[str, tuple[Callable[[Path, FakeSmtp], None] | None, tuple[str, ...]]] = {
    "forward-to-address": (_forward_to_address("127.0.0.1:PORT"), ("--as-client", "127.0.0.1:9")),
    "forward-to-address-name": (_forward_to_address("localhost:PORT"), ("--as-client", "127.0.0.1:9")),
    "forward-to-address-unreachable": (_forward_to_address("127.0.0.1:9"), ("--as-client", "HOP")),
    "local-only": (_local_only, ("--as-client", "HOP")),
    "client-interface": (None, ("--as-client", "HOP", "--client-interface", "127.0.0.1")),
    "client-interface-not-local": (None, ("--as-client", "HOP", "--client-interface", "192.0.2.1")),
    "client-interface-ipv6": (None, ("--as-client", "HOP", "--client-interface", "::")),
    "client-interface-ipv4": (None, ("--as-client", "HOP", "--client-interface", "0.0.0.0")),
    "unix-forward-to": (None, ("--as-client", "/nonexistent/smtp.s")),
}


#: cases whose error lines differ (found by this regrade, not recorded decisions): case ->
#: (ours's exit code and error line, upstream's)
ROUTE_DIFFERENCES: dict[str, tuple[tuple[int, str], tuple[int, str]]] = {
    "forward-to-address-unreachable": (
        (1, "emailrelay: error: connect failure: cannot connect to 127.0.0.1:N"),
        (0, "emailrelay: warning: smtp connection failed: connect failure: cannot connect to 127.0.0.1:N"),
    ),
    "client-interface-not-local": (
        (1, "emailrelay: error: connect failure: cannot connect to 127.0.0.1:PORT"),
        (1, "emailrelay: error: socket bind error: cannot assign requested address"),
    ),
    "client-interface-ipv6": (
        (1, "emailrelay: error: connect failure: cannot connect to 127.0.0.1:PORT"),
        (1, "emailrelay: error: invalid address family"),
    ),
    "unix-forward-to": (
        (1, "emailrelay: error: connect failure: cannot connect to /nonexistent/smtp.s"),
        (
            1,
            "emailrelay: error: connect failure: cannot connect to /nonexistent/smtp.s: no such file or directory",
        ),
    ),
}


@pytest.mark.parametrize("case", list(ROUTES))
def test_routing_and_client_interface(tmp_path: Path, case: str) -> None:
    """``--as-client`` over one spooled message changed as the case says: what the next hop
    received and the spool left (``.bad`` or not) are compared; the exit code and the warning and
    error lines too, but for the cases of :data:`ROUTE_DIFFERENCES`, where each side's is asserted.
    Left out: upstream's stray ``smtp client error: done`` warning at the end of some runs."""
    prep, args = ROUTES[case]
    got: dict[str, tuple[int, int, list[str], list[str]]] = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        with FakeSmtp(extensions=NO_PIPELINING) as hop:
            spool = spool_dir(base / side / "spool")
            _write(spool, [["b@example.net"]], int(time.time()))
            if prep is not None:
                prep(spool, hop)
            argv = [a.replace("HOP", hop.address) for a in args]
            done = subprocess.run(
                [program(side), *argv, "--spool-dir", str(spool), "--log", "--no-syslog"],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            log = normalise_log((done.stdout + done.stderr).decode(errors="replace"), ports=[hop.port])
            problems = [
                x for x in log if ("warning" in x or "error" in x) and "smtp client error: done" not in x
            ]
            left = sorted(re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", p.name) for p in spool.iterdir()
                          if not p.name.startswith("."))  # fmt: skip
            got[side] = (done.returncode, len(hop.messages), left, problems)
    if case not in ROUTE_DIFFERENCES:
        _assert_same(got)  # type: ignore[arg-type]
        return
    _assert_same({side: got[side][1:3] for side in SIDES})
    for side, (rc, line) in zip(SIDES, ROUTE_DIFFERENCES[case], strict=True):
        assert (got[side][0], got[side][3][-1]) == (rc, line), got


# ---- listening addresses: interface names, wildcards, unix domain sockets --------------------------


@pytest.mark.parametrize(
    "interface",
    ["lo", "lo-ipv4", "lo-ipv6", "0.0.0.0", "::", "smtp=lo-ipv4,pop=lo-ipv6,admin=lo-ipv6",
     "smtp=127.0.0.1,pop=127.0.0.1,admin=127.0.0.1"],
)  # fmt: skip
def test_interface_forms_listen_where_upstream_does(tmp_path: Path, interface: str) -> None:
    """The ``server on`` lines and which of 127.0.0.1 and ::1 each service answers on."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        admin, pop = free_port(), free_port()
        relay = start(side, base, "--interface", interface, "--admin", str(admin), "--pop", "--pop-port", str(pop),
                      "--pop-auth", "/dev/null", wait=False)  # fmt: skip
        try:
            wait_until(lambda r=relay: r.log().count(" server on ") >= 3 or r.proc.poll() is not None, 20)
            time.sleep(0.5)
            answers = {}
            for name, port in (("smtp", relay.port), ("pop", pop), ("admin", admin)):
                for host in ("127.0.0.1", "::1"):
                    try:
                        with socket.create_connection((host, port), timeout=5):
                            answers[f"{name} {host}"] = True
                    except OSError:
                        answers[f"{name} {host}"] = False
        finally:
            relay.stop()
        lines = sorted(
            x for x in normalise_log(relay.log(), ports=[relay.port, admin, pop]) if " server on " in x
        )
        got[side] = (answers, lines)
    _assert_same(got)


def test_unix_domain_listening_sockets(tmp_path: Path) -> None:
    """``--interface=smtp=<path> --port=0 --interface=pop=<path> --pop --pop-port=0``: the ``server on``
    lines and an SMTP session over the socket."""
    base = daemon_base(tmp_path)
    secrets = _readable(base / "pop.auth", "server plain alice pw\n")
    got = {}
    for side in SIDES:
        home = base / side
        spool = spool_dir(home / "spool")
        smtp_s, pop_s = home / "smtp.s", home / "pop.s"
        with open(home / "log", "wb") as log:
            proc = subprocess.Popen(
                [program(side), "--no-daemon", "--log", "--no-syslog", "--verbose", "--spool-dir", str(spool),
                 f"--interface=smtp={smtp_s}", "--port=0", f"--interface=pop={pop_s}", "--pop", "--pop-port=0",
                 "--pop-auth", str(secrets)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home,
            )  # fmt: skip
        try:
            assert wait_until(lambda a=smtp_s, b=pop_s: a.exists() and b.exists(), 20)
            time.sleep(0.5)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(smtp_s))
                reader = sock.makefile("rb")
                replies = [_greeting(read_reply(reader))]
                for line in ["EHLO c", *MESSAGE, "QUIT"]:
                    sock.sendall(line.encode() + b"\r\n")
                    replies.append(read_reply(reader))
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(pop_s))
                pop_greeting = sock.makefile("rb").readline()[:3]
        finally:
            proc.terminate()
            proc.wait(15)
        lines = [
            x.replace(str(home), "HOME")
            for x in normalise_log((home / "log").read_text())
            if " server on " in x
        ]
        got[side] = (replies[:-1], pop_greeting, sorted(lines), len(list(spool.glob("*.content"))))
    _assert_same(got)


def test_poll_forwards_a_new_message_sooner_than_upstream(tmp_path: Path) -> None:
    """``--poll=3600``: upstream forwards a new message at the next poll (not within the test);
    ours forwards it once it is committed (docs/decisions.md, "Forwarding")."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        with (
            FakeSmtp(extensions=NO_PIPELINING) as hop,
            start(side, base, "--forward-to", hop.address, "--poll", "3600") as relay,
        ):
            replies = smtp_dialogue(relay.port, ["EHLO c", *MESSAGE, "QUIT"])
            hop.wait_for_messages(1, timeout=10 if side == "ours" else 3)
            got[side] = (replies[-2][:3], len(hop.messages), len(list(relay.spool.glob("*.envelope"))))
    assert got["upstream"] == ("250", 0, 1)
    assert got["ours"] == ("250", 1, 0)


@pytest.mark.parametrize(
    "dnsbl",
    ["spam.example.com,block.example.com,1,500,127.0.0.1:DEAD", "spam.example.com,block.example.com",
     "127.0.0.1:DEAD,500,1,spam.example.com,block.example.com", "spam.example.com,block.example.com,0",
     "spam.example.com,block.example.com,1,-5000"],
)  # fmt: skip
def test_guide_dnsbl_forms_leave_loopback_clients_alone(tmp_path: Path, dnsbl: str) -> None:
    """The guide's ``--dnsbl`` forms (its DNS server a port where nothing answers): both relays start
    and a loopback client is served without a lookup; the session and the dnsbl log lines."""
    base = daemon_base(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        spec = dnsbl.replace("DEAD", str(dead.getsockname()[1]))
        got = {}
        for side in SIDES:
            with start(side, base, "--remote-clients", "--dnsbl", spec) as relay:
                replies = list(map(_greeting, smtp_dialogue(relay.port, ["EHLO c", *MESSAGE, "QUIT"])))
                log = [x for x in normalise_log(relay.log(), relay) if "dnsbl" in x.lower()]
            got[side] = (replies, log)
    _assert_same(got)


#: what a service manager (or the guide's shell redirection) does: listening sockets at fds 5 and 6
DUP_AND_EXEC = "import os, sys; os.dup2(int(sys.argv[1]), 5); os.dup2(int(sys.argv[2]), 6); os.execv(sys.argv[3], sys.argv[3:])"


def test_socket_activation_descriptors(tmp_path: Path) -> None:
    """``--interface=smtp=fd#5,pop=fd#6`` with listening sockets put there by a shell redirection:
    the ``server on`` lines and a session on each."""
    base = daemon_base(tmp_path)
    secrets = _readable(base / "pop.auth", "server plain alice pw\n")
    got = {}
    for side in SIDES:
        home = base / side
        spool = spool_dir(home / "spool")
        with socket.create_server(("127.0.0.1", 0)) as smtp, socket.create_server(("127.0.0.1", 0)) as pop:
            fds = (smtp.fileno(), pop.fileno())
            with open(home / "log", "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-c", DUP_AND_EXEC, str(fds[0]), str(fds[1]), program(side), "--no-daemon", "--log",
                     "--no-syslog", "--verbose", "--spool-dir", str(spool), "--interface=smtp=fd#5,pop=fd#6",
                     "--pop", "--pop-auth", str(secrets)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=home, pass_fds=fds,
                )  # fmt: skip
            try:
                assert wait_until(lambda p=proc, h=home: (h / "log").read_text().count(" server on ") >= 2
                                  or p.poll() is not None, 20)  # fmt: skip
                replies = list(
                    map(_greeting, smtp_dialogue(smtp.getsockname()[1], ["EHLO c", *MESSAGE, "QUIT"]))
                )
                with socket.create_connection(pop.getsockname(), timeout=10) as sock:
                    pop_greeting = sock.makefile("rb").readline()[:3]
            finally:
                proc.terminate()
                proc.wait(15)
        lines = sorted(x for x in normalise_log((home / "log").read_text()) if " server on " in x)
        got[side] = (replies, pop_greeting, lines, len(list(spool.glob("*.content"))))
    _assert_same(got)


@pytest.mark.parametrize(
    ("kind", "unix"), [("spam", False), ("spam-edit", False), ("spam", True), ("spam-edit", True)],
    ids=["spam-tcp", "spam-edit-tcp", "spam-unix", "spam-edit-unix"],
)  # fmt: skip
def test_spam_filters(tmp_path: Path, kind: str, unix: bool) -> None:
    """``--filter=spam:`` / ``spam-edit:`` against the fake spamd (which answers with bare LF line
    ends), over TCP and a unix domain socket: a ham and a GTUBE message.  Compared: which messages
    are accepted and stored, and spam-edit's requests.  Differences found by this regrade (not
    recorded decisions), each side asserted: for ``spam:`` upstream sends ``PROCESS`` and refuses
    spam with ``452 rejected``, ours sends ``CHECK`` and says ``452 spam``; ``spam-edit:`` stores
    spamd's answer as it comes (bare LF, the Received line below spamd's headers) where ours
    stores it with CR-LF line ends."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        path = str(base / f"spamd-{side}.s") if unix else None
        with fake_spamd(path) as spamd:
            if path:
                Path(path).chmod(0o777)  # the relay asks as daemon
            with start(side, base, "--filter", f"{kind}:{spamd.address}") as relay:
                replies = []
                for body in ("ham", GTUBE.decode()):
                    r = smtp_dialogue(relay.port, ["EHLO c", *MESSAGE[:3], f"Subject: s\r\n\r\n{body}\r\n.", "QUIT"])  # fmt: skip
                    replies.append(r[-2])
                time.sleep(0.3)
                contents = sorted(
                    re.sub(rb"(?m)^Received: [^\n]*\n", b"", p.read_bytes())
                    for p in relay.spool.glob("*.content")
                )
            commands = sorted(command for command, _ in spamd.requests)
        got[side] = (replies, commands, contents)
    ours, upstream = got["ours"], got["upstream"]
    if kind == "spam-edit":
        assert ours[:2] == upstream[:2] == (["250 message processed"] * 2, ["PROCESS", "PROCESS"])
        assert [c.replace(b"\r\n", b"\n") for c in ours[2]] == upstream[2]
        assert all(b"\r\n" not in c for c in upstream[2]) and all(
            b"\n" not in c.replace(b"\r\n", b"") for c in ours[2]
        )
        assert any(b"X-Spam-Flag: YES" in c for c in ours[2])
        return
    assert ours[2] == upstream[2] == [b"Subject: s\r\n\r\nham\r\n"]
    assert upstream[:2] == (["250 message processed", "452 rejected"], ["PROCESS", "PROCESS"])
    assert ours[:2] == (["250 message processed", "452 spam"], ["CHECK", "CHECK"])


def test_net_filter_over_a_unix_domain_socket(tmp_path: Path) -> None:
    """``--filter=net:<path>``: the request line and the answer's effect, as over TCP."""
    base = daemon_base(tmp_path)
    got = {}
    for side in SIDES:
        path = base / f"filter-{side}.s"
        requests: list[str] = []
        with socket.socket(socket.AF_UNIX) as server, start(side, base, "--filter", f"net:{path}") as relay:
            server.bind(str(path))
            path.chmod(0o777)
            server.listen()
            with socket.create_connection(("127.0.0.1", relay.port), timeout=15) as client:
                reader = client.makefile("rb")
                read_reply(reader)
                for line in ["EHLO c", *MESSAGE]:
                    client.sendall(line.encode() + b"\r\n")
                    if line.startswith("Subject"):
                        conn, _ = server.accept()
                        with conn:
                            requests.append(
                                conn.makefile("rb").readline().decode().replace(str(base), "BASE")
                            )
                            conn.sendall(b"550 no thanks\n")
                    reply = read_reply(reader)
        got[side] = (
            reply,
            [re.sub(r"/(ours|upstream)/spool/emailrelay\.\d+\.\d+\.\d+", "/SIDE/ID", r) for r in requests],
        )
    _assert_same(got)


def test_forward_through_a_socks4a_proxy(tmp_path: Path) -> None:
    """``--forward-to <name>:<port>@<proxy>``: what the SOCKS proxy was asked (the unresolved name)
    and what the next hop got."""
    got = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        with FakeSmtp(extensions=NO_PIPELINING) as hop, socks_server() as proxy:
            spool = spool_dir(base / side / "spool")
            _write(spool, [["b@example.net"]], int(time.time()))
            done = subprocess.run(
                [program(side), "--as-client", f"localhost:{hop.port}@{proxy.address}", "--spool-dir", str(spool)],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            asked = [(v, h, p == hop.port) for v, h, p in proxy.requests]
            got[side] = (
                done.returncode,
                asked,
                len(hop.messages),
                sorted(p.name for p in spool.glob("emailrelay.*")),
            )
    _assert_same(got)
    assert got["ours"][2] == 1


#: a script filter's cases (tests/support/filter_recorder.py): editing the files, and the reason
#: after so many characters of output
EDIT = 'sed -i "s/^Subject: edit/Subject: edited/" "$1"; sed -i "s/^X-MailRelay-ForwardTo: /X-MailRelay-ForwardTo: x.example/" "$2"'
SCRIPT_CASES: dict[str, Case] = {
    "edit": ("", 0, EDIT),
    "chatty2k": ("x" * 2000 + "\n<<late 2k>>\n", 1, ""),
    "chatty10k": ("x" * 10000 + "\n<<late 10k>>\n", 1, ""),
    "chatty100k": ("x" * 100000 + "\n<<late 100k>>\n", 1, ""),
}


def test_filter_script_edits_and_long_output(tmp_path: Path) -> None:
    """A ``--filter`` script that edits the content and the envelope (the stored files), and ones
    whose ``<<reason>>`` comes after 2 000, 10 000 and 100 000 characters of output (the replies)."""
    got: dict[str, object] = {}
    for side in SIDES:
        base = daemon_base(tmp_path if side == "ours" else None)
        script = recorder(base, SCRIPT_CASES)
        replies, spool, _ = serve_cases(side, base, SCRIPT_CASES, "--filter", str(script))
        got[side] = ({case: reply for case, (reply, _) in replies.items()}, spool)
    assert got["ours"][1] == got["upstream"][1]  # type: ignore[index]
    # found by this regrade (not a recorded decision): upstream finds no reason after 2 000
    # characters of output, ours searches the first 64 KiB
    assert got["upstream"][0] == {  # type: ignore[index]
        "edit": "250 message processed", "chatty2k": "452 rejected", "chatty10k": "452 rejected",
        "chatty100k": "452 rejected",
    }  # fmt: skip
    assert got["ours"][0] == {  # type: ignore[index]
        "edit": "250 message processed", "chatty2k": "452 late 2k", "chatty10k": "452 late 10k",
        "chatty100k": "452 rejected",
    }  # fmt: skip
    assert any("Subject: edited" in x for x in got["ours"][1])  # type: ignore[index]
    assert any("ForwardTo: x.example" in x for x in got["ours"][1])  # type: ignore[index]


def test_net_client_filter(tmp_path: Path) -> None:
    """``--client-filter=net:<address>``: an ``ok`` message is sent, a refused one fails (``.bad``
    with the reason); what the net: server was asked, the next hop's messages, the spool."""
    got = {}
    with line_server(
        lambda line: (
            "ok\n" if "emailrelay.4242." in line and line.strip().endswith(".1.content") else "550 no way\n"
        )
    ) as (port, requests):
        for side in SIDES:
            base = daemon_base(tmp_path if side == "ours" else None)
            with FakeSmtp(extensions=NO_PIPELINING) as hop:
                spool = spool_dir(base / side / "spool")
                _write(spool, [["b@example.net"], ["c@example.net"]], int(time.time()))
                done = subprocess.run(
                    [program(side), "--as-client", hop.address, "--spool-dir", str(spool),
                     "--client-filter", f"net:127.0.0.1:{port}"],
                    capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
                )  # fmt: skip
                got[side] = (done.returncode, len(hop.messages), spool_summary(spool),
                             [re.sub(r"\S*/spool/emailrelay\.\d+\.\d+\.", "SPOOL/ID.", r) for r in requests])  # fmt: skip
            requests.clear()
    _assert_same(got)
