"""``emailrelay queue`` and the store's queue-tool methods, on real spool directories.

Spools are built with :class:`SpoolStore` (as our relay writes them) and from
upstream E-MailRelay 2.6's own files (fixtures/upstream-2.6), renamed to
message ids the way upstream names them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from emailrelay.cli import queue
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.envelope import parse as parse_envelope
from emailrelay.spool.names import MessageId, State
from emailrelay.spool.store import SpoolStore, SpoolStoreError
from tests.support.fixtures import UPSTREAM

ENV = Envelope(from_address="a@example.com", to_remote=("b@example.net", "c@example.net"), client="127.0.0.1")
CONTENT = b"Received: from x by y; now\r\nSubject: hello\r\nFrom: a@example.com\r\n\r\nbody\r\n"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = queue.main(list(argv), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


def upstream_spool(spool: Path) -> dict[str, str]:
    """Upstream's files under upstream-style names: ready, bad, busy."""
    ids = {
        "ready": "emailrelay.4242.1700000000.1",
        "bad": "emailrelay.4242.1700000000.2",
        "busy": "emailrelay.4242.1700000001.3",
    }
    shutil.copy(UPSTREAM / "auth-local-remote.envelope", spool / f"{ids['ready']}.envelope")
    shutil.copy(UPSTREAM / "auth-local-remote.content", spool / f"{ids['ready']}.content")
    shutil.copy(UPSTREAM / "failed.envelope.bad", spool / f"{ids['bad']}.envelope.bad")
    shutil.copy(UPSTREAM / "submitted.content", spool / f"{ids['bad']}.content")
    shutil.copy(UPSTREAM / "eightbit.envelope", spool / f"{ids['busy']}.envelope.busy")
    shutil.copy(UPSTREAM / "eightbit.content", spool / f"{ids['busy']}.content")
    for p in spool.iterdir():
        p.chmod(0o660)
    return ids


def test_list_upstream_spool_text_and_json(spool: Path) -> None:
    ids = upstream_spool(spool)
    rc, out, _ = run("list", "--spool-dir", str(spool))
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["ID", "STATE", "AGE", "SIZE", "RCPT", "FROM"]
    ready_line = next(line for line in lines if ids["ready"] in line)
    assert " ready " in ready_line and "alice@example.com" in ready_line
    bad_line = next(line for line in lines if ids["bad"] in line)
    assert "550 5.7.1 rejected for testing" in bad_line and " bad " in bad_line
    assert lines[-1].startswith("-- ") and "3 messages" in lines[-1] and "1 busy" in lines[-1]

    rc, out, _ = run("list", "-s", str(spool), "--json")
    items = {i["id"]: i for i in json.loads(out)}
    assert [i["id"] for i in json.loads(out)] == [ids["ready"], ids["bad"], ids["busy"]]  # oldest first
    ready = items[ids["ready"]]
    assert ready["state"] == "ready"
    assert ready["recipients"] == 3  # one local, two remote
    assert ready["sender"] == "alice@example.com"
    assert ready["size"] == (UPSTREAM / "auth-local-remote.content").stat().st_size
    assert ready["created"] == 1700000000 and ready["age"] >= int(time.time()) - 1700000000 - 1
    bad = items[ids["bad"]]
    assert (bad["reason"], bad["reason_code"], bad["retries"]) == ("5.7.1 rejected for testing", "550", 0)
    assert items[ids["busy"]]["state"] == "busy"


