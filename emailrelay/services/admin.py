"""The admin interface: upstream's line protocol (SPEC.md §6), bridged to the bus.

What it is for: ``--admin <port>``.  Works over telnet and ``nc``: no
greeting, one command per line, every reply ends with the prompt
``E-MailRelay> ``, an unknown command gets ``error: unrecognised command``
and the session goes on.  Upstream's commands (``dnsbl failures flush
forward help info list notify pid quit smtp status unfail-all`` and
``terminate`` with ``--admin-terminate``) plus ours: ``roles``,
``restart <role>``, ``workers forward <N>`` and ``events``.  On a spool it
cannot write, the commands answer as upstream's: ``unfail-all`` the prompt
alone (what stays failed stays so), ``flush`` and ``forward`` ``OK`` (the
forwarder logs ``cannot lock file`` for each message).

Guarantees: replies are byte-compatible with upstream's (multi-line replies
use upstream's ``\\r\\r\\n`` line separator, see
fixtures/upstream-2.6/admin-session.txt); as upstream's, a session's line
ending is the first one its client sends: after a bare LF, lines end at LF
and every reply and event uses LF alone; after CR LF, a bare LF is part of
the line (white space between words), and a LF in a reply is sent as CR LF
(:func:`format_reply`).  ``list`` and ``failures`` name every
``<id>.envelope`` (``<id>.envelope.bad``) entry of the spool directory, in
file-name order, as upstream's: whatever the id (a tab, other control
characters, any length, bytes that are not UTF-8: sent as they are), not
one being forwarded (``.busy``), read as root (a spool ``--user`` cannot
read is listed); ours leaves out an empty id (upstream prints its spool
directory's name there), and ``unfail-all`` leaves failed an id the store
refuses (upstream renames it).  A line of any length gets one reply,
as upstream's (which buffers it all): ours keeps its first ``MAX_LINE``
bytes and drops the rest.  A unix-domain client is ``/`` in the log and
``status``, as upstream names it.  Spool changes and listings go through
the store (:meth:`SpoolStore.listed_ids`); commands to other roles travel
on the bus, so they reach every process of a role; a slow or silent client
never blocks other sessions.
A non-local client is refused unless ``--remote-clients``, by the rule of
the SMTP port (``listeners.is_local_address``), as upstream does: two
warnings in the log and the connection closed without a word.  Memory per
session is bounded: reading pauses while replies are not drained (or too
many commands wait), and a ``notify``/``events`` watcher that does not read
loses events (``events.dropped {"count":N}`` tells it) instead of
buffering them.  ``notify`` sends upstream's events in its words: connections
(``network: in|out: start|stop``) and the forwarder's runs (``client: ...``,
from the ``client`` bus events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .. import COPYRIGHT, OPENSSL_NOTICE, PRODUCT_VERSION, WARRANTY, __version__, topology
from .. import log as logmod
from ..bus import schema
from ..config import Config
from ..spool.names import MessageId, State, is_valid_id
from ..spool.store import SpoolStore
from . import daemon
from .listeners import format_address, is_local_address, not_local_reason
from .supervisor_control import SupervisorControl

PROMPT = b"E-MailRelay> "
MAX_LINE = 8192  # bytes of a line kept: the rest of a longer one is read and dropped
DNSBL_FOREVER = 4294967295  # upstream's "dnsbl stop" without a timeout
MAX_PENDING = 64  # commands read ahead of their replies before reading pauses
EVENTS_BUFFER_LIMIT = 256 * 1024  # unsent bytes above which a watcher's events are dropped
EVENTS_DROPPED = "events.dropped"
UPSTREAM_COMMANDS = ("dnsbl", "failures", "flush", "forward", "help", "info", "list", "notify", "pid", "quit",
                     "smtp", "status", "unfail-all")  # fmt: skip
OUR_COMMANDS = ("events", "restart", "roles", "workers")
# roles, restart and workers ask emailrelay's own supervisor; without it they say why
NOT_SUPERVISED = "not supervised (--single-process)"
PLAIN_CIRCUSD = "not available under a plain circusd: use circusctl"
INFO_TEXT = {  # upstream's texts (multi-line ones end in a line break, as its do) but for version and copyright
    "version": f"{PRODUCT_VERSION} (emailrelay-python {__version__})",
    "copyright": COPYRIGHT,
    "credit": "\n".join(OPENSSL_NOTICE) + "\n",
    "warranty": "\n".join(WARRANTY) + "\n",
}


@dataclass
class AdminContext:
    config: Config
    store: SpoolStore
    publish: Callable[..., None]  # (topic, **body)
    listen_addresses: list[str] = field(default_factory=list)
    control: SupervisorControl | None = None
    no_control: str = NOT_SUPERVISED  # why roles/restart/workers cannot work when control is None
    arbiter_pid: int = 0
    # supervised: keep "smtp disable" for smtp processes started later (services/roles.py)
    remember_smtp_disabled: Callable[[SpoolStore, bool], None] | None = None
    # supervised: keep "dnsbl stop [N]" (seconds; 0: "dnsbl start") for smtp processes started later
    remember_dnsbl_off: Callable[[SpoolStore, int], None] | None = None
    # keep "forward" for a forward process whose subscription is still joining the bus (roles.py)
    remember_forward: Callable[[], None] | None = None
    # upstream's status: connections started and finished, "in" (smtp and admin) and "out" (forwarding)
    counters: dict[str, int] = field(
        default_factory=lambda: {"in_started": 0, "in_finished": 0, "out_started": 0, "out_finished": 0}
    )
    connections: dict[tuple[str, str, str], None] = field(default_factory=dict)  # open: (dir, local, peer)
    watchers: set[AdminSession] = field(default_factory=set)  # sessions with notify/events on
    sessions: set[AdminSession] = field(default_factory=set)

    def on_bus_event(self, topic: str, body: dict[str, Any]) -> None:
        if topic == schema.NETWORK:
            direction, key = (
                str(body.get("dir")),
                (str(body.get("dir")), str(body.get("local")), str(body.get("peer"))),
            )
            if direction in ("in", "out"):
                started = body.get("event") == "start"
                self.counters[f"{direction}_{'started' if started else 'finished'}"] += 1
                if started:
                    self.connections[key] = None
                else:
                    self.connections.pop(key, None)
        line = f"{topic} {json.dumps(body, separators=(',', ':'))}"
        for session in list(self.watchers):
            if session.watching == "events":
                session.send_event(format_reply([line], prompt=False))
            elif (text := _notify_text(topic, body)) is not None:
                session.send_event(f"\r\nEVENT: {text}  ".encode())


def _notify_text(topic: str, body: dict[str, Any]) -> str | None:
    """An event in upstream's ``notify`` words: connections (``network``) and the forwarding runs
    (``client``), or None for the events upstream's ``notify`` does not send."""
    if topic == schema.NETWORK:
        return f"network: {body.get('dir')}: {body.get('event')}"
    if topic == schema.CLIENT:
        return f"client: {body.get('text')}"
    return None


