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

import importlib  # noqa: E402
import sys  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from .. import log as logmod  # noqa: E402
from .. import topology  # noqa: E402
from ..config import from_values  # noqa: E402
from ..errors import EmailRelayError  # noqa: E402
from ..identity import switching_applies  # noqa: E402
from ..services.preload import preload_role  # noqa: E402
from .log_options import log_config  # noqa: E402
from .parse import app_dir, configuration_values, expand_shorthands, parse_command_line  # noqa: E402

USAGE = (
    f"usage: emailrelay-role {{{','.join(topology.NAMES)}}} --run-dir DIR [--fd N]... [--index N]"
    " [--count N] [--config NAME] [--listen ADDRESS]... [--app-dir DIR] -- [relay options]"
)
INTEGERS = ("--fd", "--index", "--count")


def parse_arguments(argv: list[str]) -> SimpleNamespace:
    """The role's own arguments (before ``--``) as the supervisor writes them: the role, then
    ``--name value`` (or ``--name=value``) pairs; ``--fd`` and ``--listen`` may repeat.  By hand, not
    argparse: its help formatter imports shutil, bz2, lzma and locale, about 0.6 MB of heap in every
    role process (issue 20).  An error is SystemExit(2) with the usage on stderr, as argparse's."""

    def fail(message: str) -> SystemExit:
        print(f"{USAGE}\nemailrelay-role: error: {message}", file=sys.stderr)
        return SystemExit(2)

    if not argv or argv[0] not in topology.NAMES:
        raise fail(f"the first argument must be one of {', '.join(topology.NAMES)}")
    args = SimpleNamespace(
        role=argv[0],
        fd=[],  # the inherited listening sockets
        run_dir=None,  # required
        index=1,  # the circus worker id, from 1
        count=1,
        config="",  # the configuration's name (multiple configurations)
        listen=[],  # listening addresses, for admin status
        app_dir="",  # what "@app" stands for (the supervising program's directory)
    )
    words = iter(argv[1:])
    for word in words:
        name, eq, value = word.partition("=")
        key = name[2:].replace("-", "_")
        if not name.startswith("--") or key == "role" or not hasattr(args, key):
            raise fail(f"unrecognized argument: {word}")
        if not eq:
            value = next(words, None)
            if value is None:
                raise fail(f"{name}: expected one argument")
        item: int | str = value
        if name in INTEGERS:
            try:
                item = int(value)
            except ValueError:
                raise fail(f"{name}: invalid int value: {value!r}") from None
        current = getattr(args, key)
        if isinstance(current, list):
            current.append(item)
        else:
            setattr(args, key, item)
    if args.run_dir is None:
        raise fail("the following arguments are required: --run-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = parse_arguments(argv[:split])
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
