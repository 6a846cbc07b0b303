"""What a test client says on a plain connection before its TLS handshake.

What it is for: tests that handshake after STARTTLS (SMTP) or STLS (POP) on a raw socket; each
preface reads the greeting, asks for TLS and reads the go-ahead, leaving the socket ready for
``ssl.SSLContext.wrap_socket``.  It does not check the replies: the handshake that follows does.
"""

from __future__ import annotations

import socket

from tests.support.oracle import read_reply


def smtp_starttls(sock: socket.socket) -> None:
    """Greeting, ``EHLO c.example``, ``STARTTLS``: each reply read."""
    reader = sock.makefile("rb")
    read_reply(reader)
    for line in ("EHLO c.example", "STARTTLS"):
        sock.sendall(line.encode() + b"\r\n")
        read_reply(reader)


def pop_stls(sock: socket.socket) -> None:
    """Greeting, ``STLS``: each reply read."""
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"STLS\r\n")
    reader.readline()
