"""``emailrelay``: the front end — options in, a running relay out.

What it is for: parse the E-MailRelay command line (and config file), turn
it into a :class:`~emailrelay.config.Config`, bind the listening sockets,
detach, and run the relay; or print help/version.

Guarantees (SPEC.md §1): exit 0 on a normal stop (admin ``terminate``); after
SIGTERM, SIGINT or SIGQUIT, once stopped cleanly, E-MailRelay 2.6b's status:
128 + N with ``--pid-file``, else the death by the signal; 1 with a one-line
``emailrelay: error: ...`` on a usage or configuration error; 2 when a
listening socket cannot be bound — reported by the process the user
started, before it detaches.  The pid file appears only once every
listening socket is bound and the process named in it has its final
identity (started as root: effective ``--user``, real root).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

from .. import identity
from .. import log as logmod
from ..config import Config, from_values
from ..errors import EmailRelayError, OptionError, UsageError
from ..services import daemon, listeners, sd_notify, security
from ..services.forward_to_lookup import warn_if_forward_to_unresolvable
from . import preflight, watchers
from .log_options import log_config
from .parse import Value, app_dir, configuration_values, expand_shorthands, parse_command_line
from .tools import SUBCOMMANDS

if TYPE_CHECKING:
    from ..policy.spec import Spec


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    log = logmod.get()
    try:
        parsed = parse_command_line(args, app_dir=app_dir())
        if parsed.values.get("help") or parsed.values.get("version"):  # before anything else can fail
            return print_help_or_version(parsed.values)
        values = expand_shorthands(parsed.values)
        log.configure(log_config(values))
        log.check_log_file()
        closing = stderr_closing_warning(parsed.values, log.config)
        if closing:
            log.plain(f"warning: {closing}")  # upstream's, first and without a time
        for warning in parsed.warnings:
            log.warning(warning)
        configurations = []
        for name in parsed.configs:
            config_values = expand_shorthands(configuration_values(parsed, name)) if name else values
            config = from_values(config_values, name=name)  # the log's unit, even when it is the only one
            for warning in config.warnings:
                log.warning(warning)
            configurations.append((name if len(parsed.configs) > 1 else "", config))
        if values.get("print-circus-ini"):
            from .circus_ini import render

            print(render(configurations, [a for a in args if a != "--print-circus-ini"]), end="")
            return 0
        return daemon.leave(daemon.exit_status(run(configurations, values, args)))
    except EmailRelayError as exc:
        report_startup_error(log, exc)
        return exc.exit_code
    except daemon.SignalStop:  # a stop signal while starting, everything undone: as any stop
        return daemon.leave(daemon.exit_status(0))
    except KeyboardInterrupt:  # Ctrl-C before the relay's handlers: as upstream's, killed by SIGINT
        daemon.note_stop(signal.SIGINT)
        return daemon.leave(daemon.exit_status(0))


def print_help_or_version(values: dict[str, Value]) -> int:
    """``--help`` (which wins) or ``--version``, each longer with ``--verbose``; exit 0."""
    from .helptext import help_text, version_text

    text = help_text if values.get("help") else version_text
    print(text(bool(values.get("verbose"))), end="")
    return 0


def stderr_closing_warning(given: dict[str, Value], config: logmod.LogConfig) -> str | None:
    """E-MailRelay 2.6b's start-up warning when the log goes only to the standard error stream and
    ``--close-stderr`` (or ``--as-server`` or ``--as-proxy``, which imply it) is to close it: the
    option named is the first of those the user gave, in that order."""
    if not config.enabled or config.syslog or config.log_file:
        return None
    for name in ("close-stderr", "as-server", "as-proxy"):
        if given.get(name):
            return f"logging will stop because --{name} closes the standard error stream soon after startup"
    return None


#: The second line of upstream's report of a bad command-line option.
OPTION_HINT = '            try "emailrelay --help --verbose" for more information'


def report_startup_error(log: logmod.Log, exc: EmailRelayError) -> None:
    """An error that stops the program: in the log in its usual form (a ``--log-file`` gets it, with
    ``--log-time`` its timestamp: SPEC.md §2), and on stderr as upstream prints it,
    ``emailrelay: error: <text>``, whatever ``--log-file`` and ``--close-stderr`` say. A usage error
    (found while reading the options, before there is a log) is only on stderr, as upstream's
    ``emailrelay: usage error: <text>``; either may be followed by upstream's ``try`` line."""
    problems = exc.problems if isinstance(exc, OptionError) else [str(exc)]
    if exc.label == "error":
        for problem in problems:
            log.error(problem)
    if exc.label != "error" or log.config.log_file or not log.config.stderr:
        for problem in problems:
            print(f"emailrelay: {exc.label}: {problem}", file=sys.stderr, flush=True)
    if exc.hint:
        print(OPTION_HINT, file=sys.stderr, flush=True)


