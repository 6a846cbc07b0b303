"""Commands travel on the bus: an admin command must reach the role it is for.

The bus is a doorbell for ``spool.ready`` (a lost ring costs one ``--poll``
period), but ``cmd.smtp.disable`` and ``cmd.smtp.enable`` have no timer
behind them: the admin replies with its prompt, so the command must take
effect even when it is the first thing the admin role ever publishes.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.relay import free_port
from tests.support.sink_counter import (
    PROMPT,
    AdminClient,
    poll,
    smtp_greeting,
    supervised_relay,
)


def test_the_first_admin_command_is_not_lost(tmp_path: Path) -> None:
    admin_port = free_port()
    with supervised_relay(
        tmp_path, "--admin", str(admin_port), roles={"bus": 1, "smtp": 1, "admin": 1}
    ) as relay:
        time.sleep(1.0)  # every role settled and subscribed
        assert smtp_greeting(relay.port).startswith(b"220 ")
        with AdminClient(admin_port) as admin:
            assert admin.cmd("smtp disable") == b"OK\r\n" + PROMPT
        assert poll(lambda: smtp_greeting(relay.port).startswith(b"421"), 3), "smtp disable never arrived"
