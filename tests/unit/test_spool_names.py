"""Spool names (SPEC.md §3): the id format, parsing, and names that must never be accepted."""

from __future__ import annotations

import multiprocessing
import os
import re
import time

import pytest

from emailrelay.spool.names import (
    MAX_ID_LENGTH,
    IdAllocator,
    MessageId,
    State,
    content_name,
    envelope_name,
    is_valid_id,
    split_content_name,
    split_envelope_name,
)

ID_RE = re.compile(r"emailrelay\.([0-9]+)\.([0-9]+)\.([0-9]+)")


def test_allocator_format_pid_time_and_sequence() -> None:
    alloc = IdAllocator()
    before = int(time.time())
    ids = [alloc.next() for _ in range(5)]
    after = int(time.time())
    for n, mid in enumerate(ids, 1):
        m = ID_RE.fullmatch(str(mid))
        assert m, str(mid)
        assert int(m.group(1)) == os.getpid()
        assert before <= int(m.group(2)) <= after
        assert int(m.group(3)) == n  # seq counts from 1 in each storing process
    assert len(set(ids)) == 5


def _child_ids(alloc: IdAllocator, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put([str(alloc.next()) for _ in range(3)])


def test_allocator_restarts_sequence_in_a_forked_child() -> None:
    alloc = IdAllocator()
    parent_first = alloc.next()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_ids, args=(alloc, queue))
    proc.start()
    try:
        child = queue.get(timeout=30)
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    pids = {ID_RE.fullmatch(c).group(1) for c in child}  # type: ignore[union-attr]
    assert pids == {str(proc.pid)} and str(proc.pid) != str(os.getpid())
    assert [c.rsplit(".", 1)[1] for c in child] == ["1", "2", "3"]
    assert alloc.next().seq == parent_first.seq + 1  # the parent's sequence is untouched


def test_parse_round_trip_and_order() -> None:
    mid = MessageId.parse("emailrelay.22602.1795611775.12")
    assert (mid.pid, mid.time, mid.seq) == (22602, 1795611775, 12)
    assert str(mid) == "emailrelay.22602.1795611775.12"
    earlier = MessageId.parse("emailrelay.99999.1795611774.500")
    assert earlier < mid  # time first
    assert MessageId.parse("emailrelay.1.1795611775.2") < MessageId.parse("emailrelay.1.1795611775.10")
    assert sorted([mid, earlier]) == [earlier, mid]


def test_names_of_each_state() -> None:
    mid = MessageId(time=1795611775, pid=22602, seq=1)
    assert content_name(mid) == "emailrelay.22602.1795611775.1.content"
    assert envelope_name(mid, State.READY) == "emailrelay.22602.1795611775.1.envelope"
    assert envelope_name(mid, State.NEW) == "emailrelay.22602.1795611775.1.envelope.new"
    assert envelope_name(mid, State.BUSY) == "emailrelay.22602.1795611775.1.envelope.busy"
    assert envelope_name(mid, State.BAD) == "emailrelay.22602.1795611775.1.envelope.bad"
    for state in State:
        assert split_envelope_name(envelope_name(mid, state)) == (mid, state)
    assert split_content_name(content_name(mid)) == mid


@pytest.mark.parametrize(
    "text",
    ["emailrelay.1.2.3", "emailrelay.22602.1795611775.1", "emailrelay.4194304.1795611775.999999"],
)
def test_valid_ids(text: str) -> None:
    assert is_valid_id(text)
    assert str(MessageId.parse(text)) == text


# Not ids of our form, but E-MailRelay 2.6b forwards <id>.envelope with <id>.content for any of them.
FOREIGN = [
    "foo",
    "emailrelay.001",
    "a.b.c",
    "x..y",
    ".hidden",
    "-dash",
    "sp ace",
    'q"uote',
    "semi;colon",
    "\u00fcmlaut",
    "emailrelay",
    "emailrelay.1.2",
    "emailrelay.1.2.3.4",
    "emailrelay.1.2.x",
    "emailrelay.-1.2.3",
    "emailrelay.1.2.3 ",
    " emailrelay.1.2.3",
    "Emailrelay.1.2.3",
    "other.1.2.3",
    "emailrelay.1..3",
    "emailrelay.1.2.3.content",
    "emailrelay.1.2.3.envelope",
    "emailrelay.1.2." + "9" * 40,
    "emailrelay.\u0661.2.3",  # not our form: unicode digits
    "x" * MAX_ID_LENGTH,
]


