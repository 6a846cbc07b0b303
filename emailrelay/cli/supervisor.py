"""The supervisor: a circus arbiter built from the command line (ARCHITECTURE.md).

What it is for: in daemon modes the front end becomes a circus arbiter
whose watchers are the roles — ``bus``, ``notify``, ``forward`` (N),
``smtp`` (N) — each one ``python -m emailrelay.cli.role <role> -- <the
user's options>``.  The listening sockets, already bound by the front end
(so a port that cannot be bound is exit 2 before detaching), are handed to
the arbiter, which holds them for as long as it lives: every ``smtp``
process accepts on the same sockets, and restarting a role (``circusctl
restart smtp``) never refuses a connection — it waits in the backlog.

Privileges (docs/decisions.md): started as root, the supervisor prepares
the run directory (root's, not writable by ``--user``), binds circus's own
endpoints — ``ipc://`` files in ``<run>/circus/``, a root-only 0700
directory, so two relays never collide, nothing uses ports 5555-5557, and
no other user can reach them whatever the umask — and its narrow channel
for the roles (:mod:`.supervisor_channel`), then becomes ``--user``
(effective ids; real ids stay root, as upstream's process) for the rest of
its life, taking root back only to spawn a role; only then does the pid
file appear, naming a process that already has those ids.

Guarantees: SIGTERM, SIGINT and SIGQUIT stop every role gracefully (each
gets ``GRACEFUL_TIMEOUT`` seconds), and so does ``daemon.TERMINATE_SIGNAL``,
which the admin role's ``terminate`` sends; :func:`run` then returns 0 (the
front end leaves with upstream's status for the signal, 0 for terminate); a
role that dies is restarted, with a warning for the exit and one for the restart, until it
crash-loops (:mod:`.lifecycle`: then the relay stops and exits 1); circus's
own log lines are debug ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import identity, rundir
from .. import log as logmod
from ..config import Config
from ..errors import UsageError
from ..services import daemon, sd_notify
from ..services.listeners import Bound
from . import supervisor_channel, watchers
from ._orphan_guard import ENV_SUPERVISOR_PID
from .lifecycle import Lifecycle

GRACEFUL_TIMEOUT = 8.0


def check_run_dir(run_dir: Path) -> None:
    """The ipc socket paths must fit in a unix-socket address."""
    if not rundir.fits(run_dir):
        limit = rundir.IPC_PATH_LIMIT - len(rundir.CIRCUS_PUBSUB) - 1
        raise UsageError(f"--run-dir is too long for unix-domain sockets (max {limit} characters): {run_dir}")


def _owned_directory(path: Path, mode: int, gid: int | None, dir_fd: int | None = None) -> int:
    """Create ``path`` if missing and return an fd on it (O_NOFOLLOW): a symlink or file that another
    user planted in its place (where --user may write, eg. the spool) is unlinked, never followed, and
    the directory made; one of our own (an operator's symlink), or a directory that belongs to another
    user, is refused; owner group and mode are then set on the fd, whatever the umask.  With
    ``dir_fd``, ``path`` is a name in that directory."""
    name = path.name if dir_fd is not None else str(path)
    for attempt in (1, 2):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            break
        except OSError as exc:
            if attempt == 1 and exc.errno in (errno.ELOOP, errno.ENOTDIR) and _planted(name, dir_fd):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                continue
            raise UsageError(
                f"run directory {path}: {exc.strerror or exc} (a symlink?): use --run-dir"
            ) from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise UsageError(
            f"run directory {path} belongs to uid {st.st_uid}, not to us: remove it or use --run-dir"
        )
    if gid is not None and st.st_gid != gid:
        os.fchown(fd, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
    return fd


def _planted(name: str, dir_fd: int | None) -> bool:
    """Something not a directory, made by another user."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid != os.geteuid()
    except OSError:
        return False


def _prepare_run_dir(run_dir: Path, gid: int | None) -> None:
    """The run directory: ours, not writable by anyone else (``root:<--user's group> 0750`` when
    switching), holding circus's endpoints in a 0700 sub-directory only its owner can enter."""
    if run_dir.parent in (rundir.ROOT_BASE, Path(tempfile.gettempdir()) / f"emailrelay-{os.getuid()}"):
        os.close(_owned_directory(run_dir.parent, 0o711, None))
    else:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = _owned_directory(run_dir, 0o750 if gid is not None else 0o755, gid)
    try:
        os.close(_owned_directory(run_dir / rundir.CIRCUS_DIR, 0o700, None, dir_fd=fd))
    finally:
        os.close(fd)


def prepare_run_dirs(configs: Iterable[Config], gid: int | None) -> None:
    """Every run directory, made by the front end (as root, before it detaches and before any role
    is spawned): one that cannot be made is a start-up error, one line on stderr and exit 1."""
    for config in configs:
        run_dir = rundir.of(config)
        check_run_dir(run_dir)
        try:
            _prepare_run_dir(run_dir, gid)
        except OSError as exc:
            raise UsageError(
                f"cannot make the run directory {run_dir}: {exc.strerror or exc}: use --run-dir"
            ) from None


class _LogBridge(logging.Handler):
    """Circus and tornado log through the logging module; show it in our format.

    Circus's own chatter (``Starting master on pid N``, ``Registering signals...``) is debug: the
    relay's lifecycle lines are ours (:mod:`.lifecycle`).  Circus's periodic watcher check races
    with its own stop command and logs a ``ConflictError`` while stopping; that is noise too."""

    def emit(self, record: logging.LogRecord) -> None:
        log = logmod.get()
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {record.exc_info[1]!r}"
        text = f"supervisor: {message}"
        if "ConflictError" in message or "already running arbiter_stop" in message:
            log.debug(text)
        elif record.levelno >= logging.ERROR:
            log.error(text)
        elif record.levelno >= logging.WARNING:
            log.warning(text)
        else:
            log.debug(text)


@dataclass
class Configuration:
    """One configuration of the relay (the guide's ``in-``/``out-`` prefixes), and its sockets."""

    name: str  # "" when there is only one
    config: Config
    bound: list[Bound]

    @property
    def prefix(self) -> str:
        return f"{self.name}-" if self.name else ""


def _role_watchers(
    c: Configuration, options: list[str], common: dict[str, Any], sockets: list[Any], watcher_class: type
) -> list[Any]:
    """The watchers of one configuration, as :mod:`.watchers` describes them."""
    from .parse import app_dir  # "@app" is the supervising program's directory, not the role module's

    specs = watchers.role_watchers(
        c.config, c.prefix, [s.name for s in sockets], [b.display for b in c.bound], options, app=app_dir()
    )
    return [
        watcher_class(spec.name, sys.executable, args=spec.args, **watchers.circus_options(spec), **common)
        for spec in specs
    ]


class _OsKeepingTheSession:
    """The ``os`` module for circus's process spawning, but its ``setsid()`` (called in every role's
    child before the exec) makes a new process group in the relay's session, not a new session.

    Why (issue 20): with ``kernel.sched_autogroup_enabled`` (most distributions' default), every
    session is its own CPU scheduling group, sharing the CPU equally with the others.  As its own
    session, each role was one more group: on a loaded machine the smtp role's event loop spent
    about 70 % of a store run waiting in the run queue (about 25 % for the single-process relay,
    whose one process stays in the relay's session), and stored 2-3x fewer messages a second at the
    same CPU a message.  In their own process groups the roles are still out of reach of the
    terminal's signals (Ctrl-C goes to the foreground group); SIGTTOU and SIGTTIN are ignored, so a
    role writing its log to the terminal is never stopped, as it was not without a terminal."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def setsid() -> None:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        signal.signal(signal.SIGTTIN, signal.SIG_IGN)


def _privileged_watcher(lifecycle: Lifecycle) -> type:
    """A circus Watcher whose processes are spawned as root: the supervisor runs as ``--user`` (real
    uid 0) and takes root back only for the fork and exec, in its spawner thread, so a role starts
    as root, imports what it needs (the interpreter may be readable by root only) and drops to
    ``--user`` itself.  The processes it stops are told to ``lifecycle`` (their exits are planned)."""
    from concurrent.futures import ThreadPoolExecutor

    import circus.process
    from circus.process import Process
    from circus.watcher import Watcher

    circus.process.os = _OsKeepingTheSession()  # the os that circus's spawn (its child's preexec) sees
    # one thread for every spawn, alive as long as the supervisor: a role's PR_SET_PDEATHSIG (its
    # orphan guard) fires when the thread that forked it ends, not only when the process does
    spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")

    class PrivilegedProcess(Process):  # type: ignore[misc]
        def spawn(self) -> None:  # in the spawner thread: the supervisor's main thread stays --user
            identity.in_root_thread(super().spawn, spawner)

    class PrivilegedWatcher(Watcher):  # type: ignore[misc]
        @property
        def _process_class(self) -> type:
            return PrivilegedProcess

        def kill_process(self, process: Any, *args: Any, **kwargs: Any) -> Any:
            lifecycle.stopping(process.pid)
            return super().kill_process(process, *args, **kwargs)

    return PrivilegedWatcher


def build_arbiter(
    configurations: list[Configuration], options: list[str], cwd: str, lifecycle: Lifecycle
) -> Any:
    from circus.arbiter import Arbiter
    from circus.sockets import CircusSocket
    from tornado import gen

    class HeldSocket(CircusSocket):
        """A socket the front end bound already; circus only holds it and passes it on."""

        def __init__(self, name: str, sock: socket.socket) -> None:
            socket.socket.__init__(self, sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
            self.name, self.socktype, self.path, self.umask, self.replace = name, sock.type, None, None, False
            self.is_unix = sock.family == socket.AF_UNIX
            address = sock.getsockname()
            self.host, self.port = (None, None) if self.is_unix else address[:2]
            self.interface, self.backlog, self.so_reuseport, self.blocking = None, 1024, False, False
            self.set_inheritable(True)

        def bind_and_listen(self) -> None:
            pass

        def close(self) -> None:
            socket.socket.close(self)

    common: dict[str, Any] = dict(
        env={ENV_SUPERVISOR_PID: str(os.getpid())},
        copy_env=True,
        working_dir=cwd,
        graceful_timeout=GRACEFUL_TIMEOUT,
        max_retry=-1,
        close_child_stdin=True,
        hooks=lifecycle.hooks(),
    )
    watcher_class = _privileged_watcher(lifecycle)
    watchers: list[Any] = []
    sockets: list[Any] = []
    for c in configurations:
        mine = [HeldSocket(f"{c.prefix}{b.spec.service}{i}", b.sock) for i, b in enumerate(c.bound)]
        sockets.extend(mine)
        watchers.extend(_role_watchers(c, options, common, mine, watcher_class))
    for name in ("circus", "tornado", ""):
        logger = logging.getLogger(name)
        logger.handlers[:] = [_LogBridge()]
        logger.propagate = False
        logger.setLevel(logging.DEBUG if logmod.get().enabled_for(logmod.DEBUG) else logging.WARNING)
    run_dir = rundir.of(configurations[0].config)

    class Supervisor(Arbiter):  # type: ignore[misc]
        """circus's arbiter, except that the start of the watchers that ``start()`` asks for is left
        to :func:`run`'s first callback, after the switch to ``--user`` and the pid file (so the pid
        file does not wait for a spawn, and no role is spawned by the main thread as root)."""

        held = True

        @gen.coroutine
        def start_watchers(self, watcher_iter_func: Any = None) -> Any:
            if self.held:
                self.held = False
                return
            yield super().start_watchers(watcher_iter_func=watcher_iter_func)

    return Supervisor(
        watchers,
        rundir.ipc(run_dir, rundir.CIRCUS_CONTROL),
        rundir.ipc(run_dir, rundir.CIRCUS_PUBSUB),
        check_delay=1.0,
        sockets=sockets,
        proc_name="emailrelay-supervisor",
        loglevel="INFO",
    )


def _when_free(arbiter: Any, command: str) -> None:
    """``arbiter.stop()`` (``quit``) or a graceful ``arbiter.reload()`` (``reload``), now or, while
    the arbiter is busy with another command (eg. still starting its watchers, which makes circus
    raise ConflictError and would drop a stop signalled right after start-up), as soon as it is
    free.  Runs on the arbiter's loop."""
    from circus.exc import ConflictError

    try:
        future = arbiter.reload(graceful=True) if command == "reload" else arbiter.stop()
    except ConflictError:
        arbiter.loop.call_later(0.2, _when_free, arbiter, command)
        return
    if command == "reload":  # systemd: RELOADING=1 now, READY=1 once the roles are back
        sd_notify.relay_reloading()
        future.add_done_callback(lambda _: sd_notify.relay_reloaded())
    else:
        sd_notify.relay_stopping()


