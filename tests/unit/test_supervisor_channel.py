"""The supervisor's narrow channel refuses everything but its four validated requests.

The server (cli/supervisor_channel) and the roles' client (services/supervisor_control)
talk over a real unix socket; the arbiter is a stand-in exposing only what the
channel reads (watcher names, statuses, pids), so any request that got past the
validation to circus would fail loudly instead of passing.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from emailrelay.cli.supervisor_channel import Channel, bind
from emailrelay.services.supervisor_control import CHANNEL, MAX_LINE, SupervisorControl


@dataclass
class Proc:
    pid: int


@dataclass
class Watcher:
    name: str
    pids: list[int] = field(default_factory=list)

    def status(self) -> str:
        return "active"

    def __len__(self) -> int:
        return len(self.pids)

    def get_active_processes(self) -> list[Proc]:
        return [Proc(p) for p in self.pids]


class Arbiter:
    def __init__(self) -> None:
        self.watchers = [Watcher("smtp", [11]), Watcher("forward", [21, 22]), Watcher("in-bus", [31])]

    def iter_watchers(self) -> list[Watcher]:
        return self.watchers

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the channel reached circus with {name}")


@pytest.fixture
async def channel() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(dir="/tmp") as run_dir:
        server = Channel(Arbiter(), bind(str(Path(run_dir, CHANNEL)), None))
        await server.start()
        try:
            yield run_dir
        finally:
            server.close()


async def raw(run_dir: str, data: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(Path(run_dir, CHANNEL)))
    writer.write(data)
    await writer.drain()
    reply = json.loads(await reader.readline())
    writer.close()
    assert isinstance(reply, dict)
    return reply


async def test_roles_and_census(channel: str) -> None:
    control = SupervisorControl(channel)
    assert await control.roles() == {"smtp": "active", "forward": "active", "in-bus": "active"}
    assert await control.processes("forward") == 2
    assert await control.census() == {"smtp": [11], "forward": [21, 22], "in-bus": [31]}


@pytest.mark.parametrize(
    "request_",
    [
        {"action": "add", "cmd": "/bin/sh -c id"},
        {"command": "add", "properties": {"name": "x", "cmd": "/bin/sh -c id", "start": True}},
        {"action": "restart", "role": "/bin/sh -c id"},
        {"action": "restart", "role": "sm*"},
        {"action": "restart"},
        {"action": "workers", "role": "bus", "count": 2},
        {"action": "workers", "role": "in-bus", "count": 2},
        {"action": "workers", "role": "forward", "count": 65},
        {"action": "workers", "role": "smtp", "count": 0},
        {"action": "workers", "role": "forward", "count": True},
        {"action": "workers", "role": "forward", "count": "2"},
        ["restart", "smtp"],
    ],
)
async def test_anything_else_is_an_error(channel: str, request_: object) -> None:
    reply = await raw(channel, json.dumps(request_).encode() + b"\n")
    assert reply["status"] == "error" and reply["reason"]


async def test_malformed_and_oversized_requests_are_errors(channel: str) -> None:
    assert (await raw(channel, b"{not json\n"))["status"] == "error"
    assert (await raw(channel, b"x" * (MAX_LINE * 2) + b"\n"))["status"] == "error"


async def test_a_silent_client_is_dropped_and_the_channel_still_answers(channel: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(Path(channel, CHANNEL)))
        assert (await SupervisorControl(channel).census()) is not None


async def test_no_supervisor_is_an_error_reply_not_an_exception() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as run_dir:
        reply = await SupervisorControl(run_dir, timeout=1.0).restart("smtp")
        assert reply["status"] == "error" and "not reachable" in reply["reason"]


async def test_only_the_allowed_users_are_answered() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as run_dir:
        server = Channel(Arbiter(), bind(str(Path(run_dir, CHANNEL)), None), frozenset({os.geteuid() + 1}))
        await server.start()
        try:
            assert await SupervisorControl(run_dir).census() is None
            assert (await raw(run_dir, b'{"action": "census"}\n')) == {
                "status": "error",
                "reason": "not allowed",
            }
        finally:
            server.close()
