"""Shared pytest fixtures: a running relay, free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.relay import Relay, free_port, start_relay


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    """A storage relay on a free port with its own spool (verbose log in tmp_path/relay.log)."""
    r = start_relay(tmp_path)
    yield r
    r.stop()
