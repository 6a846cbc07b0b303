"""Logging in upstream E-MailRelay's line format (SPEC.md §2).

What it is for: every process of the relay logs through :func:`get` so the
lines look exactly like upstream's:
``emailrelay: [<time>: ]<level>: [<unit>: ][<address>; |<address>;<port>: |<port>: ][(<msgid>) ]<text>``
on stderr (or ``--log-file``, with ``%d`` expanded daily: a new file is made
0660 whatever the umask, as upstream's) and to syslog
(LOG_MAIL, ident ``emailrelay``) unless ``--no-syslog``.

The ``--log-format`` fields: ``time``; ``unit``, the name of the
configuration (``--in-...``: ``in``; nothing when no configuration is
named), set per process or per instance task with :func:`set_unit`;
``address``, the remote client's address a caller
passes; ``port``, that peer's port, alone (``42868: ``) or after the
address (``1.2.3.4;42868: ``), as E-MailRelay 2.6b writes it, known to a
connection's :class:`SessionLog` or set for a task
with :func:`set_port`; ``msgid``, the id of the message a line is about,
from a :class:`SessionLog` or else a task's :func:`set_msgid`.  With
``json`` (ours) each line is a JSON object with the same data as keys
(``unit``, ``address``, ``port``, ``msgid`` whenever known).  With none of
unit, port and msgid on, formatting takes the old, cheap path.

Levels: ``error``, ``warning``, ``info`` (upstream's summary logging, on
with ``--log``), verbose info (protocol tracing, on with ``--verbose``,
printed as ``info``) and ``debug`` (``--debug``).

Guarantees: a fatal startup error logged with :meth:`Log.error` is written
and flushed before the caller exits, in the ``^emailrelay: [0-9.]*: error:``
form scripts grep for; log text is made printable so a hostile peer cannot
forge log lines with CR/LF; a long line is cut as E-MailRelay 2.6b cuts it
(:func:`cut`: its first 1040 octets and `` ...``, counting upstream's unseen
source context, JSON lines aside); raw octets (a file name, an argument) are
written as they are, never a lost line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import syslog as _syslog
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TextIO

from .errors import ConfigError
from .identity import as_root

ERROR, WARNING, INFO, VERBOSE, DEBUG = 40, 30, 20, 15, 10
_WORDS = {ERROR: "error", WARNING: "warning", INFO: "info", VERBOSE: "info", DEBUG: "debug"}
_SYSLOG_PRIORITY = {
    ERROR: _syslog.LOG_ERR,
    WARNING: _syslog.LOG_WARNING,
    INFO: _syslog.LOG_INFO,
    VERBOSE: _syslog.LOG_INFO,
    DEBUG: _syslog.LOG_DEBUG,
}
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0, 32), 127)}

#: The ``--log-format`` field names (``json`` is ours). Any other word is ignored, as E-MailRelay
#: 2.6b does: the user guide's ``network`` too, which adds nothing upstream.
LOG_FORMAT_FIELDS = ("time", "unit", "address", "port", "msgid", "json")

# the unit (configuration name) and message id of the running task, where no SessionLog knows better
_UNIT: ContextVar[str] = ContextVar("emailrelay_log_unit", default="")
# (the id, and whether text lines show it: E-MailRelay 2.6b's show it only while forwarding)
_MSGID: ContextVar[tuple[str, bool]] = ContextVar("emailrelay_log_msgid", default=("", True))
_PORT: ContextVar[int] = ContextVar("emailrelay_log_port", default=0)


def set_unit(name: str) -> Token[str]:
    """The configuration's name on this context's lines (a role process, an instance's task)."""
    return _UNIT.set(name)


@contextmanager
def unit_scope(name: str) -> Iterator[None]:
    token = _UNIT.set(name)
    try:
        yield
    finally:
        _UNIT.reset(token)


def set_msgid(msgid: str, *, in_text: bool = True) -> Token[tuple[str, bool]]:
    """The message this task's lines are about (until :func:`reset_msgid` or the task's end);
    ``in_text`` False: only JSON lines carry it (an SMTP server session's message)."""
    return _MSGID.set((msgid, in_text))


def reset_msgid(token: Token[tuple[str, bool]]) -> None:
    _MSGID.reset(token)


def set_port(port: int) -> Token[int]:
    """The peer's port for this task's lines that give an address (a session's decision tasks)."""
    return _PORT.set(port)


def tagged(name: str, text: str) -> str:
    """``[<name>] <text>``: E-MailRelay 2.6b's mark of a named configuration on its start-up lines
    (``[in] smtp server on ...``); the text alone for an unnamed one."""
    return f"[{name}] {text}" if name else text


#: E-MailRelay 2.6b's cut of a log line: it builds the line (program name, time, level, address, ...)
#: with the source context of the code that logs it (``GSmtp::ClientProtocol: ``, written only with
#: ``--debug``) in a buffer of ``LINE_LIMIT`` octets; a line that fills it is written as its first
#: ``LINE_LIMIT`` octets and `` ...``, and then without the context.  So the visible cut depends on
#: the logging code: :func:`upstream_context` gives the length of the one upstream would count.
LINE_LIMIT = 1040
_CUT_MARK = " ..."

#: E-MailRelay 2.6b's contexts, measured with ``--debug``: its SMTP traces (``rx<<:``, a client's
#: ``tx>>:``), the default for lines whose context was not measured (it keeps 1017 octets)
_TRACE_CONTEXT = "GSmtp::ClientProtocol: "
_SERVER_SEND_CONTEXT = "GSmtp::ServerSend: "  # an SMTP server's tx>>:
_FILTER_DONE_CONTEXT = "GSmtp::ProtocolMessageStore::filterDone: "  # rejected by filter, response=[..]
_FILTER_FAILED_CONTEXT = "GFilters::ExecutableFilter::onTaskDone: "  # filter [x] failed: exit code ..
# a line of fewer characters is never cut, whatever its context and characters
_SHORT = (LINE_LIMIT - len(_FILTER_DONE_CONTEXT)) // 4


def upstream_context(level: int, text: str, *, smtp_server: bool = False) -> int:
    """The length of the context E-MailRelay 2.6b counts in the cut of a line of ``level`` saying
    ``text`` (``smtp_server``: logged by an SMTP server session)."""
    if text.startswith("tx>>: ") and smtp_server:
        return len(_SERVER_SEND_CONTEXT)
    if text.startswith("filter ["):
        if level == WARNING and "] failed: " in text:
            return len(_FILTER_FAILED_CONTEXT)
        if level != WARNING and " response=[" in text:
            return len(_FILTER_DONE_CONTEXT)
    elif text.startswith("rejected by filter: "):
        return len(_FILTER_DONE_CONTEXT)
    return len(_TRACE_CONTEXT)


def cut(line: str, context: int = len(_TRACE_CONTEXT)) -> str:
    """``line`` as E-MailRelay 2.6b writes a long one whose unseen context (:data:`LINE_LIMIT`) is
    ``context`` octets, but in whole characters: a UTF-8 character the cut would split is left out
    (upstream writes its first octets)."""
    keep = LINE_LIMIT - context
    if len(line) < keep // 4:  # (the common case: short whatever its characters)
        return line
    data = line.encode("utf-8", "surrogateescape")
    if len(data) < keep:
        return line
    end = _whole(data, keep)
    return data[:end].decode("utf-8", "surrogateescape") + _CUT_MARK


def _whole(data: bytes, end: int) -> int:
    """``end``, or the start of the UTF-8 character it would split (raw octets are cut anywhere)."""
    start = end
    while start > end - 3 and start < len(data) and 0x80 <= data[start] < 0xC0:
        start -= 1
    if start == end:
        return end
    first = data[start : start + 4].decode("utf-8", "surrogateescape")[0]
    return start if not 0xDC80 <= ord(first) <= 0xDCFF and start + len(first.encode()) > end else end


def traced(text: str) -> str:
    """A protocol trace's text (``rx<<:``, ``tx>>:``) as E-MailRelay 2.6b escapes it: a backslash
    doubled, a tab as ``\\t``, a NUL as ``\\0``, a CR or LF inside the line as ``\\r`` or
    ``\\n``; :func:`printable` escapes the other control characters when it is logged.  Octets that
    are not UTF-8 (surrogate escapes) stay as they are."""
    if text.isprintable() and "\\" not in text:  # the common case, checked in C
        return text
    escaped = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\0", "\\0")
    return escaped.replace("\r", "\\r").replace("\n", "\\n")


def printable(text: str) -> str:
    """Escape control characters so one log call is one log line."""
    if text.isprintable():  # the common case, checked in C
        return text
    return text.translate(_UNPRINTABLE)


@dataclass
class LogConfig:
    enabled: bool = True  # --log (or implied by --as-*)
    verbose: bool = False
    debug: bool = False
    with_time: bool = False  # --log-time / --log-format=time
    with_address: bool = False  # --log-address / --log-format=address
    with_unit: bool = False  # --log-format=unit
    with_port: bool = False  # --log-format=port
    with_msgid: bool = False  # --log-format=msgid
    json: bool = False  # --log-format=json (ours)
    stderr: bool = True  # cleared by --close-stderr once started
    syslog: bool = True  # --no-syslog clears
    syslog_facility: int = _syslog.LOG_MAIL
    log_file: str | None = None  # may hold %d
    program: str = "emailrelay"
    extra_fields: tuple[str, ...] = field(default_factory=tuple)


class Log:
    """The process-wide logger.  Cheap when a level is off."""

    def __init__(self, config: LogConfig | None = None) -> None:
        self.config = config or LogConfig(syslog=False)
        self._file: TextIO | None = None
        self._file_name: str | None = None
        self._syslog_open = False
        self._threshold = self._compute_threshold()
        self._fields = self._any_field()

    def configure(self, config: LogConfig) -> None:
        self.config = config
        self._threshold = self._compute_threshold()
        self._fields = self._any_field()
        _raw_stderr()
        if self._syslog_open and not config.syslog:
            _syslog.closelog()
            self._syslog_open = False

    def _compute_threshold(self) -> int:
        c = self.config
        if c.debug:
            return DEBUG
        if c.verbose:
            return VERBOSE
        return INFO if c.enabled else WARNING

    def _any_field(self) -> bool:
        """unit, port or msgid: the slower formatting path."""
        c = self.config
        return c.with_unit or c.with_port or c.with_msgid

    def session(self, port: int = 0, *, msgid_in_text: bool = True) -> SessionLog:
        """A log for one connection whose peer has this port (``msgid_in_text``: see SessionLog)."""
        return SessionLog(self, port, msgid_in_text=msgid_in_text)

    def enabled_for(self, level: int) -> bool:
        return level >= self._threshold

    @property
    def verbose_on(self) -> bool:
        return self._threshold <= VERBOSE

    # ---- public API --------------------------------------------------------
    def error(self, text: str, address: str | None = None) -> None:
        self.emit(ERROR, text, address)

    def warning(self, text: str, address: str | None = None) -> None:
        self.emit(WARNING, text, address)

    def info(self, text: str, address: str | None = None) -> None:
        if self._threshold <= INFO:
            self.emit(INFO, text, address)

    def verbose(self, text: str, address: str | None = None) -> None:
        if self._threshold <= VERBOSE:
            self.emit(VERBOSE, text, address)

    def debug(self, text: str, address: str | None = None) -> None:
        if self._threshold <= DEBUG:
            self.emit(DEBUG, text, address)

    def event(self, summary: dict[str, object]) -> None:
        """A structured per-message summary; a JSON line with --log-format=json, else info text."""
        if self.config.json:
            self.emit(INFO, "", None, extra=summary)
        elif self._threshold <= INFO:
            self.emit(INFO, " ".join(f"{k}=[{v}]" for k, v in summary.items()), None)

    def emit(
        self,
        level: int,
        text: str,
        address: str | None,
        extra: dict[str, object] | None = None,
        *,
        port: int = 0,
        msgid: str | None = None,
        msgid_in_text: bool = True,
    ) -> None:
        """One line; ``port`` goes with ``address`` (0: the task's, set_port); ``msgid`` None: the task's."""
        if level < self._threshold:
            return
        c = self.config
        text = printable(text)
        if c.json:
            record: dict[str, object] = {"time": round(time.time(), 3), "level": _WORDS[level]}
            if unit := _UNIT.get():
                record["unit"] = unit
            if address:
                record["address"] = address
                if port := port or _PORT.get():
                    record["port"] = port
            if msgid := _MSGID.get()[0] if msgid is None else msgid:
                record["msgid"] = msgid
            if text:
                record["text"] = text
            if extra:
                record.update(extra)
            import json  # (only for --log-format=json)

            line = json.dumps(record, separators=(",", ":"))
        else:
            parts = [c.program]
            if c.with_time:
                parts.append(_timestamp())
            parts.append(_WORDS[level])
            if self._fields:
                body = self._with_fields(text, address, port, msgid, msgid_in_text)
            else:
                body = f"{address}; {text}" if (address and c.with_address) else text
            line = ": ".join(parts) + ": " + body
            if len(line) >= _SHORT:  # (the common case, short whatever its characters, skips the look)
                line = cut(line, upstream_context(level, text, smtp_server=not msgid_in_text))
        self._write(line)
        if c.syslog:  # the whole line after the ident, program name included, as E-MailRelay 2.6b
            self._syslog(level, line)

    def _with_fields(
        self, text: str, address: str | None, port: int, msgid: str | None, msgid_in_text: bool
    ) -> str:
        """``[<unit>: ][<address>; |<address>;<port>: |<port>: ][(<msgid>) ]<text>`` as E-MailRelay
        2.6b writes them: the port alone (``42868: ``) or after the address (``127.0.0.1;42868: ``);
        the id without ``emailrelay.``, in brackets (``(123.1796623462.1) ``), only where shown."""
        c = self.config
        head = ""
        if c.with_unit and (unit := _UNIT.get()):
            head = unit + ": "
        if address and (c.with_address or c.with_port):
            port = (port or _PORT.get()) if c.with_port else 0
            if c.with_address:
                head += f"{address};{port}: " if port else f"{address}; "
            elif port:
                head += f"{port}: "
        if c.with_msgid:
            if msgid is None:
                msgid, msgid_in_text = _MSGID.get()
            if msgid and msgid_in_text:
                head += f"({msgid.removeprefix('emailrelay.')}) "
        return head + text

    # ---- outputs ---------------------------------------------------------------
    def _write(self, line: str) -> None:
        c = self.config
        stream: TextIO | None = None
        if c.log_file:
            stream = self._open_file()
        elif c.stderr:
            stream = sys.stderr
        if stream is None:
            return
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def _open_file(self) -> TextIO | None:
        assert self.config.log_file is not None
        # %d: the day, %h: the hour (upstream's hourly files, not in the guide)
        name = self.config.log_file.replace("%d", time.strftime("%Y%m%d")).replace("%h", time.strftime("%H"))
        if name != self._file_name:
            if self._file is not None:
                self._file.close()
            try:
                with as_root():  # roles run as --user; the file is root's, as upstream opens it as root
                    self._file = _open_log_file(name)
            except OSError:
                self._file = None
            self._file_name = name
        return self._file

    def check_log_file(self) -> None:
        """``--log-file`` opened at start-up, as upstream opens it: one that cannot be is its start-up
        error (``cannot open log file: <name>``), not a relay that runs and logs nothing."""
        if self.config.log_file and self._open_file() is None:
            raise ConfigError(f"cannot open log file: {self._file_name}")

    def _syslog(self, level: int, text: str) -> None:
        if not self._syslog_open:
            _syslog.openlog(self.config.program, _syslog.LOG_PID, self.config.syslog_facility)
            self._syslog_open = True
        with contextlib.suppress(OSError, ValueError):
            # (raw octets from the command line or a file name: as escapes, not a lost line)
            _syslog.syslog(_SYSLOG_PRIORITY[level], text.encode("utf-8", "backslashreplace").decode())

    def plain(self, text: str) -> None:
        """``emailrelay: <text>``, without a time or a level: E-MailRelay 2.6b's few plain notices
        (``--as-client``'s ``no messages to send``)."""
        self._write(cut(f"{self.config.program}: {printable(text)}"))

    def final(self, text: str, level: int | None = None) -> None:
        """A one-shot run's last line (``--as-client``'s ``no messages to send``, or the error that
        ends it) as E-MailRelay 2.6b writes it: ``emailrelay: [<level>: ]<text>``, without a time, on
        stderr only (not into ``--log-file``; nothing once stderr is closed); an error to syslog too."""
        line = cut(
            f"{self.config.program}: {_WORDS[level]}: {printable(text)}"
            if level
            else f"{self.config.program}: {printable(text)}"
        )
        if self.config.log_file:
            self._open_file()  # made (empty) even so: upstream opens it at start-up
        if self.config.stderr:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
        if level is not None and self.config.syslog:
            self._syslog(level, line)

    def close_stderr(self) -> None:
        """--close-stderr: stop writing to stderr and point fd 2 at /dev/null."""
        self.config.stderr = False
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 2)
            os.close(fd)
        except OSError:
            pass


