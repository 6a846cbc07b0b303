"""net: filters (a line server in the test) and spam:/spam-edit: (the fake spamd)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emailrelay.policy.verdicts import FilterOutcome
from emailrelay.spool.store import SpoolStore
from tests.support.fake_spamd import GTUBE, closed_port, fake_spamd
from tests.support.policy import (
    client_chain,
    content,
    envelope,
    logs_fixture,  # noqa: F401 - fixture
    new_message,
    server_chain,
    store_fixture,  # noqa: F401 - fixture
)


class LineFilterServer:
    """A net: filter server: answers by the message's Subject; records the paths it got."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.connections = 0
        self.hang_up = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                path = line.decode().rstrip("\n")
                self.paths.append(path)
                subject = ""
                for header in Path(path).read_text().splitlines():
                    if header.startswith("Subject: "):
                        subject = header[9:].strip()
                answer = {
                    "ok": "ok",
                    "plain": "not wanted here",
                    "coded": "452 too busy right now\twith a log-only tail",
                    "slow": None,
                }.get(subject, "ok")
                if answer is None:
                    await asyncio.sleep(5)
                    answer = "ok"
                writer.write(answer.encode() + b"\n")
                await writer.drain()
                if self.hang_up:
                    break
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def line_server() -> AsyncIterator[tuple[LineFilterServer, str]]:
    srv = LineFilterServer()
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield srv, f"net:127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_net_filter_answers(store: SpoolStore, line_server: tuple[LineFilterServer, str], logs) -> None:
    srv, spec = line_server
    chain = server_chain(store, spec)
    results = {}
    for subject in ("ok", "plain", "coded"):
        msg = new_message(store, content(subject))
        results[subject] = await chain.filter(msg.id, str(msg.content_path), str(msg.envelope_path))
        assert srv.paths[-1] == str(msg.content_path)
    await chain.close()
    assert results["ok"].outcome is FilterOutcome.OK
    assert (results["plain"].outcome, results["plain"].reason, results["plain"].code) == (
        FilterOutcome.REJECT,
        "not wanted here",
        None,
    )
    coded = results["coded"]
    assert (coded.reason, coded.code, coded.detail) == ("too busy right now", 452, "with a log-only tail")
    assert srv.connections == 3  # a connection per message, as E-MailRelay 2.6b
    assert "failed response=[too busy right now] reason=[with a log-only tail]" in logs.text()


async def test_net_filter_reconnects(store: SpoolStore, line_server: tuple[LineFilterServer, str]) -> None:
    srv, spec = line_server
    srv.hang_up = True
    chain = client_chain(store, spec)
    for _ in range(3):
        mid = store.store_message(envelope(), content("plain"))
        claim = store.claim(mid)
        assert claim is not None
        result = await chain.filter(mid, str(claim.content_path), str(claim.envelope_path))
        claim.release()
        assert result.reason == "not wanted here"
    assert srv.connections == 3
    await chain.close()


async def test_net_filter_parallel(store: SpoolStore, line_server: tuple[LineFilterServer, str]) -> None:
    _, spec = line_server
    chain = server_chain(store, spec)
    msgs = [new_message(store, content("ok")) for _ in range(20)]
    results = await asyncio.gather(
        *(chain.filter(m.id, str(m.content_path), str(m.envelope_path)) for m in msgs)
    )
    assert all(r.outcome is FilterOutcome.OK for r in results)
    await chain.close()


async def test_net_filter_timeout_and_down(
    store: SpoolStore, line_server: tuple[LineFilterServer, str]
) -> None:
    _, spec = line_server
    msg = new_message(store, content("slow"))
    started = time.monotonic()
    result = await server_chain(store, spec, filter_timeout=0.5).filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert time.monotonic() - started < 3
    assert (result.outcome, result.reason) == (FilterOutcome.REJECT, "failed")  # upstream's texts
    assert result.detail.startswith("response timeout: no response after 0.5s while connected to 127.0.0.1:")
    port = closed_port()
    down = await server_chain(store, f"net:127.0.0.1:{port}").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert (down.outcome, down.reason) == (FilterOutcome.REJECT, "failed")
    assert down.detail == f"connect failure: cannot connect to 127.0.0.1:{port}"


async def test_net_filter_unix_socket(store: SpoolStore, tmp_path: Path) -> None:
    srv = LineFilterServer()
    path = str(tmp_path / "filter.sock")
    server = await asyncio.start_unix_server(srv.handle, path)
    try:
        chain = server_chain(store, f"net:{path}")
        msg = new_message(store, content("plain"))
        result = await chain.filter(msg.id, str(msg.content_path), str(msg.envelope_path))
        assert result.reason == "not wanted here"
        await chain.close()
    finally:
        server.close()
        await server.wait_closed()


# ---- spam: / spam-edit: with the fake spamd -------------------------------------------------------
SPAM = content("buy now", body=f"{GTUBE.decode()}\r\n")
HAM = content("lunch", body="see you at noon\r\n")


