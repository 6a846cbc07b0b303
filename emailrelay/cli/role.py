"""``python -m emailrelay.cli.role <role> ... -- <relay options>``: one supervised role.

What it is for: the command line of every circus watcher the supervisor
builds.  The role re-parses the user's own relay options (so every role
sees exactly the configuration the front end validated) and runs one role
function: the entry point its row of :mod:`emailrelay.topology` names; it
imports only what that role uses.  Not meant to be run by
hand, but harmless to: ``bus``, ``notify`` and ``forward`` need no
inherited sockets.
"""

from __future__ import annotations

# First of all, before the heavy imports: die with the arbiter, and do not even start if it is gone
# already (a kill -9 of the arbiter while this role was starting must not leave an orphan on the port).
from ._orphan_guard import guard_against_orphaning, set_process_name, started_by_supervisor

guard_against_orphaning()

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

from .. import log as logmod  # noqa: E402
from .. import topology  # noqa: E402
from ..config import from_values  # noqa: E402
from ..errors import EmailRelayError  # noqa: E402
from ..identity import switching_applies  # noqa: E402
from ..services.preload import preload_role  # noqa: E402
from .log_options import log_config  # noqa: E402
from .parse import app_dir, configuration_values, expand_shorthands, parse_command_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="emailrelay-role")
    p.add_argument("role", choices=topology.NAMES)
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
    row = topology.BY_NAME[args.role]
    set_process_name(row.name)
    log = logmod.get()
    try:
        parsed = parse_command_line(options, app_dir=args.app_dir or app_dir())
        values = expand_shorthands(configuration_values(parsed, args.config))
        log.configure(log_config(values))
        name = args.config or next(iter(parsed.configs))  # without --config: the first (or only)
        config = from_values(values, name=name)
        logmod.set_unit(config.name)
        if switching_applies(config.user):  # before the role becomes --user (see services/preload)
            preload_role(row, config)  # only what this role uses: each role is an interpreter of its own
        module, _, function = row.entry.partition(":")
        entry = getattr(importlib.import_module(module), function)
        role_args = topology.RoleArgs(
            args.run_dir, args.fd, args.index, args.count, args.listen, args.config, started_by_supervisor()
        )
        return int(entry(config, role_args))
    except EmailRelayError as exc:
        log.error(f"{args.role}: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
