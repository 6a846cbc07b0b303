"""Filter and verifier specifications: what ``--filter``, ``--client-filter`` and ``--address-verifier`` say.

What it is for: turning an option value into a list of :class:`Spec` (a
comma-separated chain for filters, one item for a verifier), and the small
shared vocabulary of the policy modules: :class:`FilterContext` (the message
a filter is given) and :class:`Filter` (what every filter kind implements).
The policy modules read the frozen :class:`~emailrelay.config.Config`
itself, its derived values (``filter_time_limit``, ``mailbox_base``)
included; they keep no copy of their own.

Forms (reference guide, "Filters", "Built-in filters", "Address verifiers"):

- a program path (absolute, or relative to the start directory), also
  written ``file:<path>`` or ``exe:<path>``;
- ``net:<host:port>`` or ``net:<unix-socket-path>``;
- ``spam:<host:port>``, ``spam-edit:<host:port>``;
- ``exit:<n>``;
- ``copy:[params]``, ``deliver:[params]``, ``split:[raw]``, ``mx:[params]``,
  ``msgid:``; and, for verifiers only, ``account:[params]`` and ``exit:<n>``
  (E-MailRelay 2.6b takes it and verifies nothing: every recipient is remote).

A program path is taken as given, spaces included (``--filter " /x/y "`` is
the relative path ``" /x/y "``, which does not exist: E-MailRelay 2.6b's
reading; the start-up warnings of :func:`startup_warnings` name it).

Built-in parameters are separated by semicolons (``copy:hardlink;nodelete``,
``mx:nst=60;rt=60;127.0.0.1:53``), never commas: a comma always separates
chain items, as in upstream, so a program path cannot hold a comma.  As in
E-MailRelay 2.6b, ``copy:`` ignores parameters it does not know, and
``deliver:`` takes nothing or an unsigned 32-bit number (ignored): anything
else (the guide's ``deliver:hardlink;nodelete``) is upstream's usage error
(:class:`SpecUsageError`). Parameters upstream ignores are ignored:
``msgid:x``, ``account:`` words it does not know; an ``mx:`` parameter it
cannot use is ignored with upstream's warning (:func:`warnings_for`), that
one and the ones after it.

Guarantees: every malformed value is a :class:`SpecError` with a message
naming the item, raised at start-up, never while mail flows.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import OptionUsageError
from ..spool.names import MessageId, State, split_envelope_name
from ..spool.store import SpoolStore
from .verdicts import FilterResult

FILTER_BUILTINS = ("exit", "copy", "deliver", "split", "mx", "msgid")
NETWORK_KINDS = ("net", "spam", "spam-edit")
VERIFIER_BUILTINS = ("account", "exit")


class SpecError(ValueError):
    """A filter or verifier specification cannot be used."""


class SpecUsageError(SpecError, OptionUsageError):
    """A specification E-MailRelay 2.6b refuses as a ``usage error:``, in its words."""

    def __init__(self, text: str) -> None:
        OptionUsageError.__init__(self, text)


@dataclass(frozen=True)
class Spec:
    """One filter or verifier."""

    kind: str  # "exe", "net", "spam", "spam-edit", "exit", "copy", ..., "account"
    value: str  # program path, network address, exit number or the raw parameter text
    params: tuple[str, ...] = ()  # the semicolon-separated parameters of a built-in
    text: str = ""  # as given on the command line

    @property
    def name(self) -> str:
        """The name in log lines, as E-MailRelay 2.6b writes it: a program's base name,
        ``host/port/ip`` for a network filter, ``exit:<n>``, otherwise ``<kind>:``."""
        if self.kind == "exe":
            return os.path.basename(self.value) or self.value
        if self.kind in NETWORK_KINDS:
            host, _, port = self.value.rpartition(":")
            if host and port.isdigit() and not self.value.startswith("/"):
                return f"{host.strip('[]')}/{port}/ip"
            return self.value
        if self.kind == "exit":
            return f"exit:{self.value}"
        return f"{self.kind}:"


@dataclass
class FilterContext:
    """The message a filter runs on."""

    message_id: MessageId | str
    content_path: str
    envelope_path: str
    client: bool = False  # --client-filter (envelope is .busy) rather than --filter (.new)
    log_address: str | None = None
    routing: bool = False  # the client filter run early for a ForwardTo, before connecting
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def log_prefix(self) -> str:
        """How upstream names the filter's side in log lines."""
        if self.routing:
            return "routing-filter"
        return "client-filter" if self.client else "filter"

    @property
    def state(self) -> State:
        parsed = split_envelope_name(os.path.basename(self.envelope_path))
        if parsed is not None:
            return parsed[1]
        return State.BUSY if self.client else State.NEW

    @property
    def mid(self) -> MessageId:
        if isinstance(self.message_id, MessageId):
            return self.message_id
        return MessageId.parse(str(self.message_id))


