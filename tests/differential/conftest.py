"""Fixtures shared by the differential tests (tests/differential/).

What it is for: ``certs``, a module's set of test certificates (tests/support/certs.py) in a
directory ``--user daemon`` can read, for the TLS scenarios of several modules.  Helpers are in
tests/support/ (diff_*.py and oracle.py), not here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.certs import HAVE_OPENSSL, Certs, make_certs
from tests.support.oracle import daemon_base


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    if not HAVE_OPENSSL:
        pytest.skip("needs the openssl command")
    base = daemon_base()
    made = make_certs(base / "certs")
    for path in [base / "certs", *(base / "certs").iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield made
