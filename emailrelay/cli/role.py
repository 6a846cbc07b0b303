"""``python -m emailrelay.cli.role <role> ... -- <relay options>``: one supervised role.

What it is for: the command line of every circus watcher the supervisor
builds.  The role re-parses the user's own relay options (so every role
sees exactly the configuration the front end validated) and runs one role
function from :mod:`emailrelay.services.roles`.  Not meant to be run by
hand, but harmless to: ``bus``, ``notify`` and ``forward`` need no
inherited sockets.
"""

from __future__ import annotations

# First of all, before the heavy imports: die with the arbiter, and do not even start if it is gone
# already (a kill -9 of the arbiter while this role was starting must not leave an orphan on the port).
from ._orphan_guard import guard_against_orphaning

guard_against_orphaning()

import argparse  # noqa: E402
import sys  # noqa: E402

from .. import log as logmod  # noqa: E402
from ..bus.endpoint import run_forwarder  # noqa: E402
from ..config import from_values  # noqa: E402
from ..errors import EmailRelayError  # noqa: E402
from ..identity import as_root, switching_applies  # noqa: E402
from ..services import loop, roles  # noqa: E402
from ..services.preload import preload  # noqa: E402
from .main import app_dir, log_config  # noqa: E402
from .parse import configuration_values, expand_shorthands, parse_command_line  # noqa: E402

ROLES = ("smtp", "forward", "notify", "bus", "admin", "pop", "metrics")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="emailrelay-role")
    p.add_argument("role", choices=ROLES)
    p.add_argument("--fd", type=int, action="append", default=[])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--index", type=int, default=1, help="circus worker id, from 1")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--config", default="", help="the configuration's name (multiple configurations)")
    p.add_argument("--listen", action="append", default=[], help="listening addresses, for admin status")
    p.add_argument(
        "--app-dir", default="", help='what "@app" stands for (the supervising program\'s directory)'
    )
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    options = argv[split + 1 :]
    roles.set_process_name(args.role)
    log = logmod.get()
    try:
        parsed = parse_command_line(options, app_dir=args.app_dir or app_dir())
        values = expand_shorthands(configuration_values(parsed, args.config))
        log.configure(log_config(values))
        config = from_values(values)
        config.name = args.config or next(iter(parsed.configs))  # without --config: the first (or only)
        logmod.set_unit(config.name)
        if switching_applies(config.user):  # before the role becomes --user (see services/preload)
            preload(
                ("emailrelay.services.metrics", "emailrelay.services.health")
                if args.role == "metrics"
                else ()
            )
        if args.role == "bus":
            roles.drop_privileges(config)  # the sockets get --user's group: the effective group
            run_forwarder(args.run_dir, privileged=as_root)
            return 0
        if args.role == "smtp":
            return loop.run(
                roles.run_smtp(config, args.fd, args.run_dir), implicit_tls=config.server_tls_connection
            )
        if args.role == "forward":
            return loop.run(
                roles.run_forward(config, args.run_dir, (args.index - 1) % args.count, args.count)
            )
        if args.role == "metrics":
            from ..services.listeners import parse_host_port
            from ..services.metrics import MetricsOptions, run_metrics

            host, port = parse_host_port(args.listen[0] if args.listen else "127.0.0.1:9025")
            forwarding = bool(config.forward_to) and not config.immediate
            return loop.run(
                run_metrics(
                    config,
                    args.run_dir,
                    host,
                    port,
                    MetricsOptions(forwarding=forwarding, config_name=args.config),
                )
            )
        if args.role == "pop":
            return loop.run(roles.run_pop(config, args.fd, args.run_dir))
        if args.role == "admin":
            return loop.run(roles.run_admin(config, args.fd, args.run_dir, args.listen))
        return loop.run(roles.run_notify(config, args.run_dir, config.notify_polling))
    except EmailRelayError as exc:
        log.error(f"{args.role}: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
