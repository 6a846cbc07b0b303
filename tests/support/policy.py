"""Helpers for the policy tests: filter scripts, messages, filter chains, log capture.

What it is for: ``tests/integration/test_policy_*.py`` build messages in a real store
(:func:`new_message`), run filter chains on them (:func:`server_chain`, :func:`client_chain`, given a
frozen :class:`Config` of the store's spool and the fields a test names: :func:`policy_config`) and
read what was logged (the ``logs`` fixture); the ``store`` fixture is a store in ``tmp_path``.

Guarantees: the ``logs`` fixture restores the process-wide log configuration afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from emailrelay import log as logmod
from emailrelay.config import Config
from emailrelay.policy.chain import ClientFilterChain, ServerFilterChain
from emailrelay.policy.spec import parse_filters
from emailrelay.spool.envelope import Envelope
from emailrelay.spool.store import NewMessage, SpoolStore

FILTERS = Path(__file__).resolve().parents[1] / "filters"


def script(name: str) -> str:
    return str(FILTERS / name)


def content(subject: str = "test", *extra_headers: str, body: str = "hello\r\n") -> bytes:
    head = "".join(f"{h}\r\n" for h in extra_headers)
    return f"Received: from test\r\n{head}Subject: {subject}\r\n\r\n{body}".encode()


def envelope(*to_remote: str, to_local: tuple[str, ...] = (), **kw: object) -> Envelope:
    return Envelope(
        from_address=str(kw.pop("from_address", "alice@example.com")),
        to_remote=tuple(to_remote) or ("bob@example.net",),
        to_local=to_local,
        client="127.0.0.1",
        **kw,  # type: ignore[arg-type]
    )


def new_message(store: SpoolStore, data: bytes | None = None, env: Envelope | None = None) -> NewMessage:
    """A stored but uncommitted message (``.envelope.new``), as a server filter sees it."""
    msg = store.create()
    msg.write(content() if data is None else data)
    msg.write_envelope(env or envelope())
    return msg


def policy_config(**fields: object) -> Config:
    """The frozen configuration a policy test runs with: ``fields`` (eg. ``spool_dir=...``,
    ``filter_timeout=0.5``, ``domain=...``, ``delivery_dir=...``), the rest Config's defaults."""
    return Config(**fields).frozen()  # type: ignore[arg-type]


def server_chain(store: SpoolStore, spec: str | list[str], **fields: object) -> ServerFilterChain:
    return ServerFilterChain(parse_filters(spec), store, policy_config(spool_dir=store.directory, **fields))


def client_chain(store: SpoolStore, spec: str | list[str], **fields: object) -> ClientFilterChain:
    return ClientFilterChain(
        parse_filters(spec, client=True), store, policy_config(spool_dir=store.directory, **fields)
    )


class LogCapture:
    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text() if self.path.exists() else ""

    def lines(self) -> list[str]:
        return self.text().splitlines()


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> SpoolStore:
    spool = tmp_path / "spool"
    spool.mkdir()
    return SpoolStore(spool, fsync=False)


@pytest.fixture(name="logs")
def logs_fixture(tmp_path: Path) -> Iterator[LogCapture]:
    log = logmod.get()
    old = log.config
    path = tmp_path / "policy.log"
    log.configure(logmod.LogConfig(verbose=True, syslog=False, stderr=False, log_file=str(path)))
    try:
        yield LogCapture(path)
    finally:
        log.configure(old)
