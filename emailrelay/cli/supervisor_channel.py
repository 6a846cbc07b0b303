"""The supervisor's narrow channel: what roles running as ``--user`` may ask of it.

What it is for: the admin role (``roles``, ``restart``, ``workers``) and the
metrics role (census) run as ``--user`` and cannot reach circus's control
endpoint, which only root can (docs/decisions.md, privileges).  The
supervisor serves them on ``supervisor.sock`` in the run directory, inside
its own event loop, with the protocol of
:mod:`emailrelay.services.supervisor_control`.

Guarantees: only root and ``--user`` are answered (``SO_PEERCRED``; the
socket file lets ``--user``'s group connect); a request is one JSON line of at most ``MAX_LINE`` bytes naming
one of four actions; the watcher it names must be one of this supervisor's,
and a number of workers is only accepted for ``smtp`` (1..64) and
``forward`` (0..64).  Nothing in a request reaches a shell, a command line or
circus's own command parser as text: restart and scaling call circus's
command objects with properties built here.  A malformed or slow client
gets an error or is dropped after ``REQUEST_TIMEOUT``; it cannot stop the
supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from typing import Any

from .. import log as logmod
from ..services.supervisor_control import ACTIONS, MAX_LINE, MAX_WORKERS, MIN_WORKERS

REQUEST_TIMEOUT = 5.0
BUSY_WAIT = 3.0  # seconds a request waits for a busy arbiter (the client waits 5)


def _error(reason: str) -> dict[str, Any]:
    return {"status": "error", "reason": reason}


class Channel:
    """Answers requests about the watchers of ``arbiter`` (a running circus Arbiter)."""

    def __init__(self, arbiter: Any, sock: socket.socket, peers: frozenset[int] | None = None) -> None:
        self.arbiter = arbiter
        self.sock = sock
        self.peers = peers  # the effective uids allowed to ask (root and --user), None for any
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._session, sock=self.sock, limit=MAX_LINE)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                if not self._allowed(writer.get_extra_info("socket")):
                    reply = _error("not allowed")
                else:
                    line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                    reply = await self.answer(json.loads(line))
            except (ValueError, asyncio.LimitOverrunError):
                reply = _error("malformed request")
            writer.write(json.dumps(reply).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def _allowed(self, sock: Any) -> bool:
        """The file's mode lets root and --user's group connect; of those, only root and --user ask."""
        if self.peers is None:
            return True
        try:
            _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except (OSError, AttributeError, struct.error):
            return False
        return uid in self.peers

    def _watchers(self) -> dict[str, Any]:
        return {w.name: w for w in self.arbiter.iter_watchers()}

    async def answer(self, request: object) -> dict[str, Any]:
        """The reply to one decoded request."""
        if not isinstance(request, dict) or request.get("action") not in ACTIONS:
            return _error("unknown request")
        action = request["action"]
        watchers = self._watchers()
        if action == "roles":
            roles = {name: {"status": w.status(), "processes": len(w)} for name, w in watchers.items()}
            return {"status": "ok", "roles": roles}
        if action == "census":
            pids = {name: [p.pid for p in w.get_active_processes()] for name, w in watchers.items()}
            return {"status": "ok", "pids": pids}
        name = request.get("role")
        if not isinstance(name, str) or name not in watchers:
            return _error(f"no such role: {str(name)[:64]}")
        if action == "restart":
            return await self._circus("restart", {"name": name, "match": "simple"})
        count = request.get("count")
        role = name.rsplit("-", 1)[-1]  # watchers are "<configuration>-<role>" with several configurations
        if role not in MIN_WORKERS:
            return _error(f"the number of {role} processes cannot be set")
        if (
            not isinstance(count, int)
            or isinstance(count, bool)
            or not MIN_WORKERS[role] <= count <= MAX_WORKERS
        ):
            return _error("invalid number of workers")
        return await self._circus("set", {"name": name, "options": {"numprocesses": count}})

    async def _circus(self, command: str, properties: dict[str, Any]) -> dict[str, Any]:
        """Run one of circus's command objects, as its controller would, without waiting for it to
        finish; while the arbiter is busy with another command (a restart still stopping the old
        processes), try again for up to ``BUSY_WAIT`` seconds instead of failing at once."""
        from circus.commands import get_commands
        from circus.exc import CallError, ConflictError, MessageError

        log = logmod.get()
        cmd = get_commands()[command]
        deadline = time.monotonic() + BUSY_WAIT
        while True:
            try:
                cmd.validate(properties)
                result = cmd.execute(self.arbiter, dict(properties))
                break
            except ConflictError as exc:
                if time.monotonic() >= deadline:
                    return _error(str(exc))
                await asyncio.sleep(0.1)
            except (MessageError, CallError, OSError) as exc:
                return _error(str(exc))
        if hasattr(result, "add_done_callback"):

            def done(future: Any) -> None:
                if future.exception() is not None:
                    log.warning(f"supervisor: {command} {properties.get('name')}: {future.exception()}")

            result.add_done_callback(done)
        return {"status": "ok"}


def preload() -> None:
    """Import now what answering needs later, when the supervisor runs as ``--user`` and the
    installation may be readable by root only."""
    import circus.commands
    import circus.exc  # noqa: F401


def bind(path: str, group: int | None) -> socket.socket:
    """The channel's listening socket, created ``root:group 0660`` (0600 without a group) at bind time:
    the file never exists with a wider mode, whatever the process umask (no chmod after bind)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o117 if group is not None else 0o177)
    old_gid = os.getegid()
    try:
        if group is not None:
            os.setegid(group)  # the new file's group is the effective group
        sock.bind(path)
    finally:
        if group is not None:
            os.setegid(old_gid)
        os.umask(old_umask)
    sock.listen(64)
    sock.setblocking(False)
    return sock
