"""Envelopes E-MailRelay 2.6b reads that ours refused or read differently (7 Dec 2026 spool follow-up).

What it is for: a spool shared by both programs.  Hand-written envelopes, valid for upstream, are
forwarded by each side's ``--as-client`` to a fresh fake next hop, and what a user sees is compared
(exit code, log, spool after, what the next hop received).  Each scenario also runs on ours alone,
so a clone without the oracle still checks it.

- A failure reason after ``X-MailRelay-End`` holding a raw control character (a hand edit, an
  older writer) no longer makes the envelope unusable once the message is retried: upstream stops
  reading at ``End``; ours keeps the reason, its control characters escaped.
- Blanks (space, tab) around a field's value are not part of it, as upstream reads them: a tab
  after an address no longer goes into ``MAIL FROM``/``RCPT TO``.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from emailrelay.spool.store import CLAIM_MARK
from tests.support.diff_forwarding import ENVELOPE, NO_PIPELINING, Run, as_client, both, same
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import daemon_base, daemon_group, needs_oracle, smtp_dialogue, start
from tests.support.relay import wait_until

pytestmark = pytest.mark.timeout(180)

CONTENT = b"Subject: spool\r\n\r\nhello\r\n"
RCPT = "b@example.net"
PLAIN = ENVELOPE.format(count=1, to=f"X-MailRelay-To-Remote: {RCPT}\r\n").encode()
FORWARDED = ["EHLO 127.0.0.1", "MAIL FROM:<a@example.com> BODY=7BIT", f"RCPT TO:<{RCPT}>", "DATA", "."]

#: name -> envelope bytes; each is forwarded as PLAIN is, by both sides.
ENVELOPES = {
    "cr-in-reason-after-end": PLAIN + b"X-MailRelay-Reason: 5.7.1 a\rb\r\nX-MailRelay-ReasonCode: 550\r\n",
    "ctrl-in-reason-after-end": PLAIN + b"X-MailRelay-Reason: x\x01y\x1b[0m\r\nX-MailRelay-ReasonCode:\r\n",
    "tab-after-from": PLAIN.replace(b"From: a@example.com", b"From: a@example.com\t"),
    "blanks-before-from": PLAIN.replace(b"From: a@example.com", b"From:  \ta@example.com"),
    "tab-after-rcpt": PLAIN.replace(f"To-Remote: {RCPT}".encode(), f"To-Remote: {RCPT} \t".encode()),
    "space-before-rcpt": PLAIN.replace(f"To-Remote: {RCPT}".encode(), f"To-Remote:  {RCPT}".encode()),
}


def _prep(envelope: bytes) -> Callable[[Path], None]:
    """Write one message with ``envelope`` into a spool, as upstream's files (group daemon, 0660)."""

    def prep(spool: Path) -> None:
        name = f"emailrelay.4242.{int(time.time())}.1"
        (spool / f"{name}.envelope").write_bytes(envelope)
        (spool / f"{name}.content").write_bytes(CONTENT)
        for path in spool.iterdir():
            daemon_group(path, 0o660)

    return prep


def _hop() -> FakeSmtp:
    return FakeSmtp(extensions=NO_PIPELINING)


def _forwarded(run: Run) -> None:
    assert run.rc == 0
    assert run.spool == {}, run.log
    assert run.commands == FORWARDED
    assert run.messages == [CONTENT]


@needs_oracle
@pytest.mark.parametrize("name", list(ENVELOPES))
def test_forwarded_as_upstream(tmp_path: Path, name: str) -> None:
    _forwarded(same(both(tmp_path, _hop, [], prep=_prep(ENVELOPES[name]))))


@pytest.mark.parametrize("name", list(ENVELOPES))
def test_forwarded_by_ours(tmp_path: Path, name: str) -> None:
    with _hop() as hop:
        run = as_client(
            "ours", daemon_base(tmp_path), hop, [], stamp=int(time.time()), prep=_prep(ENVELOPES[name])
        )
    _forwarded(run)


def test_queue_tool_reads_a_reason_with_a_control_character(tmp_path: Path) -> None:
    """``emailrelay queue`` (and so the failed-mail helpers, which read envelopes the same way)
    shows such a failed message with its reason escaped, where it said "unreadable"."""
    from emailrelay.cli import queue

    spool = tmp_path / "spool"
    spool.mkdir()
    name = "emailrelay.4242.1700000000.1"
    (spool / f"{name}.envelope.bad").write_bytes(ENVELOPES["cr-in-reason-after-end"])
    (spool / f"{name}.content").write_bytes(CONTENT)
    out, err = io.StringIO(), io.StringIO()
    assert queue.main(["list", "--json", "--spool-dir", str(spool)], out=out, err=err) == 0
    (item,) = json.loads(out.getvalue())
    assert (item["error"], item["sender"]) == (None, "a@example.com")
    assert (item["reason"], item["reason_code"]) == ("5.7.1 a\\rb", "550")


# ---- leftovers at start: kept different (docs/decisions.md, "Crash leftovers") ------------------


def _leftovers(spool: Path) -> dict[str, str]:
    """A ready message, a claim left by a killed forwarder of ours (marked as ours: emailrelay/spool/store.py
    CLAIM_MARK), a crashed store an hour old, a failure."""
    spool.mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    names = {
        state: f"emailrelay.4242.{stamp}.{i}" for i, state in enumerate(("", ".busy", ".new", ".bad"), 1)
    }
    for state, name in names.items():
        (spool / f"{name}.envelope{state}").write_bytes(PLAIN)
        (spool / f"{name}.content").write_bytes(CONTENT)
    old = time.time() - 3600
    for path in spool.glob(f"{names['.new']}.*"):
        os.utime(path, (old, old))
    os.setxattr(spool / f"{names['.busy']}.envelope.busy", CLAIM_MARK, b"1")  # a claim of ours (marked)
    for path in spool.iterdir():
        daemon_group(path, 0o660)
    return names


def _start_with_leftovers(side: str, base: Path) -> tuple[dict[str, str], set[str], str]:
    names = _leftovers(base / side / "spool")
    with start(side, base) as relay:  # store only: no forwarding
        if side == "ours":
            wait_until(lambda: "recovered claim" in relay.log(), 15)
        smtp_dialogue(relay.port, ["QUIT"])
        log = relay.log()
    return names, {p.name for p in relay.spool.iterdir()}, log


def _ours_recovers(names: dict[str, str], files: set[str], log: str) -> None:
    assert f"{names['.busy']}.envelope" in files and f"{names['.busy']}.envelope.busy" not in files
    assert not any(f.startswith(f"{names['.new']}.") for f in files)
    assert f"recovered claim on [{names['.busy']}]: returned to the queue" in log
    assert f"removed incomplete message [{names['.new']}] left by a crash" in log
    assert f"{names['.bad']}.envelope.bad" in files


def test_ours_returns_a_dead_claim_and_removes_an_old_crashed_store_at_start(tmp_path: Path) -> None:
    _ours_recovers(*_start_with_leftovers("ours", daemon_base(tmp_path)))


@needs_oracle
def test_upstream_keeps_leftovers_at_start(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    _ours_recovers(*_start_with_leftovers("ours", base))
    names, files, log = _start_with_leftovers("upstream", base)
    assert {f"{names['.busy']}.envelope.busy", f"{names['.new']}.envelope.new"} <= files  # stranded
    assert "recovered" not in log and "removed" not in log
