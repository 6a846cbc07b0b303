"""The test harness's port picker: each pytest-xdist worker of a run has its own ports."""

from __future__ import annotations

import itertools

import pytest

from tests.support import relay


@pytest.mark.parametrize("count", [2, 3, 4])
def test_workers_get_disjoint_slices_of_the_range(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    span = (20768, 32767)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    slices = []
    for index in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        slices.append(relay._worker_slice(span))
    for (low, high), (next_low, _) in itertools.pairwise(slices):
        assert low <= high < next_low
    assert slices[0][0] == span[0] and slices[-1][1] <= span[1]
    assert all(high - low >= 1000 for low, high in slices)


def test_without_xdist_the_whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert relay._worker_slice((20768, 32767)) == (20768, 32767)
