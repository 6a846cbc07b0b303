"""The octets of a line a server sends: text that came from a peer or a program as octets that
are not UTF-8 (decoded with ``surrogateescape``) goes back as those octets, as E-MailRelay 2.6b
sends them. Never raises: a surrogate no octet made becomes ``?``."""

from __future__ import annotations


def encode_line(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # (a surrogate that no octet made: never from a peer's or program's octets)
        return text.encode("utf-8", "replace")
