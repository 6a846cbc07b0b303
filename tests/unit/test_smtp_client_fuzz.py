"""Property tests for emailrelay.protocol.smtp_client: random servers, random splits."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from emailrelay.protocol.smtp_client import (
    NEED_DATA,
    AuthChallenge,
    ClientConfig,
    Closed,
    Event,
    SessionFailed,
    SmtpClient,
    State,
)

REPLIES = [
    b"220 hi\r\n",
    b"220-multi\r\n220 greeting\r\n",
    b"250 ok\r\n",
    b"250\r\n",
    b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 100\r\n250 CHUNKING\r\n",
    b"250-sink\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
    b"250-sink\r\n250 PIPELINING\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"235 authenticated\r\n",
    b"354 go ahead\r\n",
    b"421 closing\r\n",
    b"450 later\r\n",
    b"502 not implemented\r\n",
    b"550 no\r\n",
    b"221 bye\r\n",
    b"250-continued\r\n",
    b"251 other code\r\n",
    b"\r\n",
    b"garbage\n",
    b"999 bad code\r\n",
]

server_item = st.sampled_from(REPLIES) | st.binary(max_size=12)
server_turn = st.lists(server_item, min_size=1, max_size=3).map(b"".join).filter(bool)  # b"" would be EOF


@dataclass
class Driver:
    """Plays a well-behaved forwarder: acts only on the client's state, so it
    never calls an action at the wrong time."""

    client: SmtpClient
    events: list[Event] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    messages: int = 0
    tried_tls: bool = False
    tried_auth: bool = False
    challenged: bool = False

    def pump(self) -> None:
        while (event := self.client.next_event()) is not NEED_DATA:
            assert isinstance(event, Event)
            self.events.append(event)
            if isinstance(event, AuthChallenge):
                self.challenged = True

    def act(self) -> None:
        client = self.client
        self.pump()
        state = client.state
        if state is State.READY:
            caps = client.capabilities
            if caps.starttls and not self.tried_tls:
                self.tried_tls = True
                client.starttls()
            elif caps.auth and not self.tried_auth:
                self.tried_auth = True
                client.start_auth("LOGIN")
            elif self.messages < 2:
                self.messages += 1
                client.send_envelope(
                    "a@example.com",
                    ["b@example.net", "c@example.net"],
                    size=10,
                    body="8BITMIME",
                    smtputf8=self.messages == 2,
                    auth="alice",
                )
            else:
                client.quit()
        elif state is State.CONTENT:
            client.send_content(b"Subject: x\n\n.dot\r")
            client.send_content(b"\nend")
            client.end_content()
        elif state is State.TLS_HANDSHAKE:
            client.tls_established()
        elif state is State.AUTH and self.challenged:
            self.challenged = False
            client.auth_response("YWxpY2U=")
        self.pump()
        self.sent.append(client.data_to_send())


def check_invariants(driver: Driver) -> None:
    events = driver.events
    terminal = [i for i, e in enumerate(events) if isinstance(e, SessionFailed | Closed)]
    assert len(terminal) <= 1
    if terminal:
        assert terminal[0] == len(events) - 1, "nothing may follow SessionFailed/Closed"
        assert driver.client.state in (State.FAILED, State.CLOSED)
    wire = b"".join(driver.sent)
    # Everything the client wrote is CRLF-clean: commands and (non-binary) content.
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None
    assert b"\x00" not in wire


def new_client(pipelining: bool) -> SmtpClient:
    return SmtpClient(ClientConfig(helo_name="client.example", pipelining=pipelining, forward_to_some=True))


@settings(max_examples=400, deadline=None)
@given(st.lists(server_item, max_size=40), st.data(), st.booleans())
def test_random_server_streams_never_raise(items: list[bytes], data: st.DataObject, pipelining: bool) -> None:
    stream = b"".join(items)
    points = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    edges = [0, *points, len(stream)]
    driver = Driver(new_client(pipelining))
    driver.act()
    for a, b in itertools.pairwise(edges):
        if a < b:
            driver.client.receive_data(stream[a:b])
            driver.act()
    driver.client.receive_data(b"")
    driver.act()
    check_invariants(driver)
    assert driver.client.state in (State.FAILED, State.CLOSED)


@settings(max_examples=300, deadline=None)
@given(st.lists(server_turn, min_size=1, max_size=12), st.data(), st.booleans())
def test_turns_are_split_independent(turns: list[bytes], data: st.DataObject, pipelining: bool) -> None:
    """The driver acts after each whole server turn; however each turn is cut
    into reads, the events and the bytes written are the same."""

    def play(split: bool) -> Driver:
        driver = Driver(new_client(pipelining))
        driver.act()
        for turn in turns:
            if split:
                cuts = sorted(data.draw(st.lists(st.integers(0, len(turn)), max_size=4)))
                edges = [0, *cuts, len(turn)]
                for a, b in itertools.pairwise(edges):
                    if a < b:
                        driver.client.receive_data(turn[a:b])
            else:
                driver.client.receive_data(turn)
            driver.act()
        return driver

    whole = play(False)
    pieces = play(True)
    assert pieces.events == whole.events
    assert pieces.sent == whole.sent
    check_invariants(whole)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 16))
def test_raw_bytes_in_every_state_never_raise(noise: bytes, step: int) -> None:
    """Noise after a realistic prefix that reaches each interesting state."""
    prefixes = [
        b"",
        b"220 hi\r\n",
        b"220 hi\r\n250-s\r\n250 PIPELINING\r\n",
        b"220 hi\r\n250-s\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n",
        b"220 hi\r\n250-s\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
    ]
    for prefix in prefixes:
        driver = Driver(new_client(True))
        driver.act()
        stream = prefix + noise
        for i in range(0, len(stream), step):
            driver.client.receive_data(stream[i : i + step])
            driver.act()
        check_invariants(driver)
