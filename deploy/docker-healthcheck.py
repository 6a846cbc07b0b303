"""The container's HEALTHCHECK: exit 0 when the relay is healthy, 1 when not.

What it is for: Docker runs this every 30 s inside the container. With the
metrics role on (EMAILRELAY_METRICS, default 127.0.0.1:9190) it asks that
role's ``/healthz``, which answers from what it already knows (role processes
on the bus, a spool probe) without an SMTP session; ``0.0.0.0`` and ``::``
mean the loopback address. With EMAILRELAY_METRICS set but empty it only
checks that the SMTP port (EMAILRELAY_PORT, default 2525) accepts a
connection. Standard library only: it runs with the image's plain python.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request

TIMEOUT = 8.0


def _loopback(host: str) -> str:
    host = host.strip("[]")
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def main() -> int:
    metrics = os.environ.get("EMAILRELAY_METRICS", "127.0.0.1:9190")
    if not metrics:
        port = int(os.environ.get("EMAILRELAY_PORT", "") or 2525)
        try:
            socket.create_connection(("127.0.0.1", port), TIMEOUT).close()
        except OSError as exc:
            print(f"smtp port {port}: {exc}", file=sys.stderr)
            return 1
        return 0
    host, _, port_text = metrics.rpartition(":")
    host = _loopback(host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port_text}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: {exc.code} {exc.read(2000).decode(errors='replace')}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
