"""The admin ``list``, ``failures`` and ``unfail-all`` against E-MailRelay 2.6b: the names in the spool.

What it checks: ``list`` names every ``<id>.envelope`` entry of the spool directory and
``failures`` every ``<id>.envelope.bad`` one, as upstream's: in the order of the file names
(bytes: ``emailrelay.1000.T.10`` before ``emailrelay.1000.T.9``, ``a.b`` before ``a``), whatever
the id (a tab, a line break or another control character, 230 characters, a byte that is not
UTF-8: sent as they are, but that a LF in a CR LF session goes as CR LF), with or without a
content file, a directory or a dangling symlink too; not a message being forwarded
(``.envelope.busy``, its claim's lock held), nor ``.new``, ``.held`` or ``.envelope.bad.x``.
``unfail-all`` renames every ``.bad`` whose id the store takes.  All three read the spool as
root, as upstream's: a spool that ``--user`` cannot read (mode 0730) is listed all the same.
The differential tests skip
without ``EMAILRELAY_ORACLE_BIN``; the ``ours_`` tests check our side alone (upstream's replies
are written out in them), so a user's clone tests it too.

Kept different (docs/decisions.md, "Spool ids"): an empty id (a file named ``.envelope``) is not
listed (upstream prints its spool directory's name in its place), and ``unfail-all`` leaves failed
the ids our store refuses (a control character, over 200 characters, empty), which upstream
renames.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.diff_forwarding import ENVELOPE, write_messages
from tests.support.oracle import SIDES, Daemon, daemon_base, daemon_group, needs_oracle, start
from tests.support.relay import free_port
from tests.support.sink_counter import PROMPT, AdminClient

pytestmark = [pytest.mark.timeout(120)]

LONG = "a" * 230
# (id, with a content file): ids whose order by name, by time and by number differ
READY = [
    ("emailrelay.100.1765000005.2", True), ("emailrelay.99.1765000009.1", True),
    ("emailrelay.1000.1765000001.10", True), ("emailrelay.1000.1765000001.9", True),
    ("emailrelay.8.1765000001.1", False), ("a", True), ("a.b", True), ("a-b", True), ("Zed", True),
    (LONG, True), ("x\ty", True), ("x y", True), ("x\ny", True), ("x\ry", True), ("x\x1by", True),
    ("\udcff", True), ("", True),
]  # fmt: skip
FAILED = ["emailrelay.6.1765000001.1", "bad\ttab", "b" * 230, "f"]
OTHERS = ["n.envelope.new", "h.envelope.held", "emailrelay.1.2.3.envelope.bad.x"]
BUSY = "emailrelay.5.1765000001.1.envelope.busy"
# upstream's order (E-MailRelay 2.6b, 7 Dec 2026), but for the empty id: see the header
LISTED = [
    b"Zed", b"a-b", b"a.b", b"a", LONG.encode(), b"d", b"emailrelay.100.1765000005.2",
    b"emailrelay.1000.1765000001.10", b"emailrelay.1000.1765000001.9", b"emailrelay.8.1765000001.1",
    b"emailrelay.99.1765000009.1", b"l", b"x\ty", b"x\ny", b"x\ry", b"x\x1by", b"x y", b"\xff",
]  # fmt: skip
FAILED_LISTED = [b"bad\ttab", b"b" * 230, b"emailrelay.6.1765000001.1", b"f"]


def _reply(ids: list[bytes], eol: bytes) -> bytes:
    """Upstream's reply listing ``ids`` in a session whose line ending is ``eol``: lines joined by
    CR CR LF and a LF in an id sent as CR LF (CR LF), or as they are (LF)."""
    if eol == b"\n":
        return b"\n".join(ids) + b"\n" + PROMPT
    return b"\r\r\n".join(i.replace(b"\n", b"\r\n") for i in ids) + b"\r\n" + PROMPT


def _fill(spool: Path) -> None:
    """The spool of READY, FAILED and OTHERS (a ``d.envelope`` directory and a dangling
    ``l.envelope`` symlink among them), group daemon 0660."""
    envelope = ENVELOPE.format(count=1, to="X-MailRelay-To-Remote: b@example.net\r\n").encode()
    names = [f"{i}.envelope" for i, _ in READY] + [f"{i}.envelope.bad" for i in FAILED] + OTHERS
    for name in names:
        (spool / name).write_bytes(envelope)
    for mid in [i for i, content in READY if content] + FAILED:
        (spool / f"{mid}.content").write_bytes(b"Subject: x\r\n\r\nhello\r\n")
    (spool / "d.envelope").mkdir()
    (spool / "l.envelope").symlink_to("/nonexistent")
    for path in spool.iterdir():
        if not path.is_symlink():
            daemon_group(path, 0o770 if path.is_dir() else 0o660)


@contextmanager
def _claimed(spool: Path) -> Iterator[None]:
    """A ``.busy`` envelope whose claim is alive (its lock held, as a forwarder holds it)."""
    path = spool / BUSY
    path.write_bytes(b"X-MailRelay-Format: #2821.8\r\n")
    daemon_group(path, 0o660)
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def _replies(client: AdminClient, lines: list[bytes]) -> list[bytes]:
    out = []
    for line in lines:
        client.sock.sendall(line)
        out.append(client.read_until(PROMPT))
    return out


def _listings(side: str, base: Path) -> dict[str, object]:
    """``list`` and ``failures`` in a CR LF session and in a bare-LF one, ``unfail-all``, then the
    spool's ``.bad`` files left."""
    admin, home = free_port(), base / side
    (home / "spool").mkdir(parents=True)
    _fill(home / "spool")
    daemon: Daemon = start(side, base, "--admin", str(admin), name=side)
    try:
        with _claimed(daemon.spool), AdminClient(admin) as crlf, AdminClient(admin) as lf:
            got: dict[str, object] = {
                "crlf": _replies(crlf, [b"list\r\n", b"failures\r\n"]),
                "lf": _replies(lf, [b"list\n", b"failures\n"]),
            }
            got["unfail-all"] = _replies(crlf, [b"unfail-all\r\n"])
            got["left failed"] = sorted(p.name for p in daemon.spool.glob("*.envelope.bad"))
            got["busy"] = (daemon.spool / BUSY).exists()
    finally:
        daemon.stop()
    return got


