"""Where the tests find the recorded E-MailRelay 2.6b fixtures.

What it is for: one constant, :data:`UPSTREAM`, names the directory of real
spool files, logs and the admin session that E-MailRelay 2.6b wrote
(``tests/fixtures/upstream-2.6``, see its README). Every test reaches them
through it.

Guarantees: the directory is inside the repository, so a fresh clone has
it; its files keep their CRLF line ends (``tests/fixtures/.gitattributes``
is ``* -text``).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = REPO / "tests" / "fixtures" / "upstream-2.6"