def _take_over_signals(arbiter: Any) -> None:
    """SIGTERM, SIGINT, SIGQUIT and the admin role's terminate signal stop the relay and SIGHUP
    restarts its roles, through :func:`_when_free`: our handlers replace the ones circus's
    controller installed when the arbiter was built (it keeps SIGCHLD and the others), before any
    signal can reach those."""
    loop = arbiter.loop

    def handler(signum: int, frame: object) -> None:
        if signum != signal.SIGHUP:  # the status the relay leaves with (daemon.exit_status)
            daemon.note_stop(0 if signum == daemon.TERMINATE_SIGNAL else signum)
        command = "reload" if signum == signal.SIGHUP else "quit"
        loop.add_callback_from_signal(_when_free, arbiter, command)

    for signum in (*daemon.STOP_SIGNALS, daemon.TERMINATE_SIGNAL, signal.SIGHUP):
        signal.signal(signum, handler)


def _channels(configurations: list[Configuration], gid: int | None) -> list[socket.socket]:
    """One listening socket of the supervisor's channel per run directory (bound as root, now)."""
    paths = sorted({rundir.path(rundir.of(c.config), rundir.CHANNEL) for c in configurations})
    return [supervisor_channel.bind(path, gid) for path in paths]


def run(
    configurations: list[Configuration],
    options: list[str],
    cwd: str,
    target: identity.Identity | None,
    switched: Callable[[], None] = lambda: None,
) -> int:
    """Run the arbiter until stopped.  Called as root when switching (``target``): everything that
    needs root — the run directory, circus's endpoints, the channel — is set up, then the process
    becomes ``target`` (effective ids; real ids stay root) for the rest of its life, and calls
    ``switched`` (the pid file appears); a :class:`UsageError` from it stops the relay (exit 1)."""
    gid = target.gid if target is not None else None
    os.umask(identity.CHILD_UMASK)  # upstream's, for the supervisor and every role: the sockets get
    # their modes at bind time and spool files theirs explicitly, so nothing relies on a wider umask
    # (the run directories are made already: prepare_run_dirs, before detaching)
    arbiter: Any = None
    failed: list[str] = []
    lifecycle = Lifecycle(on_crash_loop=lambda: _when_free(arbiter, "quit"))
    channels: list[supervisor_channel.Channel] = []
    try:  # from the first socket bound: a stop at any point (a SIGTERM right after the pid file) cleans up
        channel_sockets = _channels(configurations, gid)
        supervisor_channel.preload()  # what the supervisor imports after becoming --user
        import circus.exc  # (for _when_free and serve, once --user)

        arbiter = build_arbiter(configurations, options, cwd, lifecycle)
        _take_over_signals(arbiter)
        for c in configurations:
            for b in c.bound:
                b.sock.close()  # the arbiter holds duplicates
        peers = frozenset({0, target.uid}) if target is not None else None
        channels += [supervisor_channel.Channel(arbiter, sock, peers) for sock in channel_sockets]

        async def serve() -> None:
            """The first thing the arbiter's loop runs: circus's endpoints are bound by now."""
            sd_notify.watch_loop(asyncio.get_running_loop())  # systemd's watchdog vouches for this loop
            if target is not None:
                identity.drop(target)
                try:
                    switched()
                except UsageError as exc:
                    logmod.get().error(str(exc))
                    failed.append(str(exc))
                    _when_free(arbiter, "quit")
                    return
            for channel in channels:
                await channel.start()
            try:
                arbiter.start_watchers()  # held back by Supervisor until now (circus ignores the result too)
            except circus.exc.ConflictError:
                pass  # a stop signalled before this callback ran is under way: nothing to start

        arbiter.loop.add_callback(serve)
        arbiter.start()
    finally:
        for channel in channels:
            channel.close()
        with identity.as_root():
            for c in configurations:
                _clean_run_dir(rundir.of(c.config))
    return 1 if lifecycle.crash_loop is not None or failed else 0


