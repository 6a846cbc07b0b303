"""The supervised roles: what each circus watcher process runs.

What it is for: ARCHITECTURE.md's process table.  Each function runs one
role until SIGTERM, reusing the same services as the single-process
instance, and talks to the others only through the spool and the bus:

- ``smtp``: the storage service on sockets inherited from circus; publishes
  ``smtp.accepted`` and ``spool.ready``; obeys ``cmd.smtp.disable/enable``;
  with ``--immediate`` it forwards in-process;
- ``forward``: a forwarder; rung by ``spool.ready`` for the ids of its
  share (crc32(id) mod N), by ``cmd.forward``/``cmd.flush`` for everything,
  and by its own ``--poll`` timer and start-up rescan;
- ``notify``: the spool watcher;
- ``bus``: the ZeroMQ forwarder.

Guarantees: a role whose parent (the circus arbiter) dies is killed by the
kernel (see :mod:`emailrelay.cli._orphan_guard`), so a ``kill -9`` of the
arbiter never leaves orphans holding the port; every role stops within the supervisor's
graceful timeout on SIGTERM, releasing its claims.  The SMTP server, the
policy layer and the forwarder (``instance``, ``forward``, ``admin``,
``pop3d``) are imported by the role functions that use them, so the notify
role, an interpreter of its own, does not carry them (issue 20).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import identity, rundir, safe_files
from .. import log as logmod
from ..bus import schema
from ..bus.endpoint import SUBSCRIBE_SETTLE, BusClient
from ..config import Config
from ..spool.names import MessageId
from .connection_slots import ConnectionSlots
from .loop import until_stopped
from .smtp_switch import dnsbl_off_for, remember_dnsbl_off, remember_smtp_disabled, smtp_disabled_by_admin
from .spool_sweep import leftover_age, sweep_forever

SAFETY_RESCAN = 60.0  # a forward role rescans at least this often, whatever --poll says
RESCAN_STAMP = rundir.RESCAN_STAMP  # in the run directory: the durable copy of the rescan doorbell
FORWARD_STAMP = rundir.FORWARD_STAMP  # and of the admin's forward command
CONNECTION_SLOTS = rundir.CONNECTION_SLOTS  # in the run directory: --max-connections' slot files
STAMP_SLACK = 0.05  # file times come from a coarse clock: a stamp may look this much older


def _ask_for_rescan(bus: BusClient, run_dir: str, trigger: str) -> None:
    """A disconnect under --forward-on-disconnect, or a filter's 103: ring the forwarders on the bus,
    and touch a stamp file for a forward role whose subscription is still joining the bus (a bus
    message sent before that is lost, and the safety rescan would only come a minute later).
    ``trigger`` is upstream's name for it in the log (``client disconnect``, ``rescan``)."""
    bus.publish(schema.CMD_FORWARD, backoff=True, trigger=trigger)
    _touch_stamp(run_dir, RESCAN_STAMP)


def _touch_stamp(run_dir: str, name: str) -> None:
    with contextlib.suppress(OSError), identity.as_root():
        dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | safe_files.CLOEXEC)
        try:  # never through a symlink, a FIFO or a hard link --user may have planted
            safe_files.touch(name, dir_fd=dir_fd, mode=0o644, gid=identity.group_for_files())
        finally:
            os.close(dir_fd)


def _asked_at(run_dir: str, name: str) -> float | None:
    """When a rescan (RESCAN_STAMP) or the admin's forward (FORWARD_STAMP) was last asked for: the
    stamp's mtime, on the spool files' clock; or None."""
    try:
        return os.stat(Path(run_dir, name)).st_mtime
    except OSError:
        return None


def drop_privileges(config: Config) -> None:
    identity.drop_to(config.user)