@pytest.mark.parametrize("text", FOREIGN, ids=[repr(t) for t in FOREIGN])
def test_foreign_ids_are_accepted_as_text(text: str) -> None:
    assert is_valid_id(text)
    mid = MessageId.parse(text)
    assert mid.is_foreign and str(mid) == text and (mid.time, mid.pid, mid.seq) == (0, 0, 0)
    assert split_envelope_name(f"{text}.envelope.busy") == (mid, State.BUSY)
    assert split_content_name(f"{text}.content") == mid


def test_foreign_ids_sort_first_by_name_ours_by_time() -> None:
    ids = [MessageId.parse(t) for t in ("emailrelay.9.200.1", "foo", "emailrelay.1.100.7", "a.b")]
    assert [str(m) for m in sorted(ids)] == ["a.b", "foo", "emailrelay.1.100.7", "emailrelay.9.200.1"]
    assert not MessageId.parse("emailrelay.1.100.7").is_foreign


# Never an id: they would name another directory, hide a NUL or a control character, or be too long.
HOSTILE = [
    "",
    "../emailrelay.1.2.3",
    "emailrelay.1.2.3/..",
    "emailrelay.1.2.3/../../etc/passwd",
    "/etc/emailrelay.1.2.3",
    "a/b",
    "..",
    ".",
    "emailrelay.1.2.3\x00",
    "emailrelay.1.2.3\x00/../x",
    "emailrelay.1.2.3\r",
    "emailrelay.1.2.3\n",
    "tab\there",
    "del\x7f",
    "x" * (MAX_ID_LENGTH + 1),
]


@pytest.mark.parametrize("text", HOSTILE, ids=[repr(t) for t in HOSTILE])
def test_hostile_ids_are_rejected(text: str) -> None:
    assert not is_valid_id(text)
    with pytest.raises(ValueError):
        MessageId.parse(text)


def test_id_with_trailing_newline_is_rejected() -> None:
    assert not is_valid_id("emailrelay.1.2.3\n")
    assert split_envelope_name("emailrelay.1.2.3\n.envelope") is None


ENTRY_NAMES = [
    "../emailrelay.1.2.3.envelope",
    "x/emailrelay.1.2.3.envelope",
    "emailrelay.1.2.3.envelope/../../x",
    "emailrelay.1.2.3.envelope.bad/../../etc/passwd",
    "emailrelay.1.2.3.envelope.busy.tmp",
    "emailrelay.1.2.3.envelope.other",
    "emailrelay.1.2.3.envelope.",
    "emailrelay.1.2.3.content",
    ".envelope",
    "..envelope",
    "emailrelay.1.2.3.envelope\x00.bad",
    "emailrelay.1.2.3.envelopes",
    "a\nb.envelope",
]


@pytest.mark.parametrize("name", ENTRY_NAMES, ids=[repr(n) for n in ENTRY_NAMES])
def test_split_envelope_name_rejects_other_entries(name: str) -> None:
    assert split_envelope_name(name) is None


def test_split_envelope_name_takes_the_last_envelope_suffix() -> None:
    mid = MessageId.parse("emailrelay.1.2.3.envelope.new")
    assert split_envelope_name("emailrelay.1.2.3.envelope.new.envelope") == (mid, State.READY)


@pytest.mark.parametrize(
    "name",
    ["../emailrelay.1.2.3.content", "emailrelay.1.2.3.content.tmp", ".content", "a/b.content"],
)
def test_split_content_name_rejects_other_entries(name: str) -> None:
    assert split_content_name(name) is None
