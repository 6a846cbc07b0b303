"""The admin's ``list`` and ``failures`` as the store reads them: :meth:`SpoolStore.listed_ids`.

What it checks, on a real directory: the id of every ``<id>.envelope`` (``<id>.envelope.bad``)
entry, whatever the id (a tab, 200 octets, octets that are not UTF-8: given back by
``surrogateescape``) and whether or not a content file goes with it; not one in another state
(``.busy``, ``.new``, ``.held``, ``.bad`` for ``list``); in the order of the names' bytes, as
E-MailRelay 2.6b lists them; an empty id (a file named ``.envelope``) left out (upstream prints
its spool directory's name there: docs/decisions.md); no spool directory is ``FileNotFoundError``
(the admin answers ``<none>``); and, in a process switched to ``--user daemon``, a spool
directory only root can read is listed (effective root for the scan).  The replies on the
admin port are compared with E-MailRelay 2.6b in tests/differential/test_admin*.py.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from emailrelay import identity
from emailrelay.spool.names import State
from emailrelay.spool.store import SpoolStore

_FORK = multiprocessing.get_context("fork")
LONG = "x" * 200


def _touch(directory: Path, name: bytes) -> None:
    """An empty file named ``name`` (any octets) in ``directory``."""
    os.close(os.open(os.fsencode(directory) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@pytest.fixture
def store(tmp_path: Path) -> SpoolStore:
    spool = tmp_path / "spool"
    spool.mkdir()
    return SpoolStore(spool)


def test_every_envelope_entry_in_byte_order(store: SpoolStore) -> None:
    names = [
        b"emailrelay.1.2.10.envelope",
        b"emailrelay.1.2.9.envelope",
        b"emailrelay.1.2.9.content",
        b"tab\there.envelope",  # no content file: listed all the same
        b"a\xff.envelope",  # not UTF-8: before "a\ue000" as bytes, after it as a str
        "a\ue000.envelope".encode(),
        LONG.encode() + b".envelope",
        b".envelope",  # empty id: left out
        b"busy.envelope.busy",
        b"new.envelope.new",
        b"held.envelope.held",
        b"bad.envelope.bad",
        b"bad2.envelope.bad",
        b"abc.envelope",  # "abc-d.envelope" sorts first: by name, not by id
        b"abc-d.envelope",
        b"other.content",
        b"envelope",
    ]
    for name in names:
        _touch(store.directory, name)
    assert store.listed_ids(State.READY) == [
        "abc-d",
        "abc",
        "a\ue000",
        "a\udcff",  # b"a\xff" by surrogateescape
        "emailrelay.1.2.10",
        "emailrelay.1.2.9",
        "tab\there",
        LONG,
    ]
    assert store.listed_ids(State.BAD) == ["bad", "bad2"]
    assert store.listed_ids(State.BUSY) == ["busy"]


def test_an_empty_spool_and_no_spool(store: SpoolStore, tmp_path: Path) -> None:
    assert store.listed_ids(State.READY) == []
    with pytest.raises(FileNotFoundError):
        SpoolStore(tmp_path / "missing").listed_ids(State.READY)


def _listed_as_daemon(store: SpoolStore, conn: Connection) -> None:
    """In a forked child: switch to ``daemon`` as the relay does, then say what it can list."""
    try:
        identity.drop(identity.lookup("daemon"))
        try:
            os.listdir(store.directory)
            plain = "readable"
        except PermissionError:
            plain = "refused"
        conn.send((plain, store.listed_ids(State.READY), store.listed_ids(State.BAD)))
    except BaseException as exc:  # (reported to the parent, not lost in the child)
        conn.send(("error", repr(exc), []))
    finally:
        conn.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to --user daemon")
def test_read_as_root_when_switched_to_user(store: SpoolStore) -> None:
    _touch(store.directory, b"emailrelay.1.2.3.envelope")
    _touch(store.directory, b"emailrelay.1.2.4.envelope.bad")
    store.directory.chmod(0o700)  # root's alone: --user daemon cannot read it
    parent, child = _FORK.Pipe(duplex=False)
    process = _FORK.Process(target=_listed_as_daemon, args=(store, child))
    process.start()
    child.close()
    try:
        assert parent.poll(10), "the child said nothing"
        got = parent.recv()
    finally:
        process.join(10)
    assert got == ("refused", ["emailrelay.1.2.3"], ["emailrelay.1.2.4"])
