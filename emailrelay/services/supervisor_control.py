"""Asking the supervisor from a role: roles, census, restart, scaling (docs/decisions.md, privileges).

What it is for: the admin role's ``roles``, ``restart <role>`` and
``workers forward <N>`` commands, and the metrics role's census.  Roles run
as ``--user`` and never speak circus (its control endpoint is root-only);
they ask the supervisor over its narrow channel instead: a unix socket
``supervisor.sock`` in the run directory (``root:<--user's group> 0660``),
one JSON request line and one JSON reply line per connection.

A request names an action from a fixed set (:data:`ACTIONS`) and at most a
watcher name and a number; it can never name a command to run.  The
supervisor (:mod:`emailrelay.cli.supervisor_channel`) validates both
against its own table.  Every reply is ``{"status": "ok", ...}`` or
``{"status": "error", "reason": ...}``, as circus's.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from .. import rundir, topology

CHANNEL = rundir.CHANNEL  # in the run directory
ACTIONS = ("roles", "census", "restart", "workers")
MAX_LINE = 4096  # a request or a reply line, bytes (a census of 64 workers per role fits)
MAX_WORKERS = topology.MAX_WORKERS
MIN_WORKERS = {name: low for name, (low, _) in topology.SCALABLE.items()}  # the scalable roles


def channel_path(run_dir: str) -> str:
    return rundir.path(run_dir, CHANNEL)


class SupervisorControl:
    """A client of the supervisor's channel; every call is one short connection."""

    def __init__(self, run_dir: str, timeout: float = 5.0) -> None:
        self.path = channel_path(run_dir)
        self.timeout = timeout

    def available(self) -> bool:
        return os.path.exists(self.path)

    async def call(self, action: str, **properties: Any) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._call(action, properties), self.timeout)
        except (TimeoutError, OSError, ValueError) as exc:
            return {"status": "error", "reason": f"supervisor not reachable: {exc or type(exc).__name__}"}

    async def _call(self, action: str, properties: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE * 16)
        try:
            writer.write(json.dumps({"action": action, **properties}).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await reader.readline())
        finally:
            writer.close()
        if not isinstance(reply, dict):
            raise ValueError("malformed reply")
        return reply

    async def roles(self) -> dict[str, str]:
        """Watcher name → circus status ("active", "stopped", ...); empty when not reachable."""
        reply = await self.call("roles")
        if reply.get("status") != "ok":
            return {}
        return {name: str(r.get("status")) for name, r in dict(reply.get("roles", {})).items()}

    async def processes(self, role: str) -> int:
        reply = await self.call("roles")
        if reply.get("status") != "ok":
            return 0
        return int(dict(reply.get("roles", {})).get(role, {}).get("processes", 0))

    async def census(self) -> dict[str, list[int]] | None:
        """Watcher name → pids of its live processes; None when the supervisor does not answer."""
        reply = await self.call("census")
        if reply.get("status") != "ok":
            return None
        return {str(name): [int(p) for p in pids] for name, pids in dict(reply.get("pids", {})).items()}

    async def restart(self, role: str) -> dict[str, Any]:
        return await self.call("restart", role=role)

    async def set_workers(self, role: str, count: int) -> dict[str, Any]:
        return await self.call("workers", role=role, count=count)
