"""The metrics role: a Prometheus exporter fed by the bus, plus ``/healthz``.

What it is for: ``GET /metrics`` in the Prometheus text format, summed over
every role of the relay, because it subscribes to the bus like the admin
role does::

    emailrelay_messages_accepted_total      smtp.accepted
    emailrelay_messages_rejected_total      smtp.rejected
    emailrelay_messages_forwarded_total     forward.done
    emailrelay_messages_failed_total        spool.failed
    emailrelay_messages_deferred_total      forward.deferred
    emailrelay_accepted_bytes_total         smtp.accepted "size" (content bytes)
    emailrelay_forwarded_bytes_total        forward.done "size" (content bytes)
    emailrelay_forward_duration_seconds     histogram of forward.done "ms"
    emailrelay_role_starts_total{role}      role.started (restarts = starts - processes), see below
    emailrelay_bus_events_total{topic}      every event seen
    emailrelay_queue_messages{state}        scanned from the spool at each scrape
    emailrelay_queue_oldest_age_seconds{state}   age of the oldest message in each state
    emailrelay_spool_free_bytes             free space on the spool's file system
    emailrelay_build_info{version,product_version,python}   1: what is running

plus ``GET /healthz`` (:mod:`emailrelay.services.health`).  Counters start at
zero when the exporter starts: Prometheus's ``rate()``/``increase()`` handle
that, as for any process restart.

``emailrelay_role_starts_total`` also counts the role processes that were
already running when the exporter subscribed (their ``role.started`` went
out before, or before ZeroMQ joined the subscription): with the supervisor's
channel in the run directory, a scrape first asks the supervisor for the pids
of the announcing roles (its census; at most every ``ROLE_CENSUS_PERIOD``
seconds); under a plain circusd, which has no such channel, the census is the
role processes beside this one (:func:`sibling_role_pids`, from /proc).  A
pid is counted once whether the census or the bus reports it first.

What it expects: the bus of a supervised relay in ``run_dir``; read access
to the spool (the queue gauges use :meth:`SpoolStore.scan` only).

Guarantees: the event loop never waits on the spool: scrapes and health
probes run in worker threads; a missing bus only means the counters stay
still (ZeroMQ reconnects by itself).  Run it as a role with
:func:`run_metrics`, or by hand with ``emailrelay metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import PRODUCT_VERSION, __version__, identity, rundir, topology
from .. import log as logmod
from ..bus import schema
from ..bus.endpoint import SUBSCRIBE_SETTLE, BusClient
from ..config import OPTION_DEFAULTS, Config
from ..errors import EmailRelayError
from ..spool.names import State
from ..spool.store import SpoolStore, relay_store
from .health import DEFAULT_MIN_FREE, HealthChecker, HttpServer, RoleTracker, health_handler
from .loop import until_stopped
from .smtp_switch import smtp_disabled_by_admin

ANNOUNCING_ROLES = tuple(r.name for r in topology.ROLES if r.announces)  # they publish role.started
ROLE_CENSUS_PERIOD = 5.0  # ask circus for role pids at most this often (at scrapes)
ROLE_CENSUS_BACKOFF = 15.0  # after circus did not answer
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
DEFAULT_PORT = 9190  # "emailrelay metrics" default; the role takes host/port from its caller


def sibling_role_pids(run_dir: str, config_name: str = "", parent: int | None = None) -> dict[str, list[int]]:
    """The announcing role processes of this relay that are children of ``parent`` (default: this
    process's parent, the circusd or supervisor that runs the roles), by role, from /proc: a role's
    command line is ``... -m emailrelay.cli.role <role> --run-dir <run_dir> [--config <name>] ...``
    (``cli/watchers.py``), readable by any user.  A process that exits meanwhile is skipped."""
    parent = os.getppid() if parent is None else parent
    found: dict[str, list[int]] = {}
    for pid in _children(parent):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode("utf-8", "replace") for w in argv]
        if "emailrelay.cli.role" not in words:
            continue
        at = words.index("emailrelay.cli.role")
        role = words[at + 1] if at + 1 < len(words) else ""
        end = words.index("--", at) if "--" in words[at:] else len(words)  # the relay's options follow
        options = words[at + 2 : end]
        ours = _option(options, "--run-dir") == run_dir and _option(options, "--config") == config_name
        if role in ANNOUNCING_ROLES and ours:
            found.setdefault(role, []).append(pid)
    return found


def _children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (scanning /proc/<pid>/stat; the parent's threads' ``children``
    files need a kernel option)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "(comm)": state, ppid, ...
        if len(fields) > 1 and int(fields[1]) == parent:
            pids.append(int(entry.name))
    return pids


def _option(words: list[str], name: str) -> str:
    """The value of ``name VALUE`` or ``name=VALUE`` in ``words``; "" when absent."""
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word[len(name) + 1 :]
    return ""


class QueueCollector:
    """Queue depth and oldest age per state, scanned from the spool at each scrape."""

    def __init__(self, store: SpoolStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        counts = {s.label: 0 for s in State}
        oldest: dict[str, float] = {}
        for entry in self.store.scan():
            label = entry.state.label
            counts[label] += 1
            age = max(0.0, now - self.store.created(entry.id))
            oldest[label] = max(oldest.get(label, 0.0), age)
        depth = GaugeMetricFamily(
            "emailrelay_queue_messages", "Messages in the spool, by state", labels=["state"]
        )
        age = GaugeMetricFamily(
            "emailrelay_queue_oldest_age_seconds",
            "Age of the oldest message in the spool, by state (0 when there is none)",
            labels=["state"],
        )
        for label, n in counts.items():
            depth.add_metric([label], n)
            age.add_metric([label], oldest.get(label, 0.0))
        yield depth
        yield age
        free = GaugeMetricFamily("emailrelay_spool_free_bytes", "Free space on the spool's file system")
        with contextlib.suppress(OSError):
            free.add_metric([], self.store.free_bytes())
            yield free


class MetricsExporter:
    """Counters fed by bus events, the queue collector and the HTTP server for /metrics and /healthz."""

    def __init__(
        self,
        config: Config,
        run_dir: str,
        *,
        store: SpoolStore | None = None,
        min_free: int = DEFAULT_MIN_FREE,
        smtp_address: tuple[str, int] | str | None = None,
        forwarding: bool | None = None,
        config_name: str = "",
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.config_name = config_name
        self.watcher_prefix = f"{config_name}-" if config_name else ""  # circus watcher names
        self.store = store or relay_store(config.spool_dir)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info(
            "emailrelay_build",
            "The relay's version, the E-MailRelay version it follows, Python's",
            registry=r,
        ).info(
            {"version": __version__, "product_version": PRODUCT_VERSION, "python": platform.python_version()}
        )
        self.accepted = Counter(
            "emailrelay_messages_accepted", "Messages accepted and stored (smtp.accepted)", registry=r
        )
        self.rejected = Counter(
            "emailrelay_messages_rejected", "Messages or commands rejected (smtp.rejected)", registry=r
        )
        self.forwarded = Counter(
            "emailrelay_messages_forwarded", "Messages forwarded (forward.done)", registry=r
        )
        self.failed = Counter(
            "emailrelay_messages_failed", "Messages failed to .bad (spool.failed)", registry=r
        )
        self.deferred = Counter(
            "emailrelay_messages_deferred", "Forwarding attempts deferred (forward.deferred)", registry=r
        )
        self.accepted_bytes = Counter(
            "emailrelay_accepted_bytes", "Content bytes accepted (smtp.accepted size)", registry=r
        )
        self.forwarded_bytes = Counter(
            "emailrelay_forwarded_bytes", "Content bytes forwarded (forward.done size)", registry=r
        )
        self.latency = Histogram(
            "emailrelay_forward_duration_seconds",
            "Time to forward one message (forward.done ms)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.role_starts = Counter(
            "emailrelay_role_starts", "Role processes started (role.started)", ["role"], registry=r
        )
        self.events = Counter("emailrelay_bus_events", "Bus events seen, by topic", ["topic"], registry=r)
        r.register(QueueCollector(self.store))  # type: ignore[arg-type]
        self.tracker = RoleTracker()
        self.health = HealthChecker(
            config,
            self.store,
            run_dir,
            self.tracker,
            min_free=min_free,
            smtp_address=smtp_address,
            forwarding=forwarding,
        )
        self.http = HttpServer({"/metrics": self._metrics, "/healthz": self._healthz, "/": self._index})
        self.bus: BusClient | None = None
        self._listener: asyncio.Task[None] | None = None
        self.port = 0
        # role.started, counted once per (role, pid) whether heard on the bus or found by a census
        self.role_census: Callable[[], Awaitable[dict[str, list[int]] | None]] = self._circus_role_pids
        self._counted: set[tuple[str, int]] = set()  # role processes counted
        self._from_census: set[tuple[str, int]] = set()  # counted from a census, not yet heard
        self._next_census = 0.0

    # ---- events ----------------------------------------------------------------------
    def on_event(self, topic: str, body: dict[str, Any]) -> None:
        self.events.labels(topic=topic).inc()
        self.tracker.on_event(topic, body)
        if topic == schema.SMTP_ACCEPTED:
            self.accepted.inc()
            _add_bytes(self.accepted_bytes, body)
        elif topic == schema.SMTP_REJECTED:
            self.rejected.inc()
        elif topic == schema.FORWARD_DONE:
            self.forwarded.inc()
            _add_bytes(self.forwarded_bytes, body)
            ms = body.get("ms")
            if isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0:
                self.latency.observe(ms / 1000.0)
        elif topic == schema.SPOOL_FAILED:
            self.failed.inc()
        elif topic == schema.FORWARD_DEFERRED:
            self.deferred.inc()
        elif topic == schema.ROLE_STARTED:
            role = str(body.get("role", "unknown"))[:32]
            pid = body.get("pid")
            key = (role, pid) if isinstance(pid, int) and not isinstance(pid, bool) else None
            if key is not None and key in self._from_census:
                self._from_census.discard(key)  # counted already
            else:
                self.role_starts.labels(role=role).inc()
                if key is not None:
                    self._counted.add(key)

    # ---- role census -----------------------------------------------------------------
    async def take_role_census(self) -> None:
        """Count the announcing role processes alive now that the bus has not reported."""
        now = time.monotonic()
        if now < self._next_census:
            return
        self._next_census = now + ROLE_CENSUS_PERIOD
        try:
            pids = await self.role_census()
        except Exception:  # circus busy or gone: the bus alone still counts
            pids = None
        if pids is None:
            self._next_census = now + ROLE_CENSUS_BACKOFF
            return
        for role, alive in pids.items():
            for pid in alive:
                key = (role, pid)
                if key not in self._counted:
                    self._counted.add(key)
                    self._from_census.add(key)
                    self.role_starts.labels(role=role).inc()
                    self.tracker.on_event(schema.ROLE_STARTED, {"role": role, "pid": pid})
            # forget processes gone for good (a role restarting for months must not grow the sets)
            gone = {k for k in self._counted if k[0] == role and k[1] not in alive}
            self._counted -= gone
            self._from_census -= gone

    async def _circus_role_pids(self) -> dict[str, list[int]] | None:
        """Pids of the announcing roles, from the supervisor's census; None without an answer.
        Under a plain circusd (no supervisor channel), from the role processes beside this one."""
        from .supervisor_control import SupervisorControl

        control = SupervisorControl(self.run_dir, timeout=1.0)
        if not control.available():
            return await asyncio.to_thread(sibling_role_pids, self.run_dir, self.config_name)
        census = await control.census()
        if census is None:
            return None
        return {
            role: census[f"{self.watcher_prefix}{role}"]
            for role in ANNOUNCING_ROLES
            if f"{self.watcher_prefix}{role}" in census
        }

    async def _listen(self) -> None:
        assert self.bus is not None
        async for topic, body in self.bus.messages():
            self.on_event(topic, body)

    # ---- http ------------------------------------------------------------------------
    async def _metrics(self) -> tuple[int, str, bytes]:
        await self.take_role_census()
        body = await asyncio.to_thread(generate_latest, self.registry)
        return 200, CONTENT_TYPE_LATEST, body

    async def _healthz(self) -> tuple[int, str, bytes]:
        await self.take_role_census()  # the smtp pids that let the listener check skip a session
        return await health_handler(self.health)()

    async def _index(self) -> tuple[int, str, bytes]:
        return (
            200,
            "text/html",
            b'<html><body><a href="/metrics">metrics</a> <a href="/healthz">healthz</a></body></html>\n',
        )

    # ---- life ------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Bind the HTTP server (returns the port), subscribe to the bus."""
        self.port = await self.http.start(host, port)
        self.bus = BusClient(self.run_dir)
        # and the admin's smtp disable/enable: the health check's listener answer
        self.bus.subscribe((*schema.EVENT_TOPICS, schema.CMD_SMTP_DISABLE, schema.CMD_SMTP_ENABLE))
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        # a command sent before this process subscribed (or in its first second) went by: the
        # admin's record of it (supervised relays) says what it was
        self._as_the_admin_left_it()
        asyncio.get_running_loop().call_later(SUBSCRIBE_SETTLE, self._as_the_admin_left_it)
        return self.port

    def _as_the_admin_left_it(self) -> None:
        if smtp_disabled_by_admin(self.store):
            self.tracker.smtp_disabled = True

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self.http.close()
        if self.bus is not None:
            self.bus.close()
            self.bus = None


def _add_bytes(counter: Counter, body: dict[str, Any]) -> None:
    size = body.get("size", body.get("bytes"))
    if isinstance(size, int | float) and not isinstance(size, bool) and size >= 0:
        counter.inc(size)


@dataclass(frozen=True)
class MetricsOptions:
    min_free: int = DEFAULT_MIN_FREE  # bytes the disk check wants free
    forwarding: bool | None = None  # None: from the config (--forward-to without --immediate)
    config_name: str = ""  # the configuration's name: its circus watchers are "<name>-<role>"


async def run_metrics(
    config: Config, run_dir: str, host: str, port: int, options: MetricsOptions | None = None
) -> int:
    """The ``metrics`` role: serve /metrics and /healthz on host:port until SIGTERM."""
    log = logmod.get()
    options = options or MetricsOptions()
    exporter = MetricsExporter(
        config,
        run_dir,
        min_free=options.min_free,
        forwarding=options.forwarding,
        config_name=options.config_name,
    )
    bound = await exporter.start(host, port)
    if identity.switching_applies(config.user):  # bound first, so a port below 1024 works
        identity.drop(identity.lookup(config.user))
    shown = f"{host}.{bound}" if ":" in host else f"{host}:{bound}"
    log.info(f"metrics server on {shown}")
    assert exporter.bus is not None
    exporter.bus.publish(schema.ROLE_STARTED, role="metrics")
    try:
        await until_stopped()
    finally:
        if exporter.bus is not None:
            exporter.bus.publish(schema.ROLE_STOPPING, role="metrics")
        await exporter.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``emailrelay metrics``: the role by hand (circusd users, a separate systemd unit, tests); the
    run directory is the relay's own (:mod:`emailrelay.rundir`) unless ``--run-dir`` says."""

    from .listeners import parse_host_port

    p = argparse.ArgumentParser(
        prog="emailrelay metrics",
        description="Serve Prometheus /metrics and /healthz for a relay supervised on this spool.",
    )
    p.add_argument("--spool-dir", "-s", default=OPTION_DEFAULTS["spool-dir"], help="the relay's spool")
    p.add_argument("--run-dir", help="the relay's run directory (default: as the relay chooses it)")
    p.add_argument(
        "--listen", default=f"127.0.0.1:{DEFAULT_PORT}", help=f"HOST:PORT (default 127.0.0.1:{DEFAULT_PORT})"
    )
    p.add_argument(
        "--smtp", default="127.0.0.1:25", help="SMTP address the health check probes (default 127.0.0.1:25)"
    )
    p.add_argument("--no-smtp", action="store_true", help="no SMTP listener to check")
    p.add_argument(
        "--forwarding", action="store_true", help="the relay runs forwarders: check they are alive"
    )
    p.add_argument(
        "--min-free",
        type=int,
        default=DEFAULT_MIN_FREE // (1024 * 1024),
        metavar="MB",
        help="/healthz fails when the spool's file system has less free (default %(default)s)",
    )
    p.add_argument("--user", "-u", default="root", help="run as this user once bound (default: stay)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    log = logmod.get()
    log.configure(logmod.LogConfig(enabled=True, syslog=False))
    try:
        host, port = parse_host_port(args.listen)
        smtp_host, smtp_port = parse_host_port(args.smtp, 25)
    except EmailRelayError as exc:
        log.error(str(exc))
        return exc.exit_code
    spool = Path(args.spool_dir).absolute()
    config = Config(
        spool_dir=spool,
        port=smtp_port,
        interfaces=[smtp_host.strip("[]")],
        no_smtp=args.no_smtp,
        user=args.user,
    )
    run_dir = args.run_dir or str(rundir.default(spool))
    options = MetricsOptions(min_free=args.min_free * 1024 * 1024, forwarding=args.forwarding)
    try:
        return asyncio.run(run_metrics(config, run_dir, host.strip("[]"), port, options))
    except OSError as exc:
        log.error(f"cannot bind metrics server on {args.listen}: {exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        return 0
