"""``split:`` against E-MailRelay 2.6b: the messages it makes, byte for byte.

What it checks (issue 17, item 11): our relay and the oracle
(``EMAILRELAY_ORACLE_BIN``; skipped without it), started the same way (as
root, default ``--user daemon``) with ``--filter=split:...``, store one
message for recipients in several domains (mixed case, one without a
domain); compared: the reply, the spool (every envelope and content file,
ids normalised, the ``X-MailRelay-SplitGroupCount`` / ``SplitGroup`` lines
included), which content files are hard links, and the filter's log lines
(``creating`` / ``updating`` with the ForwardTo domain).
"""

from __future__ import annotations

import re

import pytest

from tests.support.diff_filters import MIXED, split_run
from tests.support.oracle import SIDES, needs_oracle

pytestmark = [needs_oracle, pytest.mark.timeout(240)]


@pytest.mark.parametrize(
    ("spec", "rcpts"),
    [
        ("split:", MIXED),
        ("split:raw", MIXED),
        ("split:25", MIXED),
        ("split:raw;2525;x", MIXED),
        ("split:RAW", MIXED),  # not "raw": parameters are case-sensitive, unknown ones ignored
        ("split:", ("a@Y.example", "b@y.example")),  # one domain: ForwardTo set, nothing split
    ],
)
def test_split_spool_and_log(spec: str, rcpts: tuple[str, ...]) -> None:
    got = {side: split_run(side, spec, rcpts) for side in SIDES}
    assert got["ours"] == got["upstream"]
    reply, spool, _, _ = got["upstream"]
    assert reply == "250 message processed"
    if spec == "split:" and len(rcpts) > 2:
        envelopes = [x for x in spool if ".envelope" in x]
        assert len(envelopes) == 3
        assert all(
            re.search(r"X-MailRelay-SplitGroupCount: 3\\r\\n(X-MailRelay-SplitGroup: ID\\r\\n){3}'$", e)
            for e in envelopes
        )
        assert any(
            "X-MailRelay-ForwardTo: Y.example\\r\\n" in e for e in envelopes
        )  # the first recipient's case
