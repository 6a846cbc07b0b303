"""The SMTP server's differential harness: the same dialogues against both relays, compared.

What it is for: tests/differential/ modules that compare our SMTP server with E-MailRelay 2.6b's
(test_smtp_server.py, test_smtp_server_more.py, test_more_isrv.py, test_guide_part3.py) start
one relay per side with the same options (:func:`run_dialogues`, :func:`both_dialogues`), run
each dialogue on a connection of its own, and compare the replies one by one
(:func:`assert_same_replies`), the stored envelopes and the normalised log (:func:`server_log`:
the start-up probe's session left out, our greeting's version as upstream's).  Also the
one-sided log lines left out on purpose (:data:`DROP`) and a server secrets file
(:func:`server_secrets`).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.oracle import SIDES, Daemon, normalise_log, smtp_dialogue, start
from tests.support.relay import wait_until

# decisions.md, "Greeting": our greeting names the version as our --version does
GREETING = {"ours": "E-MailRelay V2.6 -- ", "upstream": "E-MailRelay V2.6b -- "}
# lines only one side writes, on purpose: the supervisor's, and the content file's creation (at
# DATA for ours, at MAIL for upstream: decisions.md, "Storing")
DROP = (r": supervisor: ", r"new content file")


def b64(text: str) -> str:
    """``text`` (UTF-8) in base64, as an AUTH exchange sends it."""
    return base64.b64encode(text.encode()).decode()


def _envelopes(spool: Path) -> list[bytes]:
    """The committed envelopes in the order they were written, ids and dates normalised."""
    paths = sorted(spool.glob("*.envelope"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [re.sub(rb"emailrelay\.\d+\.\d+\.\d+", b"emailrelay.ID", p.read_bytes()) for p in paths]


def run_dialogues(
    side: str, base: Path, args: Sequence[str], dialogues: Sequence[Sequence[str]], name: str = ""
) -> tuple[list[list[str]], list[bytes], list[str]]:
    """Start ``side`` with ``args``, run each dialogue on its own connection: (replies, envelopes, log)."""
    with start(side, base, *args, name=f"{side}{name}") as d:
        replies = []
        for lines in dialogues:
            got = smtp_dialogue(d.port, lines)
            replies.append([r.replace(GREETING[side], "E-MailRelay -- ") for r in got])
        settle(d, len(dialogues))
        envelopes = _envelopes(d.spool)
        log = server_log(d)
    return replies, envelopes, log


def server_log(d: Daemon) -> list[str]:
    """The normalised log without the start-up probe's session (the harness connects and closes
    at once to see the port open; where its close line falls among the next session's lines is a
    race) and with our greeting's version as upstream's."""
    raw = d.log()
    # the probe's close line is told by its port, not its reason: closing at once races the
    # greeting's write, so upstream sometimes logs a write error rather than "peer disconnected"
    probe_port = re.search(r"smtp connection from 127\.0\.0\.1:(\d+)", raw)
    assert probe_port, raw
    probe_closed = re.compile(rf"smtp connection closed: .*127\.0\.0\.1:{probe_port[1]}$")
    raw = "\n".join(line for line in raw.splitlines() if not probe_closed.search(line))
    lines = [line.replace(GREETING[d.side], "E-MailRelay -- ") for line in normalise_log(raw, d, drop=DROP)]
    probe = lines.index("emailrelay: info: smtp connection from 127.0.0.1:N")
    del lines[probe : probe + 2]  # its "connection from" and its greeting
    return lines


def settle(d: Daemon, sessions: int) -> None:
    """Wait until every session (plus the start-up probe) has logged its close."""
    wait_until(lambda: d.log().count("smtp connection closed") >= sessions + 1, 10)
    time.sleep(0.2)


def both_dialogues(
    args: Sequence[str], dialogues: Sequence[Sequence[str]], base: Path, name: str = ""
) -> dict:
    """:func:`run_dialogues` for each side: side -> (replies, envelopes, log)."""
    return {side: run_dialogues(side, base, args, dialogues, name) for side in SIDES}


def assert_same_replies(got: dict, dialogues: Sequence[Sequence[str]]) -> None:
    """Every reply of every dialogue the same on both sides (of :func:`both_dialogues`' result)."""
    ours, upstream = got["ours"][0], got["upstream"][0]
    for lines, a, b in zip(dialogues, ours, upstream, strict=True):
        for command, x, y in zip(["<greeting>", *lines], a, b, strict=True):
            assert x == y, (command, x, y)
        assert len(a) == len(b), (lines, a, b)


def server_secrets(base: Path) -> Path:
    """``<base>/secrets``: two server accounts (me/secret, you/pw), readable by ``daemon``."""
    path = base / "secrets"
    path.write_text("server plain me secret\nserver plain you pw\n")
    path.chmod(0o644)
    return path
