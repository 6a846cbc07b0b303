"""The forwarder: claims spooled messages and sends them to the next hop.

What it is for: every forwarding mode of the reference guide — ``--as-client``
(forward what is there, then exit), ``--forward`` (once at start), ``--poll``
(on a timer; ``--poll 0`` as soon as a message is committed),
``--forward-on-disconnect``, ``--immediate`` (during the client's session,
answering with the next hop's reply) and the admin ``forward``/``flush``.

What it expects: a :class:`SpoolStore` shared with any number of other
processes; a next hop from ``--forward-to`` or the envelope's
``ForwardToAddress``.

What it guarantees:
- a message is forwarded by the one process whose claim (rename to
  ``.busy`` under flock) succeeded; it is removed only after the next hop's
  250 for the data; nothing stays ``.busy`` when the forwarder stops;
- by default failures are final, as E-MailRelay 2.6b's are: every refusal by
  the next hop (4xx or 5xx to MAIL, RCPT or the content) fails the message to
  ``.bad`` at once with the reply as the reason (``one or more recipients
  rejected`` and the RSET's code for refused recipients) and the log line
  ``failing envelope [...]``, and the next message goes on the same
  connection; a failed session (an unexpected reply such as a refused DATA,
  a timeout, a dropped connection, TLS, authentication) fails the message in
  hand with upstream's words and no code, and ends the run: the other
  messages stay as they are, for the next trigger; a DNS or connection
  failure fails nothing and ends the run;
- with back-off (``--retry``) a 4xx, a timeout, a dropped connection or a
  connection failure releases the message with back-off
  (:mod:`emailrelay.services.retry`) and it is failed only after
  ``--give-up`` seconds; a 5xx fails it; and recipients the next hop defers
  with a 4xx while accepting others (``452`` too many recipients) go in
  further transactions on the same connection (at most as many per
  transaction as it accepted after a ``452``); after each partial
  transaction the claimed envelope is rewritten (fsync, rename, directory
  fsync) to list only the recipients still to do, so a crash neither loses
  them nor sends to the delivered ones again;
- a message whose claim the spool refuses (unwritable: the rename fails) is
  left as it is with upstream's ``warning: cannot lock file: "<envelope>"``,
  once a pass; a pass that claimed nothing that way ends with ``warning: smtp
  client error: done`` instead of ``no more messages to send``;
- ``To-Local`` recipients are never forwarded;
- up to ``workers`` connections run in parallel, each reused for following
  messages with the same ``ForwardToAddress`` (empty: ``--forward-to``) and
  account selector; a message with another one has the idle connections
  closed with QUIT and a new one opened, even to the same next hop, as
  E-MailRelay 2.6b does (``new connection for [<address>]``); idle
  connections are closed with QUIT;
- a spool rescan happens on start, every ``--poll`` seconds and whenever the
  queue runs dry after a ring, so a lost wake-up delays at most one period;
- the admin's ``notify`` sees upstream's ``client:`` events for each run (one
  bus event each, through ``on_event``): a run starts at the first message
  claimed after a trigger (``forward: start: admin|poll|client disconnect``)
  and ends when the queue runs dry (``forward: end[: <its first error>]``); a
  trigger that finds nothing says ``forward: end: no messages``; a next hop
  given by name is ``resolving: <name>/<port>/<ip|ipv4|ipv6>`` before
  ``connecting: <the address it resolved to>``; none for the admin
  ``flush``, ``--immediate`` or ``--as-client``;
- a trigger (admin ``forward``, a client's disconnect, a filter's rescan)
  that comes during a run is upstream's ``forwarding: [<trigger>]: still busy
  from last time[: connected to <peer>]``, and the last of them is asked again
  when the run ends (``forwarding: queued request [<trigger>]``);
- a message with only local recipients is failed (``no remote recipients``)
  before anything else: no ``forwarding [<id>]`` line, client filter or
  connection for it, as upstream;
- a client filter that leaves its envelope unreadable fails the message with
  upstream's reader's words (``cannot read envelope file: expected
  "X-MailRelay-<field>:"`` and the like, from
  :func:`~emailrelay.spool.envelope.upstream_read_error`) and code 550,
  without a warning line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .. import log as logmod
from ..bus import schema
from ..config import Config
from ..policy.chain import build_client_filter
from ..policy.verdicts import FilterOutcome
from ..protocol import smtp_client as sc
from ..protocol.addresses import xtext_decode, xtext_encode
from ..protocol.content_encoding import ContentScanner
from ..spool.envelope import Envelope, EnvelopeError, upstream_read_error
from ..spool.names import MessageId, State
from ..spool.store import Claim, NewMessage, SpoolStore
from . import retry
from .forward_to_lookup import first_host
from .listeners import format_address
from .security import client_security
from .smtp_connection import ConnectionTrouble, SmtpConnection
from .spool_sweep import leftover_age

READ_CHUNK = 256 * 1024
IN_MEMORY_LIMIT = 1024 * 1024  # content up to this size is read once and sent from memory
IDLE_CONNECTION_LINGER = 2.0
CONTINUOUS_RESCAN = 1.0  # --poll 0: safety-net rescan period
MIN_RESCAN_GAP = 0.2  # spool rescans are O(spool size): never more often than this
STOP_GRACE = 5.0  # a stopping forwarder lets messages in flight finish for this long (circus allows 8 s)
RECOVERY_PERIOD = 5.0  # at most this often, a rescan also returns claims of dead forwarders
_CONTENT_TO_BODY = {"7bit": "7BIT", "8bit": "8BITMIME", "binarymime": "BINARYMIME"}
_T = TypeVar("_T")
Loaded = tuple[bytes | None, int, str | None]  # a content read to send: bytes when small, size, problem


@dataclass(frozen=True)
class Outcome:
    """What happened to one message."""

    status: str  # "sent" | "failed" | "retry" | "skipped"
    code: int = 0
    text: str = ""
    reply: sc.Reply | None = None  # the next hop's reply that failed the message, if one did

    @property
    def ok(self) -> bool:
        return self.status in ("sent", "skipped")


_Key = tuple[str, str]  # a pooled connection's: the message's ForwardToAddress as written ("" for the
# --forward-to hop) and its ClientAccountSelector


class _Pool:
    """Idle connections per next hop, for reuse across messages and workers."""

    def __init__(self) -> None:
        self.idle: dict[_Key, list[tuple[float, SmtpConnection]]] = {}
        self.keys: dict[SmtpConnection, _Key] = {}  # each connection's key, given when it is opened

    def take(self, key: _Key) -> SmtpConnection | None:
        conns = self.idle.get(key)
        while conns:
            _, conn = conns.pop()
            if conn.usable:
                return conn
            self.forget(conn)
        return None

    def give(self, conn: SmtpConnection) -> None:
        if conn.usable and conn in self.keys:
            self.idle.setdefault(self.keys[conn], []).append((time.monotonic(), conn))
        else:
            self.forget(conn)

    def forget(self, conn: SmtpConnection) -> None:
        self.keys.pop(conn, None)
        conn.close()

    def others(self, key: _Key) -> tuple[list[SmtpConnection], set[_Key]]:
        """Take out the idle connections of keys other than ``key``; them and their keys."""
        out = [c for k, conns in self.idle.items() if k != key for _, c in conns]
        keys = {self.keys[c] for c in out if c in self.keys}
        self.idle = {k: v for k, v in self.idle.items() if k == key}
        return self._out(out), keys

    def _out(self, conns: list[SmtpConnection]) -> list[SmtpConnection]:
        for conn in conns:
            self.keys.pop(conn, None)
        return conns

    def expired(self, linger: float) -> list[SmtpConnection]:
        now = time.monotonic()
        out: list[SmtpConnection] = []
        for hop, conns in list(self.idle.items()):
            keep = [(t, c) for t, c in conns if now - t < linger and c.usable]
            out.extend(c for t, c in conns if (t, c) not in keep)
            self.idle[hop] = keep
        return self._out(out)

    def drain(self) -> list[SmtpConnection]:
        out = [c for conns in self.idle.values() for _, c in conns]
        self.idle.clear()
        return self._out(out)


class ForwardService:
    """Forwarding for one process: a queue of ids, ``workers`` sender tasks, a rescan timer."""

    def __init__(
        self,
        config: Config,
        store: SpoolStore,
        *,
        executor: ThreadPoolExecutor | None = None,
        safety_rescan: float | None = None,
        senders: int | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.log = logmod.get()
        # connections at once: ``--workers forward=N`` in one process (--single-process); a supervised
        # forward role is one of N processes and says 1, so that N means N connections, not N x N
        self.workers = senders or max(1, config.workers_forward)
        self.safety_rescan = safety_rescan  # rescan at least this often (supervised: lost doorbells)
        self.backoff = config.backoff  # --retry: temporary failures are retried with back-off
        self.client_config = sc.ClientConfig(
            helo_name=config.domain if "." in config.domain else "",  # "": the local address
            pipelining="pipelining" in config.client_smtp_config,  # opt-in, as upstream
            chunking=True,  # (upstream has no client "chunking" item: BDAT whenever it is offered)
            smtputf8_strict="smtputf8strict" in config.client_smtp_config,
            eightbit_strict="eightbitstrict" in config.client_smtp_config,
            binarymime_strict="binarymimestrict" in config.client_smtp_config,
            forward_to_some=config.forward_to_some,
            send_auth_param="client" not in config.anonymous,
            defer_transient=config.backoff,
            # upstream: with STARTTLS a must, a next hop that refuses EHLO gets no HELO
            esmtp_required=config.client_tls_required and not config.client_tls_connection,
        )
        self.security = client_security(config)
        self.client_filter = build_client_filter(config, store) if config.client_filters else None
        self.stop_scanning = False  # a client filter exited 102
        self._scan_stopped = False  # ... and ended the pass: no "no more messages to send" (upstream)
        self._held_until = 0.0  # after a 102 with --poll: nothing more until the next polling cycle
        self.pool = _Pool()
        self.queue: asyncio.Queue[MessageId] = asyncio.Queue()
        self.known: set[MessageId] = set()  # queued or in progress in this process
        self.failures = 0
        self.sent = 0
        self.session_error: str | None = None  # the first connection-level failure (admin flush reports it)
        self._wake = asyncio.Event()
        self._ignore_backoff = False
        self._forcing = False  # the current pass ignores back-off (admin forward)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._claims: set[Claim] = set()
        self._last_mid = ""  # the last message claimed: --log-format=msgid's id for the lines after it
        self._started: dict[MessageId, float] = {}
        self._loaded: dict[MessageId, Loaded | OSError] = {}  # read with the claim (_claim_and_load)
        self._last_recovery = -RECOVERY_PERIOD
        self._last_rescan = -MIN_RESCAN_GAP
        self._next_due: float | None = None  # earliest not-before of a message in back-off
        self._immediate: dict[MessageId, object] = {}  # --immediate: message -> the client's session
        self._session_pools: dict[object, _Pool] = {}  # --immediate: a connection per client session
        self._session_trouble: set[MessageId] = set()  # --immediate: the next hop's session failed
        self.on_event: Callable[..., None] | None = None  # (topic, **body): bus events
        self._left: set[MessageId] = set()  # no back-off: left by a failed run, for the next trigger
        self.run_error: str | None = None  # no back-off: why the last run stopped (--as-client's exit)
        self._dead_hops: set[str] = set()  # no back-off: next hops whose run ended on an error
        self._trigger: str | None = None  # the named trigger of the pending rescan
        self._passed = 0  # messages handled since the queue was last empty
        self._unlockable = 0  # ... and claims the spool refused (upstream's "cannot lock file")
        self.stranded = 0  # messages that could be neither sent nor failed (--as-client exits 1)
        self.flushing = False  # the admin's flush: as upstream, only the messages' lines are logged
        # the admin's notify (upstream's "client:" events): the run in progress, named by its trigger
        # only an admin has a notify to watch them (none: no event costs a bus message); never a one-shot
        # run (--as-client, --dont-serve)
        self._reporting = config.admin_port is not None
        self.reports_idle = True  # says "no messages" (one forward process of several does)
        self._run: str | None = None  # the trigger of the run in progress
        self._run_error: str | None = None  # the first error that ended it for a next hop
        self._next_run: str | None = None  # the trigger of the work queued for the next run
        # triggers that came during a run (upstream's "still busy from last time"): their lines still
        # to log, and the last of them, asked again when the run ends ("queued request")
        self._busy_lines: list[str] = []
        self._queued_request: str | None = None
        self._undecided: list[str] = []  # ... came before the pending rescan told whether a run starts
        self._run_said = False  # the run has logged its first message's line (they follow it)
        self._opening: set[SmtpConnection] = set()  # connections not yet in the pool (connecting)

    def _emit(self, topic: str, **body: object) -> None:
        if self.on_event is not None:
            self.on_event(topic, **body)

    def _network(self, direction: str, event: str, local: str, peer: str) -> None:
        """An onward connection opened or closed (the admin ``status`` and ``notify``)."""
        self._emit(schema.NETWORK, dir=direction, event=event, local=local, peer=peer)

    # ---- the admin's notify: upstream's "client:" events --------------------------------
    def _reports(self, mid: MessageId) -> bool:
        """Whether ``mid``'s forwarding is reported: not the admin's flush, not ``--immediate``."""
        return self._reporting and not self.flushing and mid not in self._immediate

    def _client_event(self, text: str) -> None:
        self._emit(schema.CLIENT, text=text)

    def _queued_for_run(self, trigger: str | None) -> None:
        """Work was queued: the run it starts (if none is in progress) is named after ``trigger``
        (None: a ring for a committed message, or a timer: upstream's ``poll``); the first wins."""
        if self._run is None and self._next_run is None:
            self._next_run = trigger or "poll"

    def _run_starts(self, mid: MessageId) -> None:
        """A message was claimed: the run starts now unless one is in progress."""
        if self._run is None and self._reports(mid):
            self._run, self._next_run, self._run_error = self._next_run or "poll", None, None
            self._client_event(f"forward: start: {self._run}")

    def _run_ends(self) -> None:
        """The queue ran dry: the run in progress ends, with the first error that stopped it (with
        none in progress, what was queued was someone else's: no run, whatever queued it)."""
        self._next_run = None
        if self._run is not None:
            error, self._run, self._run_error = self._run_error, None, None
            self._client_event(f"forward: end: {error}" if error else "forward: end")

    def _nothing_to_run(self) -> None:
        """A trigger found nothing to send (upstream: no ``forward: start`` before it)."""
        idle = self._run is None and self.queue.empty() and not self._claims
        if idle and self._reporting and self.reports_idle:
            self._next_run = None
            self._client_event("forward: end: no messages")

    def _on_connection(self, mid: MessageId, direction: str, event: str, local: str, peer: str) -> None:
        """A reported message's new connection: connected, as upstream says, with the message's
        ``sending`` first."""
        self._network(direction, event, local, peer)
        if event == "start":
            self._client_event(f"sending: {mid}")
            self._client_event(f"connected: {peer}")

    async def _in_thread(
        self, fn: Callable[..., _T], *args: Any, undo: Callable[[_T], object] | None = None, **kwargs: Any
    ) -> _T:
        """Run blocking spool work (claims, content reads, fsynced rewrites, a claim's release, failure
        or removal, directory scans) in the executor, off the event loop.  The store's mutating calls
        enter ``as_root`` themselves, in the executor's thread (never around this ``await``).  A
        cancelled caller still waits for the thread to finish, so a claim is never used from two
        threads at once; ``undo`` gets what the call returned when nobody is left to use it (a
        claim taken meanwhile is released)."""
        future = asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                result = await future
                if undo is not None:
                    undo(result)
            raise

    # ---- triggers -------------------------------------------------------------------
    def ring(self, mid: MessageId | None = None) -> None:
        """Something may be ready: a committed id (fast path), or None for a rescan."""
        if time.monotonic() < self._held_until:
            return  # a client filter's 102: the rescan at the next polling cycle finds it
        if mid is not None and mid in self._left:
            return  # left by a failed run (its release rang): it waits for the next trigger
        if mid is not None and mid not in self.known:
            self.known.add(mid)
            self.queue.put_nowait(mid)
            self._queued_for_run(None)
        elif mid is not None:  # queued or in hand: mostly the second doorbell of one commit (smtp, notify)
            asyncio.get_running_loop().call_later(MIN_RESCAN_GAP, self._recheck, mid)
        else:
            self._wake.set()

    def _recheck(self, mid: MessageId) -> None:
        """A doorbell came for an id in hand: if the claim has released it into back-off since, the
        scheduler must learn when it is due.  One stat, not a rescan of the whole spool (that was
        about a quarter of the forward role's CPU: a rescan for nearly every message under load)."""
        if mid in self.known:
            return
        try:
            mtime = os.stat(self.store.envelope_path(mid, State.READY)).st_mtime
        except OSError:
            return  # forwarded, failed or claimed elsewhere
        if mtime <= time.time() + 0.001:
            self.ring(mid)
        elif self._next_due is None or mtime < self._next_due:
            self._wake.set()  # a rescan finds the new earliest due time

    def catch_up(self, written_by: float) -> None:
        """Queue the due messages whose envelopes were written by ``written_by``: what a doorbell
        lost at start-up would have forwarded, and nothing committed since."""
        due, _ = self.store.ready_and_next_due(skip=self.known, written_by=written_by)
        for mid in due:
            self.known.add(mid)
            self.queue.put_nowait(mid)

    def request(self, trigger: str) -> None:
        """A named trigger (``client disconnect``, a filter's ``rescan``): logged as upstream logs
        it, then a rescan (``forwarding: no messages to send`` when it finds nothing); during a
        run, queued for its end (:meth:`_while_busy`)."""
        if self._while_busy(trigger):
            return
        self.log.verbose(f"forwarding: [{trigger}]")
        if time.monotonic() < self._held_until:
            return
        self._trigger = trigger
        self._wake.set()

    def forward_all_now(self) -> None:
        """Admin ``forward``: rescan and ignore back-off once (and a client filter's 102 hold); during
        a run, queued for its end (:meth:`_while_busy`)."""
        if self._while_busy("admin"):
            return
        self.log.verbose("forwarding: [admin]")
        self._trigger = "admin"
        self._held_until = 0.0
        self._ignore_backoff = True
        self._wake.set()

    def _while_busy(self, trigger: str) -> bool:
        """Whether a forwarding run is in progress: as E-MailRelay 2.6b, a trigger that comes then
        says ``forwarding: [<trigger>]: still busy from last time[: connected to <peer>]`` and is
        asked again when the run ends (the last one: ``forwarding: queued request [<trigger>]``).
        A trigger that comes before the rescan of the one before it waits for that rescan: busy if
        it starts a run, asked again (as now) if it does not."""
        if self._in_run():
            self._busy_lines.append(trigger)
            self._queued_request = trigger
            if self._run_said:
                self._say_busy()
            return True
        if self._trigger is not None:
            self._undecided.append(trigger)
            return True
        return False

    def _in_run(self) -> bool:
        """Messages queued, taken from the queue or claimed (not ``--immediate``'s: the client
        session forwards those)."""
        in_hand = [*self.known, *(c.id for c in self._claims)]
        return any(mid not in self._immediate for mid in in_hand)

    def _message_said(self, mid: MessageId) -> None:
        """A message's first line is logged: the ``still busy`` lines waiting for it follow."""
        if mid not in self._immediate:
            self._run_said = True
            self._say_busy()

    def _say_busy(self) -> None:
        """Log the ``still busy`` lines of the triggers that came during this run (after the run's
        first ``forwarding [<id>]``, as upstream's come), with the connection in use if any."""
        if not self._busy_lines:
            return
        conns = [*self._opening, *self.pool.keys]
        peer = next((c.peer for c in conns if c.transport is not None and not c.transport.is_closing()), None)
        connected = f": connected to {peer}" if peer is not None else ""
        for trigger in self._busy_lines:
            self.log.verbose(f"forwarding: [{trigger}]: still busy from last time{connected}")
        self._busy_lines = []

    def _decide(self, undecided: list[str]) -> None:
        """The rescan that the ``undecided`` triggers waited for has queued what it found: a run
        started (they are busy lines, said with its first message), or they are asked now."""
        for trigger in undecided:
            if self._in_run():
                self._busy_lines.append(trigger)
                self._queued_request = trigger
            else:
                self._ask(trigger)

    def _ask(self, trigger: str) -> None:
        if trigger == "admin":
            self.forward_all_now()
        else:
            self.request(trigger)

    def _run_done(self) -> None:
        """A run ended (the queue ran dry): a trigger that came during it is asked again, as
        upstream's ``forwarding: queued request [<trigger>]``."""
        self._say_busy()
        self._run_said = False
        trigger, self._queued_request = self._queued_request, None
        if trigger is not None:
            self.log.verbose(f"forwarding: queued request [{trigger}]")
            self._ask(trigger)

    # ---- life cycle -------------------------------------------------------------------
    async def start(self, *, initial: bool = True) -> None:
        if initial and self.config.forward:
            self.log.verbose("forwarding: [startup]")
            self._trigger = "startup"
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()) for _ in range(self.workers)]
        self._tasks.append(loop.create_task(self._scheduler(initial)))
        self._tasks.append(loop.create_task(self._reaper()))

    async def stop(self) -> None:
        """Stop: messages in flight get up to STOP_GRACE seconds to finish (so a restart of the role
        does not send them again), nothing new is started; then whatever is left is released."""
        self._stopping = True
        self._drop_queue()
        deadline = time.monotonic() + STOP_GRACE
        while self._claims and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for claim in list(self._claims):
            with contextlib.suppress(OSError):
                await self._in_thread(claim.release)
        await asyncio.gather(*(c.quit() for c in self.pool.drain()), return_exceptions=True)

    async def run_once(self, stop: asyncio.Event | None = None, *, one_shot: bool = False) -> bool:
        """``--as-client``: forward everything in the spool now.  True unless the run stopped on a
        session or connection error (with back-off: unless anything failed or was deferred).
        ``one_shot`` (the program's whole run): its last line goes to stderr only, as upstream's."""
        self._reporting = False  # no admin watches a one-shot run (the admin's flush says it all)
        ids = await self._in_thread(self.store.ready, ignore_backoff=True)
        if not ids:
            self.log.final("no messages to send")  # as upstream: before anything else, no level
            return True
        if self.config.forward_to and not self.flushing:
            self.log.verbose(f"forwarding to {self.config.forward_to}")
        if not self.flushing:
            self.log.verbose("forwarding: [startup]")
        self.known.update(ids)
        for mid in ids:
            self.queue.put_nowait(mid)
        loop = asyncio.get_running_loop()
        workers = [loop.create_task(self._worker(exit_when_empty=True)) for _ in range(self.workers)]
        waiter = loop.create_task(stop.wait()) if stop is not None else None
        done_all = loop.create_task(asyncio.wait(workers))
        pending = [done_all] + ([waiter] if waiter else [])
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if waiter is not None:
            waiter.cancel()
        if not done_all.done():
            self._stopping = True
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for claim in list(self._claims):
                await self._in_thread(claim.release)
        if self._scan_stopped and self.run_error is None:  # as E-MailRelay 2.6b: no end-of-pass line
            await asyncio.gather(*(c.quit() for c in self.pool.drain()), return_exceptions=True)
            return (self.failures if self.backoff else self.stranded) == 0 and done_all.done()
        if self.run_error is not None:  # upstream: no QUIT, the error is why the program ends
            for conn in self.pool.drain():
                conn.close()
            if one_shot:
                self.log.final(self.run_error, logmod.ERROR)
            elif not self.flushing:
                self.log.error(self.run_error)
            return False
        if self._passed or not self._unlockable:
            self._no_more_messages()
        else:
            self._nothing_claimed()
        await asyncio.gather(*(c.quit() for c in self.pool.drain()), return_exceptions=True)
        if self.backoff:
            return self.failures == 0 and done_all.done()
        return self.stranded == 0 and done_all.done()

    # ---- scheduling -------------------------------------------------------------------
    def _period(self) -> float | None:
        poll = self.config.poll
        period = None if poll is None else (CONTINUOUS_RESCAN if poll == 0 else poll)
        if self.safety_rescan is not None:
            period = self.safety_rescan if period is None else min(period, self.safety_rescan)
        return period

    async def _scheduler(self, initial: bool) -> None:
        """Rescans: at start, every period, and when rung without an id; at most one pass per
        MIN_RESCAN_GAP, each one directory scan (rings with an id never scan: they queue the id)."""
        if initial or self.config.poll is not None:
            await self._rescan(unnamed="startup" if initial else "poll")
        while True:
            held = self._held_until - time.monotonic()
            if held > 0:  # a client filter's 102 (rate limiting): wait for the next polling cycle
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), held)  # only admin forward/flush ends it early
                self._wake.clear()
                await self._rescan()
                continue
            period = self._period()
            timeout = period
            if period is not None and self._next_due is not None:
                timeout = max(MIN_RESCAN_GAP, min(period, self._next_due - time.time()))
            polled = False  # the --poll timer's (not a safety rescan, not --poll 0's)
            try:
                if timeout is None:
                    await self._wake.wait()
                else:
                    await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                polled = bool(self.config.poll) and timeout == period == self.config.poll
            self._wake.clear()
            gap = MIN_RESCAN_GAP - (time.monotonic() - self._last_rescan)
            if gap > 0:
                await asyncio.sleep(gap)
            await self._rescan(unnamed="poll" if polled else None)

    async def _recover(self) -> None:
        """Return claims of dead forwarders (any worker may do it: recovery takes the claim's lock)."""
        now = time.monotonic()
        if now - self._last_recovery < RECOVERY_PERIOD:
            return
        self._last_recovery = now
        try:
            report = await self._in_thread(self.store.recover, new_age=leftover_age(self.config))
        except OSError as exc:
            self.log.warning(f"spool recovery failed: {exc}")
            return
        for mid in report.released:
            self.log.info(f"recovered claim on [{mid}]: returned to the queue")

    async def _rescan(self, *, unnamed: str | None = None) -> None:
        """Queue what is due.  ``unnamed``: what the rescan is when no trigger names it, for the run
        it starts: ``poll`` (the ``--poll`` timer's, which says when it finds nothing) or ``startup``."""
        self._last_rescan = time.monotonic()
        await self._recover()
        ignore = self._ignore_backoff
        self._ignore_backoff = False
        self._forcing = ignore
        self._left.clear()  # a new trigger: what a failed run left is tried again
        self._dead_hops.clear()
        self.run_error = None
        due, self._next_due = await self._in_thread(
            self.store.ready_and_next_due, ignore_backoff=ignore, skip=frozenset(self.known)
        )
        due = [mid for mid in due if mid not in self.known]  # rung with their ids during the scan
        trigger, self._trigger = self._trigger, None
        if trigger is not None and not due and not self._claims:
            self.log.verbose("forwarding: no messages to send")
        if due:
            self._queued_for_run(trigger or unnamed)
        elif trigger is not None or unnamed == "poll":
            self._nothing_to_run()
        for mid in due:
            self.known.add(mid)
            self.queue.put_nowait(mid)
        undecided, self._undecided = self._undecided, []
        self._decide(undecided)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CONNECTION_LINGER / 2)
            for conn in self.pool.expired(IDLE_CONNECTION_LINGER):
                await conn.quit()

    # ---- workers ----------------------------------------------------------------------
    async def _worker(self, exit_when_empty: bool = False) -> None:
        while not self._stopping:
            if exit_when_empty:
                try:
                    mid = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
            else:
                mid = await self.queue.get()
            if self._stopping:
                self.known.discard(mid)
                return
            try:
                outcome = await self.forward_one(mid, due_only=not (exit_when_empty or self._forcing))
                if outcome.status != "skipped":
                    self._passed += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad message must not stop forwarding
                self.log.error(f"forwarding [{mid}]: unexpected error: {exc!r}")
            finally:
                self.known.discard(mid)
            if self.stop_scanning:  # a client filter's 102 ends the pass without its end-of-pass line
                self._passed = 0
                self._scan_stopped = True
            if self._passed and self.queue.empty() and not self._claims and not exit_when_empty:
                self._passed = 0  # the end of a pass, as upstream logs it (not of one an error ended)
                self._unlockable = 0
                if self.run_error is None:
                    self._no_more_messages()
            elif self._unlockable and self.queue.empty() and not self._claims and not exit_when_empty:
                self._nothing_claimed()
            if self.stop_scanning:  # client filter exit 102: no more messages in this polling cycle
                self.stop_scanning = False
                self._drop_queue()
                if self.config.poll:
                    self._held_until = time.monotonic() + self.config.poll
            if self.queue.empty() and not self._claims and not exit_when_empty:
                self._run_ends()
                self._run_done()

    def _summary(self, claim: Claim, outcome: Outcome, started: float, size: int | None) -> None:
        """``--log-format json``: one summary line per message forwarded, failed or deferred."""
        try:
            env = claim.envelope()
            sender, rcpts, hop = env.from_address, env.recipient_count, self._hop_of(env)
        except (OSError, EnvelopeError):
            sender, rcpts, hop = "", 0, self.config.forward_to or ""
        self.log.event(
            {
                "event": "message",
                "id": str(claim.id),
                "from": sender,
                "rcpts": rcpts,
                "size": size,
                "hop": hop,
                "result": outcome.status,
                "code": outcome.code,
                "reason": outcome.text,
                "ms": int((time.monotonic() - started) * 1000),
            }
        )

    def _drop_queue(self) -> list[MessageId]:
        dropped = []
        while not self.queue.empty():
            mid = self.queue.get_nowait()
            self.known.discard(mid)
            dropped.append(mid)
        return dropped

    def _nothing_claimed(self) -> None:
        """The end of a pass whose every claim the spool refused: upstream's client gives up with
        ``smtp client error: done`` (a warning) instead of ``no more messages to send``."""
        self._unlockable = 0
        self.log.warning("smtp client error: done")

    def _no_more_messages(self) -> None:
        """The end of a pass, with the last message's id as E-MailRelay 2.6b (--log-format=msgid)."""
        self.log.emit(logmod.VERBOSE, "forwarding: no more messages to send", None, msgid=self._last_mid)

    async def forward_one(self, mid: MessageId, *, due_only: bool = False) -> Outcome:
        if due_only and not self.store.is_due(mid):
            return Outcome("skipped")  # rung for a message still in back-off (eg. a release seen by notify)
        if self._dead_hops and await self._to_dead_hop(mid):
            self._left.add(mid)  # that next hop's run ended on an error: left untouched, for the next trigger
            return Outcome("skipped")
        try:
            if self.client_filter is not None:  # it may change the content: read after it ran
                claim = await self._in_thread(self.store.claim, mid, undo=_release_claim)
            else:
                claim = await self._claim_and_load(mid)
        except OSError as exc:  # the spool refused the claim (unwritable): left as it is, every pass
            self._unlockable += 1
            self.log.warning(exc.strerror or str(exc))  # upstream's 'cannot lock file: "<envelope>"'
            return Outcome("skipped")
        if claim is None:
            return Outcome("skipped")
        return await self._forward_held(claim)

    async def _claim_and_load(self, message: MessageId | NewMessage) -> Claim | None:
        """Claim a message (``--immediate``'s uncommitted one too) and read its content in the same
        trip to a spool thread (one wake-up of a thread a message, not two); its holder sends what
        was read, or fails it if it could not be read."""
        held = await self._in_thread(self._claim_and_read, message, undo=_release_loaded)
        if held is None:
            return None
        self._loaded[held[0].id] = held[1]
        return held[0]

    def _claim_and_read(self, message: MessageId | NewMessage) -> tuple[Claim, Loaded | OSError] | None:
        """In a spool thread: the claim (None when another worker has it; an uncommitted message's
        claim raises when it fails) and its content read, or the error reading it."""
        if isinstance(message, NewMessage):
            claim: Claim | None = self.store.claim_new(message)
        else:
            claim = self.store.claim(message)
        if claim is None:
            return None
        try:
            return claim, self._load_content(claim)
        except OSError as exc:
            return claim, exc
        except BaseException:
            _release_claim(claim)  # nobody would hold it
            raise

    async def _forward_held(self, claim: Claim) -> Outcome:
        """Forward a claimed message; a claim still held at the end (cancelled) is released."""
        self._claims.add(claim)
        self._run_starts(claim.id)
        self._last_mid = str(claim.id)
        self._started[claim.id] = started = time.monotonic()
        msgid = logmod.set_msgid(str(claim.id))  # --log-format=msgid: this task's lines are about it
        try:
            size = await self._in_thread(_size, claim.content_path) if self.log.config.json else None
            outcome = await self._forward_claimed(claim)
            if self.log.config.json:
                self._summary(claim, outcome, started, size)
            return outcome
        finally:
            logmod.reset_msgid(msgid)
            self._claims.discard(claim)
            self._started.pop(claim.id, None)
            self._loaded.pop(claim.id, None)
            if claim.active:  # (a cancelled worker too: _in_thread waits for the thread)
                await self._in_thread(claim.release)

    async def _to_dead_hop(self, mid: MessageId) -> bool:
        """Whether ``mid`` goes to a next hop whose run ended on an error (read without claiming it:
        no renames, so no doorbells, for what is only left where it is)."""
        try:
            env = await self._in_thread(self.store.read_envelope, mid)
        except (OSError, EnvelopeError):
            return False  # the claim will tell
        return (env.forward_to_address or self.config.forward_to) in self._dead_hops

    async def forward_immediately(
        self, message: MessageId | NewMessage, session: object = None
    ) -> tuple[int, str]:
        """``--immediate``: forward a just-stored message over the client session's own onward
        connection; the reply for the client, as E-MailRelay 2.6b gives it: ``250 message
        processed``; the next hop's rejection (its lines joined by a space); ``452 <reason>`` for
        other failures (a client filter's, rejected recipients); ``452 forwarding failed`` when the
        session with the next hop failed. The message meets the fate any forwarding gives it
        (``.bad``, or left for a retry).  A committed message (its id) is claimed as any other; an
        uncommitted one (forward first, see :attr:`forwards_first`) through an
        :class:`UncommittedClaim`, which commits it, durably, only if it is not forwarded."""
        mid = message if isinstance(message, MessageId) else message.id
        self._immediate[mid] = session
        self._dead_hops.clear()  # every message is a run of its own: upstream connects again for each
        try:
            if isinstance(message, MessageId):
                outcome = await self.forward_one(mid)
            else:
                try:
                    claim = await self._claim_and_load(message)  # (forwards_first: no client filter)
                    assert claim is not None  # an uncommitted message's claim raises if it fails
                    outcome = await self._forward_held(claim)
                except OSError as exc:  # it could not be claimed, or kept (made durable): no 250
                    self.log.error(f"cannot forward [{mid}]: {exc}")
                    return 452, "forwarding failed"
        finally:
            self._immediate.pop(mid, None)
        if outcome.status == "sent" or (
            outcome.status == "skipped" and not self.store.envelope_path(mid, State.READY).exists()
        ):  # (skipped: a client filter took care of it; one left in the spool was not forwarded)
            return 250, "message processed"
        if outcome.status == "skipped" or mid in self._session_trouble:
            self._session_trouble.discard(mid)
            return 452, "forwarding failed"
        reply = outcome.reply
        if reply is not None and 400 <= reply.code <= 599:
            return reply.code, " ".join(line for line in reply.lines if line) or str(reply.code)
        return 452, outcome.text or "rejected"

    @property
    def forwards_first(self) -> bool:
        """``--immediate`` may forward a message before committing it: without a client filter
        (given the ``.busy`` envelope, as upstream's) and without a server filter (one that keeps
        the message or a copy earns a 250 that does not follow the next hop's: it needs the fsyncs)."""
        return self.client_filter is None and not self.config.filters

    def end_immediate_session(self, session: object) -> None:
        """``--immediate``: the client has gone, so its onward connection goes too (no QUIT, as
        upstream)."""
        pool = self._session_pools.pop(session, None)
        if pool is not None:
            for conn in pool.drain():
                conn.close()

    async def _forward_claimed(self, claim: Claim) -> Outcome:
        mid = claim.id
        try:
            env = claim.envelope()
        except (OSError, EnvelopeError) as exc:
            self.log.verbose(f"forwarding [{mid}]")
            return await self._fail(claim, f"invalid envelope: {exc}", None)
        if (env.forward_to_address or self.config.forward_to) in self._dead_hops:
            # that next hop's run ended on an error: left as it is, for the next trigger
            await self._in_thread(claim.release)
            self._left.add(mid)
            return Outcome("skipped")
        if not env.to_remote:  # as E-MailRelay 2.6b: before its "forwarding [id]", a filter or a connection
            return await self._no_remote_recipients(claim)
        routed = "".join(  # upstream's words and order
            f" {name}=[{value}]"
            for name, value in (
                ("selector", env.client_account_selector),
                ("forward-to", env.forward_to),
                ("forward-to-address", env.forward_to_address),
            )
            if value
        )
        self.log.verbose(f"forwarding [{mid}]{routed}")
        self._message_said(mid)
        pool = self.pool
        if mid in self._immediate:  # --immediate: the client session's own connection
            pool = self._session_pools.setdefault(self._immediate[mid], _Pool())
        held: tuple[SmtpConnection, bool] | None = None  # connected before the client filter ran
        if self.client_filter is not None:
            early_hop = env.forward_to_address or self.config.forward_to
            route = env.forward_to_address
            if early_hop and not env.forward_to:
                # E-MailRelay 2.6b connects (greeting, EHLO) before it runs the client filter; not
                # before a routing filter (a ForwardTo), which picks the next hop
                try:
                    held = await self._connection(pool, mid, route, env.client_account_selector)
                except ConnectionTrouble as exc:
                    return await self._connection_trouble(claim, exc, early_hop)
            early = await self._run_client_filter(claim, routing=bool(env.forward_to))
            if early is None:
                try:
                    env = await self._in_thread(claim.envelope, reread=True)  # the filter may have edited it
                    if not env.forward_to:  # only a routing filter routes: upstream ignores this one's
                        env = replace(env, forward_to_address=route)
                except OSError as exc:
                    early = await self._fail(claim, f"invalid envelope after client filter: {exc}", None)
                except EnvelopeError as exc:  # as E-MailRelay 2.6b: its reader's words, 550, no warning
                    early = await self._fail_unreadable(claim, exc)
            if early is not None:
                if held is not None:
                    pool.give(held[0])
                return early
        hop = env.forward_to_address or self.config.forward_to
        selector = env.client_account_selector
        if held is not None and held[0].selector != selector:
            pool.give(held[0])  # the filter routed the message elsewhere
            held = None
        ready = await self._ready_to_send(claim, env, hop)
        if isinstance(ready, Outcome):
            if held is not None:
                pool.give(held[0])
            return ready
        content, info_size = ready
        while True:
            conn: SmtpConnection | None = None
            try:
                if held is not None:
                    conn, reused = held
                else:
                    conn, reused = await self._connection(pool, mid, env.forward_to_address, selector)
                held = None
                conn.log.msgid = str(mid)  # its callbacks' contexts may be an earlier message's
                replies = conn.replies
                if reused and self._reports(mid):
                    self._client_event(f"sending: {mid}")
                result = await self._transaction(conn, claim, env, content, info_size)
            except ConnectionTrouble as exc:
                if conn is not None:
                    conn.abort()
                    pool.forget(conn)
                    if reused and conn.replies == replies:
                        continue  # an idle connection the next hop had closed: once more, afresh
                return await self._connection_trouble(claim, exc, hop)
            break
        pool.give(conn)  # its lines keep the id until the next message's, as E-MailRelay 2.6b's
        if self._reports(mid):
            self._client_event(f"sent: {mid}" if result.status == "sent" else f"sent: {mid}: {result.text}")
        return result

    async def _connection(
        self, pool: _Pool, mid: MessageId, route: str, selector: str
    ) -> tuple[SmtpConnection, bool]:
        """An idle connection from ``pool`` for a message with the ForwardToAddress ``route`` (""
        for ``--forward-to``) and ``selector`` (True: reused), or a new one (False). As E-MailRelay
        2.6b, a connection opened for another ForwardToAddress is not used even when it goes to
        the same next hop: the idle ones are closed with QUIT first."""
        key = (route, selector)
        hop = route or self.config.forward_to or ""
        conn = pool.take(key)
        if conn is not None:
            conn.log.info(f"smtp connection to {conn.peer}")  # upstream says so for each message
            return conn, True
        stale, keys = pool.others(key)
        if stale:
            await asyncio.gather(*(c.quit() for c in stale), return_exceptions=True)
            why = [f"[{route}]"] if any(k[0] != route for k in keys) else []
            why += [f"account selector [{selector}]"] if any(k[1] != selector for k in keys) else []
            self.log.verbose(f"forwarding [{mid}]: new connection for {' and '.join(why)}")
        conn = SmtpConnection(
            hop,
            self.client_config,
            response_timeout=self.config.response_timeout,
            trace=self.log.verbose_on,
            selector=selector,
            prompt_timeout=self.config.prompt_timeout,
        )
        conn.on_network = self._network
        self._opening.add(conn)
        try:
            if self._reports(mid):
                conn.on_network = partial(self._on_connection, mid)
                address = await self._resolving(hop)
                if address is not None:
                    self._client_event(f"connecting: {address}")
            await conn.open(self.config.connection_timeout, self.config.client_interface, self.security)
        except ConnectionTrouble:
            conn.abort()
            raise
        finally:
            self._opening.discard(conn)
        pool.keys[conn] = key
        return conn, False

    async def _resolving(self, hop: str) -> str | None:
        """The admin's notify, before a connection: a next hop given by name is resolved first, as
        E-MailRelay 2.6b says (``resolving: <name>/<port>/<ip|ipv4|ipv6>``, the family of
        ``--client-interface``); the address to say it connects to (an address, a unix socket or a
        SOCKS proxy's target: as written), None when the name does not resolve (the connection then
        fails with its dns error, and upstream says no ``connecting:``). Unlike the start-up
        warning's look-up (:func:`first_host` for both), a proxy's host is not resolved here."""
        first = first_host(hop)
        if first is None or first.proxy or _is_address(first.host):
            return hop
        host, port = first.host, first.port
        family, name = socket.AF_UNSPEC, "ip"
        interface = self.config.client_interface
        if interface and _is_address(interface):
            six = ipaddress.ip_address(interface.partition("%")[0]).version == 6
            family, name = (socket.AF_INET6, "ipv6") if six else (socket.AF_INET, "ipv4")
        self._client_event(f"resolving: {host}/{port}/{name}")
        lookup = asyncio.get_running_loop().getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.wait_for(lookup, self.config.connection_timeout)
        except (OSError, TimeoutError):
            return None
        if not infos:
            return None
        address = infos[0][4]
        return format_address(str(address[0]), int(address[1]))

    async def _connection_trouble(self, claim: Claim, exc: ConnectionTrouble, hop: str) -> Outcome:
        self.session_error = self.session_error or exc.reason
        if claim.id in self._immediate:
            self._session_trouble.add(claim.id)
        return await self._trouble(claim, exc, hop)

    async def _no_remote_recipients(self, claim: Claim) -> Outcome:
        """A message for local recipients only: failed, in upstream's words."""
        self.log.warning(f"forwarding [{claim.id}]: failing message with no remote recipients")
        outcome = await self._fail(claim, "no remote recipients", None, warn=False)
        self._message_said(claim.id)
        return outcome

    async def _ready_to_send(
        self, claim: Claim, env: Envelope, hop: str
    ) -> Outcome | tuple[bytes | None, int]:
        """The content (in memory when small) and its size, or the outcome of a message that
        cannot be sent: no remote recipients, no next hop, an unreadable or unsendable content."""
        if not env.to_remote:  # (a client filter took them out)
            return await self._no_remote_recipients(claim)
        if not hop:
            return await self._fail(claim, "no remote server configured: use --forward-to", None)
        loaded = self._loaded.pop(claim.id, None)
        try:
            if isinstance(loaded, OSError):
                raise loaded
            content, info_size, scan_problem = loaded or await self._in_thread(self._load_content, claim)
        except OSError as exc:
            return await self._fail(claim, f"cannot read content file: {exc.strerror or exc}", None)
        if scan_problem:
            return await self._fail(claim, scan_problem, None)
        return content, info_size

    async def _run_client_filter(self, claim: Claim, routing: bool = False) -> Outcome | None:
        """``--client-filter``: None to go on forwarding, else what became of the message.

        With a ``ForwardTo`` in the envelope it runs as upstream's "routing filter" (its log lines
        say ``routing-filter``); a rejection fails the message with the filter's reason and the
        code 550 (a routing filter's with ``routing filter failed`` and no code), as E-MailRelay
        2.6b does."""
        assert self.client_filter is not None
        result = await self.client_filter.filter(
            claim.id, str(claim.content_path), str(claim.envelope_path), routing=routing
        )
        try:
            await self._in_thread(claim.relock_if_replaced)
        except OSError:
            return Outcome("skipped")  # someone else holds the replaced file now
        if result.rescan:
            self._wake.set()
        if result.outcome is FilterOutcome.STOP_SCAN or result.stop:
            self.stop_scanning = True
        if result.ok:
            return None
        if result.outcome is FilterOutcome.ABANDON:
            # the filter took care of the message (and may have deleted it); one it left is only
            # ignored this time ("100 ... ignore the current message"), so it is not left .busy
            await self._in_thread(_release_if_there, claim)
            return Outcome("skipped")
        if result.outcome is FilterOutcome.REJECT:
            if routing:  # upstream's words, without a code (and no "forwarding [X] failed")
                return await self._fail(claim, "routing filter failed", None, warn=False)
            # (and no "forwarding [X] failed"); neither words nor a reason: upstream says "error"
            reason = result.detail or result.reason or "error"
            return await self._fail(claim, reason, 550, warn=False)  # upstream's code is always 550
        return await self._retry(claim, result.reason or "client filter error", result.code)

    def _load_content(self, claim: Claim) -> Loaded:
        """Read (or scan) the content: (bytes when small, canonical size, problem text or None)."""
        scanner = ContentScanner()
        with claim.open_content() as f:
            first = f.read(IN_MEMORY_LIMIT + 1)
            scanner.feed(first)
            data: bytes | None = first if len(first) <= IN_MEMORY_LIMIT else None
            if data is None:
                while chunk := f.read(READ_CHUNK):
                    scanner.feed(chunk)
        info = scanner.finish()
        if info.long_line:
            return data, info.size_after_canonicalisation, "line too long for SMTP: over 998 octets"
        return data, info.size_after_canonicalisation, None

    async def _transaction(
        self, conn: SmtpConnection, claim: Claim, env: Envelope, content: bytes | None, size: int
    ) -> Outcome:
        """Send the message to all its remote recipients, in as many transactions on this
        connection as the next hop needs: recipients it defers with a 4xx (``452`` too many
        recipients) while accepting others go in the next transaction, after the envelope
        was rewritten to list only the recipients still to do."""
        todo = list(env.to_remote)
        refused: list[tuple[str, sc.Reply]] = []  # 5xx under --forward-to-some: failed at the end
        batch_limit: int | None = None  # learned from a 452: recipients per transaction
        while True:
            batch = todo if batch_limit is None else todo[:batch_limit]
            event = await self._one_transaction(conn, claim, env, batch, content, size)
            if isinstance(event, sc.MessageFailed):
                return await self._message_failed(claim, event)
            refused += event.rejected
            total = len(todo)
            todo = _without(todo, event.accepted + [r for r, _ in event.rejected])
            if not todo:
                return await self._sent(claim, env, event, refused)
            if any(reply.code == 452 for _, reply in event.deferred):
                batch_limit = min(batch_limit or len(event.accepted), len(event.accepted))
            why = (
                f"deferred by the server: {event.deferred[0][1]}"
                if event.deferred
                else f"deferred: at most {batch_limit} per transaction"
            )
            self.log.info(
                f"forwarded [{claim.id}] to {len(event.accepted)} of {total} recipients; {len(todo)} {why}"
            )
            env = replace(env, to_remote=tuple(todo) + tuple(r for r, _ in refused))
            try:
                await self._in_thread(claim.rewrite, env, sync_directory=True)
            except OSError as exc:
                # The delivered recipients are still listed: a retry would send to them again.
                self.log.error(f"cannot rewrite envelope [{claim.id}]: {exc}")
                return await self._retry(claim, f"cannot record a partial delivery: {exc}", None)

    async def _one_transaction(
        self,
        conn: SmtpConnection,
        claim: Claim,
        env: Envelope,
        recipients: list[str],
        content: bytes | None,
        size: int,
    ) -> sc.MessageSent | sc.MessageFailed:
        caps = conn.client.capabilities
        if (
            env.content_type == "8bit"
            and not caps.eightbitmime
            and not self.client_config.eightbit_strict
            and not (
                env.utf8_mailbox_names and not caps.smtputf8
            )  # (that one fails: no warning, as upstream)
        ):
            if not conn.eightbit_warned:  # upstream's, once per connection (strict: the message fails)
                self.log.warning(
                    "sending an eight-bit message to a server that has not advertised the 8BITMIME extension"
                )
            conn.eightbit_warned = True
        conn.send_envelope(  # no SIZE=, as E-MailRelay 2.6b (which never sends it, SIZE offered or not)
            env.from_address,
            recipients,
            body=_CONTENT_TO_BODY.get(env.content_type),
            smtputf8=env.utf8_mailbox_names,
            auth=self._auth_param(env, conn),
        )
        while True:
            event = await conn.next_event()
            if isinstance(event, sc.RecipientsResult):
                continue
            if isinstance(event, sc.ReadyForContent):
                await self._send_content(conn, claim, content)
                continue
            if isinstance(event, sc.MessageFailed) and event.stage == "data" and not self.backoff:
                conn.close()  # upstream: a refused DATA is an unexpected response, the session ends
                raise conn.trouble(sc.SessionFailed(event.reply, "data", event.reason))
            if isinstance(event, sc.MessageSent | sc.MessageFailed):
                return event
            if isinstance(event, sc.SessionFailed):
                raise conn.trouble(event)

    def _auth_param(self, env: Envelope, conn: SmtpConnection) -> str | None:
        """MAIL FROM AUTH=: the envelope's MailFromAuthOut (xtext or "<>") when a filter set one,
        else the name we authenticated as (reference guide, "Authentication").  Nothing when the
        connection did not authenticate, as E-MailRelay 2.6b (no --client-auth, or no account)."""
        if not conn.authenticated_as:
            return None
        value = env.mail_from_auth_out
        if not value:
            return xtext_encode(conn.authenticated_as)
        if value == "<>":
            return value
        try:
            xtext_decode(value)
        except ValueError:
            self.log.warning("ignoring an envelope's MailFromAuthOut: not xtext")
            return None
        return value

    async def _send_content(self, conn: SmtpConnection, claim: Claim, content: bytes | None) -> None:
        if content:
            await conn.send_content(content, last=True)  # content and its end in one write
            return
        if content is None:  # over IN_MEMORY_LIMIT: streamed, each read in the executor
            with await self._in_thread(claim.open_content, undo=_close_file) as f:
                while chunk := await self._in_thread(f.read, READ_CHUNK):
                    await conn.send_content(chunk)
        conn.end_content()

    # ---- outcomes ----------------------------------------------------------------------
    async def _sent(
        self, claim: Claim, env: Envelope, event: sc.MessageSent, refused: list[tuple[str, sc.Reply]]
    ) -> Outcome:
        if refused:  # --forward-to-some: keep the refused recipients as a failed message
            remaining = tuple(r for r, _ in refused)
            self.log.warning("smtp client protocol: one or more recipients rejected")
            await self._fail(  # upstream: no code
                claim,
                "one or more recipients rejected",
                None,
                warn=False,
                rewrite=replace(env, to_remote=remaining, to_local=()),
            )
            return Outcome("sent", 250, event.reply.message)
        self.log.verbose(f"deleting envelope [{claim.name_in_log}]")
        self.log.verbose(f"deleting content [{claim.content_path.name}]")
        size = await self._in_thread(_remove_claim, claim)  # the size for /metrics' forwarded bytes
        self.sent += 1
        self._emit(
            schema.FORWARD_DONE,
            id=str(claim.id),
            hop=self._hop_of(env),
            ms=self._elapsed_ms(claim),
            size=size,
        )
        return Outcome("sent", event.reply.code, event.reply.message)

    def _hop_of(self, env: Envelope) -> str:
        return env.forward_to_address or self.config.forward_to or ""

    def _elapsed_ms(self, claim: Claim) -> int:
        return int((time.monotonic() - self._started.pop(claim.id, time.monotonic())) * 1000)

    async def _message_failed(self, claim: Claim, event: sc.MessageFailed) -> Outcome:
        """The next hop refused the message: the reply's lines are the reason (the envelope writes a
        line break as ``\\n``); refused recipients are upstream's ``one or more recipients
        rejected`` with the code of the RSET that followed.  Final unless back-off is on and the
        refusal was a 4xx."""
        reply = event.reply
        if reply is None:  # a policy failure before anything was sent: upstream's words and order
            self.log.warning(f"smtp client protocol: failed: {event.reason}")
            return await self._fail(claim, event.reason, None, warn=False)
        if event.stage == "rcpt":
            reason, code = event.reason, (event.rset.code if event.rset is not None else None)
            # --forward-to-all: nothing was sent, so every recipient stays (ours: upstream keeps only
            # the rejected ones, and the others would never get the message from that .bad)
            some = self.config.forward_to_some
            rejected = tuple(r for r, _ in event.rejected) if some else None
        else:
            reason, code, rejected = "\n".join(reply.lines) or "error", reply.code, None  # (upstream's)
        if self.backoff and reply.is_transient():
            return replace(await self._retry(claim, "\n".join(reply.lines), reply.code), reply=reply)
        rewrite = None
        if rejected is not None:
            with contextlib.suppress(EnvelopeError):  # only the rejected ones, as upstream
                rewrite = replace(claim.envelope(), to_remote=rejected, to_local=())
        return replace(await self._fail(claim, reason, code, warn=False, rewrite=rewrite), reply=reply)

    async def _trouble(self, claim: Claim, exc: ConnectionTrouble, hop: str) -> Outcome:
        """The session or the connection failed.  Without back-off, as upstream: a connection
        failure leaves the message as it is, any other failure fails it (no code), and either
        ends the run (``smtp client error: ...``) for that next hop: its other messages stay as
        they are, for the next trigger (messages routed elsewhere go on); with back-off both are
        retried later."""
        code = exc.reply.code if exc.reply else None
        if self.backoff:
            return await self._retry(claim, exc.reason, code)
        if exc.connect_failure and self._routed(claim, hop):
            # a message's own ForwardToAddress cannot be reached: as E-MailRelay 2.6b (observed), a
            # warning, the message left as it is, and the run goes on (--as-client exits 0)
            self.log.warning(f"smtp connection failed: {exc.reason}")
            return await self._retry(claim, exc.reason, code)
        if exc.connect_failure:
            outcome = await self._retry(claim, exc.reason, code)
        else:
            outcome = await self._fail(claim, exc.reason, None, warn=False)
        self._stop_run(exc.reason, hop, immediate=claim.id in self._immediate)
        return outcome

    def _routed(self, claim: Claim, hop: str) -> bool:
        """Whether the message goes to a next hop of its own (``ForwardToAddress``, or a routing
        filter's), not to ``--forward-to``'s."""
        if hop != (self.config.forward_to or ""):
            return True
        try:
            return bool(claim.envelope().forward_to_address)
        except EnvelopeError:
            return False

    def _stop_run(self, reason: str, hop: str, *, immediate: bool = False) -> None:
        """No back-off: the run to ``hop`` ends here; what is left waits for the next trigger.
        (``--immediate`` logs no ``forwarding:`` error, as E-MailRelay 2.6b: the client's reply
        says it.)"""
        self.log.warning(f"smtp client error: {reason}")
        if not (self.config.as_client or immediate or self.flushing):
            self.log.error(f"forwarding: {reason}")
        self.run_error = reason
        self._dead_hops.add(hop)
        if self._run is not None and not immediate:
            self._run_error = self._run_error or reason

    async def _fail(
        self,
        claim: Claim,
        reason: str,
        code: int | None,
        *,
        warn: bool = True,
        rewrite: Envelope | None = None,
    ) -> Outcome:
        """Fail the message to ``.bad`` with the reason (``rewrite``: first the envelope to keep), in
        one call in the executor: the renamed envelope is there before anything else happens."""
        busy = claim.name_in_log
        try:
            bad, rewrite_error = await self._in_thread(_fail_claim, claim, reason, code, rewrite)
        except OSError as exc:
            self.log.error(f"cannot fail envelope [{busy}]: {exc}: leaving it for a retry")
            with contextlib.suppress(OSError):  # back to .envelope: nothing may stay .busy without an owner
                await self._in_thread(claim.release)
            self.failures += 1
            self.stranded += 1
            return Outcome("retry", code or 451, reason)
        if rewrite_error is not None:
            self.log.error(f"cannot rewrite envelope [{claim.id}]: {rewrite_error}")
        self.log.info(f"failing envelope [{busy}] -> [{bad.name}]")
        self._emit(schema.SPOOL_FAILED, id=str(claim.id), reason=reason)
        if warn:
            self.log.warning(f"forwarding [{claim.id}] failed: {reason}")
        self.failures += 1
        return Outcome("failed", code or 554, reason)

    async def _fail_unreadable(self, claim: Claim, exc: EnvelopeError) -> Outcome:
        """Fail a message whose envelope a client filter left unreadable, as E-MailRelay 2.6b does:
        ``cannot read envelope file: <what its reader expected>``, code 550, no warning line."""
        try:
            data = await self._in_thread(claim.envelope_bytes)
        except OSError:
            data = None
        reason = upstream_read_error(data, exc)
        return await self._fail(claim, reason, 550, warn=False)

    async def _retry(self, claim: Claim, reason: str, code: int | None) -> Outcome:
        if not self.backoff:  # left as it is, for the next trigger (upstream keeps no schedule)
            try:
                await self._in_thread(claim.release, reason=reason, code=code)  # queue list shows why
            except OSError as exc:
                self.log.error(f"cannot release [{claim.id}]: {exc}")
            self._left.add(claim.id)
            self.failures += 1
            return Outcome("retry", code or 451, reason)
        age = time.time() - self.store.created(claim.id)
        if retry.should_give_up(age, self.config.give_up_age):
            return await self._fail(claim, f"gave up after {int(age)}s: {reason}", code)
        delay = retry.next_delay(age, self.config.retry_schedule)
        try:
            await self._in_thread(claim.release, not_before=time.time() + delay, reason=reason, code=code)
        except OSError as exc:
            self.log.error(f"cannot release [{claim.id}]: {exc}")
        self.log.warning(f"forwarding [{claim.id}] deferred for {delay}s: {reason}")
        self._emit(schema.FORWARD_DEFERRED, id=str(claim.id), reason=reason, delay=delay)
        self.failures += 1
        return Outcome("retry", code or 451, reason)