class LineSplitter:
    """Upstream's admin input: the first line ending the client sends (CR LF or a bare LF) ends
    every line of the session; a line longer than ``MAX_LINE`` is cut there (bounded memory)."""

    def __init__(self) -> None:
        self.eol = b""  # b"\r\n" or b"\n" once the first line ending is seen
        self.buffer = b""
        self.head: bytes | None = None  # the kept start of an over-long line, while its rest is dropped

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        if not self.eol and b"\n" in self.buffer:
            at = self.buffer.index(b"\n")
            self.eol = b"\r\n" if self.buffer[at - 1 : at] == b"\r" else b"\n"
        lines: list[bytes] = []
        if self.eol:
            *complete, self.buffer = self.buffer.split(self.eol)
            for line in complete:
                lines.append(line[:MAX_LINE] if self.head is None else self.head)
                self.head = None
        if len(self.buffer) > MAX_LINE:
            if self.head is None:
                self.head = self.buffer[:MAX_LINE]
            self.buffer = self.buffer[-1:]  # (a CR that may begin the line's CR LF)
        return lines

    def output(self, data: bytes) -> bytes:
        """``data`` (CR LF and CR CR LF line breaks: a ``notify`` or ``events`` event) in the
        session's line ending."""
        return re.sub(rb"\r*\n", b"\n", data) if self.eol == b"\n" else data


