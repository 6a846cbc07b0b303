"""``account:``: the built-in address verifier that checks system account names.

What it is for (reference guide, "account:"): ``--address-verifier=account:
--domain=example.com`` accepts ``alice@example.com`` as a local recipient
(mailbox ``alice``) when there is a system account ``alice`` with a user id
in the range (default 1000-32767) and the domain is the ``--domain``.

Parameters (semicolon-separated): a user-id range ``<low>-<high>``;
``lowercase`` (compare account names and local parts with upper-case 7-bit
letters lowered, and use the lowered account name as the mailbox);
``check`` (recipients that are not a local account are accepted as remote
instead of rejected: outgoing traffic whose local recipients are delivered
directly); ``remote`` (only local accounts are valid, but they are accepted as
remote, for forwarding rather than delivery).

What it guarantees: domains compare case-insensitively (an address without
a domain is taken as local); the account list is read at each lookup, in a
thread (NSS may be slow), so new accounts count at once; a non-matching
recipient is rejected 550 unless ``check``.
"""

from __future__ import annotations

import asyncio
import pwd
from dataclasses import dataclass

from .. import log as logmod
from .exe import PeerLike
from .spec import PolicyOptions, Spec, SpecError
from .verdicts import RecipientKind, RecipientVerdict

DEFAULT_RANGE = (1000, 32767)
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    return text.translate(_UPPER)


@dataclass(frozen=True)
class Account:
    name: str
    full_name: str


class AccountVerifier:
    def __init__(self, spec: Spec, options: PolicyOptions) -> None:
        self.spec = spec
        self.options = options
        self.low, self.high = DEFAULT_RANGE
        self.lowercase = self.check = self.remote = False
        for p in spec.params:
            word = p.lower()
            if word == "lowercase":
                self.lowercase = True
            elif word == "check":
                self.check = True
            elif word == "remote":
                self.remote = True
            elif "-" in p:
                low, _, high = p.partition("-")
                try:
                    self.low, self.high = int(low), int(high)
                except ValueError:
                    raise SpecError(f"account: invalid user-id range [{p}]") from None
                if self.low > self.high or self.low < 0:
                    raise SpecError(f"account: invalid user-id range [{p}]")
            else:
                raise SpecError(f"account: unknown parameter [{p}]")
        self.log = logmod.get()

    def find(self, local_part: str) -> Account | None:
        """The account matching a local part, within the user-id range."""
        wanted = ascii_lower(local_part) if self.lowercase else local_part
        if not self.lowercase:
            try:
                pw = pwd.getpwnam(wanted)
            except (KeyError, ValueError):
                return None
            return self._account(pw) if self.low <= pw.pw_uid <= self.high else None
        for pw in pwd.getpwall():
            if self.low <= pw.pw_uid <= self.high and ascii_lower(pw.pw_name) == wanted:
                return self._account(pw)
        return None

    def _account(self, pw: pwd.struct_passwd) -> Account:
        name = ascii_lower(pw.pw_name) if self.lowercase else pw.pw_name
        return Account(name, pw.pw_gecos.split(",")[0])

    async def verify(
        self,
        recipient: str,
        mail_from: str | None,
        peer: PeerLike | str | None,
        auth_mechanism: str,
        auth_id: str,
    ) -> RecipientVerdict:
        local, at, domain = recipient.rpartition("@")
        if not at:
            local, domain = recipient, ""
        ours = not domain or domain.lower().rstrip(".") == self.options.domain.lower().rstrip(".")
        account = await asyncio.to_thread(self.find, local) if ours and local else None
        if account is not None:
            self.log.verbose(f"address verifier: account: [{recipient}]: local account [{account.name}]")
            if self.remote:
                return RecipientVerdict(RecipientKind.REMOTE, recipient)
            return RecipientVerdict(
                RecipientKind.LOCAL, recipient, mailbox=account.name, full_name=account.full_name
            )
        if self.check:
            return RecipientVerdict(RecipientKind.REMOTE, recipient)
        self.log.verbose(f"address verifier: account: [{recipient}]: no such account")
        return RecipientVerdict(
            RecipientKind.REJECT, recipient, reason="invalid mailbox", detail="no such account"
        )

    async def close(self) -> None:
        return None