def _release_claim(claim: Claim | None) -> None:
    if claim is not None:
        with contextlib.suppress(OSError):
            claim.release()


def _release_loaded(held: tuple[Claim, object] | None) -> None:
    _release_claim(held[0] if held is not None else None)


def _close_file(f: BinaryIO) -> None:
    f.close()


def _release_if_there(claim: Claim) -> None:
    """A client filter's ``100`` (ignore the message): one it left goes back, one it deleted is only
    unlocked (executor)."""
    if claim.envelope_path.exists():
        claim.release()
    else:
        claim.abandon_claim()


def _fail_claim(
    claim: Claim, reason: str, code: int | None, rewrite: Envelope | None
) -> tuple[Path, OSError | None]:
    """Executor: rewrite the envelope first (``rewrite``), then fail it to ``.bad``; the ``.bad`` path
    and why the rewrite could not be made (the message is failed all the same)."""
    rewrite_error = None
    if rewrite is not None:
        try:
            claim.rewrite(rewrite)
        except OSError as exc:
            rewrite_error = exc
    return claim.fail(reason, code), rewrite_error


def _remove_claim(claim: Claim) -> int | None:
    """Executor: a forwarded message's content size (or None), then its removal."""
    size = _size(claim.content_path)
    claim.remove()
    return size


def _without(todo: list[str], done: list[str]) -> list[str]:
    """``todo`` less one occurrence of each of ``done`` (an envelope may name a recipient twice)."""
    left = Counter(done)
    out: list[str] = []
    for rcpt in todo:
        if left[rcpt] > 0:
            left[rcpt] -= 1
        else:
            out.append(rcpt)
    return out


def _is_address(host: str) -> bool:
    """Whether ``host`` is an IP address (an IPv6 one with a zone too), not a name."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _size(path: object) -> int | None:
    try:
        return os.stat(path).st_size  # type: ignore[arg-type]
    except OSError:
        return None