def format_reply(lines: list[str], prompt: bool = True, eol: bytes = b"\r\n") -> bytes:
    """Upstream's reply framing for a session whose line ending is ``eol``: the lines joined by
    ``eol``, then ``eol`` and the prompt; for CR LF, every LF before that last CR LF becomes CR LF
    (so lines are joined by CR CR LF, and a LF in a line, even one in a file name, is CR LF).
    A file name's bytes that are not UTF-8, decoded with ``surrogateescape``, go back as they are."""
    text = eol.decode().join(lines)
    try:
        body = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        body = text.encode("utf-8", "replace")
    if eol == b"\r\n":
        body = body.replace(b"\n", b"\r\n")
    if not prompt:
        return body + eol
    return (body + eol + PROMPT) if lines else PROMPT


class AdminSession(asyncio.Protocol):
    def __init__(self, ctx: AdminContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.lines = LineSplitter()
        self.peer = ""
        self.log = logmod.get()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._refused = False
        self._reading_paused = False
        self._writable = asyncio.Event()  # clear while the transport's write buffer is over its limit
        self._writable.set()
        self._dropped = 0  # events not sent to this watcher since its last successful one
        self._closed_by = ""  # upstream's log: "peer disconnected: " when the client went first
        self.watching = ""  # "notify" (upstream's events) or "events" (ours: the bus)
        self._local = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else ""  # unix-domain peers are local
        # (an unnamed unix-domain client is upstream's "/")
        self.peer = format_address(host, int(peer[1])) if isinstance(peer, tuple) else str(peer or "/")
        if not self.ctx.config.remote_clients and not is_local_address(host):
            self._refused = True  # upstream: no reply at all, two warnings
            self.log.warning(f"configured to reject non-local admin connection: {not_local_reason(host)}")
            self.log.warning(f"connection rejected from {self.peer}")
            self.transport.close()
            return
        self.log.info(f"admin connection from {self.peer}")
        local = transport.get_extra_info("sockname")
        self._local = format_address(str(local[0]), int(local[1])) if isinstance(local, tuple) else str(local)
        self.ctx.on_bus_event(
            schema.NETWORK, {"dir": "in", "event": "start", "local": self._local, "peer": self.peer}
        )
        self.ctx.sessions.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        for line in self.lines.feed(data):
            self._queue.put_nowait(line.decode("utf-8", "replace").strip())
        self._update_reading()

    def eof_received(self) -> bool:
        self._closed_by = self._closed_by or "peer disconnected: "
        self._queue.put_nowait("\x00eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if self._refused:
            return
        self.ctx.sessions.discard(self)
        self.ctx.watchers.discard(self)
        self.ctx.on_bus_event(
            schema.NETWORK, {"dir": "in", "event": "stop", "local": self._local, "peer": self.peer}
        )
        if self._task is not None:
            self._task.cancel()
        if isinstance(exc, ConnectionResetError):
            self._closed_by = "peer disconnected: connection reset by peer: "
        if self._closed_by != "terminate":  # (upstream's process is gone before it could say so)
            self.log.info(f"admin connection closed: {self._closed_by}{self.peer}")

    # ---- flow control: a client that does not read stops being read --------------------
    def pause_writing(self) -> None:
        self._writable.clear()
        self._update_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        self._update_reading()

    def _update_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        want_pause = not self._writable.is_set() or self._queue.qsize() >= MAX_PENDING
        if want_pause != self._reading_paused:
            (self.transport.pause_reading if want_pause else self.transport.resume_reading)()
            self._reading_paused = want_pause

    def send_lines(self, lines: list[str], prompt: bool = True) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(format_reply(lines, prompt, self.lines.eol or b"\r\n"))

    def send_event(self, data: bytes) -> None:
        """One ``notify``/``events`` event, or none while this watcher is not reading its output."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > EVENTS_BUFFER_LIMIT:
            if not self._dropped:
                self.log.warning(f"admin: events for {self.peer} dropped: the client is not reading")
            self._dropped += 1
            return
        if self._dropped:
            self.send_lines([f'{EVENTS_DROPPED} {{"count":{self._dropped}}}'], prompt=False)
            self._dropped = 0
        self.transport.write(self.lines.output(data))

    async def _run(self) -> None:
        while True:
            line = await self._queue.get()
            self._update_reading()
            await self._writable.wait()  # the previous replies are drained (below the high-water mark)
            if line == "\x00eof":
                break
            if not line:
                self.send_lines([])
                continue
            words = line.split()
            if words[0].lower() == "quit":
                break
            try:
                lines = await self.execute(words[0].lower(), words[1:])
            except Exception as exc:  # an admin command must never kill the role
                lines = [f"error: {exc}"]
            if lines is not None:
                self.send_lines(lines)
        if self.transport is not None:
            self.transport.close()

    async def execute(self, command: str, args: list[str]) -> list[str] | None:
        handler = _COMMANDS.get(command)
        if command == "terminate" and self.ctx.config.admin_terminate:
            handler = AdminSession.cmd_terminate
        if handler is None:
            return ["error: unrecognised command"]
        return await handler(self, args)

    # ---- upstream commands -----------------------------------------------------------
    async def cmd_help(self, args: list[str]) -> list[str]:
        names = sorted(
            {*UPSTREAM_COMMANDS, *OUR_COMMANDS, *(["terminate"] if self.ctx.config.admin_terminate else [])}
        )
        return ["commands: " + ", ".join(names)]

    async def cmd_list(self, args: list[str]) -> list[str]:
        """The ready envelopes (not those being forwarded), as upstream's: see
        :meth:`SpoolStore.listed_ids`."""
        return await self._listing(State.READY) or ["<none>"]

    async def cmd_failures(self, args: list[str]) -> list[str]:
        """The failed envelopes' ids only (the reasons are in the envelopes), as upstream's."""
        return await self._listing(State.BAD) or ["<none>"]

    async def cmd_unfail_all(self, args: list[str]) -> list[str]:
        """Every ``.bad`` back to ready (upstream forwards them at the next trigger, not now); one the
        spool does not let go (unwritable) stays failed without a word, as E-MailRelay 2.6b's; so
        does one whose id our store refuses (docs/decisions.md, "Spool ids"), unlike upstream's."""
        for mid in await self._listing(State.BAD):
            if is_valid_id(mid):
                with contextlib.suppress(OSError):
                    self.ctx.store.unfail(MessageId.parse(mid))
        return []

    async def _listing(self, state: State) -> list[str]:
        """:meth:`SpoolStore.listed_ids` in a worker thread; nothing when there is no spool directory."""
        try:
            return await asyncio.to_thread(self.ctx.store.listed_ids, state)
        except FileNotFoundError:
            return []

    async def cmd_status(self, args: list[str]) -> list[str]:
        """Upstream's: listening addresses, then connections started and finished and the open ones,
        out (forwarding) and in (smtp and admin clients)."""
        c, open_ = self.ctx.counters, list(self.ctx.connections)
        lines = [f"LISTEN: {a}" for a in self.ctx.listen_addresses]
        lines += [f"OUT started: {c['out_started']}", f"OUT finished: {c['out_finished']}"]
        lines += [f"OUT: {local} -> {peer}" for d, local, peer in open_ if d == "out"]
        lines += [f"IN started: {c['in_started']}", f"IN finished: {c['in_finished']}"]
        lines += [f"IN: {local} <- {peer}" for d, local, peer in open_ if d == "in"]
        return lines

    async def cmd_info(self, args: list[str]) -> list[str]:
        topic = args[0].lower() if args else ""  # (any case, further words ignored: upstream's)
        if topic in INFO_TEXT:
            return [INFO_TEXT[topic]]
        return ["usage: info {copyright|credit|version|warranty}"]

    async def cmd_forward(self, args: list[str]) -> list[str]:
        if not self.ctx.config.forward_to:
            return ["error: no remote server configured: use --forward-to"]
        if self.ctx.remember_forward is not None:  # first: a forward process still joining reads it
            self.ctx.remember_forward()
        self.ctx.publish(schema.CMD_FORWARD)
        return ["OK"]

    async def cmd_flush(self, args: list[str]) -> list[str]:
        """Upstream: forward with a connection of its own and wait for the result: ``OK`` once the
        spool was worked through (rejected messages are the envelopes' business), else the error
        that ended a session (connection, DNS, protocol)."""
        if not self.ctx.config.forward_to:
            return ["error: no remote server configured: use --forward-to"]
        if not self.ctx.store.ready(ignore_backoff=True):
            return ["error: no messages to send"]
        from .forward import ForwardService

        forwarder = ForwardService(self.ctx.config, self.ctx.store)
        forwarder.flushing = True  # upstream's flush logs the messages' lines only: the reply says the rest
        forwarder.on_event = lambda topic, **body: self.ctx.on_bus_event(topic, body)  # its connections count
        await forwarder.run_once()
        return [f"error: {forwarder.session_error}"] if forwarder.session_error else ["OK"]

    async def cmd_notify(self, args: list[str]) -> list[str] | None:
        self.watching = "notify"
        self.ctx.watchers.add(self)
        return None  # upstream: no reply, the events follow

    async def cmd_pid(self, args: list[str]) -> list[str]:
        return [str(self.ctx.arbiter_pid or os.getpid())]

    async def cmd_smtp(self, args: list[str]) -> list[str]:
        verb = args[0].lower() if args else ""  # (any case; upstream ignores further words)
        if verb in ("disable", "enable"):
            disabled = verb == "disable"
            await self._remember(self.ctx.remember_smtp_disabled, disabled, f"smtp {verb}")
            self.ctx.publish(schema.CMD_SMTP_DISABLE if disabled else schema.CMD_SMTP_ENABLE)
            return ["OK"]
        return ["usage: smtp {disable|enable}"]

    async def cmd_dnsbl(self, args: list[str]) -> list[str]:
        """Upstream's ``dnsbl start`` (check again) and ``dnsbl stop [<timeout>]`` (no checks for
        that many seconds, else "for ever": upstream's 4294967295), told to every smtp process;
        ours: ``dnsbl show`` describes the ``--dnsbl`` configuration. The verb in any case, as upstream."""
        args = [args[0].lower(), *args[1:]] if args else []
        if args == ["show"]:
            if not self.ctx.config.dnsbl:
                return ["error: dnsbl is not configured: use --dnsbl"]
            from ..policy.dnsbl import describe, parse_config

            return [describe(parse_config(self.ctx.config.dnsbl))]
        if args == ["start"]:
            await self._remember(self.ctx.remember_dnsbl_off, 0, "dnsbl start")
            self.ctx.publish(schema.CMD_DNSBL, off_for=0)
            self.log.info("dnsbl enabled")
            return ["OK"]
        if args[:1] == ["stop"] and len(args) <= 2 and all(a.isdigit() for a in args[1:]):
            seconds = int(args[1]) if len(args) == 2 else DNSBL_FOREVER
            await self._remember(self.ctx.remember_dnsbl_off, seconds, "dnsbl stop")
            self.ctx.publish(schema.CMD_DNSBL, off_for=seconds)
            self.log.info(f"dnsbl disabled for {seconds}s")
            return ["OK"]
        return ["usage: dnsbl {start|stop <timeout>}"]

    async def _remember(
        self, keep: Callable[[SpoolStore, Any], None] | None, value: object, command: str
    ) -> None:
        """Supervised: record ``command``'s state in the spool (``keep``, smtp_switch.py) before it
        goes on the bus, for an smtp process restarted later or still joining the bus."""
        if keep is None:
            return
        try:
            await asyncio.to_thread(keep, self.ctx.store, value)
        except OSError as exc:
            logmod.get().warning(f"admin: {command} not kept for restarted smtp processes: {exc}")

    async def cmd_terminate(self, args: list[str]) -> list[str] | None:
        pid = self.ctx.arbiter_pid or os.getpid()
        self.log.info(f"received a terminate command from {self.peer}")
        self._closed_by = "terminate"
        # a clean stop that ends with status 0, as upstream's terminate does (SIGINT would end ours with
        # upstream's 130); a plain circusd (no channel to ours) quits on SIGINT
        plain_circusd = self.ctx.arbiter_pid and self.ctx.control is None
        os.kill(pid, signal.SIGINT if plain_circusd else daemon.TERMINATE_SIGNAL)
        if self.transport is not None:
            self.transport.close()  # upstream: no reply, the connection closes
        return None

    # ---- our commands ----------------------------------------------------------------
    async def cmd_roles(self, args: list[str]) -> list[str]:
        if self.ctx.control is None:
            return [f"error: {self.ctx.no_control}"]
        statuses = await self.ctx.control.roles()
        lines = []
        for role, status in sorted(statuses.items()):
            count = await self.ctx.control.processes(role)
            lines.append(f"{role}: {status} ({count} process{'es' if count != 1 else ''})")
        return lines or ["error: supervisor not reachable"]

    async def cmd_restart(self, args: list[str]) -> list[str]:
        if self.ctx.control is None:
            return [f"error: {self.ctx.no_control}"]
        if len(args) != 1:
            return ["usage: restart <role>"]
        reply = await self.ctx.control.restart(args[0])
        return ["OK"] if reply.get("status") == "ok" else [f"error: {reply.get('reason', 'failed')}"]

    async def cmd_workers(self, args: list[str]) -> list[str]:
        if self.ctx.control is None:
            return [f"error: {self.ctx.no_control}"]
        if len(args) != 2 or args[0] not in topology.SCALABLE or not args[1].isdigit():
            return [f"usage: workers {{{'|'.join(topology.SCALABLE)}}} <N>"]
        count = int(args[1])
        low, high = topology.SCALABLE[args[0]]
        if not low <= count <= high:
            return ["error: invalid number of workers"]
        reply = await self.ctx.control.set_workers(args[0], count)
        return ["OK"] if reply.get("status") == "ok" else [f"error: {reply.get('reason', 'failed')}"]

    async def cmd_events(self, args: list[str]) -> list[str] | None:
        self.watching = "events"
        self.ctx.watchers.add(self)
        return []


_COMMANDS: dict[str, Callable[[AdminSession, list[str]], Any]] = {
    "help": AdminSession.cmd_help,
    "list": AdminSession.cmd_list,
    "failures": AdminSession.cmd_failures,
    "unfail-all": AdminSession.cmd_unfail_all,
    "status": AdminSession.cmd_status,
    "info": AdminSession.cmd_info,
    "forward": AdminSession.cmd_forward,
    "flush": AdminSession.cmd_flush,
    "notify": AdminSession.cmd_notify,
    "pid": AdminSession.cmd_pid,
    "smtp": AdminSession.cmd_smtp,
    "dnsbl": AdminSession.cmd_dnsbl,
    "roles": AdminSession.cmd_roles,
    "restart": AdminSession.cmd_restart,
    "workers": AdminSession.cmd_workers,
    "events": AdminSession.cmd_events,
}
