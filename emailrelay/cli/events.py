"""``emailrelay events [--json] [--spool-dir DIR | --run-dir DIR]``: watch mail flow live.

What it is for: an operator's view of the bus — every event the roles
publish (``smtp.accepted``, ``spool.ready``, ``forward.done``,
``spool.failed`` ...) printed as it happens, one line each, until
interrupted.  ``--json`` prints the raw JSON objects with the topic added.
``--count N`` stops after N events (for scripts and tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from .. import rundir
from ..bus import schema
from ..bus.endpoint import BusClient
from ..config import OPTION_DEFAULTS


def _line(topic: str, body: dict[str, object], as_json: bool) -> str:
    if as_json:
        return json.dumps({"topic": topic, **body}, separators=(",", ":"))
    stamp = time.strftime("%H:%M:%S", time.localtime(float(str(body.get("t", time.time())))))
    fields = " ".join(f"{k}={v}" for k, v in body.items() if k not in ("t",))
    return f"{stamp} {topic} {fields}"


async def stream(run_dir: str, as_json: bool, count: int | None) -> int:
    bus = BusClient(run_dir)
    bus.subscribe(schema.ALL_TOPICS)
    seen = 0
    try:
        async for topic, body in bus.messages():
            print(_line(topic, body, as_json), flush=True)
            seen += 1
            if count is not None and seen >= count:
                break
    finally:
        bus.close()
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="emailrelay events",
        description="Print the live events of a supervised relay, one line each, until interrupted: "
        "messages accepted, rejected, forwarded, deferred and failed, roles started and stopping.",
    )
    p.add_argument("--json", action="store_true", help="print each event as a JSON object with its topic")
    p.add_argument(
        "--spool-dir",
        "-s",
        default=OPTION_DEFAULTS["spool-dir"],
        help=f"the relay's spool (default {OPTION_DEFAULTS['spool-dir']})",
    )
    p.add_argument(
        "--run-dir", help="the relay's run directory (default: the one the relay uses for the spool)"
    )
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    args = p.parse_args(argv)
    run_dir = args.run_dir or str(rundir.default(Path(args.spool_dir)))
    if not Path(rundir.path(run_dir, rundir.BUS_OUT)).exists():
        print(
            f"emailrelay events: error: no bus in {run_dir} (is the relay running supervised?)",
            file=sys.stderr,
        )
        return 1
    try:
        return asyncio.run(stream(run_dir, args.json, args.count))
    except KeyboardInterrupt:
        return 0
