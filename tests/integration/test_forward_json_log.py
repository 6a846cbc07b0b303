"""``--log-format json``: one JSON line per log event, and a per-message summary line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.fake_smtp import FakeSmtp
from tests.support.relay import program


def test_json_log_has_a_summary_line_per_message(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    for n in range(2):
        subprocess.run(
            [program("emailrelay-submit"), "--spool-dir", str(spool), "--from", "a@example.com", "b@example.net"],
            input=f"Subject: json {n}\r\n\r\nbody\r\n".encode(), check=True, timeout=30,
        )  # fmt: skip
    with FakeSmtp() as sink:
        done = subprocess.run(
            [program(), "--as-client", sink.address, "--spool-dir", str(spool), "--log-format", "json",
             "--user", "root"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert all({"time", "level"} <= r.keys() for r in records)
    summaries = [r for r in records if r.get("event") == "message"]
    assert len(summaries) == 2
    for s in summaries:
        assert s["from"] == "a@example.com" and s["rcpts"] == 1 and s["result"] == "sent"
        assert s["hop"] == sink.address and s["code"] == 250 and s["size"] > 0 and s["ms"] >= 0
        assert s["id"].startswith("emailrelay.")
