"""emailrelay.protocol.addresses -- SMTP path, ESMTP parameter and xtext parsing.

PURPOSE
    Pure functions shared by the SMTP server, the SMTP client and the tools:
    parse the argument of ``MAIL FROM:`` / ``RCPT TO:`` into an address and
    its ESMTP parameters, encode/decode RFC 3461 xtext, and turn an address's
    internationalised domain into A-labels (``to_alabels``).

EXPECTS
    ``str`` input: the command line as decoded by the protocol (UTF-8 when
    the bytes are valid UTF-8, otherwise latin-1), *without* the verb and the
    CRLF.  For ``MAIL FROM:<a@b> SIZE=10`` the argument is
    ``"FROM:<a@b> SIZE=10"``.

GUARANTEES
    * ``parse_mail_from`` / ``parse_rcpt_to`` return ``(address, params)``:
      the address without angle brackets and without any source route
      (``<@a,@b:u@c>`` gives ``u@c``; the route is what comes before the
      first ":", unchecked, as upstream), ``""`` for the null path ``<>`` (MAIL
      only), quoted local parts kept as written (``"a b"@c``); params maps the
      upper-cased keyword to its value (``""`` for a bare keyword).
    * Anything else raises ``PathSyntaxError(code, text)`` carrying the SMTP
      reply to send, in E-MailRelay 2.6b's words: 553 ``mailbox name not
      allowed: <reason>`` for MAIL, 550 ``<reason>`` for RCPT (missing
      ``FROM:``/``TO:``, missing or unbalanced brackets in strict mode,
      anything but a space or the end after the ``>``, C0 control characters,
      NUL, DEL or unquoted spaces in the path, ``TO:<>``, ``invalid source
      route in mailbox name`` for a route without a ":" or nothing after it).  Parameters are
      upstream's lax words: any word after the path, its keyword before the
      first ``=``; none is refused but a second path (a word starting with
      ``<``: ``invalid angle brackets``).  Of a repeated parameter the first counts.
      Which parameters are *known* is the caller's business.  (Upstream also
      takes unquoted spaces and specials in the path; we do not:
      docs/decisions.md, "Addresses with spaces".)
    * Spaces after the colon are tolerated (as upstream); with
      ``strict=False`` ("nostrictparsing") also before it, and a path without
      angle brackets.
    * ``to_alabels`` turns each non-ASCII label of the domain (after the last
      "@", not an address literal) into ``xn--`` plus its Punycode (RFC 3492),
      case kept and no other mapping, and leaves out the empty labels of such
      a domain (a trailing dot), as E-MailRelay 2.6b stores domains; local
      parts are left alone (``domain_to_alabels``: the same for a bare domain).
    * No I/O, no logging, no global state.
"""

from __future__ import annotations

import re

