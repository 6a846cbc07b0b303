"""The process topology of a supervised relay: one row per role (issue 18.1).

What it is for: every part that needs to know which roles exist reads this
table and nothing else: the supervisor building circus's watchers
(``cli/supervisor.py``), the role launcher (``cli/role.py``), ``--workers``
(``config.py``), the admin ``roles``/``workers`` commands and the
supervisor's channel (``services/supervisor_control.py``), metrics, the
generated ``circus.ini`` and the docs (:func:`markdown`).

Guarantees: a row says, for one role, its name and entry point (a
``module:function`` of the services layer taking the config and
:class:`RoleArgs`, returning the exit status); the listening sockets it is
given; how many processes it runs and, for the roles that can be scaled
(``--workers``, admin ``workers``), the allowed range; the condition on the
config under which it runs; its start order (circus priority: higher starts
first); and its privileges.  The module is at the bottom of the layers: it
imports nothing of the relay, so anything, ``config.py`` included, may read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Config = Any  # an emailrelay.config.Config: not imported, so that config.py can read this table

MAX_WORKERS = 64  # the most processes a scalable role may be given


@dataclass(frozen=True)
class RoleArgs:
    """What the supervisor passes a role process besides the user's options."""

    run_dir: str
    fds: list[int] = field(default_factory=list)  # the inherited listening sockets
    index: int = 1  # the circus worker id, from 1
    count: int = 1  # the role's number of processes
    listen: list[str] = field(default_factory=list)  # listening addresses (admin status, metrics)
    config_name: str = ""  # the configuration, with several
    supervised: bool = False  # started by emailrelay's supervisor (False: a plain circusd circus.ini)


@dataclass(frozen=True)
class Role:
    name: str
    entry: str  # "module:function" of the services layer: function(config, RoleArgs) -> exit status
    runs_if: Callable[[Config], bool]  # on the configuration
    condition: str  # runs_if in words, for the docs
    sockets: tuple[str, ...] = ()  # the listening services (listeners.SERVICES) whose sockets it gets
    processes: Callable[[Config], int] = lambda config: 1
    workers: tuple[int, int] | None = None  # (min, max) processes when it can be scaled, else None
    indexed: bool = False  # each process is told its worker index and the count (forward's shares)
    listen: str = ""  # "bound": the relay's listening addresses; "metrics": --metrics
    priority: int = 0  # circus start order: higher first
    announces: bool = False  # publishes role.started / role.stopping on the bus
    # what it imports at run time, after it became --user, besides its entry's module: imported as root
    # first (services/preload.py), so that a venv only root may read works; each role imports only its own
    preload: tuple[str, ...] = ()
    config_modules: bool = False  # and what the configuration adds (TLS, secrets, filters, DNS): mail roles
    watches_spool: bool = False  # and watchdog when it will poll (no inotify, or --notify=poll)
    privileges: str = "spawned as root; imports its modules, then becomes --user"


def _forwarding(config: Config) -> bool:
    return bool(config.forward_to) and not config.immediate


def _forward_role(config: Config) -> bool:
    """Forwarding; or, with ``--immediate`` (the smtp role forwards), the messages it left in the
    spool, tried again at each ``--poll``, at a client's disconnect or on the admin's ``forward``,
    as upstream tries them."""
    later = config.poll is not None or config.forward_on_disconnect or config.admin_port is not None
    return _forwarding(config) or (bool(config.forward_to) and config.immediate and later)


def _serving_smtp(config: Config) -> bool:
    return not config.no_smtp


ROLES: tuple[Role, ...] = (
    Role(
        "bus", "emailrelay.services.role_entries:bus", lambda c: True, "always",
        priority=30, preload=("emailrelay.bus.endpoint",),
        privileges="spawned as root; binds the bus's ipc sockets with --user's group, then becomes --user",
    ),
    Role(
        "notify", "emailrelay.services.role_entries:notify",
        lambda c: _forwarding(c) and c.poll is not None, "--forward-to and --poll, without --immediate",
        priority=20, announces=True,
        preload=("emailrelay.services.notify_role",), watches_spool=True,
    ),
    Role(
        "forward", "emailrelay.services.role_entries:forward", _forward_role,
        "--forward-to; with --immediate, and --poll, --forward-on-disconnect or --admin",
        processes=lambda c: max(1, c.workers_forward), workers=(0, MAX_WORKERS), indexed=True,
        priority=10, announces=True,
        preload=("emailrelay.services.roles", "emailrelay.services.forward"),
        config_modules=True,
    ),
    Role(
        "pop", "emailrelay.services.role_entries:pop", lambda c: c.pop, "--pop",
        sockets=("pop",), priority=5,
        preload=("emailrelay.services.roles", "emailrelay.services.pop3d"),
        config_modules=True,
    ),
    Role(
        "metrics", "emailrelay.services.role_entries:metrics", lambda c: bool(c.metrics), "--metrics",
        listen="metrics", priority=5, announces=True,
        preload=(
            "emailrelay.services.metrics", "emailrelay.services.health", "emailrelay.services.listeners",
            "emailrelay.services.supervisor_control",
        ),
        privileges="spawned as root; imports its modules, then becomes --user and binds its own port",
    ),
    Role(
        "admin", "emailrelay.services.role_entries:admin", lambda c: c.admin_port is not None, "--admin",
        sockets=("admin",), listen="bound", priority=5,
        preload=(
            "emailrelay.services.roles", "emailrelay.services.admin",
            "emailrelay.services.forward", "emailrelay.services.supervisor_control", "emailrelay.policy.dnsbl",
        ),
        config_modules=True,
    ),
    Role(
        "smtp", "emailrelay.services.role_entries:smtp", _serving_smtp, "without --no-smtp",
        sockets=("smtp",), processes=lambda c: max(1, c.workers_smtp), workers=(1, MAX_WORKERS),
        priority=0, announces=True,
        preload=("emailrelay.services.roles", "emailrelay.services.instance"), config_modules=True,
    ),
)  # fmt: skip

BY_NAME = {role.name: role for role in ROLES}
NAMES = tuple(BY_NAME)
SCALABLE = {role.name: role.workers for role in ROLES if role.workers is not None}


def role(name: str) -> Role:
    """The row of ``name``, a role or a watcher name (``<configuration>-<role>``); KeyError if none."""
    return BY_NAME[name] if name in BY_NAME else BY_NAME[name.rsplit("-", 1)[-1]]


def roles_for(config: Config) -> list[Role]:
    """The roles a supervised relay with ``config`` runs, in start order."""
    return sorted((r for r in ROLES if r.runs_if(config)), key=lambda r: -r.priority)


def markdown() -> str:
    """The table for the docs (docs/operator-guide.md carries it; a test keeps the two equal)."""
    lines = [
        "| role | runs | processes | sockets | start order | privileges |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(ROLES, key=lambda r: -r.priority):
        if r.workers is not None:
            low, high = r.workers
            count = f"`--workers {r.name}=N` ({low}..{high})"
        else:
            count = "1"
        sockets = ", ".join(r.sockets) or "-"
        lines.append(f"| `{r.name}` | {r.condition} | {count} | {sockets} | {r.priority} | {r.privileges} |")
    return "\n".join(lines) + "\n"
