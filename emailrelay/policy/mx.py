"""``mx:``: resolve the envelope's ``ForwardTo`` domain into ``ForwardToAddress``.

What it is for (reference guide, "mx:", "Routing"): with
``--filter=split: --client-filter=mx:`` every message carries its
recipients' domain in ``ForwardTo``; just before forwarding this filter looks
up the domain's MX records and writes the best mail exchanger's address, as
``ip:port`` (upstream's ``ipv6.port`` for IPv6), into ``ForwardToAddress``,
where the forwarder takes its next hop from.

Parameters (semicolon-separated): the DNS server as ``ip`` or ``ip:port``
(``ipv6.port``; default: the system's resolver configuration), ``nst=<s>``
the time to wait for one name server, ``rt=<s>`` the time for the whole
lookup. One E-MailRelay 2.6b cannot use is ignored with its warning, and the
ones after it too (:func:`emailrelay.policy.spec.mx_params`).

What it guarantees: ``ForwardTo`` may carry a ``:port`` (default 25) and may
be an IP address (used as it is); the lowest-preference MX host with an A
(then AAAA) record wins; a domain without MX records falls back to its own
address records (RFC 5321 5.1); a null MX (``.``) or a domain that does not
exist is a REJECT (the message fails); a DNS time-out or server failure is an
ERROR (temporary: forwarding retries later); an answer of ``0.0.0.0`` (or ``::``) clears
``ForwardToAddress`` so the message goes to ``--forward-to``.  No empty
``ForwardTo``: nothing happens.  The envelope is read as ``deliver:`` and
``copy:`` read it (:func:`~emailrelay.spool.delivery.read_envelope`: as root,
never through a symlink) and rewritten in place
(:meth:`SpoolStore.rewrite_envelope_in_place`) so a forwarder's lock on a
``.busy`` claim survives; the forwarder re-reads the envelope afterwards.
The lookups are asynchronous (dnspython's asyncio resolver).
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace
from typing import Any

from .. import log as logmod
from ..config import Config
from ..spool.delivery import read_envelope
from ..spool.store import SpoolStore
from .exe import clean_text
from .net import parse_endpoint
from .spec import FilterContext, Spec, SpecError, mx_params, store_for
from .verdicts import FilterOutcome, FilterResult

DEFAULT_PORT = 25


class MxLookupError(Exception):
    def __init__(self, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


def format_hop(ip: str, port: int) -> str:
    return f"{ip}.{port}" if ":" in ip else f"{ip}:{port}"


def split_forward_to(text: str) -> tuple[str, int]:
    """``example.com``, ``example.com:2525``, ``1.2.3.4:25``, ``[::1]:25`` -> (host, port)."""
    text = text.strip()
    if text.startswith("[") or text.count(":") == 1:
        ep = parse_endpoint(text, DEFAULT_PORT)
        return ep.host, ep.port
    return text.rstrip("."), DEFAULT_PORT


def _server_address(text: str) -> tuple[str, int]:
    """A DNS server parameter (``ip``, ``ipv4:port``, ``ipv6.port``): (ip, port; 53 for none or 0)."""
    try:
        ipaddress.ip_address(text)
        return text, 53
    except ValueError:
        host, _, port = text.rpartition(":" if text.count(":") == 1 else ".")
        return host, int(port) or 53


class MxResolver:
    """MX, then A/AAAA lookups with dnspython's asyncio resolver."""

    def __init__(self, params: tuple[str, ...]) -> None:
        try:
            import dns.asyncresolver
            import dns.resolver
        except ImportError:  # pragma: no cover - dnspython is a dependency
            raise SpecError("mx: needs the dnspython package") from None
        nst: float | None = None
        rt: float | None = None
        server: str | None = None
        for p in mx_params(params)[0]:  # (the first one upstream cannot use, and those after it, ignored)
            key, eq, value = p.partition("=")
            if eq:
                number = float(value) or None  # 0: the default
                if key == "nst":
                    nst = number
                else:
                    rt = number
            elif server is None:  # (a second server is ignored)
                server = p
        if server is not None:
            host, port = _server_address(server)
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = port
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1"]
        if nst is not None:
            resolver.timeout = nst
        if rt is not None:
            resolver.lifetime = rt
        self.resolver: Any = resolver
        self.server = server

    async def lookup(self, domain: str) -> str:
        """The address of the best mail exchanger for ``domain``."""
        import dns.exception
        import dns.rdatatype
        import dns.resolver

        try:
            answer = await self.resolver.resolve(domain, "MX", raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            raise MxLookupError(f"no such domain: {domain}", True) from None
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise MxLookupError(f"dns timeout looking up {domain}", False) from None
        except dns.resolver.NoNameservers as exc:
            raise MxLookupError(f"dns failure looking up {domain}: {exc}", False) from None
        except dns.exception.DNSException as exc:
            raise MxLookupError(f"dns error looking up {domain}: {exc}", False) from None
        records = sorted(
            (r for r in (answer.rrset or []) if r.rdtype == dns.rdatatype.MX), key=lambda r: r.preference
        )
        if not records:
            return await self._address(domain, answer, implicit=True)
        if len(records) == 1 and records[0].exchange.to_text() == ".":
            raise MxLookupError(f"domain does not accept mail (null MX): {domain}", True)
        last: MxLookupError | None = None
        for record in records:
            host = record.exchange.to_text().rstrip(".")
            if not host:
                continue
            try:
                return await self._address(host, answer)
            except MxLookupError as exc:
                last = exc
        raise last or MxLookupError(f"no usable mail exchanger for {domain}", True)

    async def _address(self, host: str, mx_answer: Any, *, implicit: bool = False) -> str:
        import dns.exception
        import dns.rdatatype
        import dns.resolver

        with_glue = _glue(mx_answer, host)
        if with_glue:
            return with_glue
        failure: MxLookupError | None = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype, raise_on_no_answer=False, search=False)
            except dns.resolver.NXDOMAIN:
                raise MxLookupError(f"no such host: {host}", True) from None
            except dns.exception.DNSException as exc:
                failure = MxLookupError(f"dns failure looking up {host}: {exc}", False)
                continue
            for r in answer.rrset or []:
                if r.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    return str(r.address)
        if failure is not None:
            raise failure
        raise MxLookupError(f"no address for {'domain' if implicit else 'mail exchanger'} {host}", True)


