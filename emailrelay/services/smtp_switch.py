"""The admin's ``smtp disable`` and ``dnsbl stop``, kept for role processes started after them
(supervised relays).

What it is for: ``smtp disable``/``enable`` and ``dnsbl stop``/``start``
travel on the bus, which reaches only the processes subscribed at that moment.
An smtp role that circus restarts later (a crash, an admin or ``circusctl``
restart), or one whose subscription was still joining the bus, would come back
enabled, or checking the DNSBL again, and a metrics role would report it
healthy.  So the admin role also records the state in a tool file of the
spool, which a new smtp or metrics process reads when it starts (and once more
when its subscription has settled).

Guarantees: the record names the process that runs the roles (our
supervisor, or circusd): it holds for this relay only, so a new relay on the
same spool starts enabled, as E-MailRelay 2.6b does after a restart.  The
record is written before the command is published, so a process that
subscribed too late for the command still finds it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the notify role, which imports this, has no store
    from ..spool.store import SpoolStore

SMTP_DISABLED = "smtp-disabled"  # the spool's tool file (a dot-file: never a message)
DNSBL_OFF = "dnsbl-off"  # "<pid> <until>": no DNSBL checks before that wall-clock time


def remember_smtp_disabled(store: SpoolStore, disabled: bool) -> None:
    """The admin's ``smtp disable`` (or ``enable``), kept for smtp processes started after it went
    by on the bus. It holds for this relay only: it names the process that runs the roles (the
    supervisor, or circusd), so a new relay on the same spool starts enabled, as upstream."""
    _keep(store, SMTP_DISABLED, "" if disabled else None)


def smtp_disabled_by_admin(store: SpoolStore) -> bool:
    """Whether this relay's admin disabled smtp (see :func:`remember_smtp_disabled`)."""
    return _this_relays(store, SMTP_DISABLED) is not None


def remember_dnsbl_off(store: SpoolStore, seconds: int) -> None:
    """The admin's ``dnsbl stop [N]`` (``seconds`` > 0) or ``dnsbl start`` (0), kept for smtp
    processes started after it went by on the bus, for this relay only (as
    :func:`remember_smtp_disabled`)."""
    _keep(store, DNSBL_OFF, f"{time.time() + seconds:.3f}" if seconds > 0 else None)


def dnsbl_off_for(store: SpoolStore) -> float:
    """Seconds left of this relay's admin ``dnsbl stop`` (0: checking, see :func:`remember_dnsbl_off`)."""
    until = _this_relays(store, DNSBL_OFF)
    try:
        return max(0.0, float(until or 0) - time.time())
    except ValueError:
        return 0.0


def _keep(store: SpoolStore, name: str, value: str | None) -> None:
    """Record ``value`` for this relay (after the pid of the process that runs the roles), or remove
    the record (None)."""
    if value is None:
        store.remove_tool_file(name)
    else:
        store.write_tool_file(name, f"{os.getppid()} {value}".strip().encode() + b"\n")


def _this_relays(store: SpoolStore, name: str) -> str | None:
    """The value of the record ``name`` when it is this relay's (else None: none, or another's)."""
    try:
        data = store.read_tool_file(name)
    except OSError:
        return None
    if data is None:
        return None
    pid, _, value = data.decode("ascii", "replace").strip().partition(" ")
    return value if pid == str(os.getppid()) else None
