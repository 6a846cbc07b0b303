"""A spool the relay cannot write, a claim it cannot take (7 Dec 2026 unwritable follow-up).

What it is for: what E-MailRelay 2.6b does with a spool made immutable (``chattr +i``: not even
root may rename in it), compared with ours, and checked on ours alone so that a clone without the
oracle tests it too.  Needs root and a ``chattr`` the file system supports (skipped otherwise);
every ``chattr +i`` is undone in a ``finally``.

- ``--as-client`` warns ``directory not writable: "<spool>"`` and runs on (it exited 1): each
  message it cannot claim is ``warning: cannot lock file: "<envelope>"`` and stays as it is; a
  pass that claimed nothing ends with ``warning: smtp client error: done``, no connection is made,
  and the exit code is 0.  An envelope alone that cannot be renamed is skipped with the same
  warning while the others are forwarded.
- The forwarder of a serving relay says the same at each pass (it said nothing).
- The admin's ``unfail-all`` answers with the prompt alone (it answered a raw ``error: [Errno
  1] ...``), ``flush`` and ``forward`` with ``OK``, ``list`` and ``failures`` as usual.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.diff_forwarding import NO_PIPELINING, B, C, D, write_messages
from tests.support.fake_smtp import FakeSmtp
from tests.support.oracle import (
    SIDES,
    daemon_base,
    needs_oracle,
    normalise_log,
    normalise_text,
    program,
    spool_dir,
    start,
)
from tests.support.relay import free_port, wait_until
from tests.support.sink_counter import PROMPT, AdminClient

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None, reason="needs root and chattr"),
]

STAMP = 1765100000
LOCK = 'emailrelay: warning: cannot lock file: "emailrelay.ID.envelope"'
DONE = "emailrelay: warning: smtp client error: done"


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on ``paths`` for the block (skips the test where it is not supported)."""
    done: list[Path] = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode:
                pytest.skip(f"chattr +i is not supported on {path}")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=False)


@dataclass
class ClientRun:
    rc: int
    log: list[str]
    files: list[str]
    connections: int
    messages: int


def _as_client(side: str, base: Path, whole_spool: bool) -> ClientRun:
    """Three messages; ``--as-client`` with the spool (or the second envelope alone) immutable."""
    home = base / side
    spool = spool_dir(home / "spool")
    names = write_messages(spool, [[B], [C], [D]], STAMP)
    locked = [spool] if whole_spool else [spool / f"{names[1]}.envelope"]
    argv = [program(side), "--as-client", "", "--spool-dir", str(spool), "--log-time", "--verbose"]
    with FakeSmtp(extensions=NO_PIPELINING) as hop, immutable(*locked):
        argv[2] = f"127.0.0.1:{hop.port}"
        done = subprocess.run(
            argv, capture_output=True, timeout=90, cwd=home, stdin=subprocess.DEVNULL, check=False
        )
        text = (done.stdout + done.stderr).decode(errors="replace").replace(str(spool), "SPOOL")
        files = sorted(normalise_text(p.name) for p in spool.iterdir() if not p.name.startswith("."))
        return ClientRun(
            done.returncode, normalise_log(text, ports=[hop.port]), files, hop.connections, len(hop.messages)
        )


def _check_unwritable_spool(run: ClientRun) -> None:
    assert run.log == [
        'emailrelay: warning: directory not writable: "SPOOL"',
        "emailrelay: info: forwarding to 127.0.0.1:PORT",
        "emailrelay: info: forwarding: [startup]",
        LOCK,
        LOCK,
        LOCK,
        DONE,
    ], run.log
    assert (run.rc, run.connections, run.messages) == (0, 0, 0)
    assert run.files == ["emailrelay.ID.content"] * 3 + ["emailrelay.ID.envelope"] * 3


def _check_one_envelope_locked(run: ClientRun) -> None:
    assert LOCK in run.log and DONE not in run.log, run.log
    assert "emailrelay: info: forwarding: no more messages to send" in run.log, run.log
    assert (run.rc, run.connections, run.messages) == (0, 1, 2)
    assert run.files == ["emailrelay.ID.content", "emailrelay.ID.envelope"]


@needs_oracle
@pytest.mark.parametrize("whole_spool", [True, False], ids=["spool", "envelope"])
def test_as_client_unwritable_as_upstream(tmp_path: Path, whole_spool: bool) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_as_client(side, base, whole_spool) for side in SIDES)
    assert ours == upstream
    (_check_unwritable_spool if whole_spool else _check_one_envelope_locked)(ours)


@pytest.mark.parametrize("whole_spool", [True, False], ids=["spool", "envelope"])
def test_ours_as_client_unwritable(tmp_path: Path, whole_spool: bool) -> None:
    run = _as_client("ours", daemon_base(tmp_path), whole_spool)
    (_check_unwritable_spool if whole_spool else _check_one_envelope_locked)(run)


ADMIN_COMMANDS = ["list", "failures", "unfail-all", "list", "failures", "flush", "forward"]


def _admin(side: str, base: Path) -> tuple[list[bytes], list[str], list[str]]:
    """A ready message and a failed one written after the start, the spool made immutable, then
    the admin commands: their replies, the log lines from the first command on, the files after."""
    admin = free_port()
    with FakeSmtp(extensions=NO_PIPELINING) as hop:
        with start(side, base, "--admin", str(admin), "--forward-to", f"127.0.0.1:{hop.port}") as daemon:
            time.sleep(2.0)  # (ours: the roles' bus subscriptions settle)
            _, failed = write_messages(daemon.spool, [[B], [C]], STAMP)
            bad = daemon.spool / f"{failed}.envelope"
            bad.write_bytes(bad.read_bytes() + b"X-MailRelay-Reason: x\r\nX-MailRelay-ReasonCode: 550\r\n")
            bad.rename(bad.with_name(bad.name + ".bad"))
            mark = len(daemon.log().splitlines())
            with immutable(daemon.spool), AdminClient(admin) as client:
                replies = [client.cmd(c, 30) for c in ADMIN_COMMANDS]
                wait_until(lambda: daemon.log().count("smtp client error: done") >= 2, 15)
            text = "\n".join(daemon.log().splitlines()[mark:])
            log = normalise_log(text, ports=[admin, hop.port], drop=["admin connection", "smtp connection"])
            files = sorted(
                normalise_text(p.name) for p in daemon.spool.iterdir() if not p.name.startswith(".")
            )
        assert hop.connections == 0
    return [normalise_text(r.decode()).encode() for r in replies], log, files


def _check_admin(replies: list[bytes], log: list[str], files: list[str]) -> None:
    lines = [b"emailrelay.ID\r\n" + PROMPT, b"emailrelay.ID\r\n" + PROMPT, PROMPT]
    assert replies == lines + lines[:2] + [b"OK\r\n" + PROMPT] * 2
    assert log == [LOCK, DONE, "emailrelay: info: forwarding: [admin]", LOCK, DONE], log
    assert files == [
        "emailrelay.ID.content",
        "emailrelay.ID.content",
        "emailrelay.ID.envelope",
        "emailrelay.ID.envelope.bad",
    ]


@needs_oracle
def test_admin_on_unwritable_spool_as_upstream(tmp_path: Path) -> None:
    base = daemon_base(tmp_path)
    ours, upstream = (_admin(side, base) for side in SIDES)
    assert ours == upstream
    _check_admin(*ours)


def test_ours_admin_on_unwritable_spool(tmp_path: Path) -> None:
    _check_admin(*_admin("ours", daemon_base(tmp_path)))