def forget_run_dirs(configs: Iterable[Config]) -> None:
    """When the relay's process ends, however (a start that failed after :func:`prepare_run_dirs`,
    such as a pid file that cannot be made, or a SIGTERM before the arbiter ran): its private run
    directories when they are empty.  A directory with anything in it (another relay's sockets on
    the same spool) is left alone: only ``rmdir``."""
    with identity.as_root():
        for config in configs:
            run_dir = rundir.of(config)
            if run_dir.parent == rundir.private_base():
                with contextlib.suppress(OSError):
                    _remove_empty_run_dir(run_dir)


def _clean_run_dir(run_dir: Path) -> None:
    """After a stop: remove our socket files, and the directory itself when it is our private one
    (so test runs and long spool paths leave nothing behind)."""
    with contextlib.suppress(OSError):
        for directory in (run_dir / rundir.CIRCUS_DIR, run_dir):
            for entry in directory.iterdir():
                if entry.suffix in (".ipc", ".sock") and stat.S_ISSOCK(entry.lstat().st_mode):
                    entry.unlink()
        if run_dir.parent == rundir.private_base():  # and the state the roles keep there
            (run_dir / rundir.RESCAN_STAMP).unlink(missing_ok=True)
            (run_dir / rundir.FORWARD_STAMP).unlink(missing_ok=True)
            slots = run_dir / rundir.CONNECTION_SLOTS
            if slots.is_dir() and not slots.is_symlink():
                for entry in slots.iterdir():
                    entry.unlink()
                slots.rmdir()
            _remove_empty_run_dir(run_dir)


def _remove_empty_run_dir(run_dir: Path) -> None:
    """A run directory and its ``circus/``, with ``rmdir`` only: OSError when anything is left in them."""
    (run_dir / rundir.CIRCUS_DIR).rmdir()
    run_dir.rmdir()