def prepare(config: Config) -> Config:
    """Every start-up check of one configuration that can fail, before anything is bound; returns
    the configuration with its directories made absolute (before detaching changes the directory)."""
    if not config.spool_dir.is_dir():
        reason = "not a directory" if config.spool_dir.exists() else "no such file or directory"
        raise UsageError(f"invalid spool directory: {config.spool_dir}: {reason}")
    config = config.replaced(spool_dir=config.spool_dir.absolute())
    if config.pid_file:  # (upstream's is where the command was run, not in /)
        config = config.replaced(pid_file=os.path.abspath(config.pid_file))
    preflight.check_spool(
        config.spool_dir, space=not (config.as_client or config.dont_serve), warn_only=config.as_client
    )
    if config.delivery_dir is not None:
        config = config.replaced(delivery_dir=config.delivery_dir.absolute())
    _check_policy(config)
    _check_network(config)
    if not (config.as_client or config.dont_serve or config.single_process):
        from .. import rundir
        from .supervisor import check_run_dir

        check_run_dir(rundir.of(config))
    security.check(config)  # secrets files and certificates: errors now, naming file and line
    if config.pop:
        from ..services.pop3d import pop_security

        pop_security(config)
    return config


def bind(config: Config, group: int | None = None) -> list[listeners.Bound]:
    """The listening sockets of one configuration (exit 2 when one cannot be bound); ``group``:
    ``--user``'s, when switching (a unix-domain socket file's group)."""
    with logmod.unit_scope(config.name):
        return _bind(config, group)


def _bind(config: Config, group: int | None) -> list[listeners.Bound]:
    single_shot = config.as_client or config.dont_serve
    warn_if_forward_to_unresolvable(config)  # upstream's start-up warning, first
    if config.immediate and not single_shot:  # upstream's start-up warning, word for word, first
        logmod.get().warning(
            "using --immediate can result in client timeout errors: try --forward-on-disconnect instead"
        )
    specs = watchers.listen_specs(config)  # the same sockets a circus.ini names
    return listeners.bind_all(specs, group) if specs else []


def announce(config: Config, bound: list[listeners.Bound]) -> None:
    """The ``server on`` lines (and ``forwarding to``): logged, as E-MailRelay 2.6b does, once the
    pid file is written and ``--close-stderr`` has closed the standard error stream (so they go only
    to a log file or the system log then), after detaching."""
    log = logmod.get()
    with logmod.unit_scope(config.name):
        for b in bound:
            log.info(logmod.tagged(config.name, f"{b.spec.service} server on {b.display}"))
        if config.forward_to and not (config.as_client or config.dont_serve):  # (--as-client and -x
            # say it once there is mail; a verbose line)
            log.verbose(logmod.tagged(config.name, f"forwarding to {config.forward_to}"))


