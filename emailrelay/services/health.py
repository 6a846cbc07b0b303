"""Health checks and the small HTTP server that serves ``/healthz`` (and ``/metrics``).

What it is for: one answer to "is this relay able to take and pass on
mail?" for Docker's ``HEALTHCHECK``, Kubernetes probes and monitoring.
``GET /healthz`` answers ``200`` with a JSON object of checks when all
pass, ``503`` with the same object when one fails::

    {"ok": false, "checks": {"listener": {"ok": true, "detail": "220 ..."},
                             "spool": {"ok": false, "detail": "... Permission denied"}, ...}}

The checks (each bounded by a timeout, run concurrently):

- ``listener``: when the bus has said which ``smtp`` processes run (their
  ``role.started``, or a census) and one of them is alive, that is the answer
  — no connection, so a health probe every few seconds costs nothing and
  leaves nothing in the relay's log; an admin ``smtp disable`` heard on the
  bus fails it.  Otherwise connect to the configured SMTP address
  (``--port`` on the first ``--interface``; ``0.0.0.0`` means 127.0.0.1,
  ``::`` means ::1), read the greeting and say ``QUIT``.  Only a ``2xx``
  greeting passes: circus holds the listening socket, so a bare connect
  would succeed even with no ``smtp`` process alive.  Skipped with
  ``--no-smtp`` or an ``fd#`` interface (socket activation), unless an
  address is given to :class:`HealthChecker`.
- ``spool``: create, write, fsync and delete a scratch file in the spool
  directory (:meth:`SpoolStore.probe_writable`).
- ``disk``: free space on the spool's file system at least ``min_free``
  (default 100 MB).
- ``forwarders``: only when the relay forwards (``--forward-to`` without
  ``--immediate``).  With the supervisor's channel in the run directory, at
  least one ``forward`` process is alive (the supervisor's census).  Without one,
  from the bus: a ``forward`` role has published ``role.started`` and not
  ``role.stopping`` since (and the pid still exists), or a forward event (``forward.done``,
  ``forward.deferred``, ``spool.failed``) arrived within ``forward_window``
  seconds (default 300).

Guarantees: nothing here blocks the event loop (file-system probes run in
worker threads, the census is asynchronous); a slow or malicious HTTP client costs
one task until its read timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..bus import schema
from ..config import Config
from ..spool.store import SpoolStore

DEFAULT_MIN_FREE = 100 * 1024 * 1024
DEFAULT_FORWARD_WINDOW = 300.0
CHECK_TIMEOUT = 5.0
_FORWARD_EVENTS = (schema.FORWARD_DONE, schema.FORWARD_DEFERRED, schema.SPOOL_FAILED)


@dataclass
class RoleTracker:
    """What the bus has said about the roles: live pids per role, the last forward event."""

    alive: dict[str, set[int]] = field(default_factory=dict)
    last_forward_event: float | None = None
    smtp_disabled: bool = False  # the admin's "smtp disable", until "smtp enable"

    def on_event(self, topic: str, body: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        role = str(body.get("role", ""))
        pid = body.get("pid")
        if topic == schema.ROLE_STARTED and role and isinstance(pid, int):
            self.alive.setdefault(role, set()).add(pid)
        elif topic == schema.ROLE_STOPPING and role and isinstance(pid, int):
            self.alive.get(role, set()).discard(pid)
        elif topic in _FORWARD_EVENTS:
            self.last_forward_event = now
        elif topic in (schema.CMD_SMTP_DISABLE, schema.CMD_SMTP_ENABLE):
            self.smtp_disabled = topic == schema.CMD_SMTP_DISABLE

    def running(self, role: str) -> list[int]:
        """The pids of ``role`` heard of and still alive (kill -9 sends no role.stopping)."""
        live = {pid for pid in self.alive.get(role, set()) if _exists(pid)}
        self.alive[role] = live
        return sorted(live)

    def forwarders(self, window: float, now: float | None = None) -> tuple[bool, str]:
        now = time.time() if now is None else now
        pids = self.running("forward")
        if pids:
            return True, f"forward role running (pids {', '.join(map(str, pids))})"
        if self.last_forward_event is not None and now - self.last_forward_event <= window:
            return True, f"forward event {int(now - self.last_forward_event)}s ago"
        return False, "no forward role started (or all stopped) and no forward events recently"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, as another user
    return True


def smtp_target(config: Config) -> tuple[str, int] | str | None:
    """(host, port) or a unix socket path to probe; None when there is nothing to probe."""
    from .listeners import plan

    if config.no_smtp or config.dont_serve or config.as_client:
        return None
    try:
        specs = plan(config.interfaces, {"smtp": config.port})
    except Exception:  # an interface name that no longer resolves: nothing to probe
        return None
    for spec in specs:
        if spec.path:
            return spec.path
        if spec.host is not None:
            host = spec.host.split("%")[0]
            return ("127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else spec.host, spec.port)
    return None


class HealthChecker:
    def __init__(
        self,
        config: Config,
        store: SpoolStore,
        run_dir: str,
        tracker: RoleTracker,
        *,
        min_free: int = DEFAULT_MIN_FREE,
        forward_window: float = DEFAULT_FORWARD_WINDOW,
        smtp_address: tuple[str, int] | str | None = None,
        forwarding: bool | None = None,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.config = config
        self.store = store
        self.run_dir = run_dir
        self.tracker = tracker
        self.min_free = min_free
        self.forward_window = forward_window
        self.smtp_address = smtp_address if smtp_address is not None else smtp_target(config)
        self.timeout = timeout
        if forwarding is None:
            forwarding = bool(config.forward_to) and not config.immediate and not config.as_client
        self.forwarding = forwarding

    async def check(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        names = ("listener", "spool", "disk", "forwarders")
        coros = (self._listener(), self._spool(), self._disk(), self._forwarders())
        results = await asyncio.gather(*(self._bounded(c) for c in coros))
        checks = dict(zip(names, results, strict=True))
        return all(c["ok"] for c in checks.values()), checks

    async def _bounded(self, coro: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(coro, self.timeout)
        except TimeoutError:
            return {"ok": False, "detail": f"timed out after {self.timeout:g}s"}
        except Exception as exc:
            return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}

    async def _listener(self) -> dict[str, Any]:
        target = self.smtp_address
        if target is None:
            return {"ok": True, "skipped": True, "detail": "no smtp address to probe"}
        where = target if isinstance(target, str) else f"{target[0]}:{target[1]}"
        if self.tracker.smtp_disabled:
            return {"ok": False, "detail": f"{where}: smtp disabled (admin 'smtp disable')"}
        pids = self.tracker.running("smtp")
        if pids:
            return {"ok": True, "detail": f"{where}: smtp role running (pids {', '.join(map(str, pids))})"}
        try:
            if isinstance(target, str):
                reader, writer = await asyncio.open_unix_connection(target)
            else:
                reader, writer = await asyncio.open_connection(*target)
        except OSError as exc:
            return {"ok": False, "detail": f"cannot connect to {where}: {exc.strerror or exc}"}
        try:
            greeting = b""
            while True:
                line = await reader.readline()
                greeting = line
                if len(line) < 4 or line[3:4] != b"-":
                    break
            text = greeting.decode("ascii", "replace").strip()
            with contextlib.suppress(OSError):
                writer.write(b"QUIT\r\n")
                await writer.drain()
                await asyncio.wait_for(reader.readline(), 1.0)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        ok = text[:1] == "2"
        return {"ok": ok, "detail": f"{where}: {text or 'connection closed without a greeting'}"}

    async def _spool(self) -> dict[str, Any]:
        try:
            await asyncio.to_thread(self.store.probe_writable)
        except OSError as exc:
            return {"ok": False, "detail": exc.strerror or str(exc)}
        return {"ok": True, "detail": f"{self.store.directory} writable"}

    async def _disk(self) -> dict[str, Any]:
        try:
            free = await asyncio.to_thread(self.store.free_bytes)
        except OSError as exc:
            return {"ok": False, "detail": f"cannot stat the spool's file system: {exc.strerror or exc}"}
        mb = free // (1024 * 1024)
        need = self.min_free // (1024 * 1024)
        return {"ok": free >= self.min_free, "free_bytes": free, "detail": f"{mb} MB free (need {need} MB)"}

    async def _forwarders(self) -> dict[str, Any]:
        if not self.forwarding:
            return {"ok": True, "skipped": True, "detail": "this relay does not run forwarders"}
        from .supervisor_control import SupervisorControl

        control = SupervisorControl(self.run_dir, timeout=min(2.0, self.timeout))
        if control.available() and (census := await control.census()) is not None and "forward" in census:
            pids = census["forward"]
            return {
                "ok": bool(pids),
                "detail": f"circus: {len(pids)} forward process{'es' if len(pids) != 1 else ''}",
            }
        ok, detail = self.tracker.forwarders(self.forward_window)
        return {"ok": ok, "detail": detail}


# ---- a small HTTP/1.1 server ------------------------------------------------------

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip
READ_TIMEOUT = 10.0


class HttpServer:
    """GET-only, one request per connection; routes map a path to an async handler."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port, limit=8192)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, head = await asyncio.wait_for(self._request(reader), READ_TIMEOUT)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        reason = _REASONS.get(status, "Unknown")
        header = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(header.encode("ascii") + (b"" if head else body))
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        line = await reader.readline()
        parts = line.decode("latin-1").split()
        while True:  # headers: ignored
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n", False
        handler = self.routes.get(target)
        if handler is None:
            return 404, "text/plain", b"not found\n", method == "HEAD"
        try:
            status, ctype, body = await handler()
        except Exception as exc:
            return 500, "text/plain", f"error: {exc}\n".encode(), method == "HEAD"
        return status, ctype, body, method == "HEAD"


def health_handler(checker: HealthChecker) -> Handler:
    async def handle() -> tuple[int, str, bytes]:
        ok, checks = await checker.check()
        body = json.dumps({"ok": ok, "checks": checks}, indent=2).encode() + b"\n"
        return (200 if ok else 503), "application/json", body

    return handle
