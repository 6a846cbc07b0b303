"""``deliver:`` and ``copy:`` on ours alone: root-only delivery directories and E-MailRelay 2.6b's
words for every failure (tests/differential/test_deliver_followup.py compares them with upstream).

What it checks:
- ``copy_to_directories`` (spool/delivery.py) fails with upstream's texts, never a Python
  representation: a missing delivery directory is not made (``delivery: cannot create delivery
  directory: <dir>/<mbox>: no such file or directory``, after ``on_create``), a file in the way
  (``not a directory``, ``file exists``), an invalid mailbox name (``invalid mailbox name: a/b``);
- started as root with the default ``--user daemon``, as an operator starts it: ``deliver:``
  delivers into a ``--delivery-dir`` only root may write, as server and as client filter (the
  mailbox 0770 and its files 0660, root with group ``daemon``); a failure is ``452 failed`` and
  the warning ``message processing exception: <upstream's text>``; ``copy:`` logs ``<id> copied to
  [..]``, ``copy filter: no sub-directories of [<spool>] to copy in to`` and upstream's failure
  words (``delivery: cannot write content file: copy: <path>: operation not permitted``).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from emailrelay.spool.delivery import DeliveryError, copy_to_directories
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.names import State
from emailrelay.spool.store import SpoolStore
from tests.support.deliver_cases import (
    forward_one,
    immutable,
    reprs_in,
    root_only,
    serve_one,
    subdirectories,
)
from tests.support.oracle import daemon_base


def _has_daemon() -> bool:
    try:
        pwd.getpwnam("daemon")
    except KeyError:
        return False
    return True


as_operator = pytest.mark.skipif(
    os.geteuid() != 0 or not _has_daemon(), reason="needs root and a daemon user (the default --user)"
)

MESSAGE = Envelope(from_address="a@example.com", to_local=("box",), client="127.0.0.1")


def stored(tmp_path: Path) -> tuple[SpoolStore, object]:
    store = SpoolStore(tmp_path / "spool")
    return store, store.store_message(MESSAGE, b"Subject: s\r\n\r\nhello\r\n")


def deliver(
    store: SpoolStore, mid: object, base: Path, names: list[str], made: list[str] | None = None
) -> None:
    copy_to_directories(
        store, mid, State.READY, base, names, create=True, kind="deliver",  # type: ignore[arg-type]
        on_create=None if made is None else made.append,
    )  # fmt: skip


def test_a_missing_delivery_dir_is_not_made(tmp_path: Path) -> None:
    store, mid = stored(tmp_path)
    base = tmp_path / "boxes"
    made: list[str] = []
    with pytest.raises(DeliveryError) as failed:
        deliver(store, mid, base, ["box"], made)
    assert (
        str(failed.value)
        == f"delivery: cannot create delivery directory: {base}/box: no such file or directory"
    )
    assert made == ["box"] and not base.exists()  # upstream's "creating mailbox" line comes first


def test_files_in_the_way(tmp_path: Path) -> None:
    store, mid = stored(tmp_path)
    base = tmp_path / "boxes"
    base.write_text("x")
    with pytest.raises(
        DeliveryError, match=f"^delivery: cannot create delivery directory: {base}/box: not a directory$"
    ):
        deliver(store, mid, base, ["box"])
    base.unlink()
    (base / "box").parent.mkdir()
    (base / "box").write_text("x")
    made: list[str] = []
    with pytest.raises(
        DeliveryError, match=f"^delivery: cannot create delivery directory: {base}/box: file exists$"
    ):
        deliver(store, mid, base, ["box"], made)
    assert made == ["box"]
    assert store.envelope_path(mid, State.READY).exists()  # nothing delivered, nothing deleted


def test_an_invalid_mailbox_name_in_upstreams_words(tmp_path: Path) -> None:
    store, mid = stored(tmp_path)
    (tmp_path / "boxes").mkdir()
    made: list[str] = []
    with pytest.raises(DeliveryError) as failed:
        deliver(store, mid, tmp_path / "boxes", ["ok", "a/b"], made)
    assert str(failed.value) == "delivery: cannot create delivery directory: invalid mailbox name: a/b"
    assert made == [] and list((tmp_path / "boxes").iterdir()) == []  # checked before anything is made


@as_operator
@pytest.mark.parametrize("side", ["server", "client"])
def test_deliver_into_a_root_only_delivery_dir(side: str) -> None:
    base = daemon_base()
    root_only(base / "boxes")
    if side == "server":
        got = serve_one("ours", base, "--filter", "deliver:", "--delivery-dir", "BOXES")
        assert got.reply == "250 message processed"
    else:
        got = forward_one("ours", base, "deliver:", "--delivery-dir", "BOXES")
        assert got.reply == "1"  # forwarded to the remote recipient too
    assert reprs_in(got.lines) == []
    assert "emailrelay: info: delivery: creating mailbox [box]" in got.lines
    assert got.boxes is not None
    assert [entry[:5] for entry in got.boxes] == [
        ("box", "0o40770", "root", "daemon", 2),
        ("box/ID.content", "0o100660", "root", "daemon", 1),
        ("box/ID.envelope", "0o100660", "root", "daemon", 1),
    ]
    assert got.boxes[1][5].endswith(b"Subject: s\r\n\r\nhello\r\n")


@as_operator
def test_a_delivery_failure_is_452_failed_in_upstreams_words() -> None:
    base = daemon_base()
    (base / "boxes").write_text("x")
    got = serve_one("ours", base, "--filter", "deliver:", "--delivery-dir", "BOXES")
    assert got.reply == "452 failed"
    assert (
        "emailrelay: warning: message processing exception: delivery: cannot create delivery directory: "
        "BASE/boxes/box: not a directory"
    ) in got.lines
    assert reprs_in(got.lines) == []


@as_operator
def test_copy_lines() -> None:
    base = daemon_base()
    subdirectories(base / "ours" / "spool", "alice", "bob")
    got = serve_one("ours", base, "--filter", "copy:")
    assert "emailrelay: info: filter [copy:]: emailrelay.ID copied to [alice,bob]" in got.lines
    base = daemon_base()
    got = serve_one("ours", base, "--filter", "copy:")
    assert (
        "emailrelay: warning: copy filter: no sub-directories of [BASE/SIDE/spool] to copy in to" in got.lines
    )
    assert got.reply == "250 message processed"


@as_operator
def test_a_copy_failure_in_upstreams_words() -> None:
    base = daemon_base()
    spool = base / "ours" / "spool"
    subdirectories(spool, "alice", "bob")
    with immutable(spool / "bob"):
        got = serve_one("ours", base, "--filter", "copy:")
    assert got.reply == "452 failed"
    assert (
        "emailrelay: warning: message processing exception: delivery: cannot write content file: copy: "
        "BASE/SIDE/spool/bob/emailrelay.ID.content: operation not permitted"
    ) in got.lines
    assert reprs_in(got.lines) == []
