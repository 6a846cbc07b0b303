"""The admin interface against E-MailRelay 2.6b: every command's reply, byte for byte (issue 17, item 12).

What it checks: the same admin sessions against both relays (started as root
with the default ``--user daemon``, ours supervised), raw bytes compared: the
upstream commands with odd forms (upper case, extra words, empty lines,
unknown commands), ``notify`` (no reply), ``terminate`` with and without
``--admin-terminate``, and ``flush``/``forward``/``list``/``failures``/
``unfail-all`` over a spool with ready and failed messages while the next
hop is down, rejects, and accepts. Masked on purpose (docs/decisions.md,
"--version"): ``info version`` and ``info copyright``; ``help`` lists our
commands beside upstream's in the same format. Not compared: ``status``
(its counters are upstream's per-process ones) and ``dnsbl``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from emailrelay import COPYRIGHT, PRODUCT_VERSION, __version__
from emailrelay.services.admin import OUR_COMMANDS
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import (
    SIDES,
    Daemon,
    daemon_base,
    needs_oracle,
    normalise_log,
    normalise_text,
    run,
    smtp_dialogue,
    start,
)
from tests.support.relay import free_port, wait_until
from tests.support.sink_counter import PROMPT, AdminClient

pytestmark = [needs_oracle, pytest.mark.timeout(180)]

Replies = list[tuple[str, bytes]]

PLAIN_COMMANDS = [
    "help", "HELP", "help me", "info", "info foo", "info credit", "info warranty", "info version",
    "info copyright", "list", "LIST", "list x", "failures", "failures x", "pid", "pid x", "smtp",
    "smtp foo", "smtp disable", "smtp enable", "smtp disable now", "smtp enable", "unfail-all",
    "unfail-all x", "flush", "forward", "forward now", "", "  ", "bogus", "bogus with args", "dnsbl",
    "dnsbl start", "dnsbl stop", "dnsbl stop 10", "dnsbl start x", "dnsbl foo", "dnsbl stop x", "status",
    # any case, and words after info's topic: found by a probe (ours answered with the usage line)
    "INFO CREDIT", "info Warranty extra", "SMTP DISABLE", "smtp Enable", "DNSBL STOP", "dnsbl START",
]  # fmt: skip
COUNTER = re.compile(rb"^((?:IN|OUT) (?:started|finished): )\d+$")
ADMIN_LOG = re.compile(r"admin connection|terminate command|dnsbl")


def _session(port: int, commands: list[str], *, last_closes: bool = False) -> Replies:
    """Each command with its reply: up to the prompt, or all until EOF for ``quit`` and, when
    ``last_closes``, for the last command."""
    out: Replies = []
    with AdminClient(port) as admin:
        for i, command in enumerate(commands):
            if command.split()[:1] == ["quit"] or (last_closes and i == len(commands) - 1):
                admin.sock.sendall(command.encode() + b"\r\n")
                out.append((command, admin.read_all(15)))
            else:
                out.append((command, admin.cmd(command)))
    return out


def _masked(side: str, replies: Replies, daemon: Daemon) -> Replies:
    """Our deliberate differences replaced by upstream's shape, after checking ours."""
    out: Replies = []
    for command, reply in replies:
        if side == "ours" and command in ("info version", "info copyright"):
            text = (
                f"{PRODUCT_VERSION} (emailrelay-python {__version__})" if "version" in command else COPYRIGHT
            )
            assert reply == text.encode() + b"\r\n" + PROMPT, (command, reply)
            reply = b"<masked>"
        elif side == "upstream" and command in ("info version", "info copyright"):
            assert reply.endswith(b"\r\n" + PROMPT) and reply.count(b"\r\n") == 1, (command, reply)
            reply = b"<masked>"
        elif command.split()[:1] == ["pid"]:
            assert reply == f"{daemon.pid_from_file()}\r\n".encode() + PROMPT, (side, reply)
            reply = b"<pid>"
        elif command.lower().split()[:1] == ["help"] and side == "ours":
            names = reply.removeprefix(b"commands: ").removesuffix(b"\r\n" + PROMPT).decode().split(", ")
            assert names == sorted(names), names
            upstream_names = sorted(set(names) - set(OUR_COMMANDS))
            reply = b"commands: " + ", ".join(upstream_names).encode() + b"\r\n" + PROMPT
        elif command == "status":  # the listening addresses in any order; counts depend on timing
            text = normalise_text(reply.removesuffix(b"\r\n" + PROMPT).decode(), daemon)
            lines = text.encode().split(b"\r\r\n")
            listen = sorted(x for x in lines if x.startswith(b"LISTEN: "))
            rest = [COUNTER.sub(rb"\1N", x) for x in lines if not x.startswith(b"LISTEN: ")]
            reply = b"\r\r\n".join(listen + rest) + b"\r\n" + PROMPT
        out.append((command, normalise_text(reply.decode("utf-8", "replace"), daemon).encode()))
    return out


