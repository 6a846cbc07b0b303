"""The forwarder's spool work runs in its executor, never on the event loop (issue 18).

A real :class:`ForwardService` with a real :class:`SpoolStore` on a temporary
spool forwards, over sockets, to a scripted next hop (tests/support/fake_smtp.py):
messages that are sent (removed), refused (failed to ``.bad``, the envelope
first rewritten to the refused recipients under ``--forward-to-some``),
deferred (released with back-off), delivered in two transactions (the fsynced
rewrite in between), streamed (content over 1 MiB), left after a connection
failure (released), and one in flight when the service stops (its cancelled
worker releases it).  The store's blocking calls are wrapped to record the
thread each one ran in: none may be the event loop's.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from emailrelay.config import Config
from emailrelay.services.forward import IN_MEMORY_LIMIT, ForwardService
from emailrelay.spool.store import Claim, SpoolStore
from tests.support.fake_smtp import FakeSmtp, Message, Session
from tests.support.relay import free_port, wait_until
from tests.support.sink import envelope_text, simple_content, states, write_raw

CLAIM_CALLS = ("release", "fail", "remove", "rewrite", "relock_if_replaced", "open_content")
STORE_CALLS = ("claim", "ready", "ready_and_next_due", "read_envelope", "recover")


class ThreadLog:
    """Which thread ran each wrapped store call: ``calls`` holds (name, thread id)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.loop_thread: int | None = None

    def wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def recording(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, threading.get_ident()))
            return method(*args, **kwargs)

        return recording

    def names(self) -> set[str]:
        return {name for name, _ in self.calls}

    def on_loop(self) -> list[str]:
        assert self.loop_thread is not None
        return [name for name, ident in self.calls if ident == self.loop_thread]


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadLog]:
    log = ThreadLog()
    for name in CLAIM_CALLS:
        monkeypatch.setattr(Claim, name, log.wrap(f"Claim.{name}", getattr(Claim, name)))
    for name in STORE_CALLS:
        monkeypatch.setattr(SpoolStore, name, log.wrap(f"SpoolStore.{name}", getattr(SpoolStore, name)))
    yield log


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    d = tmp_path / "spool"
    d.mkdir()
    return d


def _run(threads: ThreadLog, body: Callable[[], Any]) -> Any:
    """Run ``body()`` (a coroutine) on a fresh event loop, noting the loop's thread."""

    async def main() -> Any:
        threads.loop_thread = threading.get_ident()
        return await body()

    return asyncio.run(main())


def _service(spool: Path, executor: ThreadPoolExecutor, hop: str, **options: Any) -> ForwardService:
    config = Config(spool_dir=spool, forward_to=hop, domain="relay.test", **options).frozen()
    return ForwardService(config, SpoolStore(spool), executor=executor)


def _to_remote(envelope: Path) -> list[str]:
    lines = envelope.read_bytes().decode().split("\r\n")
    return [line.split(": ", 1)[1] for line in lines if line.startswith("X-MailRelay-To-Remote: ")]


