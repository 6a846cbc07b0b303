"""Whose ``.busy`` is it: the store marks its own claims, and recovery returns only those at once.

E-MailRelay 2.6b claims a message by renaming it to ``.envelope.busy`` and holds no lock on it, so a
``.busy`` nobody holds an ``flock`` on is either a claim of ours whose process died or another
program's live claim.  The store marks each claim of ours with an extended attribute on the
envelope's inode (``CLAIM_MARK``; the bytes are unchanged) and :meth:`SpoolStore.recover` returns a
lock-free ``.busy`` at once only when it is marked; an unmarked one once its ctime is
``FOREIGN_CLAIM_AGE`` old.  Checked here on a real directory: the three cases, that the mark follows
a rewrite (a new inode) and a filter's replacement, that it never stays on an envelope the claim gave
back (``.envelope``, ``.bad``: another program's next claim of it must not look like ours), and the
fall-back when the file system keeps no extended attributes.  Cross-process crashes use forked
processes; the clock of the store module is moved forward rather than waited for.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from emailrelay import log as logmod
from emailrelay.log import Log, LogConfig
from emailrelay.spool import store as store_module
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.names import MessageId, State
from emailrelay.spool.store import CLAIM_MARK, FOREIGN_CLAIM_AGE, SpoolStore

CTX = multiprocessing.get_context("fork")
ENV = Envelope(from_address="a@example.com", to_remote=("b@example.net",), client="127.0.0.1")
CONTENT = b"Subject: test\r\n\r\nbody\r\n"


def _xattrs_work(directory: Path) -> bool:
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, CLAIM_MARK, b"1")
    except (OSError, AttributeError):
        return False
    finally:
        probe.unlink()
    return True


@pytest.fixture
def store(tmp_path: Path) -> SpoolStore:
    spool = tmp_path / "spool"
    spool.mkdir()
    if not _xattrs_work(spool):
        pytest.skip("the test directory's file system keeps no user extended attributes")
    return SpoolStore(spool, fsync=False)


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """What the store logs, on stderr (read with ``capsys.readouterr().err``)."""
    monkeypatch.setattr(logmod, "get", lambda: Log(LogConfig(syslog=False)))
    return capsys


def _later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The store's clock ``seconds`` ahead (only its module's: nothing else is affected)."""
    real = time.time
    monkeypatch.setattr(store_module, "time", SimpleNamespace(time=lambda: real() + seconds))


def _busy(store: SpoolStore, mid: MessageId) -> Path:
    return store.envelope_path(mid, State.BUSY)


def _marked(path: Path) -> bool:
    try:
        os.getxattr(path, CLAIM_MARK)
    except OSError as exc:
        assert exc.errno == errno.ENODATA
        return False
    return True


def _claimed_by_hand(store: SpoolStore) -> MessageId:
    """A message renamed to ``.busy`` as E-MailRelay claims one (no lock, no mark), just now."""
    mid = store.store_message(ENV, CONTENT)
    store.envelope_path(mid, State.READY).rename(_busy(store, mid))
    return mid


def _claim_and_die(spool: str, mid: str) -> None:
    claim = SpoolStore(spool).claim(MessageId.parse(mid))
    os._exit(0 if claim is not None else 3)


# ---- the three cases ---------------------------------------------------------------------------


