"""Bus topics and message bodies, defined once (ARCHITECTURE.md, "The bus").

What it is for: every role publishes and subscribes through these names, so
a typo cannot create a topic nobody listens to.  A message is a topic string
plus a JSON object; :func:`encode` / :func:`decode` are the only
serialisation.  Plain data, no I/O.

The bus is only a doorbell: losing a message delays work by at most one
``--poll`` period and never loses or duplicates mail, because the spool is
the only source of truth.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .. import rundir

# events
SPOOL_READY = "spool.ready"  # {"id"}: an .envelope appeared (committed, released, unfailed)
SPOOL_FAILED = "spool.failed"  # {"id", "reason"}
FORWARD_DONE = "forward.done"  # {"id", "hop", "ms", "size"}
FORWARD_DEFERRED = "forward.deferred"  # {"id", "reason", "delay"}
SMTP_ACCEPTED = "smtp.accepted"  # {"id", "size"}: size in content bytes
SMTP_REJECTED = "smtp.rejected"  # {"reason", "client"}
ROLE_STARTED = "role.started"  # {"role", "pid"}
ROLE_STOPPING = "role.stopping"  # {"role", "pid"}
NETWORK = "network"  # {"dir": "in"|"out", "event": "start"|"stop", "local", "peer"}: the admin status/notify
CLIENT = "client"  # {"text"}: a forwarding run's progress, upstream's notify "client:" events in its words
# commands
CMD_FORWARD = "cmd.forward"  # {}: rescan now, ignoring back-off
CMD_FLUSH = "cmd.flush"  # {}
CMD_SMTP_DISABLE = "cmd.smtp.disable"  # {}
CMD_SMTP_ENABLE = "cmd.smtp.enable"  # {}
CMD_DNSBL = "cmd.dnsbl"  # {"off_for": seconds}: admin "dnsbl stop [N]" (0: "dnsbl start", checks again)

EVENT_TOPICS = (
    SPOOL_READY, SPOOL_FAILED, FORWARD_DONE, FORWARD_DEFERRED, SMTP_ACCEPTED, SMTP_REJECTED,
    ROLE_STARTED, ROLE_STOPPING, NETWORK, CLIENT,
)  # fmt: skip
COMMAND_TOPICS = (CMD_FORWARD, CMD_FLUSH, CMD_SMTP_DISABLE, CMD_SMTP_ENABLE, CMD_DNSBL)
ALL_TOPICS = EVENT_TOPICS + COMMAND_TOPICS


def encode(topic: str, body: dict[str, Any]) -> list[bytes]:
    if topic not in ALL_TOPICS:
        raise ValueError(f"unknown bus topic: {topic}")
    stamped = {"t": round(time.time(), 3), "pid": os.getpid(), **body}
    return [topic.encode(), json.dumps(stamped, separators=(",", ":")).encode()]


def decode(frames: list[bytes]) -> tuple[str, dict[str, Any]] | None:
    """None for anything malformed (the bus is not trusted to be well-formed)."""
    if len(frames) != 2:
        return None
    try:
        topic = frames[0].decode()
        body = json.loads(frames[1])
    except (UnicodeDecodeError, ValueError):
        return None
    if topic not in ALL_TOPICS or not isinstance(body, dict):
        return None
    return topic, body


def endpoints(run_dir: str) -> tuple[str, str]:
    """(publishers connect here, subscribers connect here): ipc files in the run directory."""
    return rundir.ipc(run_dir, rundir.BUS_IN), rundir.ipc(run_dir, rundir.BUS_OUT)
