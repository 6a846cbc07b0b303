"""A Config built from the command line is immutable (issue 18, structure): changes make a copy."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from emailrelay.config import Config, from_values


def test_a_built_config_cannot_be_changed() -> None:
    config = from_values({"port": "2525"}, name="in")
    assert config.name == "in" and config.port == 2525
    with pytest.raises(FrozenInstanceError):
        config.port = 25
    assert config.port == 2525


def test_replaced_is_a_frozen_copy() -> None:
    config = from_values({"spool-dir": "spool"})
    moved = config.replaced(spool_dir=Path("/x/spool"))
    assert moved.spool_dir == Path("/x/spool") and config.spool_dir == Path("spool")
    assert moved == config.replaced(spool_dir=Path("/x/spool"))
    with pytest.raises(FrozenInstanceError):
        moved.user = "root"


def test_a_bare_config_is_built_field_by_field() -> None:
    config = Config()  # what tests of one service do: set the fields they need, then use it
    config.port = 2525
    assert config.frozen().port == 2525
    with pytest.raises(FrozenInstanceError):
        config.port = 25
