"""Spool file names: message ids and envelope state suffixes.

What it is for: the one place that knows how a message id looks
(``emailrelay.<pid>.<unix-seconds>.<seq>``, SPEC.md §3) and which suffix
means which state.  Only :mod:`emailrelay.spool.store` joins these names with
a directory; everything else passes ids around.

Ids we make have upstream's form. Like E-MailRelay 2.6b, any ``<id>.envelope``
with its ``<id>.content`` is a message, whatever the id (``emailrelay.001``,
``foo``, ``a.b.c``): such a "foreign" id is kept as text (``MessageId.text``;
its ``time``, ``pid`` and ``seq`` are 0) and sorts before ours.

Guarantees: :func:`is_valid_id` accepts ours and every foreign id that is
safe as one file-name component: no ``/``, no NUL or other control
character, not ``.`` or ``..``, at most :data:`MAX_ID_LENGTH` characters.
So a name taken from a directory listing, an admin command or a queue tool
argument can never smuggle a path separator or ``..`` into a path.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from enum import Enum

PREFIX = "emailrelay"
CONTENT_SUFFIX = ".content"
ENVELOPE_SUFFIX = ".envelope"

_ID_RE = re.compile(r"emailrelay\.([0-9]{1,10})\.([0-9]{1,12})\.([0-9]{1,12})")
#: The longest id: its longest file name (``<id>.envelope.busy.tmp``) stays within NAME_MAX (255).
MAX_ID_LENGTH = 200
_FOREIGN_ID_RE = re.compile(rf"[^/\x00-\x1f\x7f]{{1,{MAX_ID_LENGTH}}}")


class State(Enum):
    """Envelope states, keyed by the suffix after ``.envelope``."""

    NEW = ".new"  # being written; never forwarded
    READY = ""  # committed
    BUSY = ".busy"  # claimed by one forwarder
    BAD = ".bad"  # failed, reason appended
    HELD = ".held"  # ours: kept aside by the operator (`emailrelay queue hold`)

    @property
    def label(self) -> str:
        return {"": "ready", ".new": "new", ".busy": "busy", ".bad": "bad", ".held": "held"}[self.value]


@dataclass(frozen=True, order=True)
class MessageId:
    """A parsed message id; orders by (time, pid, seq), i.e. roughly arrival order.

    ``text`` is set, and the numbers are 0, for a foreign id (not of our form): those sort first,
    by name, as upstream sorts every id.
    """

    time: int
    pid: int
    seq: int
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"{PREFIX}.{self.pid}.{self.time}.{self.seq}"

    @property
    def is_foreign(self) -> bool:
        """Not an id of our form: its creation time is not in it."""
        return bool(self.text)

    @classmethod
    def parse(cls, text: str) -> MessageId:
        m = _ID_RE.fullmatch(text)
        if m:
            return cls(time=int(m.group(2)), pid=int(m.group(1)), seq=int(m.group(3)))
        if _is_safe_foreign(text):
            return cls(time=0, pid=0, seq=0, text=text)
        raise ValueError(f"not a message id: {text!r}")


def _is_safe_foreign(text: str) -> bool:
    return _FOREIGN_ID_RE.fullmatch(text) is not None and text not in (".", "..")


def is_valid_id(text: str) -> bool:
    return _ID_RE.fullmatch(text) is not None or _is_safe_foreign(text)


def content_name(mid: MessageId | str) -> str:
    return f"{mid}{CONTENT_SUFFIX}"


def envelope_name(mid: MessageId | str, state: State) -> str:
    return f"{mid}{ENVELOPE_SUFFIX}{state.value}"


def split_envelope_name(name: str) -> tuple[MessageId, State] | None:
    """Parse a directory entry; None when it is not an envelope file (any valid id, any state)."""
    head, sep, tail = name.rpartition(ENVELOPE_SUFFIX)
    state = _STATES.get(tail) if sep else None
    if state is None or not is_valid_id(head):
        return None
    return MessageId.parse(head), state


_STATES = {state.value: state for state in State}


def split_content_name(name: str) -> MessageId | None:
    if not name.endswith(CONTENT_SUFFIX):
        return None
    head = name[: -len(CONTENT_SUFFIX)]
    return MessageId.parse(head) if is_valid_id(head) else None


class IdAllocator:
    """Hands out ids for one storing process.

    ``seq`` counts from 1 in each process, as upstream does.  Uniqueness
    across processes comes from the pid; a pid reused within the same second
    is caught by the store's exclusive create, which just asks again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._counter = itertools.count(1)

    def next(self) -> MessageId:
        with self._lock:
            pid = os.getpid()
            if pid != self._pid:  # forked: restart the sequence for the child
                self._pid, self._counter = pid, itertools.count(1)
            return MessageId(time=int(time.time()), pid=pid, seq=next(self._counter))
