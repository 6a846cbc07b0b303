"""The operator tools run as ``emailrelay <tool> ...``: one table for dispatch and for ``--help``.

What it is for: :data:`TOOLS` names each tool, says in one line what it does
(``emailrelay --help`` lists them) and loads it only when it runs, so the
relay itself never imports the tools.  A tool name is never an option, so
``emailrelay queue ...`` cannot clash with a config file argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _events(argv: list[str]) -> int:
    from .events import main

    return main(argv)


def _queue(argv: list[str]) -> int:
    from .queue import main

    return main(argv)


def _notify(argv: list[str]) -> int:
    from .failed_mail import notify_main

    return notify_main(argv)


def _resubmit(argv: list[str]) -> int:
    from .failed_mail import resubmit_main

    return resubmit_main(argv)


def _bounce(argv: list[str]) -> int:
    from .failed_mail import bounce_main

    return bounce_main(argv)


def _admin(argv: list[str]) -> int:
    from .admin_tool import main

    return main(argv)


def _metrics(argv: list[str]) -> int:
    from ..services.metrics import main

    return main(argv)


@dataclass(frozen=True)
class Tool:
    name: str
    summary: str  # one line for ``emailrelay --help``
    run: Callable[[list[str]], int]


TOOLS = (
    Tool("queue", "list, show, retry, hold or delete the spool's messages (like mailq, postsuper)", _queue),
    Tool("events", "print the relay's live events: mail accepted, forwarded, failed", _events),
    Tool("admin", "send commands to the admin interface (--admin) without telnet", _admin),
    Tool("metrics", "serve Prometheus /metrics and /healthz for a supervised relay", _metrics),
    Tool("notify", "report failed messages (emailrelay-notify)", _notify),
    Tool("resubmit", "retry failed messages a bounded number of times (emailrelay-resubmit)", _resubmit),
    Tool("bounce", "return failed messages to their senders (emailrelay-bounce)", _bounce),
)
SUBCOMMANDS = {tool.name: tool.run for tool in TOOLS}
