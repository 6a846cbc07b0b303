"""A minimal aiosmtpd store-only server: the comparison point for ``bench/store.py``.

``python bench/aiosmtpd_store.py --port P --spool-dir DIR [--no-uvloop]``

Each message is written as two files, ``<id>.content`` (the data as
received) and ``<id>.envelope`` (sender, recipients, client) — WITHOUT
fsync, so this is what a plain asyncio SMTP server costs when durability is
left to the page cache.  Binds 127.0.0.1 only; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class StoreHandler:
    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.prefix = f"aiosmtpd.{os.getpid()}.{int(time.time())}"
        self.counter = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        name = f"{self.prefix}.{next(self.counter)}"
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        with open(self.spool / f"{name}.content", "wb") as f:
            f.write(content)
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        env = (
            f"From: {envelope.mail_from}\n"
            + "".join(f"To: {r}\n" for r in envelope.rcpt_tos)
            + f"Client: {peer}\nEnd: 1\n"
        )
        with open(self.spool / f"{name}.envelope", "w") as f:
            f.write(env)
        return "250 OK"


async def serve(port: int, spool: Path) -> None:
    loop = asyncio.get_running_loop()
    handler = StoreHandler(spool)

    def factory() -> Any:
        return SMTP(handler, hostname="aiosmtpd.bench", ident="aiosmtpd-store", timeout=60)

    server = await loop.create_server(factory, host="127.0.0.1", port=port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spool-dir", type=Path, required=True)
    ap.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = ap.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop

            uvloop.run(serve(args.port, args.spool_dir))
            return
        except ImportError:
            pass
    asyncio.run(serve(args.port, args.spool_dir))


if __name__ == "__main__":
    main()