async def run_smtp(config: Config, fds: list[int], run_dir: str) -> int:
    from ..spool.store import relay_store  # (not at the top: the notify role never opens the store)
    from .instance import build_smtp_service

    log = logmod.get()
    bus = BusClient(run_dir)
    sockets = [socket.socket(fileno=fd) for fd in fds]
    for s in sockets:
        s.setblocking(False)
    drop_privileges(config)
    store = relay_store(config.spool_dir)
    if not config.forward_to or config.immediate:  # no forward role to clean crash leftovers (SPEC §7)
        try:
            with identity.as_root():
                report = store.recover(new_age=leftover_age(config))  # logs each crashed store it removes
            for mid in report.released:  # as the forward role logs them
                log.info(f"recovered claim on [{mid}]: returned to the queue")
        except OSError as exc:
            log.warning(f"spool recovery failed: {exc}")
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool")
    forwarder = None
    if config.immediate and config.forward_to:
        from .forward import ForwardService

        forwarder = ForwardService(config, store, executor=executor)

    def committed(mid: MessageId) -> None:
        bus.publish(schema.SMTP_ACCEPTED, id=str(mid), size=store.content_size(mid))  # bytes for /metrics
        bus.publish(schema.SPOOL_READY, id=str(mid))

    def disconnected() -> None:
        if config.forward_on_disconnect:  # --as-proxy: a rescan of the whole spool, as upstream
            _ask_for_rescan(bus, run_dir, "client disconnect")

    smtpd = build_smtp_service(
        config,
        store,
        executor,
        forwarder,
        on_commit=committed,
        on_disconnect=disconnected,
        on_rescan=lambda: _ask_for_rescan(bus, run_dir, "rescan"),
    )
    smtpd.hooks.on_reject = lambda reason: bus.publish(schema.SMTP_REJECTED, reason=reason)
    smtpd.hooks.on_network = lambda d, e, local, peer: bus.publish(
        schema.NETWORK, dir=d, event=e, local=local, peer=peer
    )
    if config.max_connections:
        with identity.as_root():
            smtpd.slots = ConnectionSlots(
                Path(run_dir) / CONNECTION_SLOTS, config.max_connections, identity.group_for_files()
            )
    bus.subscribe([schema.CMD_SMTP_DISABLE, schema.CMD_SMTP_ENABLE, schema.CMD_DNSBL])

    def as_the_admin_left_it() -> None:
        """A restarted smtp role (a crash, an admin or circusctl restart) comes back disabled if the
        admin disabled smtp, and without DNSBL checks for what is left of a ``dnsbl stop``: the
        commands went by on the bus before this process subscribed."""
        if smtp_disabled_by_admin(store) and smtpd.enabled:
            smtpd.enabled = False
            log.info("smtp disabled")
        if (off_for := dnsbl_off_for(store)) > 0:
            smtpd.dnsbl_off_until = max(smtpd.dnsbl_off_until, time.monotonic() + off_for)

    as_the_admin_left_it()
    asyncio.get_running_loop().call_later(SUBSCRIBE_SETTLE, as_the_admin_left_it)  # (a command just sent)

    async def commands() -> None:
        async for topic, body in bus.messages():
            if topic == schema.CMD_DNSBL:  # admin "dnsbl start" / "dnsbl stop [N]"
                smtpd.dnsbl_off_until = time.monotonic() + float(body.get("off_for", 0))
                continue
            smtpd.enabled = topic == schema.CMD_SMTP_ENABLE
            log.info(f"smtp {'enabled' if smtpd.enabled else 'disabled'}")

    await smtpd.start(sockets)
    bus.publish(schema.ROLE_STARTED, role="smtp")
    listener = asyncio.get_running_loop().create_task(commands())
    sweeper = asyncio.get_running_loop().create_task(sweep_forever(store, config))  # crash leftovers
    try:
        await until_stopped()
    finally:
        bus.publish(schema.ROLE_STOPPING, role="smtp")
        listener.cancel()
        sweeper.cancel()
        await smtpd.stop(5.0)
        if forwarder is not None:
            await forwarder.stop()
        executor.shutdown(wait=True)
        bus.close()
    return 0


