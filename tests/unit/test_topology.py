"""The topology table (emailrelay/topology.py): its rules on a config, and the docs that show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from emailrelay import topology
from emailrelay.config import from_values
from emailrelay.errors import UsageError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"


def names(values: dict[str, object]) -> list[str]:
    return [r.name for r in topology.roles_for(from_values(values))]  # type: ignore[arg-type]


def test_roles_follow_the_config_in_start_order() -> None:
    assert names({}) == ["bus", "smtp"]
    assert names({"forward-to": "h:25", "poll": "5"}) == ["bus", "notify", "forward", "smtp"]
    assert names({"forward-to": "h:25"}) == ["bus", "forward", "smtp"]  # no --poll: no notify
    assert names({"forward-to": "h:25", "immediate": True}) == ["bus", "smtp"]
    assert names({"no-smtp": True, "pop": True, "admin": "10026", "metrics": "127.0.0.1:9"}) == [
        "bus", "pop", "metrics", "admin",
    ]  # fmt: skip


def test_workers_are_read_from_the_table() -> None:
    config = from_values({"forward-to": "h:25", "workers": ["forward=3", "smtp=2", "pop=7"]})
    assert topology.BY_NAME["forward"].processes(config) == 3
    assert topology.BY_NAME["smtp"].processes(config) == 2
    assert topology.BY_NAME["pop"].processes(config) == 1  # not scalable: one process
    assert from_values({"workers": ["smtp=0"]}).workers_smtp == 1  # below smtp's range: ignored
    with pytest.raises(UsageError, match="unknown role 'nope'"):
        from_values({"workers": ["nope=1"]})


def test_watcher_names_of_several_configurations_find_their_row() -> None:
    assert topology.role("in-smtp").name == "smtp"
    assert topology.role("forward").workers == (0, topology.MAX_WORKERS)
    with pytest.raises(KeyError):
        topology.role("in-nope")


def test_the_operator_guide_shows_the_table_as_generated() -> None:
    assert topology.markdown() in DOCS.read_text(), "regenerate the table: emailrelay.topology.markdown()"
