"""``deliver:`` and ``copy:`` against E-MailRelay 2.6b, started as root with the default
``--user daemon`` (a follow-up of the filters probe of 7 Dec 2026).

What it checks, with tests/support/deliver_cases.py's scenarios on both programs
(``EMAILRELAY_ORACLE_BIN``; skipped without it), as server filter and as client filter:

- a ``--delivery-dir`` only root may write (0700 root:root) takes mail: the mailbox (0770) and
  its files (0660) belong to root with group ``daemon``, byte for byte as upstream's, a maildir
  too; the lines ``delivery: delivering <id> to [<dir>/<mbox>]``, one ``recipient [..]`` line
  per local recipient, then ``creating mailbox [..]`` per mailbox made;
- a failure is upstream's words, never a Python representation: the warning ``message
  processing exception: delivery: cannot create delivery directory: <path>: not a directory``
  (``no such file or directory`` for a missing ``--delivery-dir``, which is not made; ``file
  exists`` for a file in a mailbox's place), ``delivery: cannot write content file: copy|deliver:
  <path>: <reason>``, ``... maildir tmp file``, ``cannot move maildir file``, ``cannot write
  envelope file``; the client is told ``452 failed``; a client filter's failure fails the message
  with that reason (``smtp client error: <text>``);
- ``copy:``'s lines: ``<id> copied to [..]`` and ``copy filter: no sub-directories of [<spool>]
  to copy in to``.

Known differences left out of the comparison, owned elsewhere: after a failure ours adds the
filter chain's ``filter [x]: [id]: failed response=[failed] reason=[..]`` and the session's
``rejected by filter: [..]`` lines (upstream's exception skips them); a failed client filter's
``.bad`` envelope has ``ReasonCode: 550`` in ours (empty upstream), the ``smtp client error``
warning comes before ``failing envelope`` rather than after it, and upstream's ``--as-client``
then stops (``error: ...``, exit 1), ours goes on.  A symlink in a mailbox's place is refused by
ours, followed by upstream's (docs/decisions.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.deliver_cases import (
    Outcome,
    forward_one,
    immutable,
    reprs_in,
    root_only,
    serve_one,
    subdirectories,
)
from tests.support.oracle import SIDES, daemon_base, needs_oracle

pytestmark = [needs_oracle, pytest.mark.timeout(300)]

#: Lines ours adds after a failed filter (the chain's summary, the session's): not upstream's.
OURS_AFTER_FAILURE = re.compile(r"\]: failed response=\[failed\]|rejected by filter")


def both(scenario: Callable[[str, Path], Outcome]) -> dict[str, Outcome]:
    return {side: scenario(side, daemon_base()) for side in SIDES}


def compared(got: dict[str, Outcome]) -> Outcome:
    """Both sides' outcomes, equal once ours' known extra lines are left out; ours'."""
    ours, upstream = got["ours"], got["upstream"]
    assert reprs_in(ours.lines) == []
    ours.lines = [x for x in ours.lines if not OURS_AFTER_FAILURE.search(x)]
    assert ours.lines == upstream.lines
    assert (ours.reply, ours.spool, ours.boxes) == (upstream.reply, upstream.spool, upstream.boxes)
    return ours


