"""The built-in filters in real use: exit:, copy:, deliver:, split:, msgid:."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from emailrelay.policy.spec import SpecUsageError
from emailrelay.policy.verdicts import FilterOutcome
from emailrelay.spool import envelope as envelope_format
from emailrelay.spool.names import State
from emailrelay.spool.store import SpoolStore
from tests.support.policy import (
    client_chain,
    content,
    envelope,
    logs_fixture,  # noqa: F401 - fixture
    new_message,
    server_chain,
    store_fixture,  # noqa: F401 - fixture
)


def envelopes(directory: Path, suffix: str = ".envelope") -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(0, FilterOutcome.OK), (1, FilterOutcome.REJECT), (100, FilterOutcome.ABANDON), (102, FilterOutcome.ABANDON),
     (103, FilterOutcome.RESCAN), (107, FilterOutcome.REJECT), (200, FilterOutcome.REJECT)],
)  # fmt: skip
async def test_exit(store: SpoolStore, code: int, outcome: FilterOutcome) -> None:
    """Server side, as E-MailRelay 2.6b: a rejection's response is ``rejected``, its reason ``exit:N``."""
    msg = new_message(store)
    result = await server_chain(store, f"exit:{code}").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert (result.outcome, result.exit_code) == (outcome, code)
    if outcome is FilterOutcome.REJECT:
        assert (result.reason, result.detail) == ("rejected", f"exit:{code}")


# ---- copy: -------------------------------------------------------------------------------------------
def _mailboxes(store: SpoolStore, *names: str) -> None:
    for name in names:
        (store.directory / name).mkdir()


