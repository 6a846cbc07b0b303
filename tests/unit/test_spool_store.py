"""The spool store (SPEC.md §3, ARCHITECTURE.md "The durability protocol") on a real directory.

Cross-process behaviour (claims, recovery, id uniqueness) uses real forked
processes; nothing is mocked.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from emailrelay.spool import envelope as env_format
from emailrelay.spool.delivery import copy_to_directories
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.names import MessageId, State
from emailrelay.spool.store import NewMessage, SpoolStore, UncommittedClaim
from tests.support.fixtures import UPSTREAM

CTX = multiprocessing.get_context("fork")

ENV = Envelope(from_address="a@example.com", to_remote=("b@example.net",), client="127.0.0.1")
CONTENT = b"Subject: test\r\n\r\nbody\r\n"


def names(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir())


def state_of(store: SpoolStore, mid: MessageId) -> State | None:
    found = store.find(str(mid))
    return None if found is None else found[1]


@pytest.fixture
def store(tmp_path: Path) -> SpoolStore:
    spool = tmp_path / "spool"
    spool.mkdir()
    return SpoolStore(spool)


# ---------------------------------------------------------------- storing


def test_create_write_commit(store: SpoolStore) -> None:
    msg = store.create()
    mid = msg.id
    assert names(store.directory) == [f"{mid}.content"]
    msg.write(b"Subject: x\r\n")
    msg.write(b"\r\nbody\r\n")
    msg.write_envelope(ENV)
    assert names(store.directory) == [f"{mid}.content", f"{mid}.envelope.new"]
    assert store.ready() == []  # .new is never forwarded
    msg.commit()
    assert names(store.directory) == [f"{mid}.content", f"{mid}.envelope"]
    assert store.ready() == [mid]
    assert store.content_path(mid).read_bytes() == b"Subject: x\r\n\r\nbody\r\n"
    assert store.envelope_path(mid, State.READY).read_bytes() == ENV.to_bytes()
    assert store.read_envelope(mid) == ENV
    for p in store.directory.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o660, p
    assert store.content_path(mid).is_absolute()


def test_abandon_before_and_after_envelope(store: SpoolStore) -> None:
    first = store.create()
    first.write(CONTENT)
    first.abandon()
    second = store.create()
    second.write(CONTENT)
    second.write_envelope(ENV)
    second.abandon()
    assert names(store.directory) == []
    assert first.id != second.id


def test_store_message_and_find(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    assert store.find(str(mid)) == (mid, State.READY)
    assert store.find("emailrelay.1.2.3") is None
    assert store.find("../../etc/passwd") is None
    entries = list(store.scan())
    assert [(e.id, e.state) for e in entries] == [(mid, State.READY)]


def test_scan_ignores_other_files_but_takes_envelopes_of_any_id(store: SpoolStore) -> None:
    """As E-MailRelay 2.6b: any ``<id>.envelope`` is a message (``foo``, ``emailrelay.001``); temporary
    files, other names and directories are not."""
    mid = store.store_message(ENV, CONTENT)
    for name in (
        "notes.txt",
        f"{mid}.envelope.busy.tmp",
        "x.envelope.other",
        "foo.envelope.bad",
        "emailrelay.001.envelope",
    ):
        (store.directory / name).write_bytes(b"x")
    (store.directory / "sub").mkdir()
    found = sorted((str(e.id), e.state) for e in store.scan())
    assert found == sorted([(str(mid), State.READY), ("foo", State.BAD), ("emailrelay.001", State.READY)])


def test_create_skips_an_existing_content_file(store: SpoolStore) -> None:
    """A pid reused within the same second must not clobber an older message."""
    now = int(time.time())
    planted = {}
    for t in range(now, now + 4):
        for seq in range(1, 4):
            name = f"emailrelay.{os.getpid()}.{t}.{seq}.content"
            planted[name] = f"old {t} {seq}".encode()
            (store.directory / name).write_bytes(planted[name])
    fresh = SpoolStore(store.directory)
    mid = fresh.store_message(ENV, CONTENT)
    assert f"{mid}.content" not in planted
    for name, data in planted.items():
        assert (store.directory / name).read_bytes() == data
    assert fresh.content_path(mid).read_bytes() == CONTENT


# ---------------------------------------------------------------- state changes


def test_claim_release(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None and claim.active
    assert state_of(store, mid) is State.BUSY
    assert claim.envelope() == ENV
    assert store.ready() == []
    assert store.claim(mid) is None  # a second claim (same process, other descriptor) loses
    claim.release()
    assert not claim.active
    assert state_of(store, mid) is State.READY
    assert store.ready() == [mid]
    again = store.claim(mid)
    assert again is not None
    again.release()


def test_claim_context_manager_releases(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    with claim:
        assert state_of(store, mid) is State.BUSY
    assert state_of(store, mid) is State.READY


def test_claim_of_missing_message(store: SpoolStore) -> None:
    assert store.claim(MessageId(time=1, pid=1, seq=1)) is None


def test_release_not_before_hides_until_due(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    other = store.store_message(ENV, CONTENT)
    due = time.time() + 3600
    claim = store.claim(mid)
    assert claim is not None
    claim.release(not_before=due)
    assert state_of(store, mid) is State.READY
    assert store.ready() == [other]
    assert sorted(store.ready(ignore_backoff=True)) == sorted([mid, other])
    assert mid in store.ready(now=due + 1)
    # the pass that lists what is due also gives the earliest "not before" of the rest
    listed, nd = store.ready_and_next_due()
    assert listed == [other] and nd is not None and abs(nd - due) < 2
    claim2 = store.claim(other)
    assert claim2 is not None
    claim2.remove()
    listed, nd = store.ready_and_next_due()
    assert listed == [] and nd is not None and abs(nd - due) < 2
    # a short back-off becomes due by itself
    claim3 = store.claim(mid)
    assert claim3 is not None
    claim3.release(not_before=time.time() + 0.3)
    assert store.ready() == []
    deadline = time.monotonic() + 10
    while store.ready() != [mid] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.ready() == [mid]


def test_fail_appends_reason(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    bad = claim.fail("5.1.1 no such user\r\nX-Forged: 1", 550)
    assert bad == store.envelope_path(mid, State.BAD)
    assert state_of(store, mid) is State.BAD
    data = bad.read_bytes()
    head, _, tail = data.partition(b"X-MailRelay-End: 1\r\n")
    assert head + b"X-MailRelay-End: 1\r\n" == ENV.to_bytes()
    # a line break cannot forge a field: it is written as E-MailRelay 2.6b writes it, "\\r\\n"
    assert (
        tail == b"X-MailRelay-Reason: 5.1.1 no such user\\r\\nX-Forged: 1\r\nX-MailRelay-ReasonCode: 550\r\n"
    )
    assert store.content_path(mid).read_bytes() == CONTENT  # the content stays
    assert not claim.active
    assert store.ready() == []
    assert not list(store.directory.glob("*.tmp"))


def test_fail_without_code(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    data = claim.fail("connection refused", None).read_bytes()
    assert data.endswith(b"X-MailRelay-Reason: connection refused\r\nX-MailRelay-ReasonCode:\r\n")


def test_fail_matches_upstream_failed_fixture(store: SpoolStore) -> None:
    bad_fixture = (UPSTREAM / "failed.envelope.bad").read_bytes()
    base = env_format.parse(bad_fixture).without_failure()
    mid = store.store_message(base, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    assert claim.fail("5.7.1 rejected for testing", 550).read_bytes() == bad_fixture


def test_unfail_keeps_reason_until_next_failure(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    claim.fail("first", 451)
    assert store.unfail(mid)
    assert state_of(store, mid) is State.READY
    assert store.read_envelope(mid).reason == "first"  # left for the next failure to replace
    assert store.ready() == [mid]  # due at once
    claim = store.claim(mid)
    assert claim is not None
    data = claim.fail("second", 554).read_bytes()
    assert data.count(b"X-MailRelay-Reason:") == 1 and data.count(b"X-MailRelay-ReasonCode:") == 1
    assert data.endswith(b"X-MailRelay-Reason: second\r\nX-MailRelay-ReasonCode: 554\r\n")
    assert not store.unfail(MessageId(time=1, pid=1, seq=1))


def test_unfail_all(store: SpoolStore) -> None:
    ids = [store.store_message(ENV, CONTENT) for _ in range(3)]
    keep = store.store_message(ENV, CONTENT)
    for mid in ids:
        claim = store.claim(mid)
        assert claim is not None
        claim.fail("x", 550)
    assert store.unfail_all() == 3
    assert sorted(store.ready()) == sorted([*ids, keep])


def test_hold_and_release_held(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    assert store.hold(mid)
    assert state_of(store, mid) is State.HELD
    assert store.ready() == [] and store.claim(mid) is None
    assert not store.hold(mid)
    assert store.release_held(mid)
    assert store.ready() == [mid]


def test_delete(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    assert store.delete(mid, State.READY)
    assert names(store.directory) == []
    assert not store.delete(mid, State.READY)
    busy = store.store_message(ENV, CONTENT)
    claim = store.claim(busy)
    assert claim is not None
    with pytest.raises(OSError):
        store.delete(busy, State.BUSY)
    assert state_of(store, busy) is State.BUSY
    claim.remove()
    assert names(store.directory) == []


def test_claim_rewrite_keeps_the_claim(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    claim = store.claim(mid)
    assert claim is not None
    edited = Envelope(from_address="a@example.com", to_remote=("c@example.org",), forward_to="mx.example")
    claim.rewrite(edited)
    assert store.envelope_path(mid, State.BUSY).read_bytes() == edited.to_bytes()
    assert store.claim(mid) is None
    assert store.recover().released == []  # still locked: the claim moved to the new inode
    claim.release()
    assert store.read_envelope(mid) == edited


# ---------------------------------------------------------------- other processes


def _claim_in_child(spool: str, mid: str, conn: multiprocessing.connection.Connection) -> None:
    claim = SpoolStore(spool).claim(MessageId.parse(mid))
    conn.send(claim is not None)
    conn.recv()  # hold the claim until told
    if claim is not None:
        claim.release()


def test_claim_excludes_a_claim_from_another_process(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    mine = store.claim(mid)
    assert mine is not None
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_claim_in_child, args=(str(store.directory), str(mid), child))
    proc.start()
    try:
        assert parent.poll(30)
        assert parent.recv() is False
        parent.send("go")
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    mine.release()
    # and the other way round
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_claim_in_child, args=(str(store.directory), str(mid), child))
    proc.start()
    try:
        assert parent.poll(30)
        assert parent.recv() is True
        assert store.claim(mid) is None
        assert state_of(store, mid) is State.BUSY
        parent.send("go")
    finally:
        proc.join(30)
    assert state_of(store, mid) is State.READY


def _claim_many(spool: str, start: multiprocessing.synchronize.Barrier, conn) -> None:  # type: ignore[no-untyped-def]
    s = SpoolStore(spool)
    ids = sorted(s.ready())
    start.wait(30)
    won = []
    claims = []
    for mid in ids:
        c = s.claim(mid)
        if c is not None:
            won.append(str(mid))
            claims.append(c)  # keep every claim open until the end
    conn.send(won)
    conn.recv()


def test_concurrent_claims_have_exactly_one_winner(store: SpoolStore) -> None:
    fast = SpoolStore(store.directory, fsync=False)
    ids = {str(fast.store_message(ENV, CONTENT)) for _ in range(300)}
    barrier = CTX.Barrier(3)
    procs, pipes = [], []
    for _ in range(3):
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_claim_many, args=(str(store.directory), barrier, child))
        p.start()
        procs.append(p)
        pipes.append(parent)
    try:
        results = []
        for conn in pipes:
            assert conn.poll(60)
            results.append(conn.recv())
        for conn in pipes:
            conn.send("done")
    finally:
        for p in procs:
            p.join(30)
    won = [mid for r in results for mid in r]
    assert len(won) == len(set(won)), "a message was claimed twice"
    assert set(won) == ids
    # the winners died holding their claims: all are .busy until recovery returns them
    assert {str(e.id) for e in store.scan() if e.state is State.BUSY} == ids
    assert {str(m) for m in store.recover().released} == ids
    assert {str(m) for m in store.ready()} == ids


def _claim_and_die(spool: str, mid: str) -> None:
    claim = SpoolStore(spool).claim(MessageId.parse(mid))
    os._exit(0 if claim is not None else 3)


def test_recover_returns_claim_of_dead_process(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    proc = CTX.Process(target=_claim_and_die, args=(str(store.directory), str(mid)))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert state_of(store, mid) is State.BUSY
    report = store.recover()
    assert report.released == [mid]
    assert state_of(store, mid) is State.READY
    assert store.read_envelope(mid) == ENV
    assert store.recover().released == []


def test_recover_leaves_claim_of_live_process(store: SpoolStore) -> None:
    mid = store.store_message(ENV, CONTENT)
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_claim_in_child, args=(str(store.directory), str(mid), child))
    proc.start()
    try:
        assert parent.poll(30) and parent.recv() is True
        assert store.recover().released == []
        assert state_of(store, mid) is State.BUSY
    finally:
        proc.kill()  # dies holding the claim
        proc.join(30)
    assert store.recover().released == [mid]
    assert state_of(store, mid) is State.READY


def test_recover_removes_old_new_and_tmp_files(store: SpoolStore) -> None:
    old = store.create()
    old.write(CONTENT)
    old.write_envelope(ENV)
    young = store.create()
    young.write(CONTENT)
    young.write_envelope(ENV)
    committed = store.store_message(ENV, CONTENT)
    past = time.time() - 3600
    os.utime(old.envelope_path, (past, past))
    tmp_old = store.directory / f"{committed}.envelope.busy.tmp"
    tmp_old.write_bytes(b"x")
    os.utime(tmp_old, (past, past))
    report = store.recover(new_age=600)
    assert report.removed_new == [old.id]
    assert report.removed_tmp == 1
    assert sorted(names(store.directory)) == sorted(
        [
            f"{young.id}.content",
            f"{young.id}.envelope.new",
            f"{committed}.content",
            f"{committed}.envelope",
        ]
    )


def _uncommitted(store: SpoolStore) -> tuple[NewMessage, UncommittedClaim]:
    msg = store.create()
    msg.write(CONTENT)
    msg.write_envelope(ENV, durable=False)
    return msg, store.claim_new(msg)


def test_uncommitted_claim_forwarded_is_removed_never_committed(store: SpoolStore) -> None:
    msg, claim = _uncommitted(store)
    assert names(store.directory) == [f"{msg.id}.content", f"{msg.id}.envelope.new"]
    assert store.ready() == [] and claim.envelope() == ENV
    assert claim.name_in_log == f"{msg.id}.envelope.busy"  # as upstream names the claimed file
    claim.remove()
    assert names(store.directory) == [] and not claim.active


def test_uncommitted_claim_not_forwarded_is_committed_or_failed(store: SpoolStore) -> None:
    deferred, claim = _uncommitted(store)
    claim.release(reason="451 try later", code=451)
    assert store.ready(ignore_backoff=True) == [deferred.id]
    assert store.content_path(deferred.id).read_bytes() == CONTENT
    assert store.read_envelope(deferred.id) == ENV
    rejected, claim = _uncommitted(store)
    bad = claim.fail("550 no such user", 550)
    assert bad == store.envelope_path(rejected.id, State.BAD) and bad.exists()
    assert not store.envelope_path(rejected.id, State.NEW).exists()


def test_an_uncommitted_claim_that_cannot_be_made_durable_is_not_kept(store: SpoolStore) -> None:
    """Kept only if its files can be fsynced: otherwise it is deleted and the error raised (its
    client gets no 250), never committed half there."""
    msg, claim = _uncommitted(store)
    msg.content_path.unlink()  # (what a failing disk or a meddling filter might leave)
    with pytest.raises(OSError):
        claim.release()
    assert names(store.directory) == [] and not claim.active
    assert store.ready(ignore_backoff=True) == []


def test_the_crashed_store_sweep_leaves_an_uncommitted_claim_alone(store: SpoolStore) -> None:
    """A forward-first message is ``.new`` for as long as its next hop takes: however old, the
    sweep does not remove it while it is claimed; once released it is committed, not swept."""
    msg, claim = _uncommitted(store)
    past = time.time() - 3600
    os.utime(msg.envelope_path, (past, past))
    assert store.remove_crashed_stores(600) == []
    assert store.recover(new_age=600).removed_new == []
    assert sorted(names(store.directory)) == [f"{msg.id}.content", f"{msg.id}.envelope.new"]
    claim.abandon_claim()  # its owner gone without a word: now it is a crashed store
    assert store.remove_crashed_stores(600) == [msg.id]
    assert names(store.directory) == []


# ---------------------------------------------------------------- id uniqueness


def _store_many(store: SpoolStore, n: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait(60)
    for i in range(n):
        body = f"Subject: {os.getpid()} {i}\r\n\r\nmessage {os.getpid()}/{i}\r\n".encode()
        env = Envelope(from_address=f"p{os.getpid()}@example.com", to_remote=(f"r{i}@example.net",))
        store.store_message(env, body)
    os._exit(0)


def test_ids_unique_across_four_processes(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    shared = SpoolStore(spool, fsync=False)  # created before the fork: each child must restart its ids
    barrier = CTX.Barrier(4)
    procs = [CTX.Process(target=_store_many, args=(shared, 500, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    files = names(spool)
    contents = [n for n in files if n.endswith(".content")]
    envelopes = [n for n in files if n.endswith(".envelope")]
    assert len(files) == 4000 and len(contents) == 2000 and len(envelopes) == 2000
    ids = {n[: -len(".content")] for n in contents}
    assert ids == {n[: -len(".envelope")] for n in envelopes}
    seen = set()
    for mid in ids:
        body = (spool / f"{mid}.content").read_bytes()
        env = env_format.parse((spool / f"{mid}.envelope").read_bytes())
        pid, i = body.split(b"\r\n", 1)[0].decode().split()[1:]
        assert env.from_address == f"p{pid}@example.com" and env.to_remote == (f"r{i}@example.net",)
        assert MessageId.parse(mid).pid == int(pid)
        seen.add((pid, i))
    assert len(seen) == 2000
    assert {p for p, _ in seen} == {str(p.pid) for p in procs}


def test_created_mailbox_directories_are_0770_whatever_the_umask(store: SpoolStore, tmp_path: Path) -> None:
    mid = store.store_message(
        Envelope("a@example.com", to_remote=("b@example.net",)), b"Subject: x\r\n\r\nx\r\n"
    )
    old = os.umask(0o077)  # the relay's umask (upstream's)
    try:
        written = copy_to_directories(store, mid, State.READY, store.directory, ["alice"], create=True)
    finally:
        os.umask(old)
    mailbox = store.directory / "alice"
    assert written and stat.S_IMODE(mailbox.stat().st_mode) == 0o770


def test_ready_and_next_due_written_by_leaves_out_later_envelopes(store: SpoolStore) -> None:
    """The forward role's catch-up after a lost doorbell: only what was committed by then."""
    older = store.store_message(Envelope("a@example.com", to_remote=("b@example.net",)), b"x\r\n")
    newer = store.store_message(Envelope("a@example.com", to_remote=("b@example.net",)), b"y\r\n")
    t_older = store.envelope_path(older, State.READY).stat().st_mtime
    os.utime(store.envelope_path(newer, State.READY), (t_older + 2, t_older + 2))
    assert store.ready_and_next_due(written_by=t_older + 1, ignore_backoff=True)[0] == [older]
    assert store.ready_and_next_due(ignore_backoff=True)[0] == sorted([older, newer])