@needs_oracle
def test_list_failures_and_unfail_all_as_upstream(tmp_path: Path) -> None:
    """Upstream's lists, byte for byte; the kept differences: the empty id, and what
    ``unfail-all`` cannot rename through our store."""
    base = daemon_base(tmp_path)
    ours, upstream = (_listings(side, base) for side in SIDES)
    spool_name = b"spool"  # (upstream's line for the id "": its spool directory's name)
    for session, sep in (("crlf", b"\r\r\n"), ("lf", b"\n")):
        up_list, up_failures = upstream[session]  # type: ignore[misc]
        assert ours[session] == [up_list.removeprefix(spool_name + sep), up_failures], session
    for session, eol in (("crlf", b"\r\n"), ("lf", b"\n")):
        assert upstream[session] == [_reply([spool_name, *LISTED], eol), _reply(FAILED_LISTED, eol)], session
    assert ours["unfail-all"] == upstream["unfail-all"] == [PROMPT]
    assert upstream["left failed"] == [] and ours["busy"] is upstream["busy"] is True
    assert ours["left failed"] == ["bad\ttab.envelope.bad", "b" * 230 + ".envelope.bad"]


def test_ours_list_and_failures(tmp_path: Path) -> None:
    """Ours alone: upstream's lists (written out above), a LF in a bare-LF session as it is, the
    claimed ``.busy`` not listed; ``unfail-all`` renames the ``.bad`` files our store takes."""
    got = _listings("ours", daemon_base(tmp_path))
    assert got["crlf"] == [_reply(LISTED, b"\r\n"), _reply(FAILED_LISTED, b"\r\n")]
    assert got["lf"] == [_reply(LISTED, b"\n"), _reply(FAILED_LISTED, b"\n")]
    assert got["unfail-all"] == [PROMPT]
    assert got["left failed"] == ["bad\ttab.envelope.bad", "b" * 230 + ".envelope.bad"]
    assert got["busy"] is True


def _unreadable(side: str, base: Path) -> list[bytes]:
    """``list``, ``failures``, ``unfail-all`` and ``failures`` again over a spool that the relay's
    ``--user`` (daemon, by its group) may write but not read."""
    admin = free_port()
    with start(side, base, "--admin", str(admin), name=f"{side}-unreadable") as daemon:
        write_messages(daemon.spool, [["b@example.net"]] * 2, 1765000000)
        (daemon.spool / "emailrelay.4242.1765000000.2.envelope").rename(
            daemon.spool / "emailrelay.4242.1765000000.2.envelope.bad"
        )
        daemon.spool.chmod(0o730)
        with AdminClient(admin) as client:
            return [client.cmd(line) for line in ("list", "failures", "unfail-all", "failures", "list")]


UNREADABLE = [
    b"emailrelay.4242.1765000000.1\r\n" + PROMPT,
    b"emailrelay.4242.1765000000.2\r\n" + PROMPT,
    PROMPT,
    b"<none>\r\n" + PROMPT,
    b"emailrelay.4242.1765000000.1\r\r\nemailrelay.4242.1765000000.2\r\n" + PROMPT,
]


@needs_oracle
def test_unreadable_spool_as_upstream(tmp_path: Path) -> None:
    """A spool --user cannot read: listed, and unfailed, as root."""
    base = daemon_base(tmp_path)
    assert [_unreadable(side, base) for side in SIDES] == [UNREADABLE, UNREADABLE]


@pytest.mark.skipif(os.geteuid() != 0, reason="the relay switches to --user daemon only when started as root")
def test_ours_unreadable_spool(tmp_path: Path) -> None:
    """Ours alone: the same replies."""
    assert _unreadable("ours", daemon_base(tmp_path)) == UNREADABLE