def store_for(store: SpoolStore, ctx: FilterContext) -> SpoolStore:
    """The store of the directory holding the filter's message (the spool, or a sub-directory)."""
    directory = Path(os.path.abspath(ctx.envelope_path)).parent
    if directory == store.directory:
        return store
    return SpoolStore(directory, fsync=store.fsync, group=store.group, file_mode=store.file_mode)


class Filter(Protocol):
    """What every filter kind implements."""

    name: str

    async def run(self, ctx: FilterContext) -> FilterResult: ...

    async def close(self) -> None: ...


def parse_filters(
    values: str | list[str] | tuple[str, ...] | None, *, client: bool = False, base_dir: str | None = None
) -> list[Spec]:
    """Parse ``--filter`` or ``--client-filter`` values (each possibly a comma-separated chain)."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[Spec] = []
    for item in items:
        for part in item.split(","):
            if part.strip():  # (a program path keeps its spaces, as upstream's: " /x" is relative)
                if part[:5].lower() == "exit:":
                    _check_exit_param(part[5:], client)
                out.append(_parse_one(part, allowed=(*FILTER_BUILTINS, *NETWORK_KINDS), base_dir=base_dir))
                if out[-1].kind == "deliver":
                    _check_deliver_param(part.partition(":")[2], client)
    return out


def _check_exit_param(value: str, client: bool) -> None:
    """``exit:`` takes an unsigned 32-bit number, digits only, refused in E-MailRelay 2.6b's words."""
    what = "invalid client filter specification" if client else "invalid filter specification"
    if not value:
        raise SpecUsageError(f"{what}: numeric value missing")
    if not (value.isascii() and value.isdigit() and int(value) <= 0xFFFFFFFF):
        raise SpecUsageError(f"{what}: invalid numeric value: {value}")


def _check_deliver_param(value: str, client: bool) -> None:
    """``deliver:`` takes nothing or an unsigned 32-bit number, refused as E-MailRelay 2.6b refuses it."""
    if not value or (value.isascii() and value.isdigit() and int(value) <= 0xFFFFFFFF):
        return
    what = "invalid client filter specification" if client else "invalid filter specification"
    if value.isascii() and value.isdigit():
        raise SpecUsageError(f"{what}: string conversion error: over/underflow: {value}")
    shown = "" if value.startswith("-") else f": {value}"  # upstream's words, its value left out after a "-"
    raise SpecUsageError(f"{what}: string conversion error: invalid format: expected unsigned integer{shown}")


def parse_verifier(value: str | None, *, base_dir: str | None = None) -> Spec | None:
    """Parse ``--address-verifier`` (one item: a program, ``net:``, ``account:`` or ``exit:<n>``)."""
    if value is None or not value.strip():
        return None
    if "," in value:
        raise SpecError(f"--address-verifier: only one verifier can be given: [{value}]")
    if value[:5].lower() == "exit:" and value[:5] != "exit:":  # upstream's "EXIT:2" is a program
        return _program(value, value, base_dir, "address verifier")
    if value[:5] == "exit:" and not (
        value[5:].isascii() and value[5:].isdigit() and int(value[5:]) <= _INT_MAX
    ):
        raise SpecUsageError(f"invalid verifier specification: not a numeric exit code: {value[5:]}")
    return _parse_one(value, allowed=("net", *VERIFIER_BUILTINS), base_dir=base_dir, what="address verifier")


_INT_MAX = 2**31 - 1


def _parse_one(text: str, *, allowed: tuple[str, ...], base_dir: str | None, what: str = "filter") -> Spec:
    prefix, colon, rest = text.partition(":")
    kind = prefix.lower() if colon else ""  # (the POP section's "delivery:" is a program, as upstream's)
    if kind in ("file", "exe"):
        return _program(rest, text, base_dir, what)
    if kind in allowed:
        return _builtin(kind, rest, text, what)
    if kind in (*FILTER_BUILTINS, *NETWORK_KINDS, *VERIFIER_BUILTINS) and what != "filter":
        raise SpecError(f"{what} [{text}]: {kind}: cannot be used here")
    # for a filter anything else, the verifier's "account:" included (the guide's "in-filter
    # account:"), is a program path, as E-MailRelay 2.6b takes it: a missing one is warned about
    return _program(text, text, base_dir, what)


