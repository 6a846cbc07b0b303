"""POP maildrops over the spool (spool/maildrop.py and the store's fd-level support): listing, content
fallback, the delete rule, locking."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from emailrelay.spool.delivery import copy_to_directories
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.maildrop import POP_DELETED, POP_GONE, POP_KEPT, open_maildrop
from emailrelay.spool.names import MessageId, State
from emailrelay.spool.store import POP_LOCK_NAME, SpoolStore, SpoolStoreError

ENV = Envelope("a@example.com", to_remote=("b@example.net",))


@pytest.fixture
def store(tmp_path: Path) -> SpoolStore:
    return SpoolStore(tmp_path / "spool", fsync=False)


def put(store: SpoolStore, body: bytes = b"Subject: t\r\n\r\nbody\r\n") -> MessageId:
    return store.store_message(ENV, body)


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} - {POP_LOCK_NAME}


def test_main_maildrop_lists_only_ready_messages_in_id_order(store: SpoolStore) -> None:
    ids = [put(store, b"x" * n) for n in (5, 7, 9, 11)]
    assert store.claim(ids[1]) is not None  # .busy
    store.hold(ids[2])  # .held
    msg = store.create()
    msg.write(b"new")
    msg.write_envelope(ENV)  # .new
    os.rename(store.envelope_path(ids[3], State.READY), store.envelope_path(ids[3], State.BAD))
    extra = put(store, b"yy")
    with open_maildrop(store) as md:
        listed = md.messages()
    assert [(m.id, m.size, m.uid) for m in listed] == [
        (ids[0], 5, f"{ids[0]}.content"),
        (extra, 2, f"{extra}.content"),
    ]


def test_message_without_content_is_not_listed(store: SpoolStore) -> None:
    mid = put(store)
    os.unlink(store.content_path(mid))
    with open_maildrop(store) as md:
        assert md.messages() == []


def test_sub_directory_content_falls_back_to_main(store: SpoolStore) -> None:
    mid = put(store, b"main content\r\n")
    (store.directory / "alice").mkdir()
    copy_to_directories(store, mid, State.READY, store.directory, ["alice"], envelope_only=True)
    with open_maildrop(store, "alice") as md:
        [m] = md.messages()
        assert m.size == len(b"main content\r\n")
        with md.open_content(m.id) as f:
            assert f.read() == b"main content\r\n"


def test_sub_directory_own_content_wins(store: SpoolStore) -> None:
    mid = put(store, b"main\r\n")
    (store.directory / "bob").mkdir()
    copy_to_directories(store, mid, State.READY, store.directory, ["bob"])
    (store.directory / "bob" / f"{mid}.content").write_bytes(b"bob's own copy\r\n")
    with open_maildrop(store, "bob") as md:
        [m] = md.messages()
        assert m.size == len(b"bob's own copy\r\n")
        with md.open_content(m.id) as f:
            assert f.read() == b"bob's own copy\r\n"
        assert md.delete(mid) == POP_DELETED
    assert names(store.directory / "bob") == set()
    assert (store.directory / f"{mid}.content").read_bytes() == b"main\r\n"  # the main message's own


def test_delete_rule_keeps_shared_main_content_until_last_envelope(store: SpoolStore) -> None:
    mid = put(store)
    for user in ("alice", "bob"):
        (store.directory / user).mkdir()
    copy_to_directories(
        store, mid, State.READY, store.directory, ["alice", "bob"], envelope_only=True, delete_original=True
    )
    assert not store.envelope_path(mid, State.READY).exists()
    content = store.content_path(mid)
    with open_maildrop(store, "alice") as md:
        assert md.delete(mid) == POP_DELETED
    assert content.exists(), "bob's envelope still needs it"
    with open_maildrop(store, "bob") as md:
        assert md.delete(mid) == POP_DELETED
    assert not content.exists()
    assert names(store.directory) == {"alice", "bob"}


def test_delete_rule_keeps_content_of_a_main_envelope(store: SpoolStore) -> None:
    mid = put(store)
    (store.directory / "alice").mkdir()
    copy_to_directories(store, mid, State.READY, store.directory, ["alice"], envelope_only=True)
    with open_maildrop(store, "alice") as md:
        assert md.delete(mid) == POP_DELETED
    assert store.content_path(mid).exists()  # the main .envelope is still to be forwarded


def test_main_delete_removes_envelope_then_content(store: SpoolStore) -> None:
    mid = put(store)
    with open_maildrop(store) as md:
        assert md.delete(mid) == POP_DELETED
        assert md.delete(mid) == POP_GONE
    assert names(store.directory) == set()


def test_main_delete_keeps_content_a_sub_directory_envelope_needs(store: SpoolStore) -> None:
    mid = put(store)
    (store.directory / "carol").mkdir()
    copy_to_directories(store, mid, State.READY, store.directory, ["carol"], envelope_only=True)
    with open_maildrop(store) as md:
        assert md.delete(mid) == POP_DELETED
    assert store.content_path(mid).exists()


def test_claimed_message_is_never_deleted(store: SpoolStore) -> None:
    mid = put(store)
    with open_maildrop(store) as md:
        assert [m.id for m in md.messages()] == [mid]
        claim = store.claim(mid)
        assert claim is not None
        assert md.delete(mid) == POP_KEPT
        with md.open_content(mid) as f:  # RETR of a claimed message still works
            assert f.read().startswith(b"Subject")
    assert store.envelope_path(mid, State.BUSY).exists()
    assert store.content_path(mid).exists()
    claim.release()


@pytest.mark.parametrize(
    "user", ["", ".", "..", "../x", "/etc", "a/b", "a\x00", "a\\b", ".hidden", "tab\tname", "x" * 300]
)
def test_invalid_maildrop_names(store: SpoolStore, user: str) -> None:
    store.directory.mkdir(parents=True, exist_ok=True)
    (store.directory / ".hidden").mkdir()
    with pytest.raises(SpoolStoreError) as info:
        open_maildrop(store, user)
    assert info.value.errno in (errno.EINVAL, errno.ENAMETOOLONG)


def test_maildrop_must_be_a_real_directory_inside_the_spool(store: SpoolStore, tmp_path: Path) -> None:
    store.directory.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.directory / "link").symlink_to(outside)
    (store.directory / "file").write_bytes(b"")
    for user, code in (
        ("link", (errno.ELOOP, errno.ENOTDIR)),
        ("file", (errno.ENOTDIR,)),
    ):
        with pytest.raises(SpoolStoreError) as info:
            open_maildrop(store, user)
        assert info.value.errno in code, user


def test_a_missing_maildrop_directory_is_made(store: SpoolStore) -> None:
    """As upstream's ``created pop-by-name sub-directory``: mode 0770 whatever the umask."""
    store.directory.mkdir(parents=True)
    with open_maildrop(store, "nobody") as md:
        assert md.created and md.messages() == []
    assert stat.S_IMODE((store.directory / "nobody").stat().st_mode) == 0o770
    with open_maildrop(store, "nobody") as md:
        assert not md.created