def _plain(side: str, base: Path) -> tuple[Replies, bytes, int | None, list[str]]:
    """No --forward-to, --admin-terminate: (replies, what notify got, exit code after terminate, log)."""
    admin_port = free_port()
    with start(side, base, "--admin", str(admin_port), "--admin-terminate") as daemon:
        replies = _masked(side, _session(admin_port, [*PLAIN_COMMANDS, "quit"]), daemon)
        smtp_dialogue(daemon.port, ["QUIT"])  # (ours: the smtp role is up, its first events are out)
        time.sleep(0.3)
        with AdminClient(admin_port) as watcher:
            watcher.sock.sendall(b"notify\r\n")
            watcher.sock.settimeout(1.0)
            try:
                notified = watcher.sock.recv(100)
            except TimeoutError:
                notified = b"<nothing>"
            smtp_dialogue(daemon.port, ["QUIT"])  # an smtp client comes and goes: two events
            notified += b"|" + watcher.read_until(b"EVENT: network: in: stop  ", 10)
        replies += _session(admin_port, ["terminate now"], last_closes=True)
        rc = daemon.proc.wait(15)
        log = [
            x for x in normalise_log(daemon.log(), ports=[admin_port]) if ADMIN_LOG.search(x)
        ]  # (no pid file now)
    return replies, notified, rc, log


def test_admin_commands_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    got = {side: _plain(side, base) for side in SIDES}
    ours, upstream = got["ours"], got["upstream"]
    assert ours[0] == upstream[0]
    # notify: no reply, no prompt; then upstream's network events
    assert (
        ours[1] == upstream[1] == b"<nothing>|\r\nEVENT: network: in: start  \r\nEVENT: network: in: stop  "
    )
    assert ours[2] == upstream[2] == 0  # terminate: the relay stops, exit 0
    assert ours[3] == upstream[3], (ours[3], upstream[3])
    assert "emailrelay: info: received a terminate command from 127.0.0.1:N" in ours[3]


def _submit(side: str, spool: Path, count: int) -> list[str]:
    """``count`` messages submitted by ``side``'s emailrelay-submit: their ids."""
    for i in range(count):
        r = run(side, "emailrelay-submit", "--spool-dir", str(spool), "--from", "a@b.example", "x@y.example",
                input=f"Subject: m{i}\r\n\r\nhello\r\n".encode())  # fmt: skip
        assert r.returncode == 0, r.stderr
    for path in spool.iterdir():
        path.chmod(0o660)
    return sorted(p.name.removesuffix(".envelope") for p in spool.glob("*.envelope"))


def _forwarding(side: str, base: Path) -> tuple[Replies, list[str]]:
    """Two ready messages and one failed; the next hop is down, then rejects, then accepts."""
    admin_port, hop_port = free_port(), free_port()
    home = base / side / "spool"
    home.mkdir(parents=True)
    ids = _submit(side, home, 3)
    (home / f"{ids[2]}.envelope").rename(home / f"{ids[2]}.envelope.bad")
    with open(home / f"{ids[2]}.envelope.bad", "ab") as f:
        f.write(b"X-MailRelay-Reason: earlier failure\r\nX-MailRelay-ReasonCode: 550\r\n")
    replies: Replies = []
    with start(side, base, "--admin", str(admin_port), "--forward-to", f"127.0.0.1:{hop_port}") as daemon:
        if side == "ours":  # our forward role tries what is there at start (decisions.md): let it fail first
            assert wait_until(lambda: "forwarding [emailrelay." in daemon.log(), 20), daemon.log()
            assert wait_until(lambda: not list(daemon.spool.glob("*.busy")), 10)  # (its claim ended)
            time.sleep(2.0)  # (the roles' bus subscriptions settle: an admin command sent earlier is lost)
        replies += _session(admin_port, ["smtp enable", "list", "failures", "flush", "list"])
        with FakeSmtp(port=hop_port, replies={"final": "554 5.7.1 not here\n554 really not"}) as hop:
            replies += _session(admin_port, ["flush", "list", "failures", "flush"])
            hop.replies["final"] = "250 2.0.0 queued"
            replies += _session(admin_port, ["unfail-all", "list", "failures", "forward"])
            assert hop.wait_for_messages(3, 20), (side, daemon.log())
            # (the next hop counts a message before its 250 reaches the relay, which then removes it)
            assert wait_until(lambda: not list(daemon.spool.glob("*.envelope*")), 10), side
            replies += _session(admin_port, ["flush", "terminate", "quit"])
        spool = sorted(p.name for p in daemon.spool.iterdir() if p.is_file())
        return [(c, normalise_text(r.decode(), daemon, ports=[hop_port]).encode()) for c, r in replies], spool


def test_flush_and_forward_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    got = {side: _forwarding(side, base) for side in SIDES}
    (ours, ours_spool), (upstream, up_spool) = got["ours"], got["upstream"]
    # "flush" while the next hop is down: the error that ended the session
    assert upstream[3] == ("flush", b"error: connect failure: cannot connect to 127.0.0.1:PORT\r\n" + PROMPT)
    assert ours == upstream
    assert [r for c, r in upstream if c == "flush"][1:] == [
        b"OK\r\n" + PROMPT, b"error: no messages to send\r\n" + PROMPT, b"error: no messages to send\r\n" + PROMPT,
    ]  # fmt: skip
    assert ours_spool == up_spool == []
