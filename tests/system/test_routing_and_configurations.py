"""End-to-end routing and multiple configurations, through the real relay.

- ``--filter split:`` splits a three-domain message into three, each with its
  ``ForwardTo``; a ``--client-filter`` sets ``ForwardToAddress`` (here from a
  table in a shell script, where a real set-up would use ``mx:``), and each
  copy reaches its own sink (reference guide, "Routing").
- Two configurations in one relay (``in-``/``out-`` prefixes in a config
  file): a message sent to ``in`` is forwarded to ``out``'s port, stored in
  ``out``'s spool and forwarded again to the sink (reference guide,
  "Configuration").
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import free_port, start_relay, wait_until

CLIENT_FILTER = """#!/bin/sh
# client filter: ForwardTo domain -> ForwardToAddress (what mx: would look up)
envelope="$2"
domain=`sed -n 's/^X-MailRelay-ForwardTo: \\([^\\r]*\\)\\r*$/\\1/p' "$envelope"`
case "$domain" in
{cases}
  *) exit 0 ;;
esac
sed -i "s/^X-MailRelay-ForwardToAddress: .*$/X-MailRelay-ForwardToAddress: $address\\r/" "$envelope"
exit 0
"""


def _message(message_id: str, recipients: list[str]) -> str:
    return f"From: a@example.com\r\nTo: {', '.join(recipients)}\r\nMessage-ID: <{message_id}>\r\nSubject: route\r\n\r\nbody\r\n"


def _spool_empty(spool: Path) -> bool:
    return not [p for p in spool.iterdir() if p.is_file() and ".envelope" in p.name]


def test_split_message_reaches_three_sinks(tmp_path: Path) -> None:
    domains = ["a.example", "b.example", "c.example"]
    with FakeSmtp() as sink_a, FakeSmtp() as sink_b, FakeSmtp() as sink_c:
        sinks = dict(zip(domains, [sink_a, sink_b, sink_c], strict=True))
        cases = "\n".join(f"  {d}) address={s.address} ;;" for d, s in sinks.items())
        script = tmp_path / "route.sh"
        script.write_text(CLIENT_FILTER.format(cases=cases))
        script.chmod(0o755)
        default = FakeSmtp()
        with default:
            relay = start_relay(
                tmp_path, "--single-process", "--forward-to", default.address, "--poll", "1",
                "--filter", "split:", "--client-filter", str(script),
            )  # fmt: skip
            try:
                recipients = [f"user@{d}" for d in domains]
                with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as c:
                    c.sendmail("a@example.com", recipients, _message("split@test", recipients))
                for domain, sink in sinks.items():
                    assert sink.wait_for_messages(1, timeout=20), f"nothing reached the sink for {domain}"
                assert wait_until(lambda: _spool_empty(relay.spool), 10)
                for domain, sink in sinks.items():
                    (message,) = sink.messages
                    assert message.rcpts == [f"user@{domain}"]
                    assert sink.message_ids() == {"<split@test>": 1}
                assert not default.messages  # every copy was routed, none fell back to --forward-to
            finally:
                relay.stop()


def test_two_configurations_move_a_message_in_then_out(tmp_path: Path) -> None:
    in_spool, out_spool = tmp_path / "in", tmp_path / "out"
    in_spool.mkdir()
    out_spool.mkdir()
    in_port, out_port = free_port(), free_port()
    with FakeSmtp() as sink:
        config = tmp_path / "emailrelay.conf"
        # start_relay's --interface is in's: the file's and the command line's add up, as upstream's
        # do, and one address twice cannot be bound (exit 2 on both sides)
        config.write_text(
            "# two configurations, as in the reference guide\n"
            f"in-spool-dir {in_spool}\nin-port {in_port}\n"
            f"in-forward-to 127.0.0.1:{out_port}\nin-poll 0\n"
            f"out-spool-dir {out_spool}\nout-port {out_port}\nout-interface 127.0.0.1\n"
            f"out-forward-to {sink.address}\nout-poll 0\n"
        )
        relay = start_relay(tmp_path, str(config), port=in_port, spool=in_spool)
        try:
            assert wait_until(lambda: "smtp server on 127.0.0.1:" + str(out_port) in relay.log(), 15)
            with smtplib.SMTP("127.0.0.1", in_port, timeout=20) as c:
                c.sendmail("a@example.com", ["b@example.net"], _message("twoconf@test", ["b@example.net"]))
            assert sink.wait_for_messages(1, timeout=20), relay.log()
            assert sink.message_ids() == {"<twoconf@test>": 1}
            (message,) = sink.messages
            assert message.data.count(b"Received: ") == 2  # stored by "in", then by "out"
            assert wait_until(lambda: _spool_empty(in_spool) and _spool_empty(out_spool), 10)
        finally:
            relay.stop()
