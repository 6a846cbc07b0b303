"""Talking to the circus arbiter from a role: status, restart, scaling.

What it is for: the admin role's ``roles``, ``restart <role>`` and
``workers forward <N>`` commands.  It uses circus's own client on the
arbiter's ``ipc://`` control endpoint in the run directory, in a worker
thread so the event loop never waits on it.  Every reply is circus's
``{"status": "ok", ...}`` or ``{"status": "error", "reason": ...}``.
"""

from __future__ import annotations

import asyncio
from typing import Any

ROLE_NAMES = ("smtp", "forward", "notify", "bus", "admin", "pop")


class SupervisorControl:
    def __init__(self, run_dir: str, timeout: float = 5.0) -> None:
        self.endpoint = f"ipc://{run_dir}/circus.ctl.ipc"
        self.timeout = timeout

    def _call_sync(self, command: str, **properties: Any) -> dict[str, Any]:
        from circus.client import CircusClient
        from circus.exc import CallError

        client = CircusClient(endpoint=self.endpoint, timeout=self.timeout)
        try:
            return client.call({"command": command, "properties": properties})
        except CallError as exc:
            return {"status": "error", "reason": str(exc)}
        finally:
            client.stop()

    async def call(self, command: str, **properties: Any) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._call_sync(command, **properties)
        )

    async def roles(self) -> dict[str, str]:
        reply = await self.call("status")
        return dict(reply.get("statuses", {})) if reply.get("status") == "ok" else {}

    async def processes(self, role: str) -> int:
        reply = await self.call("numprocesses", name=role)
        return int(reply.get("numprocesses", 0)) if reply.get("status") == "ok" else 0

    async def restart(self, role: str) -> dict[str, Any]:
        return await self.call("restart", name=role, graceful=True)

    async def set_workers(self, role: str, count: int) -> dict[str, Any]:
        return await self.call("set", name=role, options={"numprocesses": count})
