"""The policy layer behind a real SMTP session (in-process SmtpService, real sockets, real scripts)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from emailrelay.config import Config
from emailrelay.policy.verifier import build_server_policy
from emailrelay.services.smtpd import SmtpService
from emailrelay.spool import envelope as envelope_format
from emailrelay.spool.store import SpoolStore
from tests.support.fixtures import UPSTREAM
from tests.support.policy import logs_fixture, script  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 20)).decode().rstrip("\r\n")
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), "\n".join(lines)

    async def cmd(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    async def send_message(
        self, sender: str, rcpts: list[str], body: str = "Subject: t\r\n\r\nhi\r\n"
    ) -> list[tuple[int, str]]:
        replies = [await self.cmd(f"MAIL FROM:<{sender}>")]
        replies += [await self.cmd(f"RCPT TO:<{r}>") for r in rcpts]
        code, text = await self.cmd("DATA")
        replies.append((code, text))
        if code == 354:
            self.writer.write(body.encode() + b".\r\n")
            replies.append(await self.reply())
        return replies


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator:  # type: ignore[type-arg]
    services: list[SmtpService] = []

    async def start(**kw: object) -> tuple[Client, SpoolStore]:
        spool = tmp_path / "spool"
        spool.mkdir(exist_ok=True)
        store = SpoolStore(spool, fsync=False)
        config = Config(spool_dir=spool, domain="vm", filter_timeout=10.0).replaced(**kw)
        policy = build_server_policy(config, store)
        service = SmtpService(config, store, policy=policy)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        await service.start([sock])
        services.append(service)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        client = Client(reader, writer)
        assert (await client.reply())[0] == 220
        assert (await client.cmd("EHLO client.example"))[0] == 250
        return client, store

    yield start
    for service in services:
        await service.stop(grace=0.5)


def committed(store: SpoolStore) -> list[envelope_format.Envelope]:
    return [store.read_envelope(mid) for mid in store.ready()]


async def test_rejecting_filter_as_in_the_upstream_fixture(serve, logs) -> None:
    client, store = await serve(filters=[script("rej.sh")])
    replies = await client.send_message("a@example.com", ["b@example.net"])
    assert replies[-1] == (550, "not today")
    assert not list(store.directory.iterdir())  # a rejected message is deleted, not kept as .bad
    text = logs.text()
    assert "warning: filter [rej.sh] failed: exit code 1: [not today](550)" in text
    assert "rejected by filter: [not today]" in text


async def test_filter_timeout_gives_a_temporary_error(serve, logs) -> None:
    client, store = await serve(filters=[script("sleeper.sh")], filter_timeout=1.0)
    replies = await client.send_message("a@example.com", ["b@example.net"])
    assert replies[-1][:2] == (452, "error")  # E-MailRelay 2.6b's reply
    assert not store.ready()
    assert "failed response=[error] reason=[timeout]" in logs.text()
    assert "rejected by filter: [timeout]" in logs.text()


async def test_abandoning_filter_accepts_and_stores_nothing(serve) -> None:
    client, store = await serve(filters=[script("abandon.sh")])
    replies = await client.send_message("a@example.com", ["b@example.net"])
    assert replies[-1][0] == 250
    assert not list(store.directory.iterdir())


async def test_verifier_and_deliver(serve, tmp_path: Path) -> None:
    boxes = tmp_path / "boxes"
    boxes.mkdir()  # (a missing --delivery-dir is not made, as E-MailRelay 2.6b)
    client, store = await serve(
        address_verifier=script("verifier.sh"), filters=["msgid:", "deliver:"], delivery_dir=boxes
    )
    replies = await client.send_message(
        "alice@example.com",
        ["postmaster@localhost", "UpperCase@Example.NET", "bad@example.net", "temp@example.net"],
    )
    assert replies[1] == (250, "recipient <postmaster@localhost>  OK")  # a local one: two spaces, as upstream
    assert replies[2][0] == 250
    assert replies[3] == (550, "invalid mailbox: bad@example.net")
    assert replies[4] == (450, "mailbox unavailable: temp@example.net")
    assert replies[-1][0] == 250
    (env,) = committed(store)
    assert env.to_local == ("postmaster",) and env.to_remote == ("uppercase@example.net",)
    delivered = list((boxes / "postmaster").glob("*.content"))
    assert len(delivered) == 1 and b"Message-ID: <" in delivered[0].read_bytes()
    only_local = await client.send_message("alice@example.com", ["postmaster@localhost"])
    assert only_local[-1][0] == 250
    assert len(committed(store)) == 1  # delivered and deleted: nothing new to forward
    assert len(list((boxes / "postmaster").glob("*.envelope"))) == 2


async def test_verifier_abort_drops_the_connection(serve) -> None:
    client, _ = await serve(address_verifier=script("verifier.sh"))
    assert (await client.cmd("MAIL FROM:<a@b>"))[0] == 250
    client.writer.write(b"RCPT TO:<abort@example.net>\r\n")
    assert await asyncio.wait_for(client.reader.read(), 10) == b""


async def test_split_through_smtp(serve) -> None:
    client, store = await serve(filters=["split:"])
    replies = await client.send_message(
        "a@x", ["1@one.example", "2@two.example", "3@three.example", "4@ONE.example"]
    )
    assert replies[-1][0] == 250
    routes = {e.forward_to: e.to_remote for e in committed(store)}
    assert routes == {
        "one.example": ("1@one.example", "4@ONE.example"),
        "two.example": ("2@two.example",),
        "three.example": ("3@three.example",),
    }


FIXTURE = UPSTREAM / "filter-and-pop-verbose.log"


async def test_filter_lines_match_the_upstream_fixture(serve, tmp_path: Path) -> None:
    """With --log-address, the same four lines as upstream's log (ids, times and paths aside)."""
    from emailrelay import log as logmod

    log = logmod.get()
    old = log.config
    path = tmp_path / "addr.log"
    log.configure(
        logmod.LogConfig(verbose=True, syslog=False, stderr=False, with_address=True, log_file=str(path))
    )
    try:
        client, _ = await serve(filters=[script("rej.sh")])
        await client.send_message("a@example.com", ["b@example.net"])
    finally:
        log.configure(old)

    def normal(line: str) -> str:
        line = re.sub(r"^emailrelay: [0-9.]+: ", "emailrelay: ", line)
        line = re.sub(r"emailrelay\.\d+\.\d+\.\d+", "ID", line)
        return re.sub(r"running /\S+/rej\.sh", "running rej.sh", line)

    wanted = [normal(x) for x in FIXTURE.read_text().splitlines() if "filter" in x]
    got = [normal(x) for x in path.read_text().splitlines() if "filter" in x]
    assert got == wanted
