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
  ``msgid:``; and, for verifiers only, ``account:[params]``.

Built-in parameters are separated by semicolons (``copy:hardlink;nodelete``,
``mx:nst=60;rt=60;127.0.0.1:53``), never commas: a comma always separates
chain items, as in upstream, so a program path cannot hold a comma.  As in
E-MailRelay 2.6b, ``copy:`` ignores parameters it does not know, and
``deliver:`` takes nothing or an unsigned 32-bit number (ignored): anything
else (the guide's ``deliver:hardlink;nodelete``) is upstream's usage error
(:class:`SpecUsageError`).

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
VERIFIER_BUILTINS = ("account",)


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
            if part.strip():
                if part.strip()[:5].lower() == "exit:":
                    _check_exit_param(part.strip()[5:], client)
                out.append(
                    _parse_one(part.strip(), allowed=(*FILTER_BUILTINS, *NETWORK_KINDS), base_dir=base_dir)
                )
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
    """Parse ``--address-verifier`` (one item: a program, ``net:`` or ``account:``)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if "," in value:
        raise SpecError(f"--address-verifier: only one verifier can be given: [{value}]")
    return _parse_one(value, allowed=("net", *VERIFIER_BUILTINS), base_dir=base_dir, what="address verifier")


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
    path = path.strip()
    if not path:
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
    known = _KNOWN_PARAMS.get(kind)
    if known is not None:
        for p in params:
            if p.lower() not in known:
                raise SpecError(f"{what} [{text}]: unknown parameter [{p}]")
    elif kind == "mx":
        _check_mx_params(params, text, what)
    elif kind == "account":
        _check_account_params(params, text, what)
    return Spec(kind, rest, params, text)


def _check_mx_params(params: tuple[str, ...], text: str, what: str) -> None:
    """``nst=<s>``, ``rt=<s>`` and at most one DNS server ``ip[:port]``."""
    servers = 0
    for p in params:
        key, eq, value = p.partition("=")
        if eq:
            if key.lower() not in ("nst", "rt"):
                raise SpecError(f"{what} [{text}]: unknown parameter [{p}]")
            try:
                if float(value) <= 0:
                    raise ValueError
            except ValueError:
                raise SpecError(f"{what} [{text}]: invalid number in [{p}]") from None
            continue
        servers += 1
        host, port = p, "53"
        if p.startswith("["):
            host, _, tail = p[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else "53"
        elif p.count(":") == 1:
            host, _, port = p.partition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise SpecError(f"{what} [{text}]: the DNS server must be an IP address: [{p}]") from None
        if not port.isdigit() or not 0 < int(port) <= 65535 or servers > 1:
            raise SpecError(f"{what} [{text}]: invalid DNS server [{p}]")


def _check_account_params(params: tuple[str, ...], text: str, what: str) -> None:
    """A user-id range ``<low>-<high>`` and the keywords ``lowercase``, ``check``, ``remote``."""
    for p in params:
        if p.lower() in ("lowercase", "check", "remote"):
            continue
        low, dash, high = p.partition("-")
        if not (dash and low.isdigit() and high.isdigit() and int(low) <= int(high)):
            raise SpecError(f"{what} [{text}]: unknown parameter [{p}]")


_KNOWN_PARAMS: dict[str, frozenset[str]] = {
    "msgid": frozenset(),
    # mx: and account: have free-form parameters, checked by their modules; split: takes "raw" and a
    # port number and copy: "hardlink", "pop" and "nodelete", and both ignore anything else, as
    # upstream; deliver:'s number is checked by parse_filters (_check_deliver_param)
}


def warnings_for(specs: list[Spec]) -> list[str]:
    """Warnings when a filter chain is built: none (E-MailRelay 2.6b's start-up warning about a
    program that does not exist is logged once, by cli/main.py; such a program, or one that is not
    executable, fails each message with ``filter exec error: ...``)."""
    return []
