"""``exit:<n>``: a built-in filter that behaves like a program exiting with ``n``.

What it is for: the special codes without a script, eg. ``--filter=exit:103``
to ring the forwarders after each stored message, or ``exit:100`` to drop
everything (reference guide, "Built-in filters").

Guarantees: exactly the exit-code mapping of :mod:`emailrelay.policy.exe`;
as in E-MailRelay 2.6b, a rejection has the response ``rejected`` and the
reason ``exit:<n>``, and no warning is logged (there is no program).

As an address verifier (``--address-verifier=exit:<n>``, which E-MailRelay
2.6b takes without a word about it) it verifies nothing, whatever ``n``:
every recipient is remote and unchanged, as without a verifier, and nothing
is logged (:class:`ExitVerifier`).
"""

from __future__ import annotations

from dataclasses import replace

from .. import log as logmod
from ..config import Config
from .exe import PeerLike, result_for_exit_code
from .spec import FilterContext, Spec
from .verdicts import FilterOutcome, FilterResult, RecipientVerdict


class ExitFilter:
    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec
        self.name = spec.name
        self.exit_code = int(spec.value)
        self.log = logmod.get()

    async def run(self, ctx: FilterContext) -> FilterResult:
        result = result_for_exit_code(self.exit_code, client=ctx.client)
        if result.outcome is FilterOutcome.REJECT:
            result = replace(result, detail=f"exit:{self.exit_code}")
        return result

    async def close(self) -> None:
        return None


class ExitVerifier:
    """``--address-verifier=exit:<n>``: every recipient remote, as upstream's."""

    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec

    async def verify(
        self,
        recipient: str,
        mail_from: str | None,
        peer: PeerLike | str | None,
        auth_mechanism: str,
        auth_id: str,
    ) -> RecipientVerdict:
        return RecipientVerdict.remote(recipient)

    async def close(self) -> None:
        return None