async def test_spam_rejects_spam_and_accepts_ham(store: SpoolStore) -> None:
    with fake_spamd() as spamd:
        chain = server_chain(store, f"spam:{spamd.address}")
        spam = new_message(store, SPAM)
        ham = new_message(store, HAM)
        r_spam = await chain.filter(spam.id, str(spam.content_path), str(spam.envelope_path))
        r_ham = await chain.filter(ham.id, str(ham.content_path), str(ham.envelope_path))
        assert [c for c, _ in spamd.requests] == ["PROCESS", "PROCESS"]  # as E-MailRelay 2.6b asks
        assert spamd.requests[0][1] == SPAM
    assert (r_spam.outcome, r_spam.reason) == (FilterOutcome.REJECT, "rejected")
    assert r_spam.detail == "spam: True ; 1000.0 / 5.0"
    assert r_ham.outcome is FilterOutcome.OK
    assert spam.content_path.read_bytes() == SPAM  # spam: never edits


async def test_spam_edit_rewrites_and_accepts(store: SpoolStore) -> None:
    with fake_spamd() as spamd:
        chain = server_chain(store, f"spam-edit:{spamd.address}")
        spam = new_message(store, SPAM)
        result = await chain.filter(spam.id, str(spam.content_path), str(spam.envelope_path))
        assert spamd.requests[0][0] == "PROCESS"
    assert result.outcome is FilterOutcome.OK
    edited = spam.content_path.read_bytes()
    # stored as spamd sent it, with the fake's LF line ends (as E-MailRelay 2.6b stores it)
    assert edited == b"X-Spam-Flag: YES\nX-Spam-Status: score=1000.0\n" + SPAM.replace(b"\r\n", b"\n")


async def test_spam_edit_unshares_a_hard_linked_content(store: SpoolStore) -> None:
    msg = new_message(store, HAM)
    copy = store.new_linked_copy(msg.id)  # as split: does
    copy.write_envelope(envelope())
    copy.commit()
    twin = copy.id
    assert store.content_path(twin).stat().st_ino == msg.content_path.stat().st_ino
    with fake_spamd() as spamd:
        await server_chain(store, f"spam-edit:{spamd.address}").filter(
            msg.id, str(msg.content_path), str(msg.envelope_path)
        )
    assert msg.content_path.read_bytes().startswith(b"X-Spam-Flag: NO")
    assert store.content_path(twin).read_bytes() == HAM


async def test_spam_large_message_streams(store: SpoolStore) -> None:
    big = content("big", body="x" * 998 + "\r\n") * 1  # header once
    big = big + (b"y" * 998 + b"\r\n") * 5000  # ~5 MB
    with fake_spamd() as spamd:
        msg = new_message(store, big)
        result = await server_chain(store, f"spam-edit:{spamd.address}").filter(
            msg.id, str(msg.content_path), str(msg.envelope_path)
        )
        assert spamd.requests[0][1] == big
    assert result.ok
    assert msg.content_path.read_bytes().endswith(big.replace(b"\r\n", b"\n"))


async def test_spamd_down_slow_or_broken_is_an_error(store: SpoolStore, tmp_path: Path) -> None:
    msg = new_message(store, HAM)
    down = await server_chain(store, f"spam:127.0.0.1:{closed_port()}").filter(
        msg.id, str(msg.content_path), str(msg.envelope_path)
    )
    assert down.outcome is FilterOutcome.REJECT  # failed, as E-MailRelay 2.6b fails it (452 rejected)
    with fake_spamd() as spamd:
        spamd.set(broken=True)
        broken = await server_chain(store, f"spam:{spamd.address}").filter(
            msg.id, str(msg.content_path), str(msg.envelope_path)
        )
        spamd.set(broken=False, delay=3.0)
        slow = await server_chain(store, f"spam-edit:{spamd.address}", filter_timeout=0.5).filter(
            msg.id, str(msg.content_path), str(msg.envelope_path)
        )
    assert broken.outcome is FilterOutcome.REJECT and "invalid response: SPAMD/1.1 76" in broken.detail
    assert slow.outcome is FilterOutcome.REJECT and broken.reason == slow.reason == "rejected"
    assert msg.content_path.read_bytes() == HAM  # an interrupted spam-edit leaves the content alone
    assert not [p for p in msg.content_path.parent.iterdir() if p.name.endswith(".tmp")]


async def test_spam_over_a_unix_socket(store: SpoolStore, tmp_path: Path) -> None:
    with fake_spamd(str(tmp_path / "spamd.sock")) as spamd:
        msg = new_message(store, SPAM)
        result = await client_chain(store, f"spam:{spamd.address}").filter(
            msg.id, str(msg.content_path), str(msg.envelope_path)
        )
    assert result.outcome is FilterOutcome.REJECT