async def test_copy_into_every_subdirectory(store: SpoolStore) -> None:
    _mailboxes(store, "alice", "bob", "postmaster", ".hidden")
    data = content("copy me")
    msg = new_message(store, data)
    result = await server_chain(store, "copy:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert result.outcome is FilterOutcome.ABANDON
    assert not msg.content_path.exists() and not msg.envelope_path.exists()
    for name in ("alice", "bob"):
        sub = store.directory / name
        assert (sub / f"{msg.id}.content").read_bytes() == data
        assert (sub / f"{msg.id}.envelope").exists()
    assert not list((store.directory / "postmaster").iterdir())
    assert not list((store.directory / ".hidden").iterdir())


async def test_copy_hardlink_nodelete(store: SpoolStore) -> None:
    _mailboxes(store, "alice", "bob")
    msg = new_message(store)
    result = await server_chain(store, "copy:hardlink;nodelete").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK
    assert msg.envelope_path.exists()
    inode = msg.content_path.stat().st_ino
    assert (store.directory / "alice" / f"{msg.id}.content").stat().st_ino == inode
    assert msg.content_path.stat().st_nlink == 3


async def test_copy_pop_copies_only_the_envelope(store: SpoolStore) -> None:
    _mailboxes(store, "alice", "bob")
    msg = new_message(store)
    result = await server_chain(store, "copy:pop").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.ABANDON  # upstream's ok(abandon): nothing to commit, content kept
    assert msg.content_path.exists() and not msg.envelope_path.exists()
    for name in ("alice", "bob"):
        assert [p.name for p in (store.directory / name).iterdir()] == [f"{msg.id}.envelope"]


async def test_copy_maildir(store: SpoolStore) -> None:
    _mailboxes(store, "alice", "md", "md/new", "md/tmp", "md/cur")
    data = content("maildir")
    msg = new_message(store, data)
    await server_chain(store, "copy:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    new = list((store.directory / "md" / "new").iterdir())  # E-MailRelay 2.6b's maildir name
    assert len(new) == 1 and new[0].read_bytes() == data
    assert re.fullmatch(rf"\d+\.\d{{1,6}}\.{os.getpid()}\.[^/:]+\.\d+", new[0].name), new[0].name
    assert not list((store.directory / "md" / "cur").iterdir())
    assert not list((store.directory / "md" / "tmp").iterdir())
    assert not [p for p in (store.directory / "md").iterdir() if p.is_file()]


async def test_copy_without_subdirectories_keeps_the_message(store: SpoolStore) -> None:
    msg = new_message(store)
    result = await server_chain(store, "copy:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert result.outcome is FilterOutcome.OK and msg.envelope_path.exists()


async def test_copy_as_client_filter(store: SpoolStore) -> None:
    _mailboxes(store, "alice")
    mid = store.store_message(envelope(), content())
    claim = store.claim(mid)
    assert claim is not None
    result = await client_chain(store, "copy:").filter(mid, str(claim.content_path), str(claim.envelope_path))
    assert result.outcome is FilterOutcome.ABANDON
    claim.abandon_claim()
    assert [p.name for p in envelopes(store.directory / "alice")] == [f"{mid}.envelope"]
    assert not [p for p in store.directory.iterdir() if p.is_file()]


# ---- deliver: -------------------------------------------------------------------------------------------
async def test_deliver_only_local_recipients(store: SpoolStore, logs) -> None:
    env = envelope_format.Envelope(from_address="a@b", to_local=("alice", "bob", "alice"), client="127.0.0.1")
    data = content("for you")
    msg = new_message(store, data, env)
    result = await server_chain(store, "deliver:").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.ABANDON
    assert not msg.content_path.exists() and not msg.envelope_path.exists()
    for name in ("alice", "bob"):
        box = store.directory / name
        assert (box / f"{msg.id}.content").read_bytes() == data
        assert envelope_format.parse((box / f"{msg.id}.envelope").read_bytes()).to_local == (
            "alice",
            "bob",
            "alice",
        )
    assert "delivery: recipient [alice]: delivery to mailbox [alice]" in logs.text()  # upstream's line


async def test_deliver_mixed_keeps_the_original(store: SpoolStore, tmp_path: Path) -> None:
    boxes = tmp_path / "mailboxes"
    (boxes / "carol" / "new").mkdir(parents=True)
    (boxes / "carol" / "tmp").mkdir()
    (boxes / "carol" / "cur").mkdir()
    env = envelope("remote@example.net", to_local=("carol", "dave"))
    msg = new_message(store, content("mixed"), env)
    result = await server_chain(store, "deliver:", delivery_dir=boxes).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK
    assert msg.envelope_path.exists()
    new = list((boxes / "carol" / "new").iterdir())
    assert len(new) == 1 and new[0].read_bytes() == msg.content_path.read_bytes()
    assert (boxes / "dave" / f"{msg.id}.envelope").exists()
    assert not (store.directory / "dave").exists()


async def test_deliver_nodelete_and_no_locals(store: SpoolStore) -> None:
    """``deliver:nodelete`` is refused, as E-MailRelay 2.6b refuses it; ``deliver:<n>`` (upstream's only
    parameter) delivers as ``deliver:`` (the number is ignored): all recipients local, the original is
    gone; no local recipient, nothing happens."""
    with pytest.raises(SpecUsageError, match="expected unsigned integer: nodelete"):
        server_chain(store, "deliver:nodelete")
    msg = new_message(store, env=envelope_format.Envelope(from_address="", to_local=("eve",)))
    result = await server_chain(store, "deliver:7").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.ABANDON and not msg.envelope_path.exists()
    assert (store.directory / "eve" / f"{msg.id}.envelope").exists()
    plain = new_message(store)
    result = await server_chain(store, "deliver:").filter(
        plain.id, str(plain.content_path), str(plain.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK and plain.envelope_path.exists()


@pytest.mark.parametrize("mailbox", ["..", ".", "a/b", "a\\b"])
async def test_deliver_refuses_bad_mailbox_names(store: SpoolStore, mailbox: str, tmp_path: Path) -> None:
    msg = new_message(store)
    data = msg.envelope_path.read_bytes().replace(
        b"X-MailRelay-ToCount: 1\r\n",
        b"X-MailRelay-ToCount: 2\r\nX-MailRelay-To-Local: " + mailbox.encode() + b"\r\n",
    )
    msg.envelope_path.write_bytes(data)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = await server_chain(store, "deliver:").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.REJECT
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# ---- split: ---------------------------------------------------------------------------------------------
async def test_split_three_ways(store: SpoolStore) -> None:
    env = envelope("a1@one.example", "b1@Two.Example", "a2@ONE.example", "c1@three.example", "b2@two.example")
    data = content("split")
    msg = new_message(store, data, env)
    result = await server_chain(store, "split:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert result.outcome is FilterOutcome.RESCAN and result.rescan
    msg.commit()
    found = {}
    for path in envelopes(store.directory):
        e = envelope_format.parse(path.read_bytes())
        found[e.forward_to] = (e.to_remote, path)
    # ForwardTo is the first recipient's domain as written (E-MailRelay 2.6b)
    assert set(found) == {"one.example", "Two.Example", "three.example"}
    assert found["one.example"][0] == ("a1@one.example", "a2@ONE.example")
    assert found["Two.Example"][0] == ("b1@Two.Example", "b2@two.example")
    assert found["three.example"][0] == ("c1@three.example",)
    assert found["one.example"][1].name == f"{msg.id}.envelope"  # the original keeps the first domain
    new = sorted(
        p.name.split(".envelope")[0] for _, p in found.values() if not p.name.startswith(str(msg.id))
    )
    for _, path in found.values():  # every envelope of the group lists the group, the original first
        tail = path.read_bytes().split(b"X-MailRelay-End: 1\r\n")[1].decode()
        assert tail == "X-MailRelay-SplitGroupCount: 3\r\n" + "".join(
            f"X-MailRelay-SplitGroup: {i}\r\n" for i in (str(msg.id), *new)
        )
    inodes = {store.content_path(p.name.split(".envelope")[0]).stat().st_ino for _, p in found.values()}
    assert len(inodes) == 1  # hard links
    for _, path in found.values():
        assert store.content_path(path.name.split(".envelope")[0]).read_bytes() == data


async def test_split_raw_and_single_domain(store: SpoolStore) -> None:
    msg = new_message(store, env=envelope("a@Example.com", "b@example.com"))
    result = await server_chain(store, "split:raw").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.RESCAN
    single = new_message(store, env=envelope("a@Example.com", "b@example.COM"))
    result = await server_chain(store, "split:").filter(
        single.id, str(single.content_path), str(single.envelope_path)
    )
    assert result.outcome is FilterOutcome.OK
    assert envelope_format.parse(single.envelope_path.read_bytes()).forward_to == "Example.com"
    assert b"SplitGroup" not in single.envelope_path.read_bytes()  # nothing split: no group lines


async def test_split_then_mx_routing_as_client_filter(store: SpoolStore) -> None:
    """split: as a client filter keeps the claim's lock (in-place rewrite)."""
    mid = store.store_message(envelope("a@one.example", "b@two.example"), content())
    claim = store.claim(mid)
    assert claim is not None
    inode = os.stat(claim.envelope_path).st_ino
    result = await client_chain(store, "split:").filter(
        mid, str(claim.content_path), str(claim.envelope_path)
    )
    assert result.rescan
    assert os.stat(claim.envelope_path).st_ino == inode
    assert claim.envelope(reread=True).to_remote == ("a@one.example",)
    assert store.recover().released == []
    claim.release()
    assert len(store.ready()) == 2


# ---- msgid: ---------------------------------------------------------------------------------------------
async def test_msgid_adds_a_message_id_as_the_first_line(store: SpoolStore) -> None:
    """E-MailRelay 2.6b's place (before its Received line) and form ``<secs.usecs.pid.n@domain>``."""
    data = b"Received: from x\r\nSubject: hi\r\n folded: Message-ID: not a header\r\n\r\nbody\r\nMessage-ID: <in@body>\r\n"
    msg = new_message(store, data)
    result = await server_chain(store, "msgid:", domain="relay.example").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.ok
    first, _, rest = msg.content_path.read_bytes().partition(b"\r\n")
    assert re.fullmatch(rb"Message-ID: <\d+\.\d+\.\d+\.\d+@relay\.example>", first)
    assert rest == data


async def test_msgid_leaves_a_message_that_has_one(store: SpoolStore) -> None:
    data = b"Subject: hi\r\nmessage-id: <x@y>\r\n\r\nbody\r\n"
    msg = new_message(store, data)
    inode = msg.content_path.stat().st_ino
    await server_chain(store, "msgid:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert msg.content_path.read_bytes() == data
    assert msg.content_path.stat().st_ino == inode


async def test_msgid_headers_only(store: SpoolStore) -> None:
    msg = new_message(store, b"Subject: no body")
    await server_chain(store, "msgid:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    out = msg.content_path.read_bytes()
    assert out.startswith(b"Message-ID: <") and out.endswith(b">\r\nSubject: no body")


async def test_builtin_chain(store: SpoolStore) -> None:
    """msgid:, split: and exit:103 together, as an operator would chain them."""
    msg = new_message(store, content("chain"), envelope("a@one.example", "b@two.example"))
    result = await server_chain(store, "msgid:,split:,exit:0").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert result.outcome is FilterOutcome.RESCAN
    assert b"Message-ID: <" in msg.content_path.read_bytes()
    assert len(envelopes(store.directory)) == 1 and len(envelopes(store.directory, ".envelope.new")) == 1
    assert store.envelope_path(msg.id, State.NEW).exists()