async def run_forward(config: Config, run_dir: str, index: int, count: int) -> int:
    from ..spool.store import relay_store
    from .forward import ForwardService

    started = time.time()
    bus = BusClient(run_dir)
    drop_privileges(config)
    store = relay_store(config.spool_dir)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spool")
    # with --poll, a new message is forwarded at once (notify rings) and the poll period is the safety
    # net; without it (--forward-on-disconnect) only disconnects ring, plus a slow safety rescan
    rung_by_notify = config.poll is not None and not config.immediate  # (--immediate: no notify role)
    forwarder = ForwardService(config, store, executor=executor, safety_rescan=SAFETY_RESCAN, senders=1)
    forwarder.on_event = bus.publish  # its events (the admin's notify too) go on the bus
    forwarder.reports_idle = index == 0  # one "forward: end: no messages" per trigger, not one per process
    bus.subscribe([schema.SPOOL_READY, schema.CMD_FORWARD, schema.CMD_FLUSH])
    forward_heard = 0.0  # when an admin forward last came over the bus (time.time(); 0: never)
    redone_for: float | None = None  # the stamp of an admin forward settled() did again, not heard

    async def rings() -> None:
        nonlocal forward_heard, redone_for
        async for topic, body in bus.messages():
            if topic == schema.SPOOL_READY:
                # every worker is rung: the claim decides who forwards, so scaling the role
                # up or down at run time never leaves a message waiting for the poll timer
                if rung_by_notify:
                    with contextlib.suppress(ValueError):
                        forwarder.ring(MessageId.parse(str(body.get("id", ""))))
            elif body.get("backoff"):  # a disconnect (--forward-on-disconnect) or a filter's 103
                forwarder.request(str(body.get("trigger") or "rescan"))
            else:
                if topic == schema.CMD_FORWARD:
                    forward_heard = time.time()
                    if redone_for is not None and _asked_at(run_dir, FORWARD_STAMP) == redone_for:
                        redone_for = None  # the forward settled() did again was only late: done
                        continue
                forwarder.forward_all_now()  # admin forward / flush

    await forwarder.start(initial=True)
    bus.publish(schema.ROLE_STARTED, role="forward")
    listener = asyncio.get_running_loop().create_task(rings())

    def asked_since_we_started(stamp: str) -> float | None:
        asked = _asked_at(run_dir, stamp)
        return asked if asked is not None and asked >= started - STAMP_SLACK else None

    def settled() -> None:
        """Doorbells rung before our subscription reached the bus are lost: an admin ``forward``
        since we started that the bus did not bring is done again (its stamp); with --poll one more rescan; otherwise
        (--forward-on-disconnect) what a disconnect or a filter asked for since we started, as of
        when it asked: messages committed later may be in a session still open."""
        nonlocal redone_for
        asked = asked_since_we_started(FORWARD_STAMP)
        # (the admin touches the stamp, then publishes: a forward heard since the stamp's time is
        # the one it records, already done: doing it again would log a second "forwarding: [admin]";
        # one still on its way over the bus is the one done here, and rings() lets it go)
        if asked is not None and forward_heard < asked - STAMP_SLACK:
            redone_for = asked
            forwarder.forward_all_now()
        if rung_by_notify:
            forwarder.ring()
        elif (asked := asked_since_we_started(RESCAN_STAMP)) is not None:
            forwarder.catch_up(written_by=asked)

    asyncio.get_running_loop().call_later(SUBSCRIBE_SETTLE, settled)
    try:
        await until_stopped()
    finally:
        bus.publish(schema.ROLE_STOPPING, role="forward")
        listener.cancel()
        await forwarder.stop()
        executor.shutdown(wait=True)
        bus.close()
    return 0


async def run_admin(
    config: Config, fds: list[int], run_dir: str, listen: list[str], *, supervised: bool
) -> int:
    """The admin role; ``supervised``: started by emailrelay's supervisor, whose channel answers
    ``roles``, ``restart`` and ``workers`` (not by a plain ``circusd circus.ini``)."""
    from ..spool.store import relay_store
    from .admin import PLAIN_CIRCUSD, AdminContext, AdminSession
    from .supervisor_control import SupervisorControl

    bus = BusClient(run_dir)
    sockets = [socket.socket(fileno=fd) for fd in fds]
    drop_privileges(config)
    ctx = AdminContext(
        config=config,
        store=relay_store(config.spool_dir),
        publish=bus.publish,
        listen_addresses=listen,
        control=SupervisorControl(run_dir) if supervised else None,
        no_control=PLAIN_CIRCUSD,
        arbiter_pid=os.getppid(),
        remember_smtp_disabled=remember_smtp_disabled,
        remember_dnsbl_off=remember_dnsbl_off,
        remember_forward=lambda: _touch_stamp(run_dir, FORWARD_STAMP),
    )
    bus.subscribe(schema.EVENT_TOPICS)

    async def events() -> None:
        async for topic, body in bus.messages():
            ctx.on_bus_event(topic, body)

    # a publisher that has just connected drops what it sends until the bus has told it who listens
    # (ZeroMQ's slow joiner, the publishing side): serve once that is over, or a "forward" typed at
    # once would be lost (its listening socket is circus's: a client meanwhile waits for the prompt)
    await asyncio.sleep(SUBSCRIBE_SETTLE)
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: AdminSession(ctx), sock=s) for s in sockets]
    listener = loop.create_task(events())
    try:
        await until_stopped()
    finally:
        listener.cancel()
        for server in servers:
            server.close()
        for session in list(ctx.sessions):
            if session.transport is not None:
                session.transport.abort()
        bus.close()
    return 0


async def run_pop(config: Config, fds: list[int], run_dir: str) -> int:
    from ..spool.store import relay_store
    from .pop3d import build_pop_service

    sockets = [socket.socket(fileno=fd) for fd in fds]
    drop_privileges(config)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spool")
    pop = build_pop_service(config, relay_store(config.spool_dir), executor=executor)
    await pop.start(sockets)
    try:
        await until_stopped()
    finally:
        await pop.stop(5.0)
        executor.shutdown(wait=True)
    return 0