def test_a_claim_of_ours_whose_process_died_is_returned_at_once(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    before = store.envelope_path(mid, State.READY).read_bytes()
    proc = CTX.Process(target=_claim_and_die, args=(str(store.directory), str(mid)))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert _marked(_busy(store, mid))
    assert _busy(store, mid).read_bytes() == before  # the mark is no part of the envelope's bytes
    assert store.recover().released == [mid]
    ready = store.envelope_path(mid, State.READY)
    assert ready.read_bytes() == before
    assert not _marked(ready)  # whoever claims it next (E-MailRelay) must not look like us


def test_a_young_unmarked_busy_is_left_and_said_once(
    store: SpoolStore, log: pytest.CaptureFixture[str]
) -> None:
    mid = _claimed_by_hand(store)
    assert store.recover().released == []
    assert store.recover().released == []
    assert _busy(store, mid).exists()
    lines = log.readouterr().err.splitlines()
    assert lines == [
        f"emailrelay: info: leaving [{mid}.envelope.busy]: not a claim of ours and no lock on it: maybe"
        f" another program's (E-MailRelay's) live claim; returned to the queue if unchanged for 3600s"
    ]


def test_an_old_unmarked_busy_is_returned_with_the_reason(
    store: SpoolStore, monkeypatch: pytest.MonkeyPatch, log: pytest.CaptureFixture[str]
) -> None:
    mid = _claimed_by_hand(store)
    _later(monkeypatch, FOREIGN_CLAIM_AGE + 60)
    assert store.recover(foreign_age=FOREIGN_CLAIM_AGE * 2).released == []  # the bound is the caller's
    assert store.recover().released == [mid]
    assert store.find(str(mid)) == (mid, State.READY)
    said = log.readouterr().err.splitlines()[-1]
    assert said.startswith(f"emailrelay: info: returning [{mid}.envelope.busy] to the queue: nobody holds")
    assert "it is not a claim of ours, but it has not changed for 3660s: a claim another program" in said


def test_a_live_claim_of_ours_is_never_returned(store: SpoolStore, monkeypatch: pytest.MonkeyPatch) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    _later(monkeypatch, FOREIGN_CLAIM_AGE * 10)
    assert store.recover().released == []
    claim.remove()


# ---- the mark follows the claim, and only the claim -------------------------------------------


def test_a_rewrite_moves_the_mark_to_the_new_inode(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    inode = _busy(store, mid).stat().st_ino
    claim.rewrite(Envelope(from_address="a@example.com", to_remote=("c@example.org",)))
    assert _busy(store, mid).stat().st_ino != inode
    assert _marked(_busy(store, mid))
    claim.abandon_claim()  # the lock goes, as when the process dies
    assert store.recover().released == [mid]


def test_a_filters_replacement_is_marked_when_relocked(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    busy = _busy(store, mid)
    replacement = busy.with_name("sed-i-tmp")
    replacement.write_bytes(busy.read_bytes())
    replacement.rename(busy)  # what ``sed -i`` does: a new, unmarked inode
    assert claim.relock_if_replaced()
    assert _marked(busy)
    claim.abandon_claim()
    assert store.recover().released == [mid]


def test_a_released_envelope_is_unmarked(store: SpoolStore) -> None:
    """A message we gave back and E-MailRelay then claimed is its live claim, not a dead one of ours."""
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    claim.release(time.time() - 1, reason="451 later", code=451)
    assert not _marked(store.envelope_path(mid, State.READY))
    store.envelope_path(mid, State.READY).rename(_busy(store, mid))  # upstream claims it
    assert store.recover().released == []


@pytest.mark.parametrize("readable", [True, False])
def test_a_failed_envelope_is_unmarked(store: SpoolStore, readable: bool) -> None:
    """A ``.bad`` keeps its claim's inode (or a rewrite's): unfailed and claimed by E-MailRelay, it must
    not look like a dead claim of ours."""
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    if not readable:  # the append path: the same inode goes to .bad
        _busy(store, mid).write_bytes(b"garbage\r\n")
    bad = claim.fail("550 no", 550)
    assert not _marked(bad)
    assert store.unfail(mid)
    store.envelope_path(mid, State.READY).rename(_busy(store, mid))
    assert store.recover().released == []


def test_an_uncommitted_claim_is_not_marked(store: SpoolStore) -> None:
    msg = store.create()
    msg.write(CONTENT)
    msg.write_envelope(ENV)
    claim = store.claim_new(msg)
    assert not _marked(msg.envelope_path)
    claim.release()
    assert not _marked(store.envelope_path(msg.id, State.READY))


# ---- no extended attributes --------------------------------------------------------------------


def test_without_extended_attributes_a_lock_free_busy_is_taken_for_ours(
    store: SpoolStore, monkeypatch: pytest.MonkeyPatch, log: pytest.CaptureFixture[str]
) -> None:
    """As before marks (the only safe reading left): returned at once; said once, as a warning."""

    def refuse(*_args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    monkeypatch.setattr(os, "getxattr", refuse)
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    claim.abandon_claim()
    hand = _claimed_by_hand(store)
    assert sorted(store.recover().released) == sorted([mid, hand])
    second = store.claim(mid)
    assert second is not None
    second.release()
    warnings = [line for line in log.readouterr().err.splitlines() if ": warning: " in line]
    assert len(warnings) == 1
    assert "keeps no extended attributes: a .busy envelope nobody holds a lock on is taken for" in warnings[0]
