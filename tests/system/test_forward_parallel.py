"""Several ``emailrelay --as-client`` processes draining one spool: every message exactly once.

The claim protocol (rename ``.envelope`` -> ``.envelope.busy`` under flock)
is the only thing keeping N forwarders on one spool from sending a message
twice, and each of them also runs crash recovery on start while the others
hold live claims.  2000 messages, then 2 and 4 concurrent processes, one
counting sink that records every accepted Message-ID.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_smtp import FakeSmtp
from tests.support.sink import fill_spool, postfix_sink, start_client, states

MESSAGES = 2000


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Path]:
    """A spool on tmpfs when there is one: 4000 file creations on a busy disk take longer than the test."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(tmp_path)
    top = Path(tempfile.mkdtemp(prefix="fwd-parallel-", dir=base))
    try:
        (top / "spool").mkdir()
        yield top / "spool"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _drain(tmp_path: Path, spool: Path, hop: str, processes: int) -> list[tuple[int, str]]:
    procs = []
    for i in range(processes):
        procs.append(start_client(spool, hop, log=tmp_path / f"client{i}.log"))
    results = []
    for i, p in enumerate(procs):
        try:
            p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        results.append((p.returncode, (tmp_path / f"client{i}.log").read_text(errors="replace")))
    return results


@pytest.mark.parametrize("processes", [2, 4])
def test_n_processes_deliver_each_message_exactly_once(tmp_path: Path, spool: Path, processes: int) -> None:
    ids = fill_spool(spool, MESSAGES, prefix=f"p{processes}-")
    assert states(spool) == {"envelope": MESSAGES, "content": MESSAGES}
    with FakeSmtp(extensions=("PIPELINING", "8BITMIME", "SIZE 10000000")) as hop:
        t0 = time.monotonic()
        results = _drain(tmp_path, spool, hop.address, processes)
        elapsed = time.monotonic() - t0
        counts = hop.message_ids()
        assert len(hop.messages) == MESSAGES, f"{len(hop.messages)} deliveries for {MESSAGES} messages"
        assert set(counts) == set(ids)
        duplicates = {k: v for k, v in counts.items() if v != 1}
        assert not duplicates
        assert hop.connections >= 2  # they really ran side by side
        assert hop.refused == []
    for rc, log in results:
        assert rc == 0, log[-2000:]
        assert "error" not in log.lower(), log[-2000:]
    assert states(spool) == {}
    print(f"\n{processes} processes: {MESSAGES} messages in {elapsed:.1f} s ({MESSAGES / elapsed:.0f}/s)")


def test_two_processes_against_postfix_smtp_sink(tmp_path: Path, spool: Path) -> None:
    count = 300
    fill_spool(spool, count, prefix="pf-")
    with postfix_sink() as sink:
        results = _drain(tmp_path, spool, sink.address, 2)
        for rc, log in results:
            assert rc == 0, log[-2000:]
        assert sink.proc.poll() is None
        ids = [
            line
            for dump in sink.dumps()
            for line in dump.read_bytes().split(b"\n")
            if line.lower().startswith(b"message-id:")
        ]
    assert states(spool) == {}
    assert len(ids) == count
    assert len(set(ids)) == count
