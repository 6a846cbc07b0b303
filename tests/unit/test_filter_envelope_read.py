"""``split:`` and ``mx:`` read the envelope they are given as ``deliver:`` and ``copy:`` read it.

What it checks: the four built-in filters that read the message's envelope share one reader,
:func:`emailrelay.spool.delivery.read_envelope` (as root, never through a symlink), so an
envelope that is a symlink planted in the spool is refused by ``split:`` and ``mx:`` too, with
the reader's words (``filter [split:] failed: cannot read envelope file: <path>: <reason>``), and
nothing is split or rewritten; a plain envelope is read as before. Their behaviour on real
messages is compared with E-MailRelay 2.6b in tests/differential/test_split.py,
test_filters.py and test_guide_part2.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("dns", reason="mx: needs dnspython")

from emailrelay.policy.verdicts import FilterOutcome
from emailrelay.spool.store import SpoolStore
from tests.support.policy import (
    LogCapture,
    client_chain,
    content,
    envelope,
    logs_fixture,  # noqa: F401 - fixture
    new_message,
    server_chain,
    store_fixture,  # noqa: F401 - fixture
)


@contextmanager
def _planted(path: Path) -> Iterator[bytes]:
    """``path`` replaced by a symlink to a copy of itself outside the spool, for the block."""
    original = path.read_bytes()
    elsewhere = path.parent.parent / "elsewhere.envelope"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    try:
        yield original
    finally:
        path.unlink()
        elsewhere.rename(path)


def _failed_lines(logs: LogCapture, name: str, path: Path) -> list[str]:
    prefix = f"filter [{name}] failed: cannot read envelope file: {path}: "
    return [line for line in logs.lines() if prefix in line]


async def test_split_refuses_a_symlinked_envelope(store: SpoolStore, logs: LogCapture) -> None:
    msg = new_message(store, content(), envelope("a@one.example", "b@two.example"))
    with _planted(msg.envelope_path) as before:
        result = await server_chain(store, "split:").filter(
            msg.id, str(msg.content_path), str(msg.envelope_path)
        )
        assert (Path(msg.envelope_path).parent.parent / "elsewhere.envelope").read_bytes() == before
    assert result.outcome is FilterOutcome.ERROR
    assert len(_failed_lines(logs, "split:", msg.envelope_path)) == 1
    assert list(store.ready()) == []  # nothing split off
    msg.abandon()


async def test_split_reads_a_plain_envelope(store: SpoolStore, logs: LogCapture) -> None:
    msg = new_message(store, content(), envelope("a@one.example", "b@two.example"))
    result = await server_chain(store, "split:").filter(msg.id, str(msg.content_path), str(msg.envelope_path))
    assert result.ok
    assert len(list(store.ready())) == 1  # two.example's copy
    assert any("filter [split:] creating [" in line for line in logs.lines())


async def test_mx_refuses_a_symlinked_envelope(store: SpoolStore, logs: LogCapture) -> None:
    mid = store.store_message(envelope("a@x.example", forward_to="127.0.0.1:2525"), content())
    claim = store.claim(mid)
    assert claim is not None
    chain = client_chain(store, "mx:127.0.0.1:9")  # an address: no lookup either way
    with _planted(claim.envelope_path) as before:
        result = await chain.filter(mid, str(claim.content_path), str(claim.envelope_path))
        assert (claim.envelope_path.parent.parent / "elsewhere.envelope").read_bytes() == before
    assert result.outcome is FilterOutcome.ERROR
    assert len(_failed_lines(logs, "mx:", claim.envelope_path)) == 1
    result = await chain.filter(mid, str(claim.content_path), str(claim.envelope_path))
    assert result.ok and claim.envelope(reread=True).forward_to_address == "127.0.0.1:2525"
    claim.release()
