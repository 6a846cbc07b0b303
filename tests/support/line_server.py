"""A scripted line server for tests of ``net:`` filters and verifiers.

What it is for: a test says what to answer to each request line
(``answer_for(line) -> str``); the server listens on 127.0.0.1 and a free
port, runs one session per connection in a thread, records every request
line as it came (decoded, its line end kept) and sends the answer as it is.
Two answers are scripts rather than text: ``SLEEP n`` sends nothing for that
line (the session waits n seconds, or until the server stops), ``CLOSE``
closes the connection. :func:`threaded_server` is the listening part alone,
for a test server that speaks something else (octets, spamd).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def threaded_server(session: Callable[[socket.socket], None]) -> Iterator[int]:
    """Listen on 127.0.0.1 and a free port until the block ends, running ``session(connection)``
    in a thread of its own for each connection; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener is closed: the block has ended
                return
            threading.Thread(target=session, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@contextlib.contextmanager
def line_server(answer_for: Callable[[str], str]) -> Iterator[tuple[int, list[str]]]:
    """Serve until the block ends; yields (port, request lines so far)."""
    requests: list[str] = []
    stop = threading.Event()

    def session(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            for raw in reader:
                line = raw.decode()
                requests.append(line)
                answer = answer_for(line)
                if answer.startswith("SLEEP"):
                    stop.wait(float(answer.split()[1]))
                    continue
                if answer == "CLOSE":
                    return
                conn.sendall(answer.encode())

    try:
        with threaded_server(session) as port:
            yield port, requests
    finally:
        stop.set()