def _program(path: str, text: str, base_dir: str | None, what: str) -> Spec:
    if not path.strip():
        raise SpecError(f"{what} [{text}]: no program given")
    if "\0" in path:
        raise SpecError(f"{what} [{text}]: invalid program path")
    if not os.path.isabs(path):
        path = os.path.normpath(os.path.join(base_dir or os.getcwd(), path))
    return Spec("exe", path, (), text)


def _builtin(kind: str, rest: str, text: str, what: str) -> Spec:
    rest = rest.strip()
    if kind in NETWORK_KINDS:
        if not rest:
            raise SpecError(f"{what} [{text}]: no network address given")
        return Spec(kind, rest, (), text)
    if kind == "exit":  # (its number checked by parse_filters: _check_exit_param; over 255 it is
        return Spec(kind, str(int(rest)), (), text)  # no filter's exit code: a rejection)
    params = tuple(p.strip() for p in rest.split(";") if p.strip())
    if kind == "account":
        _check_account_params(params)
    return Spec(kind, rest, params, text)


def _check_account_params(params: tuple[str, ...]) -> None:
    """A user-id range ``<low>-<high>`` upside down is upstream's usage error; words it does not
    know, ``a-b`` included, are ignored (by :class:`~emailrelay.policy.account.AccountVerifier`)."""
    for p in params:
        found = user_id_range(p)
        if found is not None and found[0] > found[1]:
            raise SpecUsageError("invalid verifier specification: not a valid numeric range")


def user_id_range(param: str) -> tuple[int, int] | None:
    """``account:``'s ``<low>-<high>`` parameter, or None for another word."""
    low, dash, high = param.partition("-")
    if dash and low.isascii() and low.isdigit() and high.isascii() and high.isdigit():
        return int(low), int(high)
    return None


def mx_params(params: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """``mx:``'s parameters as E-MailRelay 2.6b takes them: (the usable ones, the first it cannot use).

    Usable: ``nst=<n>`` and ``rt=<n>`` (lower-case names, an unsigned number of seconds; ours also
    takes a decimal fraction) and a DNS server, an IP address with an optional ``:port`` (IPv6:
    ``.port``); the first other parameter is ignored, with those after it, and warned about."""
    for i, p in enumerate(params):
        if not _mx_param_ok(p):
            return params[:i], p
    return params, None


def _mx_param_ok(p: str) -> bool:
    key, eq, value = p.partition("=")
    if eq:
        number = value.replace(".", "", 1)
        return key in ("nst", "rt") and number.isascii() and number.isdigit()
    if _is_ip(p):
        return True
    host, sep, port = p.rpartition(":" if p.count(":") == 1 else ".")
    return bool(sep) and _is_ip(host) and port.isascii() and port.isdigit() and int(port) <= 65535


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# msgid: ignores its parameters, account: words it does not know, and mx: warns about one it cannot
# use (mx_params), as upstream; split: takes "raw" and a port number and copy: "hardlink", "pop" and
# "nodelete", and both ignore anything else, as upstream; deliver:'s number is checked by
# parse_filters (_check_deliver_param)


def warnings_for(specs: list[Spec]) -> list[str]:
    """Warnings when a filter chain is built (logged by each role that builds one): E-MailRelay
    2.6b's ``invalid mx filter configuration: ignoring [<parameter>]``."""
    out = []
    for spec in specs:
        if spec.kind == "mx" and (bad := mx_params(spec.params)[1]) is not None:
            out.append(f"invalid mx filter configuration: ignoring [{bad}]")
    return out


def startup_warnings(filters: list[Spec], client_filters: list[Spec], verifier: Spec | None) -> list[str]:
    """E-MailRelay 2.6b's start-up warnings about programs, in its order (filters, client filters,
    the verifier): ``filter program does not exist: <path>`` (``verifier program ...``), and
    ``invalid program: <path>`` for a directory. Such a filter still runs, and fails each message."""
    out = []
    for what, spec in [*(("filter", f) for f in [*filters, *client_filters]), ("verifier", verifier)]:
        if spec is None or spec.kind != "exe":
            continue
        if not os.path.exists(spec.value):
            out.append(f"{what} program does not exist: {spec.value}")
        elif os.path.isdir(spec.value):
            out.append(f"invalid program: {spec.value}")
    return out
