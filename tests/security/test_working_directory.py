"""Modules in the directory the relay is started from are never imported (run as root).

The roles are ``python -m emailrelay.cli.role ...`` in the relay's working directory, and
``python -m`` puts that directory first on ``sys.path``: a ``secrets.py`` there (a stdlib name
the smtp role imports) was run as root by every role at each start, and shadowed the real
module, so the roles failed and were restarted for ever.  The roles are started with ``-P``.
Here, started as root with the default ``--user daemon`` from a directory holding such
modules, the relay takes a message and none of them has run.
"""

from __future__ import annotations

import os
import smtplib

import pytest

from tests.support.relay import reachable_dir, spool_files, start_relay, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the production start needs root")

PLANTED = ("secrets", "json", "zmq", "emailrelay")  # stdlib, third-party and our own package's name


def test_modules_in_the_working_directory_are_not_imported() -> None:
    with reachable_dir("er-cwd-", mode=0o777) as base:
        marker = base / "imported"
        for name in PLANTED:
            (base / f"{name}.py").write_text(
                f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise SystemExit(3)\n"
            )
        relay = start_relay(base, user=None)
        try:
            with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as client:
                client.sendmail("a@example.com", ["b@example.net"], b"Subject: cwd\r\n\r\nbody\r\n")
            assert wait_until(lambda: len(spool_files(relay.spool, ".envelope")) == 1, 10)
            assert relay.proc.poll() is None
        finally:
            relay.stop()
        assert not marker.exists(), marker.read_text()