def run(configurations: list[tuple[str, Config]], values: dict[str, Value], options: list[str]) -> int:
    configurations = [(name, prepare(config)) for name, config in configurations]
    if all(preflight.nothing_to_do(c) for _, c in configurations):  # upstream's words, on stderr
        print("emailrelay: nothing to do", file=sys.stderr, flush=True)
        return 0
    first = configurations[0][1]
    target = None
    if identity.switching_applies(first.user):
        try:
            target = identity.lookup(first.user)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        for _, config in configurations:
            problem = identity.directory_problem(str(config.spool_dir), target)
            if problem is not None:
                raise UsageError(
                    f"spool directory {config.spool_dir} is not readable by user '{target.name}' ({problem}): "
                    "fix its permissions (eg. group-readable) or use --user root"
                )
    cwd = os.getcwd()
    bound: list[list[listeners.Bound]] = []
    try:
        for _, config in configurations:
            bound.append(bind(config, target.gid if target else None))
    except BaseException:
        for socks in bound:
            for b in socks:
                b.sock.close()
            listeners.remove_unix_sockets(socks)
        raise
    supervised = not (first.as_client or first.dont_serve or first.single_process)
    if supervised:
        from .supervisor import prepare_run_dirs  # made now: an error is still one line on stderr

        prepare_run_dirs((c for _, c in configurations), target.gid if target else None)
    try:
        return _serve(configurations, values, options, bound, target, cwd)
    finally:
        listeners.remove_unix_sockets(b for socks in bound for b in socks)  # as upstream, at the stop
        if supervised:  # (a detached parent leaves by os._exit: only the relay's own process gets here)
            from .supervisor import forget_run_dirs

            forget_run_dirs(c for _, c in configurations)


def _serve(
    configurations: list[tuple[str, Config]],
    values: dict[str, Value],
    options: list[str],
    bound: list[list[listeners.Bound]],
    target: identity.Identity | None,
    cwd: str,
) -> int:
    """The rest of :func:`run`, once the sockets are bound (and the run directories made): detach,
    the pid file, and the relay in this process or under the supervisor."""
    log = logmod.get()
    first = configurations[0][1]
    if not first.no_daemon and not first.as_client:
        daemon.detach()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the supervisor or the loop handles it
    # likewise for the stop signals: one right after the pid file is a clean stop; they are held back
    # while the pid file is prepared, so that one arrives inside the try that removes the file
    for signum in daemon.STOP_SIGNALS:
        signal.signal(signum, daemon.raise_stop)
    signal.pthread_sigmask(signal.SIG_BLOCK, set(daemon.STOP_SIGNALS))
    pid_file = daemon.prepare_pid_file(first.pid_file, target.gid if target else None)
    if values.get("close-stderr"):  # after the pid file, whose error is still one line on stderr
        log.close_stderr()  # a --log-file is not affected (reference guide)
    for (_, config), socks in zip(configurations, bound, strict=True):
        announce(config, socks)
    spools = [c.spool_dir for _, c in configurations]
    in_process = first.as_client or first.dont_serve or first.single_process

    def started() -> None:
        """The process has its final identity: the pid file appears; supervised, systemd hears
        READY=1 (the supervisor takes SIGHUP and SIGTERM already)."""
        daemon.publish_pid_file(pid_file)
        daemon.tell_started()
        if not in_process:
            sd_notify.relay_started(spools)  # Type=notify: every socket is bound

    # the stop signals stay held back until the imports below are done: a SystemExit raised inside an import
    # can be swallowed by importlib (a lock's weakref callback), and the relay would not stop
    try:
        if target is None:
            started()  # nothing to switch: the identity is final already
        if in_process:
            # upstream's umask; every socket is bound and spool files get 0660 anyway
            os.umask(identity.CHILD_UMASK)
            if target is not None:
                from ..services.preload import preload_everything  # (as root: --user may not read it)

                identity.drop(target)
                started()
                identity.in_root_thread(preload_everything)  # --user may not read the installation
            from ..services import loop  # only now: the pid file is not held back by these imports
            from ..services.instance import Instance, run_instances

            instances = [
                Instance(config, smtp_sockets=socks)
                for (_, config), socks in zip(configurations, bound, strict=True)
            ]
            implicit = any(c.server_tls_connection for _, c in configurations)
            sd_notify.relay_started(spools)  # READY=1 as the loop starts: it takes SIGHUP (a reload) at once
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(daemon.STOP_SIGNALS))  # one sent stops it here
            code = loop.run(run_instances(instances), implicit_tls=implicit)
        else:
            from . import supervisor

            parts = [
                supervisor.Configuration(name, config, socks)
                for (name, config), socks in zip(configurations, bound, strict=True)
            ]
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(daemon.STOP_SIGNALS))  # one sent stops it here
            code = supervisor.run(parts, options, cwd, target, started)
    finally:
        sd_notify.relay_stopping()
        daemon.remove_pid_file(pid_file)
    return code  # (main gives it upstream's meaning after a stop signal: daemon.exit_status)


