"""What circus runs for one configuration: its listening sockets and one watcher per role (issue 18.2).

What it is for: the supervisor (``cli/supervisor.py``, circus in-process)
and the ``circus.ini`` generator (``cli/circus_ini.py``, circus as
``circusd``) build the same processes from the same description, read off
the topology table (:mod:`emailrelay.topology`): so ``circusd circus.ini``
runs the relay ``emailrelay`` runs.

Guarantees: pure (nothing is bound, spawned or read); socket names are
``[<configuration>-]<service><n>`` in the order the front end binds them,
which is how a watcher finds its sockets (``$(circus.sockets.NAME)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import rundir, topology
from ..config import Config
from ..services.listeners import ListenSpec, plan


def service_ports(config: Config) -> dict[str, int]:
    """The listening services of a configuration and their ports."""
    if config.as_client or config.dont_serve:
        return {}
    ports = {} if config.no_smtp else {"smtp": config.port}
    if config.admin_port is not None:
        ports["admin"] = config.admin_port
    if config.pop:
        ports["pop"] = config.pop_port
    return ports


def listen_specs(config: Config) -> list[ListenSpec]:
    """The sockets the front end binds for a configuration, in order."""
    ports = service_ports(config)
    return plan(config.interfaces, ports) if ports else []


def socket_names(prefix: str, specs: list[ListenSpec]) -> list[str]:
    return [f"{prefix}{spec.service}{i}" for i, spec in enumerate(specs)]


@dataclass
class WatcherSpec:
    """One circus watcher: a role of a configuration."""

    name: str
    args: list[str]  # after the interpreter
    numprocesses: int
    priority: int
    use_sockets: bool
    sockets: list[str] = field(default_factory=list)  # the circus socket names it is given


def role_watchers(
    config: Config,
    prefix: str,
    sockets: list[str],
    listening: list[str],
    options: list[str],
    run_dir: str | None = None,
    app: str | None = None,
) -> list[WatcherSpec]:
    """The watchers of one configuration (``prefix`` is ``"<name>-"`` with several): the roles its
    config runs, each with its sockets (of ``sockets``, by service), its number of processes and
    its start order.  ``listening`` are the listening addresses (admin's status); ``options`` the
    user's own command line, which every role re-parses."""
    rd = run_dir if run_dir is not None else str(rundir.of(config))
    select = ["--config", prefix[:-1]] if prefix else []
    app_args = ["--app-dir", app] if app else []
    watchers = []
    for row in topology.roles_for(config):
        held = [s for s in sockets if any(s.startswith(f"{prefix}{svc}") for svc in row.sockets)]
        if row.sockets and not held:
            continue  # nothing bound for it (eg. --no-smtp)
        extra = [a for s in held for a in ("--fd", f"$(circus.sockets.{s})")]
        n = row.processes(config)
        if row.indexed:
            extra += ["--index", "$(circus.wid)", "--count", str(n)]
        if row.listen == "metrics":
            extra += ["--listen", str(config.metrics)]
        elif row.listen == "bound":
            extra += [a for address in listening for a in ("--listen", address)]
        args = [
            "-P",  # not the working directory first on sys.path: a secrets.py there is not run as root
            "-m",
            "emailrelay.cli.role",
            row.name,
            "--run-dir",
            rd,
            *app_args,
            *select,
            *extra,
            "--",
            *options,
        ]
        watchers.append(WatcherSpec(f"{prefix}{row.name}", args, n, row.priority, bool(row.sockets), held))
    return watchers


def circus_options(spec: WatcherSpec) -> dict[str, Any]:
    """A watcher's own circus options (the supervisor adds what all watchers share)."""
    return {"numprocesses": spec.numprocesses, "priority": spec.priority, "use_sockets": spec.use_sockets}
