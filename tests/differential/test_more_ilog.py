"""Logging options against E-MailRelay 2.6b: ``--log-format`` fields the guide-row tests leave out.

What it is for (issue 17): ``--log-format=address,port`` (upstream's ``127.0.0.1;42868: ``
layout) compared over a whole SMTP session, the client's port normalised. Skipped without
``EMAILRELAY_ORACLE_BIN``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.differential.test_guide_part1 import both
from tests.support.oracle import needs_oracle

pytestmark = [needs_oracle, pytest.mark.timeout(120)]

_ADDRESS_PORT = re.compile(r"^(emailrelay: \w+: 127\.0\.0\.1;)\d+: ")


def test_log_format_address_and_port_as_upstream(tmp_path: Path) -> None:
    """``address,port``: a session's lines start ``127.0.0.1;<port>: `` on both sides, the same lines."""
    got = both(tmp_path, ("--log-format=port,address",))
    logs = {side: [_ADDRESS_PORT.sub(r"\1N: ", line) for line in seen.log] for side, seen in got.items()}
    assert logs["ours"] == logs["upstream"], "\n".join(["ours:", *logs["ours"], "upstream:", *logs["upstream"]])
    assert 'emailrelay: info: 127.0.0.1;N: rx<<: "QUIT"' in logs["ours"]