def _check_network(config: Config) -> None:
    """--dnsbl and a SOCKS --forward-to are checked before anything is bound (their modules are
    imported only when given: the pid file waits for what is imported here)."""
    try:
        if config.dnsbl:
            from ..policy.dnsbl import parse_config

            parse_config(config.dnsbl)
        if config.forward_to:
            from ..services.socks import parse_forward_to

            target, proxy = parse_forward_to(config.forward_to)
            if proxy is None and not target.startswith("/") and not config.as_client:  # (as upstream:
                _check_host_and_port(target)  # --as-client says "no messages to send" first)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_host_and_port(target: str) -> None:
    """``--forward-to``/``--as-proxy`` without a host or a port (``foo``, ``:25``) is upstream's
    start-up error ``invalid host:service format: foo`` (ours took port 25): read as the forwarder
    reads it, without its default port."""
    from ..transport_address import split_next_hop

    try:
        split_next_hop(target, default_port=None)
    except ValueError as exc:
        if str(exc).endswith(("no port", "no host")):
            raise ValueError(f"invalid host:service format: {target}") from None


def _check_policy(config: Config) -> None:
    """Bad --filter / --client-filter / --address-verifier values are usage errors at start-up."""
    if not (config.filters or config.client_filters or config.address_verifier):
        return
    from ..policy.spec import SpecError, SpecUsageError, parse_filters, parse_verifier, startup_warnings

    try:
        server_filters = parse_filters(config.filters)
        client_filters = parse_filters(config.client_filters, client=True)
        verifier = parse_verifier(config.address_verifier)
    except SpecUsageError:
        raise  # upstream's "usage error:"
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    for what, specs in (
        ("filter", server_filters),
        ("client filter", client_filters),
        ("verifier", [verifier] if verifier is not None else []),
    ):
        _check_network_specs(what, specs)
    for text in startup_warnings(server_filters, client_filters, verifier):  # without a time, as upstream
        logmod.get().plain(f"warning: {text}")


def _check_network_specs(what: str, specs: list[Spec]) -> None:
    """A ``net:``/``spam:`` address that cannot be used is a usage error now, in upstream's words
    (``invalid filter specification: invalid host:service format: x``), not a role that fails to
    start again and again. (Upstream refuses only a missing port at start-up; ours also an unknown
    service name or an empty port, which upstream finds out at the first message.)"""
    from ..policy.net import parse_endpoint
    from ..policy.spec import NETWORK_KINDS, SpecError, SpecUsageError

    for spec in specs:
        if spec.kind in NETWORK_KINDS:
            try:
                parse_endpoint(spec.value)
            except SpecError:
                raise SpecUsageError(
                    f"invalid {what} specification: invalid host:service format: {spec.value}"
                ) from None


if __name__ == "__main__":
    sys.exit(main())
