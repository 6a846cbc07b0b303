"""The log options (``--log``, ``--verbose``, ``--log-format``, ``--syslog``, ...) as a :class:`LogConfig`.

What it is for: the front end (``cli/main.py``) and every supervised role
(``cli/role.py``) configure the log from the same parsed option values; a
module of its own so that a role process does not import the front end's
start-up machinery to do so (issue 20: each role imports only what it uses).
"""

from __future__ import annotations

import os

from .. import log as logmod
from .parse import Value
from .usage_rules import SYSLOG_FACILITIES


def log_config(values: dict[str, Value]) -> logmod.LogConfig:
    # any other word (E-MailRelay 2.6b's "network" too) is ignored silently, as upstream does
    formats = {f.strip() for item in _as_list(values.get("log-format")) for f in item.split(",")} - {""}
    syslog_on = not values.get("no-syslog") or bool(values.get("syslog"))
    log_file = values.get("log-file")
    return logmod.LogConfig(
        enabled=bool(values.get("log")) or bool(values.get("verbose")),
        verbose=bool(values.get("verbose")),
        debug=bool(values.get("debug")),
        with_time=bool(values.get("log-time")) or "time" in formats,
        with_address=bool(values.get("log-address")) or "address" in formats,
        with_unit="unit" in formats,
        with_port="port" in formats,
        with_msgid="msgid" in formats,
        json="json" in formats,
        syslog=syslog_on,
        syslog_facility=_syslog_facility(values.get("syslog")),
        # absolute now: a daemon changes its directory to / (upstream's log file stays where it was)
        log_file=os.path.abspath(log_file) if isinstance(log_file, str) and log_file else None,
    )


def _syslog_facility(value: Value | None) -> int:
    """``--syslog=<facility>`` (one of upstream's names, which parsing checked); the default is ``mail``."""
    import syslog

    if not isinstance(value, str) or value not in SYSLOG_FACILITIES:
        return syslog.LOG_MAIL
    return int(getattr(syslog, "LOG_" + value.upper()))


def _as_list(value: Value | None) -> list[str]:
    if value is None or isinstance(value, bool):
        return []
    return value if isinstance(value, list) else [value]