def test_symlinked_content_is_refused(store: SpoolStore, tmp_path: Path) -> None:
    mid = put(store)
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret\r\n")
    os.unlink(store.content_path(mid))
    os.symlink(secret, store.content_path(mid))
    with open_maildrop(store) as md:
        assert md.messages() == []
        with pytest.raises(OSError):
            md.open_content(mid)


def test_lock_is_exclusive_within_and_across_processes(store: SpoolStore) -> None:
    store.directory.mkdir(parents=True)
    (store.directory / "alice").mkdir()
    one = open_maildrop(store, "alice")
    assert one.lock()
    two = open_maildrop(store, "alice")
    assert not two.lock()
    other = open_maildrop(store, "bob") if (store.directory / "bob").exists() else open_maildrop(store)
    assert other.lock(), "another maildrop has its own lock"
    other.close()
    lock_file = store.directory / "alice" / POP_LOCK_NAME
    probe = (
        "import fcntl,sys\n"
        f"f=open({str(lock_file)!r},'rb')\n"
        "try:\n fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\n"
        "except OSError: print('busy')\n"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "busy"
    )
    one.close()
    assert two.lock()
    two.close()
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "got"
    )


def test_close_is_idempotent(store: SpoolStore) -> None:
    store.directory.mkdir(parents=True)
    md = open_maildrop(store)
    assert md.lock()
    md.close()
    md.close()
    assert not md.locked
