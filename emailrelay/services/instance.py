"""One relay instance in one process: SMTP storage plus forwarding, on one event loop.

What it is for: the single-process shape of the relay — what ``emailrelay
--no-daemon``, ``--as-client`` and the tests run, and what each supervised
role runs a part of.  It wires the spool store, the SMTP service and the
forwarder together and turns signals into a graceful stop.

Guarantees: SIGTERM/SIGINT stop listening at once, let sessions in flight
finish for up to 5 s, release every claim, and return exit status 0;
crash leftovers in the spool are recovered before anything is served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import log as logmod
from ..bus import schema
from ..config import Config
from ..errors import EmailRelayError
from ..policy.dnsbl import DnsblChecker
from ..spool.names import MessageId
from ..spool.store import SpoolStore, relay_store
from .listeners import Bound
from .loop import stop_event
from .security import client_security, server_security
from .smtpd import ServerPolicy, ServiceHooks, SmtpService
from .spool_sweep import leftover_age, sweep_forever

if TYPE_CHECKING:
    from .forward import ForwardService

STOP_GRACE = 5.0


def server_policy(config: Config, store: SpoolStore) -> ServerPolicy | None:
    """Verifier and filter chain, or None for the accept-everything fast path."""
    if not config.filters and not config.address_verifier:
        return None
    from ..policy.verifier import build_server_policy

    return build_server_policy(config, store)


def build_smtp_service(
    config: Config,
    store: SpoolStore,
    executor: ThreadPoolExecutor,
    forwarder: ForwardService | None,
    *,
    on_commit: Callable[[MessageId], None] | None = None,
    on_disconnect: Callable[[], None] | None = None,
    on_rescan: Callable[[], None] | None = None,
) -> SmtpService:
    """The SMTP storage service for a configuration, with its forwarding triggers."""
    hooks = ServiceHooks(on_commit=on_commit, on_disconnect=on_disconnect, on_rescan=on_rescan)
    if forwarder is not None and config.immediate:
        hooks.immediate = forwarder.forward_immediately
        hooks.immediate_first = forwarder.forwards_first
        hooks.immediate_end = forwarder.end_immediate_session
    return SmtpService(
        config,
        store,
        security=server_security(config),
        dnsbl=DnsblChecker(config.dnsbl) if config.dnsbl else None,
        policy=server_policy(config, store),
        hooks=hooks,
        executor=executor,
    )


@dataclass
class Instance:
    """Everything in one process (``--single-process``, ``--as-client``, ``--dont-serve``)."""

    config: Config
    smtp_sockets: list[Bound] = field(default_factory=list)  # every listening socket (smtp, pop, admin)
    exit_status: int = 0
    stop: asyncio.Event | None = None  # shared by the instances of one process
    reloaders: list[Callable[[], None]] = field(default_factory=list)

    def _reload(self, smtpd: SmtpService, forwarder: ForwardService | None, pop: Any) -> None:
        """SIGHUP: re-read secrets files and certificates; a bad file keeps the old settings."""
        log = logmod.get()
        try:
            server = server_security(self.config)
            client = client_security(self.config) if forwarder is not None else None
            pop_sec = None
            if pop is not None:
                from .pop3d import pop_security

                pop_sec = pop_security(self.config)
        except EmailRelayError as exc:
            log.error(f"sighup: keeping the old authentication and tls settings: {exc}")
            return
        smtpd.security = server
        if forwarder is not None and client is not None:
            forwarder.security = client
        if pop is not None:
            pop.security = pop_sec
        log.info("sighup: secrets and certificates reloaded")

    async def run(self) -> int:
        log = logmod.get()
        config = self.config
        logmod.set_unit(config.name)  # this task's lines (each instance runs in its own task)
        store = relay_store(config.spool_dir)
        report = store.recover(new_age=leftover_age(config))  # the store logs each crash leftover it removes
        for mid in report.released:
            log.info(f"recovered claim on [{mid}]: returned to the queue")
        executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool")
        forwarder = None
        if config.forward_to or config.as_client:
            from .forward import ForwardService

            forwarder = ForwardService(config, store, executor=executor)
        on_commit = on_disconnect = None
        if forwarder is not None:
            if config.poll is not None and not config.immediate:  # forward at once; poll: the safety net
                on_commit = forwarder.ring
            if config.forward_on_disconnect:  # (--immediate too: what it left in the spool, as upstream)
                on_disconnect = partial(forwarder.request, "client disconnect")  # upstream's log words
        smtpd = build_smtp_service(
            config,
            store,
            executor,
            forwarder,
            on_commit=on_commit,
            on_disconnect=on_disconnect,
            on_rescan=partial(forwarder.request, "rescan") if forwarder is not None else None,
        )
        loop = asyncio.get_running_loop()
        pop = None
        stop = self.stop if self.stop is not None else _stop_on_signals(self.reloaders)
        self.reloaders.append(lambda: self._reload(smtpd, forwarder, pop))

        def publish(topic: str, **body: object) -> None:
            """The bus of a single process: commands go straight to the services."""
            if topic in (schema.CMD_FORWARD, schema.CMD_FLUSH) and forwarder is not None:
                forwarder.forward_all_now()
            elif topic in (schema.CMD_SMTP_DISABLE, schema.CMD_SMTP_ENABLE):
                smtpd.enabled = topic == schema.CMD_SMTP_ENABLE
            elif topic == schema.CMD_DNSBL:
                smtpd.dnsbl_off_until = time.monotonic() + float(str(body.get("off_for", 0)))

        admin_servers = []
        sweeper: asyncio.Task[None] | None = None
        try:
            smtp_socks = [b.sock for b in self.smtp_sockets if b.spec.service == "smtp"]
            if smtp_socks:
                await smtpd.start(smtp_socks)
            pop_socks = [b.sock for b in self.smtp_sockets if b.spec.service == "pop"]
            if pop_socks:
                from .pop3d import build_pop_service

                pop = build_pop_service(config, store, executor=executor)
                await pop.start(pop_socks)
            admin_socks = [b.sock for b in self.smtp_sockets if b.spec.service == "admin"]
            if admin_socks:
                from .admin import AdminContext, AdminSession

                ctx = AdminContext(config, store, publish, [b.display for b in self.smtp_sockets])
                if forwarder is not None:
                    forwarder.on_event = lambda topic, **body: ctx.on_bus_event(topic, body)
                smtpd.hooks.on_network = lambda d, e, local, peer: ctx.on_bus_event(
                    schema.NETWORK, {"dir": d, "event": e, "local": local, "peer": peer}
                )
                admin_servers = [
                    await loop.create_server(lambda: AdminSession(ctx), sock=s) for s in admin_socks
                ]
            if forwarder is not None:
                if config.as_client or config.dont_serve:
                    ok = await forwarder.run_once(stop, one_shot=True)
                    self.exit_status = 0 if ok else 1
                    return self.exit_status
                await forwarder.start(initial=config.forward)
            sweeper = loop.create_task(sweep_forever(store, config))  # crash leftovers, periodically
            await stop.wait()
        finally:
            if sweeper is not None:
                sweeper.cancel()
            for server in admin_servers:
                server.close()
            if pop is not None:
                await pop.stop(STOP_GRACE)
            await smtpd.stop(STOP_GRACE)
            if forwarder is not None:
                await forwarder.stop()
            executor.shutdown(wait=True)
        return self.exit_status


def _stop_on_signals(reloaders: list[Callable[[], None]]) -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; SIGHUP runs the reloaders (secrets, certificates)."""

    def reload() -> None:
        for reloader in list(reloaders):
            reloader()

    return stop_event(reload)


async def run_instances(instances: list[Instance]) -> int:
    """Several configurations in one process; the first non-zero exit status wins."""
    if len(instances) == 1:
        return await instances[0].run()
    reloaders: list[Callable[[], None]] = []
    stop = _stop_on_signals(reloaders)
    for instance in instances:
        instance.stop = stop
        instance.reloaders = reloaders
    statuses = await asyncio.gather(*(i.run() for i in instances))
    return next((s for s in statuses if s), 0)