def _glue(answer: Any, host: str) -> str | None:
    """An A/AAAA record for ``host`` in the additional section of the MX answer."""
    try:
        additional = answer.response.additional
    except AttributeError:
        return None
    import dns.rdatatype

    wanted = host.rstrip(".").lower()
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        for rrset in additional:
            if rrset.rdtype == rdtype and rrset.name.to_text().rstrip(".").lower() == wanted:
                for r in rrset:
                    return str(r.address)
    return None


class MxFilter:
    def __init__(self, spec: Spec, config: Config, store: SpoolStore) -> None:
        self.spec = spec
        self.name = spec.name
        self.resolver = MxResolver(spec.params)
        self.config = config
        self.store = store
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        store = store_for(self.store, ctx)
        try:
            env = await asyncio.to_thread(read_envelope, store, ctx.mid, ctx.state)
        except OSError as exc:  # DeliveryError: "cannot read envelope file: <path>: <reason>"
            self.log.warning(f"filter [{self.name}] failed: {exc}")
            return FilterResult(FilterOutcome.ERROR, "filter error", None, f"mx: {exc}")
        if not env.forward_to.strip():
            return FilterResult.accept()
        try:
            host, port = split_forward_to(env.forward_to)
        except SpecError as exc:
            return FilterResult(FilterOutcome.REJECT, "invalid ForwardTo", None, str(exc))
        try:
            ip = ipaddress.ip_address(host)
            address = str(ip)
        except ValueError:
            self.log.verbose(f"{ctx.log_prefix} [{self.name}] looking up [{host}]")  # upstream's lines
            try:
                async with asyncio.timeout(self.config.filter_time_limit):
                    address = await self.resolver.lookup(host)
            except TimeoutError:
                address = ""
                error: MxLookupError | None = MxLookupError(f"dns timeout looking up {host}", False)
            except MxLookupError as exc:
                address, error = "", exc
            else:
                error = None
            if error is not None:
                text = clean_text(str(error))
                self.log.verbose(
                    f"{ctx.log_prefix} [{self.name}]: [{ctx.message_id}]: setting forward-to-address [] (mx: {text})"
                )
                # upstream's response and reason (the line above says why); a temporary trouble is
                # retried (ours)
                outcome = FilterOutcome.REJECT if error.permanent else FilterOutcome.ERROR
                return FilterResult(outcome, "failed", None, "failed")
        hop = "" if address in ("0.0.0.0", "::") else format_hop(address, port)
        self.log.verbose(
            f"{ctx.log_prefix} [{self.name}]: [{ctx.message_id}]: setting forward-to-address [{hop}]"
        )
        if hop != env.forward_to_address:
            updated = replace(env, forward_to_address=hop)
            try:
                await asyncio.to_thread(store.rewrite_envelope_in_place, ctx.mid, ctx.state, updated)
            except OSError as exc:
                self.log.warning(f"filter [{self.name}] failed: cannot write envelope: {exc}")
                return FilterResult(FilterOutcome.ERROR, "filter error", None, f"mx: {exc}")
        return FilterResult.accept()

    async def close(self) -> None:
        return None
