"""Logging in upstream E-MailRelay's line format (SPEC.md §2).

What it is for: every process of the relay logs through :func:`get` so the
lines look exactly like upstream's:
``emailrelay: [<time>: ]<level>: [<address>; ]<text>`` on stderr (or
``--log-file``, with ``%d`` expanded daily) and to syslog (LOG_MAIL, ident
``emailrelay``) unless ``--no-syslog``.

Levels: ``error``, ``warning``, ``info`` (upstream's summary logging, on
with ``--log``), verbose info (protocol tracing, on with ``--verbose``,
printed as ``info``) and ``debug`` (``--debug``).

Guarantees: a fatal startup error logged with :meth:`Log.error` is written
and flushed before the caller exits, in the ``^emailrelay: [0-9.]*: error:``
form scripts grep for; log text is made printable so a hostile peer cannot
forge log lines with CR/LF.
"""

from __future__ import annotations

import json
import os
import sys
import syslog as _syslog
import time
from dataclasses import dataclass, field
from typing import TextIO

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


def printable(text: str) -> str:
    """Escape control characters so one log call is one log line."""
    return text.translate(_UNPRINTABLE) if any(ord(c) < 32 or ord(c) == 127 for c in text) else text


@dataclass
class LogConfig:
    enabled: bool = True  # --log (or implied by --as-*)
    verbose: bool = False
    debug: bool = False
    with_time: bool = False  # --log-time / --log-format=time
    with_address: bool = False  # --log-address / --log-format=address
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

    def configure(self, config: LogConfig) -> None:
        self.config = config
        self._threshold = self._compute_threshold()
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
        self, level: int, text: str, address: str | None, extra: dict[str, object] | None = None
    ) -> None:
        if level < self._threshold:
            return
        c = self.config
        text = printable(text)
        if c.json:
            record: dict[str, object] = {"time": round(time.time(), 3), "level": _WORDS[level]}
            if address:
                record["address"] = address
            if text:
                record["text"] = text
            if extra:
                record.update(extra)
            line = json.dumps(record, separators=(",", ":"))
        else:
            parts = [c.program]
            if c.with_time:
                parts.append(_timestamp())
            parts.append(_WORDS[level])
            body = f"{address}; {text}" if (address and c.with_address) else text
            line = ": ".join(parts) + ": " + body
        self._write(line)
        if c.syslog:
            self._syslog(level, line.split(": ", 1)[1] if not c.json else line)

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
        name = self.config.log_file.replace("%d", time.strftime("%Y%m%d"))
        if name != self._file_name:
            if self._file is not None:
                self._file.close()
            try:
                self._file = open(name, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            except OSError:
                self._file = None
            self._file_name = name
        return self._file

    def _syslog(self, level: int, text: str) -> None:
        if not self._syslog_open:
            _syslog.openlog(self.config.program, _syslog.LOG_PID, self.config.syslog_facility)
            self._syslog_open = True
        try:
            _syslog.syslog(_SYSLOG_PRIORITY[level], text)
        except (OSError, ValueError):
            pass

    def close_stderr(self) -> None:
        """--close-stderr: stop writing to stderr and point fd 2 at /dev/null."""
        self.config.stderr = False
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 2)
            os.close(fd)
        except OSError:
            pass


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%d.%H%M%S.", time.localtime(now)) + f"{int(now * 1000) % 1000:03d}"


_LOG = Log()


def get() -> Log:
    return _LOG
