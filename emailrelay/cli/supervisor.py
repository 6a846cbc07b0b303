"""The supervisor: a circus arbiter built from the command line (ARCHITECTURE.md).

What it is for: in daemon modes the front end becomes a circus arbiter
whose watchers are the roles — ``bus``, ``notify``, ``forward`` (N),
``smtp`` (N) — each one ``python -m emailrelay.cli.role <role> -- <the
user's options>``.  The listening sockets, already bound by the front end
(so a port that cannot be bound is exit 2 before detaching), are handed to
the arbiter, which holds them for as long as it lives: every ``smtp``
process accepts on the same sockets, and restarting a role (``circusctl
restart smtp``) never refuses a connection — it waits in the backlog.

Circus's own endpoints are ``ipc://`` files in the run directory
(``circus.ctl.ipc``, ``circus.pubsub.ipc``), so two relays with different
run directories never collide, and nothing uses ports 5555-5557.

Guarantees: SIGTERM stops every role gracefully (each gets
``GRACEFUL_TIMEOUT`` seconds) and the arbiter exits 0; a role that dies is
restarted (no retry limit: a relay must come back after a transient
fault); the arbiter's own log goes through our log at verbose level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from pathlib import Path

from .. import log as logmod
from ..config import Config
from ..services.listeners import Bound

GRACEFUL_TIMEOUT = 8.0


def run_dir_for(config: Config) -> Path:
    if config.run_dir is not None:
        return config.run_dir.absolute()
    return (config.spool_dir / ".emailrelay-run").absolute()


def control_endpoint(run_dir: Path) -> str:
    return f"ipc://{run_dir}/circus.ctl.ipc"


def _prepare_run_dir(run_dir: Path, gid: int | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    if gid is not None:
        with contextlib.suppress(OSError):
            os.chown(run_dir, 0, gid)
            os.chmod(run_dir, 0o770)


class _LogBridge(logging.Handler):
    """Circus logs through the logging module; show it in our format, at verbose level."""

    def emit(self, record: logging.LogRecord) -> None:
        log = logmod.get()
        text = f"supervisor: {record.getMessage()}"
        if record.levelno >= logging.ERROR:
            log.error(text)
        elif record.levelno >= logging.WARNING:
            log.warning(text)
        else:
            log.verbose(text)


def build_arbiter(config: Config, options: list[str], bound: list[Bound], run_dir: Path, cwd: str):
    from circus.arbiter import Arbiter
    from circus.sockets import CircusSocket
    from circus.watcher import Watcher

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

    python = sys.executable
    common = dict(
        copy_env=True,
        working_dir=cwd,
        graceful_timeout=GRACEFUL_TIMEOUT,
        max_retry=-1,
        close_child_stdin=True,
    )
    role = [python, "-m", "emailrelay.cli.role"]
    tail = ["--", *options]
    rd = str(run_dir)
    watchers = [
        Watcher("bus", python, args=[*role[1:], "bus", "--run-dir", rd, *tail], priority=30, **common)
    ]
    sockets = [HeldSocket(f"{b.spec.service}{i}", b.sock) for i, b in enumerate(bound)]
    forwarding = bool(config.forward_to) and not config.immediate
    if forwarding:
        watchers.append(
            Watcher(
                "notify", python, args=[*role[1:], "notify", "--run-dir", rd, *tail], priority=20, **common
            )
        )
        n = max(1, config.workers_forward)
        watchers.append(
            Watcher(
                "forward",
                python,
                args=[
                    *role[1:],
                    "forward",
                    "--run-dir",
                    rd,
                    "--index",
                    "$(circus.wid)",
                    "--count",
                    str(n),
                    *tail,
                ],
                numprocesses=n,
                priority=10,
                **common,
            )
        )
    smtp_sockets = [s for s in sockets if s.name.startswith("smtp")]
    if smtp_sockets:
        fd_args = [a for s in smtp_sockets for a in ("--fd", f"$(circus.sockets.{s.name})")]
        watchers.append(
            Watcher(
                "smtp",
                python,
                args=[*role[1:], "smtp", "--run-dir", rd, *fd_args, *tail],
                numprocesses=max(1, config.workers_smtp),
                use_sockets=True,
                priority=0,
                **common,
            )
        )
    admin_sockets = [s for s in sockets if s.name.startswith("admin")]
    if admin_sockets:
        fd_args = [a for s in admin_sockets for a in ("--fd", f"$(circus.sockets.{s.name})")]
        listen_args = [a for b in bound for a in ("--listen", b.display)]
        watchers.append(
            Watcher(
                "admin",
                python,
                args=[*role[1:], "admin", "--run-dir", rd, *fd_args, *listen_args, *tail],
                use_sockets=True,
                priority=5,
                **common,
            )
        )
    circus_logger = logging.getLogger("circus")
    circus_logger.handlers[:] = [_LogBridge()]
    circus_logger.propagate = False
    circus_logger.setLevel(logging.INFO)
    return Arbiter(
        watchers,
        control_endpoint(run_dir),
        f"ipc://{run_dir}/circus.pubsub.ipc",
        check_delay=1.0,
        sockets=sockets,
        proc_name="emailrelay-supervisor",
        loglevel="INFO",
    )


def run(config: Config, options: list[str], bound: list[Bound], cwd: str, gid: int | None) -> int:
    run_dir = run_dir_for(config)
    _prepare_run_dir(run_dir, gid)
    arbiter = build_arbiter(config, options, bound, run_dir, cwd)
    for b in bound:
        b.sock.close()  # the arbiter holds duplicates
    arbiter.start()
    return 0