def test_every_outcome_touches_the_spool_off_the_loop(spool: Path, threads: ThreadLog) -> None:
    sent = write_raw(spool, envelope_text("a@example.com", ["ok@example.net"]), simple_content("sent@t"))
    some = write_raw(
        spool,
        envelope_text("a@example.com", ["ok@example.net", "refused@example.net"]),
        simple_content("some@t"),
    )
    rejected = write_raw(
        spool, envelope_text("a@example.com", ["ok@example.net"]), simple_content("reject@t")
    )
    deferred = write_raw(
        spool, envelope_text("later@example.com", ["ok@example.net"]), simple_content("later@t")
    )
    partial = write_raw(
        spool,
        envelope_text("a@example.com", ["p1@example.net", "p2@example.net", "p3@example.net"]),
        simple_content("partial@t"),
    )
    big_body = "x" * 70 + "\r\n"
    big = write_raw(
        spool,
        envelope_text("a@example.com", ["ok@example.net"]),
        simple_content("big@t", big_body * (IN_MEMORY_LIMIT // len(big_body) + 10)),
    )

    def mail(session: Session, address: Any) -> str:
        return "451 4.3.0 try later" if address == "later@example.com" else "250 2.1.0 ok"

    def rcpt(session: Session, address: Any) -> str:  # two per transaction
        return "452 4.5.3 too many recipients" if len(session.rcpts) >= 2 else "250 2.1.5 ok"

    def final(session: Session, message: Message) -> str:
        return "554 5.7.1 not this one" if message.message_id == "<reject@t>" else "250 2.0.0 queued"

    hop = FakeSmtp(
        replies={"mail": mail, "rcpt": rcpt, "final": final},
        rcpt_replies={"refused@example.net": "550 5.1.1 no such user"},
    )
    with hop, ThreadPoolExecutor(max_workers=2) as executor:
        service = _service(spool, executor, hop.address, backoff=True, forward_to_some=True)
        ok = _run(threads, service.run_once)

    assert not ok  # one deferred, two failed
    got = sorted(m.message_id or "" for m in hop.messages)
    assert got == sorted(["<sent@t>", "<some@t>", "<partial@t>", "<partial@t>", "<big@t>"])
    assert [m.rcpts for m in hop.messages if m.message_id == "<partial@t>"] == [
        ["p1@example.net", "p2@example.net"],
        ["p3@example.net"],
    ]
    assert next(m for m in hop.messages if m.message_id == "<big@t>").data.count(b"x" * 70) > 14000
    for mid in (sent, partial, big):
        assert not list(spool.glob(f"{mid}.*")), mid
    assert _to_remote(spool / f"{some}.envelope.bad") == ["refused@example.net"]
    assert (spool / f"{rejected}.envelope.bad").exists()
    assert (spool / f"{deferred}.envelope").exists()
    assert not list(spool.glob("*.busy"))

    expected = {"Claim.release", "Claim.fail", "Claim.remove", "Claim.rewrite", "Claim.open_content"}
    assert expected | {"SpoolStore.claim", "SpoolStore.ready"} <= threads.names()
    assert threads.on_loop() == []


def test_a_connection_failure_releases_off_the_loop(spool: Path, threads: ThreadLog) -> None:
    mid = write_raw(spool, envelope_text("a@example.com", ["ok@example.net"]), simple_content("left@t"))
    with ThreadPoolExecutor(max_workers=2) as executor:
        service = _service(spool, executor, f"127.0.0.1:{free_port()}")  # nobody listens there
        ok = _run(threads, service.run_once)
    assert not ok
    assert states(spool) == {"envelope": 1, "content": 1}
    assert (spool / f"{mid}.envelope").exists()
    assert "Claim.release" in threads.names()
    assert threads.on_loop() == []


def test_a_stopped_worker_releases_its_claim_off_the_loop(spool: Path, threads: ThreadLog) -> None:
    mid = write_raw(spool, envelope_text("a@example.com", ["ok@example.net"]), simple_content("held@t"))
    hop = FakeSmtp(delays={"data": 120.0})  # the message is still in flight when the service stops

    async def start_and_stop(service: ForwardService) -> None:
        await service.start()
        in_flight = await asyncio.get_running_loop().run_in_executor(
            None, wait_until, lambda: hop.commands_named("DATA") and _busy(spool), 30.0
        )
        assert in_flight
        await service.stop()  # STOP_GRACE, then the worker is cancelled

    with hop, ThreadPoolExecutor(max_workers=2) as executor:
        service = _service(spool, executor, hop.address, forward=True)
        _run(threads, lambda: start_and_stop(service))
    assert hop.messages == []
    assert (spool / f"{mid}.envelope").exists()
    assert not list(spool.glob("*.busy"))
    assert "Claim.release" in threads.names()
    assert threads.on_loop() == []


def _busy(spool: Path) -> int:
    return len(list(spool.glob("*.envelope.busy")))