def test_list_filters_by_state_and_shows_backoff(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    a = store.store_message(ENV, CONTENT)
    b = store.store_message(ENV, CONTENT)
    later = time.time() + 3600
    os.utime(store.envelope_path(b, State.READY), (later, later))  # in back-off, as the forwarder records it
    assert store.hold(a)
    rc, out, _ = run("list", "-s", str(spool), "--state", "ready")
    assert rc == 0 and str(b) in out and str(a) not in out
    assert "(retry in " in out
    rc, out, _ = run("list", "-s", str(spool), "--json", "--state", "held")
    assert [i["id"] for i in json.loads(out)] == [str(a)]


def defer(store: SpoolStore, mid: MessageId, reason: str, code: int | None, delay: float = 600) -> None:
    """What a forwarder does when the next hop defers the message."""
    claim = store.claim(mid)
    assert claim is not None
    claim.release(not_before=time.time() + delay, reason=reason, code=code)


def test_list_says_why_a_deferred_message_waits_like_mailq(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    waiting = store.store_message(ENV, CONTENT)
    fresh = store.store_message(ENV, CONTENT)
    defer(store, waiting, "cannot connect to 192.0.2.1:25: Connection refused", None)
    defer(store, waiting, "4.7.1 greylisted, try again later", 451)
    rc, out, _ = run("list", "-s", str(spool))
    assert rc == 0
    lines = out.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith(str(waiting)))
    assert re.search(r" ready .*\(retry in 9m[0-9]{2}s\)$", lines[at])
    assert re.fullmatch(
        r"    \(451 4\.7\.1 greylisted, try again later; 2 attempts, last [0-9]+s ago\)", lines[at + 1]
    )
    assert lines[at + 2 : at + 4] == ["    b@example.net", "    c@example.net"]  # every recipient
    at = next(n for n, line in enumerate(lines) if line.startswith(str(fresh)))
    assert lines[at + 1 : at + 3] == ["    b@example.net", "    c@example.net"]  # never tried: no reason

    items = {i["id"]: i for i in json.loads(run("list", "-s", str(spool), "--json")[1])}
    item = items[str(waiting)]
    assert (item["reason"], item["reason_code"], item["attempts"], item["deferred"]) == (
        "4.7.1 greylisted, try again later", "451", 2, True,
    )  # fmt: skip
    assert item["to"] == ["b@example.net", "c@example.net"] and item["error"] is None
    assert item["not_before"] > time.time() + 500 and time.time() - 60 < item["last_try"] <= time.time()
    assert items[str(fresh)]["reason"] is None and items[str(fresh)]["deferred"] is False

    assert [
        i["id"] for i in json.loads(run("list", "-s", str(spool), "--json", "--state", "deferred")[1])
    ] == [str(waiting)]


def test_the_deferral_record_lives_and_dies_with_the_message(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    forwarded, failed, deleted, gone = (store.store_message(ENV, CONTENT) for _ in range(4))
    for mid in (forwarded, failed, deleted, gone):
        defer(store, mid, "connection refused", None, delay=0)
    record = store.deferral(forwarded)
    assert record is not None and (record.reason, record.code, record.attempts) == (
        "connection refused",
        None,
        1,
    )
    assert sorted(p.name for p in spool.iterdir() if p.name.startswith(".")) == sorted(
        f".{m}.deferral" for m in (forwarded, failed, deleted, gone)
    )
    claim = store.claim(forwarded)
    assert claim is not None
    claim.remove()
    claim = store.claim(failed)
    assert claim is not None
    claim.fail("5.1.1 no such user", 550)
    assert store.delete(deleted, State.READY)
    os.unlink(store.envelope_path(gone, State.READY))  # as upstream forwards it: the record stays behind
    assert [store.deferral(m) for m in (forwarded, failed, deleted)] == [None, None, None]
    assert store.deferral(gone) is not None
    # the .bad shows the envelope's reason, not the old deferral
    (item,) = json.loads(run("list", "-s", str(spool), "--json", "--state", "failed")[1])
    assert (item["id"], item["reason"], item["deferred"]) == (str(failed), "5.1.1 no such user", False)
    assert store.recover().removed_deferrals == 1
    assert not [p for p in spool.iterdir() if p.name.startswith(".")]


def test_a_planted_deferral_record_is_neither_followed_nor_believed(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    mid = store.store_message(ENV, CONTENT)
    secret = spool.parent / "secret"
    secret.write_text('{"reason": "from the secret file", "at": 1}')
    (spool / f".{mid}.deferral").symlink_to(secret)
    assert store.deferral(mid) is None  # a symlink is not read
    (spool / f".{mid}.deferral").unlink()
    (spool / f".{mid}.deferral").write_text("not json")
    assert store.deferral(mid) is None
    defer(store, mid, "refused", None)  # replaced by a real record
    record = store.deferral(mid)
    assert record is not None and record.reason == "refused" and record.attempts == 1
    assert secret.read_text().startswith('{"reason": "from the secret file"')


def test_show_says_why_and_prints_the_body(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    mid = store.store_message(ENV, CONTENT)
    defer(store, mid, "4.3.0 mailbox busy", 452)
    rc, out, _ = run("show", "-s", str(spool), str(mid))
    assert rc == 0
    assert (
        "deferred-reason:          4.3.0 mailbox busy\n" in out and "deferred-code:            452\n" in out
    )
    assert "attempts:                 1\n" in out and re.search(r"^next-try: +20[0-9-]+ ", out, re.M)
    assert out.rstrip().endswith("  From: a@example.com")  # headers only
    rc, out, _ = run("show", "-s", str(spool), str(mid), "--body")
    assert rc == 0 and out.endswith("message:\n" + CONTENT.decode().replace("\r\n", "\n"))
    info = json.loads(run("show", "-s", str(spool), str(mid), "--json", "--body")[1])
    assert info["body"] == CONTENT.decode() and info["deferred-reason"] == "4.3.0 mailbox busy"
    assert info["deferred-code"] == 452 and info["attempts"] == 1


def test_delete_all_and_by_state(spool: Path) -> None:
    ids = upstream_spool(spool)  # ready, bad, busy
    store = SpoolStore(spool, fsync=False)
    held = store.store_message(ENV, CONTENT)
    assert store.hold(held)
    deferred = store.store_message(ENV, CONTENT)
    defer(store, deferred, "refused", None)
    rc, out, _ = run("delete", "-s", str(spool), "--state", "deferred", "-v")
    assert rc == 0 and out == f"delete: {deferred}\ndeleted 1 message\n"
    rc, out, _ = run("delete", "-s", str(spool), "--state", "held", "--state", "failed")
    assert rc == 0 and out == "deleted 2 messages\n"
    assert store.find(str(held)) is None and store.find(ids["bad"]) is None
    rc, out, _ = run("delete", "-s", str(spool), "--all")
    assert rc == 0 and out == "deleted 1 message\n"  # the ready one; never the busy one
    assert sorted(p.name for p in spool.iterdir()) == [
        f"{ids['busy']}.content",
        f"{ids['busy']}.envelope.busy",
    ]
    rc, _, err = run("delete", "-s", str(spool), "--all", "--state", "held")
    assert rc == 1 and "not both" in err


def test_list_empty_and_unreadable_envelope(spool: Path) -> None:
    assert run("list", "-s", str(spool))[1] == "spool is empty\n"
    (spool / "emailrelay.1.1700000000.1.envelope").write_bytes(b"garbage\r\n")
    rc, out, _ = run("list", "-s", str(spool), "--json")
    (item,) = json.loads(out)
    assert rc == 0 and item["sender"] is None and "not an envelope field" in item["error"]
    assert "(unreadable:" in run("list", "-s", str(spool))[1]


def test_missing_spool_is_an_error(tmp_path: Path) -> None:
    rc, _, err = run("list", "-s", str(tmp_path / "nope"))
    assert rc == 1 and "invalid spool directory" in err


def test_show_by_id_file_name_and_path(spool: Path) -> None:
    ids = upstream_spool(spool)
    for ref in (ids["bad"], f"{ids['bad']}.envelope.bad", str(spool / f"{ids['bad']}.content")):
        rc, out, _ = run("show", "-s", str(spool), ref)
        assert rc == 0, ref
        assert f"id:                       {ids['bad']}" in out
        assert "state:                    bad" in out
        assert "to-remote:                b@example.net" in out
        assert "reason-code:              550" in out
        assert out.rstrip().endswith("  Subject: submitted")
    rc, out, _ = run("show", "-s", str(spool), ids["ready"], "--json")
    info = json.loads(out)
    assert info["to-local"] == ["postmaster"] and info["to-remote"] == [
        "bob@example.net",
        "carol@example.org",
    ]
    assert info["authentication"] == "alice" and info["headers"][0].startswith("Received: ")
    assert info["content"] == str(spool / f"{ids['ready']}.content")
    rc, _, err = run("show", "-s", str(spool), "emailrelay.9.9.9")
    assert rc == 1 and "no such message" in err
    rc, _, err = run("show", "-s", str(spool), "../../etc/passwd")
    assert rc == 1 and "no such message" in err


def test_retry_unfails_and_clears_backoff(spool: Path) -> None:
    ids = upstream_spool(spool)
    store = SpoolStore(spool, fsync=False)
    rc, out, _ = run("retry", "-s", str(spool), ids["bad"])
    assert rc == 0 and out == "retried 1 message\n"
    assert store.find(ids["bad"]) == (MessageId.parse(ids["bad"]), State.READY)
    # the reason lines stay (upstream's behaviour) until the next failure replaces them
    assert b"X-MailRelay-Reason:" in store.envelope_bytes(ids["bad"], State.READY)
    later = time.time() + 3600
    os.utime(store.envelope_path(ids["bad"], State.READY), (later, later))
    assert store.ready() == [MessageId.parse(ids["ready"])]
    rc, _, _ = run("retry", "-s", str(spool), ids["bad"])
    assert rc == 0 and MessageId.parse(ids["bad"]) in store.ready()
    rc, _, err = run("retry", "-s", str(spool), ids["busy"])
    assert rc == 1 and "cannot retry a busy message" in err


def test_delete_never_touches_a_busy_message(spool: Path) -> None:
    ids = upstream_spool(spool)
    rc, out, err = run("delete", "-s", str(spool), ids["busy"], ids["ready"])
    assert rc == 1
    assert "busy: being forwarded, not deleted" in err and out == "deleted 1 message\n"
    names = sorted(p.name for p in spool.iterdir())
    assert f"{ids['busy']}.envelope.busy" in names and f"{ids['busy']}.content" in names
    assert not any(n.startswith(ids["ready"]) for n in names)
    rc, out, _ = run("delete", "-s", str(spool), "--all-failed")
    assert rc == 0 and out == "deleted 1 message\n"
    assert sorted(p.name for p in spool.iterdir()) == [
        f"{ids['busy']}.content",
        f"{ids['busy']}.envelope.busy",
    ]


def test_usage_errors(spool: Path) -> None:
    rc, _, err = run("delete", "-s", str(spool))
    assert rc == 1 and "no message id given" in err
    rc, _, err = run("retry", "-s", str(spool), "--all-failed", "emailrelay.1.2.3")
    assert rc == 1 and "not both" in err
    with pytest.raises(SystemExit) as exc:
        run("frobnicate")
    assert exc.value.code == 2


def test_hold_and_release(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    mid = store.store_message(ENV, CONTENT)
    rc, out, _ = run("hold", "-s", str(spool), str(mid))
    assert rc == 0 and out == "held 1 message\n"
    assert store.find(str(mid)) == (mid, State.HELD)
    assert store.ready() == [] and store.claim(mid) is None  # forwarders cannot take it
    rc, _, err = run("retry", "-s", str(spool), str(mid))
    assert rc == 1 and "use 'release'" in err
    rc, out, _ = run("release", "-s", str(spool), str(mid), "-v")
    assert rc == 0 and out == f"release: {mid}\nreleased 1 message\n"
    assert store.ready() == [mid]
    rc, _, err = run("release", "-s", str(spool), str(mid))
    assert rc == 1 and "not held (ready)" in err


def test_retry_all_failed_over_thousands_with_progress(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    n = 3000
    for _ in range(n):
        msg = store.create()
        msg.write(CONTENT)
        msg.write_envelope(ENV.with_failure("550 no", 550))
        msg.commit()
        os.rename(store.envelope_path(msg.id, State.READY), store.envelope_path(msg.id, State.BAD))
    started = time.monotonic()
    rc, out, err = run("retry", "-s", str(spool), "--all-failed", "--progress")
    elapsed = time.monotonic() - started
    assert rc == 0 and out == f"retried {n} messages\n"
    assert err.splitlines()[-1] == f"retry: {n}/{n}"
    assert len(store.ready()) == n
    assert elapsed < 30


def test_progress_redraws_in_place_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    p = queue.Progress("retry", 3, stream=stream)
    for _ in range(3):
        p.step()
    p.finish()
    text = stream.getvalue()
    assert text.startswith("\rretry: 1/3") and text.endswith("\rretry: 3/3\n")
    quiet = io.StringIO()
    p = queue.Progress("retry", 3, stream=quiet)  # not a tty, no --progress: silent
    p.step()
    p.finish()
    assert quiet.getvalue() == ""


def test_parse_id_and_retry_count() -> None:
    mid = MessageId.parse("emailrelay.12.1700000000.3")
    for text in (str(mid), f"{mid}.content", f"{mid}.envelope.bad", f"/var/spool/emailrelay/{mid}.envelope"):
        assert queue.parse_id(text) == mid
    # any other last path component is an id as upstream takes it (a "foreign" one), never a path
    assert queue.parse_id("emailrelay.12.1700000000.3.envelope.x") == MessageId.parse(
        "emailrelay.12.1700000000.3.envelope.x"
    )
    assert queue.parse_id("../emailrelay.001.content") == MessageId.parse("emailrelay.001")
    assert queue.parse_id("..") is None and queue.parse_id("/") is None
    base = (UPSTREAM / "failed.envelope.bad").read_bytes()
    assert queue.retry_count(base) == 0
    assert queue.retry_count(base + b"X-MailRelay-Retry: 1\r\nX-MailRelay-Retry: 2\r\n") == 2
    # upstream appends a Reason line at every failure: three failures, two resubmissions
    upstream = base + b"X-MailRelay-Reason: again\r\nX-MailRelay-ReasonCode: 550\r\n" * 2
    assert queue.retry_count(upstream) == 2
    assert queue.retry_count(upstream.replace(b"\r\n", b"\n")) == 2


# ---- the store's queue tool support ------------------------------------------------------


def test_append_envelope_line_keeps_envelope_readable(spool: Path) -> None:
    shutil.copy(UPSTREAM / "failed.envelope.bad", spool / "emailrelay.7.1700000000.1.envelope.bad")
    store = SpoolStore(spool, fsync=False)
    mid = MessageId.parse("emailrelay.7.1700000000.1")
    assert store.append_envelope_line(mid, State.BAD, "X-MailRelay-Retry: 1")
    raw = store.envelope_bytes(mid, State.BAD)
    assert raw.endswith(b"X-MailRelay-ReasonCode: 550\r\nX-MailRelay-Retry: 1\r\n")
    env = parse_envelope(raw)
    assert env.reason == "5.7.1 rejected for testing" and env.extra_tail == ("X-MailRelay-Retry: 1",)
    # a later failure by our relay replaces the reason and keeps the line
    again = parse_envelope(env.with_failure("451 later", 451).to_bytes())
    assert again.extra_tail == ("X-MailRelay-Retry: 1",) and again.reason == "451 later"
    # and a later failure by upstream appends its reason lines after it: still readable
    upstream = parse_envelope(raw + b"X-MailRelay-Reason: again\r\nX-MailRelay-ReasonCode: 550\r\n")
    assert upstream.reason == "again" and upstream.extra_tail == ("X-MailRelay-Retry: 1",)
    with pytest.raises(SpoolStoreError):
        store.append_envelope_line(mid, State.BAD, "X-MailRelay-Retry: 1\r\nX-MailRelay-From: evil")
    with pytest.raises(SpoolStoreError):
        store.append_envelope_line(mid, State.BAD, "Subject: not ours")
    with pytest.raises(SpoolStoreError):
        store.append_envelope_line(mid, State.BUSY, "X-MailRelay-Retry: 1")
    assert not store.append_envelope_line(
        MessageId.parse("emailrelay.7.1700000000.9"), State.BAD, "X-MailRelay-A: 1"
    )


def test_probe_writable_free_bytes_and_tool_files(spool: Path, tmp_path: Path) -> None:
    store = SpoolStore(spool)
    store.probe_writable()
    assert list(spool.iterdir()) == []
    assert store.free_bytes() > 0
    store.write_tool_file("emailrelay-notify.state", b"x\n")
    assert store.read_tool_file("emailrelay-notify.state") == b"x\n"
    assert (spool / ".emailrelay-notify.state").exists()
    assert list(store.scan()) == []  # never mistaken for a message
    for bad in ("../x", "a/b", ".hidden", "emailrelay.1.2.3.envelope", ""):
        with pytest.raises(SpoolStoreError):
            store.tool_file(bad)
    gone = SpoolStore(tmp_path / "file-not-dir")
    (tmp_path / "file-not-dir").write_text("")
    with pytest.raises(SpoolStoreError, match="not writable"):
        gone.probe_writable()


def test_make_due_and_content_helpers(spool: Path) -> None:
    store = SpoolStore(spool, fsync=False)
    mid = store.store_message(ENV, CONTENT)
    later = time.time() + 600
    os.utime(store.envelope_path(mid, State.READY), (later, later))
    assert store.ready() == []
    assert store.make_due(mid) and store.ready() == [mid]
    assert store.content_size(mid) == len(CONTENT)
    assert store.content_head(mid, 10) == CONTENT[:10]
    assert store.content_size(MessageId.parse("emailrelay.1.1.1")) is None
    assert store.content_head(MessageId.parse("emailrelay.1.1.1")) == b""
    assert not store.make_due(MessageId.parse("emailrelay.1.1.1"))
