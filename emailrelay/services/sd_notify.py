"""systemd readiness notification and socket activation, without libsystemd.

What it is for: ``Type=notify`` units (deploy/emailrelay.service).  The
relay calls :func:`ready` once every listening socket is bound and the pid
file is written; systemd then starts units ordered after it, and
``systemctl start`` returns.  :func:`listen_fds` reads ``LISTEN_FDS`` /
``LISTEN_PID`` for socket activation (deploy/emailrelay.socket), whose
first socket the relay takes with ``--interface fd#3``.

What it expects: ``NOTIFY_SOCKET`` names a unix datagram socket, a path or
an abstract name (``@...``).  Outside systemd it is unset and every call
here is a no-op returning False.

Guarantees: never raises (a lost notification must not stop the relay:
systemd's start timeout reports it); with ``unset_environment`` the
variables are removed so the supervised roles, which inherit the
environment, do not notify in the relay's name.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def notify(state: str, *, unset_environment: bool = False) -> bool:
    """Send ``state`` (eg. ``"READY=1\\nSTATUS=..."``) to ``$NOTIFY_SOCKET``; True when sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if unset_environment:
        os.environ.pop("NOTIFY_SOCKET", None)
    if not address or not state:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock: and other forms are not used for services like this one
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError:
        return False


def ready(status: str | None = None, *, unset_environment: bool = True) -> bool:
    """``READY=1`` (with ``MAINPID`` and an optional ``STATUS``): call once the sockets are bound."""
    lines = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        lines.append(f"STATUS={status}")
    return notify("\n".join(lines), unset_environment=unset_environment)


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    return notify("RELOADING=1")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def listen_fds(*, unset_environment: bool = True) -> list[int]:
    """Descriptors passed by socket activation (3, 4, ...), or [] when none were passed to us."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        if unset_environment:
            for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
