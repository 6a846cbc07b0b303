"""Address verification, and the policy object the SMTP session talks to.

What it is for: :class:`Verifier` answers "is this recipient valid, local or
remote?" with the ``--address-verifier`` (a program, ``net:``, ``account:``
or ``exit:<n>``); :class:`PolicyEngine` puts a verifier and the ``--filter``
chain together into the one object that satisfies the SMTP service's
``ServerPolicy`` protocol; :func:`build_server_policy` makes it from a
configuration.

What it guarantees: without a verifier every recipient is remote and
unchanged; without filters every message is accepted; a verifier that
crashes (a bug, not a verdict) answers a temporary 450, never an exception
into the session.
"""

from __future__ import annotations

import asyncio

from .. import log as logmod
from ..config import Config
from ..spool.names import MessageId
from ..spool.store import SpoolStore
from .chain import ServerFilterChain, build_client_filter
from .exe import PeerLike
from .spec import Spec, parse_filters, parse_verifier, warnings_for
from .verdicts import FilterResult, RecipientKind, RecipientVerdict

__all__ = ["PolicyEngine", "Verifier", "build_client_filter", "build_server_policy"]


def make_verifier(spec: Spec, config: Config) -> object:
    if spec.kind == "exe":
        from .exe import ExeVerifier

        return ExeVerifier(spec, config)
    if spec.kind == "net":
        from .net import NetVerifier

        return NetVerifier(spec, config)
    if spec.kind == "account":
        from .account import AccountVerifier

        return AccountVerifier(spec, config)
    if spec.kind == "exit":
        from .builtin_exit import ExitVerifier

        return ExitVerifier(spec, config)
    raise ValueError(f"not an address verifier: {spec.text}")


class Verifier:
    """``--address-verifier``: a program, ``net:<address>``, ``account:[params]`` or ``exit:<n>``."""

    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec
        self.impl = make_verifier(spec, config)
        self.log = logmod.get()

    async def verify(
        self,
        recipient: str,
        mail_from: str | None,
        peer: PeerLike | str | None,
        auth_mechanism: str = "",
        auth_id: str = "",
    ) -> RecipientVerdict:
        try:
            return await self.impl.verify(recipient, mail_from, peer, auth_mechanism, auth_id)  # type: ignore[attr-defined]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error(f"address verifier: internal error: {exc!r}")
            return RecipientVerdict(
                RecipientKind.TEMPORARY, recipient, reason="mailbox unavailable", detail="verifier error"
            )

    async def close(self) -> None:
        await self.impl.close()  # type: ignore[attr-defined]


class PolicyEngine:
    """A verifier and a server filter chain: satisfies ``emailrelay.services.smtpd.ServerPolicy``."""

    def __init__(self, verifier: Verifier | None = None, chain: ServerFilterChain | None = None) -> None:
        self.verifier = verifier
        self.chain = chain if chain else None

    @property
    def accepts_everything(self) -> bool:
        """No verifier and no filter: the session may take its fast path."""
        return self.verifier is None and self.chain is None

    async def verify(
        self,
        recipient: str,
        mail_from: str | None,
        peer: PeerLike | str | None,
        auth_mechanism: str,
        auth_id: str,
    ) -> RecipientVerdict:
        if self.verifier is None:
            return RecipientVerdict.remote(recipient)
        return await self.verifier.verify(recipient, mail_from, peer, auth_mechanism, auth_id)

    async def filter(
        self, message_id: MessageId, content_path: str, envelope_path: str, *, log_address: str | None = None
    ) -> FilterResult:
        if self.chain is None:
            return FilterResult.accept()
        return await self.chain.filter(message_id, content_path, envelope_path, log_address=log_address)

    async def close(self) -> None:
        if self.verifier is not None:
            await self.verifier.close()
        if self.chain is not None:
            await self.chain.close()


def build_server_policy(config: Config, store: SpoolStore) -> PolicyEngine:
    """The SMTP session's policy for a configuration (raises SpecError on a bad option value)."""
    spec = parse_verifier(config.address_verifier)
    verifier = Verifier(spec, config) if spec is not None else None
    specs = parse_filters(config.filters)
    log = logmod.get()
    for text in warnings_for([*specs, *([spec] if spec is not None else [])]):
        log.warning(text)
    chain = ServerFilterChain(specs, store, config) if specs else None
    return PolicyEngine(verifier, chain)
