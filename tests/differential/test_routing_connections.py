"""Routing and the forwarder's connections against E-MailRelay 2.6b (issue 17): ``ForwardToAddress``,
``ForwardTo`` and the routing filter, the reference guide's "Routing" section.

What it checks, on both programs run the same way (tests/support/diff_forwarding.py's
helpers: hand-written spools, ``--as-client`` as root, fake next hops on loopback, the default
one and another), each connection of each next hop (its commands, QUIT left out: upstream may
not wait for the reply of the last one), the whole log, the exit code and the spool left:

- a message with a ``ForwardToAddress`` other than the connection's (empty: the ``--forward-to``
  hop) logs ``forward-to-address=[<address>]``, closes the connection (QUIT), logs ``new
  connection for [<address>]`` and connects there, even when it names the default hop; the next
  message without one goes back the same way (``new connection for []``); consecutive messages
  with the same address share a connection;
- a routing filter (a client filter run for a message with a ``ForwardTo``, before connecting)
  that fills in ``ForwardToAddress`` moves the message to that address the same way; a client
  filter run for a message without ``ForwardTo`` runs after connecting and whatever it writes
  into ``ForwardToAddress`` is not used;
- a message with another ``ClientAccountSelector`` than the connection's does the same (``new
  connection for account selector [<s>]``, or ``for [<address>] and account selector [<s>]``),
  and the new connection authenticates with that selector's ``client`` line;
- many messages without any routing go over one connection.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.diff_forwarding import NO_PIPELINING, B, Run, as_client, same
from tests.support.diff_guide import readable_file
from tests.support.fake_smtp import FakeSmtp, auth_script
from tests.support.oracle import SIDES, daemon_base, needs_oracle

pytestmark = [needs_oracle, pytest.mark.timeout(240)]

EMPTY_ROUTE = b"X-MailRelay-ForwardTo: \r\nX-MailRelay-ForwardToAddress: \r\n"
SELECTOR = b"X-MailRelay-ClientAccountSelector: \r\n"
# a client filter that writes the other next hop's address into ForwardToAddress
SET_ADDRESS = (
    "#!/bin/sh\nsed -i 's/^X-MailRelay-ForwardToAddress: .*/X-MailRelay-ForwardToAddress: OTHER\\r/' \"$2\"\n"
)


def _connections(hop: FakeSmtp) -> list[list[str]]:
    """The commands the next hop read, per connection, QUITs left out."""
    out: dict[int, list[str]] = {}
    for number, command in hop.commands:
        if command != "QUIT":
            out.setdefault(number, []).append(command)
    return [out[n] for n in sorted(out)]


def _routed(
    tmp_path: Path,
    routes: list[tuple[str, ...]],
    client_filter: str = "",
    *extra: str,
    hop_options: dict[str, Any] | None = None,
) -> tuple[dict[str, Run], dict[str, list[list[list[str]]]]]:
    """One message per ``(ForwardTo, ForwardToAddress[, ClientAccountSelector])`` of ``routes``
    (``HOP`` and ``OTHER`` stand for the two next hops' addresses) forwarded by ``--as-client`` to
    the default next hop, with ``client_filter`` (a script) as ``--client-filter`` if given and
    ``extra`` options; each side's run and the connections of each next hop (default, other)."""
    base = daemon_base(tmp_path)
    script = base / "filter.sh"  # one path for both sides, so their logs compare
    stamp = int(time.time())
    runs: dict[str, Run] = {}
    connections: dict[str, list[list[list[str]]]] = {}
    for side in SIDES:
        options = {"extensions": NO_PIPELINING, **(hop_options or {})}
        with FakeSmtp(**options) as hop, FakeSmtp(**options) as other:

            def place(text: str, hop: FakeSmtp = hop, other: FakeSmtp = other) -> str:
                return text.replace("HOP", hop.address).replace("OTHER", other.address)

            def prep(spool: Path) -> None:
                envelopes = sorted(spool.glob("*.envelope"), key=lambda p: int(p.stem.rsplit(".", 1)[1]))
                for path, (forward_to, address, *selector) in zip(envelopes, routes, strict=True):
                    if selector:
                        path.write_bytes(
                            path.read_bytes().replace(
                                SELECTOR, SELECTOR[:-2] + selector[0].encode() + b"\r\n"
                            )
                        )
                    route = (
                        f"X-MailRelay-ForwardTo: {forward_to}\r\nX-MailRelay-ForwardToAddress: {address}\r\n"
                    )
                    path.write_bytes(path.read_bytes().replace(EMPTY_ROUTE, place(route).encode()))

            args: tuple[str, ...] = extra
            if client_filter:
                script.write_text(place(client_filter))
                script.chmod(0o755)
                args = (*extra, "--client-filter", str(script))
            runs[side] = as_client(side, base, hop, [[B]] * len(routes), *args, stamp=stamp, prep=prep)
        connections[side] = [_connections(hop), _connections(other)]
    return runs, connections


def _same_routing(
    runs: dict[str, Run], connections: dict[str, list[list[list[str]]]], counts: tuple[int, int]
) -> list[str]:
    """Both sides alike (log, exit code, spool, commands, data, each connection), with ``counts``
    connections to the default and the other next hop, every message sent; the log."""
    run = same(runs)
    assert connections["ours"] == connections["upstream"]
    assert tuple(len(c) for c in connections["upstream"]) == counts, connections["upstream"]
    assert run.rc == 0 and run.spool == {}
    assert sum(x.count(".") for conns in connections["upstream"] for x in conns) == sum(
        1 for x in run.log if x.endswith('tx>>: "."')
    )
    return run.log


@pytest.mark.parametrize(
    ("routes", "counts"),
    [
        pytest.param([("", ""), ("", "HOP"), ("", "")], (3, 0), id="the-default-hop-by-address"),
        pytest.param([("", ""), ("", "OTHER"), ("", "")], (2, 1), id="another-hop"),
        pytest.param([("", "HOP"), ("", "HOP"), ("", "")], (2, 0), id="the-same-address-twice"),
        pytest.param([("", "OTHER"), ("", "OTHER"), ("", "")], (1, 1), id="another-hop-twice"),
        pytest.param([("", ""), ("w.example", ""), ("", "OTHER")], (1, 1), id="forward-to-without-filter"),
    ],
)
def test_forward_to_address_opens_a_new_connection(
    tmp_path: Path, routes: list[tuple[str, str]], counts: tuple[int, int]
) -> None:
    runs, connections = _routed(tmp_path, routes)
    log = _same_routing(runs, connections, counts)
    changes = sum(1 for a, b in itertools.pairwise(routes) if a[1] != b[1])
    assert sum(": new connection for [" in x for x in log) == changes
    assert sum("forward-to-address=[" in x for x in log) == sum(1 for r in routes if r[1])


@pytest.mark.parametrize(
    ("routes", "script", "counts"),
    [
        # the routing filter fills in ForwardToAddress; the other messages' client filter does too, unused
        pytest.param(
            [("", ""), ("w.example", ""), ("", "")], SET_ADDRESS, (2, 1), id="routing-filter-routes"
        ),
        pytest.param(
            [("", ""), ("w.example", ""), ("", "")], "#!/bin/sh\nexit 0\n", (1, 0), id="routing-filter-keeps"
        ),
        pytest.param([("", ""), ("", ""), ("", "")], SET_ADDRESS, (1, 0), id="client-filter-cannot-route"),
        pytest.param(
            [("", ""), ("", "OTHER"), ("", "")], "#!/bin/sh\nexit 0\n", (2, 1), id="client-filter-address"
        ),
    ],
)
def test_routing_filter_and_client_filter(
    tmp_path: Path, routes: list[tuple[str, str]], script: str, counts: tuple[int, int]
) -> None:
    runs, connections = _routed(tmp_path, routes, script)
    log = _same_routing(runs, connections, counts)
    assert any("routing-filter [filter.sh]" in x for x in log) == any(r[0] for r in routes)


def test_many_messages_without_routing_share_one_connection(tmp_path: Path) -> None:
    """What a relay forwarding to one smarthost does (the bench's case): one connection for all.
    Twelve, so that the names' order (``.1, .10, .11, .12, .2``: both forward by file name, as
    strings) shows in the messages the next hop received."""
    runs, connections = _routed(tmp_path, [("", "")] * 12)
    log = _same_routing(runs, connections, (1, 0))
    assert not any(": new connection for [" in x for x in log)


def test_account_selector_opens_a_new_connection(tmp_path: Path) -> None:
    """A message with another ``ClientAccountSelector`` (one the ``--client-auth`` secrets have a
    ``client`` line for) than the connection's: ``forwarding [<id>] selector=[<s>] ...``, QUIT,
    ``new connection for account selector [<s>]`` (with a ``ForwardToAddress`` too: ``for
    [<address>] and account selector [<s>]``), a new connection that authenticates with that line."""
    secrets = readable_file(
        daemon_base(tmp_path) / "client.auth", "client plain me secret\nclient plain you other s1\n"
    )
    routes = [("", "", ""), ("", "", "s1"), ("", "", "s1"), ("", "OTHER", ""), ("", "HOP", "s1")]
    runs, connections = _routed(
        tmp_path, routes, "", "--client-auth", str(secrets),
        hop_options={"extensions": (*NO_PIPELINING, "AUTH PLAIN"), "auth": auth_script("235 2.7.0 ok")},
    )  # fmt: skip
    log = _same_routing(runs, connections, (3, 1))
    assert sum(": new connection for account selector [s1]" in x for x in log) == 1
    assert sum(": new connection for [127.0.0.1:PORT] and account selector [s1]" in x for x in log) == 1


@pytest.mark.parametrize("secrets", ["", "client plain me secret\n"], ids=["no-client-auth", "no-such-line"])
def test_account_selector_without_an_account_fails_the_message(tmp_path: Path, secrets: str) -> None:
    """A ``ClientAccountSelector`` that no ``client`` line has (or no ``--client-auth`` at all): the
    new connection's session fails after EHLO, ``no client authentication account: selector
    [<s>]``: that message goes to ``.bad`` with the reason, the run ends (exit 1), the next stays."""
    extra: tuple[str, ...] = ()
    if secrets:
        path = readable_file(daemon_base(tmp_path) / "client.auth", secrets)
        extra = ("--client-auth", str(path))
    runs, connections = _routed(
        tmp_path, [("", "", ""), ("", "", "s1"), ("", "", "")], "", *extra,
        hop_options={"extensions": (*NO_PIPELINING, "AUTH PLAIN"), "auth": auth_script("235 2.7.0 ok")},
    )  # fmt: skip
    run = same(runs)
    assert connections["ours"] == connections["upstream"] and len(connections["upstream"][0]) == 2
    assert run.rc == 1 and len(run.messages) == 1
    assert [k for k in run.spool if k.endswith(".bad")] and len(run.spool) == 4
    reason = b"X-MailRelay-Reason: no client authentication account: selector [s1]\r\n"
    assert any(reason in v for k, v in run.spool.items() if k.endswith(".bad"))


# upstream's end of a run after a routing filter's failure or abandon: another QUIT after the 221
CLOSING = re.compile(r'tx>>: "QUIT"|rx<<: "221 ')


@pytest.mark.parametrize("code", [1, 100, 103])
def test_routing_filter_exit_codes(tmp_path: Path, code: int) -> None:
    """A client filter that fills in ``ForwardToAddress`` and exits ``code``, for a message with a
    ``ForwardTo`` (the routing filter) between two without (a client filter run once connected):
    103 routes as 0 does; 1 fails each message (the routed one ``routing filter failed``, no code,
    no ``forwarding [<id>] failed`` warning); 100 leaves each as it is. Compared: the connections,
    the log without its closing QUIT and 221 lines (upstream sends QUIT twice after a routing
    filter's 1 or 100), the spool (the other next hop's address masked). Different (docs/decisions.md, "Routed messages and
    connections"): after a routing filter's 100 E-MailRelay 2.6b fails that message at the end of
    the run with an empty reason; ours leaves it, as for any other client filter's 100."""
    runs, connections = _routed(
        tmp_path, [("", ""), ("w.example", ""), ("", "")], f"{SET_ADDRESS}exit {code}\n"
    )
    assert connections["ours"] == connections["upstream"]
    assert len(connections["upstream"][1]) == (1 if code == 103 else 0)
    logs = {side: [x for x in runs[side].log if not CLOSING.search(x)] for side in SIDES}
    ours, upstream = (
        {k: re.sub(rb"127\.0\.0\.1:\d+", b"ADDRESS", v) for k, v in runs[side].spool.items()}
        for side in SIDES
    )
    if code == 100:
        routed = [k for k in upstream if k.endswith(".envelope.bad")]
        assert len(routed) == 1 and upstream[routed[0]].endswith(
            b"X-MailRelay-Reason: \r\nX-MailRelay-ReasonCode:\r\n"
        )
        assert logs["upstream"][-1].endswith(".envelope.busy] -> [emailrelay.ID.envelope.bad]")
        logs["upstream"].pop()
        assert routed[0].removesuffix(".bad") in ours and ours[routed[0].removesuffix(".bad")] != b""
        assert len(ours) == len(upstream) == 6 and not [k for k in ours if k.endswith(".bad")]
    else:
        assert ours == upstream
    assert logs["ours"] == logs["upstream"], "\n".join(
        ["ours:", *logs["ours"], "upstream:", *logs["upstream"]]
    )
    assert runs["ours"].rc == runs["upstream"].rc
