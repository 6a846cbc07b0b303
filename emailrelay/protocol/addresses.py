"""emailrelay.protocol.addresses -- SMTP path, ESMTP parameter and xtext parsing.

PURPOSE
    Pure functions shared by the SMTP server, the SMTP client and the tools:
    parse the argument of ``MAIL FROM:`` / ``RCPT TO:`` into an address and
    its ESMTP parameters, and encode/decode RFC 3461 xtext.

EXPECTS
    ``str`` input: the command line as decoded by the protocol (UTF-8 when
    the bytes are valid UTF-8, otherwise latin-1), *without* the verb and the
    CRLF.  For ``MAIL FROM:<a@b> SIZE=10`` the argument is
    ``"FROM:<a@b> SIZE=10"``.

GUARANTEES
    * ``parse_mail_from`` / ``parse_rcpt_to`` return ``(address, params)``:
      the address without angle brackets and without any source route
      (``<@a,@b:u@c>`` gives ``u@c``), ``""`` for the null path ``<>`` (MAIL
      only), quoted local parts kept as written (``"a b"@c``); params maps the
      upper-cased keyword to its value (``""`` for a bare keyword).
    * Anything else raises ``PathSyntaxError(code, text)`` carrying the SMTP
      reply to send: 501 for syntax errors (missing ``FROM:``/``TO:``,
      unbalanced or missing brackets in strict mode, C0 control characters,
      NUL, DEL or unquoted spaces in the path, bad parameter syntax, duplicate
      parameters).  Which parameters are *known* is the caller's business.
    * With ``strict=False`` ("nostrictparsing") spaces around the colon and
      a path without angle brackets are tolerated.
    * No I/O, no logging, no global state.
"""

from __future__ import annotations

import re

__all__ = [
    "PathSyntaxError",
    "parse_mail_from",
    "parse_path",
    "parse_rcpt_to",
    "xtext_decode",
    "xtext_encode",
]


class PathSyntaxError(ValueError):
    """A MAIL/RCPT argument that cannot be accepted; ``code``/``text`` form the reply."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


# Characters never allowed unquoted in a path: C0 controls, space, DEL and the
# RFC 5322 specials.  Non-ASCII characters are allowed (SMTPUTF8 policy is the
# protocol's decision).
_ATOM = r"[^\x00-\x20\x7f()<>\[\]\\,;:@\"]+"
_QUOTED = r"\"(?:[^\"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*\""
_DOMAIN = r"(?:\[[^\[\]\\\x00-\x20\x7f]+\]|" + _ATOM + r")"
_MAILBOX = r"(?:" + _ATOM + r"|" + _QUOTED + r")(?:@" + _DOMAIN + r")?"
_ROUTE = r"@" + _DOMAIN + r"(?:,@" + _DOMAIN + r")*:"

_BRACKETED_RE = re.compile(r"<(?:" + _ROUTE + r")?(" + _MAILBOX + r")?>")
_BARE_RE = re.compile(r"(?:" + _ROUTE + r")?(" + _MAILBOX + r")")
_PARAM_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([^\x00-\x20\x7f=]+))?")
_LOOSE_KEYWORD = {
    "FROM": re.compile(r"\s*FROM\s*:\s*", re.IGNORECASE),
    "TO": re.compile(r"\s*TO\s*:\s*", re.IGNORECASE),
}
_WS = " \t"


def parse_path(text: str, strict: bool = True) -> tuple[str, str]:
    """Parse a leading ``<path>`` (or, when not strict, a bare address) from ``text``.

    Returns ``(address, rest)`` where ``rest`` is the unparsed remainder.  The
    address is ``""`` for ``<>``.  Raises ``PathSyntaxError(501, ...)``.
    """
    if text.startswith("<"):
        m = _BRACKETED_RE.match(text)
        if m is None:
            raise PathSyntaxError(501, "5.1.7 invalid address syntax")
        if m.group(1) is None and m.end() != 2:  # "<@route:>"
            raise PathSyntaxError(501, "5.1.7 invalid address syntax")
        return m.group(1) or "", text[m.end() :]
    if strict:
        raise PathSyntaxError(501, "5.1.7 address must be in angle brackets")
    m = _BARE_RE.match(text)
    if m is None:
        raise PathSyntaxError(501, "5.1.7 invalid address syntax")
    return m.group(1), text[m.end() :]


def _parse_params(rest: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if not rest:
        return params
    if rest[0] not in _WS:
        raise PathSyntaxError(501, "5.1.7 invalid address syntax")
    for token in rest.split():
        m = _PARAM_RE.fullmatch(token)
        if m is None:
            raise PathSyntaxError(501, "5.5.4 invalid parameter syntax")
        key = m.group(1).upper()
        if key in params:
            raise PathSyntaxError(501, f"5.5.4 duplicate parameter {key}")
        params[key] = m.group(2) or ""
    return params


def _parse(arg: str, keyword: str, strict: bool) -> tuple[str, dict[str, str]]:
    if strict:
        n = len(keyword) + 1
        if arg[:n].upper() != keyword + ":":
            raise PathSyntaxError(501, f"5.5.2 syntax error: expecting {keyword}:<address>")
        rest = arg[n:]
    else:
        m = _LOOSE_KEYWORD[keyword].match(arg)
        if m is None:
            raise PathSyntaxError(501, f"5.5.2 syntax error: expecting {keyword}:<address>")
        rest = arg[m.end() :]
        if not rest.strip(_WS):
            raise PathSyntaxError(501, "5.1.7 missing address")
    address, rest = parse_path(rest, strict)
    return address, _parse_params(rest)


def parse_mail_from(arg: str, strict: bool = True) -> tuple[str, dict[str, str]]:
    """Parse ``FROM:<reverse-path> [params]``; ``""`` is returned for ``<>``."""
    return _parse(arg, "FROM", strict)


def parse_rcpt_to(arg: str, strict: bool = True) -> tuple[str, dict[str, str]]:
    """Parse ``TO:<forward-path> [params]``; the null path is a 501 error."""
    try:
        address, params = _parse(arg, "TO", strict)
    except PathSyntaxError as e:
        raise PathSyntaxError(e.code, e.text.replace("5.1.7", "5.1.3")) from None
    if not address:
        raise PathSyntaxError(501, "5.1.3 invalid address syntax")
    return address, params


_XTEXT_SAFE = frozenset(range(0x21, 0x7F)) - {ord("+"), ord("=")}
_XTEXT_DECODE_RE = re.compile(r"\+([0-9A-Fa-f]{2})")
_XTEXT_VALID_RE = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")


def xtext_encode(s: str) -> str:
    """RFC 3461 xtext of the UTF-8 bytes of ``s`` (uppercase hex)."""
    if s.isascii() and "+" not in s and "=" not in s and s.isprintable() and " " not in s:
        return s
    return "".join(chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in s.encode("utf-8"))


def xtext_decode(s: str) -> str:
    """Inverse of ``xtext_encode``; tolerates lowercase hex; ``ValueError`` on bad input.

    The decoded octets are returned as UTF-8 when valid, otherwise as latin-1.
    """
    if _XTEXT_VALID_RE.fullmatch(s) is None:
        raise ValueError(f"invalid xtext: {s!r}")
    if "+" not in s:
        return s
    raw = _XTEXT_DECODE_RE.sub(lambda m: chr(int(m.group(1), 16)), s).encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