def test_deliver_and_copy_never_follow_a_symlinked_mailbox(store: SpoolStore, tmp_path: Path) -> None:
    """A filter running as --user may plant ``<base>/<mailbox>`` as a symlink: refused, never followed
    (deliver: makes mailboxes on demand); a maildir whose ``tmp`` is a symlink is not a maildir; copy:
    does not count a symlinked sub-directory as a mailbox."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.directory / "alice").symlink_to(outside)
    maildir = store.directory / "bob"
    for sub in ("new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "tmp").symlink_to(outside)
    mid = store.store_message(Envelope("a@example.com", to_remote=("b@example.net",)), b"x\r\n")
    with pytest.raises(OSError, match="symlink"):
        copy_to_directories(store, mid, State.READY, store.directory, ["alice"], create=True)
    written = copy_to_directories(store, mid, State.READY, store.directory, ["bob"], create=True)
    assert [p.parent for p in written] == [maildir]
    assert list(outside.iterdir()) == []
    assert store.mailboxes() == ["bob"]
    assert state_of(store, mid) is State.READY


def test_envelopes_are_not_written_through_a_symlink(store: SpoolStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched\n")
    mid = store.store_message(Envelope("a@example.com", to_remote=("b@example.net",)), b"x\r\n")
    os.rename(store.envelope_path(mid, State.READY), store.envelope_path(mid, State.BAD))
    bad = store.envelope_path(mid, State.BAD)
    bad.unlink()
    bad.symlink_to(victim)
    with pytest.raises(OSError):
        store.append_envelope_line(mid, State.BAD, "X-MailRelay-Note: x")
    assert victim.read_bytes() == b"untouched\n"


def test_a_fifo_or_symlink_planted_as_an_envelope_is_never_claimed(store: SpoolStore, tmp_path: Path) -> None:
    """Opening a FIFO would block a forwarder; a symlink would be read and forwarded as root."""
    fifo_id, link_id = MessageId.parse("emailrelay.1.1.1"), MessageId.parse("emailrelay.1.1.2")
    os.mkfifo(store.envelope_path(fifo_id, State.READY))
    secret = tmp_path / "secret"
    secret.write_bytes(b"X-MailRelay-Format: #2821.5\r\n")
    store.envelope_path(link_id, State.READY).symlink_to(secret)
    claimed: list[object] = []
    worker = threading.Thread(target=lambda: claimed.append(store.claim(fifo_id)), daemon=True)
    worker.start()
    worker.join(10)  # the old open() blocked here for good
    assert claimed == [None] and store.claim(link_id) is None
    assert state_of(store, fifo_id) is State.READY and state_of(store, link_id) is State.READY
