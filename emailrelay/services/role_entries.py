"""The entry points of the supervised roles, one per row of :mod:`emailrelay.topology`.

What it is for: ``cli/role.py`` looks a role up in the topology table and
calls the function its row names here, with the parsed configuration and
:class:`~emailrelay.topology.RoleArgs`; each function adapts that to its
role's own start function (:mod:`.roles`, the bus proxy, the metrics
exporter) and runs it to the end.

Guarantees: every function has the same signature, ``(config, args) ->
exit status``, and returns only when its role stops.  Each function imports
what its role runs, and this module nothing heavy at its top: a role process
imports only its own modules (issue 20; the bus and notify roles no event
loop, the bus role no spool, the metrics exporter only the metrics role).
The imports here run as root, before the role becomes ``--user``.
"""

from __future__ import annotations

from ..config import Config
from ..identity import as_root, drop_to
from ..topology import RoleArgs


def bus(config: Config, args: RoleArgs) -> int:
    from ..bus.endpoint import run_forwarder

    drop_to(config.user)  # the sockets get --user's group: the effective group
    run_forwarder(args.run_dir, privileged=as_root)
    return 0


def smtp(config: Config, args: RoleArgs) -> int:
    from . import loop, roles

    return loop.run(roles.run_smtp(config, args.fds, args.run_dir), implicit_tls=config.server_tls_connection)


def forward(config: Config, args: RoleArgs) -> int:
    from . import loop, roles

    return loop.run(roles.run_forward(config, args.run_dir, (args.index - 1) % args.count, args.count))


def notify(config: Config, args: RoleArgs) -> int:
    from .notify_role import run_notify

    return run_notify(config, args.run_dir, config.notify_polling)  # a poll loop: no asyncio


def pop(config: Config, args: RoleArgs) -> int:
    from . import loop, roles

    return loop.run(roles.run_pop(config, args.fds, args.run_dir))


def admin(config: Config, args: RoleArgs) -> int:
    from . import loop, roles

    return loop.run(roles.run_admin(config, args.fds, args.run_dir, args.listen, supervised=args.supervised))


def metrics(config: Config, args: RoleArgs) -> int:
    from . import loop
    from .listeners import parse_host_port
    from .metrics import MetricsOptions, run_metrics

    host, port = parse_host_port(args.listen[0] if args.listen else "127.0.0.1:9025")
    forwarding = bool(config.forward_to) and not config.immediate
    options = MetricsOptions(forwarding=forwarding, config_name=args.config_name)
    return loop.run(run_metrics(config, args.run_dir, host, port, options))