__all__ = [
    "PathSyntaxError",
    "domain_to_alabels",
    "parse_mail_from",
    "parse_path",
    "parse_rcpt_to",
    "to_alabels",
    "xtext_decode",
    "xtext_encode",
    "xtext_normalise",
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

_BRACKETED_RE = re.compile(r"<(" + _MAILBOX + r")?>")  # (a source route is dropped first)
_BARE_RE = re.compile(r"(?:" + _ROUTE + r")?(" + _MAILBOX + r")")
_LOOSE_KEYWORD = {
    "FROM": re.compile(r"\s*FROM\s*:\s*", re.IGNORECASE),
    "TO": re.compile(r"\s*TO\s*:\s*", re.IGNORECASE),
}
_WS = " \t"


def parse_path(text: str, strict: bool = True) -> tuple[str, str]:
    """Parse a leading ``<path>`` (or, when not strict, a bare address) from ``text``.

    Returns ``(address, rest)`` where ``rest`` is the unparsed remainder.  The
    address is ``""`` for ``<>``.  Raises ``PathSyntaxError(501, <reason>)``.
    """
    if text.startswith("<@"):
        text = _drop_source_route(text)
    if text.startswith("<"):
        m = _BRACKETED_RE.match(text)
        if m is None:
            raise PathSyntaxError(501, _ANGLE if ">" not in text else _CHARACTER)
        if text[m.end() : m.end() + 1] not in ("", " "):  # "<a@b>x", "<a@b>>", "<a@b>\t": upstream's words
            raise PathSyntaxError(501, "invalid angle brackets")
        return m.group(1) or "", text[m.end() :]
    if strict:
        raise PathSyntaxError(501, "missing angle brackets in mailbox name" if text else _ANGLE)
    m = _BARE_RE.match(text)
    if m is None:
        raise PathSyntaxError(501, _CHARACTER)
    return m.group(1), text[m.end() :]


def _drop_source_route(text: str) -> str:
    """``<@route:mailbox>...`` as ``<mailbox>...``: as E-MailRelay 2.6b, the route is whatever
    comes before the first ":" (not checked, since it is dropped); none, or nothing after it, is
    ``invalid source route in mailbox name``."""
    close = text.find(">")
    if close < 0:
        return text  # (invalid angle brackets)
    colon = text.find(":", 0, close)
    if colon < 0 or colon + 1 == close:
        raise PathSyntaxError(501, "invalid source route in mailbox name")
    return "<" + text[colon + 1 :]


def _parse_params(rest: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if not rest:
        return params
    if rest[0] not in _WS:
        raise PathSyntaxError(501, _CHARACTER)
    for token in rest.split():
        # as E-MailRelay 2.6b: any word is a parameter, its keyword what comes before the first
        # "=" (the caller uses SIZE, BODY, SMTPUTF8 and AUTH, whose value it xtext-encodes again)
        if token.startswith("<"):  # a second path ("<a@b> <c@d>"): ours refuses what upstream drops
            raise PathSyntaxError(501, "invalid angle brackets")
        keyword, _, value = token.partition("=")
        if keyword:
            params.setdefault(keyword.upper(), value)  # a repeated one: the first counts
    return params


_ANGLE = "invalid angle brackets in mailbox name"
_CHARACTER = "invalid character in mailbox name"


def _parse(arg: str, keyword: str, strict: bool) -> tuple[str, dict[str, str]]:
    command = "invalid mail-from command" if keyword == "FROM" else "invalid rcpt-to command"
    if strict:
        n = len(keyword) + 1
        if arg[:n].upper() != keyword + ":":
            raise PathSyntaxError(501, command)
        rest = arg[n:].lstrip(_WS)
    else:
        m = _LOOSE_KEYWORD[keyword].match(arg)
        if m is None:
            raise PathSyntaxError(501, command)
        rest = arg[m.end() :]
        if not rest.strip(_WS):
            raise PathSyntaxError(501, _ANGLE)
    address, rest = parse_path(rest, strict)
    return address, _parse_params(rest)


def parse_mail_from(arg: str, strict: bool = True) -> tuple[str, dict[str, str]]:
    """Parse ``FROM:<reverse-path> [params]``; ``""`` is returned for ``<>``."""
    try:
        return _parse(arg, "FROM", strict)
    except PathSyntaxError as e:
        raise PathSyntaxError(553, f"mailbox name not allowed: {e.text}") from None


def parse_rcpt_to(arg: str, strict: bool = True) -> tuple[str, dict[str, str]]:
    """Parse ``TO:<forward-path> [params]``; the null path is an error (550)."""
    try:
        address, params = _parse(arg, "TO", strict)
    except PathSyntaxError as e:
        raise PathSyntaxError(550, e.text) from None
    if not address:
        raise PathSyntaxError(550, "invalid empty mailbox")
    return address, params


_XTEXT_SAFE = frozenset(range(0x21, 0x7F)) - {ord("+"), ord("=")}
_XTEXT_DECODE_RE = re.compile(r"\+([0-9A-Fa-f]{2})")
_XTEXT_VALID_RE = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")


def xtext_encode(s: str) -> str:
    """RFC 3461 xtext of the UTF-8 bytes of ``s`` (uppercase hex); octets that are not UTF-8
    (surrogate escapes, as an AUTH name that came so) as they came: ``"\\udcff"`` gives ``+FF``."""
    if s.isascii() and "+" not in s and "=" not in s and s.isprintable() and " " not in s:
        return s
    return "".join(chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in s.encode("utf-8", "surrogateescape"))


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


def to_alabels(address: str) -> str:
    """``address`` with every non-ASCII label of its domain as an A-label (``xn--bcher-kva``)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.startswith("["):
        return address
    return f"{local}@{domain_to_alabels(domain)}"


def domain_to_alabels(domain: str) -> str:
    """``domain`` with every non-ASCII label as an A-label; when there is one, empty labels are
    left out (``b\u00fc..example.`` gives ``xn--b-eha.example``), as E-MailRelay 2.6b converts."""
    if domain.isascii():
        return domain
    labels = [
        label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
        for label in domain.split(".")
        if label
    ]
    return ".".join(labels)


def xtext_normalise(s: str) -> str:
    """``s`` decoded as xtext and encoded again, as E-MailRelay stores a MAIL FROM AUTH= value:
    ``xx+41`` gives ``xxA``; a ``+`` without two hex digits after it stands for a NUL (``+zz``
    gives ``+00``)."""
    raw = bytearray()
    i = 0
    data = s.encode("utf-8", "surrogateescape")
    while i < len(data):
        if data[i] == 0x2B:  # "+"
            pair = data[i + 1 : i + 3]
            if len(pair) == 2 and all(chr(b) in "0123456789abcdefABCDEF" for b in pair):
                raw.append(int(pair, 16))
            else:
                raw.append(0)
            i += 3
        else:
            raw.append(data[i])
            i += 1
    return "".join(chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in raw)