#: A new log file's mode, whatever the umask, as E-MailRelay 2.6b makes it; an existing one keeps its own.
LOG_FILE_MODE = 0o660


def _open_log_file(name: str) -> TextIO:
    """Open a log file for appending.  Root never writes through what it cannot trust there (the
    directory may be writable by ``--user``, whose filters could plant something): a symlink, FIFO or
    other non-regular file made by another user is unlinked and the log file made instead; root's own
    symlink (an operator's) is followed only in a directory nobody else can change."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if os.getuid() != 0:
        return open(_open_fd(name, flags), "a", encoding="utf-8", errors="surrogateescape")
    for _ in range(3):
        try:
            fd = _open_fd(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO):
                raise
            if exc.errno == errno.ELOOP and trusted_symlink(name):
                return open(_open_fd(name, flags), "a", encoding="utf-8", errors="surrogateescape")
            _unlink_foreign(name, exc)
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            return open(fd, "a", encoding="utf-8", errors="surrogateescape")
        os.close(fd)
        _unlink_foreign(name, OSError(errno.EPERM, f"log file {name} is not a regular file"))
    raise OSError(errno.ELOOP, f"log file {name} keeps being replaced")


def _open_fd(name: str, flags: int) -> int:
    """``os.open(name, flags)`` (``flags`` has ``O_CREAT``); a file it makes gets :data:`LOG_FILE_MODE`
    on its descriptor (owner and group the creator's, as upstream's)."""
    try:
        fd = os.open(name, flags | os.O_EXCL, LOG_FILE_MODE)
    except FileExistsError:  # (a symlink too: opened again without O_EXCL, as the flags say)
        return os.open(name, flags, LOG_FILE_MODE)
    os.fchmod(fd, LOG_FILE_MODE)
    return fd


def trusted_symlink(name: str, uid: int = 0) -> bool:
    """An operator's symlink: ``uid``'s (root's), in a directory of ``uid``'s that nobody else can
    write."""
    parent = os.stat(os.path.dirname(os.path.abspath(name)))
    return os.lstat(name).st_uid == uid and parent.st_uid == uid and not parent.st_mode & 0o022


def _unlink_foreign(name: str, exc: OSError) -> None:
    """Unlink what another user planted under the log file's name; ``exc`` when it is root's."""
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(name).st_uid == 0:
            raise exc
        os.unlink(name)


def _raw_stderr() -> None:
    """Raw octets in a line (surrogate escapes: a client's bytes that are not UTF-8) reach stderr
    as the octets, as they reach a log file (Python's default writes ``\\udcff``)."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stderr.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%d.%H%M%S.", time.localtime(now)) + f"{int(now * 1000) % 1000:03d}"


class SessionLog:
    """One connection's view of the process's :class:`Log`: adds its peer's port and, while
    ``msgid`` is set, the id of the message in hand (None: the task's, see :func:`set_msgid`);
    ``msgid_in_text`` False (an SMTP server session's): only JSON lines carry it."""

    __slots__ = ("log", "msgid", "msgid_in_text", "port")

    def __init__(
        self, log: Log, port: int = 0, msgid: str | None = None, *, msgid_in_text: bool = True
    ) -> None:
        self.log = log
        self.port = port
        self.msgid = msgid
        self.msgid_in_text = msgid_in_text

    @property
    def config(self) -> LogConfig:
        return self.log.config

    @property
    def verbose_on(self) -> bool:
        return self.log.verbose_on

    def enabled_for(self, level: int) -> bool:
        return self.log.enabled_for(level)

    def _emit(self, level: int, text: str, address: str | None) -> None:
        self.log.emit(
            level, text, address, port=self.port, msgid=self.msgid, msgid_in_text=self.msgid_in_text
        )

    def error(self, text: str, address: str | None = None) -> None:
        self._emit(ERROR, text, address)

    def warning(self, text: str, address: str | None = None) -> None:
        self._emit(WARNING, text, address)

    def info(self, text: str, address: str | None = None) -> None:
        if self.log._threshold <= INFO:
            self._emit(INFO, text, address)

    def verbose(self, text: str, address: str | None = None) -> None:
        if self.log._threshold <= VERBOSE:
            self._emit(VERBOSE, text, address)

    def debug(self, text: str, address: str | None = None) -> None:
        if self.log._threshold <= DEBUG:
            self._emit(DEBUG, text, address)

    def event(self, summary: dict[str, object]) -> None:
        self.log.event(summary)

    def session(self, port: int = 0, *, msgid_in_text: bool = True) -> SessionLog:
        return SessionLog(self.log, port, msgid_in_text=msgid_in_text)


#: What a component that logs holds: the process's log or a connection's view of it.
Logger = Log | SessionLog

_LOG = Log()


def get() -> Log:
    return _LOG
