"""The admin's ``smtp disable``, kept for role processes started after it (supervised relays).

What it is for: ``smtp disable`` and ``smtp enable`` travel on the bus, which
reaches only the processes subscribed at that moment.  An smtp role that
circus restarts later (a crash, an admin or ``circusctl`` restart) would come
back enabled, and a metrics role would report it healthy.  So the admin role
also records the state in a tool file of the spool, which a new smtp or
metrics process reads when it starts.

Guarantees: the record names the process that runs the roles (our
supervisor, or circusd): it holds for this relay only, so a new relay on the
same spool starts enabled, as E-MailRelay 2.6b does after a restart.  The
record is written before the command is published, so a process that
subscribed too late for the command still finds it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the notify role, which imports this, has no store
    from ..spool.store import SpoolStore

SMTP_DISABLED = "smtp-disabled"  # the spool's tool file (a dot-file: never a message)


def remember_smtp_disabled(store: SpoolStore, disabled: bool) -> None:
    """The admin's ``smtp disable`` (or ``enable``), kept for smtp processes started after it went
    by on the bus. It holds for this relay only: it names the process that runs the roles (the
    supervisor, or circusd), so a new relay on the same spool starts enabled, as upstream."""
    if disabled:
        store.write_tool_file(SMTP_DISABLED, f"{os.getppid()}\n".encode())
    else:
        store.remove_tool_file(SMTP_DISABLED)


def smtp_disabled_by_admin(store: SpoolStore) -> bool:
    """Whether this relay's admin disabled smtp (see :func:`remember_smtp_disabled`)."""
    try:
        data = store.read_tool_file(SMTP_DISABLED)
    except OSError:
        return False
    return data is not None and data.strip() == str(os.getppid()).encode()
