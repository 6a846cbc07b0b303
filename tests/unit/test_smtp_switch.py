"""The admin's ``dnsbl stop`` record (services/smtp_switch.py): what a restarted smtp role reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from emailrelay.services.smtp_switch import DNSBL_OFF, dnsbl_off_for, remember_dnsbl_off
from emailrelay.spool.store import SpoolStore


@pytest.fixture
def store(tmp_path: Path) -> SpoolStore:
    return SpoolStore(tmp_path)


def test_a_stop_is_read_back_with_what_is_left_of_it(store: SpoolStore) -> None:
    assert dnsbl_off_for(store) == 0.0
    remember_dnsbl_off(store, 600)
    assert 590 < dnsbl_off_for(store) <= 600


def test_a_start_removes_the_record(store: SpoolStore) -> None:
    remember_dnsbl_off(store, 600)
    remember_dnsbl_off(store, 0)
    assert store.read_tool_file(DNSBL_OFF) is None
    assert dnsbl_off_for(store) == 0.0


def test_upstreams_for_ever_is_kept(store: SpoolStore) -> None:
    remember_dnsbl_off(store, 4294967295)
    assert dnsbl_off_for(store) > 4294967295 - 60


RECORDS = {
    "another relay's: a new relay checks, as upstream": "{other} {later}\n",
    "over": "{pid} {earlier}\n",
    "not a time": "{pid} soon\n",
    "empty": "",
    "not ascii": "\xff\xfe",
}


@pytest.mark.parametrize("template", list(RECORDS.values()), ids=list(RECORDS))
def test_records_that_do_not_hold_for_this_relay_are_ignored(store: SpoolStore, template: str) -> None:
    now = time.time()
    record = template.format(pid=os.getppid(), other=os.getppid() + 1, later=now + 600, earlier=now - 1)
    store.write_tool_file(DNSBL_OFF, record.encode("latin-1"))
    assert dnsbl_off_for(store) == 0.0
