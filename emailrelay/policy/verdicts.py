"""Verdicts of filters and address verifiers, as plain data.

What it is for: the services ask policy questions ("is this recipient
valid?", "may this stored message go on?") and get one of these back; the
policy modules (exe, net:, built-ins) produce them.  Nothing here does I/O.

Exit-code meanings follow the reference guide and SPEC.md §4.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RecipientKind(Enum):
    LOCAL = "local"  # verifier exit 0: deliver to a mailbox
    REMOTE = "remote"  # exit 1: forward (possibly rewritten)
    REJECT = "reject"  # exit 2 and anything unknown: 550
    TEMPORARY = "temporary"  # exit 3: 450
    ABORT = "abort"  # exit 100: drop the connection


@dataclass(frozen=True)
class RecipientVerdict:
    kind: RecipientKind
    address: str  # the (possibly rewritten) recipient for To-Remote
    mailbox: str = ""  # To-Local mailbox name
    full_name: str = ""  # for VRFY
    reason: str = ""  # rejection text shown to the client
    detail: str = ""  # log-only diagnostics

    @classmethod
    def remote(cls, address: str) -> RecipientVerdict:
        return cls(RecipientKind.REMOTE, address)


class FilterOutcome(Enum):
    OK = "ok"  # exit 0: carry on
    REJECT = "reject"  # exit 1-99 and most others: fail the message with the response
    ABANDON = "abandon"  # exit 100: the filter took care of it; stop quietly
    RESCAN = "rescan"  # exit 103: ok, and rescan the spool for new messages
    STOP_SCAN = "stop-scan"  # exit 102 (client filters): ok, and stop scanning after this one
    ERROR = "error"  # a built-in filter's own trouble (DNS, spamd, an internal error)


@dataclass(frozen=True)
class FilterResult:
    outcome: FilterOutcome
    reason: str = ""  # upstream's "response": the first <<...>> or [[...]] line, without the code
    code: int | None = None  # SMTP code from a leading "4xx " / "5xx "
    detail: str = ""  # upstream's "reason": the second such line (or the response): log and .bad
    exit_code: int | None = None
    rescan: bool = False  # server side: 103-style request, also combinable with ok or a failure
    stop: bool = False  # client side: stop scanning after this message (102, 104, 105)

    @property
    def ok(self) -> bool:
        return self.outcome in (FilterOutcome.OK, FilterOutcome.RESCAN, FilterOutcome.STOP_SCAN)

    @classmethod
    def accept(cls) -> FilterResult:
        return cls(FilterOutcome.OK, exit_code=0)
