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
remote, for forwarding rather than delivery). Other words are ignored, as
E-MailRelay 2.6b ignores them (``account:foo`` is ``account:``).

What it guarantees (as E-MailRelay 2.6b, observed): the domain must be the
``--domain`` compared case-insensitively (an address without a domain, or
with a trailing dot, does not match); unlike upstream, an international
domain matches written with A-labels or not, whichever form ``--domain``
has (the session asks about ``u@xn--caf-dma.example`` at RCPT and about
``u@café.example`` at VRFY; upstream matches only the form of
``--domain``, so ``--domain=café.example`` rejects every RCPT:
docs/decisions.md, "account: and international domains"); the local part
names an account exactly or in lower case (``CloudSDK`` finds ``cloudsdk``); an account
outside the user-id range does not count. A non-matching recipient is
rejected ``550 rejected`` with the reason logged (``[other.example] does not
match [example.com]``, ``[bob] is not a valid account name``, ``uid 0 is not
in the range 1000-32767``) unless ``check``. A local account has no full
name (VRFY says ``250 ``). The account list is read at each lookup, in a
thread (NSS may be slow), so new accounts count at once.
"""

from __future__ import annotations

import asyncio
import pwd
from dataclasses import dataclass

from ..config import Config
from ..protocol.addresses import domain_to_alabels
from .exe import PeerLike
from .spec import Spec, user_id_range
from .verdicts import RecipientKind, RecipientVerdict

DEFAULT_RANGE = (1000, 32767)
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    return text.translate(_UPPER)


@dataclass(frozen=True)
class Account:
    name: str  # the To-Local mailbox


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except (KeyError, ValueError):
        return None


def _same_domain(domain: str, ours: str) -> bool:
    """Whether ``domain`` is the ``--domain`` ``ours``, 7-bit letters in any case, either written
    with A-labels or not (``caf\u00e9.example`` is ``xn--caf-dma.example``)."""
    return domain.lower() == ours.lower() or ascii_lower(domain_to_alabels(domain)) == ascii_lower(
        domain_to_alabels(ours)
    )


class AccountVerifier:
    def __init__(self, spec: Spec, config: Config) -> None:
        self.spec = spec
        self.config = config
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
            elif (found := user_id_range(p)) is not None:  # anything else is ignored, as upstream ignores it
                self.low, self.high = found

    def find(self, local_part: str) -> Account | str:
        """The account matching a local part, or why there is none."""
        if self.lowercase:
            wanted = ascii_lower(local_part)
            for pw in pwd.getpwall():
                if self.low <= pw.pw_uid <= self.high and ascii_lower(pw.pw_name) == wanted:
                    return Account(ascii_lower(pw.pw_name))
        pw = _getpwnam(local_part) or _getpwnam(ascii_lower(local_part))
        if pw is None:
            return f"[{local_part}] is not a valid account name"
        if not self.low <= pw.pw_uid <= self.high:
            return f"uid {pw.pw_uid} is not in the range {self.low}-{self.high}"
        return Account(ascii_lower(pw.pw_name) if self.lowercase else pw.pw_name)

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
        found: Account | str
        if not _same_domain(domain, self.config.domain):
            found = f"[{domain}] does not match [{self.config.domain}]"
        else:
            found = await asyncio.to_thread(self.find, local)
        if isinstance(found, Account):
            if self.remote:
                return RecipientVerdict(RecipientKind.REMOTE, recipient)
            return RecipientVerdict(RecipientKind.LOCAL, recipient, mailbox=found.name)
        if self.check:
            return RecipientVerdict(RecipientKind.REMOTE, recipient)
        return RecipientVerdict(RecipientKind.REJECT, recipient, reason="rejected", detail=found)

    async def close(self) -> None:
        return None
