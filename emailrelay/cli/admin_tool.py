"""``emailrelay admin ADDRESS [COMMAND ...]``: talk to a running relay's admin interface.

What it is for: the operator's way to send one admin command (``status``,
``list``, ``flush``, ``restart forward`` ...) without telnet or netcat,
which a fresh machine may not have. ADDRESS is what ``--admin`` was given:
a port (on 127.0.0.1), ``host:port``, or a unix-socket path. With no
COMMAND it reads commands from stdin, one per line.

Guarantees: prints each reply without the ``E-MailRelay> `` prompt, with
plain newlines; exits 0 when every reply was not an ``error: ...`` line, 1
when one was, 2 when it could not connect or timed out.
"""

from __future__ import annotations

import argparse
import socket
import sys

from ..transport_address import split_transport_address

PROMPT = b"E-MailRelay> "


def _connect(address: str, timeout: float) -> socket.socket:
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    host, port = ("127.0.0.1", int(address)) if address.isdigit() else split_transport_address(address)
    return socket.create_connection((host, port), timeout=timeout)


def _reply(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """The next reply up to the prompt; None when the relay closed the session first."""
    while PROMPT not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    reply, _, rest = bytes(buffer).partition(PROMPT)
    buffer[:] = rest
    return reply


def _show(reply: bytes) -> bool:
    text = reply.replace(b"\r", b"").decode("utf-8", "replace")
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    return not text.startswith("error:")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="emailrelay admin",
        description="Send commands to a running relay's admin interface (--admin) and print the replies, "
        "without telnet or netcat. Exit status 0, 1 when a reply is an error, 2 when it cannot connect.",
        epilog="The relay's 'help' command lists every admin command. Examples: "
        "'emailrelay admin 10026 status', 'emailrelay admin 10026 restart forward', "
        "'echo list | emailrelay admin /run/emailrelay/admin.sock'.",
    )
    p.add_argument("address", help="the --admin port (on 127.0.0.1), host:port or unix-socket path")
    p.add_argument(
        "command", nargs="*", help="one admin command and its words (default: read commands from stdin)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply (default 30)")
    args = p.parse_args(argv)
    commands = (
        [" ".join(args.command)] if args.command else [line.strip() for line in sys.stdin if line.strip()]
    )
    ok = True
    try:
        with _connect(args.address, args.timeout) as sock:
            buffer = bytearray()
            for command in commands:
                sock.sendall(command.encode("utf-8") + b"\r\n")
                reply = _reply(sock, buffer)
                if reply is None:
                    _show(bytes(buffer))
                    break
                ok = _show(reply) and ok
    except (OSError, ValueError) as exc:
        print(f"emailrelay admin: {args.address}: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1