def maildir(box: Path, mode: int = 0o775) -> Path:
    for sub in ("", "new", "tmp", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
        (box / sub).chmod(mode)
    return box


# ---- a delivery directory only root may write ----------------------------------------------------


@pytest.mark.parametrize("kind", ["mailbox", "maildir"])
def test_deliver_into_a_root_only_delivery_dir(kind: str) -> None:
    def scenario(side: str, base: Path) -> Outcome:
        boxes = root_only(base / "boxes")
        if kind == "maildir":
            maildir(boxes / "box", 0o700)
        return serve_one(side, base, "--filter", "deliver:", "--delivery-dir", "BOXES")

    ours = compared(both(scenario))
    assert ours.reply == "250 message processed"
    assert ours.boxes is not None and any(b"Subject: s" in entry[-1] for entry in ours.boxes)
    assert ours.spool == []  # all recipients local: the original is gone


def test_deliver_as_client_filter_into_a_root_only_delivery_dir() -> None:
    """A message for a local and a remote recipient: delivered by the client filter, then forwarded."""

    def scenario(side: str, base: Path) -> Outcome:
        root_only(base / "boxes")
        return forward_one(side, base, "deliver:", "--delivery-dir", "BOXES")

    ours = compared(both(scenario))
    assert ours.reply == "1" and ours.boxes is not None and len(ours.boxes) == 3


def test_deliver_lines_for_several_recipients() -> None:
    """One ``recipient`` line per local recipient (two name ``a``), then one ``creating mailbox``
    line per mailbox; ``a`` gets one copy; the remote recipient keeps the original."""

    def scenario(side: str, base: Path) -> Outcome:
        rcpts = ("a@y.example", "b@y.example", "a@z.example", "r@x.example")
        return serve_one(side, base, "--filter", "deliver:", rcpts=rcpts)

    ours = compared(both(scenario))
    assert [x for x in ours.lines if "creating" in x] == [
        "emailrelay: info: delivery: creating mailbox [a]",
        "emailrelay: info: delivery: creating mailbox [b]",
    ]


# ---- deliver: failures ---------------------------------------------------------------------------
# (each makes <base>/boxes, the delivery directory, go wrong; returns what to make immutable)


def dir_is_a_file(boxes: Path) -> list[Path]:
    boxes.write_text("x")
    return []


def dir_missing(boxes: Path) -> list[Path]:
    return []


def mailbox_is_a_file(boxes: Path) -> list[Path]:
    boxes.mkdir()
    (boxes / "box").write_text("x")
    return []


def mailbox_immutable(boxes: Path) -> list[Path]:
    subdirectories(boxes, "box")
    return [boxes / "box"]


def maildir_tmp_immutable(boxes: Path) -> list[Path]:
    return [maildir(boxes / "box") / "tmp"]


def maildir_new_immutable(boxes: Path) -> list[Path]:
    return [maildir(boxes / "box") / "new"]


DELIVER_FAILURES = [dir_is_a_file, dir_missing, mailbox_is_a_file, mailbox_immutable, maildir_tmp_immutable,
                    maildir_new_immutable]  # fmt: skip


@pytest.mark.parametrize("setup", DELIVER_FAILURES, ids=lambda f: f.__name__)
def test_deliver_failures_in_upstream_words(setup: Callable[[Path], list[Path]]) -> None:
    def scenario(side: str, base: Path) -> Outcome:
        with immutable(*setup(base / "boxes")):
            return serve_one(side, base, "--filter", "deliver:", "--delivery-dir", "BOXES")

    ours = compared(both(scenario))
    assert ours.reply == "452 failed"
    assert any("warning: message processing exception: delivery: cannot " in x for x in ours.lines)
    assert ours.spool == []


# ---- copy: --------------------------------------------------------------------------------------
# (each makes sub-directories of the spool; returns what to make immutable)


def no_mailboxes(spool: Path) -> list[Path]:
    subdirectories(spool, "postmaster", ".hidden")  # (never copied into)
    return []


def second_immutable(spool: Path) -> list[Path]:
    subdirectories(spool, "alice", "bob")
    return [spool / "bob"]


def maildir_tmp_fails(spool: Path) -> list[Path]:
    return [maildir(spool / "alice") / "tmp"]


def maildir_new_fails(spool: Path) -> list[Path]:
    return [maildir(spool / "alice") / "new"]


COPY_CASES = [  # (a successful copy: test_filters.py::test_builtin_filters)
    ("copy:", no_mailboxes, "250 message processed"),
    ("copy:", second_immutable, "452 failed"),  # the content
    ("copy:hardlink", second_immutable, "452 failed"),
    ("copy:pop", second_immutable, "452 failed"),  # the envelope
    ("copy:", maildir_tmp_fails, "452 failed"),
    ("copy:", maildir_new_fails, "452 failed"),
]


@pytest.mark.parametrize(("spec", "setup", "reply"), COPY_CASES, ids=lambda x: getattr(x, "__name__", None))
def test_copy_as_server_filter(spec: str, setup: Callable[[Path], list[Path]], reply: str) -> None:
    def scenario(side: str, base: Path) -> Outcome:
        spool = base / side / "spool"
        spool.mkdir(parents=True)
        with immutable(*setup(spool)):
            return serve_one(side, base, "--filter", spec)

    ours = compared(both(scenario))
    assert ours.reply == reply
    failed = any("warning: message processing exception: delivery: cannot " in x for x in ours.lines)
    assert failed == reply.startswith("452")


# ---- failures as client filters ---------------------------------------------------------------


def boxes_is_a_file(spool: Path) -> list[Path]:
    (spool.parent / "boxes").write_text("x")
    return []


@pytest.mark.parametrize(("spec", "setup"), [("copy:", second_immutable), ("deliver:", boxes_is_a_file)])
def test_failures_as_client_filter(spec: str, setup: Callable[[Path], list[Path]]) -> None:
    """The message fails (``.bad``) with upstream's text as its reason, and the warning
    ``smtp client error: <text>`` (ours' order, reason code and exit aside: see above)."""

    def scenario(side: str, base: Path) -> Outcome:
        spool = base / "spool"
        spool.mkdir()
        with immutable(*setup(spool)):
            got = forward_one(side, base, spec, "--delivery-dir", "BOXES")
        got.lines = sorted(x for x in got.lines if "error: delivery: " not in x or "warning:" in x)
        got.spool = [(*e[:5], re.sub(rb"ReasonCode:[^\r]*", b"ReasonCode:", e[5])) for e in got.spool or []]
        return got

    ours = compared(both(scenario))
    assert ours.reply == "0"
    assert any(b"X-MailRelay-Reason: delivery: cannot " in entry[-1] for entry in ours.spool or [])
    assert any("warning: smtp client error: delivery: cannot " in x for x in ours.lines)


def test_copy_as_client_filter_without_subdirectories() -> None:
    def scenario(side: str, base: Path) -> Outcome:
        spool = base / "spool"
        spool.mkdir()
        no_mailboxes(spool)
        return forward_one(side, base, "copy:")

    ours = compared(both(scenario))
    assert ours.reply == "1"  # kept, and forwarded
